//! PostgreSQL storage (issue 16), against the real binary over HTTP and a real PostgreSQL 15
//! (tests/common/postgres.rs: one cluster per test process, one fresh database per test):
//! row-level security as the database enforces it, replicas sharing one database
//! (visibility, revocation, concurrent writers, SIGKILL of one replica), `credhost migrate`
//! from redb, a newer schema refused, and scheduled tests run once across replicas.
//!
//! A missing PostgreSQL fails with the package to install; nothing is skipped. Every
//! response and every server log is checked for the secrets the test sent (LeakGuard).

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, StatusCode};
use axum::Router;
use common::postgres::Postgres;
use common::server::{random_alnum, random_hex, Api, Env, LeakGuard, Server};
use serde_json::{json, Value};

// ---------------------------------------------------------------- helpers

fn pg() -> &'static Postgres {
    Postgres::shared()
}

/// The database name at the end of a `postgres://…/NAME` URL.
fn db_of(url: &str) -> String {
    url.rsplit('/').next().unwrap().to_string()
}

/// A storage env on a fresh database of the shared cluster, allowed to reach local services.
fn pg_env() -> (Env, String) {
    let env = Env::postgres(pg()).set("CREDHOST_ALLOW_PRIVATE_NETWORKS", "true");
    let db = db_of(env.var("CREDHOST_POSTGRES_URL").unwrap());
    (env, db)
}

/// A local HTTP service standing for a credential's API: answers 200 to the bearer token it
/// is told to accept (401 otherwise) and counts requests and the tokens it saw.
#[derive(Clone)]
struct Service {
    hits: Arc<AtomicUsize>,
    accept: Arc<Mutex<BTreeSet<String>>>,
    seen: Arc<Mutex<Vec<String>>>,
    url: String,
}

impl Service {
    async fn start() -> Service {
        let hits = Arc::new(AtomicUsize::new(0));
        let accept = Arc::new(Mutex::new(BTreeSet::new()));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (h, a, s) = (hits.clone(), accept.clone(), seen.clone());
        let app = Router::new().fallback(move |headers: HeaderMap| {
            let (h, a, s) = (h.clone(), a.clone(), s.clone());
            async move {
                h.fetch_add(1, Ordering::SeqCst);
                let auth = headers.get("authorization").and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
                let token = auth.strip_prefix("Bearer ").unwrap_or("").to_string();
                s.lock().unwrap().push(token.clone());
                if a.lock().unwrap().contains(&token) {
                    (StatusCode::OK, "ok")
                } else {
                    (StatusCode::UNAUTHORIZED, "no")
                }
            }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Service { hits, accept, seen, url: format!("http://127.0.0.1:{port}/me") }
    }

    fn accept(&self, token: &str) {
        self.accept.lock().unwrap().insert(token.to_string());
    }

    fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }

    fn saw(&self, token: &str) -> bool {
        self.seen.lock().unwrap().iter().any(|t| t == token)
    }
}

/// A bearer-token credential body whose test calls `url`; the secret is registered with `guard`.
fn bearer(guard: &LeakGuard, name: &str, url: &str) -> (Value, String) {
    let secret = guard.secret(format!("tok_{}", random_alnum(28)));
    (json!({"name": name, "type": "bearer_token", "description": format!("{name} token"), "tags": ["pg"],
            "fields": {"token": secret, "test_url": url}}), secret)
}

async fn create(api: &Api, token: &str, body: Value) -> Value {
    let r = api.post("/api/credentials", Some(token), body).await;
    r.expect(201);
    r.json()
}

fn id_of(v: &Value) -> String {
    v["id"].as_str().expect("id").to_string()
}

fn enc(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
}

/// Every item of a listing (`/api/credentials` or `/api/audit`), following `next_cursor`.
async fn list_all(api: &Api, token: &str, path: &str, query: &str) -> Vec<Value> {
    let mut out = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut q = format!("limit=1000{}{query}", if query.is_empty() { "" } else { "&" });
        if let Some(c) = &cursor {
            q.push_str(&format!("&cursor={}", enc(c)));
        }
        let r = api.get(&format!("{path}?{q}"), Some(token)).await;
        r.expect(200);
        let page = r.json();
        out.extend(page["items"].as_array().expect("items").iter().cloned());
        match page.get("next_cursor").and_then(Value::as_str) {
            Some(c) => cursor = Some(c.to_string()),
            None => return out,
        }
    }
}

async fn credentials(api: &Api, token: &str) -> Vec<Value> {
    list_all(api, token, "/api/credentials", "").await
}

/// `POST /api/credentials/{id}/test` → the result's `status`.
async fn test_status(api: &Api, token: &str, id: &str) -> String {
    let r = api.post_empty(&format!("/api/credentials/{id}/test"), Some(token)).await;
    r.expect(200);
    r.json()["status"].as_str().unwrap_or_default().to_string()
}

/// The namespace setting (`credhost.namespace`) of a user, from `GET /api/admin/users`:
/// the namespace uuid as 32 lowercase hex digits, no dashes (the store's `ns` column).
async fn namespace_of(api: &Api, admin: &str, user: &str) -> String {
    let r = api.get("/api/admin/users", Some(admin)).await;
    r.expect(200);
    let users = r.json();
    let u = users.as_array().unwrap().iter().find(|u| u["name"] == user).unwrap_or_else(|| panic!("no {user}: {users}"));
    u["namespace"].as_str().expect("namespace").replace('-', "").to_ascii_lowercase()
}

