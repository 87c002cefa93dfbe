//! Store throughput, plain numbers (`cargo bench --bench store`), bounded to a few seconds.
//!
//! - durable creates/s through `Store::create_credential` (metadata + name index + sealed
//!   version + audit record, one durable transaction each) against raw redb single-row
//!   durable commits/s with a value as large as everything one create writes; both in the
//!   same directory, interleaved, and their ratio (target >= 0.7);
//! - the ceiling the layout sets: raw redb durable commits that write the very rows one
//!   create writes (same tables, key shapes and sizes, no credhost code), and the same
//!   without the audit index, both against the raw single-row commits, interleaved;
//! - metadata reads/s (`get_credential`) and first-page listings/s (`list_credentials`, 50);
//! - group commit: creates/s from 1 thread and from `THREADS` threads sharing the store,
//!   interleaved, their ratio (issue 17 target >= 5 at 16 threads) and the per-create
//!   latency p50/p99 at both.
//!
//! `STORE_BENCH_ONLY=group` runs the group-commit phases alone (for a profiler).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use credhost::crypto::MasterKey;
use credhost::store::{AuditQuery, ListQuery, NewCredential, Role, Store};
use redb::{Durability, TableDefinition};
use secrecy::SecretString;

const PHASE: Duration = Duration::from_millis(700);
const ROUNDS: usize = 3;
const THREADS: usize = 16;
const RAW: TableDefinition<u64, &[u8]> = TableDefinition::new("raw");

fn new_cred(i: u64) -> NewCredential {
    let mut c = NewCredential::new(&format!("credential-{i:08}"), "alpaca");
    c.description = "benchmark credential".into();
    c.tags = vec!["bench".into(), "paper".into()];
    c.environment = Some("paper".into());
    c.fields
        .insert("base_url".into(), "https://paper-api.alpaca.markets".into());
    c.fields.insert("account".into(), format!("PA{i:010}"));
    c.secrets
        .insert("key_id".into(), SecretString::from(format!("PK{i:018}")));
    c.secrets
        .insert("secret_key".into(), SecretString::from(format!("{i:040}")));
    c
}

