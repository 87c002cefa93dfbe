//! Encrypted per-user credential store on [redb].
//!
//! One file holds users, their namespaces (one each, with its own data key wrapped by the
//! master key), credential metadata, sealed secret versions, API tokens (as SHA-256 only)
//! and a hash-chained audit log. Every operation writes in one write transaction (creates
//! arriving together share one, see [`batch`]), is answered only once it is durable, and
//! appends its audit record in that same transaction, so the log and the data never
//! disagree after a crash. Concurrent writes share one fsync (group commit, `Group` in
//! this module): a write queued behind others commits without fsync and is answered after
//! the durable commit of the last of them; a lone write commits durably at once. Readers
//! may see a write of such a batch before its fsync; a crash then loses it, but it was
//! never answered.
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
#[cfg(target_os = "linux")]
mod file;
pub mod history;
mod batch;
pub(crate) mod kv;
pub mod migrate;
pub mod pg;
pub mod outbox;
pub mod schema;
mod tokens;
mod upgrade;
pub mod versions;
pub mod webhooks;

use std::path::{Path, PathBuf};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use redb::{
    Database, Durability, ReadOnlyDatabase, ReadTransaction, ReadableDatabase, TableDefinition, TableError,
    WriteTransaction,
};
use kv::{OrdKey, Table};
use serde::{Deserialize, Serialize};

pub use audit::{AuditEntry, AuditPage, AuditQuery, AuditRecord, Outcome};
pub use credentials::{
    Credential, CredentialUpdate, Deleted, ListQuery, Lookup, NewCredential, Page, SecretField, TestResult, TestTrigger,
    TestStatusFilter, TestVerdict, BINDING_KEY,
};
pub use error::{Result, StoreError};
pub use history::{Health, MonitorState, RecordOpts, SweepPage, Swept};
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
    backend: Backend,
    /// Every write transaction commits through it ([`Txn::commit`]).
    group: Arc<Group>,
    /// A namespace's frequent writes run in batches by one writer ([`Store::write_batched`]).
    batcher: batch::Batcher,
    /// The master key and what derives from it. Replaced only by [`Store::rotate_kek`],
    /// which holds the write lock across its commit and the swap: a write transaction
    /// takes the keys after it begins (so after any rotation committed and swapped), a
    /// read snapshot takes them together with its snapshot ([`Store::begin_read`]).
    keys: RwLock<Arc<Keys>>,
    /// The redb file, or the PostgreSQL URL (without password).
    path: PathBuf,
    /// This process among the replicas of a shared store (leases name it).
    replica: String,
    /// Non-durable audit commits wait for the next durable one ([`Store::flush_audit`]).
    lazy_pending: std::sync::atomic::AtomicBool,
}

/// A write transaction that knows the audit key, so every audit record appended in it is
/// keyed, and that commits through the store's [`Group`] commit: [`Txn::commit`] returns
/// once the write is durable. Derefs to redb's transaction.
pub(crate) struct Txn {
    inner: Write,
    audit_key: Arc<AuditKey>,
    /// `Durability::None` asked for through [`Txn::set_durability`]: commit without
    /// waiting for the disk.
    lazy: bool,
}

/// Where the data lives.
enum Backend {
    Redb(Arc<Database>),
    Pg(Arc<pg::Pg>),
}

enum Write {
    /// The transaction in its place in the group (PostgreSQL groups commits itself).
    Redb(Slot),
    Pg(pg::Tx),
}

enum Read {
    Redb(ReadTransaction),
    Pg(pg::Tx),
}

impl Read {
    fn open_table<K: OrdKey, V: redb::Value + 'static>(&self, def: TableDefinition<K, V>) -> Result<Table<'_, K, V>> {
        match self {
            Read::Redb(t) => Ok(Table::redb_read(t.open_table(def)?)),
            Read::Pg(tx) => Ok(Table::pg(tx, def)),
        }
    }
}

/// The scope of a PostgreSQL transaction: one namespace, or the host's own (`*`).
fn scope(ns: Option<NamespaceId>) -> String {
    ns.map_or_else(|| "*".to_owned(), pg::namespace_label)
}

impl Txn {
    pub(crate) fn open_table<K: OrdKey, V: redb::Value + 'static>(&self, def: TableDefinition<K, V>) -> Result<Table<'_, K, V>> {
        match &self.inner {
            Write::Redb(slot) => Ok(Table::redb_write(slot.txn().open_table(def)?)),
            Write::Pg(tx) => Ok(Table::pg(tx, def)),
        }
    }

    /// Whether the database holds any table (a fresh one holds none).
    fn has_tables(&self) -> Result<bool> {
        match &self.inner {
            Write::Redb(slot) => Ok(slot.txn().list_tables()?.next().is_some()),
            Write::Pg(_) => {
                if !self.open_table(META)?.is_empty()? {
                    return Ok(true);
                }
                // Rows without meta: a copy from redb that did not finish.
                if !self.open_table(NAMESPACES)?.is_empty()? || !self.open_table(AUDIT)?.is_empty()? {
                    return Err(StoreError::Conflict(
                        "the database holds credhost rows but no meta: a `credhost migrate` that did not finish? \
                         Run it again with --resume"
                            .into(),
                    ));
                }
                Ok(false)
            }
        }
    }

    /// Commits, and returns once the commit is durable: by its own fsync when no other
    /// write is queued behind it, else by a later durable commit that covers it (see
    /// [`Group`]). A failed durable commit fails every commit it was to cover. After
    /// `set_durability(Durability::None)` it returns without waiting for the disk.
    pub(crate) fn commit(self) -> Result<()> {
        match self.inner {
            Write::Redb(slot) => Ok(slot.commit(if self.lazy { Mode::Lazy } else { Mode::Grouped })?),
            Write::Pg(tx) => tx.commit(self.lazy),
        }
    }