/// The leak check on everything the servers printed, and a sanity check that the guard did work.
fn finish(guard: &LeakGuard, servers: &[&Server]) {
    for s in servers {
        guard.check("server stderr (logs)", &s.stderr());
        guard.check("server stdout", &s.stdout().join("\n"));
    }
    assert!(guard.secrets() >= 1, "no secrets were sent");
    assert!(guard.checked() > 5, "only {} texts were checked", guard.checked());
}

/// `credhost audit verify` with `env` (servers stopped); panics unless it succeeds.
fn audit_verify(env: &Env, guard: &LeakGuard) -> String {
    let out = env.cli(&["audit", "verify"]);
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    guard.check("audit verify output", &text);
    assert!(out.status.success(), "audit verify failed ({}):\n{text}", out.status);
    assert!(text.contains("intact"), "{text}");
    text
}

/// A POST that tolerates a dead server: `None` when the request did not get an answer.
async fn post_raw(http: &reqwest::Client, guard: &LeakGuard, base: &str, token: &str, body: &Value) -> Option<(u16, String)> {
    let r = http.post(format!("{base}/api/credentials")).bearer_auth(token).json(body).send().await.ok()?;
    let status = r.status().as_u16();
    let text = r.text().await.ok()?;
    guard.check("create response", &text);
    Some((status, text))
}

// ---------------------------------------------------------------- a. RLS

/// The database itself confines the application role: `credhost_app` without
/// `credhost.namespace` sees no rows of a per-user table; with a namespace, only its rows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rls_without_the_namespace_setting_sees_no_rows() {
    let (env, db) = pg_env();
    let root = env.add_user("root", true);
    let alice = env.add_user("alice", false);
    let bob = env.add_user("bob", false);
    let server = env.start(&[]);
    let guard = LeakGuard::new();
    let api = server.api(&guard);
    api.learn_secret_fields().await;
    let svc = Service::start().await;
    for i in 0..3 {
        create(&api, &alice, bearer(&guard, &format!("a{i}"), &svc.url).0).await;
    }
    for i in 0..2 {
        create(&api, &bob, bearer(&guard, &format!("b{i}"), &svc.url).0).await;
    }
    let (ns_a, ns_b) = (namespace_of(&api, &root, "alice").await, namespace_of(&api, &root, "bob").await);

    let p = pg();
    let count = |sql: &str| -> i64 {
        let out = p.psql(&db, sql);
        out.lines().last().unwrap_or("").trim().parse().unwrap_or_else(|_| panic!("not a count: {out:?} ({sql})"))
    };
    // Sanity: the superuser (no SET ROLE) sees every row.
    let all = count("SELECT count(*) FROM kv_credentials");
    assert!(all >= 5, "five credentials, {all} rows");
    let by_ns = p.psql(&db, "SELECT ns, count(*) FROM kv_credentials GROUP BY ns ORDER BY ns");
    let of = |ns: &str| count(&format!("SELECT count(*) FROM kv_credentials WHERE ns = '{ns}'"));
    let (rows_a, rows_b) = (of(&ns_a), of(&ns_b));
    assert!(rows_a > 0 && rows_b > 0, "ns column values {by_ns:?} vs alice {ns_a} / bob {ns_b}");
    assert_eq!(rows_a + rows_b, all, "{by_ns}");

    // The application role without the setting: nothing, in every per-user table.
    for table in
        ["kv_credentials", "kv_names", "kv_versions", "kv_version_meta", "kv_test_history", "kv_rotation_keys", "kv_webhooks"]
    {
        assert_eq!(count(&format!("SET ROLE credhost_app; SELECT count(*) FROM {table}")), 0, "{table} without a namespace");
        let rls = p.psql(&db, &format!("SELECT relrowsecurity, relforcerowsecurity FROM pg_class WHERE relname = '{table}'"));
        assert_eq!(rls, "t|t", "{table}: row level security enabled and forced");
    }
    assert_eq!(count("SET ROLE credhost_app; SELECT count(*) FROM kv_credentials"), 0);
    // With a namespace: that namespace's rows only.
    let as_ns = |ns: &str, sql: &str| {
        count(&format!("SET ROLE credhost_app; SELECT set_config('credhost.namespace', '{ns}', false); {sql}"))
    };
    assert_eq!(as_ns(&ns_a, "SELECT count(*) FROM kv_credentials"), rows_a);
    assert_eq!(as_ns(&ns_b, "SELECT count(*) FROM kv_credentials"), rows_b);
    assert_eq!(as_ns(&ns_a, &format!("SELECT count(*) FROM kv_credentials WHERE ns <> '{ns_a}'")), 0);
    assert_eq!(as_ns(&ns_a, "SELECT count(*) FROM kv_names"), of_table(p, &db, "kv_names", &ns_a));
    assert_eq!(as_ns(&random_hex(16), "SELECT count(*) FROM kv_credentials"), 0, "an unknown namespace sees nothing");
    // The host's own system scope sees everything.
    assert_eq!(as_ns("*", "SELECT count(*) FROM kv_credentials"), all);
    // The application role may not switch RLS off or write another namespace's rows.
    let out = p.psql_output(&db, "SET ROLE credhost_app; ALTER TABLE kv_credentials DISABLE ROW LEVEL SECURITY;");
    assert!(!out.status.success(), "credhost_app could disable RLS");
    // Nor write a row into another namespace from alice's scope (the policy checks new rows).
    let out = p.psql_output(
        &db,
        &format!(
            "BEGIN; SET LOCAL ROLE credhost_app; SELECT set_config('credhost.namespace', '{ns_a}', true); \
             INSERT INTO kv_credentials (k, kr, v, ns) VALUES ('\\x00ff', NULL, '\\x00', '{ns_b}'); ROLLBACK;"
        ),
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("row-level security"), "alice's scope wrote into bob's namespace: {err}");

    // The server keeps serving.
    assert_eq!(credentials(&api, &alice).await.len(), 3);
    assert_eq!(credentials(&api, &bob).await.len(), 2);
    create(&api, &alice, bearer(&guard, "a3", &svc.url).0).await;
    assert_eq!(credentials(&api, &alice).await.len(), 4);
    finish(&guard, &[&server]);
}

