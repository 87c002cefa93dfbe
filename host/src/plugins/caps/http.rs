//! `http.send`: outgoing requests with secrets filled in by the host.
//!
//! The plugin names fields; the host fills them in, sends only to the plugin's allowed
//! hosts and hands back a response with every secret value of the bound credential
//! (in every form [`redact::Scrubber`] knows) scrubbed out of the headers, body and errors.
//!
//! Defences (see DESIGN.md, "Lessons from peers"):
//! - every hop is checked against `allowed_hosts`: redirects are followed here, by
//!   hand, at most [`MAX_REDIRECTS`] times, and a hop off the list ends the call;
//! - the `Host` header always comes from the URL; a plugin may not set `Host`,
//!   hop-by-hop headers or `Content-Length`;
//! - names are resolved by our resolver, which refuses private, loopback and link-local
//!   addresses unless the operator allows private networks; the connection goes to an
//!   address that resolver returned, so DNS rebinding cannot slip past the check; IP
//!   literals are checked before sending; proxies from the environment are ignored;
//! - the timeout is the least of the wanted one, the test's remaining budget and a cap;
//!   the body is read up to [`MAX_BODY`] plus the scrubber's margin, scrubbed, then cut
//!   at [`MAX_BODY`] (`truncated`) with no partial secret left at the cut.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use base64::Engine as _;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use secrecy::ExposeSecret;

use super::netio::{self, AddressRefused};
use crate::plugins::bindings::credhost::provider::http::{self, Value};
use crate::plugins::bindings::credhost::provider::types::{Error, FieldError};
use crate::plugins::manifest::{AllowedHost, Capability};
use crate::plugins::state::CallState;
use crate::redact;

/// Largest response body handed to a plugin; the rest is cut off.
pub const MAX_BODY: usize = 1024 * 1024;
/// Redirect hops followed (each one re-checked against the allow-list).
pub const MAX_REDIRECTS: usize = 5;
/// Request headers a plugin may set.
const MAX_HEADERS: usize = 64;
/// Largest request body a plugin may send.
const MAX_REQUEST_BODY: usize = 256 * 1024;

/// Headers the host controls: the target (`Host`), framing and hop-by-hop ones.
const FORBIDDEN_HEADERS: &[&str] = &[
    "host",
    "content-length",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "proxy-connection",
    "te",
    "trailer",
    "upgrade",
];

fn invalid(message: impl Into<String>) -> Error {
    Error::Invalid(vec![FieldError { field: "request".into(), message: message.into() }])
}

impl http::Host for CallState {
    fn send(&mut self, req: http::Request) -> Result<http::Response, Error> {
        let shown = describe_target(&req.method, &req.url);
        self.gate(Capability::Http, &shown)?;
        let prepared = self.prepare(req)?;
        let allowed = self.manifest.allowed_hosts.clone();
        let fields = self.bound.fields.clone();
        let allow_private = self.host.allow_private_networks;
        let timeout = self.call_timeout(prepared.timeout_ms)?;
        let started = Instant::now();
        // Built once per call: the same forms scrub headers, body and errors.
        let scrubber = redact::Scrubber::new(self.bound.secrets.values());
        let read = MAX_BODY + scrubber.margin();
        let outcome = netio::run(transfer(prepared, allowed, fields, allow_private, timeout, read))
            .unwrap_or_else(|e| Err(Fail::Other(e)));
        match outcome {
            Ok(raw) => {
                let latency_ms = started.elapsed().as_millis().min(u128::from(u32::MAX)) as u32;
                Ok(scrub_response(raw, &scrubber, latency_ms))
            }
            Err(Fail::Refused(detail, e)) => {
                tracing::warn!(plugin = %self.manifest.id, target = %detail, "http.send refused");
                self.refuse(Capability::Http, detail);
                Err(scrub_error(e, &scrubber))
            }
            Err(Fail::Other(e)) => Err(scrub_error(e, &scrubber)),
        }
    }
}

/// The response as the plugin sees it: header names and values and the body scrubbed,
/// the body scrubbed *before* it is cut to [`MAX_BODY`] (a secret crossing the cut is
/// seen whole, and no partial secret is left at the cut).
fn scrub_response(raw: Raw, scrubber: &redact::Scrubber, latency_ms: u32) -> http::Response {
    let body = String::from_utf8_lossy(&raw.body);
    let (body, cut) = scrubber.scrub_capped(&body, MAX_BODY, raw.more);
    http::Response {
        status: raw.status,
        headers: raw
            .headers
            .iter()
            .map(|(k, v)| (scrubber.scrub(k.as_str()), scrubber.scrub(&String::from_utf8_lossy(v.as_bytes()))))
            .collect(),
        body,
        truncated: cut,
        latency_ms,
    }
}

