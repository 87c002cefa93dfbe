//! End-to-end tests of the HTTP API: the real `credhost` binary on a free port with its
//! own data dir and master key, users made with the CLI, everything driven over HTTP.
//!
//! Every request goes through `common::server::Api`, which remembers the value of every
//! secret field a request sends and fails the test if any response (body or header)
//! contains one; each test ends by checking the server's stdout and stderr the same way.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::server::{
    assert_error_shape, create, id_of, mode_of, names, random_alnum, random_hex, world, Body, Env, LeakGuard, Server,
};
use reqwest::Method;
use serde_json::{json, Value};
use sha2::Digest;

/// Every route the API serves, as in the OpenAPI document.
const ROUTES: &[(&str, &str)] = &[
    ("post", "/api/credentials"),
    ("get", "/api/credentials"),
    ("get", "/api/credentials/{id}"),
    ("patch", "/api/credentials/{id}"),
    ("delete", "/api/credentials/{id}"),
    ("post", "/api/credentials/{id}/restore"),
    ("post", "/api/credentials/{id}/validate"),
    ("post", "/api/credentials/{id}/test"),
    ("get", "/api/credentials/{id}/tests"),
    ("get", "/api/credentials/{id}/versions"),
    ("post", "/api/credentials/{id}/rotate"),
    ("post", "/api/credentials/{id}/versions/{version}/promote"),
    ("post", "/api/credentials/{id}/grants"),
    ("get", "/api/credentials/{id}/grants"),
    ("delete", "/api/credentials/{id}/grants/{grant_id}"),
    ("get", "/api/credentials/{id}/proxy/{path}"),
    ("post", "/api/credentials/{id}/reveal"),
    ("get", "/api/credential-types"),
    ("get", "/api/audit"),
    ("post", "/api/admin/users"),
    ("post", "/api/admin/users/{name}/tokens"),
    ("delete", "/api/admin/tokens/{id}"),
    ("get", "/api/admin/users"),
    ("get", "/api/admin/tokens"),
    ("get", "/api/tokens"),
    ("delete", "/api/tokens/{id}"),
    ("get", "/api/admin/plugins"),
    ("post", "/api/admin/plugins/reload"),
    ("post", "/api/admin/keys/rotate"),
    ("post", "/api/webhooks"),
    ("get", "/api/webhooks"),
    ("get", "/api/webhooks/{id}"),
    ("delete", "/api/webhooks/{id}"),
    ("get", "/api/webhooks/{id}/deliveries"),
    ("post", "/api/webhooks/{id}/ping"),
    ("get", "/healthz"),
    ("get", "/readyz"),
    ("get", "/metrics"),
    ("get", "/openapi.json"),
];

/// Routes that answer without a token.
const PUBLIC: &[&str] = &["/api/credential-types", "/healthz", "/readyz", "/metrics", "/openapi.json"];

const BUILT_IN_TYPES: [&str; 6] = ["alpaca", "api_key", "bearer_token", "db_dsn", "http_basic", "ssh"];

fn method(m: &str) -> Method {
    Method::from_bytes(m.to_ascii_uppercase().as_bytes()).unwrap()
}

// ---- request bodies (secret values are random, so a leak cannot match by chance) ----

/// An Alpaca paper key pair (`PK…` key id, 40-character secret).
fn alpaca(name: &str) -> Value {
    let key_id = format!("PK{}", random_alnum(18).to_ascii_uppercase());
    json!({"name": name, "type": "alpaca", "environment": "paper",
           "fields": {"key_id": key_id, "secret_key": random_alnum(40)}})
}

fn bearer(name: &str, tags: &[&str]) -> Value {
    json!({"name": name, "type": "bearer_token", "description": format!("{name} token"), "tags": tags,
           "fields": {"token": format!("tok-{}", random_alnum(32))}})
}

fn ssh(name: &str) -> Value {
    json!({"name": name, "type": "ssh",
           "fields": {"host": "db1.internal", "port": 2222, "username": "deploy", "password": format!("pw-{}", random_alnum(20))}})
}

/// The leak check on everything the servers printed, and a sanity check that the guard
/// did work in this test.
fn finish(guard: &LeakGuard, servers: &[&Server], min_secrets: usize) {
    for s in servers {
        let stderr = s.stderr();
        assert!(!stderr.is_empty(), "server wrote no logs at all");
        guard.check("server stderr (logs)", &stderr);
        guard.check("server stdout", &s.stdout().join("\n"));
    }
    assert!(guard.secrets() >= min_secrets, "only {} secrets were sent", guard.secrets());
    assert!(guard.checked() > 10, "only {} texts were checked", guard.checked());
}


// ---- the harness itself ----

#[test]
fn leak_guard_catches_a_leak() {
    let guard = LeakGuard::new();
    let s = guard.secret(random_alnum(24));
    guard.check("clean text", "nothing to see");
    let caught = std::panic::catch_unwind(|| guard.check("leaky text", &format!("{{\"token\":\"{s}\"}}")));
    assert!(caught.is_err(), "the guard missed a secret");
    // Values of secret fields in request bodies are registered; other fields are not.
    guard.secret_field_names(["token".to_string()]);
    let token = random_alnum(30);
    guard.scan_request(&json!({"fields": {"token": token, "header_name": "X-Plain-Header-Name"}}));
    assert!(std::panic::catch_unwind(|| guard.check("echo", &token)).is_err(), "token field not registered");
    guard.check("plain field", "X-Plain-Header-Name");
}

// ---- tests against the real binary ----