pub fn main() {
    // Benches get a scratch dir inside target/: a real disk, not tmpfs
    // (`STORE_BENCH_DIR` overrides, e.g. /dev/shm to see CPU cost without fsync).
    let base = std::env::var_os("STORE_BENCH_DIR")
        .map(std::path::PathBuf::from)
        .or_else(|| option_env!("CARGO_TARGET_TMPDIR").map(std::path::PathBuf::from))
        .unwrap_or_else(std::env::temp_dir);
    std::fs::create_dir_all(&base).unwrap();
    let dir = tempfile::tempdir_in(&base).unwrap();

    let store = Arc::new(
        Store::open(
            dir.path().join("store.redb"),
            MasterKey::generate().unwrap(),
        )
        .unwrap(),
    );
    let user = store.add_user("bench", "bench", Role::User).unwrap();
    let ns = user.namespace;

    // Bytes one create writes: metadata JSON, sealed blob, audit record JSON.
    let first = store.create_credential("bench", ns, new_cred(0)).unwrap();
    let audit = store
        .list_audit(&AuditQuery {
            limit: 1,
            ..Default::default()
        })
        .unwrap();
    let sealed = 1 + 24 + 16 + 4 + 2 * 8 + "key_id".len() + 20 + "secret_key".len() + 40;
    let value_len = serde_json::to_vec(&first).unwrap().len()
        + sealed
        + serde_json::to_vec(&audit[0]).unwrap().len();
    let value = vec![0xA5u8; value_len];

    let raw = redb::Database::create(dir.path().join("raw.redb")).unwrap();
    let sizes = RowSizes {
        record: serde_json::to_vec(&first).unwrap().len(),
        blob: sealed,
        audit: serde_json::to_vec(&audit[0]).unwrap().len(),
    };
    // (database, with the audit index, commits, time)
    let mut rows = [true, false].map(|index| {
        let db = redb::Database::create(dir.path().join(format!("rows-{index}.redb"))).unwrap();
        (db, index, 0u64, Duration::ZERO, Io::default())
    });
    let mut next = 1u64;
    let (mut raw_ops, mut raw_time) = (0u64, Duration::ZERO);
    let (mut store_ops, mut store_time) = (0u64, Duration::ZERO);
    let mut ids = vec![first.id];
    let only_group = std::env::var("STORE_BENCH_ONLY").is_ok_and(|v| v == "group");
    let (mut raw_io, mut store_io) = (Io::default(), Io::default());
    for _ in 0..if only_group { 0 } else { ROUNDS } {
        let io = Io::now();
        let t = Instant::now();
        while t.elapsed() < PHASE {
            let mut txn = raw.begin_write().unwrap();
            txn.set_durability(Durability::Immediate).unwrap();
            txn.open_table(RAW)
                .unwrap()
                .insert(raw_ops, value.as_slice())
                .unwrap();
            txn.commit().unwrap();
            raw_ops += 1;
        }
        raw_time += t.elapsed();
        raw_io.add(&io, &Io::now());

        for (db, index, ops, time, written) in rows.iter_mut() {
            let io = Io::now();
            let t = Instant::now();
            while t.elapsed() < PHASE {
                write_rows(db, &sizes, *ops, *index);
                *ops += 1;
            }
            *time += t.elapsed();
            written.add(&io, &Io::now());
        }

        let io = Io::now();
        let t = Instant::now();
        while t.elapsed() < PHASE {
            ids.push(
                store
                    .create_credential("bench", ns, new_cred(next))
                    .unwrap()
                    .id,
            );
            next += 1;
            store_ops += 1;
        }
        store_time += t.elapsed();
        store_io.add(&io, &Io::now());
    }
    if only_group {
        group_commit(&store, ns, next);
        return;
    }
    let raw_rate = raw_ops as f64 / raw_time.as_secs_f64();
    let store_rate = store_ops as f64 / store_time.as_secs_f64();

    let mut gets = 0u64;
    let t = Instant::now();
    while t.elapsed() < PHASE {
        for _ in 0..64 {
            let id = ids[(gets as usize * 7919) % ids.len()];
            std::hint::black_box(store.get_credential(ns, id).unwrap());
            gets += 1;
        }
    }
    let get_rate = gets as f64 / t.elapsed().as_secs_f64();

    let mut lists = 0u64;
    let query = ListQuery {
        limit: 50,
        ..Default::default()
    };
    let t = Instant::now();
    while t.elapsed() < PHASE {
        let page = store.list_credentials(ns, &query).unwrap();
        assert_eq!(page.items.len(), 50.min(ids.len()));
        std::hint::black_box(page);
        lists += 1;
    }
    let list_rate = lists as f64 / t.elapsed().as_secs_f64();

    println!("value_bytes_per_commit {value_len}");
    println!("raw_redb_durable_commits_per_s {raw_rate:.1}");
    println!("store_durable_creates_per_s {store_rate:.1}");
    println!("create_vs_raw_ratio {:.2}", store_rate / raw_rate);
    let rate = |r: &(redb::Database, bool, u64, Duration, Io)| r.2 as f64 / r.3.as_secs_f64();
    println!(
        "same_rows_vs_raw_ratio {:.2} (redb alone writing one create's rows: the layout's ceiling)",
        rate(&rows[0]) / raw_rate
    );
    println!("same_rows_without_audit_index_vs_raw_ratio {:.2}", rate(&rows[1]) / raw_rate);
    let per = |io: &Io, ops: u64| (io.calls as f64 / ops as f64, io.bytes as f64 / ops as f64);
    let [(raw_c, raw_b), (create_c, create_b), (rows_c, rows_b)] =
        [per(&raw_io, raw_ops), per(&store_io, store_ops), per(&rows[0].4, rows[0].2)];
    println!(
        "write_calls_per_commit raw {raw_c:.1} create {create_c:.1} same_rows {rows_c:.1}; \
         bytes_written_per_commit raw {raw_b:.0} create {create_b:.0} same_rows {rows_b:.0}"
    );
    println!("get_credential_per_s {get_rate:.0}");
    println!(
        "list_credentials_50_per_s {list_rate:.0} (namespace holds {} credentials)",
        ids.len()
    );
    group_commit(&store, ns, next);
    let size = std::fs::metadata(dir.path().join("store.redb")).map_or(0, |m| m.len());
    println!("store_file_mib {:.1} (after every phase)", size as f64 / 1048576.0);
}

/// Bytes of the rows one create writes (the version metadata and audit head are fixed).
struct RowSizes {
    record: usize,
    blob: usize,
    audit: usize,
}

/// One durable commit of the rows a create writes, as `store` lays them out (schema 2):
/// the credential record, its name, version 1's blob and metadata, the audit record, its
/// namespace index entry (with `index`) and the audit head. Ids grow with time, as UUIDv7s.
fn write_rows(db: &redb::Database, sizes: &RowSizes, i: u64, index: bool) {
    use credhost::store::schema::{AUDIT, AUDIT_BY_NS, CREDENTIALS, META, META_AUDIT_HEAD, NAMES, VERSIONS};
    let id = (1_800_000_000_000u128 + u128::from(i)) << 80 | 0x5a5a;
    let ns = 0x0123_4567_89ab_cdef_u128 << 64;
    let name = format!("credential-{i:08}");
    let mut txn = db.begin_write().unwrap();
    txn.set_durability(Durability::Immediate).unwrap();
    txn.open_table(CREDENTIALS).unwrap().insert(id, vec![b'r'; sizes.record].as_slice()).unwrap();
    txn.open_table(NAMES).unwrap().insert((ns, name.as_str()), id).unwrap();
    {
        let mut versions = txn.open_table(VERSIONS).unwrap();
        versions.insert((id, 1), vec![b'b'; sizes.blob].as_slice()).unwrap();
        versions.insert((id, 1 | 1 << 31), [b'm'; 230].as_slice()).unwrap();
    }
    txn.open_table(AUDIT).unwrap().insert(i + 1, vec![b'a'; sizes.audit].as_slice()).unwrap();
    if index {
        txn.open_table(AUDIT_BY_NS).unwrap().insert((ns, i + 1), ()).unwrap();
    }
    txn.open_table(META).unwrap().insert(META_AUDIT_HEAD, [b'h'; 150].as_slice()).unwrap();
    txn.commit().unwrap();
}

