//! `/api/credentials/{id}/versions` and `/rotate`: secret versions (metadata only),
//! rotation with test-before-promote, and promotion of a kept version (rollback).

use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::routing::{get, post};
use axum::{Json, Router};

use super::auth::Auth;
use super::extract::ApiJson;
use super::{ApiError, AppState};
use crate::service::{CredentialView, RotateRequest, RotationView, ServiceError, VersionList};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/credentials/{id}/versions", get(list))
        .route("/credentials/{id}/rotate", post(rotate))
        .route("/credentials/{id}/versions/{version}/promote", post(promote))
}

/// The credential's kept secret versions, newest first: number, state (`current`,
/// `pending`, `previous`, `retired`), when and by whom, fingerprints, test outcome.
/// Never a value.
#[utoipa::path(get, path = "/api/credentials/{id}/versions", tag = "credentials", operation_id = "list_credential_versions",
    security(("bearer" = [])), responses((status = 200, body = VersionList)))]
async fn list(State(s): State<AppState>, Auth(p): Auth, Path(id): Path<String>) -> Result<Json<VersionList>, ApiError> {
    Ok(Json(s.read(|svc| svc.versions(&p, &id))?))
}

/// Rotate secrets: the new values become a pending version, which is tested live and
/// promoted to current only if the test says `valid` (or `force`). Otherwise the current
/// version stays in use and the answer says why (`result: failed`, `status`, `summary`).
/// Needs the `write` and `test` scopes. With an `Idempotency-Key` header, sending the
/// same request again returns the same answer without a second rotation.
#[utoipa::path(post, path = "/api/credentials/{id}/rotate", tag = "credentials", operation_id = "rotate_credential",
    request_body = RotateRequest, security(("bearer" = [])),
    params(("Idempotency-Key" = Option<String>, Header,
            description = "1-200 visible ASCII characters; the same key with the same body answers the same, remembered 24 hours")),
    responses((status = 200, body = RotationView, description = "the rotation ran: `result` says whether the new version is current"),
              (status = 409, body = super::error::ErrorBody,
               description = "a rotation of this credential is running, the key was used with another body, or the \
                              secrets were sealed for another destination (`conflict`, `destination_mismatch`)"),
              (status = 422, body = super::error::ErrorBody,
               description = "invalid input: `fields` names each field that is not a secret field, is invalid, or is unchanged \
                              (or `Idempotency-Key`); an unknown type (`unknown_type`)"),
              (status = 502, body = super::error::ErrorBody, description = "the type's plugin failed validating (`plugin_error`)")))]
async fn rotate(
    State(s): State<AppState>,
    Auth(p): Auth,
    Path(id): Path<String>,
    headers: HeaderMap,
    ApiJson(req): ApiJson<RotateRequest>,
) -> Result<Json<RotationView>, ApiError> {
    let key = match headers.get("idempotency-key") {
        Some(v) => Some(v.to_str().map(str::to_owned).map_err(|_| {
            ServiceError::InvalidFields(vec![crate::plugins::FieldError {
                field: "Idempotency-Key".into(),
                message: "must be visible ASCII characters".into(),
            }])
        })?),
        None => None,
    };
    Ok(Json(s.run(move |svc| svc.rotate(&p, &id, key, req)).await?))
}

/// Make a kept version current: roll back to an earlier one, or promote a pending one
/// whatever its test said (audited as forced). A version sealed for another destination
/// than the credential's current one is refused.
#[utoipa::path(post, path = "/api/credentials/{id}/versions/{version}/promote", tag = "credentials",
    operation_id = "promote_credential_version", security(("bearer" = [])),
    responses((status = 200, body = CredentialView, description = "the credential, with `version` now current"),
              (status = 409, body = super::error::ErrorBody,
               description = "a rotation or another promote of this credential is running, or the version was sealed \
                              for another destination (`conflict`)"),
              (status = 422, body = super::error::ErrorBody, description = "the credential's type is no longer loaded (`unknown_type`)")))]
async fn promote(
    State(s): State<AppState>,
    Auth(p): Auth,
    Path((id, version)): Path<(String, String)>,
) -> Result<Json<CredentialView>, ApiError> {
    Ok(Json(s.run(move |svc| svc.promote(&p, &id, &version)).await?))
}
