//! Audited reveal (issue 12, deliverable 6), against the real binary over HTTP:
//! `POST /api/credentials/{id}/reveal` needs the `reveal` scope and a type that allows it,
//! and `credhost exec` puts a credential into one program's environment only.
//!
//! A reveal answer carries secrets on purpose, so it is read with a plain client and
//! checked with plain assertions; everything else goes through the leak-checking `Api`.

mod common;

use std::path::Path;
use std::process::Output;

use common::server::{random_alnum, world, Api, LeakGuard, World};
use serde_json::{json, Value};

const PAPER_URL: &str = "https://paper-api.alpaca.markets";


/// An Alpaca paper key pair: (key id, secret key). The secret is registered with the
/// guard; the key id is a plain field (shown in every view).
fn alpaca_keys(guard: &LeakGuard) -> (String, String) {
    let key_id = format!("PK{}", random_alnum(18).to_ascii_uppercase());
    let secret = guard.secret(random_alnum(40));
    (key_id, secret)
}

async fn create(api: &Api, token: &str, body: Value) -> String {
    let r = api.post("/api/credentials", Some(token), body).await;
    r.expect(201);
    r.json()["id"].as_str().unwrap().to_string()
}

async fn create_alpaca(api: &Api, token: &str, name: &str, key_id: &str, secret: &str) -> String {
    let body = json!({"name": name, "type": "alpaca", "environment": "paper",
                      "fields": {"key_id": key_id, "secret_key": secret}});
    create(api, token, body).await
}

/// A token for `user` with exactly `scopes`, issued by the admin.
async fn scoped_token(w: &World, user: &str, scopes: &[&str]) -> String {
    let r = w.api.post(&format!("/api/admin/users/{user}/tokens"), Some(&w.root), json!({"scopes": scopes})).await;
    r.expect(201);
    w.guard.secret(r.json()["token"].as_str().unwrap())
}

/// `POST …/reveal` with a client that does not check for leaks: (status, headers, body).
async fn reveal(w: &World, token: &str, id: &str) -> (u16, reqwest::header::HeaderMap, String) {
    let resp = reqwest::Client::new()
        .post(format!("{}/api/credentials/{id}/reveal", w.server.base))
        .bearer_auth(token)
        .send()
        .await
        .expect("reveal request");
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    (status, headers, resp.text().await.unwrap())
}

/// An error answer of reveal: checked for leaks like any other response, then its code.
fn expect_error(w: &World, (status, _, body): &(u16, reqwest::header::HeaderMap, String), want: u16, code: &str) -> Value {
    w.guard.check("reveal error", body);
    assert_eq!(*status, want, "{body}");
    let v: Value = serde_json::from_str(body).unwrap();
    assert_eq!(v["error"]["code"], code, "{body}");
    v
}

/// The user's audit records (newest first).
async fn audit(w: &World, token: &str) -> Vec<Value> {
    let r = w.api.get("/api/audit?limit=1000", Some(token)).await;
    r.expect(200);
    r.json()["items"].as_array().unwrap().clone()
}

