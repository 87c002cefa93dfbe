//! Builds the guest workspace in `plugins/` for `wasm32-wasip2` and embeds the
//! built-in credential types, so `cargo build` alone yields a working binary.
//!
//! The nested cargo runs with a scrubbed environment (the outer build's
//! `CARGO_ENCODED_RUSTFLAGS` etc. would leak host flags into the guest) and its
//! own target dir (sharing the outer one deadlocks on the build lock).

use std::env;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

const GUEST_TARGET: &str = "wasm32-wasip2";

fn main() {
    if let Err(e) = run() {
        // A build script reports failure by panicking; the message is shown by cargo.
        panic!("building the built-in plugins failed:\n{e}");
    }
}

fn run() -> Result<(), String> {
    let manifest_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR").map_err(|e| e.to_string())?);
    let root = manifest_dir.parent().ok_or("host crate has no parent dir")?.to_path_buf();
    let plugins = root.join("plugins");
    let out_dir = PathBuf::from(env::var("OUT_DIR").map_err(|e| e.to_string())?);
    let target_dir = guest_target_dir(&out_dir);

    // Cargo treats a watched path that does not exist as always stale, which would
    // rerun this script (and recompile credhost) on every build: watch only what exists.
    let mut watched = vec![root.join("wit")];
    watched.extend(["Cargo.toml", "Cargo.lock", ".cargo/config.toml"].map(|p| plugins.join(p)));
    for dir in guest_crates(&plugins)? {
        watched.extend(["src", "Cargo.toml", "manifest.toml", "wit"].map(|p| dir.join(p)));
    }
    for path in watched.iter().filter(|p| p.exists()) {
        println!("cargo:rerun-if-changed={}", path.display());
    }

    ensure_guest_target();
    let cargo = env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(&plugins)
        .args(["build", "--release", "--locked", "--workspace", "--target", GUEST_TARGET])
        .arg("--target-dir")
        .arg(&target_dir);
    for (key, _) in env::vars() {
        let scrub = key.starts_with("CARGO_TARGET_")
            || key.starts_with("CARGO_PROFILE_")
            || key.starts_with("CARGO_ENCODED_")
            || matches!(
                key.as_str(),
                "RUSTFLAGS"
                    | "CARGO_BUILD_RUSTFLAGS"
                    | "RUSTC_WRAPPER"
                    | "RUSTC_WORKSPACE_WRAPPER"
                    | "CARGO_BUILD_TARGET"
            );
        if scrub {
            cmd.env_remove(key);
        }
    }
    let output = cmd.output().map_err(|e| format!("could not run cargo: {e}"))?;
    if !output.status.success() {
        return Err(format!(
            "`cargo build --target {GUEST_TARGET}` in {} failed (is the target installed? \
             `rustup target add {GUEST_TARGET}`)\n--- stdout\n{}\n--- stderr\n{}",
            plugins.display(),
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ));
    }

    let wasm_dir = target_dir.join(GUEST_TARGET).join("release");
    // Tests load the fixture components (hostile, ...) from here.
    println!("cargo:rustc-env=CREDHOST_GUEST_DIR={}", wasm_dir.display());

    let mut code = String::from("/// Built-in plugins: (crate dir, manifest TOML, component bytes).\n");
    code.push_str("pub const BUILTINS: &[(&str, &str, &[u8])] = &[\n");
    for dir in builtin_crates(&plugins)? {
        let name = dir.file_name().unwrap().to_string_lossy().into_owned();
        let wasm = wasm_dir.join(format!("{}.wasm", name.replace('-', "_")));
        if !wasm.is_file() {
            return Err(format!("expected {} after the guest build", wasm.display()));
        }
        writeln!(
            code,
            "    ({name:?}, include_str!({:?}), include_bytes!({:?})),",
            dir.join("manifest.toml").display().to_string(),
            wasm.display().to_string()
        )
        .unwrap();
    }
    code.push_str("];\n");
    std::fs::write(out_dir.join("builtins.rs"), code).map_err(|e| e.to_string())?;
    Ok(())
}

/// Installs the guest target when the toolchain lacks it. `rust-toolchain.toml` lists it,
/// but rustup only acts on that when it installs a toolchain, and not at all with
/// `RUSTUP_AUTO_INSTALL=0`: without this, `cargo run` on a fresh machine stops here.
/// Failures are left to the guest build, whose error names the command to run.
fn ensure_guest_target() {
    let rustc = env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let sysroot = Command::new(&rustc).args(["--print", "sysroot"]).output();
    let Ok(out) = sysroot else { return };
    let sysroot = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    if sysroot.join("lib/rustlib").join(GUEST_TARGET).is_dir() {
        return;
    }
    // Not a `cargo:warning`: cargo replays those on every later (fresh) build.
    eprintln!("installing the {GUEST_TARGET} target (rustup target add {GUEST_TARGET})");
    let mut cmd = Command::new("rustup");
    cmd.args(["target", "add", GUEST_TARGET]);
    // The toolchain this build runs on, not whatever rustup would pick from the cwd.
    if let Ok(tc) = env::var("RUSTUP_TOOLCHAIN") {
        cmd.args(["--toolchain", &tc]);
    }
    for attempt in 0..2 {
        match cmd.status() {
            Ok(st) if st.success() => return,
            _ if attempt == 0 => std::thread::sleep(std::time::Duration::from_secs(5)),
            _ => {}
        }
    }
}

/// Guest target dir beside the outer one (`<target>/guests`), so debug and release
/// host builds share one guest build. Cargo marks its target dir with CACHEDIR.TAG.
fn guest_target_dir(out_dir: &Path) -> PathBuf {
    out_dir
        .ancestors()
        .find(|p| p.join("CACHEDIR.TAG").is_file())
        .map(|t| t.join("guests"))
        .unwrap_or_else(|| out_dir.join("guests"))
}

/// Every crate of the guest workspace (built-ins, the SDK and test fixtures).
fn guest_crates(plugins: &Path) -> Result<Vec<PathBuf>, String> {
    let mut dirs = Vec::new();
    for base in [plugins.to_path_buf(), plugins.join("fixtures")] {
        let Ok(entries) = std::fs::read_dir(&base) else { continue };
        for e in entries {
            let p = e.map_err(|e| e.to_string())?.path();
            if p.join("Cargo.toml").is_file() {
                dirs.push(p);
            }
        }
    }
    dirs.sort();
    Ok(dirs)
}

/// Built-ins are the top-level guest crates that carry a `manifest.toml`.
fn builtin_crates(plugins: &Path) -> Result<Vec<PathBuf>, String> {
    Ok(guest_crates(plugins)?
        .into_iter()
        .filter(|d| d.parent() == Some(plugins) && d.join("manifest.toml").is_file())
        .filter(|d| d.file_name().is_some_and(|n| n != "template"))
        .collect())
}
