//! Plugin manifests: what a plugin is allowed to do, parsed once into typed parts.
//!
//! A manifest is `<name>.toml` beside `<name>.wasm` (built-ins embed theirs). Anything
//! unknown or malformed is refused at load, so a typo can never widen a grant.

use std::collections::BTreeMap;
use std::fmt;

use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};

/// A host capability a plugin may import; undeclared ones answer `denied`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Capability {
    Secrets,
    Http,
    Ssh,
    Sql,
    Net,
    Log,
    Settings,
}

impl Capability {
    pub fn as_str(self) -> &'static str {
        match self {
            Capability::Secrets => "secrets",
            Capability::Http => "http",
            Capability::Ssh => "ssh",
            Capability::Sql => "sql",
            Capability::Net => "net",
            Capability::Log => "log",
            Capability::Settings => "settings",
        }
    }

    /// Capabilities that reach the network; never granted during `validate`.
    pub fn is_network(self) -> bool {
        matches!(self, Capability::Http | Capability::Ssh | Capability::Sql | Capability::Net)
    }
}

impl fmt::Display for Capability {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Per-call resource limits. Absent values take the host defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Linear memory cap per call, MiB.
    pub memory_mib: u32,
    /// Wall-time budget of `validate` and `describe`, ms.
    pub validate_ms: u32,
    /// Wall-time budget of `test`, including host network calls, ms.
    pub test_ms: u32,
    /// Cap on the size of what a call returns, KiB.
    pub output_kib: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { memory_mib: 32, validate_ms: 2000, test_ms: 20_000, output_kib: 256 }
    }
}

/// Hard ceilings: a manifest or operator may lower limits freely but not exceed these.
pub const MAX_LIMITS: Limits =
    Limits { memory_mib: 256, validate_ms: 10_000, test_ms: 120_000, output_kib: 4096 };

/// One allowed destination of outgoing calls.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(into = "String", try_from = "String")]
pub enum AllowedHost {
    /// Exact scheme, host and port.
    Origin { scheme: String, host: String, port: u16 },
    /// The origin of the URL held in this credential field (e.g. a user-given `test_url`).
    Field(String),
    /// `field:<host_field>:<port_field>`: the host and port held in two non-secret fields
    /// of the credential (e.g. an SSH login's `host` and `port`). Governs `ssh` and `net`
    /// targets, which are not URLs.
    HostPort { host: String, port: String },
}

impl AllowedHost {
    /// Parses `scheme://host[:port]` or `field:<name>`; paths, users and wildcards are refused.
    pub fn parse(s: &str) -> Result<Self, String> {
        if let Some(name) = s.strip_prefix("field:") {
            if let Some((host, port)) = name.split_once(':') {
                if !is_identifier(host) || !is_identifier(port) {
                    return Err(format!(
                        "allowed host {s:?}: `field:<host>:<port>` must name two fields ([a-z][a-z0-9_]*)"
                    ));
                }
                return Ok(AllowedHost::HostPort { host: host.into(), port: port.into() });
            }
            if !is_identifier(name) {
                return Err(format!("allowed host {s:?}: `field:` must name a field ([a-z][a-z0-9_]*)"));
            }
            return Ok(AllowedHost::Field(name.to_string()));
        }
        let url = url::Url::parse(s).map_err(|e| format!("allowed host {s:?}: {e}"))?;
        origin_of(&url).ok_or_else(|| {
            format!("allowed host {s:?}: must be http(s)://host[:port] with no path, query or user")
        })
    }

    /// Is `url` allowed, given the credential's non-secret fields (for `field:` entries)?
    pub fn allows(&self, url: &url::Url, fields: &BTreeMap<String, String>) -> bool {
        let Some(AllowedHost::Origin { scheme, host, port }) = origin_of_target(url) else {
            return false;
        };
        let want = match self {
            AllowedHost::Origin { .. } => self.clone(),
            AllowedHost::HostPort { .. } => return false,
            AllowedHost::Field(name) => {
                let Some(parsed) = fields.get(name).and_then(|v| url::Url::parse(v).ok()) else {
                    return false;
                };
                match origin_of_target(&parsed) {
                    Some(o) => o,
                    None => return false,
                }
            }
        };
        want == AllowedHost::Origin { scheme, host, port }
    }
}

impl AllowedHost {
    /// Is a plain TCP endpoint (`ssh`, `net` targets) allowed? An origin entry allows its
    /// own host and port; `field:<url_field>` the host and port of that field's URL;
    /// `field:<host_field>:<port_field>` exactly the credential's host and port.
    /// Hosts compare case-insensitively, without IPv6 brackets or a trailing dot.
    pub fn allows_endpoint(&self, host: &str, port: u16, fields: &BTreeMap<String, String>) -> bool {
        let norm = |h: &str| {
            let h = h.trim();
            let h = h.strip_prefix('[').and_then(|x| x.strip_suffix(']')).unwrap_or(h);
            h.trim_end_matches('.').to_ascii_lowercase()
        };
        let (want_host, want_port) = match self {
            AllowedHost::Origin { host, port, .. } => (host.clone(), *port),
            AllowedHost::Field(name) => {
                let Some(u) = fields.get(name).and_then(|v| url::Url::parse(v.trim()).ok()) else {
                    return false;
                };
                match origin_of_target(&u) {
                    Some(AllowedHost::Origin { host, port, .. }) => (host, port),
                    _ => return false,
                }
            }
            AllowedHost::HostPort { host: hf, port: pf } => {
                let (Some(h), Some(p)) = (fields.get(hf), fields.get(pf).and_then(|p| p.trim().parse::<u16>().ok()))
                else {
                    return false;
                };
                (h.clone(), p)
            }
        };
        !host.trim().is_empty() && norm(&want_host) == norm(host) && want_port == port
    }
}

