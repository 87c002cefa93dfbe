//! `POST /api/credentials/{id}/reveal`: a credential in clear, for programs that can only
//! read environment variables (see `credhost exec`). Needs the `reveal` scope and a type
//! whose `[use]` policy allows it; audited. Everything else should use the proxy.

use axum::extract::{Path, State};
use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};

use super::auth::Auth;
use super::{ApiError, AppState};
use crate::service::Revealed;

pub fn router() -> Router<AppState> {
    Router::new().route("/credentials/{id}/reveal", post(reveal))
}

/// Reveal a credential: every field in clear and the type's environment variables (needs
/// the `reveal` scope, which default tokens and grants lack; the type must allow reveal).
/// Audited as `credential.reveal`; the answer must not be cached.
#[utoipa::path(post, path = "/api/credentials/{id}/reveal", tag = "use", operation_id = "reveal_credential",
    params(("id" = String, Path, description = "credential id")),
    security(("bearer" = [])),
    responses((status = 200, body = Revealed, description = "the credential in clear; `Cache-Control: no-store`"),
              (status = 403, body = super::error::ErrorBody, description = "`insufficient_scope` or `reveal_not_allowed`"),
              (status = 409, body = super::error::ErrorBody, description = "secrets sealed for another destination (`destination_mismatch`)")))]
async fn reveal(State(s): State<AppState>, Auth(p): Auth, Path(id): Path<String>) -> Result<Response, ApiError> {
    // A request body, if any, is ignored: there is nothing to choose.
    let revealed = s.run(move |svc| svc.reveal(&p, &id)).await?;
    let mut out = Json(&revealed).into_response();
    // Serialized above; `revealed` (zeroized on drop) goes out of scope at return.
    let h = out.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    Ok(out)
}
