//! `/api/credential-types`: the loaded types' descriptors (form schemas). No auth needed.

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};

use super::AppState;
use crate::plugins::TypeDescriptor;

pub fn router() -> Router<AppState> {
    Router::new().route("/credential-types", get(list))
}

#[utoipa::path(get, path = "/api/credential-types", tag = "types", operation_id = "list_credential_types",
    responses((status = 200, body = Vec<TypeDescriptor>)))]
async fn list(State(s): State<AppState>) -> Json<Vec<TypeDescriptor>> {
    Json(s.service.types())
}
