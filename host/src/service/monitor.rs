//! Monitoring: the scheduler that re-tests credentials whose type declares a read-only
//! test, and the policy that says when. Scheduled tests go through the same operation as
//! manual ones ([`Service::test_as`]), with trigger `scheduled` and actor `scheduler`.
//!
//! One thread picks due tests from the store's due index (so a restart resumes where it
//! stopped) and hands them to `max_concurrent` workers, holding back any beyond the
//! per-destination rate budget (deferred to when the budget frees, never dropped). A
//! sweep over every credential schedules those that have no due time (new ones, declared
//! ones, a changed config), unschedules ones that may no longer be tested, notices health
//! moved by time alone (an expiry near or past) and refreshes the credentials-by-health
//! gauge. It reads [`SWEEP_STEP`] credentials per tick and starts again [`SWEEP_EVERY`]
//! after it ends, so its cost per second is bounded at any number of credentials (at
//! 100,000 a sweep takes about 20 s); the one at start runs before any test, its steps
//! [`FIRST_SWEEP_PAUSE`] apart.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::{destination_names, Result, Service, ServiceError};
use crate::config::MonitorConfig;
use crate::plugins::{FieldError, Plugin};
use crate::store::{now_ms, Credential, CredentialId, Health, MonitorState, Principal, Role, Scope, TestTrigger};

/// The pause between one sweep's end and the next one's start (see the module docs).
pub const SWEEP_EVERY: Duration = Duration::from_secs(5);
/// Credentials one sweep step reads; a step runs every [`TICK`], so a sweep reads at most
/// 5,000 credentials a second and costs the same small share of a core at any scale
/// (reading all 100,000 every 5 s kept the monitor thread of an idle server at 7.7-9.8 %
/// of a core, and held them all at once: ~60 MiB of peak memory).
pub const SWEEP_STEP: usize = 1_000;
/// How often the scheduler looks for due tests.
const TICK: Duration = Duration::from_millis(200);
/// The pause between the first sweep's steps: it runs at start, when the requests of a
/// restart's clients come back, and whole it took ~150 ms of a core at 100,000
/// credentials in one go (listings right after a restart ran ~1 ms slower at p99). A step
/// takes ~1.5 ms, so this keeps the sweep under ~10 % of a core (~2 s at 100,000).
const FIRST_SWEEP_PAUSE: Duration = Duration::from_millis(20);
/// The audit actor of scheduled tests.
pub const SCHEDULER_ACTOR: &str = "scheduler";
/// The longest per-credential interval accepted (a year).
pub const MAX_INTERVAL_SECS: u64 = 366 * 24 * 3600;

/// The warning window before a reported expiry, read by every credential view (views
/// are built from a stored credential alone, everywhere): the server sets it from
/// `[monitor] expiry_warning_secs`; other processes use the default.
static EXPIRY_WARNING_MS: AtomicU64 = AtomicU64::new(14 * 24 * 3600 * 1000);

pub fn expiry_warning_ms() -> u64 {
    EXPIRY_WARNING_MS.load(Ordering::Relaxed)
}

/// When credentials are tested: `[monitor]`, checked.
#[derive(Debug, Clone)]
pub struct Policy {
    pub enabled: bool,
    pub interval_secs: u64,
    pub jitter_pct: u64,
    pub max_concurrent: usize,
    pub rate_per_minute: u32,
    pub backoff_max_secs: u64,
    pub history: usize,
    pub expiry_warning_ms: u64,
    /// Per-type intervals; 0: never scheduled.
    pub types: BTreeMap<String, u64>,
}

impl From<&MonitorConfig> for Policy {
    fn from(c: &MonitorConfig) -> Self {
        Policy {
            enabled: c.enabled,
            interval_secs: c.interval_secs,
            jitter_pct: c.jitter_pct,
            max_concurrent: c.max_concurrent,
            rate_per_minute: c.rate_per_minute,
            backoff_max_secs: c.backoff_max_secs,
            history: c.history,
            expiry_warning_ms: c.expiry_warning_secs.saturating_mul(1000),
            types: c.types.iter().filter_map(|(k, t)| Some((k.clone(), t.interval_secs?))).collect(),
        }
    }
}

