//! Operator plugins: a type that is not built in, installed into a running server's
//! plugin dir and reloaded; refusals of bad plugins; reload under load; the cache.

mod common;

use std::path::Path;
use std::sync::Arc;

use common::server::{Env, LeakGuard, Server};
use credhost::plugins::cache::CompileCache;
use credhost::plugins::{HostServices, Registry, Runtime, Sources};
use serde_json::json;
use sha2::{Digest, Sha256};

/// The template crate's component (built by host/build.rs, not embedded) and manifest.
fn template() -> (Vec<u8>, String) {
    let wasm = std::fs::read(common::guest_dir().join("template.wasm")).expect("template.wasm built by build.rs");
    let manifest =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../plugins/template/manifest.toml")).unwrap();
    (wasm, manifest)
}

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

/// Installs `<name>.wasm` + `<name>.toml` (with a pin, unless `pin` is None) into `dir`.
fn install(dir: &Path, name: &str, wasm: &[u8], manifest: &str, pin: Option<&str>) {
    std::fs::write(dir.join(format!("{name}.wasm")), wasm).unwrap();
    let text = match pin {
        Some(p) => format!("sha256 = \"{p}\"\n{manifest}"),
        None => manifest.to_string(),
    };
    std::fs::write(dir.join(format!("{name}.toml")), text).unwrap();
}

/// A server whose plugin dir holds `plugins` (name, component, manifest; each pinned by
/// its sha256), with an admin `ops`: (env, admin token, server).
fn serve_with(plugins: &[(&str, &[u8], &str)]) -> (Env, String, Server) {
    let env0 = Env::new();
    let dir = plugin_dir(&env0);
    for (name, wasm, manifest) in plugins {
        install(&dir, name, wasm, manifest, Some(&sha256_hex(wasm)));
    }
    let env = env0.set("CREDHOST_PLUGINS_DIR", dir.to_str().unwrap());
    let admin = env.add_user("ops", true);
    let server = env.start(&[]);
    (env, admin, server)
}

