//! The precompiled-artefact cache: compiled components on disk, keyed by the
//! component's sha256 and the engine (wasmtime version + compilation settings), each
//! with the type descriptor its `describe` returned, so a warm start calls no export.
//!
//! Deserialising machine code is only as safe as the file. Each entry is authenticated
//! under a key derived from the master key and the entry's identity (its file name:
//! component sha256, engine fingerprint, format): XChaCha20-Poly1305 with a fresh random
//! nonce per write, over everything after the tag (descriptor section and body) as
//! associated data. A file written by anyone without the master key, or an entry copied
//! over another one (a hostile plugin's artefact renamed to a built-in's), fails the check
//! and is recompiled, never run; so does a descriptor edited or taken from another entry.
//! The descriptor is also bound to the manifest it was described under (operator
//! overrides included): under another manifest `describe` runs again and the entry is
//! rewritten. Entries are written 0600 in a 0700 directory; a looser directory is
//! tightened with a warning.
//!
//! Entry: `nonce (24) | tag (16) | section length (u32 BE) | section | body`, the
//! section empty or `binding (64 hex digits) | descriptor as JSON`, the body what
//! wasmtime's `Component::serialize` wrote.

use std::hash::{Hash, Hasher};
use std::io::Write;
use std::path::{Path, PathBuf};

use chacha20poly1305::aead::{AeadInOut, KeyInit};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use wasmtime::component::Component;
use zeroize::Zeroizing;

use super::manifest::Manifest;
use super::runtime::{self, Plugin, Runtime};
use super::types::{FieldKind, FieldSpec, TypeDescriptor};
use super::PluginError;

/// Entry format, part of the file name: entries of another format are never read (a
/// reload prunes them). v1 had an HMAC over the body and no descriptor.
const FORMAT: &str = "v2";
/// Part of what a descriptor is bound to besides the manifest: bump it when
/// `TypeDescriptor::from_wit` changes what the same `describe` output becomes.
const DESCRIPTOR_FORMAT: &str = "credhost descriptor 1";
const NONCE_LEN: usize = 24;
const TAG_LEN: usize = 16;
const HEADER_LEN: usize = NONCE_LEN + TAG_LEN + 4;
/// A descriptor binding: hex SHA-256.
const BINDING_LEN: usize = 64;

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

    /// The entry's own key: the file name is its identity (component sha256 + engine
    /// fingerprint + format), so an entry authenticates only under its own name.
    fn cipher(&self, path: &Path) -> XChaCha20Poly1305 {
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let key = Zeroizing::new(crate::crypto::hmac256(
            &self.key[..],
            &[b"credhost compile cache entry", &(name.len() as u64).to_be_bytes(), name.as_bytes()],
        ));
        XChaCha20Poly1305::new_from_slice(&key[..]).expect("key length is 32")
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
    load_hashed(runtime, wasm, &runtime::sha256_hex(wasm), manifest, origin, cache)
}

/// [`load`] with the component's hex sha256 already computed by the caller. The
/// manifest's sha256 pin is checked before anything is compiled or read.
pub fn load_hashed(
    runtime: &Runtime,
    wasm: &[u8],
    sha256: &str,
    manifest: Manifest,
    origin: String,
    cache: Option<&CompileCache>,
) -> Result<Plugin, PluginError> {
    runtime::check_pin(sha256, &manifest, &origin)?;
    let load_err = |message: String| PluginError::Load { origin: origin.clone(), message };
    let Some(cache) = cache else {
        let component = runtime.compile(wasm).map_err(load_err)?;
        return runtime.link(component, manifest, sha256.to_string(), origin);
    };
    let path = entry_path(runtime, &cache.dir, sha256);
    let binding = descriptor_binding(&manifest);
    // The body to (re)write the entry with, and whether to write it even if linking fails.
    let mut write: Option<(Vec<u8>, bool)> = None;
    let (component, descriptor) = match read_entry(runtime, cache, &path) {
        Ok(Some(entry)) => match entry.descriptor.filter(|(b, _)| *b == binding) {
            Some((_, descriptor)) => (entry.component, Some(descriptor)),
            None => {
                // A valid artefact without a descriptor for this manifest: describe, then
                // store the descriptor (only if it loads: a failing plugin is not rewritten
                // on every load).
                write = Some((entry.bytes[entry.body_at..].to_vec(), false));
                (entry.component, None)
            }
        },
        found => {
            if let Err(why) = found {
                tracing::warn!(path = %path.display(), "precompiled cache entry ignored ({why}); recompiling");
            }
            let component = runtime.compile(wasm).map_err(load_err)?;
            match component.serialize() {
                Ok(body) => write = Some((body, true)),
                Err(e) => tracing::warn!(error = %e, "could not serialise component for the cache"),
            }
            (component, None)
        }
    };
    let linked = runtime.link_described(component, manifest, sha256.to_string(), origin, descriptor);
    if let Some((body, always)) = write {
        let described = linked.as_ref().ok().map(|p| &p.descriptor);
        if described.is_some() || always {
            if let Err(e) = write_entry(cache, &path, described.map(|d| (binding.as_str(), d)), &body) {
                tracing::warn!(path = %path.display(), error = %e, "could not write precompiled cache entry");
            }
        }
    }
    linked
}

