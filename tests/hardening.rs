//! Attacks on the real binary by a hostile plugin and by a local user (issue 11):
//! secrets smuggled into clear fields by `validate`, floods of capability calls, work
//! that outlives its request, a poisoned compile cache, loose file permissions and an
//! untrusted plugin directory. Each test performs the attack, shows that it fails with
//! a clear error, that the server keeps serving, and that no secret shows anywhere.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::server::{mode_of, random_alnum, Api, Env, LeakGuard, Server};
use serde_json::{json, Value};

fn hex(s: &str) -> String {
    s.bytes().map(|b| format!("{b:02x}")).collect()
}

struct World {
    env: Env,
    server: Server,
    guard: std::sync::Arc<LeakGuard>,
    alice: String,
    admin: String,
}

impl World {
    /// A server with the hostile plugin installed; `config` is extra `[server]` TOML.
    fn start(server_toml: &str) -> World {
        let env0 = Env::new();
        let plugins = env0.dir.path().join("plugins.d");
        common::install_hostile(&plugins);
        let config = env0.dir.path().join("credhost.toml");
        std::fs::write(&config, format!("[server]\n{server_toml}\n")).unwrap();
        let env = env0
            .set("CREDHOST_PLUGINS_DIR", plugins.to_str().unwrap())
            .set("CREDHOST_ALLOW_PRIVATE_NETWORKS", "true");
        let cfg = config.to_str().unwrap().to_string();
        let alice = env.add_user_in(Some(&cfg), "alice", false);
        let admin = env.add_user_in(Some(&cfg), "ops", true);
        let server = env.start(&["--config", &cfg]);
        World { env, server, guard: LeakGuard::new(), alice, admin }
    }

    fn api(&self) -> Api {
        self.server.api(&self.guard)
    }

    fn config(&self) -> String {
        self.env.dir.path().join("credhost.toml").to_str().unwrap().to_string()
    }
}

async fn hostile(api: &Api, token: &str, name: &str, mode: &str, secret: &str) -> common::server::Resp {
    api.post(
        "/api/credentials",
        Some(token),
        json!({"name": name, "type": "hostile", "fields": {"mode": mode, "secret": secret}}),
    )
    .await
}

async fn names(api: &Api, token: &str) -> Vec<String> {
    let page = api.get("/api/credentials?include_deleted=true", Some(token)).await.json();
    page["items"].as_array().unwrap().iter().map(|c| c["name"].as_str().unwrap().to_string()).collect()
}

async fn audit(api: &Api, token: &str) -> Vec<Value> {
    let v = api.get("/api/audit?limit=1000", Some(token)).await.json();
    match v {
        Value::Array(items) => items,
        other => other["items"].as_array().cloned().unwrap_or_default(),
    }
}

