//! Proxy overhead, plain numbers (`cargo bench --bench proxy`), about 40 s in all
//! (issue 12, "Benchmark"): a GET through `ANY /api/credentials/{id}/proxy/{*path}` of the
//! real `credhost` binary next to the same GET sent straight to the upstream, one run,
//! loopback.
//!
//! - latency: `LAT_N` sequential GETs on keep-alive connections, direct and proxied
//!   interleaved one for one (so noise hits both alike); p50/p99 of each and the added
//!   p50/p99 (proxied − direct). Targets: added p50 <= 300 µs, p99 <= 1 ms;
//! - floors for reading the added time: `GET /healthz` (HTTP + middleware only) and
//!   `GET /api/credentials/{id}` (+ token check + store read) through the same client;
//! - throughput: `CONNS` concurrent keep-alive connections, direct vs proxied, phases
//!   alternated; the ratio. Target >= 0.50;
//! - the same latency through a grant token without a budget, and with `max_calls`
//!   (one durable write per call, reported separately).
//!
//! - where the added time goes, in process (same code the proxy runs): the credential
//!   read + decrypt (`Store::credential_for_use`), the per-call audit commit
//!   (`Store::append_audit_lazy`, sequential and from 4 threads), building the scrubber and
//!   scrubbing the body, and the two thread hand-offs of a proxy call (`spawn_blocking`
//!   from the API, then the blocking thread waiting on the capability I/O runtime).
//!
//! Client, upstream and credhost share this machine's cores, so absolute numbers are
//! pessimistic; targets are printed next to the numbers (met / missed), never enforced.

#[allow(dead_code)]
#[path = "../tests/common/server.rs"]
mod server;

#[allow(dead_code)]
#[path = "../tests/common/postgres.rs"]
mod postgres;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

const CONNS: usize = 16;
/// Sequential requests per latency series.
const LAT_N: usize = 2000;
/// Sequential requests through a grant with a call budget (each one commits durably).
const BUDGET_N: usize = 300;
const LAT_WARMUP: usize = 200;
/// Throughput: `ROUNDS` alternated phases of `PHASE` per side (5 s per side in all).
const PHASE: Duration = Duration::from_millis(2500);
const ROUNDS: usize = 2;
const TP_WARMUP: Duration = Duration::from_millis(300);

const ADDED_P50_TARGET_US: f64 = 300.0;
const ADDED_P99_TARGET_US: f64 = 1000.0;
const RATIO_TARGET: f64 = 0.50;

/// A ~200-byte JSON body, as an API item would be.
fn item_body() -> String {
    let body = json!({
        "id": "item_01HZX3K9Q7",
        "object": "item",
        "name": "benchmark item",
        "status": "active",
        "amount": 12345,
        "currency": "usd",
        "created": 1718000000,
        "tags": ["alpha", "beta", "gamma"],
        "metadata": {"owner": "bench", "region": "eu-west-1"}
    })
    .to_string();
    assert!((180..=260).contains(&body.len()), "body is {} bytes", body.len());
    body
}

/// The upstream: axum on its own two-thread runtime, `GET /v1/item` answers `body` when
/// the bearer token is `secret`, 401 otherwise. Returns its origin.
fn upstream(secret: String, body: String) -> String {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        rt.block_on(async move {
            let expected: Arc<str> = format!("Bearer {secret}").into();
            let body: Arc<str> = body.into();
            let app = axum::Router::new().route(
                "/v1/item",
                axum::routing::get(move |headers: axum::http::HeaderMap| {
                    let (expected, body) = (expected.clone(), body.clone());
                    async move {
                        let ok = headers.get("authorization").and_then(|v| v.to_str().ok()) == Some(&*expected);
                        if !ok {
                            return (axum::http::StatusCode::UNAUTHORIZED, [("content-type", "application/json")], "{}".to_string());
                        }
                        (axum::http::StatusCode::OK, [("content-type", "application/json")], body.to_string())
                    }
                }),
            );
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            tx.send(listener.local_addr().unwrap()).unwrap();
            axum::serve(listener, app).await.unwrap();
        });
    });
    format!("http://{}", rx.recv().unwrap())
}

