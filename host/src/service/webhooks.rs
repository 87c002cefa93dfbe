//! Webhooks: subscriptions (per user through the API, deployment-wide from the
//! configuration) and the delivery worker that drains the event outbox.
//!
//! Format: Standard Webhooks. Headers `webhook-id` (the event id, the same on every
//! retry), `webhook-timestamp` (unix seconds of the attempt) and `webhook-signature`
//! (`v1,` + base64 HMAC-SHA256 of `id.timestamp.body`, keyed with the base64-decoded part
//! of the `whsec_` secret); body `{"type", "timestamp", "data"}`. Delivery is at least
//! once: a crash after sending and before recording the outcome sends again, with the
//! same `webhook-id`; receivers de-duplicate on it. Sends go through the one egress
//! path with the plugins' address policy and follow no redirect.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use reqwest::header::{HeaderName, HeaderValue};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use sha2::Digest as _;
use uuid::Uuid;

use super::{require_unbound, Result, Service, ServiceError};
use crate::config::{Config, WebhookDeliveryConfig};
use crate::egress;
use crate::plugins::caps::netio;
use crate::plugins::manifest::AllowedHost;
use crate::plugins::FieldError;
use crate::store::webhooks::{
    origin, pattern_matches, Attempt, Delivery, DeliveryState, DeploymentTarget, Due, Next, Subscription, PING_EVENT,
};
use crate::store::{now_ms, Event, Principal, Scope, StoreError};

/// Subscriptions one user may have.
pub const MAX_PER_USER: usize = 25;
/// Longest subscription URL, bytes.
pub const MAX_URL_LEN: usize = 2048;
/// Event types a subscription can ask for (patterns: `*`, `prefix.*`, or one of these).
pub const EVENT_TYPES: &[&str] = &[
    "credential.health_changed",
    "credential.rotation.completed",
    "credential.rotation.failed",
    "security.token_misuse",
    PING_EVENT,
];
/// Waits before each retry, in units of `[webhook_delivery] retry_base_ms` (5 s by
/// default: 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 10 h; about 27.6 h in all). After the last
/// one fails the delivery is `failed`.
pub const RETRY_SCHEDULE: [u64; 7] = [1, 60, 360, 1440, 3600, 7200, 7200];
/// Deliveries attempted per round (sent at once); bounds the worker's memory and work.
const SEND_BATCH: usize = 32;
/// Outbox events fanned out per transaction.
const FAN_OUT_BATCH: usize = 256;
/// Deliveries shown by `GET /api/webhooks/{id}/deliveries`.
pub const DELIVERIES_SHOWN: usize = 100;
/// Response bytes read from a receiver (the body is not kept).
const READ_LIMIT: usize = 1024;

/// A new subscription.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewWebhook {
    /// Where events are POSTed: `http(s)://host[:port]/path`, at most 2048 bytes; private,
    /// loopback and link-local addresses are refused unless the operator allows private networks.
    pub url: String,
    /// Event type patterns: `credential.health_changed`, `credential.*`, `*`. Absent: every event.
    #[serde(default)]
    pub events: Option<Vec<String>>,
}

/// A subscription as its owner sees it (never its secret).
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct WebhookView {
    pub id: String,
    pub url: String,
    pub events: Vec<String>,
    #[schema(format = DateTime)]
    pub created_at: String,
}

impl WebhookView {
    fn of(s: &Subscription) -> WebhookView {
        WebhookView { id: s.id.to_string(), url: s.url.clone(), events: s.events.clone(), created_at: super::rfc3339(s.created_at) }
    }
}

/// One delivery attempt.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct AttemptView {
    #[schema(format = DateTime)]
    pub at: String,
    pub duration_ms: u64,
    /// The receiver's HTTP status, when it answered.
    pub status_code: Option<u16>,
    /// Why the attempt failed when there is no status (`timeout: ...`, `unreachable: ...`,
    /// `refused: ...`), or `redirect not followed`.
    pub error: Option<String>,
}

/// One event on its way to the subscription.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct DeliveryView {
    pub id: String,
    /// The `webhook-id` header: the same on every attempt.
    pub event_id: String,
    pub event_type: String,
    pub state: DeliveryState,
    #[schema(format = DateTime)]
    pub created_at: String,
    /// When the next attempt is due (pending only).
    #[schema(format = DateTime)]
    pub next_attempt_at: Option<String>,
    pub attempts: Vec<AttemptView>,
}

