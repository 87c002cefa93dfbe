//! `/healthz`, `/readyz` and `/metrics` (OpenMetrics text, see [`crate::metrics`]).

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;

use super::AppState;

pub fn router() -> Router<AppState> {
    Router::new().route("/healthz", get(healthz)).route("/readyz", get(readyz)).route("/metrics", get(metrics))
}

/// The process is up (answers from the moment the port is bound).
#[utoipa::path(get, path = "/healthz", tag = "health", operation_id = "get_health",
    responses((status = 200, body = super::openapi::Health, description = "up")))]
async fn healthz() -> Json<serde_json::Value> {
    Json(json!({"status": "ok"}))
}

/// Ready to serve the API: start-up finished (built-ins and the plugin dir loaded, declared
/// config applied), the store answers and credential types are loaded. 503 until then.
#[utoipa::path(get, path = "/readyz", tag = "health", operation_id = "get_readiness",
    responses((status = 200, body = super::openapi::Readiness, description = "ready"),
              (status = 503, body = super::openapi::Readiness, description = "not ready yet, or the store does not answer")))]
async fn readyz(State(s): State<AppState>) -> impl IntoResponse {
    let started = s.ready.is_ready();
    let types = s.service.types().len();
    let store_ok = s.service.store().list_users().is_ok();
    let ready = started && store_ok && types > 0;
    let status = if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    let mut body = json!({"ready": ready, "store": store_ok, "types": types});
    if !started {
        body["starting"] = json!("loading plugins");
    }
    // A 503 says when to ask again, like every 503 of the API.
    let mut response = (status, Json(body)).into_response();
    super::error::with_status_headers(&mut response);
    response
}

#[utoipa::path(get, path = "/metrics", tag = "health", operation_id = "get_metrics",
    responses((status = 200, body = String, content_type = "application/openmetrics-text", description = "OpenMetrics text")))]
async fn metrics(State(s): State<AppState>) -> impl IntoResponse {
    let out = crate::metrics::render(s.service.types().len(), s.ready.is_ready());
    ([(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)], out)
}
