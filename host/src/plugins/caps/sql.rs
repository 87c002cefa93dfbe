//! `sql.ping`: host-native database connect + `SELECT 1`.
//!
//! PostgreSQL only, with `tokio-postgres`. `sslmode=prefer` (libpq's default) and
//! `require` use TLS ([`super::pgtls`], libpq's semantics: encrypted, certificate not
//! checked against a CA); `prefer` falls back to plain text only when the server has no
//! TLS; `disable` never tries. `verify-ca` and `verify-full` answer `unsupported` rather
//! than silently verifying less than the DSN asks. MySQL/MariaDB DSNs answer `unsupported`.
//!
//! The DSN is held in a secret field and names its own target: there is no allow-list
//! entry to match, but the host refuses (`denied`, since `rejected` means a refused
//! login here) Unix sockets and, unless the operator allows private networks,
//! private/loopback/link-local addresses. The name is resolved here
//! and the connection goes to a checked address.

use std::time::{Duration, Instant};

use secrecy::ExposeSecret;
use tokio_postgres::config::{Host, SslMode};
use tokio_postgres::error::SqlState;
use tokio_postgres::SimpleQueryMessage;

use super::netio;
use crate::plugins::bindings::credhost::provider::sql;
use crate::plugins::bindings::credhost::provider::types::{Error, FieldError};
use crate::plugins::manifest::Capability;
use crate::plugins::state::CallState;
use crate::redact;

impl sql::Host for CallState {
    fn ping(&mut self, dsn_field: String) -> Result<sql::PingResult, Error> {
        self.gate(Capability::Sql, &dsn_field)?;
        let dsn = self.secret_of(&dsn_field)?;
        let invalid = |message: String| Error::Invalid(vec![FieldError { field: dsn_field.clone(), message }]);
        let text = dsn.expose_secret().trim();
        let lower = text.to_ascii_lowercase();
        if lower.starts_with("mysql://") || lower.starts_with("mariadb://") {
            return Err(Error::Unsupported("sql.ping supports PostgreSQL only; MySQL/MariaDB is not implemented yet".into()));
        }
        for mode in ["verify-ca", "verify-full"] {
            if lower.contains(&format!("sslmode={mode}")) {
                return Err(Error::Unsupported(format!(
                    "sslmode={mode} needs a CA to verify against, which sql.ping does not support yet; use require"
                )));
            }
        }
        let config: tokio_postgres::Config = text.parse().map_err(|e: tokio_postgres::Error| {
            invalid(format!("not a PostgreSQL connection string: {}", redact::scrub(&e.to_string(), [&dsn])))
        })?;
        if !matches!(config.get_ssl_mode(), SslMode::Disable | SslMode::Prefer | SslMode::Require) {
            return Err(Error::Unsupported("this sslmode is not supported by sql.ping; use disable, prefer or require".into()));
        }
        let mut targets = Vec::new();
        for (i, h) in config.get_hosts().iter().enumerate() {
            let port = config.get_ports().get(i).or(config.get_ports().first()).copied().unwrap_or(5432);
            match h {
                Host::Tcp(name) => {
                    let addr = config.get_hostaddrs().get(i).map(|a| a.to_string());
                    targets.push((addr.unwrap_or_else(|| name.clone()), port));
                }
                #[allow(unreachable_patterns)]
                _ => {
                    self.refuse(Capability::Sql, format!("{dsn_field}: unix socket"));
                    return Err(Error::Denied("Unix-socket hosts are not allowed; give a TCP host".into()));
                }
            }
        }
        if targets.is_empty() {
            return Err(invalid("the connection string names no host".into()));
        }
        if config.get_user().is_none() {
            return Err(invalid("the connection string names no user".into()));
        }
        let timeout = self.call_timeout(None)?;
        let allow_private = self.host.allow_private_networks;
        let started = Instant::now();
        let result = netio::run(async move {
            match tokio::time::timeout(timeout, ping(config, targets, allow_private, timeout)).await {
                Ok(r) => r,
                Err(_) => Err(Error::Unreachable(format!("timed out after {} ms", timeout.as_millis()))),
            }
        })
        .and_then(|r| r);
        let scrub = |m: String| redact::scrub(&m, [&dsn]);
        match result {
            Ok(server_version) => Ok(sql::PingResult {
                server_version,
                latency_ms: started.elapsed().as_millis().min(u128::from(u32::MAX)) as u32,
            }),
            // Policy refusals are `denied`: `rejected` means the server refused the login.
            Err(Error::Rejected(m)) if m.starts_with(REFUSED) => {
                self.refuse(Capability::Sql, format!("{dsn_field}: private address"));
                Err(Error::Denied(scrub(m[REFUSED.len()..].to_string())))
            }
            Err(Error::Rejected(m)) => Err(Error::Rejected(scrub(m))),
            Err(Error::Unreachable(m)) => Err(Error::Unreachable(scrub(m))),
            Err(e) => Err(e),
        }
    }
}

