//! The deployment's TOML configuration, with `CREDHOST_*` environment overrides.
//!
//! Every key is optional; defaults give a local dev server. Unknown keys are
//! errors (a typo must not silently fall back to a default).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// The whole configuration file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub server: ServerConfig,
    pub storage: StorageConfig,
    pub keys: KeysConfig,
    pub plugins: PluginsConfig,
    /// `[provision]`: how start-up reconciles the declared users and credentials.
    pub provision: ProvisionConfig,
    /// `[[users]]`: users that must exist (created at start-up, without a token).
    pub users: Vec<UserEntry>,
    /// `[[credentials]]`: credentials that must exist with exactly these values.
    pub credentials: Vec<CredentialEntry>,
    /// `[monitor]`: scheduled read-only tests, health and expiry (docs/monitoring.md).
    pub monitor: MonitorConfig,
    /// `[[webhooks]]`: deployment-wide webhook subscriptions: every user's events
    /// (docs/webhooks.md).
    pub webhooks: Vec<WebhookEntry>,
    /// `[webhook_delivery]`: retry schedule and limits of webhook deliveries.
    pub webhook_delivery: WebhookDeliveryConfig,
}

/// One `[[webhooks]]` entry. The signing secret (`whsec_<base64>`) comes from `env:VAR` or
/// `file:/path`, never a literal.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookEntry {
    /// Unique among the entries; names the subscription in logs and metrics.
    pub name: String,
    pub url: String,
    pub secret: FieldSource,
    /// Event type patterns (`credential.*`); absent: every event.
    #[serde(default)]
    pub events: Option<Vec<String>>,
}

/// `[webhook_delivery]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebhookDeliveryConfig {
    /// The retry schedule's unit: retries wait 1, 60, 360, 1440, 3600, 7200 and 7200 times
    /// this (5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 10 h by default), milliseconds.
    pub retry_base_ms: u64,
    /// How often the outbox and the retry queue are looked at, milliseconds.
    pub poll_interval_ms: u64,
    /// Time limit of one delivery attempt, seconds.
    pub timeout_secs: u64,
}

impl Default for WebhookDeliveryConfig {
    fn default() -> Self {
        WebhookDeliveryConfig { retry_base_ms: 5000, poll_interval_ms: 1000, timeout_secs: 10 }
    }
}

impl WebhookDeliveryConfig {
    /// Refuses values that make no sense; errors name the key and the value.
    pub fn check(&self) -> Result<(), String> {
        for (key, v, min, max) in [
            ("retry_base_ms", self.retry_base_ms, 1, 3_600_000),
            ("poll_interval_ms", self.poll_interval_ms, 10, 60_000),
            ("timeout_secs", self.timeout_secs, 1, 60),
        ] {
            if v < min || v > max {
                return Err(format!("[webhook_delivery] {key}: {v} must be between {min} and {max}"));
            }
        }
        Ok(())
    }
}

/// `[monitor]`. Intervals are seconds.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MonitorConfig {
    /// Run scheduled tests at all.
    pub enabled: bool,
    /// Time between two scheduled tests of a credential.
    pub interval_secs: u64,
    /// Each due time moves by up to this percentage of the interval, either way (0-50).
    pub jitter_pct: u64,
    /// Scheduled tests running at once, over all credentials.
    pub max_concurrent: usize,
    /// Scheduled tests per minute towards one destination host; more wait their turn.
    pub rate_per_minute: u32,
    /// After `indeterminate`, the interval doubles per consecutive one, up to this.
    pub backoff_max_secs: u64,
    /// Test outcomes kept per credential.
    pub history: usize,
    /// A credential is `expiring` this long before the `expires_at` its test reported.
    pub expiry_warning_secs: u64,
    /// `[monitor.types.<type>]`: per-type interval (`interval_secs = 0`: never scheduled).
    pub types: std::collections::BTreeMap<String, MonitorTypeConfig>,
}

/// `[monitor.types.<type>]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MonitorTypeConfig {
    /// Overrides `[monitor] interval_secs` for the type; 0 turns its scheduled tests off.
    pub interval_secs: Option<u64>,
}

/// The longest interval or window accepted: a year.
const MAX_MONITOR_SECS: u64 = 366 * 24 * 3600;

