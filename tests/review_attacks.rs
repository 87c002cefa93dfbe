//! Security review of the issue-13 surfaces (plugin stderr, own-token API, audit filters
//! and cursors, probes, metrics, reload). Every test asserts the SAFE behaviour: a failing
//! test shows a real defect. The real binary, driven over HTTP.

mod common;

use std::time::Duration;

use common::server::{random_alnum, Api, Env, LeakGuard, Server};
use serde_json::{json, Value};

struct World {
    env: Env,
    server: Server,
    guard: std::sync::Arc<LeakGuard>,
    alice: String,
    bob: String,
    admin: String,
}

impl World {
    fn start() -> World {
        let env0 = Env::new();
        let plugins = env0.dir.path().join("plugins.d");
        common::install_hostile(&plugins);
        let config = env0.dir.path().join("credhost.toml");
        std::fs::write(&config, "[server]\n").unwrap();
        let env = env0.set("CREDHOST_PLUGINS_DIR", plugins.to_str().unwrap());
        let cfg = config.to_str().unwrap().to_string();
        let alice = env.add_user_in(Some(&cfg), "alice", false);
        let bob = env.add_user_in(Some(&cfg), "bob", false);
        let admin = env.add_user_in(Some(&cfg), "ops", true);
        let server = env.start(&["--config", &cfg]);
        World { env, server, guard: LeakGuard::new(), alice, bob, admin }
    }

    fn api(&self) -> Api {
        self.server.api(&self.guard)
    }

    fn config(&self) -> std::path::PathBuf {
        self.env.dir.path().join("credhost.toml")
    }
}

/// Waits until the server has written its stderr log lines for a finished call.
async fn settle() {
    tokio::time::sleep(Duration::from_millis(300)).await;
}

#[track_caller]
fn assert_absent(what: &str, text: &str, parts: &[&str]) {
    for p in parts {
        assert!(!text.contains(p), "{what} contains part of a secret ({}…):\n{text}", &p[..8]);
    }
}

/// A multi-line secret (a PEM private key, say) printed to stderr by a plugin: the host
/// splits stderr into lines and scrubs each line on its own, so no line holds the whole
/// secret and nothing is redacted. Safe behaviour: no line of the key's body is logged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plugin_stderr_does_not_log_a_multiline_secret() {
    let w = World::start();
    let api = w.api();
    let (l1, l2) = (format!("MIIEv{}", random_alnum(40)), format!("QkFB{}", random_alnum(40)));
    let secret = format!("-----BEGIN PRIVATE KEY-----\n{l1}\n{l2}\n-----END PRIVATE KEY-----");
    let r = api
        .post("/api/credentials", Some(&w.alice), json!({"name": "pem", "type": "hostile", "fields": {"mode": "stderr", "secret": secret}}))
        .await;
    assert_absent("the create response", &r.text, &[&l1, &l2]);
    settle().await;
    let log = w.server.stderr();
    assert!(log.contains("hostile stderr"), "the plugin's stderr was logged at all:\n{log}");
    assert_absent("the server log", &log, &[&l1, &l2]);
}

/// A secret sent with a trailing newline (read from a file, pasted) and printed by the
/// plugin as is: the newline ends the stderr line, so the line holds the secret without
/// it and the scrubber (which looks for `secret\n`) does not match.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plugin_stderr_does_not_log_a_secret_with_a_trailing_newline() {
    let w = World::start();
    let api = w.api();
    let core = format!("Tn-{}", random_alnum(32));
    let r = api
        .post(
            "/api/credentials",
            Some(&w.alice),
            json!({"name": "nl", "type": "hostile", "fields": {"mode": "stderr", "secret": format!("{core}\n")}}),
        )
        .await;
    assert_absent("the create response", &r.text, &[&core]);
    settle().await;
    let log = w.server.stderr();
    assert!(log.contains("hostile stderr"), "the plugin's stderr was logged at all:\n{log}");
    assert_absent("the server log", &log, &[&core]);
}

/// Control: a one-line secret printed to stderr is scrubbed (this is what the existing
/// tests cover; it passes).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plugin_stderr_scrubs_a_one_line_secret() {
    let w = World::start();
    let api = w.api();
    let secret = format!("Ol-{}", random_alnum(32));
    let r = api
        .post("/api/credentials", Some(&w.alice), json!({"name": "one", "type": "hostile", "fields": {"mode": "stderr", "secret": secret}}))
        .await;
    r.expect(201);
    settle().await;
    let log = w.server.stderr();
    assert!(log.contains("hostile stderr"), "the plugin's stderr was logged at all:\n{log}");
    assert_absent("the server log", &log, &[&secret]);
}

/// A plugin reload re-reads the config file. A `[[credentials]]` entry with a secret
/// literal written by mistake and not quoted (a TOML syntax error) makes the reload fail;
/// the TOML error quotes the offending line. `check-config` never quotes `[[credentials]]`
/// values for this reason; the reload must not either: not in the 409 answer to the admin,
/// not in the (permanent, chained) audit record, not in the server log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_reload_does_not_quote_a_secret_from_the_config() {
    let w = World::start();
    let api = w.api();
    let secret = format!("ghp_{}", random_alnum(36));
    let config = format!(
        "[server]\n\n[[users]]\nname = \"alice\"\n\n[[credentials]]\nuser = \"alice\"\nname = \"gh\"\ntype = \"bearer_token\"\n\
         fields = {{ token = {secret} }}\n"
    );
    std::fs::write(w.config(), config).unwrap();
    let r = api.post_empty("/api/admin/plugins/reload", Some(&w.admin)).await;
    assert_eq!(r.status, 409, "the reload is refused: {}", r.text);
    let audit = api.get("/api/audit?all=true&action=plugins.reload", Some(&w.admin)).await;
    audit.expect(200);
    settle().await;
    let log = w.server.stderr();
    let leaks: Vec<&str> = [("the reload's 409 answer", &r.text), ("the audit log (GET /api/audit)", &audit.text), ("the server log", &log)]
        .into_iter()
        .filter(|(_, text)| text.contains(&secret))
        .map(|(what, _)| what)
        .collect();
    assert!(leaks.is_empty(), "the config's secret literal is quoted in: {leaks:?}\nanswer: {}\naudit: {}", r.text, audit.text);
}