fn plugin_dir(env: &Env) -> std::path::PathBuf {
    let dir = env.dir.path().join("plugins.d");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[tokio::test]
async fn out_of_tree_plugin_installs_into_a_running_server() {
    let env0 = Env::new();
    let dir = plugin_dir(&env0);
    let env = env0.set("CREDHOST_PLUGINS_DIR", dir.to_str().unwrap());
    let admin = env.add_user("ops", true);
    let user = env.add_user("alice", false);
    let server = env.start(&[]);
    let guard = LeakGuard::new();
    let api = server.api(&guard);

    let types = api.get("/api/credential-types", None).await.json();
    assert!(!types.as_array().unwrap().iter().any(|t| t["id"] == "example_service"));

    let (wasm, manifest) = template();
    install(&dir, "example_service", &wasm, &manifest, Some(&sha256_hex(&wasm)));
    // Only admins may reload.
    api.post_empty("/api/admin/plugins/reload", Some(&user)).await.expect_error(403, "forbidden");
    let report = api.post_empty("/api/admin/plugins/reload", Some(&admin)).await;
    report.expect(200);
    let report = report.json();
    assert!(report["loaded"].as_array().unwrap().iter().any(|t| t == "example_service"), "{report}");
    assert_eq!(report["problems"], json!([]));

    let listed = api.get("/api/admin/plugins", Some(&admin)).await.json();
    let entry = listed["plugins"].as_array().unwrap().iter().find(|p| p["id"] == "example_service").cloned().unwrap();
    assert_eq!(entry["sha256"], sha256_hex(&wasm));
    assert!(entry["origin"].as_str().unwrap().ends_with("example_service.wasm"));

    let token = guard.secret("ex_0123456789abcdefghij");
    let created = api
        .post(
            "/api/credentials",
            Some(&user),
            json!({"name": "ex", "type": "example_service", "fields": {"account": "acme", "api_token": token}}),
        )
        .await;
    created.expect(201);
    let created = created.json();
    assert_eq!(created["fields"]["api_token"]["set"], true);
    assert_eq!(created["fields"]["base_url"], "https://api.example.com");
    let id = created["id"].as_str().unwrap();
    let v = api.post_empty(&format!("/api/credentials/{id}/validate"), Some(&user)).await;
    v.expect(200);
    assert_eq!(v.json()["valid"], true);

    let bad = api
        .post(
            "/api/credentials",
            Some(&user),
            json!({"name": "ex2", "type": "example_service", "fields": {"account": "ACME!", "api_token": guard.secret("short-token-xyz")}}),
        )
        .await;
    let body = bad.expect_error(422, "invalid_fields");
    let mut fields: Vec<&str> = body["error"]["fields"].as_array().unwrap().iter().map(|f| f["field"].as_str().unwrap()).collect();
    fields.sort();
    assert_eq!(fields, ["account", "api_token"]);
    guard.check("server log", &server.stderr());
}

#[test]
fn bad_plugins_are_refused_with_clear_messages_while_good_ones_load() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("plugins.d");
    std::fs::create_dir_all(&dir).unwrap();
    let (wasm, manifest) = template();
    let pin = sha256_hex(&wasm);
    install(&dir, "good", &wasm, &manifest, Some(&pin));
    install(&dir, "tampered", &wasm, &manifest.replace("example_service", "tampered_service"), Some(&"0".repeat(64)));
    install(&dir, "unpinned", &wasm, &manifest.replace("example_service", "unpinned_service"), None);
    let core_module = b"\0asm\x01\0\0\0".to_vec();
    install(&dir, "core", &core_module, &manifest.replace("example_service", "core_service"), Some(&sha256_hex(&core_module)));
    install(&dir, "fs", &wasm, &manifest.replace("[\"http\"]", "[\"http\", \"filesystem\"]"), Some(&pin));
    install(&dir, "clash", &wasm, &manifest.replace("example_service", "bearer_token"), Some(&pin));
    install(&dir, "mismatch", &wasm, &manifest.replace("example_service", "not_what_describe_says"), Some(&pin));

    let runtime = Arc::new(Runtime::new(HostServices::default()).unwrap());
    let registry = Registry::load(runtime, Sources { dir: Some(dir.clone()), ..Sources::default() }).unwrap();
    let ids: Vec<String> = registry.list().iter().map(|p| p.manifest.id.clone()).collect();
    assert!(ids.contains(&"example_service".to_string()), "{ids:?}");
    assert_eq!(ids.len(), 7, "six built-ins plus the good plugin: {ids:?}");
    let problems = registry.problems();
    let find = |file: &str| {
        problems
            .iter()
            .find(|p| p.origin.ends_with(&format!("{file}.wasm")))
            .unwrap_or_else(|| panic!("no problem reported for {file}: {problems:?}"))
            .message
            .clone()
    };
    assert!(find("tampered").contains("sha256 mismatch"), "{}", find("tampered"));
    assert!(find("unpinned").contains("`sha256` is required"), "{}", find("unpinned"));
    assert!(find("core").contains("not a valid component"), "{}", find("core"));
    assert!(find("fs").contains("filesystem"), "{}", find("fs"));
    assert!(find("clash").contains("built-in type"), "{}", find("clash"));
    assert!(find("mismatch").contains("describe() says type id"), "{}", find("mismatch"));
    assert_eq!(problems.len(), 6, "{problems:?}");
}

#[test]
fn precompiled_cache_is_used_and_corrupt_entries_are_recompiled() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache");
    let key = zeroize::Zeroizing::new([7u8; 32]);
    let cached = |key: &zeroize::Zeroizing<[u8; 32]>| Sources {
        cache: Some(CompileCache::new(cache.clone(), key.clone())),
        ..Sources::default()
    };
    let sources = || cached(&key);
    let runtime = Arc::new(Runtime::new(HostServices::default()).unwrap());
    let cold = std::time::Instant::now();
    Registry::load(runtime.clone(), sources()).unwrap();
    let cold = cold.elapsed();
    let mut entries: Vec<_> = std::fs::read_dir(&cache).unwrap().map(|e| e.unwrap().path()).collect();
    entries.sort();
    assert_eq!(entries.len(), 6, "one entry per built-in: {entries:?}");

    // Corrupt one entry (flip a byte of its body) and truncate another: both are recompiled.
    let mut bytes = std::fs::read(&entries[0]).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&entries[0], &bytes).unwrap();
    std::fs::write(&entries[1], b"short").unwrap();
    let registry = Registry::load(runtime.clone(), sources()).unwrap();
    assert_eq!(registry.list().len(), 6);
    let healed = std::fs::read(&entries[0]).unwrap();
    assert_ne!(healed, bytes, "the corrupt entry was rewritten");
    assert!(std::fs::metadata(&entries[1]).unwrap().len() > 1000, "the truncated entry was rewritten");

    // An entry copied over another (a valid entry, but for a different component) is
    // refused and recompiled: the MAC binds the entry's name.
    let other = std::fs::read(&entries[2]).unwrap();
    std::fs::write(&entries[3], &other).unwrap();
    let registry = Registry::load(runtime.clone(), sources()).unwrap();
    assert_eq!(registry.list().len(), 6);
    assert_ne!(std::fs::read(&entries[3]).unwrap(), other, "the swapped entry was rewritten");
    // Under another key (another master key), every entry is rewritten.
    let before = std::fs::read(&entries[4]).unwrap();
    Registry::load(runtime.clone(), cached(&zeroize::Zeroizing::new([8u8; 32]))).unwrap();
    assert_ne!(std::fs::read(&entries[4]).unwrap(), before, "entries under another key are not trusted");
    Registry::load(runtime.clone(), sources()).unwrap();

    let warm = std::time::Instant::now();
    let registry = Registry::load(runtime, sources()).unwrap();
    let warm = warm.elapsed();
    let v = registry.runtime().validate(&registry.get("api_key").unwrap(), credhost::plugins::Bound {
        secrets: [("key".to_string(), secrecy::SecretString::from("k_0123456789abcdef"))].into(),
        ..Default::default()
    });
    assert!(v.result.unwrap().is_ok(), "a cached plugin works");
    // Not a benchmark: only that the cache is really taken (compiling is far slower).
    assert!(warm < cold, "warm {warm:?} vs cold {cold:?}");
}