impl Policy {
    /// The interval a credential is tested at, or `None` when it is never scheduled: its
    /// type's test is not read-only, monitoring is off (deployment, type or credential),
    /// or it is soft-deleted. The operator's "off" for a type wins over an owner's interval.
    pub fn interval_for(&self, plugin: &Plugin, c: &Credential) -> Option<u64> {
        if c.deleted_at.is_some() {
            return None;
        }
        self.interval_of(plugin, &c.kind, &c.monitor)
    }

    /// [`Policy::interval_for`] a live credential of type `kind` with monitoring `state`.
    fn interval_of(&self, plugin: &Plugin, kind: &str, state: &MonitorState) -> Option<u64> {
        if !self.enabled || !plugin.manifest.test_read_only || !state.enabled {
            return None;
        }
        let by_type = self.types.get(kind).copied();
        if by_type == Some(0) {
            return None;
        }
        Some(state.interval_secs.or(by_type).unwrap_or(self.interval_secs).max(1))
    }

    /// The next due time after a test at `now`: the interval, doubled per consecutive
    /// `indeterminate` (capped at `backoff_max_secs`, never below the interval), moved by
    /// the jitter.
    pub fn next_due(&self, now: u64, interval_secs: u64, failures: u32) -> u64 {
        let ms = self.delay_ms(interval_secs, failures);
        let spread = ms * self.jitter_pct / 100;
        let offset = if spread == 0 { 0 } else { random_below(2 * spread + 1) };
        (now + ms + offset).saturating_sub(spread).max(now + 1)
    }

    /// The delay before jitter: the interval doubled per failure, capped.
    fn delay_ms(&self, interval_secs: u64, failures: u32) -> u64 {
        let cap = self.backoff_max_secs.max(interval_secs);
        interval_secs.saturating_mul(1u64 << failures.min(32)).min(cap).saturating_mul(1000)
    }

    /// The latest due time a credential can have at `now`: [`Policy::next_due`]'s, or a
    /// deferral's (at most a minute: the rate budget's window). A later one comes from an
    /// older, longer setting (a shortened interval) and is brought in.
    pub fn latest_due(&self, now: u64, interval_secs: u64, failures: u32) -> u64 {
        let ms = self.delay_ms(interval_secs, failures);
        (now + ms + ms * self.jitter_pct / 100 + 1000).max(now + 61_000)
    }
}

/// Uniform in `0..n` (n > 0), from the OS generator.
fn random_below(n: u64) -> u64 {
    let mut b = [0u8; 8];
    if crate::crypto::random_bytes(&mut b).is_err() {
        return n / 2;
    }
    u64::from_le_bytes(b) % n.max(1)
}

/// The owner's monitoring setting, in requests and views.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MonitorSetting {
    /// `false`: never tested on a schedule (manual tests still work).
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Seconds between scheduled tests of this credential (1 to a year); absent: the
    /// type's or the deployment's interval.
    #[serde(default)]
    #[schema(minimum = 1, maximum = 31_622_400)]
    pub interval_secs: Option<u64>,
}

fn yes() -> bool {
    true
}

impl MonitorSetting {
    pub(crate) fn check(&self) -> Result<()> {
        if let Some(v) = self.interval_secs {
            if v == 0 || v > MAX_INTERVAL_SECS {
                return Err(ServiceError::InvalidFields(vec![FieldError {
                    field: "monitor.interval_secs".into(),
                    message: format!(
                        "must be between 1 and {MAX_INTERVAL_SECS} seconds (to turn scheduled tests off, send \"enabled\": false)"
                    ),
                }]));
            }
        }
        Ok(())
    }
}

/// The principal scheduled tests run as: the owner's namespace, test and read only.
fn scheduler_principal(c: &Credential) -> Principal {
    Principal {
        user: SCHEDULER_ACTOR.into(),
        role: Role::User,
        namespace: c.namespace,
        token_id: SCHEDULER_ACTOR.into(),
        scopes: [Scope::Read, Scope::Test].into_iter().collect(),
        grant: None,
    }
}

