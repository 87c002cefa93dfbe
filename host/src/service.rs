//! The operations: the one place that decrypts, calls plugins and writes audit
//! records. The HTTP API, the CLI and the config reconciler are thin callers.
//!
//! Methods are synchronous (durable commits and sandboxed calls block); async
//! callers run them on the blocking pool.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use sha2::Digest as _;

mod admin;
mod grants;
mod keys;
pub mod monitor;
mod probes;
mod proxy;
mod reveal;
mod rotation;
pub mod webhooks;
pub use admin::{TokenView, UserView};
pub use keys::{pending_key_file, recover_pending, replace_key_file, KeyRotation, KeySource};
pub use grants::{GrantView, IssuedGrant, NewGrant, MAX_GRANT_TTL_SECS};
pub use probes::PROBE_ACTION;
pub use proxy::{ProxyRequest, ProxyResponse, MAX_PROXY_RESPONSE};
pub use reveal::{Revealed, REVEAL_PURPOSE};
pub use rotation::{RotateRequest, RotationView, VersionList, VersionView};

use crate::crypto::SecretMap;

use crate::plugins::{
    Bound, CapabilityEvent, FieldError, Plugin, PluginError, Registry, ReportedKind, TestReport, TypeDescriptor,
};
use crate::store::{
    AuditEntry, AuditPage, AuditQuery, Credential, Lookup, TestVerdict, CredentialId, CredentialUpdate, ListQuery, NewCredential,
    Outcome, Principal, Role, Scope, Store, StoreError, TestResult, TokenInfo, TokenRefusal, BINDING_KEY,
};

/// Why an operation was refused. The API maps each variant to one status.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error("missing or invalid bearer token")]
    Unauthorized,
    #[error("this operation needs the admin role")]
    Forbidden,
    /// The token lacks the scope the operation needs.
    #[error("this token lacks the `{0}` scope")]
    InsufficientScope(Scope),
    /// A grant may only read its own credential and use it through the proxy.
    #[error("a grant can only read its own credential and use it through the proxy")]
    GrantOnly,
    #[error("this grant has expired; ask for a new one")]
    GrantExpired,
    #[error("this grant was revoked")]
    GrantRevoked,
    #[error("this grant has used all of its calls")]
    GrantExhausted,
    /// A proxy request outside the type's `[use]` policy or the grant's limits.
    #[error("{0}")]
    UseDenied(String),
    /// The credential's type does not let its secrets be read back (`[use] reveal`).
    #[error("credentials of type `{0}` cannot be revealed; use them through the proxy instead")]
    RevealNotAllowed(String),
    /// The proxied request was refused by the egress policy, or the service could not be reached.
    #[error("{message}")]
    Egress { refused: bool, message: String },
    /// The credential's destination fields differ from those its secrets were sealed for.
    #[error("the credential's destination was changed outside the API; its secrets are not used until they are re-entered")]
    DestinationMismatch,
    /// Missing, another user's, or deleted: indistinguishable on purpose.
    #[error("not found")]
    NotFound,
    #[error("{0}")]
    Conflict(String),
    /// The name is taken (by a live credential, or a soft-deleted one: the message says
    /// how to restore or purge it). `fields` names `name`.
    #[error("{}", .0.message)]
    NameTaken(FieldError),
    #[error("some fields are invalid")]
    InvalidFields(Vec<FieldError>),
    #[error("{0}")]
    BadInput(String),
    #[error("unknown credential type `{0}`")]
    UnknownType(String),
    #[error("{0}")]
    NotImplemented(String),
    #[error("the plugin sandbox is busy; retry shortly")]
    Busy,
    /// The caller's time ran out before the operation committed; nothing was written.
    #[error("the request took longer than the server allows; nothing was changed")]
    Timeout,
    #[error("{0}")]
    Plugin(PluginError),
    /// Details are logged, not shown.
    #[error("internal error: {0}")]
    Internal(String),
}

impl From<StoreError> for ServiceError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound => ServiceError::NotFound,
            StoreError::NameTaken { name, deleted } => ServiceError::NameTaken(FieldError {
                field: "name".into(),
                message: match deleted {
                    None => format!("a credential named {name:?} already exists"),
                    Some(id) => format!(
                        "the name {name:?} is held by the soft-deleted credential {id}: restore it \
                         (POST /api/credentials/{id}/restore) or purge it (DELETE /api/credentials/{id}?purge=true) \
                         to free the name"
                    ),
                },
            }),
            StoreError::UserExists { .. } => ServiceError::Conflict(e.to_string()),
            StoreError::Invalid(m) => ServiceError::BadInput(m),
            StoreError::Conflict(m) => ServiceError::Conflict(m),
            StoreError::InvalidField { field, message } => ServiceError::InvalidFields(vec![FieldError { field, message }]),
            other => ServiceError::Internal(other.to_string()),
        }
    }
}

impl From<PluginError> for ServiceError {
    fn from(e: PluginError) -> Self {
        match e {
            PluginError::UnknownType(t) => ServiceError::UnknownType(t),
            PluginError::Busy => ServiceError::Busy,
            PluginError::Reported { kind: ReportedKind::Unsupported, ref message, .. } => {
                ServiceError::NotImplemented(message.clone())
            }
            other => ServiceError::Plugin(other),
        }
    }
}

pub type Result<T, E = ServiceError> = std::result::Result<T, E>;

thread_local! {
    /// When the current caller stops waiting (the API's request time limit).
    static DEADLINE: std::cell::Cell<Option<std::time::Instant>> = const { std::cell::Cell::new(None) };
}

/// Runs `f` with a deadline: an operation whose caller has given up by the time it would
/// commit refuses to commit ([`ServiceError::Timeout`]). The API sets it per request.
pub fn with_deadline<T>(deadline: Option<std::time::Instant>, f: impl FnOnce() -> T) -> T {
    // Restored on unwind too: blocking-pool threads are reused by later requests.
    struct Restore(Option<std::time::Instant>);
    impl Drop for Restore {
        fn drop(&mut self) {
            DEADLINE.with(|d| d.set(self.0));
        }
    }
    let _restore = Restore(DEADLINE.with(|d| d.replace(deadline)));
    f()
}

/// When the current caller stops waiting, if it said (see [`with_deadline`]).
fn deadline() -> Option<std::time::Instant> {
    DEADLINE.with(|d| d.get())
}

