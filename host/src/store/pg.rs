//! The PostgreSQL backend: the store's tables in one database shared by several credhost
//! replicas (issue 16). See docs/deploy.md.
//!
//! - Each store table is a table `kv_<name>` of `(k, kr, v)`: the key in an
//!   order-preserving encoding ([`super::kv::OrdKey`]), the key and the value as redb
//!   encodes them. The database holds what the redb file holds: metadata and sealed blobs,
//!   never a plaintext secret or the master key.
//! - Per-user tables carry `ns` and row-level security (forced, and credhost `SET ROLE`s to
//!   a role that owns nothing): a transaction sees the rows of the namespace it set with
//!   `set_config('credhost.namespace', ..., true)`, all rows under the host's own scope `*`,
//!   and none without the setting.
//! - Write transactions take one advisory lock (`WRITE_LOCK`), so writes run one at a time
//!   across every replica, exactly as redb runs them in one process: names stay unique,
//!   the audit chain stays one chain, and every operation keeps its read-then-write
//!   logic. Reads are REPEATABLE READ snapshots and never wait for writers.
//! - A transaction's writes are queued and sent together, pipelined, before its next read
//!   or its commit: the write lock is held for a few round trips per operation, not one
//!   per row.
//! - Group commit: a write transaction commits without waiting for the disk (ending it
//!   frees the write lock), then waits for a flush that covers it (see [`Tx::commit`]);
//!   PostgreSQL merges the flushes of concurrent writers. Answered only once durable.
//!
//! The store's code is synchronous; tokio-postgres runs on a small runtime of its own and
//! each statement is handed to it, so a call works from any thread.

use std::collections::{HashMap, VecDeque};
use std::ops::Bound;
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use tokio_postgres::{Client, Statement};

use super::{Result, StoreError};

/// The advisory lock every write transaction holds (an arbitrary constant: "credhost").
const WRITE_LOCK: i64 = 0x6372_6564_686f_7374;
/// The advisory lock held while migrations run.
const MIGRATE_LOCK: i64 = WRITE_LOCK + 1;
/// Rows a range cursor fetches per statement.
const PAGE: i64 = 256;

/// Store tables: (redb name, SQL table, per-user: row-level security on `ns`).
pub(crate) const TABLES: &[(&str, &str, bool)] = &[
    ("meta", "kv_meta", false),
    ("namespaces", "kv_namespaces", false),
    ("users", "kv_users", false),
    ("credentials", "kv_credentials", true),
    ("names", "kv_names", true),
    ("versions", "kv_versions", true),
    ("audit", "kv_audit", false),
    ("tokens", "kv_tokens", false),
    ("audit_by_namespace", "kv_audit_by_namespace", false),
    ("outbox", "kv_outbox", false),
    ("test_history", "kv_test_history", true),
    ("monitor_due", "kv_monitor_due", false),
    ("version_meta", "kv_version_meta", true),
    ("rotation_keys", "kv_rotation_keys", true),
    ("webhooks", "kv_webhooks", true),
    ("webhook_deliveries", "kv_webhook_deliveries", false),
    ("webhook_queue", "kv_webhook_queue", false),
];

/// The SQL table of a store table (a fixed name from [`TABLES`]: safe to format into SQL).
pub(crate) fn table_name(name: &str) -> &'static str {
    TABLES
        .iter()
        .find(|(t, _, _)| *t == name)
        .map(|(_, sql, _)| *sql)
        .unwrap_or_else(|| panic!("store table {name} is not in pg::TABLES"))
}

/// Writes a transaction queues before it sends them.
const MAX_QUEUED: usize = 64;

/// The upsert of a table (built once per table). A per-user row keeps its namespace when
/// replaced (the host's scope `*` may update any row but create none); a new one takes
/// the transaction's.
fn insert_sql(table: &str) -> &'static str {
    static SQL: std::sync::OnceLock<HashMap<&'static str, String>> = std::sync::OnceLock::new();
    let all = SQL.get_or_init(|| {
        TABLES
            .iter()
            .map(|(_, t, per_user)| {
                let values = if *per_user {
                    format!(", ns) VALUES ($1, $2, $3, COALESCE((SELECT ns FROM {t} WHERE k = $1), current_setting('credhost.namespace', true)))")
                } else {
                    ") VALUES ($1, $2, $3)".to_owned()
                };
                (*t, format!("INSERT INTO {t} (k, kr, v{values} ON CONFLICT (k) DO UPDATE SET v = EXCLUDED.v, kr = EXCLUDED.kr"))
            })
            .collect()
    });
    all.get(table).map(String::as_str).unwrap_or_else(|| panic!("{table} is not in pg::TABLES"))
}


/// The schema versions this build knows, in order; each applied once, in a transaction.
/// Never edit one that has shipped: add the next.
const MIGRATIONS: &[fn() -> String] = &[migration_1, migration_2, migration_3];