/// One GET; asserts 200 and the body length when given. Returns the elapsed time.
async fn get(http: &reqwest::Client, url: &str, auth: Option<&str>, len: Option<usize>) -> Duration {
    let t = Instant::now();
    let mut req = http.get(url);
    if let Some(a) = auth {
        req = req.bearer_auth(a);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status();
    let bytes = resp.bytes().await.unwrap();
    let d = t.elapsed();
    assert_eq!(status, 200, "GET {url}: {}", String::from_utf8_lossy(&bytes));
    if let Some(n) = len {
        assert_eq!(bytes.len(), n, "GET {url}: unexpected body {}", String::from_utf8_lossy(&bytes));
    }
    std::hint::black_box(bytes);
    d
}

/// A series of request times; percentiles in µs.
struct Series(Vec<Duration>);

impl Series {
    fn pct(&self, p: f64) -> f64 {
        let mut v: Vec<f64> = self.0.iter().map(|d| d.as_secs_f64() * 1e6).collect();
        v.sort_by(|a, b| a.partial_cmp(b).unwrap());
        let i = ((v.len() as f64 - 1.0) * p).round() as usize;
        v[i]
    }
    fn p50(&self) -> f64 {
        self.pct(0.50)
    }
    fn p99(&self) -> f64 {
        self.pct(0.99)
    }
    fn mean(&self) -> f64 {
        self.0.iter().map(|d| d.as_secs_f64() * 1e6).sum::<f64>() / self.0.len() as f64
    }
}

/// One target check, printed next to the number.
fn verdict(ok: bool) -> &'static str {
    if ok {
        "met"
    } else {
        "MISSED"
    }
}

/// A URL with its auth, for one latency series.
#[derive(Clone)]
struct Target {
    name: &'static str,
    url: String,
    auth: Option<String>,
    len: Option<usize>,
}

/// Runs `n` rounds; in each, one GET to every target in turn (interleaved, so drift and
/// noise are shared). Returns one series per target.
async fn latencies(http: &reqwest::Client, targets: &[Target], n: usize, warmup: usize) -> Vec<Series> {
    for _ in 0..warmup {
        for t in targets {
            get(http, &t.url, t.auth.as_deref(), t.len).await;
        }
    }
    let mut out: Vec<Vec<Duration>> = targets.iter().map(|_| Vec::with_capacity(n)).collect();
    for _ in 0..n {
        for (i, t) in targets.iter().enumerate() {
            out[i].push(get(http, &t.url, t.auth.as_deref(), t.len).await);
        }
    }
    out.into_iter().map(Series).collect()
}

fn print_series(name: &str, s: &Series) {
    println!("  {name:<28} p50 {:>8.0} µs   p99 {:>8.0} µs   mean {:>8.0} µs   (n={})", s.p50(), s.p99(), s.mean(), s.0.len());
}

/// Added p50/p99 of `through` over `direct`, with the targets.
fn print_added(label: &str, through: &Series, direct: &Series) -> (bool, bool) {
    let (a50, a99) = (through.p50() - direct.p50(), through.p99() - direct.p99());
    let (ok50, ok99) = (a50 <= ADDED_P50_TARGET_US, a99 <= ADDED_P99_TARGET_US);
    println!(
        "  {label:<28} added p50 {a50:>6.0} µs (target <= {ADDED_P50_TARGET_US:.0}: {})   added p99 {a99:>6.0} µs (target <= {ADDED_P99_TARGET_US:.0}: {})",
        verdict(ok50),
        verdict(ok99)
    );
    (ok50, ok99)
}

