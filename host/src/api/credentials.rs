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
use crate::store::ListQuery;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/credentials", post(create).get(list))
        .route("/credentials/{id}", get(show).patch(update).delete(remove))
        .route("/credentials/{id}/restore", post(restore))
        .route("/credentials/{id}/validate", post(validate))
        .route("/credentials/{id}/test", post(test))
}

/// Store a credential; the type's `validate` runs first.
#[utoipa::path(post, path = "/api/credentials", tag = "credentials", request_body = CreateCredential,
    security(("bearer" = [])),
    responses((status = 201, body = CredentialView), (status = 409, body = super::error::ErrorBody),
              (status = 422, body = super::error::ErrorBody)))]
async fn create(
    State(s): State<AppState>,
    Auth(p): Auth,
    ApiJson(req): ApiJson<CreateCredential>,
) -> Result<(StatusCode, Json<CredentialView>), ApiError> {
    let view = s.run(move |svc| svc.create(&p, req)).await?;
    Ok((StatusCode::CREATED, Json(view)))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
struct ListParams {
    /// Only this credential type.
    #[serde(rename = "type")]
    kind: Option<String>,
    /// Only credentials with this tag.
    tag: Option<String>,
    /// Include soft-deleted credentials.
    #[serde(default)]
    include_deleted: bool,
    /// Page size (default 50, at most 1000).
    limit: Option<usize>,
    /// `next_cursor` of the previous page.
    cursor: Option<String>,
}

/// List the caller's credentials: metadata only, ordered by name.
#[utoipa::path(get, path = "/api/credentials", tag = "credentials", params(ListParams),
    security(("bearer" = [])), responses((status = 200, body = CredentialPage)))]
async fn list(
    State(s): State<AppState>,
    Auth(p): Auth,
    ApiQuery(q): ApiQuery<ListParams>,
) -> Result<Json<CredentialPage>, ApiError> {
    let query = ListQuery {
        kind: q.kind,
        tag: q.tag,
        include_deleted: q.include_deleted,
        limit: q.limit.unwrap_or(0),
        cursor: q.cursor,
    };
    Ok(Json(s.run(move |svc| svc.list(&p, &query)).await?))
}

#[utoipa::path(get, path = "/api/credentials/{id}", tag = "credentials", security(("bearer" = [])),
    responses((status = 200, body = CredentialView), (status = 404, body = super::error::ErrorBody)))]
async fn show(State(s): State<AppState>, Auth(p): Auth, Path(id): Path<String>) -> Result<Json<CredentialView>, ApiError> {
    Ok(Json(s.read(|svc| svc.get(&p, &id))?))
}

/// Partial update: absent members and secret fields stay as they are.
#[utoipa::path(patch, path = "/api/credentials/{id}", tag = "credentials", request_body = UpdateCredential,
    security(("bearer" = [])),
    responses((status = 200, body = CredentialView), (status = 404, body = super::error::ErrorBody),
              (status = 422, body = super::error::ErrorBody)))]
async fn update(
    State(s): State<AppState>,
    Auth(p): Auth,
    Path(id): Path<String>,
    ApiJson(req): ApiJson<UpdateCredential>,
) -> Result<Json<CredentialView>, ApiError> {
    Ok(Json(s.run(move |svc| svc.update(&p, &id, req)).await?))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
struct DeleteParams {
    /// Destroy the credential and every version instead of a restorable soft delete.
    #[serde(default)]
    purge: bool,
}

#[utoipa::path(delete, path = "/api/credentials/{id}", tag = "credentials", params(DeleteParams),
    security(("bearer" = [])), responses((status = 204), (status = 404, body = super::error::ErrorBody)))]
async fn remove(
    State(s): State<AppState>,
    Auth(p): Auth,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<DeleteParams>,
) -> Result<StatusCode, ApiError> {
    s.run(move |svc| svc.delete(&p, &id, q.purge)).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(post, path = "/api/credentials/{id}/restore", tag = "credentials", security(("bearer" = [])),
    responses((status = 200, body = CredentialView), (status = 404, body = super::error::ErrorBody)))]
async fn restore(State(s): State<AppState>, Auth(p): Auth, Path(id): Path<String>) -> Result<Json<CredentialView>, ApiError> {
    Ok(Json(s.run(move |svc| svc.restore(&p, &id)).await?))
}

/// Re-run the type's offline checks on the stored credential.
#[utoipa::path(post, path = "/api/credentials/{id}/validate", tag = "credentials", security(("bearer" = [])),
    responses((status = 200, body = ValidationReport), (status = 404, body = super::error::ErrorBody)))]
async fn validate(State(s): State<AppState>, Auth(p): Auth, Path(id): Path<String>) -> Result<Json<ValidationReport>, ApiError> {
    Ok(Json(s.run(move |svc| svc.validate(&p, &id)).await?))
}

/// Test the credential live against its service. A rejected credential is 200 with `ok: false`.
#[utoipa::path(post, path = "/api/credentials/{id}/test", tag = "credentials", security(("bearer" = [])),
    responses((status = 200, body = TestView), (status = 404, body = super::error::ErrorBody),
              (status = 501, body = super::error::ErrorBody), (status = 502, body = super::error::ErrorBody)))]
async fn test(State(s): State<AppState>, Auth(p): Auth, Path(id): Path<String>) -> Result<Json<TestView>, ApiError> {
    Ok(Json(s.run(move |svc| svc.test(&p, &id)).await?))
}
