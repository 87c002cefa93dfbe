//! Upgrades of a store's layout to [`SCHEMA_VERSION`], run once at open, each in one
//! transaction (a crash before its commit leaves the old layout, upgraded at the next
//! open).
//!
//! Schema 2 (from 1) moves a version's metadata from `version_meta` into `versions` (under
//! the number with [`META_PART`] set), which a create writes anyway: a redb commit costs
//! per dirty page. It also moves the audit head from `meta.audit_head` to
//! `meta.audit_chain_head`, leaving [`AUDIT_HEAD_MOVED`] behind, from which no head
//! decodes: a replica of the older version still running fails its writes instead of
//! writing a version where schema 2 keeps metadata. (The head stays in `meta`: kept in
//! `audit` past the newest record it would cost a page write less, but every append
//! would then split the last leaf in the middle, and the log took half again its pages.)
//! PostgreSQL stores get the same change from its migration 3 (see `pg`), as row-level
//! security lets no one transaction copy rows between namespaces here.

use super::error::{Result, StoreError};
use super::kv::Table;
use super::schema::*;
use super::versions::META_PART;
use super::{Store, Txn};

impl Store {
    /// Brings an older schema to [`SCHEMA_VERSION`] (a no-op when current).
    pub(crate) fn upgrade_schema(&self) -> Result<()> {
        let current = |meta: &Table<'_, &'static str, &'static [u8]>| -> Result<u32> {
            match meta.get(META_SCHEMA_VERSION)? {
                Some(v) => dec(v.value(), "schema version"),
                None => Err(StoreError::Corrupt("meta has no schema version".into())),
            }
        };
        if current(&self.begin_read()?.open_table(META)?)? >= SCHEMA_VERSION {
            return Ok(());
        }
        if self.is_shared() {
            // PostgreSQL's migration 3 upgrades in SQL before the store opens; here its
            // row-level security would refuse the copies.
            return Err(StoreError::Corrupt(
                "the database's store schema is older than its migrations say (meta schema_version); \
                 restore it from a backup"
                    .into(),
            ));
        }
        let txn = self.begin_write()?;
        let from = current(&txn.open_table(META)?)?;
        let mut moved = 0;
        if from < 2 {
            moved = to_2(&txn)?;
        }
        txn.open_table(META)?.insert(META_SCHEMA_VERSION, enc(&SCHEMA_VERSION).as_slice())?;
        txn.commit()?;
        tracing::info!(from, to = SCHEMA_VERSION, version_metadata = moved, "store: schema upgraded");
        Ok(())
    }
}

/// Schema 1 to 2 (see the module docs). Returns the version metadata rows moved.
fn to_2(txn: &Txn) -> Result<u64> {
    let mut moved = 0;
    {
        let mut metas = txn.open_table(VERSION_META)?;
        let mut versions = txn.open_table(VERSIONS)?;
        for row in metas.iter()? {
            let (k, v) = row?;
            let (id, n) = k.value();
            if n >= META_PART {
                return Err(StoreError::Corrupt(format!("version_meta: version number {n} out of range")));
            }
            versions.insert((id, n | META_PART), v.value())?;
            moved += 1;
        }
        metas.retain_in::<(u128, u32), _>(.., |_, _| false)?;
    }
    let mut meta = txn.open_table(META)?;
    let head = meta.get(META_AUDIT_HEAD_V1)?.map(|v| v.value().to_vec());
    if let Some(head) = head {
        meta.insert(META_AUDIT_HEAD, head.as_slice())?;
    }
    meta.insert(META_AUDIT_HEAD_V1, AUDIT_HEAD_MOVED)?;
    Ok(moved)
}
