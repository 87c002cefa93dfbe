//! Live credential tests through the host capabilities, against real peers started
//! here on 127.0.0.1 with ports chosen at run time:
//!
//! - the real `credhost` binary (`serve`, plus the `users add` and `test` commands),
//!   configured with `allow_private_networks` and plugin overrides;
//! - local HTTP servers mimicking Alpaca's paper and live `/v2/account`, and endpoints
//!   for bearer / basic / API-key credentials;
//! - OpenSSH `sshd` (Debian package `openssh-server`) with a throwaway host key and user;
//! - PostgreSQL 15 (Debian package `postgresql-15`), initialised in a temp dir.
//!
//! A missing peer binary fails the test with the package to install; nothing is skipped.
//! Every test scans the server's captured stderr for the secrets it used.
//! The egress tests at the end run the hostile fixture in-process against local servers.

mod common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::get;
use axum::Router;
use base64::Engine as _;
use credhost::plugins::{Bound, Capability, HostServices, Runtime, TestStatus};
use serde_json::{json, Value};

// ---------------------------------------------------------------- helpers

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn random_hex(n: usize) -> String {
    let mut b = vec![0u8; n];
    getrandom::fill(&mut b).unwrap();
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Random upper-case alphanumerics (Alpaca key ids).
fn random_upper(n: usize) -> String {
    const A: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
    let mut b = vec![0u8; n];
    getrandom::fill(&mut b).unwrap();
    b.iter().map(|x| A[*x as usize % A.len()] as char).collect()
}

// Fails (never skips) when a peer binary is missing, naming the package to install; runs a
// command to completion.
use common::postgres::{need, run};

fn wait_for_port(port: u16, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("{what} did not start listening on 127.0.0.1:{port}");
}

/// Kills the child when dropped.
struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Reads a pipe into a shared string on a thread.
fn capture(pipe: impl std::io::Read + Send + 'static) -> Arc<Mutex<String>> {
    let buf = Arc::new(Mutex::new(String::new()));
    let b = buf.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(pipe).lines().map_while(Result::ok) {
            let mut g = b.lock().unwrap();
            g.push_str(&line);
            g.push('\n');
        }
    });
    buf
}

/// Asserts that no secret (nor its base64 / URL-encoded forms) occurs in `text`.
fn assert_no_secrets(text: &str, secrets: &[String], what: &str) {
    for s in secrets {
        let forms = [
            s.clone(),
            base64::engine::general_purpose::STANDARD.encode(s),
            percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string(),
        ];
        for f in forms {
            assert!(!text.contains(&f), "a secret (or an encoding of it) appears in {what}");
        }
    }
}

// ---------------------------------------------------------------- the credhost server

struct Credhost {
    dir: tempfile::TempDir,
    config: PathBuf,
    master_key: String,
    base: String,
    token: String,
    server: Option<Guard>,
    stderr: Arc<Mutex<String>>,
    http: reqwest::Client,
}

impl Credhost {
    /// Starts `credhost serve` with `extra_config` appended to the `[plugins]` section.
    fn start(extra_config: &str) -> Credhost {
        Self::start_with(true, extra_config)
    }

    fn start_with(allow_private_networks: bool, extra_config: &str) -> Credhost {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("credhost.toml");
        let plugins = format!("[plugins]\nallow_private_networks = {allow_private_networks}\n{extra_config}");
        std::fs::write(&config, plugins).unwrap();
        let mut key = [0u8; 32];
        getrandom::fill(&mut key).unwrap();
        let master_key = base64::engine::general_purpose::STANDARD.encode(key);
        let mut c = Credhost {
            dir,
            config,
            master_key,
            base: String::new(),
            token: String::new(),
            server: None,
            stderr: Arc::new(Mutex::new(String::new())),
            http: reqwest::Client::new(),
        };
        let out = run(c.command().args(["users", "add", "alice"]));
        c.token = out.lines().last().expect("users add prints the token").trim().to_string();
        c.serve();
        c
    }

