//! Process metrics, exposed at `/metrics` in the OpenMetrics text format by the
//! `prometheus-client` crate. One process-wide set: the recording points (the API's
//! `finish` layer, the sandbox, the test operation, the audit writer) live in layers that
//! share nothing else. Labels are bounded: routes are the matched route patterns, types
//! are loaded type ids, statuses are numbers or fixed words. Names are documented in
//! docs/config.md and kept stable.

use std::sync::LazyLock;
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

type Labels<const N: usize> = [(&'static str, String); N];
type Histograms<const N: usize> = Family<Labels<N>, Histogram, fn() -> Histogram>;

/// 1 ms .. ~33 s: API requests and plugin calls both fall in this range.
fn seconds() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 16))
}

struct Metrics {
    registry: Registry,
    http: Histograms<3>,
    plugin_calls: Histograms<2>,
    tests: Family<Labels<2>, Counter>,
    pool_in_use: Gauge,
    pool_busy: Counter,
    audit_records: Counter,
    types: Gauge,
    ready: Gauge,
    webhook_deliveries: Family<Labels<1>, Counter>,
    webhook_outbox: Gauge,
    webhook_pending: Gauge,
    rotations: Family<Labels<1>, Counter>,
    rotations_pending: Gauge,
    credentials: Family<Labels<2>, Gauge>,
    scheduled: Family<Labels<1>, Counter>,
    deferred: Family<Labels<1>, Counter>,
}

static METRICS: LazyLock<Metrics> = LazyLock::new(|| {
    let mut registry = Registry::default();
    let http: Histograms<3> = Family::new_with_constructor(seconds);
    registry.register(
        "credhost_http_request_duration_seconds",
        "HTTP requests by method, route pattern and status: time from the first byte handled to the response",
        http.clone(),
    );
    let plugin_calls: Histograms<2> = Family::new_with_constructor(seconds);
    registry.register(
        "credhost_plugin_call_duration_seconds",
        "Sandboxed plugin calls by type and phase (describe, validate, test, authenticate)",
        plugin_calls.clone(),
    );
    let tests = Family::<Labels<2>, Counter>::default();
    registry.register("credhost_credential_tests", "Credential tests by type and status (valid, invalid, indeterminate, error)", tests.clone());
    let pool_in_use = Gauge::default();
    registry.register("credhost_sandbox_instances_in_use", "Plugin calls running in the sandbox pool now", pool_in_use.clone());
    let capacity: Gauge = Gauge::default();
    capacity.set(i64::from(crate::plugins::runtime::POOL_INSTANCES));
    registry.register("credhost_sandbox_instances_capacity", "Plugin calls the sandbox pool can run at once", capacity);
    let pool_busy = Counter::default();
    registry.register("credhost_sandbox_busy", "Plugin calls refused because the sandbox pool was full (503 unavailable)", pool_busy.clone());
    let audit_records = Counter::default();
    registry.register("credhost_audit_records_written", "Audit records appended to the log", audit_records.clone());
    let types = Gauge::default();
    registry.register("credhost_credential_types", "Loaded credential types", types.clone());
    let ready = Gauge::default();
    registry.register("credhost_ready", "1 once the plugins are loaded and the API serves, 0 while starting", ready.clone());
    let rotations = Family::<Labels<1>, Counter>::default();
    registry.register("credhost_rotations", "Finished secret rotations by result (promoted, forced, failed)", rotations.clone());
    let rotations_pending = Gauge::default();
    registry.register("credhost_rotations_pending", "Credentials with a pending (untested or failed) version", rotations_pending.clone());
    let webhook_deliveries = Family::<Labels<1>, Counter>::default();
    registry.register(
        "credhost_webhook_deliveries",
        "Webhook delivery attempts by result (delivered, retry, failed)",
        webhook_deliveries.clone(),
    );
    let webhook_outbox = Gauge::default();
    registry.register("credhost_webhook_outbox_depth", "Events in the outbox not yet fanned out to subscriptions", webhook_outbox.clone());
    let webhook_pending = Gauge::default();
    registry.register("credhost_webhook_deliveries_pending", "Webhook deliveries waiting for an attempt (first or retry)", webhook_pending.clone());
    let credentials = Family::<Labels<2>, Gauge>::default();
    registry.register("credhost_credentials", "Live credentials by type and health, as of the monitor's last sweep", credentials.clone());
    let scheduled = Family::<Labels<1>, Counter>::default();
    registry.register("credhost_scheduled_tests", "Scheduled credential tests by outcome (valid, invalid, indeterminate, error)", scheduled.clone());
    let deferred = Family::<Labels<1>, Counter>::default();
    registry.register("credhost_scheduled_test_deferrals", "Scheduled tests put off, by reason (rate_budget: the destination's tests-per-minute)", deferred.clone());
    Metrics { credentials, scheduled, deferred, registry, http, plugin_calls, tests, pool_in_use, pool_busy, audit_records, types, ready, rotations, rotations_pending, webhook_deliveries, webhook_outbox, webhook_pending }
});

