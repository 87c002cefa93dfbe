//! Start-up: the server listens before plugins compile (`/healthz` at once, `/readyz` 503
//! until loaded, API requests wait); dev mode creates its admin and prints the token only
//! once the port is bound; a failed bind writes nothing; a failure while loading stops
//! the server with an error. And `/metrics`: the kept crate's exposition, by route.

mod common;

use std::time::{Duration, Instant};

use common::server::{Env, LeakGuard};
use serde_json::json;

/// A cold start (empty compile cache): `/healthz` answers while the built-ins compile,
/// `/readyz` says not ready until they are loaded, and an API request sent at once
/// waits and is answered normally.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listens_at_once_and_is_ready_once_plugins_are_loaded() {
    let env = Env::new();
    let guard = LeakGuard::new();
    let server = env.start(&[]);
    let api = server.api(&guard);
    // Sent right after `listening on`, before anything else could warm the cache.
    let (health, ready, types) = tokio::join!(
        api.get("/healthz", None),
        api.get("/readyz", None),
        api.get("/api/credential-types", None)
    );
    health.expect(200);
    ready.expect(503);
    assert_eq!(ready.json()["ready"], false, "{}", ready.text);
    assert_eq!(ready.json()["starting"], "loading plugins", "{}", ready.text);
    // The API request waited for the catalog instead of seeing it half loaded.
    types.expect(200);
    assert_eq!(types.json().as_array().unwrap().len(), 6, "{}", types.text);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let r = api.get("/readyz", None).await;
        if r.status == 200 {
            assert_eq!(r.json()["ready"], true);
            assert_eq!(r.json()["types"], 6);
            break;
        }
        assert!(Instant::now() < deadline, "never ready: {}", r.text);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(server.stderr().contains("credhost ready"), "{}", server.stderr());
}

/// Dev mode: a port already taken fails the start (exit non-zero) before anything is
/// written: no data dir, no user, no token printed. Once the port is free, the token is
/// printed after the bind and before `listening on`, and works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_token_only_after_a_successful_bind() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let env = Env::bare().set("CREDHOST_LISTEN", &format!("127.0.0.1:{port}"));
    let mut refused = env.spawn(&[]);
    let status = refused.wait_exit(Duration::from_secs(30)).expect("a failed bind exits");
    assert!(!status.success(), "{status}");
    assert!(refused.stdout().is_empty(), "printed: {:?}", refused.stdout());
    assert!(refused.stderr().contains("cannot listen on"), "{}", refused.stderr());
    assert!(!env.cwd.join("data").exists(), "a failed bind created the data dir");

    drop(taken);
    let server = env.start(&[]);
    let out = server.stdout();
    let token_at = out.iter().position(|l| l.contains("dev admin token")).unwrap_or_else(|| panic!("{out:?}"));
    let listening_at = out.iter().position(|l| l.starts_with("listening on ")).unwrap();
    assert!(token_at < listening_at, "{out:?}");
    let token = out[token_at].split_whitespace().last().unwrap().to_string();
    let guard = LeakGuard::new();
    let api = server.api(&guard);
    api.get("/api/credentials", Some(&token)).await.expect(200);
}

/// A failure while loading (an override a built-in refuses) happens after the bind: the
/// server stops with an error naming it instead of serving without its types.
#[test]
fn a_load_failure_after_listening_stops_the_server() {
    let env0 = Env::new();
    let config = env0.dir.path().join("credhost.toml");
    std::fs::write(&config, "[plugins.overrides.api_key.limits]\nmemory_mib = 1000000\n").unwrap();
    let env = env0.set("CREDHOST_CONFIG", config.to_str().unwrap());
    let mut server = env.spawn(&[]);
    let status = server.wait_exit(Duration::from_secs(60)).expect("the server stops");
    assert_eq!(status.code(), Some(2), "{status}");
    let log = server.stderr();
    assert!(log.contains("api_key") && log.contains("memory_mib"), "{log}");
}

