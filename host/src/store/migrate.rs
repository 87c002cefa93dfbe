//! `credhost migrate --from-redb PATH --to-postgres URL`: copies a redb store into an empty
//! PostgreSQL database as it is (a source of an older schema is upgraded in place first,
//! as any open does). Sealed blobs and wrapped keys are copied byte for byte
//! (nothing is decrypted); the master key is needed only to check that it opens the source
//! and to verify the audit chain on both sides.
//!
//! Rows go over in batches, each its own transaction. `meta` goes last, so a target whose
//! copy did not finish holds no `meta` and no replica opens it as a store; `--resume`
//! brings such a target to the source's current state (rows upserted, rows the source no
//! longer has removed), and writes nothing to a finished one.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use redb::{TableDefinition, TableHandle, Value};

use super::kv::{ord_key, raw_key, raw_value, OrdKey};
use super::pg::{self, Pg, PgOptions};
use super::schema::*;
use super::schema::dec;
use super::{Credential, Read, Result, Store, StoreError};
use crate::crypto::MasterKey;

/// Rows per target transaction.
const BATCH: usize = 2000;

/// What a migration copied and checked.
#[derive(Debug, Default)]
pub struct MigrationReport {
    /// Rows per table: (table, rows in the source, rows in the target afterwards).
    pub tables: Vec<(String, u64, u64)>,
    /// Audit records verified on the target.
    pub audit_records: u64,
    pub namespaces: usize,
}

/// How a row's namespace (the `ns` of a per-user table) is found.
enum NsOf {
    /// Not a per-user table.
    None,
    /// The key's first part is the namespace.
    KeyNamespace,
    /// The key's first part is a credential id.
    KeyCredential,
    /// The value is a credential record.
    Credential,
}

/// Calls `$m!(TABLE, how its rows' namespace is found)` for every table, `meta` last.
macro_rules! every_table {
    ($m:ident) => {
        $m!(NAMESPACES, NsOf::None);
        $m!(USERS, NsOf::None);
        $m!(CREDENTIALS, NsOf::Credential);
        $m!(NAMES, NsOf::KeyNamespace);
        $m!(VERSIONS, NsOf::KeyCredential);
        $m!(AUDIT, NsOf::None);
        $m!(TOKENS, NsOf::None);
        $m!(AUDIT_BY_NS, NsOf::None);
        $m!(OUTBOX, NsOf::None);
        $m!(TEST_HISTORY, NsOf::KeyCredential);
        $m!(MONITOR_DUE, NsOf::None);
        $m!(VERSION_META, NsOf::KeyCredential);
        $m!(ROTATION_KEYS, NsOf::KeyCredential);
        $m!(WEBHOOKS, NsOf::KeyNamespace);
        $m!(WEBHOOK_DELIVERIES, NsOf::None);
        $m!(WEBHOOK_QUEUE, NsOf::None);
        $m!(META, NsOf::None);
    };
}

