//! Secret versions, rotation with test-before-promote, rollback and crash safety (issue 14
//! items 5 and 6), against the real binary over HTTP. A local service stands in for the
//! credential's API: it records which token each request carried and accepts only the
//! tokens the test says are valid, so every check below reads at the service which
//! secret the host actually used.

mod common;

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::HeaderMap;
use axum::Router;
use common::server::{random_alnum, Api, Env, LeakGuard, Server};
use serde_json::{json, Value};

/// The credential's service: `GET` anything; 200 for an accepted token, 401 otherwise.
#[derive(Clone, Default)]
struct Service {
    seen: Arc<Mutex<Vec<String>>>,
    accepted: Arc<Mutex<HashSet<String>>>,
    delay_ms: Arc<AtomicU64>,
    /// Bodies POSTed to `/hook` (webhook deliveries).
    hooks: Arc<Mutex<Vec<Value>>>,
}

impl Service {
    async fn start() -> (Service, String) {
        let svc = Service::default();
        let state = svc.clone();
        let hooks = svc.hooks.clone();
        let app = Router::new()
            .route(
                "/hook",
                axum::routing::post(move |body: String| {
                    let hooks = hooks.clone();
                    async move {
                        hooks.lock().unwrap().push(serde_json::from_str(&body).unwrap_or(Value::Null));
                        "ok"
                    }
                }),
            )
            .fallback(move |headers: HeaderMap| {
            let s = state.clone();
            async move {
                let token = headers
                    .get("authorization")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.strip_prefix("Bearer "))
                    .unwrap_or("")
                    .to_string();
                s.seen.lock().unwrap().push(token.clone());
                let delay = s.delay_ms.load(Ordering::Relaxed);
                if delay > 0 {
                    tokio::time::sleep(Duration::from_millis(delay)).await;
                }
                let ok = s.accepted.lock().unwrap().contains(&token);
                let status = if ok { 200 } else { 401 };
                axum::response::Response::builder()
                    .status(status)
                    .header("content-type", "application/json")
                    .body(axum::body::Body::from(format!("{{\"ok\":{ok}}}")))
                    .unwrap()
            }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        (svc, format!("http://127.0.0.1:{port}"))
    }

    fn accept(&self, token: &str) {
        self.accepted.lock().unwrap().insert(token.to_string());
    }

    fn last(&self) -> String {
        self.seen.lock().unwrap().last().cloned().unwrap_or_default()
    }
}

struct World {
    env: Env,
    server: Server,
    guard: Arc<LeakGuard>,
    api: Api,
    root: String,
    alice: String,
    bob: String,
    svc: Service,
    url: String,
}

async fn world(vars: &[(&str, &str)]) -> World {
    let mut env = Env::new().set("CREDHOST_ALLOW_PRIVATE_NETWORKS", "true");
    for (k, v) in vars {
        env = env.set(k, v);
    }
    let root = env.add_user("root", true);
    let alice = env.add_user("alice", false);
    let bob = env.add_user("bob", false);
    let server = env.start(&[]);
    let guard = LeakGuard::new();
    let api = server.api(&guard);
    api.learn_secret_fields().await;
    let (svc, url) = Service::start().await;
    World { env, server, guard, api, root, alice, bob, svc, url }
}

impl World {
    /// A token the service accepts (or not), registered with the leak guard.
    fn token(&self, accepted: bool) -> String {
        let t = self.guard.secret(format!("tok-{}", random_alnum(24)));
        if accepted {
            self.svc.accept(&t);
        }
        t
    }

    async fn create(&self, token: &str) -> String {
        let r = self
            .api
            .post(
                "/api/credentials",
                Some(&self.alice),
                json!({"name": format!("svc-{}", random_alnum(6)), "type": "bearer_token",
                       "fields": {"token": token, "test_url": format!("{}/check", self.url)}}),
            )
            .await;
        r.expect(201);
        r.json()["id"].as_str().unwrap().to_string()
    }

