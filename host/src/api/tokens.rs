//! `/api/tokens`: the caller's own tokens and grants — list (`read`) and revoke (`write`).
//! Another user's token id is 404, like an unknown one.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{delete, get};
use axum::{Json, Router};

use super::auth::Auth;
use super::{ApiError, AppState};
use crate::service::TokenView;

pub fn router() -> Router<AppState> {
    Router::new().route("/tokens", get(list)).route("/tokens/{id}", delete(revoke))
}

/// The caller's tokens and grants, oldest first; `current` marks the one making this request.
#[utoipa::path(get, path = "/api/tokens", tag = "tokens", operation_id = "list_own_tokens", security(("bearer" = [])),
    responses((status = 200, body = [TokenView]), (status = 403, body = super::error::ErrorBody)))]
async fn list(State(s): State<AppState>, Auth(p): Auth) -> Result<Json<Vec<TokenView>>, ApiError> {
    Ok(Json(s.read(|svc| svc.own_tokens(&p))?))
}

/// Revoke one of the caller's tokens or grants (the current one included).
#[utoipa::path(delete, path = "/api/tokens/{id}", tag = "tokens", operation_id = "revoke_own_token", security(("bearer" = [])),
    params(("id" = String, Path, description = "token id")),
    responses((status = 204), (status = 403, body = super::error::ErrorBody), (status = 404, body = super::error::ErrorBody)))]
async fn revoke(State(s): State<AppState>, Auth(p): Auth, Path(id): Path<String>) -> Result<StatusCode, ApiError> {
    s.run(move |svc| svc.revoke_own_token(&p, &id)).await?;
    Ok(StatusCode::NO_CONTENT)
}