/// 401 on every authenticated route without or with a bad token, 403 on admin routes for
/// a user, and the one JSON error shape for 400, 404, 405, 413, 415 and 422.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_and_error_shapes() {
    let w = world().await;
    let (api, alice) = (&w.api, w.alice.as_str());

    // Credential types need no token and list the built-ins with their fields.
    let types = api.get("/api/credential-types", None).await;
    types.expect(200);
    let ids: BTreeSet<String> =
        types.json().as_array().unwrap().iter().map(|t| t["id"].as_str().unwrap().to_string()).collect();
    for t in BUILT_IN_TYPES {
        assert!(ids.contains(t), "type {t} missing from {ids:?}");
    }

    let cred = create(api, alice, bearer("target", &[])).await;
    let id = id_of(&cred);
    let body_for = |m: &str, path: &str| -> Body {
        match (m, path) {
            ("post", "/api/credentials") => Body::Json(bearer("never-created", &[])),
            ("patch", _) => Body::Json(json!({"description": "changed without a token"})),
            ("post", "/api/admin/users") => Body::Json(json!({"name": "mallory"})),
            ("post", "/api/admin/keys/rotate") => Body::Json(json!({"new_key_file": "/nonexistent/key"})),
            ("post", "/api/webhooks") => Body::Json(json!({"url": "https://example.com/hook"})),
            _ => Body::None,
        }
    };
    let concrete = |path: &str| path.replace("{id}", &id).replace("{name}", "alice").replace("{grant_id}", "grt_0").replace("{path}", "v2/x");
    let bad_tokens: [(&str, String); 5] = [
        ("none", String::new()),
        ("unknown", format!("chst_{}", random_alnum(43))),
        ("garbage", "Bearer".into()),
        ("basic", "Basic YWxpY2U6cGFzc3dvcmQ=".into()),
        ("token without scheme", alice.to_string()),
    ];
    for (m, path) in ROUTES {
        if PUBLIC.contains(path) {
            continue;
        }
        for (what, header) in &bad_tokens {
            let mut req = api.http.request(method(m), format!("{}{}", api.base, concrete(path)));
            if !header.is_empty() {
                req = req.header("authorization", header.as_str());
            }
            req = match body_for(m, path) {
                Body::Json(v) => req.json(&v),
                _ => req,
            };
            let r = api.send(method(m), &concrete(path), req).await;
            assert_eq!(r.status, 401, "{m} {path} with {what} token: {}", r.text);
            r.expect_error(401, "unauthorized");
        }
    }
    // None of that changed anything.
    let got = api.get(&format!("/api/credentials/{id}"), Some(alice)).await;
    got.expect(200);
    assert_eq!(got.json(), cred);
    assert_eq!(names(&api.get("/api/credentials", Some(alice)).await.json()), ["target"]);
    // A lower-case scheme is accepted (RFC 7235: the scheme is case-insensitive).
    let r = api
        .send(Method::GET, "/api/credentials", api.http.get(format!("{}/api/credentials", api.base)).header("authorization", format!("bearer {alice}")))
        .await;
    r.expect(200);

    // Admin routes: 403 for a user, and nothing happens.
    for (m, path) in ROUTES.iter().filter(|(_, p)| p.starts_with("/api/admin")) {
        let req = api.http.request(method(m), format!("{}{}", api.base, concrete(path))).bearer_auth(alice);
        let req = match body_for(m, path) {
            Body::Json(v) => req.json(&v),
            _ => req,
        };
        api.send(method(m), path, req).await.expect_error(403, "forbidden");
    }
    api.get("/api/credentials", Some(alice)).await.expect(200);
    let r = api.post("/api/admin/users", Some(&w.root), json!({"name": "mallory"})).await;
    r.expect(201); // so the 403 above did not create mallory

    // Unknown routes: 404, with or without a token.
    for path in ["/nope", "/api/nope", "/api/credentials/x/y/z", "/api"] {
        api.get(path, None).await.expect_error(404, "not_found");
        api.get(path, Some(alice)).await.expect_error(404, "not_found");
    }
    // Wrong method on a known route: 405 in the same shape, with `Allow`.
    for (m, path, allowed) in [
        ("PUT", "/api/credentials".to_string(), vec!["GET", "POST"]),
        ("POST", format!("/api/credentials/{id}"), vec!["GET", "PATCH", "DELETE"]),
        ("GET", format!("/api/credentials/{id}/test"), vec!["POST"]),
        ("DELETE", "/healthz".to_string(), vec!["GET"]),
        ("POST", "/api/credential-types".to_string(), vec!["GET"]),
    ] {
        let r = api.request(method(m), &path, Some(alice), Body::None).await;
        r.expect_error(405, "method_not_allowed");
        let allow = r.header("allow").unwrap_or_else(|| panic!("no Allow header on 405 for {m} {path}"));
        for a in allowed {
            assert!(allow.contains(a), "Allow {allow:?} lacks {a}");
        }
    }

    // Malformed JSON: 400, and the message does not quote the secret in it.
    let secret = w.guard.secret(format!("tok-{}", random_alnum(30)));
    let truncated = format!(r#"{{"name":"x","type":"bearer_token","fields":{{"token":"{secret}""#);
    let r = api
        .request(Method::POST, "/api/credentials", Some(alice), Body::Raw(Some("application/json"), truncated.into_bytes()))
        .await;
    r.expect_error(400, "bad_request");
    // Well-formed JSON of the wrong shape: 400 too, again without quoting values.
    for body in [
        json!({"name": 5, "type": "bearer_token", "fields": {"token": secret}}),
        json!({"name": "x", "type": "bearer_token", "fields": {"token": [secret]}}),
        json!({"name": "x", "type": "bearer_token", "fields": {"token": secret}, "colour": secret}),
        json!({"type": "bearer_token", "fields": {"token": secret}}),
        json!([secret]),
    ] {
        api.post("/api/credentials", Some(alice), body).await.expect_error(400, "bad_request");
    }
    let r = api
        .request(Method::PATCH, &format!("/api/credentials/{id}"), Some(alice), Body::Raw(Some("application/json"), b"{\"description\":".to_vec()))
        .await;
    r.expect_error(400, "bad_request");
    // A JSON body without the JSON content type: 415.
    let body = serde_json::to_vec(&bearer("no-content-type", &[])).unwrap();
    let r = api.request(Method::POST, "/api/credentials", Some(alice), Body::Raw(None, body.clone())).await;
    r.expect_error(415, "unsupported_media_type");
    let r = api.request(Method::POST, "/api/credentials", Some(alice), Body::Raw(Some("text/plain"), body)).await;
    r.expect_error(415, "unsupported_media_type");
    // Bad query strings: 400.
    for q in ["limit=ten", "include_deleted=maybe", "colour=red"] {
        api.get(&format!("/api/credentials?{q}"), Some(alice)).await.expect_error(400, "bad_request");
    }
    api.delete(&format!("/api/credentials/{id}?purge=please"), Some(alice)).await.expect_error(400, "bad_request");
    api.get("/api/audit?limit=-1", Some(alice)).await.expect_error(400, "bad_request");

    // Bodies over the cap (64 KiB by default): 413, also on the admin token route.
    let huge = w.guard.secret(format!("big-{}", random_alnum(70 * 1024)));
    let r = api.post("/api/credentials", Some(alice), json!({"name": "big", "type": "bearer_token", "fields": {"token": huge}})).await;
    r.expect_error(413, "too_large");
    let r = api.post("/api/admin/users/alice/tokens", Some(&w.root), json!({"label": huge})).await;
    r.expect_error(413, "too_large");
    let r = api.post("/api/admin/users", Some(&w.root), json!({"name": "x", "pad": huge})).await;
    r.expect_error(413, "too_large");
    // Just under the cap is fine (the type decides about the value, not the transport).
    let near = w.guard.secret(format!("tok-{}", random_alnum(60 * 1024)));
    create(api, alice, json!({"name": "near-cap", "type": "bearer_token", "fields": {"token": near}})).await;

    // Unknown type: 422.
    let r = api
        .post("/api/credentials", Some(alice), json!({"name": "u", "type": "no_such_type", "fields": {"token": secret}}))
        .await;
    r.expect_error(422, "unknown_type");

    // Request ids: one per response, distinct; a caller's own id is kept.
    let a = api.get("/healthz", None).await;
    let b = api.get("/healthz", None).await;
    assert_ne!(a.header("x-request-id"), b.header("x-request-id"));
    let mine = format!("test-{}", random_hex(8));
    let r = api.send(Method::GET, "/api/credentials", api.http.get(format!("{}/api/credentials", api.base)).bearer_auth(alice).header("x-request-id", &mine)).await;
    assert_eq!(r.header("x-request-id"), Some(mine.as_str()));
    // ... and the log line of that request carries it, with method, path and status.
    let logged = wait_for_log(&w.server, &mine).await;
    assert!(logged.contains("GET") && logged.contains("/api/credentials") && logged.contains("200"), "log line: {logged}");

    finish(&w.guard, &[&w.server], 5);
    drop(w.env);
}

