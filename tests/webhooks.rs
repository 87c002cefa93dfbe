//! Signed webhooks (issue 14 item 4) against the real binary: a real receiver
//! (tests/webhooks/receiver.py) verifies every delivery with the `standardwebhooks`
//! package, fails the first ones on request, and reports what it saw. Events come from
//! `POST /api/webhooks/{id}/ping` and from real health changes (a credential test
//! against a local service that answers 401).
//!
//! Needs `python3` with `standardwebhooks` (`pip install standardwebhooks`; scripts/test.sh
//! installs it).

mod common;

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use common::server::{Api, Env, LeakGuard, Server};
use serde_json::{json, Value};

/// The receiver: a Python process, its port, and every report line it printed.
struct Receiver {
    child: Child,
    base: String,
    seen: Arc<Mutex<Vec<Value>>>,
    http: reqwest::Client,
}

impl Receiver {
    fn start() -> Receiver {
        let check = Command::new("python3").args(["-c", "import standardwebhooks"]).output();
        match check {
            Ok(out) if out.status.success() => {}
            Ok(out) => panic!(
                "the webhook receiver needs the Python package standardwebhooks: pip install standardwebhooks\n{}",
                String::from_utf8_lossy(&out.stderr)
            ),
            Err(e) => panic!("python3 not found ({e}); the webhook receiver needs it with: pip install standardwebhooks"),
        }
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/webhooks/receiver.py");
        let mut child = Command::new("python3")
            .arg(&script)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("run the receiver");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let first = lines.next().expect("receiver printed nothing").unwrap();
        let port: u16 = first.strip_prefix("port ").expect("port line").trim().parse().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let sink = seen.clone();
        std::thread::spawn(move || {
            for line in lines {
                let Ok(line) = line else { break };
                sink.lock().unwrap().push(serde_json::from_str::<Value>(&line).expect("receiver line"));
            }
        });
        Receiver { child, base: format!("http://127.0.0.1:{port}"), seen, http: reqwest::Client::new() }
    }

    fn url(&self, name: &str) -> String {
        format!("{}/hook/{name}", self.base)
    }

    async fn control(&self, what: &str, name: &str, body: String) {
        let r = self.http.put(format!("{}/_{what}/{name}", self.base)).body(body).send().await.unwrap();
        assert_eq!(r.status().as_u16(), 204);
    }

    async fn set_secret(&self, name: &str, secret: &str) {
        self.control("secret", name, secret.to_string()).await;
    }

    /// The next `n` deliveries to `name` are answered 500.
    async fn fail(&self, name: &str, n: u32) {
        self.control("fail", name, n.to_string()).await;
    }

    /// Reports of requests to `/hook/<name>`.
    fn seen(&self, name: &str) -> Vec<Value> {
        let path = format!("/hook/{name}");
        self.seen.lock().unwrap().iter().filter(|r| r["path"] == path.as_str()).cloned().collect()
    }

    fn attempts_of(&self, name: &str, event: &str) -> Vec<Value> {
        self.seen(name).into_iter().filter(|r| r["id"] == event).collect()
    }