/// Called right before a write that follows a plugin call.
fn before_commit() -> Result<()> {
    match deadline() {
        Some(deadline) if std::time::Instant::now() >= deadline => Err(ServiceError::Timeout),
        _ => Ok(()),
    }
}

/// A field value as given by a caller. Held as a secret until the type says it is not one.
pub struct FieldInput(pub SecretString);

impl<'de> Deserialize<'de> for FieldInput {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        // Accept JSON strings, numbers and booleans (`"port": 22`); a value is text to a plugin.
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            S(String),
            N(serde_json::Number),
            B(bool),
        }
        let s = match Raw::deserialize(d).map_err(|_| serde::de::Error::custom("field values must be strings, numbers or booleans"))? {
            Raw::S(s) => s,
            Raw::N(n) => n.to_string(),
            Raw::B(b) => b.to_string(),
        };
        Ok(FieldInput(SecretString::from(s)))
    }
}

impl From<&str> for FieldInput {
    fn from(s: &str) -> Self {
        FieldInput(SecretString::from(s.to_string()))
    }
}

impl std::fmt::Debug for FieldInput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FieldInput(..)")
    }
}

/// A new credential.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateCredential {
    #[schema(schema_with = crate::api::openapi::name_schema)]
    pub name: String,
    /// Credential type id, e.g. `alpaca` (`GET /api/credential-types` lists them).
    #[serde(rename = "type")]
    #[schema(min_length = 1)]
    pub kind: String,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    #[schema(schema_with = crate::api::openapi::tags_schema)]
    pub tags: Vec<String>,
    /// One of the type's environments (e.g. `paper`, `live`), for types that have them.
    #[serde(default)]
    pub environment: Option<String>,
    #[schema(schema_with = crate::api::openapi::field_values_schema)]
    #[serde(default)]
    pub fields: BTreeMap<String, FieldInput>,
    /// Scheduled tests of this credential: off, or its own interval (default: the
    /// type's or the deployment's schedule).
    #[serde(default)]
    pub monitor: Option<monitor::MonitorSetting>,
}

/// A partial update: every member optional; absent means unchanged.
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateCredential {
    #[schema(schema_with = crate::api::openapi::name_schema)]
    pub name: Option<String>,
    pub description: Option<String>,
    #[schema(schema_with = crate::api::openapi::tags_schema)]
    pub tags: Option<Vec<String>>,
    /// `null` clears the environment.
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<String>)]
    pub environment: Option<Option<String>>,
    #[schema(schema_with = crate::api::openapi::field_updates_schema)]
    #[serde(default)]
    pub fields: BTreeMap<String, Option<FieldInput>>,
    /// Replaces the credential's monitoring setting (`{}`: back to the defaults).
    #[serde(default)]
    pub monitor: Option<monitor::MonitorSetting>,
}

/// Drops metadata members equal to the stored values; true when nothing is left to write.
fn is_no_op(upd: &mut CredentialUpdate, current: &Credential) -> bool {
    if upd.name.as_ref() == Some(&current.name) {
        upd.name = None;
    }
    if upd.description.as_ref() == Some(&current.description) {
        upd.description = None;
    }
    if upd.tags.as_ref() == Some(&current.tags) {
        upd.tags = None;
    }
    upd.name.is_none()
        && upd.description.is_none()
        && upd.tags.is_none()
        && upd.environment.is_none()
        && upd.fields.is_empty()
        && upd.secrets.is_empty()
        && upd.clear_secrets.is_empty()
        && upd.binding.is_none()
}

/// The summary of a test the plugin could not complete, from its reported reason
/// (already scrubbed of the credential's secrets).
fn untestable_summary(kind: ReportedKind, message: &str) -> String {
    let why = match kind {
        ReportedKind::Unsupported => "cannot be tested",
        ReportedKind::Rejected | ReportedKind::Denied => "refused by the host's policy",
        ReportedKind::Unreachable => "could not reach the service",
        ReportedKind::Invalid => "invalid input",
        ReportedKind::Internal => "plugin error",
    };
    format!("{why}: {message}")
}

fn double_option<'de, D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Option<Option<String>>, D::Error> {
    Option::<String>::deserialize(d).map(Some)
}

/// How a field shows in responses: its value, or for a secret only that it is set.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
#[serde(untagged)]
pub enum FieldView {
    Plain(String),
    Secret {
        set: bool,
        /// Keyed per-user HMAC: tells equal values apart without revealing them.
        fingerprint: String,
    },
}

/// Last live-test result.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct LastTest {
    #[schema(format = DateTime)]
    pub at: String,
    pub ok: bool,
    /// `valid`, `invalid` or `indeterminate` (what the `status` listing filter matches).
    pub status: String,
    pub summary: String,
}

/// A credential as shown to its owner: metadata, never a secret value.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct CredentialView {
    #[schema(format = Uuid)]
    pub id: String,
    pub name: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub description: String,
    pub tags: Vec<String>,
    pub environment: Option<String>,
    pub fields: BTreeMap<String, FieldView>,
    /// Secret version; increases whenever a secret changes.
    pub version: u32,
    #[schema(format = DateTime)]
    pub created_at: String,
    /// Changes only when something about the credential changed.
    #[schema(format = DateTime)]
    pub updated_at: String,
    /// Set on soft-deleted credentials (listed with `include_deleted`).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(format = DateTime)]
    pub deleted_at: Option<String>,
    pub last_test: Option<LastTest>,
    /// `valid`, `invalid`, `indeterminate`, `expiring` (valid, but its reported expiry is
    /// within the warning window) or `untested`: from the last test and the time now.
    #[schema(pattern = "^(valid|invalid|indeterminate|expiring|untested)$")]
    pub health: String,
    /// When the scheduler tests it next; `null`: not scheduled.
    #[schema(format = DateTime)]
    pub next_test_at: Option<String>,
    /// The expiry its last test reported, when known.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(format = DateTime)]
    pub expires_at: Option<String>,
    /// The owner's monitoring setting.
    pub monitor: monitor::MonitorSetting,
}