/// Reveal: scope, type, ownership and grants enforced; the answer is complete, not
/// cacheable, audited, and the secret appears in no log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reveal_needs_the_scope_and_a_type_that_allows_it() {
    let w = world().await;
    let (key_id, secret) = alpaca_keys(&w.guard);
    let id = create_alpaca(&w.api, &w.alice, "trader", &key_id, &secret).await;

    // A default token has no `reveal`: refused, and the message names the scope.
    let e = expect_error(&w, &reveal(&w, &w.alice, &id).await, 403, "insufficient_scope");
    assert!(e["error"]["message"].as_str().unwrap().contains("`reveal`"), "{e}");

    // With `read` + `reveal`: every field in clear and the type's environment variables.
    let revealer = scoped_token(&w, "alice", &["read", "reveal"]).await;
    let (status, headers, body) = reveal(&w, &revealer, &id).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(headers["cache-control"], "no-store");
    assert_eq!(headers["pragma"], "no-cache");
    assert!(headers.get("x-request-id").is_some());
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["fields"], json!({"key_id": key_id, "secret_key": secret}), "{body}");
    assert_eq!(
        v["env"],
        json!({"APCA_API_KEY_ID": key_id, "APCA_API_SECRET_KEY": secret, "APCA_API_BASE_URL": PAPER_URL}),
        "{body}"
    );

    // Audited, with the purpose and field names (never values).
    let records = audit(&w, &revealer).await;
    let rec = records
        .iter()
        .find(|r| r["action"] == "credential.reveal" && r["credential"] == id.as_str())
        .unwrap_or_else(|| panic!("no credential.reveal record: {records:?}"));
    assert_eq!(rec["actor"], "alice");
    assert_eq!(rec["outcome"], "ok");
    let detail = rec["detail"].as_str().unwrap();
    assert!(detail.contains("reveal to caller") && detail.contains("secret_key"), "{detail}");

    // A type without `reveal = true`: refused, and the refusal is audited.
    let token_secret = w.guard.secret(format!("tok-{}", random_alnum(32)));
    let bearer = create(&w.api, &w.alice, json!({"name": "api", "type": "bearer_token", "fields": {"token": token_secret}})).await;
    let e = expect_error(&w, &reveal(&w, &revealer, &bearer).await, 403, "reveal_not_allowed");
    assert!(e["error"]["message"].as_str().unwrap().contains("bearer_token"), "{e}");
    let records = audit(&w, &revealer).await;
    assert!(
        records.iter().any(|r| r["action"] == "credential.reveal" && r["credential"] == bearer.as_str() && r["outcome"] == "denied"),
        "{records:?}"
    );
    assert!(!records.iter().any(|r| r["credential"] == bearer.as_str() && r["outcome"] == "ok" && r["action"] == "credential.reveal"));

    // A type with no HTTP use but `reveal = true` (db_dsn): no base URL, its own variable.
    let dsn = w.guard.secret(format!("postgres://app:{}@db.example.com:5432/app", random_alnum(24)));
    let db = create(&w.api, &w.alice, json!({"name": "db", "type": "db_dsn", "fields": {"dsn": dsn}})).await;
    let (status, _, body) = reveal(&w, &revealer, &db).await;
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["env"], json!({"DATABASE_URL": dsn}));
    assert_eq!(v["fields"]["dsn"], dsn.as_str());

    // Another user's credential does not exist for bob, even with `reveal`; nor does a made-up id.
    let bob_revealer = scoped_token(&w, "bob", &["read", "reveal"]).await;
    expect_error(&w, &reveal(&w, &bob_revealer, &id).await, 404, "not_found");
    expect_error(&w, &reveal(&w, &revealer, "00000000-0000-4000-8000-000000000000").await, 404, "not_found");
    let _ = &w.bob;

    // A grant for the very credential cannot reveal it.
    let r = w.api.post(&format!("/api/credentials/{id}/grants"), Some(&w.alice), json!({"ttl_secs": 600})).await;
    r.expect(201);
    let grant = w.guard.secret(r.json()["token"].as_str().unwrap());
    let (status, _, body) = reveal(&w, &grant, &id).await;
    w.guard.check("grant reveal", &body);
    assert_eq!(status, 403, "{body}");
    // Without a token at all: 401.
    let r = reqwest::Client::new().post(format!("{}/api/credentials/{id}/reveal", w.server.base)).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 401);

    // Exactly one successful reveal of the alpaca credential was recorded.
    let records = audit(&w, &revealer).await;
    let ok_reveals = records.iter().filter(|r| r["action"] == "credential.reveal" && r["credential"] == id.as_str() && r["outcome"] == "ok");
    assert_eq!(ok_reveals.count(), 1, "{records:?}");

    // The server logged none of it.
    w.guard.check("server stderr (logs)", &w.server.stderr());
    w.guard.check("server stdout", &w.server.stdout().join("\n"));
}

/// Every regular file under `dir` (recursively) except `skip`.
fn files_under(dir: &Path, skip: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        let ft = entry.file_type().unwrap();
        if ft.is_dir() {
            files_under(&path, skip, out);
        } else if ft.is_file() && path != skip {
            out.push(path);
        }
    }
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle.as_bytes())
}

