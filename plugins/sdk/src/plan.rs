//! Auth plans for `authenticate`: how the host applies a credential to an HTTP request.
//!
//! A plan names fields; the host fills them in from the stored credential, so the plugin
//! never sees a secret. The host refuses plans with fields the type does not declare and
//! with headers it controls (`Host`, `Content-Length`, hop-by-hop headers).
//!
//! ```ignore
//! fn authenticate(_ctx: TestContext) -> Result<AuthPlan, Error> {
//!     Ok(AuthPlan::new()
//!         .header("APCA-API-KEY-ID", field("key_id"))
//!         .header("APCA-API-SECRET-KEY", field("secret_key")))
//! }
//! ```

pub use crate::http::AuthPlan;
use crate::http::Value;
use crate::types::Error;

impl AuthPlan {
    /// An empty plan (nothing applied); add headers and query parameters to it.
    pub fn new() -> Self {
        AuthPlan {
            headers: Vec::new(),
            query: Vec::new(),
        }
    }

    /// Sets header `name` to `value` (e.g. `template("Bearer {token}")`).
    pub fn header(mut self, name: &str, value: Value) -> Self {
        self.headers.push((name.into(), value));
        self
    }

    /// Appends query parameter `name` with `value` (e.g. `field("key")`).
    pub fn query(mut self, name: &str, value: Value) -> Self {
        self.query.push((name.into(), value));
        self
    }
}

impl Default for AuthPlan {
    fn default() -> Self {
        Self::new()
    }
}

/// The answer of a type that has no HTTP use (SSH logins, database DSNs): the host then
/// refuses to use its credentials over HTTP.
pub fn no_http_use(what: &str) -> Error {
    Error::Unsupported(format!("{what} credentials have no HTTP use"))
}
