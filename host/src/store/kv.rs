//! The store's tables, on either backend.
//!
//! Every store operation is written once, against these ordered key-value tables, and
//! runs on redb (embedded, the default) or on PostgreSQL (several replicas, see
//! [`super::pg`]). The API mirrors redb's (`get`, `insert`, `remove`, `range`, ...), so an
//! operation reads the same on both; a table is a redb `TableDefinition`, whose key and
//! value encodings both backends store.
//!
//! PostgreSQL compares keys as bytes, so each key is also stored in an order-preserving
//! encoding ([`OrdKey`]): integers big-endian, strings and byte strings escaped and
//! terminated so a tuple's parts compare one after the other, as redb compares them.

use std::borrow::Borrow;
use std::marker::PhantomData;
use std::ops::{Bound, RangeBounds};

use redb::{Key, ReadableTable, ReadableTableMetadata, TableDefinition, TableHandle, Value};

use super::pg;
use super::Result;

/// A key type both backends can order: redb by `Key::compare`, PostgreSQL by the bytes of
/// [`OrdKey::ord_bytes`], which sort the same way.
pub(crate) trait OrdKey: Key + 'static {
    fn ord_bytes(v: &Self::SelfType<'_>, out: &mut Vec<u8>);
}

macro_rules! ord_int {
    ($($t:ty),*) => {$(
        impl OrdKey for $t {
            fn ord_bytes(v: &$t, out: &mut Vec<u8>) {
                out.extend_from_slice(&v.to_be_bytes());
            }
        }
    )*};
}
ord_int!(u32, u64, u128);

/// Bytes escaped (0 as 0,255) and terminated by 0,0: shorter sorts first, and what follows
/// in a tuple cannot change the order of two different strings.
fn ord_escaped(bytes: &[u8], out: &mut Vec<u8>) {
    for &b in bytes {
        out.push(b);
        if b == 0 {
            out.push(255);
        }
    }
    out.extend_from_slice(&[0, 0]);
}

impl OrdKey for &'static str {
    fn ord_bytes(v: &&str, out: &mut Vec<u8>) {
        ord_escaped(v.as_bytes(), out);
    }
}

impl OrdKey for &'static [u8] {
    fn ord_bytes(v: &&[u8], out: &mut Vec<u8>) {
        ord_escaped(v, out);
    }
}

impl<A: OrdKey, B: OrdKey> OrdKey for (A, B) {
    fn ord_bytes(v: &(A::SelfType<'_>, B::SelfType<'_>), out: &mut Vec<u8>) {
        A::ord_bytes(&v.0, out);
        B::ord_bytes(&v.1, out);
    }
}

pub(crate) fn ord_key<K: OrdKey>(key: &K::SelfType<'_>) -> Vec<u8> {
    let mut out = Vec::with_capacity(24);
    K::ord_bytes(key, &mut out);
    out
}

pub(crate) fn raw_key<K: Key>(key: &K::SelfType<'_>) -> Vec<u8> {
    K::as_bytes(key).as_ref().to_vec()
}

pub(crate) fn raw_value<V: Value>(value: &V::SelfType<'_>) -> Vec<u8> {
    V::as_bytes(value).as_ref().to_vec()
}

/// A value read from a table; `value()` decodes it.
pub(crate) enum Guard<'a, V: Value + 'static> {
    Redb(redb::AccessGuard<'a, V>),
    Owned(Vec<u8>, PhantomData<V>),
}

impl<V: Value + 'static> Guard<'_, V> {
    pub(crate) fn value(&self) -> V::SelfType<'_> {
        match self {
            Guard::Redb(g) => g.value(),
            Guard::Owned(bytes, _) => V::from_bytes(bytes),
        }
    }

    fn owned(bytes: Vec<u8>) -> Self {
        Guard::Owned(bytes, PhantomData)
    }
}

pub(crate) type Row<'a, K, V> = (Guard<'a, K>, Guard<'a, V>);

/// An open table of a read or write transaction.
pub(crate) struct Table<'t, K: OrdKey, V: Value + 'static> {
    imp: Imp<'t, K, V>,
}

enum Imp<'t, K: OrdKey, V: Value + 'static> {
    Write(redb::Table<'t, K, V>),
    Read(redb::ReadOnlyTable<K, V>),
    Pg(&'t pg::Tx, &'static str, PhantomData<(K, V)>),
}

/// Runs `$body` with `$t` bound to the redb table of either kind.
macro_rules! redb_table {
    ($self:expr, $t:ident => $body:expr, $pg:pat => $pgbody:expr) => {
        match $self {
            Imp::Write($t) => $body,
            Imp::Read($t) => $body,
            $pg => $pgbody,
        }
    };
}

impl<'t, K: OrdKey, V: Value + 'static> Table<'t, K, V> {
    pub(crate) fn redb_write(t: redb::Table<'t, K, V>) -> Self {
        Table { imp: Imp::Write(t) }
    }

