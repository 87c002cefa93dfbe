//! `/api/audit`: the caller's audit records (admins may ask for another user's).

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};

use super::auth::Auth;
use super::extract::ApiQuery;
use super::{ApiError, AppState};
use crate::service::rfc3339;
use crate::store::AuditRecord;

pub fn router() -> Router<AppState> {
    Router::new().route("/audit", get(list))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
struct AuditParams {
    /// Another user's records (admin only).
    user: Option<String>,
    /// At most this many records (default 100, at most 1000).
    limit: Option<usize>,
}

/// One audit record. `hash` chains it to the previous record.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct AuditView {
    pub seq: u64,
    pub at: String,
    pub actor: String,
    pub action: String,
    pub credential: Option<String>,
    /// `ok`, `denied` or `failed`.
    pub outcome: String,
    pub detail: String,
    pub hash: String,
}

impl From<AuditRecord> for AuditView {
    fn from(r: AuditRecord) -> Self {
        AuditView {
            seq: r.seq,
            at: rfc3339(r.at),
            actor: r.actor,
            action: r.action,
            credential: r.credential.map(|c| c.to_string()),
            outcome: serde_json::to_value(r.outcome).ok().and_then(|v| v.as_str().map(String::from)).unwrap_or_default(),
            detail: r.detail,
            hash: crate::plugins::runtime::hex(&r.hash),
        }
    }
}

#[utoipa::path(get, path = "/api/audit", tag = "audit", params(AuditParams), security(("bearer" = [])),
    responses((status = 200, body = Vec<AuditView>), (status = 403, body = super::error::ErrorBody)))]
async fn list(
    State(s): State<AppState>,
    Auth(p): Auth,
    ApiQuery(q): ApiQuery<AuditParams>,
) -> Result<Json<Vec<AuditView>>, ApiError> {
    let records = s.run(move |svc| svc.audit_log(&p, q.user.as_deref(), q.limit.unwrap_or(0))).await?;
    Ok(Json(records.into_iter().map(Into::into).collect()))
}