impl Default for MonitorConfig {
    fn default() -> Self {
        MonitorConfig {
            enabled: true,
            interval_secs: 3600,
            jitter_pct: 10,
            max_concurrent: 4,
            rate_per_minute: 30,
            backoff_max_secs: 24 * 3600,
            history: 20,
            expiry_warning_secs: 14 * 24 * 3600,
            types: Default::default(),
        }
    }
}

impl MonitorConfig {
    /// Refuses values that make no sense; errors name the key and the value.
    pub fn check(&self) -> Result<(), String> {
        let range = |key: &str, v: u64, min: u64, max: u64, hint: &str| {
            if v < min || v > max {
                Err(format!("[monitor] {key}: {v} must be between {min} and {max}{hint}"))
            } else {
                Ok(())
            }
        };
        range("interval_secs", self.interval_secs, 1, MAX_MONITOR_SECS, " (set enabled = false to stop scheduled tests)")?;
        range("jitter_pct", self.jitter_pct, 0, 50, "")?;
        range("max_concurrent", self.max_concurrent as u64, 1, 64, "")?;
        range("rate_per_minute", u64::from(self.rate_per_minute), 1, 10_000, "")?;
        range("backoff_max_secs", self.backoff_max_secs, 1, MAX_MONITOR_SECS, "")?;
        range("history", self.history as u64, 1, 1000, "")?;
        range("expiry_warning_secs", self.expiry_warning_secs, 0, MAX_MONITOR_SECS, "")?;
        for (kind, t) in &self.types {
            if let Some(v) = t.interval_secs {
                if v > MAX_MONITOR_SECS {
                    return Err(format!(
                        "[monitor.types.{kind}] interval_secs: {v} must be between 0 (off) and {MAX_MONITOR_SECS}"
                    ));
                }
            }
        }
        Ok(())
    }
}

/// `[provision]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProvisionConfig {
    /// Soft-delete credentials of the users listed in `[[users]]` that the file no
    /// longer declares. Off by default: start-up never deletes anything unless asked.
    pub prune: bool,
}

/// One `[[users]]` entry.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserEntry {
    pub name: String,
    #[serde(default)]
    pub admin: bool,
}

/// One `[[credentials]]` entry. `description` and `tags` default to empty: the file is
/// the truth for the credentials it declares.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CredentialEntry {
    /// Owner; must be declared in `[[users]]`.
    pub user: String,
    pub name: String,
    /// Credential type id, e.g. `bearer_token`.
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub tags: Vec<String>,
    #[serde(default)]
    pub environment: Option<String>,
    #[serde(default)]
    pub fields: std::collections::BTreeMap<String, FieldSource>,
}

/// Where a credential field's value comes from: `env:VAR`, `file:/path` (trailing
/// newlines trimmed) or a literal (allowed for non-secret fields only). TOML numbers and
/// booleans are literals too.
#[derive(Clone, PartialEq, Eq)]
pub enum FieldSource {
    Env(String),
    File(PathBuf),
    Literal(String),
}

impl FieldSource {
    pub fn parse(s: &str) -> FieldSource {
        if let Some(var) = s.strip_prefix("env:") {
            FieldSource::Env(var.to_string())
        } else if let Some(path) = s.strip_prefix("file:") {
            FieldSource::File(PathBuf::from(path))
        } else {
            FieldSource::Literal(s.to_string())
        }
    }
}

/// Literals are not shown: a secret given as a literal by mistake must not reach a log.
impl std::fmt::Debug for FieldSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FieldSource::Env(v) => write!(f, "env:{v}"),
            FieldSource::File(p) => write!(f, "file:{}", p.display()),
            FieldSource::Literal(_) => f.write_str("(literal)"),
        }
    }
}

impl<'de> Deserialize<'de> for FieldSource {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            S(String),
            I(i64),
            F(f64),
            B(bool),
        }
        Ok(match Raw::deserialize(d).map_err(|_| {
            serde::de::Error::custom("a field value must be a string (`env:VAR`, `file:/path` or a literal), number or boolean")
        })? {
            Raw::S(s) => FieldSource::parse(&s),
            Raw::I(i) => FieldSource::Literal(i.to_string()),
            Raw::F(x) => FieldSource::Literal(x.to_string()),
            Raw::B(b) => FieldSource::Literal(b.to_string()),
        })
    }
}