/// Store schema 2 (see `store::upgrade`, which does the same on redb): version metadata
/// moves into `versions` under the number with `META_PART` set, keeping each row's
/// namespace; the audit head moves to its schema 2 key in `meta`. Keys are written in both
/// encodings (`k` order-preserving, `kr` as redb encodes it), computed here from the
/// store's own, not spelled out by hand.
fn migration_3() -> String {
    use super::kv::{ord_key, raw_key};
    use super::schema::{AUDIT_HEAD_MOVED, META_AUDIT_HEAD, META_AUDIT_HEAD_V1, META_SCHEMA_VERSION};
    let lit = |b: &[u8]| format!("'\\x{}'::bytea", crate::crypto::hex(b));
    // The byte of each encoding that holds the version number's top bit: the one byte
    // where a key with the bit set differs from the same key without.
    fn bit(with: Vec<u8>, without: Vec<u8>) -> (usize, u8) {
        let differ: Vec<(usize, u8)> =
            with.iter().zip(&without).enumerate().filter(|(_, (a, b))| a != b).map(|(i, (a, b))| (i, a ^ b)).collect();
        assert!(with.len() == without.len() && differ.len() == 1, "one byte holds the bit");
        differ[0]
    }
    let id = u128::MAX / 3;
    let meta_part = super::versions::META_PART;
    let (ki, kb) = bit(raw_key::<(u128, u32)>(&(id, 7 | meta_part)), raw_key::<(u128, u32)>(&(id, 7)));
    let (ri, rb) = bit(ord_key::<(u128, u32)>(&(id, 7 | meta_part)), ord_key::<(u128, u32)>(&(id, 7)));
    let old_head = ord_key::<&str>(&META_AUDIT_HEAD_V1);
    // Under the write lock too: a replica of the older version still running writes
    // either before the move (its rows are moved) or after it (it reads the marker and
    // fails), never between two of these statements.
    format!(
        "SELECT pg_advisory_xact_lock({WRITE_LOCK});\n\
         SELECT set_config('credhost.namespace', '*', true);\n\
         INSERT INTO kv_versions (k, kr, v, ns) \
         SELECT set_byte(k, {ri}, get_byte(k, {ri}) | {rb}), set_byte(kr, {ki}, get_byte(kr, {ki}) | {kb}), v, ns \
         FROM kv_version_meta ON CONFLICT (k) DO UPDATE SET kr = EXCLUDED.kr, v = EXCLUDED.v, ns = EXCLUDED.ns;\n\
         DELETE FROM kv_version_meta;\n\
         INSERT INTO kv_meta (k, kr, v) SELECT {}, {}, v FROM kv_meta WHERE k = {hk} \
         ON CONFLICT (k) DO UPDATE SET v = EXCLUDED.v;\n\
         UPDATE kv_meta SET v = {} WHERE k = {hk};\n\
         UPDATE kv_meta SET v = {} WHERE k = {} AND v = {};\n",
        lit(&ord_key::<&str>(&META_AUDIT_HEAD)),
        lit(&raw_key::<&str>(&META_AUDIT_HEAD)),
        lit(AUDIT_HEAD_MOVED),
        lit(b"2"),
        lit(&ord_key::<&str>(&META_SCHEMA_VERSION)),
        lit(b"1"),
        hk = lit(&old_head),
    )
}

/// One row per PostgreSQL backend process, rewritten by the flush that makes a group
/// commit durable (see [`Tx::commit`]): a commit that wrote WAL is flushed synchronously,
/// one that only took a transaction id is not.
fn migration_2() -> String {
    "CREATE TABLE credhost_flush (pid int PRIMARY KEY, n bigint NOT NULL);\n".into()
}

fn migration_1() -> String {
    let mut sql = String::new();
    for (_, t, per_user) in TABLES {
        if *per_user {
            sql += &format!(
                "CREATE TABLE {t} (k bytea PRIMARY KEY, kr bytea NOT NULL, v bytea NOT NULL, \
                 ns text NOT NULL DEFAULT current_setting('credhost.namespace', true));\n\
                 CREATE INDEX {t}_ns ON {t} (ns);\n\
                 ALTER TABLE {t} ENABLE ROW LEVEL SECURITY;\n\
                 ALTER TABLE {t} FORCE ROW LEVEL SECURITY;\n\
                 CREATE POLICY by_namespace ON {t} \
                 USING (ns = current_setting('credhost.namespace', true) \
                        OR current_setting('credhost.namespace', true) = '*') \
                 WITH CHECK (ns = current_setting('credhost.namespace', true) \
                        OR (current_setting('credhost.namespace', true) = '*' AND ns <> '*'));\n"
            );
        } else {
            sql += &format!("CREATE TABLE {t} (k bytea PRIMARY KEY, kr bytea NOT NULL, v bytea NOT NULL);\n");
        }
    }
    sql
}