    pub(crate) fn redb_read(t: redb::ReadOnlyTable<K, V>) -> Self {
        Table { imp: Imp::Read(t) }
    }

    pub(crate) fn pg(tx: &'t pg::Tx, def: TableDefinition<K, V>) -> Self {
        Table { imp: Imp::Pg(tx, pg::table_name(def.name()), PhantomData) }
    }

    pub(crate) fn get<'a>(&self, key: impl Borrow<K::SelfType<'a>>) -> Result<Option<Guard<'_, V>>> {
        let key = key.borrow();
        redb_table!(&self.imp,
            t => Ok(t.get(key)?.map(Guard::Redb)),
            Imp::Pg(tx, name, _) => Ok(tx.get(name, ord_key::<K>(key))?.map(Guard::owned)))
    }

    /// Several rows by key, in the order of `keys` (one statement on PostgreSQL).
    pub(crate) fn get_many<'a>(&self, keys: &[K::SelfType<'a>]) -> Result<Vec<Option<Guard<'_, V>>>> {
        match &self.imp {
            Imp::Pg(tx, name, _) => {
                let ords: Vec<Vec<u8>> = keys.iter().map(|k| ord_key::<K>(k)).collect();
                let mut found = tx.get_many(name, ords.clone())?;
                Ok(ords.iter().map(|k| found.remove(k).map(Guard::owned)).collect())
            }
            _ => keys.iter().map(|k| self.get(k)).collect(),
        }
    }

    /// Inserts or replaces. On PostgreSQL the write is sent with the transaction's next
    /// read or its commit (pipelined with the others), where an error then shows.
    pub(crate) fn insert<'k, 'v>(&mut self, key: impl Borrow<K::SelfType<'k>>, value: impl Borrow<V::SelfType<'v>>) -> Result<()> {
        let (key, value) = (key.borrow(), value.borrow());
        match &mut self.imp {
            Imp::Write(t) => t.insert(key, value).map(|_| ()).map_err(Into::into),
            Imp::Read(_) => Err(read_only()),
            Imp::Pg(tx, name, _) => tx.insert(name, ord_key::<K>(key), raw_key::<K>(key), raw_value::<V>(value)),
        }
    }

    /// Removes; returns the value removed.
    pub(crate) fn remove<'a>(&mut self, key: impl Borrow<K::SelfType<'a>>) -> Result<Option<Guard<'_, V>>> {
        let key = key.borrow();
        match &mut self.imp {
            Imp::Write(t) => Ok(t.remove(key)?.map(Guard::Redb)),
            Imp::Read(_) => Err(read_only()),
            Imp::Pg(tx, name, _) => Ok(tx.remove(name, ord_key::<K>(key))?.map(Guard::owned)),
        }
    }

    /// The rows in `range`, in key order (iterate `.rev()` for the reverse).
    pub(crate) fn range<'a, KR>(&self, range: impl RangeBounds<KR> + 'a) -> Result<Range<'_, K, V>>
    where
        KR: Borrow<K::SelfType<'a>> + 'a,
    {
        match &self.imp {
            Imp::Write(t) => Ok(Range::Redb(t.range(range)?)),
            Imp::Read(t) => Ok(Range::Redb(t.range(range)?)),
            Imp::Pg(tx, name, _) => {
                let enc = |b: Bound<&KR>| match b {
                    Bound::Included(k) => Bound::Included(ord_key::<K>(k.borrow())),
                    Bound::Excluded(k) => Bound::Excluded(ord_key::<K>(k.borrow())),
                    Bound::Unbounded => Bound::Unbounded,
                };
                Ok(Range::Pg(pg::Cursor::new(tx, name, enc(range.start_bound()), enc(range.end_bound())), PhantomData))
            }
        }
    }

    /// Every row, in key order.
    pub(crate) fn iter(&self) -> Result<Range<'_, K, V>> {
        match &self.imp {
            Imp::Write(t) => Ok(Range::Redb(t.iter()?)),
            Imp::Read(t) => Ok(Range::Redb(t.iter()?)),
            Imp::Pg(tx, name, _) => {
                Ok(Range::Pg(pg::Cursor::new(tx, name, Bound::Unbounded, Bound::Unbounded), PhantomData))
            }
        }
    }

    pub(crate) fn last(&self) -> Result<Option<Row<'_, K, V>>> {
        match &self.imp {
            Imp::Write(t) => Ok(t.last()?.map(|(k, v)| (Guard::Redb(k), Guard::Redb(v)))),
            Imp::Read(t) => Ok(t.last()?.map(|(k, v)| (Guard::Redb(k), Guard::Redb(v)))),
            Imp::Pg(tx, name, _) => {
                let one = pg::Cursor::new(tx, name, Bound::Unbounded, Bound::Unbounded).one_at_a_time();
                Range::<K, V>::Pg(one, PhantomData).next_back().transpose()
            }
        }
    }

    pub(crate) fn len(&self) -> Result<u64> {
        redb_table!(&self.imp, t => Ok(t.len()?), Imp::Pg(tx, name, _) => tx.count(name))
    }

    pub(crate) fn is_empty(&self) -> Result<bool> {
        redb_table!(&self.imp, t => Ok(t.is_empty()?), Imp::Pg(tx, name, _) => {
            let one = pg::Cursor::new(tx, name, Bound::Unbounded, Bound::Unbounded).one_at_a_time();
            Ok(Range::<K, V>::Pg(one, PhantomData).next().transpose()?.is_none())
        })
    }

    /// Removes the rows in `range` for which `keep` says false.
    pub(crate) fn retain_in<'a, KR, F>(&mut self, range: impl RangeBounds<KR> + 'a, mut keep: F) -> Result<()>
    where
        KR: Borrow<K::SelfType<'a>> + 'a,
        F: for<'f> FnMut(K::SelfType<'f>, V::SelfType<'f>) -> bool,
    {
        if let Imp::Write(t) = &mut self.imp {
            return Ok(t.retain_in(range, keep)?);
        }
        let mut gone = Vec::new();
        for row in self.range(range)? {
            let (k, v) = row?;
            if !keep(k.value(), v.value()) {
                gone.push(ord_key::<K>(&k.value()));
            }
        }
        match &self.imp {
            Imp::Pg(tx, name, _) => tx.remove_many(name, gone),
            _ => Err(read_only()),
        }
    }
}

