//! Key hierarchy, sealing and key check values.
//!
//! # Security
//!
//! - The **master key** ([`MasterKey`], the KEK) never encrypts user data; it only wraps
//!   one **data key** ([`DataKey`], the DEK) per namespace. Rotating the master key
//!   re-wraps data keys and touches no credential.
//! - Every ciphertext is XChaCha20-Poly1305 with a fresh random 24-byte nonce and an AAD
//!   that names what it belongs to: a wrapped DEK is bound to its namespace and to the id of
//!   the master key that wrapped it; a secret blob is bound to namespace, credential id and
//!   version. A blob copied to another record, user or version fails to open.
//! - Plaintext secrets live only in [`SecretString`] values and [`Zeroizing`] buffers.
//!   Key types zeroize on drop, and their `Debug` prints only the key id.
//! - Fingerprints are keyed (HMAC-SHA256 under a per-namespace key derived from the DEK),
//!   so a fingerprint of a low-entropy secret cannot be brute-forced without the key.
//! - Key ids and key check values are HMAC-SHA256 outputs under the key itself with
//!   distinct labels: they identify a key without revealing it.
//!
//! # Example
//!
//! ```
//! use credhost::crypto::{DataKey, MasterKey, SecretMap};
//! use secrecy::{ExposeSecret, SecretString};
//! use uuid::Uuid;
//!
//! let kek = MasterKey::generate()?;
//! let namespace = Uuid::now_v7();
//! let dek = DataKey::generate()?;
//! let wrapped = kek.wrap_dek(&dek, &namespace)?; // store this
//! let dek = kek.unwrap_dek(&wrapped, &namespace)?;
//!
//! let credential = Uuid::now_v7();
//! let mut secrets = SecretMap::new();
//! secrets.insert("token".into(), SecretString::from("s3cret"));
//! let blob = dek.seal_secrets(&namespace, &credential, 1, &secrets)?;
//! let opened = dek.open_secrets(&namespace, &credential, 1, &blob)?;
//! assert_eq!(opened["token"].expose_secret(), "s3cret");
//! // The same blob under another version (or credential, or namespace) does not open.
//! assert!(dek.open_secrets(&namespace, &credential, 2, &blob).is_err());
//! # Ok::<(), credhost::crypto::CryptoError>(())
//! ```

use std::collections::BTreeMap;
use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use chacha20poly1305::aead::{AeadInOut, KeyInit};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use hmac::{Hmac, Mac};
use secrecy::{ExposeSecret, SecretString};
use sha2::Sha256;
use subtle::ConstantTimeEq;
use uuid::Uuid;
use zeroize::Zeroizing;

/// Environment variable holding the base64 master key.
pub const MASTER_KEY_ENV: &str = "CREDHOST_MASTER_KEY";
/// Length of every symmetric key, in bytes.
pub const KEY_LEN: usize = 32;
/// Length of the XChaCha20-Poly1305 nonce, in bytes.
pub const NONCE_LEN: usize = 24;
const TAG_LEN: usize = 16;
/// First byte of every sealed blob: the format version.
const BLOB_V1: u8 = 1;

const LABEL_KEY_ID: &[u8] = b"credhost key id v1";
const LABEL_CHECK: &[u8] = b"credhost key check v1";
const LABEL_FINGERPRINT: &[u8] = b"credhost fingerprint key v1";
const AAD_DEK: &[u8] = b"credhost dek v1";
const AAD_SECRET: &[u8] = b"credhost secret v1";

/// Secret field values by field name; values are zeroized on drop.
pub type SecretMap = BTreeMap<String, SecretString>;

