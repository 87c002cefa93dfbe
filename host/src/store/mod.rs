//! Encrypted per-user credential store on [redb].
//!
//! One file holds users, their namespaces (one each, with its own data key wrapped by the
//! master key), credential metadata, sealed secret versions, API tokens (as SHA-256 only)
//! and a hash-chained audit log. Every operation is one durable write transaction
//! (`Durability::Immediate`), and every write appends its audit record in that same
//! transaction, so the log and the data never disagree after a crash.
//!
//! - Open with the master key: a wrong key is refused before anything is read or written
//!   ([`StoreError::WrongKey`] names both key ids); an unknown schema is refused too.
//! - Metadata is plaintext (JSON); secret field values exist only sealed, one blob per
//!   credential version, bound to namespace, credential id and version.
//! - [`Store::reveal`] is the only decrypting read and it is audited.
//! - Soft-deleted credentials keep their name reserved until purged, so a restore
//!   never collides.
//! - Another namespace's credential id behaves exactly like a missing one: `NotFound`.
//!
//! ```
//! use credhost::crypto::MasterKey;
//! use credhost::store::{NewCredential, Role, Store};
//! use secrecy::{ExposeSecret, SecretString};
//!
//! let dir = tempfile::tempdir().unwrap();
//! let store = Store::open(dir.path().join("credhost.redb"), MasterKey::generate()?)?;
//! let alice = store.add_user("admin", "alice", Role::User)?;
//! let mut new = NewCredential::new("broker", "alpaca");
//! new.secrets.insert("secret_key".into(), SecretString::from("s3cret"));
//! let cred = store.create_credential("alice", alice.namespace, new)?;
//! let secrets = store.reveal("alice", alice.namespace, cred.id, "example")?;
//! assert_eq!(secrets["secret_key"].expose_secret(), "s3cret");
//! # Ok::<(), credhost::store::StoreError>(())
//! ```
//!
//! [`Store`] is `Send + Sync`: share it (e.g. in an `Arc`) and call its `&self` methods
//! from any thread; redb runs one write transaction at a time and reads never block.
//! [`Store::rotate_kek`] works on a store in use: the master key is swapped in memory
//! together with the commit that re-wraps the data keys, and every transaction sees the
//! key that matches its snapshot.
//!
//! Layout: see [`schema`].

mod audit;
mod credentials;
mod error;
pub mod history;
pub mod outbox;
pub mod schema;
mod tokens;
pub mod versions;
pub mod webhooks;

use std::path::{Path, PathBuf};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use redb::{
    Database, Durability, ReadOnlyDatabase, ReadTransaction, ReadableDatabase, ReadableTable,
    TableError, WriteTransaction,
};
use serde::{Deserialize, Serialize};

pub use audit::{AuditEntry, AuditPage, AuditQuery, AuditRecord, Outcome};
pub use credentials::{
    Credential, CredentialUpdate, Deleted, ListQuery, Lookup, NewCredential, Page, SecretField, TestResult, TestTrigger,
    TestStatusFilter, TestVerdict, BINDING_KEY,
};
pub use error::{Result, StoreError};
pub use history::{Health, MonitorState, RecordOpts};
pub use outbox::Event;
pub use schema::{CredentialId, NamespaceId, SCHEMA_VERSION};
pub use tokens::{Grant, Principal, Scope, TokenInfo, TokenRefusal, TokenSpec, TOKEN_PREFIX};

use std::sync::{Arc, PoisonError, RwLock};

use crate::crypto::{AuditKey, DataKey, MasterKey};
use schema::*;

/// What a user may do. Admins manage users, tokens and plugins.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Admin,
    User,
}

/// A user and their namespace.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    pub name: String,
    pub namespace: NamespaceId,
    pub role: Role,
    pub created_at: u64,
}

/// Result of [`Store::verify_keys`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyReport {
    pub kek_id: String,
    /// Namespaces whose data key unwrapped under the master key (all of them, on `Ok`).
    pub namespaces: usize,
}

/// The credential store. See the [module docs](self).
pub struct Store {
    db: Database,
    /// The master key and what derives from it. Replaced only by [`Store::rotate_kek`],
    /// which holds the write lock across its commit and the swap: a write transaction
    /// takes the keys after it begins (so after any rotation committed and swapped), a
    /// read snapshot takes them together with its snapshot ([`Store::begin_read`]).
    keys: RwLock<Arc<Keys>>,
    path: PathBuf,
    /// Non-durable audit commits wait for the next durable one ([`Store::flush_audit`]).
    lazy_pending: std::sync::atomic::AtomicBool,
}

