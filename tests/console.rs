//! The web console (issue 15) in a real browser: Debian's Chromium driven by Playwright for
//! Python (tests/console/test_console.py) against the real binary. The script signs in,
//! creates one credential of every built-in type through the generated forms, checks field
//! errors, tests a credential against a local service and watches its badge change, deletes
//! and restores, renders hostile names as text, checks the security headers, a 375 px
//! viewport and the admin pages, and takes screenshots into target/console-screenshots/.
//! Then it attacks: hostile strings everywhere (real and intercepted answers), hash-route
//! and `/ui/` path tricks, secrets left behind, a token revoked mid-session, a user on admin
//! pages; and checks accessibility, keyboard-only use and 375 px pages.
//! This side starts the server, hands the script its tokens and the secrets to type, and
//! checks afterwards that the server still answers and never logged one of those secrets.
//!
//! Needs `/usr/bin/chromium` (`apt-get install chromium`) and the `playwright` Python
//! module (`pip install playwright==1.65.2`); scripts/test.sh installs both. No browser is
//! downloaded (`playwright install` is never run): the script launches Debian's Chromium.

mod common;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::server::{random_alnum, Env, LeakGuard};
use serde_json::json;

const CHROMIUM: &str = "/usr/bin/chromium";
/// The whole browser run; the script itself aims at well under a minute.
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(240);

fn repo() -> PathBuf {
    let root = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/.."));
    root.canonicalize().unwrap_or(root)
}

/// The console's Content-Security-Policy exactly as `host/src/api/console.rs` declares it
/// (the module is private to the crate, so its source is read).
fn csp_from_source() -> String {
    let src = std::fs::read_to_string(repo().join("host/src/api/console.rs")).expect("host/src/api/console.rs");
    let start = src.find("pub const CSP: &str = \"").expect("CSP constant in console.rs") + "pub const CSP: &str = \"".len();
    let raw = &src[start..start + src[start..].find("\";").expect("end of the CSP constant")];
    // A Rust string continuation: backslash, newline, then leading whitespace is dropped.
    let mut out = String::new();
    let mut rest = raw;
    while let Some(i) = rest.find("\\\n") {
        out.push_str(&rest[..i]);
        rest = rest[i + 2..].trim_start();
    }
    out.push_str(rest);
    out
}

/// The missing tools, each with how to install it.
fn missing_tools() -> Vec<&'static str> {
    let mut missing = Vec::new();
    if !Path::new(CHROMIUM).exists() {
        missing.push("/usr/bin/chromium is missing: apt-get install chromium");
    }
    let playwright = Command::new("python3")
        .args(["-c", "import playwright.sync_api"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !playwright {
        missing.push("the Python module `playwright` is missing: python3 -m pip install playwright==1.65.2 (no `playwright install`: the test uses /usr/bin/chromium)");
    }
    missing
}

/// An unencrypted ed25519 key from ssh-keygen (the multiline secret of the `ssh` form).
fn ssh_key(dir: &Path) -> PathBuf {
    let path = dir.join("console_ed25519");
    let out = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "console-test", "-f"])
        .arg(&path)
        .output()
        .expect("run ssh-keygen (apt-get install openssh-client)");
    assert!(out.status.success(), "ssh-keygen failed: {}", String::from_utf8_lossy(&out.stderr));
    path
}

/// A plugin directory for the XSS checks, and the config naming it: the hostile fixture as
/// type `hostile` (its `report` test turns the body's `key=value` lines into facts, so the
/// script's local service chooses them: HTML), and a broken plugin whose file name and
/// manifest are HTML (the Plugins page lists the load problem: file name and parse error).
fn plugin_dir_with_hostile_strings(dir: &Path) -> PathBuf {
    use sha2::Digest as _;
    let plugins = dir.join("plugins");
    std::fs::create_dir_all(&plugins).unwrap();
    let wasm = std::fs::read(common::guest_dir().join("hostile.wasm")).expect("hostile.wasm built by build.rs");
    let sha: String = sha2::Sha256::digest(&wasm).iter().map(|b| format!("{b:02x}")).collect();
    std::fs::write(plugins.join("hostile.wasm"), &wasm).unwrap();
    std::fs::write(
        plugins.join("hostile.toml"),
        format!(
            "sha256 = \"{sha}\"\nid = \"hostile\"\nversion = \"0.1.0\"\ncapabilities = [\"log\", \"http\"]\nreveal = []\n\
             allowed_hosts = [\"field:target_url\"]\ntest_read_only = true\n\n[limits]\nmemory_mib = 16\n"
        ),
    )
    .unwrap();
    std::fs::write(
        plugins.join("<img src=x onerror=window.__xss=20>.toml"),
        "id = \"<script>window.__xss=21</script>\"\nversion = <svg onload=window.__xss=22>\n",
    )
    .unwrap();
    let config = dir.join("credhost.toml");
    std::fs::write(&config, format!("[plugins]\ndir = {:?}\n", plugins.to_str().unwrap())).unwrap();
    config
}

