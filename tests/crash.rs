//! Crash consistency: a child process creates credentials in a loop and is SIGKILLed at
//! random points; after each kill the store must open cleanly and hold every credential
//! the child saw committed, with its secret intact.
//!
//! The child is this test binary re-run with `CRASH_CHILD_DB` set, selecting the
//! `crash_child` test, which is a no-op in a normal run.

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::Duration;

use credhost::crypto::MasterKey;
use credhost::store::{CredentialUpdate, ListQuery, NewCredential, Role, Store};
use secrecy::{ExposeSecret, SecretString};

const CHILD_DB: &str = "CRASH_CHILD_DB";
const CHILD_PREFIX: &str = "CRASH_CHILD_PREFIX";
const ROUNDS: usize = 24;

fn secret_for(name: &str) -> String {
    format!("secret-of-{name}")
}

/// Child mode: create credentials until killed, announcing each after its commit returns.
#[test]
fn crash_child() {
    let Ok(db) = std::env::var(CHILD_DB) else {
        return;
    };
    let prefix = std::env::var(CHILD_PREFIX).unwrap();
    let key = MasterKey::from_env()
        .unwrap()
        .expect("CREDHOST_MASTER_KEY set by the parent");
    let store = Store::open(&db, key).unwrap();
    let user = store.get_user("crash").unwrap();
    let mut out = std::io::stdout().lock();
    writeln!(out, "ready").unwrap();
    out.flush().unwrap();
    for i in 0.. {
        let name = format!("{prefix}-{i}");
        let mut new = NewCredential::new(&name, "crash-test");
        new.fields.insert("i".into(), i.to_string());
        new.secrets
            .insert("token".into(), SecretString::from(secret_for(&name)));
        store
            .create_credential("crash", user.namespace, new)
            .unwrap();
        writeln!(out, "committed {name}").unwrap();
        out.flush().unwrap();
    }
}

fn random_u64() -> u64 {
    let mut b = [0u8; 8];
    getrandom::fill(&mut b).unwrap();
    u64::from_le_bytes(b)
}

#[test]
fn killed_writer_loses_nothing_committed() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("crash.redb");
    let key = MasterKey::generate().unwrap();
    let key_b64 = key.to_base64().expose_secret().to_owned();
    let user = {
        let store = Store::open(&db, key).unwrap();
        store.add_user("test", "crash", Role::User).unwrap()
    };
    // The harness names a test by its module path without the crate name.
    let child_test = match module_path!().split_once("::") {
        Some((_, m)) => format!("{m}::crash_child"),
        None => "crash_child".to_owned(),
    };
    let exe = std::env::current_exe().unwrap();
    let mut committed: Vec<String> = Vec::new();
    let mut killed_mid_stream = 0;
    for round in 0..ROUNDS {
        let mut child = Command::new(&exe)
            .args([
                child_test.as_str(),
                "--exact",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_DB, &db)
            .env(CHILD_PREFIX, format!("r{round}"))
            .env("CREDHOST_MASTER_KEY", &key_b64)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let reader = std::thread::spawn(move || {
            let mut names = Vec::new();
            let mut stdout = BufReader::new(stdout);
            let mut line = String::new();
            // Only whole lines count: a line cut by the kill has no newline.
            while stdout.read_line(&mut line).unwrap_or(0) > 0 && line.ends_with('\n') {
                // The harness may print "test crash_child ... " before the child's first line.
                if line.ends_with(" ready\n") || line == "ready\n" {
                    let _ = ready_tx.send(());
                } else if let Some(name) = line.trim_end().strip_prefix("committed ") {
                    names.push(name.to_owned());
                }
                line.clear();
            }
            names
        });
        // The random delay starts once the child has opened the store, so kills land
        // among the commits rather than during process start-up.
        if ready_rx.recv_timeout(Duration::from_secs(60)).is_err() {
            let _ = child.kill();
            panic!("round {round}: the child did not open the store within 60 s");
        }
        std::thread::sleep(Duration::from_millis(5 + random_u64() % 146));
        child.kill().unwrap(); // SIGKILL on unix
        let status = child.wait().unwrap();
        assert!(
            !status.success(),
            "round {round}: child exited by itself: {status:?}"
        );
        let names = reader.join().unwrap();
        if !names.is_empty() {
            killed_mid_stream += 1;
        }

        // Reopen (redb repairs after the crash) and check everything reported committed.
        let store = Store::open(&db, MasterKey::from_base64(&key_b64).unwrap())
            .unwrap_or_else(|e| panic!("round {round}: reopen after SIGKILL failed: {e}"));
        let first_new = committed.len();
        committed.extend(names);
        // Every page: fast disks commit well over one page of creates across the rounds.
        let mut items = Vec::new();
        let mut cursor = None;
        loop {
            let page = store
                .list_credentials(user.namespace, &ListQuery { limit: 1000, cursor, ..Default::default() })
                .unwrap();
            items.extend(page.items);
            match page.next_cursor {
                Some(c) => cursor = Some(c),
                None => break,
            }
        }
        let present: std::collections::HashMap<_, _> =
            items.iter().map(|c| (c.name.as_str(), c)).collect();
        for (i, name) in committed.iter().enumerate() {
            let c = present
                .get(name.as_str())
                .unwrap_or_else(|| panic!("round {round}: committed {name} lost"));
            assert!(c.secrets.contains_key("token"), "round {round}: {name}");
            // Decrypting is an audited write, so it covers this round's names each round
            // and everything in the last round.
            if i < first_new && round + 1 < ROUNDS {
                continue;
            }
            let s = store
                .reveal("test", user.namespace, c.id, "crash check")
                .unwrap();
            assert_eq!(
                s["token"].expose_secret(),
                &secret_for(name),
                "round {round}: {name}"
            );
        }
        // The audit chain survives too (each create and reveal is in it).
        store
            .verify_audit()
            .unwrap_or_else(|e| panic!("round {round}: {e}"));
    }
    eprintln!(
        "{ROUNDS} kills, {} credentials committed, {killed_mid_stream} rounds killed mid-stream",
        committed.len()
    );
    assert!(
        killed_mid_stream >= ROUNDS / 4,
        "too few rounds reached a commit before the kill: {killed_mid_stream}"
    );
}