/// Operator overrides for one plugin (`[plugins.overrides.<type_id>]` in the config):
/// settings are merged over the manifest's, `allowed_hosts` replaces the manifest's
/// list when given, `limits` replaces the named limits (still within [`MAX_LIMITS`]).
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PluginOverride {
    /// Let a plugin from the plugin dir replace the built-in type with the same id.
    pub replace_builtin: bool,
    pub settings: BTreeMap<String, String>,
    pub allowed_hosts: Option<Vec<AllowedHost>>,
    pub limits: LimitsOverride,
}

/// Limits an operator may set per plugin; absent ones keep the manifest's.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsOverride {
    pub memory_mib: Option<u32>,
    pub validate_ms: Option<u32>,
    pub test_ms: Option<u32>,
    pub output_kib: Option<u32>,
}

impl Manifest {
    /// Applies an operator override; the result is checked like a manifest.
    pub fn apply_override(&mut self, o: &PluginOverride) -> Result<(), String> {
        self.settings.extend(o.settings.iter().map(|(k, v)| (k.clone(), v.clone())));
        if let Some(hosts) = &o.allowed_hosts {
            self.allowed_hosts = hosts.clone();
        }
        let l = &mut self.limits;
        for (slot, v) in [
            (&mut l.memory_mib, o.limits.memory_mib),
            (&mut l.validate_ms, o.limits.validate_ms),
            (&mut l.test_ms, o.limits.test_ms),
            (&mut l.output_kib, o.limits.output_kib),
        ] {
            if let Some(v) = v {
                *slot = v;
            }
        }
        self.check().map_err(|e| format!("override of plugin `{}`: {e}", self.id))
    }
}

/// Origin of an allow-list entry: no path beyond `/`, no query, no credentials.
fn origin_of(url: &url::Url) -> Option<AllowedHost> {
    if url.path() != "/" || url.query().is_some() || url.fragment().is_some() {
        return None;
    }
    origin_of_target(url)
}

/// Origin of a request URL (any path).
fn origin_of_target(url: &url::Url) -> Option<AllowedHost> {
    if !matches!(url.scheme(), "http" | "https") || !url.username().is_empty() || url.password().is_some() {
        return None;
    }
    Some(AllowedHost::Origin {
        scheme: url.scheme().to_string(),
        host: url.host_str()?.to_ascii_lowercase(),
        port: url.port_or_known_default()?,
    })
}

impl From<AllowedHost> for String {
    fn from(h: AllowedHost) -> String {
        h.to_string()
    }
}

impl TryFrom<String> for AllowedHost {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        AllowedHost::parse(&s)
    }
}

impl fmt::Display for AllowedHost {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AllowedHost::Origin { scheme, host, port } => write!(f, "{scheme}://{host}:{port}"),
            AllowedHost::Field(name) => write!(f, "field:{name}"),
            AllowedHost::HostPort { host, port } => write!(f, "field:{host}:{port}"),
        }
    }
}

/// Where a `[use]` base URL comes from. Whatever the source, only the URL's origin
/// (`scheme://host[:port]`) is used: paths come from the request, within `path_prefixes`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UseSource {
    /// `field:<name>`: the origin of the URL in this non-secret field of the credential.
    Field(String),
    /// `setting:<key>`: the origin of this setting (operator config may override it).
    Setting(String),
    /// A literal `http(s)://host[:port]`.
    Origin(url::Url),
}

impl UseSource {
    fn parse(s: &str) -> Result<Self, String> {
        let what = |m: &str| format!("[use].base_url {s:?}: {m}");
        if let Some(name) = s.strip_prefix("field:") {
            return if is_identifier(name) {
                Ok(UseSource::Field(name.into()))
            } else {
                Err(what("`field:` must name a field ([a-z][a-z0-9_]*)"))
            };
        }
        if let Some(key) = s.strip_prefix("setting:") {
            return if key.is_empty() || key.contains(char::is_whitespace) {
                Err(what("`setting:` must name a key of [settings]"))
            } else {
                Ok(UseSource::Setting(key.into()))
            };
        }
        let url = url::Url::parse(s).map_err(|e| what(&format!("{e}; use \"field:<name>\", \"setting:<key>\" or https://host")))?;
        match origin_of(&url) {
            Some(_) => Ok(UseSource::Origin(origin_url(&url).map_err(|e| what(&e))?)),
            None => Err(what("a literal base URL must be http(s)://host[:port] with no path, query or user")),
        }
    }
}

