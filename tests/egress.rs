//! Hardening of the egress path (issue 11, items 2, 8 and 10-addresses): each test
//! performs the attack against the real runtime (the hostile fixture plugin in-process,
//! talking to local servers) or the real binary, and shows that it fails with a clear
//! error, that the host keeps serving, and that no secret appears anywhere.

mod common;

use std::collections::BTreeMap;
use std::io::Read;
use std::net::TcpListener;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::HeaderMap;
use axum::Router;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
use base64::Engine as _;
use credhost::plugins::{Bound, Capability, HostServices, Runtime};

/// The response body limit of `http.send` (`MAX_BODY` in `caps/http.rs`, not exported).
const MAX_BODY: usize = 1024 * 1024;

// ---------------------------------------------------------------- helpers (from tests/live.rs)

async fn serve_router(app: Router) -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    port
}

/// The hostile fixture with room to hand back a whole 1 MiB body (as summary, or as
/// fact key and value).
fn hostile_with_http(runtime: &Runtime, allowed: &[String]) -> credhost::plugins::Plugin {
    common::hostile_with_http(runtime, allowed, |m| {
        m.limits.output_kib = 4096;
        m.limits.memory_mib = 64;
    })
}

/// Runs a sandboxed test on a blocking thread (host capabilities block).
async fn run_test(
    plugin: Arc<credhost::plugins::Plugin>,
    runtime: Arc<Runtime>,
    bound: Bound,
) -> credhost::plugins::Call<credhost::plugins::TestReport> {
    tokio::task::spawn_blocking(move || runtime.test(&plugin, bound)).await.unwrap()
}

/// Every encoding of `secret` the echo server sends back (built independently of the
/// scrubber), with a name for the failure message.
fn encodings(secret: &str) -> Vec<(&'static str, String)> {
    let pct = percent_encoding::utf8_percent_encode(secret, percent_encoding::NON_ALPHANUMERIC).to_string();
    let json = serde_json::to_string(secret).unwrap();
    let json = json[1..json.len() - 1].to_string();
    vec![
        ("raw", secret.to_string()),
        ("basic", STANDARD.encode(format!("alice:{secret}"))),
        ("basic-other-user", STANDARD.encode(format!("x:{secret}"))),
        ("b64", STANDARD.encode(secret)),
        ("b64-nopad", STANDARD_NO_PAD.encode(secret)),
        ("b64url", URL_SAFE.encode(secret)),
        ("b64url-nopad", URL_SAFE_NO_PAD.encode(secret)),
        ("json", json.clone()),
        ("json-slash", json.replace('/', "\\/")),
        ("json-ascii", secret.encode_utf16().map(|u| format!("\\u{u:04x}")).collect()),
        ("hex", secret.bytes().map(|b| format!("{b:02x}")).collect()),
        ("HEX", secret.bytes().map(|b| format!("{b:02X}")).collect()),
        ("url", pct),
        ("form", url::form_urlencoded::byte_serialize(secret.as_bytes()).collect()),
    ]
}

/// Fails if any encoding of the secret, or its distinctive random part, is in `text`.
fn assert_clean(text: &str, secret: &str, marker: &str, what: &str) {
    assert!(!text.contains(marker), "{what} holds the secret's random part");
    for (name, e) in encodings(secret) {
        assert!(!text.contains(&e), "{what} holds the secret ({name} form)");
    }
}

/// An echo server that answers the secret in every form. `/forms`: all forms in the
/// body and in headers. `/cut/<form>/<k>`: a body whose 1 MiB cut falls `k` bytes
/// into that form. Counts requests and checks the secret arrived in `X-Leak`.
async fn echo_server(secret: String) -> (u16, Arc<AtomicUsize>, Arc<Mutex<Vec<String>>>) {
    let hits = Arc::new(AtomicUsize::new(0));
    let seen = Arc::new(Mutex::new(Vec::new()));
    let (h, s) = (hits.clone(), seen.clone());
    let app = Router::new().fallback(move |uri: axum::http::Uri, headers: HeaderMap| {
        let (h, s, secret) = (h.clone(), s.clone(), secret.clone());
        async move {
            h.fetch_add(1, Ordering::SeqCst);
            let leak = headers.get("x-leak").map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
            s.lock().unwrap().push(leak.unwrap_or_default());
            let forms: BTreeMap<_, _> = encodings(&secret).into_iter().collect();
            let mut resp = axum::response::Response::builder().status(200);
            let body = if let Some(rest) = uri.path().strip_prefix("/cut/") {
                let (form, k) = rest.split_once('/').unwrap();
                let k: usize = k.parse().unwrap();
                if form == "partial" {
                    // The peer stops 2 bytes after the cut: the secret is never whole.
                    let body = format!("{}{}", ".".repeat(MAX_BODY - k), &secret[..k + 2]);
                    return resp.body(axum::body::Body::from(body)).unwrap();
                }
                let piece = match form {
                    "basic" => format!("Authorization: Basic {}", forms["basic"]),
                    f => forms[f].clone(),
                };
                // The form starts `k` bytes before the limit (after its prefix text).
                let lead = piece.len() - forms[if form == "basic" { "basic" } else { form }].len();
                let mut body = ".".repeat(MAX_BODY - k - lead);
                body.push_str(&piece);
                body.push_str(&" and more".repeat(1000));
                body
            } else {
                resp = resp
                    .header("x-raw", secret.as_str())
                    .header("www-authenticate", format!("Basic {}", forms["basic"]))
                    .header("x-hex", forms["hex"].as_str());
                let mut body = String::from("{");
                for (name, e) in &forms {
                    body.push_str(&format!("\"{name}\": \"{e}\", "));
                }
                body.push_str(&format!("\"auth\": \"Basic {}\", ", forms["basic-other-user"]));
                body.push_str(&format!("\"serde\": {}}}", serde_json::json!({ "secret": secret })));
                body
            };
            resp.body(axum::body::Body::from(body)).unwrap()
        }
    });
    (serve_router(app).await, hits, seen)
}

