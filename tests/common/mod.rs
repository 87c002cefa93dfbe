//! Shared fixtures for the end-to-end and runtime tests.
#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use credhost::plugins::{Bound, Capability, HostServices, Manifest, Plugin, Registry, Runtime};
use secrecy::SecretString;

/// Directory holding the guest components built by `host/build.rs` (fixtures included).
pub fn guest_dir() -> PathBuf {
    PathBuf::from(env!("CREDHOST_GUEST_DIR"))
}

/// The fixture crate's manifest and component, e.g. `fixture("hostile")`.
pub fn fixture(name: &str) -> (Manifest, Vec<u8>) {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../plugins/fixtures").join(name);
    let manifest = std::fs::read_to_string(root.join("manifest.toml")).expect("fixture manifest");
    let wasm = std::fs::read(guest_dir().join(format!("{}.wasm", name.replace('-', "_")))).expect("fixture wasm");
    (Manifest::parse(&manifest).expect("fixture manifest parses"), wasm)
}

/// One registry with every built-in, shared by the tests of a binary (compiling is slow).
pub fn registry() -> &'static Registry {
    static REG: OnceLock<Registry> = OnceLock::new();
    REG.get_or_init(|| {
        let runtime = Runtime::new(HostServices { allow_private_networks: true }).expect("runtime");
        Registry::with_builtins(Arc::new(runtime)).expect("built-ins load")
    })
}

/// The hostile fixture, loaded into the shared runtime.
pub fn hostile() -> &'static Plugin {
    static P: OnceLock<Plugin> = OnceLock::new();
    P.get_or_init(|| {
        let (manifest, wasm) = fixture("hostile");
        registry().runtime().load(&wasm, manifest, "fixture:hostile".into()).expect("hostile loads")
    })
}

/// The hostile fixture with `http` and `net` granted towards `allowed` only; `adjust`
/// may change its manifest further (limits) before it is loaded.
pub fn hostile_with_http(runtime: &Runtime, allowed: &[String], adjust: impl FnOnce(&mut Manifest)) -> Plugin {
    let (mut manifest, wasm) = fixture("hostile");
    manifest.capabilities.extend([Capability::Http, Capability::Net]);
    manifest.allowed_hosts =
        allowed.iter().map(|h| credhost::plugins::manifest::AllowedHost::parse(h).unwrap()).collect();
    adjust(&mut manifest);
    runtime.load(&wasm, manifest, "fixture:hostile".into()).expect("hostile loads")
}

/// A credential for the hostile fixture: its `mode`, `target_url` and `secret`.
pub fn hostile_bound(mode: &str, target: &str, secret: &str) -> Bound {
    let mut b = Bound::default();
    b.fields.insert("mode".into(), mode.into());
    b.fields.insert("target_url".into(), target.into());
    b.secrets.insert("secret".into(), SecretString::from(secret.to_string()));
    b
}

// ---- HTTP API fixtures: the real binary, its environment, a leak-checking client ----
// (tests/common/server.rs; used by tests/api.rs)
/// Installs the hostile fixture as a pinned operator plugin in `dir` (created), with a 5 s
/// validate budget.
pub fn install_hostile(dir: &std::path::Path) {
    use sha2::Digest;
    std::fs::create_dir_all(dir).unwrap();
    let wasm = std::fs::read(guest_dir().join("hostile.wasm")).expect("hostile.wasm built by build.rs");
    let sha: String = sha2::Sha256::digest(&wasm).iter().map(|b| format!("{b:02x}")).collect();
    let manifest = format!(
        "sha256 = \"{sha}\"\nid = \"hostile\"\nversion = \"0.1.0\"\ncapabilities = [\"log\"]\nreveal = []\n\
         allowed_hosts = [\"http://127.0.0.1\"]\ntest_read_only = false\n\n[limits]\nmemory_mib = 16\nvalidate_ms = 5000\n"
    );
    std::fs::write(dir.join("hostile.wasm"), wasm).unwrap();
    std::fs::write(dir.join("hostile.toml"), manifest).unwrap();
}

pub mod postgres;
pub mod server;