/// The host a credential's tests go to, for the rate budget: the host of its first
/// destination field (a URL's host, or the value itself, e.g. an SSH host), else its
/// type and environment, else its type.
pub fn destination_of(plugin: &Plugin, c: &Credential) -> String {
    let mut env = None;
    for name in destination_names(plugin) {
        if name == "environment" {
            env = c.environment.clone();
            continue;
        }
        let Some(v) = c.fields.get(&name).map(|v| v.trim()).filter(|v| !v.is_empty()) else { continue };
        let host = match url::Url::parse(v) {
            Ok(u) => u.host_str().map(str::to_string),
            Err(_) => Some(v.to_string()),
        };
        if let Some(h) = host {
            return h.to_ascii_lowercase();
        }
    }
    match env {
        Some(e) => format!("{}:{e}", c.kind),
        None => c.kind.clone(),
    }
}

/// Tests per minute per destination, over a sliding minute.
struct Budget {
    per_minute: usize,
    sent: HashMap<String, VecDeque<u64>>,
}

impl Budget {
    /// Takes a slot for `dest` at `now`, or says when the next one frees.
    fn take(&mut self, dest: &str, now: u64) -> std::result::Result<(), u64> {
        let q = self.sent.entry(dest.to_string()).or_default();
        while q.front().is_some_and(|t| *t + 60_000 <= now) {
            q.pop_front();
        }
        if q.len() >= self.per_minute {
            return Err(q.front().map_or(now + 1000, |t| t + 60_000));
        }
        q.push_back(now);
        Ok(())
    }

    fn prune(&mut self, now: u64) {
        self.sent.retain(|_, q| q.back().is_some_and(|t| t + 60_000 > now));
    }
}

impl Service {
    /// Sets the monitoring policy: scheduling on create/update/test follows it from now on.
    pub fn install_monitor(&self, policy: Policy) {
        EXPIRY_WARNING_MS.store(policy.expiry_warning_ms, Ordering::Relaxed);
        let _ = self.monitor.set(Arc::new(policy));
    }

    /// The policy, once the server installed one (a CLI process has none).
    pub(crate) fn monitor_policy(&self) -> Option<&Arc<Policy>> {
        self.monitor.get()
    }

    /// The due time a credential should have now, or `None`; `keep` returns its current
    /// one when it is still reasonable (within one interval plus the jitter).
    pub(crate) fn due_for(&self, c: &Credential, keep: bool) -> Option<Option<u64>> {
        let policy = self.monitor_policy()?;
        let plugin = self.registry.get(&c.kind).ok()?;
        let Some(iv) = policy.interval_for(&plugin, c) else { return Some(None) };
        let now = now_ms();
        let max = policy.latest_due(now, iv, c.monitor.failures);
        match c.monitor.next_test_at {
            Some(at) if keep && at <= max => Some(Some(at)),
            _ => Some(Some(policy.next_due(now, iv, 0))),
        }
    }

    /// The first due time of a new credential of type `kind` (`plugin`) with the default
    /// monitoring state (`None`: not scheduled), so the create writes it in its own
    /// transaction instead of a second write right after.
    pub(crate) fn first_due(&self, plugin: &Plugin, kind: &str) -> Option<u64> {
        let policy = self.monitor_policy()?;
        let iv = policy.interval_of(plugin, kind, &MonitorState::default())?;
        Some(policy.next_due(now_ms(), iv, 0))
    }

    /// One scheduled test of `c` (the scheduler's worker). A test that could not run (a
    /// plugin fault, secrets sealed for another destination) backs off like an
    /// `indeterminate` one, so a broken credential is not retried in a loop.
    pub fn scheduled_test(&self, c: &Credential) {
        let p = scheduler_principal(c);
        match self.test_as(&p, &c.id.to_string(), TestTrigger::Scheduled) {
            Ok(view) => crate::metrics::scheduled_test(view.report.status.as_str()),
            Err(e) => {
                crate::metrics::scheduled_test("error");
                tracing::warn!(credential = %c.id, error = %e, "scheduled test failed");
                let (Some(policy), Ok(plugin)) = (self.monitor_policy(), self.registry.get(&c.kind)) else { return };
                let failures = c.monitor.failures.saturating_add(1);
                let next = policy.interval_for(&plugin, c).map(|iv| policy.next_due(now_ms(), iv, failures));
                if let Err(e) = self.store.schedule_test(c.id, next, Some(failures)) {
                    tracing::error!(credential = %c.id, error = %e, "could not reschedule a failed test");
                }
            }
        }
    }

