//! `/api/audit`: the caller's audit records (admins may ask for another user's).

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};

use super::auth::Auth;
use super::extract::ApiQuery;
use super::{ApiError, AppState};
use crate::service::{rfc3339, AuditRequest};
use crate::store::AuditRecord;

pub fn router() -> Router<AppState> {
    Router::new().route("/audit", get(list))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct AuditParams {
    /// Another user's records (admin only).
    user: Option<String>,
    /// Every user's records and the system's (admin only; not with `user`).
    #[serde(default)]
    all: bool,
    /// Only records about this credential id.
    #[param(format = Uuid)]
    credential: Option<String>,
    /// Only this action (`credential.update`), or every action starting with a prefix
    /// given with a trailing `*` (`credential.*`). Admins find probes with `security.probe`.
    #[param(min_length = 1, max_length = 64, pattern = r"^[A-Za-z0-9._-]*\**$")]
    action: Option<String>,
    /// Only records at or after this time (RFC 3339 UTC, e.g. `2026-12-01T08:00:00Z`).
    #[param(format = DateTime)]
    since: Option<String>,
    /// Only records before this time (RFC 3339 UTC).
    #[param(format = DateTime)]
    until: Option<String>,
    /// At most this many records (default 100, at most 1000).
    #[param(maximum = 1000)]
    limit: Option<usize>,
    /// `next_cursor` of the previous page (older records follow).
    #[param(min_length = 1)]
    cursor: Option<String>,
}

/// One page of audit records, newest first.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct AuditPageView {
    pub items: Vec<AuditView>,
    /// Pass as `cursor` for the next (older) page; absent on the last page. Present on a
    /// short or empty page whose scan was cut short: keep paging.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

/// One audit record. `hash` chains it to the previous record.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct AuditView {
    pub seq: u64,
    #[schema(format = DateTime)]
    pub at: String,
    pub actor: String,
    pub action: String,
    #[schema(format = Uuid)]
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

/// List audit records, newest first, one page at a time.
///
/// One page examines at most ten records per `limit` (at least 1000, at most 10 000)
/// and stops early when the request's time limit runs out. A page cut short either way
/// carries a `next_cursor` that resumes right after the last record examined, so a short
/// or even empty page with a `next_cursor` means: keep paging. Only a page without
/// `next_cursor` is the last. Filters that match few records (a rare `action`, a narrow
/// `since`/`until` window) may therefore take several pages to reach their matches.
#[utoipa::path(get, path = "/api/audit", tag = "audit", operation_id = "list_audit_records", params(AuditParams),
    security(("bearer" = [])),
    responses((status = 200, body = AuditPageView),
              (status = 403, body = super::error::ErrorBody, description = "another user's records need the admin role"),
              (status = 404, body = super::error::ErrorBody, description = "no such user"),
              (status = 422, body = super::error::ErrorBody, description = "a bad filter value; `fields` names every bad parameter")))]
async fn list(
    State(s): State<AppState>,
    Auth(p): Auth,
    ApiQuery(q): ApiQuery<AuditParams>,
) -> Result<Json<AuditPageView>, ApiError> {
    let req = AuditRequest {
        user: q.user,
        all: q.all,
        credential: q.credential,
        action: q.action,
        since: q.since,
        until: q.until,
        cursor: q.cursor,
        limit: q.limit.unwrap_or(0),
    };
    let page = s.run(move |svc| svc.audit_log(&p, req)).await?;
    Ok(Json(AuditPageView { items: page.items.into_iter().map(Into::into).collect(), next_cursor: page.next_cursor }))
}
