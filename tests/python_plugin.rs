//! The Python example plugin (examples/python-plugin), built with componentize-py and run
//! by the real `credhost` binary: installed from a plugin dir, validated (good and bad
//! input), tested live against a local HTTP server, used through the proxy; and a Python
//! exception in a plugin becomes a clear plugin error while the host keeps serving.
//!
//! Needs `componentize-py` on PATH (`pip install componentize-py==0.25.1`; scripts/test.sh
//! installs it). Without it the test fails saying so: it never passes silently.
//! Builds are cached in `target/tmp/python-plugin/` by the hash of their inputs, and so is
//! the host's compiled code (under a fixed test master key), so a rerun skips both steps.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, StatusCode};
use axum::routing::get;
use axum::Router;
use common::server::{Env, LeakGuard};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

/// The version CI installs; others are tried but named in failures.
const COMPONENTIZE_PY: &str = "componentize-py==0.25.1";
/// A fixed master key, so the host's compile cache (MAC'd under a subkey) survives reruns.
const TEST_MASTER_KEY: &str = "cHl0aG9uLXBsdWdpbi10ZXN0LWtleS0zMi1ieXRlcyE=";
const GOOD_TOKEN: &str = "ex_python_good_token_0123";

/// A second app on top of the example that raises from `test`, as a buggy plugin would.
/// A second app on top of the example, as a buggy or nosy plugin would be: `test` raises;
/// `validate` with account `escape` tries the WASI escapes Python's stdlib offers (files,
/// directory listing, a socket to `base_url`'s port, the environment) and reports each
/// outcome as a field error on `account`.
const FAULTY_APP: &str = r#"
import os
from urllib.parse import urlsplit

from componentize_py_types import Err
from wit_world.imports import types

import app


def attempt(name, action):
    try:
        action()
        return name + ":succeeded"
    except Exception as e:
        return name + ":" + type(e).__name__


def escapes(base_url):
    def connect():
        import socket
        socket.create_connection(("127.0.0.1", urlsplit(base_url).port), timeout=2).close()
    return "; ".join([
        attempt("file", lambda: open("/etc/passwd").read()),
        attempt("listdir", lambda: os.listdir("/")),
        attempt("socket", connect),
        "env:%d" % len(os.environ),
    ])


class WitWorld(app.WitWorld):
    def describe(self):
        d = app.descriptor()
        d.id = "python_faulty"
        d.display_name = "Python example that raises"
        return d

    def validate(self, input):
        given = {f.name: f.value for f in input}
        if given.get("account") == "escape":
            raise Err([types.FieldError(field="account", message=escapes(given.get("base_url", "")))])
        return super().validate(input)

    def test(self, ctx):
        raise RuntimeError("python_faulty blew up on purpose")
"#;

const FAULTY_MANIFEST: &str = r#"id = "python_faulty"
version = "0.1.0"
capabilities = []
reveal = []
allowed_hosts = []
test_read_only = true
[limits]
memory_mib = 32
"#;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

/// `componentize-py --version`, or a failure that says how to install it.
fn componentize_py_version() -> String {
    let out = Command::new("componentize-py").arg("--version").output();
    match out {
        Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout).trim().to_string(),
        _ => panic!(
            "componentize-py is not installed: install componentize-py with pip (`pip install {COMPONENTIZE_PY}`)"
        ),
    }
}

/// Builds `module` from `paths` against wit/ into `out` unless a build of the same inputs
/// is cached there; returns the component bytes.
fn build(version: &str, paths: &[&Path], module: &str, extra: &str, out: &Path) -> Vec<u8> {
    let wit = repo().join("wit/provider.wit");
    let mut key = Sha256::new();
    key.update(version);
    key.update(module);
    key.update(extra);
    key.update(std::fs::read(&wit).unwrap());
    for dir in paths {
        let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "py"))
            .collect();
        files.sort();
        for f in files {
            key.update(f.file_name().unwrap().as_encoded_bytes());
            key.update(std::fs::read(&f).unwrap());
        }
    }
    let key: String = key.finalize().iter().take(12).map(|b| format!("{b:02x}")).collect();
    let wasm = out.join(format!("{module}-{key}.wasm"));
    if let Ok(bytes) = std::fs::read(&wasm) {
        return bytes;
    }
    let partial = out.join(format!("{module}-{key}.partial"));
    let mut cmd = Command::new("componentize-py");
    cmd.arg("-d").arg(repo().join("wit")).args(["-w", "credential-type", "componentize"]);
    for p in paths {
        cmd.arg("-p").arg(p);
    }
    let started = Instant::now();
    let output = cmd.arg(module).arg("-o").arg(&partial).output().expect("run componentize-py");
    assert!(
        output.status.success(),
        "componentize-py failed for {module}:\n{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    // Older builds of this module are stale now: keep one per module (they are ~18 MB).
    for e in std::fs::read_dir(out).unwrap() {
        let path = e.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if name.starts_with(&format!("{module}-")) && name.ends_with(".wasm") {
            let _ = std::fs::remove_file(&path);
        }
    }
    std::fs::rename(&partial, &wasm).unwrap();
    eprintln!("built {module} with {version} in {:?}", started.elapsed());
    std::fs::read(&wasm).unwrap()
}

