//! The one error shape of the HTTP API: `{"error": {"code", "message", "fields"?}}`.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;

use crate::plugins::FieldError;
use crate::service::ServiceError;

/// An API error; each variant documents its status.
#[derive(Debug)]
pub enum ApiError {
    /// 400: malformed JSON or query.
    BadRequest(String),
    /// 413: body over the configured cap.
    TooLarge(String),
    /// 415: a JSON body without `Content-Type: application/json`.
    UnsupportedMediaType(String),
    /// 503: the request took longer than the server's time limit.
    Timeout,
    /// Any other status produced outside the handlers (405, a path rejection, ...).
    Status(StatusCode),
    /// Everything the service layer can refuse.
    Service(ServiceError),
}

impl From<ServiceError> for ApiError {
    fn from(e: ServiceError) -> Self {
        ApiError::Service(e)
    }
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct ErrorDetail {
    /// Stable machine-readable code, e.g. `not_found`, `invalid_fields`.
    pub code: &'static str,
    pub message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fields: Option<Vec<FieldError>>,
}

impl ApiError {
    fn parts(self) -> (StatusCode, &'static str, String, Option<Vec<FieldError>>) {
        use ServiceError as S;
        match self {
            ApiError::BadRequest(m) => (StatusCode::BAD_REQUEST, "bad_request", m, None),
            ApiError::TooLarge(m) => (StatusCode::PAYLOAD_TOO_LARGE, "too_large", m, None),
            ApiError::UnsupportedMediaType(m) => {
                (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type", m, None)
            }
            ApiError::Timeout => {
                (StatusCode::SERVICE_UNAVAILABLE, "timeout", "the request took longer than the server allows".into(), None)
            }
            ApiError::Status(status) => {
                let code = match status {
                    StatusCode::BAD_REQUEST => "bad_request",
                    StatusCode::NOT_FOUND => "not_found",
                    StatusCode::METHOD_NOT_ALLOWED => "method_not_allowed",
                    StatusCode::PAYLOAD_TOO_LARGE => "too_large",
                    StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
                    s if s.is_server_error() => "internal",
                    _ => "error",
                };
                let message = status.canonical_reason().unwrap_or("error").to_lowercase();
                (status, code, message, None)
            }
            ApiError::Service(e) => {
                let message = e.to_string();
                match e {
                    S::Unauthorized => (StatusCode::UNAUTHORIZED, "unauthorized", message, None),
                    S::Forbidden => (StatusCode::FORBIDDEN, "forbidden", message, None),
                    S::InsufficientScope(_) => (StatusCode::FORBIDDEN, "insufficient_scope", message, None),
                    S::UseDenied(_) => (StatusCode::FORBIDDEN, "use_denied", message, None),
                    S::RevealNotAllowed(_) => (StatusCode::FORBIDDEN, "reveal_not_allowed", message, None),
                    S::Egress { refused: true, .. } => (StatusCode::BAD_GATEWAY, "egress_refused", message, None),
                    S::Egress { refused: false, .. } => (StatusCode::BAD_GATEWAY, "upstream_unreachable", message, None),
                    S::DestinationMismatch => (StatusCode::CONFLICT, "destination_mismatch", message, None),
                    S::GrantOnly => (StatusCode::FORBIDDEN, "grant_only", message, None),
                    S::GrantExpired => (StatusCode::UNAUTHORIZED, "grant_expired", message, None),
                    S::GrantRevoked => (StatusCode::FORBIDDEN, "grant_revoked", message, None),
                    S::GrantExhausted => (StatusCode::TOO_MANY_REQUESTS, "grant_exhausted", message, None),
                    S::NotFound => (StatusCode::NOT_FOUND, "not_found", message, None),
                    S::Conflict(_) => (StatusCode::CONFLICT, "conflict", message, None),
                    S::NameTaken(field) => (StatusCode::CONFLICT, "conflict", message, Some(vec![field])),
                    S::InvalidFields(fields) => {
                        (StatusCode::UNPROCESSABLE_ENTITY, "invalid_fields", message, Some(fields))
                    }
                    S::BadInput(_) => (StatusCode::UNPROCESSABLE_ENTITY, "invalid", message, None),
                    S::UnknownType(_) => (StatusCode::UNPROCESSABLE_ENTITY, "unknown_type", message, None),
                    S::NotImplemented(_) => (StatusCode::NOT_IMPLEMENTED, "not_implemented", message, None),
                    S::Busy => (StatusCode::SERVICE_UNAVAILABLE, "unavailable", message, None),
                    S::Timeout => (StatusCode::SERVICE_UNAVAILABLE, "timeout", message, None),
                    // The plugin asked for something its manifest does not grant (or the host
                    // refused it, e.g. a host off its allow-list): a fault of the plugin, said as such.
                    S::Plugin(crate::plugins::PluginError::Reported {
                        kind: crate::plugins::ReportedKind::Denied | crate::plugins::ReportedKind::Rejected,
                        ..
                    }) => (StatusCode::BAD_GATEWAY, "capability_denied", message, None),
                    S::Plugin(_) => (StatusCode::BAD_GATEWAY, "plugin_error", message, None),
                    S::Internal(detail) => {
                        // Details go to the log only; the client gets a generic message.
                        tracing::error!(%detail, "internal error");
                        (StatusCode::INTERNAL_SERVER_ERROR, "internal", "internal error".into(), None)
                    }
                }
            }
        }
    }
}

/// Seconds a client should wait before retrying a 503 (busy sandbox, timed-out request).
pub const RETRY_AFTER_SECS: u64 = 1;

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code, message, fields) = self.parts();
        let mut response = (status, Json(ErrorBody { error: ErrorDetail { code, message, fields } })).into_response();
        with_status_headers(&mut response);
        response
    }
}

