//! Extractors whose rejections use the API's error shape.

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::StatusCode;
use serde::de::DeserializeOwned;

use super::ApiError;

/// `Json<T>` with 400/413 errors in the one JSON shape.
pub struct ApiJson<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(v)) => Ok(ApiJson(v)),
            Err(JsonRejection::BytesRejection(r)) if r.status() == StatusCode::PAYLOAD_TOO_LARGE => Err(too_large()),
            Err(r @ JsonRejection::MissingJsonContentType(_)) => Err(ApiError::UnsupportedMediaType(r.body_text())),
            Err(r) => Err(ApiError::BadRequest(body_text(r))),
        }
    }
}

/// An optional JSON body: no body (or only whitespace) is `T::default()`; otherwise
/// like [`ApiJson`], without insisting on the content type.
pub struct OptionalJson<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Default> FromRequest<S> for OptionalJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let body = match axum::body::Bytes::from_request(req, state).await {
            Ok(b) => b,
            Err(r) if r.status() == StatusCode::PAYLOAD_TOO_LARGE => return Err(too_large()),
            Err(r) => return Err(ApiError::BadRequest(r.body_text())),
        };
        if body.iter().all(u8::is_ascii_whitespace) {
            return Ok(OptionalJson(T::default()));
        }
        serde_json::from_slice(&body)
            .map(OptionalJson)
            .map_err(|e| ApiError::BadRequest(crate::redact::unquote(&format!("invalid JSON body: {e}"))))
    }
}

fn too_large() -> ApiError {
    ApiError::TooLarge("request body is larger than the server accepts".into())
}

/// `Query<T>` with 400 errors in the one JSON shape.
pub struct ApiQuery<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|q| ApiQuery(q.0))
            .map_err(|r: QueryRejection| ApiError::BadRequest(r.body_text()))
    }
}

/// serde's message says which member is wrong and where, but "invalid type" errors quote
/// the offending string, which may be a secret: quoted text is replaced by `"…"`.
fn body_text(r: JsonRejection) -> String {
    crate::redact::unquote(&r.body_text())
}