    /// A batched operation ([`Store::write_batched`]) is about to write: from here on
    /// an error rolls back the transaction it shares with others (see [`batch`]).
    /// Everything it may refuse for (validation, conflicts) it checks before this.
    pub(crate) fn writing(&self) {
        if let Write::Redb(slot) = &self.inner {
            slot.wrote.store(true, std::sync::atomic::Ordering::Relaxed);
        }
    }

    /// The next batched operation starts: it has not written yet.
    fn begin_operation(&self) {
        if let Write::Redb(slot) = &self.inner {
            slot.wrote.store(false, std::sync::atomic::Ordering::Relaxed);
        }
    }

    /// Whether the current batched operation called [`Txn::writing`].
    fn has_written(&self) -> bool {
        match &self.inner {
            Write::Redb(slot) => slot.wrote.load(std::sync::atomic::Ordering::Relaxed),
            Write::Pg(_) => true,
        }
    }

    /// Commits with its own fsync whatever is queued behind it, so the caller never waits
    /// for another writer (used while holding a lock other writers take).
    pub(crate) fn commit_durable(self) -> Result<()> {
        match self.inner {
            Write::Redb(slot) => Ok(slot.commit(Mode::Durable)?),
            Write::Pg(tx) => tx.commit(false),
        }
    }

    /// Shadows redb's method (callers reach it through `DerefMut` otherwise): the group
    /// commit chooses each commit's durability. `Durability::None` makes this a lazy commit:
    /// visible at once, persisted by the next durable commit, lost if the process dies
    /// before that; [`Txn::commit`] then does not wait.
    pub(crate) fn set_durability(&mut self, durability: Durability) -> std::result::Result<(), redb::SetDurabilityError> {
        self.lazy = matches!(durability, Durability::None);
        Ok(())
    }
}

/// How a transaction commits (see [`Slot::commit`]).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Durable before returning, sharing an fsync with the writes queued with it.
    Grouped,
    /// Durable before returning, by its own fsync.
    Durable,
    /// Not waiting for the disk (`Durability::None`).
    Lazy,
}

/// Most non-durable commits one durable commit may have to cover: past this, a writer
/// commits durably.
const MAX_BATCH: u64 = 64;

/// Failures kept for writers still to read theirs (failures are rare and fatal to redb's
/// writes until reopened; the bound only keeps memory fixed).
const MAX_FAILURES: usize = 64;

/// Group commit: every write transaction of a store commits through here.
///
/// redb runs one write transaction at a time, and a `Durability::None` commit is visible
/// to later transactions at once but written to disk only by the next durable commit
/// (`Durability::Immediate`), which persists every commit before it with one fsync; a
/// crash before that loses the non-durable commits, all of them, the file opening at the
/// last durable commit. So a writer commits durably only when no other write transaction
/// is open or queued (`open`). Otherwise it commits without fsync and waits until a durable
/// commit covers it: normally that of the last writer of the queue, so a queue of N writers
/// costs one fsync and a lone writer commits exactly as before. When the writers behind a
/// waiter all ended without a durable commit (an error dropped their transaction, or they
/// committed lazily), the waiter makes an empty durable commit itself. Nothing is answered
/// before the fsync that covers it, so a write lost in a crash was never reported; if that
/// fsync fails, every writer it was to cover gets the error.
///
/// Creates go further: one writer runs a queue of them in one transaction (see [`batch`]).
///
/// Writers take their turn at redb's write lock first come, first served (redb's own lock
/// lets a newcomer overtake a waiter, which starved some writers for several batches).
#[derive(Default)]
pub(crate) struct Group {
    state: std::sync::Mutex<GroupState>,
    /// Signalled when `durable` or `failed` moves, or `open` falls to 0.
    wake: std::sync::Condvar,
}

#[derive(Default)]
struct GroupState {
    /// Write transactions begun or queued, not yet committed or dropped (an empty durable
    /// commit under way included).
    open: usize,
    /// One of them has the turn: it holds redb's write lock or is about to take it.
    busy: bool,
    /// The others, in arrival order.
    queue: std::collections::VecDeque<Arc<Turn>>,
    /// Sequence number of the last commit (commits are serialized by redb); a number is
    /// also used up by a failed commit.
    committed: u64,
    /// Every commit up to this one is durable.
    durable: u64,
    /// Failures: the commits `.0..=.1` get the error `(.2, .3)` (those a failed durable
    /// commit was to cover).
    failed: Vec<(u64, u64, std::io::ErrorKind, String)>,
}

impl GroupState {
    fn failure(&self, seq: u64) -> Option<redb::CommitError> {
        self.failed.iter().rev().find(|f| f.0 <= seq && seq <= f.1).map(|(_, _, kind, msg)| {
            redb::CommitError::Storage(redb::StorageError::Io(std::io::Error::new(*kind, msg.clone())))
        })
    }

    fn fail(&mut self, from: u64, upto: u64, kind: std::io::ErrorKind, msg: String) {
        // Only a failure no writer can still be waiting for (all of it at or below
        // `durable`, which such a writer would otherwise mistake for its commit) goes.
        if self.failed.len() >= MAX_FAILURES {
            if let Some(i) = self.failed.iter().position(|f| f.1 <= self.durable) {
                self.failed.remove(i);
            }
        }
        self.failed.push((from, upto, kind, msg));
        // Used up: no later commit takes these numbers.
        self.committed = self.committed.max(upto);
    }
}

/// A queued writer: unparked when its turn comes.
struct Turn {
    thread: std::thread::Thread,
    granted: std::sync::atomic::AtomicBool,
}