    /// One step of a sweep (see the module docs): up to [`SWEEP_STEP`] credentials after
    /// where `pass` stopped. When the sweep has read every credential, the
    /// credentials-by-health and rotations-pending gauges get the whole sweep's counts.
    fn sweep_step(&self, pass: &mut Pass) -> Step {
        let Some(policy) = self.monitor_policy().cloned() else { return Step::Done };
        let page = match self.store.sweep_page(pass.after, SWEEP_STEP) {
            Ok(p) => p,
            Err(e) => {
                tracing::error!(error = %e, "monitor sweep could not read the credentials");
                return Step::Failed;
            }
        };
        let now = now_ms();
        let mut plans = Vec::new();
        for c in page.live {
            let h = crate::store::history::health_of(c.last_test.as_ref(), now, policy.expiry_warning_ms);
            *pass.counts.entry((c.kind.clone(), h)).or_default() += 1;
            pass.pending += i64::from(c.pending_version.is_some());
            if c.last_test.is_some() && h != Health::Indeterminate && c.monitor.health != Some(h) {
                if let Err(e) = self.store.note_health(c.id, now, policy.expiry_warning_ms) {
                    tracing::error!(credential = %c.id, error = %e, "could not record a health change");
                }
            }
            let Ok(plugin) = self.registry.get(&c.kind) else { continue };
            let next = match (policy.interval_of(&plugin, &c.kind, &c.monitor), c.monitor.next_test_at) {
                (None, Some(_)) => Some(None),
                (Some(iv), None) => Some(Some(now + random_below(iv * 1000) + 1)),
                (Some(iv), Some(at)) if at < now && pass.first => {
                    Some(Some(now + random_below(iv.min(300) * 1000) + 1))
                }
                (Some(iv), Some(at)) if at > policy.latest_due(now, iv, c.monitor.failures) => {
                    Some(Some(now + random_below(iv * 1000) + 1))
                }
                _ => None,
            };
            if let Some(next) = next {
                plans.push((c.id, next));
            }
        }
        // One write per chunk of credentials, not one each (a burst of creates would
        // otherwise cost as many commits again at the next sweep).
        if let Err(e) = self.store.schedule_tests(&plans) {
            tracing::error!(error = %e, "could not schedule credentials");
        }
        pass.after = page.next;
        if pass.after.is_some() {
            return Step::More;
        }
        let counts: Vec<(String, &'static str, i64)> =
            std::mem::take(&mut pass.counts).into_iter().map(|((kind, h), n)| (kind, h.as_str(), n)).collect();
        crate::metrics::credentials_by_health(&counts);
        crate::metrics::rotations_pending(std::mem::take(&mut pass.pending));
        Step::Done
    }
}

/// What a sweep step did.
enum Step {
    More,
    Done,
    /// Could not read: the same step is tried again [`SWEEP_EVERY`] later.
    Failed,
}

/// A sweep under way: where its next step starts and what it has counted so far.
#[derive(Default)]
struct Pass {
    after: Option<CredentialId>,
    counts: HashMap<(String, Health), i64>,
    /// Live credentials with a pending version, for the rotations-pending gauge.
    pending: i64,
    /// The sweep at start, which also spreads tests that fell due while the server was
    /// down, so a restart does not stampede.
    first: bool,
}

/// Runs the scheduler until `stop` is set: call once the plugins are loaded.
pub fn start(service: Arc<Service>, stop: Arc<AtomicBool>) {
    let Some(policy) = service.monitor_policy().cloned() else { return };
    if !policy.enabled {
        tracing::info!("scheduled tests are off ([monitor] enabled = false)");
    }
    let inflight: Arc<Mutex<HashSet<CredentialId>>> = Arc::default();
    let (tx, rx) = mpsc::channel::<Credential>();
    let rx = Arc::new(Mutex::new(rx));
    for i in 0..policy.max_concurrent {
        let (svc, rx, inflight) = (service.clone(), rx.clone(), inflight.clone());
        let spawned = std::thread::Builder::new().name(format!("credhost-monitor-{i}")).spawn(move || loop {
            let job = rx.lock().unwrap_or_else(|p| p.into_inner()).recv();
            let Ok(c) = job else { break };
            svc.scheduled_test(&c);
            inflight.lock().unwrap_or_else(|p| p.into_inner()).remove(&c.id);
        });
        if let Err(e) = spawned {
            tracing::error!(error = %e, "could not start a monitor worker");
        }
    }
    let spawned = std::thread::Builder::new()
        .name("credhost-monitor".into())
        .spawn(move || run(service, policy, stop, inflight, tx));
    if let Err(e) = spawned {
        tracing::error!(error = %e, "could not start the monitor");
    }
}

fn run(
    service: Arc<Service>,
    policy: Arc<Policy>,
    stop: Arc<AtomicBool>,
    inflight: Arc<Mutex<HashSet<CredentialId>>>,
    tx: mpsc::Sender<Credential>,
) {
    let mut budget = Budget { per_minute: policy.rate_per_minute.max(1) as usize, sent: HashMap::new() };
    // The first sweep runs before any test is handed out (it spreads the overdue);
    // a step that cannot read is tried again, so none goes out unspread.
    let mut first = Pass { first: true, ..Pass::default() };
    loop {
        match service.sweep_step(&mut first) {
            Step::Done => break,
            Step::More => std::thread::sleep(FIRST_SWEEP_PAUSE),
            Step::Failed => sleep_unless_stopped(SWEEP_EVERY, &stop),
        }
        if stop.load(Ordering::Relaxed) {
            return;
        }
    }
    let mut pass: Option<Pass> = None;
    let mut next_step = Instant::now() + SWEEP_EVERY;
    while !stop.load(Ordering::Relaxed) {
        if Instant::now() >= next_step {
            let p = pass.get_or_insert_with(Pass::default);
            match service.sweep_step(p) {
                Step::More => {}
                Step::Done => {
                    pass = None;
                    next_step = Instant::now() + SWEEP_EVERY;
                    budget.prune(now_ms());
                }
                Step::Failed => next_step = Instant::now() + SWEEP_EVERY,
            }
        }
        if policy.enabled {
            dispatch(&service, &policy, &mut budget, &inflight, &tx);
        }
        std::thread::sleep(TICK);
    }
}

/// Sleeps `d` in ticks, returning early once `stop` is set.
fn sleep_unless_stopped(d: Duration, stop: &AtomicBool) {
    let until = Instant::now() + d;
    while Instant::now() < until && !stop.load(Ordering::Relaxed) {
        std::thread::sleep(TICK);
    }
}

/// Hands due tests to the workers, up to the concurrency cap and the rate budget.
fn dispatch(
    service: &Service,
    policy: &Policy,
    budget: &mut Budget,
    inflight: &Mutex<HashSet<CredentialId>>,
    tx: &mpsc::Sender<Credential>,
) {
    let now = now_ms();
    let running = inflight.lock().unwrap_or_else(|p| p.into_inner()).len();
    let mut free = policy.max_concurrent.saturating_sub(running);
    if free == 0 {
        return;
    }
    let due = match service.store.due_tests(now, 256) {
        Ok(d) => d,
        Err(e) => {
            tracing::error!(error = %e, "monitor could not read due tests");
            return;
        }
    };
    for (at, id) in due {
        if free == 0 {
            break;
        }
        if inflight.lock().unwrap_or_else(|p| p.into_inner()).contains(&id) {
            continue;
        }
        let reschedule = |next: Option<u64>| {
            if let Err(e) = service.store.schedule_test(id, next, None) {
                tracing::error!(credential = %id, error = %e, "could not reschedule a test");
            }
        };
        let c = match service.store.credential_by_id(id) {
            Ok(Some(c)) if c.monitor.next_test_at == Some(at) => c,
            // An entry no schedule matches (a purged credential's): dropped.
            Ok(_) => {
                if let Err(e) = service.store.drop_due(at, id) {
                    tracing::error!(error = %e, "could not drop a stale due entry");
                }
                continue;
            }
            Err(e) => {
                tracing::error!(credential = %id, error = %e, "monitor could not read a credential");
                continue;
            }
        };
        let plugin = match service.registry.get(&c.kind) {
            Ok(p) => p,
            // Its type is not loaded (now): try again an interval later.
            Err(_) => {
                reschedule(Some(now + policy.interval_secs * 1000));
                continue;
            }
        };
        let Some(iv) = policy.interval_for(&plugin, &c) else {
            reschedule(None);
            continue;
        };
        let dest = destination_of(&plugin, &c);
        if let Err(free_at) = budget.take(&dest, now) {
            crate::metrics::scheduled_test_deferred("rate_budget");
            reschedule(Some(free_at.max(now + 1) + random_below(1000)));
            continue;
        }
        // Another replica on the same database may have taken it since it was read.
        match service.store.claim_due(id, at, policy.next_due(now, iv, c.monitor.failures)) {
            Ok(true) => {}
            Ok(false) => continue,
            Err(e) => {
                tracing::error!(credential = %id, error = %e, "could not claim a due test");
                continue;
            }
        }
        inflight.lock().unwrap_or_else(|p| p.into_inner()).insert(id);
        if tx.send(c).is_err() {
            inflight.lock().unwrap_or_else(|p| p.into_inner()).remove(&id);
            return;
        }
        free -= 1;
    }
}

/// One recorded test, as `GET /api/credentials/{id}/tests` shows it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct TestEntry {
    /// `valid`, `invalid` or `indeterminate`.
    pub status: String,
    pub ok: bool,
    pub summary: String,
    /// Non-secret facts the test reported (e.g. `expires_at`, `http_status`).
    pub facts: BTreeMap<String, String>,
    pub latency_ms: u64,
    #[schema(format = DateTime)]
    pub at: String,
    /// What started it: `manual`, `scheduled` or `rotation`.
    pub trigger: String,
}