/// `[server]`: the HTTP listener.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Listen address (`CREDHOST_LISTEN`).
    #[serde(deserialize_with = "address")]
    pub listen: SocketAddr,
    /// Largest accepted request body, KiB.
    pub max_body_kib: usize,
    /// Requests handled at once; more wait.
    pub max_concurrency: usize,
    /// Per-request time limit, seconds (live tests included).
    pub request_timeout_secs: u64,
    /// Time a client has to send a request's head (request line and headers), seconds.
    /// The clock also runs while a keep-alive connection waits for its next request, so it
    /// bounds idle keep-alive connections too (slowloris).
    pub header_timeout_secs: u64,
    /// A connection on which no byte moves either way while no request is being handled
    /// (e.g. a client that stops reading its response) is closed after this, seconds.
    pub idle_timeout_secs: u64,
    /// Open connections at most. Beyond it the server stops accepting: new connections
    /// wait in the kernel's backlog until a slot frees (never refused outright).
    pub max_connections: usize,
    /// Web origins (`https://host[:port]`) whose pages may call the API from a browser
    /// (CORS). Empty, the default, sends no CORS headers: browsers refuse cross-origin calls.
    pub cors_allowed_origins: Vec<String>,
    /// Serve the web console at `/ui/` (`CREDHOST_CONSOLE`). It holds no privileges of its
    /// own (a page that calls the public API with the token the user signs in with).
    pub console: bool,
}

impl ServerConfig {
    /// Refuses limits that would disable themselves; errors name the key.
    pub fn check(&self) -> Result<(), String> {
        for (key, v) in [
            ("header_timeout_secs", self.header_timeout_secs),
            ("idle_timeout_secs", self.idle_timeout_secs),
            ("max_connections", self.max_connections as u64),
        ] {
            if v == 0 {
                return Err(format!("[server] {key}: {v} must be at least 1"));
            }
        }
        for origin in &self.cors_allowed_origins {
            check_origin(origin).map_err(|why| format!("[server] cors_allowed_origins: {origin:?} {why}"))?;
        }
        Ok(())
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: "127.0.0.1:8080".parse().expect("valid default address"),
            max_body_kib: 64,
            max_concurrency: 64,
            request_timeout_secs: 60,
            header_timeout_secs: 10,
            idle_timeout_secs: 60,
            max_connections: 1024,
            cors_allowed_origins: Vec::new(),
            console: true,
        }
    }
}

const NOT_AN_ADDRESS: &str = "is not an address (expected IP:port, e.g. \"127.0.0.1:8080\")";

fn parse_address(v: &str) -> Result<SocketAddr, &'static str> {
    v.trim().parse().map_err(|_| NOT_AN_ADDRESS)
}

/// `listen`: the error says what is expected (serde's own says "invalid socket address syntax").
fn address<'de, D: serde::Deserializer<'de>>(d: D) -> Result<SocketAddr, D::Error> {
    let v = String::deserialize(d)?;
    parse_address(&v).map_err(serde::de::Error::custom)
}

/// An origin as browsers send it: `http(s)://host[:port]`, nothing more. `*` is refused:
/// a deployment names the consoles it trusts.
fn check_origin(origin: &str) -> Result<(), &'static str> {
    if origin == "*" {
        return Err("is not accepted: list each origin (e.g. \"https://console.example.com\")");
    }
    let url = url::Url::parse(origin).map_err(|_| "is not an origin (expected scheme://host[:port])")?;
    let bare = url.path() == "/" && url.query().is_none() && url.fragment().is_none() && url.username().is_empty()
        && url.password().is_none() && !origin.ends_with('/');
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() || !bare {
        return Err("is not an origin (expected http(s)://host[:port], without a path or a trailing slash)");
    }
    Ok(())
}