const REFUSED: &str = "refused: ";

async fn ping(
    config: tokio_postgres::Config,
    targets: Vec<(String, u16)>,
    allow_private: bool,
    timeout: Duration,
) -> Result<String, Error> {
    let mut last = None;
    for (host, port) in targets {
        let addrs = match netio::resolve_checked(&host, port, allow_private).await {
            Ok(a) => a,
            Err(netio::ResolveError::Refused(m)) => return Err(Error::Rejected(format!("{REFUSED}{m}"))),
            Err(netio::ResolveError::Unreachable(m)) => {
                last = Some(m);
                continue;
            }
        };
        let stream = match netio::connect_checked(&addrs, timeout).await {
            Ok(s) => s,
            Err(Error::Unreachable(m)) => {
                last = Some(m);
                continue;
            }
            Err(e) => return Err(e),
        };
        // `prefer` tries TLS first and falls back only when the server says it has none
        // (as libpq); `require` fails without it; `disable` never tries.
        let (client, conn) = if config.get_ssl_mode() == SslMode::Disable {
            let (client, connection) =
                config.connect_raw(stream, tokio_postgres::NoTls).await.map_err(|e| map_pg(&e, &host, port))?;
            (client, tokio::spawn(async move { connection.await.map(|_| ()) }))
        } else {
            let tls = super::pgtls::Connector::new(&host).map_err(Error::Unreachable)?;
            let (client, connection) = config.connect_raw(stream, tls).await.map_err(|e| map_pg(&e, &host, port))?;
            (client, tokio::spawn(async move { connection.await.map(|_| ()) }))
        };
        let answer = client.simple_query("SELECT 1; SHOW server_version").await;
        drop(client);
        let _ = conn.await;
        let messages = answer.map_err(|e| map_pg(&e, &host, port))?;
        let mut rows = messages.iter().filter_map(|m| match m {
            SimpleQueryMessage::Row(r) => Some(r),
            _ => None,
        });
        let one = rows.next().and_then(|r| r.get(0)).unwrap_or_default();
        if one != "1" {
            return Err(Error::Internal(format!("SELECT 1 returned {one:?}")));
        }
        let version = rows.next().and_then(|r| r.get(0)).unwrap_or_default().to_string();
        return Ok(version);
    }
    Err(Error::Unreachable(last.unwrap_or_else(|| "no host to connect to".into())))
}

/// Authentication and authorisation failures are `rejected`; the rest `unreachable`.
fn map_pg(e: &tokio_postgres::Error, host: &str, port: u16) -> Error {
    if let Some(db) = e.as_db_error() {
        let code = db.code();
        let msg = format!("{host}:{port}: {} ({})", db.message(), code.code());
        let auth = [
            SqlState::INVALID_PASSWORD,
            SqlState::INVALID_AUTHORIZATION_SPECIFICATION,
            SqlState::INVALID_CATALOG_NAME,
            SqlState::INSUFFICIENT_PRIVILEGE,
        ];
        return if auth.contains(code) { Error::Rejected(msg) } else { Error::Unreachable(msg) };
    }
    Error::Unreachable(format!("{host}:{port}: {e}"))
}
