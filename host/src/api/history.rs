//! `/api/credentials/{id}/tests`: a credential's recent test outcomes (monitoring).

use axum::extract::{Path, State};
use axum::routing::get;
use axum::{Json, Router};

use super::auth::Auth;
use super::{ApiError, AppState};
use crate::service::monitor::TestHistory;

pub fn router() -> Router<AppState> {
    Router::new().route("/credentials/{id}/tests", get(list))
}

/// The credential's last test outcomes, newest first: manual, scheduled and rotation
/// tests alike (at most `[monitor] history` of them).
#[utoipa::path(get, path = "/api/credentials/{id}/tests", tag = "credentials", operation_id = "list_credential_tests",
    security(("bearer" = [])), responses((status = 200, body = TestHistory)))]
async fn list(State(s): State<AppState>, Auth(p): Auth, Path(id): Path<String>) -> Result<Json<TestHistory>, ApiError> {
    Ok(Json(s.read(|svc| svc.test_history(&p, &id))?))
}
