//! Fixtures for tests that drive the real `credhost` binary over HTTP: a per-test
//! environment (data dir, master key), CLI calls, a server process whose address is read
//! from its stdout, and an HTTP client that checks every response for leaked secrets.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::Value;

/// The binary under test.
pub fn binary() -> &'static str {
    env!("CARGO_BIN_EXE_credhost")
}

/// `n` random bytes as lowercase hex.
pub fn random_hex(n: usize) -> String {
    let mut b = vec![0u8; n];
    getrandom::fill(&mut b).expect("random bytes");
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// `len` random ASCII letters and digits (distinctive enough to search for in any text).
pub fn random_alnum(len: usize) -> String {
    const SET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut b = vec![0u8; len];
    getrandom::fill(&mut b).expect("random bytes");
    b.iter().map(|x| SET[usize::from(*x) % SET.len()] as char).collect()
}

pub use super::postgres::Postgres;

/// The variable that makes [`Env::new`] / [`Env::with_key`] use PostgreSQL storage
/// (`CREDHOST_TEST_STORAGE=postgres`), so the API suites run unchanged against it.
pub const TEST_STORAGE_ENV: &str = "CREDHOST_TEST_STORAGE";

/// Whether `CREDHOST_TEST_STORAGE=postgres` is set (any other value: redb).
pub fn test_storage_is_postgres() -> bool {
    std::env::var(TEST_STORAGE_ENV).is_ok_and(|v| v.eq_ignore_ascii_case("postgres"))
}

/// Where a test's server keeps its data, and the environment it runs with.
pub struct Env {
    pub dir: tempfile::TempDir,
    /// Working directory of every process (the dev-mode default data dir is relative to it).
    pub cwd: PathBuf,
    /// `CREDHOST_*` variables set for every process; nothing else of the kind is inherited.
    pub vars: Vec<(String, String)>,
}

impl Env {
    /// A fresh data dir and a random master key; the server listens on a free port.
    pub fn new() -> Env {
        let mut key = [0u8; 32];
        getrandom::fill(&mut key).expect("random key");
        let key = base64::engine::general_purpose::STANDARD.encode(key);
        Env::with_key(&key)
    }

    /// A fresh data dir with the given base64 master key. With
    /// `CREDHOST_TEST_STORAGE=postgres` in the test's environment, the storage is a fresh
    /// database of the process-wide PostgreSQL ([`Postgres::shared`]) instead of redb.
    pub fn with_key(key: &str) -> Env {
        let env = Env::redb_with_key(key);
        if test_storage_is_postgres() {
            return env.on_fresh_database(Postgres::shared());
        }
        env
    }

    /// A fresh data dir with the given master key and redb storage, whatever
    /// `CREDHOST_TEST_STORAGE` says.
    pub fn redb_with_key(key: &str) -> Env {
        let env = Env::bare();
        let data = env.dir.path().join("data");
        env.set("CREDHOST_LISTEN", "127.0.0.1:0")
            .set("CREDHOST_DATA_DIR", data.to_str().unwrap())
            .set("CREDHOST_MASTER_KEY", key)
    }

    /// Like [`Env::new`], with storage in a fresh database of `pg`.
    pub fn postgres(pg: &Postgres) -> Env {
        let mut key = [0u8; 32];
        getrandom::fill(&mut key).expect("random key");
        let key = base64::engine::general_purpose::STANDARD.encode(key);
        Env::redb_with_key(&key).on_fresh_database(pg)
    }

    /// This env with storage in a fresh database of `pg`.
    pub fn on_fresh_database(self, pg: &Postgres) -> Env {
        let (_, url) = pg.fresh_database();
        self.on_database(pg, &url)
    }

    /// This env with storage in the PostgreSQL database at `url` (no password in it).
    pub fn on_database(self, pg: &Postgres, url: &str) -> Env {
        self.set("CREDHOST_STORAGE_BACKEND", "postgres")
            .set("CREDHOST_POSTGRES_URL", url)
            .set("CREDHOST_POSTGRES_PASSWORD", pg.password())
    }

    /// Another replica of this env's deployment: its own temp dir, data dir and working
    /// directory, every `CREDHOST_*` variable the same (key, storage) except the data dir.
    pub fn replica(&self) -> Env {
        let mut env = Env::bare();
        let data = env.dir.path().join("data");
        env.vars = self.vars.clone();
        env.set("CREDHOST_DATA_DIR", data.to_str().unwrap())
    }

    /// A temp dir as working directory and no `CREDHOST_*` variables at all.
    pub fn bare() -> Env {
        let dir = tempfile::tempdir().expect("temp dir");
        let cwd = dir.path().join("cwd");
        std::fs::create_dir_all(&cwd).unwrap();
        Env { dir, cwd, vars: Vec::new() }
    }

    /// Sets (or replaces) one variable.
    pub fn set(mut self, name: &str, value: &str) -> Env {
        self.vars.retain(|(k, _)| k != name);
        self.vars.push((name.into(), value.into()));
        self
    }

    pub fn var(&self, name: &str) -> Option<&str> {
        self.vars.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }

    pub fn data_dir(&self) -> PathBuf {
        self.var("CREDHOST_DATA_DIR").map(PathBuf::from).unwrap_or_else(|| self.cwd.join("data"))
    }

    /// A command for the binary with exactly this environment's `CREDHOST_*` variables.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(binary());
        cmd.args(args).current_dir(&self.cwd);
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("CREDHOST_") {
                cmd.env_remove(k);
            }
        }
        cmd.env("NO_COLOR", "1");
        for (k, v) in &self.vars {
            cmd.env(k, v);
        }
        cmd
    }

    /// Runs a CLI command to completion.
    pub fn cli(&self, args: &[&str]) -> Output {
        self.command(args).stdin(Stdio::null()).output().expect("run credhost")
    }

    /// `credhost users add NAME [--admin]`; returns the token (the last stdout line).
    pub fn add_user(&self, name: &str, admin: bool) -> String {
        self.add_user_in(None, name, admin)
    }

    /// `credhost [--config FILE] users add NAME [--admin]`; returns the token.
    pub fn add_user_in(&self, config: Option<&str>, name: &str, admin: bool) -> String {
        let mut args = Vec::new();
        if let Some(c) = config {
            args.extend(["--config", c]);
        }
        args.extend(["users", "add", name]);
        if admin {
            args.push("--admin");
        }
        let out = self.cli(&args);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "users add {name} failed: {}\n{stdout}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        let token = stdout.lines().last().expect("token line").trim().to_string();
        assert!(token.starts_with("chst_") && token.len() > 20, "not a token: {token:?}");
        token
    }

    /// Starts `credhost serve` with `args` appended and waits for its `listening on` line.
    pub fn start(&self, extra: &[&str]) -> Server {
        let started = self.spawn(extra);
        let mut server = started;
        server.wait_listening();
        server
    }

    /// Starts `credhost serve` without waiting for it.
    pub fn spawn(&self, extra: &[&str]) -> Server {
        let n = NEXT_LOG.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let stderr_path = self.dir.path().join(format!("server-{n}.stderr"));
        let stderr = std::fs::File::create(&stderr_path).expect("stderr file");
        let mut args = vec!["serve"];
        args.extend_from_slice(extra);
        let mut child = self
            .command(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(stderr))
            .spawn()
            .expect("spawn credhost serve");
        let stdout = child.stdout.take().unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = mpsc::channel();
        let sink = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                sink.lock().unwrap().push(line.clone());
                let _ = tx.send(line);
            }
        });
        // Open now: the log outlives the env's temp dir (see `record_statuses`).
        let stderr_log = std::fs::File::open(&stderr_path).ok();
        Server { child: Some(child), base: String::new(), stdout: lines, lines_rx: rx, stderr_path, stderr_log }
    }
}