impl fmt::Display for UseSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UseSource::Field(n) => write!(f, "field:{n}"),
            UseSource::Setting(k) => write!(f, "setting:{k}"),
            UseSource::Origin(u) => f.write_str(u.as_str().trim_end_matches('/')),
        }
    }
}

/// `[use].base_url`: one source, or one per environment of the type.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "toml::Value", into = "toml::Value")]
pub enum BaseUrl {
    Same(UseSource),
    PerEnvironment(BTreeMap<String, UseSource>),
}

impl TryFrom<toml::Value> for BaseUrl {
    type Error = String;
    fn try_from(v: toml::Value) -> Result<Self, String> {
        match v {
            toml::Value::String(s) => UseSource::parse(&s).map(BaseUrl::Same),
            toml::Value::Table(t) => {
                let mut map = BTreeMap::new();
                for (env, v) in t {
                    let toml::Value::String(s) = v else {
                        return Err(format!("[use].base_url.{env} must be a string such as \"setting:{env}_base_url\""));
                    };
                    map.insert(env, UseSource::parse(&s)?);
                }
                if map.is_empty() {
                    return Err("[use].base_url is an empty table; give one source per environment".into());
                }
                Ok(BaseUrl::PerEnvironment(map))
            }
            _ => Err("[use].base_url must be \"field:<name>\", \"setting:<key>\", an http(s) origin, \
                      or a table of environment = one of those"
                .into()),
        }
    }
}

impl From<BaseUrl> for toml::Value {
    fn from(b: BaseUrl) -> toml::Value {
        match b {
            BaseUrl::Same(s) => toml::Value::String(s.to_string()),
            BaseUrl::PerEnvironment(m) => {
                toml::Value::Table(m.into_iter().map(|(k, v)| (k, toml::Value::String(v.to_string()))).collect())
            }
        }
    }
}

/// Methods a `[use]` policy may allow.
pub const USE_METHODS: &[&str] = &["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"];

/// `[use]`: how credentials of a type may be used without being shown. Absent: no proxy
/// use and no reveal. With `base_url`, the proxy may send requests there (origin only),
/// with one of `methods`, to paths under one of `path_prefixes`, the type's `authenticate`
/// plan applied. `reveal` lets a caller with the `reveal` scope read the secrets back;
/// `env` names the environment variables `credhost exec` sets (templates over fields,
/// `{base_url}` and `{environment}`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UsePolicy {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_url: Option<BaseUrl>,
    #[serde(default)]
    pub methods: Vec<String>,
    #[serde(default)]
    pub path_prefixes: Vec<String>,
    #[serde(default)]
    pub reveal: bool,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
}

/// Placeholders of `[use.env]` templates that are not fields.
pub const USE_ENV_BASE_URL: &str = "base_url";
pub const USE_ENV_ENVIRONMENT: &str = "environment";

impl UsePolicy {
    /// Whether the proxy may use credentials of this type at all.
    pub fn proxy(&self) -> bool {
        self.base_url.is_some()
    }

    /// The origin requests go to, as a URL with path `/`. `environment` picks the source of
    /// a per-environment base URL; `fields` are the credential's non-secret fields;
    /// `settings` the plugin's settings after operator overrides. A field or setting
    /// holding a URL with a path yields that URL's origin.
    pub fn base_url(
        &self,
        environment: Option<&str>,
        fields: &BTreeMap<String, String>,
        settings: &BTreeMap<String, String>,
    ) -> Result<url::Url, String> {
        let source = match &self.base_url {
            None => return Err("the type's [use] policy has no base_url: it has no HTTP use".into()),
            Some(BaseUrl::Same(s)) => s,
            Some(BaseUrl::PerEnvironment(map)) => {
                let Some(env) = environment else {
                    let envs = map.keys().cloned().collect::<Vec<_>>().join(", ");
                    return Err(format!("the credential has no environment; its base URL depends on it ({envs})"));
                };
                map.get(env).ok_or_else(|| format!("the type's [use] policy has no base URL for environment `{env}`"))?
            }
        };
        match source {
            UseSource::Origin(u) => Ok(u.clone()),
            UseSource::Field(name) => {
                let v = fields.get(name).map(|v| v.trim()).filter(|v| !v.is_empty());
                let v = v.ok_or_else(|| format!("field `{name}` (the base URL) is not set on this credential"))?;
                let url = url::Url::parse(v).map_err(|e| format!("field `{name}` is not a URL: {e}"))?;
                origin_url(&url).map_err(|e| format!("field `{name}`: {e}"))
            }
            UseSource::Setting(key) => {
                let v = settings.get(key).map(|v| v.trim()).filter(|v| !v.is_empty());
                let v = v.ok_or_else(|| format!("setting `{key}` (the base URL) is not set"))?;
                let url = url::Url::parse(v).map_err(|e| format!("setting `{key}` is not a URL: {e}"))?;
                origin_url(&url).map_err(|e| format!("setting `{key}`: {e}"))
            }
        }
    }