fn of_table(p: &Postgres, db: &str, table: &str, ns: &str) -> i64 {
    p.psql(db, &format!("SELECT count(*) FROM {table} WHERE ns = '{ns}'")).trim().parse().unwrap()
}

// ---------------------------------------------------------------- b. replicas

/// Two servers on one database: each sees the other's writes at once, revocations included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_share_one_database() {
    let (env_a, _db) = pg_env();
    let root = env_a.add_user("root", true);
    let alice = env_a.add_user("alice", false);
    let env_b = env_a.replica();
    let a = env_a.start(&[]);
    let b = env_b.start(&[]);
    let guard = LeakGuard::new();
    let (api_a, api_b) = (a.api(&guard), b.api(&guard));
    api_a.learn_secret_fields().await;
    let svc = Service::start().await;

    // Create on A; read and test on B.
    let (body, secret) = bearer(&guard, "shared", &svc.url);
    svc.accept(&secret);
    let made = create(&api_a, &alice, body).await;
    let id = id_of(&made);
    let r = api_b.get(&format!("/api/credentials/{id}"), Some(&alice)).await;
    r.expect(200);
    assert_eq!(r.json()["name"], "shared");
    assert_eq!(test_status(&api_b, &alice, &id).await, "valid");
    assert!(svc.saw(&secret), "B's test sent the secret A stored");

    // Update on B (metadata, then the secret); A sees each.
    api_b.patch(&format!("/api/credentials/{id}"), Some(&alice), json!({"description": "changed on B"})).await.expect(200);
    let r = api_a.get(&format!("/api/credentials/{id}"), Some(&alice)).await;
    r.expect(200);
    assert_eq!(r.json()["description"], "changed on B");
    let next = guard.secret(format!("tok_{}", random_alnum(28)));
    svc.accept(&next);
    api_b.patch(&format!("/api/credentials/{id}"), Some(&alice), json!({"fields": {"token": next}})).await.expect(200);
    assert_eq!(test_status(&api_a, &alice, &id).await, "valid");
    assert_eq!(svc.seen.lock().unwrap().last().map(String::as_str), Some(next.as_str()), "A tested with B's new secret");

    // Delete on B; A no longer lists it.
    api_b.delete(&format!("/api/credentials/{id}"), Some(&alice)).await.expect(204);
    assert!(credentials(&api_a, &alice).await.is_empty(), "A still lists the credential B deleted");
    let r = api_a.get(&format!("/api/credentials/{id}"), Some(&alice)).await;
    assert!(r.status == 404 || r.json()["deleted_at"].is_string(), "A reads B's deleted credential as live: {}", r.text);

    // A token revoked on A is refused on B at once.
    let r = api_a.post("/api/admin/users/alice/tokens", Some(&root), json!({"label": "second"})).await;
    r.expect(201);
    let issued = r.json();
    let (tok, tok_id) = (guard.secret(issued["token"].as_str().unwrap()), issued["token_id"].as_str().unwrap().to_string());
    api_b.get("/api/credentials", Some(&tok)).await.expect(200);
    api_a.delete(&format!("/api/admin/tokens/{tok_id}"), Some(&root)).await.expect(204);
    api_b.get("/api/credentials", Some(&tok)).await.expect_error(401, "unauthorized");
    api_a.get("/api/credentials", Some(&tok)).await.expect_error(401, "unauthorized");
    api_b.get("/api/credentials", Some(&alice)).await.expect(200);

    // A user added on B works on A.
    let r = api_b.post("/api/admin/users", Some(&root), json!({"name": "carol"})).await;
    r.expect(201);
    let carol = guard.secret(r.json()["token"].as_str().unwrap());
    api_a.get("/api/credentials", Some(&carol)).await.expect(200);
    let (body, _) = bearer(&guard, "carols", &svc.url);
    let c = create(&api_a, &carol, body).await;
    let r = api_b.get(&format!("/api/credentials/{}", id_of(&c)), Some(&carol)).await;
    r.expect(200);
    // ... and in her own namespace only.
    assert!(credentials(&api_b, &alice).await.is_empty());
    finish(&guard, &[&a, &b]);
}

