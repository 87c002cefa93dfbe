//! The OpenAPI document is a contract: a client generated from it by a real generator
//! (openapi-python-client) drives every operation of the real server, and every status the
//! test suite saw a server answer is one the document lists for that operation.
//!
//! Needs `openapi-python-client` (`pip install openapi-python-client`; scripts/test.sh
//! installs it) and `python3`.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;

use common::server::{assert_error_shape, Env, LeakGuard, STATUS_LOG_ENV};
use serde_json::{json, Value};

const GENERATOR: &str = "openapi-python-client";

/// The generator, or a failure that says how to install it (never a silent pass).
fn generator_version() -> String {
    match Command::new(GENERATOR).arg("--version").output() {
        Ok(out) if out.status.success() => String::from_utf8_lossy(&out.stdout).trim().to_string(),
        Ok(out) => panic!("{GENERATOR} --version failed: {}", String::from_utf8_lossy(&out.stderr)),
        Err(e) => panic!(
            "{GENERATOR} not found ({e}): install openapi-python-client with pip (pip install openapi-python-client)"
        ),
    }
}

/// Generates the Python client package `credhost_client` from `spec` into `dir`. A
/// warning means part of the document was not understood: that fails too.
fn generate_client(spec: &Value, dir: &Path) {
    let spec_path = dir.join("openapi.json");
    std::fs::write(&spec_path, serde_json::to_vec_pretty(spec).unwrap()).unwrap();
    // Metrics are text in the OpenMetrics format; to a generic client that is text.
    let config = dir.join("generator.yaml");
    std::fs::write(&config, "content_type_overrides:\n  application/openmetrics-text: text/plain\n").unwrap();
    let out = Command::new(GENERATOR)
        .args(["generate", "--meta", "none", "--overwrite", "--path"])
        .arg(&spec_path)
        .arg("--config")
        .arg(&config)
        .arg("--output-path")
        .arg(dir.join("credhost_client"))
        .output()
        .expect("run openapi-python-client");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{GENERATOR} failed:\n{text}");
    assert!(!text.to_lowercase().contains("warning"), "{GENERATOR} did not understand all of the document:\n{text}");
    assert!(dir.join("credhost_client/api").is_dir(), "no client generated:\n{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_generated_client_drives_every_operation() {
    let version = generator_version();
    // The drive script's upstream (the service a credential stands for) is on loopback.
    let env = Env::new().set("CREDHOST_ALLOW_PRIVATE_NETWORKS", "1");
    let root = env.add_user("root", true);
    let server = env.start(&[]);
    let guard = LeakGuard::new();
    let api = server.api(&guard);
    let spec = api.get("/openapi.json", None).await.expect(200).json();

    let dir = tempfile::tempdir().unwrap();
    generate_client(&spec, dir.path());
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/contract/drive.py");
    let out = Command::new("python3")
        .arg(&script)
        .arg(dir.path())
        .arg(&server.base)
        .arg(&root)
        .output()
        .expect("run python3");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "the generated client ({version}) disagreed with the server:\n{stdout}\n{}\nserver log:\n{}",
        String::from_utf8_lossy(&out.stderr),
        server.stderr()
    );
    let driven = stdout.lines().last().unwrap_or("");
    assert!(driven.starts_with("drove "), "{stdout}");
    // Every operation in the document, and the script says it drove that many.
    let operations = operations(&spec).len();
    assert_eq!(driven, format!("drove {operations} operations"), "{stdout}");
    api.get("/healthz", None).await.expect(200);
}

/// `(method, path template) -> documented statuses`.
fn operations(spec: &Value) -> BTreeMap<(String, String), BTreeSet<String>> {
    let mut out = BTreeMap::new();
    for (path, item) in spec["paths"].as_object().expect("paths") {
        for (method, op) in item.as_object().unwrap() {
            let statuses = op["responses"].as_object().map(|r| r.keys().cloned().collect()).unwrap_or_default();
            out.insert((method.to_uppercase(), path.clone()), statuses);
        }
    }
    out
}