    /// Whether `method` on `path` (the path of the request, query ignored) is within the
    /// policy. Prefixes match whole segments (`/v2/` and `/v2` allow `/v2` and `/v2/x`,
    /// not `/v2evil`); paths with `.`/`..` segments (also percent-encoded), backslashes,
    /// encoded slashes or control characters are refused outright, so no upstream
    /// normalisation can walk out of a prefix.
    pub fn allows(&self, method: &str, path: &str) -> bool {
        if !self.proxy() || !self.methods.iter().any(|m| m.eq_ignore_ascii_case(method)) {
            return false;
        }
        let path = path.split(['?', '#']).next().unwrap_or_default();
        if !is_plain_path(path) {
            return false;
        }
        self.path_prefixes.iter().any(|p| under_prefix(path, p))
    }

    fn check(&self, settings: &BTreeMap<String, String>) -> Result<(), String> {
        match &self.base_url {
            None => {
                if !self.methods.is_empty() || !self.path_prefixes.is_empty() {
                    return Err("[use] lists methods or path_prefixes but no base_url; \
                                give a base_url, or drop them for a type without proxy use"
                        .into());
                }
            }
            Some(b) => {
                if self.methods.is_empty() {
                    return Err(format!("[use].methods is empty; list some of {}", USE_METHODS.join(", ")));
                }
                if self.path_prefixes.is_empty() {
                    return Err("[use].path_prefixes is empty; list the paths the proxy may reach, e.g. [\"/\"]".into());
                }
                let sources: Vec<&UseSource> = match b {
                    BaseUrl::Same(s) => vec![s],
                    BaseUrl::PerEnvironment(m) => m.values().collect(),
                };
                for s in sources {
                    if let UseSource::Setting(key) = s {
                        let v = settings
                            .get(key)
                            .ok_or_else(|| format!("[use].base_url names setting `{key}`, which [settings] does not define"))?;
                        let url = url::Url::parse(v.trim()).map_err(|e| format!("setting `{key}` (a [use] base URL) is not a URL: {e}"))?;
                        origin_url(&url).map_err(|e| format!("setting `{key}` (a [use] base URL): {e}"))?;
                    }
                }
            }
        }
        for m in &self.methods {
            if !USE_METHODS.contains(&m.as_str()) {
                return Err(format!("[use].methods: {m:?} is not one of {}", USE_METHODS.join(", ")));
            }
        }
        for p in &self.path_prefixes {
            if !p.starts_with('/') || !is_plain_path(p) || p.contains(['?', '#']) {
                return Err(format!(
                    "[use].path_prefixes: {p:?} must be a path starting with `/`, without `.`/`..` segments, \
                     query or escapes"
                ));
            }
        }
        for (name, template) in &self.env {
            let ok = name.bytes().next().is_some_and(|b| b.is_ascii_uppercase() || b == b'_')
                && name.bytes().all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_');
            if !ok {
                return Err(format!("[use.env]: variable name {name:?} must match [A-Z_][A-Z0-9_]*"));
            }
            let names = super::types::template_fields(template).map_err(|e| format!("[use.env].{name}: the template {e}"))?;
            if names.contains(&USE_ENV_BASE_URL) && self.base_url.is_none() {
                return Err(format!("[use.env].{name} uses {{base_url}} but [use] has no base_url"));
            }
        }
        Ok(())
    }

    /// Load-time checks against what the component says about itself: fields named exist
    /// (base URL fields are not secret), and a per-environment base URL covers exactly the
    /// type's environments.
    pub(crate) fn check_against(&self, fields: &[(&str, bool)], environments: &[String]) -> Result<(), String> {
        let secret = |name: &str| fields.iter().find(|(n, _)| *n == name).map(|(_, s)| *s);
        match &self.base_url {
            Some(BaseUrl::Same(UseSource::Field(name)))
                if secret(name) != Some(false) => {
                    return Err(format!("[use].base_url names `{name}`, which is not a non-secret field of the type"));
                }
            Some(BaseUrl::PerEnvironment(map)) => {
                for (env, source) in map {
                    if !environments.contains(env) {
                        return Err(format!(
                            "[use].base_url.{env}: the type has no environment `{env}` (it has: {})",
                            if environments.is_empty() { "none".to_string() } else { environments.join(", ") }
                        ));
                    }
                    if let UseSource::Field(name) = source {
                        if secret(name) != Some(false) {
                            return Err(format!("[use].base_url.{env} names `{name}`, which is not a non-secret field of the type"));
                        }
                    }
                }
                if let Some(missing) = environments.iter().find(|e| !map.contains_key(*e)) {
                    return Err(format!("[use].base_url has no entry for environment `{missing}`"));
                }
            }
            _ => {}
        }
        for (name, template) in &self.env {
            for f in super::types::template_fields(template).unwrap_or_default() {
                if f != USE_ENV_BASE_URL && f != USE_ENV_ENVIRONMENT && secret(f).is_none() {
                    return Err(format!("[use.env].{name} names `{f}`, which is not a field of the type"));
                }
            }
        }
        Ok(())
    }