impl DeliveryView {
    fn of(d: &Delivery) -> DeliveryView {
        DeliveryView {
            id: d.id.to_string(),
            event_id: d.event.id.clone(),
            event_type: d.event.kind.clone(),
            state: d.state,
            created_at: super::rfc3339(d.created_at),
            next_attempt_at: d.next_attempt_at.map(super::rfc3339),
            attempts: d
                .attempts
                .iter()
                .map(|a| AttemptView { at: super::rfc3339(a.at), duration_ms: a.ms, status_code: a.status, error: a.error.clone() })
                .collect(),
        }
    }
}

/// The event a ping emitted.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct PingView {
    /// The `webhook-id` the receiver will see.
    pub event_id: String,
}

impl Service {
    /// Subscribes the caller to their own events (scope `write`). The signing secret is
    /// returned here once and never again.
    pub fn create_webhook(&self, p: &Principal, req: NewWebhook) -> Result<(WebhookView, SecretString)> {
        require_unbound(p, Scope::Write)?;
        let mut errors = Vec::new();
        let allow_private = self.registry().runtime().allow_private_networks();
        let url = match netio::run(check_url(req.url.clone(), allow_private)) {
            Ok(Ok(u)) => Some(u),
            Ok(Err(message)) => {
                errors.push(FieldError { field: "url".into(), message });
                None
            }
            Err(e) => return Err(ServiceError::Internal(e.to_string())),
        };
        let events = match check_events(req.events) {
            Ok(e) => e,
            Err(message) => {
                errors.push(FieldError { field: "events".into(), message });
                Vec::new()
            }
        };
        let Some(url) = url.filter(|_| errors.is_empty()) else {
            return Err(ServiceError::InvalidFields(errors));
        };
        let secret = new_secret()?;
        let sub = self
            .store()
            .create_webhook(&p.user, p.namespace, url.as_str(), events, &secret, MAX_PER_USER)
            .map_err(|e| match e {
                StoreError::Invalid(m) => ServiceError::Conflict(m),
                other => other.into(),
            })?;
        tracing::info!(user = %p.user, id = %sub.id, origin = %origin(&sub.url), "webhook subscription created");
        Ok((WebhookView::of(&sub), secret))
    }

    /// The caller's subscriptions (scope `read`).
    pub fn list_webhooks(&self, p: &Principal) -> Result<Vec<WebhookView>> {
        require_unbound(p, Scope::Read)?;
        Ok(self.store().list_webhooks(p.namespace)?.iter().map(WebhookView::of).collect())
    }

    /// One of the caller's subscriptions (scope `read`).
    pub fn get_webhook(&self, p: &Principal, id: &str) -> Result<WebhookView> {
        require_unbound(p, Scope::Read)?;
        Ok(WebhookView::of(&self.store().get_webhook(p.namespace, parse(id)?)?))
    }

    /// Deletes one of the caller's subscriptions (scope `write`); its pending deliveries stop.
    pub fn delete_webhook(&self, p: &Principal, id: &str) -> Result<()> {
        require_unbound(p, Scope::Write)?;
        self.store().delete_webhook(&p.user, p.namespace, parse(id)?)?;
        Ok(())
    }

    /// The newest deliveries of one of the caller's subscriptions (scope `read`).
    pub fn webhook_deliveries(&self, p: &Principal, id: &str) -> Result<Vec<DeliveryView>> {
        require_unbound(p, Scope::Read)?;
        let list = self.store().webhook_deliveries(p.namespace, parse(id)?, DELIVERIES_SHOWN)?;
        Ok(list.iter().map(DeliveryView::of).collect())
    }

    /// Sends a `webhook.ping` event to one of the caller's subscriptions (scope `write`),
    /// through the outbox like every event.
    pub fn ping_webhook(&self, p: &Principal, id: &str) -> Result<PingView> {
        require_unbound(p, Scope::Write)?;
        let id = parse(id)?;
        ping_allowed(p.namespace)?;
        let event = self.store().ping_webhook(p.namespace, id)?;
        Ok(PingView { event_id: event.id })
    }
}