/// The entry's file name: component hash + engine fingerprint + entry format.
pub fn entry_path(runtime: &Runtime, dir: &Path, sha256: &str) -> PathBuf {
    dir.join(format!("{sha256}-{}-{:016x}-{FORMAT}.cwasm", wasmtime_version(), runtime.engine_fingerprint()))
}

/// The engine's compilation settings as a number (computed once per [`Runtime`]).
pub(crate) fn engine_fingerprint(engine: &wasmtime::Engine) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    engine.precompile_compatibility_hash().hash(&mut h);
    h.finish()
}

pub fn wasmtime_version() -> &'static str {
    // Pinned in Cargo.toml; part of the key so an upgrade never reads old entries.
    "48.0.8"
}

/// What a stored descriptor is valid for besides the component (the entry's name): the
/// manifest after overrides (`describe` may read settings; limits bound it) and the
/// host's descriptor conversion.
fn descriptor_binding(manifest: &Manifest) -> String {
    let mut h = Sha256::new();
    h.update(DESCRIPTOR_FORMAT.as_bytes());
    h.update([0]);
    h.update(env!("CARGO_PKG_VERSION").as_bytes());
    h.update([0]);
    // Serialising a manifest cannot fail (strings, numbers, ordered maps); if it ever
    // did, the binding would match nothing stored and `describe` would run.
    h.update(serde_json::to_vec(manifest).unwrap_or_default());
    runtime::hex(&h.finalize())
}

/// A verified entry: its component and, if stored, (binding, descriptor).
struct Entry {
    bytes: Vec<u8>,
    body_at: usize,
    component: Component,
    descriptor: Option<(String, TypeDescriptor)>,
}

/// `Ok(None)`: no entry. `Err`: an entry that must not be used.
fn read_entry(runtime: &Runtime, cache: &CompileCache, path: &Path) -> Result<Option<Entry>, String> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e.to_string()),
    };
    if bytes.len() < HEADER_LEN {
        return Err("truncated".into());
    }
    let (nonce, rest) = bytes.split_at(NONCE_LEN);
    let (tag, covered) = rest.split_at(TAG_LEN);
    let nonce = XNonce::try_from(nonce).map_err(|_| "truncated".to_string())?;
    let tag = chacha20poly1305::Tag::try_from(tag).map_err(|_| "truncated".to_string())?;
    if cache.cipher(path).decrypt_inout_detached(&nonce, covered, (&mut [][..]).into(), &tag).is_err() {
        return Err("authentication failed: not written by this host for this component (tampered, \
                    copied from another entry, or written under another master key)"
            .into());
    }
    let section_len = u32::from_be_bytes(covered[..4].try_into().expect("4 bytes")) as usize;
    let body_at = HEADER_LEN.checked_add(section_len).filter(|&at| at <= bytes.len()).ok_or("truncated")?;
    let descriptor = match section_len {
        0 => None,
        // Authenticated, so written by this host; one it cannot read is described anew.
        _ => parse_descriptor(&bytes[HEADER_LEN..body_at]),
    };
    // SAFETY: the body is exactly what this host's `Component::serialize` wrote for this
    // component and an engine with the same compatibility hash: the authentication above
    // binds body and entry name, and wasmtime's own header check rejects other versions/settings.
    let component = unsafe { Component::deserialize(runtime.engine(), &bytes[body_at..]) }.map_err(|e| format!("{e:#}"))?;
    Ok(Some(Entry { bytes, body_at, component, descriptor }))
}

