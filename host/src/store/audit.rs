//! Append-only, hash-chained audit log, keyed with the master key.
//!
//! Record `n` stores `hash = HMAC-SHA256(audit key, prev_hash | canonical JSON of the
//! record without its hash)`, with `prev_hash` of record 1 all zeros and the audit key
//! derived from the master key ([`crate::crypto::MasterKey::audit_key`]): whoever can
//! write the file but lacks the master key cannot rewrite the chain. `meta.audit_chain_head`
//! (`audit_head` before schema 2) holds the last seq and hash, keyed the same way, so deleting the tail is detected too,
//! even with the head moved back to the new last record (only a head this key wrote
//! verifies; rolling the whole file back to an older copy stays out of reach). Every store
//! write appends its record in the same transaction as the change it describes.
//!
//! Migration: databases written before the chain was keyed hold plain
//! `SHA-256(prev_hash | canonical)` records. At the first open by this version,
//! `meta.audit_keyed_from` is set to the next seq and an `audit.keyed` record is appended
//! there; records from it on are keyed, and since its MAC covers the last legacy hash,
//! the legacy records can no longer be rewritten either. A new database is keyed from
//! seq 1 (`store.init`). `audit_by_namespace` indexes `(namespace, seq)` so one user's
//! page is read directly; it is built at that same first open.

use std::sync::Arc;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use super::kv::Table;
use serde::{Deserialize, Serialize};

use super::error::{Result, StoreError};
use super::schema::{
    dec, enc, hex32, AuditHead, CredentialId, NamespaceId, AUDIT, AUDIT_BY_NS, META, META_AUDIT_HEAD,
    META_AUDIT_INDEX, META_AUDIT_KEYED_FROM,
};
use super::{now_ms, Store, Txn};
use crate::crypto::{sha256, AuditKey};

/// How an audited operation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    Ok,
    Denied,
    Failed,
}

/// What a caller asks to append. `detail` must never contain secret values.
#[derive(Debug, Clone)]
pub struct AuditEntry {
    pub actor: String,
    pub namespace: Option<NamespaceId>,
    pub action: String,
    pub credential: Option<CredentialId>,
    pub outcome: Outcome,
    pub detail: String,
}

impl AuditEntry {
    /// A successful action by `actor`, no namespace, empty detail.
    pub fn ok(actor: &str, action: &str) -> Self {
        AuditEntry {
            actor: actor.to_owned(),
            namespace: None,
            action: action.to_owned(),
            credential: None,
            outcome: Outcome::Ok,
            detail: String::new(),
        }
    }

    pub(crate) fn ns(mut self, ns: NamespaceId) -> Self {
        self.namespace = Some(ns);
        self
    }

    pub(crate) fn cred(mut self, id: CredentialId) -> Self {
        self.credential = Some(id);
        self
    }

    pub(crate) fn detail(mut self, detail: impl Into<String>) -> Self {
        self.detail = detail.into();
        self
    }
}

/// One stored audit record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditRecord {
    pub seq: u64,
    /// Unix milliseconds.
    pub at: u64,
    pub actor: String,
    pub namespace: Option<NamespaceId>,
    pub action: String,
    pub credential: Option<CredentialId>,
    pub outcome: Outcome,
    pub detail: String,
    #[serde(with = "hex32")]
    pub prev_hash: [u8; 32],
    #[serde(with = "hex32")]
    pub hash: [u8; 32],
}

#[derive(Serialize)]
struct Canonical<'a> {
    seq: u64,
    at: u64,
    actor: &'a str,
    namespace: Option<NamespaceId>,
    action: &'a str,
    credential: Option<CredentialId>,
    outcome: Outcome,
    detail: &'a str,
}

impl AuditRecord {
    fn canonical(&self) -> Vec<u8> {
        enc(&Canonical {
            seq: self.seq,
            at: self.at,
            actor: &self.actor,
            namespace: self.namespace,
            action: &self.action,
            credential: self.credential,
            outcome: self.outcome,
            detail: &self.detail,
        })
    }

