//! Built-in types report `expires_at` (issue 14, item 3) where their service says when
//! the credential expires: local services answer like GitHub (the token-expiration
//! header), GitLab (`expires_at` in the body) and OAuth introspection (`exp`), and the
//! fact appears, normalised to RFC 3339 UTC, in the test outcome of the real binary.

mod common;

use axum::http::{HeaderMap, StatusCode};
use axum::routing::get;
use axum::Router;
use common::server::{random_alnum, Env, LeakGuard};
use serde_json::{json, Value};

/// One service with an endpoint per way of telling the expiry; each answers 200 only with
/// the right token (in `Authorization` or `X-Api-Key`), 401 otherwise.
async fn service(token: String) -> String {
    let ok = move |h: &HeaderMap| {
        // `Bearer <token>`, or GitHub's `token <token>`.
        h.get("authorization").is_some_and(|v| v.as_bytes().ends_with(format!(" {token}").as_bytes()))
            || h.get("x-api-key").is_some_and(|v| v.as_bytes() == token.as_bytes())
    };
    let (a, b, c, d, e) = (ok.clone(), ok.clone(), ok.clone(), ok.clone(), ok);
    let app = Router::new()
        .route(
            "/github/user",
            get(move |h: HeaderMap| async move {
                if !a(&h) {
                    return (StatusCode::UNAUTHORIZED, HeaderMap::new(), String::new());
                }
                let mut out = HeaderMap::new();
                out.insert("github-authentication-token-expiration", "2027-01-15 09:30:00 UTC".parse().unwrap());
                (StatusCode::OK, out, "{\"login\":\"octo\"}".to_string())
            }),
        )
        .route(
            "/gitlab/self",
            get(move |h: HeaderMap| async move {
                if !b(&h) {
                    return (StatusCode::UNAUTHORIZED, String::new());
                }
                (StatusCode::OK, json!({"name": "ci", "active": true, "expires_at": "2027-02-28"}).to_string())
            }),
        )
        .route(
            "/introspect",
            get(move |h: HeaderMap| async move {
                if !c(&h) {
                    return (StatusCode::UNAUTHORIZED, String::new());
                }
                (StatusCode::OK, json!({"active": true, "exp": 1_798_761_600u64}).to_string())
            }),
        )
        .route(
            "/plain",
            get(move |h: HeaderMap| async move { if d(&h) { StatusCode::OK } else { StatusCode::UNAUTHORIZED } }),
        )
        .route(
            // A rejected token: an expiry in a 401 answer is not the credential's.
            "/rejected",
            get(move |h: HeaderMap| async move {
                let _ = e(&h);
                let mut out = HeaderMap::new();
                out.insert("github-authentication-token-expiration", "2027-01-15 09:30:00 UTC".parse().unwrap());
                (StatusCode::UNAUTHORIZED, out, "{\"expires_at\":\"2027-01-01\"}")
            }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://127.0.0.1:{port}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bearer_and_api_key_tests_report_the_expiry_their_service_states() {
    let guard = LeakGuard::new();
    let token = guard.secret(format!("ghp_{}", random_alnum(36)));
    let base = service(token.clone()).await;
    let env = Env::new().set("CREDHOST_ALLOW_PRIVATE_NETWORKS", "true");
    let alice = env.add_user("alice", false);
    let mut server = env.start(&[]);
    let api = server.api(&guard);

    let cases: [(&str, Value, Option<&str>, &str); 6] = [
        ("github", json!({"type": "bearer_token", "fields": {"token": token, "prefix": "token", "test_url": format!("{base}/github/user")}}),
         Some("2027-01-15T09:30:00Z"), "valid"),
        ("gitlab", json!({"type": "api_key", "fields": {"key": token, "name": "X-Api-Key", "test_url": format!("{base}/gitlab/self")}}),
         Some("2027-02-28T00:00:00Z"), "valid"),
        ("oauth", json!({"type": "bearer_token", "fields": {"token": token, "test_url": format!("{base}/introspect")}}),
         Some("2027-01-01T00:00:00Z"), "valid"),
        ("plain", json!({"type": "bearer_token", "fields": {"token": token, "test_url": format!("{base}/plain")}}),
         None, "valid"),
        ("rejected", json!({"type": "bearer_token", "fields": {"token": token, "test_url": format!("{base}/rejected")}}),
         None, "invalid"),
        ("wrong", json!({"type": "bearer_token", "fields": {"token": "not-the-token", "test_url": format!("{base}/github/user")}}),
         None, "invalid"),
    ];
    for (name, mut body, want, status) in cases {
        body["name"] = json!(name);
        let r = api.post("/api/credentials", Some(&alice), body).await;
        r.expect(201);
        let id = r.json()["id"].as_str().unwrap().to_string();
        let r = api.post_empty(&format!("/api/credentials/{id}/test"), Some(&alice)).await;
        r.expect(200);
        let v = r.json();
        assert_eq!(v["status"], status, "{name}: {v}");
        assert_eq!(v["facts"]["expires_at"].as_str(), want, "{name}: {v}");
    }
    guard.check("server log", &server.stderr());
    server.stop();
}
