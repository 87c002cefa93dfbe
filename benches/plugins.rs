//! Sandbox costs, printed as numbers (run: `cargo bench --bench plugins`):
//! cold compile per built-in, precompiled load, and a sandboxed `validate`
//! against the same parsing logic called natively, in one run.

use std::hint::black_box;
use std::time::{Duration, Instant};

use credhost::plugins::registry::builtin_sources;
use credhost::plugins::{Bound, HostServices, Manifest, Registry, Runtime, Sources};
use secrecy::SecretString;
use wasmtime::component::Component;

/// The db_dsn plugin's parser, compiled natively: the baseline for the sandboxed call.
#[path = "../plugins/db-dsn/src"]
// Its unit tests compile here but do not run (no test harness): their imports look unused.
#[allow(dead_code, unused_imports)]
mod db_dsn {
    pub mod dsn;
}
use db_dsn::dsn;

const DSN: &str = "postgres://app:s3cr3t-pw@db.internal:5432/app?sslmode=require&application_name=bench";

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn stats(mut v: Vec<Duration>) -> (Duration, Duration) {
    v.sort();
    (percentile(&v, 0.50), percentile(&v, 0.99))
}

/// Sections to run: `cargo bench --bench plugins -- [load] [startup] [validate]`
/// (none named: all three).
fn wanted(section: &str) -> bool {
    let named: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with('-')).collect();
    named.is_empty() || named.iter().any(|n| n == section)
}

fn main() {
    let runtime = Runtime::new(HostServices::default()).expect("runtime");
    if wanted("load") {
        load(&runtime);
    }
    let runtime = std::sync::Arc::new(runtime);
    if wanted("startup") {
        startup(&runtime);
    }
    if wanted("validate") {
        validate(&runtime);
    }
}

/// Cold compile against deserialising a precompiled artefact, per built-in.
fn load(runtime: &Runtime) {
    println!("== plugin load ({} built-ins, wasmtime {})", builtin_sources().len(), credhost::plugins::cache::wasmtime_version());
    println!("{:<14} {:>10} {:>12} {:>14} {:>10}", "plugin", "wasm KiB", "compile ms", "deserialize ms", "ratio");
    let (mut total_compile, mut total_load) = (Duration::ZERO, Duration::ZERO);
    for (name, _, wasm) in builtin_sources() {
        let compile: Vec<Duration> = (0..3)
            .map(|_| {
                let t = Instant::now();
                black_box(runtime.compile(wasm).expect("compiles"));
                t.elapsed()
            })
            .collect();
        let compiled = runtime.compile(wasm).unwrap().serialize().expect("serialize");
        let load: Vec<Duration> = (0..20)
            .map(|_| {
                let t = Instant::now();
                // SAFETY: bytes were produced by `serialize` on this engine in this process.
                black_box(unsafe { Component::deserialize(runtime.engine(), &compiled) }.expect("deserialize"));
                t.elapsed()
            })
            .collect();
        let (c, _) = stats(compile);
        let (l, _) = stats(load);
        total_compile += c;
        total_load += l;
        println!(
            "{:<14} {:>10.1} {:>12.2} {:>14.3} {:>9.0}x",
            name,
            wasm.len() as f64 / 1024.0,
            c.as_secs_f64() * 1e3,
            l.as_secs_f64() * 1e3,
            c.as_secs_f64() / l.as_secs_f64()
        );
    }
    println!(
        "{:<14} {:>10} {:>12.2} {:>14.3} {:>9.0}x",
        "total",
        "",
        total_compile.as_secs_f64() * 1e3,
        total_load.as_secs_f64() * 1e3,
        total_compile.as_secs_f64() / total_load.as_secs_f64()
    );
}

/// CPU time of the whole process (every thread), user + system: less disturbed than
/// wall time by other work on a shared machine.
fn cpu_time() -> Duration {
    // SAFETY: getrusage writes the struct it is given.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(u.ru_utime) + tv(u.ru_stime)
}