static NEXT_LOG: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// A running `credhost serve`. Killed on drop if still running.
pub struct Server {
    child: Option<Child>,
    /// `http://127.0.0.1:PORT`
    pub base: String,
    stdout: Arc<Mutex<Vec<String>>>,
    lines_rx: mpsc::Receiver<String>,
    stderr_path: PathBuf,
    stderr_log: Option<std::fs::File>,
}

/// How long a server may take to print its `listening on` line.
const START_TIMEOUT: Duration = Duration::from_secs(90);

impl Server {
    fn wait_listening(&mut self) {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines_rx.recv_timeout(left.min(Duration::from_millis(200))) {
                Ok(line) => {
                    if let Some(addr) = line.strip_prefix("listening on ") {
                        assert!(addr.starts_with("http://127.0.0.1:"), "unexpected address line {line:?}");
                        self.base = addr.trim().to_string();
                        return;
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                        panic!("server exited before listening ({status}); stderr:\n{}", self.stderr());
                    }
                    if Instant::now() >= deadline {
                        panic!(
                            "server did not print `listening on` within {START_TIMEOUT:?}; stderr:\n{}",
                            self.stderr()
                        );
                    }
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    let status = self.wait_exit(Duration::from_secs(10));
                    panic!("server closed stdout before listening ({status:?}); stderr:\n{}", self.stderr());
                }
            }
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// Everything the server printed on stdout so far.
    pub fn stdout(&self) -> Vec<String> {
        self.stdout.lock().unwrap().clone()
    }

    /// Everything the server wrote to stderr so far (its logs).
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    /// Sends a signal (`TERM`, `INT`) with kill(1).
    pub fn signal(&self, name: &str) {
        let ok = Command::new("kill").arg(format!("-{name}")).arg(self.pid().to_string()).status().expect("run kill");
        assert!(ok.success(), "kill -{name} failed");
    }

    /// Waits for the process to exit; `None` if it is still running after `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        let child = self.child.as_mut()?;
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM, then the exit status (panics if it does not exit within 20 s).
    pub fn stop(&mut self) -> ExitStatus {
        self.signal("TERM");
        let status = self.wait_exit(Duration::from_secs(20));
        status.unwrap_or_else(|| panic!("server ignored SIGTERM for 20 s; stderr:\n{}", self.stderr()))
    }

    /// A client for this server that checks every response against `guard`.
    pub fn api(&self, guard: &Arc<LeakGuard>) -> Api {
        // The server closes a kept-alive connection that sends no request within its header
        // timeout (10 s by default); drop idle connections sooner than that, so a request after a
        // long wait never races the server's close.
        let http = reqwest::Client::builder().pool_idle_timeout(Duration::from_secs(5)).build().expect("client");
        Api { http, base: self.base.clone(), guard: guard.clone() }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            if child.try_wait().ok().flatten().is_none() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        self.record_statuses();
    }
}

/// File to which every server started by the tests appends `METHOD PATH STATUS` for each
/// request it answered (scripts/test.sh sets it; tests/api_contract.rs checks the lines
/// against the OpenAPI document).
pub const STATUS_LOG_ENV: &str = "CREDHOST_STATUS_LOG";

impl Server {
    /// Appends the server's own request log lines (`credhost::request`, one per answer,
    /// whoever sent the request) to the status log, if one is configured.
    fn record_statuses(&mut self) {
        use std::io::{Read, Write};
        let (Some(target), Some(log)) = (std::env::var_os(STATUS_LOG_ENV), self.stderr_log.as_mut()) else { return };
        let mut text = String::new();
        if log.read_to_string(&mut text).is_err() {
            return;
        }
        let mut out = String::new();
        for line in text.lines().filter(|l| l.contains("credhost::request")) {
            // Text logs (`key=value`) or JSON logs (`"fields": {...}`).
            let json: Option<Value> = serde_json::from_str(line).ok();
            let field = |name: &str| match &json {
                Some(v) => v["fields"][name]
                    .as_str()
                    .map(String::from)
                    .or_else(|| v["fields"][name].as_u64().map(|n| n.to_string())),
                None => {
                    let rest = line.split_once(&format!(" {name}="))?.1;
                    Some(rest.split(' ').next()?.trim_matches('"').to_string())
                }
            };
            if let (Some(m), Some(p), Some(s)) = (field("method"), field("path"), field("status")) {
                out.push_str(&format!("{m} {p} {s}\n"));
            }
        }
        // One write per server: appends from parallel tests do not interleave.
        if !out.is_empty() {
            let file = std::fs::OpenOptions::new().create(true).append(true).open(&target);
            let _ = file.and_then(|mut f| f.write_all(out.as_bytes()));
        }
    }
}

/// Every secret value a test sent, and a check that no response or log shows one.
#[derive(Default)]
pub struct LeakGuard {
    secrets: Mutex<BTreeSet<String>>,
    /// Names of fields that are secret in some type (`GET /api/credential-types`).
    secret_fields: Mutex<BTreeSet<String>>,
    checked: std::sync::atomic::AtomicUsize,
}

/// The shortest secret the guard accepts: shorter strings match too much by chance.
pub const MIN_SECRET_LEN: usize = 12;

impl LeakGuard {
    pub fn new() -> Arc<LeakGuard> {
        Arc::new(LeakGuard::default())
    }