// ---------------------------------------------------------------- c. concurrent writers

/// 16 writers, 8 per replica, half of their names contended by all: every name is created
/// once (one 201, the rest 409), every 201 is listed once on both replicas, and the
/// audit chain verifies.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_writers_across_replicas_lose_nothing() {
    const THREADS: usize = 16;
    const N: usize = 25;
    let (env_a, _db) = pg_env();
    let alice = env_a.add_user("alice", false);
    let env_b = env_a.replica();
    let mut a = env_a.start(&[]);
    let mut b = env_b.start(&[]);
    let guard = LeakGuard::new();
    let (api_a, api_b) = (a.api(&guard), b.api(&guard));
    api_a.learn_secret_fields().await;
    let svc = Service::start().await;

    let mut tasks = Vec::new();
    for t in 0..THREADS {
        let api = if t % 2 == 0 { api_a.clone() } else { api_b.clone() };
        let (alice, guard, url) = (alice.clone(), guard.clone(), svc.url.clone());
        tasks.push(tokio::spawn(async move {
            let mut got = Vec::new();
            for i in 0..N {
                // Even i: one name every writer tries; odd i: this writer's own.
                let name = if i % 2 == 0 { format!("shared-{i}") } else { format!("own-{t}-{i}") };
                let (body, _) = bearer(&guard, &name, &url);
                let r = api.post("/api/credentials", Some(&alice), body).await;
                let id = if r.status == 201 { Some(id_of(&r.json())) } else { None };
                assert!(r.status == 201 || r.status == 409, "writer {t} {name}: {} {}", r.status, r.text);
                got.push((name, r.status, id));
            }
            got
        }));
    }
    let mut results = Vec::new();
    for t in tasks {
        results.extend(t.await.expect("writer"));
    }
    let created: BTreeMap<String, String> =
        results.iter().filter(|(_, s, _)| *s == 201).map(|(n, _, id)| (n.clone(), id.clone().unwrap())).collect();
    let oks = results.iter().filter(|(_, s, _)| *s == 201).count();
    assert_eq!(created.len(), oks, "two 201s for one name");
    let mut per_name: BTreeMap<&str, (usize, usize)> = BTreeMap::new();
    for (n, s, _) in &results {
        let e = per_name.entry(n.as_str()).or_default();
        if *s == 201 { e.0 += 1 } else { e.1 += 1 }
    }
    for (n, (ok, conflict)) in &per_name {
        if n.starts_with("shared-") {
            assert_eq!((*ok, *conflict), (1, THREADS - 1), "{n}: one 201, the rest 409");
        } else {
            assert_eq!((*ok, *conflict), (1, 0), "{n}: its own name");
        }
    }
    let expected = N.div_ceil(2) + THREADS * (N / 2);
    assert_eq!(oks, expected);

    for (which, api) in [("A", &api_a), ("B", &api_b)] {
        let listed = credentials(api, &alice).await;
        let mut seen: BTreeMap<String, String> = BTreeMap::new();
        for c in &listed {
            let prev = seen.insert(c["name"].as_str().unwrap().to_string(), id_of(c));
            assert!(prev.is_none(), "{which} lists {} twice", c["name"]);
        }
        assert_eq!(listed.len(), oks, "{which}: count = number of 201s");
        assert_eq!(seen, created, "{which}: every 201 exactly once, with its id");
    }
    // One create record per 201 in alice's audit.
    let audit = list_all(&api_a, &alice, "/api/audit", "").await;
    let creates = audit.iter().filter(|r| r["action"] == "credential.create" && r["outcome"] == "ok").count();
    assert_eq!(creates, oks, "create records in the audit");

    a.stop();
    b.stop();
    audit_verify(&env_a, &guard);
    finish(&guard, &[&a, &b]);
}

// ---------------------------------------------------------------- d. SIGKILL