/// `[storage]`: where the database lives.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StorageConfig {
    /// Data directory (`CREDHOST_DATA_DIR`); holds `credhost.redb` and, in dev mode, the key file.
    pub data_dir: PathBuf,
    /// Secret versions kept per credential (`CREDHOST_MAX_VERSIONS`); older ones that are
    /// neither current nor pending are destroyed when a new one is written.
    pub max_versions: u32,
    /// Database page cache in MiB (`CREDHOST_CACHE_MIB`): redb's read cache and write
    /// buffer together, the bound on the store's share of resident memory.
    pub cache_mib: u64,
    /// `redb` (embedded, one process) or `postgres` (several replicas on one database)
    /// (`CREDHOST_STORAGE_BACKEND`).
    pub backend: StorageBackend,
    /// `postgres://user@host:port/database` (`CREDHOST_POSTGRES_URL`); no password in it.
    pub postgres_url: Option<String>,
    /// File holding the PostgreSQL password (`CREDHOST_POSTGRES_PASSWORD_FILE`);
    /// `CREDHOST_POSTGRES_PASSWORD` wins over it.
    pub postgres_password_file: Option<PathBuf>,
    /// Most connections one replica opens (`CREDHOST_POSTGRES_POOL`).
    pub postgres_pool: usize,
    /// The role every session takes (`SET ROLE`): owns nothing, so row-level security
    /// applies to it.
    pub postgres_role: String,
}

/// `[storage] backend`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StorageBackend {
    #[default]
    Redb,
    Postgres,
}

/// `[storage] cache_mib` when not configured.
pub const DEFAULT_CACHE_MIB: u64 = (crate::store::DEFAULT_CACHE_BYTES / (1024 * 1024)) as u64;
/// The largest `[storage] cache_mib` accepted (64 GiB).
pub const MAX_CACHE_MIB: u64 = 64 * 1024;

impl Default for StorageConfig {
    fn default() -> Self {
        StorageConfig {
            data_dir: PathBuf::from("./data"),
            max_versions: crate::store::versions::DEFAULT_MAX_VERSIONS,
            cache_mib: DEFAULT_CACHE_MIB,
            backend: StorageBackend::Redb,
            postgres_url: None,
            postgres_password_file: None,
            postgres_pool: 16,
            postgres_role: "credhost_app".into(),
        }
    }
}

impl StorageConfig {
    /// Refuses values that make no sense; errors name the key and the value.
    pub fn check(&self) -> Result<(), String> {
        let max = crate::store::versions::MAX_MAX_VERSIONS;
        if self.max_versions < 1 || self.max_versions > max {
            return Err(format!("[storage] max_versions: {} must be between 1 and {max}", self.max_versions));
        }
        if self.cache_mib < 1 || self.cache_mib > MAX_CACHE_MIB {
            return Err(format!("[storage] cache_mib: {} must be between 1 and {MAX_CACHE_MIB} (MiB)", self.cache_mib));
        }
        if self.postgres_pool < 2 || self.postgres_pool > 512 {
            return Err(format!("[storage] postgres_pool: {} must be between 2 and 512", self.postgres_pool));
        }
        let role_ok = !self.postgres_role.is_empty()
            && self.postgres_role.len() <= 63
            && self.postgres_role.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !role_ok {
            return Err(format!(
                "[storage] postgres_role: {:?} must be 1-63 characters of A-Z a-z 0-9 _",
                self.postgres_role
            ));
        }
        if self.backend == StorageBackend::Postgres {
            let Some(url) = &self.postgres_url else {
                return Err("[storage] postgres_url: required with backend = \"postgres\" (or CREDHOST_POSTGRES_URL)".into());
            };
            let parsed = url::Url::parse(url)
                .ok()
                .filter(|u| matches!(u.scheme(), "postgres" | "postgresql") && u.host_str().is_some());
            match parsed {
                // Not echoed: a libpq keyword string (`host=... password=...`) is no URL.
                None => {
                    return Err("[storage] postgres_url: is not a postgres://user@host:port/database URL".into())
                }
                Some(_) if crate::store::pg::carries_password(url) => {
                    return Err("[storage] postgres_url: carries a password; give it in CREDHOST_POSTGRES_PASSWORD \
                                or [storage] postgres_password_file instead"
                        .into())
                }
                Some(_) => {}
            }
        }
        Ok(())
    }

    /// The database cache in bytes.
    pub fn cache_bytes(&self) -> usize {
        usize::try_from(self.cache_mib.clamp(1, MAX_CACHE_MIB) * 1024 * 1024).unwrap_or(usize::MAX)
    }
}

/// `[keys]`: the master key (KEK). `CREDHOST_MASTER_KEY` (base64) wins over a file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KeysConfig {
    /// File holding the base64 master key (`CREDHOST_MASTER_KEY_FILE`).
    pub master_key_file: Option<PathBuf>,
    /// Generate `<data_dir>/master.key` when no key is configured. Never in production.
    pub dev: bool,
}

