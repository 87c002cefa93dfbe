//! The one egress path: every outgoing HTTP request the host makes for a credential —
//! a plugin's `http.send`, the proxy — goes through [`send`], with one policy:
//!
//! - every hop is checked against the allow-list: redirects are followed here, by hand,
//!   at most [`MAX_REDIRECTS`] times, and a hop off the list ends the exchange; values
//!   filled from secrets (sensitive headers) are dropped on a cross-origin hop;
//! - the `Host` header always comes from the URL;
//! - names are resolved by our resolver, which refuses private, loopback and link-local
//!   addresses (every embedded IPv4 form included) unless the operator allows private
//!   networks; the connection goes to an address that resolver returned, so DNS
//!   rebinding cannot slip past the check; IP literals are checked before sending;
//!   proxies from the environment are ignored;
//! - a deadline covers the whole exchange and the body is read up to a limit.
//!
//! Secrets are filled into requests by [`Filler`] and scrubbed out of responses by
//! [`crate::redact::Scrubber`]; callers do both around [`send`].

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use base64::Engine as _;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use secrecy::{ExposeSecret, SecretString};

use crate::plugins::caps::netio::{self, AddressRefused};
use crate::plugins::manifest::AllowedHost;

/// Redirect hops followed (each one re-checked against the allow-list).
pub const MAX_REDIRECTS: usize = 5;

/// An outgoing request with every value filled in; headers carrying a secret are marked
/// sensitive (never logged, dropped on a cross-origin redirect). The body is zeroized on drop.
pub struct Request {
    pub method: reqwest::Method,
    pub url: url::Url,
    pub headers: Vec<(HeaderName, HeaderValue)>,
    pub body: Option<Vec<u8>>,
}

impl Drop for Request {
    fn drop(&mut self) {
        if let Some(b) = &mut self.body {
            zeroize::Zeroize::zeroize(b);
        }
    }
}

/// Where a request may go and how long it may take (owned: the exchange runs on the
/// I/O runtime).
pub struct Policy {
    /// The allow-list every hop must match.
    pub allowed: Vec<AllowedHost>,
    /// The credential's clear fields (for `field:` allow-list entries).
    pub fields: BTreeMap<String, String>,
    pub allow_private: bool,
    pub timeout: Duration,
    /// Body bytes read at most (the caller's limit plus its scrubber's margin).
    pub read_limit: usize,
}

/// Fills plan and request values (`plain`, `field`, `template`, `basic`) from a
/// credential's clear fields and secrets.
pub struct Filler<'a> {
    pub fields: &'a BTreeMap<String, String>,
    pub secrets: &'a BTreeMap<String, SecretString>,
}

/// Why a value could not be filled.
#[derive(Debug)]
pub enum FillError {
    /// The named field is not set on the credential.
    Missing(String),
    /// The value is malformed (a template brace, a `:` in a Basic user name).
    Invalid(String),
}

/// A value to fill; mirrors the WIT `http.value`.
pub enum Value<'a> {
    Plain(&'a str),
    Field(&'a str),
    Template(&'a str),
    Basic(&'a str, &'a str),
}

impl Filler<'_> {
    /// The text of a value, and whether a secret went into it.
    pub fn fill(&self, v: Value<'_>) -> Result<(String, bool), FillError> {
        match v {
            Value::Plain(s) => Ok((s.to_string(), false)),
            Value::Field(name) => self.field_value(name),
            Value::Template(t) => self.fill_template(t),
            Value::Basic(user, pass) => {
                let (mut u, s1) = self.fill_template(user)?;
                let (mut p, s2) = self.fill_template(pass)?;
                if u.contains(':') {
                    zeroize::Zeroize::zeroize(&mut u);
                    zeroize::Zeroize::zeroize(&mut p);
                    return Err(FillError::Invalid("a Basic user name must not contain `:`".into()));
                }
                let mut joined = format!("{u}:{p}");
                zeroize::Zeroize::zeroize(&mut u);
                zeroize::Zeroize::zeroize(&mut p);
                let out = format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(joined.as_bytes()));
                zeroize::Zeroize::zeroize(&mut joined);
                Ok((out, s1 || s2))
            }
        }
    }

    fn field_value(&self, name: &str) -> Result<(String, bool), FillError> {
        if let Some(v) = self.secrets.get(name) {
            return Ok((v.expose_secret().to_string(), true));
        }
        if let Some(v) = self.fields.get(name) {
            return Ok((v.clone(), false));
        }
        Err(FillError::Missing(name.chars().take(64).collect()))
    }

    /// `{field}` placeholders filled in; `{{` and `}}` are literal braces.
    fn fill_template(&self, t: &str) -> Result<(String, bool), FillError> {
        let mut out = String::with_capacity(t.len());
        let mut secret = false;
        let mut rest = t;
        while let Some(i) = rest.find(['{', '}']) {
            out.push_str(&rest[..i]);
            let tail = &rest[i..];
            if let Some(after) = tail.strip_prefix("{{") {
                out.push('{');
                rest = after;
            } else if let Some(after) = tail.strip_prefix("}}") {
                out.push('}');
                rest = after;
            } else if tail.starts_with('}') {
                return Err(FillError::Invalid("template has a `}` without `{`; write `}}` for a literal brace".into()));
            } else {
                let Some(end) = tail.find('}') else {
                    return Err(FillError::Invalid("template has a `{` without `}`; write `{{` for a literal brace".into()));
                };
                let (v, s) = self.field_value(&tail[1..end])?;
                out.push_str(&v);
                secret |= s;
                rest = &tail[end + 1..];
            }
        }
        out.push_str(rest);
        Ok((out, secret))
    }
}

