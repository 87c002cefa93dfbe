//! `/api/credentials`: the caller's own credentials.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;

use super::auth::Auth;
use super::extract::{ApiJson, ApiQuery};
use super::{ApiError, AppState};
use crate::service::{CreateCredential, CredentialPage, CredentialView, TestView, UpdateCredential, ValidationReport};
use crate::plugins::FieldError;
use crate::service::ServiceError;
use crate::store::{Deleted, Health, ListQuery, TestStatusFilter};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/credentials", post(create).get(list))
        .route("/credentials/{id}", get(show).patch(update).delete(remove))
        .route("/credentials/{id}/restore", post(restore))
        .route("/credentials/{id}/validate", post(validate))
        .route("/credentials/{id}/test", post(test))
}

/// Store a credential; the type's `validate` runs first.
#[utoipa::path(post, path = "/api/credentials", tag = "credentials", operation_id = "create_credential",
    request_body = CreateCredential, security(("bearer" = [])),
    responses((status = 201, body = CredentialView, description = "stored; `Location` is its URL"),
              (status = 409, body = super::error::ErrorBody, description = "the name is taken (`conflict`)"),
              (status = 422, body = super::error::ErrorBody,
               description = "invalid input (`invalid_fields`: `fields` names each one) or an unknown type (`unknown_type`)"),
              (status = 502, body = super::error::ErrorBody, description = "the type's plugin failed (`plugin_error`)")))]
async fn create(
    State(s): State<AppState>,
    Auth(p): Auth,
    ApiJson(req): ApiJson<CreateCredential>,
) -> Result<super::reply::Created<CredentialView>, ApiError> {
    let view = s.run(move |svc| svc.create(&p, req)).await?;
    Ok(super::reply::Created(format!("/api/credentials/{}", view.id), view))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct ListParams {
    /// Only this credential type.
    #[serde(rename = "type")]
    kind: Option<String>,
    /// Only credentials with this tag (compared after NFC normalisation).
    #[param(min_length = 1)]
    tag: Option<String>,
    /// Only the credential with exactly this name (compared after NFC normalisation).
    #[param(min_length = 1)]
    name: Option<String>,
    /// Only credentials whose name starts with this text (NFC, case-sensitive).
    #[param(min_length = 1)]
    name_prefix: Option<String>,
    /// Only credentials whose last live test was `valid`, `invalid` or `indeterminate`,
    /// or that were never tested (`untested`).
    #[param(pattern = "^(valid|invalid|indeterminate|untested)$")]
    status: Option<String>,
    /// Only credentials with this health now: `valid`, `invalid`, `indeterminate`,
    /// `expiring` or `untested` (expiry counts: a credential past its reported expiry is `invalid`).
    #[param(pattern = "^(valid|invalid|indeterminate|expiring|untested)$")]
    health: Option<String>,
    /// Include soft-deleted credentials.
    #[serde(default)]
    include_deleted: bool,
    /// Only soft-deleted credentials (the ones to restore or purge).
    #[serde(default)]
    deleted_only: bool,
    /// Page size (default 50, at most 1000).
    #[param(maximum = 1000)]
    limit: Option<usize>,
    /// `next_cursor` of the previous page.
    #[param(min_length = 1)]
    cursor: Option<String>,
}

/// Listings with at most this many names in their range run on the request's task
/// (each costs ~10 µs per credential: a page read and a decode).
const INLINE_LIST_NAMES: usize = 64;

/// List the caller's credentials: metadata only, ordered by name.
#[utoipa::path(get, path = "/api/credentials", tag = "credentials", operation_id = "list_credentials",
    params(ListParams), security(("bearer" = [])), responses((status = 200, body = CredentialPage),
              (status = 422, body = super::error::ErrorBody, description = "a bad filter value; `fields` names the parameter")))]
async fn list(
    State(s): State<AppState>,
    Auth(p): Auth,
    ApiQuery(q): ApiQuery<ListParams>,
) -> Result<Json<CredentialPage>, ApiError> {
    let status = match q.status.as_deref().map(str::parse::<TestStatusFilter>).transpose() {
        Ok(s) => s,
        Err(message) => {
            return Err(ServiceError::InvalidFields(vec![FieldError { field: "status".into(), message }]).into())
        }
    };
    let health = match q.health.as_deref().map(str::parse::<Health>).transpose() {
        Ok(h) => h,
        Err(message) => {
            return Err(ServiceError::InvalidFields(vec![FieldError { field: "health".into(), message }]).into())
        }
    };
    let query = ListQuery {
        health,
        expiry_warning_ms: 0,
        kind: q.kind,
        tag: q.tag,
        name: q.name,
        name_prefix: q.name_prefix,
        status,
        include_deleted: q.include_deleted,
        deleted: if q.deleted_only { Deleted::Only } else { Deleted::default() },
        limit: q.limit.unwrap_or(0),
        cursor: q.cursor,
    };
    // On redb a short listing runs on this task: the hand-off to the blocking pool and
    // back cost more than it does (list p50 at 16 clients 2.8-3.8 -> 2.4 ms). A long one
    // (a large namespace, each credential decoded) goes to the blocking pool, and so does
    // every listing on PostgreSQL (a few network round trips).
    if !s.service.store().is_shared() {
        if let Some(page) = s.read(|svc| svc.list_within(&p, query.clone(), INLINE_LIST_NAMES))? {
            return Ok(Json(page));
        }
    }
    Ok(Json(s.run(move |svc| svc.list(&p, query)).await?))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct GetParams {
    /// Also find a soft-deleted credential (its view carries `deleted_at`); without it a
    /// deleted credential is 404 like an unknown one.
    #[serde(default)]
    include_deleted: bool,
}

#[utoipa::path(get, path = "/api/credentials/{id}", tag = "credentials", operation_id = "get_credential",
    params(GetParams), security(("bearer" = [])), responses((status = 200, body = CredentialView)))]
