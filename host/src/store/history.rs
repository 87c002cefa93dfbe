//! Monitoring state: the last N test outcomes per credential, the schedule index of due
//! tests, and health (computed from the last test and the time, so it changes as an
//! expiry nears even without a new test). Health changes are emitted to the outbox in
//! the transaction that records them.

use std::ops::Bound;

use serde::{Deserialize, Serialize};

use super::audit::{self, AuditEntry};
use super::credentials::{load, load_live};
use super::error::Result;
use super::outbox::{self, Event};
use super::schema::{dec, enc, CredentialId, NamespaceId, CREDENTIALS, MONITOR_DUE, TEST_HISTORY};
use super::{now_ms, Credential, Store, TestResult, TestVerdict, Txn};

/// The fact a test reports a credential's expiry in (RFC 3339).
pub const EXPIRES_AT_FACT: &str = "expires_at";

/// What a credential's last test and the clock say about it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Health {
    Valid,
    Invalid,
    Indeterminate,
    /// Valid, but it expires within the warning window.
    Expiring,
    Untested,
}

impl Health {
    pub fn as_str(self) -> &'static str {
        match self {
            Health::Valid => "valid",
            Health::Invalid => "invalid",
            Health::Indeterminate => "indeterminate",
            Health::Expiring => "expiring",
            Health::Untested => "untested",
        }
    }

    pub const ALL: [Health; 5] = [Health::Valid, Health::Invalid, Health::Indeterminate, Health::Expiring, Health::Untested];
}

impl std::str::FromStr for Health {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        Health::ALL
            .into_iter()
            .find(|h| h.as_str() == s)
            .ok_or_else(|| "must be one of: valid, invalid, indeterminate, expiring, untested".into())
    }
}

/// The expiry a test reported (unix ms), if any and parseable.
pub fn expires_at(t: &TestResult) -> Option<u64> {
    let v = t.facts.get(EXPIRES_AT_FACT)?;
    let at = humantime::parse_rfc3339_weak(v.trim()).ok()?;
    Some(at.duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0))
}

/// Health at `now`: past its reported expiry a credential is invalid whatever the test
/// said; within `warn_ms` of it, a credential that was not refused is expiring.
pub fn health_of(last: Option<&TestResult>, now: u64, warn_ms: u64) -> Health {
    let Some(t) = last else { return Health::Untested };
    let expiry = expires_at(t);
    if expiry.is_some_and(|e| e <= now) {
        return Health::Invalid;
    }
    match t.status() {
        TestVerdict::Invalid => Health::Invalid,
        _ if expiry.is_some_and(|e| e.saturating_sub(warn_ms) <= now) => Health::Expiring,
        TestVerdict::Valid => Health::Valid,
        TestVerdict::Indeterminate => Health::Indeterminate,
    }
}

/// Per-credential monitoring state, kept on the credential.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct MonitorState {
    /// Unix ms of the next scheduled test; `None`: not scheduled.
    pub next_test_at: Option<u64>,
    /// The owner's switch: `false` never schedules this credential.
    pub enabled: bool,
    /// The owner's interval, overriding the type's and the deployment's.
    pub interval_secs: Option<u64>,
    /// Consecutive scheduled tests that could not tell (or failed): the backoff exponent.
    pub failures: u32,
    /// The last decisive health (not `indeterminate`): what the next change is told against.
    pub health: Option<Health>,
}

impl Default for MonitorState {
    fn default() -> Self {
        MonitorState { next_test_at: None, enabled: true, interval_secs: None, failures: 0, health: None }
    }
}

impl MonitorState {
    pub fn is_default(&self) -> bool {
        *self == MonitorState::default()
    }
}

/// How [`Store::record_test`] files a test besides storing it as the last one.
#[derive(Debug, Clone, Copy)]
pub struct RecordOpts {
    /// Outcomes kept per credential (oldest dropped in the same transaction).
    pub keep: usize,
    /// The warning window before a reported expiry (health `expiring`).
    pub expiry_warning_ms: u64,
    /// New schedule (next due, failures); `None` leaves it.
    pub schedule: Option<(Option<u64>, u32)>,
}

impl Default for RecordOpts {
    fn default() -> Self {
        RecordOpts { keep: 20, expiry_warning_ms: 14 * 24 * 3600 * 1000, schedule: None }
    }
}

