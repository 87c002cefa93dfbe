//! The loaded plugins, by type id. Built-ins are embedded in the binary by
//! `build.rs`; a reload swaps the whole catalog at once, so a call in flight
//! keeps the `Arc<Plugin>` it started with.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use super::manifest::Manifest;
use super::runtime::{Plugin, Runtime};
use super::PluginError;

mod embedded {
    include!(concat!(env!("OUT_DIR"), "/builtins.rs"));
}

/// The built-in plugins as shipped: (crate name, manifest text, component bytes).
pub fn builtin_sources() -> &'static [(&'static str, &'static str, &'static [u8])] {
    embedded::BUILTINS
}

pub struct Registry {
    runtime: Arc<Runtime>,
    catalog: RwLock<Arc<BTreeMap<String, Arc<Plugin>>>>,
}

impl Registry {
    /// A registry holding every built-in type. A built-in that fails to load is a
    /// build defect, so this fails loudly rather than serving without it.
    pub fn with_builtins(runtime: Arc<Runtime>) -> Result<Registry, PluginError> {
        let loaded = load_builtins(&runtime)?;
        let catalog = loaded.into_iter().map(|p| (p.manifest.id.clone(), Arc::new(p))).collect();
        Ok(Registry { runtime, catalog: RwLock::new(Arc::new(catalog)) })
    }

    pub fn runtime(&self) -> &Runtime {
        &self.runtime
    }

    /// The plugin for type `id`.
    pub fn get(&self, id: &str) -> Result<Arc<Plugin>, PluginError> {
        self.snapshot().get(id).cloned().ok_or_else(|| PluginError::UnknownType(id.to_string()))
    }

    /// Every loaded plugin, ordered by type id.
    pub fn list(&self) -> Vec<Arc<Plugin>> {
        self.snapshot().values().cloned().collect()
    }

    /// Adds or replaces one plugin atomically.
    pub fn insert(&self, plugin: Plugin) {
        let mut guard = self.catalog.write().unwrap_or_else(|p| p.into_inner());
        let mut next = (**guard).clone();
        next.insert(plugin.manifest.id.clone(), Arc::new(plugin));
        *guard = Arc::new(next);
    }

    fn snapshot(&self) -> Arc<BTreeMap<String, Arc<Plugin>>> {
        self.catalog.read().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// Compiles the built-ins on all cores (compilation dominates start-up).
fn load_builtins(runtime: &Runtime) -> Result<Vec<Plugin>, PluginError> {
    std::thread::scope(|s| {
        let handles: Vec<_> = builtin_sources()
            .iter()
            .map(|(name, manifest, wasm)| {
                s.spawn(move || {
                    let origin = format!("builtin:{name}");
                    let manifest = Manifest::parse(manifest)
                        .map_err(|message| PluginError::Load { origin: origin.clone(), message })?;
                    runtime.load(wasm, manifest, origin)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().expect("plugin loader thread panicked")).collect()
    })
}