/// Reports a revoked or expired grant being presented (`security.token_misuse`), at most
/// once a minute per token: a holder retrying in a loop causes one write a minute, not one
/// per request. Written by a short-lived thread so the refusal itself waits for no disk.
pub(crate) fn token_misuse(store: &Arc<crate::store::Store>, token: &str, reason: &'static str) {
    use std::collections::HashMap;
    use std::sync::{Mutex, OnceLock};
    static LAST: OnceLock<Mutex<HashMap<[u8; 32], u64>>> = OnceLock::new();
    const EVERY_MS: u64 = 60_000;
    const TRACKED: usize = 10_000;
    let hash = crate::crypto::sha256(token.as_bytes());
    let now = now_ms();
    {
        let mut last = LAST.get_or_init(Default::default).lock().unwrap_or_else(|p| p.into_inner());
        if last.get(&hash).is_some_and(|t| now.saturating_sub(*t) < EVERY_MS) {
            return;
        }
        if last.len() >= TRACKED {
            last.retain(|_, t| now.saturating_sub(*t) < EVERY_MS);
            if last.len() >= TRACKED {
                return; // a flood of distinct refused grants: recorded once the window frees
            }
        }
        last.insert(hash, now);
    }
    let store = store.clone();
    let _ = std::thread::Builder::new().name("credhost-misuse".into()).spawn(move || {
        if let Err(e) = store.record_token_misuse(&hash, reason) {
            tracing::error!(error = %e, "could not record a security.token_misuse event");
        }
    });
}

/// Pings one user may send a minute (all their subscriptions together).
pub const PINGS_PER_MINUTE: u32 = 10;

/// Counts a ping against its user's minute: a test event is cheap to ask for, and a
/// flood of them would only fill the store and the delivery queue.
fn ping_allowed(ns: crate::store::NamespaceId) -> Result<()> {
    use std::collections::HashMap;
    use std::sync::{Mutex, OnceLock};
    static WINDOWS: OnceLock<Mutex<HashMap<crate::store::NamespaceId, (u64, u32)>>> = OnceLock::new();
    const MINUTE_MS: u64 = 60_000;
    let now = now_ms();
    let mut windows = WINDOWS.get_or_init(Default::default).lock().unwrap_or_else(|p| p.into_inner());
    if windows.len() >= 10_000 {
        windows.retain(|_, (start, _)| now.saturating_sub(*start) < MINUTE_MS);
    }
    let (start, count) = windows.entry(ns).or_insert((now, 0));
    if now.saturating_sub(*start) >= MINUTE_MS {
        (*start, *count) = (now, 0);
    }
    if *count >= PINGS_PER_MINUTE {
        let wait = (MINUTE_MS - now.saturating_sub(*start)).div_ceil(1000);
        return Err(ServiceError::Conflict(format!(
            "at most {PINGS_PER_MINUTE} pings a minute per user; try again in {wait} s"
        )));
    }
    *count += 1;
    Ok(())
}

fn parse(id: &str) -> Result<Uuid> {
    Uuid::parse_str(id).map_err(|_| ServiceError::NotFound)
}

/// A fresh signing secret: `whsec_` + base64 of 32 random bytes.
fn new_secret() -> Result<SecretString> {
    let mut key = zeroize::Zeroizing::new([0u8; 32]);
    crate::crypto::random_bytes(&mut key[..]).map_err(|e| ServiceError::Internal(e.to_string()))?;
    Ok(SecretString::from(format!("whsec_{}", B64.encode(&key[..]))))
}

/// The HMAC key of a `whsec_<base64>` secret.
fn signing_key(secret: &SecretString) -> Option<zeroize::Zeroizing<Vec<u8>>> {
    let b64 = secret.expose_secret().strip_prefix("whsec_")?;
    let key = B64.decode(b64).ok()?;
    (key.len() >= 16).then(|| zeroize::Zeroizing::new(key))
}

/// `v1,<base64 HMAC-SHA256 of "id.timestamp.body">`.
pub fn signature(key: &[u8], id: &str, timestamp: u64, body: &[u8]) -> String {
    let mac = crate::crypto::hmac256(key, &[id.as_bytes(), b".", timestamp.to_string().as_bytes(), b".", body]);
    format!("v1,{}", B64.encode(mac))
}