/// Group commit: the same creates from 1 thread, then from THREADS threads, interleaved;
/// then updates of existing credentials the same way.
fn group_commit(store: &Arc<Store>, ns: credhost::store::NamespaceId, next: u64) {
    let next = Arc::new(AtomicU64::new(next));
    let created = Arc::new(std::sync::Mutex::new(Vec::new()));
    let (sink, counter) = (created.clone(), next.clone());
    compare_threads(store, "creates", move |store| {
        let cred = new_cred(counter.fetch_add(1, Ordering::Relaxed));
        let id = store.create_credential("bench", ns, cred).unwrap().id;
        sink.lock().unwrap().push(id);
    });
    // Updates of the credentials just created, spread so no two threads touch one often.
    let ids = Arc::new(std::mem::take(&mut *created.lock().unwrap()));
    let n = Arc::new(AtomicU64::new(0));
    compare_threads(store, "updates", move |store| {
        let i = n.fetch_add(1, Ordering::Relaxed);
        let id = ids[(i as usize * 7919) % ids.len()];
        let upd = credhost::store::CredentialUpdate { description: Some(format!("updated {i}")), ..Default::default() };
        store.update_credential("bench", ns, id, upd).unwrap();
    });
}

/// Runs `op` from 1 thread, then from THREADS threads, interleaved for ROUNDS; prints
/// each rate with its latency p50/p99 and their ratio.
fn compare_threads(store: &Arc<Store>, what: &str, op: impl Fn(&Store) + Send + Sync + 'static) {
    let op = Arc::new(op);
    let (mut one, mut many) = ((0u64, Duration::ZERO, Vec::new()), (0u64, Duration::ZERO, Vec::new()));
    for _ in 0..ROUNDS {
        for (threads, acc) in [(1, &mut one), (THREADS, &mut many)] {
            let stop = Arc::new(AtomicBool::new(false));
            let t = Instant::now();
            let workers: Vec<_> = (0..threads)
                .map(|_| {
                    let (store, stop, op) = (store.clone(), stop.clone(), op.clone());
                    std::thread::spawn(move || {
                        let mut lat = Vec::new();
                        while !stop.load(Ordering::Relaxed) {
                            let t = Instant::now();
                            op(&store);
                            lat.push(t.elapsed());
                        }
                        lat
                    })
                })
                .collect();
            std::thread::sleep(PHASE);
            stop.store(true, Ordering::Relaxed);
            for w in workers {
                let lat = w.join().unwrap();
                acc.0 += lat.len() as u64;
                acc.2.extend(lat);
            }
            acc.1 += t.elapsed();
        }
    }
    let pct = |lat: &mut Vec<Duration>, p: f64| -> f64 {
        lat.sort();
        lat[((lat.len() - 1) as f64 * p) as usize].as_secs_f64() * 1e3
    };
    let one_rate = one.0 as f64 / one.1.as_secs_f64();
    let many_rate = many.0 as f64 / many.1.as_secs_f64();

    println!(
        "{what}_1_thread_per_s {one_rate:.1} (p50 {:.2} ms, p99 {:.2} ms)",
        pct(&mut one.2, 0.5),
        pct(&mut one.2, 0.99)
    );
    println!(
        "{what}_{THREADS}_threads_per_s {many_rate:.1} (p50 {:.2} ms, p99 {:.2} ms)",
        pct(&mut many.2, 0.5),
        pct(&mut many.2, 0.99)
    );
    let target = if what == "creates" { " (target >= 5)" } else { "" };
    println!("{what}_group_commit_ratio_{THREADS}_vs_1 {:.2}{target}", many_rate / one_rate);
}

/// This process's write calls and bytes so far (`/proc/self/io`: `syscw`, `wchar`); zero
/// where that file is missing.
#[derive(Default)]
struct Io {
    calls: u64,
    bytes: u64,
}

impl Io {
    fn now() -> Io {
        let text = std::fs::read_to_string("/proc/self/io").unwrap_or_default();
        let field = |name: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0)
        };
        Io { calls: field("syscw:"), bytes: field("wchar:") }
    }

    fn add(&mut self, from: &Io, to: &Io) {
        self.calls += to.calls - from.calls;
        self.bytes += to.bytes - from.bytes;
    }
}