/// A durable write transaction that knows the audit key, so every audit record appended
/// in it is keyed. Derefs to redb's transaction.
pub(crate) struct Txn {
    inner: WriteTransaction,
    audit_key: Arc<AuditKey>,
}

impl std::ops::Deref for Txn {
    type Target = WriteTransaction;
    fn deref(&self) -> &WriteTransaction {
        &self.inner
    }
}

impl std::ops::DerefMut for Txn {
    fn deref_mut(&mut self) -> &mut WriteTransaction {
        &mut self.inner
    }
}

impl Txn {
    pub(crate) fn commit(self) -> std::result::Result<(), redb::CommitError> {
        self.inner.commit()
    }
}

/// The master key and the audit key derived from it: always replaced together.
pub(crate) struct Keys {
    kek: MasterKey,
    /// Keys the audit chain.
    audit_key: Arc<AuditKey>,
}

impl Keys {
    fn new(kek: MasterKey) -> Keys {
        let audit_key = Arc::new(kek.audit_key());
        Keys { kek, audit_key }
    }

    fn unwrap_dek(&self, rec: &NamespaceRecord) -> Result<DataKey> {
        let wrapped = B64.decode(&rec.wrapped_dek).map_err(|_| {
            StoreError::Corrupt(format!("namespace {}: wrapped key is not base64", rec.id))
        })?;
        Ok(self.kek.unwrap_dek(&wrapped, rec.id.as_uuid())?)
    }

    fn dek_in(&self, table: &impl ReadableTable<u128, &'static [u8]>, ns: NamespaceId) -> Result<DataKey> {
        let rec: NamespaceRecord = match table.get(ns.key())? {
            Some(v) => dec(v.value(), "namespace")?,
            None => return Err(StoreError::NotFound),
        };
        self.unwrap_dek(&rec)
    }
}

/// A read transaction with the keys that match its snapshot (a rotation may commit and
/// swap the keys while it is open). Derefs to redb's transaction.
pub(crate) struct Snapshot {
    inner: ReadTransaction,
    keys: Arc<Keys>,
}

impl std::ops::Deref for Snapshot {
    type Target = ReadTransaction;
    fn deref(&self) -> &ReadTransaction {
        &self.inner
    }
}

impl Snapshot {
    /// A namespace's data key, unwrapped with the master key of this snapshot.
    pub(crate) fn dek_in(&self, table: &impl ReadableTable<u128, &'static [u8]>, ns: NamespaceId) -> Result<DataKey> {
        self.keys.dek_in(table, ns)
    }

    pub(crate) fn audit_key(&self) -> &AuditKey {
        &self.keys.audit_key
    }
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("path", &self.path)
            .field("kek", &self.keys().kek)
            .finish()
    }
}

pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

enum MetaState {
    Empty,
    Ready,
}

/// Checks schema version and key check value; reads only.
fn check_meta(txn: &ReadTransaction, kek: &MasterKey) -> Result<MetaState> {
    let meta = match txn.open_table(META) {
        Ok(t) => t,
        Err(TableError::TableDoesNotExist(_)) => return Ok(MetaState::Empty),
        Err(e) => return Err(e.into()),
    };
    let Some(version) = meta.get(META_SCHEMA_VERSION)? else {
        return Ok(MetaState::Empty);
    };
    let found: u32 = dec(version.value(), "schema version")?;
    if found != SCHEMA_VERSION {
        return Err(StoreError::SchemaVersion {
            found,
            supported: SCHEMA_VERSION,
        });
    }
    let expected: String = match meta.get(META_KEK_ID)? {
        Some(v) => dec(v.value(), "kek id")?,
        None => return Err(StoreError::Corrupt("meta has no kek id".into())),
    };
    let check = meta
        .get(META_KEY_CHECK)?
        .ok_or_else(|| StoreError::Corrupt("meta has no key check value".into()))?;
    if expected != kek.id() || !kek.matches_check_value(check.value()) {
        return Err(StoreError::WrongKey {
            expected,
            given: kek.id().to_owned(),
        });
    }
    Ok(MetaState::Ready)
}