/// The log line that mentions `needle` (logs are written as responses complete).
async fn wait_for_log(server: &Server, needle: &str) -> String {
    for _ in 0..50 {
        if let Some(line) = server.stderr().lines().find(|l| l.contains(needle)) {
            return line.to_string();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("no log line mentions {needle}; logs:\n{}", server.stderr());
}

/// Create, read, list (filters, pages), partial update, validate, test, soft delete,
/// restore and purge — with the statuses and shapes the API promises.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credential_lifecycle() {
    let w = world().await;
    let (api, alice) = (&w.api, w.alice.as_str());

    // Create: 201 with metadata; the secret shows as set with a keyed fingerprint.
    let body = alpaca("broker");
    let secret_key = body["fields"]["secret_key"].as_str().unwrap().to_string();
    let key_id = body["fields"]["key_id"].as_str().unwrap().to_string();
    let a = create(api, alice, body).await;
    assert_eq!(a["name"], "broker");
    assert_eq!(a["type"], "alpaca");
    assert_eq!(a["environment"], "paper");
    assert_eq!(a["description"], "");
    assert_eq!(a["tags"], json!([]));
    assert_eq!(a["version"], 1);
    assert_eq!(a["last_test"], Value::Null);
    assert!(a.get("deleted_at").is_none());
    assert_eq!(a["fields"]["key_id"], key_id.as_str(), "a non-secret field shows its value");
    let secret_view = a["fields"]["secret_key"].as_object().expect("secret field is an object");
    assert_eq!(secret_view.len(), 2, "only set and fingerprint: {a}");
    assert_eq!(secret_view["set"], true);
    let fp = secret_view["fingerprint"].as_str().unwrap();
    assert!(fp.len() >= 16 && fp.chars().all(|c| c.is_ascii_hexdigit()), "fingerprint {fp}");
    let plain_hash = hex(&sha2::Sha256::digest(secret_key.as_bytes()));
    assert!(!plain_hash.contains(fp), "the fingerprint is a plain SHA-256 of the secret");
    for k in ["created_at", "updated_at"] {
        assert!(a[k].as_str().is_some_and(|t| t.ends_with('Z') && t.contains('T')), "{k}: {a}");
    }
    let a_id = id_of(&a);
    let got = api.get(&format!("/api/credentials/{a_id}"), Some(alice)).await;
    got.expect(200);
    assert_eq!(got.json(), a);

    // Field errors: 422 with each field named; no value echoed (the guard checks).
    let mut bad = alpaca("bad");
    bad["environment"] = json!("live");
    bad["fields"]["secret_key"] = json!(format!("short-{}", random_alnum(8)));
    let e = api.post("/api/credentials", Some(alice), bad).await.expect_error(422, "invalid_fields");
    let fields: Vec<&str> = e["error"]["fields"].as_array().unwrap().iter().map(|f| f["field"].as_str().unwrap()).collect();
    assert!(fields.contains(&"secret_key") && fields.contains(&"environment"), "{e}");
    let e = api
        .post("/api/credentials", Some(alice), json!({"name": "t", "type": "bearer_token", "fields": {"header_name": "X-Token"}}))
        .await
        .expect_error(422, "invalid_fields");
    assert!(e["error"]["fields"].as_array().unwrap().iter().any(|f| f["field"] == "token"), "missing token not named: {e}");
    let e = api
        .post("/api/credentials", Some(alice), json!({"name": "t", "type": "bearer_token",
            "fields": {"token": format!("tok-{}", random_alnum(20)), "tokne": w.guard.secret(random_alnum(20))}}))
        .await
        .expect_error(422, "invalid_fields");
    assert!(e["error"]["fields"].as_array().unwrap().iter().any(|f| f["field"] == "tokne"), "{e}");
    let e = api
        .post("/api/credentials", Some(alice), json!({"name": "t", "type": "alpaca", "environment": "moon",
            "fields": {"key_id": key_id, "secret_key": random_alnum(40)}}))
        .await
        .expect_error(422, "invalid_fields");
    assert_eq!(e["error"]["fields"][0]["field"], "environment");
    let e = api
        .post("/api/credentials", Some(alice), json!({"name": "", "type": "bearer_token", "fields": {"token": random_alnum(20)}}))
        .await
        .expect_error(422, "invalid_fields");
    assert_eq!(e["error"]["fields"][0]["field"], "name", "{e}");
    // Duplicate name: 409, whatever the type.
    api.post("/api/credentials", Some(alice), bearer("broker", &[])).await.expect_error(409, "conflict");
    // None of the refused ones was stored.
    assert_eq!(names(&api.get("/api/credentials", Some(alice)).await.json()), ["broker"]);

    let b1 = create(api, alice, bearer("ci-token", &["ci", "team-a"])).await;
    let b2 = create(api, alice, bearer("deploy-token", &["team-a"])).await;
    let s1 = create(api, alice, ssh("db-login")).await;
    assert_eq!(s1["fields"]["port"], "2222", "numbers are accepted and shown as text: {s1}");
    assert_eq!(s1["fields"]["password"]["set"], true);
    assert_eq!(b1["fields"]["header_name"], "Authorization", "defaults are filled: {b1}");
    assert_eq!(b1["tags"], json!(["ci", "team-a"]));
    assert_eq!(b1["description"], "ci-token token");

    // List: metadata in name order; filters; pages that add up to the whole.
    let all = api.get("/api/credentials", Some(alice)).await;
    all.expect(200);
    assert_eq!(names(&all.json()), ["broker", "ci-token", "db-login", "deploy-token"]);
    assert!(all.json().get("next_cursor").is_none());
    for item in all.json()["items"].as_array().unwrap() {
        let got = api.get(&format!("/api/credentials/{}", item["id"].as_str().unwrap()), Some(alice)).await;
        assert_eq!(&got.json(), item, "listing and get agree");
    }
    let q = |s: &'static str| async move { names(&api.get(&format!("/api/credentials?{s}"), Some(alice)).await.json()) };
    assert_eq!(q("type=bearer_token").await, ["ci-token", "deploy-token"]);
    assert_eq!(q("tag=team-a").await, ["ci-token", "deploy-token"]);
    assert_eq!(q("tag=ci").await, ["ci-token"]);
    assert_eq!(q("type=ssh").await, ["db-login"]);
    assert_eq!(q("type=ssh&tag=ci").await, Vec::<String>::new());
    assert_eq!(q("type=nothing").await, Vec::<String>::new());
    let mut paged = Vec::new();
    let mut cursor: Option<String> = None;
    for _ in 0..10 {
        let path = match &cursor {
            Some(c) => format!("/api/credentials?limit=1&cursor={c}"),
            None => "/api/credentials?limit=1".into(),
        };
        let page = api.get(&path, Some(alice)).await;
        page.expect(200);
        let page = page.json();
        let n = names(&page);
        assert_eq!(n.len(), 1, "limit=1 page: {page}");
        paged.extend(n);
        match page.get("next_cursor").and_then(Value::as_str) {
            Some(c) => cursor = Some(c.to_string()),
            None => break,
        }
    }
    assert_eq!(paged, ["broker", "ci-token", "db-login", "deploy-token"]);
    let two = api.get("/api/credentials?limit=3", Some(alice)).await.json();
    assert_eq!(names(&two).len(), 3);
    let rest = api.get(&format!("/api/credentials?limit=3&cursor={}", two["next_cursor"].as_str().unwrap()), Some(alice)).await;
    assert_eq!(names(&rest.json()), ["deploy-token"]);
    let r = api.get("/api/credentials?cursor=%%%%", Some(alice)).await;
    assert!(r.status == 400 || r.status == 422, "bad cursor: {} {}", r.status, r.text);
    assert_error_shape(&r);

    // PATCH is partial: untouched members and secrets stay.
    let b1_id = id_of(&b1);
    let b1_path = format!("/api/credentials/{b1_id}");
    let p = api.patch(&b1_path, Some(alice), json!({"description": "for CI"})).await;
    p.expect(200);
    let p = p.json();
    assert_eq!(p["description"], "for CI");
    assert_eq!(p["tags"], b1["tags"]);
    assert_eq!(p["fields"], b1["fields"], "fields unchanged by a description update");
    assert_eq!(p["version"], 1);
    let p = api.patch(&b1_path, Some(alice), json!({"fields": {"prefix": "Token"}})).await.json();
    assert_eq!(p["fields"]["prefix"], "Token");
    assert_eq!(p["fields"]["token"], b1["fields"]["token"], "secret kept when only a plain field changes");
    assert_eq!(p["version"], 1, "no new secret version without a secret change");
    let p = api.patch(&b1_path, Some(alice), json!({"fields": {"token": format!("tok-{}", random_alnum(32))}})).await.json();
    assert_eq!(p["version"], 2, "a new secret makes a new version");
    assert_eq!(p["fields"]["token"]["set"], true);
    assert_ne!(p["fields"]["token"]["fingerprint"], b1["fields"]["token"]["fingerprint"]);
    assert_eq!(p["fields"]["prefix"], "Token");
    assert_eq!(p["description"], "for CI");
    let before = p;
    // An invalid update is refused whole.
    let e = api
        .patch(&b1_path, Some(alice), json!({"description": "should not stick", "fields": {"prefix": "two words", "token": format!("tok-{}", random_alnum(32))}}))
        .await
        .expect_error(422, "invalid_fields");
    assert_eq!(e["error"]["fields"][0]["field"], "prefix");
    assert_eq!(api.get(&b1_path, Some(alice)).await.json(), before);
    api.patch(&b1_path, Some(alice), json!({"name": "broker"})).await.expect_error(409, "conflict");
    api.patch(&b1_path, Some(alice), json!({"colour": "red"})).await.expect_error(400, "bad_request");
    api.patch(&b1_path, Some(alice), json!({"environment": "paper"})).await.expect_error(422, "invalid_fields");
    let p = api.patch(&b1_path, Some(alice), json!({"name": "ci-token-2", "tags": ["ci"]})).await.json();
    assert_eq!((p["name"].as_str(), &p["tags"]), (Some("ci-token-2"), &json!(["ci"])));
    assert_eq!(q("tag=team-a").await, ["deploy-token"]);
    assert_eq!(api.get(&b1_path, Some(alice)).await.json(), p);
    // A secret update of an environment-bound credential keeps its environment.
    let a_path = format!("/api/credentials/{a_id}");
    let p = api.patch(&a_path, Some(alice), json!({"fields": {"secret_key": random_alnum(40)}})).await;
    p.expect(200);
    let p = p.json();
    assert_eq!(p["environment"], "paper", "environment lost on update: {p}");
    assert_eq!(p["version"], 2);
    assert_eq!(p["fields"]["key_id"], key_id.as_str());
    // Changing the environment alone is validated against the stored key.
    let e = api.patch(&a_path, Some(alice), json!({"environment": "live"})).await.expect_error(422, "invalid_fields");
    assert_eq!(e["error"]["fields"][0]["field"], "environment");
    assert_eq!(api.get(&a_path, Some(alice)).await.json()["environment"], "paper");

    // Validate: the offline checks of the stored credential.
    for c in [&a_path, &b1_path] {
        let v = api.post_empty(&format!("{c}/validate"), Some(alice)).await;
        v.expect(200);
        assert_eq!(v.json(), json!({"valid": true, "errors": []}));
    }
    // Test: the live check answers 200 with a verdict (`indeterminate` with the reason
    // when it cannot tell, e.g. a target it may not reach).
    let t = api.post_empty(&format!("{b1_path}/test"), Some(alice)).await;
    t.expect(200);
    assert!(t.json()["ok"].is_boolean(), "test verdict: {}", t.text);
    api.post_empty(&format!("/api/credentials/{}/test", random_uuid()), Some(alice)).await.expect_error(404, "not_found");

    // Soft delete: 204, then 404 everywhere but restore and listings with include_deleted.
    let b2_path = format!("/api/credentials/{}", id_of(&b2));
    let d = api.delete(&b2_path, Some(alice)).await;
    d.expect(204);
    assert!(d.text.is_empty());
    api.get(&b2_path, Some(alice)).await.expect_error(404, "not_found");
    api.patch(&b2_path, Some(alice), json!({"description": "x"})).await.expect_error(404, "not_found");
    api.post_empty(&format!("{b2_path}/validate"), Some(alice)).await.expect_error(404, "not_found");
    api.post_empty(&format!("{b2_path}/test"), Some(alice)).await.expect_error(404, "not_found");
    api.delete(&b2_path, Some(alice)).await.expect_error(404, "not_found");
    assert!(!q("").await.contains(&"deploy-token".to_string()));
    let with_deleted = api.get("/api/credentials?include_deleted=true", Some(alice)).await.json();
    let gone = with_deleted["items"].as_array().unwrap().iter().find(|c| c["name"] == "deploy-token").expect("listed");
    assert!(gone["deleted_at"].as_str().is_some(), "deleted_at: {gone}");
    // The name stays reserved until purged.
    api.post("/api/credentials", Some(alice), bearer("deploy-token", &[])).await.expect_error(409, "conflict");
    let r = api.post_empty(&format!("{b2_path}/restore"), Some(alice)).await;
    r.expect(200);
    let restored = r.json();
    assert!(restored.get("deleted_at").is_none());
    assert_eq!(restored["fields"], b2["fields"]);
    assert_eq!(api.get(&b2_path, Some(alice)).await.json(), restored);
    // Restoring a live credential is harmless.
    api.post_empty(&format!("{b2_path}/restore"), Some(alice)).await.expect(200);

    // Purge: gone for good, also from include_deleted; the name is free again.
    api.delete(&format!("{b2_path}?purge=true"), Some(alice)).await.expect(204);
    api.get(&b2_path, Some(alice)).await.expect_error(404, "not_found");
    api.post_empty(&format!("{b2_path}/restore"), Some(alice)).await.expect_error(404, "not_found");
    api.delete(&format!("{b2_path}?purge=true"), Some(alice)).await.expect_error(404, "not_found");
    create(api, alice, bearer("deploy-token", &[])).await;
    // Soft-deleted, then purged.
    let s1_path = format!("/api/credentials/{}", id_of(&s1));
    api.delete(&s1_path, Some(alice)).await.expect(204);
    api.delete(&format!("{s1_path}?purge=true"), Some(alice)).await.expect(204);
    let listed = names(&api.get("/api/credentials?include_deleted=true", Some(alice)).await.json());
    assert_eq!(listed, ["broker", "ci-token-2", "deploy-token"]);

    // Ids that do not exist or are not ids: 404.
    for id in [random_uuid(), "not-an-id".to_string(), "..".into()] {
        api.get(&format!("/api/credentials/{id}"), Some(alice)).await.expect_error(404, "not_found");
        api.post_empty(&format!("/api/credentials/{id}/validate"), Some(alice)).await.expect_error(404, "not_found");
    }

    finish(&w.guard, &[&w.server], 8);
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn random_uuid() -> String {
    let h = random_hex(16);
    format!("{}-{}-4{}-8{}-{}", &h[0..8], &h[8..12], &h[13..16], &h[17..20], &h[20..32])
}

/// Two users never see each other's credentials: not by list, get, update, delete,
/// restore, validate, test or audit; another user's id answers exactly like a missing one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_never_see_each_other() {
    let w = world().await;
    let (api, alice, bob) = (&w.api, w.alice.as_str(), w.bob.as_str());

    let shared_secret = format!("tok-{}", random_alnum(32));
    let mut body = bearer("shared-name", &["x"]);
    body["fields"]["token"] = json!(shared_secret);
    let mine = create(api, alice, body.clone()).await;
    let id = id_of(&mine);
    let path = format!("/api/credentials/{id}");
    // Bob may use the same name and even the same secret: separate namespaces, separate keys.
    let his = create(api, bob, body).await;
    assert_ne!(id_of(&his), id);
    assert_ne!(
        mine["fields"]["token"]["fingerprint"], his["fields"]["token"]["fingerprint"],
        "fingerprints are keyed per user"
    );

    // Another user's id answers exactly like an id that does not exist.
    let missing = format!("/api/credentials/{}", random_uuid());
    let same = |a: &common::server::Resp, b: &common::server::Resp| {
        assert_eq!((a.status, &a.text), (b.status, &b.text), "another user's id differs from a missing one");
    };
    let cases: Vec<(Method, &str, Option<Value>)> = vec![
        (Method::GET, "", None),
        (Method::PATCH, "", Some(json!({"description": "bob was here"}))),
        (Method::PATCH, "", Some(json!({"fields": {"token": format!("tok-{}", random_alnum(32))}}))),
        (Method::POST, "/validate", None),
        (Method::POST, "/test", None),
        (Method::POST, "/restore", None),
        (Method::DELETE, "", None),
        (Method::DELETE, "?purge=true", None),
    ];
    for (m, suffix, body) in cases {
        let b = |v: &Option<Value>| v.clone().map(Body::Json).unwrap_or(Body::None);
        let theirs = api.request(m.clone(), &format!("{path}{suffix}"), Some(bob), b(&body)).await;
        theirs.expect_error(404, "not_found");
        let nothing = api.request(m.clone(), &format!("{missing}{suffix}"), Some(bob), b(&body)).await;
        same(&theirs, &nothing);
    }
    // Listings: bob sees only his own, deleted ones included.
    for q in ["", "?include_deleted=true", "?tag=x", "?type=bearer_token"] {
        let page = api.get(&format!("/api/credentials{q}"), Some(bob)).await.json();
        let ids: Vec<&str> = page["items"].as_array().unwrap().iter().map(|c| c["id"].as_str().unwrap()).collect();
        assert_eq!(ids, [id_of(&his).as_str()], "bob's listing {q}");
    }
    // Alice's credential is untouched by all of that.
    let now = api.get(&path, Some(alice)).await;
    now.expect(200);
    assert_eq!(now.json(), mine);

    // Soft-deleted by alice: still invisible to bob (restore included), restorable by alice.
    api.delete(&path, Some(alice)).await.expect(204);
    api.post_empty(&format!("{path}/restore"), Some(bob)).await.expect_error(404, "not_found");
    api.delete(&format!("{path}?purge=true"), Some(bob)).await.expect_error(404, "not_found");
    api.post_empty(&format!("{path}/restore"), Some(alice)).await.expect(200);

    // Audit: each sees their own records only; a user cannot ask for another's.
    let alice_audit = api.get("/api/audit", Some(alice)).await;
    alice_audit.expect(200);
    let bob_audit = api.get("/api/audit", Some(bob)).await;
    bob_audit.expect(200);
    assert!(alice_audit.text.contains(&id), "alice's audit lacks her credential");
    assert!(!bob_audit.text.contains(&id), "bob's audit mentions alice's credential: {}", bob_audit.text);
    assert!(!alice_audit.text.contains(&id_of(&his)), "alice's audit mentions bob's credential");
    for rec in bob_audit.json()["items"].as_array().unwrap() {
        assert!(rec["actor"] == "bob" || rec["actor"] == "cli", "foreign actor in bob's audit: {rec}");
    }
    api.get("/api/audit?user=alice", Some(bob)).await.expect_error(403, "forbidden");
    let own = api.get("/api/audit?user=bob", Some(bob)).await;
    own.expect(200);
    assert_eq!(own.json(), bob_audit.json());

    finish(&w.guard, &[&w.server], 2);
}

/// Admin routes (users, tokens, revocation, expiry) and the audit log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_tokens_and_audit() {
    let w = world().await;
    let (api, root, alice) = (&w.api, w.root.as_str(), w.alice.as_str());

    // New user: 201 with a token shown once, which works at once.
    let r = api.post("/api/admin/users", Some(root), json!({"name": "carol"})).await;
    r.expect(201);
    let carol = r.json();
    assert_eq!(carol["user"], "carol");
    let carol_token = carol["token"].as_str().unwrap().to_string();
    let carol_token_id = carol["token_id"].as_str().unwrap().to_string();
    assert!(carol_token.starts_with("chst_") && carol["expires_at"].is_null(), "{carol}");
    let r = api.get("/api/credentials", Some(&carol_token)).await;
    r.expect(200);
    assert_eq!(r.json()["items"], json!([]));
    api.post("/api/admin/users", Some(&carol_token), json!({"name": "x1"})).await.expect_error(403, "forbidden");
    api.post("/api/admin/users", Some(root), json!({"name": "carol"})).await.expect_error(409, "conflict");
    api.post("/api/admin/users", Some(root), json!({"name": "alice", "admin": true})).await.expect_error(409, "conflict");
    api.post("/api/admin/users", Some(root), json!({"name": "bad name"})).await.expect_error(422, "invalid");
    api.post("/api/admin/users", Some(root), json!({"nom": "x"})).await.expect_error(400, "bad_request");
    // An admin made over the API can administer.
    let dave = api.post("/api/admin/users", Some(root), json!({"name": "dave", "admin": true})).await.json();
    let dave_token = dave["token"].as_str().unwrap().to_string();
    api.post("/api/admin/users", Some(&dave_token), json!({"name": "erin"})).await.expect(201);
    // Alice, still a user, is not one.
    api.post("/api/admin/users", Some(alice), json!({"name": "x2"})).await.expect_error(403, "forbidden");

    // More tokens: no body, or a label and a lifetime.
    let r = api.post_empty("/api/admin/users/carol/tokens", Some(root)).await;
    r.expect(201);
    let second = r.json()["token"].as_str().unwrap().to_string();
    let r = api.post("/api/admin/users/carol/tokens", Some(root), json!({"label": "ci", "expires_in_secs": 3600})).await;
    r.expect(201);
    let third = r.json();
    assert!(third["expires_at"].as_str().is_some(), "{third}");
    for t in [&carol_token, &second, third["token"].as_str().unwrap()] {
        api.get("/api/credentials", Some(t)).await.expect(200);
    }
    api.post_empty("/api/admin/users/nobody/tokens", Some(root)).await.expect_error(404, "not_found");
    api.post_empty("/api/admin/users/carol/tokens", Some(alice)).await.expect_error(403, "forbidden");
    let r = api
        .request(Method::POST, "/api/admin/users/carol/tokens", Some(root), Body::Raw(Some("application/json"), b"{nope".to_vec()))
        .await;
    r.expect_error(400, "bad_request");
    api.post("/api/admin/users/carol/tokens", Some(root), json!({"expires": 5})).await.expect_error(400, "bad_request");
    // A token that expires stops working.
    let short = api.post("/api/admin/users/carol/tokens", Some(root), json!({"expires_in_secs": 1})).await.json();
    let short = short["token"].as_str().unwrap().to_string();
    api.get("/api/credentials", Some(&short)).await.expect(200);
    tokio::time::sleep(Duration::from_millis(2100)).await;
    api.get("/api/credentials", Some(&short)).await.expect_error(401, "unauthorized");

    // Revocation: 204, then 401 for that token only.
    api.delete(&format!("/api/admin/tokens/{carol_token_id}"), Some(alice)).await.expect_error(403, "forbidden");
    api.get("/api/credentials", Some(&carol_token)).await.expect(200);
    let r = api.delete(&format!("/api/admin/tokens/{carol_token_id}"), Some(root)).await;
    r.expect(204);
    api.get("/api/credentials", Some(&carol_token)).await.expect_error(401, "unauthorized");
    api.get("/api/credentials", Some(&second)).await.expect(200);
    api.delete("/api/admin/tokens/tok_doesnotexist", Some(root)).await.expect_error(404, "not_found");

    // Audit: the caller's own records, newest first, chained.
    let cred = create(api, alice, bearer("audited", &[])).await;
    let cred_id = id_of(&cred);
    api.patch(&format!("/api/credentials/{cred_id}"), Some(alice), json!({"description": "d"})).await.expect(200);
    api.delete(&format!("/api/credentials/{cred_id}"), Some(alice)).await.expect(204);
    let r = api.get("/api/audit", Some(alice)).await;
    r.expect(200);
    let records = r.json()["items"].clone();
    let records = records.as_array().unwrap();
    let actions: Vec<&str> = records
        .iter()
        .filter(|r| r["credential"] == cred_id.as_str())
        .map(|r| r["action"].as_str().unwrap())
        .collect();
    assert!(actions.len() >= 3, "create, update and delete of {cred_id} audited: {actions:?}");
    assert!(actions.iter().any(|a| a.contains("create")) && actions.iter().any(|a| a.contains("delete")), "{actions:?}");
    let seqs: Vec<u64> = records.iter().map(|r| r["seq"].as_u64().unwrap()).collect();
    assert!(seqs.windows(2).all(|p| p[0] > p[1]), "newest first: {seqs:?}");
    for rec in records {
        for k in ["seq", "at", "actor", "action", "outcome", "detail", "hash"] {
            assert!(rec.get(k).is_some(), "audit record lacks {k}: {rec}");
        }
        assert!(rec["hash"].as_str().unwrap().len() == 64, "{rec}");
        assert!(!rec.to_string().contains("carol"), "admin's work shows in alice's audit: {rec}");
    }
    let one = api.get("/api/audit?limit=1", Some(alice)).await.json();
    assert_eq!(one["items"].as_array().unwrap().len(), 1);
    assert_eq!(one["items"][0], records[0]);
    // An admin may read a user's records: the same ones.
    let as_root = api.get("/api/audit?user=alice", Some(root)).await;
    as_root.expect(200);
    assert_eq!(as_root.json()["items"], Value::Array(records.clone()));
    api.get("/api/audit?user=nobody", Some(root)).await.expect_error(404, "not_found");
    api.get("/api/audit?user=alice", Some(&second)).await.expect_error(403, "forbidden");
    let roots = api.get("/api/audit", Some(root)).await.json();
    assert!(!roots.to_string().contains(&cred_id), "root's own audit shows alice's credential");

    finish(&w.guard, &[&w.server], 1);
}

