//! `/healthz`, `/readyz` and `/metrics` (Prometheus text format).

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

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

/// Response counts by status class and total handling time.
#[derive(Debug, Default)]
pub struct Metrics {
    by_class: [AtomicU64; 5],
    micros: AtomicU64,
}

impl Metrics {
    pub fn record(&self, status: u16, took: Duration) {
        let class = usize::from((status / 100).clamp(1, 5)) - 1;
        self.by_class[class].fetch_add(1, Ordering::Relaxed);
        self.micros.fetch_add(took.as_micros() as u64, Ordering::Relaxed);
    }
}

/// The process is up.
#[utoipa::path(get, path = "/healthz", tag = "health", responses((status = 200)))]
async fn healthz() -> Json<serde_json::Value> {
    Json(json!({"status": "ok"}))
}

/// The store answers and credential types are loaded.
#[utoipa::path(get, path = "/readyz", tag = "health", responses((status = 200), (status = 503)))]
async fn readyz(State(s): State<AppState>) -> impl IntoResponse {
    let types = s.service.types().len();
    let store_ok = s.service.store().list_users().is_ok();
    let status = if store_ok && types > 0 { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (status, Json(json!({"store": store_ok, "types": types})))
}

#[utoipa::path(get, path = "/metrics", tag = "health", responses((status = 200, content_type = "text/plain")))]
async fn metrics(State(s): State<AppState>) -> impl IntoResponse {
    let m = &s.metrics;
    let mut out = String::new();
    out.push_str("# HELP credhost_http_responses_total HTTP responses by status class.\n");
    out.push_str("# TYPE credhost_http_responses_total counter\n");
    for (i, c) in m.by_class.iter().enumerate() {
        let _ = writeln!(out, "credhost_http_responses_total{{class=\"{}xx\"}} {}", i + 1, c.load(Ordering::Relaxed));
    }
    out.push_str("# HELP credhost_http_request_seconds_total Time spent handling requests.\n");
    out.push_str("# TYPE credhost_http_request_seconds_total counter\n");
    let _ = writeln!(out, "credhost_http_request_seconds_total {:.6}", m.micros.load(Ordering::Relaxed) as f64 / 1e6);
    out.push_str("# HELP credhost_credential_types Loaded credential types.\n");
    out.push_str("# TYPE credhost_credential_types gauge\n");
    let _ = writeln!(out, "credhost_credential_types {}", s.service.types().len());
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out)
}