/// A credential's last tests, newest first (at most `[monitor] history`).
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct TestHistory {
    pub items: Vec<TestEntry>,
}

impl Service {
    /// The last test outcomes of a live credential of the caller, newest first.
    pub fn test_history(&self, p: &Principal, id: &str) -> Result<TestHistory> {
        super::require(p, Scope::Read)?;
        let c = self.live(p, id)?;
        let items = self
            .store
            .test_history(p.namespace, c.id)?
            .into_iter()
            .map(|t| TestEntry {
                status: serde_json::to_value(t.status()).ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default(),
                ok: t.ok,
                trigger: serde_json::to_value(t.trigger).ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default(),
                at: super::rfc3339(t.at),
                summary: t.summary,
                facts: t.facts,
                latency_ms: t.latency_ms,
            })
            .collect();
        Ok(TestHistory { items })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_its_cap_and_jitter_stays_in_bounds() {
        let mut c = MonitorConfig { interval_secs: 60, backoff_max_secs: 300, jitter_pct: 0, ..MonitorConfig::default() };
        let p = Policy::from(&c);
        let due = |f| p.next_due(0, 60, f);
        assert_eq!([due(0), due(1), due(2), due(3), due(9)], [60_000, 120_000, 240_000, 300_000, 300_000]);
        // A cap below the interval never shortens it.
        assert_eq!(p.next_due(0, 600, 4), 600_000);
        c.jitter_pct = 10;
        let p = Policy::from(&c);
        for _ in 0..200 {
            let d = p.next_due(1_000_000, 60, 0) - 1_000_000;
            assert!((54_000..=66_000).contains(&d), "{d}");
            assert!(1_000_000 + d <= p.latest_due(1_000_000, 60, 0));
        }
    }

    #[test]
    fn the_budget_defers_beyond_its_rate_and_frees_after_a_minute() {
        let mut b = Budget { per_minute: 2, sent: HashMap::new() };
        assert!(b.take("a", 0).is_ok());
        assert!(b.take("a", 10).is_ok());
        assert_eq!(b.take("a", 20), Err(60_000));
        assert!(b.take("b", 20).is_ok(), "another destination has its own budget");
        assert!(b.take("a", 60_000).is_ok());
    }
}