#[cfg(test)]
mod tests {
    /// Migration 3 sets the top bit of a version number's byte in both key encodings.
    #[test]
    fn migration_3_sets_the_version_bit_in_both_encodings() {
        let sql = super::migration_3();
        // `k` is big-endian (byte 16 starts the number), `kr` little-endian (byte 19 ends it).
        assert!(sql.contains("set_byte(k, 16, get_byte(k, 16) | 128)"), "{sql}");
        assert!(sql.contains("set_byte(kr, 19, get_byte(kr, 19) | 128)"), "{sql}");
        // The head's new key, in both encodings ("audit_chain_head", then 0, 0 in `k`).
        assert!(sql.contains("'\\x61756469745f636861696e5f686561640000'::bytea, '\\x61756469745f636861696e5f68656164'::bytea"), "{sql}");
    }
}

/// The newest schema version this build knows.
pub const SCHEMA_VERSION: i32 = MIGRATIONS.len() as i32;

/// How to reach the database (`[storage]` in the config).
#[derive(Clone)]
pub struct PgOptions {
    /// `postgres://user@host:port/db` (no password).
    pub url: String,
    pub password: Option<SecretString>,
    /// Most connections open at once.
    pub pool: usize,
    /// The role sessions `SET ROLE` to: no ownership, so row-level security applies.
    pub role: String,
}

impl std::fmt::Debug for PgOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgOptions")
            .field("url", &self.url)
            .field("password", &self.password.as_ref().map(|_| "[set]"))
            .field("pool", &self.pool)
            .field("role", &self.role)
            .finish()
    }
}

fn db_err(e: tokio_postgres::Error) -> StoreError {
    StoreError::Postgres(message(&e))
}

/// PostgreSQL's own message (not its DETAIL, which may quote row values), or the cause.
fn message(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(d) => format!("{}: {}", d.code().code(), d.message()),
        None => match std::error::Error::source(e) {
            Some(cause) => format!("{e}: {cause}"),
            None => e.to_string(),
        },
    }
}

/// Whether a PostgreSQL URL holds a password (`user:pw@` or `?password=`), which would
/// end up in logs and process listings.
pub fn carries_password(url: &str) -> bool {
    url::Url::parse(url).is_ok_and(|u| u.password().is_some() || u.query_pairs().any(|(k, _)| k == "password"))
}

/// A namespace as the `ns` column and `credhost.namespace` hold it: 32 hex digits.
pub(crate) fn namespace_label(ns: super::NamespaceId) -> String {
    format!("{:032x}", ns.key())
}

/// Quotes an identifier for SQL.
fn ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

/// Statement parameters as tokio-postgres takes them.
fn refs(params: &[Vec<u8>]) -> Vec<&(dyn tokio_postgres::types::ToSql + Sync)> {
    params.iter().map(|p| p as &(dyn tokio_postgres::types::ToSql + Sync)).collect()
}

/// A pooled connection and its prepared statements.
struct Conn {
    client: Arc<Client>,
    stmts: HashMap<String, Statement>,
}

/// The backend: a runtime for tokio-postgres and a pool of connections.
pub(crate) struct Pg {
    /// Taken only by `drop`.
    rt: Option<tokio::runtime::Runtime>,
    config: tokio_postgres::Config,
    role: String,
    pool: Mutex<PoolState>,
    freed: Condvar,
    max: usize,
    /// One write transaction per process at a time (the advisory lock makes it one across
    /// replicas): a writer waiting for the lock never holds a second connection. Turns
    /// are served in arrival order (next ticket, ticket served), so no writer starves.
    writer: Mutex<(u64, u64)>,
    writer_freed: Condvar,
}