// ---------------------------------------------------------------- item 2: scrubbing

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn echoed_secrets_are_scrubbed_in_every_form_and_at_the_cut() {
    // Quote, backslash, slash, space and non-ASCII: every JSON escape and percent form.
    let marker = common::server::random_alnum(16);
    let secret = format!("s3\"c\\r/é✓ t-{marker}");
    let (port, hits, seen) = echo_server(secret.clone()).await;
    let base = format!("http://127.0.0.1:{port}");
    let runtime = Arc::new(Runtime::new(HostServices { allow_private_networks: true }).unwrap());
    let plugin = Arc::new(hostile_with_http(&runtime, std::slice::from_ref(&base)));

    // Every form in one body: the summary holds none of them.
    let call = run_test(plugin.clone(), runtime.clone(), common::hostile_bound("echo", &format!("{base}/forms"), &secret)).await;
    let report = call.result.expect("echo runs");
    assert!(report.summary.starts_with("echo:{"), "{}", report.summary);
    assert_clean(&report.summary, &secret, &marker, "the summary");
    assert!(report.summary.contains("\"basic\": \"[REDACTED]\""), "{}", report.summary);
    assert!(report.summary.contains("\"auth\": \"Basic [REDACTED]\""), "{}", report.summary);
    assert!(report.summary.contains("\"serde\": {\"secret\":\"[REDACTED]\"}"), "{}", report.summary);
    assert_eq!(seen.lock().unwrap().last().map(String::as_str), Some(secret.as_str()), "the secret really went out");

    // The same body as a fact key and value: both scrubbed.
    let call = run_test(plugin.clone(), runtime.clone(), common::hostile_bound("echo-fact", &format!("{base}/forms"), &secret)).await;
    let report = call.result.expect("echo-fact runs");
    assert_eq!(report.facts.len(), 1, "{:?}", report.facts.keys().collect::<Vec<_>>());
    for (k, v) in &report.facts {
        assert_clean(k, &secret, &marker, "a fact key");
        assert_clean(v, &secret, &marker, "a fact value");
        assert!(k.contains("[REDACTED]") && v.contains("[REDACTED]"));
    }
    assert_clean(&report.summary, &secret, &marker, "the summary");

    // The 1 MiB cut inside a secret, in three forms and at several depths: the secret is
    // seen whole (read past the limit, scrubbed, then cut) and none of it is left.
    for (form, prefix) in [("raw", ""), ("json", ""), ("basic", "Authorization: Basic ")] {
        for k in [1usize, 5, 17, 29] {
            let url = format!("{base}/cut/{form}/{k}");
            let call = run_test(plugin.clone(), runtime.clone(), common::hostile_bound("echo", &url, &secret)).await;
            let summary = call.result.expect("echo runs").summary;
            let lead = ".".repeat(MAX_BODY - k - prefix.len());
            assert_clean(&summary, &secret, &marker, &format!("the cut body ({form}/{k})"));
            // The secret, whole, became the marker; after it at most the text that
            // followed it, itself possibly cut with a marker (never part of a secret).
            let head = format!("echo:{lead}{prefix}[REDACTED]");
            let tail = summary.strip_prefix(&head).unwrap_or_else(|| {
                panic!("{form}/{k}: tail {:?}", &summary[summary.len().saturating_sub(80)..])
            });
            let tail = tail.strip_suffix("[REDACTED]").unwrap_or(tail);
            assert!(" and more".repeat(10).starts_with(tail), "{form}/{k}: {tail:?}");
            assert!(summary.len() <= "echo:".len() + MAX_BODY + "[REDACTED]".len());
        }
    }
    // The peer's body ends inside the secret, just past the cut: the part before the
    // cut (1 or 5 characters of the secret) is replaced, not handed over.
    for k in [1usize, 5] {
        let url = format!("{base}/cut/partial/{k}");
        let call = run_test(plugin.clone(), runtime.clone(), common::hostile_bound("echo", &url, &secret)).await;
        let summary = call.result.expect("echo runs").summary;
        assert_eq!(summary, format!("echo:{}[REDACTED]", ".".repeat(MAX_BODY - k)), "partial/{k}");
    }
    assert!(hits.load(Ordering::SeqCst) >= 16);

    // The host keeps serving: a plain call afterwards works.
    let call = run_test(plugin.clone(), runtime.clone(), common::hostile_bound("nothing", &base, &secret)).await;
    assert_eq!(call.result.unwrap().summary, "hostile plugin did nothing");
}