/// `/healthz`, `/readyz`, `/metrics` and an OpenAPI document that lists every route,
/// whose references resolve, and whose routes all exist on the server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_metrics_and_openapi() {
    let w = world().await;
    let api = &w.api;

    let r = api.get("/healthz", None).await;
    r.expect(200);
    assert_eq!(r.json(), json!({"status": "ok"}));
    let r = api.get("/readyz", None).await;
    r.expect(200);
    assert_eq!(r.json()["store"], true);
    assert!(r.json()["types"].as_u64().unwrap() >= 6, "{}", r.text);

    let scrape = |text: &str| -> Vec<(String, f64)> {
        text.lines()
            .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
            .map(|l| {
                let (name, value) = l.rsplit_once(' ').unwrap_or_else(|| panic!("metrics line {l:?}"));
                (name.to_string(), value.parse::<f64>().unwrap_or_else(|_| panic!("metrics value in {l:?}")))
            })
            .collect()
    };
    let value = |m: &[(String, f64)], name: &str| m.iter().find(|(n, _)| n == name).map(|(_, v)| *v);
    let r = api.get("/metrics", None).await;
    r.expect(200);
    assert!(r.header("content-type").unwrap().starts_with("application/openmetrics-text"), "{:?}", r.headers);
    let before = scrape(&r.text);
    // Requests by method, route pattern and status (histogram counts).
    let unauthorized = r#"credhost_http_request_duration_seconds_count{method="GET",route="/api/credentials",status="401"}"#;
    let errors_before = value(&before, unauthorized).unwrap_or(0.0);
    assert!(
        value(&before, r#"credhost_http_request_duration_seconds_count{method="GET",route="/healthz",status="200"}"#).unwrap() >= 1.0,
        "{}",
        r.text
    );
    assert_eq!(value(&before, "credhost_credential_types"), Some(6.0));
    for _ in 0..3 {
        api.get("/api/credentials", None).await.expect(401);
    }
    let after = scrape(&api.get("/metrics", None).await.text);
    let errors_after = value(&after, unauthorized).unwrap();
    assert_eq!(errors_after - errors_before, 3.0, "401 counter");
    assert!(value(&after, r#"credhost_http_request_duration_seconds_sum{method="GET",route="/api/credentials",status="401"}"#).unwrap() > 0.0);

    let r = api.get("/openapi.json", None).await;
    r.expect(200);
    let doc: Value = serde_json::from_str(&r.text).expect("the OpenAPI document parses");
    assert!(doc["openapi"].as_str().is_some_and(|v| v.starts_with("3.")), "openapi version");
    assert!(doc["info"]["title"].is_string());
    let paths = doc["paths"].as_object().expect("paths");
    let mut listed = BTreeSet::new();
    for (path, item) in paths {
        for m in ["get", "post", "put", "patch", "delete", "head", "options"] {
            if item.get(m).is_some() {
                listed.insert((m.to_string(), path.clone()));
            }
        }
    }
    let expected: BTreeSet<(String, String)> = ROUTES.iter().map(|(m, p)| (m.to_string(), p.to_string())).collect();
    assert_eq!(listed, expected, "OpenAPI paths differ from the routes");
    for (m, path) in ROUTES {
        let op = &doc["paths"][path][m];
        assert!(op["responses"].as_object().is_some_and(|r| !r.is_empty()), "{m} {path} has no responses");
        let secured = op["security"].as_array().is_some_and(|s| s.iter().any(|x| x.get("bearer").is_some()));
        assert_eq!(secured, !PUBLIC.contains(path), "{m} {path}: bearer security");
        if path.contains('{') {
            let params = op["parameters"].as_array().unwrap_or_else(|| panic!("{m} {path} has no parameters"));
            assert!(params.iter().any(|p| p["in"] == "path"), "{m} {path}: path parameter");
        }
        if ["post", "patch"].contains(m) && (path.ends_with("/credentials") || path.ends_with("{id}") || path.ends_with("/users")) {
            assert!(op["requestBody"].is_object(), "{m} {path} has no request body");
        }
    }
    assert_eq!(doc["components"]["securitySchemes"]["bearer"]["scheme"], "bearer");
    // Every reference resolves.
    let mut refs = Vec::new();
    collect_refs(&doc, &mut refs);
    assert!(refs.len() > 5, "few refs: {refs:?}");
    for r in refs {
        let name = r.strip_prefix("#/components/schemas/").unwrap_or_else(|| panic!("unexpected $ref {r}"));
        assert!(doc["components"]["schemas"].get(name).is_some(), "dangling $ref {r}");
    }
    // Each documented route exists on the server: 401 without a token, 200 where public.
    for (m, path) in ROUTES {
        let concrete = path.replace("{id}", &random_uuid()).replace("{name}", "alice").replace("{grant_id}", "grt_0").replace("{path}", "v2/x");
        let r = api.request(method(m), &concrete, None, Body::None).await;
        let want = if PUBLIC.contains(path) { 200 } else { 401 };
        assert_eq!(r.status, want, "{m} {path}: {}", r.text);
    }

    finish(&w.guard, &[&w.server], 0);
}

fn collect_refs(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                if k == "$ref" {
                    out.push(x.as_str().unwrap().to_string());
                } else {
                    collect_refs(x, out);
                }
            }
        }
        Value::Array(a) => a.iter().for_each(|x| collect_refs(x, out)),
        _ => {}
    }
}

