//! `/api/admin/*`: users and tokens. Every route needs the admin role.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};

use super::auth::Auth;
use super::extract::{ApiJson, ApiQuery, OptionalJson};
use super::{ApiError, AppState};
use crate::service::IssuedToken;
use crate::store::Role;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/admin/users", post(add_user).get(list_users))
        .route("/admin/users/{name}/tokens", post(add_token))
        .route("/admin/tokens", get(list_tokens))
        .route("/admin/tokens/{id}", delete(revoke_token))
        .route("/admin/plugins", get(plugins))
        .route("/admin/plugins/reload", post(reload_plugins))
        .route("/admin/keys/rotate", post(rotate_master_key))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewUser {
    /// 1 to 64 characters of `A-Z a-z 0-9 . _ - @` (the store's rule).
    #[schema(min_length = 1, max_length = 64, pattern = "^[A-Za-z0-9._@-]+$")]
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
    #[schema(schema_with = super::openapi::token_lifetime_schema)]
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
    #[schema(value_type = String)]
    pub token: super::reply::ShownOnce,
    #[schema(format = DateTime)]
    pub expires_at: Option<String>,
    pub scopes: Vec<crate::store::Scope>,
}

impl From<IssuedToken> for TokenIssued {
    fn from(t: IssuedToken) -> Self {
        TokenIssued {
            user: t.info.user.clone(),
            token_id: t.info.id.clone(),
            token: (&t.token).into(),
            expires_at: t.info.expires_at.map(crate::service::rfc3339),
            scopes: t.info.scopes().into_iter().collect(),
        }
    }
}

/// Create a user (namespace + data key) and a first token.
#[utoipa::path(post, path = "/api/admin/users", tag = "admin", operation_id = "create_user", request_body = NewUser,
    security(("bearer" = [])),
    responses((status = 201, body = TokenIssued, description = "created with a first token; `Location` is the token's URL"),
              (status = 403, body = super::error::ErrorBody, description = "needs the admin role"),
              (status = 409, body = super::error::ErrorBody, description = "the user exists (`conflict`)"),
              (status = 422, body = super::error::ErrorBody, description = "an invalid user name; `fields` names it")))]
async fn add_user(
    State(s): State<AppState>,
    Auth(p): Auth,
    ApiJson(req): ApiJson<NewUser>,
) -> Result<super::reply::Created<TokenIssued>, ApiError> {
    let role = if req.admin { Role::Admin } else { Role::User };
    let (_, token) = s.run(move |svc| svc.admin_add_user(&p, &req.name, role)).await?;
    Ok(issued(token))
}

/// A new token, located at its revocation URL (the only per-token route).
fn issued(token: IssuedToken) -> super::reply::Created<TokenIssued> {
    super::reply::Created(format!("/api/admin/tokens/{}", token.info.id), token.into())
}

/// Issue another token for a user.
#[utoipa::path(post, path = "/api/admin/users/{name}/tokens", tag = "admin", operation_id = "create_token",
    request_body(content = Option<NewToken>, description = "optional: no body means no label, no expiry, default scopes"),
    params(("name" = String, Path, description = "user name")),
    security(("bearer" = [])),
    responses((status = 201, body = TokenIssued, description = "issued; `Location` is the token's URL"),
              (status = 403, body = super::error::ErrorBody, description = "needs the admin role"),
              (status = 422, body = super::error::ErrorBody, description = "an invalid lifetime or scope; `fields` names it")))]
async fn add_token(
    State(s): State<AppState>,
    Auth(p): Auth,
    Path(name): Path<String>,
    // The body is optional: no body means no label and no expiry.
    OptionalJson(req): OptionalJson<NewToken>,
) -> Result<super::reply::Created<TokenIssued>, ApiError> {
    // The service bounds the lifetime (422 naming `expires_in_secs`) before creating anything.
    let scopes = req.scopes.map(|v| v.into_iter().collect());
    let token = s.run(move |svc| svc.admin_issue_token(&p, &name, req.expires_in_secs, &req.label, scopes)).await?;
    Ok(issued(token))
}

/// Every user, by name.
#[utoipa::path(get, path = "/api/admin/users", tag = "admin", operation_id = "list_users", security(("bearer" = [])),
    responses((status = 200, body = [crate::service::UserView]), (status = 403, body = super::error::ErrorBody)))]