#[tokio::test]
async fn reload_under_concurrent_calls_loses_no_request() {
    let (wasm, manifest) = template();
    let (_env, admin, server) = serve_with(&[("example_service", &wasm, &manifest)]);
    let guard = LeakGuard::new();
    let api = server.api(&guard);
    let created = api
        .post(
            "/api/credentials",
            Some(&admin),
            json!({"name": "ex", "type": "example_service", "fields": {"account": "acme", "api_token": guard.secret("ex_0123456789abcdefghij")}}),
        )
        .await;
    created.expect(201);
    let id = created.json()["id"].as_str().unwrap().to_string();

    let mut workers = Vec::new();
    for _ in 0..4 {
        let (api, admin, id) = (api.clone(), admin.clone(), id.clone());
        workers.push(tokio::spawn(async move {
            let mut statuses = Vec::new();
            for _ in 0..40 {
                let r = api.post_empty(&format!("/api/credentials/{id}/validate"), Some(&admin)).await;
                statuses.push((r.status, r.json()["valid"] == true));
            }
            statuses
        }));
    }
    for _ in 0..5 {
        api.post_empty("/api/admin/plugins/reload", Some(&admin)).await.expect(200);
    }
    let mut total = 0;
    for w in workers {
        for (status, valid) in w.await.unwrap() {
            assert_eq!((status, valid), (200, true));
            total += 1;
        }
    }
    assert_eq!(total, 160);
}

/// The hostile fixture's component and manifest text (for a plugin dir).
fn hostile() -> (Vec<u8>, String) {
    let wasm = std::fs::read(common::guest_dir().join("hostile.wasm")).expect("hostile.wasm built by build.rs");
    let manifest =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../plugins/fixtures/hostile/manifest.toml"))
            .unwrap();
    (wasm, manifest)
}

fn cache_entries(env: &Env) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(env.data_dir().join("cache"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".cwasm"))
        .collect();
    names.sort();
    names
}

