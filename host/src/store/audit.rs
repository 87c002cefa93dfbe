//! Append-only, hash-chained audit log.
//!
//! Record `n` stores `hash = SHA-256(prev_hash | canonical JSON of the record without its
//! hash)`, with `prev_hash` of record 1 all zeros. `meta.audit_head` holds the last seq and
//! hash, so deleting the tail is detected too. Every store write appends its record in
//! the same transaction as the change it describes.

use redb::{ReadableDatabase, ReadableTable, ReadableTableMetadata, WriteTransaction};
use serde::{Deserialize, Serialize};

use super::error::{Result, StoreError};
use super::schema::{
    dec, enc, hex32, AuditHead, CredentialId, NamespaceId, AUDIT, META, META_AUDIT_HEAD,
};
use super::{now_ms, Store};
use crate::crypto::sha256;

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
    /// The hash this record should carry given its content and `prev_hash`.
    pub fn compute_hash(&self) -> [u8; 32] {
        let body = enc(&Canonical {
            seq: self.seq,
            at: self.at,
            actor: &self.actor,
            namespace: self.namespace,
            action: &self.action,
            credential: self.credential,
            outcome: self.outcome,
            detail: &self.detail,
        });
        let mut buf = Vec::with_capacity(32 + body.len());
        buf.extend_from_slice(&self.prev_hash);
        buf.extend_from_slice(&body);
        sha256(&buf)
    }
}

/// Filters for [`Store::list_audit`]; all set filters must match.
#[derive(Debug, Clone, Default)]
pub struct AuditQuery {
    pub namespace: Option<NamespaceId>,
    pub actor: Option<String>,
    pub credential: Option<CredentialId>,
    /// Only records with a smaller seq (pagination: pass the last seq seen).
    pub before_seq: Option<u64>,
    /// At most this many (0 means 100; capped at 1000).
    pub limit: usize,
}

/// Appends `entry` inside `txn`; the caller commits.
pub(crate) fn append(txn: &WriteTransaction, entry: AuditEntry) -> Result<AuditRecord> {
    let mut meta = txn.open_table(META)?;
    let head: AuditHead = match meta.get(META_AUDIT_HEAD)? {
        Some(v) => dec(v.value(), "audit head")?,
        None => AuditHead::default(),
    };
    let mut rec = AuditRecord {
        seq: head.seq + 1,
        at: now_ms(),
        actor: entry.actor,
        namespace: entry.namespace,
        action: entry.action,
        credential: entry.credential,
        outcome: entry.outcome,
        detail: entry.detail,
        prev_hash: head.hash,
        hash: [0; 32],
    };
    rec.hash = rec.compute_hash();
    txn.open_table(AUDIT)?
        .insert(rec.seq, enc(&rec).as_slice())?;
    meta.insert(
        META_AUDIT_HEAD,
        enc(&AuditHead {
            seq: rec.seq,
            hash: rec.hash,
        })
        .as_slice(),
    )?;
    Ok(rec)
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

    /// Audit records matching `query`, newest first.
    pub fn list_audit(&self, query: &AuditQuery) -> Result<Vec<AuditRecord>> {
        let limit = match query.limit {
            0 => 100,
            n => n.min(1000),
        };
        let txn = self.db.begin_read()?;
        let table = txn.open_table(AUDIT)?;
        let mut out = Vec::new();
        let range = table.range(..query.before_seq.unwrap_or(u64::MAX))?;
        for row in range.rev() {
            let (_, v) = row?;
            let rec: AuditRecord = dec(v.value(), "audit record")?;
            let keep = query.namespace.is_none_or(|n| rec.namespace == Some(n))
                && query.actor.as_ref().is_none_or(|a| &rec.actor == a)
                && query.credential.is_none_or(|c| rec.credential == Some(c));
            if keep {
                out.push(rec);
                if out.len() == limit {
                    break;
                }
            }
        }
        Ok(out)
    }

    /// Walks the whole audit chain. Returns the number of records, or
    /// [`StoreError::AuditBroken`] naming the first bad seq and why.
    pub fn verify_audit(&self) -> Result<u64> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(AUDIT)?;
        let broken = |seq, reason: &str| StoreError::AuditBroken {
            seq,
            reason: reason.to_owned(),
        };
        let mut prev = AuditHead::default();
        for row in table.iter()? {
            let (k, v) = row?;
            let seq = k.value();
            let rec: AuditRecord = serde_json::from_slice(v.value())
                .map_err(|e| broken(seq, &format!("unreadable record: {e}")))?;
            if seq != prev.seq + 1 {
                return Err(broken(
                    prev.seq + 1,
                    &format!("record missing (next present is {seq})"),
                ));
            }
            if rec.seq != seq {
                return Err(broken(seq, "record seq differs from its key"));
            }
            if rec.prev_hash != prev.hash {
                return Err(broken(
                    seq,
                    "prev_hash does not match the previous record's hash",
                ));
            }
            if rec.compute_hash() != rec.hash {
                return Err(broken(
                    seq,
                    "content does not match its hash (record edited)",
                ));
            }
            prev = AuditHead {
                seq,
                hash: rec.hash,
            };
        }
        let head: AuditHead = match txn.open_table(META)?.get(META_AUDIT_HEAD)? {
            Some(v) => dec(v.value(), "audit head")?,
            None => AuditHead::default(),
        };
        if head.seq != prev.seq || head.hash != prev.hash {
            return Err(broken(
                prev.seq + 1,
                &format!(
                    "log ends at seq {} but the head records seq {} (tail removed or replaced)",
                    prev.seq, head.seq
                ),
            ));
        }
        debug_assert_eq!(table.len()?, prev.seq);
        Ok(prev.seq)
    }
}