async fn still_serving(api: &Api, token: &str, name: &str, guard: &LeakGuard) {
    let t = Instant::now();
    api.get("/healthz", None).await.expect(200);
    let created = api
        .post(
            "/api/credentials",
            Some(token),
            json!({"name": name, "type": "bearer_token",
                   "fields": {"token": guard.secret(format!("tok_{}", random_alnum(24)))}}),
        )
        .await;
    created.expect(201);
    assert!(t.elapsed() < Duration::from_secs(10), "the server answered slowly: {:?}", t.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn validate_cannot_smuggle_a_secret_into_clear_fields() {
    let w = World::start("");
    let api = w.api();
    let mut secrets = Vec::new();
    for (mode, reason) in [
        // Caught by the encoded-copy check (hex is one of the scrubber's forms).
        ("smuggle-hex", "non-secret field `mode`"),
        // Caught only by the decoy run: no fixed list of encodings has it.
        ("smuggle-reverse", "derived the non-secret field `mode` from a secret value"),
        ("bad-env", "the type does not declare"),
        ("bad-field", "a field the type does not declare"),
    ] {
        let secret = w.guard.secret(format!("Sm-{}", random_alnum(28)));
        let reversed: String = secret.chars().rev().collect();
        let r = hostile(&api, &w.alice, mode, mode, &secret).await;
        let body = r.expect_error(502, "plugin_error");
        let text = body.to_string();
        assert!(text.contains(reason), "{mode}: {text}");
        for form in [&secret, &hex(&secret), &reversed] {
            assert!(!text.contains(form.as_str()), "{mode}: the error carries the secret: {text}");
        }
        secrets.push((secret, reversed));
    }
    // The smuggling modes were refused with the reason named; nothing was stored.
    assert!(names(&api, &w.alice).await.is_empty());

    // A field error message with hex(secret) in it is scrubbed before it leaves.
    let secret = w.guard.secret(format!("Er-{}", random_alnum(28)));
    let r = hostile(&api, &w.alice, "error-leak", "error-leak", &secret).await;
    let text = r.expect_error(422, "invalid_fields").to_string();
    assert!(!text.contains(&hex(&secret)), "{text}");

    // An honest create through the same plugin works: only clear input in clear fields.
    let ok = hostile(&api, &w.alice, "honest", "ok", &w.guard.secret(format!("Ok-{}", random_alnum(28)))).await;
    ok.expect(201);
    assert_eq!(ok.json()["fields"]["mode"], "ok");
    still_serving(&api, &w.alice, "after-smuggling", &w.guard).await;

    // Equal secrets in two credentials do not have equal fingerprints (no guess checking).
    let same = w.guard.secret(format!("tok_{}", random_alnum(30)));
    let mut fps = Vec::new();
    for name in ["fp-a", "fp-b"] {
        let r = api
            .post("/api/credentials", Some(&w.alice), json!({"name": name, "type": "bearer_token", "fields": {"token": same}}))
            .await;
        r.expect(201);
        fps.push(r.json()["fields"]["token"]["fingerprint"].as_str().unwrap().to_string());
    }
    assert_ne!(fps[0], fps[1], "fingerprints are per credential");

    // The database file holds no encoding of any refused secret.
    let db = std::fs::read(w.env.data_dir().join("credhost.redb")).unwrap();
    let db = String::from_utf8_lossy(&db);
    for (secret, reversed) in &secrets {
        for form in [secret, &hex(secret), reversed] {
            assert!(!db.contains(form.as_str()), "the database holds a smuggled secret");
        }
    }
    w.guard.check("server log", &w.server.stderr());
    for (secret, reversed) in &secrets {
        assert!(!w.server.stderr().contains(&hex(secret)) && !w.server.stderr().contains(reversed.as_str()));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_capability_calls_is_bounded() {
    let w = World::start("");
    let api = w.api();
    let t = Instant::now();
    // 100k denied `secrets.reveal` calls in one validate.
    let r = hostile(&api, &w.alice, "flood", "flood", &w.guard.secret(format!("Fl-{}", random_alnum(28)))).await;
    r.expect(201);
    assert!(t.elapsed() < Duration::from_secs(20), "took {:?}", t.elapsed());
    let records = audit(&api, &w.alice).await;
    let plugin_records: Vec<&Value> =
        records.iter().filter(|r| r["action"].as_str().is_some_and(|a| a.starts_with("plugin."))).collect();
    assert!(
        (2..=65).contains(&plugin_records.len()),
        "at most 64 events and one summary per call, got {}",
        plugin_records.len()
    );
    assert!(
        plugin_records.iter().any(|r| r["detail"].as_str().unwrap_or("").contains("more capability calls not recorded")),
        "the summary record says how many were not recorded"
    );
    let log = w.server.stderr();
    let denied_lines = log.lines().filter(|l| l.contains("capability denied")).count();
    assert!(denied_lines <= 64, "{denied_lines} log lines for one call");
    still_serving(&api, &w.alice, "after-flood", &w.guard).await;
    w.guard.check("server log", &log);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_that_times_out_commits_nothing() {
    let w = World::start("request_timeout_secs = 1");
    let api = w.api();
    let t = Instant::now();
    let r = hostile(&api, &w.alice, "slow-one", "slow", &w.guard.secret(format!("Sl-{}", random_alnum(28)))).await;
    r.expect_error(503, "timeout");
    assert_eq!(r.header("retry-after"), Some("1"), "a 503 says when to retry");
    assert!(t.elapsed() < Duration::from_millis(1900), "answered at {:?}", t.elapsed());
    // The plugin finishes its 2 s of work after the answer; the create must not commit.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(!names(&api, &w.alice).await.contains(&"slow-one".to_string()), "a timed-out create was committed");
    assert!(!audit(&api, &w.alice).await.iter().any(|r| r["action"] == "credential.create"));
    still_serving(&api, &w.alice, "after-timeout", &w.guard).await;
    w.guard.check("server log", &w.server.stderr());
}

/// Every compile-cache entry file, by the component sha256 it starts with.
fn cache_entries(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).collect();
    v.sort();
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poisoned_compile_cache_entry_is_never_run() {
    let mut w = World::start("");
    let api = w.api();
    let plugins = api.get("/api/admin/plugins", Some(&w.admin)).await.json();
    let sha_of = |id: &str| {
        plugins["plugins"].as_array().unwrap().iter().find(|p| p["id"] == id).unwrap()["sha256"].as_str().unwrap().to_string()
    };
    let (api_key_sha, hostile_sha) = (sha_of("api_key"), sha_of("hostile"));
    w.server.stop();

    // What the host keeps on disk is private to its user.
    let data = w.env.data_dir();
    let cache = data.join("cache");
    assert_eq!(mode_of(&data) & 0o777, 0o700, "data dir");
    assert_eq!(mode_of(&data.join("credhost.redb")) & 0o777, 0o600, "database");
    assert_eq!(mode_of(&cache) & 0o777, 0o700, "cache dir");
    let entries = cache_entries(&cache);
    let find = |sha: &str| entries.iter().find(|p| p.file_name().unwrap().to_string_lossy().starts_with(sha)).unwrap().clone();
    for e in &entries {
        assert_eq!(mode_of(e) & 0o777, 0o600, "{}", e.display());
    }

    // The attack: the hostile plugin's (validly written) artefact copied over api_key's.
    let (victim, evil) = (find(&api_key_sha), find(&hostile_sha));
    std::fs::copy(&evil, &victim).unwrap();
    let server = w.env.start(&["--config", &w.config()]);
    let api = server.api(&w.guard);
    // API requests wait until start-up has loaded the plugins (issue 13): then the log has it.
    let types = api.get("/api/credential-types", None).await.json();
    let log = server.stderr();
    assert!(log.contains("precompiled cache entry ignored") && log.contains("authentication failed"), "{log}");
    assert_ne!(std::fs::read(&victim).unwrap(), std::fs::read(&evil).unwrap(), "the entry was recompiled");
    // api_key is still api_key: its own validation runs.
    assert!(types.as_array().unwrap().iter().any(|t| t["id"] == "api_key"));
    let r = api
        .post(
            "/api/credentials",
            Some(&w.alice),
            json!({"name": "k", "type": "api_key", "fields": {"key": w.guard.secret(format!("k_{}", random_alnum(24)))}}),
        )
        .await;
    r.expect(201);
    assert_eq!(r.json()["type"], "api_key");
    let bad = api
        .post("/api/credentials", Some(&w.alice), json!({"name": "k2", "type": "api_key", "fields": {"placement": "nowhere"}}))
        .await;
    bad.expect_error(422, "invalid_fields");
    w.guard.check("server log", &server.stderr());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plugins_are_loaded_only_from_a_directory_nobody_else_can_write() {
    use std::os::unix::fs::PermissionsExt;
    let env0 = Env::new();
    let plugins = env0.dir.path().join("plugins.d");
    common::install_hostile(&plugins);
    let env = env0.set("CREDHOST_PLUGINS_DIR", plugins.to_str().unwrap());
    let admin = env.add_user("ops", true);
    let guard = LeakGuard::new();

    let problems = |v: &Value| v["problems"].as_array().unwrap().iter().map(|p| p["message"].to_string()).collect::<Vec<_>>();
    for (mode, expect) in [(0o777, "writable by group or others"), (0o775, "writable by group or others")] {
        std::fs::set_permissions(&plugins, std::fs::Permissions::from_mode(mode)).unwrap();
        let mut server = env.start(&[]);
        let v = server.api(&guard).get("/api/admin/plugins", Some(&admin)).await.json();
        assert!(!v["plugins"].as_array().unwrap().iter().any(|p| p["id"] == "hostile"), "{v}");
        assert!(problems(&v).iter().any(|m| m.contains(expect)), "{v}");
        assert!(v["plugins"].as_array().unwrap().iter().any(|p| p["id"] == "api_key"), "built-ins still load");
        server.stop();
    }
    std::fs::set_permissions(&plugins, std::fs::Permissions::from_mode(0o755)).unwrap();
    // Owned by another user (root can hand it away; others cannot run this part).
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        std::os::unix::fs::chown(&plugins, Some(65534), None).unwrap();
        let mut server = env.start(&[]);
        let v = server.api(&guard).get("/api/admin/plugins", Some(&admin)).await.json();
        assert!(problems(&v).iter().any(|m| m.contains("owned by uid 65534")), "{v}");
        server.stop();
        std::os::unix::fs::chown(&plugins, Some(0), None).unwrap();
    }
    let mut server = env.start(&[]);
    let v = server.api(&guard).get("/api/admin/plugins", Some(&admin)).await.json();
    assert!(v["plugins"].as_array().unwrap().iter().any(|p| p["id"] == "hostile"), "a private dir loads: {v}");
    server.stop();
}
