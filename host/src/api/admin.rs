//! `/api/admin/*`: users and tokens. Every route needs the admin role.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use secrecy::ExposeSecret;
use serde::{Deserialize, Serialize};

use super::auth::Auth;
use super::extract::{ApiJson, OptionalJson};
use super::{ApiError, AppState};
use crate::service::IssuedToken;
use crate::store::Role;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/admin/users", post(add_user))
        .route("/admin/users/{name}/tokens", post(add_token))
        .route("/admin/tokens/{id}", delete(revoke_token))
        .route("/admin/plugins", get(plugins))
        .route("/admin/plugins/reload", post(reload_plugins))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewUser {
    pub name: String,
    #[serde(default)]
    pub admin: bool,
}

#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewToken {
    #[serde(default)]
    pub label: String,
    /// Lifetime in seconds (1 to 10 years); absent means no expiry.
    pub expires_in_secs: Option<u64>,
    /// Scopes the token carries; absent means the user's defaults (read, write, test,
    /// use, and admin for admins). `reveal` is only ever given here, on purpose.
    #[serde(default)]
    pub scopes: Option<Vec<crate::store::Scope>>,
}

/// A freshly issued token. `token` is shown here once and stored only as a hash.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct TokenIssued {
    pub user: String,
    pub token_id: String,
    pub token: String,
    pub expires_at: Option<String>,
    pub scopes: Vec<crate::store::Scope>,
}

impl From<IssuedToken> for TokenIssued {
    fn from(t: IssuedToken) -> Self {
        TokenIssued {
            user: t.info.user.clone(),
            token_id: t.info.id.clone(),
            token: t.token.expose_secret().to_string(),
            expires_at: t.info.expires_at.map(crate::service::rfc3339),
            scopes: t.info.scopes().into_iter().collect(),
        }
    }
}

/// Create a user (namespace + data key) and a first token.
#[utoipa::path(post, path = "/api/admin/users", tag = "admin", request_body = NewUser, security(("bearer" = [])),
    responses((status = 201, body = TokenIssued), (status = 403, body = super::error::ErrorBody),
              (status = 409, body = super::error::ErrorBody)))]
async fn add_user(
    State(s): State<AppState>,
    Auth(p): Auth,
    ApiJson(req): ApiJson<NewUser>,
) -> Result<(StatusCode, Json<TokenIssued>), ApiError> {
    let role = if req.admin { Role::Admin } else { Role::User };
    let (_, token) = s.run(move |svc| svc.admin_add_user(&p, &req.name, role)).await?;
    Ok((StatusCode::CREATED, Json(token.into())))
}

/// Issue another token for a user.
#[utoipa::path(post, path = "/api/admin/users/{name}/tokens", tag = "admin", request_body = NewToken,
    security(("bearer" = [])),
    responses((status = 201, body = TokenIssued), (status = 403, body = super::error::ErrorBody),
              (status = 404, body = super::error::ErrorBody)))]
async fn add_token(
    State(s): State<AppState>,
    Auth(p): Auth,
    Path(name): Path<String>,
    // The body is optional: no body means no label and no expiry.
    OptionalJson(req): OptionalJson<NewToken>,
) -> Result<(StatusCode, Json<TokenIssued>), ApiError> {
    // The service bounds the lifetime (422 naming `expires_in_secs`) before creating anything.
    let scopes = req.scopes.map(|v| v.into_iter().collect());
    let token = s.run(move |svc| svc.admin_issue_token(&p, &name, req.expires_in_secs, &req.label, scopes)).await?;
    Ok((StatusCode::CREATED, Json(token.into())))
}

/// Revoke a token by id.
#[utoipa::path(delete, path = "/api/admin/tokens/{id}", tag = "admin", security(("bearer" = [])),
    responses((status = 204), (status = 403, body = super::error::ErrorBody), (status = 404, body = super::error::ErrorBody)))]
async fn revoke_token(State(s): State<AppState>, Auth(p): Auth, Path(id): Path<String>) -> Result<StatusCode, ApiError> {
    s.run(move |svc| svc.admin_revoke_token(&p, &id)).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Loaded plugins and the ones refused at the last (re)load.
#[utoipa::path(get, path = "/api/admin/plugins", tag = "admin", security(("bearer" = [])),
    responses((status = 200, body = crate::service::PluginsView), (status = 403, body = super::error::ErrorBody)))]
async fn plugins(State(s): State<AppState>, Auth(p): Auth) -> Result<Json<crate::service::PluginsView>, ApiError> {
    Ok(Json(s.run(move |svc| svc.admin_plugins(&p)).await?))
}

/// Re-read the plugin directory and swap plugins atomically; calls in flight finish on the old ones.
#[utoipa::path(post, path = "/api/admin/plugins/reload", tag = "admin", security(("bearer" = [])),
    responses((status = 200, body = crate::plugins::LoadReport), (status = 403, body = super::error::ErrorBody)))]
async fn reload_plugins(State(s): State<AppState>, Auth(p): Auth) -> Result<Json<crate::plugins::LoadReport>, ApiError> {
    Ok(Json(s.run(move |svc| svc.admin_reload_plugins(&p)).await?))
}
