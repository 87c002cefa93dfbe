//! `http.send` with secret references: the plugin names fields, the host fills them in.
//!
//! ```ignore
//! let result = request::get("https://api.example.com/me")
//!     .header("Authorization", template("Bearer {token}"))
//!     .send();
//! request::auth_verdict(result)
//! ```

use crate::http::{self, Request, Response, Value};
use crate::outcome::{self, indeterminate, invalid, valid, OutcomeExt};
use crate::types::{Error, TestOutcome};

/// Asked of the host per request; the host caps it anyway.
pub const DEFAULT_TIMEOUT_MS: u32 = 10_000;

/// Sent as given.
pub fn plain(text: &str) -> Value {
    Value::Plain(text.into())
}

/// The value of field `name` (secret or not), filled in by the host.
pub fn field(name: &str) -> Value {
    Value::Field(name.into())
}

/// Text with `{field}` placeholders filled in by the host; `{{`/`}}` are literal braces.
pub fn template(text: &str) -> Value {
    Value::Template(text.into())
}

/// `Basic base64(user:password)`; both parts are templates such as `"{username}"`.
pub fn basic(user: &str, password: &str) -> Value {
    Value::Basic((user.into(), password.into()))
}

/// Escapes `{` and `}` so that `text` passes through a template literally.
pub fn template_literal(text: &str) -> String {
    text.replace('{', "{{").replace('}', "}}")
}

/// A request under construction.
pub struct Call(Request);

/// A `GET` of `url` with the default timeout.
pub fn get(url: impl Into<String>) -> Call {
    Call(Request {
        method: "GET".into(),
        url: url.into(),
        headers: Vec::new(),
        query: Vec::new(),
        body: None,
        timeout_ms: Some(DEFAULT_TIMEOUT_MS),
    })
}

impl Call {
    pub fn header(mut self, name: &str, value: Value) -> Self {
        self.0.headers.push((name.into(), value));
        self
    }

    /// A query parameter, appended to those already in the URL.
    pub fn query(mut self, name: &str, value: Value) -> Self {
        self.0.query.push((name.into(), value));
        self
    }

    pub fn send(&self) -> Result<Response, Error> {
        http::send(&self.0)
    }
}

/// The usual reading of an authenticated request: 2xx valid, 401/403 invalid, anything
/// else (429, 5xx, redirects, 404) indeterminate; facts `http_status`, `latency_ms`, and
/// `expires_at` when a 2xx answer says when the credential expires ([`crate::expiry`]).
pub fn auth_verdict(result: Result<Response, Error>) -> Result<TestOutcome, Error> {
    let response = match result {
        Ok(response) => response,
        Err(e) => return outcome::from_error(e),
    };
    let status = response.status;
    let verdict = match status {
        200..=299 => valid(format!("accepted (HTTP {status})")),
        401 | 403 => invalid(format!("rejected (HTTP {status})")),
        429 => indeterminate("rate limited (HTTP 429); try again later"),
        500..=599 => indeterminate(format!("service error (HTTP {status}); try again later")),
        _ => indeterminate(format!(
            "unexpected answer (HTTP {status}); check the test URL"
        )),
    };
    let expires_at = (200..=299).contains(&status).then(|| crate::expiry::from_response(&response)).flatten();
    let mut verdict = verdict.fact("http_status", status).fact("latency_ms", response.latency_ms);
    if let Some(at) = expires_at {
        verdict = verdict.fact(crate::expiry::FACT, at);
    }
    Ok(verdict)
}