    /// The `[use.env]` variables for one credential: templates filled with `base_url` (the
    /// origin, no trailing `/`), `environment` and field values (secret ones from `secrets`).
    /// The caller must not log or store the result.
    pub fn env_vars(
        &self,
        base_url: Option<&url::Url>,
        environment: Option<&str>,
        fields: &BTreeMap<String, String>,
        secrets: &BTreeMap<String, SecretString>,
    ) -> Result<BTreeMap<String, SecretString>, String> {
        let mut out = BTreeMap::new();
        for (name, template) in &self.env {
            let mut value = String::with_capacity(template.len());
            let mut rest = template.as_str();
            while let Some(i) = rest.find(['{', '}']) {
                value.push_str(&rest[..i]);
                let tail = &rest[i..];
                if tail.starts_with("{{") || tail.starts_with("}}") {
                    value.push(tail.as_bytes()[0] as char);
                    rest = &tail[2..];
                    continue;
                }
                let end = tail.find('}').filter(|_| tail.starts_with('{')).ok_or_else(|| format!("[use.env].{name}: malformed template"))?;
                let key = &tail[1..end];
                let filled = match key {
                    USE_ENV_BASE_URL => base_url.map(|u| u.as_str().trim_end_matches('/').to_string()),
                    USE_ENV_ENVIRONMENT => environment.map(str::to_string),
                    _ => fields.get(key).cloned().or_else(|| secrets.get(key).map(|s| s.expose_secret().to_string())),
                };
                let Some(mut filled) = filled else {
                    zeroize::Zeroize::zeroize(&mut value);
                    return Err(format!("[use.env].{name}: `{key}` is not set on this credential"));
                };
                value.push_str(&filled);
                zeroize::Zeroize::zeroize(&mut filled);
                rest = &tail[end + 1..];
            }
            value.push_str(rest);
            out.insert(name.clone(), SecretString::from(value));
        }
        Ok(out)
    }
}

/// The origin of an http(s) URL, as a URL with path `/`; refuses user info and other schemes.
fn origin_url(url: &url::Url) -> Result<url::Url, String> {
    match origin_of_target(url) {
        Some(_) => url::Url::parse(&url.origin().ascii_serialization()).map_err(|e| e.to_string()),
        None => Err("must be an http(s) URL with a host and no user info".into()),
    }
}

/// A path with no `.`/`..` segment (raw or percent-encoded), no encoded `/` or `\`, no
/// backslash and no control or whitespace characters.
/// Whether `path` is `prefix` or below it, on a segment boundary (`/v2` does not cover
/// `/v2evil`). The one prefix rule of the type's policy and of grants.
pub fn under_prefix(path: &str, prefix: &str) -> bool {
    let base = prefix.trim_end_matches('/');
    path == base || path.strip_prefix(base).is_some_and(|rest| rest.starts_with('/'))
}

pub(crate) fn is_plain_path(path: &str) -> bool {
    if !path.starts_with('/') || path.contains('\\') || path.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return false;
    }
    let lower = path.to_ascii_lowercase();
    if lower.contains("%2f") || lower.contains("%5c") || lower.contains("%00") {
        return false;
    }
    lower.split('/').all(|seg| {
        let seg = seg.replace("%2e", ".");
        seg != "." && seg != ".."
    })
}

/// A plugin manifest, as written by its author.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Type id; must equal what the component's `describe` returns.
    pub id: String,
    /// The plugin's version (semver).
    pub version: String,
    /// Hex SHA-256 of the `.wasm`; required for plugins loaded from the plugin dir.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// Host capabilities the plugin may import.
    #[serde(default)]
    pub capabilities: Vec<Capability>,
    /// Secret fields `secrets.reveal` may return (needs `secrets`).
    #[serde(default)]
    pub reveal: Vec<String>,
    /// Where `http`/`net` calls may go.
    #[serde(default)]
    pub allowed_hosts: Vec<AllowedHost>,
    /// Whether `test` is free of side effects (only such tests may be scheduled).
    #[serde(default)]
    pub test_read_only: bool,
    #[serde(default)]
    pub limits: Limits,
    /// Default settings; operator config may override them.
    #[serde(default)]
    pub settings: BTreeMap<String, String>,
    /// `[use]`: how credentials of this type may be used (proxy, reveal, exec); absent = not at all.
    #[serde(default, rename = "use", skip_serializing_if = "Option::is_none")]
    pub use_policy: Option<UsePolicy>,
    /// `[pins]`: clear field → test fact. When a live test succeeds and the field is empty,
    /// the host stores the fact's value there (trust on first use, e.g. the SSH host key)
    /// and, as a destination field, it binds the secrets from then on.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub pins: BTreeMap<String, String>,
}

impl Manifest {
    /// Parses and checks a manifest; the error says what is wrong (TOML line included).
    pub fn parse(text: &str) -> Result<Manifest, String> {
        let m: Manifest = toml::from_str(text).map_err(|e| e.to_string())?;
        m.check()?;
        Ok(m)
    }