impl From<Credential> for CredentialView {
    fn from(c: Credential) -> Self {
        let mut fields: BTreeMap<String, FieldView> =
            c.fields.into_iter().map(|(k, v)| (k, FieldView::Plain(v))).collect();
        for (k, s) in c.secrets {
            fields.insert(k, FieldView::Secret { set: true, fingerprint: s.fingerprint });
        }
        let health = crate::store::history::health_of(c.last_test.as_ref(), crate::store::now_ms(), monitor::expiry_warning_ms());
        let expires_at = c.last_test.as_ref().and_then(crate::store::history::expires_at).map(rfc3339);
        CredentialView {
            health: health.as_str().into(),
            next_test_at: c.monitor.next_test_at.map(rfc3339),
            expires_at,
            monitor: monitor::MonitorSetting { enabled: c.monitor.enabled, interval_secs: c.monitor.interval_secs },
            id: c.id.to_string(),
            name: c.name,
            kind: c.kind,
            description: c.description,
            tags: c.tags,
            environment: c.environment,
            fields,
            version: c.version,
            created_at: rfc3339(c.created_at),
            updated_at: rfc3339(c.updated_at),
            deleted_at: c.deleted_at.map(rfc3339),
            last_test: c.last_test.map(|t| LastTest {
                at: rfc3339(t.at),
                ok: t.ok,
                status: match t.status() {
                    TestVerdict::Valid => "valid",
                    TestVerdict::Invalid => "invalid",
                    TestVerdict::Indeterminate => "indeterminate",
                }
                .into(),
                summary: t.summary,
            }),
        }
    }
}

/// One page of credentials.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct CredentialPage {
    pub items: Vec<CredentialView>,
    /// Pass as `cursor` for the next page; absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
    /// How many credentials match the filters, over all pages.
    pub total: usize,
}

/// Result of the offline re-check of a stored credential.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ValidationReport {
    pub valid: bool,
    pub errors: Vec<FieldError>,
}

/// Result of a live test, as returned to callers.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct TestView {
    pub ok: bool,
    #[serde(flatten)]
    pub report: TestReport,
}

/// Result of [`Service::compare_fields`]: names only, never values.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct FieldDiff {
    /// The (normalised) environment differs.
    pub environment: bool,
    /// Fields (secret or not) whose value differs or that are not stored yet.
    pub changed: Vec<String>,
    /// Stored fields the candidate does not have.
    pub removed: Vec<String>,
}

impl FieldDiff {
    pub fn is_empty(&self) -> bool {
        !self.environment && self.changed.is_empty() && self.removed.is_empty()
    }
}

/// A new token: the plaintext is in here once and nowhere else.
pub struct IssuedToken {
    pub info: TokenInfo,
    pub token: SecretString,
}

impl std::fmt::Debug for IssuedToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IssuedToken").field("info", &self.info).finish_non_exhaustive()
    }
}

/// The operations every caller uses.
pub struct Service {
    store: Arc<Store>,
    registry: Arc<Registry>,
    plans: proxy::PlanCache,
    probes: probes::Probes,
    /// `[monitor]`, once the server installs it (see [`monitor`]).
    monitor: std::sync::OnceLock<Arc<monitor::Policy>>,
    /// Where the master key came from: what an online rotation updates.
    key_source: keys::KeySource,
}