impl Store {
    /// Opens the store at `path`, creating and initialising it if the file does not exist.
    ///
    /// An existing file is first opened read-only to check the schema version and the
    /// master key, so a wrong key or unknown schema leaves the file's bytes untouched.
    /// (After a crash, redb must repair the file before it can be read; that repair
    /// rewrites only redb's own bookkeeping, and the key check follows it.)
    pub fn open(path: impl AsRef<Path>, kek: MasterKey) -> Result<Store> {
        let path = path.as_ref().to_owned();
        let existing = std::fs::metadata(&path)
            .map(|m| m.len() > 0)
            .unwrap_or(false);
        if existing {
            match ReadOnlyDatabase::open(&path) {
                Ok(ro) => {
                    check_meta(&ro.begin_read()?, &kek)?;
                    ro.close()?;
                }
                Err(redb::DatabaseError::RepairAborted) => {} // needs repair: checked below
                Err(e) => return Err(e.into()),
            }
        }
        // Opens an existing file, or initialises a missing or empty one.
        let db = Database::create(&path)?;
        let store = Store {
            db,
            keys: RwLock::new(Arc::new(Keys::new(kek))),
            path,
            lazy_pending: std::sync::atomic::AtomicBool::new(false),
        };
        if let MetaState::Empty = check_meta(&store.db.begin_read()?, &store.keys().kek)? {
            store.init()?;
        }
        store.migrate_audit()?;
        store.ensure_tables()?;
        Ok(store)
    }

    fn init(&self) -> Result<()> {
        let txn = self.begin_write()?;
        let keys = self.keys();
        let kek = &keys.kek;
        if txn.list_tables()?.next().is_some() {
            return Err(StoreError::Corrupt(
                "the file is a redb database but not a credhost store (no meta table)".into(),
            ));
        }
        {
            let mut meta = txn.open_table(META)?;
            meta.insert(META_SCHEMA_VERSION, enc(&SCHEMA_VERSION).as_slice())?;
            meta.insert(META_KEK_ID, enc(&kek.id()).as_slice())?;
            meta.insert(META_KEY_CHECK, kek.check_value().as_slice())?;
            // Keyed and indexed from the first record.
            meta.insert(META_AUDIT_KEYED_FROM, enc(&1u64).as_slice())?;
            meta.insert(META_AUDIT_INDEX, enc(&1u32).as_slice())?;
        }
        // Create every table so read transactions never meet a missing one.
        txn.open_table(NAMESPACES)?;
        txn.open_table(USERS)?;
        txn.open_table(CREDENTIALS)?;
        txn.open_table(NAMES)?;
        txn.open_table(VERSIONS)?;
        txn.open_table(AUDIT)?;
        txn.open_table(AUDIT_BY_NS)?;
        txn.open_table(TOKENS)?;
        audit::append(
            &txn,
            AuditEntry::ok("system", "store.init").detail(format!("kek_id={}", kek.id())),
        )?;
        txn.commit()?;
        Ok(())
    }

    /// Creates tables newer than the file (see [`schema::ensure_tables`]).
    fn ensure_tables(&self) -> Result<()> {
        let txn = self.begin_write()?;
        schema::ensure_tables(&txn)?;
        txn.commit()?;
        Ok(())
    }

    /// The file this store lives in.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Id of the master key in use.
    pub fn kek_id(&self) -> String {
        self.keys().kek.id().to_owned()
    }