impl Drop for Pg {
    /// Without blocking: a store may be dropped on an async thread, where a runtime's
    /// blocking shutdown panics.
    fn drop(&mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

struct PoolState {
    idle: Vec<Conn>,
    open: usize,
}

impl Pg {
    /// Connects, applies the migrations this build knows and checks the role.
    pub(crate) fn connect(opts: &PgOptions) -> Result<Pg> {
        if carries_password(&opts.url) {
            return Err(StoreError::Invalid(
                "the PostgreSQL URL carries a password: give it in CREDHOST_POSTGRES_PASSWORD or a password file".into(),
            ));
        }
        let mut config: tokio_postgres::Config = opts
            .url
            .parse()
            .map_err(|e: tokio_postgres::Error| StoreError::Invalid(format!("PostgreSQL URL: {e}")))?;
        if let Some(pw) = &opts.password {
            config.password(pw.expose_secret().as_bytes());
        }
        config.connect_timeout(Duration::from_secs(10));
        config.application_name("credhost");
        // Notices (e.g. "already exists, skipping") are not worth a log line.
        // No statement (the write lock's wait included) outlives a request's time limit by
        // much; a replica cut off mid-transaction is noticed by keepalives, and PostgreSQL
        // then rolls it back and frees the write lock.
        config.options(
            "-c client_min_messages=warning -c statement_timeout=60000 \
             -c tcp_keepalives_idle=30 -c tcp_keepalives_interval=10 -c tcp_keepalives_count=3",
        );
        config.keepalives_idle(Duration::from_secs(30));
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("credhost-pg")
            .enable_all()
            .build()
            .map_err(|e| StoreError::Postgres(format!("starting the PostgreSQL runtime: {e}")))?;
        let pg = Pg {
            rt: Some(rt),
            config,
            role: opts.role.clone(),
            pool: Mutex::new(PoolState { idle: Vec::new(), open: 0 }),
            freed: Condvar::new(),
            max: opts.pool.max(2),
            writer: Mutex::new((0, 0)),
            writer_freed: Condvar::new(),
        };
        pg.migrate()?;
        Ok(pg)
    }

    /// Runs `fut` on the backend's runtime and waits for it (from any thread).
    fn block<T: Send + 'static>(&self, fut: impl std::future::Future<Output = T> + Send + 'static) -> T {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        if let Some(rt) = &self.rt {
            rt.spawn(async move {
                let _ = tx.send(fut.await);
            });
        }
        rx.recv().expect("the PostgreSQL runtime stopped")
    }

    fn open_conn(&self, set_role: bool) -> Result<Conn> {
        let config = self.config.clone();
        let client = self.block(async move {
            // `sslmode=prefer` (the default) and `require` encrypt as libpq does, on the
            // rustls already in the tree (the certificate is not checked: libpq checks it
            // only in verify-ca/verify-full, which tokio-postgres does not offer).
            let host = match config.get_hosts().first() {
                Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
                _ => String::new(),
            };
            let tls = crate::plugins::caps::pgtls::Connector::new(&host).map_err(|e| e.to_string())?;
            let (client, conn) = if config.get_ssl_mode() == tokio_postgres::config::SslMode::Disable || host.is_empty() {
                let (client, conn) = config.connect(tokio_postgres::NoTls).await.map_err(|e| message(&e))?;
                (client, tokio::spawn(async move { conn.await }))
            } else {
                let port = config.get_ports().first().copied().unwrap_or(5432);
                let stream = tokio::time::timeout(Duration::from_secs(10), tokio::net::TcpStream::connect((host.as_str(), port)))
                    .await
                    .map_err(|_| format!("{host}:{port}: timed out"))?
                    .map_err(|e| format!("{host}:{port}: {e}"))?;
                // Pipelined batches must not wait for Nagle.
                let _ = stream.set_nodelay(true);
                let (client, conn) = config.connect_raw(stream, tls).await.map_err(|e| message(&e))?;
                (client, tokio::spawn(async move { conn.await }))
            };
            tokio::spawn(async move {
                if let Ok(Err(e)) = conn.await {
                    tracing::warn!(error = %e, "PostgreSQL connection closed");
                }
            });
            Ok::<_, String>(client)
        });
        let client = Arc::new(client.map_err(|e| StoreError::Postgres(format!("connecting to PostgreSQL: {e}")))?);
        let mut conn = Conn { client, stmts: HashMap::new() };
        if set_role {
            self.batch(&mut conn, &format!("SET ROLE {}", ident(&self.role))).map_err(|e| {
                StoreError::Postgres(format!(
                    "SET ROLE {}: {e} (the connecting user must be a member of it: GRANT {} TO <user>)",
                    self.role,
                    ident(&self.role)
                ))
            })?;
        }
        Ok(conn)
    }

    fn checkout(&self) -> Result<Conn> {
        let mut st = self.pool.lock().unwrap_or_else(PoisonError::into_inner);
        loop {
            if let Some(c) = st.idle.pop() {
                if c.client.is_closed() {
                    // The server went away (a restart): open a fresh one instead.
                    st.open -= 1;
                    continue;
                }
                return Ok(c);
            }
            if st.open < self.max {
                st.open += 1;
                drop(st);
                return self.open_conn(true).inspect_err(|_| {
                    self.pool.lock().unwrap_or_else(PoisonError::into_inner).open -= 1;
                    self.freed.notify_one();
                });
            }
            st = self.freed.wait(st).unwrap_or_else(PoisonError::into_inner);
        }
    }

    fn checkin(&self, conn: Conn) {
        let mut st = self.pool.lock().unwrap_or_else(PoisonError::into_inner);
        if conn.client.is_closed() {
            st.open -= 1;
        } else {
            st.idle.push(conn);
        }
        self.freed.notify_one();
    }

    fn batch(&self, conn: &mut Conn, sql: &str) -> Result<()> {
        let client = conn.client.clone();
        let sql = sql.to_owned();
        self.block(async move { client.batch_execute(&sql).await }).map_err(db_err)
    }

    /// A prepared statement, from the connection's cache.
    fn prepare(&self, conn: &mut Conn, sql: &str) -> Result<Statement> {
        if let Some(s) = conn.stmts.get(sql) {
            return Ok(s.clone());
        }
        let client = conn.client.clone();
        let text = sql.to_owned();
        let s = self.block(async move { client.prepare(&text).await }).map_err(db_err)?;
        conn.stmts.insert(sql.to_owned(), s.clone());
        Ok(s)
    }

    fn query(&self, conn: &mut Conn, sql: &str, params: Vec<Vec<u8>>) -> Result<Vec<tokio_postgres::Row>> {
        let stmt = self.prepare(conn, sql)?;
        let client = conn.client.clone();
        self.block(async move { client.query(&stmt, &refs(&params)).await })
        .map_err(db_err)
    }

    /// Applies the migrations the database lacks, under an advisory lock (replicas starting
    /// together), and refuses a schema newer than this build.
    fn migrate(&self) -> Result<()> {
        let mut conn = self.open_conn(false)?;
        let res = self.migrate_on(&mut conn);
        if res.is_err() {
            let _ = self.batch(&mut conn, "ROLLBACK");
        }
        res
    }

    fn migrate_on(&self, conn: &mut Conn) -> Result<()> {
        self.batch(
            conn,
            &format!(
                "BEGIN; SELECT pg_advisory_xact_lock({MIGRATE_LOCK}); \
                 CREATE TABLE IF NOT EXISTS credhost_schema (version int NOT NULL);"
            ),
        )?;
        let rows = self.query(conn, "SELECT max(version) FROM credhost_schema", vec![])?;
        let found: i32 = rows.first().and_then(|r| r.get::<_, Option<i32>>(0)).unwrap_or(0);
        if found > SCHEMA_VERSION {
            return Err(StoreError::Postgres(format!(
                "the database's schema version {found} is newer than this credhost knows ({SCHEMA_VERSION}): \
                 upgrade credhost on this replica"
            )));
        }
        for v in found..SCHEMA_VERSION {
            self.batch(conn, &MIGRATIONS[v as usize]())?;
            self.batch(conn, &format!("INSERT INTO credhost_schema (version) VALUES ({})", v + 1))?;
        }
        // The role every session takes: created when missing (needs CREATEROLE; a DBA can
        // create it beforehand), allowed the rows and nothing else. Roles are per cluster:
        // another database's first start may create it at the same moment.
        let role = ident(&self.role);
        let lit = self.role.replace('\'', "''");
        let tables: Vec<&str> = TABLES.iter().map(|(_, sql, _)| *sql).collect();
        self.batch(
            conn,
            &format!(
                "DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '{lit}') THEN \
                 BEGIN CREATE ROLE {role} NOLOGIN; \
                 EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL; END; \
                 END IF; END $$;\n\
                 GRANT SELECT ON credhost_schema TO {role};\n\
                 GRANT SELECT, INSERT, UPDATE ON credhost_flush TO {role};\n\
                 GRANT SELECT, INSERT, UPDATE, DELETE ON {} TO {role};\n\
                 COMMIT;",
                tables.join(", ")
            ),
        )?;
        // Membership, so this user may SET ROLE (a superuser needs none; others need it
        // granted by whoever may: best effort).
        let _ = self.batch(conn, &format!("GRANT {role} TO CURRENT_USER"));
        Ok(())
    }

    /// Begins a transaction in `scope` (a namespace id, or `*` for the host's own work).
    pub(crate) fn begin(self: &Arc<Self>, write: bool, scope: &str) -> Result<Tx> {
        if write {
            let mut turns = self.writer.lock().unwrap_or_else(PoisonError::into_inner);
            let ticket = turns.0;
            turns.0 += 1;
            while turns.1 != ticket {
                turns = self.writer_freed.wait(turns).unwrap_or_else(PoisonError::into_inner);
            }
        }
        let mut tx =
            Tx { pg: self.clone(), conn: Mutex::new(None), queued: Mutex::default(), turn: write, done: false, read: !write, pooled: true };
        let mut conn = tx.pg.checkout()?;
        // The scope is a UUID or `*` (checked by the caller): safe to format.
        debug_assert!(scope == "*" || scope.chars().all(|c| c.is_ascii_hexdigit()));
        let mut sql = String::new();
        if write {
            sql += &format!(
                "BEGIN ISOLATION LEVEL READ COMMITTED; SELECT set_config('credhost.namespace', '{scope}', true); \
                 SELECT pg_advisory_xact_lock({WRITE_LOCK});"
            );
        } else {
            sql += &format!(
                "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; SELECT set_config('credhost.namespace', '{scope}', true);"
            );
        }
        let res = tx.pg.batch(&mut conn, &sql);
        *tx.conn.get_mut().unwrap_or_else(PoisonError::into_inner) = Some(conn);
        res?;
        Ok(tx)
    }

    /// Opens a connection as the configured user (not the row-level role), for the
    /// migration from redb, which writes every namespace's rows with their `ns`.
    pub(crate) fn raw(self: &Arc<Self>) -> Result<Tx> {
        let mut conn = self.open_conn(false)?;
        // The host's scope: row-level security is forced on the tables' owner too.
        self.batch(&mut conn, "BEGIN; SELECT set_config('credhost.namespace', '*', true)")?;
        Ok(Tx { pg: self.clone(), conn: Mutex::new(Some(conn)), queued: Mutex::default(), turn: false, done: false, read: false, pooled: false })
    }
}

/// A transaction on one pooled connection. A write transaction rolls back on drop
/// unless committed; a read transaction is ended with the connection's next use.
pub(crate) struct Tx {
    pg: Arc<Pg>,
    conn: Mutex<Option<Conn>>,
    /// Writes not sent yet (see [`Tx::flush`]).
    queued: Mutex<Vec<(&'static str, Vec<Vec<u8>>)>>,
    /// Holds this process's writer turn (see [`Pg::writer`]) until it gives it back.
    turn: bool,
    /// Committed or rolled back.
    done: bool,
    /// A read transaction (a write through it is refused).
    read: bool,
    /// From the pool (returned to it), or a connection of its own (closed after).
    pooled: bool,
}

impl Tx {
    fn with<T>(&self, f: impl FnOnce(&Pg, &mut Conn) -> Result<T>) -> Result<T> {
        let mut slot = self.conn.lock().unwrap_or_else(PoisonError::into_inner);
        let conn = slot.as_mut().ok_or_else(|| StoreError::Postgres("transaction already ended".into()))?;
        f(&self.pg, conn)
    }

