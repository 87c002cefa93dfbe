//! PostgreSQL storage throughput, plain numbers (`cargo bench --bench postgres`), about 45 s
//! of run time (issue 16). One PostgreSQL 15 (tests/common/postgres.rs), two fresh databases:
//!
//! 1. Baseline: raw single-row `INSERT`s into `(k bytea PRIMARY KEY, v bytea)` with
//!    tokio-postgres, autocommit (each INSERT its own durable commit), at `CONNS`
//!    connections and at 1. The row is as large as what one credential create writes:
//!    measured in this run (every `kv_*` row a create adds, keys and values, summed over
//!    a few sequential creates before the phases) and printed as `raw_row_bytes`.
//! 2. The real `credhost` binary on the other database, one replica: `POST
//!    /api/credentials` (`bearer_token`) from `CONNS` clients and from 1: creates/s,
//!    p50/p99; then `GET /api/credentials?limit=25` from `CONNS` clients: p50/p99. The
//!    lists are read as a second user holding exactly `LIST_CREDS` credentials (created
//!    before the phases, the same on every backend): a page reads its user's whole name
//!    index (to count `total`), so its cost grows with that user's credentials, and the
//!    creating user's count depends on each backend's create rate.
//! 3. A second replica on the same database (`Env::replica`), `CONNS / 2` clients on each:
//!    creates/s in total, p50/p99; list p50/p99.
//! 4. The same creates (and list) on redb, one server, for reference.
//!
//! Before the phases it also prints PostgreSQL's durability settings and how many statements
//! (not round trips: a batch or a pipelined group is one round trip) one create and one list page take (`log_statement = all` for that span).
//! Each server must answer `/readyz` with 200 before it is timed (it listens before its
//! plugins are loaded, and API requests wait for them).
//!
//! All servers start before the timed phases and stay up (idle outside their own phases:
//! during the one-replica phases the second replica is connected but gets no requests);
//! the phases run in order, once per round, for `ROUNDS` rounds, so load that drifts during
//! the run spreads over every configuration. Rates are the mean over the rounds, p50/p99
//! over every request of them.
//!
//! Then a table and the same-run ratios: credhost creates/s ÷ raw INSERT/s, two replicas
//! ÷ one, PostgreSQL ÷ redb. Every phase has a fixed length (`WARMUP` + `PHASE`);
//! a request that fails or a server that does not start panics with the reason.
//!
//! Client, servers and PostgreSQL share this machine's cores: absolute numbers understate
//! a real deployment; the ratios are the comparable figures.

#[allow(dead_code)]
#[path = "../tests/common/postgres.rs"]
mod postgres;
#[allow(dead_code)]
#[path = "../tests/common/server.rs"]
mod server;

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::{json, Value};

const CONNS: usize = 16;
const PHASE: Duration = Duration::from_millis(1500);
/// Every phase runs once per round, the rounds one after the other.
const ROUNDS: usize = 2;
const WARMUP: Duration = Duration::from_millis(300);
/// Sequential creates whose rows are measured to size the raw INSERT row.
const PROBE_CREATES: usize = 20;
/// Credentials of the user whose first page the list phases read (a list reads the whole
/// name index of its user, so the same count on every backend keeps the lists comparable).
const LIST_CREDS: usize = 500;

/// Request numbers shared by every phase (create names stay unique).
static SEQ: AtomicU64 = AtomicU64::new(0);

/// One phase's result: completed operations/s and each operation's latency.
struct Run {
    rate: f64,
    lat: Vec<Duration>,
}

impl Run {
    /// Adds one round's result (the rate is the mean over `ROUNDS`).
    fn add(&mut self, round: Run) {
        self.rate += round.rate / ROUNDS as f64;
        self.lat.extend(round.lat);
    }

    /// The `p` quantile of the latencies, in ms.
    fn pct(&self, p: f64) -> f64 {
        let mut lat = self.lat.clone();
        lat.sort();
        assert!(!lat.is_empty(), "a phase completed no operation");
        lat[((lat.len() - 1) as f64 * p).round() as usize].as_secs_f64() * 1e3
    }
}

