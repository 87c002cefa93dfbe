//! Wiring: configuration → master key → store → plugins → service. Shared by
//! `serve` and every CLI command that touches data.

use std::path::PathBuf;
use std::sync::Arc;

use zeroize::Zeroizing;

use crate::config::Config;
use crate::crypto::MasterKey;
use crate::plugins::cache::CompileCache;
use crate::plugins::{HostServices, Registry, Runtime, Sources};
use crate::service::{KeySource, Service};
use crate::store::{Store, StoreError};

/// Loads the master key as configured. In dev mode a key file is generated in the
/// data dir on first use, with a loud warning.
pub fn master_key(config: &Config) -> Result<MasterKey, String> {
    if dev_key(config) {
        data_dir(config)?;
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

fn dev_key(config: &Config) -> bool {
    config.keys.dev && config.keys.master_key_file.is_none() && std::env::var_os(crate::crypto::MASTER_KEY_ENV).is_none()
}

/// Where [`master_key`] takes the key from: what an online rotation can update.
pub fn key_source(config: &Config) -> KeySource {
    if std::env::var_os(crate::crypto::MASTER_KEY_ENV).is_some() {
        KeySource::Env
    } else if dev_key(config) {
        KeySource::File(config.storage.data_dir.join("master.key"))
    } else {
        config.keys.master_key_file.clone().map_or(KeySource::Unknown, KeySource::File)
    }
}

/// Label of the master key's subkey that authenticates compile-cache entries.
const CACHE_KEY_LABEL: &str = "credhost plugin cache v1";

/// Creates the data dir (0700) and warns when an existing one is open to other users.
fn data_dir(config: &Config) -> Result<(), String> {
    let dir = &config.storage.data_dir;
    crate::fsperm::private_dir(dir).map_err(|e| format!("creating data dir {}: {e}", dir.display()))?;
    if let Some(warning) = crate::fsperm::looser_than_private(dir) {
        tracing::warn!("data dir: {warning}");
    }
    Ok(())
}

/// Opens (or creates) the store in the configured data dir.
pub fn open_store(config: &Config) -> Result<Store, String> {
    let key = master_key(config)?;
    open_store_with(config, key)
}

fn open_store_with(config: &Config, key: MasterKey) -> Result<Store, String> {
    config.storage.check()?;
    crate::store::versions::set_max_versions(config.storage.max_versions);
    if let Some(opts) = config.postgres()? {
        return Store::open_postgres(&opts, key).map_err(|e| format!("opening the PostgreSQL store {}: {e}", opts.url));
    }
    data_dir(config)?;
    let path = config.db_path();
    let existed = path.exists();
    let cache = config.storage.cache_bytes();
    let store = match Store::open_with_cache(&path, key, cache) {
        // A master-key rotation committed but a crash kept its key file from being renamed.
        Err(StoreError::WrongKey { expected, given }) => {
            let pending = match key_source(config) {
                KeySource::File(file) => crate::service::recover_pending(&file, &expected),
                _ => None,
            };
            match pending {
                Some(key) => Store::open_with_cache(&path, key, cache),
                None => Err(StoreError::WrongKey { expected, given }),
            }
        }
        other => other,
    }
    .map_err(|e| format!("opening {}: {e}", path.display()))?;
    // redb creates the file with the umask; the database is the server's alone.
    if !existed {
        crate::fsperm::restrict_file(&path).map_err(|e| format!("restricting {}: {e}", path.display()))?;
    } else if let Some(warning) = crate::fsperm::looser_than_private(&path) {
        tracing::warn!("database: {warning}");
    }
    Ok(store)
}

/// mimalloc 3's option numbers (`mi_option_e` in its mimalloc.h; libmimalloc-sys names
/// only the older ones). Cargo.lock pins the version these belong to.
const MI_OPTION_ARENA_EAGER_COMMIT: libmimalloc_sys::mi_option_t = 4;
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Allocation cost and bounded memory (issue 17). The binary allocates with mimalloc
/// (`main.rs`): glibc's malloc took ~15 % of a create's server CPU, and with one arena per
/// blocking thread it kept a burst's freed pages resident (it needed an arena cap and a
/// trim thread). mimalloc's defaults commit its arenas up front and return freed pages
/// after a delay: 122 MiB resident after 100,000 creates, 63 MiB committing on demand and
/// returning at once, same CPU (`cargo bench --bench scale`).
///
/// These are defaults: a `MIMALLOC_*` variable in the environment still decides. mimalloc
/// reads its options when it starts (its first allocation or its constructor, both before
/// `main`), so `main.rs` calls this from a constructor ordered before both.
pub fn allocator_defaults() {
    for option in [MI_OPTION_ARENA_EAGER_COMMIT, MI_OPTION_PURGE_DELAY] {
        // SAFETY: writes a default into mimalloc's option table; valid option numbers (above).
        unsafe { libmimalloc_sys::mi_option_set_default(option, 0) };
    }
}

/// The plugin registry: built-ins, the plugin dir, overrides, and the compile cache when
/// a cache key (derived from the master key) is given; without one every plugin is compiled.
pub fn registry(config: &Config, cache_key: Option<Zeroizing<[u8; 32]>>) -> Result<Registry, String> {
    let (runtime, sources) = registry_parts(config, cache_key)?;
    Registry::load(runtime, sources).map_err(|e| e.to_string())
}

fn registry_parts(config: &Config, cache_key: Option<Zeroizing<[u8; 32]>>) -> Result<(Arc<Runtime>, Sources), String> {
    let host = HostServices { allow_private_networks: config.plugins.allow_private_networks };
    let runtime = Runtime::new(host).map_err(|e| e.to_string())?;
    let cache = match (config.plugin_cache_dir(), cache_key) {
        (Some(dir), Some(key)) => {
            if let Some(warning) = crate::fsperm::looser_than_private(&dir) {
                tracing::warn!("plugin cache dir: {warning}");
            }
            Some(CompileCache::new(dir, key))
        }
        _ => None,
    };
    let sources = Sources { dir: config.plugins.dir.clone(), cache, overrides: config.plugins.overrides.clone() };
    Ok((Arc::new(runtime), sources))
}

/// Store + registry + service, ready for requests.
pub fn service(config: &Config) -> Result<Arc<Service>, String> {
    let key = master_key(config)?;
    let cache_key = key.subkey(CACHE_KEY_LABEL);
    let store = open_store_with(config, key)?;
    let registry = registry(config, Some(cache_key))?;
    Ok(Arc::new(Service::new(Arc::new(store), Arc::new(registry)).with_key_source(key_source(config))))
}

/// The server's service: the store is open, the registry still empty (the caller runs
/// [`Registry::load_all`] while already listening). A plugin reload re-reads the
/// overrides from `config_path` (environment overrides applied as at start).
pub fn starting_service(config: &Config, config_path: Option<PathBuf>) -> Result<Arc<Service>, String> {
    let key = master_key(config)?;
    let cache_key = key.subkey(CACHE_KEY_LABEL);
    let store = open_store_with(config, key)?;
    let (runtime, sources) = registry_parts(config, Some(cache_key))?;
    let registry = Registry::empty(runtime, sources).with_reconfigure(Box::new(move || {
        Config::load(config_path.as_deref()).map(|c| c.plugins.overrides)
    }));
    Ok(Arc::new(Service::new(Arc::new(store), Arc::new(registry)).with_key_source(key_source(config))))
}