    /// Runs a statement after the queued writes, in the same round trip (pipelined).
    fn query(&self, sql: &str, params: Vec<Vec<u8>>) -> Result<Vec<tokio_postgres::Row>> {
        Ok(self.send(Some((sql, params)))?.unwrap_or_default())
    }

    /// Sends the queued writes. Every read and the commit send them first (see
    /// [`Tx::query`]), so a transaction reads its own writes.
    fn flush(&self) -> Result<()> {
        self.send(None).map(|_| ())
    }

    /// Sends the queued writes and then `last`, pipelined (one round trip for all), in
    /// order; returns `last`'s rows.
    fn send(&self, last: Option<(&str, Vec<Vec<u8>>)>) -> Result<Option<Vec<tokio_postgres::Row>>> {
        let queued = std::mem::take(&mut *self.queued.lock().unwrap_or_else(PoisonError::into_inner));
        self.with(|pg, conn| {
            let mut writes = Vec::with_capacity(queued.len());
            for (sql, params) in queued {
                writes.push((pg.prepare(conn, sql)?, params));
            }
            let last = match last {
                Some((sql, params)) => Some((pg.prepare(conn, sql)?, params)),
                None if writes.is_empty() => return Ok(None),
                None => None,
            };
            let client = conn.client.clone();
            pg.block(async move {
                let sends = writes.iter().map(|(stmt, params)| {
                    let client = &client;
                    async move { client.execute(stmt, &refs(params)).await.map(|_| ()) }
                });
                let read = async {
                    match &last {
                        Some((stmt, params)) => client.query(stmt, &refs(params)).await.map(Some),
                        None => Ok(None),
                    }
                };
                // Polled in order, so sent in order; the first error is PostgreSQL's (the
                // later ones only say the transaction is aborted).
                let (written, read) = futures_util::future::join(futures_util::future::join_all(sends), read).await;
                written.into_iter().collect::<std::result::Result<Vec<()>, _>>()?;
                read
            })
            .map_err(db_err)
        })
    }