const CHILD_THREADS: &str = "CRASH_CHILD_THREADS";
const WRITERS: usize = 16;

/// Child mode for [`killed_concurrent_writers_lose_nothing_committed`]: `WRITERS` threads
/// share one store and create credentials until killed, each announcing a create after
/// its commit returns, so kills land while batches of commits share one fsync. Odd
/// threads also update each credential they created (a new secret version and a field),
/// announced the same way, so batches mix creates and updates.
#[test]
fn crash_child_concurrent() {
    let (Ok(db), Ok(threads)) = (std::env::var(CHILD_DB), std::env::var(CHILD_THREADS)) else {
        return;
    };
    let prefix = std::env::var(CHILD_PREFIX).unwrap();
    let key = MasterKey::from_env()
        .unwrap()
        .expect("CREDHOST_MASTER_KEY set by the parent");
    let store = std::sync::Arc::new(Store::open(&db, key).unwrap());
    let user = store.get_user("crash").unwrap();
    let out = std::sync::Arc::new(std::sync::Mutex::new(std::io::stdout()));
    {
        let mut out = out.lock().unwrap();
        writeln!(out, "ready").unwrap();
        out.flush().unwrap();
    }
    let workers: Vec<_> = (0..threads.parse::<usize>().unwrap())
        .map(|t| {
            let (store, out, prefix) = (store.clone(), out.clone(), prefix.clone());
            std::thread::spawn(move || {
                for i in 0.. {
                    let name = format!("{prefix}-t{t}-{i}");
                    let mut new = NewCredential::new(&name, "crash-test");
                    new.fields.insert("i".into(), i.to_string());
                    new.secrets
                        .insert("token".into(), SecretString::from(secret_for(&name)));
                    let id = store
                        .create_credential("crash", user.namespace, new)
                        .unwrap()
                        .id;
                    // One write per line, so a line is never interleaved with another.
                    announce(&out, &format!("committed {name}\n"));
                    if t % 2 == 1 {
                        let mut upd = CredentialUpdate::default();
                        upd.fields.insert("u".into(), Some(i.to_string()));
                        upd.secrets.insert("token".into(), SecretString::from(updated_secret_for(&name)));
                        store.update_credential("crash", user.namespace, id, upd).unwrap();
                        announce(&out, &format!("updated {name}\n"));
                    }
                }
            })
        })
        .collect();
    for w in workers {
        w.join().unwrap();
    }
}

fn announce(out: &std::sync::Mutex<std::io::Stdout>, line: &str) {
    let mut out = out.lock().unwrap();
    out.write_all(line.as_bytes()).unwrap();
    out.flush().unwrap();
}

fn updated_secret_for(name: &str) -> String {
    format!("updated-secret-of-{name}")
}