/// Errors from key loading and sealing. None of them carries secret material.
#[derive(Debug, thiserror::Error)]
pub enum CryptoError {
    /// The key text is not base64 of exactly 32 bytes.
    #[error("master key is malformed: {0} (expected base64 of 32 bytes)")]
    KeyFormat(&'static str),
    /// The key file could not be read or written.
    #[error("key file {path}: {source}")]
    KeyFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Neither the environment variable nor a key file provided a key.
    #[error("no master key: set {MASTER_KEY_ENV} (base64, 32 bytes) or configure a key file")]
    NoKey,
    /// Authentication of a ciphertext failed: wrong key, tampered bytes, or a blob moved
    /// to another record. `what` names the object that failed to open.
    #[error("cannot open {what}: authentication failed (wrong key, tampered data, or data moved from another record)")]
    Open { what: String },
    /// A sealed blob or its decrypted payload is structurally invalid.
    #[error("malformed {0}")]
    Malformed(&'static str),
    /// The operating system's random number generator failed.
    #[error("random number generator failed")]
    Rng,
}

type Result<T, E = CryptoError> = std::result::Result<T, E>;

/// Fills `buf` from the OS random number generator.
pub fn random_bytes(buf: &mut [u8]) -> Result<()> {
    getrandom::fill(buf).map_err(|_| CryptoError::Rng)
}

/// Lower-case hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[(b >> 4) as usize] as char);
        s.push(DIGITS[(b & 15) as usize] as char);
    }
    s
}

/// HMAC-SHA256 of the concatenation of `parts` under `key`.
pub fn hmac256(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    let mut mac =
        <Hmac<Sha256> as KeyInit>::new_from_slice(key).expect("HMAC takes any key length");
    for p in parts {
        mac.update(p);
    }
    mac.finalize().into_bytes().into()
}

fn key_id_of(key: &[u8; KEY_LEN]) -> String {
    hex(&hmac256(key, &[LABEL_KEY_ID])[..8])
}

/// Seals `plaintext` (consumed, zeroized) as `BLOB_V1 | nonce | ciphertext+tag`.
fn seal(key: &[u8; KEY_LEN], aad: &[u8], mut plaintext: Zeroizing<Vec<u8>>) -> Result<Vec<u8>> {
    let cipher = XChaCha20Poly1305::new_from_slice(key).expect("key length is 32");
    let mut nonce = [0u8; NONCE_LEN];
    random_bytes(&mut nonce)?;
    // Room for the tag up front, so the in-place encryption never reallocates (a
    // reallocation would leave a plaintext copy behind in freed memory).
    plaintext.reserve_exact(TAG_LEN);
    let buf: &mut Vec<u8> = &mut plaintext;
    cipher
        .encrypt_in_place(&XNonce::from(nonce), aad, buf)
        .map_err(|_| CryptoError::Malformed("plaintext (too long)"))?;
    let mut out = Vec::with_capacity(1 + NONCE_LEN + plaintext.len());
    out.push(BLOB_V1);
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&plaintext); // now ciphertext
    Ok(out)
}

fn open(
    key: &[u8; KEY_LEN],
    aad: &[u8],
    blob: &[u8],
    what: impl FnOnce() -> String,
) -> Result<Zeroizing<Vec<u8>>> {
    if blob.len() < 1 + NONCE_LEN + TAG_LEN || blob[0] != BLOB_V1 {
        return Err(CryptoError::Malformed(
            "sealed blob (bad length or format version)",
        ));
    }
    let cipher = XChaCha20Poly1305::new_from_slice(key).expect("key length is 32");
    let nonce = XNonce::try_from(&blob[1..1 + NONCE_LEN]).expect("nonce length checked");
    let mut buf = Zeroizing::new(blob[1 + NONCE_LEN..].to_vec());
    let v: &mut Vec<u8> = &mut buf;
    cipher
        .decrypt_in_place(&nonce, aad, v)
        .map_err(|_| CryptoError::Open { what: what() })?;
    Ok(buf)
}

fn decode_key(text: &str) -> Result<Zeroizing<[u8; KEY_LEN]>> {
    let raw = Zeroizing::new(
        B64.decode(text.trim())
            .map_err(|_| CryptoError::KeyFormat("not valid base64"))?,
    );
    if raw.len() != KEY_LEN {
        return Err(CryptoError::KeyFormat("wrong length"));
    }
    let mut key = Zeroizing::new([0u8; KEY_LEN]);
    key.copy_from_slice(&raw);
    Ok(key)
}

