//! Plugin manifests: what a plugin is allowed to do, parsed once into typed parts.
//!
//! A manifest is `<name>.toml` beside `<name>.wasm` (built-ins embed theirs). Anything
//! unknown or malformed is refused at load, so a typo can never widen a grant.

use std::collections::BTreeMap;
use std::fmt;

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
        Ok(())
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