/// `CONNS` loops of GET `url` for `TP_WARMUP + PHASE`; completed requests/s in PHASE.
async fn drive(http: &reqwest::Client, url: &str, auth: Option<&str>, len: usize) -> f64 {
    let counted = Arc::new(AtomicU64::new(0));
    let counting = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for _ in 0..CONNS {
        let (http, url, auth) = (http.clone(), url.to_string(), auth.map(str::to_string));
        let (counted, counting, stop) = (counted.clone(), counting.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                get(&http, &url, auth.as_deref(), Some(len)).await;
                if counting.load(Ordering::Relaxed) {
                    counted.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    tokio::time::sleep(TP_WARMUP).await;
    counting.store(true, Ordering::Relaxed);
    let t = Instant::now();
    tokio::time::sleep(PHASE).await;
    let n = counted.load(Ordering::Relaxed);
    let secs = t.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }
    n as f64 / secs
}

async fn get_len(http: &reqwest::Client, url: &str, token: &str) -> usize {
    http.get(url).bearer_auth(token).send().await.unwrap().bytes().await.unwrap().len()
}

async fn post(http: &reqwest::Client, url: &str, token: &str, body: Value) -> Value {
    let resp = http.post(url).bearer_auth(token).json(&body).send().await.unwrap();
    let status = resp.status();
    let text = resp.text().await.unwrap();
    assert!(status.is_success(), "POST {url}: {status} {text}");
    serde_json::from_str(&text).unwrap()
}

/// Mean and p50 (µs) of `n` runs of `f`.
fn time_n(n: usize, mut f: impl FnMut()) -> (f64, f64) {
    for _ in 0..n / 10 {
        f();
    }
    let mut v = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        f();
        v.push(t.elapsed());
    }
    let s = Series(v);
    (s.mean(), s.p50())
}

/// In-process costs of the steps of one proxy call (see the module comment).
fn breakdown(secret: &str, body: &str) {
    use credhost::crypto::MasterKey;
    use credhost::store::{AuditEntry, NewCredential, Outcome, Role, Store};
    use secrecy::SecretString;

    let base = option_env!("CARGO_TARGET_TMPDIR").map(std::path::PathBuf::from).unwrap_or_else(std::env::temp_dir);
    std::fs::create_dir_all(&base).unwrap();
    let dir = tempfile::tempdir_in(&base).unwrap();
    let store = Arc::new(Store::open(dir.path().join("store.redb"), MasterKey::generate().unwrap()).unwrap());
    let user = store.add_user("bench", "bench", Role::User).unwrap();
    let ns = user.namespace;
    let mut c = NewCredential::new("proxy-bench", "bearer_token");
    c.fields.insert("test_url".into(), "http://127.0.0.1:1/ping".into());
    c.secrets.insert("token".into(), SecretString::from(secret.to_string()));
    let cred = store.create_credential("bench", ns, c).unwrap();
    let id = cred.id;

    println!("breakdown, in process (mean / p50 µs per call):");
    let (m, p) = time_n(2000, || {
        std::hint::black_box(store.credential_for_use(ns, id).unwrap());
    });
    println!("  credential_for_use (read txn + decrypt)     {m:>7.1} / {p:>7.1}");
    let entry = || {
        let mut e = AuditEntry::ok("bench", "credential.use");
        e.namespace = Some(ns);
        e.credential = Some(id);
        e.outcome = Outcome::Ok;
        e.detail = "GET /v1/item status=200 ms=0 via=tok_0123456789abcdef".into();
        e
    };
    let (m, p) = time_n(2000, || {
        store.append_audit_lazy(entry()).unwrap();
    });
    println!("  append_audit_lazy (write txn, no fsync)    {m:>7.1} / {p:>7.1}");
    let n_threads = 4;
    let per = 1000;
    let t = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..n_threads {
            let store = store.clone();
            s.spawn(move || {
                for _ in 0..per {
                    store.append_audit_lazy(entry()).unwrap();
                }
            });
        }
    });
    let rate = (n_threads * per) as f64 / t.elapsed().as_secs_f64();
    println!("  append_audit_lazy, {n_threads} threads: {rate:.0} commits/s (a ceiling on proxied calls/s)");
    let (_, secrets) = store.credential_for_use(ns, id).unwrap();
    let (m, p) = time_n(2000, || {
        let sc = credhost::redact::Scrubber::new(secrets.values());
        let (out, _) = sc.scrub_capped(body, 8 * 1024 * 1024, false);
        std::hint::black_box((out, sc.scrub("application/json")));
    });
    println!("  Scrubber::new + scrub body + 1 header      {m:>7.1} / {p:>7.1}");

    // The hand-offs: an async handler -> spawn_blocking -> the blocking thread spawns on a
    // second runtime and blocks on a sync channel for the answer -> back.
    let api = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let io = Arc::new(tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap());
    let hops = api.block_on(async {
        let mut v = Vec::new();
        for i in 0..2200 {
            let io = io.clone();
            let t = Instant::now();
            tokio::spawn(async move {
                tokio::task::spawn_blocking(move || {
                    let (tx, rx) = std::sync::mpsc::sync_channel(1);
                    io.spawn(async move {
                        let _ = tx.send(());
                    });
                    rx.recv().unwrap()
                })
                .await
                .unwrap()
            })
            .await
            .unwrap();
            if i >= 200 {
                v.push(t.elapsed());
            }
        }
        Series(v)
    });
    println!("  thread hand-offs (spawn_blocking + I/O runtime + channel) {:>7.1} / {:>7.1}", hops.mean(), hops.p50());
    drop(api);
    if let Ok(io) = Arc::try_unwrap(io) {
        io.shutdown_background();
    }
}