/// The master key (KEK). Wraps data keys; zeroized on drop; `Debug` shows only its id.
pub struct MasterKey {
    bytes: Zeroizing<[u8; KEY_LEN]>,
    id: String,
}

impl MasterKey {
    fn from_zeroizing(bytes: Zeroizing<[u8; KEY_LEN]>) -> Self {
        let id = key_id_of(&bytes);
        MasterKey { bytes, id }
    }

    /// A fresh random key.
    pub fn generate() -> Result<Self> {
        let mut bytes = Zeroizing::new([0u8; KEY_LEN]);
        random_bytes(&mut bytes[..])?;
        Ok(Self::from_zeroizing(bytes))
    }

    /// Parses base64 of exactly 32 bytes (surrounding whitespace ignored).
    pub fn from_base64(text: &str) -> Result<Self> {
        decode_key(text).map(Self::from_zeroizing)
    }

    /// The key as base64, for writing a key file or printing once (e.g. `keys generate`).
    pub fn to_base64(&self) -> SecretString {
        SecretString::from(B64.encode(&self.bytes[..]))
    }

    /// The key from [`MASTER_KEY_ENV`], or `None` when the variable is unset.
    pub fn from_env() -> Result<Option<Self>> {
        match std::env::var(MASTER_KEY_ENV) {
            Ok(text) => {
                let text = Zeroizing::new(text);
                Self::from_base64(&text).map(Some)
            }
            Err(std::env::VarError::NotPresent) => Ok(None),
            Err(std::env::VarError::NotUnicode(_)) => {
                Err(CryptoError::KeyFormat("not valid base64"))
            }
        }
    }

    /// Reads a key file: base64 of 32 bytes on one line.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = Zeroizing::new(std::fs::read_to_string(path).map_err(|source| {
            CryptoError::KeyFile {
                path: path.to_owned(),
                source,
            }
        })?);
        Self::from_base64(&text)
    }

    /// The production loading rule: [`MASTER_KEY_ENV`] if set, else `key_file` if given,
    /// else [`CryptoError::NoKey`].
    pub fn load(key_file: Option<&Path>) -> Result<Self> {
        if let Some(key) = Self::from_env()? {
            return Ok(key);
        }
        match key_file {
            Some(path) => Self::from_file(path),
            None => Err(CryptoError::NoKey),
        }
    }

    /// Dev mode only: reads `path`, or creates it first (mode 0600, a fresh random key).
    /// Returns `true` when the file was just generated — the caller must then warn loudly
    /// that a development key is in use and must be backed up or replaced.
    pub fn load_or_generate_dev(path: &Path) -> Result<(Self, bool)> {
        let file_err = |source| CryptoError::KeyFile {
            path: path.to_owned(),
            source,
        };
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600);
        }
        match options.open(path) {
            Ok(mut file) => {
                let key = Self::generate()?;
                file.write_all(key.to_base64().expose_secret().as_bytes())
                    .map_err(file_err)?;
                file.write_all(b"\n").map_err(file_err)?;
                file.sync_all().map_err(file_err)?;
                Ok((key, true))
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                Ok((Self::from_file(path)?, false))
            }
            Err(e) => Err(file_err(e)),
        }
    }

    /// The key id: 16 hex digits, HMAC-SHA256(key, "credhost key id v1") truncated.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The key check value stored in the database: HMAC-SHA256(key, "credhost key check v1").
    pub fn check_value(&self) -> [u8; 32] {
        hmac256(&self.bytes[..], &[LABEL_CHECK])
    }

    /// A key for another purpose, derived from this one: HMAC-SHA256(key, `label`).
    /// Labels name the purpose and a version, e.g. `"credhost plugin cache v1"`.
    pub fn subkey(&self, label: &str) -> Zeroizing<[u8; KEY_LEN]> {
        Zeroizing::new(hmac256(&self.bytes[..], &[label.as_bytes()]))
    }

    /// Constant-time comparison of `stored` against this key's check value.
    pub fn matches_check_value(&self, stored: &[u8]) -> bool {
        stored.len() == 32 && bool::from(self.check_value().ct_eq(stored))
    }

    fn dek_aad(&self, namespace: &Uuid) -> Vec<u8> {
        [AAD_DEK, namespace.as_bytes(), self.id.as_bytes()].concat()
    }

    /// Wraps `dek` for `namespace`; AAD = "credhost dek v1" | namespace id | this key's id.
    pub fn wrap_dek(&self, dek: &DataKey, namespace: &Uuid) -> Result<Vec<u8>> {
        let mut plain = Zeroizing::new(Vec::with_capacity(KEY_LEN + TAG_LEN));
        plain.extend_from_slice(&dek.bytes[..]);
        seal(&self.bytes, &self.dek_aad(namespace), plain)
    }

    /// Unwraps a data key wrapped by [`MasterKey::wrap_dek`] for the same namespace.
    pub fn unwrap_dek(&self, wrapped: &[u8], namespace: &Uuid) -> Result<DataKey> {
        let raw = open(&self.bytes, &self.dek_aad(namespace), wrapped, || {
            format!(
                "data key of namespace {namespace} under master key {}",
                self.id
            )
        })?;
        if raw.len() != KEY_LEN {
            return Err(CryptoError::Malformed("data key (wrong length)"));
        }
        let mut bytes = Zeroizing::new([0u8; KEY_LEN]);
        bytes.copy_from_slice(&raw);
        Ok(DataKey { bytes })
    }
}

