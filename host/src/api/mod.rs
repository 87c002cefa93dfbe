//! The HTTP API: routes per resource, bearer-token auth as an extractor, one
//! error shape. Handlers are thin: they parse, call [`Service`], shape the reply.

mod admin;
mod audit;
mod auth;
mod console;
mod credentials;
pub mod error;
mod extract;
mod grants;
mod health;
mod history;
mod proxy;
pub mod openapi;
mod reply;
mod reveal;
mod tokens;
mod types;
mod webhooks;
mod versions;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{header, HeaderName, HeaderValue};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::Router;
use tower::limit::GlobalConcurrencyLimitLayer;
use tower_http::request_id::{MakeRequestId, PropagateRequestIdLayer, RequestId, SetRequestIdLayer};

use crate::config::ServerConfig;
use crate::service::{Result as ServiceResult, Service, ServiceError};
pub use error::ApiError;

/// Shared state of every handler.
#[derive(Clone)]
pub struct AppState {
    pub service: Arc<Service>,
    /// False while the server starts (plugins compiling, declared config applied).
    pub ready: Readiness,
}

impl AppState {
    /// A state that serves at once (everything loaded).
    pub fn new(service: Arc<Service>) -> Self {
        let ready = Readiness::default();
        ready.set();
        AppState { service, ready }
    }

    /// A state whose API waits until [`Readiness::set`] (see `server::serve`).
    pub fn starting(service: Arc<Service>) -> Self {
        AppState { service, ready: Readiness::default() }
    }

    /// Runs a service operation on the blocking pool (durable commits and sandboxed
    /// plugin calls block).
    pub(crate) async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Service) -> ServiceResult<T> + Send + 'static,
    ) -> Result<T, ApiError> {
        let service = self.service.clone();
        // The blocking task outlives a timed-out request; the deadline stops it committing.
        let deadline = REQUEST_DEADLINE.try_with(|d| *d).ok();
        match tokio::task::spawn_blocking(move || crate::service::with_deadline(deadline, || f(&service))).await {
            Ok(r) => r.map_err(ApiError::Service),
            // Re-raised so the catch-panic layer answers it; the JoinError's text would
            // quote the panic message (which may hold request data) into the log.
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(_) => Err(ApiError::Service(ServiceError::Internal("task cancelled".into()))),
        }
    }
}

impl AppState {
    /// Runs a quick read-only service operation (one store read, no plugin call) on the
    /// calling task: handing it to the blocking pool would cost more than it does.
    pub(crate) fn read<T>(&self, f: impl FnOnce(&Service) -> ServiceResult<T>) -> Result<T, ApiError> {
        f(&self.service).map_err(ApiError::Service)
    }
}

/// Whether the API serves yet. Until it does, `/healthz` and `/readyz` answer at once and
/// API requests wait (within their time limit) instead of seeing a half-loaded catalog.
#[derive(Clone, Default)]
pub struct Readiness(Arc<tokio::sync::watch::Sender<bool>>);

impl Readiness {
    pub fn set(&self) {
        self.0.send_replace(true);
    }

    pub fn is_ready(&self) -> bool {
        *self.0.borrow()
    }

    async fn wait(&self) {
        let mut rx = self.0.subscribe();
        let _ = rx.wait_for(|ready| *ready).await;
    }
}

tokio::task_local! {
    /// When the current request times out; operations check it before committing.
    static REQUEST_DEADLINE: std::time::Instant;
}

const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Request ids: a per-process random prefix and a counter (unique, cheap, not secret).
#[derive(Clone)]
struct RequestIds {
    prefix: Arc<str>,
    next: Arc<AtomicU64>,
}

impl MakeRequestId for RequestIds {
    fn make_request_id<B>(&mut self, _: &axum::http::Request<B>) -> Option<RequestId> {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        HeaderValue::from_str(&format!("{}-{n:08x}", self.prefix)).ok().map(RequestId::new)
    }
}

/// The whole application: API routes plus health, metrics and the OpenAPI document.
pub fn router(state: AppState, server: &ServerConfig) -> Router {
    let api = Router::new()
        .merge(credentials::router())
        .merge(history::router())
        .merge(grants::router())
        .merge(reveal::router())
        .merge(proxy::router())
        .merge(types::router())
        .merge(audit::router())
        .merge(admin::router())
        .merge(tokens::router())
        .merge(webhooks::router())
        .merge(versions::router());
    let mut prefix = [0u8; 4];
    let _ = getrandom::fill(&mut prefix);
    let ids = RequestIds { prefix: crate::plugins::runtime::hex(&prefix).into(), next: Arc::new(AtomicU64::new(1)) };
    Router::new()
        .nest("/api", api)
        .merge(health::router())
        .merge(openapi::router())
        .merge(if server.console { console::router() } else { Router::new() })
        .fallback(|| async { ApiError::Service(ServiceError::NotFound) })
        // Innermost, so a handler panic becomes the JSON 500 that `finish` logs and counts
        // (without it the connection just drops and nothing is logged).
        .layer(tower_http::catch_panic::CatchPanicLayer::custom(error::panic_response))
        .layer(DefaultBodyLimit::max(server.max_body_kib * 1024))
        .layer(middleware::from_fn_with_state(
            Finish { timeout: Duration::from_secs(server.request_timeout_secs.max(1)) },
            finish,
        ))
        // Global: `Router::layer` wraps each route on its own, and a plain
        // `ConcurrencyLimitLayer` would give every route its own limit.
        .layer(GlobalConcurrencyLimitLayer::new(server.max_concurrency.max(1)))
        .layer(middleware::from_fn_with_state(
            Startup { ready: state.ready.clone(), timeout: Duration::from_secs(server.request_timeout_secs.max(1)) },
            wait_until_ready,
        ))
        // Outside the limit and `finish`: preflights never wait, and every answer (timeouts
        // included) carries the CORS headers a browser needs to read it.
        .layer(tower::util::option_layer(cors(server)))
        .layer(PropagateRequestIdLayer::new(REQUEST_ID))
        .layer(SetRequestIdLayer::new(REQUEST_ID, ids))
        .with_state(state)
}