/// Operators' reload: an override for a type not installed is a warning (the server
/// starts); reload re-reads the overrides from the config file; a config that no longer
/// parses fails the reload (409) and changes nothing; a plugin that loaded before and is
/// broken now keeps its previous version serving while the problem is reported (and the
/// CLI exits 1); the compile cache loses the entries of removed plugins.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_rereads_overrides_keeps_working_versions_and_prunes_the_cache() {
    let env0 = Env::new();
    let dir = plugin_dir(&env0);
    let (wasm, manifest) = template();
    let pin = sha256_hex(&wasm);
    install(&dir, "example_service", &wasm, &manifest, Some(&pin));
    let (hwasm, hmanifest) = hostile();
    install(&dir, "hostile", &hwasm, &hmanifest, Some(&sha256_hex(&hwasm)));
    let config = env0.dir.path().join("credhost.toml");
    let base_config = format!("[plugins]\ndir = {:?}\n\n[plugins.overrides.not_installed_yet]\n", dir.to_str().unwrap());
    std::fs::write(&config, &base_config).unwrap();
    let env = env0.set("CREDHOST_CONFIG", config.to_str().unwrap());
    let admin = env.add_user("ops", true);
    let server = env.start(&[]);
    let guard = LeakGuard::new();
    let api = server.api(&guard);

    // The unknown override: a warning, in the log and in the admin view; not fatal.
    let view = api.get("/api/admin/plugins", Some(&admin)).await;
    view.expect(200);
    let view = view.json();
    assert_eq!(view["problems"], json!([]), "{view}");
    let warning = &view["warnings"][0];
    assert!(warning["origin"].as_str().unwrap().contains("not_installed_yet"), "{view}");
    assert!(warning["message"].as_str().unwrap().contains("once it is installed"), "{view}");
    assert!(server.stderr().contains("no credential type `not_installed_yet` is loaded"), "{}", server.stderr());

    let token = guard.secret("ex_0123456789abcdefghij");
    let created = api
        .post(
            "/api/credentials",
            Some(&admin),
            json!({"name": "ex", "type": "example_service", "fields": {"account": "acme", "api_token": token}}),
        )
        .await;
    created.expect(201);
    let id = created.json()["id"].as_str().unwrap().to_string();

    // Overrides are re-read at reload.
    let allowed = |view: &serde_json::Value| -> Vec<String> {
        let p = view["plugins"].as_array().unwrap().iter().find(|p| p["id"] == "example_service").unwrap();
        p["allowed_hosts"].as_array().unwrap().iter().map(|h| h.as_str().unwrap().to_string()).collect()
    };
    assert_eq!(allowed(&view), ["field:base_url"]);
    std::fs::write(
        &config,
        format!("{base_config}\n[plugins.overrides.example_service]\nallowed_hosts = [\"https://override.example\"]\n"),
    )
    .unwrap();
    let r = api.post_empty("/api/admin/plugins/reload", Some(&admin)).await;
    r.expect(200);
    let view = api.get("/api/admin/plugins", Some(&admin)).await.json();
    assert!(allowed(&view).iter().all(|h| h.contains("override.example")) && allowed(&view).len() == 1, "{view}");

    // A config that no longer parses: 409 naming the problem, nothing changes.
    std::fs::write(&config, "[plugins\nbroken").unwrap();
    let refused = api.post_empty("/api/admin/plugins/reload", Some(&admin)).await.expect_error(409, "conflict");
    assert!(refused["error"]["message"].as_str().unwrap().contains("credhost.toml"), "{refused}");
    let same = api.get("/api/admin/plugins", Some(&admin)).await.json();
    assert_eq!(same["plugins"], view["plugins"], "a refused reload changed the catalog");
    std::fs::write(&config, &base_config).unwrap();

    // Cache: one entry per loaded component (six built-ins, template, hostile); removing
    // the hostile plugin and reloading removes its entry.
    let hostile_entry = |names: &[String]| names.iter().any(|n| n.starts_with(&sha256_hex(&hwasm)));
    let before = cache_entries(&env);
    assert_eq!(before.len(), 8, "{before:?}");
    assert!(hostile_entry(&before));
    std::fs::remove_file(dir.join("hostile.wasm")).unwrap();
    std::fs::remove_file(dir.join("hostile.toml")).unwrap();
    let r = api.post_empty("/api/admin/plugins/reload", Some(&admin)).await;
    r.expect(200);
    assert!(!r.json()["loaded"].as_array().unwrap().iter().any(|t| t == "hostile"), "{}", r.text);
    let after = cache_entries(&env);
    assert_eq!(after.len(), 7, "{after:?}");
    assert!(!hostile_entry(&after), "the removed plugin's entry was pruned: {after:?}");

    // The plugin breaks (a manifest whose pin no longer matches): reported, and the
    // version that loaded before keeps serving.
    install(&dir, "example_service", &wasm, &manifest, Some(&"0".repeat(64)));
    let r = api.post_empty("/api/admin/plugins/reload", Some(&admin)).await;
    r.expect(200);
    let report = r.json();
    assert!(report["loaded"].as_array().unwrap().iter().any(|t| t == "example_service"), "{report}");
    let problem = report["problems"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["origin"].as_str().unwrap().ends_with("example_service.wasm"))
        .unwrap_or_else(|| panic!("no problem for the broken plugin: {report}"));
    let message = problem["message"].as_str().unwrap();
    assert!(message.contains("sha256 mismatch") && message.contains("keeps serving"), "{message}");
    let v = api.post_empty(&format!("/api/credentials/{id}/validate"), Some(&admin)).await;
    v.expect(200);
    assert_eq!(v.json()["valid"], true, "{}", v.text);
    // The CLI says so too, and exits 1.
    let out = env.command(&["plugins", "reload", "--url", &server.base]).env("CREDHOST_TOKEN", &admin).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("keeps serving"), "{stdout}");
    // Fixed again: loads, no problems, and the CLI exits 0.
    install(&dir, "example_service", &wasm, &manifest, Some(&pin));
    let out = env.command(&["plugins", "reload", "--url", &server.base]).env("CREDHOST_TOKEN", &admin).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
    guard.check("server log", &server.stderr());
}