impl fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MasterKey")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl MasterKey {
    /// The audit chain's MAC key: HMAC-SHA256(master key, "credhost audit chain v1"), so
    /// only a holder of the master key can extend or rewrite the chain.
    pub fn audit_key(&self) -> AuditKey {
        AuditKey { bytes: Zeroizing::new(hmac256(&self.bytes[..], &[b"credhost audit chain v1"])) }
    }
}

/// Keys the audit hash chain. Zeroized on drop; `Debug` shows nothing.
pub struct AuditKey {
    bytes: Zeroizing<[u8; 32]>,
}

impl AuditKey {
    /// HMAC-SHA256 over the concatenation of `parts`.
    pub fn mac(&self, parts: &[&[u8]]) -> [u8; 32] {
        hmac256(&self.bytes[..], parts)
    }
}

impl fmt::Debug for AuditKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AuditKey(..)")
    }
}

/// A namespace's data key (DEK). Seals secret blobs and derives the fingerprint key;
/// zeroized on drop; `Debug` shows only its id.
pub struct DataKey {
    bytes: Zeroizing<[u8; KEY_LEN]>,
}

impl DataKey {
    /// A fresh random data key.
    pub fn generate() -> Result<Self> {
        let mut bytes = Zeroizing::new([0u8; KEY_LEN]);
        random_bytes(&mut bytes[..])?;
        Ok(DataKey { bytes })
    }

    /// The key id (same derivation as [`MasterKey::id`]).
    pub fn id(&self) -> String {
        key_id_of(&self.bytes)
    }

    fn secret_aad(namespace: &Uuid, credential: &Uuid, version: u32) -> Vec<u8> {
        [
            AAD_SECRET,
            namespace.as_bytes(),
            credential.as_bytes(),
            &version.to_be_bytes(),
        ]
        .concat()
    }

    /// Seals all secret fields of one credential version as one blob.
    /// AAD = "credhost secret v1" | namespace id | credential id | version (u32 BE).
    pub fn seal_secrets(
        &self,
        namespace: &Uuid,
        credential: &Uuid,
        version: u32,
        secrets: &SecretMap,
    ) -> Result<Vec<u8>> {
        seal(
            &self.bytes,
            &Self::secret_aad(namespace, credential, version),
            encode_secrets(secrets),
        )
    }