    pub(crate) fn get(&self, table: &str, k: Vec<u8>) -> Result<Option<Vec<u8>>> {
        let rows = self.query(&format!("SELECT v FROM {table} WHERE k = $1"), vec![k])?;
        Ok(rows.first().map(|r| r.get(0)))
    }

    pub(crate) fn get_many(&self, table: &str, keys: Vec<Vec<u8>>) -> Result<HashMap<Vec<u8>, Vec<u8>>> {
        self.flush()?;
        let sql = format!("SELECT k, v FROM {table} WHERE k = ANY($1)");
        let rows = self.with(|pg, conn| {
            let stmt = pg.prepare(conn, &sql)?;
            let client = conn.client.clone();
            pg.block(async move { client.query(&stmt, &[&keys]).await }).map_err(db_err)
        })?;
        Ok(rows.into_iter().map(|r| (r.get(0), r.get(1))).collect())
    }

    /// Inserts or replaces a row: queued, sent with the next read or the commit.
    pub(crate) fn insert(&self, table: &'static str, k: Vec<u8>, kr: Vec<u8>, v: Vec<u8>) -> Result<()> {
        if self.read {
            return Err(StoreError::Corrupt("a write in a read transaction".into()));
        }
        let sql = insert_sql(table);
        let full = {
            let mut queued = self.queued.lock().unwrap_or_else(PoisonError::into_inner);
            queued.push((sql, vec![k, kr, v]));
            queued.len() >= MAX_QUEUED
        };
        if full {
            self.flush()?;
        }
        Ok(())
    }