fn main() {
    let started = Instant::now();
    let secret = server::random_alnum(40);
    let body = item_body();
    let body_len = body.len();
    let up = upstream(secret.clone(), body);

    let env = server::Env::new().set("CREDHOST_ALLOW_PRIVATE_NETWORKS", "true");
    let token = env.add_user("bench", false);
    let srv = env.start(&[]);

    let secret_kept = secret.clone();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let (ok50, ok99, ok_ratio) = rt.block_on(async move {
        let http = reqwest::Client::builder().pool_max_idle_per_host(CONNS).build().unwrap();

        let created = post(
            &http,
            &format!("{}/api/credentials", srv.base),
            &token,
            json!({"name": "proxy-bench", "type": "bearer_token",
                   "fields": {"token": secret, "test_url": format!("{up}/ping")}}),
        )
        .await;
        let id = created["id"].as_str().expect("credential id").to_string();
        let grant = post(&http, &format!("{}/api/credentials/{id}/grants", srv.base), &token, json!({"ttl_secs": 600})).await;
        let grant = grant["token"].as_str().expect("grant token").to_string();
        let budget = post(
            &http,
            &format!("{}/api/credentials/{id}/grants", srv.base),
            &token,
            json!({"ttl_secs": 600, "max_calls": 1_000_000}),
        )
        .await;
        let budget = budget["token"].as_str().expect("grant token").to_string();

        let direct_url = format!("{up}/v1/item");
        let proxy_url = format!("{}/api/credentials/{id}/proxy/v1/item", srv.base);
        let t = |name, url: &str, auth: Option<&str>, len| Target { name, url: url.to_string(), auth: auth.map(str::to_string), len };
        let direct = t("direct", &direct_url, Some(&secret), Some(body_len));
        let proxied = t("proxied (user token)", &proxy_url, Some(&token), Some(body_len));
        let healthz = t("credhost /healthz", &format!("{}/healthz", srv.base), None, None);
        let meta = t("credhost GET credential", &format!("{}/api/credentials/{id}", srv.base), Some(&token), None);
        let via_grant = t("proxied (grant)", &proxy_url, Some(&grant), Some(body_len));
        let via_budget = t("proxied (grant, max_calls)", &proxy_url, Some(&budget), Some(body_len));

        // 1. Latency, user token, with floors.
        let lat = latencies(&http, &[direct.clone(), proxied.clone(), healthz.clone(), meta.clone()], LAT_N, LAT_WARMUP).await;
        // 3. Grants: without a budget (interleaved with direct), then with one.
        let lat_grant = latencies(&http, &[direct.clone(), via_grant.clone()], LAT_N, LAT_WARMUP / 2).await;
        let lat_budget = latencies(&http, &[direct.clone(), via_budget.clone()], BUDGET_N, 20).await;

        // 2. Throughput, alternated phases.
        // The metadata GET (token check + store read, no upstream) as a floor, one phase.
        let meta_len = get_len(&http, &meta.url, &token).await;
        let (mut tp_direct, mut tp_proxy) = (0.0, 0.0);
        for _ in 0..ROUNDS {
            tp_direct += drive(&http, &direct_url, Some(&secret), body_len).await / ROUNDS as f64;
            tp_proxy += drive(&http, &proxy_url, Some(&token), body_len).await / ROUNDS as f64;
        }
        let tp_meta = drive(&http, &meta.url, Some(&token), meta_len).await;

        println!("proxy benchmark (issue 12): loopback, one run, {} cores visible", std::thread::available_parallelism().map_or(0, |n| n.get()));
        println!("response_bytes {body_len}");
        println!("latency, {LAT_N} sequential GETs each, interleaved:");
        for (s, tgt) in lat.iter().zip([&direct, &proxied, &healthz, &meta]) {
            print_series(tgt.name, s);
        }
        let (ok50, ok99) = print_added("proxied − direct", &lat[1], &lat[0]);
        println!(
            "  floors: /healthz − direct p50 {:.0} µs; GET credential − direct p50 {:.0} µs; proxied − GET credential p50 {:.0} µs",
            lat[2].p50() - lat[0].p50(),
            lat[3].p50() - lat[0].p50(),
            lat[1].p50() - lat[3].p50()
        );
        println!("throughput, {CONNS} connections, {:.1} s per side:", PHASE.as_secs_f64() * ROUNDS as f64);
        let ratio = tp_proxy / tp_direct;
        println!("  direct_per_s  {tp_direct:.0}");
        println!("  proxied_per_s {tp_proxy:.0}");
        println!("  credhost_get_credential_per_s {tp_meta:.0} (floor: one credhost hop, no upstream; {:.1} s)", PHASE.as_secs_f64());
        println!("  ratio {ratio:.2} (target >= {RATIO_TARGET:.2}: {})", verdict(ratio >= RATIO_TARGET));
        println!("grant token, {LAT_N} sequential GETs each, interleaved with direct:");
        print_series("direct", &lat_grant[0]);
        print_series(via_grant.name, &lat_grant[1]);
        print_added("grant − direct", &lat_grant[1], &lat_grant[0]);
        println!("grant token with max_calls (one durable write per call), {BUDGET_N} GETs:");
        print_series("direct", &lat_budget[0]);
        print_series(via_budget.name, &lat_budget[1]);
        print_added("grant+budget − direct", &lat_budget[1], &lat_budget[0]);
        (ok50, ok99, ratio >= RATIO_TARGET)
    });
    drop(rt);
    breakdown(&secret_kept, &item_body());
    println!(
        "summary: added p50 {}, added p99 {}, throughput ratio {} (total {:.1} s)",
        verdict(ok50),
        verdict(ok99),
        verdict(ok_ratio),
        started.elapsed().as_secs_f64()
    );
}