    /// The unkeyed hash of a record written before the chain was keyed (legacy).
    pub fn compute_hash(&self) -> [u8; 32] {
        let body = self.canonical();
        let mut buf = Vec::with_capacity(32 + body.len());
        buf.extend_from_slice(&self.prev_hash);
        buf.extend_from_slice(&body);
        sha256(&buf)
    }

    /// The keyed hash this record should carry given its content and `prev_hash`.
    pub fn compute_mac(&self, key: &AuditKey) -> [u8; 32] {
        key.mac(&[&self.prev_hash, &self.canonical()])
    }
}

/// Filters for [`Store::list_audit`]; all set filters must match.
#[derive(Debug, Clone, Default)]
pub struct AuditQuery {
    pub namespace: Option<NamespaceId>,
    pub actor: Option<String>,
    pub credential: Option<CredentialId>,
    /// Only this action; with a trailing `*`, every action starting with the rest
    /// (`credential.*`).
    pub action: Option<String>,
    /// Only records at or after this time (unix ms).
    pub since: Option<u64>,
    /// Only records before this time (unix ms).
    pub until: Option<u64>,
    /// Leave out `security.*` records: what a user must not see of its own probes (a
    /// probe record exists only for ids that exist, so showing it would tell).
    pub hide_security: bool,
    /// Only records with a smaller seq (pagination: pass the last seq seen).
    pub before_seq: Option<u64>,
    /// `next_cursor` of the previous page (combines with `before_seq`: the smaller wins).
    pub cursor: Option<String>,
    /// At most this many (0 means 100; capped at 1000).
    pub limit: usize,
    /// When the caller stops waiting: a scan still running then ends with the page so far
    /// and a `next_cursor`, like one that spends its [`scan_budget`].
    pub deadline: Option<std::time::Instant>,
}

/// How many records one page may examine: ten per requested record, at least 1000, at
/// most 10 000. A filter that matches little (or hidden `security.*` records) would
/// otherwise walk a whole namespace, or with `all`, the whole log, in one request; a page
/// that spends it ends early with a `next_cursor`, short or even empty.
pub fn scan_budget(limit: usize) -> usize {
    limit.saturating_mul(10).clamp(1000, 10_000)
}

/// How often (in records examined) a scan looks at the clock.
const DEADLINE_EVERY: usize = 256;

/// Action prefix of security events (e.g. `security.probe`).
pub const SECURITY_PREFIX: &str = "security.";

impl AuditQuery {
    fn keeps(&self, rec: &AuditRecord) -> bool {
        let action_ok = match self.action.as_deref() {
            None => true,
            Some(a) => match a.strip_suffix('*') {
                Some(prefix) => rec.action.starts_with(prefix),
                None => rec.action == a,
            },
        };
        action_ok
            && self.namespace.is_none_or(|n| rec.namespace == Some(n))
            && self.actor.as_ref().is_none_or(|a| &rec.actor == a)
            && self.credential.is_none_or(|c| rec.credential == Some(c))
            && self.since.is_none_or(|t| rec.at >= t)
            && self.until.is_none_or(|t| rec.at < t)
            && !(self.hide_security && rec.action.starts_with(SECURITY_PREFIX))
    }
}

/// One page of audit records, newest first.
#[derive(Debug, Clone)]
pub struct AuditPage {
    pub items: Vec<AuditRecord>,
    /// Pass as [`AuditQuery::cursor`] for the next (older) page; `None` on the last page.
    pub next_cursor: Option<String>,
}

fn encode_cursor(seq: u64) -> String {
    URL_SAFE_NO_PAD.encode(format!("seq:{seq}"))
}