/// Writers on both replicas; A is SIGKILLed mid-write. B keeps serving and every create A
/// answered 201 before it died is in the database.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_of_one_replica_loses_nothing_committed() {
    let (env_a, _db) = pg_env();
    let alice = env_a.add_user("alice", false);
    let env_b = env_a.replica();
    let mut a = env_a.start(&[]);
    let b = env_b.start(&[]);
    let guard = LeakGuard::new();
    let api_b = b.api(&guard);
    api_b.learn_secret_fields().await;
    let svc = Service::start().await;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));

    let mut tasks = Vec::new();
    for t in 0..8 {
        let base = if t % 2 == 0 { a.base.clone() } else { b.base.clone() };
        let (alice, guard, url, stop) = (alice.clone(), guard.clone(), svc.url.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            let http = reqwest::Client::builder().timeout(Duration::from_secs(20)).build().unwrap();
            let mut ok = Vec::new();
            let mut failed_after_kill = 0;
            let mut i = 0;
            while !stop.load(Ordering::SeqCst) {
                let name = format!("w{t}-{i}");
                i += 1;
                let (body, _) = bearer(&guard, &name, &url);
                match post_raw(&http, &guard, &base, &alice, &body).await {
                    Some((201, _)) => ok.push(name),
                    Some((s, text)) => panic!("writer {t} {name}: {s} {text}"),
                    None => {
                        failed_after_kill += 1;
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }
            }
            (t, ok, failed_after_kill)
        }));
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    a.signal("KILL");
    let status = a.wait_exit(Duration::from_secs(10)).expect("A exits on SIGKILL");
    assert!(!status.success());
    // B keeps serving: its writers go on; a fresh create succeeds.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let (body, _) = bearer(&guard, "after-kill", &svc.url);
    create(&api_b, &alice, body).await;
    stop.store(true, Ordering::SeqCst);
    let mut from_a = Vec::new();
    let mut from_b = Vec::new();
    for task in tasks {
        let (t, ok, failed) = task.await.expect("writer");
        if t % 2 == 0 {
            from_a.extend(ok);
        } else {
            assert_eq!(failed, 0, "B's writer {t} lost requests while A died");
            from_b.extend(ok);
        }
    }
    assert!(from_a.len() >= 4, "A answered only {} creates before the kill", from_a.len());
    assert!(from_b.len() >= 4, "B answered only {} creates", from_b.len());
    let listed: BTreeSet<String> =
        credentials(&api_b, &alice).await.iter().map(|c| c["name"].as_str().unwrap().to_string()).collect();
    let missing: Vec<&String> = from_a.iter().chain(&from_b).filter(|n| !listed.contains(*n)).collect();
    assert!(missing.is_empty(), "answered 201 but missing on B: {missing:?}");
    assert!(listed.contains("after-kill"));

    // A comes back on the same database and sees the same.
    let a2 = env_a.start(&[]);
    let api_a2 = a2.api(&guard);
    let again: BTreeSet<String> =
        credentials(&api_a2, &alice).await.iter().map(|c| c["name"].as_str().unwrap().to_string()).collect();
    assert_eq!(again, listed);
    finish(&guard, &[&b, &a2]);
}

// ---------------------------------------------------------------- e. migrate