    /// Opens a blob made by [`DataKey::seal_secrets`] with the same namespace, credential and version.
    pub fn open_secrets(
        &self,
        namespace: &Uuid,
        credential: &Uuid,
        version: u32,
        blob: &[u8],
    ) -> Result<SecretMap> {
        let plain = open(
            &self.bytes,
            &Self::secret_aad(namespace, credential, version),
            blob,
            || {
                format!(
                    "secrets of credential {credential} version {version} in namespace {namespace}"
                )
            },
        )?;
        decode_secrets(&plain)
    }

    /// This namespace's fingerprint key: HMAC-SHA256(DEK, "credhost fingerprint key v1").
    pub fn fingerprint_key(&self) -> FingerprintKey {
        FingerprintKey {
            bytes: Zeroizing::new(hmac256(&self.bytes[..], &[LABEL_FINGERPRINT])),
        }
    }
}

impl fmt::Debug for DataKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DataKey")
            .field("id", &self.id())
            .finish_non_exhaustive()
    }
}

/// Per-namespace key for secret fingerprints. Zeroized on drop.
pub struct FingerprintKey {
    bytes: Zeroizing<[u8; 32]>,
}

impl FingerprintKey {
    /// A short keyed fingerprint (16 hex digits) of `value` for field `field` of credential
    /// `credential`: HMAC-SHA256(key, credential | len(field) | field | value), truncated.
    /// It tells whether one credential's secret changed. It is per credential so that a
    /// user cannot confirm a guess of one credential's secret by storing the guess in
    /// another credential and comparing fingerprints.
    pub fn fingerprint(&self, credential: &Uuid, field: &str, value: &SecretString) -> String {
        let len = (field.len() as u32).to_be_bytes();
        hex(&hmac256(
            &self.bytes[..],
            &[
                credential.as_bytes(),
                &len,
                field.as_bytes(),
                value.expose_secret().as_bytes(),
            ],
        )[..8])
    }
}

impl fmt::Debug for FingerprintKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("FingerprintKey(..)")
    }
}

/// SHA-256 of `data`.
pub fn sha256(data: &[u8]) -> [u8; 32] {
    use sha2::Digest;
    Sha256::digest(data).into()
}

/// Plaintext layout of a secret blob: u32 count, then per field u32 len | name | u32 len | value
/// (all big-endian). Sized exactly up front so the buffer never reallocates.
fn encode_secrets(secrets: &SecretMap) -> Zeroizing<Vec<u8>> {
    let size = 4 + secrets
        .iter()
        .map(|(k, v)| 8 + k.len() + v.expose_secret().len())
        .sum::<usize>();
    let mut out = Zeroizing::new(Vec::with_capacity(size + TAG_LEN));
    out.extend_from_slice(&(secrets.len() as u32).to_be_bytes());
    for (name, value) in secrets {
        for part in [name.as_bytes(), value.expose_secret().as_bytes()] {
            out.extend_from_slice(&(part.len() as u32).to_be_bytes());
            out.extend_from_slice(part);
        }
    }
    out
}

