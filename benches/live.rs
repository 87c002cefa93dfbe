//! A live test through the sandbox vs the same HTTP call made directly
//! (`cargo bench --bench live`).
//!
//! One local HTTP server (axum on 127.0.0.1) answers `GET /bearer` with 200 for the
//! right token. Measured, interleaved in one run, 200 calls each after a warm-up:
//! - sandboxed: `Runtime::test` on the `bearer_token` built-in (fresh store, instantiate,
//!   guest builds the request, host fills in the secret, checks the allow-list and the
//!   address, sends with reqwest, scrubs the response, guest reads the verdict);
//! - direct: the same GET with the same header through one reqwest client.
//! Prints p50/p99 of each and the ratio.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, StatusCode};
use axum::routing::get;
use axum::Router;
use credhost::plugins::{Bound, HostServices, Registry, Runtime, TestStatus};
use secrecy::SecretString;

const CALLS: usize = 200;
const WARMUP: usize = 20;
const TOKEN: &str = "bench-token-0123456789abcdef";

fn pct(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

fn us(d: Duration) -> String {
    format!("{:.1} µs", d.as_secs_f64() * 1e6)
}

pub fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let port = rt.block_on(async {
        let app = Router::new().route(
            "/bearer",
            get(|h: HeaderMap| async move {
                let ok = h.get("authorization").is_some_and(|v| v.as_bytes() == format!("Bearer {TOKEN}").as_bytes());
                if ok { (StatusCode::OK, "{\"ok\":true}") } else { (StatusCode::UNAUTHORIZED, "{}") }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        port
    });
    let url = format!("http://127.0.0.1:{port}/bearer");

    let runtime = Runtime::new(HostServices { allow_private_networks: true }).expect("runtime");
    let registry = Registry::with_builtins(Arc::new(runtime)).expect("built-ins");
    let plugin = registry.get("bearer_token").expect("bearer_token");
    let bound = || {
        let mut b = Bound::default();
        b.fields.insert("test_url".into(), url.clone());
        b.fields.insert("header_name".into(), "Authorization".into());
        b.fields.insert("prefix".into(), "Bearer".into());
        b.secrets.insert("token".into(), SecretString::from(TOKEN.to_string()));
        b
    };
    let sandboxed = || {
        let t = Instant::now();
        let report = registry.runtime().test(&plugin, bound()).result.expect("test runs");
        assert_eq!(report.status, TestStatus::Valid, "{}", report.summary);
        t.elapsed()
    };
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let direct = || {
        let t = Instant::now();
        let status = rt.block_on(async {
            let r = client.get(&url).header("Authorization", format!("Bearer {TOKEN}")).send().await.unwrap();
            let status = r.status();
            let _ = r.bytes().await.unwrap();
            status
        });
        assert_eq!(status, 200);
        t.elapsed()
    };

    for _ in 0..WARMUP {
        sandboxed();
        direct();
    }
    let (mut s, mut d) = (Vec::with_capacity(CALLS), Vec::with_capacity(CALLS));
    for _ in 0..CALLS {
        s.push(sandboxed());
        d.push(direct());
    }
    s.sort();
    d.sort();
    let (s50, s99, d50, d99) = (pct(&s, 0.5), pct(&s, 0.99), pct(&d, 0.5), pct(&d, 0.99));
    println!("live test of a bearer token against a local HTTP server, {CALLS} calls each (interleaved):");
    println!("  sandboxed (Runtime::test, bearer_token): p50 {:>10}  p99 {:>10}", us(s50), us(s99));
    println!("  direct (reqwest, same request):          p50 {:>10}  p99 {:>10}", us(d50), us(d99));
    println!(
        "  ratio sandboxed/direct: p50 {:.2}x  p99 {:.2}x  (overhead p50 {})",
        s50.as_secs_f64() / d50.as_secs_f64(),
        s99.as_secs_f64() / d99.as_secs_f64(),
        us(s50.saturating_sub(d50))
    );
}