/// The reference health after seeing `now`, and whether the change is worth an event:
/// to invalid, to expiring, and back to valid from either. `indeterminate` ("could not
/// tell") changes nothing, so a flapping service is not reported on every flap.
fn transition(reference: Health, now: Health) -> Option<bool> {
    if now == Health::Indeterminate || now == reference {
        return None;
    }
    Some(
        matches!(now, Health::Invalid | Health::Expiring)
            || (now == Health::Valid && matches!(reference, Health::Invalid | Health::Expiring)),
    )
}

fn health_event(txn: &Txn, cred: &Credential, from: Health, to: Health, summary: &str, trigger: &str) -> Result<()> {
    let event = Event::new(
        "credential.health_changed",
        Some(cred.namespace),
        Some(cred.id),
        serde_json::json!({
            "credential": {"id": cred.id.to_string(), "name": cred.name, "type": cred.kind},
            "from": from.as_str(),
            "to": to.as_str(),
            "summary": summary,
            "trigger": trigger,
        }),
    );
    outbox::emit(txn, &event)?;
    Ok(())
}

/// Moves a credential's entry in the due index (the credential itself is written by the caller).
pub(crate) fn reschedule(txn: &Txn, id: CredentialId, old: Option<u64>, new: Option<u64>) -> Result<()> {
    if old == new {
        return Ok(());
    }
    let mut due = txn.open_table(MONITOR_DUE)?;
    if let Some(o) = old {
        due.remove((o, id.key()))?;
    }
    if let Some(n) = new {
        due.insert((n, id.key()), ())?;
    }
    Ok(())
}

/// What the scheduler's sweep reads of a stored credential: decoding only these skips
/// its name, description, tags, fields and secret fingerprints.
#[derive(Debug, Clone, Deserialize)]
pub struct Swept {
    pub id: CredentialId,
    #[serde(rename = "type")]
    pub kind: String,
    pub deleted_at: Option<u64>,
    pub last_test: Option<TestResult>,
    #[serde(default)]
    pub monitor: MonitorState,
    #[serde(default)]
    pub pending_version: Option<u32>,
}

/// One step of a sweep ([`Store::sweep_page`]): the live credentials it read, and the id
/// the next step starts after (`None`: the sweep has read every credential).
#[derive(Debug, Default)]
pub struct SweepPage {
    pub live: Vec<Swept>,
    pub next: Option<CredentialId>,
}

/// Credentials [`Store::schedule_tests`] reschedules per write transaction.
pub const SCHEDULE_CHUNK: usize = 256;

/// Moves a credential's next scheduled test to `next` (none for a deleted one) in `txn`;
/// `None` when it does not exist.
fn schedule_in(txn: &Txn, id: CredentialId, next: Option<u64>, failures: Option<u32>) -> Result<Option<Credential>> {
    let mut creds = txn.open_table(CREDENTIALS)?;
    let Some(raw) = creds.get(id.key())?.map(|v| v.value().to_vec()) else { return Ok(None) };
    let mut cred: Credential = dec(&raw, "credential")?;
    let next = if cred.deleted_at.is_some() { None } else { next };
    reschedule(txn, id, cred.monitor.next_test_at, next)?;
    cred.monitor.next_test_at = next;
    if let Some(f) = failures {
        cred.monitor.failures = f;
    }
    creds.insert(id.key(), enc(&cred).as_slice())?;
    Ok(Some(cred))
}

/// Removes a credential's history and schedule entry (purge).
pub(crate) fn forget(txn: &Txn, cred: &Credential) -> Result<()> {
    reschedule(txn, cred.id, cred.monitor.next_test_at, None)?;
    let mut hist = txn.open_table(TEST_HISTORY)?;
    let keys: Vec<u64> = hist
        .range((cred.id.key(), 0)..=(cred.id.key(), u64::MAX))?
        .map(|r| r.map(|(k, _)| k.value().1))
        .collect::<std::result::Result<_, _>>()?;
    for k in keys {
        hist.remove((cred.id.key(), k))?;
    }
    Ok(())
}

/// Unschedules a credential being soft-deleted (restore schedules it again).
pub(crate) fn unschedule(txn: &Txn, cred: &mut Credential) -> Result<()> {
    reschedule(txn, cred.id, cred.monitor.next_test_at.take(), None)
}

