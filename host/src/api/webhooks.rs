//! `/api/webhooks`: the caller's webhook subscriptions, their delivery logs, and pings.
//! Managing needs the `write` scope, reading `read`; grants can do neither.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Serialize;

use super::auth::Auth;
use super::extract::ApiJson;
use super::{ApiError, AppState};
use crate::service::webhooks::{DeliveryView, NewWebhook, PingView, WebhookView};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/webhooks", post(create).get(list))
        .route("/webhooks/{id}", get(show).delete(remove))
        .route("/webhooks/{id}/deliveries", get(deliveries))
        .route("/webhooks/{id}/ping", post(ping))
}

/// A new subscription with its signing secret, shown here once.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct WebhookCreated {
    #[serde(flatten)]
    pub webhook: WebhookView,
    /// `whsec_<base64>`: verify each delivery's `webhook-signature` with it. Not shown again.
    #[schema(value_type = String)]
    pub secret: super::reply::ShownOnce,
}

/// Subscribe to your own events (scope `write`); at most 25 subscriptions per user.
#[utoipa::path(post, path = "/api/webhooks", tag = "webhooks", operation_id = "create_webhook",
    request_body = NewWebhook, security(("bearer" = [])),
    responses((status = 201, body = WebhookCreated, description = "subscribed; `secret` is shown only here"),
              (status = 409, body = super::error::ErrorBody, description = "the caller has the most subscriptions allowed"),
              (status = 422, body = super::error::ErrorBody, description = "a bad `url` (form or address policy) or `events`; `fields` names it")))]
async fn create(
    State(s): State<AppState>,
    Auth(p): Auth,
    ApiJson(req): ApiJson<NewWebhook>,
) -> Result<super::reply::Created<WebhookCreated>, ApiError> {
    let (webhook, secret) = s.run(move |svc| svc.create_webhook(&p, req)).await?;
    let location = format!("/api/webhooks/{}", webhook.id);
    Ok(super::reply::Created(location, WebhookCreated { webhook, secret: (&secret).into() }))
}

/// Your subscriptions (scope `read`), never their secrets.
#[utoipa::path(get, path = "/api/webhooks", tag = "webhooks", operation_id = "list_webhooks",
    security(("bearer" = [])), responses((status = 200, body = Vec<WebhookView>)))]
async fn list(State(s): State<AppState>, Auth(p): Auth) -> Result<Json<Vec<WebhookView>>, ApiError> {
    Ok(Json(s.read(|svc| svc.list_webhooks(&p))?))
}

/// One of your subscriptions (scope `read`).
#[utoipa::path(get, path = "/api/webhooks/{id}", tag = "webhooks", operation_id = "get_webhook",
    params(("id" = String, Path, description = "subscription id")),
    security(("bearer" = [])), responses((status = 200, body = WebhookView)))]
async fn show(State(s): State<AppState>, Auth(p): Auth, Path(id): Path<String>) -> Result<Json<WebhookView>, ApiError> {
    Ok(Json(s.read(|svc| svc.get_webhook(&p, &id))?))
}

/// Unsubscribe (scope `write`): pending deliveries stop, the delivery log goes too.
#[utoipa::path(delete, path = "/api/webhooks/{id}", tag = "webhooks", operation_id = "delete_webhook",
    params(("id" = String, Path, description = "subscription id")),
    security(("bearer" = [])), responses((status = 204, description = "deleted")))]
async fn remove(State(s): State<AppState>, Auth(p): Auth, Path(id): Path<String>) -> Result<StatusCode, ApiError> {
    s.run(move |svc| svc.delete_webhook(&p, &id)).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The subscription's newest 100 deliveries, newest first: each attempt's time, HTTP
/// status or error class, and when the next attempt is due (scope `read`).
#[utoipa::path(get, path = "/api/webhooks/{id}/deliveries", tag = "webhooks", operation_id = "list_webhook_deliveries",
    params(("id" = String, Path, description = "subscription id")),
    security(("bearer" = [])), responses((status = 200, body = Vec<DeliveryView>)))]
async fn deliveries(State(s): State<AppState>, Auth(p): Auth, Path(id): Path<String>) -> Result<Json<Vec<DeliveryView>>, ApiError> {
    Ok(Json(s.read(|svc| svc.webhook_deliveries(&p, &id))?))
}

/// Send a `webhook.ping` event to this subscription only (scope `write`); it is
/// delivered like any event, within a poll interval. At most 10 pings a minute per user.
#[utoipa::path(post, path = "/api/webhooks/{id}/ping", tag = "webhooks", operation_id = "ping_webhook",
    params(("id" = String, Path, description = "subscription id")),
    security(("bearer" = [])), responses((status = 202, body = PingView, description = "the event is queued"),
              (status = 409, body = super::error::ErrorBody, description = "the caller sent 10 pings in the last minute; the message says when to try again")))]
async fn ping(State(s): State<AppState>, Auth(p): Auth, Path(id): Path<String>) -> Result<(StatusCode, Json<PingView>), ApiError> {
    let v = s.run(move |svc| svc.ping_webhook(&p, &id)).await?;
    Ok((StatusCode::ACCEPTED, Json(v)))
}