/// `[plugins]`: sandbox policy.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PluginsConfig {
    /// Operator plugin directory: `<name>.wasm` + `<name>.toml` pairs (`CREDHOST_PLUGINS_DIR`).
    pub dir: Option<PathBuf>,
    /// Precompiled-artefact cache; default `<data_dir>/cache` when the data dir exists.
    pub cache_dir: Option<PathBuf>,
    /// Let plugins reach loopback and private-range addresses (tests, on-prem services).
    pub allow_private_networks: bool,
    /// `[plugins.overrides.<type_id>]`: per-plugin `settings` (merged), `allowed_hosts`
    /// (replaces the manifest's list) and `limits`, applied when the registry loads.
    pub overrides: std::collections::BTreeMap<String, crate::plugins::manifest::PluginOverride>,
}

impl Config {
    /// Reads `path` (if given), then applies environment overrides.
    /// With no file and no key configured, dev mode is on.
    pub fn load(path: Option<&Path>) -> Result<Config, String> {
        let mut config = match path {
            Some(p) => {
                let text = std::fs::read_to_string(p).map_err(|e| format!("{}: {e}", p.display()))?;
                Self::parse(&text).map_err(|e| format!("{}: {e}", p.display()))?
            }
            None => Config::default(),
        };
        config.apply_env(|k| std::env::var(k).ok())?;
        if path.is_none() && config.keys.master_key_file.is_none() && std::env::var_os("CREDHOST_MASTER_KEY").is_none()
        {
            config.keys.dev = true;
        }
        Ok(config)
    }

    /// Parses TOML; errors carry the line and column but never the file's text: toml's
    /// own rendering quotes the offending line, which may hold a secret literal (the
    /// message reaches logs, a reload's answer and its audit record).
    pub fn parse(text: &str) -> Result<Config, String> {
        toml::from_str(text).map_err(|e: toml::de::Error| {
            let message = crate::redact::unquote(e.message().trim());
            match e.span() {
                Some(span) => {
                    let before = &text[..span.start.min(text.len())];
                    let line = before.matches('\n').count() + 1;
                    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
                    format!("line {line}, column {column}: {message}")
                }
                None => message,
            }
        })
    }

    pub(crate) fn apply_env(&mut self, get: impl Fn(&str) -> Option<String>) -> Result<(), String> {
        if let Some(v) = get("CREDHOST_LISTEN") {
            self.server.listen = parse_address(&v).map_err(|why| format!("CREDHOST_LISTEN: {v:?} {why}"))?;
        }
        if let Some(v) = get("CREDHOST_MAX_VERSIONS") {
            self.storage.max_versions =
                v.parse().map_err(|_| format!("CREDHOST_MAX_VERSIONS: {v:?} is not a whole number"))?;
        }
        if let Some(v) = get("CREDHOST_CACHE_MIB") {
            self.storage.cache_mib =
                v.trim().parse().map_err(|_| format!("CREDHOST_CACHE_MIB: {v:?} is not a whole number of MiB"))?;
        }
        if let Some(v) = get("CREDHOST_DATA_DIR") {
            self.storage.data_dir = PathBuf::from(v);
        }
        if let Some(v) = get("CREDHOST_STORAGE_BACKEND") {
            self.storage.backend = match v.trim() {
                "redb" => StorageBackend::Redb,
                "postgres" => StorageBackend::Postgres,
                _ => return Err(format!("CREDHOST_STORAGE_BACKEND: {v:?} is not a backend (expected redb or postgres)")),
            };
        }
        if let Some(v) = get("CREDHOST_POSTGRES_URL") {
            self.storage.postgres_url = Some(v);
        }
        if let Some(v) = get("CREDHOST_POSTGRES_PASSWORD_FILE") {
            self.storage.postgres_password_file = Some(PathBuf::from(v));
        }
        if let Some(v) = get("CREDHOST_POSTGRES_POOL") {
            self.storage.postgres_pool =
                v.trim().parse().map_err(|_| format!("CREDHOST_POSTGRES_POOL: {v:?} is not a whole number"))?;
        }
        if let Some(v) = get("CREDHOST_MASTER_KEY_FILE") {
            self.keys.master_key_file = Some(PathBuf::from(v));
        }
        if let Some(v) = get("CREDHOST_PLUGINS_DIR") {
            self.plugins.dir = Some(PathBuf::from(v));
        }
        if let Some(v) = get("CREDHOST_CONSOLE") {
            self.server.console = match v.trim() {
                "1" | "true" | "yes" | "on" => true,
                "0" | "false" | "no" | "off" => false,
                _ => return Err(format!("CREDHOST_CONSOLE: {v:?} is not a switch (expected true or false)")),
            };
        }
        if let Some(v) = get("CREDHOST_ALLOW_PRIVATE_NETWORKS") {
            self.plugins.allow_private_networks = matches!(v.as_str(), "1" | "true" | "yes");
        }
        Ok(())
    }