// ---------------------------------------------------------------- item 10: embedded IPv4

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ipv6_literals_embedding_private_ipv4_are_refused() {
    let secret = format!("s3cr3t-{}", common::server::random_alnum(16));
    let (port, hits, _) = echo_server(secret.clone()).await;
    let strict = Arc::new(Runtime::new(HostServices { allow_private_networks: false }).unwrap());
    // IPv4-compatible, 6to4, Teredo (client and server), NAT64 (well-known and
    // local-use) and translated forms of 127.0.0.1 / the metadata address.
    for host in [
        "[::127.0.0.1]",
        "[2002:7f00:1::]",
        "[2002:a9fe:a9fe::1]",
        "[2001:0:7f00:1::f7f7:f7f7]",
        "[2001:0:808:808::80ff:fffe]",
        "[64:ff9b::7f00:1]",
        "[64:ff9b:1::7f00:1]",
        "[::ffff:0:7f00:1]",
    ] {
        let target = format!("http://{host}:{port}");
        let plugin = Arc::new(hostile_with_http(&strict, std::slice::from_ref(&target)));
        let call = run_test(plugin, strict.clone(), common::hostile_bound("exfil", &format!("{target}/"), &secret)).await;
        let report = call.result.expect("the plugin reports the refusal");
        assert!(
            report.summary.starts_with("exfil:Error::Rejected") && report.summary.contains("private"),
            "{host}: {}",
            report.summary
        );
        assert!(!report.summary.contains(&secret), "{host}");
        assert!(call.events.iter().any(|e| e.capability == Capability::Http && !e.allowed), "{host}: {:?}", call.events);
        assert_eq!(hits.load(Ordering::SeqCst), 0, "{host}: nothing may arrive");
    }
    // The runtime keeps serving: the same plugin shape with an allowed loopback target
    // under the operator's leave still reaches the server.
    let open = Arc::new(Runtime::new(HostServices { allow_private_networks: true }).unwrap());
    let target = format!("http://127.0.0.1:{port}");
    let plugin = Arc::new(hostile_with_http(&open, std::slice::from_ref(&target)));
    let call = run_test(plugin, open, common::hostile_bound("exfil", &format!("{target}/"), &secret)).await;
    assert_eq!(call.result.unwrap().summary, "exfil:status 200");
    assert_eq!(hits.load(Ordering::SeqCst), 1);
}

// ---------------------------------------------------------------- item 8: no proxy

/// A TCP listener that records every connection and byte sent to it.
fn recording_listener() -> (u16, Arc<AtomicUsize>, Arc<Mutex<Vec<u8>>>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let conns = Arc::new(AtomicUsize::new(0));
    let bytes = Arc::new(Mutex::new(Vec::new()));
    let (c, b) = (conns.clone(), bytes.clone());
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { continue };
            c.fetch_add(1, Ordering::SeqCst);
            let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
            let mut buf = [0u8; 4096];
            while let Ok(n) = s.read(&mut buf) {
                if n == 0 {
                    break;
                }
                b.lock().unwrap().extend_from_slice(&buf[..n]);
            }
        }
    });
    (port, conns, bytes)
}

#[tokio::test]
async fn plugins_reload_ignores_proxy_variables() {
    let env0 = common::server::Env::new();
    let dir = env0.dir.path().join("plugins.d");
    std::fs::create_dir_all(&dir).unwrap();
    let env = env0.set("CREDHOST_PLUGINS_DIR", dir.to_str().unwrap());
    let admin = env.add_user("ops", true);
    let server = env.start(&[]);
    let (proxy_port, conns, bytes) = recording_listener();
    let proxy = format!("http://127.0.0.1:{proxy_port}");

    let mut cmd = env.command(&["plugins", "reload", "--url", &server.base]);
    cmd.env("CREDHOST_TOKEN", &admin);
    for var in ["HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"] {
        cmd.env(var, &proxy);
    }
    cmd.env_remove("NO_PROXY").env_remove("no_proxy");
    let out = cmd.stdin(std::process::Stdio::null()).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "reload failed: {}\n{stdout}\n{stderr}", out.status);
    assert!(stdout.contains("loaded"), "{stdout}");
    assert!(!stdout.contains(&admin) && !stderr.contains(&admin), "the token is never printed");
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(conns.load(Ordering::SeqCst), 0, "the proxy got a connection");
    assert!(bytes.lock().unwrap().is_empty());

    // The server keeps serving, and the listener does record what reaches it.
    let health = reqwest::Client::builder().no_proxy().build().unwrap().get(format!("{}/healthz", server.base)).send().await.unwrap();
    assert_eq!(health.status(), 200);
    std::net::TcpStream::connect(("127.0.0.1", proxy_port)).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(conns.load(Ordering::SeqCst), 1, "the recording listener works");
    assert!(!server.stderr().contains(&admin), "the token is not in the server log");
}