/// Own-token API: another user's token id is 404 and stays usable; the listing shows
/// only the caller's tokens.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_cannot_list_or_revoke_another_users_tokens() {
    let w = World::start();
    let api = w.api();
    let bobs = api.get("/api/tokens", Some(&w.bob)).await.json();
    let bob_id = bobs.as_array().unwrap()[0]["id"].as_str().unwrap().to_string();
    let alices = api.get("/api/tokens", Some(&w.alice)).await.json();
    assert!(alices.as_array().unwrap().iter().all(|t| t["user"] == "alice"), "{alices}");
    api.delete(&format!("/api/tokens/{bob_id}"), Some(&w.alice)).await.expect_error(404, "not_found");
    api.get("/api/tokens", Some(&w.bob)).await.expect(200);
    // Admin routes are refused to a user.
    api.get("/api/admin/tokens", Some(&w.alice)).await.expect(403);
    api.get("/api/admin/users", Some(&w.alice)).await.expect(403);
}

/// Probes and audit: a user probing another's id sees no record; the owner sees none of
/// the prober's; cursors and filters stay in the caller's namespace.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_filters_and_cursors_stay_in_the_callers_namespace() {
    let w = World::start();
    let api = w.api();
    let c = api
        .post("/api/credentials", Some(&w.bob), json!({"name": "b", "type": "bearer_token", "fields": {"token": format!("Bb-{}", random_alnum(30))}}))
        .await;
    c.expect(201);
    let bid = c.json()["id"].as_str().unwrap().to_string();
    for _ in 0..3 {
        api.get(&format!("/api/credentials/{bid}"), Some(&w.alice)).await.expect(404);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mine = api.get("/api/audit?limit=1000", Some(&w.alice)).await.json();
    assert!(!mine.to_string().contains(&bid), "alice's audit names bob's credential: {mine}");
    let by_cred = api.get(&format!("/api/audit?credential={bid}"), Some(&w.alice)).await.json();
    assert_eq!(by_cred["items"].as_array().unwrap().len(), 0, "{by_cred}");
    let sec = api.get("/api/audit?action=security.*", Some(&w.alice)).await.json();
    assert_eq!(sec["items"].as_array().unwrap().len(), 0, "{sec}");
    // A cursor of bob's (a seq beyond everything) shows alice nothing of bob's.
    let cursor = base64::Engine::encode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, "seq:18446744073709551615");
    let page = api.get(&format!("/api/audit?limit=1000&cursor={cursor}"), Some(&w.alice)).await.json();
    for item in page["items"].as_array().unwrap() {
        assert_ne!(item["actor"], "bob", "{item}");
    }
    // Another user's records need admin.
    api.get("/api/audit?user=bob", Some(&w.alice)).await.expect(403);
    api.get("/api/audit?all=true", Some(&w.alice)).await.expect(403);
    // The admin sees the probes.
    let all = api.get("/api/audit?all=true&action=security.probe&limit=1000", Some(&w.admin)).await.json();
    assert!(all["items"].as_array().unwrap().len() >= 3, "{all}");
}

/// Metrics labels are route patterns: a flood of distinct paths and methods does not add
/// series, and no path text shows in the exposition.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_labels_do_not_follow_user_controlled_paths() {
    let w = World::start();
    let api = w.api();
    let marker = format!("zq{}", random_alnum(12));
    for i in 0..50 {
        api.get(&format!("/api/{marker}{i}"), Some(&w.alice)).await;
        api.get(&format!("/api/credentials/{marker}{i}"), Some(&w.alice)).await;
        api.get(&format!("/{marker}{i}"), None).await;
        let m = reqwest::Method::from_bytes(format!("X{marker}{i}").as_bytes()).unwrap();
        api.request(m, "/api/credentials", Some(&w.alice), common::server::Body::None).await;
    }
    let metrics = api.get("/metrics", None).await;
    metrics.expect(200);
    assert!(!metrics.text.contains(&marker), "a user-controlled path or method became a metric label");
    let series = metrics.text.lines().filter(|l| l.starts_with("credhost_http_request_duration_seconds_count")).count();
    assert!(series < 20, "{series} series:\n{}", metrics.text);
}

/// Grants: bound to one credential, no token or audit API.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grant_cannot_use_the_token_or_audit_routes() {
    let w = World::start();
    let api = w.api();
    let c = api
        .post("/api/credentials", Some(&w.alice), json!({"name": "k", "type": "bearer_token", "fields": {"token": format!("Gg-{}", random_alnum(30))}}))
        .await;
    c.expect(201);
    let cid = c.json()["id"].as_str().unwrap().to_string();
    let g = api.post(&format!("/api/credentials/{cid}/grants"), Some(&w.alice), json!({"ttl_secs": 60})).await;
    g.expect(201);
    let grant = g.json()["token"].as_str().unwrap().to_string();
    let mine: Value = api.get("/api/tokens", Some(&w.alice)).await.json();
    let first = mine.as_array().unwrap()[0]["id"].as_str().unwrap().to_string();
    api.get("/api/tokens", Some(&grant)).await.expect(403);
    api.delete(&format!("/api/tokens/{first}"), Some(&grant)).await.expect(403);
    api.get("/api/audit", Some(&grant)).await.expect(403);
    api.get("/api/admin/tokens", Some(&grant)).await.expect(403);
}