    pub(crate) fn remove(&self, table: &str, k: Vec<u8>) -> Result<Option<Vec<u8>>> {
        let rows = self.query(&format!("DELETE FROM {table} WHERE k = $1 RETURNING v"), vec![k])?;
        Ok(rows.first().map(|r| r.get(0)))
    }

    pub(crate) fn remove_many(&self, table: &str, keys: Vec<Vec<u8>>) -> Result<()> {
        for k in keys {
            self.remove(table, k)?;
        }
        Ok(())
    }

    /// Every key of `table` (the migration's resume: rows the source no longer has).
    pub(crate) fn keys(&self, table: &str) -> Result<Vec<Vec<u8>>> {
        let rows = self.query(&format!("SELECT k FROM {table}"), vec![])?;
        Ok(rows.into_iter().map(|r| r.get(0)).collect())
    }

    pub(crate) fn count(&self, table: &str) -> Result<u64> {
        let rows = self.query(&format!("SELECT count(*) FROM {table}"), vec![])?;
        Ok(rows.first().map(|r| r.get::<_, i64>(0)).unwrap_or(0) as u64)
    }

    /// Copies one row as it is, with its namespace (the migration from redb); a row already
    /// there (an interrupted copy) takes the source's current value.
    pub(crate) fn copy_row(&self, table: &str, k: Vec<u8>, kr: Vec<u8>, v: Vec<u8>, ns: Option<String>) -> Result<()> {
        match ns {
            Some(ns) => self.query(
                &format!("INSERT INTO {table} (k, kr, v, ns) VALUES ($1, $2, $3, convert_from($4, 'UTF8')) \
                     ON CONFLICT (k) DO UPDATE SET kr = EXCLUDED.kr, v = EXCLUDED.v, ns = EXCLUDED.ns"),
                vec![k, kr, v, ns.into_bytes()],
            )?,
            None => self.query(
                &format!("INSERT INTO {table} (k, kr, v) VALUES ($1, $2, $3) \
                     ON CONFLICT (k) DO UPDATE SET kr = EXCLUDED.kr, v = EXCLUDED.v"),
                vec![k, kr, v],
            )?,
        };
        Ok(())
    }

    /// Rows of `table` in the bounds, ascending or descending, at most [`PAGE`].
    fn page(&self, table: &str, lo: &Bound<Vec<u8>>, hi: &Bound<Vec<u8>>, asc: bool, limit: i64) -> Result<Vec<(Vec<u8>, Vec<u8>, Vec<u8>)>> {
        let mut sql = format!("SELECT k, kr, v FROM {table} WHERE true");
        let mut params = Vec::new();
        for (b, lt, le) in [(lo, ">", ">="), (hi, "<", "<=")] {
            match b {
                Bound::Included(k) => {
                    params.push(k.clone());
                    sql += &format!(" AND k {le} ${}", params.len());
                }
                Bound::Excluded(k) => {
                    params.push(k.clone());
                    sql += &format!(" AND k {lt} ${}", params.len());
                }
                Bound::Unbounded => {}
            }
        }
        sql += if asc { " ORDER BY k ASC" } else { " ORDER BY k DESC" };
        sql += &format!(" LIMIT {limit}");
        let rows = self.query(&sql, params)?;
        Ok(rows.into_iter().map(|r| (r.get(0), r.get(1), r.get(2))).collect())
    }

