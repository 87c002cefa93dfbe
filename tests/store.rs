//! Store tests on real redb files in temp dirs (issue 4's "done when").

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use credhost::crypto::{DataKey, MasterKey};
use credhost::store::schema::{AUDIT, AUDIT_HEAD_MOVED, CREDENTIALS, META, META_AUDIT_HEAD, VERSIONS, VERSION_META};
use credhost::store::{
    AuditQuery, AuditRecord, CredentialId, CredentialUpdate, ListQuery, NamespaceId, NewCredential, Role, Store,
    StoreError, TestResult,
};
use redb::{ReadableDatabase, ReadableTable};
use secrecy::{ExposeSecret, SecretString};

#[allow(dead_code)]
#[path = "common/postgres.rs"]
mod postgres;

/// The suite's store: a redb file, or with `CREDHOST_TEST_STORAGE=postgres` a fresh
/// database of a real PostgreSQL (the tests that read or edit the redb file itself are
/// redb's alone; scripts/test.sh runs the others on both).
struct Fixture {
    _dir: tempfile::TempDir,
    path: PathBuf,
    key_b64: String,
    pg: Option<credhost::store::pg::PgOptions>,
}

impl Fixture {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("credhost.redb");
        let key_b64 = MasterKey::generate()
            .unwrap()
            .to_base64()
            .expose_secret()
            .to_owned();
        let pg = std::env::var("CREDHOST_TEST_STORAGE").is_ok_and(|v| v == "postgres").then(|| {
            let pg = postgres::Postgres::shared();
            credhost::store::pg::PgOptions {
                url: pg.fresh_database().1,
                password: Some(SecretString::from(pg.password().to_owned())),
                pool: 8,
                role: "credhost_app".into(),
            }
        });
        Fixture {
            _dir: dir,
            path,
            key_b64,
            pg,
        }
    }

    /// Runs SQL in this fixture's PostgreSQL database as the superuser (sees every row).
    fn psql(&self, sql: &str) -> String {
        let url = &self.pg.as_ref().expect("a PostgreSQL fixture").url;
        let db = url.rsplit('/').next().unwrap();
        postgres::Postgres::shared().psql(db, sql).trim().to_owned()
    }

    /// Opens the store with `key`.
    fn open_with(&self, key: MasterKey) -> Result<Store, StoreError> {
        match &self.pg {
            Some(opts) => Store::open_postgres(opts, key),
            None => Store::open(&self.path, key),
        }
    }

    fn key(&self) -> MasterKey {
        MasterKey::from_base64(&self.key_b64).unwrap()
    }

    fn open(&self) -> Store {
        self.open_with(self.key()).unwrap()
    }
}

fn cred(name: &str, kind: &str, secrets: &[(&str, &str)]) -> NewCredential {
    let mut c = NewCredential::new(name, kind);
    c.fields
        .insert("base_url".into(), "https://example.test".into());
    for (k, v) in secrets {
        c.secrets.insert((*k).into(), SecretString::from(*v));
    }
    c
}

fn exposed(m: &BTreeMap<String, SecretString>) -> BTreeMap<String, String> {
    m.iter()
        .map(|(k, v)| (k.clone(), v.expose_secret().to_owned()))
        .collect()
}

fn raw_db(path: &Path) -> redb::Database {
    redb::Database::open(path).unwrap()
}

#[test]
fn user_names_that_are_path_segments_or_odd_are_refused() {
    let fx = Fixture::new();
    let store = fx.open();
    for bad in [".", "..", "", "a/b", "a b", &"x".repeat(65)] {
        assert!(store.add_user("admin", bad, Role::User).is_err(), "{bad:?} was accepted");
    }
    assert!(store.add_user("admin", "a.b", Role::User).is_ok());
    assert_eq!(store.list_users().unwrap().len(), 1);
}

#[test]
fn round_trip_per_user() {
    let fx = Fixture::new();
    let store = fx.open();
    let a = store.add_user("admin", "alice", Role::User).unwrap();
    let b = store.add_user("admin", "bob", Role::Admin).unwrap();
    assert_ne!(a.namespace, b.namespace);
    let ca = store
        .create_credential(
            "alice",
            a.namespace,
            cred(
                "broker",
                "alpaca",
                &[("key", "A-KEY"), ("secret", "A-SECRET")],
            ),
        )
        .unwrap();
    let cb = store
        .create_credential(
            "bob",
            b.namespace,
            cred("broker", "alpaca", &[("key", "B-KEY")]),
        )
        .unwrap();
    assert_eq!(ca.version, 1);
    assert_eq!(ca.fields["base_url"], "https://example.test");
    assert_eq!(ca.secrets.keys().collect::<Vec<_>>(), ["key", "secret"]);
    drop(store);

    let store = fx.open();
    assert_eq!(store.get_user("alice").unwrap(), a);
    assert_eq!(store.list_users().unwrap().len(), 2);
    assert_eq!(store.get_credential(a.namespace, ca.id).unwrap(), ca);
    let sa = store.reveal("alice", a.namespace, ca.id, "test").unwrap();
    assert_eq!(
        exposed(&sa),
        BTreeMap::from([
            ("key".into(), "A-KEY".into()),
            ("secret".into(), "A-SECRET".into())
        ])
    );
    let sb = store.reveal("bob", b.namespace, cb.id, "test").unwrap();
    assert_eq!(sb["key"].expose_secret(), "B-KEY");
    // Fingerprints are keyed per namespace: same value, different users, different prints.
    let ca2 = store
        .create_credential(
            "alice",
            a.namespace,
            cred("other", "x", &[("key", "B-KEY")]),
        )
        .unwrap();
    assert_ne!(
        ca2.secrets["key"].fingerprint,
        cb.secrets["key"].fingerprint
    );
    assert_eq!(store.verify_keys().unwrap().namespaces, 2);
    assert!(store.verify_audit().unwrap() >= 6);
}

/// Credential ids are UUIDv7: creation millisecond first (so a burst of creates lands in
/// the rightmost pages of each table), then 74 random bits (no counter to guess from).
#[test]
fn credential_ids_are_time_ordered_and_random() {
    let fx = Fixture::new();
    let store = fx.open();
    let a = store.add_user("admin", "alice", Role::User).unwrap();
    let ms = || std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64;
    let (before, mut ids) = (ms(), Vec::new());
    for i in 0..200 {
        let c = store.create_credential("alice", a.namespace, cred(&format!("c{i}"), "t", &[("k", "v")])).unwrap();
        ids.push(*c.id.as_uuid());
    }
    let after = ms();
    let stamps: Vec<u64> = ids.iter().map(|u| (u.as_u128() >> 80) as u64).collect();
    assert!(ids.iter().all(|u| u.get_version_num() == 7), "every id is a v7");
    assert!(stamps.iter().all(|&t| (before..=after).contains(&t)), "stamped with the creation ms");
    assert!(stamps.windows(2).all(|w| w[0] <= w[1]), "in creation order");
    // The 74 bits after the stamp (version and variant masked off) differ for every id,
    // and not as a counter: consecutive ids of the same millisecond are not n, n+1.
    let random: Vec<u128> = ids.iter().map(|u| u.as_u128() & ((1u128 << 80) - 1) & !(0xF << 76) & !(0x3 << 62)).collect();
    assert_eq!(random.iter().collect::<BTreeSet<_>>().len(), ids.len());
    let steps = random.windows(2).zip(stamps.windows(2)).filter(|(r, t)| t[0] == t[1] && r[1] == r[0] + 1).count();
    assert_eq!(steps, 0, "no counter between ids of one millisecond");
}