/// Whether `path` is an instance of `template` (`{name}` is one segment; the proxy's
/// `{path}` is the rest of the path, and the proxy's root belongs to it too).
fn matches(template: &str, path: &str) -> bool {
    let t: Vec<&str> = template.split('/').collect();
    let p: Vec<&str> = path.split('/').collect();
    if t.last() == Some(&"{path}") && t.len() >= 2 && t[t.len() - 2] == "proxy" {
        let head = t.len() - 1;
        return p.len() >= head && t[..head].iter().zip(&p[..head]).all(|(t, p)| segment(t, p));
    }
    t.len() == p.len() && t.iter().zip(&p).all(|(t, p)| segment(t, p))
}

fn segment(t: &str, p: &str) -> bool {
    (t.starts_with('{') && !p.is_empty()) || t == p
}

/// Statuses in `log` (`METHOD PATH STATUS` lines) that the document does not list for the
/// operation, as readable lines. The proxy passes the upstream's own status through, so
/// any status is its to give; a request no operation matches may only be 404 or 405. The
/// web console's files (`/`, `/ui/...`) are pages, not API operations: not checked here.
fn undocumented(spec: &Value, log: &str) -> Vec<String> {
    let ops = operations(spec);
    let mut bad = BTreeSet::new();
    for line in log.lines().filter(|l| !l.trim().is_empty()) {
        let mut parts = line.split(' ');
        let (Some(method), Some(path), Some(status)) = (parts.next(), parts.next(), parts.next()) else {
            bad.insert(format!("unreadable line {line:?}"));
            continue;
        };
        if path == "/" || path == "/ui" || path.starts_with("/ui/") {
            continue;
        }
        let method = if method == "HEAD" { "GET" } else { method };
        let is_proxy = |t: &str| t.ends_with("/proxy/{path}");
        let candidates: Vec<(&(String, String), &BTreeSet<String>)> =
            ops.iter().filter(|((_, t), _)| matches(t, path)).collect();
        // A literal segment beats a parameter (`/api/admin/users` vs `/api/admin/{x}`).
        let exact = candidates
            .iter()
            .filter(|((m, t), _)| m == method || is_proxy(t))
            .min_by_key(|((_, t), _)| t.matches('{').count());
        match exact {
            Some(((_, t), _)) if is_proxy(t) => {}
            Some(((m, t), statuses)) => {
                if !statuses.contains(status) {
                    bad.insert(format!("{m} {t} answered {status}; documented: {statuses:?}"));
                }
            }
            None if status == "404" || status == "405" => {}
            None => {
                bad.insert(format!("{method} {path} answered {status} but no operation matches it"));
            }
        }
    }
    bad.into_iter().collect()
}

/// Run by scripts/test.sh after the whole suite, with `CREDHOST_STATUS_LOG` naming the file
/// every test server's request log was appended to (tests/common/server.rs).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "run after the suite by scripts/test.sh (needs CREDHOST_STATUS_LOG)"]
async fn statuses_seen_by_the_suite_are_documented() {
    let path = std::env::var(STATUS_LOG_ENV)
        .unwrap_or_else(|_| panic!("set {STATUS_LOG_ENV} to the status log of a test run (scripts/test.sh does)"));
    let log = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let lines = log.lines().count();
    assert!(lines > 100, "{path} has {lines} lines: was the suite run with {STATUS_LOG_ENV} set?");
    let env = Env::new();
    let server = env.start(&[]);
    let api = server.api(&LeakGuard::new());
    let spec = api.get("/openapi.json", None).await.expect(200).json();
    let bad = undocumented(&spec, &log);
    assert!(bad.is_empty(), "{} undocumented statuses in {lines} answers:\n{}", bad.len(), bad.join("\n"));
}

/// The check above catches what it should: an undocumented status, a route not in the
/// document, while letting through what it should (proxy passthrough, unknown routes).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_check_refuses_undocumented_statuses() {
    let env = Env::new();
    let server = env.start(&[]);
    let api = server.api(&LeakGuard::new());
    let spec = api.get("/openapi.json", None).await.expect(200).json();
    let id = "0190a1b2-0000-7000-8000-000000000000";
    let fine = format!(
        "GET /api/credentials/{id} 404\nPOST /api/credentials 201\nGET /api/credentials/{id}/proxy/v2/x 418\n\
         POST /api/credentials/{id}/proxy 500\nGET /nope 404\nPUT /api/credentials 405\nPOST /api/credentials 401\n\
         GET / 303\nGET /ui/ 200\nGET /ui/app.js 304\n"
    );
    assert_eq!(undocumented(&spec, &fine), Vec::<String>::new());
    let wrong = format!("GET /api/credentials/{id} 418\nPOST /api/credential-types 500\n");
    let bad = undocumented(&spec, &wrong);
    assert_eq!(bad.len(), 2, "{bad:?}");
    assert!(bad[0].contains("418") && bad[1].contains("no operation matches"), "{bad:?}");
}