/// Everything a redb-backed server holds, copied by `credhost migrate` into PostgreSQL and
/// served from there with the same key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_from_redb_copies_everything() {
    let mut raw = [0u8; 32];
    getrandom::fill(&mut raw).unwrap();
    let key = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, raw);
    let redb_env = Env::redb_with_key(&key).set("CREDHOST_ALLOW_PRIVATE_NETWORKS", "true");
    let root = redb_env.add_user("root", true);
    let alice = redb_env.add_user("alice", false);
    let bob = redb_env.add_user("bob", false);
    let mut server = redb_env.start(&[]);
    let guard = LeakGuard::new();
    let api = server.api(&guard);
    api.learn_secret_fields().await;
    let svc = Service::start().await;

    let mut secrets = BTreeMap::new();
    let mut ids = Vec::new();
    for (user, token, n) in [("alice", &alice, 4), ("bob", &bob, 2)] {
        for i in 0..n {
            let (body, secret) = bearer(&guard, &format!("{user}-{i}"), &svc.url);
            svc.accept(&secret);
            let c = create(&api, token, body).await;
            secrets.insert(id_of(&c), secret);
            ids.push((token.clone(), id_of(&c)));
        }
    }
    // A deletion, a test, an update, a second token.
    api.delete(&format!("/api/credentials/{}", ids[3].1), Some(&alice)).await.expect(204);
    assert_eq!(test_status(&api, &alice, &ids[0].1).await, "valid");
    api.patch(&format!("/api/credentials/{}", ids[1].1), Some(&alice), json!({"description": "updated"})).await.expect(200);
    let r = api.post("/api/admin/users/bob/tokens", Some(&root), json!({"label": "ci", "expires_in_secs": 86400})).await;
    r.expect(201);
    let bob_ci = guard.secret(r.json()["token"].as_str().unwrap());

    let snapshot = async |api: &Api| {
        let mut s = BTreeMap::new();
        s.insert("users", api.get("/api/admin/users", Some(&root)).await.json());
        s.insert("tokens", api.get("/api/admin/tokens", Some(&root)).await.json());
        for (user, token) in [("alice", &alice), ("bob", &bob)] {
            let creds = list_all(api, token, "/api/credentials", "include_deleted=true").await;
            s.insert(if user == "alice" { "alice" } else { "bob" }, Value::Array(creds));
        }
        let history = api.get(&format!("/api/credentials/{}/tests", ids[0].1), Some(&alice)).await.json();
        s.insert("history", history);
        s.insert("audit_alice", Value::Array(list_all(api, &alice, "/api/audit", "").await));
        s.insert("audit_root", Value::Array(list_all(api, &root, "/api/audit", "").await));
        s
    };
    let before = snapshot(&api).await;
    assert_eq!(before["alice"].as_array().unwrap().len(), 4, "{}", before["alice"]);
    server.stop();
    let redb_file = redb_env.data_dir().join("credhost.redb");
    assert!(redb_file.exists(), "no {} (data dir: {:?})", redb_file.display(), std::fs::read_dir(redb_env.data_dir()).map(|d| d.map(|e| e.unwrap().file_name()).collect::<Vec<_>>()));

    let p = pg();
    let (db, url) = p.fresh_database();
    let migrate = |extra: &[&str]| {
        let file = redb_file.to_str().unwrap();
        let mut args = vec!["migrate", "--from-redb", file, "--to-postgres", url.as_str()];
        args.extend_from_slice(extra);
        let out = redb_env.command(&args).env("CREDHOST_POSTGRES_PASSWORD", p.password()).output().expect("run migrate");
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        guard.check("migrate output", &text);
        assert!(!text.contains(p.password()), "migrate printed the database password:\n{text}");
        (out.status, text)
    };
    let (status, text) = migrate(&[]);
    assert!(status.success(), "migrate failed ({status}):\n{text}");
    assert!(text.contains("kv_credentials") || text.contains("credentials"), "a summary with row counts:\n{text}");
    // Every kv_ table's row count and a digest of its contents (as the superuser: no RLS).
    let contents = |p: &Postgres| -> BTreeMap<String, String> {
        let tables = p.psql(&db, "SELECT tablename FROM pg_tables WHERE tablename LIKE 'kv\\_%' ORDER BY 1");
        tables
            .lines()
            .map(|t| {
                let sql = format!(
                    "SELECT count(*) || ' ' || coalesce(md5(string_agg(encode(k, 'hex') || ':' || coalesce(encode(kr, 'hex'), '-') \
                     || ':' || encode(v, 'hex'), ',' ORDER BY k)), '-') FROM {t}"
                );
                (t.to_string(), p.psql(&db, &sql))
            })
            .collect()
    };
    let first = contents(p);
    assert!(first.len() >= 17, "one table per store table: {first:?}");
    assert!(first.get("kv_credentials").is_some_and(|c| c.starts_with("6 ")), "{first:?}");

    // Into the same, now non-empty, database: refused, nothing changed; with --resume: the
    // copy is complete already, nothing is written twice.
    let (status, text) = migrate(&[]);
    assert!(!status.success(), "a second migrate into a non-empty database succeeded:\n{text}");
    assert!(text.contains("not empty"), "{text}");
    assert_eq!(contents(p), first, "the refused migrate changed the database");
    let (status, text) = migrate(&["--resume"]);
    assert!(status.success(), "--resume into a complete copy failed ({status}):\n{text}");
    assert_eq!(contents(p), first, "--resume into a complete copy changed the database");

    // The PostgreSQL-backed server with the same key: the same users, tokens, credentials.
    let pg_env = Env::redb_with_key(&key).on_database(p, &url).set("CREDHOST_ALLOW_PRIVATE_NETWORKS", "true");
    let mut server = pg_env.start(&[]);
    let api = server.api(&guard);
    let after = snapshot(&api).await;
    for k in ["users", "tokens", "alice", "bob", "history"] {
        assert_eq!(after[k], before[k], "{k} differs after the migration");
    }
    // The audit records from before are all there, unchanged (reading may add records).
    for k in ["audit_alice", "audit_root"] {
        let now: BTreeMap<u64, &Value> =
            after[k].as_array().unwrap().iter().map(|r| (r["seq"].as_u64().unwrap(), r)).collect();
        for r in before[k].as_array().unwrap() {
            assert_eq!(now.get(&r["seq"].as_u64().unwrap()), Some(&r), "{k}: record changed or missing");
        }
    }
    // Tokens still work, secrets still open (a test sends the stored secret).
    api.get("/api/credentials", Some(&bob_ci)).await.expect(200);
    for (token, id) in ids[..3].iter().chain(&ids[4..]) {
        assert_eq!(test_status(&api, token, id).await, "valid", "{id}");
    }
    assert!(svc.saw(&secrets[&ids[5].1]));
    // Writes go on.
    let (body, _) = bearer(&guard, "after-migrate", &svc.url);
    create(&api, &alice, body).await;
    server.stop();
    audit_verify(&pg_env, &guard);

    // The database has moved on: --resume from the old redb file must not write old rows
    // over newer ones, whatever it answers.
    let moved = contents(p);
    let (status, text) = migrate(&["--resume"]);
    let after_resume = contents(p);
    let changed: Vec<String> = moved
        .keys()
        .filter(|t| moved.get(*t) != after_resume.get(*t))
        .map(|t| format!("{t}: {} -> {}", moved[t], after_resume.get(t).map_or("gone", String::as_str)))
        .collect();
    assert!(changed.is_empty(), "--resume from a stale source (exit {status}) changed {changed:?}:\n{text}");
    let server = pg_env.start(&[]);
    let api = server.api(&guard);
    let names: Vec<String> = credentials(&api, &alice).await.iter().map(|c| c["name"].as_str().unwrap().to_string()).collect();
    assert_eq!(names.len(), names.iter().collect::<BTreeSet<_>>().len(), "duplicates: {names:?}");
    assert_eq!(names.len(), 4, "{names:?}");
    finish(&guard, &[&server]);
}