fn decode_cursor(c: &str) -> Result<u64> {
    let bad = || StoreError::InvalidField {
        field: "cursor".into(),
        message: "is not a cursor this listing returned".into(),
    };
    let raw = URL_SAFE_NO_PAD.decode(c).map_err(|_| bad())?;
    let text = String::from_utf8(raw).map_err(|_| bad())?;
    text.strip_prefix("seq:").and_then(|n| n.parse().ok()).ok_or_else(bad)
}

/// One listing's walk over candidate records, newest first.
struct Scan<'q> {
    query: &'q AuditQuery,
    limit: usize,
    budget: usize,
    items: Vec<AuditRecord>,
    examined: usize,
    /// Seq of the last record examined.
    last: u64,
    /// Where the next page starts (below this seq), when the walk ended before the log did.
    resume: Option<u64>,
}

impl Scan<'_> {
    /// Called when another record is there to examine: whether the budget or the caller's
    /// time is spent, in which case the next page resumes after the last one examined.
    fn out_of_time(&mut self) -> bool {
        let spent = self.examined >= self.budget
            || (self.examined > 0
                && self.examined % DEADLINE_EVERY == 0
                && self.query.deadline.is_some_and(|d| std::time::Instant::now() >= d));
        if spent {
            self.resume = Some(self.last);
        }
        spent
    }

    /// Examines one record; true when the page is full and another match follows it.
    fn examine(&mut self, rec: AuditRecord) -> bool {
        self.examined += 1;
        self.last = rec.seq;
        if !self.query.keeps(&rec) {
            return false;
        }
        if self.items.len() == self.limit {
            self.resume = self.items.last().map(|r| r.seq);
            return true;
        }
        self.items.push(rec);
        false
    }
}

/// Appends `entry` inside `txn`; the caller commits.
pub(crate) fn append(txn: &Txn, entry: AuditEntry) -> Result<AuditRecord> {
    let mut recs = append_many(txn, vec![entry])?;
    Ok(recs.pop().expect("one record appended"))
}

/// The head for record `seq` with `hash`, keyed with `key`.
fn keyed_head(key: &AuditKey, seq: u64, hash: [u8; 32]) -> AuditHead {
    let mac = key.mac(&[b"credhost audit head", &seq.to_be_bytes(), &hash]);
    AuditHead { seq, hash, mac: Some(crate::crypto::hex(&mac)) }
}

/// Whether `head` carries the key `key` gives it.
fn head_verifies(key: &AuditKey, head: &AuditHead) -> bool {
    head.mac.is_some() && head.mac == keyed_head(key, head.seq, head.hash).mac
}

/// The stored head, if any.
fn stored_head(meta: &Table<'_, &'static str, &'static [u8]>) -> Result<Option<AuditHead>> {
    match meta.get(META_AUDIT_HEAD)? {
        Some(v) => Ok(Some(dec(v.value(), "audit head")?)),
        None => Ok(None),
    }
}

/// Said in the keyed chain when heads are keyed from the start (`store.init`'s and
/// `audit.keyed`'s detail) or from an upgrade on (an `audit.head_keyed` record): where it
/// is said, an unkeyed head is a forged one, never an old one to key.
pub(crate) const HEADS_KEYED: &str = "audit_head=keyed";