    /// Remembers a value that must never be shown; returns it.
    pub fn secret(&self, value: impl Into<String>) -> String {
        let value = value.into();
        assert!(value.len() >= MIN_SECRET_LEN, "test secrets must be at least {MIN_SECRET_LEN} characters: {value:?}");
        self.secrets.lock().unwrap().insert(value.clone());
        value
    }

    /// Field names whose values are registered as secrets whenever a request body sends them.
    pub fn secret_field_names(&self, names: impl IntoIterator<Item = String>) {
        self.secret_fields.lock().unwrap().extend(names);
    }

    /// Registers the values of secret fields in a request body (`{"fields": {...}}`).
    pub fn scan_request(&self, body: &Value) {
        let Some(fields) = body.get("fields").and_then(Value::as_object) else { return };
        let names = self.secret_fields.lock().unwrap();
        for (name, value) in fields {
            if let (true, Some(v)) = (names.contains(name), value.as_str()) {
                if v.len() >= MIN_SECRET_LEN {
                    self.secrets.lock().unwrap().insert(v.to_string());
                }
            }
        }
    }

    /// Panics if `text` contains any registered secret.
    pub fn check(&self, what: &str, text: &str) {
        let hit = self.secrets.lock().unwrap().iter().find(|s| text.contains(s.as_str())).cloned();
        if let Some(s) = hit {
            panic!("{what} contains a secret value that was sent ({}…):\n{text}", &s[..6]);
        }
        self.checked.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    pub fn secrets(&self) -> usize {
        self.secrets.lock().unwrap().len()
    }

    /// How many texts have been checked.
    pub fn checked(&self) -> usize {
        self.checked.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// A request body.
pub enum Body {
    None,
    Json(Value),
    /// Raw bytes with an optional content type.
    Raw(Option<&'static str>, Vec<u8>),
}

/// One response, read whole.
#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub text: String,
}

impl Resp {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.text).unwrap_or_else(|e| panic!("response is not JSON ({e}): {}", self.text))
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// Asserts the status.
    #[track_caller]
    pub fn expect(&self, status: u16) -> &Resp {
        assert_eq!(self.status, status, "unexpected status; body: {}", self.text);
        self
    }

    /// Asserts the status and that the body is exactly the one error shape
    /// `{"error": {"code": <code>, "message": <non-empty>, "fields"?: [...]}}`.
    #[track_caller]
    pub fn expect_error(&self, status: u16, code: &str) -> Value {
        self.expect(status);
        assert_error_shape(self);
        let v = self.json();
        assert_eq!(v["error"]["code"], code, "error code; body: {}", self.text);
        v
    }
}

/// The one error shape, with a JSON content type.
#[track_caller]
pub fn assert_error_shape(r: &Resp) {
    let ct = r.header("content-type").unwrap_or("");
    assert!(ct.starts_with("application/json"), "error content-type {ct:?}; status {} body {:?}", r.status, r.text);
    let v = r.json();
    let obj = v.as_object().expect("object");
    assert_eq!(obj.len(), 1, "only `error` at the top: {}", r.text);
    let e = v["error"].as_object().unwrap_or_else(|| panic!("no error object: {}", r.text));
    assert!(e["code"].as_str().is_some_and(|c| !c.is_empty()), "error.code: {}", r.text);
    assert!(e["message"].as_str().is_some_and(|c| !c.is_empty()), "error.message: {}", r.text);
    for k in e.keys() {
        assert!(["code", "message", "fields"].contains(&k.as_str()), "unexpected member error.{k}: {}", r.text);
    }
    if let Some(fields) = e.get("fields") {
        for f in fields.as_array().expect("fields is an array") {
            assert!(f["field"].as_str().is_some() && f["message"].as_str().is_some(), "field error shape: {f}");
        }
    }
}

/// An HTTP client bound to one server; every response is checked for leaked secrets and
/// for an `x-request-id`.
#[derive(Clone)]
pub struct Api {
    pub http: reqwest::Client,
    pub base: String,
    pub guard: Arc<LeakGuard>,
}

impl Api {
    /// Learns which field names are secret from the server's type descriptors, so the
    /// values of those fields in any later request body are remembered as secrets.
    pub async fn learn_secret_fields(&self) -> Value {
        let types = self.get("/api/credential-types", None).await;
        types.expect(200);
        let v = types.json();
        let mut names = Vec::new();
        for t in v.as_array().expect("types array") {
            for f in t["fields"].as_array().expect("fields") {
                if f["secret"] == true {
                    names.push(f["name"].as_str().unwrap().to_string());
                }
            }
        }
        assert!(!names.is_empty(), "no secret fields in any type: {v}");
        self.guard.secret_field_names(names);
        v
    }

    pub async fn request(&self, method: reqwest::Method, path: &str, token: Option<&str>, body: Body) -> Resp {
        let mut req = self.http.request(method.clone(), format!("{}{path}", self.base));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        req = match body {
            Body::None => req,
            Body::Json(v) => req.json(&v),
            Body::Raw(ct, bytes) => {
                let req = req.body(bytes);
                match ct {
                    Some(ct) => req.header("content-type", ct),
                    None => req,
                }
            }
        };
        self.send(method, path, req).await
    }

    /// Sends a request built by the caller (odd headers, say). Secret fields in its body
    /// are registered first; the response is checked like every other.
    pub async fn send(&self, method: reqwest::Method, path: &str, req: reqwest::RequestBuilder) -> Resp {
        let req = req.build().unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        if let Some(bytes) = req.body().and_then(|b| b.as_bytes()) {
            if let Ok(v) = serde_json::from_slice::<Value>(bytes) {
                self.guard.scan_request(&v);
            }
        }
        let resp = self.http.execute(req).await.unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let text = resp.text().await.unwrap_or_else(|e| panic!("{method} {path}: reading body: {e}"));
        let what = format!("response to {method} {path} ({status})");
        self.guard.check(&what, &text);
        for (name, value) in &headers {
            self.guard.check(&format!("header {name} of the {what}"), &String::from_utf8_lossy(value.as_bytes()));
        }
        assert!(headers.get("x-request-id").is_some(), "{what} has no x-request-id");
        Resp { status, headers, text }
    }

    pub async fn get(&self, path: &str, token: Option<&str>) -> Resp {
        self.request(reqwest::Method::GET, path, token, Body::None).await
    }

    pub async fn post(&self, path: &str, token: Option<&str>, body: Value) -> Resp {
        self.request(reqwest::Method::POST, path, token, Body::Json(body)).await
    }

    pub async fn post_empty(&self, path: &str, token: Option<&str>) -> Resp {
        self.request(reqwest::Method::POST, path, token, Body::None).await
    }

    pub async fn patch(&self, path: &str, token: Option<&str>, body: Value) -> Resp {
        self.request(reqwest::Method::PATCH, path, token, Body::Json(body)).await
    }

    pub async fn delete(&self, path: &str, token: Option<&str>) -> Resp {
        self.request(reqwest::Method::DELETE, path, token, Body::None).await
    }
}

/// Reads a file's Unix mode bits.
pub fn mode_of(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())).permissions().mode() & 0o777
}

/// One server with an admin (`root`) and two users (`alice`, `bob`), their default tokens,
/// and a leak-checking client.
pub struct World {
    pub env: Env,
    pub server: Server,
    pub api: Api,
    pub guard: Arc<LeakGuard>,
    pub root: String,
    pub alice: String,
    pub bob: String,
}

pub async fn world() -> World {
    let env = Env::new();
    // Users first: the CLI cannot open the database while the server runs.
    let root = env.add_user("root", true);
    let alice = env.add_user("alice", false);
    let bob = env.add_user("bob", false);
    let server = env.start(&[]);
    let guard = LeakGuard::new();
    let api = server.api(&guard);
    api.learn_secret_fields().await;
    World { env, server, api, guard, root, alice, bob }
}

/// Creates a credential (expecting 201) and returns its view.
pub async fn create(api: &Api, token: &str, body: Value) -> Value {
    let r = api.post("/api/credentials", Some(token), body).await;
    r.expect(201);
    r.json()
}

/// The `id` of a credential view.
pub fn id_of(v: &Value) -> String {
    v["id"].as_str().expect("id").to_string()
}

/// Names of a listing page.
pub fn names(page: &Value) -> Vec<String> {
    page["items"].as_array().expect("items").iter().map(|c| c["name"].as_str().unwrap().to_string()).collect()
}