/// One user's audit listing with a filter that matches nothing reads every record of the
/// user's namespace (the `security.probe` records the user cannot even see included), and
/// goes on after its request times out. A user writes ~12k probe records a second; then
/// 64 such listings hold every concurrency slot and the CPU, and every other user waits.
/// Safe behaviour: another user's request is answered within a few seconds.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn filtered_audit_scans_do_not_stall_other_users() {
    let w = World::start();
    let api = w.api();
    let c = api
        .post("/api/credentials", Some(&w.bob), json!({"name": "b", "type": "bearer_token", "fields": {"token": format!("Bb-{}", random_alnum(30))}}))
        .await;
    c.expect(201);
    let bid = c.json()["id"].as_str().unwrap().to_string();
    // 200k probes of bob's id by alice: 200k hidden records in alice's namespace.
    let http = reqwest::Client::new();
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..48 {
        let (http, url, alice) = (http.clone(), format!("{}/api/credentials/{bid}", w.server.base), w.alice.clone());
        set.spawn(async move {
            for _ in 0..(200_000 / 48) {
                let _ = http.get(&url).bearer_auth(&alice).send().await;
            }
        });
    }
    while set.join_next().await.is_some() {}
    tokio::time::sleep(Duration::from_secs(2)).await;
    let started = std::time::Instant::now();
    api.get("/api/audit?action=nothing.here", Some(&w.alice)).await.expect(200);
    let one = started.elapsed();
    // 64 such listings at once, then one ordinary request of bob's.
    let mut scans = tokio::task::JoinSet::new();
    for _ in 0..64 {
        let (http, url, alice) = (http.clone(), format!("{}/api/audit?action=nothing.here", w.server.base), w.alice.clone());
        scans.spawn(async move { http.get(&url).bearer_auth(&alice).send().await.map(|r| r.status().as_u16()) });
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = std::time::Instant::now();
    api.get("/api/credentials", Some(&w.bob)).await.expect(200);
    let bob = started.elapsed();
    while scans.join_next().await.is_some() {}
    assert!(
        bob < Duration::from_secs(5),
        "bob waited {bob:?} for his own credential list while alice's filtered audit listings ran \
         (one listing of her 200k records took {one:?})"
    );
}

/// A secret that crosses the 1 KiB line cap of logged stderr: the kept part must not hold
/// a prefix of it (scrub-before-cut plus the partial-tail rule).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plugin_stderr_cut_at_the_line_cap_keeps_no_prefix_of_a_secret() {
    let w = World::start();
    let api = w.api();
    let secret = format!("Cp-{}", random_alnum(1200));
    let r = api
        .post("/api/credentials", Some(&w.alice), json!({"name": "cap", "type": "hostile", "fields": {"mode": "stderr", "secret": secret}}))
        .await;
    assert!(!r.text.contains(&secret[..40]), "{}", r.text);
    settle().await;
    let log = w.server.stderr();
    assert!(log.contains("hostile stderr"), "the plugin's stderr was logged at all:\n{log}");
    assert_absent("the server log", &log, &[&secret[..24]]);
}

/// Start-up: `/healthz` and `/readyz` are documented to answer at once while plugins load
/// and the declared config is applied. API requests wait for readiness *inside* the global
/// concurrency limit and before authentication, so `max_concurrency` unauthenticated
/// requests sent during start-up hold every slot and the health checks wait too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unauthenticated_requests_during_startup_do_not_block_health_checks() {
    let env0 = Env::new();
    let plugins = env0.dir.path().join("plugins.d");
    common::install_hostile(&plugins);
    let config = env0.dir.path().join("credhost.toml");
    // A declared credential whose validate takes 2 s keeps the server starting that long.
    std::fs::write(
        &config,
        "[server]\nmax_concurrency = 4\n\n[[users]]\nname = \"carol\"\n\n[[credentials]]\nuser = \"carol\"\nname = \"slow\"\n\
         type = \"hostile\"\nfields = { mode = \"slow\", secret = \"env:CREDHOST_REVIEW_SLOW_SECRET\" }\n",
    )
    .unwrap();
    let env = env0
        .set("CREDHOST_PLUGINS_DIR", plugins.to_str().unwrap())
        .set("CREDHOST_REVIEW_SLOW_SECRET", &format!("Sl-{}", random_alnum(30)));
    let server = env.start(&["--config", config.to_str().unwrap()]);
    let http = reqwest::Client::new();
    let mut waiting = tokio::task::JoinSet::new();
    for _ in 0..4 {
        let (http, url) = (http.clone(), format!("{}/api/credential-types", server.base));
        waiting.spawn(async move { http.get(&url).send().await.map(|r| r.status().as_u16()) });
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = std::time::Instant::now();
    let health = http.get(format!("{}/healthz", server.base)).send().await.unwrap();
    let took = started.elapsed();
    let ready = reqwest::get(format!("{}/readyz", server.base)).await.unwrap().status().as_u16();
    while waiting.join_next().await.is_some() {}
    assert_eq!(health.status().as_u16(), 200);
    assert!(
        took < Duration::from_millis(1000),
        "/healthz took {took:?} during start-up behind 4 unauthenticated API requests (readyz then: {ready}):\n{}",
        server.stderr()
    );
}

// issue 14 surfaces: webhooks (URLs, receivers, fan-out, fairness), rotation
// (idempotency keys, promote races, version numbers), online master-key rotation.

/// One request a local receiver saw.
#[derive(Clone, Debug)]
struct Hit {
    path: String,
    headers: std::collections::HashMap<String, String>,
    body: String,
}

/// A local HTTP service that records every request; some paths misbehave: `/redirect`
/// answers 307 to `/internal`, `/gone` 410, `/deny` 401, `/slow` holds the request 30 s,
/// `/slowcheck` answers 200 after 1.5 s, `/huge` sends 8 MiB, `/flap` alternates 200 and
/// 401; anything else is 200 with a body echoing the request (and a marker).
#[derive(Clone, Default)]
struct Hooks {
    hits: std::sync::Arc<std::sync::Mutex<Vec<Hit>>>,
    flips: std::sync::Arc<std::sync::atomic::AtomicU64>,
    port: u16,
}