/// CORS for the configured origins only; none configured means no CORS layer at all (the
/// API is then not callable from other origins' pages). Tokens travel in headers, never
/// cookies, so credentials mode stays off.
fn cors(server: &ServerConfig) -> Option<tower_http::cors::CorsLayer> {
    use axum::http::Method;
    if server.cors_allowed_origins.is_empty() {
        return None;
    }
    let origins: Vec<HeaderValue> =
        server.cors_allowed_origins.iter().filter_map(|o| HeaderValue::from_str(o).ok()).collect();
    Some(
        tower_http::cors::CorsLayer::new()
            .allow_origin(origins)
            .allow_methods([Method::GET, Method::POST, Method::PATCH, Method::PUT, Method::DELETE])
            .allow_headers([header::AUTHORIZATION, header::CONTENT_TYPE, REQUEST_ID])
            .expose_headers([REQUEST_ID, header::LOCATION, header::RETRY_AFTER, header::WWW_AUTHENTICATE])
            .max_age(Duration::from_secs(600)),
    )
}

#[derive(Clone)]
struct Finish {
    timeout: Duration,
}

#[derive(Clone)]
struct Startup {
    ready: Readiness,
    timeout: Duration,
}

/// During start-up API requests wait for the catalog (health and metrics do not), up to
/// the request time limit. This runs outside the concurrency limit: waiting requests hold
/// no slot, so a crowd of them cannot starve `/healthz` while plugins compile.
async fn wait_until_ready(State(s): State<Startup>, req: Request, next: Next) -> Response {
    if req.uri().path().starts_with("/api/") && !s.ready.is_ready()
        && tokio::time::timeout(s.timeout, s.ready.wait()).await.is_err()
    {
        tracing::warn!(target: "credhost::request", path = req.uri().path(), status = 503, "still starting: request timed out");
        return ApiError::Timeout.into_response();
    }
    next.run(req).await
}

/// Outermost per-request step: the request time limit, the one error shape for every
/// error (axum's own 405s and extractor rejections answer with plain text or nothing),
/// the response metrics, and one log line per request (request id, method, path — never
/// the query string or headers — status and time taken).
async fn finish(State(f): State<Finish>, req: Request, next: Next) -> Response {
    let started = std::time::Instant::now();
    let id = req.headers().get(REQUEST_ID).cloned();
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    // The route pattern, not the path: ids must not become metric series.
    let route = req.extensions().get::<axum::extract::MatchedPath>().map_or("unmatched", |m| m.as_str()).to_owned();
    let deadline = std::time::Instant::now() + f.timeout;
    let mut response = match tokio::time::timeout(f.timeout, REQUEST_DEADLINE.scope(deadline, next.run(req))).await {
        Ok(r) => json_errors(r),
        Err(_) => ApiError::Timeout.into_response(),
    };
    if path.starts_with("/api/") {
        // API answers describe credentials and may carry a token shown once: no cache keeps
        // them, and no browser guesses another content type for them.
        let h = response.headers_mut();
        h.entry(header::CACHE_CONTROL).or_insert(HeaderValue::from_static("no-store"));
        h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    }
    let took = started.elapsed();
    let status = response.status().as_u16();
    crate::metrics::http_request(method.as_str(), &route, status, took);
    let id = id.as_ref().and_then(|v| v.to_str().ok()).unwrap_or("-");
    let ms = took.as_secs_f64() * 1000.0;
    if status >= 500 {
        tracing::warn!(target: "credhost::request", id, %method, path, status, ms, "request failed");
    } else {
        tracing::info!(target: "credhost::request", id, %method, path, status, ms, "request");
    }
    response
}

/// Rewrites an error response that is not already in the API's JSON shape (its text is
/// dropped: rejections may quote the request), keeping headers such as `Allow`.
fn json_errors(response: Response) -> Response {
    let status = response.status();
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return response;
    }
    let (mut parts, _) = response.into_parts();
    let mut fresh = ApiError::Status(status).into_response();
    parts.headers.remove(header::CONTENT_LENGTH);
    parts.headers.remove(header::CONTENT_TYPE);
    for (name, value) in parts.headers.iter() {
        fresh.headers_mut().insert(name.clone(), value.clone());
    }
    fresh
}

/// How long graceful shutdown waits for requests in flight.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);