#[test]
fn another_namespaces_id_is_not_found() {
    let fx = Fixture::new();
    let store = fx.open();
    let a = store.add_user("admin", "alice", Role::User).unwrap();
    let b = store.add_user("admin", "bob", Role::User).unwrap();
    let cb = store
        .create_credential("bob", b.namespace, cred("x", "t", &[("k", "v")]))
        .unwrap();
    assert!(matches!(
        store.get_credential(a.namespace, cb.id),
        Err(StoreError::NotFound)
    ));
    assert!(matches!(
        store.reveal("alice", a.namespace, cb.id, "p"),
        Err(StoreError::NotFound)
    ));
    assert!(matches!(
        store.delete_credential("alice", a.namespace, cb.id),
        Err(StoreError::NotFound)
    ));
    assert!(matches!(
        store.purge_credential("alice", a.namespace, cb.id),
        Err(StoreError::NotFound)
    ));
    assert!(matches!(
        store.update_credential("alice", a.namespace, cb.id, CredentialUpdate::default()),
        Err(StoreError::NotFound)
    ));
    let bogus: CredentialId = uuid::Uuid::now_v7().to_string().parse().unwrap();
    assert!(matches!(
        store.get_credential(b.namespace, bogus),
        Err(StoreError::NotFound)
    ));
    assert!(matches!(
        "not-a-uuid".parse::<CredentialId>(),
        Err(StoreError::NotFound)
    ));
}

/// Copies the sealed blob at `from` over the one at `to`, directly in the redb file.
fn copy_blob(path: &Path, from: (u128, u32), to: (u128, u32)) {
    let db = raw_db(path);
    let txn = db.begin_write().unwrap();
    {
        let mut t = txn.open_table(VERSIONS).unwrap();
        let blob = t.get(from).unwrap().unwrap().value().to_vec();
        t.insert(to, blob.as_slice()).unwrap();
    }
    txn.commit().unwrap();
}

fn key_of(id: CredentialId) -> u128 {
    id.as_uuid().as_u128()
}

#[test]
fn blob_copied_from_another_user_fails_to_open() {
    let fx = Fixture::new();
    let store = fx.open();
    let a = store.add_user("admin", "alice", Role::User).unwrap();
    let b = store.add_user("admin", "bob", Role::User).unwrap();
    let ca = store
        .create_credential(
            "alice",
            a.namespace,
            cred("c", "t", &[("k", "alice-value")]),
        )
        .unwrap();
    let cb = store
        .create_credential("bob", b.namespace, cred("c", "t", &[("k", "bob-value")]))
        .unwrap();
    drop(store);
    copy_blob(&fx.path, (key_of(cb.id), 1), (key_of(ca.id), 1));
    let store = fx.open();
    let err = store
        .reveal("alice", a.namespace, ca.id, "test")
        .unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, StoreError::Crypto(_)), "{err:?}");
    assert!(
        msg.contains("authentication failed") && msg.contains(&ca.id.to_string()),
        "{msg}"
    );
    assert!(!msg.contains("bob-value"));
    // Bob's own record is untouched.
    assert_eq!(
        store.reveal("bob", b.namespace, cb.id, "t").unwrap()["k"].expose_secret(),
        "bob-value"
    );
}

#[test]
fn blob_moved_to_another_credential_or_version_fails() {
    let fx = Fixture::new();
    let store = fx.open();
    let a = store.add_user("admin", "alice", Role::User).unwrap();
    let c1 = store
        .create_credential("alice", a.namespace, cred("one", "t", &[("k", "v1")]))
        .unwrap();
    let c2 = store
        .create_credential("alice", a.namespace, cred("two", "t", &[("k", "v2")]))
        .unwrap();
    let mut upd = CredentialUpdate::default();
    upd.secrets.insert("k".into(), SecretString::from("v1-new"));
    store
        .update_credential("alice", a.namespace, c1.id, upd)
        .unwrap();
    drop(store);
    // Same namespace, same DEK, other credential id: AAD mismatch.
    copy_blob(&fx.path, (key_of(c1.id), 1), (key_of(c2.id), 1));
    // Same credential, old version copied over the current one: AAD mismatch.
    copy_blob(&fx.path, (key_of(c1.id), 1), (key_of(c1.id), 2));
    let store = fx.open();
    assert!(matches!(
        store.reveal("alice", a.namespace, c2.id, "t"),
        Err(StoreError::Crypto(_))
    ));
    assert!(matches!(
        store.reveal("alice", a.namespace, c1.id, "t"),
        Err(StoreError::Crypto(_))
    ));
}

#[test]
fn wrong_master_key_refused_and_file_unchanged() {
    let fx = Fixture::new();
    let store = fx.open();
    let a = store.add_user("admin", "alice", Role::User).unwrap();
    store
        .create_credential("alice", a.namespace, cred("c", "t", &[("k", "v")]))
        .unwrap();
    drop(store);
    let before = std::fs::read(&fx.path).unwrap();
    let wrong = MasterKey::generate().unwrap();
    let wrong_id = wrong.id().to_owned();
    let err = Store::open(&fx.path, wrong).unwrap_err();
    match &err {
        StoreError::WrongKey { expected, given } => {
            assert_eq!(expected, fx.key().id());
            assert_eq!(given, &wrong_id);
        }
        e => panic!("expected WrongKey, got {e:?}"),
    }
    let msg = err.to_string();
    assert!(
        msg.contains(fx.key().id()) && msg.contains(&wrong_id),
        "{msg}"
    );
    assert_eq!(
        std::fs::read(&fx.path).unwrap(),
        before,
        "a refused open must not touch the file"
    );
    // The right key still works.
    fx.open().verify_keys().unwrap();
}

#[test]
fn unknown_schema_version_refused() {
    let fx = Fixture::new();
    drop(fx.open());
    let db = raw_db(&fx.path);
    let txn = db.begin_write().unwrap();
    txn.open_table(META)
        .unwrap()
        .insert("schema_version", b"99".as_slice())
        .unwrap();
    txn.commit().unwrap();
    drop(db);
    let err = fx.open_with(fx.key()).unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::SchemaVersion {
                found: 99,
                supported: 2
            }
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("99"));
}

#[test]
fn rotate_then_reopen_with_new_key_only() {
    let fx = Fixture::new();
    let store = fx.open();
    let mut creds = Vec::new();
    for user in ["alice", "bob", "carol"] {
        let u = store.add_user("admin", user, Role::User).unwrap();
        let c = store
            .create_credential(
                user,
                u.namespace,
                cred("c", "t", &[("k", &format!("{user}-secret"))]),
            )
            .unwrap();
        creds.push((u, c));
    }
    let new_key = MasterKey::generate().unwrap();
    let new_b64 = new_key.to_base64().expose_secret().to_owned();
    let new_id = new_key.id().to_owned();
    assert_eq!(store.rotate_kek("admin", new_key).unwrap(), 3);
    assert_eq!(store.kek_id(), new_id);
    drop(store);

    let err = fx.open_with(fx.key()).unwrap_err();
    assert!(
        matches!(&err, StoreError::WrongKey { expected, .. } if *expected == new_id),
        "{err:?}"
    );
    let store = fx.open_with(MasterKey::from_base64(&new_b64).unwrap()).unwrap();
    assert_eq!(store.verify_keys().unwrap().namespaces, 3);
    for (u, c) in &creds {
        let s = store.reveal("admin", u.namespace, c.id, "t").unwrap();
        assert_eq!(s["k"].expose_secret(), &format!("{}-secret", u.name));
    }
    let rotations = store.list_audit(&AuditQuery::default()).unwrap();
    assert!(rotations.iter().any(|r| r.action == "keys.rotate"));
    store.verify_audit().unwrap();
}