/// Data and tokens survive a restart; SIGTERM exits 0; a wrong key is refused at start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_keeps_data_and_tokens() {
    let env = Env::new();
    let root = env.add_user("root", true);
    let guard = LeakGuard::new();
    let mut first = env.start(&[]);
    let api = first.api(&guard);
    api.learn_secret_fields().await;
    let cred = create(&api, &root, alpaca("kept")).await;
    let gone = create(&api, &root, bearer("deleted-before-restart", &[])).await;
    api.delete(&format!("/api/credentials/{}", id_of(&gone)), Some(&root)).await.expect(204);
    let issued = api.post("/api/admin/users", Some(&root), json!({"name": "api-made"})).await.json();
    let api_token = issued["token"].as_str().unwrap().to_string();
    let theirs = create(&api, &api_token, ssh("theirs")).await;

    let status = first.stop();
    assert_eq!(status.code(), Some(0), "SIGTERM exit: {status}; stderr:\n{}", first.stderr());
    assert!(first.stderr().contains("shut down cleanly"), "no clean shutdown logged:\n{}", first.stderr());

    let second = env.start(&[]);
    let api2 = second.api(&guard);
    assert_ne!(api.base, "", "first server had an address");
    let got = api2.get(&format!("/api/credentials/{}", id_of(&cred)), Some(&root)).await;
    got.expect(200);
    assert_eq!(got.json(), cred, "credential after restart");
    let listed = api2.get("/api/credentials?include_deleted=true", Some(&root)).await.json();
    assert_eq!(names(&listed), ["deleted-before-restart", "kept"]);
    api2.get(&format!("/api/credentials/{}", id_of(&theirs)), Some(&api_token)).await.expect(200);
    let v = api2.post_empty(&format!("/api/credentials/{}/validate", id_of(&cred)), Some(&root)).await;
    assert_eq!(v.json(), json!({"valid": true, "errors": []}), "secrets decrypt after restart");
    api2.post_empty(&format!("/api/credentials/{}/restore", id_of(&gone)), Some(&root)).await.expect(200);
    drop(second);

    // The same data dir with another key: refused with a clear error, nothing served.
    let other = Env::new();
    let wrong = Env { dir: tempfile::tempdir().unwrap(), cwd: env.cwd.clone(), vars: env.vars.clone() }
        .set("CREDHOST_MASTER_KEY", other.var("CREDHOST_MASTER_KEY").unwrap());
    let mut refused = wrong.spawn(&[]);
    let status = refused.wait_exit(Duration::from_secs(60)).expect("a wrong key must stop the server");
    assert!(!status.success(), "started with the wrong key");
    let stderr = refused.stderr();
    assert!(stderr.contains("wrong master key"), "unclear error for a wrong key:\n{stderr}");
    assert!(!refused.stdout().iter().any(|l| l.starts_with("listening on")));

    for s in [&first, &refused] {
        guard.check("stderr", &s.stderr());
    }
    assert!(guard.secrets() >= 3);
}