/// `--resume` into a database that an interrupted run filled partly: the copy completes,
/// nothing twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_resume_after_an_interrupted_run() {
    let mut raw = [0u8; 32];
    getrandom::fill(&mut raw).unwrap();
    let key = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, raw);
    let redb_env = Env::redb_with_key(&key).set("CREDHOST_ALLOW_PRIVATE_NETWORKS", "true");
    let alice = redb_env.add_user("alice", false);
    let mut server = redb_env.start(&[]);
    let guard = LeakGuard::new();
    let api = server.api(&guard);
    api.learn_secret_fields().await;
    let svc = Service::start().await;
    for i in 0..300 {
        let (body, _) = bearer(&guard, &format!("c{i}"), &svc.url);
        create(&api, &alice, body).await;
    }
    server.stop();
    let redb_file = redb_env.data_dir().join("credhost.redb");
    let p = pg();
    let (db, url) = p.fresh_database();
    let file = redb_file.to_str().unwrap().to_string();
    let cmd = |extra: &[&str]| {
        let mut args = vec!["migrate", "--from-redb", file.as_str(), "--to-postgres", url.as_str()];
        args.extend_from_slice(extra);
        let mut c = redb_env.command(&args);
        c.env("CREDHOST_POSTGRES_PASSWORD", p.password());
        c
    };
    // Interrupt a run once rows have arrived (or after it finished, if it is that fast).
    let log = redb_env.dir.path().join("first-migrate.log");
    let mut child = cmd(&[])
        .stdout(std::fs::File::create(&log).unwrap())
        .stderr(std::fs::File::create(redb_env.dir.path().join("first-migrate.err")).unwrap())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let has = p.psql_output(&db, "SELECT count(*) FROM kv_credentials");
        if has.status.success() && String::from_utf8_lossy(&has.stdout).trim() != "0" {
            break;
        }
        if child.try_wait().unwrap().is_some() || Instant::now() > deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let early = child.try_wait().unwrap();
    let _ = child.kill();
    let _ = child.wait();
    let first_out = std::fs::read_to_string(&log).unwrap_or_default()
        + &std::fs::read_to_string(redb_env.dir.path().join("first-migrate.err")).unwrap_or_default();
    guard.check("migrate output", &first_out);
    if let Some(status) = early {
        assert!(status.success(), "the first migrate failed on its own ({status}):\n{first_out}");
    }
    let partial = p.psql_output(&db, "SELECT count(*) FROM kv_credentials");
    eprintln!(
        "first run interrupted: {} ({} credential rows copied before the kill)",
        early.is_none(),
        String::from_utf8_lossy(&partial.stdout).trim()
    );
    let out = cmd(&["--resume"]).output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "--resume failed ({}):\n{text}", out.status);
    let pg_env = Env::redb_with_key(&key).on_database(p, &url).set("CREDHOST_ALLOW_PRIVATE_NETWORKS", "true");
    let server = pg_env.start(&[]);
    let api = server.api(&guard);
    let names: Vec<String> = credentials(&api, &alice).await.iter().map(|c| c["name"].as_str().unwrap().to_string()).collect();
    assert_eq!(names.len(), 300);
    assert_eq!(names.iter().collect::<BTreeSet<_>>().len(), 300, "duplicates");
    drop(server);
    audit_verify(&pg_env, &guard);
}