#[test]
fn tampered_audit_record_is_found_with_its_seq() {
    let fx = Fixture::new();
    let store = fx.open();
    let a = store.add_user("admin", "alice", Role::User).unwrap();
    for i in 0..5 {
        store
            .create_credential("alice", a.namespace, cred(&format!("c{i}"), "t", &[]))
            .unwrap();
    }
    let n = store.verify_audit().unwrap();
    assert_eq!(n, 7); // init, user.add, 5 creates
    let newest = store
        .list_audit(&AuditQuery {
            namespace: Some(a.namespace),
            limit: 2,
            ..Default::default()
        })
        .unwrap();
    assert_eq!(newest.iter().map(|r| r.seq).collect::<Vec<_>>(), [7, 6]);
    drop(store);

    // Edit record 4's detail in place.
    let db = raw_db(&fx.path);
    let txn = db.begin_write().unwrap();
    {
        let mut t = txn.open_table(AUDIT).unwrap();
        let text = String::from_utf8(t.get(4).unwrap().unwrap().value().to_vec()).unwrap();
        let edited = text.replace("credential.create", "credential.purge");
        assert_ne!(text, edited);
        t.insert(4, edited.as_bytes()).unwrap();
    }
    txn.commit().unwrap();
    drop(db);
    let store = fx.open();
    match store.verify_audit() {
        Err(StoreError::AuditBroken { seq: 4, reason }) => {
            assert!(reason.contains("hash"), "{reason}")
        }
        other => panic!("expected break at 4, got {other:?}"),
    }
    drop(store);

    // Removing the tail (the last record) is detected too.
    let fx = Fixture::new();
    let store = fx.open();
    store.add_user("admin", "alice", Role::User).unwrap();
    drop(store);
    let db = raw_db(&fx.path);
    let txn = db.begin_write().unwrap();
    txn.open_table(AUDIT).unwrap().remove(2).unwrap();
    txn.commit().unwrap();
    drop(db);
    assert!(matches!(
        fx.open().verify_audit(),
        Err(StoreError::AuditBroken { seq: 2, .. })
    ));
}

/// The audit log's records, read from the redb file itself.
fn raw_audit(path: &Path) -> Vec<AuditRecord> {
    let db = raw_db(path);
    let txn = db.begin_read().unwrap();
    let t = txn.open_table(AUDIT).unwrap();
    t.iter().unwrap().map(|r| serde_json::from_slice(r.unwrap().1.value()).unwrap()).collect()
}

/// Cuts the log after record `keep` and writes `head` (JSON) as the log's head.
fn cut_tail(path: &Path, keep: u64, head: serde_json::Value) {
    let db = raw_db(path);
    let txn = db.begin_write().unwrap();
    {
        let mut audit = txn.open_table(AUDIT).unwrap();
        let last = audit.last().unwrap().unwrap().0.value();
        for seq in keep + 1..=last {
            audit.remove(seq).unwrap();
        }
        txn.open_table(META).unwrap().insert(META_AUDIT_HEAD, serde_json::to_vec(&head).unwrap().as_slice()).unwrap();
    }
    txn.commit().unwrap();
}

fn head_of(path: &Path) -> serde_json::Value {
    let db = raw_db(path);
    let txn = db.begin_read().unwrap();
    let meta = txn.open_table(META).unwrap();
    let v = serde_json::from_slice(meta.get(META_AUDIT_HEAD).unwrap().unwrap().value()).unwrap();
    v
}

/// Turns the store back into what schema 1 wrote: version metadata in `version_meta`, the
/// audit head under `meta.audit_head` (also on PostgreSQL, with its migration 3 undone).
fn to_schema_1(fx: &Fixture) -> usize {
    const BIT: u32 = 1 << 31;
    if fx.pg.is_some() {
        fx.psql(
            "BEGIN; SELECT set_config('credhost.namespace', '*', true);
             INSERT INTO kv_version_meta (k, kr, v, ns) SELECT set_byte(k, 16, get_byte(k, 16) & 127),
               set_byte(kr, 19, get_byte(kr, 19) & 127), v, ns FROM kv_versions WHERE get_byte(k, 16) >= 128;
             DELETE FROM kv_versions WHERE get_byte(k, 16) >= 128;
             UPDATE kv_meta SET kr = convert_to('audit_head', 'UTF8'), k = convert_to('audit_head', 'UTF8') || '\\x0000'::bytea
               WHERE kr = convert_to('audit_chain_head', 'UTF8');
             UPDATE kv_meta SET v = convert_to('1', 'UTF8') WHERE k = convert_to('schema_version', 'UTF8');
             DELETE FROM credhost_schema WHERE version = 3; COMMIT;",
        );
        return fx.psql("SELECT count(*) FROM kv_version_meta").parse().unwrap();
    }
    let db = raw_db(&fx.path);
    let txn = db.begin_write().unwrap();
    let moved;
    {
        let mut versions = txn.open_table(VERSIONS).unwrap();
        let mut old = txn.open_table(VERSION_META).unwrap();
        let metas: Vec<((u128, u32), Vec<u8>)> = versions
            .range((0, 0)..)
            .unwrap()
            .map(|r| r.unwrap())
            .map(|(k, v)| (k.value(), v.value().to_vec()))
            .filter(|((_, n), _)| *n >= BIT)
            .collect();
        moved = metas.len();
        for ((id, n), v) in metas {
            versions.remove((id, n)).unwrap();
            old.insert((id, n & !BIT), v.as_slice()).unwrap();
        }
        let mut meta = txn.open_table(META).unwrap();
        let head = meta.remove(META_AUDIT_HEAD).unwrap().unwrap().value().to_vec();
        meta.insert("audit_head", head.as_slice()).unwrap();
        meta.insert("schema_version", b"1".as_slice()).unwrap();
    }
    txn.commit().unwrap();
    moved
}

/// Every kept version of `id` as (number, state, metadata).
fn versions_of(store: &Store, ns: credhost::store::NamespaceId, id: CredentialId) -> Vec<String> {
    let (_, versions) = store.list_versions(ns, id).unwrap();
    versions.iter().map(|v| format!("{} {:?} {:?}", v.number, v.state, v.meta)).collect()
}

/// A store written by schema 1 (version metadata in its own table, the audit head under
/// its old key) is upgraded at its first open, on either backend: every version keeps its
/// metadata and secrets, the chain verifies, and writes go on; `meta.audit_head` is left
/// holding a marker no head decodes from (what an older replica still running would
/// read); a second open changes nothing.
#[test]
fn a_schema_1_store_is_upgraded_once() {
    let fx = Fixture::new();
    let store = fx.open();
    let a = store.add_user("admin", "alice", Role::User).unwrap();
    let c = store.create_credential("alice", a.namespace, cred("c", "t", &[("key", "one")])).unwrap();
    let mut upd = CredentialUpdate::default();
    upd.secrets.insert("key".into(), SecretString::from("two".to_owned()));
    store.update_credential("alice", a.namespace, c.id, upd).unwrap();
    let other = store.create_credential("alice", a.namespace, cred("d", "t", &[("key", "three")])).unwrap();
    let before = (versions_of(&store, a.namespace, c.id), versions_of(&store, a.namespace, other.id));
    assert_eq!(before.0.len(), 2, "{before:?}");
    assert!(before.0.iter().all(|v| v.contains("Some(VersionMeta")), "{before:?}");
    let records = store.verify_audit().unwrap();
    drop(store);

    assert_eq!(to_schema_1(&fx), 3, "three versions' metadata back in version_meta");
    let store = fx.open();
    assert_eq!((versions_of(&store, a.namespace, c.id), versions_of(&store, a.namespace, other.id)), before);
    assert_eq!(store.verify_audit().unwrap(), records, "the chain is intact and the upgrade wrote no record");
    let secrets = store.reveal("alice", a.namespace, c.id, "test").unwrap();
    assert_eq!(secrets["key"].expose_secret(), "two");
    store.create_credential("alice", a.namespace, cred("e", "t", &[("key", "four")])).unwrap();
    assert_eq!(store.verify_audit().unwrap(), records + 2, "reveal and create appended to the moved head");
    drop(store);

    // What the upgrade left: nothing in the old places, the marker in `meta`.
    let marker = if fx.pg.is_some() {
        assert_eq!(fx.psql("SELECT count(*) FROM kv_version_meta"), "0");
        fx.psql("SELECT convert_from(v, 'UTF8') FROM kv_meta WHERE kr = convert_to('audit_head', 'UTF8')")
    } else {
        let db = raw_db(&fx.path);
        let txn = db.begin_read().unwrap();
        assert_eq!(txn.open_table(VERSION_META).unwrap().iter().unwrap().count(), 0);
        let v = txn.open_table(META).unwrap().get("audit_head").unwrap().unwrap().value().to_vec();
        String::from_utf8(v).unwrap()
    };
    assert_eq!(marker.as_bytes(), AUDIT_HEAD_MOVED);
    assert!(serde_json::from_slice::<credhost::store::schema::AuditHead>(AUDIT_HEAD_MOVED).is_err());

    // A second open: nothing to upgrade, nothing changes.
    let store = fx.open();
    assert_eq!(store.verify_audit().unwrap(), records + 2);
    assert_eq!(versions_of(&store, a.namespace, c.id), before.0);
}