/// Start-up: the whole registry (all built-ins: compile or cache read, link; `describe`
/// only when the cache has no descriptor for the plugin). Timed with dropping it.
fn startup(runtime: &std::sync::Arc<Runtime>) {
    let n = builtin_sources().len() as f64;
    let mut cold = Vec::new();
    let mut warm = Vec::new();
    let mut warm_cpu = Vec::new();
    for _ in 0..3 {
        let dir = tempfile::tempdir().expect("temp dir");
        let key = zeroize::Zeroizing::new([7u8; 32]);
        let sources = || Sources {
            cache: Some(credhost::plugins::cache::CompileCache::new(dir.path().to_path_buf(), key.clone())),
            ..Sources::default()
        };
        let t = Instant::now();
        black_box(Registry::load(runtime.clone(), sources()).expect("cold load"));
        cold.push(t.elapsed());
        for _ in 0..5 {
            let (t, c) = (Instant::now(), cpu_time());
            black_box(Registry::load(runtime.clone(), sources()).expect("warm load"));
            warm.push(t.elapsed());
            warm_cpu.push(cpu_time() - c);
        }
    }
    let (cold50, _) = stats(cold);
    let (warm50, _) = stats(warm);
    let (warm_cpu50, _) = stats(warm_cpu);
    println!("\n== registry start-up, all {n} built-ins (compiled in parallel on {} cores when cold)", std::thread::available_parallelism().map_or(1, |p| p.get()));
    println!("cold (empty cache): {:>9.2} ms  ({:.2} ms per plugin)", cold50.as_secs_f64() * 1e3, cold50.as_secs_f64() * 1e3 / n);
    println!("warm (cache hit):   {:>9.2} ms  ({:.3} ms per plugin)", warm50.as_secs_f64() * 1e3, warm50.as_secs_f64() * 1e3 / n);
    println!("warm CPU (all threads): {:>5.2} ms  ({:.3} ms per plugin)", warm_cpu50.as_secs_f64() * 1e3, warm_cpu50.as_secs_f64() * 1e3 / n);
    println!("ratio cold/warm: {:.0}x", cold50.as_secs_f64() / warm50.as_secs_f64());
}

/// A sandboxed `validate` against the same parsing logic called natively.
fn validate(runtime: &Runtime) {
    let (_, manifest, wasm) = builtin_sources().iter().find(|(n, _, _)| *n == "db-dsn").expect("db-dsn built-in");
    let plugin = runtime.load(wasm, Manifest::parse(manifest).unwrap(), "builtin:db-dsn".into()).expect("load");
    let input = || Bound {
        secrets: [("dsn".to_string(), SecretString::from(DSN))].into(),
        ..Bound::default()
    };
    // `PLUGINS_BENCH_CALLS=n`: more calls (for a profiler), 3000 by default.
    let n_calls: usize = std::env::var("PLUGINS_BENCH_CALLS").ok().and_then(|v| v.parse().ok()).unwrap_or(3000);
    for _ in 0..200 {
        black_box(runtime.validate(&plugin, input()).result.unwrap().unwrap());
        black_box(dsn::check(black_box(DSN)).unwrap());
    }
    let sandboxed: Vec<Duration> = (0..n_calls)
        .map(|_| {
            let b = input();
            let t = Instant::now();
            black_box(runtime.validate(&plugin, b).result.unwrap().unwrap());
            t.elapsed()
        })
        .collect();
    let native: Vec<Duration> = (0..n_calls)
        .map(|_| {
            let t = Instant::now();
            black_box(dsn::check(black_box(DSN)).unwrap());
            t.elapsed()
        })
        .collect();
    if let Some(m) = runtime.engine().pooling_allocator_metrics() {
        println!("pool: warm memories {} ({} KiB resident), warm tables {} ({} KiB resident)",
            m.unused_warm_memories(), m.unused_memory_bytes_resident() / 1024,
            m.unused_warm_tables(), m.unused_table_bytes_resident() / 1024);
    }
    let (sp50, sp99) = stats(sandboxed);
    let (np50, np99) = stats(native);
    println!("\n== db_dsn validate, {n_calls} calls each (fresh Store + instantiate + call + output checks)");
    println!("{:<10} {:>12} {:>12}", "", "p50 µs", "p99 µs");
    println!("{:<10} {:>12.2} {:>12.2}", "sandboxed", sp50.as_secs_f64() * 1e6, sp99.as_secs_f64() * 1e6);
    println!("{:<10} {:>12.3} {:>12.3}", "native", np50.as_secs_f64() * 1e6, np99.as_secs_f64() * 1e6);
    println!(
        "ratio sandboxed/native: p50 {:.0}x, p99 {:.0}x",
        sp50.as_secs_f64() / np50.as_secs_f64(),
        sp99.as_secs_f64() / np99.as_secs_f64()
    );
}

