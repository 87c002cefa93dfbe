//! Secret versions, rotation with test-before-promote, and promotion (rollback).
//!
//! A rotation validates the new secrets (merged with the current ones), writes them as
//! the pending version (one transaction), tests that version live, and promotes it only
//! if the verdict is `valid` (or `force`), in a second transaction. Between the two the
//! current version stays in use; a crash leaves the pending version visible and untested.
//!
//! Pending rule: a rotate while another rotate of the same credential is running is
//! refused (409, naming the pending version). A pending version left by a finished
//! rotation whose test failed, or by an interrupted one, is superseded by the next rotate
//! (it becomes retired and keeps its outcome).

use std::collections::{BTreeMap, HashMap};
use std::sync::{LazyLock, Mutex, PoisonError};

use secrecy::ExposeSecret;
use serde::{Deserialize, Serialize};

use super::{
    binding_of, before_commit, invalid_field, require, require_unbound, rfc3339, untestable_summary, verdict_of,
    FieldInput, Result, Service, ServiceError,
};
use crate::crypto::SecretMap;
use crate::plugins::{Bound, FieldError, Plugin, PluginError, ReportedKind, TestReport, TestStatus};
use crate::store::versions::{RotationEnd, VersionInfo, VersionReason, VersionState};
use crate::store::{Credential, CredentialId, Principal, Scope, TestResult, TestTrigger};

/// Longest `Idempotency-Key` accepted.
pub const MAX_IDEMPOTENCY_KEY: usize = 200;

/// Rotations running now, by credential, with their pending version once written. In
/// memory: only this process runs rotations on its store (redb locks the file).
static RUNNING: LazyLock<Mutex<HashMap<CredentialId, Option<u32>>>> = LazyLock::new(Default::default);

/// This process's claim on rotating one credential; released on drop.
struct Running(CredentialId);

impl Running {
    fn claim(id: CredentialId) -> Result<Running> {
        let mut running = RUNNING.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(pending) = running.get(&id) {
            return Err(ServiceError::Conflict(match pending {
                Some(n) => format!("a rotation of this credential is in progress (pending version {n}); wait for it to finish"),
                None => "a rotation or promote of this credential is in progress; wait for it to finish".to_string(),
            }));
        }
        running.insert(id, None);
        Ok(Running(id))
    }

    fn set(&self, version: u32) {
        RUNNING.lock().unwrap_or_else(PoisonError::into_inner).insert(self.0, Some(version));
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        RUNNING.lock().unwrap_or_else(PoisonError::into_inner).remove(&self.0);
    }
}

/// `POST /api/credentials/{id}/rotate`: new values of secret fields (only those), the
/// same form as in create and PATCH.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RotateRequest {
    /// New values of secret fields; secret fields not named keep their value.
    #[schema(schema_with = crate::api::openapi::field_values_schema)]
    #[serde(default)]
    pub fields: BTreeMap<String, FieldInput>,
    /// Promote the new version even if its test does not say `valid` (audited as forced).
    #[serde(default)]
    pub force: bool,
}

/// The outcome of a rotation. A replay with the same `Idempotency-Key` and body returns
/// the same answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RotationView {
    #[schema(format = Uuid)]
    pub credential: String,
    /// `promoted` (test said valid), `forced` (promoted without a valid test), or
    /// `failed` (the current version stays; the new one stays pending with its outcome).
    pub result: String,
    /// The version this rotation wrote.
    pub version: u32,
    /// The current version after the rotation.
    pub current_version: u32,
    /// The version that was current before.
    pub previous_version: u32,
    /// The pending version this rotation superseded, if there was one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub superseded_version: Option<u32>,
    /// The new version's test verdict: `valid`, `invalid` or `indeterminate`.
    pub status: String,
    /// Why, in the type's words (scrubbed of secrets).
    pub summary: String,
    #[schema(format = DateTime)]
    pub tested_at: String,
}

