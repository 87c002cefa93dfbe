//! Online master-key rotation (issue 14, item 7), against the real binary: `credhost keys
//! rotate` while a server runs hands the new key over in a private file, the server
//! re-wraps every data key in one transaction while requests keep being served, replaces
//! its key file (old key kept as `.old`), and restarts only with the new key. Bad input
//! is refused naming `new_key_file` and changes nothing; no key appears anywhere.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use base64::Engine as _;
use common::server::{mode_of, random_alnum, Env, LeakGuard};
use serde_json::{json, Value};

/// A service that answers 200 to every request (the proxied credentials' destination).
async fn upstream() -> String {
    let app = Router::new().fallback(|| async { "{\"ok\":true}" });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://127.0.0.1:{port}")
}

fn new_key_b64() -> String {
    let mut key = [0u8; 32];
    getrandom::fill(&mut key).unwrap();
    base64::engine::general_purpose::STANDARD.encode(key)
}

fn write_private(path: &Path, text: &str, mode: u32) {
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// An environment whose master key is in a file (`keys/master.key`, 0600).
fn file_key_env(guard: &LeakGuard) -> (Env, PathBuf, String) {
    let env = Env::bare();
    let keys = env.dir.path().join("keys");
    std::fs::create_dir(&keys).unwrap();
    std::fs::set_permissions(&keys, std::fs::Permissions::from_mode(0o700)).unwrap();
    let key_file = keys.join("master.key");
    let key = guard.secret(new_key_b64());
    write_private(&key_file, &key, 0o600);
    let data = env.dir.path().join("data");
    let env = env
        .set("CREDHOST_LISTEN", "127.0.0.1:0")
        .set("CREDHOST_DATA_DIR", data.to_str().unwrap())
        .set("CREDHOST_MASTER_KEY_FILE", key_file.to_str().unwrap())
        .set("CREDHOST_ALLOW_PRIVATE_NETWORKS", "true");
    (env, key_file, key)
}

fn text(out: &std::process::Output) -> (String, String) {
    (String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

fn key_id_in(stderr: &str) -> bool {
    stderr.contains("wrong master key") && stderr.contains("expects key id")
}

/// The rotation under load: no request fails, the key file is replaced, a restart works
/// with the new key only, the audit chain stays intact, and no key leaks.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rotation_while_serving_under_load() {
    let guard = LeakGuard::new();
    let (env, key_file, old_key) = file_key_env(&guard);
    let up = upstream().await;
    let root = env.add_user("root", true);
    let alice = env.add_user("alice", false);
    let _bob = env.add_user("bob", false);
    let mut server = env.start(&[]);
    let api = server.api(&guard);

    // Credentials whose use decrypts: proxied bearer tokens and a revealable DSN.
    let mut ids = Vec::new();
    for i in 0..3 {
        let secret = guard.secret(format!("tok_{}", random_alnum(24)));
        let body = json!({"name": format!("api{i}"), "type": "bearer_token", "fields": {"token": secret, "test_url": format!("{up}/me")}});
        let r = api.post("/api/credentials", Some(&alice), body).await;
        r.expect(201);
        ids.push(r.json()["id"].as_str().unwrap().to_string());
    }
    let dsn_password = guard.secret(random_alnum(20));
    let dsn = format!("postgres://app:{dsn_password}@db.example.com:5432/app");
    let r = api.post("/api/credentials", Some(&alice), json!({"name": "db", "type": "db_dsn", "fields": {"dsn": dsn}})).await;
    r.expect(201);
    let db_id = r.json()["id"].as_str().unwrap().to_string();
    let r = api.post("/api/admin/users/alice/tokens", Some(&root), json!({"scopes": ["read", "reveal"]})).await;
    r.expect(201);
    let revealer = guard.secret(r.json()["token"].as_str().unwrap());

    // Load: proxy calls (read snapshots), reveals and creates (write transactions).
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicUsize::new(0));
    let failures = Arc::new(Mutex::new(Vec::<String>::new()));
    let base = server.base.clone();
    let mut workers = Vec::new();
    for w in 0..4 {
        let (stop, done, failures, base) = (stop.clone(), done.clone(), failures.clone(), base.clone());
        let (alice, revealer, ids, db_id, dsn) = (alice.clone(), revealer.clone(), ids.clone(), db_id.clone(), dsn.clone());
        workers.push(tokio::spawn(async move {
            let http = reqwest::Client::new();
            let mut n = 0usize;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let (what, resp) = match w {
                    0 | 1 => {
                        let id = &ids[n % ids.len()];
                        ("proxy", http.get(format!("{base}/api/credentials/{id}/proxy/v1/x")).bearer_auth(&alice).send().await)
                    }
                    2 => ("reveal", http.post(format!("{base}/api/credentials/{db_id}/reveal")).bearer_auth(&revealer).send().await),
                    _ => {
                        let body = json!({"name": format!("load{n}"), "type": "bearer_token",
                                          "fields": {"token": format!("t{n}"), "test_url": "https://api.example.com/me"}});
                        ("create", http.post(format!("{base}/api/credentials")).bearer_auth(&alice).json(&body).send().await)
                    }
                };
                match resp {
                    Ok(r) if r.status().is_success() => {
                        let body = r.text().await.unwrap_or_default();
                        if what == "reveal" && !body.contains(&dsn) {
                            failures.lock().unwrap().push(format!("reveal answered without the DSN: {}", body.len()));
                        }
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(r) => {
                        let status = r.status();
                        let body = r.text().await.unwrap_or_default();
                        failures.lock().unwrap().push(format!("{what}: {status} {body}"));
                    }
                    Err(e) => failures.lock().unwrap().push(format!("{what}: {e}")),
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;

    // The operator's command: a server holds the store, so it goes through the API.
    let before = done.load(Ordering::Relaxed);
    let started = Instant::now();
    let env_ref = &env;
    let root_token = root.clone();
    let out = tokio::task::spawn_blocking({
        let mut cmd = env_ref.command(&["keys", "rotate"]);
        cmd.env("CREDHOST_TOKEN", &root_token).env("CREDHOST_URL", &base).stdin(std::process::Stdio::null());
        move || cmd.output().unwrap()
    })
    .await
    .unwrap();
    let rotate_ms = started.elapsed().as_millis();
    let during = done.load(Ordering::Relaxed) - before;
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "keys rotate failed:\n{stdout}\n{stderr}");
    // More rotations through the API, back to back, while the load goes on.
    let pending = key_file.with_file_name("master.key.new");
    let mut api_ms = Vec::new();
    for _ in 0..10 {
        write_private(&pending, &guard.secret(new_key_b64()), 0o600);
        let t = Instant::now();
        let r = api.post("/api/admin/keys/rotate", Some(&root), json!({"new_key_file": pending.to_str().unwrap()})).await;
        r.expect(200);
        api_ms.push(t.elapsed().as_millis());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.await.unwrap();
    }
    assert!(stderr.contains("working through its API") || stdout.contains("the server re-wrapped"), "{stdout}\n{stderr}");
    let failures = failures.lock().unwrap().clone();
    assert!(failures.is_empty(), "{} requests failed during the rotation: {:?}", failures.len(), &failures[..failures.len().min(5)]);
    let total = done.load(Ordering::Relaxed);
    println!(
        "CLI rotation took {rotate_ms} ms (round trip); API rotations took {api_ms:?} ms; {total} requests succeeded, {during} during the CLI one"
    );
    assert!(total > 20, "the load did not run: {total}");

    // The key file now holds the new key; the old one is kept beside it, both private.
    let new_key = guard.secret(std::fs::read_to_string(&key_file).unwrap().trim().to_string());
    assert_ne!(new_key, old_key);
    let kept = key_file.with_file_name("master.key.old");
    assert!(stdout.contains("master.key.old"), "{stdout}");
    assert_eq!((mode_of(&key_file), mode_of(&kept)), (0o600, 0o600));
    let previous = guard.secret(std::fs::read_to_string(&kept).unwrap().trim().to_string());
    assert_ne!(previous, new_key);
    assert!(!pending.exists(), "the handover file was renamed over the key file");

    // The server keeps working with the keys it swapped in.
    let r = api.get(&format!("/api/credentials/{}/proxy/v1/after", ids[0]), Some(&alice)).await;
    r.expect(200);
    let records = rotations(&api, &root).await;
    assert_eq!(records.len(), 11, "{records:?}");
    assert!(records.iter().all(|r| r["actor"] == "root"), "{records:?}");
    let detail = records[0]["detail"].as_str().unwrap_or_default().to_string();
    assert!(detail.contains("namespaces=3"), "{detail}");

    for secret in [&stdout, &stderr, &server.stderr()] {
        guard.check("rotation output and server log", secret);
    }
    server.stop();

    // Restart with the (replaced) key file: everything opens, the chain verifies.
    let out = env.cli(&["audit", "verify"]);
    let (o, e) = text(&out);
    assert!(out.status.success(), "{o}\n{e}");
    let mut server = env.start(&[]);
    let api = server.api(&guard);
    api.get(&format!("/api/credentials/{}/proxy/v1/restarted", ids[1]), Some(&alice)).await.expect(200);
    let r = reqwest::Client::new()
        .post(format!("{}/api/credentials/{db_id}/reveal", server.base))
        .bearer_auth(&revealer)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.text().await.unwrap().contains(&dsn));
    guard.check("server log after restart", &server.stderr());
    server.stop();

    // The previous key and the first one are refused with the error naming both key ids.
    let first = key_file.with_file_name("first.key");
    write_private(&first, &old_key, 0o600);
    for old in [&kept, &first] {
        let old_env = with_var(&env, "CREDHOST_MASTER_KEY_FILE", old.to_str().unwrap());
        let out = old_env.cli(&["keys", "verify"]);
        let (o, e) = text(&out);
        assert!(!out.status.success(), "an old key opened the store:\n{o}");
        assert!(key_id_in(&e), "{e}");
        guard.check("old key refusal", &e);
    }
}

/// Every `keys.rotate` audit record, following the pages (a filtered scan may end a page
/// early and give a cursor).
async fn rotations(api: &common::server::Api, admin: &str) -> Vec<Value> {
    let mut out = Vec::new();
    let mut cursor = String::new();
    loop {
        let r = api.get(&format!("/api/audit?all=true&action=keys.rotate&limit=1000{cursor}"), Some(admin)).await;
        r.expect(200);
        let v = r.json();
        out.extend(v["items"].as_array().unwrap().iter().cloned());
        match v["next_cursor"].as_str() {
            Some(c) => cursor = format!("&cursor={c}"),
            None => return out,
        }
    }
}

/// A copy of `env` (same data dir and working dir) with one variable changed.
fn with_var(env: &Env, name: &str, value: &str) -> Env {
    let mut other = Env::bare();
    other.vars = env.vars.clone();
    other.cwd = env.cwd.clone();
    other.set(name, value)
}

/// Non-admins are refused; a missing, relative, shared, malformed or current key file is
/// refused naming `new_key_file`, and nothing changes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_handover_is_refused_and_changes_nothing() {
    let guard = LeakGuard::new();
    let (env, key_file, key) = file_key_env(&guard);
    let root = env.add_user("root", true);
    let alice = env.add_user("alice", false);
    let mut server = env.start(&[]);
    let api = server.api(&guard);
    let dir = key_file.parent().unwrap().to_path_buf();
    let rotate = |path: &str| json!({"new_key_file": path});

    let good = dir.join("good.key");
    write_private(&good, &guard.secret(new_key_b64()), 0o600);
    let r = api.post("/api/admin/keys/rotate", Some(&alice), rotate(good.to_str().unwrap())).await;
    r.expect_error(403, "forbidden");

    let refused = |body: &Value, words: &str| {
        let fields = body["error"]["fields"].as_array().unwrap();
        assert_eq!(fields[0]["field"], "new_key_file", "{body}");
        let m = fields[0]["message"].as_str().unwrap();
        assert!(m.contains(words), "{words:?} not in {m:?}");
    };
    let missing = dir.join("nope.key");
    let r = api.post("/api/admin/keys/rotate", Some(&root), rotate(missing.to_str().unwrap())).await;
    refused(&r.expect_error(422, "invalid_fields"), "no such file");
    let r = api.post("/api/admin/keys/rotate", Some(&root), rotate("keys/good.key")).await;
    refused(&r.expect_error(422, "invalid_fields"), "absolute path");
    let r = api.post("/api/admin/keys/rotate", Some(&root), rotate("")).await;
    refused(&r.expect_error(422, "invalid_fields"), "required");

    let shared = dir.join("shared.key");
    write_private(&shared, &guard.secret(new_key_b64()), 0o644);
    let r = api.post("/api/admin/keys/rotate", Some(&root), rotate(shared.to_str().unwrap())).await;
    refused(&r.expect_error(422, "invalid_fields"), "other local users");

    let link = dir.join("link.key");
    std::os::unix::fs::symlink(&good, &link).unwrap();
    let r = api.post("/api/admin/keys/rotate", Some(&root), rotate(link.to_str().unwrap())).await;
    refused(&r.expect_error(422, "invalid_fields"), "symbolic link");

    let garbage = dir.join("garbage.key");
    write_private(&garbage, &guard.secret(format!("not-a-key-{}", random_alnum(30))), 0o600);
    let r = api.post("/api/admin/keys/rotate", Some(&root), rotate(garbage.to_str().unwrap())).await;
    refused(&r.expect_error(422, "invalid_fields"), "malformed");

    let same = dir.join("same.key");
    write_private(&same, &key, 0o600);
    let r = api.post("/api/admin/keys/rotate", Some(&root), rotate(same.to_str().unwrap())).await;
    refused(&r.expect_error(422, "invalid_fields"), "current master key");
    let r = api.post("/api/admin/keys/rotate", Some(&root), rotate(key_file.to_str().unwrap())).await;
    refused(&r.expect_error(422, "invalid_fields"), "current master key");

    // Through the CLI with a non-admin token: refused, and its new key file removed.
    let mut cmd = env.command(&["keys", "rotate", "--new-key-file", dir.join("cli.key").to_str().unwrap()]);
    let out = cmd.env("CREDHOST_TOKEN", &alice).env("CREDHOST_URL", &server.base).output().unwrap();
    let (o, e) = text(&out);
    assert!(!out.status.success(), "{o}");
    assert!(e.contains("admin"), "{e}");
    assert!(!dir.join("cli.key").exists(), "a refused rotation left its key file");

    // Nothing changed: no rotation audited, the key file as it was, the server serves.
    assert_eq!(rotations(&api, &root).await.len(), 0);
    assert_eq!(std::fs::read_to_string(&key_file).unwrap(), key);
    assert!(!key_file.with_file_name("master.key.old").exists());
    api.get("/api/credentials", Some(&alice)).await.expect(200);
    guard.check("server log", &server.stderr());
    server.stop();
    let out = env.cli(&["keys", "verify"]);
    assert!(out.status.success(), "{}", text(&out).1);
}

/// A crash after the commit but before the key file was replaced: the store needs the new
/// key, which is still in `<key file>.new`. Start-up finds it there and finishes the
/// handover. With the key from CREDHOST_MASTER_KEY the answer says what to do.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interrupted_handover_recovers_and_env_keys_are_explained() {
    let guard = LeakGuard::new();
    let (env, key_file, old_key) = file_key_env(&guard);
    let root = env.add_user("root", true);
    let mut server = env.start(&[]);
    let api = server.api(&guard);
    let pending = key_file.with_file_name("master.key.new");
    let new_key = guard.secret(new_key_b64());
    write_private(&pending, &new_key, 0o600);
    let r = api.post("/api/admin/keys/rotate", Some(&root), json!({"new_key_file": pending.to_str().unwrap()})).await;
    r.expect(200);
    let v = r.json();
    assert_eq!(v["namespaces"], 1, "{v}");
    assert!(v["action_needed"].is_null(), "{v}");
    server.stop();
    // Put the files back as a crash before the rename would have left them.
    write_private(&key_file, &old_key, 0o600);
    write_private(&pending, &new_key, 0o600);
    std::fs::remove_file(key_file.with_file_name("master.key.old")).unwrap();

    let mut server = env.start(&[]);
    let log = server.stderr();
    assert!(log.contains("finished an interrupted master-key rotation"), "{log}");
    assert_eq!(std::fs::read_to_string(&key_file).unwrap(), new_key);
    assert!(!pending.exists());
    server.api(&guard).get("/api/admin/users", Some(&root)).await.expect(200);
    guard.check("server log", &server.stderr());
    server.stop();

    // A key from the environment: the server cannot change it, and says so.
    let env_key = guard.secret(new_key_b64());
    let env2 = Env::with_key(&env_key);
    let root2 = env2.add_user("root", true);
    let mut server = env2.start(&[]);
    let next = env2.dir.path().join("next.key");
    let next_key = guard.secret(new_key_b64());
    write_private(&next, &next_key, 0o600);
    let api = server.api(&guard);
    let r = api.post("/api/admin/keys/rotate", Some(&root2), json!({"new_key_file": next.to_str().unwrap()})).await;
    r.expect(200);
    let todo = r.json()["action_needed"].as_str().unwrap_or_default().to_string();
    assert!(todo.contains("CREDHOST_MASTER_KEY") && todo.contains("next.key"), "{todo}");
    server.stop();
    let out = env2.cli(&["keys", "verify"]);
    assert!(key_id_in(&text(&out).1), "the old environment key still opened the store");
    let out = with_var(&env2, "CREDHOST_MASTER_KEY", &next_key).cli(&["keys", "verify"]);
    assert!(out.status.success(), "{}", text(&out).1);
}