    /// The current keys. Use them with a write transaction already begun, or take them
    /// with a snapshot through [`Store::begin_read`].
    fn keys(&self) -> Arc<Keys> {
        self.keys.read().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// A write transaction with durable (fsync-on-commit) durability, set explicitly even
    /// though it is redb 4's default.
    pub(crate) fn begin_write(&self) -> Result<Txn> {
        let mut txn = self.db.begin_write()?;
        txn.set_durability(Durability::Immediate)?;
        // After begin: a rotation has either not started or committed and swapped.
        Ok(Txn { inner: txn, audit_key: self.keys().audit_key.clone() })
    }

    /// A read transaction and the keys of its snapshot, taken under the keys' lock so a
    /// rotation cannot commit between the two. Reads that unwrap data keys or check the
    /// audit chain use this, not `db.begin_read`.
    pub(crate) fn begin_read(&self) -> Result<Snapshot> {
        let keys = self.keys.read().unwrap_or_else(PoisonError::into_inner);
        let inner = self.db.begin_read()?;
        Ok(Snapshot { inner, keys: keys.clone() })
    }

    /// Loads and unwraps a namespace's data key inside a WRITE transaction (no rotation
    /// can commit while it is open). Read snapshots use [`Snapshot::dek_in`].
    pub(crate) fn dek_in(
        &self,
        table: &impl ReadableTable<u128, &'static [u8]>,
        ns: NamespaceId,
    ) -> Result<DataKey> {
        self.keys().dek_in(table, ns)
    }

    /// Creates a user with a fresh namespace and data key.
    pub fn add_user(&self, actor: &str, name: &str, role: Role) -> Result<User> {
        validate_user_name(name)?;
        let txn = self.begin_write()?;
        let keys = self.keys();
        let kek = &keys.kek;
        let user = {
            let mut users = txn.open_table(USERS)?;
            if users.get(name)?.is_some() {
                return Err(StoreError::UserExists {
                    name: name.to_owned(),
                });
            }
            let ns = NamespaceId::from_uuid(uuid::Uuid::now_v7());
            let dek = DataKey::generate()?;
            let now = now_ms();
            let rec = NamespaceRecord {
                id: ns,
                user: name.to_owned(),
                wrapped_dek: B64.encode(kek.wrap_dek(&dek, ns.as_uuid())?),
                kek_id: kek.id().to_owned(),
                created_at: now,
            };
            txn.open_table(NAMESPACES)?
                .insert(ns.key(), enc(&rec).as_slice())?;
            let user = User {
                name: name.to_owned(),
                namespace: ns,
                role,
                created_at: now,
            };
            users.insert(name, enc(&user).as_slice())?;
            user
        };
        let role = match role {
            Role::Admin => "admin",
            Role::User => "user",
        };
        audit::append(
            &txn,
            AuditEntry::ok(actor, "user.add")
                .ns(user.namespace)
                .detail(format!("user={name} role={role}")),
        )?;
        txn.commit()?;
        Ok(user)
    }

    /// A user by name.
    pub fn get_user(&self, name: &str) -> Result<User> {
        let txn = self.db.begin_read()?;
        let users = txn.open_table(USERS)?;
        let v = users.get(name)?.ok_or(StoreError::NotFound)?;
        dec(v.value(), "user")
    }

    /// The user owning namespace `ns`.
    pub fn namespace_user(&self, ns: NamespaceId) -> Result<String> {
        let txn = self.db.begin_read()?;
        let v = txn.open_table(NAMESPACES)?.get(ns.key())?.ok_or(StoreError::NotFound)?;
        Ok(dec::<NamespaceRecord>(v.value(), "namespace")?.user)
    }

    /// All users, ordered by name.
    pub fn list_users(&self) -> Result<Vec<User>> {
        let txn = self.db.begin_read()?;
        let users = txn.open_table(USERS)?;
        users
            .iter()?
            .map(|row| dec(row?.1.value(), "user"))
            .collect()
    }

    /// Re-wraps every namespace's data key under `new_kek` and records its id and check
    /// value, all in one transaction: an interruption leaves the old key fully in force.
    /// Afterwards only `new_kek` opens the store. Returns the number of namespaces.
    ///
    /// Safe while the store serves requests: the in-memory key is replaced under the keys'
    /// write lock together with the commit, so every transaction sees either the old
    /// wrapping with the old key or the new wrapping with the new key, never a mix.
    pub fn rotate_kek(&self, actor: &str, new_kek: MasterKey) -> Result<usize> {
        let mut txn = self.begin_write()?;
        // Taken with the write transaction open: no other rotation can swap them now.
        let old = self.keys();
        if new_kek.id() == old.kek.id() {
            return Err(StoreError::Invalid(
                "the new master key is the current one".into(),
            ));
        }
        let count = {
            let mut table = txn.open_table(NAMESPACES)?;
            let mut recs = Vec::new();
            for row in table.iter()? {
                recs.push(dec::<NamespaceRecord>(row?.1.value(), "namespace")?);
            }
            for rec in &mut recs {
                let dek = old.unwrap_dek(rec)?;
                rec.wrapped_dek = B64.encode(new_kek.wrap_dek(&dek, rec.id.as_uuid())?);
                rec.kek_id = new_kek.id().to_owned();
                table.insert(rec.id.key(), enc(rec).as_slice())?;
            }
            let mut meta = txn.open_table(META)?;
            meta.insert(META_KEK_ID, enc(&new_kek.id()).as_slice())?;
            meta.insert(META_KEY_CHECK, new_kek.check_value().as_slice())?;
            recs.len()
        };
        let detail = format!(
            "from={} to={} namespaces={count}",
            old.kek.id(),
            new_kek.id()
        );
        // The audit key derives from the master key: re-key the chain in this same
        // transaction (refused if the chain is broken), then record the rotation under it.
        let new = Keys::new(new_kek);
        audit::rekey(&mut txn, new.audit_key.clone())?;
        audit::append(&txn, AuditEntry::ok(actor, "keys.rotate").detail(detail))?;
        // Commit and swap under the write lock: no snapshot starts in between.
        let mut slot = self.keys.write().unwrap_or_else(PoisonError::into_inner);
        txn.commit()?;
        *slot = Arc::new(new);
        Ok(count)
    }

    /// Unwraps every namespace's data key (nothing is decrypted beyond the keys).
    /// Fails on the first key that does not open.
    pub fn verify_keys(&self) -> Result<KeyReport> {
        let txn = self.begin_read()?;
        let table = txn.open_table(NAMESPACES)?;
        let mut namespaces = 0;
        for row in table.iter()? {
            let rec: NamespaceRecord = dec(row?.1.value(), "namespace")?;
            txn.keys.unwrap_dek(&rec)?;
            namespaces += 1;
        }
        Ok(KeyReport {
            kek_id: txn.keys.kek.id().to_owned(),
            namespaces,
        })
    }
}

fn validate_user_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '@'));
    if ok {
        Ok(())
    } else {
        Err(StoreError::Invalid(
            "user names are 1-64 characters of A-Z a-z 0-9 . _ - @".into(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::SecretMap;
    use secrecy::{ExposeSecret, SecretString};
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

    /// Rotations back to back while other threads read secrets through snapshots, reveal
    /// them in write transactions and create credentials: no operation fails, every
    /// secret reads back, and the audit chain verifies under the final key.
    #[test]
    fn rotation_while_in_use_never_mixes_keys() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(dir.path().join("s.redb"), MasterKey::generate().unwrap()).unwrap());
        let user = store.add_user("admin", "alice", Role::User).unwrap();
        let mut new = NewCredential::new("c", "t");
        new.secrets.insert("k".into(), SecretString::from("s3cret"));
        let cred = store.create_credential("alice", user.namespace, new).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let ops = Arc::new(AtomicUsize::new(0));
        let workers: Vec<_> = (0..3)
            .map(|w| {
                let (store, stop, ops) = (store.clone(), stop.clone(), ops.clone());
                std::thread::spawn(move || {
                    let mut n = 0;
                    while !stop.load(Ordering::Relaxed) {
                        n += 1;
                        let secret = match w {
                            0 => store.credential_for_use(user.namespace, cred.id).map(|(_, s)| s),
                            1 => store.reveal("alice", user.namespace, cred.id, "test"),
                            _ => {
                                let mut new = NewCredential::new(&format!("n{n}"), "t");
                                new.secrets.insert("k".into(), SecretString::from("s3cret"));
                                store.create_credential("alice", user.namespace, new).map(|_| SecretMap::new())
                            }
                        };
                        let secret = secret.unwrap_or_else(|e| panic!("worker {w}, op {n}: {e}"));
                        if w < 2 {
                            assert_eq!(secret["k"].expose_secret(), "s3cret");
                        }
                        ops.fetch_add(1, Ordering::Relaxed);
                    }
                })
            })
            .collect();
        for _ in 0..25 {
            store.rotate_kek("admin", MasterKey::generate().unwrap()).unwrap();
        }
        stop.store(true, Ordering::Relaxed);
        for w in workers {
            w.join().unwrap();
        }
        assert!(ops.load(Ordering::Relaxed) > 0);
        store.verify_audit().unwrap();
        assert_eq!(store.verify_keys().unwrap().namespaces, 1);
    }
}