impl Group {
    fn lock(&self) -> std::sync::MutexGuard<'_, GroupState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Counts a writer in and waits for its turn at redb's write lock.
    fn take_turn(&self, mut st: std::sync::MutexGuard<'_, GroupState>) {
        st.open += 1;
        if !st.busy {
            st.busy = true;
            return;
        }
        let turn = Arc::new(Turn {
            thread: std::thread::current(),
            granted: std::sync::atomic::AtomicBool::new(false),
        });
        st.queue.push_back(turn.clone());
        drop(st);
        while !turn.granted.load(std::sync::atomic::Ordering::Acquire) {
            std::thread::park();
        }
    }

    /// The writer with the turn is done with redb's write lock (committed or dropped):
    /// counts it out and hands the turn on.
    fn leave(&self, st: &mut GroupState) {
        st.open -= 1;
        match st.queue.pop_front() {
            Some(next) => {
                next.granted.store(true, std::sync::atomic::Ordering::Release);
                next.thread.unpark();
            }
            None => st.busy = false,
        }
        if st.open == 0 {
            self.wake.notify_all();
        }
    }

    /// Records the outcome of the commit at `seq` (`Ok(durable)` or its error), made by
    /// the writer with the turn.
    fn record(&self, st: &mut GroupState, seq: u64, outcome: std::result::Result<bool, &redb::CommitError>) {
        match outcome {
            Ok(durable) => {
                st.committed = seq;
                if durable {
                    st.durable = seq;
                    self.wake.notify_all();
                }
            }
            // Nothing was committed: the waiters still need a durable commit.
            Err(redb::CommitError::TransactionPoisoned) => {}
            // The commits not yet durable may or may not reach the disk, and no later
            // commit can cover them (redb refuses writes until reopened): fail them all.
            Err(e) => {
                let kind = match e {
                    redb::CommitError::Storage(redb::StorageError::Io(io)) => io.kind(),
                    _ => std::io::ErrorKind::Other,
                };
                let msg = format!("the durable commit that was to cover this write failed: {e}");
                st.fail(st.durable + 1, seq.max(st.committed), kind, msg);
                self.wake.notify_all();
            }
        }
    }

    /// [`Group::record`], then hands the turn on.
    fn finish(&self, st: &mut GroupState, seq: u64, outcome: std::result::Result<bool, &redb::CommitError>) {
        self.record(st, seq, outcome);
        self.leave(st);
    }

    /// Waits until commit `seq` is durable, leading a durable commit when nobody else is
    /// left to make one.
    fn wait_durable(&self, db: &Database, seq: u64) -> std::result::Result<(), redb::CommitError> {
        let mut st = self.lock();
        loop {
            // Failures first: a used-up number may be passed by a later durable commit.
            if let Some(e) = st.failure(seq) {
                return Err(e);
            }
            if st.durable >= seq {
                return Ok(());
            }
            if st.open == 0 {
                self.take_turn(st);
                st = self.lock();
                // A durable commit ahead of this one in the queue may have covered it.
                if st.durable >= seq || st.failure(seq).is_some() {
                    self.leave(&mut st);
                    continue;
                }
                drop(st);
                self.flush(db);
                st = self.lock();
                continue;
            }
            st = self.wake.wait(st).unwrap_or_else(PoisonError::into_inner);
        }
    }

    /// An empty durable commit by a writer that has the turn; hands the turn on.
    fn flush(&self, db: &Database) {
        let mut txn = match db.begin_write() {
            Ok(txn) => txn,
            Err(e) => {
                let e = redb::CommitError::Storage(redb::StorageError::Io(std::io::Error::other(e.to_string())));
                let mut st = self.lock();
                let seq = st.committed + 1;
                return self.finish(&mut st, seq, Err(&e));
            }
        };
        let _ = txn.set_durability(Durability::Immediate);
        // Taken with redb's write lock held: no commit can come in between.
        let seq = self.lock().committed + 1;
        let res = txn.commit();
        let mut st = self.lock();
        match &res {
            Ok(()) => self.finish(&mut st, seq, Ok(true)),
            // A transaction that cannot commit still leaves the waiters uncovered.
            Err(redb::CommitError::TransactionPoisoned) => {
                let e = redb::CommitError::Storage(redb::StorageError::Io(std::io::Error::other(
                    "a durable commit was refused",
                )));
                self.finish(&mut st, seq, Err(&e))
            }
            Err(e) => self.finish(&mut st, seq, Err(e)),
        }
    }
}

/// A redb write transaction and its place in its store's [`Group`]: counted in `open` and
/// holding the turn from before redb's `begin_write` until its commit or drop.
pub(crate) struct Slot {
    group: Arc<Group>,
    db: Arc<Database>,
    counted: bool,
    /// The transaction, until committed.
    txn: Option<WriteTransaction>,
    /// The batched operation running in it began writing ([`Txn::writing`]).
    wrote: std::sync::atomic::AtomicBool,
}

impl Slot {
    /// Waits for the turn and begins a write transaction.
    fn enter(group: &Arc<Group>, db: &Arc<Database>) -> std::result::Result<Slot, StoreError> {
        group.take_turn(group.lock());
        let mut slot = Slot { group: group.clone(), db: db.clone(), counted: true, txn: None, wrote: Default::default() };
        slot.txn = Some(db.begin_write()?);
        Ok(slot)
    }

    fn txn(&self) -> &WriteTransaction {
        self.txn.as_ref().expect("an open write transaction")
    }

    fn commit(mut self, mode: Mode) -> std::result::Result<(), redb::CommitError> {
        let mut inner = self.txn.take().expect("an open write transaction");
        let group = self.group.clone();
        let (seq, durable) = {
            let st = group.lock();
            // Taken with redb's write lock held: no commit can come in between.
            let seq = st.committed + 1;
            let durable = match mode {
                Mode::Durable => true,
                Mode::Lazy => false,
                Mode::Grouped => st.open <= 1 || seq - st.durable > MAX_BATCH,
            };
            (seq, durable)
        };
        // Only a persistent savepoint can refuse `None` (the store makes none): then durably.
        let durable = durable || inner.set_durability(Durability::None).is_err();
        let res = match durable {
            true => inner.set_durability(Durability::Immediate).map_err(|e| {
                redb::CommitError::Storage(redb::StorageError::Io(std::io::Error::other(e.to_string())))
            }),
            false => Ok(()),
        };
        // On an error the transaction is dropped here (aborted), like any failed commit.
        let res = res.and_then(move |()| inner.commit());
        {
            let mut st = group.lock();
            self.counted = false;
            group.finish(&mut st, seq, res.as_ref().map(|()| durable));
        }
        res?;
        match mode {
            Mode::Grouped if !durable => group.wait_durable(&self.db, seq),
            _ => Ok(()),
        }
    }
}