/// What the transfer produced, before scrubbing: the body read up to the limit plus the
/// scrubber's margin, and whether the peer sent more than that.
pub struct Raw {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
    pub more: bool,
}

pub enum Fail {
    /// Refused by policy (a refusal to record): the detail names the target, the message
    /// says why.
    Refused(String, String),
    /// The peer could not be reached, or the exchange failed or timed out.
    Unreachable(String),
    /// The host could not build its client.
    Internal(String),
}

/// One HTTP client per address policy; connections are pooled across calls.
fn client(allow_private: bool) -> Result<&'static reqwest::Client, Fail> {
    static CLIENTS: [OnceLock<reqwest::Client>; 2] = [OnceLock::new(), OnceLock::new()];
    let slot = &CLIENTS[usize::from(allow_private)];
    if let Some(c) = slot.get() {
        return Ok(c);
    }
    let c = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .dns_resolver(Arc::new(CheckedResolver { allow_private }))
        .user_agent(concat!("credhost/", env!("CARGO_PKG_VERSION")))
        .pool_idle_timeout(Duration::from_secs(30))
        .build()
        .map_err(|e| Fail::Internal(format!("building the HTTP client: {e}")))?;
    Ok(slot.get_or_init(|| c))
}

/// Resolves names and refuses addresses outside the policy (see [`netio::resolve_checked`]).
struct CheckedResolver {
    allow_private: bool,
}

impl reqwest::dns::Resolve for CheckedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let allow_private = self.allow_private;
        let host = name.as_str().to_string();
        Box::pin(async move {
            match netio::resolve_checked(&host, 0, allow_private).await {
                Ok(addrs) => Ok(Box::new(addrs.into_iter()) as reqwest::dns::Addrs),
                Err(netio::ResolveError::Refused(m)) => Err(Box::new(AddressRefused(m)) as _),
                Err(netio::ResolveError::Unreachable(m)) => Err(m.into()),
            }
        })
    }
}

fn origin(u: &url::Url) -> (String, Option<String>, Option<u16>) {
    (u.scheme().to_string(), u.host_str().map(str::to_ascii_lowercase), u.port_or_known_default())
}

/// Sends, following redirects within the allow-list, and reads the body up to the limit.
pub async fn send(req: Request, policy: Policy) -> Result<Raw, Fail> {
    exchange(req, policy, MAX_REDIRECTS).await
}

/// Sends like [`send`] but follows no redirect: a 3xx is the answer (webhook deliveries).
pub async fn send_without_redirects(req: Request, policy: Policy) -> Result<Raw, Fail> {
    exchange(req, policy, 0).await
}