fn install(dir: &Path, name: &str, wasm: &[u8], manifest: &str) {
    use std::os::unix::fs::PermissionsExt;
    let files = [
        (format!("{name}.wasm"), wasm.to_vec()),
        (format!("{name}.toml"), format!("sha256 = \"{}\"\n{manifest}", sha256_hex(wasm)).into_bytes()),
    ];
    for (file, bytes) in files {
        let path = dir.join(file);
        std::fs::write(&path, bytes).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    }
}

/// `GET /v1/me`: 200 with the account for the good token, 401 otherwise.
async fn service() -> u16 {
    let app = Router::new().route(
        "/v1/me",
        get(|h: HeaderMap| async move {
            let good =
                h.get("authorization").is_some_and(|v| v.as_bytes() == format!("Bearer {GOOD_TOKEN}").as_bytes());
            if good {
                (StatusCode::OK, json!({"account": "acme", "plan": "pro"}).to_string())
            } else {
                (StatusCode::UNAUTHORIZED, r#"{"error":"bad token"}"#.to_string())
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    port
}

fn field_names(error: &Value) -> Vec<String> {
    error["fields"].as_array().unwrap().iter().map(|f| f["field"].as_str().unwrap().to_string()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_plugin_validates_tests_and_fails_cleanly() {
    let version = componentize_py_version();
    let cache = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("python-plugin");
    std::fs::create_dir_all(&cache).unwrap();

    let example = repo().join("examples/python-plugin");
    let faulty_dir = cache.join("faulty-src");
    std::fs::create_dir_all(&faulty_dir).unwrap();
    std::fs::write(faulty_dir.join("faulty_app.py"), FAULTY_APP).unwrap();
    // Both builds at once: each is mostly one single-threaded componentize-py run.
    let (good, faulty) = std::thread::scope(|s| {
        let good = s.spawn(|| build(&version, &[&example], "app", "", &cache));
        let faulty = s.spawn(|| build(&version, &[&example, &faulty_dir], "faulty_app", FAULTY_APP, &cache));
        (good.join().unwrap(), faulty.join().unwrap())
    });

    let env0 = Env::with_key(TEST_MASTER_KEY);
    let plugins = env0.dir.path().join("plugins.d");
    std::fs::create_dir_all(&plugins).unwrap();
    let manifest = std::fs::read_to_string(example.join("manifest.toml")).unwrap();
    install(&plugins, "python_example", &good, &manifest);
    install(&plugins, "python_faulty", &faulty, FAULTY_MANIFEST);
    let config = env0.dir.path().join("credhost.toml");
    std::fs::write(&config, format!("[plugins]\ncache_dir = {:?}\n", cache.join("compiled").to_str().unwrap()))
        .unwrap();
    let env = env0
        .set("CREDHOST_CONFIG", config.to_str().unwrap())
        .set("CREDHOST_PLUGINS_DIR", plugins.to_str().unwrap())
        .set("CREDHOST_ALLOW_PRIVATE_NETWORKS", "true");
    // `users add` loads the plugins too (and fills the compile cache): time from here.
    let started = Instant::now();
    let user = env.add_user("alice", false);
    let server = env.start(&[]);
    let guard = LeakGuard::new();
    let api = server.api(&guard);
    // The server listens first and loads plugins after. Compiling two ~18 MB components
    // takes tens of seconds with a cold cache, well under a second from the cache.
    while api.get("/readyz", None).await.status != 200 {
        assert!(started.elapsed() < Duration::from_secs(300), "not ready after 300 s:\n{}", server.stderr());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    eprintln!("ready with both Python plugins in {:?}", started.elapsed());
    api.learn_secret_fields().await;

    let types = api.get("/api/credential-types", None).await.json();
    let listed = |id: &str| types.as_array().unwrap().iter().any(|t| t["id"] == id);
    assert!(listed("python_example") && listed("python_faulty"), "{types}\n{}", server.stderr());

    // Bad input: 422 naming every bad field, nothing stored.
    let bad = guard.secret("not_a_valid_token");
    let err = api
        .post(
            "/api/credentials",
            Some(&user),
            json!({"name": "py", "type": "python_example",
                   "fields": {"account": "Acme Corp", "api_token": bad, "base_url": "ftp://x", "colour": "red"}}),
        )
        .await
        .expect_error(422, "invalid_fields");
    assert_eq!(field_names(&err["error"]), ["account", "api_token", "base_url", "colour"], "{err}");
    let missing =
        api.post("/api/credentials", Some(&user), json!({"name": "py", "type": "python_example", "fields": {}})).await;
    assert_eq!(field_names(&missing.expect_error(422, "invalid_fields")["error"]), ["account", "api_token"]);
    assert_eq!(api.get("/api/credentials", Some(&user)).await.json().to_string().matches("python_example").count(), 0);

    // Good input, normalised by the plugin (trimmed, default filled in).
    let port = service().await;
    let base = format!("http://127.0.0.1:{port}");
    let token = guard.secret(GOOD_TOKEN);
    let created = api
        .post(
            "/api/credentials",
            Some(&user),
            json!({"name": "py", "type": "python_example",
                   "fields": {"account": " acme ", "api_token": token, "base_url": base}}),
        )
        .await;
    created.expect(201);
    let created = created.json();
    assert_eq!(created["fields"]["account"], "acme");
    let id = created["id"].as_str().unwrap().to_string();
    let checked = api.post_empty(&format!("/api/credentials/{id}/validate"), Some(&user)).await;
    assert_eq!(checked.json()["valid"], true, "{}", checked.json());

    // Live test against the local service: the host filled in the token.
    let tested = api.post_empty(&format!("/api/credentials/{id}/test"), Some(&user)).await;
    tested.expect(200);
    let tested = tested.json();
    assert_eq!(tested["status"], "valid", "{tested}");
    assert_eq!(tested["facts"]["account"], "acme", "{tested}");

    // Used through the proxy with the plan from the Python `authenticate`.
    let proxied = api.get(&format!("/api/credentials/{id}/proxy/v1/me"), Some(&user)).await;
    proxied.expect(200);
    assert_eq!(proxied.json()["account"], "acme");

    // A wrong token: the service says 401, the plugin says invalid.
    let wrong = guard.secret("ex_python_wrong_token_99");
    let other = api
        .post(
            "/api/credentials",
            Some(&user),
            json!({"name": "py-wrong", "type": "python_example",
                   "fields": {"account": "acme", "api_token": wrong, "base_url": base}}),
        )
        .await
        .json();
    let tested = api.post_empty(&format!("/api/credentials/{}/test", other["id"].as_str().unwrap()), Some(&user)).await;
    assert_eq!(tested.json()["status"], "invalid", "{}", tested.json());

    // A Python exception: a clear plugin error naming the plugin, not a hung or dead host.
    let faulty = api
        .post(
            "/api/credentials",
            Some(&user),
            json!({"name": "faulty", "type": "python_faulty", "fields": {"account": "acme", "api_token": GOOD_TOKEN}}),
        )
        .await;
    faulty.expect(201);
    let faulty_id = faulty.json()["id"].as_str().unwrap().to_string();
    let err = api
        .post_empty(&format!("/api/credentials/{faulty_id}/test"), Some(&user))
        .await
        .expect_error(502, "plugin_error");
    let message = err["error"]["message"].as_str().unwrap();
    assert!(message.contains("python_faulty") && message.contains("crashed"), "{message}");
    // The traceback reaches the server log through the plugin's stderr.
    let log = server.stderr();
    assert!(log.contains("RuntimeError: python_faulty blew up on purpose"), "no traceback in the log:\n{log}");

    // The sandbox holds for Python's stdlib too: no files, no sockets, no environment.
    let probed = api
        .post(
            "/api/credentials",
            Some(&user),
            json!({"name": "nosy", "type": "python_faulty",
                   "fields": {"account": "escape", "api_token": GOOD_TOKEN, "base_url": base}}),
        )
        .await
        .expect_error(422, "invalid_fields");
    let report = probed["error"]["fields"][0]["message"].as_str().unwrap().to_string();
    for (attempt, outcome) in report.split("; ").filter_map(|a| a.split_once(':')) {
        match attempt {
            "env" => assert_eq!(outcome, "0", "{report}"),
            _ => assert_ne!(outcome, "succeeded", "{attempt} escaped the sandbox: {report}"),
        }
    }
    assert_eq!(report.split("; ").count(), 4, "{report}");
    eprintln!("escape attempts from Python: {report}");

    // The host keeps serving, the good plugin included.
    let again = api.post_empty(&format!("/api/credentials/{id}/test"), Some(&user)).await;
    assert_eq!(again.json()["status"], "valid", "{}", again.json());
    api.get("/healthz", None).await.expect(200);
    guard.check("server log", &server.stderr());
}