/// The tail removed and the head moved back to the new last record (as whoever can write
/// the file can): found, with the head's own mac copied or without one, and the next
/// write does not launder it; the store goes on serving.
#[test]
fn a_removed_tail_is_found_even_with_the_head_moved_back() {
    for copy_mac in [true, false] {
        let fx = Fixture::new();
        let store = fx.open();
        let a = store.add_user("admin", "alice", Role::User).unwrap();
        for i in 0..4 {
            store.create_credential("alice", a.namespace, cred(&format!("c{i}"), "t", &[])).unwrap();
        }
        assert_eq!(store.verify_audit().unwrap(), 6);
        drop(store);
        let records = raw_audit(&fx.path);
        let kept = &records[3]; // seq 4: the last two creates go
        let mut head = serde_json::json!({"seq": kept.seq, "hash": credhost::crypto::hex(&kept.hash)});
        if copy_mac {
            head["mac"] = head_of(&fx.path)["mac"].clone();
        }
        cut_tail(&fx.path, kept.seq, head);
        let store = fx.open();
        let broken = |store: &Store| match store.verify_audit() {
            Err(StoreError::AuditBroken { reason, .. }) => reason,
            other => panic!("copy_mac={copy_mac}: the cut tail was not found: {other:?}"),
        };
        assert!(broken(&store).contains("keyed hash"), "{}", broken(&store));
        // The store serves, and its next write keeps the break visible.
        store.create_credential("alice", a.namespace, cred("after", "t", &[])).unwrap();
        assert!(broken(&store).contains("keyed hash"), "laundered by a write: {}", broken(&store));
        drop(store);
        assert!(broken(&fx.open()).contains("keyed hash"), "laundered by a reopen");
    }
}

/// A database from the version before keyed heads (keyed chain, unkeyed head, nothing in
/// the log saying heads are keyed): keyed at the first open, with an `audit.head_keyed`
/// record; from then on an unkeyed head is a forged one and is reported, not keyed.
#[test]
fn a_head_from_before_keyed_heads_is_keyed_once() {
    let fx = Fixture::new();
    let store = fx.open();
    store.add_user("admin", "alice", Role::User).unwrap();
    drop(store);
    // Rewrite the log as that version wrote it: store.init without the marker, every
    // record re-keyed in order, the head without a mac.
    let key = fx.key().audit_key();
    let mut records = raw_audit(&fx.path);
    let mut prev = [0u8; 32];
    for rec in &mut records {
        rec.detail = rec.detail.replace("; audit_head=keyed", "");
        rec.prev_hash = prev;
        rec.hash = rec.compute_mac(&key);
        prev = rec.hash;
    }
    assert!(!records[0].detail.contains("audit_head"), "{}", records[0].detail);
    {
        let db = raw_db(&fx.path);
        let txn = db.begin_write().unwrap();
        {
            let mut audit = txn.open_table(AUDIT).unwrap();
            for rec in &records {
                audit.insert(rec.seq, serde_json::to_vec(rec).unwrap().as_slice()).unwrap();
            }
        }
        txn.commit().unwrap();
    }
    let last = records.last().unwrap();
    cut_tail(&fx.path, last.seq, serde_json::json!({"seq": last.seq, "hash": credhost::crypto::hex(&last.hash)}));
    // That version was schema 1: the head in `meta`, upgraded before it is keyed.
    to_schema_1(&fx);

    let store = fx.open();
    assert_eq!(store.verify_audit().unwrap(), 3, "init, user.add, audit.head_keyed");
    let newest = store.list_audit(&AuditQuery { limit: 1, ..Default::default() }).unwrap();
    assert_eq!(newest[0].action, "audit.head_keyed");
    drop(store);
    assert!(head_of(&fx.path)["mac"].is_string());

    // Now the log says heads are keyed: an unkeyed head is reported at every open.
    let mut head = head_of(&fx.path);
    head.as_object_mut().unwrap().remove("mac");
    cut_tail(&fx.path, 3, head);
    for _ in 0..2 {
        match fx.open().verify_audit() {
            Err(StoreError::AuditBroken { reason, .. }) => assert!(reason.contains("keyed hash"), "{reason}"),
            other => panic!("an unkeyed head was accepted: {other:?}"),
        }
    }
}

#[test]
fn tokens_create_authenticate_revoke_expire() {
    let fx = Fixture::new();
    let store = fx.open();
    let admin = store.add_user("system", "root", Role::Admin).unwrap();
    let alice = store.add_user("root", "alice", Role::User).unwrap();
    let (info, token) = store
        .create_token("root", "alice", None, None, "laptop")
        .unwrap();
    let text = token.expose_secret();
    assert!(text.starts_with("chst_") && text.len() >= 5 + 22, "{text}");
    let p = store.authenticate(text).unwrap().expect("valid token");
    assert_eq!(
        (p.user.as_str(), p.role, p.namespace, p.token_id.as_str()),
        ("alice", Role::User, alice.namespace, info.id.as_str())
    );

    // Unknown, malformed, and near-miss tokens.
    assert!(store.authenticate("chst_nope").unwrap().is_none());
    assert!(store.authenticate("").unwrap().is_none());
    let mut near = text.to_owned();
    near.pop();
    near.push('A');
    if near != text {
        assert!(store.authenticate(&near).unwrap().is_none());
    }

    // A user's token cannot be admin; an admin can get a user-role token.
    assert!(matches!(
        store.create_token("root", "alice", Some(Role::Admin), None, ""),
        Err(StoreError::Invalid(_))
    ));
    let (_, admin_as_user) = store
        .create_token("system", "root", Some(Role::User), None, "")
        .unwrap();
    let p = store
        .authenticate(admin_as_user.expose_secret())
        .unwrap()
        .unwrap();
    assert_eq!((p.role, p.namespace), (Role::User, admin.namespace));
    assert!(matches!(
        store.create_token("root", "nobody", None, None, ""),
        Err(StoreError::NotFound)
    ));

    // Expired.
    let past = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
        - 1;
    let (_, expired) = store
        .create_token("root", "alice", None, Some(past), "old")
        .unwrap();
    assert!(store
        .authenticate(expired.expose_secret())
        .unwrap()
        .is_none());
    let (_, future) = store
        .create_token("root", "alice", None, Some(past + 3_600_000), "new")
        .unwrap();
    assert!(store
        .authenticate(future.expose_secret())
        .unwrap()
        .is_some());

    // Listing and revocation.
    let listed = store.list_tokens(Some("alice")).unwrap();
    assert_eq!(listed.len(), 3);
    assert_eq!(listed[0].id, info.id);
    assert_eq!(store.list_tokens(None).unwrap().len(), 4);
    let revoked = store.revoke_token("root", &info.id).unwrap();
    assert!(revoked.revoked_at.is_some());
    assert!(store.authenticate(text).unwrap().is_none());
    assert!(matches!(
        store.revoke_token("root", "tok_missing"),
        Err(StoreError::NotFound)
    ));

    // Only the hash is stored.
    drop(store);
    if fx.pg.is_some() {
        let hex: String = text.bytes().map(|b| format!("{b:02x}")).collect();
        let found = fx.psql(&format!(
            "SELECT count(*) FROM kv_tokens WHERE position('\\x{hex}'::bytea IN v) > 0 OR position('\\x{hex}'::bytea IN kr) > 0"
        ));
        assert_eq!(found, "0");
        assert_ne!(fx.psql("SELECT count(*) FROM kv_tokens"), "0");
        return;
    }
    let raw = std::fs::read(&fx.path).unwrap();
    assert!(!contains(&raw, text.as_bytes()));
}