impl Store {
    /// Stores a live test's outcome on a live credential: as its last test, in its history
    /// (the oldest beyond `opts.keep` dropped), with its new schedule, the audit record and,
    /// when the health changed in a way worth telling, a `credential.health_changed` event;
    /// all in one transaction.
    pub fn record_test(
        &self,
        actor: &str,
        ns: NamespaceId,
        id: CredentialId,
        result: TestResult,
        opts: RecordOpts,
    ) -> Result<Credential> {
        let actor = actor.to_owned();
        // Batched (see `batch`): the monitor records many tests at once.
        self.write_batched(ns, move |_, txn| {
            let now = now_ms();
            let mut creds = txn.open_table(CREDENTIALS)?;
            let mut cred = load_live(&creds, ns, id)?;
            txn.writing();
            let result = result.clone();
            let before = health_of(cred.last_test.as_ref(), now, opts.expiry_warning_ms);
            let reference = cred.monitor.health.unwrap_or(match before {
                Health::Indeterminate => Health::Untested,
                h => h,
            });
            let after = health_of(Some(&result), now, opts.expiry_warning_ms);
            if let Some(emit) = transition(reference, after) {
                cred.monitor.health = Some(after);
                if emit {
                    let trigger = serde_json::to_value(result.trigger).ok();
                    let trigger = trigger.as_ref().and_then(|t| t.as_str()).unwrap_or("manual");
                    health_event(txn, &cred, reference, after, &result.summary, trigger)?;
                }
            }
            {
                let mut hist = txn.open_table(TEST_HISTORY)?;
                let range = (id.key(), 0)..=(id.key(), u64::MAX);
                let next = hist.range(range.clone())?.next_back().transpose()?.map_or(1, |(k, _)| k.value().1 + 1);
                hist.insert((id.key(), next), enc(&result).as_slice())?;
                let count = hist.range(range.clone())?.count();
                let drop: Vec<u64> = hist
                    .range(range)?
                    .take(count.saturating_sub(opts.keep.max(1)))
                    .map(|r| r.map(|(k, _)| k.value().1))
                    .collect::<std::result::Result<_, _>>()?;
                for k in drop {
                    hist.remove((id.key(), k))?;
                }
            }
            if let Some((next, failures)) = opts.schedule {
                reschedule(txn, id, cred.monitor.next_test_at, next)?;
                cred.monitor.next_test_at = next;
                cred.monitor.failures = failures;
            }
            cred.last_test = Some(result);
            creds.insert(id.key(), enc(&cred).as_slice())?;
            drop(creds);
            let t = cred.last_test.as_ref().expect("just set");
            audit::append(
                txn,
                AuditEntry::ok(&actor, "credential.test")
                    .ns(ns)
                    .cred(id)
                    .detail(format!("ok={} status={:?} trigger={:?}", t.ok, t.status(), t.trigger).to_lowercase()),
            )?;
            Ok(cred)
        })
    }

    /// The last test outcomes of a credential (deleted or not), newest first.
    pub fn test_history(&self, ns: NamespaceId, id: CredentialId) -> Result<Vec<TestResult>> {
        let txn = self.begin_read_in(ns)?;
        load(&txn.open_table(CREDENTIALS)?, ns, id)?;
        let hist = txn.open_table(TEST_HISTORY)?;
        let mut out = Vec::new();
        for row in hist.range((id.key(), 0)..=(id.key(), u64::MAX))?.rev() {
            out.push(dec(row?.1.value(), "test result")?);
        }
        Ok(out)
    }

    /// Sets when a live credential is next tested (`None`: not scheduled) and its backoff
    /// count. Not audited: schedule bookkeeping, not a change of the credential.
    pub fn schedule_test(&self, id: CredentialId, next: Option<u64>, failures: Option<u32>) -> Result<Option<Credential>> {
        let txn = self.begin_write()?;
        let cred = schedule_in(&txn, id, next, failures)?;
        txn.commit()?;
        Ok(cred)
    }

    /// [`Store::schedule_test`] for many credentials (the monitor's sweep), without a
    /// failure count: [`SCHEDULE_CHUNK`] of them per write transaction, so a sweep that
    /// schedules thousands of new credentials costs a few commits, not one each, and
    /// still holds the write lock only briefly at a time. Returns how many were scheduled;
    /// on an error, the chunks before it stay committed.
    pub fn schedule_tests(&self, plans: &[(CredentialId, Option<u64>)]) -> Result<usize> {
        let mut done = 0;
        for chunk in plans.chunks(SCHEDULE_CHUNK) {
            let txn = self.begin_write()?;
            for (id, next) in chunk {
                done += usize::from(schedule_in(&txn, *id, *next, None)?.is_some());
            }
            txn.commit()?;
        }
        Ok(done)
    }