async fn list_users(State(s): State<AppState>, Auth(p): Auth) -> Result<Json<Vec<crate::service::UserView>>, ApiError> {
    Ok(Json(s.read(|svc| svc.admin_list_users(&p))?))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct TokensQuery {
    /// Only this user's tokens (404 for an unknown user).
    pub user: Option<String>,
}

/// Every token (or one user's), oldest first; never their values.
#[utoipa::path(get, path = "/api/admin/tokens", tag = "admin", operation_id = "list_tokens", params(TokensQuery),
    security(("bearer" = [])),
    responses((status = 200, body = [crate::service::TokenView]), (status = 403, body = super::error::ErrorBody),
              (status = 404, body = super::error::ErrorBody)))]
async fn list_tokens(
    State(s): State<AppState>,
    Auth(p): Auth,
    ApiQuery(q): ApiQuery<TokensQuery>,
) -> Result<Json<Vec<crate::service::TokenView>>, ApiError> {
    Ok(Json(s.read(|svc| svc.admin_list_tokens(&p, q.user.as_deref()))?))
}

/// Revoke a token by id.
#[utoipa::path(delete, path = "/api/admin/tokens/{id}", tag = "admin", operation_id = "revoke_token",
    params(("id" = String, Path, description = "token id")), security(("bearer" = [])),
    responses((status = 204, description = "revoked"), (status = 403, body = super::error::ErrorBody, description = "needs the admin role")))]
async fn revoke_token(State(s): State<AppState>, Auth(p): Auth, Path(id): Path<String>) -> Result<StatusCode, ApiError> {
    s.run(move |svc| svc.admin_revoke_token(&p, &id)).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Loaded plugins and the ones refused at the last (re)load.
#[utoipa::path(get, path = "/api/admin/plugins", tag = "admin", operation_id = "list_plugins", security(("bearer" = [])),
    responses((status = 200, body = crate::service::PluginsView), (status = 403, body = super::error::ErrorBody)))]
async fn plugins(State(s): State<AppState>, Auth(p): Auth) -> Result<Json<crate::service::PluginsView>, ApiError> {
    Ok(Json(s.run(move |svc| svc.admin_plugins(&p)).await?))
}

/// Re-read the plugin directory and swap plugins atomically; calls in flight finish on the old ones.
#[utoipa::path(post, path = "/api/admin/plugins/reload", tag = "admin", operation_id = "reload_plugins", security(("bearer" = [])),
    responses((status = 200, body = crate::plugins::LoadReport, description = "reloaded; `problems` lists plugins kept at their previous version or refused"),
              (status = 403, body = super::error::ErrorBody, description = "needs the admin role"),
              (status = 409, body = super::error::ErrorBody, description = "the config no longer loads; nothing changed (`conflict`)")))]
async fn reload_plugins(State(s): State<AppState>, Auth(p): Auth) -> Result<Json<crate::plugins::LoadReport>, ApiError> {
    Ok(Json(s.run(move |svc| svc.admin_reload_plugins(&p)).await?))
}

/// Where the server finds the new master key: a file, never the key itself.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RotateKeys {
    /// Absolute path, on the server's machine, of a file holding the new key (base64 of
    /// 32 bytes): a regular file owned by the server's user, mode 0600 (no group or other
    /// access). `credhost keys rotate` writes one and sends its path.
    #[schema(min_length = 1)]
    pub new_key_file: String,
}

/// Rotate the master key while serving: re-wrap every data key under the key in
/// `new_key_file` in one transaction, then replace the configured key file with it (the
/// old key kept as `<file>.old`). Requests keep being served throughout.
#[utoipa::path(post, path = "/api/admin/keys/rotate", tag = "admin", operation_id = "rotate_master_key", request_body = RotateKeys,
    security(("bearer" = [])),
    responses((status = 200, body = crate::service::KeyRotation, description = "rotated; `action_needed` says what the operator must still do before the next start"),
              (status = 403, body = super::error::ErrorBody, description = "needs the admin role"),
              (status = 409, body = super::error::ErrorBody, description = "PostgreSQL storage: the other replicas would keep the old key; rotate offline (`conflict`)"),
              (status = 422, body = super::error::ErrorBody, description = "the file is missing, not private to the server's user, not a key, or holds the current key; `fields` names `new_key_file`; nothing changed")))]
async fn rotate_master_key(
    State(s): State<AppState>,
    Auth(p): Auth,
    ApiJson(req): ApiJson<RotateKeys>,
) -> Result<Json<crate::service::KeyRotation>, ApiError> {
    Ok(Json(s.run(move |svc| svc.admin_rotate_master_key(&p, &req.new_key_file)).await?))
}