#[test]
fn names_unique_per_namespace() {
    let fx = Fixture::new();
    let store = fx.open();
    let a = store.add_user("admin", "alice", Role::User).unwrap();
    let b = store.add_user("admin", "bob", Role::User).unwrap();
    let c = store
        .create_credential("alice", a.namespace, cred("prod", "t", &[]))
        .unwrap();
    store
        .create_credential("bob", b.namespace, cred("prod", "t", &[]))
        .unwrap();
    assert!(matches!(
        store.create_credential("alice", a.namespace, cred("prod", "t", &[])),
        Err(StoreError::NameTaken { name, deleted: None }) if name == "prod"
    ));
    assert!(matches!(
        store.add_user("admin", "alice", Role::User),
        Err(StoreError::UserExists { .. })
    ));

    // Soft-deleted keeps its name; purge frees it.
    store.delete_credential("alice", a.namespace, c.id).unwrap();
    assert!(matches!(
        store.create_credential("alice", a.namespace, cred("prod", "t", &[])),
        Err(StoreError::NameTaken { deleted: Some(holder), .. }) if holder == c.id
    ));
    let restored = store
        .restore_credential("alice", a.namespace, c.id)
        .unwrap();
    assert!(restored.deleted_at.is_none());
    // Rename frees the old name and takes the new one.
    let other = store
        .create_credential("alice", a.namespace, cred("staging", "t", &[]))
        .unwrap();
    let upd = CredentialUpdate {
        name: Some("staging".into()),
        ..Default::default()
    };
    assert!(matches!(
        store.update_credential("alice", a.namespace, c.id, upd),
        Err(StoreError::NameTaken { deleted: None, .. })
    ));
    let upd = CredentialUpdate {
        name: Some("prod-2".into()),
        ..Default::default()
    };
    store
        .update_credential("alice", a.namespace, c.id, upd)
        .unwrap();
    store
        .create_credential("alice", a.namespace, cred("prod", "t", &[]))
        .unwrap();
    store
        .purge_credential("alice", a.namespace, other.id)
        .unwrap();
    assert!(matches!(
        store.get_credential(a.namespace, other.id),
        Err(StoreError::NotFound)
    ));
    store
        .create_credential("alice", a.namespace, cred("staging", "t", &[]))
        .unwrap();
}

#[test]
fn soft_delete_restore_purge() {
    let fx = Fixture::new();
    let store = fx.open();
    let a = store.add_user("admin", "alice", Role::User).unwrap();
    let c = store
        .create_credential("alice", a.namespace, cred("c", "t", &[("k", "v")]))
        .unwrap();
    let mut upd = CredentialUpdate::default();
    upd.secrets.insert("k".into(), SecretString::from("v2"));
    store
        .update_credential("alice", a.namespace, c.id, upd)
        .unwrap();
    let d = store.delete_credential("alice", a.namespace, c.id).unwrap();
    assert!(d.deleted_at.is_some());
    assert!(store
        .get_credential(a.namespace, c.id)
        .unwrap()
        .deleted_at
        .is_some());
    assert!(matches!(
        store.reveal("alice", a.namespace, c.id, "t"),
        Err(StoreError::NotFound)
    ));
    assert!(matches!(
        store.delete_credential("alice", a.namespace, c.id),
        Err(StoreError::NotFound)
    ));
    let page = store
        .list_credentials(a.namespace, &ListQuery::default())
        .unwrap();
    assert!(page.items.is_empty());
    store
        .restore_credential("alice", a.namespace, c.id)
        .unwrap();
    assert_eq!(
        store.reveal("alice", a.namespace, c.id, "t").unwrap()["k"].expose_secret(),
        "v2"
    );
    store.purge_credential("alice", a.namespace, c.id).unwrap();
    drop(store);
    if fx.pg.is_some() {
        assert_eq!(fx.psql("SELECT count(*) FROM kv_credentials"), "0");
        assert_eq!(fx.psql("SELECT count(*) FROM kv_versions"), "0", "all versions purged");
        return;
    }
    let db = raw_db(&fx.path);
    let txn = db.begin_read().unwrap();
    assert!(txn
        .open_table(CREDENTIALS)
        .unwrap()
        .get(key_of(c.id))
        .unwrap()
        .is_none());
    let versions = txn.open_table(VERSIONS).unwrap();
    assert_eq!(versions.iter().unwrap().count(), 0, "all versions purged");
}