/// Dev mode: no key and no config — a generated key file (0600) and a `dev` admin whose
/// token is printed once and works; SIGINT exits 0; the next start reuses both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_mode_just_works() {
    let env = Env::bare().set("CREDHOST_LISTEN", "127.0.0.1:0");
    let guard = LeakGuard::new();
    let mut first = env.start(&[]);
    let line = first
        .stdout()
        .into_iter()
        .find(|l| l.contains("dev admin token"))
        .unwrap_or_else(|| panic!("no dev admin token printed: {:?}", first.stdout()));
    let token = line.split_whitespace().last().unwrap().to_string();
    assert!(token.starts_with("chst_"), "{line}");
    let key_file = env.cwd.join("data").join("master.key");
    assert_eq!(mode_of(&key_file), 0o600, "dev key file mode");
    assert!(env.cwd.join("data").join("credhost.redb").exists(), "database in ./data");
    assert!(first.stderr().contains("DEV MODE"), "no loud dev-mode warning:\n{}", first.stderr());

    let api = first.api(&guard);
    api.learn_secret_fields().await;
    let r = api.get("/api/credentials", Some(&token)).await;
    r.expect(200);
    let cred = create(&api, &token, bearer("dev-cred", &[])).await;
    api.post("/api/admin/users", Some(&token), json!({"name": "someone"})).await.expect(201);
    let status = {
        first.signal("INT");
        first.wait_exit(Duration::from_secs(20)).expect("SIGINT stops the server")
    };
    assert_eq!(status.code(), Some(0), "SIGINT exit: {status}");

    let second = env.start(&[]);
    assert!(!second.stdout().iter().any(|l| l.contains("dev admin token")), "the dev token is printed only once");
    let api = second.api(&guard);
    let got = api.get(&format!("/api/credentials/{}", id_of(&cred)), Some(&token)).await;
    got.expect(200);
    assert_eq!(got.json(), cred);
    guard.check("stderr", &first.stderr());
    guard.check("stderr", &second.stderr());
}

