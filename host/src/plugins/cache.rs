//! The precompiled-artefact cache: compiled components on disk, keyed by the
//! component's sha256 and the engine (wasmtime version + compilation settings).
//!
//! Deserialising machine code is only as safe as the file, so an entry carries
//! the SHA-256 of its body and is checked before use; a corrupt, truncated or
//! incompatible entry is recompiled and rewritten, never trusted. The cache dir
//! must be as well protected as the plugin dir (the data dir, mode 0700).

use std::hash::{Hash, Hasher};
use std::io::Write;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use wasmtime::component::Component;

use super::manifest::Manifest;
use super::runtime::{hex, Plugin, Runtime};
use super::PluginError;

/// Loads a plugin, through the cache in `cache_dir` when given.
pub fn load(
    runtime: &Runtime,
    wasm: &[u8],
    manifest: Manifest,
    origin: String,
    cache_dir: Option<&Path>,
) -> Result<Plugin, PluginError> {
    match cache_dir {
        None => runtime.load(wasm, manifest, origin),
        Some(dir) => runtime.load_with(wasm, manifest, origin, |sha| compile_cached(runtime, wasm, sha, dir)),
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

fn compile_cached(runtime: &Runtime, wasm: &[u8], sha256: &str, dir: &Path) -> Result<Component, String> {
    let path = entry_path(runtime, dir, sha256);
    match read_entry(runtime, &path) {
        Ok(Some(c)) => return Ok(c),
        Ok(None) => {}
        Err(why) => tracing::warn!(path = %path.display(), "precompiled cache entry ignored ({why}); recompiling"),
    }
    let component = runtime.compile(wasm)?;
    match component.serialize() {
        Ok(body) => {
            if let Err(e) = write_entry(dir, &path, &body) {
                tracing::warn!(path = %path.display(), error = %e, "could not write precompiled cache entry");
            }
        }
        Err(e) => tracing::warn!(error = %e, "could not serialise component for the cache"),
    }
    Ok(component)
}

/// `Ok(None)`: no entry. `Err`: an entry that must not be used.
fn read_entry(runtime: &Runtime, path: &Path) -> Result<Option<Component>, String> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e.to_string()),
    };
    if bytes.len() < 32 {
        return Err("truncated".into());
    }
    let (digest, body) = bytes.split_at(32);
    if Sha256::digest(body).as_slice() != digest {
        return Err(format!("checksum mismatch (expected {})", hex(digest)));
    }
    // SAFETY: the body is exactly what `Component::serialize` wrote for an engine with
    // the same compatibility hash (checked by the digest above and by wasmtime's own
    // header check, which rejects other versions and settings).
    unsafe { Component::deserialize(runtime.engine(), body) }.map(Some).map_err(|e| format!("{e:#}"))
}

/// Writes atomically (temp file + rename) so a crash never leaves a half entry.
fn write_entry(dir: &Path, path: &Path, body: &[u8]) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(&Sha256::digest(body))?;
    f.write_all(body)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}