#[test]
fn pagination_covers_every_item_exactly_once() {
    let fx = Fixture::new();
    let store = fx.open();
    let a = store.add_user("admin", "alice", Role::User).unwrap();
    let b = store.add_user("admin", "bob", Role::User).unwrap();
    let mut expected = BTreeSet::new();
    for i in 0..57 {
        let mut c = cred(
            &format!("cred-{:03}", (i * 37) % 101),
            if i % 3 == 0 { "ssh" } else { "api-key" },
            &[],
        );
        if i % 2 == 0 {
            c.tags.push("even".into());
        }
        let c = store.create_credential("alice", a.namespace, c).unwrap();
        expected.insert(c.id);
        store
            .create_credential("bob", b.namespace, cred(&format!("bob-{i}"), "ssh", &[]))
            .unwrap();
    }
    let deleted = *expected.iter().next().unwrap();
    store
        .delete_credential("alice", a.namespace, deleted)
        .unwrap();

    let collect = |q: ListQuery| {
        let mut seen = Vec::new();
        let mut q = q;
        loop {
            let page = store.list_credentials(a.namespace, &q).unwrap();
            assert!(page.items.len() <= q.limit);
            seen.extend(page.items);
            match page.next_cursor {
                Some(c) => q.cursor = Some(c),
                None => break,
            }
        }
        seen
    };
    for limit in [1, 7, 10, 56, 57, 1000] {
        let all = collect(ListQuery {
            limit,
            include_deleted: true,
            ..Default::default()
        });
        let ids: Vec<_> = all.iter().map(|c| c.id).collect();
        assert_eq!(ids.len(), 57, "limit {limit}");
        assert_eq!(
            ids.iter().copied().collect::<BTreeSet<_>>(),
            expected,
            "limit {limit}"
        );
        assert!(
            all.windows(2).all(|w| w[0].name < w[1].name),
            "ordered by name"
        );
        let live = collect(ListQuery {
            limit,
            ..Default::default()
        });
        assert_eq!(live.len(), 56);
        assert!(live
            .iter()
            .all(|c| c.id != deleted && c.namespace == a.namespace));
    }
    let ssh = collect(ListQuery {
        kind: Some("ssh".into()),
        limit: 4,
        include_deleted: true,
        ..Default::default()
    });
    assert_eq!(ssh.len(), 19);
    assert!(ssh.iter().all(|c| c.kind == "ssh"));
    let even = collect(ListQuery {
        tag: Some("even".into()),
        limit: 5,
        include_deleted: true,
        ..Default::default()
    });
    assert_eq!(even.len(), 29);
    // A listing bounded by its name range's size: none past the bound (57 names in
    // alice's range), the same page as the unbounded listing within it.
    let q = ListQuery { limit: 10, ..Default::default() };
    assert!(store.list_credentials_within(a.namespace, &q, 56).unwrap().is_none());
    let within = store.list_credentials_within(a.namespace, &q, 57).unwrap().expect("57 names fit");
    let whole = store.list_credentials(a.namespace, &q).unwrap();
    assert_eq!(within.items.iter().map(|c| c.id).collect::<Vec<_>>(), whole.items.iter().map(|c| c.id).collect::<Vec<_>>());
    assert_eq!((within.total, &within.next_cursor), (whole.total, &whole.next_cursor));
    // The bound counts the names the filters' range holds, not the namespace's.
    let prefixed = (0..57).filter(|i| format!("cred-{:03}", (i * 37) % 101).starts_with("cred-0")).count();
    assert!(prefixed > 2 && prefixed < 57);
    let q = ListQuery { name_prefix: Some("cred-0".into()), include_deleted: true, ..Default::default() };
    assert!(store.list_credentials_within(a.namespace, &q, prefixed - 1).unwrap().is_none());
    assert_eq!(store.list_credentials_within(a.namespace, &q, prefixed).unwrap().expect("fits").total, prefixed);
    assert!(matches!(
        store.list_credentials(
            a.namespace,
            &ListQuery {
                cursor: Some("!!".into()),
                ..Default::default()
            }
        ),
        Err(StoreError::InvalidField { ref field, .. }) if field == "cursor"
    ));
}

#[test]
fn partial_update_keeps_untouched_secrets() {
    let fx = Fixture::new();
    let store = fx.open();
    let a = store.add_user("admin", "alice", Role::User).unwrap();
    let c = store
        .create_credential(
            "alice",
            a.namespace,
            cred(
                "c",
                "alpaca",
                &[("key_id", "KID-1"), ("secret", "SEC-1"), ("old", "OLD-1")],
            ),
        )
        .unwrap();
    // Metadata-only update: no new version.
    let upd = CredentialUpdate {
        description: Some("paper account".into()),
        tags: Some(vec!["paper".into()]),
        environment: Some(Some("paper".into())),
        fields: BTreeMap::from([
            ("base_url".into(), None),
            ("region".into(), Some("us".into())),
        ]),
        ..Default::default()
    };
    let c1 = store
        .update_credential("alice", a.namespace, c.id, upd)
        .unwrap();
    assert_eq!(c1.version, 1);
    assert_eq!(c1.fields, BTreeMap::from([("region".into(), "us".into())]));
    assert_eq!(
        (c1.description.as_str(), c1.environment.as_deref()),
        ("paper account", Some("paper"))
    );

    // Replace one secret, clear another: version 2, the third carried over.
    let mut upd = CredentialUpdate::default();
    upd.secrets
        .insert("secret".into(), SecretString::from("SEC-2"));
    upd.clear_secrets.insert("old".into());
    let c2 = store
        .update_credential("alice", a.namespace, c.id, upd)
        .unwrap();
    assert_eq!(c2.version, 2);
    assert_eq!(c2.secrets["key_id"], c.secrets["key_id"]);
    assert_ne!(
        c2.secrets["secret"].fingerprint,
        c.secrets["secret"].fingerprint
    );
    assert_eq!(c2.secrets["secret"].version, 2);
    assert!(!c2.secrets.contains_key("old"));
    let s = store.reveal("alice", a.namespace, c.id, "t").unwrap();
    assert_eq!(
        exposed(&s),
        BTreeMap::from([
            ("key_id".into(), "KID-1".into()),
            ("secret".into(), "SEC-2".into())
        ])
    );
    // A secret field cannot also be set as a plain field.
    let upd = CredentialUpdate {
        fields: BTreeMap::from([("secret".into(), Some("x".into()))]),
        ..Default::default()
    };
    assert!(matches!(
        store.update_credential("alice", a.namespace, c.id, upd),
        Err(StoreError::InvalidField { ref field, .. }) if field == "secret"
    ));

    let t = store
        .record_test_result(
            "alice",
            a.namespace,
            c.id,
            TestResult {
                at: 42,
                ok: true,
                summary: "account ACTIVE".into(),
                verdict: None,
                trigger: Default::default(),
                facts: Default::default(),
                latency_ms: 0,
            },
        )
        .unwrap();
    assert_eq!(t.last_test.as_ref().unwrap().summary, "account ACTIVE");
    assert_eq!(
        store.get_credential(a.namespace, c.id).unwrap().last_test,
        t.last_test
    );
}