impl Service {
    pub fn new(store: Arc<Store>, registry: Arc<Registry>) -> Self {
        // Hot-path audit records (proxy calls) are committed lazily; make them durable
        // within a second. The thread ends with the store.
        let weak = Arc::downgrade(&store);
        let _ = std::thread::Builder::new().name("credhost-audit-flush".into()).spawn(move || loop {
            std::thread::sleep(std::time::Duration::from_secs(1));
            let Some(store) = weak.upgrade() else { break };
            if let Err(e) = store.flush_audit() {
                tracing::error!(error = %e, "could not make audit records durable");
            }
        });
        let probes = probes::Probes::start(Arc::downgrade(&store));
        Service { store, registry, plans: proxy::PlanCache::default(), probes, key_source: keys::KeySource::Unknown, monitor: Default::default() }
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The store, shared: for closing it once every other holder has let go.
    pub fn store_handle(&self) -> Arc<Store> {
        self.store.clone()
    }

    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// The principal behind a bearer token.
    pub fn authenticate(&self, token: &str) -> Result<Principal> {
        self.store.authenticate_detailed(token)?.map_err(|why| match why {
            TokenRefusal::Unknown => ServiceError::Unauthorized,
            TokenRefusal::GrantExpired => {
                webhooks::token_misuse(&self.store, token, "expired");
                ServiceError::GrantExpired
            }
            TokenRefusal::GrantRevoked => {
                webhooks::token_misuse(&self.store, token, "revoked");
                ServiceError::GrantRevoked
            }
        })
    }

    /// Every loaded credential type.
    pub fn types(&self) -> Vec<TypeDescriptor> {
        self.registry.list().iter().map(|p| p.descriptor.clone()).collect()
    }

    pub fn create(&self, p: &Principal, mut req: CreateCredential) -> Result<CredentialView> {
        require(p, Scope::Write)?;
        // Name and tags first: their problems come back together, before any plugin runs.
        let (name, tags) = canonical_name_and_tags(Some(&req.name), Some(&req.tags))?;
        req.name = name.unwrap_or_default();
        req.tags = tags.unwrap_or_default();
        let plugin = self.registry.get(&req.kind)?;
        let mut input = Bound { environment: req.environment.clone(), ..Bound::default() };
        for (name, value) in req.fields {
            put_field(&plugin, &mut input, name, value.0);
        }
        let validated = self.run_validate(p, None, &plugin, input)?.map_err(ServiceError::InvalidFields)?;
        // A type may normalise the environment; one that does not echo it keeps the caller's.
        let environment = validated.environment.or(req.environment);
        // The usual case (no setting of the owner's) is scheduled within the create: one
        // write, not two. An owner's setting is applied (and audited) after it, as before.
        let first_due = if req.monitor.is_none() { self.first_due(&plugin, &req.kind) } else { None };
        let new = NewCredential {
            name: req.name,
            kind: req.kind,
            description: req.description,
            tags: req.tags,
            binding: binding_of(&plugin, environment.as_deref(), &validated.fields),
            environment,
            fields: validated.fields,
            secrets: validated.secrets,
            monitor: crate::store::MonitorState { next_test_at: first_due, ..Default::default() },
        };
        if let Some(m) = &req.monitor {
            m.check()?;
        }
        before_commit()?;
        let created = self.store.create_credential(&p.user, p.namespace, new)?;
        // Without a setting the create already holds the policy's schedule.
        match req.monitor {
            Some(setting) => Ok(self.apply_monitor(p, created, Some(setting))?.into()),
            None => Ok(created.into()),
        }
    }

    /// After a create or restore, or with the owner's new setting: the credential with
    /// the schedule the policy gives it (written only when it changes).
    fn apply_monitor(&self, p: &Principal, mut c: Credential, setting: Option<monitor::MonitorSetting>) -> Result<Credential> {
        if let Some(m) = setting {
            c.monitor.enabled = m.enabled;
            c.monitor.interval_secs = m.interval_secs;
            let next = self.due_for(&c, false).unwrap_or(c.monitor.next_test_at);
            return Ok(self.store.set_monitor(&p.user, p.namespace, c.id, m.enabled, m.interval_secs, next)?);
        }
        match self.due_for(&c, true) {
            Some(next) if next != c.monitor.next_test_at => {
                Ok(self.store.schedule_test(c.id, next, None)?.unwrap_or(c))
            }
            _ => Ok(c),
        }
    }

    /// One credential; a soft-deleted one only when asked for (`include_deleted`).
    pub fn get(&self, p: &Principal, id: &str, include_deleted: bool) -> Result<CredentialView> {
        require(p, Scope::Read)?;
        let c = if include_deleted { self.owned(p, id)? } else { self.live(p, id)? };
        Ok(c.into())
    }

    /// One page of the caller's credentials. Name and tag filters are read in canonical
    /// form (NFC), like the stored names; a bad one is a 422 naming the parameter.
    pub fn list(&self, p: &Principal, query: ListQuery) -> Result<CredentialPage> {
        let page = self.list_within(p, query, usize::MAX)?;
        Ok(page.expect("no listing has more than usize::MAX names"))
    }

    /// [`Service::list`] when at most `max_names` names are in the query's name range,
    /// else `None` (see [`Store::list_credentials_within`]).
    pub fn list_within(&self, p: &Principal, mut query: ListQuery, max_names: usize) -> Result<Option<CredentialPage>> {
        require_unbound(p, Scope::Read)?;
        let mut errors = Vec::new();
        for (field, value) in [("name", &mut query.name), ("name_prefix", &mut query.name_prefix), ("tag", &mut query.tag)] {
            if let Some(v) = value.as_deref() {
                match crate::names::filter(field, v) {
                    Ok(v) => *value = Some(v),
                    Err(e) => errors.push(e),
                }
            }
        }
        if !errors.is_empty() {
            return Err(ServiceError::InvalidFields(errors));
        }
        query.expiry_warning_ms = monitor::expiry_warning_ms();
        let Some(page) = self.store.list_credentials_within(p.namespace, &query, max_names)? else { return Ok(None) };
        Ok(Some(CredentialPage {
            items: page.items.into_iter().map(Into::into).collect(),
            next_cursor: page.next_cursor,
            total: page.total,
        }))
    }

    /// Partial update. Field or environment changes are re-validated by the type against
    /// the merged credential; secrets not named keep their value.
    pub fn update(&self, p: &Principal, id: &str, mut req: UpdateCredential) -> Result<CredentialView> {
        require(p, Scope::Write)?;
        let Some(setting) = req.monitor.take() else { return self.update_fields(p, id, req) };
        setting.check()?;
        let view = self.update_fields(p, id, req)?;
        if view.monitor == setting {
            return Ok(view);
        }
        let c = self.live(p, id)?;
        before_commit()?;
        Ok(self.apply_monitor(p, c, Some(setting))?.into())
    }

    fn update_fields(&self, p: &Principal, id: &str, req: UpdateCredential) -> Result<CredentialView> {
        let (name, tags) = canonical_name_and_tags(req.name.as_deref(), req.tags.as_deref())?;
        let current = self.live(p, id)?;
        let mut upd = CredentialUpdate { name, description: req.description, tags, ..CredentialUpdate::default() };
        if !req.fields.is_empty() || req.environment.is_some() {
            let plugin = self.registry.get(&current.kind)?;
            // Validation sees the whole merged credential, so it needs the stored secrets.
            let environment = req.environment.clone().unwrap_or_else(|| current.environment.clone());
            let re_entered: BTreeSet<String> = req
                .fields
                .iter()
                .filter(|(name, v)| v.is_some() && plugin.descriptor.field(name).is_some_and(|f| f.secret))
                .map(|(name, _)| name.clone())
                .collect();
            // Secrets sealed for another destination (an edit behind the API's back) are not
            // opened; the owner repairs the credential by re-entering every one of them.
            let (stored, repair) = match self.secrets_of(p, &plugin, &current, "validate update") {
                Ok(s) => (s, false),
                Err(ServiceError::DestinationMismatch) if current.secrets.keys().all(|k| re_entered.contains(k)) => {
                    (SecretMap::new(), true)
                }
                Err(e) => return Err(e),
            };
            let mut merged = Bound {
                environment: environment.clone(),
                fields: current.fields.clone(),
                secrets: stored.clone(),
            };
            for (name, value) in req.fields {
                merged.fields.remove(&name);
                merged.secrets.remove(&name);
                if let Some(v) = value {
                    put_field(&plugin, &mut merged, name, v.0);
                }
            }
            let validated =
                self.run_validate(p, Some(current.id), &plugin, merged)?.map_err(ServiceError::InvalidFields)?;
            let environment = validated.environment.or(environment);
            upd.environment = (environment != current.environment).then(|| environment.clone());
            let names: BTreeSet<&String> = current.fields.keys().chain(validated.fields.keys()).collect();
            for name in names {
                let new = validated.fields.get(name);
                if new != current.fields.get(name) {
                    upd.fields.insert(name.clone(), new.cloned());
                }
            }
            for name in stored.keys() {
                if !validated.secrets.contains_key(name) {
                    upd.clear_secrets.insert(name.clone());
                }
            }
            // Where the secrets may go changes only together with the secrets themselves:
            // otherwise anyone who may edit metadata could send them elsewhere.
            let old_binding = binding_of(&plugin, current.environment.as_deref(), &current.fields);
            let new_binding = binding_of(&plugin, environment.as_deref(), &validated.fields);
            if new_binding != old_binding || repair {
                let missing: Vec<FieldError> = validated
                    .secrets
                    .keys()
                    .filter(|name| !re_entered.contains(*name))
                    .map(|name| FieldError {
                        field: name.clone(),
                        message: format!(
                            "re-enter this secret in the same request to change where it may be sent ({})",
                            destination_names(&plugin).join(", ")
                        ),
                    })
                    .collect();
                if !missing.is_empty() {
                    return Err(ServiceError::InvalidFields(missing));
                }
                upd.binding = new_binding;
            }
            // Only changed secrets make a new version.
            for (name, value) in validated.secrets {
                if stored.get(&name).map(ExposeSecret::expose_secret) != Some(value.expose_secret()) {
                    upd.secrets.insert(name, value);
                }
            }
        }
        // A PATCH that changes nothing writes nothing: no `updated_at` bump, no audit record.
        if is_no_op(&mut upd, &current) {
            return Ok(current.into());
        }
        before_commit()?;
        Ok(self.store.update_credential(&p.user, p.namespace, current.id, upd)?.into())
    }

    /// Compares a complete candidate (every field a credential should have, as the config
    /// declares it) with the stored credential, after the type's `validate` normalised it
    /// (defaults filled, values trimmed). Secret values are compared here, inside the
    /// service (an audited reveal, purpose "provision compare"); only names come back.
    /// Invalid candidates are refused with the field errors, before anything is revealed.
    pub fn compare_fields(
        &self,
        p: &Principal,
        id: &str,
        environment: Option<String>,
        fields: BTreeMap<String, FieldInput>,
    ) -> Result<FieldDiff> {
        let current = self.live(p, id)?;
        let plugin = self.registry.get(&current.kind)?;
        let mut input = Bound { environment: environment.clone(), ..Bound::default() };
        for (name, value) in fields {
            put_field(&plugin, &mut input, name, value.0);
        }
        let validated =
            self.run_validate(p, Some(current.id), &plugin, input)?.map_err(ServiceError::InvalidFields)?;
        let stored = self.secrets_of(p, &plugin, &current, "provision compare")?;
        let mut diff = FieldDiff {
            environment: validated.environment.or(environment) != current.environment,
            ..FieldDiff::default()
        };
        for (name, value) in &validated.fields {
            if current.fields.get(name) != Some(value) {
                diff.changed.push(name.clone());
            }
        }
        for (name, value) in &validated.secrets {
            if stored.get(name).map(ExposeSecret::expose_secret) != Some(value.expose_secret()) {
                diff.changed.push(name.clone());
            }
        }
        for name in current.fields.keys().chain(stored.keys()) {
            if !validated.fields.contains_key(name) && !validated.secrets.contains_key(name) {
                diff.removed.push(name.clone());
            }
        }
        Ok(diff)
    }

    /// Soft delete (restorable), or with `purge` destroy every version.
    pub fn delete(&self, p: &Principal, id: &str, purge: bool) -> Result<()> {
        require_unbound(p, Scope::Write)?;
        let c = self.owned(p, id)?;
        if purge {
            // Purge works on soft-deleted credentials too: that is how a name is freed.
            self.store.purge_credential(&p.user, p.namespace, c.id)?;
        } else {
            if c.deleted_at.is_some() {
                return Err(ServiceError::NotFound);
            }
            self.store.delete_credential(&p.user, p.namespace, c.id)?;
        }
        Ok(())
    }

    pub fn restore(&self, p: &Principal, id: &str) -> Result<CredentialView> {
        require_unbound(p, Scope::Write)?;
        let c = self.owned(p, id)?;
        if c.deleted_at.is_none() {
            return Ok(c.into());
        }
        let restored = self.store.restore_credential(&p.user, p.namespace, c.id)?;
        Ok(self.apply_monitor(p, restored, None)?.into())
    }

    /// Re-runs the type's offline checks on the stored credential.
    pub fn validate(&self, p: &Principal, id: &str) -> Result<ValidationReport> {
        require(p, Scope::Test)?;
        let c = self.live(p, id)?;
        let plugin = self.registry.get(&c.kind)?;
        let bound = self.bound(p, &plugin, &c, "validate")?;
        Ok(match self.run_validate(p, Some(c.id), &plugin, bound)? {
            Ok(_) => ValidationReport { valid: true, errors: Vec::new() },
            Err(errors) => ValidationReport { valid: false, errors },
        })
    }

    /// Runs the type's live test, records the result on the credential and in the audit log.
    pub fn test(&self, p: &Principal, id: &str) -> Result<TestView> {
        self.test_as(p, id, crate::store::TestTrigger::Manual)
    }

    /// The live test, started by `trigger`: stored as the last test and in the history,
    /// with the next scheduled test and any health change, in one transaction.
    pub fn test_as(&self, p: &Principal, id: &str, trigger: crate::store::TestTrigger) -> Result<TestView> {
        require(p, Scope::Test)?;
        let c = self.live(p, id)?;
        let plugin = self.registry.get(&c.kind)?;
        let bound = self.bound(p, &plugin, &c, "test")?;
        let started = std::time::Instant::now();
        let call = self.registry.runtime().test(&plugin, bound);
        self.audit_events(p, Some(c.id), &call.events);
        let report = match call.result {
            Ok(report) => report,
            // The plugin ran and says why it could not tell (no test URL, a target the
            // host's policy refuses, an unreachable service): a verdict the caller can show
            // next to the credential, not a server fault.
            Err(PluginError::Reported { kind, message, .. }) if kind != ReportedKind::Internal => TestReport {
                status: crate::plugins::TestStatus::Indeterminate,
                summary: untestable_summary(kind, &message),
                facts: BTreeMap::new(),
                latency_ms: started.elapsed().as_millis().min(u128::from(u64::MAX)) as u64,
            },
            Err(e) => {
                crate::metrics::test_outcome(&c.kind, "error");
                self.audit(p, Some(c.id), "credential.test", Outcome::Failed, e.to_string());
                return Err(e.into());
            }
        };
        crate::metrics::test_outcome(&c.kind, report.status.as_str());
        let result = TestResult {
            at: crate::store::now_ms(),
            ok: report.ok(),
            summary: report.summary.clone(),
            verdict: Some(verdict_of(report.status)),
            trigger,
            facts: report.facts.clone(),
            latency_ms: report.latency_ms,
        };
        let mut opts = crate::store::RecordOpts { expiry_warning_ms: monitor::expiry_warning_ms(), ..Default::default() };
        if let Some(policy) = self.monitor_policy() {
            opts.keep = policy.history;
            let failures = match report.status {
                crate::plugins::TestStatus::Indeterminate => c.monitor.failures.saturating_add(1),
                _ => 0,
            };
            let next = policy.interval_for(&plugin, &c).map(|iv| policy.next_due(crate::store::now_ms(), iv, failures));
            opts.schedule = Some((next, failures));
        }
        before_commit()?;
        self.store.record_test(&p.user, p.namespace, c.id, result, opts)?;
        if report.ok() {
            self.pin_on_first_use(p, &plugin, &c, &report)?;
        }
        Ok(TestView { ok: report.ok(), report })
    }

    /// After a successful test, fills each empty `[pins]` field from the test's facts (the
    /// SSH host key seen) and re-binds the secrets to it: from then on they only go there.
    fn pin_on_first_use(&self, p: &Principal, plugin: &Plugin, c: &Credential, report: &TestReport) -> Result<()> {
        let mut fields = c.fields.clone();
        let mut upd = CredentialUpdate::default();
        for (field, fact) in &plugin.manifest.pins {
            if fields.get(field).is_some_and(|v| !v.trim().is_empty()) {
                continue;
            }
            if let Some(value) = report.facts.get(fact).filter(|v| !v.trim().is_empty()) {
                fields.insert(field.clone(), value.clone());
                upd.fields.insert(field.clone(), Some(value.clone()));
            }
        }
        if upd.fields.is_empty() {
            return Ok(());
        }
        upd.binding = binding_of(plugin, c.environment.as_deref(), &fields);
        self.store.update_credential(&p.user, p.namespace, c.id, upd)?;
        Ok(())
    }

    /// One page of audit records, newest first: the caller's own, or (admins) another
    /// user's or everyone's. Security events about a caller (its probes of other users'
    /// ids) are shown to admins only. Bad filters are 422s naming the parameter. A page
    /// examines a bounded number of records (see [`Store::list_audit_page`]), so a
    /// short or empty page with a `next_cursor` means: keep paging.
    pub fn audit_log(&self, p: &Principal, req: AuditRequest) -> Result<AuditPage> {
        require_unbound(p, Scope::Read)?;
        let namespace = match (req.user.as_deref(), req.all) {
            (Some(_), true) => {
                return Err(invalid_field("all", "give either `user` or `all`, not both"));
            }
            (_, true) => {
                require_admin(p)?;
                None
            }
            (Some(u), false) if u != p.user => {
                require_admin(p)?;
                Some(self.store.get_user(u)?.namespace)
            }
            _ => Some(p.namespace),
        };
        let mut errors = Vec::new();
        let mut time = |field: &str, v: Option<&str>| {
            let v = v?;
            match humantime::parse_rfc3339_weak(v) {
                Ok(t) => t.duration_since(std::time::UNIX_EPOCH).ok().map(|d| d.as_millis() as u64).or(Some(0)),
                Err(_) => {
                    errors.push(FieldError {
                        field: field.into(),
                        message: "must be an RFC 3339 UTC time, e.g. 2026-12-01T08:00:00Z".into(),
                    });
                    None
                }
            }
        };
        let since = time("since", req.since.as_deref());
        let until = time("until", req.until.as_deref());
        let credential = match req.credential.as_deref() {
            Some(c) => match parse_id(c) {
                Ok(id) => Some(id),
                Err(_) => {
                    errors.push(FieldError { field: "credential".into(), message: "must be a credential id".into() });
                    None
                }
            },
            None => None,
        };
        if let Some(a) = req.action.as_deref() {
            if a.is_empty() || a.len() > 64 || !a.trim_end_matches('*').chars().all(|c| c.is_ascii_alphanumeric() || "._-".contains(c)) {
                errors.push(FieldError {
                    field: "action".into(),
                    message: "must be an action name such as `credential.update`, or a prefix ending in `*`".into(),
                });
            }
        }
        if !errors.is_empty() {
            return Err(ServiceError::InvalidFields(errors));
        }
        let query = AuditQuery {
            namespace,
            credential,
            action: req.action,
            since,
            until,
            hide_security: p.role != Role::Admin,
            cursor: req.cursor,
            limit: req.limit,
            // A scan still running when the request times out stops with the page so far
            // (which the timed-out caller never sees) instead of reading on for nobody.
            deadline: deadline(),
            ..AuditQuery::default()
        };
        Ok(self.store.list_audit_page(&query)?)
    }

    /// A live (not soft-deleted) credential of the caller.
    pub(crate) fn live(&self, p: &Principal, id: &str) -> Result<Credential> {
        let c = self.owned(p, id)?;
        if c.deleted_at.is_some() {
            return Err(ServiceError::NotFound);
        }
        Ok(c)
    }

    /// A credential of the caller (soft-deleted ones too) that a grant, if any, reaches.
    /// Every miss costs the same one read; one that names another user's credential is
    /// reported as a probe, after the answer's work is done (see [`probes`]).
    fn owned(&self, p: &Principal, id: &str) -> Result<Credential> {
        let id = parse_id(id)?;
        match self.store.find_credential(p.namespace, id)? {
            Lookup::Found(c) if grant_reaches(p, id).is_ok() => Ok(c),
            Lookup::Elsewhere(owner) => {
                self.probes.report(p, id, owner);
                Err(ServiceError::NotFound)
            }
            _ => Err(ServiceError::NotFound),
        }
    }

    /// The NotFound for a credential a caller could not reach, after checking (like
    /// [`Service::owned`]) whether the id is another user's: for callers that read the
    /// credential their own way (the proxy).
    pub(crate) fn not_found(&self, p: &Principal, id: CredentialId) -> ServiceError {
        if let Ok(Lookup::Elsewhere(owner)) = self.store.find_credential(p.namespace, id) {
            self.probes.report(p, id, owner);
        }
        ServiceError::NotFound
    }

    /// The stored credential with its secrets, bound for a plugin call (audited reveal).
    fn bound(&self, p: &Principal, plugin: &Plugin, c: &Credential, purpose: &str) -> Result<Bound> {
        Ok(Bound {
            environment: c.environment.clone(),
            fields: c.fields.clone(),
            secrets: self.secrets_of(p, plugin, c, purpose)?,
        })
    }

    /// The credential's secrets (an audited reveal), only if they were sealed for the
    /// destination the credential names now. A metadata edit made behind the service's
    /// back (in the database file) leaves them sealed for the old one: refused, nothing sent.
    fn secrets_of(&self, p: &Principal, plugin: &Plugin, c: &Credential, purpose: &str) -> Result<SecretMap> {
        // Handed to the caller: a reveal; anything else is the host's own use.
        let mut secrets = if purpose == REVEAL_PURPOSE {
            self.store.reveal(&p.user, p.namespace, c.id, purpose)?
        } else {
            self.store.unseal(&p.user, p.namespace, c.id, purpose)?
        };
        self.check_binding(p, plugin, c, &mut secrets, purpose)?;
        Ok(secrets)
    }

    /// Takes the sealed destination binding out of `secrets` and compares it with the
    /// credential's current destination fields.
    fn check_binding(&self, p: &Principal, plugin: &Plugin, c: &Credential, secrets: &mut SecretMap, purpose: &str) -> Result<()> {
        let sealed = secrets.remove(BINDING_KEY);
        let expected = binding_of(plugin, c.environment.as_deref(), &c.fields);
        // Credentials sealed before destination binding have none; they are bound at
        // their next secret change.
        if let (Some(sealed), Some(expected)) = (&sealed, &expected) {
            if sealed.expose_secret() != expected {
                tracing::warn!(credential = %c.id, "destination fields do not match the sealed binding; refusing to use the secrets");
                self.audit(p, Some(c.id), "credential.destination_mismatch", Outcome::Denied, purpose.to_string());
                return Err(ServiceError::DestinationMismatch);
            }
        }
        Ok(())
    }

    fn run_validate(
        &self,
        p: &Principal,
        cred: Option<CredentialId>,
        plugin: &Plugin,
        input: Bound,
    ) -> Result<std::result::Result<crate::plugins::Validated, Vec<FieldError>>> {
        if let Some(env) = &input.environment {
            let envs = &plugin.descriptor.environments;
            if !envs.is_empty() && !envs.contains(env) {
                return Ok(Err(vec![FieldError {
                    field: "environment".into(),
                    message: format!("must be one of: {}", envs.join(", ")),
                }]));
            }
        }
        let call = self.registry.runtime().validate(plugin, input);
        self.audit_events(p, cred, &call.events);
        Ok(call.result?)
    }

    /// Capability uses worth keeping: denials always, allowed network/secret uses too.
    /// One write transaction for all of a call's events (the runtime caps how many).
    fn audit_events(&self, p: &Principal, cred: Option<CredentialId>, events: &[CapabilityEvent]) {
        let entries: Vec<AuditEntry> = events
            .iter()
            .map(|e| {
                let outcome = if e.allowed { Outcome::Ok } else { Outcome::Denied };
                // A plugin reading a secret itself is named apart from the host filling one in.
                let action = match e.capability {
                    crate::plugins::Capability::Secrets => "plugin.secrets.reveal".to_string(),
                    c => format!("plugin.{c}"),
                };
                audit_entry(p, cred, &action, outcome, e.detail.clone())
            })
            .collect();
        if let Err(e) = self.store.append_audit_batch(entries) {
            tracing::error!(error = %e, "could not write audit records of a plugin call");
        }
    }

    fn audit(&self, p: &Principal, cred: Option<CredentialId>, action: &str, outcome: Outcome, detail: String) {
        if let Err(e) = self.store.append_audit(audit_entry(p, cred, action, outcome, detail)) {
            tracing::error!(error = %e, action, "could not write audit record");
        }
    }
}

/// Fields that decide where a type's secrets may be sent: every `field:` entry of its
/// allow-list, its `[use]` base-URL field, its pinned fields (the SSH host key), and the
/// environment for types that have environments (it picks the base URL).
pub fn destination_names(plugin: &Plugin) -> Vec<String> {
    let mut out = plugin.manifest.destination_fields();
    if !plugin.descriptor.environments.is_empty() {
        out.push("environment".into());
    }
    out
}

/// The destination binding: SHA-256 over the destination fields' values (length-prefixed,
/// by name). `None` for a type whose secrets go nowhere a field decides.
fn binding_of(plugin: &Plugin, environment: Option<&str>, fields: &BTreeMap<String, String>) -> Option<String> {
    let names = destination_names(plugin);
    if names.is_empty() {
        return None;
    }
    let mut h = sha2::Sha256::new();
    h.update(b"credhost destination v1\n");
    for name in &names {
        let value = if name == "environment" { environment } else { fields.get(name).map(String::as_str) };
        let value = value.unwrap_or("");
        h.update(format!("{}:{name}={}:", name.len(), value.len()).as_bytes());
        h.update(value.as_bytes());
    }
    Some(crate::plugins::runtime::hex(&h.finalize()))
}

/// A grant sees its own credential only; others do not exist for it (404).
fn grant_reaches(p: &Principal, id: CredentialId) -> Result<()> {
    match &p.grant {
        Some(g) if g.credential != id => Err(ServiceError::NotFound),
        _ => Ok(()),
    }
}

/// An audit record of `p` acting in its namespace, on `cred` if given.
fn audit_entry(p: &Principal, cred: Option<CredentialId>, action: &str, outcome: Outcome, detail: String) -> AuditEntry {
    let mut entry = AuditEntry::ok(&p.user, action);
    entry.namespace = Some(p.namespace);
    entry.credential = cred;
    entry.outcome = outcome;
    entry.detail = detail;
    entry
}

/// Files a caller's field under the type's notion of secret; unknown names are kept
/// secret (the plugin will reject them, and must not see them echoed).
fn put_field(plugin: &Plugin, into: &mut Bound, name: String, value: SecretString) {
    match plugin.descriptor.field(&name) {
        Some(spec) if !spec.secret => {
            into.fields.insert(name, value.expose_secret().to_string());
        }
        _ => {
            into.secrets.insert(name, value);
        }
    }
}

fn require_admin(p: &Principal) -> Result<()> {
    if p.role != Role::Admin {
        return Err(ServiceError::Forbidden);
    }
    require(p, Scope::Admin)
}

/// The one scope check: every operation names the scope it needs.
fn require(p: &Principal, scope: Scope) -> Result<()> {
    if p.has(scope) {
        Ok(())
    } else {
        Err(ServiceError::InsufficientScope(scope))
    }
}

/// Like [`require`], and refused to grants (they are bound to one credential).
fn require_unbound(p: &Principal, scope: Scope) -> Result<()> {
    if p.grant.is_some() {
        return Err(ServiceError::GrantOnly);
    }
    require(p, scope)
}

/// A credential id in its one canonical spelling (lowercase, hyphenated, as the API
/// returns it); any other spelling of the same UUID (uppercase, braces, `urn:uuid:`, no
/// hyphens) finds nothing.
fn parse_id(id: &str) -> Result<CredentialId> {
    let parsed: CredentialId = id.parse().map_err(|_| ServiceError::NotFound)?;
    if parsed.to_string() != id {
        return Err(ServiceError::NotFound);
    }
    Ok(parsed)
}

/// A name and tags in canonical form (see [`crate::names`]), with every problem of both.
fn canonical_name_and_tags(
    name: Option<&str>,
    tags: Option<&[String]>,
) -> Result<(Option<String>, Option<Vec<String>>)> {
    let mut errors = Vec::new();
    let name = name.and_then(|n| crate::names::name(n).map_err(|e| errors.push(e)).ok());
    let tags = tags.and_then(|t| crate::names::tags(t).map_err(|e| errors.extend(e)).ok());
    if errors.is_empty() {
        Ok((name, tags))
    } else {
        Err(ServiceError::InvalidFields(errors))
    }
}

fn invalid_field(field: &str, message: &str) -> ServiceError {
    ServiceError::InvalidFields(vec![FieldError { field: field.into(), message: message.into() }])
}

fn verdict_of(status: crate::plugins::TestStatus) -> TestVerdict {
    match status {
        crate::plugins::TestStatus::Valid => TestVerdict::Valid,
        crate::plugins::TestStatus::Invalid => TestVerdict::Invalid,
        crate::plugins::TestStatus::Indeterminate => TestVerdict::Indeterminate,
    }
}

/// Input of [`Service::audit_log`]: the API's query parameters, still as text.
#[derive(Debug, Default, Clone)]
pub struct AuditRequest {
    /// Another user's records (admin only).
    pub user: Option<String>,
    /// Every user's records and system records (admin only).
    pub all: bool,
    pub credential: Option<String>,
    pub action: Option<String>,
    /// RFC 3339, inclusive.
    pub since: Option<String>,
    /// RFC 3339, exclusive.
    pub until: Option<String>,
    pub cursor: Option<String>,
    pub limit: usize,
}

/// The longest token lifetime accepted: 10 years (a bound, so an absurd value is a clear
/// 422 instead of an expiry no date format can show).
pub const MAX_TOKEN_LIFETIME_SECS: u64 = 10 * 366 * 24 * 3600;

/// A token's expiry (unix ms) from `expires_in_secs`, refused with a field error naming
/// `expires_in_secs` when zero or over [`MAX_TOKEN_LIFETIME_SECS`]. Shared by API and CLI.
pub fn token_expiry(expires_in_secs: Option<u64>) -> Result<Option<u64>> {
    let Some(secs) = expires_in_secs else { return Ok(None) };
    if secs == 0 || secs > MAX_TOKEN_LIFETIME_SECS {
        return Err(ServiceError::InvalidFields(vec![FieldError {
            field: "expires_in_secs".into(),
            message: format!("must be between 1 and {MAX_TOKEN_LIFETIME_SECS} seconds (10 years)"),
        }]));
    }
    Ok(Some(crate::store::now_ms() + secs * 1000))
}

/// Unix ms as RFC 3339 UTC with milliseconds. Total: RFC 3339 has four-digit years, so
/// anything after 9999-12-31T23:59:59.999Z is shown as that instant (the formatter
/// panics beyond it).
pub fn rfc3339(ms: u64) -> String {
    const MAX_MS: u64 = 253_402_300_799_999;
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms.min(MAX_MS));
    humantime::format_rfc3339_millis(t).to_string()
}