    fn command(&self) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_credhost"));
        cmd.env("CREDHOST_CONFIG", &self.config)
            .env("CREDHOST_DATA_DIR", self.dir.path().join("data"))
            .env("CREDHOST_MASTER_KEY", &self.master_key)
            .env("CREDHOST_LOG", "debug,cranelift_codegen=info,wasmtime=info,wasmtime_cranelift=info")
            .env_remove("CREDHOST_MASTER_KEY_FILE")
            .env_remove("CREDHOST_LISTEN");
        cmd
    }

    fn serve(&mut self) {
        let mut child = self
            .command()
            .arg("serve")
            .env("CREDHOST_LISTEN", "127.0.0.1:0")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting credhost serve");
        let stderr = capture(child.stderr.take().unwrap());
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        let addr = loop {
            line.clear();
            if stdout.read_line(&mut line).unwrap() == 0 {
                panic!("credhost serve exited before listening:\n{}", stderr.lock().unwrap());
            }
            if let Some(a) = line.trim().strip_prefix("listening on ") {
                break a.to_string();
            }
        };
        std::thread::spawn(move || for _ in stdout.lines() {});
        // Keep earlier runs' logs: the scan covers the whole test.
        let before = std::mem::take(&mut *self.stderr.lock().unwrap());
        stderr.lock().unwrap().insert_str(0, &before);
        self.stderr = stderr;
        self.base = addr;
        self.server = Some(Guard(child));
    }

    /// Stops the server gracefully (the database can then be opened by the CLI).
    fn stop(&mut self) {
        if let Some(mut g) = self.server.take() {
            let _ = Command::new("kill").arg("-TERM").arg(g.0.id().to_string()).status();
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if g.0.try_wait().unwrap().is_some() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }

    fn logs(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
        let mut rb = self.http.request(method, format!("{}{path}", self.base)).bearer_auth(&self.token);
        if let Some(b) = body {
            rb = rb.json(&b);
        }
        let resp = rb.send().await.expect("API call");
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
    }

    /// Creates a credential; returns its id.
    async fn create(&self, body: Value) -> String {
        let (status, v) = self.call(reqwest::Method::POST, "/api/credentials", Some(body)).await;
        assert_eq!(status, 201, "create: {v}");
        v["id"].as_str().expect("id").to_string()
    }

    /// `POST /api/credentials/{id}/test` → (HTTP status, body).
    async fn test(&self, id: &str) -> (u16, Value) {
        self.call(reqwest::Method::POST, &format!("/api/credentials/{id}/test"), None).await
    }

    /// A test that must answer 200; returns the outcome.
    async fn outcome(&self, id: &str) -> Value {
        let (status, v) = self.test(id).await;
        assert_eq!(status, 200, "test of {id}: {v}");
        v
    }
}

fn fact<'a>(v: &'a Value, key: &str) -> &'a str {
    v["facts"][key].as_str().unwrap_or_else(|| panic!("fact {key} missing in {v}"))
}

async fn serve_router(app: Router) -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    port
}

// ---------------------------------------------------------------- Alpaca

#[derive(Clone)]
struct AlpacaMock {
    /// key id → secret key of keys this environment accepts.
    keys: Arc<BTreeMap<String, String>>,
    revoked: Arc<Vec<String>>,
    hits: Arc<AtomicUsize>,
}