fn read_only() -> super::StoreError {
    super::StoreError::Corrupt("a write to a table opened for reading".into())
}

/// Rows of [`Table::range`]; double-ended.
pub(crate) enum Range<'a, K: OrdKey, V: Value + 'static> {
    Redb(redb::Range<'a, K, V>),
    Pg(pg::Cursor<'a>, PhantomData<(K, V)>),
}

impl<'a, K: OrdKey, V: Value + 'static> Iterator for Range<'a, K, V> {
    type Item = Result<Row<'a, K, V>>;
    fn next(&mut self) -> Option<Self::Item> {
        match self {
            Range::Redb(r) => r.next().map(|row| Ok(row.map(|(k, v)| (Guard::Redb(k), Guard::Redb(v)))?)),
            Range::Pg(c, _) => c.next_row(true).map(|row| row.map(|(k, v)| (Guard::owned(k), Guard::owned(v)))),
        }
    }
}

impl<K: OrdKey, V: Value + 'static> DoubleEndedIterator for Range<'_, K, V> {
    fn next_back(&mut self) -> Option<Self::Item> {
        match self {
            Range::Redb(r) => r.next_back().map(|row| Ok(row.map(|(k, v)| (Guard::Redb(k), Guard::Redb(v)))?)),
            Range::Pg(c, _) => c.next_row(false).map(|row| row.map(|(k, v)| (Guard::owned(k), Guard::owned(v)))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn enc<K: OrdKey>(k: K::SelfType<'_>) -> Vec<u8> {
        ord_key::<K>(&k)
    }

    /// The byte order of the encoding is redb's order of the keys.
    #[test]
    fn ord_bytes_sort_as_redb_compares() {
        let strs = ["", "\0", "\0\0", "\0a", "a", "a\0", "a\0b", "ab", "b", "\u{ff}", "\u{10FFFF}"];
        for a in strs {
            for b in strs {
                let ka = enc::<(u128, &str)>((7, a));
                let kb = enc::<(u128, &str)>((7, b));
                assert_eq!(ka.cmp(&kb), a.as_bytes().cmp(b.as_bytes()), "{a:?} vs {b:?}");
                let ta = enc::<(&str, u64)>((a, 1));
                let tb = enc::<(&str, u64)>((b, 0));
                assert_eq!(ta.cmp(&tb), (a.as_bytes(), 1).cmp(&(b.as_bytes(), 0)), "{a:?} vs {b:?}");
            }
        }
        let ints = [0u64, 1, 255, 256, u64::MAX / 2, u64::MAX];
        for a in ints {
            for b in ints {
                assert_eq!(enc::<(u64, u128)>((a, 3)).cmp(&enc::<(u64, u128)>((b, 2))), (a, 3).cmp(&(b, 2)));
                assert_eq!(enc::<u32>(a as u32).cmp(&enc::<u32>(b as u32)), (a as u32).cmp(&(b as u32)));
            }
        }
    }
}