/// A loaded plugin as shown to operators.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct PluginView {
    pub id: String,
    pub version: String,
    /// `builtin:<name>` or the `.wasm` path.
    pub origin: String,
    pub sha256: String,
    pub capabilities: Vec<String>,
    pub allowed_hosts: Vec<String>,
    pub test_read_only: bool,
}

/// Loaded plugins and the ones refused at the last (re)load.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct PluginsView {
    pub plugins: Vec<PluginView>,
    pub problems: Vec<crate::plugins::LoadProblem>,
    /// E.g. overrides for types not installed.
    pub warnings: Vec<crate::plugins::LoadProblem>,
}

impl Service {
    /// Loaded plugins and load problems (admin only).
    pub fn admin_plugins(&self, p: &Principal) -> Result<PluginsView> {
        require_admin(p)?;
        Ok(self.plugins_view())
    }

    /// Re-reads the config's plugin overrides and the plugin directory and swaps the
    /// catalog (admin only, audited). A config that no longer loads, or an override a
    /// built-in refuses, fails the reload (409, the problem named) and changes nothing.
    pub fn admin_reload_plugins(&self, p: &Principal) -> Result<crate::plugins::LoadReport> {
        require_admin(p)?;
        let report = match self.registry.reload() {
            Ok(report) => report,
            Err(PluginError::Load { origin, message }) => {
                let mut entry = AuditEntry::ok(&p.user, "plugins.reload");
                entry.outcome = Outcome::Failed;
                entry.detail = format!("{origin}: {message}");
                if let Err(e) = self.store.append_audit(entry) {
                    tracing::error!(error = %e, "could not write audit record");
                }
                return Err(ServiceError::Conflict(format!("reload refused, nothing changed: {origin}: {message}")));
            }
            Err(e) => return Err(e.into()),
        };
        let detail = format!(
            "{} loaded, {} refused, {} warnings",
            report.loaded.len(),
            report.problems.len(),
            report.warnings.len()
        );
        let mut entry = AuditEntry::ok(&p.user, "plugins.reload");
        entry.detail = detail;
        if let Err(e) = self.store.append_audit(entry) {
            tracing::error!(error = %e, "could not write audit record");
        }
        Ok(report)
    }

    pub fn plugins_view(&self) -> PluginsView {
        let plugins = self
            .registry
            .list()
            .iter()
            .map(|p| PluginView {
                id: p.manifest.id.clone(),
                version: p.manifest.version.clone(),
                origin: p.origin.clone(),
                sha256: p.sha256.clone(),
                capabilities: p.manifest.capabilities.iter().map(|c| c.to_string()).collect(),
                allowed_hosts: p.manifest.allowed_hosts.iter().map(|h| h.to_string()).collect(),
                test_read_only: p.manifest.test_read_only,
            })
            .collect();
        PluginsView { plugins, problems: self.registry.problems(), warnings: self.registry.warnings() }
    }
}
