//! A real PostgreSQL 15 for the tests: `initdb` into a temp dir owned by `postgres`
//! (scram-sha-256, superuser `admin` with a random password), listening on 127.0.0.1 at a
//! port chosen at run time, stopped on drop.
//!
//! Cleanup does not depend on destructors: every instance starts a small watchdog (`sh`, in
//! its own process group) whose stdin is the read end of a pipe only this test process
//! holds the write end of (close-on-exec, so no child inherits it). When the instance is
//! dropped, or the test process ends in any way (normal exit, panic, SIGKILL, Ctrl-C),
//! the write end closes, the watchdog reads EOF, stops the server (`pg_ctl -m immediate`)
//! and removes its directory. That is what makes the process-wide [`Postgres::shared`]
//! instance (a static, never dropped) safe.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Mutex, OnceLock};

pub const PG_BIN: &str = "/usr/lib/postgresql/15/bin";

/// Fails (never skips) when a binary is missing, naming the package to install.
pub fn need(path: &str, package: &str) {
    assert!(
        Path::new(path).exists(),
        "{path} is missing: install the Debian package `{package}` (apt-get install -y {package}); \
         this test needs the real peer and does not skip"
    );
}

/// Runs a command to completion; panics with its output if it fails. Returns stdout.
pub fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn random_hex(n: usize) -> String {
    let mut b = vec![0u8; n];
    getrandom::fill(&mut b).unwrap();
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// A running PostgreSQL 15 cluster.
pub struct Postgres {
    dir: PathBuf,
    pub port: u16,
    pub password: String,
    /// Held open while the instance lives; closing it wakes the watchdog.
    watchdog: Mutex<Option<std::io::PipeWriter>>,
}

/// `runuser -u postgres -- PG_BIN/tool`.
fn as_postgres(tool: &str) -> Command {
    let mut c = Command::new("runuser");
    c.args(["-u", "postgres", "--"]).arg(format!("{PG_BIN}/{tool}"));
    c
}

impl Postgres {
    /// A fresh cluster.
    pub fn start() -> Postgres {
        Postgres::start_with(false)
    }

    /// With `tls_only`: a throwaway certificate, `ssl = on`, and `pg_hba.conf` accepting
    /// only `hostssl` connections, so a login proves the session was encrypted.
    pub fn start_with(tls_only: bool) -> Postgres {
        need(&format!("{PG_BIN}/initdb"), "postgresql-15");
        need(&format!("{PG_BIN}/pg_ctl"), "postgresql-15");
        need(&format!("{PG_BIN}/psql"), "postgresql-15");
        need("/usr/sbin/runuser", "util-linux");
        // Not a TempDir: the watchdog owns the removal (it also runs after a SIGKILL).
        let dir = tempfile::Builder::new().prefix("credhost-pg-").tempdir().unwrap().keep();
        let password = format!("pg-{}", random_hex(12));
        std::fs::write(dir.join("pwfile"), &password).unwrap();
        run(Command::new("chown").args(["-R", "postgres:postgres"]).arg(&dir));
        let data = dir.join("data");
        let watchdog = spawn_watchdog(&dir);
        run(as_postgres("initdb")
            .arg("-D")
            .arg(&data)
            .args(["-A", "scram-sha-256", "-U", "admin", "--pwfile"])
            .arg(dir.join("pwfile")));
        let _ = std::fs::remove_file(dir.join("pwfile"));
        let mut tls = String::new();
        if tls_only {
            need("/usr/bin/openssl", "openssl");
            let (crt, key) = (dir.join("server.crt"), dir.join("server.key"));
            run(Command::new("openssl")
                .args(["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost", "-keyout"])
                .arg(&key)
                .arg("-out")
                .arg(&crt));
            run(Command::new("chown").args(["postgres:postgres"]).arg(&crt).arg(&key));
            run(Command::new("chmod").arg("600").arg(&key));
            std::fs::write(data.join("pg_hba.conf"), "hostssl all all 127.0.0.1/32 scram-sha-256\n").unwrap();
            tls = format!(" -c ssl=on -c ssl_cert_file={} -c ssl_key_file={}", crt.display(), key.display());
        }
        // The port is free when chosen but another test may take it before the server
        // binds: retry with another.
        let mut last = String::new();
        for _ in 0..5 {
            let port = free_port();
            let out = as_postgres("pg_ctl")
                .arg("-D")
                .arg(&data)
                .arg("-l")
                .arg(dir.join("log"))
                .arg("-w")
                .arg("-o")
                .arg(format!(
                    "-p {port} -k {} -c listen_addresses=127.0.0.1 -c max_connections=300{tls}",
                    dir.display()
                ))
                .arg("start")
                .output()
                .expect("run pg_ctl");
            if out.status.success() {
                return Postgres { dir, port, password, watchdog: Mutex::new(Some(watchdog)) };
            }
            last = format!(
                "{}\n{}\n{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr),
                std::fs::read_to_string(dir.join("log")).unwrap_or_default()
            );
        }
        panic!("PostgreSQL did not start:\n{last}");
    }

    /// One instance per test process, started on first use; every test takes its own
    /// database from it ([`Postgres::create_database`]). Stopped by its watchdog when the
    /// process ends.
    pub fn shared() -> &'static Postgres {
        static PG: OnceLock<Postgres> = OnceLock::new();
        PG.get_or_init(Postgres::start)
    }

    /// The superuser `admin`'s password.
    pub fn password(&self) -> &str {
        &self.password
    }

    /// `postgres://admin@127.0.0.1:PORT/NAME` (no password).
    pub fn url(&self, db: &str) -> String {
        format!("postgres://admin@127.0.0.1:{}/{db}", self.port)
    }

    /// A fresh, empty database; returns its URL without the password.
    pub fn create_database(&self, name: &str) -> String {
        self.psql("postgres", &format!("CREATE DATABASE \"{name}\""));
        self.url(name)
    }

    /// A fresh database with a random name; returns (name, URL).
    pub fn fresh_database(&self) -> (String, String) {
        let name = format!("t_{}", random_hex(8));
        let url = self.create_database(&name);
        (name, url)
    }

    /// Runs `sql` (one or more statements) in `db` as `admin` with `psql -X -q -At`;
    /// returns stdout (one line per row, `|` between columns). Panics with stderr on error.
    pub fn psql(&self, db: &str, sql: &str) -> String {
        let out = self.psql_output(db, sql);
        assert!(
            out.status.success(),
            "psql in {db} failed ({}):\n{sql}\n{}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim_end().to_string()
    }

    /// Like [`Postgres::psql`] but returns the output whatever the outcome.
    pub fn psql_output(&self, db: &str, sql: &str) -> std::process::Output {
        let mut cmd = Command::new(format!("{PG_BIN}/psql"));
        cmd.args(["-X", "-q", "-At", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1", "-U", "admin"])
            .arg("-p")
            .arg(self.port.to_string())
            .arg("-d")
            .arg(db)
            .env("PGPASSWORD", &self.password)
            .env("PGCONNECT_TIMEOUT", "10")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        // The SQL goes over stdin: one session, every statement in order.
        let mut child = cmd.spawn().unwrap_or_else(|e| panic!("running psql: {e}"));
        child.stdin.take().unwrap().write_all(sql.as_bytes()).unwrap();
        child.wait_with_output().unwrap()
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("log")).unwrap_or_default()
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let _ = as_postgres("pg_ctl")
            .arg("-D")
            .arg(self.data_dir())
            .args(["-m", "immediate", "-w", "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        // Closing the pipe lets the watchdog remove the directory.
        self.watchdog.lock().unwrap().take();
    }
}

/// Starts the watchdog for the cluster in `dir` (see the module comment); returns the
/// pipe's write end, to be held as long as the cluster should run.
fn spawn_watchdog(dir: &Path) -> std::io::PipeWriter {
    use std::os::unix::process::CommandExt as _;
    let (reader, writer) = std::io::pipe().expect("pipe");
    let script = format!(
        "cat >/dev/null 2>&1; runuser -u postgres -- {PG_BIN}/pg_ctl -D \"$1/data\" -m immediate -w stop >/dev/null 2>&1; \
         rm -rf \"$1\""
    );
    Command::new("sh")
        .args(["-c", &script, "credhost-pg-watchdog"])
        .arg(dir)
        .stdin(Stdio::from(reader))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        // Its own process group: a Ctrl-C to the test run does not kill it before it cleans up.
        .process_group(0)
        .spawn()
        .expect("spawn the PostgreSQL watchdog");
    writer
}
