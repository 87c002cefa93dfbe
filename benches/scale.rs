//! Scale and memory, plain numbers (`cargo bench --bench scale`), about 1-2 minutes with
//! the defaults.
//!
//! Starts the real `credhost` binary, creates `SCALE_USERS` users (admin API) and
//! `SCALE_CREDS` credentials for each over HTTP with 16 concurrent clients, updates every
//! user's first credential (`PATCH`, a new description), then lists every user's first
//! page (`GET /api/credentials?limit=50`). Prints p50/p99 and rate of the creates and the
//! updates, list p50/p99, each request's server and client CPU, the server's resident
//! memory (VmRSS) fresh, after the creates,
//! after the lists and after 5 s idle, the server's CPU while idle (and its monitor threads'
//! share), the database file size, and the warm restart time
//! (SIGTERM, start, first `/readyz` 200) with the RSS and list latencies after it.
//!
//! The whole scenario runs once per database cache setting in `SCALE_CACHE_MIB`
//! (comma-separated MiB values; `default` = no `CREDHOST_CACHE_MIB`, the built-in default),
//! each on a fresh data dir, so the settings compare within one run.
//! Defaults: `SCALE_USERS=1000 SCALE_CREDS=10 SCALE_CACHE_MIB=default,1024`
//! (1024 MiB is redb's own default, the server's setting before `[storage] cache_mib`).
//! The scale: `SCALE_USERS=10000 SCALE_CREDS=10`.
//!
//! `SCALE_MONITOR=off` runs the servers with `[monitor] enabled = false` (no scheduler, no
//! sweep of every credential). `SCALE_SMAPS=1` also prints the server's largest memory mappings after the idle wait.
//!
//! Client and server share this machine's cores: compare settings within a run.

#[allow(dead_code)]
#[path = "../tests/common/server.rs"]
mod server;

#[allow(dead_code)]
#[path = "../tests/common/postgres.rs"]
mod postgres;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

const CLIENTS: usize = 16;
const IDLE: Duration = Duration::from_secs(5);

fn env_usize(name: &str, default: usize) -> usize {
    match std::env::var(name) {
        Ok(v) => v.trim().parse().unwrap_or_else(|_| panic!("{name}: {v:?} is not a whole number")),
        Err(_) => default,
    }
}

/// `VmRSS` and `VmHWM` of a process, in MiB.
fn rss_mib(pid: u32) -> (f64, f64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read /proc/PID/status");
    let field = |name: &str| -> f64 {
        let line = status.lines().find(|l| l.starts_with(name)).unwrap_or_else(|| panic!("no {name} in /proc status"));
        let kib: f64 = line[name.len()..].trim().trim_end_matches("kB").trim().parse().expect("kB value");
        kib / 1024.0
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// The largest mappings by resident size (`SCALE_SMAPS=1`): where the memory is.
fn print_smaps(pid: u32) {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps")).expect("read smaps");
    let mut maps: Vec<(u64, String)> = Vec::new();
    let mut name = String::new();
    for line in text.lines() {
        if let Some(kb) = line.strip_prefix("Rss:") {
            let kb: u64 = kb.trim().trim_end_matches("kB").trim().parse().unwrap_or(0);
            maps.push((kb, name.clone()));
        } else if line.split_whitespace().next().is_some_and(|f| f.contains('-') && !f.ends_with(':')) {
            name = line.to_string();
        }
    }
    maps.sort_by(|a, b| b.0.cmp(&a.0));
    let total: u64 = maps.iter().map(|m| m.0).sum();
    println!("  smaps: {} mappings, {:.1} MiB resident; largest:", maps.len(), total as f64 / 1024.0);
    for (kb, name) in maps.iter().take(8) {
        println!("    {:>8.1} MiB  {name}", *kb as f64 / 1024.0);
    }
}

/// CPU time (user + system) a process has used, and its monitor threads' share, in
/// seconds (`/proc/PID/stat`, `/proc/PID/task/*/stat`; clock ticks of 1/100 s).
fn cpu_s(pid: u32) -> (f64, f64) {
    let ticks = |stat: &str| -> f64 {
        // The fields after the command name (which may hold spaces) are space-separated.
        let rest = &stat[stat.rfind(')').expect("stat has a command name") + 2..];
        let f: Vec<&str> = rest.split(' ').collect();
        (f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()) as f64 / 100.0
    };
    let total = ticks(&std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("read /proc/PID/stat"));
    let mut monitor = 0.0;
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).expect("read /proc/PID/task").flatten() {
        let Ok(stat) = std::fs::read_to_string(task.path().join("stat")) else { continue };
        if stat.contains("(credhost-monito") {
            monitor += ticks(&stat);
        }
    }
    (total, monitor)
}

fn pct(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i].as_secs_f64() * 1000.0
}