/// Fails naming the secret (never showing it or the text around it) if `text` holds one.
fn assert_no_secret(what: &str, text: &str, secrets: &[(String, String)]) {
    use base64::Engine as _;
    for (name, value) in secrets {
        let b64 = base64::engine::general_purpose::STANDARD.encode(value);
        for (how, needle) in [("as typed", value.as_str()), ("base64", b64.trim_end_matches('='))] {
            if let Some(at) = text.find(needle) {
                panic!("{what} contains the secret `{name}` ({how}) at byte {at} of {}", text.len());
            }
        }
    }
}

#[test]
fn the_console_works_in_a_real_browser() {
    let missing = missing_tools();
    assert!(
        missing.is_empty(),
        "the console's browser test cannot run (scripts/test.sh installs these):\n  {}",
        missing.join("\n  ")
    );

    let env = Env::new().set("CREDHOST_ALLOW_PRIVATE_NETWORKS", "true");
    let alice = env.add_user("alice", false);
    let root = env.add_user("root", true);
    let config = plugin_dir_with_hostile_strings(env.dir.path());
    let server = env.start(&["--config", config.to_str().unwrap()]);

    // Every value the script types into a secret input. Random, so a hit anywhere is a leak.
    let guard = LeakGuard::new();
    let secrets = json!({
        "alpaca_secret": guard.secret(random_alnum(40)),
        "bearer_good": guard.secret(format!("good-{}", random_alnum(28))),
        "bearer_bad": guard.secret(format!("bad-{}", random_alnum(28))),
        "bearer_plain": guard.secret(random_alnum(32)),
        "bearer_error": guard.secret(random_alnum(32)),
        "dsn_password": guard.secret(random_alnum(24)),
        "basic_password": guard.secret(random_alnum(24)),
        "api_key": guard.secret(format!("ak_{}", random_alnum(30))),
        "alpaca_short_secret": guard.secret(random_alnum(12)),
    });
    let key_path = ssh_key(env.dir.path());
    let key_text = std::fs::read_to_string(&key_path).unwrap();
    for line in key_text.lines().filter(|l| !l.starts_with("-----") && l.len() >= 12) {
        guard.secret(line.trim());
    }
    let mut typed: Vec<(String, String)> =
        secrets.as_object().unwrap().iter().map(|(k, v)| (k.clone(), v.as_str().unwrap().to_string())).collect();
    typed.extend(
        key_text
            .lines()
            .filter(|l| !l.starts_with("-----") && l.len() >= 12)
            .enumerate()
            .map(|(i, l)| (format!("ssh key line {i}"), l.trim().to_string())),
    );

    let shots = repo().join("target/console-screenshots");
    std::fs::create_dir_all(&shots).unwrap();
    let script = repo().join("tests/console/test_console.py");
    let mut child = Command::new("python3")
        .arg("-u")
        .arg(&script)
        .current_dir(repo())
        .env("CONSOLE_BASE", &server.base)
        .env("CONSOLE_ALICE_TOKEN", &alice)
        .env("CONSOLE_ROOT_TOKEN", &root)
        .env("CONSOLE_SHOTS", &shots)
        .env("CONSOLE_SECRETS", secrets.to_string())
        .env("CONSOLE_SSH_KEY", &key_path)
        .env("CONSOLE_CSP", csp_from_source())
        .env("CONSOLE_CHROMIUM", CHROMIUM)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run python3 tests/console/test_console.py");
    let read = |mut r: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut s = String::new();
            let _ = r.read_to_string(&mut s);
            s
        })
    };
    let out = read(Box::new(child.stdout.take().unwrap()));
    let err = read(Box::new(child.stderr.take().unwrap()));
    let started = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break Some(s);
        }
        if started.elapsed() > SCRIPT_TIMEOUT {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let output = format!("{}{}", out.join().unwrap(), err.join().unwrap());
    // The script never prints a secret (it names them); check before showing its output.
    assert_no_secret("the browser test's output", &output, &typed);
    let status = status.unwrap_or_else(|| panic!("the browser test ran longer than {SCRIPT_TIMEOUT:?}:\n{output}"));
    assert!(status.success(), "the browser test failed ({status}):\n{output}");
    assert!(output.contains("console test: all checks passed"), "the script ended without its last line:\n{output}");
    println!("{output}");

    // The server survived the run and logged none of the secrets typed into the console.
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let api = server.api(&guard);
        api.get("/healthz", None).await.expect(200);
        let ui = api.get("/ui/", None).await;
        ui.expect(200);
        assert_eq!(ui.header("content-security-policy"), Some(csp_from_source().as_str()));
    });
    assert_no_secret("the server's stdout", &server.stdout().join("\n"), &typed);
    assert_no_secret("the server's stderr (its logs)", &server.stderr(), &typed);
    assert!(!server.stderr().is_empty(), "the server logged nothing at all (request logs expected)");
}
