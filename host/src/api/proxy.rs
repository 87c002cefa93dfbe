//! `/api/credentials/{id}/proxy/{*path}`: use a credential without holding it. Any
//! method; the path and query go to the credential's base URL with the credential
//! applied by the host (see [`crate::service::Service::proxy`]).
//!
//! The token may come as `Authorization: Bearer` or — so that an unmodified client SDK
//! works with a grant in place of its secret — in any other header (e.g. Alpaca's
//! `APCA-API-KEY-ID`): the host finds it there, and the type's own auth headers are
//! replaced with the real values on the way out.

use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use axum::Router;

use super::{ApiError, AppState};
use crate::service::{ProxyRequest, ServiceError};
use crate::store::TOKEN_PREFIX;

/// Largest request body passed through the proxy.
pub const MAX_PROXY_REQUEST: usize = 1024 * 1024;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/credentials/{id}/proxy", any(root))
        .route("/credentials/{id}/proxy/{*path}", any(proxied))
        .layer(DefaultBodyLimit::max(MAX_PROXY_REQUEST))
}

/// The presented token: `Authorization: Bearer`, else the first header value that is a
/// credhost token (a grant placed in the type's own auth header by an SDK).
fn presented_token(headers: &HeaderMap) -> Option<String> {
    let bearer = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
        .map(str::trim)
        .filter(|t| t.starts_with(TOKEN_PREFIX));
    bearer.map(str::to_string).or_else(|| {
        // `Authorization` counts only with the Bearer scheme (as on every other route).
        headers
            .iter()
            .filter(|(k, _)| *k != axum::http::header::AUTHORIZATION)
            .filter_map(|(_, v)| v.to_str().ok())
            .map(str::trim)
            .find(|v| v.starts_with(TOKEN_PREFIX) && v.len() <= 128)
            .map(str::to_string)
    })
}

/// Use the credential: the request goes to the credential's service with the credential
/// applied; the response comes back with every form of its secrets scrubbed out.
/// Documented as GET; the route takes every method the type's `[use]` policy (and a
/// grant's `methods`) allow, with the same statuses, and forwards the request body.
#[utoipa::path(get, path = "/api/credentials/{id}/proxy/{path}", tag = "use", operation_id = "use_credential",
    params(("id" = String, Path, description = "credential id"),
           ("path" = String, Path, description = "path below the credential's base URL")),
    security(("bearer" = [])),
    responses((status = 200, description = "the upstream's answer (its own status, any), secrets scrubbed"),
              (status = 403, body = super::error::ErrorBody,
               description = "outside the type's `[use]` policy or the grant's limits (`use_denied`), a revoked grant (`grant_revoked`)"),
              (status = 409, body = super::error::ErrorBody, description = "secrets sealed for another destination (`destination_mismatch`)"),
              (status = 429, body = super::error::ErrorBody, description = "the grant has used all of its calls (`grant_exhausted`)"),
              (status = 502, body = super::error::ErrorBody,
               description = "the egress policy refused the target (`egress_refused`) or it could not be reached (`upstream_unreachable`)")))]
async fn proxied(
    State(s): State<AppState>,
    Path((id, _path)): Path<(String, String)>,
    req: axum::extract::Request,
) -> Result<Response, ApiError> {
    forward(s, id, req).await
}

async fn root(State(s): State<AppState>, Path(id): Path<String>, req: axum::extract::Request) -> Result<Response, ApiError> {
    forward(s, id, req).await
}

async fn forward(s: AppState, id: String, req: axum::extract::Request) -> Result<Response, ApiError> {
    let (parts, body) = req.into_parts();
    let (method, uri, headers): (Method, Uri, HeaderMap) = (parts.method, parts.uri, parts.headers);
    let token = presented_token(&headers).ok_or(ApiError::Service(ServiceError::Unauthorized))?;
    let body: Bytes = axum::body::to_bytes(body, MAX_PROXY_REQUEST)
        .await
        .map_err(|_| ApiError::TooLarge(format!("proxied request bodies are limited to {MAX_PROXY_REQUEST} bytes")))?;
    let p = s.read(|svc| svc.authenticate(&token))?;
    // The raw path as sent: the decoded form could hide `..` or `%2f` tricks from the policy.
    let raw_path = uri
        .path()
        .split_once("/proxy")
        .map(|(_, rest)| if rest.is_empty() { "/".to_string() } else { rest.to_string() })
        .unwrap_or_else(|| "/".into());
    let req = ProxyRequest {
        method: method.as_str().to_string(),
        path: raw_path,
        query: uri.query().map(str::to_string),
        headers: headers.iter().map(|(k, v)| (k.as_str().to_string(), v.as_bytes().to_vec())).collect(),
        body: body.to_vec(),
    };
    let resp = s.service.proxy(&p, &id, req).await.map_err(ApiError::Service)?;
    let mut out = Response::new(Body::from(resp.body));
    *out.status_mut() = StatusCode::from_u16(resp.status).unwrap_or(StatusCode::BAD_GATEWAY);
    for (k, v) in resp.headers {
        if let (Ok(k), Ok(v)) = (HeaderName::from_bytes(k.as_bytes()), HeaderValue::from_str(&v)) {
            out.headers_mut().append(k, v);
        }
    }
    Ok(out.into_response())
}