    /// Commits (durably unless `lazy`: then PostgreSQL's `synchronous_commit = off`).
    pub(crate) fn commit(mut self, lazy: bool) -> Result<()> {
        self.flush()?;
        // Group commit: the transaction commits without waiting for the disk, which ends it
        // and frees the write lock at once; then a transaction of its own that writes one
        // row (so its commit waits for the flush: one that writes no WAL would not) commits
        // synchronously, and its flush covers this commit's WAL and that of every commit
        // before it. Writers thus hold the lock for no fsync, and the
        // flushes of concurrent writers are grouped by PostgreSQL. Answered only after that
        // flush (others may see the write a moment before it, as with redb's group commit;
        // a crash then loses it, unanswered). `lazy`: no flush at all.
        let mut res = self.with(|pg, conn| pg.batch(conn, "SET LOCAL synchronous_commit = off; COMMIT"));
        self.done = true;
        // The next writer of this process may go on while this one waits for the disk.
        self.give_turn_back();
        if res.is_ok() && !lazy {
            // This session's own row: flushers never wait for each other's row locks.
            res = self.with(|pg, conn| {
                pg.batch(
                    conn,
                    "BEGIN; INSERT INTO credhost_flush (pid, n) VALUES (pg_backend_pid(), 1) \
                     ON CONFLICT (pid) DO UPDATE SET n = credhost_flush.n + 1; COMMIT",
                )
            });
        }
        if res.is_err() {
            // The connection's state is unknown: do not reuse it.
            self.conn.get_mut().unwrap_or_else(PoisonError::into_inner).take();
            if self.pooled {
                self.pg.pool.lock().unwrap_or_else(PoisonError::into_inner).open -= 1;
                self.pg.freed.notify_one();
            }
        }
        res
    }
}

impl Tx {
    fn give_turn_back(&mut self) {
        if std::mem::take(&mut self.turn) {
            self.pg.writer.lock().unwrap_or_else(PoisonError::into_inner).1 += 1;
            self.pg.writer_freed.notify_all();
        }
    }
}

impl Drop for Tx {
    /// Ends the transaction (a read too: an open snapshot would hold back VACUUM and
    /// block schema changes) and returns the connection.
    fn drop(&mut self) {
        let slot = self.conn.get_mut().unwrap_or_else(PoisonError::into_inner);
        if let Some(mut conn) = slot.take() {
            let ended = self.done || self.pg.batch(&mut conn, "ROLLBACK").is_ok();
            if !self.pooled {
                // Closed with the client; never counted in the pool.
            } else if ended {
                self.pg.checkin(conn);
            } else {
                // Left in an unknown state: closed with the client.
                self.pg.pool.lock().unwrap_or_else(PoisonError::into_inner).open -= 1;
                self.pg.freed.notify_one();
            }
        }
        self.give_turn_back();
    }
}

/// A range of rows fetched a page at a time from either end.
pub(crate) struct Cursor<'t> {
    tx: &'t Tx,
    table: &'static str,
    /// The part of the range not fetched yet.
    lo: Bound<Vec<u8>>,
    hi: Bound<Vec<u8>>,
    exhausted: bool,
    /// Rows per statement.
    page: i64,
    /// Fetched rows (raw key, value), ascending.
    front: VecDeque<(Vec<u8>, Vec<u8>)>,
    back: VecDeque<(Vec<u8>, Vec<u8>)>,
}

impl<'t> Cursor<'t> {
    pub(crate) fn new(tx: &'t Tx, table: &'static str, lo: Bound<Vec<u8>>, hi: Bound<Vec<u8>>) -> Self {
        Cursor { tx, table, lo, hi, exhausted: false, page: PAGE, front: VecDeque::new(), back: VecDeque::new() }
    }

    /// For one row from either end (`first`, `last`, `is_empty`): fetches one at a time.
    pub(crate) fn one_at_a_time(mut self) -> Self {
        self.page = 1;
        self
    }

    /// The next row from the front (`asc`) or the back.
    pub(crate) fn next_row(&mut self, asc: bool) -> Option<Result<(Vec<u8>, Vec<u8>)>> {
        let buffered = if asc { self.front.pop_front() } else { self.back.pop_back() };
        if let Some(row) = buffered {
            return Some(Ok(row));
        }
        if !self.exhausted {
            let rows = match self.tx.page(self.table, &self.lo, &self.hi, asc, self.page) {
                Ok(r) => r,
                Err(e) => {
                    self.exhausted = true;
                    return Some(Err(e));
                }
            };
            if (rows.len() as i64) < self.page {
                self.exhausted = true;
            }
            if let Some((k, _, _)) = rows.last() {
                if asc {
                    self.lo = Bound::Excluded(k.clone());
                } else {
                    self.hi = Bound::Excluded(k.clone());
                }
            }
            for (_, kr, v) in rows {
                if asc {
                    self.front.push_back((kr, v));
                } else {
                    self.back.push_front((kr, v));
                }
            }
            let fetched = if asc { self.front.pop_front() } else { self.back.pop_back() };
            if let Some(row) = fetched {
                return Some(Ok(row));
            }
        }
        // Nothing left between the ends: take from the other end's buffer.
        if asc { self.back.pop_front() } else { self.front.pop_back() }.map(Ok)
    }
}