async fn exchange(mut req: Request, policy: Policy, max_redirects: usize) -> Result<Raw, Fail> {
    let Policy { allowed, fields, allow_private, timeout, read_limit } = policy;
    let client = client(allow_private)?;
    let deadline = tokio::time::Instant::now() + timeout;
    let work = async {
        let mut hops = 0;
        loop {
            let target = req.url.clone();
            let shown = format!("{}://{}{}", target.scheme(), target.host_str().unwrap_or(""), target.port().map(|p| format!(":{p}")).unwrap_or_default());
            if !allowed.iter().any(|h| h.allows(&target, &fields)) {
                let why = if hops == 0 { "is not in the plugin's allowed hosts" } else { "(a redirect target) is not in the plugin's allowed hosts" };
                return Err(Fail::Refused(format!("{shown} not allowed"), format!("{shown} {why}")));
            }
            if let Some(ip) = ip_literal(&target) {
                if let Err(e) = netio::check_addr(ip, allow_private) {
                    return Err(Fail::Refused(format!("{shown} private address"), e.0));
                }
            }
            let mut rb = client.request(req.method.clone(), target.clone());
            for (k, v) in &req.headers {
                rb = rb.header(k.clone(), v.clone());
            }
            if let Some(b) = &req.body {
                rb = rb.body(b.clone());
            }
            let mut resp = rb.send().await.map_err(|e| map_reqwest(e, &shown))?;
            let status = resp.status();
            let location = resp.headers().get(reqwest::header::LOCATION).and_then(|l| l.to_str().ok()).map(str::to_string);
            if max_redirects > 0 && status.is_redirection() && status != reqwest::StatusCode::NOT_MODIFIED {
                if let Some(loc) = location {
                    if hops >= max_redirects {
                        return Err(Fail::Refused(
                            format!("{shown} too many redirects"),
                            format!("more than {max_redirects} redirects"),
                        ));
                    }
                    let next = target.join(&loc).map_err(|_| {
                        Fail::Unreachable(format!("{shown} redirected to a malformed location"))
                    })?;
                    if !matches!(next.scheme(), "http" | "https") || !next.username().is_empty() || next.password().is_some() {
                        return Err(Fail::Refused(format!("{shown} bad redirect"), "redirect to a non-http(s) or user-info URL".into()));
                    }
                    let s = status.as_u16();
                    if s == 303 || (matches!(s, 301 | 302) && req.method == reqwest::Method::POST) {
                        if req.method != reqwest::Method::HEAD {
                            req.method = reqwest::Method::GET;
                        }
                        req.body = None;
                        req.headers.retain(|(k, _)| k != reqwest::header::CONTENT_TYPE);
                    }
                    if origin(&next) != origin(&target) {
                        // Credentials filled in for one origin are not handed to another.
                        req.headers.retain(|(_, v)| !v.is_sensitive());
                    }
                    req.url = next;
                    hops += 1;
                    continue;
                }
            }
            let mut body = Vec::new();
            let mut more = false;
            while let Some(chunk) = resp.chunk().await.map_err(|e| map_reqwest(e, &shown))? {
                let room = read_limit - body.len();
                if chunk.len() > room {
                    body.extend_from_slice(&chunk[..room]);
                    more = true;
                    break;
                }
                body.extend_from_slice(&chunk);
            }
            return Ok(Raw { status: status.as_u16(), headers: resp.headers().clone(), body, more });
        }
    };
    match tokio::time::timeout_at(deadline, work).await {
        Ok(r) => r,
        Err(_) => Err(Fail::Unreachable(format!("timed out after {} ms", timeout.as_millis()))),
    }
}

fn ip_literal(u: &url::Url) -> Option<IpAddr> {
    match u.host()? {
        url::Host::Ipv4(a) => Some(IpAddr::V4(a)),
        url::Host::Ipv6(a) => Some(IpAddr::V6(a)),
        url::Host::Domain(_) => None,
    }
}

/// A client error as a [`Fail`]; the message never holds the URL (its query may carry a secret).
fn map_reqwest(e: reqwest::Error, shown: &str) -> Fail {
    let mut src: Option<&(dyn std::error::Error + 'static)> = Some(&e);
    while let Some(s) = src {
        if let Some(refused) = s.downcast_ref::<AddressRefused>() {
            return Fail::Refused(format!("{shown} private address"), refused.0.clone());
        }
        src = s.source();
    }
    let e = e.without_url();
    let mut chain = Vec::new();
    let mut src: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(&e);
    while let Some(s) = src {
        chain.push(s.to_string());
        src = s.source();
    }
    let kind = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "cannot connect"
    } else {
        "request failed"
    };
    let detail = chain.last().cloned().unwrap_or_else(|| e.to_string());
    Fail::Unreachable(format!("{shown}: {kind}: {detail}"))
}