/// Checks a subscription URL: its form, then the addresses its host resolves to against
/// the address policy (a name resolving to a private address is refused like the literal).
async fn check_url(text: String, allow_private: bool) -> std::result::Result<url::Url, String> {
    if text.len() > MAX_URL_LEN {
        return Err(format!("at most {MAX_URL_LEN} bytes"));
    }
    let url = url::Url::parse(text.trim()).map_err(|e| format!("not a URL: {e}"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err("must be an http:// or https:// URL".into());
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err("must not contain a user name or password".into());
    }
    if url.fragment().is_some() {
        return Err("must not contain a fragment (#...)".into());
    }
    let Some(host) = url.host_str() else { return Err("must name a host".into()) };
    let port = url.port_or_known_default().unwrap_or(443);
    match netio::resolve_checked(host, port, allow_private).await {
        Ok(_) => Ok(url),
        Err(netio::ResolveError::Refused(m)) => Err(format!("refused by the address policy: {m}")),
        Err(netio::ResolveError::Unreachable(m)) => Err(format!("the host does not resolve: {m}")),
    }
}

/// Event patterns: absent means every event; each pattern must match a known type.
fn check_events(events: Option<Vec<String>>) -> std::result::Result<Vec<String>, String> {
    let Some(events) = events else { return Ok(vec!["*".into()]) };
    if events.is_empty() {
        return Err("list at least one event type, or leave `events` out for every event".into());
    }
    if events.len() > EVENT_TYPES.len() * 2 {
        return Err(format!("at most {} patterns", EVENT_TYPES.len() * 2));
    }
    let mut out: Vec<String> = Vec::new();
    for e in events {
        let e = e.trim().to_string();
        if !EVENT_TYPES.iter().any(|t| pattern_matches(&e, t)) {
            return Err(format!("{e:?} matches no event type (known: {}; patterns: `*`, `prefix.*`)", EVENT_TYPES.join(", ")));
        }
        if !out.contains(&e) {
            out.push(e);
        }
    }
    Ok(out)
}

/// A deployment-wide subscription from `[[webhooks]]`.
pub struct ConfigTarget {
    pub id: Uuid,
    pub name: String,
    pub url: String,
    pub events: Vec<String>,
    secret: SecretString,
}

/// The `[[webhooks]]` entries, checked and with their secrets read.
#[derive(Default)]
pub struct Deployment {
    pub targets: Vec<ConfigTarget>,
}

impl Deployment {
    /// Checks every entry (errors name `[[webhooks]]`, the entry and the key) and reads
    /// the secrets from their `env:`/`file:` sources.
    pub async fn from_config(config: &Config) -> std::result::Result<Deployment, String> {
        config.webhook_delivery.check()?;
        let allow_private = config.plugins.allow_private_networks;
        let mut targets: Vec<ConfigTarget> = Vec::new();
        for (i, entry) in config.webhooks.iter().enumerate() {
            let at = format!("[[webhooks]] #{} ({:?})", i + 1, entry.name);
            let name_ok = !entry.name.is_empty()
                && entry.name.len() <= 64
                && entry.name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
            if !name_ok {
                return Err(format!("{at} name: must be 1-64 characters of A-Z a-z 0-9 - _ ."));
            }
            if targets.iter().any(|t| t.name == entry.name) {
                return Err(format!("{at} name: {:?} is used by another entry", entry.name));
            }
            if matches!(entry.secret, crate::config::FieldSource::Literal(_)) {
                return Err(format!("{at} secret: must come from `env:VAR` or `file:/path`, not a literal"));
            }
            let secret = crate::provision::resolve(&entry.secret).map_err(|e| format!("{at} secret: {e}"))?;
            if signing_key(&secret).is_none() {
                return Err(format!("{at} secret: must be `whsec_` followed by the base64 of at least 16 bytes"));
            }
            let url = match check_url(entry.url.clone(), allow_private).await {
                Ok(u) => u.to_string(),
                // A name that does not resolve now may later; delivery retries.
                Err(m) if m.starts_with("the host does not resolve") => {
                    tracing::warn!(webhook = %entry.name, "{at} url: {m}");
                    entry.url.trim().to_string()
                }
                Err(m) => return Err(format!("{at} url: {m}")),
            };
            let events = check_events(entry.events.clone()).map_err(|m| format!("{at} events: {m}"))?;
            let digest = sha2::Sha256::digest(format!("credhost config webhook\n{}", entry.name).as_bytes());
            let mut id = [0u8; 16];
            id.copy_from_slice(&digest[..16]);
            targets.push(ConfigTarget { id: Uuid::from_bytes(id), name: entry.name.clone(), url, events, secret });
        }
        Ok(Deployment { targets })
    }

    fn fan_out_targets(&self) -> Vec<DeploymentTarget> {
        self.targets.iter().map(|t| DeploymentTarget { id: t.id, events: t.events.clone() }).collect()
    }
}

/// Starts the delivery worker on the current runtime. It runs until aborted (the returned
/// handle) or the process ends; whatever it was sending when stopped is sent again after
/// a restart.
pub fn start(service: Arc<Service>, deployment: Deployment, settings: WebhookDeliveryConfig) -> tokio::task::AbortHandle {
    let deployment = Arc::new(deployment);
    let worker = tokio::spawn(async move {
        let poll = Duration::from_millis(settings.poll_interval_ms);
        loop {
            let busy = match round(&service, &deployment, &settings).await {
                Ok(busy) => busy,
                Err(e) => {
                    tracing::error!(error = %e, "webhook delivery round failed; trying again");
                    false
                }
            };
            if !busy {
                tokio::time::sleep(poll).await;
            }
        }
    });
    worker.abort_handle()
}

/// How long a replica keeps the delivery lease at least, without renewing it.
const DELIVERY_LEASE_MS: u64 = 30_000;

async fn blocking<T: Send + 'static>(
    service: &Arc<Service>,
    f: impl FnOnce(&Service) -> crate::store::Result<T> + Send + 'static,
) -> std::result::Result<T, String> {
    let svc = service.clone();
    match tokio::task::spawn_blocking(move || f(&svc)).await {
        Ok(r) => r.map_err(|e| e.to_string()),
        Err(_) => Err("a store task failed".into()),
    }
}

