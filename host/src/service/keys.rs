//! Master-key rotation while the server runs. The new key is handed over in a file the
//! server reads (never over HTTP, in argv or in the environment of the call); after the
//! store has committed the re-wrap, the configured key file is replaced by the new one
//! (the old key kept beside it as `<file>.old`), so the next start finds the right key.
//!
//! Crash safety: until the rename, the old key stays in the configured file and the new
//! one in its own file. Start-up that meets the store's "wrong key" error tries
//! `<configured file>.new` ([`pending_key_file`]) and finishes the handover when that key
//! is the store's; any other new-key path is named in the error by key id.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::Serialize;

use super::{before_commit, require_admin, FieldError, Result, Service, ServiceError};
use crate::crypto::MasterKey;
use crate::store::Principal;

/// Where the running server's master key came from (decides what a rotation can update).
#[derive(Debug, Clone, Default)]
pub enum KeySource {
    /// `CREDHOST_MASTER_KEY`: the operator must update it; the server cannot.
    Env,
    /// A key file (`[keys] master_key_file`, `CREDHOST_MASTER_KEY_FILE`, or the dev key).
    File(PathBuf),
    /// Not known (a service built without the server's wiring, e.g. in tests).
    #[default]
    Unknown,
}

/// Where a rotation writes the new key by default, and where start-up looks for a key
/// whose handover a crash interrupted: `<key file>.new`.
pub fn pending_key_file(key_file: &Path) -> PathBuf {
    suffixed(key_file, ".new")
}

/// Where the replaced key is kept: `<key file>.old`.
pub fn retired_key_file(key_file: &Path) -> PathBuf {
    suffixed(key_file, ".old")
}

fn suffixed(path: &Path, suffix: &str) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

/// The outcome of `POST /api/admin/keys/rotate`. Key ids only; never a key.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct KeyRotation {
    /// Id of the master key retired by this rotation.
    pub previous_key_id: String,
    /// Id of the master key now in use.
    pub key_id: String,
    /// Namespace data keys re-wrapped (in one transaction).
    pub namespaces: usize,
    /// The file that now holds the new key, when the server updated its configured key
    /// file (the next start reads it from there).
    pub key_file: Option<String>,
    /// Where the previous key was kept (0600), when the server updated its key file.
    pub previous_key_file: Option<String>,
    /// What the operator must still do before the next start, if anything.
    pub action_needed: Option<String>,
}

/// Longest key file read (a key is 44 characters of base64).
const MAX_KEY_FILE: u64 = 4096;

/// One rotation at a time, from the read of the new key to the rename of the key file.
static ROTATING: Mutex<()> = Mutex::new(());

fn bad_file(message: impl Into<String>) -> ServiceError {
    ServiceError::InvalidFields(vec![FieldError { field: "new_key_file".into(), message: message.into() }])
}

/// Reads a new key from `path`: an absolute path to a regular file (not a symlink) owned
/// by the server's user and private to it, holding base64 of 32 bytes. Every check is on
/// the one opened descriptor; returns the key and the file's (device, inode).
fn read_new_key(path: &Path) -> Result<(MasterKey, (u64, u64))> {
    if !path.is_absolute() {
        return Err(bad_file("must be an absolute path (the server resolves it, not the caller's directory)"));
    }
    let shown = path.display();
    let mut options = std::fs::OpenOptions::new();
    options.read(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK);
    }
    let file = options.open(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => bad_file(format!("{shown}: no such file")),
        _ if e.raw_os_error() == Some(libc::ELOOP) => bad_file(format!("{shown} is a symbolic link; give the file itself")),
        _ => bad_file(format!("{shown}: cannot be read by the server: {e}")),
    })?;
    let meta = file.metadata().map_err(|e| bad_file(format!("{shown}: {e}")))?;
    if !meta.is_file() {
        return Err(bad_file(format!("{shown} is not a regular file")));
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        // SAFETY: geteuid has no preconditions and cannot fail.
        let me = unsafe { libc::geteuid() };
        if meta.uid() != me {
            return Err(bad_file(format!(
                "{shown} is owned by uid {}, not by the server's user ({me}); a key file must be the server's own",
                meta.uid()
            )));
        }
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(bad_file(format!(
                "{shown} is accessible to other local users (mode {mode:o}); chmod 600 it (and use a fresh key: \
                 this one may have been read)"
            )));
        }
    }
    let mut text = zeroize::Zeroizing::new(String::new());
    file.take(MAX_KEY_FILE + 1)
        .read_to_string(&mut text)
        .map_err(|e| bad_file(format!("{shown}: {e}")))?;
    if text.len() as u64 > MAX_KEY_FILE {
        return Err(bad_file(format!("{shown} is too large to be a key file")));
    }
    #[cfg(unix)]
    let ident = {
        use std::os::unix::fs::MetadataExt;
        (meta.dev(), meta.ino())
    };
    #[cfg(not(unix))]
    let ident = (0, 0);
    // The parse error never quotes the file's text.
    MasterKey::from_base64(&text).map(|k| (k, ident)).map_err(|e| bad_file(format!("{shown}: {e}")))
}