/// Whether the log says its heads are keyed (see [`HEADS_KEYED`]).
fn says_heads_keyed(audit: &Table<'_, u64, &'static [u8]>) -> Result<bool> {
    for row in audit.iter()? {
        let rec: AuditRecord = dec(row?.1.value(), "audit record")?;
        let marks = matches!(rec.action.as_str(), "store.init" | "audit.keyed") && rec.detail.contains(HEADS_KEYED);
        if marks || rec.action == "audit.head_keyed" {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Appends `entries` in order inside `txn`, each chained to the one before.
pub(crate) fn append_many(txn: &Txn, entries: Vec<AuditEntry>) -> Result<Vec<AuditRecord>> {
    let mut meta = txn.open_table(META)?;
    let mut audit = txn.open_table(AUDIT)?;
    let mut by_ns = txn.open_table(AUDIT_BY_NS)?;
    let mut head = stored_head(&meta)?.unwrap_or_default();
    // A head this key did not write (the tail removed and the head moved back) stays
    // unkeyed through every append, so the next append does not launder it.
    let trusted = match head.mac {
        Some(_) => head_verifies(&txn.audit_key, &head),
        None => head.seq == 0 && audit.is_empty()?,
    };
    let at = now_ms();
    let mut out = Vec::with_capacity(entries.len());
    for entry in entries {
        let mut rec = AuditRecord {
            seq: head.seq + 1,
            at,
            actor: entry.actor,
            namespace: entry.namespace,
            action: entry.action,
            credential: entry.credential,
            outcome: entry.outcome,
            detail: entry.detail,
            prev_hash: head.hash,
            hash: [0; 32],
        };
        rec.hash = rec.compute_mac(&txn.audit_key);
        audit.insert(rec.seq, enc(&rec).as_slice())?;
        if let Some(ns) = rec.namespace {
            by_ns.insert((ns.key(), rec.seq), ())?;
        }
        head = AuditHead { seq: rec.seq, hash: rec.hash, mac: None };
        out.push(rec);
    }
    let head = if trusted { keyed_head(&txn.audit_key, head.seq, head.hash) } else { head };
    meta.insert(META_AUDIT_HEAD, enc(&head).as_slice())?;
    // Counted when appended: a transaction that then aborts (a failed commit, or a batch
    // whose operations run again after one failed) is rare and counted too.
    crate::metrics::audit_written(out.len());
    Ok(out)
}

/// Walks the chain in `audit` against `meta`'s head and key marker. Returns the number
/// of records, or [`StoreError::AuditBroken`] naming the first bad seq and why.
fn check_chain(
    audit: &Table<'_, u64, &'static [u8]>,
    meta: &Table<'_, &'static str, &'static [u8]>,
    key: &AuditKey,
) -> Result<u64> {
    let broken = |seq, reason: &str| StoreError::AuditBroken { seq, reason: reason.to_owned() };
    let keyed_from: u64 = match meta.get(META_AUDIT_KEYED_FROM)? {
        Some(v) => dec(v.value(), "audit key marker")?,
        None => return Err(broken(1, "the chain's key marker (meta audit_keyed_from) is missing")),
    };
    let mut prev = AuditHead::default();
    for row in audit.iter()? {
        let (k, v) = row?;
        let seq = k.value();
        let rec: AuditRecord =
            serde_json::from_slice(v.value()).map_err(|e| broken(seq, &format!("unreadable record: {e}")))?;
        if seq != prev.seq + 1 {
            return Err(broken(prev.seq + 1, &format!("record missing (next present is {seq})")));
        }
        if rec.seq != seq {
            return Err(broken(seq, "record seq differs from its key"));
        }
        if rec.prev_hash != prev.hash {
            return Err(broken(seq, "prev_hash does not match the previous record's hash"));
        }
        if seq >= keyed_from {
            if rec.compute_mac(key) != rec.hash {
                return Err(broken(
                    seq,
                    "content does not match its keyed hash (record edited, or the chain rewritten \
                     without the master key)",
                ));
            }
            // The marker cannot be moved: the record it points at must be the keyed start.
            let start = if keyed_from == 1 { "store.init" } else { "audit.keyed" };
            if seq == keyed_from && rec.action != start {
                return Err(broken(seq, "the keyed chain does not start here (key marker moved)"));
            }
        } else if rec.compute_hash() != rec.hash {
            return Err(broken(seq, "content does not match its hash (legacy record edited)"));
        }
        prev = AuditHead { seq, hash: rec.hash, mac: None };
    }
    if keyed_from > prev.seq {
        return Err(broken(keyed_from, "the keyed chain's first record is missing (key marker moved)"));
    }
    let head = stored_head(meta)?.unwrap_or_default();
    if head.seq != prev.seq || head.hash != prev.hash {
        return Err(broken(
            prev.seq + 1,
            &format!(
                "log ends at seq {} but the head records seq {} (tail removed or replaced)",
                prev.seq, head.seq
            ),
        ));
    }
    if !head_verifies(key, &head) {
        return Err(broken(
            prev.seq + 1,
            &format!(
                "the head (seq {}) does not match its keyed hash (tail removed and the head moved back, \
                 or the head written without the master key)",
                head.seq
            ),
        ));
    }
    debug_assert_eq!(audit.len()?, prev.seq);
    Ok(prev.seq)
}

/// Re-keys the chain inside `txn` (key rotation): checks it under `txn`'s current key,
/// then recomputes every keyed record's hash under `new` and makes `new` the key for
/// the rest of `txn`. A broken chain is refused, never laundered under a new key.
pub(crate) fn rekey(txn: &mut Txn, new: Arc<AuditKey>) -> Result<()> {
    {
        let mut meta = txn.open_table(META)?;
        let mut audit = txn.open_table(AUDIT)?;
        check_chain(&audit, &meta, &txn.audit_key)?;
        let keyed_from: u64 = match meta.get(META_AUDIT_KEYED_FROM)? {
            Some(v) => dec(v.value(), "audit key marker")?,
            None => return Err(StoreError::Corrupt("audit key marker missing".into())),
        };
        let mut prev = match keyed_from {
            1 => [0u8; 32],
            n => dec::<AuditRecord>(audit.get(n - 1)?.ok_or(StoreError::NotFound)?.value(), "audit record")?.hash,
        };
        let mut head = AuditHead::default();
        let last = audit.last()?.map(|(k, _)| k.value()).unwrap_or(0);
        for seq in keyed_from..=last {
            let mut rec: AuditRecord =
                dec(audit.get(seq)?.ok_or(StoreError::NotFound)?.value(), "audit record")?;
            rec.prev_hash = prev;
            rec.hash = rec.compute_mac(&new);
            audit.insert(seq, enc(&rec).as_slice())?;
            prev = rec.hash;
            head = keyed_head(&new, seq, rec.hash);
        }
        if last >= keyed_from {
            meta.insert(META_AUDIT_HEAD, enc(&head).as_slice())?;
        }
    }
    txn.audit_key = new;
    Ok(())
}

/// Whether the stored head carries a key (or there is none yet).
fn head_is_keyed(meta: &Table<'_, &'static str, &'static [u8]>) -> Result<bool> {
    Ok(stored_head(meta)?.is_none_or(|h| h.mac.is_some()))
}

/// Keys the stored head as it stands (an upgrade's first open; see `migrate_audit`).
fn key_stored_head(txn: &Txn) -> Result<()> {
    let mut meta = txn.open_table(META)?;
    if let Some(head) = stored_head(&meta)? {
        meta.insert(META_AUDIT_HEAD, enc(&keyed_head(&txn.audit_key, head.seq, head.hash)).as_slice())?;
    }
    Ok(())
}

impl Store {
    /// Appends a caller's audit record (e.g. a plugin capability denial) in its own
    /// durable transaction. Store operations audit themselves; this is for the rest.
    pub fn append_audit(&self, entry: AuditEntry) -> Result<AuditRecord> {
        let txn = self.begin_write()?;
        let rec = append(&txn, entry)?;
        txn.commit()?;
        Ok(rec)
    }

    /// Appends many records in one durable transaction (one fsync), chained in order
    /// exactly as single appends would be. Nothing is written for an empty batch.
    pub fn append_audit_batch(&self, entries: Vec<AuditEntry>) -> Result<Vec<AuditRecord>> {
        if entries.is_empty() {
            return Ok(Vec::new());
        }
        let txn = self.begin_write()?;
        let recs = append_many(&txn, entries)?;
        txn.commit()?;
        Ok(recs)
    }

    /// Appends a record without waiting for the disk (a non-durable commit): for records
    /// written on a hot path (each proxy call). The next durable commit — any store write,
    /// or [`Store::flush_audit`], which the service runs every second — makes it durable;
    /// a crash before that can lose the last second of such records, never a commit.
    pub fn append_audit_lazy(&self, entry: AuditEntry) -> Result<AuditRecord> {
        let mut txn = self.begin_write()?;
        txn.set_durability(redb::Durability::None)?;
        let rec = append(&txn, entry)?;
        txn.commit()?;
        self.lazy_pending.store(true, std::sync::atomic::Ordering::Release);
        Ok(rec)
    }

    /// Makes lazily appended records durable (an empty durable commit); a no-op when none
    /// are pending.
    pub fn flush_audit(&self) -> Result<()> {
        if self.lazy_pending.swap(false, std::sync::atomic::Ordering::AcqRel) {
            self.begin_write()?.commit()?;
        }
        Ok(())
    }

    /// Audit records matching `query`, newest first (one page of [`Store::list_audit_page`]).
    pub fn list_audit(&self, query: &AuditQuery) -> Result<Vec<AuditRecord>> {
        Ok(self.list_audit_page(query)?.items)
    }

    /// One page of the audit records matching `query`, newest first. With a namespace,
    /// only that namespace's records are read (through the `(namespace, seq)` index).
    /// Time filters do not end the scan early: record times follow the wall clock, which
    /// may step back, while seqs only grow. At most [`scan_budget`] records are examined
    /// (and none past `query.deadline`); a page cut short that way still carries a
    /// `next_cursor` that resumes right after the last record examined.
    pub fn list_audit_page(&self, query: &AuditQuery) -> Result<AuditPage> {
        let limit = match query.limit {
            0 => 100,
            n => n.min(1000),
        };
        let mut before = query.before_seq.unwrap_or(u64::MAX);
        if let Some(c) = &query.cursor {
            before = before.min(decode_cursor(c)?);
        }
        let txn = self.begin_read()?;
        let table = txn.open_table(AUDIT)?;
        let mut scan = Scan { query, limit, budget: scan_budget(limit), items: Vec::new(), examined: 0, last: 0, resume: None };
        if let Some(ns) = query.namespace {
            let index = txn.open_table(AUDIT_BY_NS)?;
            // Records in chunks of the index, each read in one go (one statement on
            // PostgreSQL), examined in order.
            let mut rows = index.range((ns.key(), 0)..(ns.key(), before))?.rev();
            'chunks: loop {
                let mut seqs = Vec::with_capacity(64);
                for row in rows.by_ref() {
                    seqs.push(row?.0.value().1);
                    if seqs.len() == 64 {
                        break;
                    }
                }
                if seqs.is_empty() {
                    break;
                }
                for (seq, v) in seqs.iter().zip(table.get_many(&seqs)?) {
                    if scan.out_of_time() {
                        break 'chunks;
                    }
                    let v = v.ok_or_else(|| StoreError::Corrupt(format!("audit index names missing record {seq}")))?;
                    if scan.examine(dec(v.value(), "audit record")?) {
                        break 'chunks;
                    }
                }
            }
        } else {
            for row in table.range(..before)?.rev() {
                let row = row?;
                if scan.out_of_time() {
                    break;
                }
                if scan.examine(dec(row.1.value(), "audit record")?) {
                    break;
                }
            }
        }
        Ok(AuditPage { next_cursor: scan.resume.map(encode_cursor), items: scan.items })
    }

    /// Walks the whole audit chain, checking every keyed hash with the master key.
    /// Returns the number of records, or [`StoreError::AuditBroken`] naming the first bad
    /// seq and why.
    pub fn verify_audit(&self) -> Result<u64> {
        let txn = self.begin_read()?;
        let (audit, meta) = (txn.open_table(AUDIT)?, txn.open_table(META)?);
        check_chain(&audit, &meta, txn.audit_key())
    }

    /// How many records predate the keyed chain (written by a version that did not key
    /// it; see the module docs). 0 for a database created keyed.
    pub fn audit_legacy_records(&self) -> Result<u64> {
        let txn = self.begin_read()?;
        let meta = txn.open_table(META)?;
        let from: u64 = match meta.get(META_AUDIT_KEYED_FROM)? {
            Some(v) => dec(v.value(), "audit key marker")?,
            None => 1,
        };
        Ok(from.saturating_sub(1))
    }

    /// First open by this version of a database whose chain is not keyed or not indexed:
    /// keys the chain from the next seq and builds the namespace index, in one transaction.
    pub(crate) fn migrate_audit(&self) -> Result<()> {
        {
            let txn = self.begin_read()?;
            let meta = txn.open_table(META)?;
            if meta.get(META_AUDIT_KEYED_FROM)?.is_some() && meta.get(META_AUDIT_INDEX)?.is_some() && head_is_keyed(&meta)? {
                return Ok(());
            }
        }
        let txn = self.begin_write()?;
        let (keyed, indexed, head_keyed) = {
            let meta = txn.open_table(META)?;
            let keyed = meta.get(META_AUDIT_KEYED_FROM)?.is_some();
            let indexed = meta.get(META_AUDIT_INDEX)?.is_some();
            (keyed, indexed, head_is_keyed(&meta)?)
        };
        if !indexed {
            let audit = txn.open_table(AUDIT)?;
            let mut by_ns = txn.open_table(AUDIT_BY_NS)?;
            let mut n = 0u64;
            for row in audit.iter()? {
                let (k, v) = row?;
                let rec: AuditRecord = dec(v.value(), "audit record")?;
                if let Some(ns) = rec.namespace {
                    by_ns.insert((ns.key(), k.value()), ())?;
                    n += 1;
                }
            }
            txn.open_table(META)?.insert(META_AUDIT_INDEX, enc(&1u32).as_slice())?;
            tracing::info!(records = n, "audit: built the per-namespace index");
        }
        if !keyed && indexed {
            // This version opened the file before (the index is there), so the marker was
            // removed since: leave it missing, and `audit verify` reports the break.
            tracing::error!("audit: the chain's key marker was removed from the database; not re-keying");
        } else if !keyed {
            let next = {
                let meta = txn.open_table(META)?;
                stored_head(&meta)?.unwrap_or_default().seq + 1
            };
            txn.open_table(META)?.insert(META_AUDIT_KEYED_FROM, enc(&next).as_slice())?;
            key_stored_head(&txn)?;
            let legacy = next - 1;
            append(
                &txn,
                AuditEntry::ok("system", "audit.keyed").detail(format!(
                    "chain keyed with the master key from here; records 1..={legacy} predate it; {HEADS_KEYED}"
                )),
            )?;
            tracing::warn!(
                legacy,
                "audit: the chain is keyed from now on; the {legacy} older records were written unkeyed"
            );
        } else if !head_keyed {
            if says_heads_keyed(&txn.open_table(AUDIT)?)? {
                // Keyed heads were written here before: this one was not, so it stays as it
                // is and `audit verify` reports it.
                tracing::error!("audit: the chain's head is not keyed although this database keys heads; not keying it");
            } else {
                // Written by a version before keyed heads: keyed as it stands (a tail removed
                // before now still shows, as a head that does not match the log).
                key_stored_head(&txn)?;
                append(&txn, AuditEntry::ok("system", "audit.head_keyed").detail(format!("the head is keyed from here; {HEADS_KEYED}")))?;
                tracing::info!("audit: the chain's head is keyed from now on");
            }
        }
        txn.commit()?;
        Ok(())
    }
}