#[test]
fn reveal_is_audited_and_audit_filters() {
    let fx = Fixture::new();
    let store = fx.open();
    let a = store.add_user("admin", "alice", Role::User).unwrap();
    let b = store.add_user("admin", "bob", Role::User).unwrap();
    let c = store
        .create_credential("alice", a.namespace, cred("c", "t", &[("k", "TOPSECRET")]))
        .unwrap();
    store
        .create_credential("bob", b.namespace, cred("c", "t", &[]))
        .unwrap();
    store
        .reveal("plugin:alpaca", a.namespace, c.id, "http.send")
        .unwrap();
    let recs = store
        .list_audit(&AuditQuery {
            namespace: Some(a.namespace),
            ..Default::default()
        })
        .unwrap();
    assert_eq!(
        recs.iter().map(|r| r.action.as_str()).collect::<Vec<_>>(),
        ["credential.reveal", "credential.create", "user.add"]
    );
    assert_eq!(recs[0].actor, "plugin:alpaca");
    assert_eq!(recs[0].credential, Some(c.id));
    assert!(recs[0].detail.contains("http.send"));
    assert!(recs.iter().all(|r| !r.detail.contains("TOPSECRET")));
    let by_actor = store
        .list_audit(&AuditQuery {
            actor: Some("bob".into()),
            ..Default::default()
        })
        .unwrap();
    assert_eq!(by_actor.len(), 1);
    let extra = store
        .append_audit(credhost::store::AuditEntry {
            actor: "plugin:ssh".into(),
            namespace: Some(a.namespace),
            action: "capability.denied".into(),
            credential: Some(c.id),
            outcome: credhost::store::Outcome::Denied,
            detail: "net.tcp-probe not in manifest".into(),
        })
        .unwrap();
    let page = store
        .list_audit(&AuditQuery {
            before_seq: Some(extra.seq),
            limit: 1,
            ..Default::default()
        })
        .unwrap();
    assert_eq!(page[0].seq, extra.seq - 1);
    assert_eq!(store.verify_audit().unwrap(), extra.seq);
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn raw_file_contains_no_plaintext_secret() {
    let fx = Fixture::new();
    let store = fx.open();
    let mut written = Vec::new();
    for user in ["alice", "bob"] {
        let u = store.add_user("admin", user, Role::User).unwrap();
        for i in 0..20 {
            let v1 = format!("PLAINTEXT-{user}-{i}-{}", uuid::Uuid::now_v7().simple());
            let v2 = format!("pw{i}{user}");
            let c = store
                .create_credential(
                    user,
                    u.namespace,
                    cred(&format!("c{i}"), "t", &[("token", &v1), ("password", &v2)]),
                )
                .unwrap();
            written.push(v1);
            written.push(v2);
            if i % 4 == 0 {
                let v3 = format!("ROTATED-{user}-{i}-{}", uuid::Uuid::now_v7().simple());
                let mut upd = CredentialUpdate::default();
                upd.secrets
                    .insert("token".into(), SecretString::from(v3.as_str()));
                store
                    .update_credential(user, u.namespace, c.id, upd)
                    .unwrap();
                written.push(v3);
            }
            store.reveal(user, u.namespace, c.id, "scan test").unwrap();
        }
    }
    drop(store);
    let raw = std::fs::read(&fx.path).unwrap();
    for secret in &written {
        assert!(
            !contains(&raw, secret.as_bytes()),
            "plaintext secret {secret:?} found in the database file"
        );
    }
    // Sanity: the scan does find plaintext metadata, so it would find secrets too.
    assert!(contains(&raw, b"https://example.test"));
}

#[test]
fn debug_output_never_shows_secrets() {
    let fx = Fixture::new();
    let kek = fx.key();
    let key_text = fx.key_b64.clone();
    let dek = DataKey::generate().unwrap();
    let store = fx.open_with(fx.key()).unwrap();
    let a = store.add_user("admin", "alice", Role::User).unwrap();
    let new = cred("c", "t", &[("k", "SUPERSECRET-DEBUG")]);
    let mut upd = CredentialUpdate::default();
    upd.secrets
        .insert("k".into(), SecretString::from("SUPERSECRET-UPDATE"));
    let (_, token) = store
        .create_token("admin", "alice", None, None, "")
        .unwrap();
    let c = store
        .create_credential(
            "alice",
            a.namespace,
            cred("d", "t", &[("k", "SUPERSECRET-REVEAL")]),
        )
        .unwrap();
    let revealed = store.reveal("alice", a.namespace, c.id, "t").unwrap();
    let outputs = [
        format!("{kek:?}"),
        format!("{dek:?}"),
        format!("{:?}", dek.fingerprint_key()),
        format!("{store:?}"),
        format!("{new:?}"),
        format!("{upd:?}"),
        format!("{token:?}"),
        format!("{revealed:?}"),
        format!("{:?}", store.get_credential(a.namespace, c.id).unwrap()),
    ];
    for out in &outputs {
        for secret in ["SUPERSECRET", key_text.as_str(), token.expose_secret()] {
            assert!(!out.contains(secret), "{out} shows a secret");
        }
    }
    assert!(outputs[0].contains(kek.id()));
    assert!(outputs[1].contains(&dek.id()));
    let _: NamespaceId = a.namespace;
}

#[test]
fn store_is_shareable_and_opens_empty_or_foreign_files_sanely() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Store>();
    // An empty file (e.g. made by a provisioning tool) is initialised.
    let fx = Fixture::new();
    std::fs::write(&fx.path, b"").unwrap();
    let store = fx.open();
    assert_eq!(store.verify_audit().unwrap(), 1);
    drop(store);
    // A redb file of something else is refused, not adopted.
    let other = Fixture::new();
    let db = redb::Database::create(&other.path).unwrap();
    let txn = db.begin_write().unwrap();
    txn.open_table(redb::TableDefinition::<u64, u64>::new("unrelated"))
        .unwrap()
        .insert(1, 2)
        .unwrap();
    txn.commit().unwrap();
    drop(db);
    assert!(matches!(
        Store::open(&other.path, other.key()),
        Err(StoreError::Corrupt(_))
    ));
}

/// The monitor's sweep reads credentials a page at a time (each live one once) and
/// schedules many a chunk per write transaction: every one gets its due time (credential and due index agree), a deleted one none, an
/// unknown id is skipped, and a second plan moves the times (old index entries gone).
#[test]
fn many_credentials_are_scheduled_a_chunk_at_a_time() {
    let fx = Fixture::new();
    let store = fx.open();
    let a = store.add_user("admin", "alice", Role::User).unwrap();
    let n = credhost::store::history::SCHEDULE_CHUNK * 2 + 7;
    let ids: Vec<CredentialId> = (0..n)
        .map(|i| {
            store
                .create_credential("alice", a.namespace, cred(&format!("c{i:04}"), "bearer_token", &[("token", "t")]))
                .unwrap()
                .id
        })
        .collect();
    store.delete_credential("alice", a.namespace, ids[3]).unwrap();
    // The sweep reads them a page at a time: every live one once, in id order, the
    // deleted one skipped but passed over; the page that reaches the end says so. With
    // pages that divide the count exactly, one more (empty) page finds the end.
    let mut live: Vec<CredentialId> = ids.iter().enumerate().filter(|(i, _)| *i != 3).map(|(_, id)| *id).collect();
    // An id's text sorts as its key does (lowercase hex, fixed width).
    live.sort_by_key(|id| id.to_string());
    assert_eq!(n % 173, 0);
    for (size, want_pages) in [(100, n.div_ceil(100)), (173, n / 173 + 1), (n + 1, 1)] {
        let (mut seen, mut after, mut pages) = (Vec::new(), None, 0);
        loop {
            let page = store.sweep_page(after, size).unwrap();
            pages += 1;
            assert!(page.live.len() <= size);
            seen.extend(page.live.iter().map(|c| c.id));
            after = page.next;
            if after.is_none() {
                break;
            }
            assert!(pages <= want_pages, "the sweep does not end");
        }
        assert_eq!(seen, live, "every live credential once, in id order (pages of {size})");
        assert_eq!(pages, want_pages, "pages of {size}");
    }
    let unknown: CredentialId = "0190a2b4-0000-7000-8000-000000000001".parse().unwrap();
    let mut plans: Vec<(CredentialId, Option<u64>)> =
        ids.iter().enumerate().map(|(i, id)| (*id, Some(1_000 + i as u64))).collect();
    plans.push((unknown, Some(5)));
    assert_eq!(store.schedule_tests(&plans).unwrap(), n, "every existing credential, not the unknown one");
    let due = store.due_tests(u64::MAX, usize::MAX).unwrap();
    assert_eq!(due.len(), n - 1, "all but the deleted one are due");
    for (i, id) in ids.iter().enumerate() {
        let c = store.credential_by_id(*id).unwrap().unwrap();
        let want = (i != 3).then_some(1_000 + i as u64);
        assert_eq!(c.monitor.next_test_at, want, "credential {i}");
        assert_eq!(due.contains(&(1_000 + i as u64, *id)), i != 3, "due index entry of {i}");
    }
    // Moved: the index holds the new times only; unscheduled: gone.
    let moved: Vec<_> = ids.iter().map(|id| (*id, Some(9_000))).chain([(ids[0], None)]).collect();
    store.schedule_tests(&moved).unwrap();
    let due = store.due_tests(u64::MAX, usize::MAX).unwrap();
    assert_eq!(due.len(), n - 2, "{:?}", &due[..3]);
    assert!(due.iter().all(|(at, id)| *at == 9_000 && *id != ids[0] && *id != ids[3]));
}