// ---------------------------------------------------------------- f. schema version

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn newer_schema_is_refused() {
    let (env, db) = pg_env();
    env.add_user("alice", false);
    let mut server = env.start(&[]);
    server.stop();
    let p = pg();
    let version = p.psql(&db, "SELECT max(version) FROM credhost_schema");
    assert!(version.parse::<i64>().is_ok_and(|v| v >= 1), "{version:?}");
    p.psql(&db, "UPDATE credhost_schema SET version = 999");
    let mut server = env.spawn(&[]);
    let status = server.wait_exit(Duration::from_secs(60)).unwrap_or_else(|| panic!("still running:\n{}", server.stderr()));
    assert!(!status.success(), "started on a newer schema");
    let stderr = server.stderr();
    assert!(stderr.contains("newer than this credhost"), "{stderr}");
    // The CLI refuses too, and nothing was changed.
    let out = env.cli(&["users", "add", "bob"]);
    assert!(!out.status.success(), "users add on a newer schema");
    assert!(String::from_utf8_lossy(&out.stderr).contains("newer than this credhost"), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(p.psql(&db, "SELECT max(version) FROM credhost_schema"), "999");
}

// ---------------------------------------------------------------- g. scheduler

/// Two replicas with `[monitor]` on: a credential is re-tested on one schedule, not two.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scheduled_tests_run_once_across_replicas() {
    const INTERVAL: u64 = 2;
    let (env_a, _db) = pg_env();
    let alice = env_a.add_user("alice", false);
    let env_b = env_a.replica();
    let config = |env: &Env| {
        let path = env.dir.path().join("credhost.toml");
        std::fs::write(&path, format!("[monitor]\ninterval_secs = {INTERVAL}\njitter_pct = 0\nrate_per_minute = 1000\n")).unwrap();
        path.to_str().unwrap().to_string()
    };
    let (ca, cb) = (config(&env_a), config(&env_b));
    let a = env_a.start(&["--config", &ca]);
    let b = env_b.start(&["--config", &cb]);
    let guard = LeakGuard::new();
    let api = a.api(&guard);
    api.learn_secret_fields().await;
    let svc = Service::start().await;
    let (body, secret) = bearer(&guard, "watched", &svc.url);
    svc.accept(&secret);
    create(&api, &alice, body).await;
    // First scheduled test, then count over a window.
    let deadline = Instant::now() + Duration::from_secs(20);
    while svc.hits() == 0 {
        assert!(Instant::now() < deadline, "no scheduled test within 20 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let start = svc.hits();
    const WINDOW: u64 = 12;
    tokio::time::sleep(Duration::from_secs(WINDOW)).await;
    let n = svc.hits() - start;
    let one = (WINDOW / INTERVAL) as usize;
    assert!(n >= one / 2, "{n} tests in {WINDOW} s: the schedule stalled (one replica: ~{one})");
    assert!(n <= one + 2, "{n} tests in {WINDOW} s at a {INTERVAL} s interval: both replicas ran the schedule (one: ~{one})");
    finish(&guard, &[&a, &b]);
}

// ---------------------------------------------------------------- the harness

/// `Env::new()` follows `CREDHOST_TEST_STORAGE`: with `postgres`, a fresh database of the
/// shared cluster that the server really uses (its tables appear there); otherwise redb.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn env_new_follows_credhost_test_storage() {
    let env = Env::new();
    if !common::server::test_storage_is_postgres() {
        assert_eq!(env.var("CREDHOST_STORAGE_BACKEND"), None);
        return;
    }
    assert_eq!(env.var("CREDHOST_STORAGE_BACKEND"), Some("postgres"));
    let db = db_of(env.var("CREDHOST_POSTGRES_URL").unwrap());
    let alice = env.add_user("alice", false);
    let server = env.start(&[]);
    let guard = LeakGuard::new();
    server.api(&guard).get("/api/credentials", Some(&alice)).await.expect(200);
    assert_eq!(pg().psql(&db, "SELECT count(*) FROM kv_users"), "1");
    assert!(!env.data_dir().join("credhost.redb").exists(), "a redb file next to the PostgreSQL storage");
}


// ---------------------------------------------------------------- concurrent first starts

/// Replicas start at the same moment against fresh databases of a fresh cluster (the
/// `credhost_app` role does not exist yet; roles are cluster-wide): every one comes up.
/// Two of them share one database, so its migration runs twice at once too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_starting_at_once_on_fresh_databases_all_come_up() {
    let own = Postgres::start();
    let first = Env::postgres(&own);
    let mut envs = vec![first.replica()];
    envs.push(first);
    for _ in 0..3 {
        envs.push(Env::postgres(&own));
    }
    let mut servers: Vec<Server> = envs.iter().map(|e| e.spawn(&[])).collect();
    let mut failures = Vec::new();
    for (i, s) in servers.iter_mut().enumerate() {
        if let Some(status) = s.wait_exit(Duration::from_secs(if i == 0 { 6 } else { 1 })) {
            failures.push(format!("server {i} exited ({status}):\n{}", s.stderr()));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    // And the CLI: two first `users add` at once on fresh databases of another fresh cluster.
    let other = Postgres::start();
    let a = Env::postgres(&other);
    let b = Env::postgres(&other);
    let (ta, tb) = (
        std::thread::spawn(move || (a.cli(&["users", "add", "alice"]), a)),
        std::thread::spawn(move || (b.cli(&["users", "add", "alice"]), b)),
    );
    for (out, _) in [ta.join().unwrap(), tb.join().unwrap()] {
        assert!(out.status.success(), "users add: {}", String::from_utf8_lossy(&out.stderr));
    }
}

// ---------------------------------------------------------------- nothing in clear

/// The database holds no secret in clear (a `pg_dump` of it, bytea as hex and as text), and
/// PostgreSQL's own log shows none either.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_in_clear_in_the_database_or_its_log() {
    let (env, db) = pg_env();
    let alice = env.add_user("alice", false);
    let server = env.start(&[]);
    let guard = LeakGuard::new();
    let api = server.api(&guard);
    api.learn_secret_fields().await;
    let svc = Service::start().await;
    let mut secrets = Vec::new();
    for i in 0..3 {
        let (body, secret) = bearer(&guard, &format!("c{i}"), &svc.url);
        svc.accept(&secret);
        let id = id_of(&create(&api, &alice, body).await);
        assert_eq!(test_status(&api, &alice, &id).await, "valid");
        let next = guard.secret(format!("tok_{}", random_alnum(28)));
        api.patch(&format!("/api/credentials/{id}"), Some(&alice), json!({"fields": {"token": next}})).await.expect(200);
        secrets.extend([secret, next]);
    }
    let p = pg();
    common::postgres::need(&format!("{}/pg_dump", common::postgres::PG_BIN), "postgresql-15");
    let out = std::process::Command::new(format!("{}/pg_dump", common::postgres::PG_BIN))
        .args(["-h", "127.0.0.1", "-U", "admin", "-p", &p.port.to_string(), "-d", &db])
        .env("PGPASSWORD", p.password())
        .output()
        .unwrap();
    assert!(out.status.success(), "pg_dump: {}", String::from_utf8_lossy(&out.stderr));
    let dump = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(dump.contains("kv_credentials"), "dumped the credhost tables");
    guard.check("pg_dump of the database", &dump);
    for s in &secrets {
        let hex: String = s.bytes().map(|b| format!("{b:02x}")).collect();
        assert!(!dump.contains(&hex), "the dump holds a secret as hex bytea ({}…)", &s[..6]);
    }
    guard.check("PostgreSQL's log", &p.log());
    assert!(!p.log().contains(p.password()));
    finish(&guard, &[&server]);
}
