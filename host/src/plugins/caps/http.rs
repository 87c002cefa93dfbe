//! `http.send`: outgoing requests with secrets filled in by the host.
//!
//! The plugin names fields; the host fills them in, sends only to the plugin's allowed
//! hosts and hands back a response with every secret value of the bound credential
//! (in every form [`redact::Scrubber`] knows) scrubbed out of the headers, body and errors.
//!
//! The request goes out through [`crate::egress`], the one egress path (allow-list on
//! every hop, address policy after DNS, Host from the URL, no proxies, deadline). Here:
//! a plugin may not set `Host`, hop-by-hop headers or `Content-Length`; the timeout is
//! the least of the wanted one, the test's remaining budget and a cap; the body is read
//! up to [`MAX_BODY`] plus the scrubber's margin, scrubbed, then cut at [`MAX_BODY`]
//! (`truncated`) with no partial secret left at the cut.

use std::time::Instant;

use reqwest::header::{HeaderName, HeaderValue};

use super::netio;
use crate::egress::{self, FillError, Filler};
use crate::plugins::bindings::credhost::provider::http::{self, Value};
use crate::plugins::bindings::credhost::provider::types::{Error, FieldError};
use crate::plugins::manifest::Capability;
use crate::plugins::state::CallState;
use crate::plugins::types::HOST_CONTROLLED_HEADERS;
use crate::redact;

/// Largest response body handed to a plugin; the rest is cut off.
pub const MAX_BODY: usize = 1024 * 1024;
/// Request headers a plugin may set.
const MAX_HEADERS: usize = 64;
/// Largest request body a plugin may send.
const MAX_REQUEST_BODY: usize = 256 * 1024;

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
        let policy = egress::Policy { allowed, fields, allow_private, timeout, read_limit: read };
        let outcome = netio::run(egress::send(prepared.request, policy))
            .unwrap_or_else(|e| Err(egress::Fail::Internal(format!("{e:?}"))));
        match outcome {
            Ok(raw) => {
                let latency_ms = started.elapsed().as_millis().min(u128::from(u32::MAX)) as u32;
                Ok(scrub_response(raw, &scrubber, latency_ms))
            }
            Err(egress::Fail::Refused(detail, why)) => {
                tracing::warn!(plugin = %self.manifest.id, target = %detail, "http.send refused");
                self.refuse(Capability::Http, detail);
                Err(scrub_error(Error::Rejected(why), &scrubber))
            }
            Err(egress::Fail::Unreachable(m)) => Err(scrub_error(Error::Unreachable(m), &scrubber)),
            Err(egress::Fail::Internal(m)) => Err(scrub_error(Error::Internal(m), &scrubber)),
        }
    }
}

/// The response as the plugin sees it: header names and values and the body scrubbed,
/// the body scrubbed *before* it is cut to [`MAX_BODY`] (a secret crossing the cut is
/// seen whole, and no partial secret is left at the cut).
fn scrub_response(raw: egress::Raw, scrubber: &redact::Scrubber, latency_ms: u32) -> http::Response {
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

/// A request with every value filled in, and the timeout the plugin asked for.
struct Prepared {
    request: egress::Request,
    timeout_ms: Option<u32>,
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
            if HOST_CONTROLLED_HEADERS.contains(&hn.as_str()) {
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
        Ok(Prepared { request: egress::Request { method, url, headers, body }, timeout_ms: req.timeout_ms })
    }

    /// The text of a value, and whether a secret went into it.
    fn fill(&self, v: &Value) -> Result<(String, bool), Error> {
        let filler = Filler { fields: &self.bound.fields, secrets: &self.bound.secrets };
        let v = match v {
            Value::Plain(s) => egress::Value::Plain(s),
            Value::Field(f) => egress::Value::Field(f),
            Value::Template(t) => egress::Value::Template(t),
            Value::Basic((u, p)) => egress::Value::Basic(u, p),
        };
        filler.fill(v).map_err(|e| match e {
            FillError::Missing(name) => Error::Unsupported(format!("field `{name}` is not set on this credential")),
            FillError::Invalid(m) => invalid(m),
        })
    }
}

fn clip(s: &str) -> String {
    s.chars().take(64).collect()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use base64::Engine as _;
    use reqwest::header::HeaderMap;

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
        let raw = egress::Raw { status: 200, headers: headers.clone(), body, more: false };
        let r = scrub_response(raw, &scrubber, 1);
        assert!(r.truncated);
        assert!(r.body.len() <= MAX_BODY + redact::REDACTED.len());
        assert!(r.body.ends_with(redact::REDACTED) && !r.body.contains("q\"uo"), "{}", &r.body[r.body.len() - 40..]);
        let h: BTreeMap<_, _> = r.headers.into_iter().collect();
        assert_eq!(h["www-authenticate"], "Basic [REDACTED]");
        assert_eq!(h["x-json"], "\"[REDACTED]\"");
        let r = scrub_response(egress::Raw { status: 200, headers, body: Vec::new(), more: false }, &scrubber_plain, 1);
        assert!(r.headers.iter().any(|(k, _)| k == redact::REDACTED), "{:?}", r.headers);
        assert!(!r.truncated);
    }
}
