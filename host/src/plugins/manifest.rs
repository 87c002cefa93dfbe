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
}

impl AllowedHost {
    /// Parses `scheme://host[:port]` or `field:<name>`; paths, users and wildcards are refused.
    pub fn parse(s: &str) -> Result<Self, String> {
        if let Some(name) = s.strip_prefix("field:") {
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
    fn malformed_entries_are_refused() {
        for bad in ["api.example.com", "https://h/path", "ftp://h", "https://u:p@h", "field:Bad", "*"] {
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