    /// Where compiled plugins are cached, if anywhere.
    pub fn plugin_cache_dir(&self) -> Option<PathBuf> {
        self.plugins.cache_dir.clone().or_else(|| {
            let d = &self.storage.data_dir;
            d.is_dir().then(|| d.join("cache"))
        })
    }

    /// The PostgreSQL connection settings, when the backend is PostgreSQL; the password
    /// from `CREDHOST_POSTGRES_PASSWORD` or the password file.
    pub fn postgres(&self) -> Result<Option<crate::store::pg::PgOptions>, String> {
        if self.storage.backend != StorageBackend::Postgres {
            return Ok(None);
        }
        self.storage.check()?;
        let password = match (std::env::var("CREDHOST_POSTGRES_PASSWORD").ok(), &self.storage.postgres_password_file) {
            (Some(p), _) => Some(p),
            (None, Some(file)) => Some(
                std::fs::read_to_string(file)
                    .map_err(|e| format!("[storage] postgres_password_file {}: {e}", file.display()))?
                    .trim_end_matches(['\r', '\n'])
                    .to_owned(),
            ),
            (None, None) => None,
        };
        Ok(Some(crate::store::pg::PgOptions {
            url: self.storage.postgres_url.clone().unwrap_or_default(),
            password: password.map(secrecy::SecretString::from),
            pool: self.storage.postgres_pool,
            role: self.storage.postgres_role.clone(),
        }))
    }

    /// Where the store lives, for messages: the redb file or the PostgreSQL URL.
    pub fn store_location(&self) -> String {
        match self.storage.backend {
            StorageBackend::Redb => self.db_path().display().to_string(),
            StorageBackend::Postgres => self.storage.postgres_url.clone().unwrap_or_default(),
        }
    }