/// A version's test outcome.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct VersionTest {
    #[schema(format = DateTime)]
    pub at: String,
    /// `valid`, `invalid` or `indeterminate`.
    pub status: String,
    pub summary: String,
    /// `rotation`, `manual` or `scheduled`.
    pub trigger: String,
}

/// One kept version: metadata only, never a value.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct VersionView {
    pub version: u32,
    /// `current`, `pending`, `previous` or `retired`.
    pub state: String,
    /// Absent for versions written before version metadata was kept.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(format = DateTime)]
    pub created_at: Option<String>,
    /// Who wrote it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub actor: Option<String>,
    /// `create`, `update` or `rotation`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Keyed fingerprints of its secret fields, by name (as on the credential).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fingerprints: Option<BTreeMap<String, String>>,
    /// Its test before promotion (rotations), if one ran.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub test: Option<VersionTest>,
    /// When it last became current by a rotation or a promote.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(format = DateTime)]
    pub promoted_at: Option<String>,
    /// It became current without a `valid` test.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub forced: Option<bool>,
}

/// `GET /api/credentials/{id}/versions`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct VersionList {
    pub current: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pending: Option<u32>,
    /// How many versions a credential keeps (`[storage] max_versions`).
    pub max_versions: u32,
    /// Newest first.
    pub items: Vec<VersionView>,
}

fn word<T: Serialize>(v: T) -> String {
    serde_json::to_value(v).ok().and_then(|v| v.as_str().map(String::from)).unwrap_or_default()
}

fn version_view(c: &Credential, v: VersionInfo) -> VersionView {
    let mut view = VersionView {
        version: v.number,
        state: word(v.state),
        created_at: None,
        actor: None,
        reason: None,
        fingerprints: None,
        test: None,
        promoted_at: None,
        forced: None,
    };
    let fingerprints = |secrets: &BTreeMap<String, crate::store::SecretField>| {
        Some(secrets.iter().map(|(k, s)| (k.clone(), s.fingerprint.clone())).collect())
    };
    match v.meta {
        Some(m) => {
            view.created_at = (m.created_at > 0).then(|| rfc3339(m.created_at));
            view.actor = (!m.actor.is_empty()).then_some(m.actor);
            view.reason = Some(word::<VersionReason>(m.reason));
            view.fingerprints = fingerprints(&m.secrets);
            view.test = m.test.map(|t| VersionTest {
                at: rfc3339(t.at),
                status: word(t.status()),
                summary: t.summary,
                trigger: word(t.trigger),
            });
            view.promoted_at = m.promoted.as_ref().map(|p| rfc3339(p.at));
            view.forced = m.promoted.map(|p| p.forced);
        }
        // The current version's fingerprints are the credential's own.
        None if v.state == VersionState::Current => view.fingerprints = fingerprints(&c.secrets),
        None => {}
    }
    view
}

impl Service {
    /// The kept versions of a credential: metadata only.
    pub fn versions(&self, p: &Principal, id: &str) -> Result<VersionList> {
        require_unbound(p, Scope::Read)?;
        let c = self.live(p, id)?;
        let (c, versions) = self.store.list_versions(p.namespace, c.id)?;
        Ok(VersionList {
            current: c.version,
            pending: c.pending_version,
            max_versions: crate::store::versions::max_versions(),
            items: versions.into_iter().map(|v| version_view(&c, v)).collect(),
        })
    }