    /// Claims the scheduled test due at `at` for this process: moves it to `until` (the
    /// next regular due time) if it is still due at `at`, and says whether it did. With
    /// several replicas on one database, only the one whose claim commits first runs the
    /// test; if it dies before recording one, the test runs at `until`.
    pub fn claim_due(&self, id: CredentialId, at: u64, until: u64) -> Result<bool> {
        // One process on the store (redb): nobody to claim against.
        if !self.is_shared() {
            return Ok(true);
        }
        let txn = self.begin_write()?;
        {
            let mut creds = txn.open_table(CREDENTIALS)?;
            let Some(raw) = creds.get(id.key())?.map(|v| v.value().to_vec()) else { return Ok(false) };
            let mut cred: Credential = dec(&raw, "credential")?;
            if cred.deleted_at.is_some() || cred.monitor.next_test_at != Some(at) {
                return Ok(false);
            }
            reschedule(&txn, id, Some(at), Some(until))?;
            cred.monitor.next_test_at = Some(until);
            creds.insert(id.key(), enc(&cred).as_slice())?;
        }
        txn.commit()?;
        Ok(true)
    }

    /// The owner's monitoring switch and interval for a live credential, with the schedule
    /// that follows from them, audited as an update.
    pub fn set_monitor(
        &self,
        actor: &str,
        ns: NamespaceId,
        id: CredentialId,
        enabled: bool,
        interval_secs: Option<u64>,
        next: Option<u64>,
    ) -> Result<Credential> {
        let txn = self.begin_write_in(ns)?;
        let cred = {
            let mut creds = txn.open_table(CREDENTIALS)?;
            let mut cred = load_live(&creds, ns, id)?;
            reschedule(&txn, id, cred.monitor.next_test_at, next)?;
            cred.monitor.enabled = enabled;
            cred.monitor.interval_secs = interval_secs;
            cred.monitor.next_test_at = next;
            cred.updated_at = now_ms();
            creds.insert(id.key(), enc(&cred).as_slice())?;
            cred
        };
        audit::append(
            &txn,
            AuditEntry::ok(actor, "credential.update")
                .ns(ns)
                .cred(id)
                .detail(format!("monitor enabled={enabled} interval_secs={interval_secs:?}")),
        )?;
        txn.commit()?;
        Ok(cred)
    }

    /// Removes one entry of the due index that no credential's schedule matches.
    pub fn drop_due(&self, at: u64, id: CredentialId) -> Result<()> {
        let txn = self.begin_write()?;
        txn.open_table(MONITOR_DUE)?.remove((at, id.key()))?;
        txn.commit()?;
        Ok(())
    }

    /// Scheduled tests due at `now` (due time, credential), oldest first, at most `limit`.
    pub fn due_tests(&self, now: u64, limit: usize) -> Result<Vec<(u64, CredentialId)>> {
        let txn = self.begin_read()?;
        let due = txn.open_table(MONITOR_DUE)?;
        let mut out = Vec::new();
        for row in due.range((0u64, 0u128)..=(now, u128::MAX))?.take(limit) {
            let (at, id) = row?.0.value();
            out.push((at, CredentialId::from_key(id)));
        }
        Ok(out)
    }

    /// A credential by id in any namespace (the scheduler's read).
    pub fn credential_by_id(&self, id: CredentialId) -> Result<Option<Credential>> {
        let txn = self.begin_read()?;
        let creds = txn.open_table(CREDENTIALS)?;
        let raw = creds.get(id.key())?;
        raw.map(|v| dec(v.value(), "credential")).transpose()
    }

    /// Up to `n` credentials of every namespace whose ids follow `after` (`None`: from the
    /// first), for one step of the scheduler's sweep, with only what it reads. A step reads
    /// `n` records in its own read transaction, so a sweep's cost per step and the memory
    /// it holds stay the same at any number of credentials.
    pub fn sweep_page(&self, after: Option<CredentialId>, n: usize) -> Result<SweepPage> {
        let txn = self.begin_read()?;
        let creds = txn.open_table(CREDENTIALS)?;
        let rows = match after {
            Some(id) => creds.range::<u128>((Bound::Excluded(id.key()), Bound::Unbounded))?,
            None => creds.iter()?,
        };
        let mut page = SweepPage::default();
        let mut read = 0;
        for row in rows {
            let (k, v) = row?;
            let id = CredentialId::from_key(k.value());
            read += 1;
            match serde_json::from_slice::<Swept>(v.value()) {
                Ok(c) if c.deleted_at.is_none() => page.live.push(c),
                Ok(_) => {}
                // One record that does not decode must not stop every sweep there (the
                // credentials after it would never be scheduled). Its id only: the
                // decoder's text may quote the record.
                Err(_) => tracing::error!(credential = %id, "the monitor's sweep skipped a credential record that does not decode"),
            }
            if read == n {
                page.next = Some(id);
                break;
            }
        }
        Ok(page)
    }