/// One round: fan out a batch of outbox events, attempt a batch of due deliveries at
/// once, record the outcomes in one transaction. True when a batch was full (go on now).
async fn round(service: &Arc<Service>, deployment: &Arc<Deployment>, settings: &WebhookDeliveryConfig) -> std::result::Result<bool, String> {
    // Replicas on one database: one sends at a time, so no delivery goes out twice.
    // Outlives a round (sends time out at `timeout_secs`), renewed by each.
    let lease = DELIVERY_LEASE_MS.max(settings.timeout_secs.saturating_mul(3000));
    if !blocking(service, move |s| s.store().hold_lease("webhooks", lease)).await? {
        return Ok(false);
    }
    let targets = deployment.fan_out_targets();
    let taken = blocking(service, move |s| s.store().fan_out(&targets, FAN_OUT_BATCH)).await?;
    let (due, broken) = blocking(service, |s| s.store().due_deliveries(now_ms(), SEND_BATCH)).await?;
    let attempted = due.len() + broken.len();
    let allow_private = service.registry().runtime().allow_private_networks();
    let timeout = Duration::from_secs(settings.timeout_secs);
    let mut sends = tokio::task::JoinSet::new();
    let mut outcomes = Vec::new();
    for Due { delivery, target } in due {
        let target = match (delivery.owner, target) {
            (Some(_), Some((sub, secret))) => Some((sub.url, secret)),
            (None, _) => deployment.targets.iter().find(|t| t.id == delivery.subscription).map(|t| (t.url.clone(), t.secret.clone())),
            (Some(_), None) => None,
        };
        let Some((url, secret)) = target else {
            // Its subscription is gone (deleted meanwhile, or no longer configured).
            let nothing = Attempt { at: now_ms(), ms: 0, status: None, error: Some("subscription removed".into()) };
            outcomes.push((delivery.subscription, delivery.id, nothing, Next::Dropped));
            continue;
        };
        let base = settings.retry_base_ms;
        sends.spawn(async move {
            let attempt = send(&delivery.event, &url, &secret, timeout, allow_private).await;
            let next = if attempt.status.is_some_and(|s| (200..300).contains(&s)) {
                Next::Delivered
            } else {
                match RETRY_SCHEDULE.get(delivery.attempts.len()) {
                    Some(units) => Next::RetryAt(now_ms() + units * base),
                    None => Next::Failed,
                }
            };
            let shown = origin(&url);
            match &next {
                Next::Delivered => tracing::debug!(event = %delivery.event.id, origin = %shown, "webhook delivered"),
                Next::RetryAt(at) => tracing::info!(
                    event = %delivery.event.id, origin = %shown, status = ?attempt.status, error = ?attempt.error,
                    retry_in_ms = at.saturating_sub(now_ms()), "webhook delivery failed; will retry"
                ),
                _ => tracing::warn!(
                    event = %delivery.event.id, origin = %shown, status = ?attempt.status, error = ?attempt.error,
                    attempts = delivery.attempts.len() + 1, "webhook delivery failed for good"
                ),
            }
            (delivery.subscription, delivery.id, attempt, next)
        });
    }
    while let Some(r) = sends.join_next().await {
        match r {
            Ok(o) => outcomes.push(o),
            // Not recorded: the delivery stays due and is attempted again.
            Err(_) => tracing::error!("a webhook send task failed"),
        }
    }
    let results: Vec<&'static str> = outcomes
        .iter()
        .filter_map(|(_, _, _, n)| match n {
            Next::Delivered => Some("delivered"),
            Next::RetryAt(_) => Some("retry"),
            Next::Failed => Some("failed"),
            Next::Dropped => None,
        })
        .collect();
    blocking(service, move |s| s.store().record_deliveries(outcomes, broken)).await?;
    for r in results {
        crate::metrics::webhook_delivery(r);
    }
    let (outbox, queued) = blocking(service, |s| s.store().webhook_backlog()).await?;
    crate::metrics::webhook_backlog(outbox, queued);
    Ok(taken == FAN_OUT_BATCH || attempted == SEND_BATCH)
}