fn text(out: &Output) -> String {
    format!("{}\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

/// `credhost exec`: the child gets the variables (and not the API token), its exit code
/// comes back, and the values go nowhere else: not this process, not the disk, not the
/// CLI's output. Refusals are clear and run nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_puts_the_credential_in_the_childs_environment_only() {
    let w = world().await;
    let (key_id, secret) = alpaca_keys(&w.guard);
    let id = create_alpaca(&w.api, &w.alice, "trader", &key_id, &secret).await;
    let token_secret = w.guard.secret(format!("tok-{}", random_alnum(32)));
    create(&w.api, &w.alice, json!({"name": "api", "type": "bearer_token", "fields": {"token": token_secret}})).await;
    let revealer = scoped_token(&w, "alice", &["read", "reveal"]).await;

    let outfile = w.env.cwd.join("child-saw");
    let script = format!(
        "printf %s \"$APCA_API_KEY_ID|$APCA_API_SECRET_KEY|$APCA_API_BASE_URL|${{CREDHOST_TOKEN:-no-token}}\" > '{}'",
        outfile.display()
    );
    let exec = |name: &str, token: Option<&str>, program: &[&str]| {
        let mut args = vec!["exec", "--credential", name, "--url", w.server.base.as_str(), "--"];
        args.extend_from_slice(program);
        let mut cmd = w.env.command(&args);
        if let Some(t) = token {
            cmd.env("CREDHOST_TOKEN", t);
        }
        cmd.stdin(std::process::Stdio::null()).output().expect("run credhost exec")
    };

    // The child sees the three variables, and not the CLI's token.
    let out = exec("trader", Some(&revealer), &["sh", "-c", &script]);
    assert!(out.status.success(), "{}", text(&out));
    let seen = std::fs::read_to_string(&outfile).unwrap();
    assert_eq!(seen, format!("{key_id}|{secret}|{PAPER_URL}|no-token"));
    w.guard.check("credhost exec output", &text(&out));

    // The child's exit code is the command's.
    let out = exec("trader", Some(&revealer), &["sh", "-c", "exit 7"]);
    assert_eq!(out.status.code(), Some(7), "{}", text(&out));
    w.guard.check("credhost exec output", &text(&out));

    // This (the parent) process never had the values.
    for (k, v) in std::env::vars_os() {
        let (k, v) = (k.to_string_lossy().to_string(), v.to_string_lossy().to_string());
        assert!(!k.starts_with("APCA_"), "{k} is set in the test process");
        assert!(!v.contains(&secret), "{k} holds the secret");
    }

    // Refusals: a clear message, non-zero, and the program does not run.
    let marker = w.env.cwd.join("ran");
    let touch = format!("touch '{}'", marker.display());
    let cases: [(&str, Option<&str>, &str); 5] = [
        ("trader", None, "CREDHOST_TOKEN is not set"),
        ("trader", Some(&w.alice), "`reveal` scope"),
        ("nosuch", Some(&revealer), "no credential named \"nosuch\""),
        ("api", Some(&revealer), "cannot be revealed"),
        ("trader", Some("chst_notavalidtoken0000000000000000000000000"), "refused CREDHOST_TOKEN"),
    ];
    for (name, token, want) in cases {
        let out = exec(name, token, &["sh", "-c", &touch]);
        let t = text(&out);
        assert!(!out.status.success(), "{name}: {t}");
        assert!(String::from_utf8_lossy(&out.stderr).contains(want), "{name}: want {want:?} in:\n{t}");
        assert!(!marker.exists(), "{name}: the program ran");
        w.guard.check("credhost exec refusal", &t);
    }
    // The bob-can't-see-alice case through exec: the name is simply not there.
    let bob_revealer = scoped_token(&w, "bob", &["read", "reveal"]).await;
    let out = exec("trader", Some(&bob_revealer), &["sh", "-c", &touch]);
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("no credential named"), "{}", text(&out));
    assert!(!marker.exists());
    let _ = (&w.bob, &id);

    // Both runs were audited as reveals to alice.
    let r = w.api.get("/api/audit?limit=1000", Some(&revealer)).await;
    let reveals = r.json()["items"].as_array().unwrap().iter().filter(|r| r["action"] == "credential.reveal" && r["outcome"] == "ok").count();
    assert_eq!(reveals, 2);

    // Nothing on disk holds a value, apart from the file the child wrote: not the data
    // dir, not the working directory, not the server's logs.
    let mut files = Vec::new();
    files_under(w.env.dir.path(), &outfile, &mut files);
    assert!(files.iter().any(|f| f.starts_with(w.env.data_dir())), "no data files found: {files:?}");
    for f in files {
        let bytes = std::fs::read(&f).unwrap();
        assert!(!contains(&bytes, &secret), "{} contains the secret", f.display());
    }
    w.guard.check("server stderr (logs)", &w.server.stderr());
}