const ECHO_MARKER: &str = "ECHO-MARKER-5f1c";

impl Hooks {
    async fn start() -> Hooks {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let hooks = Hooks { port: listener.local_addr().unwrap().port(), ..Hooks::default() };
        let state = hooks.clone();
        let app = axum::Router::new().fallback(
            move |uri: axum::http::Uri, headers: axum::http::HeaderMap, body: String| {
                let s = state.clone();
                async move {
                    use axum::body::Body;
                    let path = uri.path().to_string();
                    let headers = headers
                        .iter()
                        .map(|(k, v)| (k.as_str().to_string(), v.to_str().unwrap_or("").to_string()))
                        .collect();
                    s.hits.lock().unwrap().push(Hit { path: path.clone(), headers, body: body.clone() });
                    let r = axum::response::Response::builder();
                    match path.as_str() {
                        "/redirect" => r.status(307).header("location", "/internal").body(Body::empty()),
                        "/gone" => r.status(410).body(Body::from("gone")),
                        "/deny" => r.status(401).body(Body::from("{\"error\":\"bad token\"}")),
                        "/slow" => {
                            tokio::time::sleep(Duration::from_secs(30)).await;
                            r.status(200).body(Body::empty())
                        }
                        "/slowcheck" => {
                            tokio::time::sleep(Duration::from_millis(1500)).await;
                            r.status(200).body(Body::from("{\"ok\":true}"))
                        }
                        "/huge" => r.status(200).body(Body::from(vec![b'x'; 8 << 20])),
                        "/flap" => {
                            let n = s.flips.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                            r.status(if n % 2 == 0 { 200 } else { 401 }).body(Body::from("{}"))
                        }
                        _ => r.status(200).body(Body::from(format!("{ECHO_MARKER} {body}"))),
                    }
                    .unwrap()
                }
            },
        );
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        hooks
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    fn hits(&self, path: &str) -> Vec<Hit> {
        self.hits.lock().unwrap().iter().filter(|h| h.path == path).cloned().collect()
    }

    async fn wait(&self, path: &str, within: Duration, what: &str) -> Vec<Hit> {
        let deadline = std::time::Instant::now() + within;
        loop {
            let hits = self.hits(path);
            if !hits.is_empty() {
                return hits;
            }
            assert!(std::time::Instant::now() < deadline, "{what}: no request to {path} within {within:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// A config file: fast polling, 2 s delivery timeout, retries far away (one attempt
/// each during a test); private networks allowed or not.
fn hook_config(env: &Env, private: bool) -> String {
    let path = env.dir.path().join("hooks.toml");
    let plugins = if private { "[plugins]\nallow_private_networks = true\n\n" } else { "" };
    std::fs::write(
        &path,
        format!("{plugins}[webhook_delivery]\nretry_base_ms = 600000\npoll_interval_ms = 50\ntimeout_secs = 2\n"),
    )
    .unwrap();
    path.to_str().unwrap().to_string()
}

/// Subscribes; the secret is registered with the leak guard. Returns (id, secret).
async fn hook_subscribe(api: &Api, token: &str, url: &str) -> (String, String) {
    let r = api.post("/api/webhooks", Some(token), json!({ "url": url })).await;
    r.expect(201);
    let v = r.json();
    let secret = api.guard.secret(v["secret"].as_str().unwrap());
    (v["id"].as_str().unwrap().to_string(), secret)
}

async fn hook_ping(api: &Api, token: &str, id: &str) -> String {
    let r = api.post_empty(&format!("/api/webhooks/{id}/ping"), Some(token)).await;
    r.expect(202);
    r.json()["event_id"].as_str().unwrap().to_string()
}

/// The delivery of `event` once it has an attempt.
async fn attempted(api: &Api, token: &str, id: &str, event: &str) -> Value {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let log = api.get(&format!("/api/webhooks/{id}/deliveries"), Some(token)).await.expect(200).json();
        let found = log.as_array().unwrap().iter().find(|d| d["event_id"] == event).cloned();
        if let Some(d) = found.filter(|d| !d["attempts"].as_array().unwrap().is_empty()) {
            return d;
        }
        assert!(std::time::Instant::now() < deadline, "no attempt of {event} within 20 s:\n{log:#}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Every spelling of an internal address a URL parser or resolver accepts — decimal,
/// hex, octal and short IPv4, IPv4-mapped/compatible/translated/NAT64/6to4 IPv6, the
/// unspecified address, trailing dots, percent-encoding, upper case — is refused at
/// subscription time when private networks are not allowed, as are user info, fragments,
/// other schemes and overlong URLs; nothing is stored, the server keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_urls_naming_an_internal_address_in_any_spelling_are_refused() {
    let env = Env::new();
    let alice = env.add_user("alice", false);
    let server = env.start(&[]);
    let guard = LeakGuard::new();
    let api = server.api(&guard);
    let long = format!("https://hooks.example/{}", "a".repeat(3000));
    let urls = [
        "http://0/", "http://0.0.0.0:9/", "http://0x7f000001/", "http://2130706433/", "http://127.1/",
        "http://0177.0.0.1/", "http://127.0.0.1./", "http://%31%32%37.0.0.1/", "http://[::]/",
        "http://[0:0:0:0:0:ffff:7f00:1]/", "http://[::7f00:1]/", "http://[::ffff:0:7f00:1]/", "http://[64:ff9b::7f00:1]/",
        "http://[2002:7f00:1::]/", "http://[fe80::1]/", "http://[fd00::1]/", "http://169.254.169.254./latest",
        "http://100.64.0.1/", "HTTP://LOCALHOST:9/", "http://localhost./", "http://LocalHost.:9/x",
        "http://user@127.0.0.1/", "http://hooks.example@127.0.0.1/", "https://:pw@hooks.example/",
        "http://127.0.0.1:9/#frag", "javascript:alert(1)", "file:///etc/passwd", "gopher://127.0.0.1:9/", &long,
        "http://[::ffff:7f00:1]/", "http://\u{24db}\u{24de}\u{24d2}\u{24d0}\u{24db}\u{24d7}\u{24de}\u{24e2}\u{24e3}:9/",
    ];
    for url in urls {
        let r = api.post("/api/webhooks", Some(&alice), json!({ "url": url })).await;
        let body = r.expect_error(422, "invalid_fields");
        let fields: Vec<&str> = body["error"]["fields"].as_array().unwrap().iter().map(|f| f["field"].as_str().unwrap()).collect();
        assert_eq!(fields, ["url"], "{url}: {body}");
    }
    assert_eq!(api.get("/api/webhooks", Some(&alice)).await.expect(200).json(), json!([]));
    api.get("/healthz", None).await.expect(200);
}

/// Sends re-check addresses: subscriptions made while private networks were allowed (one
/// by the name `localhost`, one by literal) are not sent to once the operator turns that
/// off — as a name that resolved public at creation and private at send would be. Meanwhile
/// receivers misbehave: a 307 to an internal path is not followed, a 410 is a failed
/// attempt, a receiver that never answers times out within the limit and holds nobody
/// else up, an 8 MiB answer is cut, an answer echoing the payload is not stored. Another
/// user's subscription receives nothing of alice's. Subscriptions (25) and pings (10 a
/// minute) per user are capped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_sends_recheck_addresses_and_misbehaving_receivers_are_contained() {
    let hooks = Hooks::start().await;
    let env = Env::new();
    let alice = env.add_user("alice", false);
    let bob = env.add_user("bob", false);
    let cfg = hook_config(&env, true);
    let mut server = env.start(&["--config", &cfg]);
    let guard = LeakGuard::new();
    let api = server.api(&guard);

    let (by_name, _) = hook_subscribe(&api, &alice, &format!("http://localhost:{}/ok-a", hooks.port)).await;
    let mut subs = vec![by_name.clone()];
    for path in ["/lit", "/redirect", "/gone", "/slow", "/huge"] {
        subs.push(hook_subscribe(&api, &alice, &hooks.url(path)).await.0);
    }
    let (bobs, _) = hook_subscribe(&api, &bob, &hooks.url("/ok-b")).await;
    let started = std::time::Instant::now();
    let mut events = Vec::new();
    for id in &subs {
        events.push(hook_ping(&api, &alice, id).await);
    }
    let bob_event = hook_ping(&api, &bob, &bobs).await;
    hooks.wait("/ok-b", Duration::from_secs(10), "bob's ping").await;
    let bob_took = started.elapsed();

    let d = attempted(&api, &alice, &subs[0], &events[0]).await;
    assert_eq!((d["state"].as_str(), d["attempts"][0]["status_code"].as_u64()), (Some("delivered"), Some(200)), "{d:#}");
    assert!(!d.to_string().contains(ECHO_MARKER), "the receiver's answer was stored: {d:#}");
    let d = attempted(&api, &alice, &subs[2], &events[2]).await;
    assert_eq!(d["attempts"][0]["status_code"], 307, "{d:#}");
    assert_eq!(d["attempts"][0]["error"], "redirect not followed", "{d:#}");
    assert_eq!(d["state"], "pending", "{d:#}");
    let d = attempted(&api, &alice, &subs[3], &events[3]).await;
    assert_eq!((d["attempts"][0]["status_code"].as_u64(), d["state"].as_str()), (Some(410), Some("pending")), "{d:#}");
    let d = attempted(&api, &alice, &subs[4], &events[4]).await;
    let a = &d["attempts"][0];
    assert!(a["error"].as_str().unwrap_or("").starts_with("timeout"), "{d:#}");
    assert!(a["duration_ms"].as_u64().unwrap() < 5000, "the 2 s limit did not hold: {d:#}");
    let d = attempted(&api, &alice, &subs[5], &events[5]).await;
    assert_eq!(d["state"], "delivered", "{d:#}");
    assert!(hooks.hits("/internal").is_empty(), "a redirect was followed");
    // At most one round (the 2 s limit) behind alice's silent receiver.
    assert!(bob_took < Duration::from_secs(5), "bob's delivery waited {bob_took:?} behind alice's silent receiver");
    let bob_hits = hooks.hits("/ok-b");
    assert!(bob_hits.iter().all(|h| h.headers.get("webhook-id").map(String::as_str) == Some(bob_event.as_str())), "{bob_hits:?}");
    for id in &subs {
        api.get(&format!("/api/webhooks/{id}/deliveries"), Some(&bob)).await.expect_error(404, "not_found");
    }

    // 25 subscriptions a user; the 26th is a conflict naming the limit.
    for _ in subs.len()..25 {
        hook_subscribe(&api, &alice, &hooks.url("/more")).await;
    }
    let r = api.post("/api/webhooks", Some(&alice), json!({"url": hooks.url("/more")})).await;
    let body = r.expect_error(409, "conflict");
    assert!(body["error"]["message"].as_str().unwrap().contains("25"), "{body}");
    // 10 pings a minute a user: alice sent 6.
    for _ in 0..4 {
        hook_ping(&api, &alice, &subs[0]).await;
    }
    let r = api.post_empty(&format!("/api/webhooks/{}/ping", subs[0]), Some(&alice)).await;
    let body = r.expect_error(409, "conflict");
    assert!(body["error"]["message"].as_str().unwrap().contains("pings a minute"), "{body}");
    hook_ping(&api, &bob, &bobs).await;

    // Private networks off: the stored loopback subscriptions are refused at send.
    server.stop();
    let hits_before = (hooks.hits("/ok-a").len(), hooks.hits("/lit").len());
    let cfg = hook_config(&env, false);
    let server = env.start(&["--config", &cfg]);
    let api = server.api(&guard);
    for id in [&subs[0], &subs[1]] {
        let event = hook_ping(&api, &alice, id).await;
        let d = attempted(&api, &alice, id, &event).await;
        let error = d["attempts"][0]["error"].as_str().unwrap_or("").to_string();
        assert!(error.starts_with("refused:") && d["attempts"][0]["status_code"].is_null(), "{d:#}");
    }
    assert_eq!((hooks.hits("/ok-a").len(), hooks.hits("/lit").len()), hits_before, "sent to a loopback address");
    api.get("/healthz", None).await.expect(200);
    guard.check("server log", &server.stderr());
}

/// A user floods their own 25 subscriptions, all pointing at a receiver that never
/// answers, with real events (a credential whose health flips on every test: 19 events,
/// 475 deliveries). The worker sends 32 at a time and each of those waits out the 2 s
/// limit; first come first served, bob's ping would wait about half a minute behind them.
/// Safe behaviour: bob's delivery arrives within a few seconds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_users_event_flood_does_not_hold_back_other_users_deliveries() {
    let hooks = Hooks::start().await;
    let env = Env::new();
    let alice = env.add_user("alice", false);
    let bob = env.add_user("bob", false);
    let cfg = hook_config(&env, true);
    let server = env.start(&["--config", &cfg]);
    let guard = LeakGuard::new();
    let api = server.api(&guard);
    for _ in 0..25 {
        hook_subscribe(&api, &alice, &hooks.url("/slow")).await;
    }
    let token = guard.secret(format!("Fl-{}", random_alnum(30)));
    let c = api
        .post("/api/credentials", Some(&alice), json!({"name": "flap", "type": "bearer_token", "fields": {"token": token, "test_url": hooks.url("/flap")}}))
        .await;
    c.expect(201);
    let cid = c.json()["id"].as_str().unwrap().to_string();
    for _ in 0..20 {
        api.post_empty(&format!("/api/credentials/{cid}/test"), Some(&alice)).await.expect(200);
    }
    hooks.wait("/slow", Duration::from_secs(10), "the flood").await;
    let (bobs, _) = hook_subscribe(&api, &bob, &hooks.url("/ok-b")).await;
    let started = std::time::Instant::now();
    hook_ping(&api, &bob, &bobs).await;
    hooks.wait("/ok-b", Duration::from_secs(40), "bob's ping").await;
    let took = started.elapsed();
    let metrics = api.get("/metrics", None).await.expect(200).text.clone();
    let pending = metrics.lines().find(|l| l.starts_with("credhost_webhook_deliveries_pending")).unwrap_or("").to_string();
    assert!(took < Duration::from_secs(8), "bob's ping took {took:?} behind alice's flood ({pending})");
    api.get("/healthz", None).await.expect(200);
}

/// Rotation: an idempotency key reused by another user, or on another credential, starts
/// a fresh rotation and never replays someone else's answer; another user's credential
/// is 404 exactly like an unknown one on every route; bad keys are 422 naming the header;
/// odd version numbers are 404; the same key twice at once rotates once; a promote during
/// a running rotation is refused; concurrent promotes leave one consistent current version.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_keys_versions_and_promotes_resist_reuse_and_races() {
    let hooks = Hooks::start().await;
    let env = Env::new().set("CREDHOST_ALLOW_PRIVATE_NETWORKS", "true");
    let alice = env.add_user("alice", false);
    let bob = env.add_user("bob", false);
    let server = env.start(&[]);
    let guard = LeakGuard::new();
    let api = server.api(&guard);
    api.learn_secret_fields().await;
    let tok = |g: &LeakGuard| g.secret(format!("tok-{}", random_alnum(24)));
    let create = |user: String, path: &'static str| {
        let (api, hooks, t) = (api.clone(), hooks.clone(), tok(&guard));
        async move {
            let r = api
                .post("/api/credentials", Some(&user), json!({"name": format!("r-{}", random_alnum(8)), "type": "bearer_token",
                    "fields": {"token": t, "test_url": hooks.url(path)}}))
                .await;
            r.expect(201);
            r.json()["id"].as_str().unwrap().to_string()
        }
    };
    let rotate = |user: String, id: String, body: Value, key: Option<String>| {
        let api = api.clone();
        async move {
            let path = format!("/api/credentials/{id}/rotate");
            let mut req = api.http.post(format!("{}{path}", api.base)).bearer_auth(&user).json(&body);
            if let Some(k) = key {
                req = req.header("idempotency-key", k);
            }
            api.send(reqwest::Method::POST, &path, req).await
        }
    };
    let a = create(alice.clone(), "/ok").await;
    let a2 = create(alice.clone(), "/ok").await;
    let b = create(bob.clone(), "/ok").await;
    let key = "shared-key-1".to_string();
    let same = json!({"fields": {"token": tok(&guard)}});
    let first = rotate(alice.clone(), a.clone(), same.clone(), Some(key.clone())).await;
    first.expect(200);
    for (user, id) in [(bob.clone(), b.clone()), (alice.clone(), a2.clone())] {
        let r = rotate(user, id.clone(), same.clone(), Some(key.clone())).await;
        r.expect(200);
        let v = r.json();
        assert_eq!((v["credential"].as_str(), v["version"].as_u64()), (Some(id.as_str()), Some(2)), "{v}");
    }
    // Another user's credential: the same 404 as an id that does not exist, everywhere.
    let unknown = uuid::Uuid::new_v4().to_string();
    for (method, tail) in [("POST", "rotate"), ("GET", "versions"), ("POST", "versions/1/promote")] {
        let send = |id: &str| {
            let (api, bob, path) = (api.clone(), bob.clone(), format!("/api/credentials/{id}/{tail}"));
            let body = same.clone();
            async move {
                let mut req = api.http.request(method.parse().unwrap(), format!("{}{path}", api.base)).bearer_auth(&bob);
                if tail == "rotate" {
                    req = req.json(&body).header("idempotency-key", "shared-key-1");
                }
                api.send(method.parse().unwrap(), &path, req).await
            }
        };
        let (theirs, none) = (send(&a).await, send(&unknown).await);
        theirs.expect_error(404, "not_found");
        assert_eq!(theirs.json(), none.json(), "{tail}");
    }
    // Bad keys name the header.
    for k in ["k".repeat(201), "k".repeat(8000), "has space".to_string(), String::new()] {
        let r = rotate(alice.clone(), a.clone(), json!({"fields": {"token": tok(&guard)}}), Some(k.clone())).await;
        let v = r.expect_error(422, "invalid_fields");
        assert_eq!(v["error"]["fields"][0]["field"], "Idempotency-Key", "{} chars: {v}", k.len());
    }
    // Version numbers that are not kept versions.
    for n in ["0", "-1", "3", "4294967295", "4294967296", "99999999999999999999", "abc", "1.0", "%20", "1%00"] {
        let r = api.post_empty(&format!("/api/credentials/{a}/versions/{n}/promote"), Some(&alice)).await;
        r.expect_error(404, "not_found");
    }
    // The same key twice at once, against a slow test: one rotation.
    let s = create(alice.clone(), "/slowcheck").await;
    let body = json!({"fields": {"token": tok(&guard)}});
    let (r1, r2) = tokio::join!(
        rotate(alice.clone(), s.clone(), body.clone(), Some("twice".into())),
        rotate(alice.clone(), s.clone(), body.clone(), Some("twice".into()))
    );
    let mut statuses = [r1.status, r2.status];
    statuses.sort();
    assert!(statuses == [200, 409] || statuses == [200, 200], "{statuses:?}: {} / {}", r1.text, r2.text);
    if statuses == [200, 200] {
        assert_eq!(r1.json(), r2.json());
    }
    let list = api.get(&format!("/api/credentials/{s}/versions"), Some(&alice)).await.expect(200).json();
    assert_eq!(list["items"].as_array().unwrap().len(), 2, "{list:#}");
    // A promote while a rotation runs is refused.
    let running = tokio::spawn(rotate(alice.clone(), s.clone(), json!({"fields": {"token": tok(&guard)}}), None));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let r = api.post_empty(&format!("/api/credentials/{s}/versions/1/promote"), Some(&alice)).await;
    r.expect_error(409, "conflict");
    assert_eq!(running.await.unwrap().json()["result"], "promoted");
    // Concurrent promotes of different versions: each is 200 or 409; one current after.
    let mut set = tokio::task::JoinSet::new();
    for i in 0..12 {
        let (api, alice, s) = (api.clone(), alice.clone(), s.clone());
        set.spawn(async move {
            api.post_empty(&format!("/api/credentials/{s}/versions/{}/promote", 1 + i % 3), Some(&alice)).await.status
        });
    }
    while let Some(st) = set.join_next().await {
        let st = st.unwrap();
        assert!(st == 200 || st == 409, "{st}");
    }
    let list = api.get(&format!("/api/credentials/{s}/versions"), Some(&alice)).await.expect(200).json();
    let current: Vec<&Value> = list["items"].as_array().unwrap().iter().filter(|v| v["state"] == "current").collect();
    assert_eq!(current.len(), 1, "{list:#}");
    assert_eq!(current[0]["version"], list["current"], "{list:#}");
    assert!(list["pending"].is_null(), "{list:#}");
    let c = api.get(&format!("/api/credentials/{s}"), Some(&alice)).await.expect(200).json();
    assert_eq!(c["version"], list["current"]);
    let t = api.post_empty(&format!("/api/credentials/{s}/test"), Some(&alice)).await.expect(200).json();
    assert_eq!(t["status"], "valid", "{t}");
    // A pending version whose test failed can be promoted by hand, audited as forced.
    let f = create(alice.clone(), "/deny").await;
    let r = rotate(alice.clone(), f.clone(), json!({"fields": {"token": tok(&guard)}}), None).await;
    assert_eq!(r.expect(200).json()["result"], "failed");
    api.post_empty(&format!("/api/credentials/{f}/versions/2/promote"), Some(&alice)).await.expect(200);
    let list = api.get(&format!("/api/credentials/{f}/versions"), Some(&alice)).await.expect(200).json();
    assert_eq!((list["current"].as_u64(), list["items"][0]["forced"].as_bool()), (Some(2), Some(true)), "{list:#}");
    api.get("/healthz", None).await.expect(200);
    guard.check("server log", &server.stderr());
}

/// Online master-key rotation: special files (a FIFO, /dev/zero, a directory,
/// /proc/self/environ — the server's own environment, a regular file it owns — a sparse
/// 1 GiB file, another uid's file) are refused at once without quoting anything read;
/// concurrent rotations are serialized; the handed-over path swapped back and forth while
/// rotations run never leaves the key file holding a key other than the one the store
/// now needs; webhook deliveries keep going (and verify) across rotations.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn online_key_rotation_refuses_special_files_and_survives_path_swaps() {
    use std::os::unix::fs::PermissionsExt;
    let hooks = Hooks::start().await;
    let guard = LeakGuard::new();
    let new_key = |g: &LeakGuard| {
        let mut k = [0u8; 32];
        getrandom::fill(&mut k).unwrap();
        g.secret(base64::Engine::encode(&base64::engine::general_purpose::STANDARD, k))
    };
    let write = |path: &std::path::Path, text: &str| {
        std::fs::write(path, text).unwrap();
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
    };
    let env = Env::bare();
    let data = env.dir.path().join("data");
    let keys = env.dir.path().join("keys");
    std::fs::create_dir(&keys).unwrap();
    let key_file = keys.join("master.key");
    write(&key_file, &new_key(&guard));
    let env = env
        .set("CREDHOST_LISTEN", "127.0.0.1:0")
        .set("CREDHOST_DATA_DIR", data.to_str().unwrap())
        .set("CREDHOST_MASTER_KEY_FILE", key_file.to_str().unwrap())
        .set("CREDHOST_ALLOW_PRIVATE_NETWORKS", "true");
    let root = env.add_user("root", true);
    let alice = env.add_user("alice", false);
    let cfg = hook_config(&env, true);
    let mut server = env.start(&["--config", &cfg]);
    let api = server.api(&guard);
    let rotate = |path: &std::path::Path| {
        let (api, root, body) = (api.clone(), root.clone(), json!({"new_key_file": path.to_str().unwrap()}));
        async move {
            tokio::time::timeout(Duration::from_secs(10), api.post("/api/admin/keys/rotate", Some(&root), body))
                .await
                .expect("the rotation hung")
        }
    };
    let refused = |r: &common::server::Resp, words: &str| {
        let v = r.expect_error(422, "invalid_fields");
        let m = v["error"]["fields"][0]["message"].as_str().unwrap().to_string();
        assert!(m.contains(words), "{words:?} not in {m:?}");
        assert!(!m.contains("CREDHOST_") && !m.contains("PATH="), "the message quotes what was read: {m}");
    };
    let fifo = keys.join("fifo.key");
    assert!(std::process::Command::new("mkfifo").arg(&fifo).status().unwrap().success());
    refused(&rotate(&fifo).await, "not a regular file");
    refused(&rotate(std::path::Path::new("/dev/zero")).await, "not a regular file");
    refused(&rotate(&keys).await, "not a regular file");
    refused(&rotate(std::path::Path::new(&format!("/proc/{}/environ", server.pid()))).await, "");
    let sparse = keys.join("sparse.key");
    let f = std::fs::File::create(&sparse).unwrap();
    f.set_len(1 << 30).unwrap();
    std::fs::set_permissions(&sparse, std::fs::Permissions::from_mode(0o600)).unwrap();
    refused(&rotate(&sparse).await, "too large");
    if unsafe { libc::geteuid() } == 0 {
        let theirs = keys.join("theirs.key");
        write(&theirs, &new_key(&guard));
        std::os::unix::fs::chown(&theirs, Some(65534), Some(65534)).unwrap();
        refused(&rotate(&theirs).await, "owned by uid 65534");
    }
    let r = api.post("/api/admin/keys/rotate", Some(&alice), json!({"new_key_file": sparse.to_str().unwrap()})).await;
    r.expect_error(403, "forbidden");

    // A delivery before, during and after rotations verifies with the same secret.
    let (hook, secret) = hook_subscribe(&api, &alice, &hooks.url("/ok-k")).await;
    let before = hook_ping(&api, &alice, &hook).await;

    // Two rotations at once: serialized (one's previous key is the other's new key).
    let (k1, k2) = (keys.join("one.key"), keys.join("two.key"));
    write(&k1, &new_key(&guard));
    write(&k2, &new_key(&guard));
    let (r1, r2) = tokio::join!(rotate(&k1), rotate(&k2));
    let (v1, v2) = (r1.expect(200).json(), r2.expect(200).json());
    assert!(v1["previous_key_id"] == v2["key_id"] || v2["previous_key_id"] == v1["key_id"], "{v1}\n{v2}");

    // The handed-over path swapped with another private key file while rotations run.
    let key_id = |text: &str| credhost::crypto::MasterKey::from_base64(text).unwrap().id().to_string();
    let mut done = 0;
    for round in 0..12 {
        let (p, q, t) = (keys.join("hand.key"), keys.join("spare.key"), keys.join("swap.tmp"));
        write(&p, &new_key(&guard));
        write(&q, &new_key(&guard));
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let swapper = {
            let (stop, p, q, t) = (stop.clone(), p.clone(), q.clone(), t.clone());
            std::thread::spawn(move || {
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    if std::fs::rename(&p, &t).is_err() || std::fs::rename(&q, &p).is_err() || std::fs::rename(&t, &q).is_err() {
                        break;
                    }
                }
            })
        };
        let r = rotate(&p).await;
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        swapper.join().unwrap();
        for f in [&p, &q, &t] {
            let _ = std::fs::remove_file(f);
        }
        if r.status != 200 {
            continue; // the path was mid-swap when opened: refused, nothing changed
        }
        done += 1;
        let in_file = std::fs::read_to_string(&key_file).unwrap();
        assert_eq!(key_id(in_file.trim()), r.json()["key_id"].as_str().unwrap(), "round {round}: the key file holds another key than the store's");
        assert_eq!(common::server::mode_of(&key_file), 0o600);
    }
    assert!(done >= 3, "only {done} of 12 rotations went through");
    let after = hook_ping(&api, &alice, &hook).await;
    hooks.wait("/ok-k", Duration::from_secs(10), "the first ping").await;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while hooks.hits("/ok-k").len() < 2 {
        assert!(std::time::Instant::now() < deadline, "the ping after the rotations was not delivered");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let hmac_key = base64::Engine::decode(&base64::engine::general_purpose::STANDARD, secret.strip_prefix("whsec_").unwrap()).unwrap();
    for (hit, event) in hooks.hits("/ok-k").iter().zip([&before, &after]) {
        let (id, ts) = (&hit.headers["webhook-id"], hit.headers["webhook-timestamp"].parse::<u64>().unwrap());
        assert_eq!(id, event);
        let expected = credhost::service::webhooks::signature(&hmac_key, id, ts, hit.body.as_bytes());
        assert_eq!(hit.headers["webhook-signature"], expected, "a delivery across rotations is not signed with the secret");
    }
    api.get("/api/credentials", Some(&alice)).await.expect(200);
    guard.check("server log", &server.stderr());
    server.stop();
    let out = env.cli(&["keys", "verify"]);
    assert!(out.status.success(), "the key file does not open the store: {}", String::from_utf8_lossy(&out.stderr));
}