fn decode_secrets(mut buf: &[u8]) -> Result<SecretMap> {
    const BAD: CryptoError = CryptoError::Malformed("secret payload");
    fn take<'a>(buf: &mut &'a [u8], n: usize) -> Result<&'a [u8]> {
        if buf.len() < n {
            return Err(BAD);
        }
        let (head, tail) = buf.split_at(n);
        *buf = tail;
        Ok(head)
    }
    fn take_str<'a>(buf: &mut &'a [u8]) -> Result<&'a str> {
        let len = u32::from_be_bytes(take(buf, 4)?.try_into().expect("4 bytes")) as usize;
        std::str::from_utf8(take(buf, len)?).map_err(|_| BAD)
    }
    let count = u32::from_be_bytes(take(&mut buf, 4)?.try_into().expect("4 bytes"));
    let mut map = SecretMap::new();
    for _ in 0..count {
        let name = take_str(&mut buf)?.to_owned();
        // `String::from(&str)` allocates exactly once; the box conversion does not reallocate.
        let value = SecretString::from(String::from(take_str(&mut buf)?));
        map.insert(name, value);
    }
    if !buf.is_empty() {
        return Err(BAD);
    }
    Ok(map)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_open_and_tamper() {
        let dek = DataKey::generate().unwrap();
        let (ns, id) = (Uuid::now_v7(), Uuid::now_v7());
        let mut s = SecretMap::new();
        s.insert("a".into(), SecretString::from("x\"y\\z"));
        s.insert("empty".into(), SecretString::from(""));
        let blob = dek.seal_secrets(&ns, &id, 3, &s).unwrap();
        let back = dek.open_secrets(&ns, &id, 3, &blob).unwrap();
        assert_eq!(back["a"].expose_secret(), "x\"y\\z");
        assert_eq!(back["empty"].expose_secret(), "");
        for i in 0..blob.len() {
            let mut t = blob.clone();
            t[i] ^= 1;
            assert!(dek.open_secrets(&ns, &id, 3, &t).is_err(), "flip at {i}");
        }
        assert!(dek.open_secrets(&Uuid::now_v7(), &id, 3, &blob).is_err());
        assert!(DataKey::generate()
            .unwrap()
            .open_secrets(&ns, &id, 3, &blob)
            .is_err());
    }

    #[test]
    fn dek_wrap_binds_namespace_and_kek() {
        let (k1, k2) = (
            MasterKey::generate().unwrap(),
            MasterKey::generate().unwrap(),
        );
        let ns = Uuid::now_v7();
        let dek = DataKey::generate().unwrap();
        let w = k1.wrap_dek(&dek, &ns).unwrap();
        assert_eq!(k1.unwrap_dek(&w, &ns).unwrap().id(), dek.id());
        assert!(k2.unwrap_dek(&w, &ns).is_err());
        assert!(k1.unwrap_dek(&w, &Uuid::now_v7()).is_err());
        assert!(k1.matches_check_value(&k1.check_value()));
        assert!(!k2.matches_check_value(&k1.check_value()));
        assert_eq!(
            MasterKey::from_base64(k1.to_base64().expose_secret())
                .unwrap()
                .id(),
            k1.id()
        );
    }

    #[test]
    fn fingerprints_are_keyed() {
        let (a, b) = (DataKey::generate().unwrap(), DataKey::generate().unwrap());
        let v = SecretString::from("hunter2");
        let (c1, c2) = (Uuid::now_v7(), Uuid::now_v7());
        let fa = a.fingerprint_key().fingerprint(&c1, "password", &v);
        assert_eq!(fa.len(), 16);
        assert_eq!(fa, a.fingerprint_key().fingerprint(&c1, "password", &v));
        assert_ne!(fa, b.fingerprint_key().fingerprint(&c1, "password", &v));
        assert_ne!(fa, a.fingerprint_key().fingerprint(&c1, "token", &v));
        // Equal secrets in two credentials of one namespace do not match.
        assert_ne!(fa, a.fingerprint_key().fingerprint(&c2, "password", &v));
    }

    #[test]
    fn key_file_dev_mode() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("master.key");
        let (k, created) = MasterKey::load_or_generate_dev(&p).unwrap();
        assert!(created);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(
                std::fs::metadata(&p).unwrap().permissions().mode() & 0o777,
                0o600
            );
        }
        let (k2, created) = MasterKey::load_or_generate_dev(&p).unwrap();
        assert!(!created);
        assert_eq!(k.id(), k2.id());
        assert!(matches!(
            MasterKey::from_base64("abc"),
            Err(CryptoError::KeyFormat(_))
        ));
        let dbg = format!("{k:?}");
        assert!(dbg.contains(k.id()) && !dbg.contains(k.to_base64().expose_secret()));
    }
}