impl Drop for Slot {
    /// An uncommitted transaction (aborted here) or a failed `begin_write` hands the turn
    /// on; a waiter may now have to lead.
    fn drop(&mut self) {
        drop(self.txn.take());
        if self.counted {
            self.group.leave(&mut self.group.lock());
        }
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

    fn dek_in(&self, table: &Table<'_, u128, &'static [u8]>, ns: NamespaceId) -> Result<DataKey> {
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
    inner: Read,
    keys: Arc<Keys>,
}

impl Snapshot {
    pub(crate) fn open_table<K: OrdKey, V: redb::Value + 'static>(&self, def: TableDefinition<K, V>) -> Result<Table<'_, K, V>> {
        self.inner.open_table(def)
    }

    /// A namespace's data key, unwrapped with the master key of this snapshot.
    pub(crate) fn dek_in(&self, table: &Table<'_, u128, &'static [u8]>, ns: NamespaceId) -> Result<DataKey> {
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

/// Checks schema version and key check value of a redb file; reads only.
fn check_meta_redb(txn: &ReadTransaction, kek: &MasterKey) -> Result<MetaState> {
    match txn.open_table(META) {
        Ok(t) => check_meta(&Table::redb_read(t), kek),
        Err(TableError::TableDoesNotExist(_)) => Ok(MetaState::Empty),
        Err(e) => Err(e.into()),
    }
}

/// Checks schema version and key check value; reads only.
fn check_meta(meta: &Table<'_, &'static str, &'static [u8]>, kek: &MasterKey) -> Result<MetaState> {
    let Some(version) = meta.get(META_SCHEMA_VERSION)? else {
        return Ok(MetaState::Empty);
    };
    let found: u32 = dec(version.value(), "schema version")?;
    // An older schema is upgraded at open (`upgrade`), once the key is checked.
    if found == 0 || found > SCHEMA_VERSION {
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

/// The database page cache when none is configured (redb's own default is 1 GiB, which a
/// store of 100,000 credentials fills to ~200 MiB of resident memory that stays).
/// 16 MiB: at 100,000 credentials over 10,000 users it listed no slower than 32 MiB (list
/// p99 6.6-9.6 ms against 7.6-14.8 in the same runs on 2 busy cores) with ~20 MiB less
/// resident at peak (`cargo bench --bench scale`, `SCALE_CACHE_MIB=16,default`).
pub const DEFAULT_CACHE_BYTES: usize = 16 * 1024 * 1024;

impl Store {
    /// Opens the store at `path`, creating and initialising it if the file does not exist.
    ///
    /// An existing file is first opened read-only to check the schema version and the
    /// master key, so a wrong key or unknown schema leaves the file's bytes untouched.
    /// (After a crash, redb must repair the file before it can be read; that repair
    /// rewrites only redb's own bookkeeping, and the key check follows it.)
    pub fn open(path: impl AsRef<Path>, kek: MasterKey) -> Result<Store> {
        Store::open_with_cache(path, kek, DEFAULT_CACHE_BYTES)
    }

    /// [`Store::open`] with a database page cache of at most `cache_bytes` (redb's read
    /// cache and write buffer together; `[storage] cache_mib`).
    pub fn open_with_cache(path: impl AsRef<Path>, kek: MasterKey, cache_bytes: usize) -> Result<Store> {
        let path = path.as_ref().to_owned();
        let existing = std::fs::metadata(&path)
            .map(|m| m.len() > 0)
            .unwrap_or(false);
        if existing {
            match ReadOnlyDatabase::open(&path) {
                Ok(ro) => {
                    check_meta_redb(&ro.begin_read()?, &kek)?;
                    ro.close()?;
                }
                Err(redb::DatabaseError::RepairAborted) => {} // needs repair: checked below
                Err(e) => return Err(e.into()),
            }
        }
        // Opens an existing file, or initialises a missing or empty one. A file the last
        // process did not close (killed, crashed) is checked whole first; said, because
        // that start takes time growing with the file (~0.4 s at 100,000 credentials).
        let checking = Arc::new(std::sync::Once::new());
        let said = checking.clone();
        let started = std::time::Instant::now();
        let mut builder = Database::builder();
        builder.set_cache_size(cache_bytes).set_repair_callback(move |_| {
            said.call_once(|| tracing::warn!("the database was not closed cleanly (killed or crashed); checking it before the store opens"));
        });
        // Blocks allocated ahead of redb's writes (see `file`).
        #[cfg(target_os = "linux")]
        let db = {
            let io = |e| StoreError::Db(redb::Error::Io(e));
            let file = std::fs::OpenOptions::new().read(true).write(true).create(true).truncate(false).open(&path).map_err(io)?;
            builder.create_with_backend(file::Prealloc::new(file).map_err(io)?)?
        };
        #[cfg(not(target_os = "linux"))]
        let db = builder.create(&path)?;
        if checking.is_completed() {
            tracing::info!(ms = started.elapsed().as_millis() as u64, "database checked");
        }
        Store::start(Backend::Redb(Arc::new(db)), kek, path)
    }

    /// Closes the store. On redb this records the allocator state and marks the file
    /// closed, so the next open needs no check of the whole file; dropping the store does
    /// the same but cannot report an error.
    pub fn close(self) -> Result<()> {
        match self.backend {
            Backend::Redb(db) => match Arc::try_unwrap(db) {
                Ok(db) => Ok(db.close()?),
                // Only a write in progress holds it besides the store (none can, once the
                // store is owned): the file would close when that write ends.
                Err(_) => Err(StoreError::Db(redb::Error::Io(std::io::Error::other("a write is still in progress")))),
            },
            Backend::Pg(_) => Ok(()),
        }
    }

    /// Opens the store in a PostgreSQL database, applying the schema migrations it lacks
    /// and initialising an empty one (see [`pg`]). Every replica opens it this way.
    pub fn open_postgres(opts: &pg::PgOptions, kek: MasterKey) -> Result<Store> {
        let pg = Arc::new(pg::Pg::connect(opts)?);
        Store::start(Backend::Pg(pg), kek, PathBuf::from(&opts.url))
    }

    fn start(backend: Backend, kek: MasterKey, path: PathBuf) -> Result<Store> {
        let store = Store {
            backend,
            group: Arc::default(),
            batcher: Default::default(),
            keys: RwLock::new(Arc::new(Keys::new(kek))),
            path,
            replica: uuid::Uuid::now_v7().to_string(),
            lazy_pending: std::sync::atomic::AtomicBool::new(false),
        };
        let state = {
            let snap = store.begin_read()?;
            match &snap.inner {
                Read::Redb(t) => check_meta_redb(t, &store.keys().kek)?,
                Read::Pg(_) => check_meta(&snap.open_table(META)?, &store.keys().kek)?,
            }
        };
        if let MetaState::Empty = state {
            store.init()?;
            if store.is_shared() {
                let snap = store.begin_read()?;
                check_meta(&snap.open_table(META)?, &store.keys().kek)?;
            }
        }
        // The layout first: the audit migration reads the head where this schema keeps it.
        store.upgrade_schema()?;
        store.migrate_audit()?;
        store.ensure_tables()?;
        Ok(store)
    }

    /// Whether several processes may share this store (PostgreSQL).
    pub fn is_shared(&self) -> bool {
        matches!(self.backend, Backend::Pg(_))
    }

    /// Takes or renews the lease `name` for this process for `ttl_ms`; false while another
    /// replica holds it. Work that must run in one replica at a time (webhook deliveries)
    /// runs only while its lease is held; a replica that dies loses it after `ttl_ms`.
    /// A store only one process opens (redb) needs no lease: always true.
    pub fn hold_lease(&self, name: &str, ttl_ms: u64) -> Result<bool> {
        if !self.is_shared() {
            return Ok(true);
        }
        #[derive(Serialize, Deserialize)]
        struct Lease {
            holder: String,
            until: u64,
        }
        let key = format!("lease.{name}");
        let now = now_ms();
        // A read first: held by another, or by this replica for more than half its time
        // yet, needs no write (and no write lock).
        let held: Option<Lease> = {
            let snap = self.begin_read()?;
            let meta = snap.open_table(META)?;
            let raw = meta.get(key.as_str())?.map(|v| v.value().to_vec());
            raw.map(|v| dec(&v, "lease")).transpose()?
        };
        if let Some(held) = held {
            if held.holder != self.replica && held.until > now {
                return Ok(false);
            }
            if held.holder == self.replica && held.until > now + ttl_ms / 2 {
                return Ok(true);
            }
        }
        let txn = self.begin_write()?;
        {
            let mut meta = txn.open_table(META)?;
            if let Some(v) = meta.get(key.as_str())? {
                let held: Lease = dec(v.value(), "lease")?;
                if held.holder != self.replica && held.until > now {
                    return Ok(false);
                }
            }
            let lease = Lease { holder: self.replica.clone(), until: now + ttl_ms };
            meta.insert(key.as_str(), enc(&lease).as_slice())?;
        }
        txn.commit()?;
        Ok(true)
    }

    fn init(&self) -> Result<()> {
        let txn = self.begin_write()?;
        let keys = self.keys();
        let kek = &keys.kek;
        if txn.has_tables()? {
            // Another replica initialised the database first: its key is checked next.
            if self.is_shared() && !txn.open_table(META)?.is_empty()? {
                return Ok(());
            }
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
            AuditEntry::ok("system", "store.init").detail(format!("kek_id={}; {}", kek.id(), audit::HEADS_KEYED)),
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

    /// A write transaction; its [`Txn::commit`] returns once the commit is durable (see
    /// [`Group`]).
    pub(crate) fn begin_write(&self) -> Result<Txn> {
        self.begin_write_scoped(None)
    }

    /// A write transaction for one namespace's operation: on PostgreSQL, row-level
    /// security lets it see and write that namespace's rows only.
    pub(crate) fn begin_write_in(&self, ns: NamespaceId) -> Result<Txn> {
        self.begin_write_scoped(Some(ns))
    }

    /// Runs `op`, a frequent operation of namespace `ns`, and commits it durably. On redb
    /// it may share one transaction with others like it, run by another thread (see
    /// [`batch`]): it calls [`Txn::writing`] before its first write and refuses only
    /// before it, uses only the transaction it is given, and may run again (its
    /// transaction aborted for another operation's failure).
    pub(crate) fn write_batched<T: Send + 'static>(
        &self,
        ns: NamespaceId,
        mut op: impl FnMut(&Store, &Txn) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        if let Backend::Pg(_) = self.backend {
            let txn = self.begin_write_in(ns)?;
            let out = op(self, &txn)?;
            txn.commit()?;
            return Ok(out);
        }
        let out = Arc::new(std::sync::Mutex::new(None));
        let slot = out.clone();
        self.batcher.run(
            self,
            Box::new(move |store, txn| {
                let value = op(store, txn)?;
                *slot.lock().unwrap_or_else(PoisonError::into_inner) = Some(value);
                Ok(())
            }),
        )?;
        let value = out.lock().unwrap_or_else(PoisonError::into_inner).take();
        Ok(value.expect("a batched operation answered Ok left its value"))
    }

    fn begin_write_scoped(&self, ns: Option<NamespaceId>) -> Result<Txn> {
        let inner = match &self.backend {
            // Counted before it waits for redb's write lock, so the writer ahead of it
            // commits without fsync and one commit covers both.
            Backend::Redb(db) => Write::Redb(Slot::enter(&self.group, db)?),
            Backend::Pg(pg) => Write::Pg(pg.begin(true, &scope(ns))?),
        };
        // After begin: a rotation has either not started or committed and swapped.
        Ok(Txn { inner, audit_key: self.keys().audit_key.clone(), lazy: false })
    }

    /// A read transaction and the keys of its snapshot, taken under the keys' lock so a
    /// rotation cannot commit between the two. Reads that unwrap data keys or check the
    /// audit chain use this, not `db.begin_read`.
    pub(crate) fn begin_read(&self) -> Result<Snapshot> {
        self.begin_read_scoped(None)
    }

    /// A read transaction for one namespace's operation (see [`Store::begin_write_in`]).
    pub(crate) fn begin_read_in(&self, ns: NamespaceId) -> Result<Snapshot> {
        self.begin_read_scoped(Some(ns))
    }

    fn begin_read_scoped(&self, ns: Option<NamespaceId>) -> Result<Snapshot> {
        let keys = self.keys.read().unwrap_or_else(PoisonError::into_inner);
        let inner = match &self.backend {
            Backend::Redb(db) => Read::Redb(db.begin_read()?),
            Backend::Pg(pg) => Read::Pg(pg.begin(false, &scope(ns))?),
        };
        Ok(Snapshot { inner, keys: keys.clone() })
    }

    /// Loads and unwraps a namespace's data key inside a WRITE transaction (no rotation
    /// can commit while it is open). Read snapshots use [`Snapshot::dek_in`].
    pub(crate) fn dek_in(
        &self,
        table: &Table<'_, u128, &'static [u8]>,
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
        let txn = self.begin_read()?;
        let users = txn.open_table(USERS)?;
        let v = users.get(name)?.ok_or(StoreError::NotFound)?;
        dec(v.value(), "user")
    }

    /// The user owning namespace `ns`.
    pub fn namespace_user(&self, ns: NamespaceId) -> Result<String> {
        let txn = self.begin_read_in(ns)?;
        let namespaces = txn.open_table(NAMESPACES)?;
        let v = namespaces.get(ns.key())?.ok_or(StoreError::NotFound)?;
        Ok(dec::<NamespaceRecord>(v.value(), "namespace")?.user)
    }

    /// All users, ordered by name.
    pub fn list_users(&self) -> Result<Vec<User>> {
        let txn = self.begin_read()?;
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
        // Commit and swap under the write lock: no snapshot starts in between. Durably by
        // its own fsync: a grouped commit would wait for the writer queued behind it, which
        // takes this lock once it begins.
        let mut slot = self.keys.write().unwrap_or_else(PoisonError::into_inner);
        txn.commit_durable()?;
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
    // `.` and `..` are path segments, not names: a URL naming them (`/api/admin/users/../tokens`)
    // would reach another route.
    let ok = !name.is_empty()
        && name != "."
        && name != ".."
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '@'));
    if ok {
        Ok(())
    } else {
        Err(StoreError::Invalid(
            "user names are 1-64 characters of A-Z a-z 0-9 . _ - @, and not `.` or `..`".into(),
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

    /// An in-memory database whose fsync fails once `fail` is set.
    #[derive(Debug)]
    struct FailingSync {
        inner: redb::backends::InMemoryBackend,
        fail: Arc<AtomicBool>,
    }

    impl redb::StorageBackend for FailingSync {
        fn len(&self) -> std::io::Result<u64> {
            redb::StorageBackend::len(&self.inner)
        }
        fn read(&self, offset: u64, out: &mut [u8]) -> std::io::Result<()> {
            redb::StorageBackend::read(&self.inner, offset, out)
        }
        fn set_len(&self, len: u64) -> std::io::Result<()> {
            redb::StorageBackend::set_len(&self.inner, len)
        }
        fn sync_data(&self) -> std::io::Result<()> {
            if self.fail.load(Ordering::SeqCst) {
                return Err(std::io::Error::other("injected fsync failure"));
            }
            redb::StorageBackend::sync_data(&self.inner)
        }
        fn write(&self, offset: u64, data: &[u8]) -> std::io::Result<()> {
            redb::StorageBackend::write(&self.inner, offset, data)
        }
    }

    /// A store on [`FailingSync`]: returns it and its switch.
    fn failing_store() -> (Arc<Store>, Arc<AtomicBool>) {
        let fail = Arc::new(AtomicBool::new(false));
        let backend = FailingSync { inner: redb::backends::InMemoryBackend::new(), fail: fail.clone() };
        let db = Database::builder().create_with_backend(backend).unwrap();
        let store = Store {
            backend: Backend::Redb(Arc::new(db)),
            group: Arc::default(),
            batcher: Default::default(),
            keys: RwLock::new(Arc::new(Keys::new(MasterKey::generate().unwrap()))),
            path: PathBuf::new(),
            replica: String::new(),
            lazy_pending: AtomicBool::new(false),
        };
        store.init().unwrap();
        store.ensure_tables().unwrap();
        (Arc::new(store), fail)
    }

    /// Every writer answered and durable: nothing open, queued or failed.
    fn assert_quiescent(store: &Store, context: &str) {
        let st = store.group.lock();
        assert_eq!((st.open, st.durable, store.batcher.queued()), (0, st.committed, 0), "{context}");
        assert!(st.failed.is_empty(), "{context}");
    }

    fn new_cred(name: &str) -> NewCredential {
        let mut new = NewCredential::new(name, "t");
        new.secrets.insert("k".into(), SecretString::from("s3cret"));
        new
    }

    /// Many writers at once: every create returns, is there afterwards, and the audit chain
    /// (one record per create, appended in each grouped transaction) verifies.
    #[test]
    fn concurrent_writers_all_commit() {
        let (store, _) = failing_store();
        let user = store.add_user("admin", "alice", Role::User).unwrap();
        let workers: Vec<_> = (0..8)
            .map(|w| {
                let store = store.clone();
                std::thread::spawn(move || {
                    for i in 0..40 {
                        store.create_credential("alice", user.namespace, new_cred(&format!("w{w}-{i}"))).unwrap();
                    }
                })
            })
            .collect();
        for w in workers {
            w.join().unwrap();
        }
        assert_quiescent(&store, "everything answered is durable");
        let page = store.list_credentials(user.namespace, &ListQuery { limit: 1000, ..Default::default() }).unwrap();
        assert_eq!(page.items.len(), 320);
        store.verify_audit().unwrap();
    }

    /// Once fsync fails, no writer is answered Ok and none is left waiting: each gets the
    /// error, its own or that of the durable commit that was to cover its write.
    #[test]
    fn failed_flush_fails_every_writer_of_the_batch() {
        let (store, fail) = failing_store();
        let user = store.add_user("admin", "alice", Role::User).unwrap();
        let done = Arc::new(AtomicUsize::new(0));
        let workers: Vec<_> = (0..8)
            .map(|w| {
                let (store, done, fail) = (store.clone(), done.clone(), fail.clone());
                std::thread::spawn(move || {
                    for i in 0.. {
                        let failing = fail.load(Ordering::SeqCst);
                        match store.create_credential("alice", user.namespace, new_cred(&format!("w{w}-{i}"))) {
                            Ok(_) => {
                                assert!(!failing, "writer {w}: answered Ok after fsync started failing");
                                done.fetch_add(1, Ordering::SeqCst);
                            }
                            Err(e) => return e.to_string(),
                        }
                    }
                    unreachable!()
                })
            })
            .collect();
        while done.load(Ordering::SeqCst) < 100 {
            std::thread::yield_now();
        }
        fail.store(true, Ordering::SeqCst);
        let errors: Vec<String> = workers.into_iter().map(|w| w.join().unwrap()).collect();
        assert_eq!(errors.len(), 8);
        assert_eq!(store.group.lock().open, 0);
        // The database refuses writes until reopened.
        assert!(store.create_credential("alice", user.namespace, new_cred("after")).is_err());
    }

    /// A write committed without fsync, waiting for the writer behind it to make the
    /// durable commit: when that commit's fsync fails, both get an error.
    #[test]
    fn waiter_gets_the_error_of_the_durable_commit_that_was_to_cover_it() {
        let (store, fail) = failing_store();
        let first = store.begin_write().unwrap();
        audit::append(&first, AuditEntry::ok("t", "first")).unwrap();
        let behind = {
            let store = store.clone();
            std::thread::spawn(move || {
                let txn = store.begin_write().unwrap();
                audit::append(&txn, AuditEntry::ok("t", "behind")).unwrap();
                txn.commit()
            })
        };
        while store.group.lock().open < 2 {
            std::thread::yield_now();
        }
        fail.store(true, Ordering::SeqCst);
        let err = first.commit().unwrap_err().to_string();
        assert!(err.contains("the durable commit that was to cover this write failed"), "{err}");
        assert!(err.contains("injected fsync failure"), "{err}");
        assert!(behind.join().unwrap().is_err());
        assert_eq!(store.group.lock().open, 0);
    }

    /// Creates run in batches while others queue: creates whose names collide fail before
    /// writing and the rest of their batch goes on; every create answered Ok is there
    /// once, durable, and the chain verifies.
    #[test]
    fn batched_creates_with_collisions_lose_nothing() {
        let (store, _) = failing_store();
        let user = store.add_user("admin", "alice", Role::User).unwrap();
        let workers: Vec<_> = (0..8)
            .map(|_| {
                let store = store.clone();
                std::thread::spawn(move || {
                    (0..60)
                        .filter_map(|i| store.create_credential("alice", user.namespace, new_cred(&format!("n{i}"))).ok())
                        .map(|c| c.name)
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        let mut created: Vec<String> = workers.into_iter().flat_map(|w| w.join().unwrap()).collect();
        created.sort();
        let want: Vec<String> = {
            let mut v: Vec<String> = (0..60).map(|i| format!("n{i}")).collect();
            v.sort();
            v
        };
        assert_eq!(created, want, "each name created exactly once");
        assert_quiescent(&store, "after the creates");
        let page = store.list_credentials(user.namespace, &ListQuery { limit: 1000, ..Default::default() }).unwrap();
        assert_eq!(page.items.len(), 60);
        store.verify_audit().unwrap();
    }

    type TestOp = Box<dyn FnMut(&Txn) -> Result<()> + Send>;

    /// Holds the group's turn with a plain writer while `ops` queue behind a first batch's
    /// leader, which takes them into its transaction once it has the turn; returns their
    /// callers' results in order.
    fn one_batch(store: &Arc<Store>, ops: Vec<TestOp>) -> Vec<std::thread::Result<Result<()>>> {
        let ns = store.add_user("admin", "alice", Role::User).unwrap().namespace;
        let plain = store.begin_write().unwrap();
        let batch = |mut op: TestOp| {
            let store = store.clone();
            std::thread::spawn(move || store.write_batched(ns, move |_, txn| op(txn)))
        };
        // The first batch's leader takes the queue at once, then waits for the turn.
        let first = batch(write("first"));
        while store.group.lock().open < 2 {
            std::thread::yield_now();
        }
        let mut callers = Vec::new();
        for (n, op) in ops.into_iter().enumerate() {
            callers.push(batch(op));
            while store.batcher.queued() < n + 1 {
                std::thread::yield_now();
            }
        }
        plain.commit().unwrap();
        first.join().unwrap().unwrap();
        callers.into_iter().map(|c| c.join()).collect()
    }

    /// An operation that writes the audit record `action`.
    fn write(action: &'static str) -> TestOp {
        Box::new(move |txn| {
            txn.writing();
            Ok(audit::append(txn, AuditEntry::ok("t", action)).map(drop)?)
        })
    }

    /// An operation that fails after it began writing.
    fn fail_after_writing() -> TestOp {
        Box::new(|txn| {
            txn.writing();
            audit::append(txn, AuditEntry::ok("t", "failing"))?;
            Err(StoreError::Corrupt("failed after writing".into()))
        })
    }

    fn audit_actions(store: &Store) -> Vec<String> {
        let records = store.list_audit(&AuditQuery { limit: 1000, ..Default::default() }).unwrap();
        records.into_iter().map(|r| r.action).collect()
    }

    /// In one batch, an operation that fails before writing gets its error alone; one that
    /// fails after it began writing aborts the transaction and alone gets an error: the
    /// operations that ran before it run again and are stored, the one after runs too;
    /// the store goes on serving and the chain verifies.
    #[test]
    fn a_failure_after_writing_fails_only_its_own_operation() {
        let (store, _) = failing_store();
        let results = one_batch(
            &store,
            vec![
                write("before-1"),
                Box::new(|_| Err(StoreError::Conflict("refused before writing".into()))),
                write("before-2"),
                fail_after_writing(),
                write("after"),
            ],
        );
        let results: Vec<Result<()>> = results.into_iter().map(|r| r.unwrap()).collect();
        let err = |i: usize| results[i].as_ref().unwrap_err().to_string();
        assert!(results[0].is_ok() && results[2].is_ok() && results[4].is_ok(), "{results:?}");
        assert_eq!(err(1), "refused before writing");
        assert!(err(3).contains("failed after writing"), "{}", err(3));
        let actions = audit_actions(&store);
        for stored in ["before-1", "before-2", "after"] {
            assert_eq!(actions.iter().filter(|a| *a == stored).count(), 1, "{stored}: {actions:?}");
        }
        assert!(!actions.iter().any(|a| a == "failing"), "the failed operation's write was committed: {actions:?}");
        store.create_credential("alice", store.get_user("alice").unwrap().namespace, new_cred("later")).unwrap();
        store.verify_audit().unwrap();
        assert_quiescent(&store, "after the batch");
    }

    /// A refusal is never answered on the strength of a write that was rolled back: the
    /// operation whose write it saw runs again, so what it saw is stored.
    #[test]
    fn a_refusal_stands_on_a_stored_write() {
        let (store, _) = failing_store();
        let refuse_if_claimed: TestOp = Box::new(|txn| {
            let audit = txn.open_table(schema::AUDIT)?;
            for row in audit.range::<u64>(..)? {
                let (_, v) = row?;
                let rec: AuditRecord = schema::dec(v.value(), "audit record")?;
                if rec.action == "claim" {
                    return Err(StoreError::Conflict("claimed".into()));
                }
            }
            Ok(())
        });
        let results = one_batch(&store, vec![write("claim"), refuse_if_claimed, fail_after_writing()]);
        let results: Vec<Result<()>> = results.into_iter().map(|r| r.unwrap()).collect();
        assert!(results[0].is_ok(), "{results:?}");
        assert_eq!(results[1].as_ref().unwrap_err().to_string(), "claimed");
        assert!(audit_actions(&store).iter().any(|a| a == "claim"), "refused for a claim that is not stored");
        assert_quiescent(&store, "after the batch");
    }

    /// An operation that panics in another caller's batch: its own caller gets the panic;
    /// the one before it runs again, the one after runs; nobody hangs.
    #[test]
    fn a_panicking_operation_fails_only_its_caller() {
        let (store, _) = failing_store();
        let results = one_batch(&store, vec![write("before"), Box::new(|_| panic!("an operation's bug")), write("after")]);
        assert!(results[0].as_ref().unwrap().is_ok());
        let panic = results[1].as_ref().unwrap_err();
        assert_eq!(panic.downcast_ref::<&str>(), Some(&"an operation's bug"));
        assert!(results[2].as_ref().unwrap().is_ok());
        let actions = audit_actions(&store);
        assert!(actions.iter().any(|a| a == "before") && actions.iter().any(|a| a == "after"), "{actions:?}");
        store.verify_audit().unwrap();
        assert_quiescent(&store, "after the panic");
    }

    /// A writer whose successors all end without a durable commit (one aborts, one commits
    /// lazily) is not stranded: it makes the durable commit itself.
    #[test]
    fn waiter_flushes_when_the_writer_behind_it_aborts_or_commits_lazily() {
        for lazy in [false, true] {
            let (store, _) = failing_store();
            let first = store.begin_write().unwrap();
            audit::append(&first, AuditEntry::ok("t", "first")).unwrap();
            let behind = {
                let store = store.clone();
                std::thread::spawn(move || {
                    let mut txn = store.begin_write().unwrap();
                    if lazy {
                        txn.set_durability(Durability::None).unwrap();
                        audit::append(&txn, AuditEntry::ok("t", "lazy")).unwrap();
                        txn.commit().unwrap();
                    } else {
                        audit::append(&txn, AuditEntry::ok("t", "aborted")).unwrap();
                        drop(txn);
                    }
                })
            };
            // The second writer is counted (waiting for redb's lock): `first` commits
            // without fsync and waits for a durable commit that the second never makes.
            while store.group.lock().open < 2 {
                std::thread::yield_now();
            }
            first.commit().unwrap();
            behind.join().unwrap();
            assert_quiescent(&store, &format!("lazy={lazy}"));
        }
    }
}