    /// Rotates a credential's secrets: validate, write pending, test that version live,
    /// promote only if `valid` (or `force`). Needs the `test` and `write` scopes; grants
    /// cannot rotate. With an idempotency key, the same request answers the same again
    /// (an interrupted one resumes: its pending version is tested and finished).
    pub fn rotate(&self, p: &Principal, id: &str, key: Option<String>, req: RotateRequest) -> Result<RotationView> {
        require_unbound(p, Scope::Write)?;
        require(p, Scope::Test)?;
        let c = self.live(p, id)?;
        if let Some(k) = &key {
            if k.is_empty() || k.len() > MAX_IDEMPOTENCY_KEY || !k.bytes().all(|b| b.is_ascii_graphic()) {
                return Err(invalid_field(
                    "Idempotency-Key",
                    &format!("must be 1-{MAX_IDEMPOTENCY_KEY} visible ASCII characters"),
                ));
            }
        }
        let plugin = self.registry.get(&c.kind)?;
        if req.fields.is_empty() {
            return Err(invalid_field("fields", "name at least one secret field with its new value"));
        }
        let errors: Vec<FieldError> = req
            .fields
            .keys()
            .filter_map(|name| {
                let message = match plugin.descriptor.field(name) {
                    Some(f) if f.secret => return None,
                    Some(_) => format!("is not a secret field; change it with PATCH /api/credentials/{}", c.id),
                    None => format!("is not a field of type `{}`", c.kind),
                };
                Some(FieldError { field: name.clone(), message })
            })
            .collect();
        if !errors.is_empty() {
            return Err(ServiceError::InvalidFields(errors));
        }
        let fields: SecretMap = req.fields.into_iter().map(|(k, v)| (k, v.0)).collect();
        let running = Running::claim(c.id)?;
        let key = match key {
            Some(k) => {
                let digest = self.store.rotation_digest(p.namespace, c.id, &fields, req.force)?;
                if let Some(seen) = self.store.rotation_key(c.id, &k)? {
                    if seen.digest != digest {
                        return Err(ServiceError::Conflict(
                            "this Idempotency-Key was already used with a different request for this credential; \
                             use a new key for a new rotation"
                                .into(),
                        ));
                    }
                    if let Some(answer) = seen.answer {
                        return serde_json::from_value(answer)
                            .map_err(|e| ServiceError::Internal(format!("stored rotation answer: {e}")));
                    }
                    // Interrupted (a crash, a timeout) after its pending version was written.
                    let c = self.live(p, id)?;
                    if c.pending_version != Some(seen.version) {
                        return Err(ServiceError::Conflict(format!(
                            "the rotation sent with this key was interrupted and its pending version {} was \
                             superseded since; send the rotation again with a new key",
                            seen.version
                        )));
                    }
                    running.set(seen.version);
                    return self.test_and_finish(p, &plugin, &c, seen.version, None, req.force, Some(k));
                }
                Some((k, digest))
            }
            None => None,
        };
        // The type validates the whole credential as it would be after the rotation.
        let stored = self.secrets_of(p, &plugin, &c, "validate rotation")?;
        let mut merged = Bound { environment: c.environment.clone(), fields: c.fields.clone(), secrets: stored.clone() };
        for (name, value) in &fields {
            merged.secrets.insert(name.clone(), value.clone());
        }
        let validated = self.run_validate(p, Some(c.id), &plugin, merged)?.map_err(ServiceError::InvalidFields)?;
        let same = |a: &SecretMap, b: &SecretMap| {
            a.len() == b.len() && a.iter().all(|(k, v)| b.get(k).is_some_and(|w| w.expose_secret() == v.expose_secret()))
        };
        if same(&validated.secrets, &stored) {
            return Err(ServiceError::InvalidFields(
                fields
                    .keys()
                    .map(|f| FieldError { field: f.clone(), message: "is the current value: nothing to rotate".into() })
                    .collect(),
            ));
        }
        // Only secrets change: the pending version is sealed for the current destination.
        let binding = binding_of(&plugin, c.environment.as_deref(), &c.fields);
        before_commit()?;
        let (c, n, superseded) = self.store.write_pending(
            &p.user,
            p.namespace,
            c.id,
            c.version,
            validated.secrets,
            binding,
            key.as_ref().map(|(k, d)| (k.as_str(), d.as_str())),
        )?;
        running.set(n);
        self.test_and_finish(p, &plugin, &c, n, superseded, req.force, key.map(|(k, _)| k))
    }