    fn check(&self) -> Result<(), String> {
        if !is_identifier(&self.id) {
            return Err(format!("id {:?} must match [a-z][a-z0-9_]*", self.id));
        }
        if let Some(h) = &self.sha256 {
            if h.len() != 64 || !h.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err("sha256 must be 64 hex digits".into());
            }
        }
        if !self.reveal.is_empty() && !self.has(Capability::Secrets) {
            return Err("reveal lists fields but capability \"secrets\" is not declared".into());
        }
        let l = &self.limits;
        for (name, v, max) in [
            ("memory_mib", l.memory_mib, MAX_LIMITS.memory_mib),
            ("validate_ms", l.validate_ms, MAX_LIMITS.validate_ms),
            ("test_ms", l.test_ms, MAX_LIMITS.test_ms),
            ("output_kib", l.output_kib, MAX_LIMITS.output_kib),
        ] {
            if v == 0 || v > max {
                return Err(format!("limits.{name} = {v} is outside 1..={max}"));
            }
        }
        if let Some(u) = &self.use_policy {
            u.check(&self.settings)?;
        }
        Ok(())
    }

    /// Fields that decide where a secret may go: every `field:` entry of `allowed_hosts`
    /// (`field:host:port` gives both) and a `[use]` base URL taken from a field. Each once,
    /// in manifest order.
    pub fn destination_fields(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        let mut add = |name: &String| {
            if !out.contains(name) {
                out.push(name.clone());
            }
        };
        for h in &self.allowed_hosts {
            match h {
                AllowedHost::Field(name) => add(name),
                AllowedHost::HostPort { host, port } => {
                    add(host);
                    add(port);
                }
                AllowedHost::Origin { .. } => {}
            }
        }
        match self.use_policy.as_ref().and_then(|u| u.base_url.as_ref()) {
            Some(BaseUrl::Same(UseSource::Field(name))) => add(name),
            Some(BaseUrl::PerEnvironment(map)) => {
                for s in map.values() {
                    if let UseSource::Field(name) = s {
                        add(name);
                    }
                }
            }
            _ => {}
        }
        for name in self.pins.keys() {
            add(name);
        }
        out
    }

    /// The `[use]` base URL for a credential, resolved with this manifest's settings
    /// (operator overrides applied) and checked against `allowed_hosts`: the proxy's one
    /// call to learn where a credential may be sent.
    pub fn use_base_url(&self, environment: Option<&str>, fields: &BTreeMap<String, String>) -> Result<url::Url, String> {
        let policy = self.use_policy.as_ref().ok_or_else(|| format!("type `{}` declares no [use]: it has no HTTP use", self.id))?;
        let url = policy.base_url(environment, fields, &self.settings)?;
        if !self.allowed_hosts.iter().any(|h| h.allows(&url, fields)) {
            return Err(format!("the base URL {} is not in the allowed hosts of type `{}`", url.as_str().trim_end_matches('/'), self.id));
        }
        Ok(url)
    }

    pub fn has(&self, cap: Capability) -> bool {
        self.capabilities.contains(&cap)
    }
}