/// Runs `n` operations over `CLIENTS` concurrent tasks; returns each one's latency (sorted)
/// and the wall time.
async fn run_all<F, Fut>(n: usize, op: F) -> (Vec<Duration>, Duration)
where
    F: Fn(usize) -> Fut + Send + Sync + Clone + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let next = Arc::new(AtomicUsize::new(0));
    let t0 = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..CLIENTS {
        let (op, next) = (op.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    break;
                }
                let t = Instant::now();
                op(i).await;
                lat.push(t.elapsed());
            }
            lat
        }));
    }
    let mut all = Vec::with_capacity(n);
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    let wall = t0.elapsed();
    all.sort();
    (all, wall)
}

/// Spawns the server and waits for `/readyz` 200; returns it and the time that took.
async fn start_ready(env: &server::Env, http: &reqwest::Client) -> (server::Server, Duration) {
    let t0 = Instant::now();
    let srv = env.start(&[]);
    loop {
        if let Ok(r) = http.get(format!("{}/readyz", srv.base)).send().await {
            if r.status() == 200 {
                break;
            }
        }
        assert!(t0.elapsed() < Duration::from_secs(120), "not ready after 120 s");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    (srv, t0.elapsed())
}

async fn list_all(http: &reqwest::Client, base: &str, tokens: &Arc<Vec<String>>, per_user: usize) -> (Vec<Duration>, Duration) {
    let url = format!("{base}/api/credentials?limit=50");
    let (http, tokens) = (http.clone(), tokens.clone());
    let expect = per_user.min(50);
    run_all(tokens.len(), move |i| {
        let (http, url, tokens) = (http.clone(), url.clone(), tokens.clone());
        async move {
            let r = http.get(&url).bearer_auth(&tokens[i]).send().await.unwrap();
            assert_eq!(r.status(), 200);
            let v: Value = r.json().await.unwrap();
            assert_eq!(v["items"].as_array().map(Vec::len), Some(expect), "page size");
        }
    })
    .await
}

/// CPU seconds used so far by the server and by this process (the clients).
fn both_cpu_s(server: u32) -> (f64, f64) {
    (cpu_s(server).0, cpu_s(std::process::id()).0)
}

/// One phase's latencies, rate and CPU per request (`cpu`: server and client seconds).
fn print_phase(name: &str, sorted: &[Duration], n: usize, wall: Duration, cpu: (f64, f64)) {
    println!("  {name}_p50_ms {:.2}", pct(sorted, 0.50));
    println!("  {name}_p99_ms {:.2}", pct(sorted, 0.99));
    println!("  {name}s_per_s {:.0}", n as f64 / wall.as_secs_f64());
    println!("  cpu_us_per_{name} server {:.0} client {:.0}", 1e6 * cpu.0 / n as f64, 1e6 * cpu.1 / n as f64);
}

fn scenario(rt: &tokio::runtime::Runtime, users: usize, creds: usize, cache: Option<&str>) {
    let label = cache.map_or("default".to_string(), |c| format!("{c}MiB"));
    let mut env = server::Env::new();
    if let Some(c) = cache {
        env = env.set("CREDHOST_CACHE_MIB", c);
    }
    if std::env::var("SCALE_MONITOR").is_ok_and(|v| v == "off") {
        let file = env.dir.path().join("monitor-off.toml");
        std::fs::write(&file, "[monitor]\nenabled = false\n").unwrap();
        env = env.set("CREDHOST_CONFIG", file.to_str().unwrap());
    }
    let admin = env.add_user("admin", true);
    rt.block_on(async move {
        let http = reqwest::Client::builder()
            .pool_max_idle_per_host(CLIENTS)
            .pool_idle_timeout(Duration::from_secs(4))
            .build()
            .unwrap();
        let (mut srv, cold_start) = start_ready(&env, &http).await;
        let base = srv.base.clone();
        let (rss_fresh, _) = rss_mib(srv.pid());

        // Users, over the admin API.
        let user_tokens = {
            let (http, base, admin) = (http.clone(), base.clone(), admin.clone());
            let out = Arc::new(std::sync::Mutex::new(vec![String::new(); users]));
            let sink = out.clone();
            run_all(users, move |i| {
                let (http, base, admin, sink) = (http.clone(), base.clone(), admin.clone(), sink.clone());
                async move {
                    let r = http
                        .post(format!("{base}/api/admin/users"))
                        .bearer_auth(&admin)
                        .json(&json!({"name": format!("user{i:06}")}))
                        .send()
                        .await
                        .unwrap();
                    assert_eq!(r.status(), 201);
                    let v: Value = r.json().await.unwrap();
                    sink.lock().unwrap()[i] = v["token"].as_str().expect("token").to_string();
                }
            })
            .await;
            let tokens = std::mem::take(&mut *out.lock().unwrap());
            Arc::new(tokens)
        };

        // Credentials: item i belongs to user i % users, so concurrent creates hit many users.
        let total = users * creds;
        let first_ids = Arc::new(std::sync::Mutex::new(vec![String::new(); users]));
        eprintln!("scale: creating (server pid {})", srv.pid());
        let cpu0 = both_cpu_s(srv.pid());
        let (create_lat, create_wall) = {
            let (http, url, tokens) = (http.clone(), format!("{base}/api/credentials"), user_tokens.clone());
            let firsts = first_ids.clone();
            run_all(total, move |i| {
                let (http, url, tokens, firsts) = (http.clone(), url.clone(), tokens.clone(), firsts.clone());
                let body = json!({"name": format!("cred-{:05}", i / users), "type": "bearer_token",
                    "description": "scale benchmark credential", "tags": ["scale"],
                    "fields": {"token": server::random_alnum(40), "test_url": "https://api.example.com/v1/me"}});
                async move {
                    let r = http.post(&url).bearer_auth(&tokens[i % users]).json(&body).send().await.unwrap();
                    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap_or_default());
                    if i < users {
                        let v: Value = r.json().await.unwrap();
                        firsts.lock().unwrap()[i] = v["id"].as_str().expect("id").to_string();
                    }
                }
            })
            .await
        };
        let (rss_created, _) = rss_mib(srv.pid());
        let cpu1 = both_cpu_s(srv.pid());
        // Updates: each user's first credential once, a new description (no secret change).
        let (update_lat, update_wall) = {
            let (http, base, tokens) = (http.clone(), base.clone(), user_tokens.clone());
            let ids = Arc::new(std::mem::take(&mut *first_ids.lock().unwrap()));
            run_all(users, move |i| {
                let (http, url, tokens) = (http.clone(), format!("{base}/api/credentials/{}", ids[i]), tokens.clone());
                async move {
                    let body = json!({"description": format!("updated by the scale benchmark ({i})")});
                    let r = http.patch(&url).bearer_auth(&tokens[i]).json(&body).send().await.unwrap();
                    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap_or_default());
                }
            })
            .await
        };
        let cpu_u = both_cpu_s(srv.pid());
        eprintln!("scale: listing (server pid {})", srv.pid());
        let (list_lat, list_wall) = list_all(&http, &base, &user_tokens, creds).await;
        let cpu2 = both_cpu_s(srv.pid());
        let (rss_listed, hwm) = rss_mib(srv.pid());
        let (cpu_before_idle, monitor_before_idle) = cpu_s(srv.pid());
        tokio::time::sleep(IDLE).await;
        let (rss_idle, _) = rss_mib(srv.pid());
        tokio::time::sleep(IDLE).await;
        let (rss_idle2, _) = rss_mib(srv.pid());
        let (cpu_after_idle, monitor_after_idle) = cpu_s(srv.pid());
        if std::env::var_os("SCALE_SMAPS").is_some() {
            print_smaps(srv.pid());
        }
        let db = env.data_dir().join("credhost.redb");
        let db_mib = std::fs::metadata(&db).map(|m| m.len()).unwrap_or(0) as f64 / (1024.0 * 1024.0);

        // Warm restart: plugin cache and database exist.
        let status = srv.stop();
        assert!(status.success(), "server exit {status}");
        drop(srv);
        // `SCALE_KEEP_DB=dir` keeps a copy of the stopped server's database there, and its
        // (throwaway) master key in `dir/master.key.b64`, to start a server on it
        // (`CREDHOST_DATA_DIR=dir CREDHOST_MASTER_KEY=$(cat dir/master.key.b64)`).
        if let Some(keep) = std::env::var_os("SCALE_KEEP_DB").map(std::path::PathBuf::from) {
            std::fs::create_dir_all(&keep).expect("create the copy's dir");
            std::fs::copy(&db, keep.join("credhost.redb")).expect("copy the database");
            let key = env.var("CREDHOST_MASTER_KEY").expect("the bench's master key");
            std::fs::write(keep.join("master.key.b64"), key).expect("write the key");
        }
        let (srv2, restart) = start_ready(&env, &http).await;
        let (rss_restarted, _) = rss_mib(srv2.pid());
        let (relist_lat, _) = list_all(&http, &srv2.base, &user_tokens, creds).await;
        let (rss_relisted, _) = rss_mib(srv2.pid());
        drop(srv2);

        let monitor = if std::env::var("SCALE_MONITOR").is_ok_and(|v| v == "off") { ", monitor off" } else { "" };
        println!("== cache {label}: {users} users x {creds} credentials, {CLIENTS} clients{monitor}");
        // Both processes share the cores: what each request costs each side, so a latency
        // can be read against how much of the machine the clients took.
        let cpu = |from: (f64, f64), to: (f64, f64)| (to.0 - from.0, to.1 - from.1);
        print_phase("create", &create_lat, total, create_wall, cpu(cpu0, cpu1));
        print_phase("update", &update_lat, users, update_wall, cpu(cpu1, cpu_u));
        print_phase("list", &list_lat, users, list_wall, cpu(cpu_u, cpu2));
        println!("  rss_fresh_mib {rss_fresh:.1}");
        println!("  rss_after_creates_mib {rss_created:.1}");
        println!("  rss_after_lists_mib {rss_listed:.1} (peak {hwm:.1})");
        println!("  rss_after_{}s_idle_mib {rss_idle:.1}", IDLE.as_secs());
        println!("  rss_after_{}s_idle_mib {rss_idle2:.1}", 2 * IDLE.as_secs());
        println!("  db_file_mib {db_mib:.1}");
        // What an idle server costs at this size (the monitor's sweep reads every credential).
        let idle_s = 2.0 * IDLE.as_secs_f64();
        println!(
            "  idle_cpu_pct {:.1} (monitor threads {:.1}; % of one core over {idle_s:.0} s)",
            100.0 * (cpu_after_idle - cpu_before_idle) / idle_s,
            100.0 * (monitor_after_idle - monitor_before_idle) / idle_s
        );
        println!("  monitor_cpu_s_whole_run {monitor_after_idle:.2} (of {cpu_after_idle:.2} s server CPU)");
        println!("  cold_start_to_ready_ms {:.0}", cold_start.as_secs_f64() * 1000.0);
        println!("  warm_restart_to_ready_ms {:.0}", restart.as_secs_f64() * 1000.0);
        println!("  after_restart: rss_mib {rss_restarted:.1}, list_p50_ms {:.2}, list_p99_ms {:.2}, rss_after_lists_mib {rss_relisted:.1}",
            pct(&relist_lat, 0.50), pct(&relist_lat, 0.99));
    });
}

fn main() {
    let users = env_usize("SCALE_USERS", 1000);
    let creds = env_usize("SCALE_CREDS", 10);
    assert!(users >= 1 && creds >= 1, "SCALE_USERS and SCALE_CREDS must be at least 1");
    let caches = std::env::var("SCALE_CACHE_MIB").unwrap_or_else(|_| "default,1024".into());
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    for c in caches.split(',').map(str::trim).filter(|c| !c.is_empty()) {
        scenario(&rt, users, creds, (c != "default").then_some(c));
    }
}