/// The headers a status promises: a 401 names the scheme to authenticate with (RFC 9110
/// 11.6.1), a 503 says when to come back. Applied to every answer, also ones built elsewhere.
pub fn with_status_headers(response: &mut Response) {
    use axum::http::{header, HeaderValue};
    let status = response.status();
    let headers = response.headers_mut();
    match status {
        StatusCode::UNAUTHORIZED => {
            headers.entry(header::WWW_AUTHENTICATE).or_insert(HeaderValue::from_static("Bearer"));
        }
        StatusCode::SERVICE_UNAVAILABLE => {
            headers.entry(header::RETRY_AFTER).or_insert(HeaderValue::from(RETRY_AFTER_SECS));
        }
        _ => {}
    }
}

/// The answer to a handler that panicked: the API's JSON 500. The payload is dropped
/// unread (it may quote request data or secrets); the panic hook logged its location.
pub fn panic_response(_payload: Box<dyn std::any::Any + Send + 'static>) -> Response {
    ApiError::Status(StatusCode::INTERNAL_SERVER_ERROR).into_response()
}

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use axum::http::Request;
    use axum::routing::get;
    use axum::Router;
    use tower::ServiceExt;

    use super::*;

    async fn boom() -> &'static str {
        panic!("PANIC-PAYLOAD-s3cr3t")
    }

    /// A panicking handler answers the one error shape, status 500, and the panic
    /// message (standing in for a secret) appears nowhere in the reply.
    #[tokio::test]
    async fn a_handler_panic_becomes_a_json_500_without_its_message() {
        let app = Router::new()
            .route("/boom", get(boom))
            .layer(tower_http::catch_panic::CatchPanicLayer::custom(panic_response));
        let res = app.clone().oneshot(Request::get("/boom").body(Body::empty()).unwrap()).await.unwrap();
        assert_eq!(res.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(res.headers()[axum::http::header::CONTENT_TYPE], "application/json");
        let bytes = axum::body::to_bytes(res.into_body(), 1 << 16).await.unwrap();
        let text = String::from_utf8(bytes.to_vec()).unwrap();
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["error"]["code"], "internal", "{text}");
        assert!(!text.contains("s3cr3t"), "{text}");
        // The same service keeps answering.
        let again = app.oneshot(Request::get("/boom").body(Body::empty()).unwrap()).await.unwrap();
        assert_eq!(again.status(), StatusCode::INTERNAL_SERVER_ERROR);
    }
}