/// `serve --config FILE`: listen address, data dir and body cap come from the file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_file_sets_listen_data_dir_and_body_cap() {
    let base = Env::new();
    let key = base.var("CREDHOST_MASTER_KEY").unwrap().to_string();
    let env = Env::bare().set("CREDHOST_MASTER_KEY", &key);
    let data = env.dir.path().join("from-config");
    let config = env.dir.path().join("credhost.toml");
    std::fs::write(
        &config,
        format!("[server]\nlisten = \"127.0.0.1:0\"\nmax_body_kib = 1\n\n[storage]\ndata_dir = {:?}\n", data.to_str().unwrap()),
    )
    .unwrap();
    let cfg = config.to_str().unwrap();
    let out = env.cli(&["--config", cfg, "users", "add", "alice"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let alice = String::from_utf8_lossy(&out.stdout).lines().last().unwrap().trim().to_string();
    let server = env.start(&["--config", cfg]);
    assert!(data.join("credhost.redb").exists(), "data dir from the config file");
    assert!(!env.cwd.join("data").exists(), "no default data dir");
    let guard = LeakGuard::new();
    let api = server.api(&guard);
    api.learn_secret_fields().await;
    let big = json!({"name": "big", "type": "bearer_token", "fields": {"token": format!("tok-{}", random_alnum(1500))}});
    api.post("/api/credentials", Some(&alice), big).await.expect_error(413, "too_large");
    create(&api, &alice, bearer("small", &[])).await;
    guard.check("stderr", &server.stderr());
}

/// An HTTP/1.1 request sent by hand whose body arrives in two parts, so a test can hold a
/// request in flight (a slow client) for as long as it likes.
struct SlowRequest {
    stream: std::net::TcpStream,
    rest: Vec<u8>,
}

impl SlowRequest {
    /// Sends the headers and the first half of `body`.
    fn start(base: &str, path: &str, token: &str, body: &Value) -> SlowRequest {
        use std::io::Write;
        let addr = base.strip_prefix("http://").unwrap();
        let mut stream = std::net::TcpStream::connect(addr).unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let body = serde_json::to_vec(body).unwrap();
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        );
        let half = body.len() / 2;
        stream.write_all(head.as_bytes()).unwrap();
        stream.write_all(&body[..half]).unwrap();
        stream.flush().unwrap();
        SlowRequest { stream, rest: body[half..].to_vec() }
    }

    /// Sends the rest of the body (if `send_rest`) and reads the response: status, body.
    fn finish(mut self, send_rest: bool) -> (u16, String) {
        use std::io::{Read, Write};
        if send_rest {
            self.stream.write_all(&self.rest).unwrap();
        }
        let mut raw = Vec::new();
        let _ = self.stream.read_to_end(&mut raw);
        let text = String::from_utf8_lossy(&raw).to_string();
        let status = text.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or_else(|| panic!("no response: {text:?}"));
        let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
        (status, body)
    }
}