/// Runs `conns` loops of `op(loop index, sequence number)` for `WARMUP + PHASE`; counts
/// what completes inside PHASE.
async fn drive<F, Fut>(conns: usize, op: F) -> Run
where
    F: Fn(usize, u64) -> Fut + Send + Sync + Clone + 'static,
    Fut: Future<Output = ()> + Send,
{
    let counted = Arc::new(AtomicU64::new(0));
    let counting = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for i in 0..conns {
        let (op, counted, counting, stop) = (op.clone(), counted.clone(), counting.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let t = Instant::now();
                op(i, SEQ.fetch_add(1, Ordering::Relaxed)).await;
                if counting.load(Ordering::Relaxed) && !stop.load(Ordering::Relaxed) {
                    counted.fetch_add(1, Ordering::Relaxed);
                    lat.push(t.elapsed());
                }
            }
            lat
        }));
    }
    tokio::time::sleep(WARMUP).await;
    counting.store(true, Ordering::Relaxed);
    let t = Instant::now();
    tokio::time::sleep(PHASE).await;
    let n = counted.load(Ordering::Relaxed);
    let secs = t.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    let mut lat = Vec::new();
    for t in tasks {
        // A panic in an operation (failed request) fails the bench here, with its message.
        lat.extend(t.await.unwrap_or_else(|e| panic!("a client loop failed: {e}")));
    }
    Run { rate: n as f64 / secs, lat }
}

/// A create body like benches/api.rs sends.
fn cred(name: String) -> Value {
    json!({"name": name, "type": "bearer_token", "description": "benchmark credential",
           "tags": ["bench"], "fields": {"token": server::random_alnum(40), "test_url": "https://api.example.com/v1/me"}})
}

/// Creates from `conns` clients spread round-robin over `bases`.
async fn creates(http: &reqwest::Client, bases: &[String], token: &str, conns: usize) -> Run {
    let (http, bases, token) = (http.clone(), Arc::new(bases.to_vec()), token.to_string());
    drive(conns, move |i, seq| {
        let url = format!("{}/api/credentials", bases[i % bases.len()]);
        let req = http.post(url).bearer_auth(&token).json(&cred(format!("bench-{seq:08}")));
        async move {
            let resp = req.send().await.unwrap_or_else(|e| panic!("POST /api/credentials: {e}"));
            let status = resp.status();
            let text = resp.text().await.unwrap_or_default();
            assert_eq!(status, 201, "POST /api/credentials: {text}");
        }
    })
    .await
}

/// `GET /api/credentials?limit=25` from `conns` clients spread over `bases`; each page must
/// hold 25 items.
async fn lists(http: &reqwest::Client, bases: &[String], token: &str, conns: usize) -> Run {
    let (http, bases, token) = (http.clone(), Arc::new(bases.to_vec()), token.to_string());
    drive(conns, move |i, _| {
        let req = http.get(format!("{}/api/credentials?limit=25", bases[i % bases.len()])).bearer_auth(&token);
        async move {
            let resp = req.send().await.unwrap_or_else(|e| panic!("GET /api/credentials: {e}"));
            let status = resp.status();
            let text = resp.text().await.unwrap_or_default();
            assert_eq!(status, 200, "GET /api/credentials?limit=25: {text}");
            let page: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("list is not JSON ({e}): {text}"));
            let n = page["items"].as_array().map_or(0, Vec::len);
            assert_eq!(n, 25, "GET /api/credentials?limit=25 returned {n} items");
        }
    })
    .await
}

/// Waits (up to 60 s) until `GET /readyz` answers 200: a server prints `listening on` before
/// its plugins are loaded, and API requests wait for them, which a timed phase must not see.
async fn ready(http: &reqwest::Client, base: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let status = http.get(format!("{base}/readyz")).send().await.map(|r| r.status().as_u16());
        if matches!(status, Ok(200)) {
            return;
        }
        assert!(Instant::now() < deadline, "{base} not ready within 60 s (last /readyz: {status:?})");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Creates exactly `n` credentials named `fill-NNNNN` for `token` from `CONNS` clients.
async fn fill(http: &reqwest::Client, base: &str, token: &str, n: usize) {
    let next = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..CONNS {
        let (http, url, token, next) = (http.clone(), format!("{base}/api/credentials"), token.to_string(), next.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n as u64 {
                    break;
                }
                let resp = http
                    .post(&url)
                    .bearer_auth(&token)
                    .json(&cred(format!("fill-{i:05}")))
                    .send()
                    .await
                    .unwrap_or_else(|e| panic!("POST /api/credentials: {e}"));
                let status = resp.status();
                assert_eq!(status, 201, "POST /api/credentials: {}", resp.text().await.unwrap_or_default());
            }
        }));
    }
    for t in tasks {
        t.await.unwrap_or_else(|e| panic!("a fill loop failed: {e}"));
    }
}