impl Service {
    /// Where this service's master key came from (set by the server's wiring).
    pub fn with_key_source(mut self, source: KeySource) -> Self {
        self.key_source = source;
        self
    }

    /// Rotates the master key to the one in `new_key_file` while requests keep being
    /// served (admin only; audited as `keys.rotate` by the store). Bad input changes
    /// nothing. After the commit the configured key file, if there is one, is replaced by
    /// the new key and the old key kept as `<file>.old`.
    pub fn admin_rotate_master_key(&self, p: &Principal, new_key_file: &str) -> Result<KeyRotation> {
        require_admin(p)?;
        if self.store.is_shared() {
            // The other replicas would keep the old key in memory and fail every unwrap.
            return Err(ServiceError::Conflict(
                "online master-key rotation is not available with PostgreSQL storage: stop every replica, \
                 run `credhost keys rotate` against the database, then start every replica with the new key"
                    .into(),
            ));
        }
        if new_key_file.trim().is_empty() {
            return Err(bad_file("is required: the absolute path of a file holding the new key"));
        }
        let new_path = PathBuf::from(new_key_file);
        let _one_at_a_time = ROTATING.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let (key, handed) = read_new_key(&new_path)?;
        let previous_key_id = self.store.kek_id();
        if key.id() == previous_key_id {
            return Err(bad_file(format!("holds the current master key ({previous_key_id}); give a new one")));
        }
        if let KeySource::File(current) = &self.key_source {
            if same_file(current, &new_path) {
                return Err(bad_file("is the configured master key file itself; write the new key to another file"));
            }
        }
        let key_id = key.id().to_owned();
        let key_text = key.to_base64();
        before_commit()?;
        let namespaces = self.store.rotate_kek(&p.user, key)?;
        tracing::warn!(from = %previous_key_id, to = %key_id, namespaces, "master key rotated");
        let mut out = KeyRotation {
            previous_key_id,
            key_id,
            namespaces,
            key_file: None,
            previous_key_file: None,
            action_needed: None,
        };
        match &self.key_source {
            KeySource::File(current) => match install_key_file(current, &key_text, &new_path, handed) {
                Ok(old) => {
                    out.key_file = Some(current.display().to_string());
                    out.previous_key_file = Some(old.display().to_string());
                }
                Err(e) => {
                    tracing::error!(error = %e, "master key rotated, but the key file was not replaced");
                    out.action_needed = Some(format!(
                        "the store now needs the key in {} but the server could not move it over {}: {e}. \
                         Before the next start, move it there yourself (or point [keys] master_key_file / \
                         CREDHOST_MASTER_KEY_FILE at it)",
                        new_path.display(),
                        current.display()
                    ));
                }
            },
            KeySource::Env => {
                out.action_needed = Some(format!(
                    "this server's master key came from CREDHOST_MASTER_KEY, which it cannot change: set \
                     CREDHOST_MASTER_KEY to the contents of {} before the next start (the old key no longer \
                     opens the store), then delete that file",
                    new_path.display()
                ));
            }
            KeySource::Unknown => {
                out.action_needed = Some(format!(
                    "start the server with the key in {} from now on",
                    new_path.display()
                ));
            }
        }
        Ok(out)
    }
}

