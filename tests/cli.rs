//! The command line against a running server (issue 13, item 5): `users`, `tokens` and
//! `test` go through the server's API while it holds the store, and open the store
//! directly when it does not, printing the same output either way. The API token comes
//! from the environment or a file, never the command line. Users see and revoke only
//! their own tokens.

mod common;

use std::process::Output;
use std::sync::Arc;

use axum::Router;
use common::server::{Env, LeakGuard, Server};
use serde_json::{json, Value};

/// How a CLI call authenticates.
#[derive(Clone, Copy)]
enum Auth<'a> {
    None,
    /// CREDHOST_TOKEN.
    Env(&'a str),
    /// CREDHOST_TOKEN_FILE.
    File(&'a std::path::Path),
}

fn cli(env: &Env, args: &[&str], auth: Auth) -> Output {
    let mut cmd = env.command(args);
    match auth {
        Auth::None => {}
        Auth::Env(t) => {
            cmd.env("CREDHOST_TOKEN", t);
        }
        Auth::File(p) => {
            cmd.env("CREDHOST_TOKEN_FILE", p);
        }
    }
    cmd.stdin(std::process::Stdio::null()).output().expect("run credhost")
}

fn text(out: &Output) -> (String, String) {
    (String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

/// Runs a command that must succeed; returns its stdout.
#[track_caller]
fn ok(env: &Env, args: &[&str], auth: Auth) -> String {
    let out = cli(env, args, auth);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "credhost {args:?}: {}\nstdout:\n{stdout}\nstderr:\n{stderr}", out.status);
    stdout
}

/// Runs a command that must fail with exit code `code`; returns its stderr.
#[track_caller]
fn fails(env: &Env, args: &[&str], auth: Auth, code: i32) -> String {
    let out = cli(env, args, auth);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(code), "credhost {args:?}\nstdout:\n{stdout}\nstderr:\n{stderr}");
    stderr
}

fn last_line(s: &str) -> String {
    let t = s.lines().last().unwrap_or_default().trim().to_string();
    assert!(t.starts_with("chst_"), "not a token: {t:?}");
    t
}

/// A free port on 127.0.0.1 (bound, read, released).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// An HTTP service that answers 200 to everything: the target of a bearer_token test.
async fn service_ok() -> String {
    let app = Router::new().fallback(|| async { "{\"ok\":true}" });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://127.0.0.1:{port}/whoami")
}

/// A private (0600) token file.
fn token_file(env: &Env, name: &str, token: &str) -> std::path::PathBuf {
    let path = env.dir.path().join(name);
    std::fs::write(&path, format!("{token}\n")).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    path
}

/// Every token line of a `tokens list` table, for comparing outputs.
fn token_ids(list: &str, user: &str) -> Vec<String> {
    list.lines().filter(|l| l.split_whitespace().nth(1) == Some(user)).map(|l| l.split_whitespace().next().unwrap().to_string()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_command_works_with_the_server_running_and_without_it() {
    // A known port, so the CLI can find the server from the config alone (no CREDHOST_URL).
    let port = free_port();
    let env = Env::new().set("CREDHOST_LISTEN", &format!("127.0.0.1:{port}")).set("CREDHOST_ALLOW_PRIVATE_NETWORKS", "true");
    let root = env.add_user("root", true);
    let server = env.start(&[]);
    assert_eq!(server.base, format!("http://127.0.0.1:{port}"));
    let guard = LeakGuard::new();
    let api = server.api(&guard);

    // No token: a clear error naming every way to give one; nothing is created.
    let err = fails(&env, &["users", "add", "alice"], Auth::None, 2);
    for hint in ["running server holds the store", "CREDHOST_TOKEN", "CREDHOST_TOKEN_FILE", "--token-file"] {
        assert!(err.contains(hint), "missing {hint:?}: {err}");
    }
    assert!(!err.contains("Database already open"), "{err}");
    // The token is never a flag.
    let out = cli(&env, &["users", "list", "--token", &root], Auth::None);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out).1.contains("unexpected argument '--token'"), "{}", text(&out).1);
    let out = cli(&env, &["plugins", "reload", "--token", &root], Auth::None);
    assert!(!out.status.success() && text(&out).1.contains("unexpected argument '--token'"), "{}", text(&out).1);

    // users add / list through the API, found by the store's lock and server.listen.
    let out = cli(&env, &["users", "add", "alice"], Auth::Env(&root));
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(stderr.contains(&format!("working through its API at http://127.0.0.1:{port}")), "{stderr}");
    assert!(stderr.contains("created user alice (User), token id tok_"), "{stderr}");
    let alice = last_line(&stdout);
    api.get("/api/credentials", Some(&alice)).await.expect(200);
    // The same with the token in a file, and with an explicit --url.
    let root_file = token_file(&env, "root.token", &root);
    let bob = last_line(&ok(&env, &["users", "add", "bob", "--url", &server.base], Auth::File(&root_file)));
    let users_remote = ok(&env, &["users", "list"], Auth::File(&root_file));
    let names: Vec<&str> = users_remote.lines().map(|l| l.split_whitespace().next().unwrap()).collect();
    assert_eq!(names, ["alice", "bob", "root"], "{users_remote}");
    assert!(users_remote.lines().any(|l| l.starts_with("root") && l.contains(" admin ")), "{users_remote}");

    // tokens create / list / revoke.
    let ci = last_line(&ok(&env, &["tokens", "create", "alice", "--scope", "read", "--scope", "test", "--label", "ci"], Auth::Env(&root)));
    let mine = api.get("/api/tokens", Some(&ci)).await;
    mine.expect(200);
    let mine = mine.json();
    let current: Vec<&Value> = mine.as_array().unwrap().iter().filter(|t| t["current"] == true).collect();
    assert_eq!(current.len(), 1, "{mine}");
    assert_eq!(current[0]["label"], "ci");
    assert_eq!(current[0]["scopes"], json!(["read", "test"]));
    let bad = fails(&env, &["tokens", "create", "alice", "--expires-in-secs", "0"], Auth::Env(&root), 2);
    assert!(bad.contains("--expires-in-secs"), "the field error names the flag: {bad}");
    let list = ok(&env, &["tokens", "list", "--user", "alice"], Auth::Env(&root));
    assert_eq!(token_ids(&list, "alice").len(), 2, "{list}");
    assert!(list.contains("read,test") && list.contains(" ci"), "{list}");
    let all = ok(&env, &["tokens", "list"], Auth::Env(&root));
    assert_eq!(token_ids(&all, "root").len(), 1, "{all}");
    assert_eq!(token_ids(&all, "bob").len(), 1, "{all}");
    let spare = last_line(&ok(&env, &["tokens", "create", "bob", "--label", "spare"], Auth::Env(&root)));
    let spare_id = token_ids(&ok(&env, &["tokens", "list", "--user", "bob"], Auth::Env(&root)), "bob")[1].clone();
    let revoked = ok(&env, &["tokens", "revoke", &spare_id], Auth::Env(&root));
    assert_eq!(revoked.trim(), format!("revoked token {spare_id} of bob"));
    api.get("/api/credentials", Some(&spare)).await.expect_error(401, "unauthorized");
    api.get("/api/credentials", Some(&bob)).await.expect(200);
    let err = fails(&env, &["tokens", "list", "--user", "nobody"], Auth::Env(&root), 2);
    assert!(err.contains("nobody") && err.contains("not found"), "{err}");

    // test: through the API as the token's user.
    let target = service_ok().await;
    let secret = guard.secret(format!("tok_{}", common::server::random_hex(16)));
    let c = api
        .post("/api/credentials", Some(&alice), json!({"name": "svc", "type": "bearer_token", "fields": {"token": secret, "test_url": target}}))
        .await;
    c.expect(201);
    let id = c.json()["id"].as_str().unwrap().to_string();
    let tested = ok(&env, &["test", &id], Auth::Env(&ci));
    assert!(tested.starts_with("valid: "), "{tested}");
    let tested_json: Value = serde_json::from_str(&ok(&env, &["test", &id, "--user", "alice", "--json"], Auth::Env(&ci))).unwrap();
    assert_eq!(tested_json["ok"], true, "{tested_json}");
    // A different --user is refused, not silently ignored; another user's id is not found.
    let err = fails(&env, &["test", &id, "--user", "bob"], Auth::Env(&ci), 2);
    assert!(err.contains("runs as the token's user (alice), not bob"), "{err}");
    let err = fails(&env, &["test", &id], Auth::Env(&bob), 2);
    assert!(err.contains("not found"), "{err}");

    // What direct mode will print, taken while the server still runs.
    let tokens_remote = ok(&env, &["tokens", "list"], Auth::Env(&root));
    let users_remote = ok(&env, &["users", "list"], Auth::Env(&root));
    // Commands that need the store to themselves say why they cannot run.
    let err = fails(&env, &["keys", "verify"], Auth::None, 2);
    assert!(err.contains("in use by another process"), "{err}");

    for t in [&root, &alice, &bob, &ci, &spare] {
        guard.secret(t.clone());
    }
    api.get("/healthz", None).await.expect(200);
    guard.check("server log", &server.stderr());
    let mut server = server;
    assert_eq!(server.stop().code(), Some(0));

    // The server stopped: the same commands work on the store directly, without a token,
    // and print the same.
    assert_eq!(ok(&env, &["users", "list"], Auth::None), users_remote);
    assert_eq!(ok(&env, &["tokens", "list"], Auth::None), tokens_remote);
    let out = cli(&env, &["users", "add", "carol"], Auth::None);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert!(!stderr.contains("working through its API"), "{stderr}");
    assert!(stderr.contains("created user carol (User), token id tok_"), "{stderr}");
    let carol = last_line(&stdout);
    let extra = last_line(&ok(&env, &["tokens", "create", "carol", "--scope", "read"], Auth::None));
    let carol_ids = token_ids(&ok(&env, &["tokens", "list", "--user", "carol"], Auth::None), "carol");
    assert_eq!(carol_ids.len(), 2);
    let revoked = ok(&env, &["tokens", "revoke", &carol_ids[1]], Auth::None);
    assert_eq!(revoked.trim(), format!("revoked token {} of carol", carol_ids[1]));
    let tested = ok(&env, &["test", &id, "--user", "alice"], Auth::None);
    assert!(tested.starts_with("valid: "), "{tested}");
    let err = fails(&env, &["test", &id], Auth::None, 2);
    assert!(err.contains("--user NAME is required"), "{err}");

    // Back up: the direct changes are there, the revoked token is refused.
    let server = env.start(&[]);
    let api = server.api(&guard);
    api.get("/api/credentials", Some(&carol)).await.expect(200);
    api.get("/api/credentials", Some(&extra)).await.expect_error(401, "unauthorized");
    let last = api.get(&format!("/api/credentials/{id}"), Some(&alice)).await.json();
    assert_eq!(last["last_test"]["ok"], true, "{last}");
    guard.check("server log", &server.stderr());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_see_and_revoke_only_their_own_tokens() {
    let env = Env::new();
    let root = env.add_user("root", true);
    let alice = env.add_user("alice", false);
    let bob = env.add_user("bob", false);
    let server: Server = env.start(&[]);
    let guard: Arc<LeakGuard> = LeakGuard::new();
    let api = server.api(&guard);
    let issue = |user: &'static str, body: Value| {
        let api = api.clone();
        let root = root.clone();
        async move {
            let r = api.post(&format!("/api/admin/users/{user}/tokens"), Some(&root), body).await;
            r.expect(201);
            let v = r.json();
            (v["token_id"].as_str().unwrap().to_string(), v["token"].as_str().unwrap().to_string())
        }
    };
    let (alice_ro_id, alice_ro) = issue("alice", json!({"scopes": ["read"], "label": "ro"})).await;
    let (alice_spare_id, alice_spare) = issue("alice", json!({"label": "spare"})).await;
    let (bob_spare_id, bob_spare) = issue("bob", json!({"label": "spare"})).await;
    for t in [&root, &alice, &bob, &alice_ro, &alice_spare, &bob_spare] {
        guard.secret(t.clone()); // from here on no response may show a token value
    }

    // Own listing: alice's tokens only, no values, the current one marked.
    let r = api.get("/api/tokens", Some(&alice)).await;
    r.expect(200);
    let mine = r.json();
    let mine = mine.as_array().unwrap();
    assert_eq!(mine.len(), 3, "{mine:?}");
    assert!(mine.iter().all(|t| t["user"] == "alice" && t.get("token").is_none()), "{mine:?}");
    assert_eq!(mine.iter().filter(|t| t["current"] == true).count(), 1);
    assert!(mine.iter().any(|t| t["id"] == alice_spare_id.as_str() && t["current"] == false));

    // Another user's token: 404 (the same as an unknown id), never revoked.
    api.delete(&format!("/api/tokens/{bob_spare_id}"), Some(&alice)).await.expect_error(404, "not_found");
    api.delete("/api/tokens/tok_doesnotexist", Some(&alice)).await.expect_error(404, "not_found");
    api.get("/api/credentials", Some(&bob_spare)).await.expect(200);
    // The admin routes stay closed to users.
    api.get("/api/admin/tokens", Some(&alice)).await.expect_error(403, "forbidden");
    api.get("/api/admin/tokens?user=bob", Some(&alice)).await.expect_error(403, "forbidden");
    api.get("/api/admin/users", Some(&alice)).await.expect_error(403, "forbidden");
    api.delete(&format!("/api/admin/tokens/{bob_spare_id}"), Some(&alice)).await.expect_error(403, "forbidden");
    api.get("/api/credentials", Some(&bob_spare)).await.expect(200);
    // Scopes: listing needs `read`, revoking `write`.
    let r = api.delete(&format!("/api/tokens/{alice_spare_id}"), Some(&alice_ro)).await;
    assert!(r.expect_error(403, "insufficient_scope")["error"]["message"].as_str().unwrap().contains("`write`"));
    api.get("/api/credentials", Some(&alice_spare)).await.expect(200);
    api.get("/api/tokens", Some(&alice_ro)).await.expect(200);

    // Through the CLI with alice's token: her own tokens; bob's are out of reach.
    let url = server.base.as_str();
    let list = ok(&env, &["tokens", "list", "--url", url], Auth::Env(&alice));
    assert_eq!(token_ids(&list, "alice").len(), 3, "{list}");
    assert!(token_ids(&list, "bob").is_empty() && token_ids(&list, "root").is_empty(), "{list}");
    let err = fails(&env, &["tokens", "list", "--user", "bob", "--url", url], Auth::Env(&alice), 2);
    assert!(err.contains("only admins"), "{err}");
    let err = fails(&env, &["tokens", "revoke", &bob_spare_id, "--url", url], Auth::Env(&alice), 2);
    assert!(err.contains("not found"), "{err}");
    let err = fails(&env, &["users", "list", "--url", url], Auth::Env(&alice), 2);
    assert!(err.contains("admin"), "{err}");
    api.get("/api/credentials", Some(&bob_spare)).await.expect(200);

    // Her own: revoked, audited in her log, refused from then on.
    let out = ok(&env, &["tokens", "revoke", &alice_spare_id, "--url", url], Auth::Env(&alice));
    assert_eq!(out.trim(), format!("revoked token {alice_spare_id} of alice"));
    api.get("/api/credentials", Some(&alice_spare)).await.expect_error(401, "unauthorized");
    api.get("/api/credentials", Some(&alice)).await.expect(200);
    let audit = api.get("/api/audit", Some(&alice)).await.json();
    let revokes: Vec<&Value> = audit
        .as_array()
        .or_else(|| audit["items"].as_array())
        .unwrap()
        .iter()
        .filter(|r| r["action"] == "token.revoke")
        .collect();
    assert_eq!(revokes.len(), 1, "{audit}");
    assert!(revokes[0]["detail"].as_str().unwrap().contains(&alice_spare_id), "{audit}");
    // Revoking it again through the API: still hers, idempotent.
    api.delete(&format!("/api/tokens/{alice_spare_id}"), Some(&alice)).await.expect(204);

    // A grant is bound to one credential: it may not list or revoke tokens.
    let c = api
        .post("/api/credentials", Some(&alice), json!({"name": "k", "type": "bearer_token", "fields": {"token": guard.secret("grant-test-secret-0123")}}))
        .await;
    c.expect(201);
    let cid = c.json()["id"].as_str().unwrap().to_string();
    let g = api.post(&format!("/api/credentials/{cid}/grants"), Some(&alice), json!({"ttl_secs": 60})).await;
    g.expect(201);
    let grant = g.json()["token"].as_str().unwrap().to_string();
    let grant_id = g.json()["grant_id"].as_str().unwrap().to_string();
    guard.secret(grant.clone());
    api.get("/api/tokens", Some(&grant)).await.expect_error(403, "grant_only");
    api.delete(&format!("/api/tokens/{alice_ro_id}"), Some(&grant)).await.expect_error(403, "grant_only");
    // The owner sees it as a grant.
    let mine = api.get("/api/tokens", Some(&alice)).await.json();
    let g = mine.as_array().unwrap().iter().find(|t| t["id"] == grant_id.as_str()).expect("grant listed").clone();
    assert_eq!(g["kind"], "grant");
    assert_eq!(g["credential"], cid.as_str());

    // Admin listings: everyone, one user, an unknown user is 404.
    let users = api.get("/api/admin/users", Some(&root)).await.json();
    let names: Vec<&str> = users.as_array().unwrap().iter().map(|u| u["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["alice", "bob", "root"]);
    let bobs = api.get("/api/admin/tokens?user=bob", Some(&root)).await.json();
    assert!(bobs.as_array().unwrap().iter().all(|t| t["user"] == "bob"), "{bobs}");
    assert_eq!(bobs.as_array().unwrap().len(), 2);
    api.get("/api/admin/tokens?user=nobody", Some(&root)).await.expect_error(404, "not_found");
    api.get("/api/admin/tokens?nope=1", Some(&root)).await.expect_error(400, "bad_request");

    // The host kept serving throughout, and logged no token.
    api.get("/healthz", None).await.expect(200);
    api.get("/api/credentials", Some(&bob)).await.expect(200);
    guard.check("server log", &server.stderr());
}

#[test]
fn a_token_file_must_hold_one_token_and_a_loose_one_is_warned_about() {
    let env = Env::new();
    let root = env.add_user("root", true);
    let server = env.start(&[]);
    let url = server.base.as_str();
    let empty = token_file(&env, "empty.token", "");
    let err = fails(&env, &["users", "list", "--url", url], Auth::File(&empty), 2);
    assert!(err.contains("expected one token on one line"), "{err}");
    let loose = token_file(&env, "loose.token", &root);
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&loose, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = cli(&env, &["users", "list", "--url", url, "--token-file", loose.to_str().unwrap()], Auth::None);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert!(stdout.starts_with("root"), "{stdout}");
    assert!(stderr.contains("accessible to other local users"), "{stderr}");
    // A wrong token is named by where it came from, never echoed.
    let wrong = "chst_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";
    let err = fails(&env, &["users", "list", "--url", url], Auth::Env(wrong), 2);
    assert!(err.contains("refused CREDHOST_TOKEN") && !err.contains(wrong), "{err}");
    assert!(!stderr.contains(&root) && !server.stderr().contains(&root));
}