async fn show(
    State(s): State<AppState>,
    Auth(p): Auth,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<GetParams>,
) -> Result<Json<CredentialView>, ApiError> {
    Ok(Json(s.read(|svc| svc.get(&p, &id, q.include_deleted))?))
}

/// Partial update: absent members and secret fields stay as they are.
#[utoipa::path(patch, path = "/api/credentials/{id}", tag = "credentials", operation_id = "update_credential",
    request_body = UpdateCredential, security(("bearer" = [])),
    responses((status = 200, body = CredentialView, description = "updated; a request that changes nothing writes nothing"),
              (status = 409, body = super::error::ErrorBody,
               description = "the new name is taken (`conflict`), or the secrets were sealed for another destination (`destination_mismatch`)"),
              (status = 422, body = super::error::ErrorBody, description = "invalid input; `fields` names each one"),
              (status = 502, body = super::error::ErrorBody, description = "the type's plugin failed (`plugin_error`)")))]
async fn update(
    State(s): State<AppState>,
    Auth(p): Auth,
    Path(id): Path<String>,
    ApiJson(req): ApiJson<UpdateCredential>,
) -> Result<Json<CredentialView>, ApiError> {
    Ok(Json(s.run(move |svc| svc.update(&p, &id, req)).await?))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct DeleteParams {
    /// Destroy the credential and every version instead of a restorable soft delete.
    #[serde(default)]
    purge: bool,
}

#[utoipa::path(delete, path = "/api/credentials/{id}", tag = "credentials", operation_id = "delete_credential",
    params(DeleteParams), security(("bearer" = [])), responses((status = 204, description = "deleted")))]
async fn remove(
    State(s): State<AppState>,
    Auth(p): Auth,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<DeleteParams>,
) -> Result<StatusCode, ApiError> {
    s.run(move |svc| svc.delete(&p, &id, q.purge)).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(post, path = "/api/credentials/{id}/restore", tag = "credentials", operation_id = "restore_credential",
    security(("bearer" = [])),
    responses((status = 200, body = CredentialView),
              (status = 409, body = super::error::ErrorBody, description = "another credential holds its name now (`conflict`)")))]
async fn restore(State(s): State<AppState>, Auth(p): Auth, Path(id): Path<String>) -> Result<Json<CredentialView>, ApiError> {
    Ok(Json(s.run(move |svc| svc.restore(&p, &id)).await?))
}

/// Re-run the type's offline checks on the stored credential.
#[utoipa::path(post, path = "/api/credentials/{id}/validate", tag = "credentials", operation_id = "validate_credential",
    security(("bearer" = [])),
    responses((status = 200, body = ValidationReport),
              (status = 409, body = super::error::ErrorBody, description = "secrets sealed for another destination (`destination_mismatch`)"),
              (status = 422, body = super::error::ErrorBody, description = "the credential's type is no longer loaded (`unknown_type`)"),
              (status = 502, body = super::error::ErrorBody, description = "the type's plugin failed (`plugin_error`)")))]
async fn validate(State(s): State<AppState>, Auth(p): Auth, Path(id): Path<String>) -> Result<Json<ValidationReport>, ApiError> {
    Ok(Json(s.run(move |svc| svc.validate(&p, &id)).await?))
}

/// Test the credential live against its service. Every verdict is 200: `valid`, `invalid`
/// (the service refused the credential), or `indeterminate` with the reason in `summary`
/// (nothing to test against, a target the host's policy refuses, an unreachable service).
#[utoipa::path(post, path = "/api/credentials/{id}/test", tag = "credentials", operation_id = "test_credential",
    security(("bearer" = [])),
    responses((status = 200, body = TestView, description = "the verdict, also stored as `last_test`"),
              (status = 409, body = super::error::ErrorBody, description = "secrets sealed for another destination (`destination_mismatch`)"),
              (status = 422, body = super::error::ErrorBody, description = "the credential's type is no longer loaded (`unknown_type`)"),
              (status = 502, body = super::error::ErrorBody, description = "the type's plugin failed (`plugin_error`): a fault of the plugin, not of the credential")))]
async fn test(State(s): State<AppState>, Auth(p): Auth, Path(id): Path<String>) -> Result<Json<TestView>, ApiError> {
    Ok(Json(s.run(move |svc| svc.test(&p, &id)).await?))
}