/// `GET https://host:port/path` without query or user info (for the audit log).
fn describe_target(method: &str, url: &str) -> String {
    match url::Url::parse(url) {
        Ok(u) => format!(
            "{} {}://{}{}{}",
            method.chars().take(8).collect::<String>(),
            u.scheme(),
            u.host_str().unwrap_or(""),
            u.port().map(|p| format!(":{p}")).unwrap_or_default(),
            u.path().chars().take(200).collect::<String>()
        ),
        Err(_) => format!("{} (malformed URL)", method.chars().take(8).collect::<String>()),
    }
}

fn scrub_error(e: Error, scrubber: &redact::Scrubber) -> Error {
    let s = |m: String| scrubber.scrub(&m);
    match e {
        Error::Unreachable(m) => Error::Unreachable(s(m)),
        Error::Rejected(m) => Error::Rejected(s(m)),
        Error::Denied(m) => Error::Denied(s(m)),
        Error::Unsupported(m) => Error::Unsupported(s(m)),
        Error::Internal(m) => Error::Internal(s(m)),
        Error::Invalid(list) => Error::Invalid(
            list.into_iter().map(|f| FieldError { field: f.field, message: s(f.message) }).collect(),
        ),
    }
}

/// A request with every value filled in; secret-bearing headers are marked sensitive.
struct Prepared {
    method: reqwest::Method,
    url: url::Url,
    headers: Vec<(HeaderName, HeaderValue)>,
    body: Option<Vec<u8>>,
    timeout_ms: Option<u32>,
}

impl Drop for Prepared {
    fn drop(&mut self) {
        if let Some(b) = &mut self.body {
            zeroize::Zeroize::zeroize(b);
        }
    }
}

