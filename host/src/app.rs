//! Wiring: configuration → master key → store → plugins → service. Shared by
//! `serve` and every CLI command that touches data.

use std::sync::Arc;

use crate::config::Config;
use crate::crypto::MasterKey;
use crate::plugins::{HostServices, Registry, Runtime, Sources};
use crate::service::Service;
use crate::store::Store;

/// Loads the master key as configured. In dev mode a key file is generated in the
/// data dir on first use, with a loud warning.
pub fn master_key(config: &Config) -> Result<MasterKey, String> {
    if config.keys.dev && config.keys.master_key_file.is_none() && std::env::var_os(crate::crypto::MASTER_KEY_ENV).is_none() {
        std::fs::create_dir_all(&config.storage.data_dir)
            .map_err(|e| format!("creating data dir {}: {e}", config.storage.data_dir.display()))?;
        let path = config.storage.data_dir.join("master.key");
        let (key, generated) = MasterKey::load_or_generate_dev(&path).map_err(|e| e.to_string())?;
        if generated {
            tracing::warn!(path = %path.display(), "DEV MODE: generated a new master key file; back it up or \
                 use CREDHOST_MASTER_KEY / [keys] master_key_file in production");
        } else {
            tracing::warn!(path = %path.display(), "DEV MODE: using the development master key file");
        }
        return Ok(key);
    }
    MasterKey::load(config.keys.master_key_file.as_deref()).map_err(|e| e.to_string())
}

/// Opens (or creates) the store in the configured data dir.
pub fn open_store(config: &Config) -> Result<Store, String> {
    let key = master_key(config)?;
    std::fs::create_dir_all(&config.storage.data_dir)
        .map_err(|e| format!("creating data dir {}: {e}", config.storage.data_dir.display()))?;
    let path = config.db_path();
    Store::open(&path, key).map_err(|e| format!("opening {}: {e}", path.display()))
}

/// The plugin registry: built-ins, the plugin dir, overrides, the compile cache.
pub fn registry(config: &Config) -> Result<Registry, String> {
    let host = HostServices { allow_private_networks: config.plugins.allow_private_networks, ..HostServices::default() };
    let runtime = Runtime::new(host).map_err(|e| e.to_string())?;
    let sources = Sources {
        dir: config.plugins.dir.clone(),
        cache_dir: config.plugin_cache_dir(),
        overrides: config.plugins.overrides.clone(),
    };
    Registry::load(Arc::new(runtime), sources).map_err(|e| e.to_string())
}

/// Store + registry + service, ready for requests.
pub fn service(config: &Config) -> Result<Arc<Service>, String> {
    let store = open_store(config)?;
    let registry = registry(config)?;
    Ok(Arc::new(Service::new(Arc::new(store), Arc::new(registry))))
}