    async fn rotate(&self, id: &str, body: Value, key: Option<&str>) -> common::server::Resp {
        let path = format!("/api/credentials/{id}/rotate");
        let mut req = self.api.http.post(format!("{}{path}", self.api.base)).bearer_auth(&self.alice).json(&body);
        if let Some(k) = key {
            req = req.header("idempotency-key", k);
        }
        self.api.send(reqwest::Method::POST, &path, req).await
    }

    async fn versions(&self, id: &str) -> Value {
        let r = self.api.get(&format!("/api/credentials/{id}/versions"), Some(&self.alice)).await;
        r.expect(200);
        r.json()
    }

    /// Tests the credential and returns (status, the token the service saw).
    async fn test(&self, id: &str) -> (String, String) {
        let r = self.api.post_empty(&format!("/api/credentials/{id}/test"), Some(&self.alice)).await;
        r.expect(200);
        (r.json()["status"].as_str().unwrap().to_string(), self.svc.last())
    }

    async fn current(&self, id: &str) -> Value {
        let r = self.api.get(&format!("/api/credentials/{id}"), Some(&self.alice)).await;
        r.expect(200);
        r.json()
    }

    /// Waits (up to 15 s: a monitor sweep recounts within ~5 s) for the
    /// `credhost_rotations_pending` gauge to read `n`.
    async fn pending_gauge_becomes(&self, n: u64, what: &str) {
        let want = format!("credhost_rotations_pending {n}\n");
        let deadline = std::time::Instant::now() + Duration::from_secs(15);
        loop {
            let metrics = self.api.get("/metrics", None).await.text;
            if metrics.contains(&want) {
                return;
            }
            let shown = metrics.lines().find(|l| l.starts_with("credhost_rotations_pending")).map(str::to_owned);
            assert!(std::time::Instant::now() < deadline, "{what}: the gauge never read {n}: {shown:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The server's log holds no secret the test sent.
    fn check_log(&self) {
        self.guard.check("server log", &self.server.stderr());
    }
}

fn state_of(versions: &Value, n: u64) -> String {
    versions["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["version"] == n)
        .map_or("absent".into(), |v| v["state"].as_str().unwrap().to_string())
}

fn item(versions: &Value, n: u64) -> Value {
    versions["items"].as_array().unwrap().iter().find(|v| v["version"] == n).cloned().unwrap_or(Value::Null)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_secret_keeps_current_good_one_promotes_force_and_rollback() {
    let w = world(&[]).await;
    let old = w.token(true);
    let id = w.create(&old).await;
    assert_eq!(w.test(&id).await, ("valid".into(), old.clone()));
    let fp1 = w.current(&id).await["fields"]["token"]["fingerprint"].clone();

    // A new secret the service refuses: the current version stays in use.
    let bad = w.token(false);
    let r = w.rotate(&id, json!({"fields": {"token": bad}}), None).await;
    r.expect(200);
    let v = r.json();
    assert_eq!((v["result"].as_str(), v["status"].as_str()), (Some("failed"), Some("invalid")), "{v}");
    assert_eq!((v["version"].as_u64(), v["current_version"].as_u64()), (Some(2), Some(1)), "{v}");
    assert_eq!(w.svc.last(), bad, "the pending version was tested with its own secret");
    let c = w.current(&id).await;
    assert_eq!(c["version"], 1);
    assert_eq!(c["fields"]["token"]["fingerprint"], fp1);
    let list = w.versions(&id).await;
    assert_eq!((list["current"].as_u64(), list["pending"].as_u64()), (Some(1), Some(2)), "{list}");
    assert_eq!(item(&list, 2)["test"]["status"], "invalid", "{list}");
    assert_eq!(item(&list, 2)["test"]["trigger"], "rotation", "{list}");
    assert_ne!(item(&list, 2)["fingerprints"]["token"], fp1, "{list}");
    assert_eq!(w.test(&id).await, ("valid".into(), old.clone()), "test still uses the old secret");
    let r = w.api.get(&format!("/api/credentials/{id}/proxy/anything"), Some(&w.alice)).await;
    r.expect(200);
    assert_eq!(w.svc.last(), old, "the proxy still uses the old secret");
    let metrics = w.api.get("/metrics", None).await.text;
    assert!(metrics.contains("credhost_rotations_total{result=\"failed\"} 1"), "{metrics}");
    w.pending_gauge_becomes(1, "a failed rotation left a pending version").await;

    // A good one supersedes the failed pending version and becomes current.
    let good = w.token(true);
    let r = w.rotate(&id, json!({"fields": {"token": good}}), None).await;
    r.expect(200);
    let v = r.json();
    assert_eq!(v["result"], "promoted", "{v}");
    assert_eq!((v["version"].as_u64(), v["previous_version"].as_u64()), (Some(3), Some(1)), "{v}");
    assert_eq!(v["superseded_version"], 2, "{v}");
    let list = w.versions(&id).await;
    assert_eq!(
        (state_of(&list, 3), state_of(&list, 1), state_of(&list, 2)),
        ("current".into(), "previous".into(), "retired".into()),
        "{list}"
    );
    assert_eq!(item(&list, 2)["test"]["status"], "invalid", "a superseded version keeps its outcome: {list}");
    assert!(list.get("pending").is_none(), "{list}");
    w.pending_gauge_becomes(0, "promoted over a failed pending version").await;
    assert_eq!(w.current(&id).await["version"], 3);
    assert_eq!(w.test(&id).await, ("valid".into(), good.clone()));

    // Rollback to version 1: the service sees the old key again.
    let r = w.api.post_empty(&format!("/api/credentials/{id}/versions/1/promote"), Some(&w.alice)).await;
    r.expect(200);
    assert_eq!(r.json()["version"], 1);
    assert_eq!(w.test(&id).await, ("valid".into(), old.clone()));
    let list = w.versions(&id).await;
    assert_eq!((state_of(&list, 1), state_of(&list, 3)), ("current".into(), "previous".into()), "{list}");
    assert_eq!(item(&list, 1)["forced"], true, "{list}");
    // 2^31 + 1 and u32::MAX are where `versions` keeps metadata: not versions either (never
    // read as sealed secrets).
    for missing in ["99", "0", "x", "-1", "2147483649", "4294967295"] {
        w.api
            .post_empty(&format!("/api/credentials/{id}/versions/{missing}/promote"), Some(&w.alice))
            .await
            .expect_error(404, "not_found");
    }

    // force: promoted although the service refuses it (audited as forced).
    let forced = w.token(false);
    let r = w.rotate(&id, json!({"fields": {"token": forced}, "force": true}), None).await;
    r.expect(200);
    let v = r.json();
    assert_eq!((v["result"].as_str(), v["status"].as_str()), (Some("forced"), Some("invalid")), "{v}");
    assert_eq!(w.current(&id).await["version"], v["version"]);
    assert_eq!(w.test(&id).await, ("invalid".into(), forced.clone()));
    let audit = w.api.get("/api/audit?action=credential.rotation.*&limit=100", Some(&w.alice)).await;
    audit.expect(200);
    let text = audit.text.clone();
    assert!(text.contains("credential.rotation.completed") && text.contains("credential.rotation.failed"), "{text}");
    assert!(text.contains("forced=true"), "{text}");

    // Nothing in any answer or in the log is a secret value (the guard checked every
    // response); the versions listing holds fingerprints only.
    let list = w.versions(&id).await.to_string();
    for t in [&old, &bad, &good, &forced] {
        assert!(!list.contains(t.as_str()));
    }

    // A PATCH with a new secret supersedes a failed pending version: the monitor's next
    // sweep counts it gone.
    let refused = w.token(false);
    let r = w.rotate(&id, json!({"fields": {"token": refused}}), None).await;
    r.expect(200);
    assert_eq!(r.json()["result"], "failed");
    w.pending_gauge_becomes(1, "a failed rotation").await;
    let patched = w.token(true);
    w.api.patch(&format!("/api/credentials/{id}"), Some(&w.alice), json!({"fields": {"token": patched}})).await.expect(200);
    assert!(w.versions(&id).await.get("pending").is_none());
    w.pending_gauge_becomes(0, "a PATCH superseded the pending version").await;
    w.check_log();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_scopes_and_other_users_change_nothing() {
    let w = world(&[]).await;
    let old = w.token(true);
    let id = w.create(&old).await;
    let before = w.versions(&id).await;
    let errs = |r: &common::server::Resp| -> Vec<String> {
        let v = r.expect_error(422, "invalid_fields");
        v["error"]["fields"].as_array().unwrap().iter().map(|f| f["field"].as_str().unwrap().to_string()).collect()
    };
    let new = w.token(true);
    assert_eq!(errs(&w.rotate(&id, json!({"fields": {"test_url": "http://example.com/"}}), None).await), ["test_url"]);
    assert_eq!(errs(&w.rotate(&id, json!({"fields": {"nope": new}}), None).await), ["nope"]);
    assert_eq!(errs(&w.rotate(&id, json!({"fields": {}}), None).await), ["fields"]);
    assert_eq!(errs(&w.rotate(&id, json!({"fields": {"token": "has a space in it"}}), None).await), ["token"]);
    assert_eq!(errs(&w.rotate(&id, json!({"fields": {"token": old}}), None).await), ["token"]);
    assert_eq!(errs(&w.rotate(&id, json!({"fields": {"token": new}}), Some("")).await), ["Idempotency-Key"]);
    w.rotate(&id, json!({"fields": {"token": new}, "extra": 1}), None).await.expect_error(400, "bad_request");

    // Another user's credential id is not found, on every route.
    let path = format!("/api/credentials/{id}");
    w.api.get(&format!("{path}/versions"), Some(&w.bob)).await.expect_error(404, "not_found");
    let r = w.api.post(&format!("{path}/rotate"), Some(&w.bob), json!({"fields": {"token": new}})).await;
    r.expect_error(404, "not_found");
    w.api.post_empty(&format!("{path}/versions/1/promote"), Some(&w.bob)).await.expect_error(404, "not_found");

    // A grant cannot rotate; a token without `test` cannot either.
    let g = w.api.post(&format!("{path}/grants"), Some(&w.alice), json!({"ttl_secs": 600})).await;
    g.expect(201);
    let grant = g.json()["token"].as_str().unwrap().to_string();
    let r = w.api.post(&format!("{path}/rotate"), Some(&grant), json!({"fields": {"token": new}})).await;
    r.expect_error(403, "grant_only");
    w.api.get(&format!("{path}/versions"), Some(&grant)).await.expect_error(403, "grant_only");
    let t = w.api.post("/api/admin/users/alice/tokens", Some(&w.root), json!({"scopes": ["read", "write"]})).await;
    t.expect(201);
    let rw = t.json()["token"].as_str().unwrap().to_string();
    let r = w.api.post(&format!("{path}/rotate"), Some(&rw), json!({"fields": {"token": new}})).await;
    r.expect_error(403, "insufficient_scope");

    assert_eq!(w.versions(&id).await, before, "refused requests changed nothing");
    assert_eq!(w.test(&id).await, ("valid".into(), old));
    w.check_log();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotency_key_replays_and_refuses_another_body() {
    let w = world(&[]).await;
    let old = w.token(true);
    let id = w.create(&old).await;
    let new = w.token(true);
    let key = format!("rot-{}", random_alnum(10));
    let body = json!({"fields": {"token": new}});
    let first = w.rotate(&id, body.clone(), Some(&key)).await;
    first.expect(200);
    assert_eq!(first.json()["result"], "promoted");
    let hits = w.svc.seen.lock().unwrap().len();
    let again = w.rotate(&id, body.clone(), Some(&key)).await;
    again.expect(200);
    assert_eq!(again.json(), first.json(), "the replay answers the same");
    assert_eq!(w.svc.seen.lock().unwrap().len(), hits, "no second test, no second rotation");
    let list = w.versions(&id).await;
    assert_eq!(list["items"].as_array().unwrap().len(), 2, "{list}");
    let other = w.token(true);
    w.rotate(&id, json!({"fields": {"token": other}}), Some(&key)).await.expect_error(409, "conflict");
    w.rotate(&id, json!({"fields": {"token": new}, "force": true}), Some(&key)).await.expect_error(409, "conflict");
    assert_eq!(w.versions(&id).await, list);
    // A new key is a new rotation.
    let r = w.rotate(&id, json!({"fields": {"token": other}}), Some("another-key")).await;
    r.expect(200);
    assert_eq!(r.json()["version"], 3);
    w.check_log();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_keeps_max_versions_and_bad_values_are_refused() {
    for (value, says) in [("0", "max_versions"), ("abc", "CREDHOST_MAX_VERSIONS"), ("100000", "max_versions")] {
        let env = Env::new().set("CREDHOST_MAX_VERSIONS", value);
        let out = env.cli(&["users", "add", "x"]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.contains(says) && err.contains(value), "{value}: {err}");
    }
    let w = world(&[("CREDHOST_MAX_VERSIONS", "3")]).await;
    let first = w.token(true);
    let id = w.create(&first).await;
    // A failed rotation leaves a pending version; PATCHes then supersede it.
    let bad = w.token(false);
    w.rotate(&id, json!({"fields": {"token": bad}}), None).await.expect(200);
    let mut last = String::new();
    for _ in 0..4 {
        last = w.token(true);
        let r = w.api.patch(&format!("/api/credentials/{id}"), Some(&w.alice), json!({"fields": {"token": last}})).await;
        r.expect(200);
    }
    let list = w.versions(&id).await;
    let numbers: Vec<u64> = list["items"].as_array().unwrap().iter().map(|v| v["version"].as_u64().unwrap()).collect();
    assert_eq!(numbers, [6, 5, 4], "{list}");
    assert_eq!(list["max_versions"], 3);
    assert!(list.get("pending").is_none(), "a PATCH supersedes the pending version: {list}");
    assert_eq!(item(&list, 6)["reason"], "update");
    assert_eq!(item(&list, 6)["actor"], "alice");
    assert_eq!(w.test(&id).await, ("valid".into(), last));
    w.api
        .post_empty(&format!("/api/credentials/{id}/versions/1/promote"), Some(&w.alice))
        .await
        .expect_error(404, "not_found");
    // Purge destroys all.
    w.api.delete(&format!("/api/credentials/{id}?purge=true"), Some(&w.alice)).await.expect(204);
    w.api.get(&format!("/api/credentials/{id}/versions"), Some(&w.alice)).await.expect_error(404, "not_found");
    w.check_log();
}

/// A version sealed for another destination (before the credential's destination field
/// changed) cannot become current again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn promote_refuses_a_version_sealed_for_another_destination() {
    let w = world(&[]).await;
    let old = w.token(true);
    let id = w.create(&old).await;
    let (svc2, url2) = Service::start().await;
    let moved = w.token(false);
    svc2.accept(&moved);
    // Moving the destination needs the secret again: version 2, sealed for the new URL.
    let r = w
        .api
        .patch(
            &format!("/api/credentials/{id}"),
            Some(&w.alice),
            json!({"fields": {"test_url": format!("{url2}/check"), "token": moved}}),
        )
        .await;
    r.expect(200);
    assert_eq!(r.json()["version"], 2);
    let e = w.api.post_empty(&format!("/api/credentials/{id}/versions/1/promote"), Some(&w.alice)).await;
    let v = e.expect_error(409, "conflict");
    assert!(v["error"]["message"].as_str().unwrap().contains("destination"), "{v}");
    assert_eq!(w.current(&id).await["version"], 2);
    let r = w.api.post_empty(&format!("/api/credentials/{id}/test"), Some(&w.alice)).await;
    r.expect(200);
    assert_eq!(r.json()["status"], "valid");
    assert_eq!(svc2.last(), moved);
    assert!(!w.svc.seen.lock().unwrap().contains(&moved), "the new secret never went to the old destination");
    w.check_log();
}

fn random_below(n: u64) -> u64 {
    let mut b = [0u8; 8];
    getrandom::fill(&mut b).unwrap();
    u64::from_le_bytes(b) % n
}

/// SIGKILL at random points of rotations against a slow service: after each restart the
/// credential works through its current version (the service sees that version's key),
/// and the new version is current, pending or absent, never half-promoted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_rotation_never_loses_the_current_version() {
    let mut w = world(&[]).await;
    let mut key_in_use = w.token(true);
    let id = w.create(&key_in_use).await;
    let mut current = 1u64;
    let mut outcomes = std::collections::BTreeMap::<&str, usize>::new();
    for round in 0..10 {
        let new = w.token(true);
        w.svc.delay_ms.store(600, Ordering::Relaxed);
        let api = w.api.clone();
        let alice = w.alice.clone();
        let path = format!("/api/credentials/{id}/rotate");
        let body = json!({"fields": {"token": new}});
        let key = format!("crash-{round}");
        let http = api.http.clone();
        let url = format!("{}{path}", api.base);
        let sent = body.clone();
        let header = key.clone();
        let request = tokio::spawn(async move {
            http.post(url).bearer_auth(alice).header("idempotency-key", header).json(&sent).send().await
        });
        tokio::time::sleep(Duration::from_millis(random_below(1500))).await;
        w.server.signal("KILL");
        w.server.wait_exit(Duration::from_secs(10)).expect("killed");
        let _ = request.await;
        w.svc.delay_ms.store(0, Ordering::Relaxed);
        w.server = w.env.start(&[]);
        w.api = w.server.api(&w.guard);

        let list = w.versions(&id).await;
        // The gauge is counted from the store at start (the first sweep).
        w.pending_gauge_becomes(u64::from(list.get("pending").is_some()), &format!("round {round}, restarted")).await;
        let now = list["current"].as_u64().unwrap();
        for v in list["items"].as_array().unwrap() {
            if v["state"] == "pending" {
                assert_ne!(v["test"]["status"], "valid", "round {round}: a valid pending version was not promoted: {list}");
            }
        }
        let expected = if now == current {
            outcomes.entry(if list.get("pending").is_some() { "pending" } else { "absent" }).and_modify(|n| *n += 1).or_insert(1);
            key_in_use.clone()
        } else {
            assert!(now > current, "round {round}: {list}");
            assert!(list.get("pending").is_none(), "round {round}: promoted but still pending: {list}");
            assert_eq!(item(&list, now)["reason"], "rotation", "{list}");
            assert_eq!(item(&list, now)["test"]["status"], "valid", "{list}");
            *outcomes.entry("promoted").or_insert(0) += 1;
            new.clone()
        };
        assert_eq!(w.current(&id).await["version"], now);
        assert_eq!(w.test(&id).await, ("valid".into(), expected.clone()), "round {round}");
        let r = w.api.get(&format!("/api/credentials/{id}/proxy/x"), Some(&w.alice)).await;
        r.expect(200);
        assert_eq!(w.svc.last(), expected, "round {round}: the proxy uses the current version");
        current = now;
        key_in_use = expected;
        // Odd rounds: the client retries with its idempotency key. An interrupted rotation
        // resumes, a finished one answers again, one never written runs: the new key ends
        // up current. (Even rounds leave a pending version for the next rotate to supersede.)
        if round % 2 == 1 {
            let r = w.rotate(&id, body, Some(&key)).await;
            r.expect(200);
            let v = r.json();
            assert_eq!(v["result"], "promoted", "round {round}: {v}");
            current = v["version"].as_u64().unwrap();
            assert_eq!(w.current(&id).await["version"], current);
            assert_eq!(w.test(&id).await, ("valid".into(), new.clone()), "round {round}");
            key_in_use = new;
        }
    }
    eprintln!("kill outcomes over 10 rounds: {outcomes:?}");
    // After all that, a rotation still works (a leftover pending version is superseded).
    let last = w.token(true);
    let r = w.rotate(&id, json!({"fields": {"token": last}}), None).await;
    r.expect(200);
    assert_eq!(r.json()["result"], "promoted");
    assert_eq!(w.test(&id).await, ("valid".into(), last));
    w.check_log();
}

/// Rotations report their outcome as events, delivered to the owner's webhook: a failed
/// one names the reason, a completed one the versions; the bodies hold no secret.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_events_reach_the_owners_webhook() {
    let w = world(&[]).await;
    let old = w.token(true);
    let id = w.create(&old).await;
    let r = w
        .api
        .post("/api/webhooks", Some(&w.alice), json!({"url": format!("{}/hook", w.url), "events": ["credential.rotation.*"]}))
        .await;
    r.expect(201);
    let bad = w.token(false);
    w.rotate(&id, json!({"fields": {"token": bad}}), None).await.expect(200);
    let good = w.token(true);
    w.rotate(&id, json!({"fields": {"token": good}}), None).await.expect(200);
    w.api.post_empty(&format!("/api/credentials/{id}/versions/1/promote"), Some(&w.alice)).await.expect(200);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let events = loop {
        let got = w.svc.hooks.lock().unwrap().clone();
        if got.len() >= 3 || std::time::Instant::now() > deadline {
            break got;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let find = |kind: &str, via: &str| {
        events.iter().find(|e| e["type"] == kind && e["data"]["via"] == via).cloned().unwrap_or_else(|| {
            panic!("no {kind} event via {via} in {events:?}")
        })
    };
    let failed = find("credential.rotation.failed", "rotate");
    assert_eq!(failed["data"]["credential"]["id"], id.as_str(), "{failed}");
    assert_eq!((failed["data"]["version"].as_u64(), failed["data"]["status"].as_str()), (Some(2), Some("invalid")), "{failed}");
    assert_eq!(failed["data"]["forced"], false, "{failed}");
    let done = find("credential.rotation.completed", "rotate");
    assert_eq!((done["data"]["version"].as_u64(), done["data"]["previous_version"].as_u64()), (Some(3), Some(1)), "{done}");
    let back = find("credential.rotation.completed", "promote");
    assert_eq!((back["data"]["version"].as_u64(), back["data"]["forced"].as_bool()), (Some(1), Some(true)), "{back}");
    let text = serde_json::to_string(&events).unwrap();
    w.guard.check("webhook bodies", &text);
    w.check_log();
}

/// A second rotate, or a promote, while a rotation of the same credential runs is refused
/// with a 409 naming the pending version; the running one finishes normally.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotate_while_one_runs_is_refused() {
    let w = world(&[]).await;
    let old = w.token(true);
    let id = w.create(&old).await;
    let first = w.token(true);
    w.svc.delay_ms.store(3000, Ordering::Relaxed);
    let api = w.api.clone();
    let (alice, path) = (w.alice.clone(), format!("/api/credentials/{id}/rotate"));
    let body = json!({"fields": {"token": first}});
    let running = tokio::spawn(async move { api.post(&path, Some(&alice), body).await });
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let second = w.token(true);
    let v = w.rotate(&id, json!({"fields": {"token": second}}), None).await.expect_error(409, "conflict");
    assert!(v["error"]["message"].as_str().unwrap().contains("pending version 2"), "{v}");
    let v = w
        .api
        .post_empty(&format!("/api/credentials/{id}/versions/1/promote"), Some(&w.alice))
        .await
        .expect_error(409, "conflict");
    assert!(v["error"]["message"].as_str().unwrap().contains("in progress"), "{v}");
    let done = running.await.unwrap();
    done.expect(200);
    assert_eq!(done.json()["result"], "promoted");
    w.svc.delay_ms.store(0, Ordering::Relaxed);
    assert_eq!(w.test(&id).await, ("valid".into(), first));
    w.check_log();
}