    /// Re-reads a live credential's health at `now` and, when time alone moved it (an
    /// expiry came within the window or passed), records it and emits the event.
    /// Returns whether anything was written.
    pub fn note_health(&self, id: CredentialId, now: u64, warn_ms: u64) -> Result<bool> {
        let txn = self.begin_write()?;
        {
            let mut creds = txn.open_table(CREDENTIALS)?;
            let Some(raw) = creds.get(id.key())?.map(|v| v.value().to_vec()) else { return Ok(false) };
            let mut cred: Credential = dec(&raw, "credential")?;
            if cred.deleted_at.is_some() {
                return Ok(false);
            }
            let h = health_of(cred.last_test.as_ref(), now, warn_ms);
            let Some(reference) = cred.monitor.health else {
                // Data from before health was kept: take the current state as known.
                if h == Health::Indeterminate || cred.last_test.is_none() {
                    return Ok(false);
                }
                cred.monitor.health = Some(h);
                creds.insert(id.key(), enc(&cred).as_slice())?;
                drop(creds);
                txn.commit()?;
                return Ok(true);
            };
            let Some(emit) = transition(reference, h) else { return Ok(false) };
            cred.monitor.health = Some(h);
            if emit {
                let summary = match h {
                    Health::Invalid => "the credential has expired",
                    Health::Expiring => "the credential expires soon",
                    _ => "",
                };
                health_event(&txn, &cred, reference, h, summary, "scheduled")?;
            }
            creds.insert(id.key(), enc(&cred).as_slice())?;
        }
        txn.commit()?;
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::TestTrigger;

    fn test(verdict: TestVerdict, expires: Option<&str>) -> TestResult {
        TestResult {
            at: 0,
            ok: verdict == TestVerdict::Valid,
            summary: String::new(),
            verdict: Some(verdict),
            trigger: TestTrigger::Manual,
            facts: expires.map(|e| [(EXPIRES_AT_FACT.to_string(), e.to_string())].into()).unwrap_or_default(),
            latency_ms: 0,
        }
    }

    #[test]
    fn health_reads_the_verdict_and_the_expiry_at_the_time() {
        // 2030-01-01T00:00:00Z
        let at = 1_893_456_000_000u64;
        let t = test(TestVerdict::Valid, Some("2030-01-01T00:00:00Z"));
        let day = 86_400_000;
        assert_eq!(health_of(None, at, day), Health::Untested);
        assert_eq!(health_of(Some(&t), at - 2 * day, day), Health::Valid);
        assert_eq!(health_of(Some(&t), at - day, day), Health::Expiring);
        assert_eq!(health_of(Some(&t), at, day), Health::Invalid);
        assert_eq!(health_of(Some(&test(TestVerdict::Invalid, Some("2030-01-01T00:00:00Z"))), at - 2 * day, day), Health::Invalid);
        assert_eq!(health_of(Some(&test(TestVerdict::Indeterminate, None)), at, day), Health::Indeterminate);
        // An unparsable expiry is ignored, not a failure.
        assert_eq!(health_of(Some(&test(TestVerdict::Valid, Some("soon"))), at, day), Health::Valid);
    }

    #[test]
    fn only_changes_worth_telling_are_events() {
        use Health::*;
        assert_eq!(transition(Untested, Valid), Some(false), "a first valid test is no news");
        assert_eq!(transition(Valid, Invalid), Some(true));
        assert_eq!(transition(Valid, Expiring), Some(true));
        assert_eq!(transition(Invalid, Valid), Some(true));
        assert_eq!(transition(Expiring, Valid), Some(true));
        assert_eq!(transition(Expiring, Invalid), Some(true));
        assert_eq!(transition(Valid, Indeterminate), None, "could not tell: no change");
        assert_eq!(transition(Invalid, Indeterminate), None);
        assert_eq!(transition(Invalid, Invalid), None);
    }
}