/// A plugin's stderr reaches the log: scrubbed of the call's secrets, capped per call;
/// a guest panic's message is visible. The flood does not stop the call or the server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plugin_stderr_reaches_the_log_scrubbed_and_capped() {
    let (hwasm, hmanifest) = hostile();
    let (_env, admin, server) = serve_with(&[("hostile", &hwasm, &hmanifest)]);
    let guard = LeakGuard::new();
    let api = server.api(&guard);
    let secret = guard.secret(format!("hs_{}", common::server::random_alnum(24)));
    let create = |mode: &str, name: &str| {
        json!({"name": name, "type": "hostile",
               "fields": {"mode": mode, "target_url": "http://127.0.0.1:9/", "secret": secret}})
    };
    // Writes the secret and 10k lines to stderr, then succeeds.
    api.post("/api/credentials", Some(&admin), create("stderr", "chatty")).await.expect(201);
    let log = server.stderr();
    assert!(log.contains("hostile stderr: the secret is [REDACTED]"), "{log}");
    let flood = log.lines().filter(|l| l.contains("hostile stderr flood line")).count();
    assert!((1..20).contains(&flood), "{flood} flood lines logged (cap 20 per call)");
    assert!(log.contains("more plugin stderr not logged"), "{log}");
    // A panic's message is on stderr: now in the log, next to the 502.
    api.post("/api/credentials", Some(&admin), create("panic", "crashy")).await.expect_error(502, "plugin_error");
    let log = server.stderr();
    assert!(log.contains("hostile plugin panics on request"), "{log}");
    // Still serving.
    api.get("/api/credentials", Some(&admin)).await.expect(200);
    guard.check("server log", &log);
}

/// The audit tells a plugin reading a secret itself (`plugin.secrets.reveal`) apart from
/// the host decrypting secrets for its own use, e.g. to fill them into a test's requests
/// (`credential.unseal`), and from a reveal to the caller (`credential.reveal`: none here).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_names_a_plugin_reveal_apart_from_host_side_use() {
    let (hwasm, hmanifest) = hostile();
    let granted = hmanifest
        .replace("capabilities = [\"log\"]", "capabilities = [\"log\", \"secrets\"]")
        .replace("reveal = []", "reveal = [\"secret\"]");
    assert_ne!(granted, hmanifest);
    let (_env, admin, server) = serve_with(&[("hostile", &hwasm, &granted)]);
    let guard = LeakGuard::new();
    let api = server.api(&guard);
    let secret = guard.secret(format!("hs_{}", common::server::random_alnum(24)));
    let created = api
        .post(
            "/api/credentials",
            Some(&admin),
            json!({"name": "r", "type": "hostile", "fields": {"mode": "test-reveal", "target_url": "http://127.0.0.1:9/", "secret": secret}}),
        )
        .await;
    created.expect(201);
    let id = created.json()["id"].as_str().unwrap().to_string();
    let t = api.post_empty(&format!("/api/credentials/{id}/test"), Some(&admin)).await;
    t.expect(200);
    assert!(t.text.contains("revealed:"), "{}", t.text);

    let records = api.get("/api/audit?limit=1000", Some(&admin)).await.json()["items"].as_array().unwrap().clone();
    let of = |action: &str| -> Vec<String> {
        records
            .iter()
            .filter(|r| r["action"] == action && r["credential"] == id.as_str())
            .map(|r| r["detail"].as_str().unwrap_or("").to_string())
            .collect()
    };
    let plugin = of("plugin.secrets.reveal");
    assert_eq!(plugin.len(), 1, "{records:?}");
    assert!(plugin[0].contains("field secret"), "{plugin:?}");
    let host = of("credential.unseal");
    assert!(host.iter().any(|d| d.contains("purpose=\"test\"")), "{records:?}");
    assert!(of("credential.reveal").is_empty(), "nothing was revealed to a caller: {records:?}");
    assert!(of("plugin.secrets").is_empty(), "{records:?}");
}