/// Rows and bytes (key, ordered key, value) in every `kv_*` table of `db`.
fn kv_totals(pg: &postgres::Postgres, db: &str) -> (u64, u64) {
    let tables = pg.psql(db, "SELECT tablename FROM pg_tables WHERE schemaname = 'public' AND tablename LIKE 'kv\\_%'");
    let tables: Vec<&str> = tables.lines().filter(|l| !l.is_empty()).collect();
    assert!(!tables.is_empty(), "no kv_* tables in {db}: did credhost migrate it?");
    let union = tables
        .iter()
        .map(|t| format!("SELECT octet_length(k) + octet_length(kr) + octet_length(v) AS b FROM {t}"))
        .collect::<Vec<_>>()
        .join(" UNION ALL ");
    let out = pg.psql(db, &format!("SELECT count(*), coalesce(sum(b), 0) FROM ({union}) AS rows"));
    let (rows, bytes) = out.split_once('|').unwrap_or_else(|| panic!("unexpected psql output {out:?}"));
    (rows.parse().unwrap(), bytes.parse().unwrap())
}

/// Statements PostgreSQL logged (one line per simple-query batch or extended-protocol
/// execute: one round trip each) while `work` ran, with `log_statement = all` set for the
/// cluster just for that span.
async fn statements_during<Fut: Future<Output = ()>>(pg: &postgres::Postgres, work: Fut) -> usize {
    let count = |log: &str| {
        log.lines()
            .filter(|l| (l.contains("LOG:  statement: ") || l.contains("LOG:  execute ")) && !l.contains("ALTER SYSTEM"))
            .count()
    };
    pg.psql("postgres", "ALTER SYSTEM SET log_statement = 'all'; SELECT pg_reload_conf();");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let before = count(&pg.log());
    work.await;
    let after = count(&pg.log());
    pg.psql("postgres", "ALTER SYSTEM RESET log_statement; SELECT pg_reload_conf();");
    tokio::time::sleep(Duration::from_millis(200)).await;
    after - before
}

/// The database name at the end of a `postgres://…/NAME` URL.
fn db_name(url: &str) -> &str {
    url.rsplit('/').next().unwrap()
}

/// `CONNS` (or 1) tokio-postgres connections inserting `row_bytes`-byte rows into a fresh
/// table of `url`'s database, one autocommit INSERT each.
async fn raw_inserts(pg: &postgres::Postgres, url: &str, row_bytes: usize, conns: usize) -> Run {
    let mut config: tokio_postgres::Config = url.parse().expect("PostgreSQL URL");
    config.password(pg.password());
    let mut clients = Vec::new();
    for _ in 0..conns {
        let (client, conn) = config
            .connect(tokio_postgres::NoTls)
            .await
            .unwrap_or_else(|e| panic!("connecting to {url}: {e}"));
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                panic!("PostgreSQL connection failed: {e}");
            }
        });
        let stmt = client.prepare("INSERT INTO raw (k, v) VALUES ($1, $2)").await.expect("prepare INSERT");
        clients.push((client, stmt));
    }
    let clients = Arc::new(clients);
    // The key: 8 bytes of sequence then 8 random (time-ordered like the store's uuid v7 ids);
    // the value: random bytes (incompressible, like sealed blobs), so each row is row_bytes.
    let value_len = row_bytes.saturating_sub(16).max(1);
    drive(conns, move |i, seq| {
        let clients = clients.clone();
        let mut k = seq.to_be_bytes().to_vec();
        let mut rnd = vec![0u8; 8 + value_len];
        getrandom::fill(&mut rnd).unwrap();
        k.extend_from_slice(&rnd[..8]);
        let v = rnd[8..].to_vec();
        async move {
            let (client, stmt) = &clients[i];
            let n = client.execute(stmt, &[&k, &v]).await.unwrap_or_else(|e| panic!("raw INSERT: {e}"));
            assert_eq!(n, 1, "raw INSERT inserted {n} rows");
        }
    })
    .await
}