    /// The database file inside the data dir.
    pub fn db_path(&self) -> PathBuf {
        self.storage.data_dir.join("credhost.redb")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_keys_are_errors_with_a_line() {
        let e = Config::parse("[server]\nlisten = \"127.0.0.1:1\"\nlisen = 3\n").unwrap_err();
        assert!(e.contains("lisen") && e.contains("line 3"), "{e}");
    }

    #[test]
    fn env_overrides_file() {
        let mut c = Config::parse("[server]\nlisten = \"127.0.0.1:1\"\n").unwrap();
        c.apply_env(|k| (k == "CREDHOST_LISTEN").then(|| "127.0.0.1:2".to_string())).unwrap();
        assert_eq!(c.server.listen.port(), 2);
        let bad = c.apply_env(|k| (k == "CREDHOST_LISTEN").then(|| "nope".to_string()));
        assert!(bad.unwrap_err().contains("CREDHOST_LISTEN"));
    }

    /// PostgreSQL settings: a URL is required, never with a password in it (in any
    /// spelling), and bad values name their key; nothing secret in the messages.
    #[test]
    fn postgres_storage_settings_are_checked() {
        let check = |toml: &str| Config::parse(toml).unwrap().storage.check();
        check("[storage]\nbackend = \"postgres\"\npostgres_url = \"postgres://app@db:5432/credhost\"\n").unwrap();
        let e = check("[storage]\nbackend = \"postgres\"\n").unwrap_err();
        assert!(e.contains("postgres_url") && e.contains("required"), "{e}");
        for url in ["postgres://app:hunter2@db/credhost", "postgres://app@db/credhost?password=hunter2"] {
            let e = check(&format!("[storage]\nbackend = \"postgres\"\npostgres_url = \"{url}\"\n")).unwrap_err();
            assert!(e.contains("carries a password") && !e.contains("hunter2"), "{e}");
        }
        for url in ["mysql://x@db/c", "host=db user=app password=hunter2 dbname=c"] {
            let e = check(&format!("[storage]\nbackend = \"postgres\"\npostgres_url = \"{url}\"\n")).unwrap_err();
            assert!(e.contains("postgres_url") && e.contains("is not a postgres://") && !e.contains("hunter2"), "{e}");
        }
        let e = check("[storage]\npostgres_pool = 1\n").unwrap_err();
        assert!(e.contains("postgres_pool: 1"), "{e}");
        let e = check("[storage]\npostgres_role = \"a;drop\"\n").unwrap_err();
        assert!(e.contains("postgres_role"), "{e}");
        let e = Config::parse("[storage]\nbackend = \"sqlite\"\n").unwrap_err();
        assert!(e.contains("sqlite") && e.contains("postgres"), "{e}");
        let mut c = Config::parse("").unwrap();
        let e = c.apply_env(|k| (k == "CREDHOST_STORAGE_BACKEND").then(|| "mongo".to_string())).unwrap_err();
        assert!(e.contains("CREDHOST_STORAGE_BACKEND") && e.contains("mongo"), "{e}");
        c.apply_env(|k| match k {
            "CREDHOST_STORAGE_BACKEND" => Some("postgres".into()),
            "CREDHOST_POSTGRES_URL" => Some("postgres://app@db/c".into()),
            _ => None,
        })
        .unwrap();
        assert_eq!(c.storage.backend, StorageBackend::Postgres);
        c.storage.check().unwrap();
    }

    #[test]
    fn cache_mib_has_a_bounded_default_and_is_checked() {
        let c = Config::parse("").unwrap();
        assert_eq!(c.storage.cache_mib, DEFAULT_CACHE_MIB);
        assert_eq!(c.storage.cache_bytes(), crate::store::DEFAULT_CACHE_BYTES);
        c.storage.check().unwrap();
        let c = Config::parse("[storage]\ncache_mib = 8\n").unwrap();
        assert_eq!(c.storage.cache_bytes(), 8 << 20);
        for bad in [0, MAX_CACHE_MIB + 1] {
            let c = Config::parse(&format!("[storage]\ncache_mib = {bad}\n")).unwrap();
            let e = c.storage.check().unwrap_err();
            assert!(e.contains("[storage] cache_mib") && e.contains(&bad.to_string()), "{e}");
        }
        let mut c = Config::parse("").unwrap();
        c.apply_env(|k| (k == "CREDHOST_CACHE_MIB").then(|| "64".to_string())).unwrap();
        assert_eq!(c.storage.cache_mib, 64);
        let e = c.apply_env(|k| (k == "CREDHOST_CACHE_MIB").then(|| "lots".to_string())).unwrap_err();
        assert!(e.contains("CREDHOST_CACHE_MIB") && e.contains("lots"), "{e}");
        c.apply_env(|k| (k == "CREDHOST_CACHE_MIB").then(|| "0".to_string())).unwrap();
        assert!(c.storage.check().unwrap_err().contains("cache_mib: 0"));
    }

    #[test]
    fn the_console_is_on_unless_switched_off() {
        let mut c = Config::parse("").unwrap();
        assert!(c.server.console);
        c = Config::parse("[server]\nconsole = false\n").unwrap();
        assert!(!c.server.console);
        c.apply_env(|k| (k == "CREDHOST_CONSOLE").then(|| "on".to_string())).unwrap();
        assert!(c.server.console);
        let bad = c.apply_env(|k| (k == "CREDHOST_CONSOLE").then(|| "maybe".to_string())).unwrap_err();
        assert!(bad.contains("CREDHOST_CONSOLE") && bad.contains("maybe"), "{bad}");
    }

    /// A secret literal on a line the parser refuses never appears in the error (it is
    /// logged, and a reload's error is answered and audited).
    #[test]
    fn parse_errors_do_not_quote_the_file() {
        for text in [
            "[[credentials]]\nuser = \"a\"\nname = \"n\"\ntype = \"t\"\nfields = { token = ghp_S3cretS3cret }\n",
            "[server]\nlisten = 5\nmax_body_kib = \"ghp_S3cretS3cret\"\n",
        ] {
            let e = Config::parse(text).unwrap_err();
            assert!(!e.contains("S3cret") && e.contains("line "), "{e}");
        }
    }
}