fn same_file(a: &Path, b: &Path) -> bool {
    match (std::fs::canonicalize(a), std::fs::canonicalize(b)) {
        (Ok(a), Ok(b)) => a == b,
        _ => a == b,
    }
}

/// Keeps the old key as `<current>.old` (0600, written and synced first), then renames
/// `new` over `current` (atomic) and syncs the directory. Until the rename, `current`
/// still holds the old key and `new` the new one. Returns the `.old` path.
pub fn replace_key_file(current: &Path, new: &Path) -> std::io::Result<PathBuf> {
    let old = keep_old_key(current)?;
    std::fs::rename(new, current)?;
    if let Some(dir) = current.parent() {
        let dir = if dir.as_os_str().is_empty() { Path::new(".") } else { dir };
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(old)
}

/// Copies the current key file to `<current>.old` (0600, synced) before it is replaced.
fn keep_old_key(current: &Path) -> std::io::Result<PathBuf> {
    use std::io::Write;
    let old = retired_key_file(current);
    let text = zeroize::Zeroizing::new(std::fs::read(current)?);
    let mut f = crate::fsperm::private_file(&old)?;
    // private_file keeps an existing file's mode: make sure it is private.
    crate::fsperm::restrict_file(&old)?;
    f.write_all(&text)?;
    f.sync_all()?;
    Ok(old)
}

/// The handover after an online rotation: like [`replace_key_file`], but what goes over
/// `current` is the key the server read and checked, written afresh to a private file
/// beside it (`<current>.tmp`, created exclusively) and renamed over it, never whatever
/// the handed-over path holds by now (it could have been swapped since it was read, or
/// be on another file system). The handed-over file is removed afterwards if it is still
/// the file that was read. Returns the `.old` path.
fn install_key_file(current: &Path, key: &secrecy::SecretString, handed: &Path, read: (u64, u64)) -> std::io::Result<PathBuf> {
    use secrecy::ExposeSecret;
    use std::io::Write;
    let old = keep_old_key(current)?;
    let staged = suffixed(current, ".tmp");
    match std::fs::remove_file(&staged) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut f = options.open(&staged)?;
    f.write_all(key.expose_secret().as_bytes())?;
    f.sync_all()?;
    std::fs::rename(&staged, current)?;
    if let Some(dir) = current.parent() {
        let dir = if dir.as_os_str().is_empty() { Path::new(".") } else { dir };
        std::fs::File::open(dir)?.sync_all()?;
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        if let Ok(m) = std::fs::symlink_metadata(handed) {
            if m.is_file() && (m.dev(), m.ino()) == read {
                let _ = std::fs::remove_file(handed);
            }
        }
    }
    #[cfg(not(unix))]
    let _ = (handed, read);
    Ok(old)
}

/// Start-up with a key the store refuses: when `<key file>.new` holds the store's key
/// (a rotation committed but its key-file rename did not happen), finish the handover
/// and return that key. `expected` is the key id the store names.
pub fn recover_pending(key_file: &Path, expected: &str) -> Option<MasterKey> {
    let pending = pending_key_file(key_file);
    let key = MasterKey::from_file(&pending).ok()?;
    if key.id() != expected {
        return None;
    }
    match replace_key_file(key_file, &pending) {
        Ok(old) => tracing::warn!(
            key_file = %key_file.display(), previous = %old.display(),
            "finished an interrupted master-key rotation: {} held the store's key and now replaces the key file",
            pending.display()
        ),
        Err(e) => tracing::warn!(
            error = %e,
            "using the store's key from {} (an interrupted master-key rotation); move it over {} before the next start",
            pending.display(), key_file.display()
        ),
    }
    Some(key)
}