    /// Waits until `done` holds for the reports to `name`.
    async fn wait(&self, name: &str, within: Duration, what: &str, done: impl Fn(&[Value]) -> bool) -> Vec<Value> {
        let deadline = Instant::now() + within;
        loop {
            let seen = self.seen(name);
            if done(&seen) {
                return seen;
            }
            assert!(Instant::now() < deadline, "receiver /hook/{name}: {what} not seen within {within:?}; saw:\n{seen:#?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn delivered(seen: &[Value], event: &str) -> bool {
    seen.iter().any(|r| r["id"] == event && r["answered"] == 200)
}

/// A config file with fast retries: the schedule's unit is `base_ms`.
fn config(env: &Env, base_ms: u64, extra: &str) -> String {
    let path = env.dir.path().join("credhost.toml");
    std::fs::write(&path, format!("[webhook_delivery]\nretry_base_ms = {base_ms}\npoll_interval_ms = 50\n{extra}")).unwrap();
    path.to_str().unwrap().to_string()
}

/// Subscribes `token`'s user to `url`; returns (id, secret).
async fn subscribe(api: &Api, token: &str, guard: &LeakGuard, body: Value) -> (String, String) {
    let r = api.post("/api/webhooks", Some(token), body).await;
    r.expect(201);
    let v = r.json();
    let id = v["id"].as_str().unwrap().to_string();
    assert_eq!(r.header("location"), Some(format!("/api/webhooks/{id}").as_str()));
    let secret = v["secret"].as_str().unwrap().to_string();
    assert!(secret.starts_with("whsec_"), "{v}");
    guard.secret(secret.clone());
    (id, secret)
}

async fn ping(api: &Api, token: &str, id: &str) -> String {
    let r = api.post_empty(&format!("/api/webhooks/{id}/ping"), Some(token)).await;
    r.expect(202);
    r.json()["event_id"].as_str().unwrap().to_string()
}

/// Waits until the delivery log shows `event` in `state`.
async fn logged(api: &Api, token: &str, id: &str, event: &str, state: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let log = api.get(&format!("/api/webhooks/{id}/deliveries"), Some(token)).await.expect(200).json();
        if let Some(d) = log.as_array().unwrap().iter().find(|d| d["event_id"] == event && d["state"] == state) {
            return d.clone();
        }
        assert!(Instant::now() < deadline, "no {state} delivery of {event} in the log:\n{log:#}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(name))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in\n{text}"))
}

/// The receiver fails the first two attempts: the third arrives with the same
/// `webhook-id` and valid signatures throughout; the log and the metrics say so. Then a
/// `kill -9` with undelivered events: after a restart every one of them arrives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_keep_the_id_and_a_kill_9_loses_no_event() {
    let rx = Receiver::start();
    let env = Env::new().set("CREDHOST_ALLOW_PRIVATE_NETWORKS", "1");
    let alice = env.add_user("alice", false);
    let cfg = config(&env, 100, "");
    let mut server = env.start(&["--config", &cfg]);
    let guard = LeakGuard::new();
    let api = server.api(&guard);

    let (id, secret) = subscribe(&api, &alice, &guard, json!({"url": rx.url("a")})).await;
    rx.set_secret("a", &secret).await;
    rx.fail("a", 2).await;
    let event = ping(&api, &alice, &id).await;
    rx.wait("a", Duration::from_secs(30), "a 200 for the ping", |s| delivered(s, &event)).await;
    let attempts = rx.attempts_of("a", &event);
    let answered: Vec<&Value> = attempts.iter().map(|a| &a["answered"]).collect();
    assert_eq!(answered, [&json!(500), &json!(500), &json!(200)], "{attempts:#?}");
    for a in &attempts {
        assert_eq!(a["verified"], true, "{a}");
        assert_eq!(a["type"], "webhook.ping", "{a}");
        assert_eq!(a["data"]["subscription"], id.as_str(), "{a}");
    }
    // Each attempt is signed afresh (its own timestamp), under the one id.
    let stamps: BTreeSet<u64> = attempts.iter().map(|a| a["timestamp"].as_str().unwrap().parse().unwrap()).collect();
    assert!(!stamps.is_empty());

    let d = logged(&api, &alice, &id, &event, "delivered").await;
    let codes: Vec<&Value> = d["attempts"].as_array().unwrap().iter().map(|a| &a["status_code"]).collect();
    assert_eq!(codes, [&json!(500), &json!(500), &json!(200)], "{d:#}");
    assert_eq!(d["event_type"], "webhook.ping");
    assert!(d["next_attempt_at"].is_null(), "{d:#}");
    let metrics = api.get("/metrics", None).await.expect(200).text.clone();
    assert!(metric(&metrics, "credhost_webhook_deliveries_total{result=\"retry\"}") >= 2.0, "{metrics}");
    assert!(metric(&metrics, "credhost_webhook_deliveries_total{result=\"delivered\"}") >= 1.0, "{metrics}");
    metric(&metrics, "credhost_webhook_outbox_depth");
    metric(&metrics, "credhost_webhook_deliveries_pending");

    // Undelivered events at the moment of a SIGKILL: the receiver refuses everything;
    // three events have failed attempts recorded (retries queued), three more are
    // accepted right before the kill (in the outbox, or fanned out and not yet sent).
    rx.fail("a", 1_000_000).await;
    let mut events = Vec::new();
    for _ in 0..3 {
        events.push(ping(&api, &alice, &id).await);
    }
    rx.wait("a", Duration::from_secs(20), "a refused attempt of the first three", |s| {
        events.iter().all(|e| s.iter().any(|r| r["id"] == e.as_str() && r["answered"] == 500))
    })
    .await;
    for _ in 0..3 {
        events.push(ping(&api, &alice, &id).await);
    }
    server.signal("KILL");
    server.wait_exit(Duration::from_secs(10)).expect("killed");
    let first_log = server.stderr();
    let refused_before: BTreeSet<String> =
        rx.seen("a").iter().filter(|r| r["answered"] == 500).map(|r| r["id"].as_str().unwrap().to_string()).collect();
    rx.fail("a", 0).await;
    let mut again = env.start(&["--config", &cfg]);
    let api = again.api(&guard);
    rx.wait("a", Duration::from_secs(60), "every event after the restart", |s| events.iter().all(|e| delivered(s, e)))
        .await;
    for e in &events {
        let got = rx.attempts_of("a", e);
        assert!(got.iter().all(|a| a["verified"] == true), "{got:#?}");
    }
    let ok: BTreeSet<String> = rx
        .seen("a")
        .iter()
        .filter(|r| r["answered"] == 200)
        .map(|r| r["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(ok.len(), 7, "one ping before the kill, six around it: {ok:?}");
    for e in &events {
        logged(&api, &alice, &id, e, "delivered").await;
    }
    let refused = events.iter().filter(|e| refused_before.contains(*e)).count();
    assert!(refused >= 3, "{refused}");
    eprintln!("kill -9: {refused} of 6 events had refused attempts before the kill; all 6 delivered after the restart");

    // The secret is in no log, no later response (the guard checked each), nor the file.
    again.stop();
    guard.check("first server's log", &first_log);
    guard.check("second server's log", &again.stderr());
    let db = std::fs::read(env.data_dir().join("credhost.redb")).unwrap();
    guard.check("database file", &String::from_utf8_lossy(&db));
    let key = base64::engine::general_purpose::STANDARD.decode(secret.strip_prefix("whsec_").unwrap()).unwrap();
    assert!(!db.windows(key.len()).any(|w| w == key.as_slice()), "the raw signing key is in the database file");
    let listed = {
        let s = env.start(&["--config", &cfg]);
        let api = s.api(&guard);
        api.get("/api/webhooks", Some(&alice)).await.expect(200).json()
    };
    assert_eq!(listed.as_array().unwrap().len(), 1);
    assert!(listed[0].get("secret").is_none(), "{listed}");
}

/// Private, loopback and link-local targets are refused when the operator has not
/// allowed private networks, by literal and by a name that resolves to one; nothing is
/// stored and the server keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscription_urls_obey_the_address_policy() {
    let env = Env::new();
    let alice = env.add_user("alice", false);
    let server = env.start(&[]);
    let guard = LeakGuard::new();
    let api = server.api(&guard);
    for url in [
        "http://169.254.169.254/latest/meta-data",
        "http://10.0.0.1/hook",
        "http://localhost:9/hook",
        "http://127.0.0.1:9/hook",
        "http://[::ffff:127.0.0.1]:9/hook",
        "http://[::1]:9/hook",
        "ftp://example.com/hook",
        "http://user:pw@example.com/hook",
        "not a url",
    ] {
        let r = api.post("/api/webhooks", Some(&alice), json!({"url": url})).await;
        let body = r.expect_error(422, "invalid_fields");
        let fields: Vec<&str> = body["error"]["fields"].as_array().unwrap().iter().map(|f| f["field"].as_str().unwrap()).collect();
        assert_eq!(fields, ["url"], "{url}: {body}");
    }
    let r = api.post("/api/webhooks", Some(&alice), json!({"url": "http://10.0.0.1/", "events": ["nope.*"]})).await;
    let body = r.expect_error(422, "invalid_fields");
    assert!(body["error"]["fields"].as_array().unwrap().iter().any(|f| f["field"] == "events"), "{body}");
    assert_eq!(api.get("/api/webhooks", Some(&alice)).await.expect(200).json(), json!([]));
    api.get("/healthz", None).await.expect(200);
}

/// A local service that answers 401 to everything: a bearer-token credential tested
/// against it turns `invalid`, a real `credential.health_changed` event.
async fn refusing_service() -> String {
    let app = axum::Router::new().fallback(|| async { (axum::http::StatusCode::UNAUTHORIZED, "{\"error\":\"bad token\"}") });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://127.0.0.1:{port}/whoami")
}

/// Users see and receive only their own: another user's subscription is 404 to every
/// route, and a health change of alice's credential reaches alice's subscription and the
/// deployment-wide one, never bob's; so does the use of alice's revoked grant. A read-only token cannot subscribe. Deleting a
/// subscription stops its pending retries.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_get_only_their_own_events_and_deleting_stops_retries() {
    let rx = Receiver::start();
    let ops_secret = format!("whsec_{}", base64::engine::general_purpose::STANDARD.encode(common::server::random_alnum(32)));
    let env = Env::new().set("CREDHOST_ALLOW_PRIVATE_NETWORKS", "1").set("CREDHOST_TEST_OPS_SECRET", &ops_secret);
    let alice = env.add_user("alice", false);
    let bob = env.add_user("bob", false);
    let ops = format!(
        "[[webhooks]]\nname = \"ops\"\nurl = \"{}\"\nsecret = \"env:CREDHOST_TEST_OPS_SECRET\"\nevents = [\"credential.*\"]\n",
        rx.url("ops")
    );
    // Retries one second apart at first: a deleted subscription's retry would show.
    let cfg = config(&env, 1000, &ops);
    let reader = {
        let out = env.cli(&["tokens", "create", "alice", "--scope", "read"]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).lines().last().unwrap().trim().to_string()
    };
    let server = env.start(&["--config", &cfg]);
    let guard = LeakGuard::new();
    guard.secret(ops_secret.clone());
    let api = server.api(&guard);
    rx.set_secret("ops", &ops_secret).await;

    api.post("/api/webhooks", Some(&reader), json!({"url": rx.url("x")})).await.expect_error(403, "insufficient_scope");
    let (a_id, a_secret) = subscribe(&api, &alice, &guard, json!({"url": rx.url("a")})).await;
    let (b_id, b_secret) = subscribe(&api, &bob, &guard, json!({"url": rx.url("b"), "events": ["*"]})).await;
    rx.set_secret("a", &a_secret).await;
    rx.set_secret("b", &b_secret).await;
    // The read-only token lists; bob sees none of alice's.
    let mine = api.get("/api/webhooks", Some(&reader)).await.expect(200).json();
    assert_eq!(mine.as_array().unwrap().len(), 1);
    assert_eq!(mine[0]["id"], a_id.as_str());
    let bobs = api.get("/api/webhooks", Some(&bob)).await.expect(200).json();
    assert_eq!(bobs.as_array().unwrap().iter().map(|w| w["id"].clone()).collect::<Vec<_>>(), [json!(b_id)]);
    for path in [format!("/api/webhooks/{a_id}"), format!("/api/webhooks/{a_id}/deliveries")] {
        api.get(&path, Some(&bob)).await.expect_error(404, "not_found");
    }
    api.post_empty(&format!("/api/webhooks/{a_id}/ping"), Some(&bob)).await.expect_error(404, "not_found");
    api.delete(&format!("/api/webhooks/{a_id}"), Some(&bob)).await.expect_error(404, "not_found");
    api.get(&format!("/api/webhooks/{a_id}"), Some(&alice)).await.expect(200);

    // A real event: alice's credential tested against a service that refuses it.
    let upstream = refusing_service().await;
    let token = guard.secret(format!("tok-{}", common::server::random_alnum(24)));
    let cred = api
        .post("/api/credentials", Some(&alice), json!({"name": "svc", "type": "bearer_token", "fields": {"token": token, "test_url": upstream}}))
        .await;
    cred.expect(201);
    let cred_id = cred.json()["id"].as_str().unwrap().to_string();
    let t = api.post_empty(&format!("/api/credentials/{cred_id}/test"), Some(&alice)).await.expect(200).json();
    assert_eq!(t["status"], "invalid", "{t}");
    let is_health = |r: &Value| r["type"] == "credential.health_changed" && r["data"]["credential"]["id"] == cred_id.as_str();
    let seen = rx.wait("a", Duration::from_secs(20), "alice's health event", |s| s.iter().any(|r| is_health(r) && r["answered"] == 200)).await;
    let event = seen.iter().find(|r| is_health(r)).unwrap();
    assert_eq!(event["data"]["to"], "invalid", "{event}");
    let id = event["id"].as_str().unwrap().to_string();
    rx.wait("ops", Duration::from_secs(20), "the deployment-wide copy", |s| delivered(s, &id)).await;
    // A revoked grant presented three times: alice hears of it once (one a minute per token).
    let g = api.post(&format!("/api/credentials/{cred_id}/grants"), Some(&alice), json!({"ttl_secs": 600})).await;
    g.expect(201);
    let g = g.json();
    let grant_token = guard.secret(g["token"].as_str().unwrap());
    let grant_id = g["grant_id"].as_str().unwrap().to_string();
    api.delete(&format!("/api/credentials/{cred_id}/grants/{grant_id}"), Some(&alice)).await.expect(200);
    for _ in 0..3 {
        api.get(&format!("/api/credentials/{cred_id}/proxy/whoami"), Some(&grant_token)).await.expect_error(403, "grant_revoked");
    }
    let is_misuse = |r: &Value| r["type"] == "security.token_misuse";
    let seen = rx.wait("a", Duration::from_secs(20), "the misuse event", |s| s.iter().any(|r| is_misuse(r) && r["answered"] == 200)).await;
    let misuse: Vec<&Value> = seen.iter().filter(|r| is_misuse(r)).collect();
    assert_eq!(misuse.len(), 1, "{misuse:#?}");
    let data = &misuse[0]["data"];
    assert_eq!((data["reason"].as_str(), data["token_id"].as_str()), (Some("revoked"), Some(grant_id.as_str())), "{data}");
    assert_eq!(data["credential"]["id"], cred_id.as_str(), "{data}");

    // Bob pings himself; by the time his ping arrives, alice's events would have too.
    let bob_event = ping(&api, &bob, &b_id).await;
    rx.wait("b", Duration::from_secs(20), "bob's ping", |s| delivered(s, &bob_event)).await;
    assert!(rx.seen("b").iter().all(|r| r["id"] == bob_event.as_str()), "bob received another user's event: {:#?}", rx.seen("b"));
    assert!(rx.seen("a").iter().all(|r| r["id"] != bob_event.as_str()), "alice received bob's ping");
    // Pings go to the pinged subscription only, not deployment-wide ones.
    assert!(rx.seen("ops").iter().all(|r| r["type"] == "credential.health_changed"), "{:#?}", rx.seen("ops"));
    assert!(rx.seen("ops").iter().all(|r| r["verified"] == true));

    // Deleting stops pending retries: the receiver fails the first attempt, the
    // subscription is deleted before the retry (due 1 s later), no retry comes.
    rx.fail("a", 1_000_000).await;
    let doomed = ping(&api, &alice, &a_id).await;
    rx.wait("a", Duration::from_secs(10), "the first attempt", |s| s.iter().any(|r| r["id"] == doomed.as_str())).await;
    api.delete(&format!("/api/webhooks/{a_id}"), Some(&alice)).await.expect(204);
    let after_delete = rx.attempts_of("a", &doomed).len();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(rx.attempts_of("a", &doomed).len(), after_delete, "a deleted subscription was retried");
    assert_eq!(after_delete, 1);
    api.get(&format!("/api/webhooks/{a_id}/deliveries"), Some(&alice)).await.expect_error(404, "not_found");
    api.delete(&format!("/api/webhooks/{a_id}"), Some(&alice)).await.expect_error(404, "not_found");

    // Audited, without the secret (the guard checks every response).
    let audit = api.get("/api/audit?limit=1000", Some(&alice)).await.expect(200).json();
    let records = audit.get("items").cloned().unwrap_or(audit);
    let actions: Vec<&str> = records.as_array().unwrap().iter().filter_map(|r| r["action"].as_str()).collect();
    assert!(actions.contains(&"webhook.create") && actions.contains(&"webhook.delete"), "{actions:?}");
    guard.check("server log", &server.stderr());
}

/// `[[webhooks]]` mistakes stop start-up (and fail `check-config`) with an error naming
/// the entry and the key; a literal secret is refused and never echoed.
#[test]
fn configured_webhooks_are_checked_at_start() {
    let literal = "whsec_TGl0ZXJhbFNlY3JldE5vdEFsbG93ZWQ=";
    let env_secret = "secret = \"env:CREDHOST_TEST_SECRET\"\n";
    for (entry, key, private) in [
        (format!("name = \"a\"\nurl = \"https://hooks.example/x\"\nsecret = \"{literal}\"\n"), "secret", false),
        ("name = \"a\"\nurl = \"http://10.0.0.1/x\"\nsecret = \"env:CREDHOST_TEST_UNSET_SECRET\"\n".to_string(), "secret", false),
        (format!("name = \"a\"\nurl = \"http://169.254.169.254/x\"\n{env_secret}"), "url", false),
        (format!("name = \"a\"\nurl = \"http://127.0.0.1:9/x\"\n{env_secret}events = [\"bogus\"]\n"), "events", true),
    ] {
        let mut env = Env::new().set("CREDHOST_TEST_SECRET", "whsec_dGVzdC1zZWNyZXQtMTIzNDU2Nzg5MA==");
        if private {
            env = env.set("CREDHOST_ALLOW_PRIVATE_NETWORKS", "1");
        }
        let cfg = config(&env, 5000, &format!("[[webhooks]]\n{entry}"));
        let mut server: Server = env.spawn(&["--config", &cfg]);
        let status = server.wait_exit(Duration::from_secs(30)).expect("start-up refused");
        assert!(!status.success());
        let log = server.stderr();
        assert!(log.contains(&format!("[[webhooks]] #1 (\"a\") {key}:")), "{key}:\n{log}");
        assert!(!log.contains(literal), "{log}");
        // `check-config` reports the same problem without starting anything.
        let out = env.cli(&["check-config", &cfg]);
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(!out.status.success() && text.contains(&format!("[[webhooks]] #1 (\"a\") {key}:")), "{key}: {text}");
        assert!(!text.contains(literal), "{text}");
    }
}
