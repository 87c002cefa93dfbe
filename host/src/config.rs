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
}

/// `[server]`: the HTTP listener.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Listen address (`CREDHOST_LISTEN`).
    pub listen: SocketAddr,
    /// Largest accepted request body, KiB.
    pub max_body_kib: usize,
    /// Requests handled at once; more wait.
    pub max_concurrency: usize,
    /// Per-request time limit, seconds (live tests included).
    pub request_timeout_secs: u64,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: "127.0.0.1:8080".parse().expect("valid default address"),
            max_body_kib: 64,
            max_concurrency: 64,
            request_timeout_secs: 60,
        }
    }
}

/// `[storage]`: where the database lives.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StorageConfig {
    /// Data directory (`CREDHOST_DATA_DIR`); holds `credhost.redb` and, in dev mode, the key file.
    pub data_dir: PathBuf,
}

impl Default for StorageConfig {
    fn default() -> Self {
        StorageConfig { data_dir: PathBuf::from("./data") }
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

    /// Parses TOML; errors carry the line and column.
    pub fn parse(text: &str) -> Result<Config, String> {
        toml::from_str(text).map_err(|e| e.to_string())
    }

    fn apply_env(&mut self, get: impl Fn(&str) -> Option<String>) -> Result<(), String> {
        if let Some(v) = get("CREDHOST_LISTEN") {
            self.server.listen = v.parse().map_err(|e| format!("CREDHOST_LISTEN={v:?}: {e}"))?;
        }
        if let Some(v) = get("CREDHOST_DATA_DIR") {
            self.storage.data_dir = PathBuf::from(v);
        }
        if let Some(v) = get("CREDHOST_MASTER_KEY_FILE") {
            self.keys.master_key_file = Some(PathBuf::from(v));
        }
        if let Some(v) = get("CREDHOST_PLUGINS_DIR") {
            self.plugins.dir = Some(PathBuf::from(v));
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
}
