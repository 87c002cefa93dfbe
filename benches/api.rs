//! HTTP API throughput, plain numbers (`cargo bench --bench api`), about 15 s in all.
//!
//! - `GET /api/credentials/{id}` requests/s against the real `credhost` binary (bearer
//!   auth, store read, JSON view) next to a bare axum handler that returns a fixed JSON
//!   body of the same size, both driven by the same client (reqwest, `CONNS` concurrent
//!   keep-alive connections over loopback) in the same run; the ratio (target >= 0.40);
//! - `POST /api/credentials` requests/s (type validation in the sandbox + one durable
//!   commit each) against the real binary, at `CONNS` connections and at 1 (interleaved),
//!   their ratio (group commit, issue 17: target >= 5) and create latency p50/p99 at both.
//!
//! Client and servers share this machine's cores, so absolute numbers understate the
//! server; the ratio is the comparable figure. Phases alternate to even out noise.

#[allow(dead_code)]
#[path = "../tests/common/server.rs"]
mod server;

#[allow(dead_code)]
#[path = "../tests/common/postgres.rs"]
mod postgres;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

const CONNS: usize = 16;
const PHASE: Duration = Duration::from_millis(2500);
const WARMUP: Duration = Duration::from_millis(300);
const ROUNDS: usize = 2;

/// Runs `CONNS` loops of `op` for `WARMUP + PHASE`; returns completed requests/s in PHASE.
async fn drive<F, Fut>(op: F) -> f64
where
    F: Fn(u64) -> Fut + Send + Sync + Clone + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    drive_timed(CONNS, op).await.0
}

/// Runs `conns` loops of `op` for `WARMUP + PHASE`; returns completed requests/s in PHASE
/// and the latency of each request completed in PHASE.
async fn drive_timed<F, Fut>(conns: usize, op: F) -> (f64, Vec<Duration>)
where
    F: Fn(u64) -> Fut + Send + Sync + Clone + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let counted = Arc::new(AtomicU64::new(0));
    let counting = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let seq = SEQ.clone();
    let mut tasks = Vec::new();
    for _ in 0..conns {
        let (op, counted, counting, stop, seq) = (op.clone(), counted.clone(), counting.clone(), stop.clone(), seq.clone());
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let t = Instant::now();
                op(seq.fetch_add(1, Ordering::Relaxed)).await;
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
        lat.extend(t.await.unwrap());
    }
    (n as f64 / secs, lat)
}

/// Request numbers shared by every phase (create names stay unique).
static SEQ: std::sync::LazyLock<Arc<AtomicU64>> = std::sync::LazyLock::new(|| Arc::new(AtomicU64::new(0)));

/// The `p` quantile of `lat`, in ms.
fn pct(lat: &mut [Duration], p: f64) -> f64 {
    lat.sort();
    lat.get(((lat.len().max(1) - 1) as f64 * p) as usize).map_or(0.0, |d| d.as_secs_f64() * 1e3)
}

/// A bare axum server on its own two-thread runtime returning `body` from one route.
fn bare_axum(body: Value) -> String {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        rt.block_on(async move {
            let body = Arc::new(body);
            let app = axum::Router::new().route(
                "/api/credentials/{id}",
                axum::routing::get(move || {
                    let body = body.clone();
                    async move { axum::Json((*body).clone()) }
                }),
            );
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            tx.send(listener.local_addr().unwrap()).unwrap();
            axum::serve(listener, app).await.unwrap();
        });
    });
    format!("http://{}", rx.recv().unwrap())
}

fn main() {
    let env = server::Env::new();
    let token = env.add_user("bench", false);
    let srv = env.start(&[]);
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(async move {
        let http = reqwest::Client::builder().pool_max_idle_per_host(CONNS).build().unwrap();
        let cred = |name: String| {
            json!({"name": name, "type": "bearer_token", "description": "benchmark credential",
                   "tags": ["bench"], "fields": {"token": server::random_alnum(40), "test_url": "https://api.example.com/v1/me"}})
        };
        let created: Value = http
            .post(format!("{}/api/credentials", srv.base))
            .bearer_auth(&token)
            .json(&cred("first".into()))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let real_url = format!("{}/api/credentials/{}", srv.base, created["id"].as_str().unwrap());
        let bare_url = format!("{}/api/credentials/{}", bare_axum(created.clone()), created["id"].as_str().unwrap());
        let body_len = serde_json::to_vec(&created).unwrap().len();

        let get = |url: String, auth: Option<String>| {
            let http = http.clone();
            move |_| {
                let (http, url, auth) = (http.clone(), url.clone(), auth.clone());
                async move {
                    let mut req = http.get(&url);
                    if let Some(t) = &auth {
                        req = req.bearer_auth(t);
                    }
                    let resp = req.send().await.unwrap();
                    assert_eq!(resp.status(), 200);
                    std::hint::black_box(resp.bytes().await.unwrap());
                }
            }
        };
        let (mut bare, mut real) = (0.0, 0.0);
        for _ in 0..ROUNDS {
            bare += drive(get(bare_url.clone(), None)).await / ROUNDS as f64;
            real += drive(get(real_url.clone(), Some(token.clone()))).await / ROUNDS as f64;
        }

        let create_url = format!("{}/api/credentials", srv.base);
        let create = {
            let (http, token) = (http.clone(), token.clone());
            move |i: u64| {
                let (http, url, token) = (http.clone(), create_url.clone(), token.clone());
                let body = cred(format!("bench-{i:08}"));
                async move {
                    let resp = http.post(&url).bearer_auth(&token).json(&body).send().await.unwrap();
                    assert_eq!(resp.status(), 201, "{}", resp.text().await.unwrap_or_default());
                }
            }
        };
        let (mut one, mut many) = ((0.0, Vec::new()), (0.0, Vec::new()));
        for _ in 0..ROUNDS {
            for (conns, acc) in [(1, &mut one), (CONNS, &mut many)] {
                let (rate, lat) = drive_timed(conns, create.clone()).await;
                acc.0 += rate / ROUNDS as f64;
                acc.1.extend(lat);
            }
        }

        println!("connections {CONNS}");
        println!("response_bytes {body_len}");
        println!("bare_axum_get_per_s {bare:.0}");
        println!("credhost_get_metadata_per_s {real:.0}");
        println!("credhost_vs_bare_ratio {:.2} (target >= 0.40)", real / bare);
        println!(
            "credhost_create_per_s {:.0} (p50 {:.2} ms, p99 {:.2} ms)",
            many.0,
            pct(&mut many.1, 0.5),
            pct(&mut many.1, 0.99)
        );
        println!(
            "credhost_create_1_conn_per_s {:.0} (p50 {:.2} ms, p99 {:.2} ms)",
            one.0,
            pct(&mut one.1, 0.5),
            pct(&mut one.1, 0.99)
        );
        println!("credhost_create_{CONNS}_vs_1_ratio {:.2} (target >= 5)", many.0 / one.0);
    });
}