/// Writes atomically (temp file + rename) so a crash never leaves a half entry; the
/// directory is 0700 and entries 0600 (machine code other local users must not swap).
fn write_entry(
    cache: &CompileCache,
    path: &Path,
    descriptor: Option<(&str, &TypeDescriptor)>,
    body: &[u8],
) -> std::io::Result<()> {
    let section = match descriptor {
        Some((binding, d)) => [binding.as_bytes(), &serde_json::to_vec(d)?].concat(),
        None => Vec::new(),
    };
    let section_len = u32::try_from(section.len()).map_err(std::io::Error::other)?;
    let mut covered = Vec::with_capacity(4 + section.len() + body.len());
    covered.extend_from_slice(&section_len.to_be_bytes());
    covered.extend_from_slice(&section);
    covered.extend_from_slice(body);
    let mut nonce = [0u8; NONCE_LEN];
    crate::crypto::random_bytes(&mut nonce).map_err(std::io::Error::other)?;
    let tag = cache
        .cipher(path)
        .encrypt_inout_detached(&XNonce::from(nonce), &covered, (&mut [][..]).into())
        .map_err(|_| std::io::Error::other("cannot authenticate the entry"))?;

    crate::fsperm::private_dir(&cache.dir)?;
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    let mut f = crate::fsperm::private_file(&tmp)?;
    f.write_all(&nonce)?;
    f.write_all(tag.as_slice())?;
    f.write_all(&covered)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

/// The descriptor section as written by [`write_entry`]; `None` if this build cannot
/// read it back exactly (a field this build does not know would be lost).
fn parse_descriptor(section: &[u8]) -> Option<(String, TypeDescriptor)> {
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Stored {
        id: String,
        display_name: String,
        version: String,
        description: String,
        fields: Vec<StoredField>,
        environments: Vec<String>,
    }
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct StoredField {
        name: String,
        label: String,
        kind: String,
        secret: bool,
        required: bool,
        help: String,
        #[serde(default)]
        choices: Vec<String>,
        #[serde(default)]
        default: Option<String>,
    }
    if section.len() < BINDING_LEN {
        return None;
    }
    let (binding, json) = section.split_at(BINDING_LEN);
    let binding = std::str::from_utf8(binding).ok()?.to_string();
    let stored: Stored = serde_json::from_slice(json).ok()?;
    let mut fields = Vec::with_capacity(stored.fields.len());
    for f in stored.fields {
        let kind = match f.kind.as_str() {
            "text" => FieldKind::Text,
            "multiline" => FieldKind::Multiline,
            "choice" => FieldKind::Choice,
            "number" => FieldKind::Number,
            "boolean" => FieldKind::Boolean,
            "url" => FieldKind::Url,
            _ => return None,
        };
        fields.push(FieldSpec {
            name: f.name,
            label: f.label,
            kind,
            secret: f.secret,
            required: f.required,
            help: f.help,
            choices: f.choices,
            default: f.default,
        });
    }
    let d = TypeDescriptor {
        id: stored.id,
        display_name: stored.display_name,
        version: stored.version,
        description: stored.description,
        fields,
        environments: stored.environments,
    };
    // Exactly what was stored (the same serialiser wrote it), or nothing: then
    // `describe` runs and the entry is rewritten.
    (serde_json::to_vec(&d).ok()? == json).then_some((binding, d))
}

/// Removes entries no loaded plugin references (older versions of a plugin, plugins
/// since removed, entries of another wasmtime, other settings or an older entry format).
/// `keep`: the sha256 of every plugin now loaded. Leftover temp files of a crashed write go too.
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
