//! Using credentials without revealing them (issue 12), against the real binary over
//! HTTP: destination binding (a secret only goes where it was sent), grants and scopes.
//! A recording listener stands in for an attacker's server: it must never see a secret.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::HeaderMap;
use axum::Router;
use common::server::{random_alnum, Api, Env, LeakGuard, Server};
use serde_json::{json, Value};

/// A listener that records the `authorization` header of every request and answers 200.
#[derive(Clone, Default)]
struct Recorder {
    seen: Arc<Mutex<Vec<String>>>,
}

impl Recorder {
    async fn start() -> (Recorder, String) {
        let rec = Recorder::default();
        let seen = rec.seen.clone();
        let app = Router::new().fallback(move |headers: HeaderMap| {
            let seen = seen.clone();
            async move {
                let auth = headers.get("authorization").map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
                seen.lock().unwrap().push(auth.unwrap_or_default());
                "{\"ok\":true}"
            }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        (rec, format!("http://127.0.0.1:{port}"))
    }

    fn hits(&self) -> usize {
        self.seen.lock().unwrap().len()
    }

    fn saw(&self, secret: &str) -> bool {
        self.seen.lock().unwrap().iter().any(|h| h.contains(secret))
    }
}

struct World {
    env: Env,
    server: Server,
    guard: Arc<LeakGuard>,
    alice: String,
    bob: String,
}

impl World {
    fn start() -> World {
        let env = Env::new().set("CREDHOST_ALLOW_PRIVATE_NETWORKS", "true");
        let alice = env.add_user("alice", false);
        let bob = env.add_user("bob", false);
        let server = env.start(&[]);
        World { env, server, guard: LeakGuard::new(), alice, bob }
    }

    fn api(&self) -> Api {
        self.server.api(&self.guard)
    }
}

async fn bearer(api: &Api, token: &str, name: &str, secret: &str, test_url: &str) -> Value {
    let r = api
        .post(
            "/api/credentials",
            Some(token),
            json!({"name": name, "type": "bearer_token", "fields": {"token": secret, "test_url": test_url}}),
        )
        .await;
    r.expect(201);
    r.json()
}

/// Rewrites a stored credential's clear field directly in the database file (the server
/// must be stopped): what a local attacker with write access to the file could do.
fn edit_field_in_db(db_path: &std::path::Path, name: &str, field: &str, value: &str) {
    let db = redb::Database::open(db_path).expect("open the database file");
    let table: redb::TableDefinition<u128, &[u8]> = redb::TableDefinition::new("credentials");
    let txn = db.begin_write().unwrap();
    {
        let mut t = txn.open_table(table).unwrap();
        let rows: Vec<(u128, Vec<u8>)> = {
            use redb::ReadableTable;
            t.iter().unwrap().map(|r| r.unwrap()).map(|(k, v)| (k.value(), v.value().to_vec())).collect()
        };
        let mut edited = 0;
        for (key, bytes) in rows {
            let mut rec: Value = serde_json::from_slice(&bytes).unwrap();
            if rec["name"] == name {
                rec["fields"][field] = json!(value);
                t.insert(key, serde_json::to_vec(&rec).unwrap().as_slice()).unwrap();
                edited += 1;
            }
        }
        assert_eq!(edited, 1, "credential {name} not found in the file");
    }
    txn.commit().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secret_only_goes_where_it_was_sent() {
    let (good, good_url) = Recorder::start().await;
    let (evil, evil_url) = Recorder::start().await;
    let mut w = World::start();
    let api = w.api();
    let secret = w.guard.secret(format!("tok_{}", random_alnum(32)));
    let c = bearer(&api, &w.alice, "api", &secret, &format!("{good_url}/me")).await;
    let id = c["id"].as_str().unwrap().to_string();

    // PATCH of the destination alone: refused, naming the secret to re-enter; nothing changes.
    let r = api.patch(&format!("/api/credentials/{id}"), Some(&w.alice), json!({"fields": {"test_url": format!("{evil_url}/steal")}})).await;
    let body = r.expect_error(422, "invalid_fields");
    let fields = body["error"]["fields"].as_array().unwrap();
    assert_eq!(fields.len(), 1, "{body}");
    assert_eq!(fields[0]["field"], "token");
    assert!(fields[0]["message"].as_str().unwrap().contains("re-enter"), "{body}");
    let now = api.get(&format!("/api/credentials/{id}"), Some(&w.alice)).await.json();
    assert_eq!(now["fields"]["test_url"], format!("{good_url}/me"));
    assert_eq!(now["version"], c["version"]);
    // A test still goes to the original destination only.
    api.post_empty(&format!("/api/credentials/{id}/test"), Some(&w.alice)).await.expect(200);
    assert!(good.saw(&secret), "the real service got the token");
    assert_eq!(evil.hits(), 0, "the attacker's listener got a request");

    // Metadata-only changes that are not destinations still work without the secret.
    api.patch(&format!("/api/credentials/{id}"), Some(&w.alice), json!({"description": "prod", "fields": {"prefix": "Bearer"}}))
        .await
        .expect(200);

    // An SSH credential: host and port are destinations too.
    let ssh = api
        .post(
            "/api/credentials",
            Some(&w.alice),
            json!({"name": "box", "type": "ssh", "fields": {"host": "127.0.0.1", "port": 2222, "username": "deploy",
                   "password": w.guard.secret(format!("pw-{}", random_alnum(20)))}}),
        )
        .await;
    ssh.expect(201);
    let ssh_id = ssh.json()["id"].as_str().unwrap().to_string();
    for change in [json!({"port": 2223}), json!({"host": "127.0.0.2"})] {
        let r = api.patch(&format!("/api/credentials/{ssh_id}"), Some(&w.alice), json!({"fields": change})).await;
        let body = r.expect_error(422, "invalid_fields");
        assert_eq!(body["error"]["fields"][0]["field"], "password", "{body}");
    }

    // A metadata edit in the database file behind the API's back: the secrets were sealed
    // for the old destination, so they are not used at all.
    w.server.stop();
    edit_field_in_db(&w.env.data_dir().join("credhost.redb"), "api", "test_url", &format!("{evil_url}/steal"));
    let server = w.env.start(&[]);
    let api = server.api(&w.guard);
    let r = api.post_empty(&format!("/api/credentials/{id}/test"), Some(&w.alice)).await;
    r.expect_error(409, "destination_mismatch");
    assert_eq!(evil.hits(), 0, "the attacker's listener got a request after the file edit");
    api.get("/healthz", None).await.expect(200);

    // With the secret re-entered, the owner may point it elsewhere (a new version).
    let r = api
        .patch(
            &format!("/api/credentials/{id}"),
            Some(&w.alice),
            json!({"fields": {"test_url": format!("{good_url}/v2"), "token": secret}}),
        )
        .await;
    r.expect(200);
    assert!(r.json()["version"].as_u64().unwrap() > c["version"].as_u64().unwrap());
    api.post_empty(&format!("/api/credentials/{id}/test"), Some(&w.alice)).await.expect(200);
    assert_eq!(evil.hits(), 0);
    w.guard.check("server log", &server.stderr());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grants_can_only_touch_their_own_credential() {
    let (_good, good_url) = Recorder::start().await;
    let w = World::start();
    let api = w.api();
    let a = bearer(&api, &w.alice, "a", &w.guard.secret(format!("tok_{}", random_alnum(32))), &format!("{good_url}/a")).await;
    let b = bearer(&api, &w.alice, "b", &w.guard.secret(format!("tok_{}", random_alnum(32))), &format!("{good_url}/b")).await;
    let (a_id, b_id) = (a["id"].as_str().unwrap(), b["id"].as_str().unwrap());

    // Bad grant requests name the field and create nothing.
    for (body, field) in [
        (json!({"ttl_secs": 0}), "ttl_secs"),
        (json!({"ttl_secs": 60, "methods": ["FETCH"]}), "methods"),
        (json!({"ttl_secs": 60, "path_prefixes": ["/v2/../admin"]}), "path_prefixes"),
        (json!({"ttl_secs": 60, "max_calls": 0}), "max_calls"),
        // Wider than the type allows (bearer_token: no OPTIONS).
        (json!({"ttl_secs": 60, "methods": ["OPTIONS"]}), "methods"),
    ] {
        let r = api.post(&format!("/api/credentials/{a_id}/grants"), Some(&w.alice), body).await;
        let e = r.expect_error(422, "invalid_fields");
        assert_eq!(e["error"]["fields"][0]["field"], field, "{e}");
    }
    assert_eq!(api.get(&format!("/api/credentials/{a_id}/grants"), Some(&w.alice)).await.json(), json!([]));

    let r = api
        .post(&format!("/api/credentials/{a_id}/grants"), Some(&w.alice), json!({"ttl_secs": 600, "label": "agent", "methods": ["get"]}))
        .await;
    r.expect(201);
    let issued = r.json();
    let grant = w.guard.secret(issued["token"].as_str().unwrap());
    assert_eq!(issued["proxy_url"], format!("/api/credentials/{a_id}/proxy"));
    assert_eq!(issued["methods"], json!(["GET"]));

    // The grant reads its own credential's metadata, and nothing else.
    api.get(&format!("/api/credentials/{a_id}"), Some(&grant)).await.expect(200);
    api.get(&format!("/api/credentials/{b_id}"), Some(&grant)).await.expect_error(404, "not_found");
    api.get("/api/credentials", Some(&grant)).await.expect_error(403, "grant_only");
    api.get("/api/audit", Some(&grant)).await.expect_error(403, "grant_only");
    api.post_empty(&format!("/api/credentials/{a_id}/test"), Some(&grant)).await.expect_error(403, "insufficient_scope");
    api.patch(&format!("/api/credentials/{a_id}"), Some(&grant), json!({"description": "x"}))
        .await
        .expect_error(403, "insufficient_scope");
    api.delete(&format!("/api/credentials/{a_id}"), Some(&grant)).await.expect_error(403, "grant_only");
    api.post(&format!("/api/credentials/{a_id}/grants"), Some(&grant), json!({"ttl_secs": 60}))
        .await
        .expect_error(403, "grant_only");

    // Listed for the owner (without the token), then revoked: 403 grant_revoked.
    let listed = api.get(&format!("/api/credentials/{a_id}/grants"), Some(&w.alice)).await.json();
    assert_eq!(listed.as_array().unwrap().len(), 1);
    assert!(!listed.to_string().contains(&grant));
    let gid = issued["grant_id"].as_str().unwrap();
    api.delete(&format!("/api/credentials/{b_id}/grants/{gid}"), Some(&w.alice)).await.expect_error(404, "not_found");
    api.delete(&format!("/api/credentials/{a_id}/grants/{gid}"), Some(&w.alice)).await.expect(200);
    api.get(&format!("/api/credentials/{a_id}"), Some(&grant)).await.expect_error(403, "grant_revoked");

    // Expiry: 401 grant_expired.
    let r = api.post(&format!("/api/credentials/{a_id}/grants"), Some(&w.alice), json!({"ttl_secs": 1})).await;
    r.expect(201);
    let short = w.guard.secret(r.json()["token"].as_str().unwrap());
    api.get(&format!("/api/credentials/{a_id}"), Some(&short)).await.expect(200);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    api.get(&format!("/api/credentials/{a_id}"), Some(&short)).await.expect_error(401, "grant_expired");

    // Another user's token cannot make grants on alice's credential.
    api.post(&format!("/api/credentials/{a_id}/grants"), Some(&w.bob), json!({"ttl_secs": 60})).await.expect_error(404, "not_found");
    w.guard.check("server log", &w.server.stderr());
}

// ---------------------------------------------------------------- the proxy

/// An Alpaca-like API: `/v2/positions` needs the key headers; `/v2/echo` sends the secret
/// back in many forms (body and an `etag` header); `/v2/hop` redirects to `hop_to`.
/// Records every request's headers.
#[derive(Clone)]
struct Alpaca {
    which: &'static str,
    key_id: String,
    secret: String,
    hop_to: String,
    seen: Arc<Mutex<Vec<HeaderMap>>>,
}

impl Alpaca {
    async fn start(which: &'static str, key_id: &str, secret: &str, hop_to: &str) -> (Alpaca, String) {
        let me = Alpaca { which, key_id: key_id.into(), secret: secret.into(), hop_to: hop_to.into(), seen: Default::default() };
        let state = me.clone();
        let app = Router::new().fallback(move |uri: axum::http::Uri, headers: HeaderMap| {
            let m = state.clone();
            async move {
                m.seen.lock().unwrap().push(headers.clone());
                let ok = headers.get("apca-api-key-id").is_some_and(|v| v.as_bytes() == m.key_id.as_bytes())
                    && headers.get("apca-api-secret-key").is_some_and(|v| v.as_bytes() == m.secret.as_bytes());
                let resp = axum::response::Response::builder();
                if !ok {
                    return resp.status(401).body(axum::body::Body::from("{\"message\":\"unauthorized\"}")).unwrap();
                }
                match uri.path() {
                    "/v2/positions" => resp
                        .status(200)
                        .header("content-type", "application/json")
                        .body(axum::body::Body::from(format!("[{{\"symbol\":\"AAPL\",\"qty\":\"10\",\"env\":\"{}\"}}]", m.which)))
                        .unwrap(),
                    "/v2/echo" => {
                        use base64::Engine as _;
                        let b64 = base64::engine::general_purpose::STANDARD;
                        let body = json!({
                            "raw": m.secret,
                            "b64": b64.encode(&m.secret),
                            "basic": format!("Basic {}", b64.encode(format!("{}:{}", m.key_id, m.secret))),
                            "url": percent_encoding::utf8_percent_encode(&m.secret, percent_encoding::NON_ALPHANUMERIC).to_string(),
                        });
                        resp.status(200)
                            .header("content-type", "application/json")
                            .header("etag", format!("\"{}\"", m.secret))
                            .header("set-cookie", format!("s={}", m.secret))
                            .body(axum::body::Body::from(body.to_string()))
                            .unwrap()
                    }
                    "/v2/hop" => resp.status(302).header("location", m.hop_to.clone()).body(axum::body::Body::empty()).unwrap(),
                    _ => resp.status(404).body(axum::body::Body::from("{}")).unwrap(),
                }
            }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        (me, format!("http://127.0.0.1:{port}"))
    }

    fn last(&self) -> HeaderMap {
        self.seen.lock().unwrap().last().cloned().expect("a request arrived")
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_proxy_applies_the_credential_and_hands_back_no_secret() {
    let guard = LeakGuard::new();
    let paper_key = format!("PK{}", random_alnum(18).to_uppercase());
    let live_key = format!("AK{}", random_alnum(18).to_uppercase());
    let paper_secret = guard.secret(random_alnum(40));
    let live_secret = guard.secret(random_alnum(40));
    let (evil, evil_url) = Recorder::start().await;
    let (paper, paper_url) = Alpaca::start("paper", &paper_key, &paper_secret, &format!("{evil_url}/stolen")).await;
    let (live, live_url) = Alpaca::start("live", &live_key, &live_secret, &format!("{evil_url}/stolen")).await;
    let env = Env::new();
    let config = env.dir.path().join("credhost.toml");
    std::fs::write(
        &config,
        format!(
            "[plugins]\nallow_private_networks = true\n[plugins.overrides.alpaca]\nallowed_hosts = [\"{paper_url}\", \"{live_url}\"]\n\
             settings = {{ paper_base_url = \"{paper_url}\", live_base_url = \"{live_url}\" }}\n"
        ),
    )
    .unwrap();
    let cfg = config.to_str().unwrap();
    let out = env.cli(&["--config", cfg, "users", "add", "alice"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let alice = String::from_utf8_lossy(&out.stdout).lines().last().unwrap().trim().to_string();
    let server = env.start(&["--config", cfg]);
    let api = server.api(&guard);
    let create = |name: &str, environment: &str, key: &str, secret: &str| {
        json!({"name": name, "type": "alpaca", "environment": environment, "fields": {"key_id": key, "secret_key": secret}})
    };
    let r = api.post("/api/credentials", Some(&alice), create("paper", "paper", &paper_key, &paper_secret)).await;
    r.expect(201);
    let paper_id = r.json()["id"].as_str().unwrap().to_string();
    let r = api.post("/api/credentials", Some(&alice), create("live", "live", &live_key, &live_secret)).await;
    r.expect(201);
    let live_id = r.json()["id"].as_str().unwrap().to_string();
    let proxy = |id: &str, path: &str| format!("/api/credentials/{id}/proxy{path}");

    // Paper and live reach their own base URL by the credential's environment; the
    // caller's own auth headers and cookies never reach the service.
    let req = api
        .http
        .get(format!("{}{}", api.base, proxy(&paper_id, "/v2/positions")))
        .header("authorization", format!("Bearer {alice}"))
        .header("cookie", "session=caller")
        .header("apca-api-secret-key", "callers-own-guess")
        .header("proxy-authorization", "Basic Zm9vOmJhcg==");
    let r = api.send(reqwest::Method::GET, &proxy(&paper_id, "/v2/positions"), req).await;
    r.expect(200);
    assert_eq!(r.json()[0]["env"], "paper", "{}", r.text);
    let seen = paper.last();
    assert_eq!(seen.get("apca-api-secret-key").unwrap().as_bytes(), paper_secret.as_bytes());
    assert!(seen.get("cookie").is_none() && seen.get("authorization").is_none() && seen.get("proxy-authorization").is_none(), "{seen:?}");
    let r = api.get(&proxy(&live_id, "/v2/positions"), Some(&alice)).await;
    r.expect(200);
    assert_eq!(r.json()[0]["env"], "live");
    assert_eq!(live.seen.lock().unwrap().len(), 1);

    // The echo endpoint sends the secret back in every form: none of it comes through
    // (the leak guard checks every response body; the etag header is scrubbed, set-cookie dropped).
    let r = api.get(&proxy(&paper_id, "/v2/echo"), Some(&alice)).await;
    r.expect(200);
    assert!(r.text.contains("[REDACTED]"), "{}", r.text);
    assert_eq!(r.header("etag"), Some("\"[REDACTED]\""));
    assert!(r.header("set-cookie").is_none());

    // Off the policy: another path prefix, a method the type does not allow, traversal.
    api.get(&proxy(&paper_id, "/v1/anything"), Some(&alice)).await.expect_error(403, "use_denied");
    let r = api.request(reqwest::Method::HEAD, &proxy(&paper_id, "/v2/positions"), Some(&alice), common::server::Body::None).await;
    assert_eq!(r.status, 403);
    api.get(&proxy(&paper_id, "/v2/%2e%2e/admin"), Some(&alice)).await.expect_error(403, "use_denied");
    // A redirect off the allow-list is not followed: nothing reaches the attacker.
    api.get(&proxy(&paper_id, "/v2/hop"), Some(&alice)).await.expect_error(502, "egress_refused");
    assert_eq!(evil.hits(), 0);

    // An agent with a grant and an unmodified SDK: base URL = the proxy, key id and secret
    // = the grant. It lists positions and never holds the key.
    let r = api
        .post(&format!("/api/credentials/{paper_id}/grants"), Some(&alice), json!({"ttl_secs": 600, "methods": ["GET"], "path_prefixes": ["/v2/positions"], "max_calls": 3}))
        .await;
    r.expect(201);
    let grant = guard.secret(r.json()["token"].as_str().unwrap());
    let sdk_base = format!("{}{}", api.base, r.json()["proxy_url"].as_str().unwrap());
    let sdk = reqwest::Client::builder().no_proxy().build().unwrap();
    let sdk_get = |path: &str| {
        sdk.get(format!("{sdk_base}{path}")).header("APCA-API-KEY-ID", grant.as_str()).header("APCA-API-SECRET-KEY", grant.as_str()).send()
    };
    let resp = sdk_get("/v2/positions").await.unwrap();
    assert_eq!(resp.status(), 200);
    let body = resp.text().await.unwrap();
    guard.check("grant proxy body", &body);
    assert!(body.contains("AAPL"), "{body}");
    assert_eq!(paper.last().get("apca-api-key-id").unwrap().as_bytes(), paper_key.as_bytes(), "the grant was replaced by the real key");
    // Narrowed by the grant: another allowed path of the type is not allowed to it.
    let resp = sdk_get("/v2/echo").await.unwrap();
    assert_eq!(resp.status(), 403);
    // The grant cannot use another credential.
    let resp = sdk.get(format!("{}{}", api.base, proxy(&live_id, "/v2/positions"))).bearer_auth(&grant).send().await.unwrap();
    assert_eq!(resp.status(), 404);
    // The budget: 3 calls, 2 more succeed (the refused ones did not count), then 429.
    assert_eq!(sdk_get("/v2/positions").await.unwrap().status(), 200);
    assert_eq!(sdk_get("/v2/positions").await.unwrap().status(), 200);
    let resp = sdk_get("/v2/positions").await.unwrap();
    assert_eq!(resp.status(), 429);
    assert!(resp.text().await.unwrap().contains("grant_exhausted"));

    // Every use is audited: method, path without query, status, and the token used.
    // (Written just after each answer: wait briefly for the last ones.)
    let mut audit = Value::Null;
    for _ in 0..50 {
        audit = api.get("/api/audit?limit=100", Some(&alice)).await.json();
        if audit["items"].as_array().unwrap().iter().filter(|r| r["action"] == "credential.use").count() >= 9 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let uses: Vec<&Value> = audit["items"].as_array().unwrap().iter().filter(|r| r["action"] == "credential.use").collect();
    assert!(uses.len() >= 9, "{audit}");
    assert!(uses.iter().any(|r| r["detail"].as_str().unwrap().starts_with("GET /v2/positions status=200") && r["detail"].as_str().unwrap().contains("via=grt_")));
    api.get("/healthz", None).await.expect(200);
    guard.check("server log", &server.stderr());
}

// ---------------------------------------------------------------- scopes

/// The scope each documented route needs. A route in the OpenAPI document that is not
/// here fails the test: every new route must say which scope guards it.
const ROUTE_SCOPES: &[(&str, &str, &str)] = &[
    ("post", "/api/credentials", "write"),
    ("get", "/api/credentials", "read"),
    ("get", "/api/credentials/{id}", "read"),
    ("patch", "/api/credentials/{id}", "write"),
    ("delete", "/api/credentials/{id}", "write"),
    ("post", "/api/credentials/{id}/restore", "write"),
    ("post", "/api/credentials/{id}/validate", "test"),
    ("post", "/api/credentials/{id}/test", "test"),
    ("get", "/api/credentials/{id}/tests", "read"),
    ("get", "/api/credentials/{id}/versions", "read"),
    // Rotate needs `test` too (tests/rotation.rs checks a token without it).
    ("post", "/api/credentials/{id}/rotate", "write"),
    ("post", "/api/credentials/{id}/versions/{version}/promote", "write"),
    ("post", "/api/credentials/{id}/grants", "write"),
    ("get", "/api/credentials/{id}/grants", "read"),
    ("delete", "/api/credentials/{id}/grants/{grant_id}", "write"),
    ("get", "/api/credentials/{id}/proxy/{path}", "use"),
    ("post", "/api/credentials/{id}/reveal", "reveal"),
    ("get", "/api/audit", "read"),
    ("post", "/api/admin/users", "admin"),
    ("post", "/api/admin/users/{name}/tokens", "admin"),
    ("delete", "/api/admin/tokens/{id}", "admin"),
    ("get", "/api/admin/users", "admin"),
    ("get", "/api/admin/tokens", "admin"),
    ("get", "/api/tokens", "read"),
    ("delete", "/api/tokens/{id}", "write"),
    ("get", "/api/admin/plugins", "admin"),
    ("post", "/api/admin/plugins/reload", "admin"),
    ("post", "/api/admin/keys/rotate", "admin"),
    ("post", "/api/webhooks", "write"),
    ("get", "/api/webhooks", "read"),
    ("get", "/api/webhooks/{id}", "read"),
    ("delete", "/api/webhooks/{id}", "write"),
    ("get", "/api/webhooks/{id}/deliveries", "read"),
    ("post", "/api/webhooks/{id}/ping", "write"),
];

const ALL_SCOPES: [&str; 6] = ["read", "write", "test", "use", "reveal", "admin"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_checks_its_scope() {
    let (_rec, url) = Recorder::start().await;
    let env = Env::new().set("CREDHOST_ALLOW_PRIVATE_NETWORKS", "true");
    let admin = env.add_user("ops", true);
    let server = env.start(&[]);
    let guard = LeakGuard::new();
    let api = server.api(&guard);
    let c = bearer(&api, &admin, "scoped", &guard.secret(format!("tok_{}", random_alnum(32))), &format!("{url}/x")).await;
    let id = c["id"].as_str().unwrap().to_string();

    let doc = api.get("/openapi.json", None).await.json();
    let mut documented = Vec::new();
    for (path, ops) in doc["paths"].as_object().unwrap() {
        for (m, op) in ops.as_object().unwrap() {
            if op["security"].as_array().is_some_and(|s| s.iter().any(|x| x.get("bearer").is_some())) {
                documented.push((m.clone(), path.clone()));
            }
        }
    }
    for (m, path) in &documented {
        assert!(
            ROUTE_SCOPES.iter().any(|(rm, rp, _)| rm == m && rp == path),
            "{m} {path} is documented but has no scope in ROUTE_SCOPES"
        );
    }
    for (m, path, scope) in ROUTE_SCOPES {
        if !documented.iter().any(|(dm, dp)| dm == m && dp == path) {
            continue; // e.g. a route not built in this binary
        }
        let without: Vec<&str> = ALL_SCOPES.iter().copied().filter(|s| s != scope).collect();
        let r = api.post("/api/admin/users/ops/tokens", Some(&admin), json!({"scopes": without, "label": format!("no-{scope}")})).await;
        r.expect(201);
        assert_eq!(r.json()["scopes"].as_array().unwrap().len(), 5);
        let token = guard.secret(r.json()["token"].as_str().unwrap());
        let concrete = path.replace("{id}", &id).replace("{grant_id}", "grt_0").replace("{name}", "ops").replace("{path}", "x");
        let body = match (*m, *path) {
            ("post", "/api/credentials") => common::server::Body::Json(json!({"name": "n", "type": "bearer_token", "fields": {"token": "t0123456789"}})),
            ("patch", _) => common::server::Body::Json(json!({"description": "d"})),
            ("post", "/api/credentials/{id}/grants") => common::server::Body::Json(json!({"ttl_secs": 60})),
            ("post", "/api/admin/users") => common::server::Body::Json(json!({"name": "eve"})),
            ("post", "/api/admin/users/{name}/tokens") => common::server::Body::Json(json!({})),
            ("post", "/api/webhooks") => common::server::Body::Json(json!({"url": "https://example.com/hook"})),
            ("post", "/api/admin/keys/rotate") => common::server::Body::Json(json!({"new_key_file": "/nonexistent/key"})),
            ("post", _) => common::server::Body::Json(json!({})),
            _ => common::server::Body::None,
        };
        let method = reqwest::Method::from_bytes(m.to_uppercase().as_bytes()).unwrap();
        let r = api.request(method, &concrete, Some(&token), body).await;
        let e = r.expect_error(403, "insufficient_scope");
        assert!(e["error"]["message"].as_str().unwrap().contains(&format!("`{scope}`")), "{m} {path}: {e}");
    }
    // A user's default token has neither reveal nor admin.
    let r = api.post("/api/admin/users/ops/tokens", Some(&admin), json!({})).await;
    r.expect(201);
    let scopes: Vec<String> = r.json()["scopes"].as_array().unwrap().iter().map(|s| s.as_str().unwrap().to_string()).collect();
    assert!(!scopes.contains(&"reveal".to_string()), "{scopes:?}");
    guard.check("server log", &server.stderr());
}