/// Limits from the config file hold (one request at a time, a request time limit), a
/// request in flight at SIGTERM completes before the server exits 0, and
/// `CREDHOST_LOG_FORMAT=json` logs one JSON object per line, one per request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_graceful_drain_and_json_logs() {
    let key = Env::new().var("CREDHOST_MASTER_KEY").unwrap().to_string();
    let env = Env::bare().set("CREDHOST_MASTER_KEY", &key).set("CREDHOST_LOG_FORMAT", "json");
    let config = env.dir.path().join("credhost.toml");
    let data = env.dir.path().join("data");
    std::fs::write(
        &config,
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\nmax_concurrency = 1\nrequest_timeout_secs = 2\n\n[storage]\ndata_dir = {:?}\n",
            data.to_str().unwrap()
        ),
    )
    .unwrap();
    let cfg = config.to_str().unwrap();
    let out = env.cli(&["--config", cfg, "users", "add", "alice"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let alice = String::from_utf8_lossy(&out.stdout).lines().last().unwrap().trim().to_string();
    let mut server = env.start(&["--config", cfg]);
    let guard = LeakGuard::new();
    let api = server.api(&guard);
    api.learn_secret_fields().await;
    let quick = reqwest::Client::builder().timeout(Duration::from_millis(600)).build().unwrap();
    let healthz = format!("{}/healthz", server.base);

    // One request at a time: while a slow upload holds the only slot, others wait.
    let body = bearer("slow-1", &[]);
    guard.scan_request(&body);
    let slow = SlowRequest::start(&server.base, "/api/credentials", &alice, &body);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let waited = quick.get(&healthz).send().await;
    assert!(waited.is_err_and(|e| e.is_timeout()), "a second request was served beside the first");
    let (status, text) = tokio::task::spawn_blocking(move || slow.finish(true)).await.unwrap();
    guard.check("slow response", &text);
    assert_eq!(status, 201, "{text}");
    assert_eq!(quick.get(&healthz).send().await.unwrap().status(), 200);

    // The request time limit: an upload that stalls is answered 503 in the error shape.
    let body = bearer("slow-2", &[]);
    guard.scan_request(&body);
    let stalled = SlowRequest::start(&server.base, "/api/credentials", &alice, &body);
    let started = std::time::Instant::now();
    let (status, text) = tokio::task::spawn_blocking(move || stalled.finish(false)).await.unwrap();
    guard.check("timeout response", &text);
    assert_eq!(status, 503, "{text}");
    assert_eq!(serde_json::from_str::<Value>(&text).unwrap()["error"]["code"], "timeout", "{text}");
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(1900) && took < Duration::from_secs(10), "time limit took {took:?}");

    // Graceful shutdown: a request in flight at SIGTERM still completes.
    let body = bearer("in-flight", &[]);
    guard.scan_request(&body);
    let in_flight = SlowRequest::start(&server.base, "/api/credentials", &alice, &body);
    tokio::time::sleep(Duration::from_millis(300)).await;
    server.signal("TERM");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (status, text) = tokio::task::spawn_blocking(move || in_flight.finish(true)).await.unwrap();
    assert_eq!(status, 201, "request in flight at SIGTERM: {text}");
    let exit = server.wait_exit(Duration::from_secs(20)).expect("exits after draining");
    assert_eq!(exit.code(), Some(0), "{exit}");
    // ... and it was stored: a new server on the same data sees it.
    let again = env.start(&["--config", cfg]);
    let listed = again.api(&guard).get("/api/credentials", Some(&alice)).await.json();
    assert_eq!(names(&listed), ["in-flight", "slow-1"]);

    // JSON logs: every line parses; each request is one event with its fields.
    let stderr = server.stderr();
    guard.check("json logs", &stderr);
    let events: Vec<Value> = stderr
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("log line is not JSON ({e}): {l}")))
        .collect();
    let requests: Vec<&Value> = events.iter().filter(|e| e["target"] == "credhost::request").collect();
    let created = requests
        .iter()
        .find(|e| e["fields"]["status"] == 201 && e["fields"]["path"] == "/api/credentials")
        .unwrap_or_else(|| panic!("no request event for the create: {stderr}"));
    assert_eq!(created["fields"]["method"], "POST");
    assert!(created["fields"]["id"].as_str().is_some_and(|id| id.len() > 4), "{created}");
    assert!(requests.iter().any(|e| e["fields"]["status"] == 503 && e["level"] == "WARN"), "timeout not logged as a warning");
    guard.check("json logs (second server)", &again.stderr());
}

/// `CREDHOST_LISTEN` and `CREDHOST_DATA_DIR` override the config file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn environment_overrides_the_config_file() {
    let env = Env::new();
    let config = env.dir.path().join("credhost.toml");
    let ignored = env.dir.path().join("ignored-data");
    // Port 1 would need privileges: a server that used it could not start.
    std::fs::write(&config, format!("[server]\nlisten = \"127.0.0.1:1\"\n\n[storage]\ndata_dir = {:?}\n", ignored.to_str().unwrap()))
        .unwrap();
    let cfg = config.to_str().unwrap();
    let alice = env.add_user("alice", false);
    let server = env.start(&["--config", cfg]);
    assert!(!ignored.exists(), "the config file's data dir was used");
    let guard = LeakGuard::new();
    let r = server.api(&guard).get("/api/credentials", Some(&alice)).await;
    r.expect(200);
}