/// One attempt: the signed POST through the egress path, no redirects followed.
async fn send(event: &Event, url: &str, secret: &SecretString, timeout: Duration, allow_private: bool) -> Attempt {
    let started = Instant::now();
    let at = now_ms();
    let fail = |error: String| Attempt { at, ms: started.elapsed().as_millis() as u64, status: None, error: Some(clip(error)) };
    let Some(key) = signing_key(secret) else { return fail("refused: the signing secret is malformed".into()) };
    let Ok(parsed) = url::Url::parse(url) else { return fail("refused: the URL does not parse".into()) };
    let allowed = match AllowedHost::parse(&parsed.origin().ascii_serialization()) {
        Ok(a) => a,
        Err(_) => return fail("refused: the URL has no usable origin".into()),
    };
    let body = serde_json::to_vec(&serde_json::json!({
        "type": event.kind,
        "timestamp": super::rfc3339(event.at),
        "data": event.data,
    }))
    .unwrap_or_default();
    let timestamp = at / 1000;
    let header = |v: &str| HeaderValue::from_str(v).unwrap_or(HeaderValue::from_static(""));
    let headers = vec![
        (reqwest::header::CONTENT_TYPE, HeaderValue::from_static("application/json")),
        (HeaderName::from_static("webhook-id"), header(&event.id)),
        (HeaderName::from_static("webhook-timestamp"), header(&timestamp.to_string())),
        (HeaderName::from_static("webhook-signature"), header(&signature(&key, &event.id, timestamp, &body))),
    ];
    let request = egress::Request { method: reqwest::Method::POST, url: parsed, headers, body: Some(body) };
    let policy = egress::Policy { allowed: vec![allowed], fields: BTreeMap::new(), allow_private, timeout, read_limit: READ_LIMIT };
    match egress::send_without_redirects(request, policy).await {
        Ok(raw) => Attempt {
            at,
            ms: started.elapsed().as_millis() as u64,
            status: Some(raw.status),
            error: (300..400).contains(&raw.status).then(|| "redirect not followed".to_string()),
        },
        Err(egress::Fail::Refused(_, m)) => fail(format!("refused: {m}")),
        Err(egress::Fail::Unreachable(m)) if m.starts_with("timed out") => fail(format!("timeout: {m}")),
        Err(egress::Fail::Unreachable(m)) => fail(format!("unreachable: {m}")),
        Err(egress::Fail::Internal(m)) => fail(format!("internal: {m}")),
    }
}

fn clip(mut s: String) -> String {
    if s.len() > 300 {
        let mut end = 300;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The Standard Webhooks specification's published example (id, timestamp, body,
    /// secret) and the signature it gives.
    #[test]
    fn signature_matches_the_specification_example() {
        let secret = SecretString::from("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw".to_string());
        let key = signing_key(&secret).unwrap();
        let body = br#"{"test": 2432232314}"#;
        let sig = signature(&key, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body);
        assert_eq!(sig, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
    }

    #[test]
    fn event_patterns_are_checked() {
        assert_eq!(check_events(None).unwrap(), vec!["*"]);
        assert!(check_events(Some(vec![])).is_err());
        assert!(check_events(Some(vec!["credential.*".into()])).is_ok());
        assert!(check_events(Some(vec!["nope.*".into()])).unwrap_err().contains("nope"));
    }
}