fn main() {
    let t0 = Instant::now();
    let pg = postgres::Postgres::start();
    let (raw_db, raw_url) = pg.fresh_database();
    pg.psql(&raw_db, "CREATE TABLE raw (k bytea PRIMARY KEY, v bytea NOT NULL)");
    let env = server::Env::postgres(&pg);
    let pg_url = env.var("CREDHOST_POSTGRES_URL").expect("postgres URL").to_string();
    let cred_db = db_name(&pg_url).to_string();
    let token = env.add_user("bench", false);
    let reader = env.add_user("reader", false);
    let mut one = env.start(&[]);
    let replica_env = env.replica();

    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(async move {
        let http = reqwest::Client::builder().pool_max_idle_per_host(CONNS).build().unwrap();
        let base1 = vec![one.base.clone()];
        ready(&http, &one.base).await;

        // What one create writes: rows and bytes added by sequential creates on a quiet server.
        // Also how many statements one create and one list page take.
        let (rows0, bytes0) = kv_totals(&pg, &cred_db);
        let probe = async {
            for i in 0..PROBE_CREATES {
                let resp = http
                    .post(format!("{}/api/credentials", one.base))
                    .bearer_auth(&token)
                    .json(&cred(format!("probe-{i:03}")))
                    .send()
                    .await
                    .unwrap_or_else(|e| panic!("POST /api/credentials: {e}"));
                let status = resp.status();
                assert_eq!(status, 201, "POST /api/credentials: {}", resp.text().await.unwrap_or_default());
            }
        };
        let create_stmts = statements_during(&pg, probe).await as f64 / PROBE_CREATES as f64;
        let (rows1, bytes1) = kv_totals(&pg, &cred_db);
        let rows_per_create = (rows1 - rows0) as f64 / PROBE_CREATES as f64;
        let row_bytes = ((bytes1 - bytes0) as f64 / PROBE_CREATES as f64).round() as usize;
        assert!(row_bytes > 0, "creates wrote nothing to {cred_db}?");

        fill(&http, &one.base, &reader, LIST_CREDS).await;
        let list_stmts = statements_during(&pg, async {
            let resp = http
                .get(format!("{}/api/credentials?limit=25", one.base))
                .bearer_auth(&reader)
                .send()
                .await
                .unwrap_or_else(|e| panic!("GET /api/credentials: {e}"));
            let status = resp.status();
            assert_eq!(status, 200, "GET /api/credentials?limit=25: {}", resp.text().await.unwrap_or_default());
        })
        .await;
        let settings = pg.psql(
            &cred_db,
            "SELECT string_agg(name || '=' || setting, ' ' ORDER BY name) FROM pg_settings \
             WHERE name IN ('fsync', 'synchronous_commit', 'wal_sync_method', 'full_page_writes')",
        );

        // Every server runs from here on, idle outside its own phases: the phases alternate
        // in ROUNDS rounds, so load that drifts during the run (this machine is shared)
        // spreads over every configuration instead of landing on one.
        let two = replica_env.start(&[]);
        let base2 = vec![one.base.clone(), two.base.clone()];
        ready(&http, &two.base).await;
        // redb, whatever CREDHOST_TEST_STORAGE says.
        let mut key = [0u8; 32];
        getrandom::fill(&mut key).unwrap();
        let redb_env = server::Env::redb_with_key(&base64::engine::general_purpose::STANDARD.encode(key));
        let redb_token = redb_env.add_user("bench", false);
        let redb_reader = redb_env.add_user("reader", false);
        let redb = redb_env.start(&[]);
        let base_r = vec![redb.base.clone()];
        ready(&http, &redb.base).await;
        fill(&http, &redb.base, &redb_reader, LIST_CREDS).await;

        let empty = || Run { rate: 0.0, lat: Vec::new() };
        let [mut raw_many, mut raw_one, mut pg_many, mut pg_one, mut pg_list, mut rep_many, mut rep_list] =
            std::array::from_fn(|_| empty());
        let [mut redb_many, mut redb_one, mut redb_list] = std::array::from_fn(|_| empty());
        for _ in 0..ROUNDS {
            // 1. Raw INSERTs of that size.
            raw_many.add(raw_inserts(&pg, &raw_url, row_bytes, CONNS).await);
            raw_one.add(raw_inserts(&pg, &raw_url, row_bytes, 1).await);
            // 2. One replica.
            pg_many.add(creates(&http, &base1, &token, CONNS).await);
            pg_one.add(creates(&http, &base1, &token, 1).await);
            pg_list.add(lists(&http, &base1, &reader, CONNS).await);
            // 3. Two replicas on the same database.
            rep_many.add(creates(&http, &base2, &token, CONNS).await);
            rep_list.add(lists(&http, &base2, &reader, CONNS).await);
            // 4. redb.
            redb_many.add(creates(&http, &base_r, &redb_token, CONNS).await);
            redb_one.add(creates(&http, &base_r, &redb_token, 1).await);
            redb_list.add(lists(&http, &base_r, &redb_reader, CONNS).await);
        }
        drop((two, redb));
        one.stop();
        drop(one);

        let half = CONNS / 2;
        println!(
            "phase_seconds {:.1} x {ROUNDS} rounds (+{:.1} warm-up each, not counted)",
            PHASE.as_secs_f64(),
            WARMUP.as_secs_f64()
        );
        println!("postgres {settings}");
        println!("list_user_credentials {LIST_CREDS} (the lists read as a second user holding exactly these)");
        println!("create_rows_per_credential {rows_per_create:.1}");
        println!("pg_statements_per_create {create_stmts:.1} (as PostgreSQL logged them; batches and pipelined writes share a round trip)");
        println!("pg_statements_per_list25 {list_stmts} (user with {LIST_CREDS} credentials)");
        let value_len = row_bytes.saturating_sub(16).max(1);
        println!("raw_row_bytes {row_bytes} (key 16 + value {value_len}; = bytes of the kv rows one create adds)");
        println!();
        println!("{:<40} {:>7} {:>9} {:>9} {:>9}", "phase", "clients", "ops/s", "p50_ms", "p99_ms");
        let rows: Vec<(&str, String, &Run)> = vec![
            ("raw_insert_pg", CONNS.to_string(), &raw_many),
            ("raw_insert_pg", "1".into(), &raw_one),
            ("credhost_pg_create", CONNS.to_string(), &pg_many),
            ("credhost_pg_create", "1".into(), &pg_one),
            ("credhost_pg_list25", CONNS.to_string(), &pg_list),
            ("credhost_pg_2_replicas_create", format!("{half}+{half}"), &rep_many),
            ("credhost_pg_2_replicas_list25", format!("{half}+{half}"), &rep_list),
            ("credhost_redb_create", CONNS.to_string(), &redb_many),
            ("credhost_redb_create", "1".into(), &redb_one),
            ("credhost_redb_list25", CONNS.to_string(), &redb_list),
        ];
        for (name, clients, run) in &rows {
            println!("{name:<40} {clients:>7} {:>9.0} {:>9.2} {:>9.2}", run.rate, run.pct(0.5), run.pct(0.99));
        }
        println!();
        println!("pg_create_vs_raw_insert_ratio_{CONNS} {:.3}", pg_many.rate / raw_many.rate);
        println!("pg_create_vs_raw_insert_ratio_1 {:.3}", pg_one.rate / raw_one.rate);
        println!("pg_2_replicas_vs_1_create_ratio {:.2}", rep_many.rate / pg_many.rate);
        println!("pg_2_replicas_vs_1_list_p99_ratio {:.2}", rep_list.pct(0.99) / pg_list.pct(0.99));
        println!("pg_vs_redb_create_ratio_{CONNS} {:.2}", pg_many.rate / redb_many.rate);
        println!("pg_vs_redb_create_ratio_1 {:.2}", pg_one.rate / redb_one.rate);
        println!("pg_vs_redb_list_p99_ratio {:.2}", pg_list.pct(0.99) / redb_list.pct(0.99));
        println!("wall_seconds {:.1}", t0.elapsed().as_secs_f64());
    });
}