/// A rotation ended (`promoted`, `forced` or `failed`).
pub fn rotation_result(result: &'static str) {
    METRICS.rotations.get_or_create(&[("result", result.to_string())]).inc();
}

/// How many live credentials have a pending version: counted by each monitor sweep.
pub fn rotations_pending(n: i64) {
    METRICS.rotations_pending.set(n);
}

/// One answered HTTP request. `route` is the matched route pattern (never the raw path:
/// ids would make every credential its own series).
pub fn http_request(method: &str, route: &str, status: u16, took: Duration) {
    let method = match method {
        "GET" | "POST" | "PUT" | "PATCH" | "DELETE" | "HEAD" | "OPTIONS" => method,
        _ => "other",
    };
    METRICS
        .http
        .get_or_create(&[("method", method.to_string()), ("route", route.to_string()), ("status", status.to_string())])
        .observe(took.as_secs_f64());
}

/// One finished sandboxed call of a loaded type.
pub fn plugin_call(type_id: &str, phase: &'static str, took: Duration) {
    METRICS
        .plugin_calls
        .get_or_create(&[("type", type_id.to_string()), ("phase", phase.to_string())])
        .observe(took.as_secs_f64());
}

/// Counts a call as running in the sandbox pool until the guard is dropped.
pub fn pool_enter() -> PoolSlot {
    METRICS.pool_in_use.inc();
    PoolSlot(())
}

pub struct PoolSlot(());

impl Drop for PoolSlot {
    fn drop(&mut self) {
        METRICS.pool_in_use.dec();
    }
}

/// A call refused because the pool was full.
pub fn pool_busy() {
    METRICS.pool_busy.inc();
}

/// The outcome of one credential test (`status`: the report's status, or `error`).
pub fn test_outcome(type_id: &str, status: &str) {
    METRICS.tests.get_or_create(&[("type", type_id.to_string()), ("status", status.to_string())]).inc();
}

/// One webhook delivery attempt's result: `delivered`, `retry` or `failed`.
pub fn webhook_delivery(result: &'static str) {
    METRICS.webhook_deliveries.get_or_create(&[("result", result.to_string())]).inc();
}

/// The outbox depth and the deliveries waiting, as the delivery worker last saw them.
pub fn webhook_backlog(outbox: u64, pending: u64) {
    METRICS.webhook_outbox.set(outbox as i64);
    METRICS.webhook_pending.set(pending as i64);
}

/// Replaces the credentials-by-type-and-health gauge: (type, health, count).
pub fn credentials_by_health(counts: &[(String, &'static str, i64)]) {
    METRICS.credentials.clear();
    for (kind, health, n) in counts {
        METRICS.credentials.get_or_create(&[("type", kind.clone()), ("health", health.to_string())]).set(*n);
    }
}

/// One scheduled test's outcome: its status, or `error`.
pub fn scheduled_test(outcome: &str) {
    METRICS.scheduled.get_or_create(&[("outcome", outcome.to_string())]).inc();
}

/// A scheduled test put off (`rate_budget`).
pub fn scheduled_test_deferred(reason: &'static str) {
    METRICS.deferred.get_or_create(&[("reason", reason.to_string())]).inc();
}

/// `n` audit records appended.
pub fn audit_written(n: usize) {
    METRICS.audit_records.inc_by(n as u64);
}

/// The exposition, with the gauges that are read rather than counted set first.
pub fn render(types: usize, ready: bool) -> String {
    METRICS.types.set(types as i64);
    METRICS.ready.set(i64::from(ready));
    let mut out = String::new();
    // Writing into a String cannot fail.
    let _ = prometheus_client::encoding::text::encode(&mut out, &METRICS.registry);
    out
}

/// The exposition's content type (Prometheus negotiates OpenMetrics).
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