/// `[a-z][a-z0-9_]*`, the shape of type ids and field names.
pub fn is_identifier(s: &str) -> bool {
    let mut b = s.bytes();
    matches!(b.next(), Some(b'a'..=b'z'))
        && b.all(|c| matches!(c, b'a'..=b'z' | b'0'..=b'9' | b'_'))
        && s.len() <= 64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(s: &str) -> url::Url {
        url::Url::parse(s).unwrap()
    }

    #[test]
    fn allowed_origin_is_allowed_and_others_are_not() {
        let h = AllowedHost::parse("https://api.example.com").unwrap();
        let none = BTreeMap::new();
        assert!(h.allows(&url("https://api.example.com/v2/account"), &none));
        assert!(h.allows(&url("https://API.example.com:443/x"), &none));
        assert!(!h.allows(&url("http://api.example.com/v2"), &none));
        assert!(!h.allows(&url("https://api.example.com:8443/"), &none));
        assert!(!h.allows(&url("https://api.example.com.evil.test/"), &none));
        assert!(!h.allows(&url("https://user@api.example.com/"), &none));
    }

    #[test]
    fn field_entry_follows_the_credential_field() {
        let h = AllowedHost::parse("field:test_url").unwrap();
        let mut f = BTreeMap::new();
        assert!(!h.allows(&url("http://127.0.0.1:8080/"), &f));
        f.insert("test_url".into(), "http://127.0.0.1:8080/ping".into());
        assert!(h.allows(&url("http://127.0.0.1:8080/other"), &f));
        assert!(!h.allows(&url("http://127.0.0.1:8081/ping"), &f));
    }

    #[test]
    fn endpoints_follow_origins_and_host_port_fields() {
        let mut f = BTreeMap::new();
        let hp = AllowedHost::parse("field:host:port").unwrap();
        assert_eq!(hp.to_string(), "field:host:port");
        assert!(!hp.allows_endpoint("10.0.0.5", 22, &f));
        f.insert("host".into(), "Ssh.Example.com.".into());
        f.insert("port".into(), "2222".into());
        assert!(hp.allows_endpoint("ssh.example.com", 2222, &f));
        assert!(!hp.allows_endpoint("ssh.example.com", 22, &f));
        assert!(!hp.allows_endpoint("other.example.com", 2222, &f));
        assert!(!hp.allows(&url("http://ssh.example.com:2222/"), &f), "host:port entries never allow URLs");
        let o = AllowedHost::parse("https://api.example.com").unwrap();
        assert!(o.allows_endpoint("API.example.com", 443, &f));
        assert!(!o.allows_endpoint("api.example.com", 80, &f));
        f.insert("test_url".into(), "http://[::1]:8080/x".into());
        assert!(AllowedHost::parse("field:test_url").unwrap().allows_endpoint("::1", 8080, &f));
    }

    #[test]
    fn overrides_merge_settings_replace_hosts_and_stay_within_limits() {
        let mut m = Manifest::parse(
            "id = \"x\"\nversion = \"1\"\nallowed_hosts = [\"https://a.example\"]\n[settings]\na = \"1\"\nb = \"2\"",
        )
        .unwrap();
        let o: PluginOverride = toml::from_str(
            "settings = { b = \"3\" }\nallowed_hosts = [\"http://127.0.0.1:9\"]\nlimits = { test_ms = 5000 }",
        )
        .unwrap();
        m.apply_override(&o).unwrap();
        assert_eq!(m.settings["a"], "1");
        assert_eq!(m.settings["b"], "3");
        assert_eq!(m.allowed_hosts, [AllowedHost::parse("http://127.0.0.1:9").unwrap()]);
        assert_eq!(m.limits.test_ms, 5000);
        let too_big: PluginOverride = toml::from_str("limits = { test_ms = 999999999 }").unwrap();
        assert!(m.apply_override(&too_big).unwrap_err().contains("test_ms"));
        assert!(toml::from_str::<PluginOverride>("allowed_hosts = [\"*\"]").is_err());
    }

    #[test]
    fn malformed_entries_are_refused() {
        for bad in ["api.example.com", "https://h/path", "ftp://h", "https://u:p@h", "field:Bad", "*", "field:h:", "field:h:p:q"] {
            assert!(AllowedHost::parse(bad).is_err(), "{bad}");
        }
    }

    fn with_use(section: &str) -> Result<Manifest, String> {
        Manifest::parse(&format!(
            "id = \"x\"\nversion = \"1\"\nallowed_hosts = [\"field:test_url\"]\n\
             [settings]\npaper = \"https://paper.example\"\n[use]\n{section}"
        ))
    }

    #[test]
    fn use_section_parses_every_base_url_form() {
        let m = with_use("base_url = \"field:test_url\"\nmethods = [\"GET\"]\npath_prefixes = [\"/\"]").unwrap();
        let u = m.use_policy.as_ref().unwrap();
        assert_eq!(u.base_url, Some(BaseUrl::Same(UseSource::Field("test_url".into()))));
        assert!(!u.reveal && u.env.is_empty());
        let m = with_use("base_url = { paper = \"setting:paper\", live = \"https://live.example:8443\" }\n\
                          methods = [\"GET\", \"POST\"]\npath_prefixes = [\"/v2/\"]\nreveal = true\n\
                          [use.env]\nBASE = \"{base_url}\"")
            .unwrap();
        let u = m.use_policy.as_ref().unwrap();
        let none = BTreeMap::new();
        assert_eq!(u.base_url(Some("paper"), &none, &m.settings).unwrap().as_str(), "https://paper.example/");
        assert_eq!(u.base_url(Some("live"), &none, &m.settings).unwrap().as_str(), "https://live.example:8443/");
        // Round trip: what is serialised parses back the same.
        let text = toml::to_string(&m).unwrap();
        assert_eq!(Manifest::parse(&text).unwrap(), m, "{text}");
        // No [use]: no use at all.
        assert!(Manifest::parse("id = \"x\"\nversion = \"1\"").unwrap().use_policy.is_none());
        // Reveal and env only (a DSN): no proxy.
        let m = with_use("reveal = true\n[use.env]\nDATABASE_URL = \"{dsn}\"").unwrap();
        assert!(!m.use_policy.as_ref().unwrap().proxy());
    }

    #[test]
    fn use_section_errors_name_the_key() {
        for (section, needle) in [
            ("base_url = \"field:test_url\"\nmethods = [\"GET\"]\npath_prefixes = [\"/\"]\ncolour = 1", "colour"),
            ("base_url = \"ftp://h\"\nmethods = [\"GET\"]\npath_prefixes = [\"/\"]", "base_url"),
            ("base_url = \"https://h/path\"\nmethods = [\"GET\"]\npath_prefixes = [\"/\"]", "no path"),
            ("base_url = \"field:Bad\"\nmethods = [\"GET\"]\npath_prefixes = [\"/\"]", "field:"),
            ("base_url = 3\nmethods = [\"GET\"]\npath_prefixes = [\"/\"]", "base_url must be"),
            ("base_url = { paper = 3 }\nmethods = [\"GET\"]\npath_prefixes = [\"/\"]", "base_url.paper"),
            ("base_url = \"setting:nope\"\nmethods = [\"GET\"]\npath_prefixes = [\"/\"]", "`nope`"),
            ("base_url = \"field:test_url\"\npath_prefixes = [\"/\"]", "methods"),
            ("base_url = \"field:test_url\"\nmethods = [\"FETCH\"]\npath_prefixes = [\"/\"]", "FETCH"),
            ("base_url = \"field:test_url\"\nmethods = [\"GET\"]", "path_prefixes"),
            ("base_url = \"field:test_url\"\nmethods = [\"GET\"]\npath_prefixes = [\"v2\"]", "\"v2\""),
            ("base_url = \"field:test_url\"\nmethods = [\"GET\"]\npath_prefixes = [\"/v2/../\"]", "/v2/../"),
            ("methods = [\"GET\"]", "no base_url"),
            ("[use.env]\nlower = \"{x}\"", "lower"),
            ("[use.env]\nX = \"{unclosed\"", "[use.env].X"),
            ("[use.env]\nX = \"{base_url}\"", "no base_url"),
        ] {
            let e = with_use(section).unwrap_err();
            assert!(e.contains(needle), "{section:?}: {e}");
        }
        // An operator override that breaks a [use] setting is refused, naming it.
        let mut m = with_use("base_url = \"setting:paper\"\nmethods = [\"GET\"]\npath_prefixes = [\"/\"]").unwrap();
        let o: PluginOverride = toml::from_str("settings = { paper = \"not a url\" }").unwrap();
        assert!(m.apply_override(&o).unwrap_err().contains("paper"));
    }

    #[test]
    fn use_checks_against_the_descriptor() {
        let fields = [("test_url", false), ("token", true)];
        let envs = vec!["paper".to_string(), "live".to_string()];
        let policy = |s: &str| with_use(s).unwrap().use_policy.unwrap();
        let p = policy("base_url = \"field:token\"\nmethods = [\"GET\"]\npath_prefixes = [\"/\"]");
        assert!(p.check_against(&fields, &[]).unwrap_err().contains("`token`"));
        let p = policy("base_url = { paper = \"setting:paper\" }\nmethods = [\"GET\"]\npath_prefixes = [\"/\"]");
        assert!(p.check_against(&fields, &envs).unwrap_err().contains("`live`"));
        assert!(p.check_against(&fields, &[]).unwrap_err().contains("no environment `paper`"));
        let p = policy("reveal = true\n[use.env]\nT = \"{token}\"\nU = \"{nope}\"");
        assert!(p.check_against(&fields, &[]).unwrap_err().contains("`nope`"));
    }

    #[test]
    fn use_allows_methods_and_whole_segment_prefixes() {
        let m = with_use("base_url = \"field:test_url\"\nmethods = [\"GET\", \"POST\"]\npath_prefixes = [\"/v2/\", \"/status\"]")
            .unwrap();
        let u = m.use_policy.unwrap();
        assert!(u.allows("GET", "/v2/positions") && u.allows("post", "/v2/orders") && u.allows("GET", "/status"));
        assert!(u.allows("GET", "/status/x") && u.allows("GET", "/v2"));
        for (method, path) in [
            ("DELETE", "/v2/orders"),
            ("GET", "/v2evil"),
            ("GET", "/statusx"),
            ("GET", "/v2/../admin"),
            ("GET", "/v2/%2E%2E/admin"),
            ("GET", "/v2/%2fadmin"),
            ("GET", "/v2\\x"),
            ("GET", ""),
        ] {
            assert!(!u.allows(method, path), "{method} {path}");
        }
        // A field holding a URL with a path: the origin only.
        let f = BTreeMap::from([("test_url".to_string(), " http://LOCALHOST:8080/a/b?c ".to_string())]);
        assert_eq!(u.base_url(None, &f, &BTreeMap::new()).unwrap().as_str(), "http://localhost:8080/");
        let f = BTreeMap::from([("test_url".to_string(), "https://u:p@h/".to_string())]);
        assert!(u.base_url(None, &f, &BTreeMap::new()).unwrap_err().contains("test_url"));
    }

    #[test]
    fn destination_fields_cover_hosts_and_use() {
        let m = Manifest::parse(
            "id = \"x\"\nversion = \"1\"\nallowed_hosts = [\"field:host:port\", \"https://a.example\", \"field:test_url\"]\n\
             [use]\nbase_url = { a = \"field:api_url\", b = \"field:test_url\" }\nmethods = [\"GET\"]\npath_prefixes = [\"/\"]",
        )
        .unwrap();
        assert_eq!(m.destination_fields(), ["host", "port", "test_url", "api_url"]);
    }

    #[test]
    fn manifest_rejects_unknown_keys_and_capabilities() {
        assert!(Manifest::parse("id = \"x\"\nversion = \"1\"\ncolour = 1").unwrap_err().contains("colour"));
        assert!(Manifest::parse("id = \"x\"\nversion = \"1\"\ncapabilities = [\"fs\"]").is_err());
        let e = Manifest::parse("id = \"x\"\nversion = \"1\"\nreveal = [\"k\"]").unwrap_err();
        assert!(e.contains("secrets"), "{e}");
        let m = Manifest::parse("id = \"x\"\nversion = \"1\"\ncapabilities = [\"log\"]").unwrap();
        assert_eq!(m.limits, Limits::default());
    }
}