/// A credential record that does not decode does not stop the monitor's sweep there: it
/// is skipped (logged by id) and the credentials after it are still read.
#[test]
fn a_record_that_does_not_decode_is_skipped_by_the_sweep() {
    let fx = Fixture::new();
    if fx.pg.is_some() {
        return; // edits the redb file
    }
    let store = fx.open();
    let a = store.add_user("admin", "alice", Role::User).unwrap();
    let mut ids: Vec<CredentialId> =
        (0..3).map(|i| store.create_credential("alice", a.namespace, cred(&format!("c{i}"), "t", &[])).unwrap().id).collect();
    ids.sort_by_key(|id| id.to_string());
    drop(store);
    let db = raw_db(&fx.path);
    let txn = db.begin_write().unwrap();
    txn.open_table(CREDENTIALS).unwrap().insert(key_of(ids[1]), b"{not json".as_slice()).unwrap();
    txn.commit().unwrap();
    drop(db);
    let store = fx.open();
    let page = store.sweep_page(None, 10).unwrap();
    assert_eq!(page.live.iter().map(|c| c.id).collect::<Vec<_>>(), [ids[0], ids[2]]);
    assert!(page.next.is_none());
    // Paged past it too: the bad record is counted in its page.
    let first = store.sweep_page(None, 2).unwrap();
    assert_eq!((first.live.len(), first.next), (1, Some(ids[1])));
    assert_eq!(store.sweep_page(first.next, 2).unwrap().live.iter().map(|c| c.id).collect::<Vec<_>>(), [ids[2]]);
}

/// A version number a caller gives that is where `versions` keeps metadata (2^31 + n) is
/// not a version: promoting or unsealing it is not found, and nothing changes.
#[test]
fn a_metadata_number_is_not_a_version() {
    let fx = Fixture::new();
    let store = fx.open();
    let a = store.add_user("admin", "alice", Role::User).unwrap();
    let c = store.create_credential("alice", a.namespace, cred("c", "t", &[("key", "one")])).unwrap();
    let before = versions_of(&store, a.namespace, c.id);
    for n in [(1u32 << 31) | 1, u32::MAX] {
        let promoted = store.promote_version("alice", a.namespace, c.id, n, None);
        assert!(matches!(promoted, Err(StoreError::NotFound)), "promote {n}: {promoted:?}");
        let unsealed = store.unseal_version("alice", a.namespace, c.id, n, "test");
        assert!(matches!(unsealed, Err(StoreError::NotFound)), "unseal {n}");
    }
    assert_eq!(versions_of(&store, a.namespace, c.id), before);
    assert_eq!(store.get_credential(a.namespace, c.id).unwrap().version, 1);
}

/// Updates, deletes, restores, reveals and test records from 16 threads at once share
/// batched transactions with creates: each one's effect is there exactly once, a refused
/// one (a taken name, a secret written as a plain field) changes nothing and fails no
/// other, updates of one credential each get a version of their own, and the audit chain
/// holds one record per write.
#[test]
fn concurrent_writes_of_every_kind_share_batches_and_refusals_change_nothing() {
    const THREADS: usize = 16;
    const ROUNDS: usize = 12;
    let fx = Fixture::new();
    let store = std::sync::Arc::new(fx.open());
    let a = store.add_user("admin", "alice", Role::User).unwrap();
    let ns = a.namespace;
    let ids: Vec<CredentialId> = (0..THREADS)
        .map(|t| store.create_credential("alice", ns, cred(&format!("c{t}"), "alpaca", &[("key", "K-0")])).unwrap().id)
        .collect();
    // One credential every thread updates too: updates sharing a batch must see each
    // other's versions (each gets a number of its own, none overwrites another's).
    let shared = store.create_credential("alice", ns, cred("shared", "alpaca", &[("key", "K-0")])).unwrap().id;
    let audit_before = store.verify_audit().unwrap();
    let workers: Vec<_> = (0..THREADS)
        .map(|t| {
            let (store, id) = (store.clone(), ids[t]);
            std::thread::spawn(move || {
                let mut shared_versions = Vec::new();
                for r in 1..=ROUNDS {
                    let mine = CredentialUpdate {
                        secrets: BTreeMap::from([("key".into(), SecretString::from(format!("t{t}-r{r}")))]),
                        ..Default::default()
                    };
                    shared_versions.push(store.update_credential("alice", ns, shared, mine).unwrap().version);
                    let taken = CredentialUpdate { name: Some(format!("c{}", (t + 1) % THREADS)), ..Default::default() };
                    let refused = store.update_credential("alice", ns, id, taken).unwrap_err();
                    assert!(matches!(refused, StoreError::NameTaken { .. }), "{refused:?}");
                    // Refused after its rename was checked and applied to the record in
                    // memory: the name index must not keep any of it.
                    let plain_secret = CredentialUpdate {
                        name: Some(format!("free-{t}-{r}")),
                        fields: BTreeMap::from([("key".into(), Some("in clear".into()))]),
                        ..Default::default()
                    };
                    let refused = store.update_credential("alice", ns, id, plain_secret).unwrap_err();
                    assert!(matches!(&refused, StoreError::InvalidField { field, .. } if field == "key"), "{refused:?}");
                    let upd = CredentialUpdate {
                        description: Some(format!("round {r}")),
                        secrets: BTreeMap::from([("key".into(), SecretString::from(format!("K-{r}")))]),
                        ..Default::default()
                    };
                    assert_eq!(store.update_credential("alice", ns, id, upd).unwrap().version, r as u32 + 1);
                    store.delete_credential("alice", ns, id).unwrap();
                    assert!(matches!(store.delete_credential("alice", ns, id), Err(StoreError::NotFound)));
                    store.restore_credential("alice", ns, id).unwrap();
                    let result = TestResult {
                        at: r as u64,
                        ok: true,
                        summary: format!("round {r}"),
                        verdict: None,
                        trigger: Default::default(),
                        facts: BTreeMap::new(),
                        latency_ms: 1,
                    };
                    assert_eq!(store.record_test_result("alice", ns, id, result).unwrap().last_test.unwrap().at, r as u64);
                    let secrets = store.reveal("alice", ns, id, "check").unwrap();
                    assert_eq!(secrets["key"].expose_secret(), &format!("K-{r}"));
                    store.create_credential("alice", ns, cred(&format!("t{t}-r{r}"), "alpaca", &[("key", "new")])).unwrap();
                }
                shared_versions
            })
        })
        .collect();
    let mut shared_versions: Vec<u32> = workers.into_iter().flat_map(|w| w.join().unwrap()).collect();
    shared_versions.sort_unstable();
    let expected: Vec<u32> = (2..=1 + (THREADS * ROUNDS) as u32).collect();
    assert_eq!(shared_versions, expected, "each update of the shared credential got a version of its own");
    let last = store.get_credential(ns, shared).unwrap();
    assert_eq!(last.version, 1 + (THREADS * ROUNDS) as u32);
    for (t, id) in ids.iter().enumerate() {
        let c = store.get_credential(ns, *id).unwrap();
        assert_eq!((c.name.as_str(), c.description.as_str()), (format!("c{t}").as_str(), format!("round {ROUNDS}").as_str()));
        assert_eq!((c.version, c.deleted_at), (ROUNDS as u32 + 1, None));
        assert!(!c.fields.contains_key("key"), "a refused update wrote a field");
        assert_eq!(store.test_history(ns, *id).unwrap().len(), ROUNDS);
    }
    let page = store.list_credentials(ns, &ListQuery { limit: 1000, ..Default::default() }).unwrap();
    assert_eq!(page.total, THREADS * (ROUNDS + 1) + 1);
    assert!(page.items.iter().all(|c| !c.name.starts_with("free-")), "a refused rename reached the name index");
    for t in 0..THREADS {
        let q = ListQuery { name: Some(format!("c{t}")), ..Default::default() };
        assert_eq!(store.list_credentials(ns, &q).unwrap().items[0].id, ids[t]);
    }
    // Per round and thread: the shared update, update, delete, restore, test, reveal,
    // create (refusals write nothing, not even an audit record).
    assert_eq!(store.verify_audit().unwrap(), audit_before + (THREADS * ROUNDS * 7) as u64);
}