/// Like [`killed_writer_loses_nothing_committed`] with `WRITERS` concurrent writers (group
/// commit): after each SIGKILL, every create any thread saw committed is there, secret
/// intact (the updated one where an update was announced), the audit chain verifies, and
/// the writes of a batch the kill caught before its fsync are simply absent.
#[test]
fn killed_concurrent_writers_lose_nothing_committed() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("crash.redb");
    let key = MasterKey::generate().unwrap();
    let key_b64 = key.to_base64().expose_secret().to_owned();
    let user = {
        let store = Store::open(&db, key).unwrap();
        store.add_user("test", "crash", Role::User).unwrap()
    };
    let child_test = match module_path!().split_once("::") {
        Some((_, m)) => format!("{m}::crash_child_concurrent"),
        None => "crash_child_concurrent".to_owned(),
    };
    let exe = std::env::current_exe().unwrap();
    let mut committed: Vec<String> = Vec::new();
    let mut updated: std::collections::HashSet<String> = Default::default();
    let mut killed_mid_stream = 0;
    let mut extra = 0usize;
    for round in 0..ROUNDS {
        let mut child = Command::new(&exe)
            .args([child_test.as_str(), "--exact", "--nocapture", "--test-threads=1"])
            .env(CHILD_DB, &db)
            .env(CHILD_PREFIX, format!("r{round}"))
            .env(CHILD_THREADS, WRITERS.to_string())
            .env("CREDHOST_MASTER_KEY", &key_b64)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let reader = std::thread::spawn(move || {
            let mut names = Vec::new();
            let mut stdout = BufReader::new(stdout);
            let mut line = String::new();
            while stdout.read_line(&mut line).unwrap_or(0) > 0 && line.ends_with('\n') {
                if line.ends_with(" ready\n") || line == "ready\n" {
                    let _ = ready_tx.send(());
                } else if let Some(name) = line.trim_end().strip_prefix("committed ") {
                    names.push((false, name.to_owned()));
                } else if let Some(name) = line.trim_end().strip_prefix("updated ") {
                    names.push((true, name.to_owned()));
                }
                line.clear();
            }
            names
        });
        if ready_rx.recv_timeout(Duration::from_secs(60)).is_err() {
            let _ = child.kill();
            panic!("round {round}: the child did not open the store within 60 s");
        }
        std::thread::sleep(Duration::from_millis(5 + random_u64() % 146));
        child.kill().unwrap();
        let status = child.wait().unwrap();
        assert!(!status.success(), "round {round}: child exited by itself: {status:?}");
        let lines = reader.join().unwrap();
        let names: Vec<String> = lines.iter().filter(|(u, _)| !u).map(|(_, n)| n.clone()).collect();
        if !names.is_empty() {
            killed_mid_stream += 1;
        }
        updated.extend(lines.into_iter().filter(|(u, _)| *u).map(|(_, n)| n));

        let store = Store::open(&db, MasterKey::from_base64(&key_b64).unwrap())
            .unwrap_or_else(|e| panic!("round {round}: reopen after SIGKILL failed: {e}"));
        let first_new = committed.len();
        committed.extend(names);
        let mut items = Vec::new();
        let mut cursor = None;
        loop {
            let page = store
                .list_credentials(user.namespace, &ListQuery { limit: 1000, cursor, ..Default::default() })
                .unwrap();
            items.extend(page.items);
            match page.next_cursor {
                Some(c) => cursor = Some(c),
                None => break,
            }
        }
        let present: std::collections::HashMap<_, _> =
            items.iter().map(|c| (c.name.as_str(), c)).collect();
        // Writes durable but not yet announced when the kill came: allowed (the kill may
        // fall between a commit and its line), counted for the summary.
        extra = present.len() - committed.len();
        // What survives is a prefix of the commit order, so of each thread's creates: no
        // thread's create is there without all of its earlier ones.
        let mut per_thread: std::collections::HashMap<&str, Vec<usize>> = Default::default();
        for name in present.keys() {
            if let Some((thread, i)) = name.rsplit_once('-') {
                per_thread.entry(thread).or_default().push(i.parse().unwrap());
            }
        }
        for (thread, mut seen) in per_thread {
            seen.sort_unstable();
            assert!(
                seen.iter().enumerate().all(|(k, i)| k == *i),
                "round {round}: {thread} survived with a gap: {seen:?}"
            );
        }
        for (i, name) in committed.iter().enumerate() {
            let c = present
                .get(name.as_str())
                .unwrap_or_else(|| panic!("round {round}: committed {name} lost"));
            assert!(c.secrets.contains_key("token"), "round {round}: {name}");
            let was_updated = updated.contains(name);
            if was_updated {
                assert_eq!(c.version, 2, "round {round}: update of {name} lost");
                assert!(c.fields.contains_key("u"), "round {round}: update of {name} lost");
            }
            if i < first_new && round + 1 < ROUNDS {
                continue;
            }
            let s = store.reveal("test", user.namespace, c.id, "crash check").unwrap();
            // An update may be durable without its line (killed in between): either secret
            // then, but never one the store cannot explain.
            let want = if was_updated || c.version == 2 { updated_secret_for(name) } else { secret_for(name) };
            assert_eq!(s["token"].expose_secret(), &want, "round {round}: {name}");
        }
        store
            .verify_audit()
            .unwrap_or_else(|e| panic!("round {round}: {e}"));
    }
    eprintln!(
        "{ROUNDS} kills of {WRITERS} writers, {} credentials committed and {} of them updated, {extra} more \
         durable but unannounced, {killed_mid_stream} rounds killed mid-stream",
        committed.len(),
        updated.len()
    );
    assert!(!updated.is_empty(), "no update was announced in {ROUNDS} rounds");
    assert!(
        killed_mid_stream >= ROUNDS / 4,
        "too few rounds reached a commit before the kill: {killed_mid_stream}"
    );
}