/// Copies the redb store at `src` into the database `opts` names (see the module docs).
pub fn redb_to_postgres(
    src: &Path,
    opts: &PgOptions,
    kek: MasterKey,
    resume: bool,
    mut progress: impl FnMut(&str),
) -> Result<MigrationReport> {
    let target_kek = MasterKey::from_base64(secrecy::ExposeSecret::expose_secret(&kek.to_base64()))?;
    if !src.is_file() {
        return Err(StoreError::Invalid(format!("{} is not a file", src.display())));
    }
    // Opening checks the key and the schema; the chain is checked before anything is copied.
    let source = Store::open(src, kek)?;
    let records = source.verify_audit()?;
    progress(&format!("source {}: audit chain intact ({records} records)", src.display()));
    let pg = Arc::new(Pg::connect(opts)?);
    let snap = source.begin_read()?;
    let Read::Redb(_) = &snap.inner else {
        return Err(StoreError::Invalid("the source is not a redb store".into()));
    };
    // Rows per table on both sides, before anything is written.
    let mut sizes: Vec<(&str, u64, u64)> = Vec::new();
    {
        let tx = pg.raw()?;
        macro_rules! size {
            ($def:expr, $ns:expr) => {{
                let name = $def.name();
                sizes.push((pg::TABLES.iter().find(|t| t.0 == name).map_or(name, |t| t.0), snap.open_table($def)?.len()?, tx.count(pg::table_name(name))?));
            }};
        }
        every_table!(size);
    }
    let existing: u64 = sizes.iter().map(|t| t.2).sum();
    if existing > 0 && !resume {
        return Err(StoreError::Conflict(format!(
            "the target database is not empty ({existing} credhost rows): migrate into an empty database, \
             or pass --resume to continue an interrupted migration into it"
        )));
    }
    // A finished copy (its `meta` is copied last) may be in use by replicas: a resume
    // writes nothing to it and only checks it equals the source (every write appends an
    // audit record, so a store used since differs in `audit` at least). An unfinished one
    // is brought to the source's current state: rows upserted, rows the source no longer
    // has removed (the source may have been used between the runs).
    let finished = sizes.iter().any(|t| t.0 == "meta" && t.2 > 0);
    if let Some((t, src, dst)) = sizes.iter().find(|(_, src, dst)| finished && dst != src) {
        return Err(StoreError::Conflict(format!(
            "table {t}: {dst} rows in the target, {src} in the source: the target is a finished copy that has \
             been used since (or another store's); nothing was written"
        )));
    }
    // Per-user rows keyed by a credential id take that credential's namespace.
    let mut owners: HashMap<u128, String> = HashMap::new();
    for row in snap.open_table(CREDENTIALS)?.iter()? {
        let (k, v) = row?;
        let c: Credential = dec(v.value(), "credential")?;
        owners.insert(k.value(), pg::namespace_label(c.namespace));
    }
    let mut report = MigrationReport::default();
    let mut copy = |name: String, n: u64, total: u64| {
        progress(&format!("{name}: {n} rows copied ({total} in the target)"));
        report.tables.push((name, n, total));
    };
    macro_rules! copy {
        ($def:expr, $ns:expr) => {{
            let (n, total) = if finished {
                let t = sizes.iter().find(|t| t.0 == $def.name()).expect("sized above");
                (t.1, t.2)
            } else {
                copy_table(&snap, &pg, $def, $ns, &owners, resume)?
            };
            copy($def.name().to_owned(), n, total);
        }};
    }
    every_table!(copy);
    drop(snap);
    drop(source);
    // Every table of the backend is copied (a table added later must be added above).
    let copied: Vec<&str> = report.tables.iter().map(|t| t.0.as_str()).collect();
    if let Some((t, _, _)) = pg::TABLES.iter().find(|(t, _, _)| !copied.contains(t)) {
        return Err(StoreError::Corrupt(format!("migrate does not copy table {t}")));
    }
    if let Some((t, n, total)) = report.tables.iter().find(|(_, n, total)| n != total) {
        return Err(StoreError::Conflict(format!(
            "table {t}: {n} rows in the source but {total} in the target after the copy (written to meanwhile?)"
        )));
    }
    // The target opened as every replica will open it: key check, chain, data keys.
    let target = Store::open_postgres(opts, target_kek)?;
    report.audit_records = target.verify_audit()?;
    report.namespaces = target.verify_keys()?.namespaces;
    if report.audit_records < records {
        return Err(StoreError::Conflict(format!(
            "the target's audit chain has {} records, the source's {records}",
            report.audit_records
        )));
    }
    Ok(report)
}

/// Copies one table in batches; returns (rows in the source, rows in the target).
fn copy_table<K: OrdKey, V: Value + 'static>(
    snap: &super::Snapshot,
    pg: &Arc<Pg>,
    def: TableDefinition<K, V>,
    ns_of: NsOf,
    owners: &HashMap<u128, String>,
    resume: bool,
) -> Result<(u64, u64)> {
    let sql_table = pg::table_name(def.name());
    let table = snap.open_table(def)?;
    let mut tx = pg.raw()?;
    let mut n = 0u64;
    let mut in_batch = 0;
    let mut seen = std::collections::HashSet::new();
    for row in table.iter()? {
        let (k, v) = row?;
        let (key, value) = (k.value(), v.value());
        if resume {
            seen.insert(ord_key::<K>(&key));
        }
        let ns = match ns_of {
            NsOf::None => None,
            NsOf::KeyNamespace | NsOf::KeyCredential => {
                let first = first_u128(&ord_key::<K>(&key));
                match ns_of {
                    NsOf::KeyNamespace => Some(format!("{first:032x}")),
                    _ => Some(owners.get(&first).cloned().ok_or_else(|| {
                        StoreError::Corrupt(format!("{}: a row of credential {first:x}, which does not exist", def.name()))
                    })?),
                }
            }
            NsOf::Credential => {
                let c: Credential = dec(&raw_value::<V>(&value), "credential")?;
                Some(pg::namespace_label(c.namespace))
            }
        };
        tx.copy_row(sql_table, ord_key::<K>(&key), raw_key::<K>(&key), raw_value::<V>(&value), ns)?;
        n += 1;
        in_batch += 1;
        if in_batch == BATCH {
            tx.commit(false)?;
            tx = pg.raw()?;
            in_batch = 0;
        }
    }
    if resume {
        let gone: Vec<Vec<u8>> = tx.keys(sql_table)?.into_iter().filter(|k| !seen.contains(k)).collect();
        tx.remove_many(sql_table, gone)?;
    }
    let total = tx.count(sql_table)?;
    tx.commit(false)?;
    Ok((n, total))
}

/// The first part of a key whose first part is a u128 ([`OrdKey`] writes it big-endian).
fn first_u128(ord: &[u8]) -> u128 {
    let mut b = [0u8; 16];
    b.copy_from_slice(&ord[..16]);
    u128::from_be_bytes(b)
}
