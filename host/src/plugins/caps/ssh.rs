//! `ssh.check-login`: host-native SSH handshake and authentication with `russh`.
//!
//! The target must be allowed by `allowed_hosts` (the ssh built-in uses
//! `field:host:port`: exactly the credential's own host and port); the name is resolved
//! and checked against the private-range policy and the connection goes to a checked
//! address. The password or private key (and passphrase) are named as fields and taken
//! from the bound credential's secrets. A pinned host key is checked before any secret
//! is sent. Authentication failure is `Ok(authenticated: false)`; network failure is
//! `Err(unreachable)`.

use std::sync::{Arc, Mutex};

use russh::keys::{HashAlg, PrivateKey, PrivateKeyWithHashAlg, PublicKeyOrCertificate};
use secrecy::{ExposeSecret, SecretString};

use super::keys::{self, KeyError};
use super::netio;
use crate::plugins::bindings::credhost::provider::ssh::{self, Auth};
use crate::plugins::bindings::credhost::provider::types::{Error, FieldError};
use crate::plugins::manifest::Capability;
use crate::plugins::state::CallState;
use crate::redact;

enum Method {
    Password(SecretString),
    Key(Arc<PrivateKey>),
}

impl ssh::Host for CallState {
    fn check_login(&mut self, target: ssh::Target, auth: ssh::Auth) -> Result<ssh::LoginResult, Error> {
        let host = netio::norm_host(&target.host);
        let shown = format!("{}:{}", host.chars().take(255).collect::<String>(), target.port);
        self.gate(Capability::Ssh, &shown)?;
        self.check_endpoint(Capability::Ssh, &target.host, target.port)?;
        if target.username.is_empty() || target.username.len() > 256 {
            return Err(Error::Invalid(vec![FieldError {
                field: "username".into(),
                message: "username must be 1 to 256 characters.".into(),
            }]));
        }
        let method = match &auth {
            Auth::Password(f) => Method::Password(self.secret_of(f)?),
            Auth::PrivateKey((kf, pf)) => {
                let key = self.secret_of(kf)?;
                let pass = pf.as_deref().map(|p| self.secret_of(p)).transpose()?;
                // The KDF cost is checked before anything is decrypted (see `keys`).
                let decoded = keys::decode_private_key(kf, key.expose_secret(), pass.as_ref().map(|p| p.expose_secret()));
                let key = decoded.map_err(|e| {
                    let message = match e {
                        KeyError::Refused(why) => why,
                        KeyError::Undecodable(why) => format!(
                            "the private key cannot be used (wrong passphrase or unsupported key): {}",
                            redact::scrub(&why, self.bound.secrets.values())
                        ),
                    };
                    Error::Invalid(vec![FieldError { field: kf.clone(), message }])
                })?;
                Method::Key(Arc::new(key))
            }
        };
        let timeout = self.call_timeout(None)?;
        let allow_private = self.host.allow_private_networks;
        let expected = target.expected_host_key.as_deref().map(norm_fingerprint);
        let (user, port) = (target.username.clone(), target.port);
        let result = netio::run(async move {
            let work = login(host, port, user, method, expected, allow_private, timeout);
            match tokio::time::timeout(timeout, work).await {
                Ok(r) => r,
                Err(_) => Err(Error::Unreachable(format!("SSH login timed out after {} ms", timeout.as_millis()))),
            }
        })
        .and_then(|r| r);
        match result {
            Err(e @ Error::Rejected(_)) => {
                self.refuse(Capability::Ssh, format!("{shown} private address"));
                Err(e)
            }
            other => other,
        }
    }
}

impl CallState {
    /// The value of a secret field, for capabilities that use it on the plugin's behalf.
    pub(crate) fn secret_of(&self, field: &str) -> Result<SecretString, Error> {
        self.bound
            .secrets
            .get(field)
            .cloned()
            .ok_or_else(|| Error::Unsupported(format!("secret field `{}` is not set", field.chars().take(64).collect::<String>())))
    }
}

/// `SHA256:<base64 without padding>`, prefix case-insensitive.
fn norm_fingerprint(fp: &str) -> String {
    let fp = fp.trim();
    let digest = match fp.split_once(':') {
        Some((alg, d)) if alg.eq_ignore_ascii_case("sha256") => d,
        _ => fp,
    };
    format!("SHA256:{}", digest.trim_end_matches('='))
}

struct Client {
    seen: Arc<Mutex<Option<String>>>,
    expected: Option<String>,
}

impl russh::client::Handler for Client {
    type Error = russh::Error;

    async fn check_server_key(&mut self, key: &PublicKeyOrCertificate) -> Result<bool, Self::Error> {
        let fp = match key {
            PublicKeyOrCertificate::PublicKey { key, .. } => key.fingerprint(HashAlg::Sha256),
            PublicKeyOrCertificate::Certificate(c) => c.public_key().fingerprint(HashAlg::Sha256),
        };
        let fp = norm_fingerprint(&fp.to_string());
        let ok = self.expected.as_ref().is_none_or(|e| *e == fp);
        *self.seen.lock().unwrap_or_else(|p| p.into_inner()) = Some(fp);
        Ok(ok)
    }
}

async fn login(
    host: String,
    port: u16,
    user: String,
    method: Method,
    expected: Option<String>,
    allow_private: bool,
    timeout: std::time::Duration,
) -> Result<ssh::LoginResult, Error> {
    let addrs = netio::resolve_checked(&host, port, allow_private).await?;
    let stream = netio::connect_checked(&addrs, timeout).await?;
    let seen = Arc::new(Mutex::new(None));
    let handler = Client { seen: seen.clone(), expected: expected.clone() };
    let config = russh::client::Config { inactivity_timeout: Some(timeout), ..Default::default() };
    let fingerprint = || seen.lock().unwrap_or_else(|p| p.into_inner()).clone().unwrap_or_default();
    let mut handle = match russh::client::connect_stream(Arc::new(config), stream, handler).await {
        Ok(h) => h,
        Err(russh::Error::UnknownKey) if !fingerprint().is_empty() => {
            return Ok(ssh::LoginResult {
                authenticated: false,
                message: format!(
                    "host key mismatch: the server presented {}, expected {}; nothing was sent",
                    fingerprint(),
                    expected.unwrap_or_default()
                ),
                host_key_fingerprint: fingerprint(),
            });
        }
        Err(e) => return Err(Error::Unreachable(format!("SSH handshake with {host}:{port} failed: {e}"))),
    };
    let what = match &method {
        Method::Password(_) => "password",
        Method::Key(_) => "private key",
    };
    let result = match method {
        Method::Password(p) => handle.authenticate_password(user, p.expose_secret()).await,
        Method::Key(key) => {
            let hash = if key.algorithm().is_rsa() {
                handle.best_supported_rsa_hash().await.ok().flatten().flatten()
            } else {
                None
            };
            handle.authenticate_publickey(user, PrivateKeyWithHashAlg::new(key, hash)).await
        }
    };
    let _ = handle.disconnect(russh::Disconnect::ByApplication, "", "en").await;
    let result = result.map_err(|e| Error::Unreachable(format!("SSH authentication with {host}:{port} failed: {e}")))?;
    Ok(ssh::LoginResult {
        authenticated: result.success(),
        host_key_fingerprint: fingerprint(),
        message: if result.success() { String::new() } else { format!("the server refused the {what}") },
    })
}