impl CallState {
    /// Checks the request's shape and fills in its values.
    fn prepare(&mut self, req: http::Request) -> Result<Prepared, Error> {
        let method = match req.method.to_ascii_uppercase().as_str() {
            m @ ("GET" | "POST" | "PUT" | "PATCH" | "DELETE" | "HEAD") => {
                reqwest::Method::from_bytes(m.as_bytes()).map_err(|_| invalid("bad method"))?
            }
            _ => return Err(invalid("method must be GET, POST, PUT, PATCH, DELETE or HEAD")),
        };
        let mut url = url::Url::parse(req.url.trim()).map_err(|e| invalid(format!("url is not an absolute URL: {e}")))?;
        if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
            return Err(invalid("url must be an absolute http or https URL"));
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(invalid("url must not carry user info; send credentials in a header"));
        }
        url.set_fragment(None);
        if !req.query.is_empty() {
            let mut pairs = Vec::with_capacity(req.query.len());
            for (name, v) in &req.query {
                pairs.push((name.clone(), self.fill(v)?.0));
            }
            url.query_pairs_mut().extend_pairs(pairs.iter().map(|(k, v)| (k.as_str(), v.as_str())));
            for (_, v) in &mut pairs {
                zeroize::Zeroize::zeroize(v);
            }
        }
        if req.headers.len() > MAX_HEADERS {
            return Err(invalid(format!("at most {MAX_HEADERS} headers may be sent")));
        }
        let mut headers = Vec::with_capacity(req.headers.len());
        for (name, v) in &req.headers {
            let hn = HeaderName::from_bytes(name.trim().as_bytes())
                .map_err(|_| invalid(format!("header name {:?} is not a valid header name", clip(name))))?;
            if FORBIDDEN_HEADERS.contains(&hn.as_str()) {
                self.refuse(Capability::Http, format!("header {hn} (set by the host only)"));
                return Err(Error::Rejected(format!(
                    "header `{hn}` is set by the host only (Host comes from the URL; hop-by-hop and framing headers are not allowed)"
                )));
            }
            let (mut text, secret) = self.fill(v)?;
            let hv = HeaderValue::from_str(&text);
            zeroize::Zeroize::zeroize(&mut text);
            let mut hv = hv.map_err(|_| {
                invalid(format!("the value of header `{hn}` contains characters that cannot be sent in a header"))
            })?;
            hv.set_sensitive(secret);
            headers.push((hn, hv));
        }
        let body = match &req.body {
            None => None,
            Some(v) => {
                let (text, _) = self.fill(v)?;
                if text.len() > MAX_REQUEST_BODY {
                    return Err(invalid(format!("request body is over {MAX_REQUEST_BODY} bytes")));
                }
                Some(text.into_bytes())
            }
        };
        Ok(Prepared { method, url, headers, body, timeout_ms: req.timeout_ms })
    }

    /// The text of a value, and whether a secret went into it.
    fn fill(&self, v: &Value) -> Result<(String, bool), Error> {
        match v {
            Value::Plain(s) => Ok((s.clone(), false)),
            Value::Field(name) => self.field_value(name),
            Value::Template(t) => self.fill_template(t),
            Value::Basic((user, pass)) => {
                let (mut u, s1) = self.fill_template(user)?;
                let (mut p, s2) = self.fill_template(pass)?;
                if u.contains(':') {
                    u.zeroize_and(&mut p);
                    return Err(invalid("a Basic user name must not contain `:`"));
                }
                let mut joined = format!("{u}:{p}");
                u.zeroize_and(&mut p);
                let out = format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(joined.as_bytes()));
                zeroize::Zeroize::zeroize(&mut joined);
                Ok((out, s1 || s2))
            }
        }
    }

    fn field_value(&self, name: &str) -> Result<(String, bool), Error> {
        if let Some(v) = self.bound.secrets.get(name) {
            return Ok((v.expose_secret().to_string(), true));
        }
        if let Some(v) = self.bound.fields.get(name) {
            return Ok((v.clone(), false));
        }
        Err(Error::Unsupported(format!("field `{}` is not set on this credential", clip(name))))
    }

    /// `{field}` placeholders filled in; `{{` and `}}` are literal braces.
    fn fill_template(&self, t: &str) -> Result<(String, bool), Error> {
        let mut out = String::with_capacity(t.len());
        let mut secret = false;
        let mut rest = t;
        while let Some(i) = rest.find(['{', '}']) {
            out.push_str(&rest[..i]);
            let tail = &rest[i..];
            if tail.starts_with("{{") {
                out.push('{');
                rest = &tail[2..];
            } else if tail.starts_with("}}") {
                out.push('}');
                rest = &tail[2..];
            } else if tail.starts_with('}') {
                return Err(invalid("template has a `}` without `{`; write `}}` for a literal brace"));
            } else {
                let Some(end) = tail.find('}') else {
                    return Err(invalid("template has a `{` without `}`; write `{{` for a literal brace"));
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

trait ZeroizePair {
    fn zeroize_and(&mut self, other: &mut String);
}

impl ZeroizePair for String {
    fn zeroize_and(&mut self, other: &mut String) {
        zeroize::Zeroize::zeroize(self);
        zeroize::Zeroize::zeroize(other);
    }
}

fn clip(s: &str) -> String {
    s.chars().take(64).collect()
}

/// What the transfer produced, before scrubbing: the body read up to the limit plus the
/// scrubber's margin, and whether the peer sent more than that.
struct Raw {
    status: u16,
    headers: HeaderMap,
    body: Vec<u8>,
    more: bool,
}

enum Fail {
    /// Refused by policy (recorded as a refusal): the detail names the target.
    Refused(String, Error),
    Other(Error),
}

/// One HTTP client per address policy; connections are pooled across calls.
fn client(allow_private: bool) -> Result<&'static reqwest::Client, Error> {
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
        .map_err(|e| Error::Internal(format!("building the HTTP client: {e}")))?;
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

/// Sends, following redirects within the allow-list, and reads the capped body.
async fn transfer(
    mut req: Prepared,
    allowed: Vec<AllowedHost>,
    fields: BTreeMap<String, String>,
    allow_private: bool,
    timeout: Duration,
    read_limit: usize,
) -> Result<Raw, Fail> {
    let client = client(allow_private).map_err(Fail::Other)?;
    let deadline = tokio::time::Instant::now() + timeout;
    let work = async {
        let mut hops = 0;
        loop {
            let target = req.url.clone();
            let shown = format!("{}://{}{}", target.scheme(), target.host_str().unwrap_or(""), target.port().map(|p| format!(":{p}")).unwrap_or_default());
            if !allowed.iter().any(|h| h.allows(&target, &fields)) {
                let why = if hops == 0 { "is not in the plugin's allowed hosts" } else { "(a redirect target) is not in the plugin's allowed hosts" };
                return Err(Fail::Refused(format!("{shown} not allowed"), Error::Rejected(format!("{shown} {why}"))));
            }
            if let Some(ip) = ip_literal(&target) {
                if let Err(e) = netio::check_addr(ip, allow_private) {
                    return Err(Fail::Refused(format!("{shown} private address"), Error::Rejected(e.0)));
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
            if status.is_redirection() && status != reqwest::StatusCode::NOT_MODIFIED {
                if let Some(loc) = location {
                    if hops >= MAX_REDIRECTS {
                        return Err(Fail::Refused(
                            format!("{shown} too many redirects"),
                            Error::Rejected(format!("more than {MAX_REDIRECTS} redirects")),
                        ));
                    }
                    let next = target.join(&loc).map_err(|_| {
                        Fail::Other(Error::Unreachable(format!("{shown} redirected to a malformed location")))
                    })?;
                    if !matches!(next.scheme(), "http" | "https") || !next.username().is_empty() || next.password().is_some() {
                        return Err(Fail::Refused(format!("{shown} bad redirect"), Error::Rejected("redirect to a non-http(s) or user-info URL".into())));
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
        Err(_) => Err(Fail::Other(Error::Unreachable(format!("timed out after {} ms", timeout.as_millis())))),
    }
}

fn ip_literal(u: &url::Url) -> Option<IpAddr> {
    match u.host()? {
        url::Host::Ipv4(a) => Some(IpAddr::V4(a)),
        url::Host::Ipv6(a) => Some(IpAddr::V6(a)),
        url::Host::Domain(_) => None,
    }
}

/// A client error as a WIT error; the message never holds the URL (its query may carry a secret).
fn map_reqwest(e: reqwest::Error, shown: &str) -> Fail {
    let mut src: Option<&(dyn std::error::Error + 'static)> = Some(&e);
    while let Some(s) = src {
        if let Some(refused) = s.downcast_ref::<AddressRefused>() {
            return Fail::Refused(format!("{shown} private address"), Error::Rejected(refused.0.clone()));
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
    Fail::Other(Error::Unreachable(format!("{shown}: {kind}: {detail}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::SecretString;

    /// Headers (names and values) and the body are scrubbed in every form, and a
    /// secret crossing the body limit is seen whole and cut out, not left in part.
    #[test]
    fn responses_are_scrubbed_before_the_cut() {
        let secret = "q\"uo\\te/é-0123456789abcdef";
        let s = SecretString::from(secret);
        let scrubber = redact::Scrubber::new([&s]);
        let basic = base64::engine::general_purpose::STANDARD.encode(format!("bob:{secret}"));
        let json = serde_json::to_string(secret).unwrap();
        let mut headers = HeaderMap::new();
        headers.insert("www-authenticate", HeaderValue::from_str(&format!("Basic {basic}")).unwrap());
        headers.insert("x-json", HeaderValue::from_str(&json).unwrap());
        headers.insert(HeaderName::from_static("x-0123456789abcdef"), HeaderValue::from_static("name"));
        let scrubber_plain = redact::Scrubber::new([&SecretString::from("x-0123456789abcdef")]);
        let mut body = vec![b'.'; MAX_BODY - 7];
        body.extend_from_slice(secret.as_bytes());
        body.extend_from_slice(b" and more");
        let raw = Raw { status: 200, headers: headers.clone(), body, more: false };
        let r = scrub_response(raw, &scrubber, 1);
        assert!(r.truncated);
        assert!(r.body.len() <= MAX_BODY + redact::REDACTED.len());
        assert!(r.body.ends_with(redact::REDACTED) && !r.body.contains("q\"uo"), "{}", &r.body[r.body.len() - 40..]);
        let h: BTreeMap<_, _> = r.headers.into_iter().collect();
        assert_eq!(h["www-authenticate"], "Basic [REDACTED]");
        assert_eq!(h["x-json"], "\"[REDACTED]\"");
        let r = scrub_response(Raw { status: 200, headers, body: Vec::new(), more: false }, &scrubber_plain, 1);
        assert!(r.headers.iter().any(|(k, _)| k == redact::REDACTED), "{:?}", r.headers);
        assert!(!r.truncated);
    }
}