/// `/metrics`: request histograms by method, route pattern (never the raw path) and
/// status; plugin call durations by type and phase; test outcomes; pool; audit records.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_by_route_plugin_phase_and_test_outcome() {
    let w = common::server::world().await;
    let api = &w.api;
    let token = w.guard.secret("tok_0123456789abcdefghijklmnop");
    let created = api
        .post(
            "/api/credentials",
            Some(&w.alice),
            json!({"name": "m", "type": "bearer_token", "fields": {"token": token}}),
        )
        .await;
    created.expect(201);
    let id = created.json()["id"].as_str().unwrap().to_string();
    let _ = api.post_empty(&format!("/api/credentials/{id}/test"), Some(&w.alice)).await;
    api.get(&format!("/api/credentials/{id}"), None).await.expect(401);

    let r = api.get("/metrics", None).await;
    r.expect(200);
    assert!(r.header("content-type").unwrap().starts_with("application/openmetrics-text"), "{:?}", r.headers);
    let text = r.text.clone();
    let value = |series: &str| -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(series).and_then(|v| v.trim().parse().ok()))
            .unwrap_or_else(|| panic!("no series {series} in:\n{text}"))
    };
    assert!(text.trim_end().ends_with("# EOF"));
    assert_eq!(
        value(r#"credhost_http_request_duration_seconds_count{method="GET",route="/api/credentials/{id}",status="401"} "#),
        1.0
    );
    assert!(!text.contains(&id), "a raw path became a label");
    assert!(value(r#"credhost_http_request_duration_seconds_count{method="POST",route="/api/credentials",status="201"} "#) >= 1.0);
    assert!(value(r#"credhost_plugin_call_duration_seconds_count{type="bearer_token",phase="validate"} "#) >= 1.0);
    assert!(value(r#"credhost_plugin_call_duration_seconds_count{type="bearer_token",phase="test"} "#) >= 1.0);
    let tests: f64 = text
        .lines()
        .filter(|l| l.starts_with(r#"credhost_credential_tests_total{type="bearer_token","#))
        .map(|l| l.rsplit_once(' ').unwrap().1.parse::<f64>().unwrap())
        .sum();
    assert_eq!(tests, 1.0, "{text}");
    assert_eq!(value("credhost_sandbox_instances_in_use "), 0.0);
    assert_eq!(value("credhost_sandbox_instances_capacity "), 128.0);
    assert!(value("credhost_audit_records_written_total ") >= 2.0);
    assert_eq!(value("credhost_credential_types "), 6.0);
    assert_eq!(value("credhost_ready "), 1.0);
    w.guard.check("metrics", &text);
}

/// The binary's allocator (mimalloc) starts with credhost's defaults (arenas committed on
/// demand, freed pages returned at once: the resident-memory bound of issue 17), which
/// take effect only if set before mimalloc reads its options; an operator's `MIMALLOC_*`
/// variable still overrides them.
#[cfg(target_os = "linux")]
#[test]
fn allocator_starts_with_credhost_defaults_and_the_environment_still_decides() {
    let options = |env: &[(&str, &str)]| {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_credhost"));
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("MIMALLOC_") {
                cmd.env_remove(k);
            }
        }
        let out = cmd.arg("--version").env("MIMALLOC_VERBOSE", "1").envs(env.iter().copied()).output().unwrap();
        assert!(out.status.success(), "{out:?}");
        let printed = String::from_utf8_lossy(&out.stderr).into_owned();
        let value = |name: &str| {
            let prefix = format!("option '{name}': ");
            let line = printed.lines().find_map(|l| l.split_once(&prefix).map(|(_, v)| v.trim().to_string()));
            line.unwrap_or_else(|| panic!("mimalloc printed no {name}: {printed}"))
        };
        (value("arena_eager_commit"), value("purge_delay"))
    };
    assert_eq!(options(&[]), ("0".to_string(), "0".to_string()));
    assert_eq!(
        options(&[("MIMALLOC_PURGE_DELAY", "250"), ("MIMALLOC_ARENA_EAGER_COMMIT", "1")]),
        ("1".to_string(), "250".to_string())
    );
}

/// A stop (SIGTERM) closes the store: the next start opens the file at once instead of
/// checking it whole (a check takes time growing with the file). After a kill (SIGKILL)
/// the next start checks it and says so, and what was answered before the kill is there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_closes_the_store_and_a_start_after_a_kill_checks_it() {
    if common::server::test_storage_is_postgres() {
        return; // redb's own close and check
    }
    const CHECKING: &str = "was not closed cleanly";
    let env = Env::new();
    let token = env.add_user("alice", false);
    let guard = LeakGuard::new();
    let body = |name: &str| json!({"name": name, "type": "bearer_token", "fields": {"token": guard.secret(common::server::random_alnum(32))}});

    let mut first = env.start(&[]);
    first.api(&guard).post("/api/credentials", Some(&token), body("before-stop")).await.expect(201);
    assert!(first.stop().success());
    assert!(first.stderr().contains("store closed"), "{}", first.stderr());

    let mut second = env.start(&[]);
    assert!(!second.stderr().contains(CHECKING), "a stopped server's file was checked:\n{}", second.stderr());
    second.api(&guard).post("/api/credentials", Some(&token), body("before-kill")).await.expect(201);
    second.signal("KILL");
    second.wait_exit(Duration::from_secs(20)).expect("killed");

    let third = env.start(&[]);
    let log = third.stderr();
    assert!(log.contains(CHECKING) && log.contains("database checked"), "a killed server's file was not checked:\n{log}");
    let page = third.api(&guard).get("/api/credentials", Some(&token)).await;
    page.expect(200);
    let mut names = common::server::names(&page.json());
    names.sort();
    assert_eq!(names, ["before-kill", "before-stop"]);
}