    /// Tests pending version `n` with its own secrets and ends the rotation.
    #[allow(clippy::too_many_arguments)]
    fn test_and_finish(
        &self,
        p: &Principal,
        plugin: &Plugin,
        c: &Credential,
        n: u32,
        superseded: Option<u32>,
        force: bool,
        key: Option<String>,
    ) -> Result<RotationView> {
        let mut secrets = self.store.unseal_version(&p.user, p.namespace, c.id, n, "rotation test")?;
        self.check_binding(p, plugin, c, &mut secrets, "rotation test")?;
        let bound = Bound { environment: c.environment.clone(), fields: c.fields.clone(), secrets };
        let report = self.test_version(p, plugin, c, bound);
        let valid = report.status == TestStatus::Valid;
        let promote = valid || force;
        let result = TestResult {
            at: crate::store::now_ms(),
            ok: valid,
            summary: report.summary.clone(),
            verdict: Some(verdict_of(report.status)),
            trigger: TestTrigger::Rotation,
            facts: report.facts.clone(),
            latency_ms: report.latency_ms,
        };
        let outcome = match (valid, promote) {
            (true, _) => "promoted",
            (false, true) => "forced",
            (false, false) => "failed",
        };
        let view = RotationView {
            credential: c.id.to_string(),
            result: outcome.into(),
            version: n,
            current_version: if promote { n } else { c.version },
            previous_version: c.version,
            superseded_version: superseded,
            status: report.status.as_str().into(),
            summary: report.summary,
            tested_at: rfc3339(result.at),
        };
        let answer = serde_json::to_value(&view).map_err(|e| ServiceError::Internal(e.to_string()))?;
        before_commit()?;
        let end = RotationEnd { version: n, result, promote, forced: promote && !valid, key: key.map(|k| (k, answer)) };
        self.store.finish_rotation(&p.user, p.namespace, c.id, end)?;
        crate::metrics::rotation_result(outcome);
        Ok(view)
    }

    /// A live test of given secrets. A test the plugin could not complete is an
    /// `indeterminate` verdict with the reason (a rotation keeps it as the outcome).
    fn test_version(&self, p: &Principal, plugin: &Plugin, c: &Credential, bound: Bound) -> TestReport {
        let started = std::time::Instant::now();
        let call = self.registry.runtime().test(plugin, bound);
        self.audit_events(p, Some(c.id), &call.events);
        let elapsed = || started.elapsed().as_millis().min(u128::from(u64::MAX)) as u64;
        let report = match call.result {
            Ok(report) => report,
            Err(PluginError::Reported { kind, message, .. }) if kind != ReportedKind::Internal => TestReport {
                status: TestStatus::Indeterminate,
                summary: untestable_summary(kind, &message),
                facts: BTreeMap::new(),
                latency_ms: elapsed(),
            },
            Err(e) => {
                crate::metrics::test_outcome(&c.kind, "error");
                return TestReport {
                    status: TestStatus::Indeterminate,
                    summary: format!("plugin error: {e}"),
                    facts: BTreeMap::new(),
                    latency_ms: elapsed(),
                };
            }
        };
        crate::metrics::test_outcome(&c.kind, report.status.as_str());
        report
    }

    /// Makes kept version `n` current (rollback, or a pending version promoted by hand),
    /// audited as forced. Refused while a rotation of the credential runs, and for a
    /// version sealed for another destination than the credential's current one.
    pub fn promote(&self, p: &Principal, id: &str, n: &str) -> Result<super::CredentialView> {
        require_unbound(p, Scope::Write)?;
        let c = self.live(p, id)?;
        let n: u32 = n.parse().map_err(|_| ServiceError::NotFound)?;
        let plugin = self.registry.get(&c.kind)?;
        // Held until the promote commits: a rotate starting meanwhile is refused (409)
        // instead of writing its pending version beside a promote in flight.
        let _claim = Running::claim(c.id).map_err(|_| {
            ServiceError::Conflict("a rotation or promote of this credential is in progress; promote after it finishes".into())
        })?;
        let binding = binding_of(&plugin, c.environment.as_deref(), &c.fields);
        before_commit()?;
        let (c, _) = self.store.promote_version(&p.user, p.namespace, c.id, n, binding.as_deref())?;
        Ok(c.into())
    }
}
