//! `/api/credentials/{id}/grants`: tokens an app hands to an agent so it can use one
//! credential through the proxy without ever holding the secret.

use axum::extract::{Path, State};
use axum::routing::{delete, post};
use axum::{Json, Router};
use serde::Serialize;

use super::auth::Auth;
use super::extract::ApiJson;
use super::{ApiError, AppState};
use crate::service::{GrantView, NewGrant};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/credentials/{id}/grants", post(create).get(list))
        .route("/credentials/{id}/grants/{grant_id}", delete(revoke))
}

/// A new grant. `token` is shown here once; use it as `Authorization: Bearer` (or in the
/// type's own auth header) against `proxy_url`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct GrantIssued {
    #[serde(flatten)]
    pub grant: GrantView,
    #[schema(value_type = String)]
    pub token: super::reply::ShownOnce,
    /// Base URL for the agent's client: `/api/credentials/{id}/proxy`.
    pub proxy_url: String,
}

/// Issue a grant: a token that can only use this credential through the proxy (needs
/// the `write` and `use` scopes).
#[utoipa::path(post, path = "/api/credentials/{id}/grants", tag = "grants", operation_id = "create_grant",
    request_body = NewGrant, security(("bearer" = [])),
    responses((status = 201, body = GrantIssued, description = "issued; `Location` is the grant's URL"),
              (status = 422, body = super::error::ErrorBody, description = "invalid limits; `fields` names each one")))]
async fn create(
    State(s): State<AppState>,
    Auth(p): Auth,
    Path(id): Path<String>,
    ApiJson(req): ApiJson<NewGrant>,
) -> Result<super::reply::Created<GrantIssued>, ApiError> {
    let issued = s.run(move |svc| svc.create_grant(&p, &id, req)).await?;
    let proxy_url = format!("/api/credentials/{}/proxy", issued.grant.credential);
    let location = format!("/api/credentials/{}/grants/{}", issued.grant.credential, issued.grant.grant_id);
    Ok(super::reply::Created(
        location,
        GrantIssued { token: (&issued.token.token).into(), grant: issued.grant, proxy_url },
    ))
}

/// The credential's grants (never their tokens).
#[utoipa::path(get, path = "/api/credentials/{id}/grants", tag = "grants", operation_id = "list_grants",
    security(("bearer" = [])), responses((status = 200, body = Vec<GrantView>)))]
async fn list(State(s): State<AppState>, Auth(p): Auth, Path(id): Path<String>) -> Result<Json<Vec<GrantView>>, ApiError> {
    Ok(Json(s.read(|svc| svc.list_grants(&p, &id))?))
}

/// Revoke a grant; its holder gets 403 `grant_revoked` from then on.
#[utoipa::path(delete, path = "/api/credentials/{id}/grants/{grant_id}", tag = "grants", operation_id = "revoke_grant",
    security(("bearer" = [])), responses((status = 200, body = GrantView, description = "revoked")))]
async fn revoke(
    State(s): State<AppState>,
    Auth(p): Auth,
    Path((id, grant_id)): Path<(String, String)>,
) -> Result<Json<GrantView>, ApiError> {
    Ok(Json(s.run(move |svc| svc.revoke_grant(&p, &id, &grant_id)).await?))
}