async fn alpaca_account(State(m): State<AlpacaMock>, headers: HeaderMap) -> (StatusCode, String) {
    m.hits.fetch_add(1, Ordering::SeqCst);
    let h = |n: &str| headers.get(n).and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
    let (id, secret) = (h("apca-api-key-id"), h("apca-api-secret-key"));
    if m.revoked.contains(&id) {
        return (StatusCode::FORBIDDEN, r#"{"code":40310000,"message":"access key revoked"}"#.into());
    }
    match m.keys.get(&id) {
        Some(s) if *s == secret => (
            StatusCode::OK,
            json!({"status": "ACTIVE", "account_number": format!("ACC{}", &id[2..8]), "currency": "USD"}).to_string(),
        ),
        _ => (StatusCode::UNAUTHORIZED, r#"{"code":40110000,"message":"request is not authorized"}"#.into()),
    }
}

async fn alpaca_server(keys: &[(&str, &str)], revoked: &[&str]) -> (u16, Arc<AtomicUsize>) {
    let mock = AlpacaMock {
        keys: Arc::new(keys.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect()),
        revoked: Arc::new(revoked.iter().map(|s| s.to_string()).collect()),
        hits: Arc::new(AtomicUsize::new(0)),
    };
    let hits = mock.hits.clone();
    let app = Router::new().route("/v2/account", get(alpaca_account)).with_state(mock);
    (serve_router(app).await, hits)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alpaca_keys_against_local_paper_and_live_servers() {
    let paper_id = format!("PK{}", random_upper(18));
    let paper_secret = random_hex(20);
    let live_id = format!("AK{}", random_upper(18));
    let live_secret = random_hex(20);
    let revoked_id = format!("PK{}", random_upper(18));
    let revoked_secret = random_hex(20);
    // An AK-prefixed key that only the paper API knows: "a paper key tested as live".
    let stray_id = format!("AK{}", random_upper(18));
    let stray_secret = random_hex(20);
    let (paper_port, paper_hits) =
        alpaca_server(&[(&paper_id, &paper_secret), (&stray_id, &stray_secret)], &[&revoked_id]).await;
    let (live_port, live_hits) = alpaca_server(&[(&live_id, &live_secret)], &[]).await;
    let paper = format!("http://127.0.0.1:{paper_port}");
    let live = format!("http://127.0.0.1:{live_port}");
    let mut ch = Credhost::start(&format!(
        "[plugins.overrides.alpaca]\nallowed_hosts = [\"{paper}\", \"{live}\"]\n\
         settings = {{ paper_base_url = \"{paper}\", live_base_url = \"{live}/\" }}\n"
    ));

    let cred = |name: &str, env: &str, id: &str, secret: &str| {
        json!({"name": name, "type": "alpaca", "environment": env, "fields": {"key_id": id, "secret_key": secret}})
    };
    // Good paper key.
    let id = ch.create(cred("paper", "paper", &paper_id, &paper_secret)).await;
    let v = ch.outcome(&id).await;
    assert_eq!(v["ok"], true, "{v}");
    assert_eq!(v["status"], "valid", "{v}");
    assert_eq!(fact(&v, "environment"), "paper");
    assert_eq!(fact(&v, "account_status"), "ACTIVE");
    assert_eq!(fact(&v, "account_number"), format!("ACC{}", &paper_id[2..8]));
    let (_, shown) = ch.call(reqwest::Method::GET, &format!("/api/credentials/{id}"), None).await;
    assert_eq!(shown["last_test"]["ok"], true, "last_test is stored: {shown}");
    let cli_id = id;

    // Good live key.
    let id = ch.create(cred("live", "live", &live_id, &live_secret)).await;
    let v = ch.outcome(&id).await;
    assert_eq!((v["ok"].clone(), v["status"].clone()), (json!(true), json!("valid")), "{v}");
    assert_eq!(fact(&v, "environment"), "live");

    // Revoked key: 403 from paper (and live does not know it either).
    let id = ch.create(cred("revoked", "paper", &revoked_id, &revoked_secret)).await;
    let v = ch.outcome(&id).await;
    assert_eq!(v["ok"], false, "{v}");
    assert_eq!(v["status"], "invalid", "{v}");
    assert!(v["summary"].as_str().unwrap().contains("HTTP 403"), "{v}");
    let (_, shown) = ch.call(reqwest::Method::GET, &format!("/api/credentials/{id}"), None).await;
    assert_eq!(shown["last_test"]["ok"], false, "a failing test is stored too: {shown}");

    // A paper key bound to live: refused offline at create...
    let (status, v) = ch.call(reqwest::Method::POST, "/api/credentials", Some(cred("wrong", "live", &paper_id, &paper_secret))).await;
    assert_eq!(status, 422, "{v}");
    assert!(v.to_string().contains("paper key"), "{v}");
    // ...and a key that only the paper API knows, tested as live, says where it belongs.
    let id = ch.create(cred("stray", "live", &stray_id, &stray_secret)).await;
    let v = ch.outcome(&id).await;
    assert_eq!(v["status"], "invalid", "{v}");
    assert_eq!(fact(&v, "correct_environment"), "paper", "{v}");
    assert_eq!(fact(&v, "environment"), "live");
    assert!(paper_hits.load(Ordering::SeqCst) >= 3 && live_hits.load(Ordering::SeqCst) >= 2);

    // Audit: the tests and their http uses are recorded.
    let (status, audit) = ch.call(reqwest::Method::GET, "/api/audit?limit=200", None).await;
    assert_eq!(status, 200, "{audit}");
    let audit_text = audit.to_string();
    assert!(audit_text.contains("http"), "capability uses are audited: {audit_text}");

    // The CLI runs the same operation (the server must release the database first).
    ch.stop();
    let out = ch.command().args(["test", &cli_id, "--user", "alice", "--json"]).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "credhost test: {stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    let v: Value = serde_json::from_str(&stdout).expect("JSON outcome");
    assert_eq!(v["status"], "valid", "{v}");
    let out = ch.command().args(["test", "not-an-id", "--user", "alice"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2), "a bad id is an error");
    let cli_stderr = String::from_utf8_lossy(&out.stderr).into_owned();

    let secrets = [paper_secret, live_secret, revoked_secret, stray_secret];
    assert_no_secrets(&ch.logs(), &secrets, "the server log");
    assert_no_secrets(&stdout, &secrets, "the CLI output");
    assert_no_secrets(&cli_stderr, &secrets, "the CLI errors");
    assert_no_secrets(&audit_text, &secrets, "the audit log");
}

// ---------------------------------------------------------------- bearer / basic / API key

#[derive(Clone)]
struct Expect {
    bearer: String,
    basic: String,
    key: String,
}

async fn http_types_server(expect: Expect) -> u16 {
    let check = |ok: bool| if ok { (StatusCode::OK, "{\"ok\":true}") } else { (StatusCode::UNAUTHORIZED, "{}") };
    let app = Router::new()
        .route(
            "/bearer",
            get(move |State(e): State<Expect>, h: HeaderMap| async move {
                check(h.get("authorization").is_some_and(|v| v.as_bytes() == format!("Bearer {}", e.bearer).as_bytes()))
            }),
        )
        .route(
            "/custom",
            get(move |State(e): State<Expect>, h: HeaderMap| async move {
                check(h.get("x-token").is_some_and(|v| v.as_bytes() == format!("Token {}", e.bearer).as_bytes()))
            }),
        )
        .route(
            "/basic",
            get(move |State(e): State<Expect>, h: HeaderMap| async move {
                let want = format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(&e.basic));
                check(h.get("authorization").is_some_and(|v| v.as_bytes() == want.as_bytes()))
            }),
        )
        .route(
            "/key",
            get(
                move |State(e): State<Expect>,
                      h: HeaderMap,
                      q: axum::extract::Query<BTreeMap<String, String>>| async move {
                    let header_ok = h.get("x-api-key").is_some_and(|v| v.as_bytes() == e.key.as_bytes());
                    check(header_ok || q.get("api_key") == Some(&e.key))
                },
            ),
        )
        .with_state(expect);
    serve_router(app).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bearer_basic_and_api_key_against_a_local_server() {
    let expect = Expect { bearer: random_hex(24), basic: format!("svc:{}", random_hex(16)), key: random_hex(24) };
    let port = http_types_server(expect.clone()).await;
    let url = |p: &str| format!("http://127.0.0.1:{port}{p}");
    let ch = Credhost::start("");
    let password = expect.basic.split_once(':').unwrap().1.to_string();
    let wrong = random_hex(24);

    let cases = [
        (json!({"type": "bearer_token", "fields": {"token": expect.bearer, "test_url": url("/bearer")}}), true),
        (json!({"type": "bearer_token", "fields": {"token": wrong, "test_url": url("/bearer")}}), false),
        (
            json!({"type": "bearer_token", "fields": {"token": expect.bearer, "header_name": "X-Token", "prefix": "Token", "test_url": url("/custom")}}),
            true,
        ),
        (json!({"type": "http_basic", "fields": {"username": "svc", "password": password, "test_url": url("/basic")}}), true),
        (json!({"type": "http_basic", "fields": {"username": "svc", "password": wrong, "test_url": url("/basic")}}), false),
        (json!({"type": "api_key", "fields": {"key": expect.key, "test_url": url("/key")}}), true),
        (json!({"type": "api_key", "fields": {"key": expect.key, "placement": "query", "name": "api_key", "test_url": url("/key")}}), true),
        (json!({"type": "api_key", "fields": {"key": wrong, "test_url": url("/key")}}), false),
    ];
    for (i, (mut body, accepted)) in cases.into_iter().enumerate() {
        body["name"] = json!(format!("c{i}"));
        let id = ch.create(body.clone()).await;
        let v = ch.outcome(&id).await;
        let want = if accepted { "valid" } else { "invalid" };
        assert_eq!(v["status"], want, "case {i} ({}): {v}", body["type"]);
        assert_eq!(v["ok"], accepted, "case {i}: {v}");
        assert_eq!(fact(&v, "http_status"), if accepted { "200" } else { "401" }, "case {i}: {v}");
    }
    // Nothing listens here: could not tell, not a bad token.
    let dead = free_port();
    let id = ch
        .create(json!({"name": "dead", "type": "bearer_token", "fields": {"token": expect.bearer, "test_url": format!("http://127.0.0.1:{dead}/")}}))
        .await;
    let v = ch.outcome(&id).await;
    assert_eq!(v["status"], "indeterminate", "{v}");
    assert!(v["summary"].as_str().unwrap().contains("could not reach"), "{v}");

    assert_no_secrets(&ch.logs(), &[expect.bearer, password, expect.key, wrong], "the server log");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn private_targets_are_refused_without_the_operators_leave() {
    let expect = Expect { bearer: random_hex(24), basic: "u:p".into(), key: random_hex(24) };
    let hits = Arc::new(AtomicUsize::new(0));
    let h = hits.clone();
    let app = Router::new().fallback(move || {
        h.fetch_add(1, Ordering::SeqCst);
        async { StatusCode::OK }
    });
    let port = serve_router(app).await;
    let ch = Credhost::start_with(false, "");
    for (name, body) in [
        ("bearer", json!({"type": "bearer_token", "fields": {"token": expect.bearer, "test_url": format!("http://127.0.0.1:{port}/")}})),
        ("by-name", json!({"type": "api_key", "fields": {"key": expect.key, "test_url": format!("http://localhost:{port}/")}})),
        ("dsn", json!({"type": "db_dsn", "fields": {"dsn": format!("postgres://admin:{}@127.0.0.1:{port}/x", expect.key)}})),
        ("ssh", json!({"type": "ssh", "fields": {"host": "127.0.0.1", "port": port, "username": "u", "password": expect.bearer}})),
    ] {
        let mut body = body;
        body["name"] = json!(name);
        let id = ch.create(body).await;
        // A target the host's policy refuses: a verdict with the reason, not a server error.
        let v = ch.outcome(&id).await;
        assert_eq!(v["status"], "indeterminate", "{name}: {v}");
        assert!(v["summary"].as_str().unwrap().contains("private"), "{name}: {v}");
    }
    assert_eq!(hits.load(Ordering::SeqCst), 0, "nothing reached the private address");
    let (_, audit) = ch.call(reqwest::Method::GET, "/api/audit?limit=200", None).await;
    assert!(audit.to_string().contains("private address"), "refusals are audited: {audit}");
    assert_no_secrets(&ch.logs(), &[expect.bearer, expect.key], "the server log");
}

// ---------------------------------------------------------------- SSH

const SSHD: &str = "/usr/sbin/sshd";
const SSH_KEYGEN: &str = "/usr/bin/ssh-keygen";
const SSH_USER: &str = "credhost_live";

struct Sshd {
    _guard: Guard,
    _dir: tempfile::TempDir,
    port: u16,
    fingerprint: String,
    log: Arc<Mutex<String>>,
    password: String,
    key: String,
    key_encrypted: String,
    key_passphrase: String,
    stranger_key: String,
}

fn keygen(dir: &Path, name: &str, passphrase: &str) -> (String, String) {
    let path = dir.join(name);
    run(Command::new(SSH_KEYGEN).args(["-q", "-t", "ed25519", "-C", name, "-N", passphrase, "-f"]).arg(&path));
    let private = std::fs::read_to_string(&path).unwrap();
    let public = std::fs::read_to_string(path.with_extension("pub")).unwrap();
    (private, public)
}

fn start_sshd() -> Sshd {
    need(SSHD, "openssh-server");
    need(SSH_KEYGEN, "openssh-client");
    need("/usr/sbin/useradd", "passwd");
    need("/usr/sbin/chpasswd", "passwd");
    let dir = tempfile::tempdir().unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::create_dir_all("/run/sshd").unwrap();
    // The test user: created once, password reset every run.
    let exists = Command::new("id").arg("-u").arg(SSH_USER).output().unwrap().status.success();
    if !exists {
        run(Command::new("/usr/sbin/useradd").args(["-M", "-s", "/bin/sh", SSH_USER]));
    }
    let password = format!("pw-{}", random_hex(12));
    let mut chpasswd = Command::new("/usr/sbin/chpasswd").stdin(Stdio::piped()).spawn().unwrap();
    chpasswd.stdin.take().unwrap().write_all(format!("{SSH_USER}:{password}\n").as_bytes()).unwrap();
    assert!(chpasswd.wait().unwrap().success(), "chpasswd failed");

    let (_, _) = keygen(dir.path(), "host_key", "");
    let fp_line = run(Command::new(SSH_KEYGEN).arg("-lf").arg(dir.path().join("host_key.pub")));
    let fingerprint = fp_line.split_whitespace().nth(1).expect("ssh-keygen -l output").to_string();
    let (key, key_pub) = keygen(dir.path(), "user_key", "");
    let key_passphrase = format!("pass {}", random_hex(8));
    let (key_encrypted, enc_pub) = keygen(dir.path(), "user_key_enc", &key_passphrase);
    let (stranger_key, _) = keygen(dir.path(), "stranger_key", "");
    let ak = dir.path().join("authorized_keys");
    std::fs::create_dir(&ak).unwrap();
    std::fs::set_permissions(&ak, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::write(ak.join(SSH_USER), format!("{key_pub}{enc_pub}")).unwrap();
    std::fs::set_permissions(ak.join(SSH_USER), std::fs::Permissions::from_mode(0o644)).unwrap();

    let port = free_port();
    let d = dir.path().display();
    let config = dir.path().join("sshd_config");
    std::fs::write(
        &config,
        format!(
            "Port {port}\nListenAddress 127.0.0.1\nHostKey {d}/host_key\nPidFile {d}/sshd.pid\n\
             PasswordAuthentication yes\nKbdInteractiveAuthentication no\nPubkeyAuthentication yes\n\
             UsePAM no\nStrictModes no\nAuthorizedKeysFile {d}/authorized_keys/%u\nPermitRootLogin no\n\
             LogLevel VERBOSE\nMaxAuthTries 6\n"
        ),
    )
    .unwrap();
    let mut child = Command::new(SSHD)
        .arg("-D")
        .arg("-e")
        .arg("-f")
        .arg(&config)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting sshd");
    let log = capture(child.stderr.take().unwrap());
    let guard = Guard(child);
    wait_for_port(port, "sshd");
    Sshd {
        _guard: guard,
        _dir: dir,
        port,
        fingerprint,
        log,
        password,
        key,
        key_encrypted,
        key_passphrase,
        stranger_key,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ssh_logins_against_openssh() {
    let sshd = start_sshd();
    let ch = Credhost::start("");
    let base = |extra: Value| {
        let mut fields = json!({"host": "127.0.0.1", "port": sshd.port, "username": SSH_USER});
        for (k, v) in extra.as_object().unwrap() {
            fields[k] = v.clone();
        }
        fields
    };
    let mut n = 0;
    let mut check = async |fields: Value| {
        n += 1;
        let id = ch.create(json!({"name": format!("ssh{n}"), "type": "ssh", "fields": fields})).await;
        ch.outcome(&id).await
    };
    let accepted = || sshd.log.lock().unwrap().matches("Accepted ").count();

    let v = check(base(json!({"password": sshd.password, "host_key_fingerprint": sshd.fingerprint}))).await;
    assert_eq!(v["status"], "valid", "good password: {v}\nsshd log:\n{}", sshd.log.lock().unwrap());
    assert_eq!(fact(&v, "host_key_fingerprint"), sshd.fingerprint, "matches ssh-keygen -l");
    assert_eq!(fact(&v, "auth_method"), "password");

    let v = check(base(json!({"password": "wrong-password-123"}))).await;
    assert_eq!((v["status"].clone(), v["ok"].clone()), (json!("invalid"), json!(false)), "bad password: {v}");
    assert_eq!(fact(&v, "host_key_fingerprint"), sshd.fingerprint);

    let v = check(base(json!({"private_key": sshd.key}))).await;
    assert_eq!(v["status"], "valid", "good key: {v}");
    assert_eq!(fact(&v, "auth_method"), "private_key");

    let v = check(base(json!({"private_key": sshd.key_encrypted, "passphrase": sshd.key_passphrase}))).await;
    assert_eq!(v["status"], "valid", "good encrypted key: {v}");

    let v = check(base(json!({"private_key": sshd.stranger_key}))).await;
    assert_eq!(v["status"], "invalid", "key not in authorized_keys: {v}");

    // A wrong pinned fingerprint: refused before any secret is sent (no new login).
    let before = accepted();
    let wrong_fp = "SHA256:Z4/3lQ3YToMJZAi6nDyEy1OT7kLsHE4DB+J0niELzhA";
    let v = check(base(json!({"password": sshd.password, "host_key_fingerprint": wrong_fp}))).await;
    assert_eq!(v["status"], "invalid", "{v}");
    assert!(v["summary"].as_str().unwrap().contains("host key mismatch"), "{v}");
    assert_eq!(fact(&v, "host_key_fingerprint"), sshd.fingerprint);
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(accepted(), before, "no authentication after a host key mismatch");

    // Trust on first use: the first successful test pins the host key it saw, and the
    // pin binds the password from then on: clearing or changing it needs the password.
    let id = ch.create(json!({"name": "tofu", "type": "ssh", "fields": base(json!({"password": sshd.password}))})).await;
    let v = ch.outcome(&id).await;
    assert_eq!(v["status"], "valid", "{v}");
    let (_, shown) = ch.call(reqwest::Method::GET, &format!("/api/credentials/{id}"), None).await;
    assert_eq!(shown["fields"]["host_key_fingerprint"], sshd.fingerprint.as_str(), "pinned: {shown}");
    for change in [json!(null), json!(wrong_fp)] {
        let (status, body) = ch
            .call(reqwest::Method::PATCH, &format!("/api/credentials/{id}"), Some(json!({"fields": {"host_key_fingerprint": change}})))
            .await;
        assert_eq!(status, 422, "{body}");
        assert_eq!(body["error"]["fields"][0]["field"], "password", "{body}");
    }
    let v = ch.outcome(&id).await;
    assert_eq!(v["status"], "valid", "the pinned credential still works: {v}");

    // Nothing listens: could not tell.
    let mut fields = base(json!({"password": sshd.password}));
    fields["port"] = json!(free_port());
    let v = check(fields).await;
    assert_eq!(v["status"], "indeterminate", "{v}");

    let secrets = [sshd.password.clone(), sshd.key.clone(), sshd.key_passphrase.clone(), sshd.stranger_key.clone()];
    assert_no_secrets(&ch.logs(), &secrets, "the server log");
}

// ---------------------------------------------------------------- PostgreSQL

// The cluster itself (initdb, scram, `admin`, watchdog) is tests/common/postgres.rs.
use common::postgres::Postgres;

fn start_postgres() -> Postgres {
    Postgres::start()
}

/// With `tls_only`: a throwaway certificate, `ssl = on`, and `pg_hba.conf` accepting
/// only `hostssl` connections, so a login proves the session was encrypted.
fn start_postgres_with(tls_only: bool) -> Postgres {
    Postgres::start_with(tls_only)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_dsns_against_postgresql_15() {
    let pg = start_postgres();
    let ch = Credhost::start("");
    let dsn = |pw: &str, port: u16, extra: &str| format!("postgres://admin:{pw}@127.0.0.1:{port}/postgres{extra}");
    let mut n = 0;
    let mut create = async |dsn: String| {
        n += 1;
        ch.create(json!({"name": format!("db{n}"), "type": "db_dsn", "fields": {"dsn": dsn}})).await
    };

    let id = create(dsn(&pg.password, pg.port, "?sslmode=disable")).await;
    let v = ch.outcome(&id).await;
    assert_eq!(v["status"], "valid", "good DSN: {v}");
    assert!(fact(&v, "server_version").starts_with("15"), "{v}");

    let id = create(format!(
        "host=127.0.0.1 port={} user=admin password='{}' dbname=postgres sslmode=prefer",
        pg.port, pg.password
    ))
    .await;
    let v = ch.outcome(&id).await;
    assert_eq!(v["status"], "valid", "key=value DSN, sslmode=prefer: {v}");

    let id = create(dsn("wrong-password-1", pg.port, "")).await;
    let v = ch.outcome(&id).await;
    assert_eq!((v["status"].clone(), v["ok"].clone()), (json!("invalid"), json!(false)), "bad password: {v}");

    let id = create(dsn(&pg.password, free_port(), "")).await;
    let v = ch.outcome(&id).await;
    assert_eq!(v["status"], "indeterminate", "unreachable: {v}");
    assert!(v["summary"].as_str().unwrap().contains("could not reach"), "{v}");

    // A server without TLS: `require` fails (no silent downgrade), `prefer` falls back.
    let id = create(dsn(&pg.password, pg.port, "?sslmode=require")).await;
    let v = ch.outcome(&id).await;
    assert_ne!(v["status"], "valid", "require against a server without TLS: {v}");

    // A server that accepts TLS connections only: `prefer` (libpq's default) and
    // `require` log in, so the password went over TLS; `disable` is refused by the server.
    let tls = start_postgres_with(true);
    for (mode, want) in [("prefer", "valid"), ("require", "valid"), ("disable", "invalid")] {
        let id = create(dsn(&tls.password, tls.port, &format!("?sslmode={mode}"))).await;
        let v = ch.outcome(&id).await;
        assert_eq!(v["status"], want, "sslmode={mode} against a TLS-only server: {v}");
    }
    let id = create(dsn(&tls.password, tls.port, "")).await;
    assert_eq!(ch.outcome(&id).await["status"], "valid", "no sslmode means prefer");
    let id = create(dsn(&tls.password, tls.port, "?sslmode=verify-full")).await;
    let v = ch.outcome(&id).await;
    assert_eq!(v["status"], "indeterminate", "verify-full needs a CA, not supported yet, and says so: {v}");
    assert!(v["summary"].as_str().unwrap().contains("cannot be tested"), "{v}");

    assert_no_secrets(&ch.logs(), &[pg.password.clone(), tls.password.clone()], "the server log");
}

// ---------------------------------------------------------------- egress policy (hostile fixture)

/// A server that records every request and answers per path: `/echo` echoes the
/// request's headers (plain, base64 and URL-encoded), `/hop` redirects to `to`.
async fn recording_server(redirect_to: Option<String>) -> (u16, Arc<AtomicUsize>) {
    let hits = Arc::new(AtomicUsize::new(0));
    let h = hits.clone();
    let app = Router::new().fallback(move |uri: axum::http::Uri, headers: HeaderMap| {
        let h = h.clone();
        let redirect_to = redirect_to.clone();
        async move {
            h.fetch_add(1, Ordering::SeqCst);
            if let (Some(to), "/hop") = (redirect_to, uri.path()) {
                return axum::response::Response::builder()
                    .status(302)
                    .header("location", to)
                    .body(axum::body::Body::empty())
                    .unwrap();
            }
            let leak = headers.get("x-leak").map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned()).unwrap_or_default();
            let body = format!(
                "leak={leak} b64={} url={} host={:?}",
                base64::engine::general_purpose::STANDARD.encode(&leak),
                percent_encoding::utf8_percent_encode(&leak, percent_encoding::NON_ALPHANUMERIC),
                headers.get("host")
            );
            axum::response::Response::builder()
                .status(200)
                .header("x-echo", leak)
                .body(axum::body::Body::from(body))
                .unwrap()
        }
    });
    (serve_router(app).await, hits)
}


/// Runs a sandboxed test on a blocking thread (host capabilities block).
async fn run_test(plugin: Arc<credhost::plugins::Plugin>, runtime: Arc<Runtime>, bound: Bound) -> credhost::plugins::Call<credhost::plugins::TestReport> {
    tokio::task::spawn_blocking(move || runtime.test(&plugin, bound)).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn egress_is_confined_to_allowed_hosts_and_scrubbed() {
    let secret = format!("s3cr3t-{}", random_hex(16));
    let (off_port, off_hits) = recording_server(None).await;
    let off = format!("http://127.0.0.1:{off_port}");
    let (echo_port, echo_hits) = recording_server(Some(format!("{off}/stolen"))).await;
    let echo = format!("http://127.0.0.1:{echo_port}");
    let runtime = Arc::new(Runtime::new(HostServices { allow_private_networks: true }).unwrap());
    let plugin = Arc::new(common::hostile_with_http(&runtime, &[echo.clone()], |_| {}));

    // Exfiltration to a host off the list: refused, audited, nothing arrives.
    let call = run_test(plugin.clone(), runtime.clone(), common::hostile_bound("exfil", &format!("{off}/"), &secret)).await;
    let report = call.result.expect("the plugin reports the refusal");
    assert!(report.summary.starts_with("exfil:Error::Rejected"), "{}", report.summary);
    assert!(call.events.iter().any(|e| e.capability == Capability::Http && !e.allowed), "{:?}", call.events);
    assert_eq!(off_hits.load(Ordering::SeqCst), 0, "the off-list host got nothing");

    // A redirect from an allowed host to one off the list is not followed.
    let call = run_test(plugin.clone(), runtime.clone(), common::hostile_bound("exfil", &format!("{echo}/hop"), &secret)).await;
    let report = call.result.unwrap();
    assert!(report.summary.starts_with("exfil:Error::Rejected"), "{}", report.summary);
    assert!(report.summary.contains("redirect"), "{}", report.summary);
    assert_eq!(off_hits.load(Ordering::SeqCst), 0, "the redirect target got nothing");
    assert!(!call.events.iter().all(|e| e.allowed));

    // An allowed host that echoes the request: the plugin never sees the secret.
    let call = run_test(plugin.clone(), runtime.clone(), common::hostile_bound("echo", &format!("{echo}/echo"), &secret)).await;
    let report = call.result.unwrap();
    assert!(report.summary.starts_with("echo:leak=[REDACTED] b64=[REDACTED] url=[REDACTED]"), "{}", report.summary);
    assert!(!report.summary.contains(&secret));
    assert!(echo_hits.load(Ordering::SeqCst) >= 2);

    // A guest-set Host header is refused before anything is sent.
    let hits = echo_hits.load(Ordering::SeqCst);
    let call = run_test(plugin.clone(), runtime.clone(), common::hostile_bound("host", &format!("{echo}/echo"), &secret)).await;
    let report = call.result.unwrap();
    assert!(report.summary.starts_with("host:Error::Rejected"), "{}", report.summary);
    assert_eq!(echo_hits.load(Ordering::SeqCst), hits);

    // Without `secrets` in its manifest, the plugin cannot read a field.
    let call = run_test(plugin.clone(), runtime.clone(), common::hostile_bound("reveal", &echo, &secret)).await;
    let report = call.result.unwrap();
    assert!(report.summary.starts_with("reveal:Error::Denied"), "{}", report.summary);
    assert!(call.events.iter().any(|e| e.capability == Capability::Secrets && !e.allowed));

    // net.tcp-probe: an allowed endpoint answers, one off the list is refused, a closed
    // port is unreachable.
    let call = run_test(plugin.clone(), runtime.clone(), common::hostile_bound("probe", &echo, &secret)).await;
    assert!(call.result.unwrap().summary.starts_with("probe:ok"));
    let call = run_test(plugin.clone(), runtime.clone(), common::hostile_bound("probe", &off, &secret)).await;
    let report = call.result.unwrap();
    assert!(report.summary.starts_with("probe:Error::Rejected"), "{}", report.summary);
    assert!(call.events.iter().any(|e| e.capability == Capability::Net && !e.allowed));
    let closed = free_port();
    let probe_plugin = Arc::new(common::hostile_with_http(&runtime, &[format!("http://127.0.0.1:{closed}")], |_| {}));
    let call = run_test(probe_plugin, runtime.clone(), common::hostile_bound("probe", &format!("http://127.0.0.1:{closed}"), &secret)).await;
    let report = call.result.unwrap();
    assert!(report.summary.starts_with("probe:Error::Unreachable"), "{}", report.summary);

    // Without the operator's leave, loopback is refused even for an allowed host.
    let strict = Arc::new(Runtime::new(HostServices { allow_private_networks: false }).unwrap());
    let strict_plugin = Arc::new(common::hostile_with_http(&strict, &[echo.clone()], |_| {}));
    let hits = echo_hits.load(Ordering::SeqCst);
    let call = run_test(strict_plugin.clone(), strict.clone(), common::hostile_bound("exfil", &format!("{echo}/"), &secret)).await;
    let report = call.result.unwrap();
    assert!(report.summary.starts_with("exfil:Error::Rejected") && report.summary.contains("private"), "{}", report.summary);
    assert_eq!(echo_hits.load(Ordering::SeqCst), hits);
    // ...and a name that resolves to loopback is refused the same way (checked after DNS).
    let by_name = Arc::new(common::hostile_with_http(&strict, &[format!("http://localhost:{echo_port}")], |_| {}));
    let call = run_test(by_name, strict.clone(), common::hostile_bound("exfil", &format!("http://localhost:{echo_port}/"), &secret)).await;
    let report = call.result.unwrap();
    assert!(report.summary.starts_with("exfil:Error::Rejected") && report.summary.contains("private"), "{}", report.summary);
    assert_eq!(echo_hits.load(Ordering::SeqCst), hits);
    assert_eq!(report.status, TestStatus::Valid, "the fixture always reports valid; the point is the summary");
}