/// The headers a status promises, and no-op PATCHes, over plain HTTP.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statuses_carry_their_headers_and_a_no_op_patch_writes_nothing() {
    let env = Env::new();
    let alice = env.add_user("alice", false);
    let server = env.start(&[]);
    let guard = LeakGuard::new();
    let api = server.api(&guard);
    api.learn_secret_fields().await;

    // 401 says how to authenticate, with or without a token.
    for token in [None, Some("chst_not-a-real-token")] {
        let r = api.get("/api/credentials", token).await;
        r.expect_error(401, "unauthorized");
        assert_eq!(r.header("www-authenticate"), Some("Bearer"), "{:?}", r.headers);
    }

    // 201 says where the new credential is; the URL finds it.
    let secret = guard.secret(format!("tok-{}", common::server::random_alnum(24)));
    let r = api
        .post(
            "/api/credentials",
            Some(&alice),
            json!({"name": "a", "type": "bearer_token", "fields": {"token": secret}}),
        )
        .await;
    r.expect(201);
    let location = r.header("location").expect("Location").to_string();
    let created = r.json();
    assert_eq!(location, format!("/api/credentials/{}", created["id"].as_str().unwrap()));
    assert_eq!(api.get(&location, Some(&alice)).await.expect(200).json(), created);

    // A PATCH that restates what is stored, or names nothing: no bump, no audit record.
    let audit = |api: common::server::Api, alice: String| async move {
        let v = api.get("/api/audit?limit=1000", Some(&alice)).await.expect(200).json();
        // A list of records, or a page of them.
        v.get("items").cloned().unwrap_or(v).as_array().expect("records").clone()
    };
    let before = audit(api.clone(), alice.clone()).await;
    for body in [json!({}), json!({"name": "a", "description": "", "tags": [], "fields": {}})] {
        let r = api.patch(&location, Some(&alice), body.clone()).await;
        r.expect(200);
        assert_eq!(r.json(), created, "{body}");
    }
    assert_eq!(audit(api.clone(), alice.clone()).await, before, "a no-op PATCH was audited");
    // The same secret again: validated (the stored secrets are read for that, an audited
    // reveal), but nothing is written.
    api.patch(&location, Some(&alice), json!({"fields": {"token": secret}})).await.expect(200);
    let updates = |records: &[Value]| records.iter().filter(|r| r["action"] == "credential.update").count();
    let after = audit(api.clone(), alice.clone()).await;
    assert_eq!(updates(&after), updates(&before), "{after:?}");
    assert_eq!(api.get(&location, Some(&alice)).await.expect(200).json(), created);
    // A real change still bumps and is audited.
    std::thread::sleep(std::time::Duration::from_millis(5));
    let changed = api.patch(&location, Some(&alice), json!({"description": "now"})).await.expect(200).json();
    assert_ne!(changed["updated_at"], created["updated_at"]);
    assert_eq!(updates(&audit(api.clone(), alice.clone()).await), updates(&before) + 1);

    // No test URL: a verdict the caller can show, not a server error; recorded as the last test.
    let t = api.post_empty(&format!("{location}/test"), Some(&alice)).await;
    t.expect(200);
    let v = t.json();
    assert_eq!((v["ok"].clone(), v["status"].clone()), (json!(false), json!("indeterminate")), "{v}");
    assert!(v["summary"].as_str().unwrap().contains("test_url"), "{v}");
    let stored = api.get(&location, Some(&alice)).await.expect(200).json();
    assert_eq!(stored["last_test"]["ok"], false, "{stored}");

    // An unknown route is a 404 in the one shape; the server keeps serving.
    assert_error_shape(api.get("/api/nope", Some(&alice)).await.expect(404));
    api.get("/healthz", None).await.expect(200);
    guard.check("server log", &server.stderr());
}
