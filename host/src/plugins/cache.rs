//! The precompiled-artefact cache: compiled components on disk, keyed by the
//! component's sha256 and the engine (wasmtime version + compilation settings).
//!
//! Deserialising machine code is only as safe as the file. Each entry carries an
//! HMAC-SHA256 under a key derived from the master key, over the entry's identity
//! (component sha256, engine fingerprint) and its body: a file written by anyone without
//! the master key, or an entry copied over another one (a hostile plugin's artefact
//! renamed to a built-in's), fails the check and is recompiled, never run. Entries
//! are written 0600 in a 0700 directory; a looser directory is tightened with a warning.

use std::hash::{Hash, Hasher};
use std::io::Write;
use std::path::{Path, PathBuf};

use subtle::ConstantTimeEq;
use wasmtime::component::Component;
use zeroize::Zeroizing;

use super::manifest::Manifest;
use super::runtime::{Plugin, Runtime};
use super::PluginError;

/// A cache directory and the key that authenticates its entries.
#[derive(Clone)]
pub struct CompileCache {
    pub dir: PathBuf,
    key: Zeroizing<[u8; 32]>,
}

impl std::fmt::Debug for CompileCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CompileCache").field("dir", &self.dir).finish_non_exhaustive()
    }
}

impl CompileCache {
    /// `key`: 32 bytes only the host knows (the master key's `"credhost plugin cache v1"` subkey).
    pub fn new(dir: PathBuf, key: Zeroizing<[u8; 32]>) -> CompileCache {
        CompileCache { dir, key }
    }

    fn mac(&self, path: &Path, body: &[u8]) -> [u8; 32] {
        // The file name is the entry's identity (component sha256 + engine fingerprint).
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        crate::crypto::hmac256(&self.key[..], &[&(name.len() as u64).to_be_bytes(), name.as_bytes(), body])
    }
}

/// Loads a plugin, through the cache when given.
pub fn load(
    runtime: &Runtime,
    wasm: &[u8],
    manifest: Manifest,
    origin: String,
    cache: Option<&CompileCache>,
) -> Result<Plugin, PluginError> {
    match cache {
        None => runtime.load(wasm, manifest, origin),
        Some(c) => runtime.load_with(wasm, manifest, origin, |sha| compile_cached(runtime, wasm, sha, c)),
    }
}

/// The entry's file name: component hash + engine fingerprint.
pub fn entry_path(runtime: &Runtime, dir: &Path, sha256: &str) -> PathBuf {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    runtime.engine().precompile_compatibility_hash().hash(&mut h);
    dir.join(format!("{sha256}-{}-{:016x}.cwasm", wasmtime_version(), h.finish()))
}

pub fn wasmtime_version() -> &'static str {
    // Pinned in Cargo.toml; part of the key so an upgrade never reads old entries.
    "48.0.8"
}

fn compile_cached(runtime: &Runtime, wasm: &[u8], sha256: &str, cache: &CompileCache) -> Result<Component, String> {
    let path = entry_path(runtime, &cache.dir, sha256);
    match read_entry(runtime, cache, &path) {
        Ok(Some(c)) => return Ok(c),
        Ok(None) => {}
        Err(why) => tracing::warn!(path = %path.display(), "precompiled cache entry ignored ({why}); recompiling"),
    }
    let component = runtime.compile(wasm)?;
    match component.serialize() {
        Ok(body) => {
            if let Err(e) = write_entry(cache, &path, &body) {
                tracing::warn!(path = %path.display(), error = %e, "could not write precompiled cache entry");
            }
        }
        Err(e) => tracing::warn!(error = %e, "could not serialise component for the cache"),
    }
    Ok(component)
}

/// `Ok(None)`: no entry. `Err`: an entry that must not be used.
fn read_entry(runtime: &Runtime, cache: &CompileCache, path: &Path) -> Result<Option<Component>, String> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e.to_string()),
    };
    if bytes.len() < 32 {
        return Err("truncated".into());
    }
    let (tag, body) = bytes.split_at(32);
    if !bool::from(cache.mac(path, body).ct_eq(tag)) {
        return Err("authentication failed: not written by this host for this component (tampered, \
                    copied from another entry, or written under another master key)"
            .into());
    }
    // SAFETY: the body is exactly what this host's `Component::serialize` wrote for this
    // component and an engine with the same compatibility hash: the keyed MAC above binds
    // body and entry name, and wasmtime's own header check rejects other versions/settings.
    unsafe { Component::deserialize(runtime.engine(), body) }.map(Some).map_err(|e| format!("{e:#}"))
}

/// Writes atomically (temp file + rename) so a crash never leaves a half entry; the
/// directory is 0700 and entries 0600 (machine code other local users must not swap).
fn write_entry(cache: &CompileCache, path: &Path, body: &[u8]) -> std::io::Result<()> {
    crate::fsperm::private_dir(&cache.dir)?;
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    let mut f = crate::fsperm::private_file(&tmp)?;
    f.write_all(&cache.mac(path, body))?;
    f.write_all(body)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

/// Removes entries no loaded plugin references (older versions of a plugin, plugins
/// since removed, entries of another wasmtime or other settings). `keep`: the sha256 of
/// every plugin now loaded. Leftover temp files of a crashed write go too.
pub fn prune(runtime: &Runtime, cache: &CompileCache, keep: &[&str]) -> usize {
    let wanted: std::collections::BTreeSet<PathBuf> = keep.iter().map(|sha| entry_path(runtime, &cache.dir, sha)).collect();
    let Ok(entries) = std::fs::read_dir(&cache.dir) else { return 0 };
    let mut removed = 0;
    for path in entries.filter_map(|e| e.ok().map(|e| e.path())) {
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        // A temp file may be another process's write in progress: only old ones go.
        let stale_tmp = name.contains(".tmp")
            && std::fs::metadata(&path)
                .and_then(|m| m.modified())
                .is_ok_and(|t| t.elapsed().is_ok_and(|age| age > std::time::Duration::from_secs(600)));
        let ours = name.ends_with(".cwasm") || stale_tmp;
        if !ours || wanted.contains(&path) || !path.is_file() {
            continue;
        }
        match std::fs::remove_file(&path) {
            Ok(()) => removed += 1,
            Err(e) => tracing::warn!(path = %path.display(), error = %e, "could not prune a compile cache entry"),
        }
    }
    if removed > 0 {
        tracing::info!(removed, dir = %cache.dir.display(), "pruned compile cache entries nothing references");
    }
    removed
}
