//! Monitoring (issue 14): scheduled read-only re-tests, health, test history and expiry,
//! against the real binary over HTTP. Local services count the requests they get, so the
//! schedule, the rate budget and "never scheduled" are measured where they matter: at
//! the service. Intervals are seconds (config).

mod common;

use std::sync::atomic::{AtomicU16, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use axum::http::StatusCode;
use axum::Router;
use common::server::{random_alnum, Api, Env, LeakGuard, Server};
use serde_json::{json, Value};

/// A local service: answers every request with the current status and body, counts them.
#[derive(Clone)]
struct Service {
    status: Arc<AtomicU16>,
    body: Arc<Mutex<String>>,
    hits: Arc<AtomicUsize>,
    /// Request bodies, in order.
    seen: Arc<Mutex<Vec<String>>>,
    url: String,
}

impl Service {
    async fn start() -> Service {
        let status = Arc::new(AtomicU16::new(200));
        let body = Arc::new(Mutex::new(String::from("ok")));
        let hits = Arc::new(AtomicUsize::new(0));
        let (s, b, h) = (status.clone(), body.clone(), hits.clone());
        let seen = Arc::new(Mutex::new(Vec::new()));
        let got = seen.clone();
        let app = Router::new().fallback(move |request: String| {
            let (s, b, h, got) = (s.clone(), b.clone(), h.clone(), got.clone());
            async move {
                h.fetch_add(1, Ordering::SeqCst);
                got.lock().unwrap().push(request);
                (StatusCode::from_u16(s.load(Ordering::SeqCst)).unwrap(), b.lock().unwrap().clone())
            }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Service { status, body, hits, seen, url: format!("http://127.0.0.1:{port}") }
    }

    fn answer(&self, status: u16) {
        self.status.store(status, Ordering::SeqCst);
    }

    fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

/// An env whose server runs `[monitor]` with `monitor` (TOML lines) and may reach local
/// services; `plugins`: a plugin dir to use.
fn env_with(monitor: &str, plugins: Option<&std::path::Path>) -> (Env, String) {
    let env = Env::new().set("CREDHOST_ALLOW_PRIVATE_NETWORKS", "true");
    let config = env.dir.path().join("credhost.toml");
    let mut text = format!("[monitor]\n{monitor}\n");
    if let Some(dir) = plugins {
        text = format!("[plugins]\ndir = {:?}\n\n{text}", dir.to_str().unwrap());
    }
    std::fs::write(&config, text).unwrap();
    (env, config.to_str().unwrap().to_string())
}

fn start(env: &Env, config: &str) -> Server {
    env.start(&["--config", config])
}

/// Installs the hostile fixture (its `report` mode is a well-behaved test: status →
/// verdict, body `key=value` lines → facts) with `http` towards its `target_url`.
fn install_reporter(dir: &std::path::Path, read_only: bool) {
    use sha2::Digest;
    std::fs::create_dir_all(dir).unwrap();
    let wasm = std::fs::read(common::guest_dir().join("hostile.wasm")).expect("hostile.wasm built by build.rs");
    let sha: String = sha2::Sha256::digest(&wasm).iter().map(|b| format!("{b:02x}")).collect();
    let manifest = format!(
        "sha256 = \"{sha}\"\nid = \"hostile\"\nversion = \"0.1.0\"\ncapabilities = [\"log\", \"http\"]\nreveal = []\n\
         allowed_hosts = [\"field:target_url\"]\ntest_read_only = {read_only}\n\n[limits]\nmemory_mib = 16\n"
    );
    std::fs::write(dir.join("hostile.wasm"), wasm).unwrap();
    std::fs::write(dir.join("hostile.toml"), manifest).unwrap();
}

async fn bearer(api: &Api, token: &str, guard: &LeakGuard, name: &str, url: &str, monitor: Option<Value>) -> Value {
    let secret = guard.secret(format!("tok_{}", random_alnum(24)));
    let mut body = json!({"name": name, "type": "bearer_token", "fields": {"token": secret, "test_url": url}});
    if let Some(m) = monitor {
        body["monitor"] = m;
    }
    let r = api.post("/api/credentials", Some(token), body).await;
    r.expect(201);
    r.json()
}

async fn reporter(api: &Api, token: &str, guard: &LeakGuard, name: &str, url: &str) -> Value {
    let secret = guard.secret(format!("sec_{}", random_alnum(24)));
    let body = json!({"name": name, "type": "hostile", "fields": {"mode": "report", "secret": secret, "target_url": url}});
    let r = api.post("/api/credentials", Some(token), body).await;
    r.expect(201);
    r.json()
}

fn id(v: &Value) -> String {
    v["id"].as_str().unwrap().to_string()
}

async fn get(api: &Api, token: &str, id: &str) -> Value {
    let r = api.get(&format!("/api/credentials/{id}"), Some(token)).await;
    r.expect(200);
    r.json()
}

async fn history(api: &Api, token: &str, id: &str) -> Vec<Value> {
    let r = api.get(&format!("/api/credentials/{id}/tests"), Some(token)).await;
    r.expect(200);
    r.json()["items"].as_array().unwrap().clone()
}

/// Polls the credential until its health is `want` (panics after `within`).
async fn wait_health(api: &Api, token: &str, id: &str, want: &str, within: Duration) -> Value {
    let deadline = Instant::now() + within;
    loop {
        let c = get(api, token, id).await;
        if c["health"] == want {
            return c;
        }
        assert!(Instant::now() < deadline, "health did not become {want} within {within:?}: {c}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn names_with(api: &Api, token: &str, query: &str) -> Vec<String> {
    let r = api.get(&format!("/api/credentials?{query}"), Some(token)).await;
    r.expect(200);
    r.json()["items"].as_array().unwrap().iter().map(|c| c["name"].as_str().unwrap().to_string()).collect()
}

fn rfc3339_in(secs: i64) -> String {
    let now = SystemTime::now();
    let t = if secs >= 0 { now + Duration::from_secs(secs as u64) } else { now - Duration::from_secs((-secs) as u64) };
    humantime::format_rfc3339_seconds(t).to_string()
}

async fn metric(api: &Api, name_and_labels: &str) -> f64 {
    let r = api.get("/metrics", None).await;
    r.expect(200);
    r.text
        .lines()
        .find(|l| l.starts_with(name_and_labels))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

/// valid → 401 → valid at the service: the scheduler sees each change, health follows,
/// the history shows the scheduled tests newest first, and the list filters agree.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_follows_the_service_through_scheduled_tests() {
    let svc = Service::start().await;
    let (env, config) = env_with("interval_secs = 1\njitter_pct = 0\nrate_per_minute = 1000", None);
    let alice = env.add_user("alice", false);
    let mut server = start(&env, &config);
    let guard = LeakGuard::new();
    let api = server.api(&guard);

    // Health changes are events: a webhook receiver subscribed to them sees each.
    let receiver = Service::start().await;
    let r = api
        .post("/api/webhooks", Some(&alice), json!({"url": format!("{}/hook", receiver.url), "events": ["credential.health_changed"]}))
        .await;
    r.expect(201);
    let c = bearer(&api, &alice, &guard, "watched", &format!("{}/me", svc.url), None).await;
    let cid = id(&c);
    assert_eq!(c["health"], "untested");
    assert!(c["next_test_at"].is_string(), "a schedulable credential has a due time: {c}");
    assert_eq!(c["monitor"], json!({"enabled": true, "interval_secs": null}));

    wait_health(&api, &alice, &cid, "valid", Duration::from_secs(15)).await;
    svc.answer(401);
    let c = wait_health(&api, &alice, &cid, "invalid", Duration::from_secs(15)).await;
    assert_eq!(c["last_test"]["status"], "invalid");
    assert_eq!(names_with(&api, &alice, "health=invalid").await, ["watched"]);
    assert_eq!(names_with(&api, &alice, "status=invalid").await, ["watched"], "the status filter still works");
    assert!(names_with(&api, &alice, "health=valid").await.is_empty());
    svc.answer(200);
    wait_health(&api, &alice, &cid, "valid", Duration::from_secs(15)).await;
    // valid -> invalid and back: two events, both naming the credential and the trigger;
    // the first test's untested -> valid is not one.
    let deadline = Instant::now() + Duration::from_secs(30);
    let events = loop {
        let events: Vec<Value> = receiver
            .seen
            .lock()
            .unwrap()
            .iter()
            .filter_map(|b| serde_json::from_str::<Value>(b).ok())
            .filter(|e| e["type"] == "credential.health_changed")
            .collect();
        if events.len() >= 2 || Instant::now() > deadline {
            break events;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    let moves: Vec<(String, String)> =
        events.iter().map(|e| (e["data"]["from"].as_str().unwrap().into(), e["data"]["to"].as_str().unwrap().into())).collect();
    assert_eq!(moves, [("valid".to_string(), "invalid".to_string()), ("invalid".into(), "valid".into())], "{events:?}");
    for e in &events {
        assert_eq!(e["data"]["credential"]["id"], cid.as_str());
        assert_eq!(e["data"]["credential"]["name"], "watched");
        assert_eq!(e["data"]["trigger"], "scheduled");
    }

    let items = history(&api, &alice, &cid).await;
    assert!(items.len() >= 3, "{items:?}");
    assert!(items.iter().all(|t| t["trigger"] == "scheduled"), "{items:?}");
    let at: Vec<&str> = items.iter().map(|t| t["at"].as_str().unwrap()).collect();
    let mut sorted = at.clone();
    sorted.sort_by(|a, b| b.cmp(a));
    assert_eq!(at, sorted, "newest first");
    assert_eq!(items[0]["status"], "valid");
    assert!(items.iter().any(|t| t["status"] == "invalid" && t["ok"] == false && t["facts"]["http_status"] == "401"), "{items:?}");
    assert!(items[0]["latency_ms"].is_u64());

    // A manual test is in the history too, with its trigger.
    api.post_empty(&format!("/api/credentials/{cid}/test"), Some(&alice)).await.expect(200);
    let items = history(&api, &alice, &cid).await;
    assert!(items.iter().any(|t| t["trigger"] == "manual"), "{items:?}");

    // Metrics: scheduled tests by outcome; credentials by type and health (after a sweep).
    assert!(metric(&api, "credhost_scheduled_tests_total{outcome=\"valid\"}").await >= 2.0);
    assert!(metric(&api, "credhost_scheduled_tests_total{outcome=\"invalid\"}").await >= 1.0);
    tokio::time::sleep(Duration::from_secs(6)).await;
    let gauge = metric(&api, "credhost_credentials{type=\"bearer_token\",health=\"valid\"}").await
        + metric(&api, "credhost_credentials{health=\"valid\",type=\"bearer_token\"}").await;
    assert_eq!(gauge, 1.0);

    // History is capped (default 20) and purge removes it with the credential.
    let deadline = Instant::now() + Duration::from_secs(40);
    while history(&api, &alice, &cid).await.len() < 20 {
        assert!(Instant::now() < deadline, "history did not fill up");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(history(&api, &alice, &cid).await.len(), 20, "oldest dropped beyond the cap");
    // Audit: scheduled tests are recorded with the scheduler as actor.
    let audit = api.get(&format!("/api/audit?credential={cid}&action=credential.test"), Some(&alice)).await;
    audit.expect(200);
    assert!(audit.json()["items"].as_array().unwrap().iter().any(|r| r["actor"] == "scheduler"), "{}", audit.text);
    api.delete(&format!("/api/credentials/{cid}?purge=true"), Some(&alice)).await.expect(204);
    api.get(&format!("/api/credentials/{cid}/tests"), Some(&alice)).await.expect_error(404, "not_found");
    let before = svc.hits();
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(svc.hits(), before, "a purged credential is not tested");

    server.stop();
    guard.check("server log", &server.stderr());
}

/// Several credentials towards one destination host, each due every second: the service
/// sees no more than `rate_per_minute` scheduled tests in a minute; the rest are deferred
/// (counted), not dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rate_budget_per_destination_is_respected() {
    let svc = Service::start().await;
    let (env, config) = env_with("interval_secs = 1\njitter_pct = 0\nrate_per_minute = 3\nmax_concurrent = 2", None);
    let alice = env.add_user("alice", false);
    let mut server = start(&env, &config);
    let guard = LeakGuard::new();
    let api = server.api(&guard);
    let mut ids = Vec::new();
    for i in 0..4 {
        ids.push(id(&bearer(&api, &alice, &guard, &format!("c{i}"), &format!("{}/path{i}", svc.url), None).await));
    }
    tokio::time::sleep(Duration::from_secs(10)).await;
    let hits = svc.hits();
    assert_eq!(hits, 3, "4 credentials due every second, budget 3 per minute: {hits} requests");
    assert!(metric(&api, "credhost_scheduled_test_deferrals_total{reason=\"rate_budget\"}").await >= 1.0);
    // Deferred, not dropped: every one still has a due time.
    for cid in &ids {
        assert!(get(&api, &alice, cid).await["next_test_at"].is_string());
    }
    server.stop();
}

/// A type whose test is not read-only is never scheduled (0 requests at its service); an
/// owner's "off" holds until they turn it back on; a type the operator turned off stays off.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_read_only_types_and_enabled_credentials_are_scheduled() {
    let writer = Service::start().await;
    let off = Service::start().await;
    let control = Service::start().await;
    let typed_off = Service::start().await;
    let plugins = tempfile::tempdir().unwrap();
    install_reporter(plugins.path(), false);
    let (env, config) = env_with(
        "interval_secs = 1\njitter_pct = 0\nrate_per_minute = 1000\n[monitor.types.api_key]\ninterval_secs = 0",
        Some(plugins.path()),
    );
    let alice = env.add_user("alice", false);
    let mut server = start(&env, &config);
    let guard = LeakGuard::new();
    let api = server.api(&guard);

    let w = reporter(&api, &alice, &guard, "writer", &writer.url).await;
    assert!(w["next_test_at"].is_null(), "{w}");
    let o = bearer(&api, &alice, &guard, "off", &off.url, Some(json!({"enabled": false}))).await;
    assert!(o["next_test_at"].is_null(), "{o}");
    assert_eq!(o["monitor"]["enabled"], false);
    bearer(&api, &alice, &guard, "control", &control.url, None).await;
    let k = api
        .post(
            "/api/credentials",
            Some(&alice),
            json!({"name": "typed-off", "type": "api_key",
                   "fields": {"key": guard.secret(random_alnum(24)), "test_url": typed_off.url.clone()}}),
        )
        .await;
    k.expect(201);
    assert!(k.json()["next_test_at"].is_null(), "{}", k.text);

    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(control.hits() >= 2, "the scheduler runs: {} tests of the control", control.hits());
    assert_eq!(writer.hits(), 0, "a non-read-only type was tested on a schedule");
    assert_eq!(off.hits(), 0, "a credential turned off was tested on a schedule");
    assert_eq!(typed_off.hits(), 0, "a type turned off was tested on a schedule");
    // A manual test of the non-read-only type still works (the owner asked).
    api.post_empty(&format!("/api/credentials/{}/test", id(&w)), Some(&alice)).await.expect(200);
    assert_eq!(writer.hits(), 1);

    // Bad per-credential values: 422 naming the field, nothing changed.
    let r = api.patch(&format!("/api/credentials/{}", id(&o)), Some(&alice), json!({"monitor": {"interval_secs": 0}})).await;
    let body = r.expect_error(422, "invalid_fields");
    assert_eq!(body["error"]["fields"][0]["field"], "monitor.interval_secs", "{body}");
    assert_eq!(get(&api, &alice, &id(&o)).await["monitor"]["enabled"], false);

    // Turned back on with its own interval: scheduled, then tested.
    let r = api.patch(&format!("/api/credentials/{}", id(&o)), Some(&alice), json!({"monitor": {"interval_secs": 1}})).await;
    r.expect(200);
    assert!(r.json()["next_test_at"].is_string(), "{}", r.text);
    assert_eq!(r.json()["monitor"], json!({"enabled": true, "interval_secs": 1}));
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert!(off.hits() >= 1, "re-enabled credential was not tested");

    // Soft-deleted: not tested; restored: scheduled again.
    api.delete(&format!("/api/credentials/{}", id(&o)), Some(&alice)).await.expect(204);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let before = off.hits();
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(off.hits(), before, "a deleted credential was tested");
    let r = api.post_empty(&format!("/api/credentials/{}/restore", id(&o)), Some(&alice)).await;
    r.expect(200);
    assert!(r.json()["next_test_at"].is_string(), "{}", r.text);
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert!(off.hits() > before, "a restored credential was not tested again");
    server.stop();
}

/// Due times are in the store: after kill -9 and a restart every credential keeps its
/// `next_test_at`, and nothing is tested before it (no burst).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn due_times_survive_a_kill_and_a_restart_does_not_burst() {
    let svc = Service::start().await;
    let (env, config) = env_with("interval_secs = 40\njitter_pct = 10", None);
    let alice = env.add_user("alice", false);
    let server = start(&env, &config);
    let guard = LeakGuard::new();
    let api = server.api(&guard);
    let mut due = Vec::new();
    for i in 0..5 {
        let c = bearer(&api, &alice, &guard, &format!("k{i}"), &format!("{}/k{i}", svc.url), None).await;
        due.push((id(&c), c["next_test_at"].as_str().unwrap().to_string()));
    }
    server.signal("KILL");
    drop(server);
    let server = start(&env, &config);
    let api = server.api(&guard);
    for (cid, at) in &due {
        assert_eq!(get(&api, &alice, cid).await["next_test_at"].as_str().unwrap(), at, "due time kept across kill -9");
    }
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(svc.hits(), 0, "tests ran before their due time after a restart");
    for (cid, at) in &due {
        assert_eq!(get(&api, &alice, cid).await["next_test_at"].as_str().unwrap(), at);
    }
}

/// A test reporting `expires_at`: within the warning window the credential is
/// `expiring` (the expiry shown), past it `invalid` without another test; far off, `valid`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reported_expiry_makes_a_credential_expiring_then_invalid() {
    let soon = Service::start().await;
    let later = Service::start().await;
    let gone = Service::start().await;
    let plugins = tempfile::tempdir().unwrap();
    install_reporter(plugins.path(), true);
    let (env, config) = env_with("interval_secs = 3600\nexpiry_warning_secs = 3600", Some(plugins.path()));
    let alice = env.add_user("alice", false);
    let mut server = start(&env, &config);
    let guard = LeakGuard::new();
    let api = server.api(&guard);

    let receiver = Service::start().await;
    let r = api
        .post("/api/webhooks", Some(&alice), json!({"url": format!("{}/hook", receiver.url), "events": ["credential.health_changed"]}))
        .await;
    r.expect(201);
    *soon.body.lock().unwrap() = format!("expires_at={}\nplan=basic", rfc3339_in(6));
    *later.body.lock().unwrap() = format!("expires_at={}", rfc3339_in(30 * 24 * 3600));
    *gone.body.lock().unwrap() = format!("expires_at={}", rfc3339_in(-60));
    let s = reporter(&api, &alice, &guard, "soon", &soon.url).await;
    let l = reporter(&api, &alice, &guard, "later", &later.url).await;
    let g = reporter(&api, &alice, &guard, "gone", &gone.url).await;
    assert!(s["next_test_at"].is_string(), "a read-only type is scheduled: {s}");
    for c in [&s, &l, &g] {
        api.post_empty(&format!("/api/credentials/{}/test", id(c)), Some(&alice)).await.expect(200);
    }
    let sv = get(&api, &alice, &id(&s)).await;
    assert_eq!(sv["health"], "expiring", "{sv}");
    assert!(sv["expires_at"].is_string(), "{sv}");
    assert_eq!(sv["last_test"]["status"], "valid");
    assert_eq!(get(&api, &alice, &id(&l)).await["health"], "valid");
    assert_eq!(get(&api, &alice, &id(&g)).await["health"], "invalid", "past its expiry");
    assert_eq!(names_with(&api, &alice, "health=expiring").await, ["soon"]);
    assert_eq!(names_with(&api, &alice, "health=invalid").await, ["gone"]);
    let h = history(&api, &alice, &id(&s)).await;
    assert_eq!(h[0]["facts"]["plan"], "basic", "{h:?}");

    // Time alone moves it: past the expiry, invalid without a new test.
    wait_health(&api, &alice, &id(&s), "invalid", Duration::from_secs(15)).await;
    assert_eq!(history(&api, &alice, &id(&s)).await.len(), 1, "no test was needed");
    let mut names = names_with(&api, &alice, "health=invalid").await;
    names.sort();
    assert_eq!(names, ["gone", "soon"]);
    // The scheduler's sweep noticed the crossing and told: soon went expiring, then invalid.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let moves: Vec<(String, String)> = receiver
            .seen
            .lock()
            .unwrap()
            .iter()
            .filter_map(|b| serde_json::from_str::<Value>(b).ok())
            .filter(|e| e["data"]["credential"]["name"] == "soon")
            .map(|e| (e["data"]["from"].as_str().unwrap_or("").to_string(), e["data"]["to"].as_str().unwrap_or("").to_string()))
            .collect();
        if moves.len() >= 2 {
            assert_eq!(moves, [("untested".to_string(), "expiring".to_string()), ("expiring".into(), "invalid".into())]);
            break;
        }
        assert!(Instant::now() < deadline, "expiry events missing: {moves:?}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }

    // Bad filter value: a 422 naming the parameter.
    let r = api.get("/api/credentials?health=bogus", Some(&alice)).await;
    let body = r.expect_error(422, "invalid_fields");
    assert_eq!(body["error"]["fields"][0]["field"], "health");
    server.stop();
    guard.check("server log", &server.stderr());
}

/// Bad `[monitor]` values stop the server before it listens, naming the key and value.
#[test]
fn bad_monitor_config_is_refused_with_the_key_named() {
    for (text, key) in [
        ("interval_secs = 0", "interval_secs: 0"),
        ("jitter_pct = 90", "jitter_pct: 90"),
        ("max_concurrent = 0", "max_concurrent: 0"),
        ("rate_per_minute = 0", "rate_per_minute: 0"),
        ("history = 0", "history: 0"),
        ("[types.bearer_token]\ninterval_secs = 99999999999", "[monitor.types.bearer_token] interval_secs"),
        ("intervall_secs = 5", "intervall_secs"),
    ] {
        let text = if text.starts_with("[types.") { text.replace("[types.", "[monitor.types.") } else { text.to_string() };
        let (env, config) = env_with(&text, None);
        let mut s = env.spawn(&["--config", &config]);
        let status = s.wait_exit(Duration::from_secs(60)).expect("the server should refuse the config");
        assert!(!status.success());
        let err = s.stderr();
        assert!(err.contains(key), "error for {text:?} does not name {key:?}:\n{err}");
        assert!(!s.stdout().iter().any(|l| l.starts_with("listening on")), "listened with a bad config");
    }
}

/// A service that cannot answer (503: `indeterminate`) is tested less and less often:
/// the interval doubles per consecutive indeterminate, up to `backoff_max_secs`; a
/// decisive answer resets it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn indeterminate_backs_off() {
    let svc = Service::start().await;
    svc.answer(503);
    let (env, config) = env_with("interval_secs = 1\njitter_pct = 0\nrate_per_minute = 1000\nbackoff_max_secs = 4", None);
    let alice = env.add_user("alice", false);
    let mut server = start(&env, &config);
    let guard = LeakGuard::new();
    let api = server.api(&guard);
    let c = bearer(&api, &alice, &guard, "flaky", &svc.url, None).await;
    let cid = id(&c);
    tokio::time::sleep(Duration::from_secs(12)).await;
    // Without backoff about 12 tests; with it at 1, 3, 7, 11 s (gaps 2, 4, 4).
    let hits = svc.hits();
    assert!((3..=5).contains(&hits), "{hits} tests in 12 s");
    let items = history(&api, &alice, &cid).await;
    assert!(items.iter().all(|t| t["status"] == "indeterminate"), "{items:?}");
    let c = get(&api, &alice, &cid).await;
    assert_eq!(c["health"], "indeterminate");
    let gap = |a: &Value, b: &Value| {
        let t = |v: &Value| humantime::parse_rfc3339(v.as_str().unwrap()).unwrap();
        t(a).duration_since(t(b)).unwrap().as_secs_f64()
    };
    assert!(gap(&c["next_test_at"], &c["last_test"]["at"]) > 3.5, "capped backoff: {c}");
    // A decisive answer resets it: tested every second again.
    svc.answer(200);
    wait_health(&api, &alice, &cid, "valid", Duration::from_secs(10)).await;
    let before = svc.hits();
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert!(svc.hits() - before >= 3, "interval not reset after a valid test");
    server.stop();
}

/// A sweep reads credentials a step (1,000) at a time: with more credentials than one
/// step holds, the credentials-by-health gauge still counts every one once (each step's
/// counts are added up over the whole sweep, not replaced).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sweep_over_several_steps_counts_every_credential() {
    let (env, config) = env_with("enabled = false", None);
    let alice = env.add_user("alice", false);
    let mut server = start(&env, &config);
    let guard = LeakGuard::new();
    let api = server.api(&guard);
    let n = credhost::service::monitor::SWEEP_STEP + 50;
    for i in 0..n {
        bearer(&api, &alice, &guard, &format!("c{i:04}"), "https://api.example.com/v1/me", None).await;
    }
    let untested = || async {
        metric(&api, "credhost_credentials{type=\"bearer_token\",health=\"untested\"}").await
            + metric(&api, "credhost_credentials{health=\"untested\",type=\"bearer_token\"}").await
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let seen = untested().await;
        if seen == n as f64 {
            break;
        }
        assert!(Instant::now() < deadline, "the gauge shows {seen} of {n} credentials");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    server.stop();
}
