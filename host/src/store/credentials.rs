//! Credentials: metadata, the per-namespace name index, and sealed secret versions.

use std::collections::{BTreeMap, BTreeSet};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use super::kv::Table;
use secrecy::ExposeSecret;
use serde::{Deserialize, Serialize};

use super::audit::{self, AuditEntry};
use super::error::{Result, StoreError};
use super::schema::{
    dec, enc, CredentialId, NamespaceId, CREDENTIALS, NAMES, NAMESPACES, VERSIONS,
};
use super::{now_ms, Store, Txn};
use crate::crypto::{random_bytes, SecretMap};

const MAX_VALUE_LEN: usize = 64 * 1024;

/// Result of the last live test of a credential.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TestResult {
    /// Unix ms.
    pub at: u64,
    pub ok: bool,
    pub summary: String,
    /// The type's verdict; absent in records written before it was kept (see [`TestResult::status`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verdict: Option<TestVerdict>,
    /// What started the test (records written before it was kept read as manual).
    #[serde(default)]
    pub trigger: TestTrigger,
    /// Non-secret facts the test learned (scrubbed by the host before they get here).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub facts: BTreeMap<String, String>,
    #[serde(default)]
    pub latency_ms: u64,
}

/// What started a live test.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TestTrigger {
    /// A caller asked (API, CLI).
    #[default]
    Manual,
    /// The monitoring scheduler.
    Scheduled,
    /// Testing a pending version before promoting it.
    Rotation,
}

impl TestResult {
    /// The verdict, derived from `ok` for records that predate it (`indeterminate` was
    /// stored as not ok, so those read as `invalid`).
    pub fn status(&self) -> TestVerdict {
        self.verdict.unwrap_or(if self.ok { TestVerdict::Valid } else { TestVerdict::Invalid })
    }
}

/// A live test's verdict, as stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TestVerdict {
    Valid,
    Invalid,
    Indeterminate,
}

/// The listing filter on the last live test: a verdict, or never tested.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TestStatusFilter {
    Is(TestVerdict),
    Untested,
}

impl std::str::FromStr for TestStatusFilter {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        Ok(match s {
            "valid" => TestStatusFilter::Is(TestVerdict::Valid),
            "invalid" => TestStatusFilter::Is(TestVerdict::Invalid),
            "indeterminate" => TestStatusFilter::Is(TestVerdict::Indeterminate),
            "untested" => TestStatusFilter::Untested,
            _ => return Err("must be one of: valid, invalid, indeterminate, untested".into()),
        })
    }
}

/// Which credentials a listing includes by their soft-deletion state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Deleted {
    /// Live ones only.
    #[default]
    Exclude,
    /// Live and soft-deleted.
    Include,
    /// Soft-deleted ones only (the restore / purge view).
    Only,
}

/// A secret field that is set: never its value, only a keyed fingerprint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecretField {
    /// HMAC under the namespace's fingerprint key (see [`crate::crypto::FingerprintKey`]).
    pub fingerprint: String,
    /// The version in which this value was last set.
    pub version: u32,
}

/// Credential metadata: everything except secret values. Safe to log and return.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Credential {
    pub id: CredentialId,
    pub namespace: NamespaceId,
    pub name: String,
    /// The credential type id (a plugin's type).
    #[serde(rename = "type")]
    pub kind: String,
    pub description: String,
    pub tags: Vec<String>,
    pub environment: Option<String>,
    /// Unix ms.
    pub created_at: u64,
    pub updated_at: u64,
    /// Set while soft-deleted.
    pub deleted_at: Option<u64>,
    pub last_test: Option<TestResult>,
    /// Current secret version (1 on creation; a new number whenever secrets change,
    /// a rotation promotes, or an older version is promoted back).
    pub version: u32,
    /// A rotation's version waiting for (or having failed) its test; see `store::versions`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending_version: Option<u32>,
    /// Non-secret field values.
    pub fields: BTreeMap<String, String>,
    /// Secret fields that are set.
    pub secrets: BTreeMap<String, SecretField>,
    /// Schedule, the owner's monitoring override, and the last reported health.
    #[serde(default, skip_serializing_if = "super::MonitorState::is_default")]
    pub monitor: super::MonitorState,
}

/// Input of [`Store::create_credential`]. `Debug` redacts the secret values.
#[derive(Debug, Default, Clone)]
pub struct NewCredential {
    pub name: String,
    pub kind: String,
    pub description: String,
    pub tags: Vec<String>,
    pub environment: Option<String>,
    pub fields: BTreeMap<String, String>,
    pub secrets: SecretMap,
    /// Destination binding sealed with the secrets (see [`BINDING_KEY`]).
    pub binding: Option<String>,
    /// The monitoring state it starts with: a first due time set here is written with the
    /// credential (and the due index) in the create's one transaction.
    pub monitor: super::MonitorState,
}

/// Name under which a credential's destination binding (a digest of the fields that
/// decide where its secrets may be sent) is sealed inside the secrets blob. Not a valid
/// field name, so it never collides with one. [`Store::reveal`] returns it with the
/// secrets; the service compares it with the credential's current destination, so a
/// metadata edit made behind the API's back cannot redirect a secret.
pub const BINDING_KEY: &str = "\u{0}destination";

impl NewCredential {
    /// A credential with a name and type and nothing else yet.
    pub fn new(name: &str, kind: &str) -> Self {
        NewCredential {
            name: name.to_owned(),
            kind: kind.to_owned(),
            ..Default::default()
        }
    }
}

/// A partial update for [`Store::update_credential`]; `None`/empty means "leave as is".
/// Changing or clearing any secret writes a new version holding the merged secrets.
#[derive(Debug, Default, Clone)]
pub struct CredentialUpdate {
    pub name: Option<String>,
    pub description: Option<String>,
    pub tags: Option<Vec<String>>,
    /// `Some(None)` clears the environment.
    pub environment: Option<Option<String>>,
    /// Non-secret fields: `Some(v)` sets, `None` removes.
    pub fields: BTreeMap<String, Option<String>>,
    /// Secret fields to set or replace; others keep their value.
    pub secrets: SecretMap,
    /// Secret fields to remove (names not set are ignored); applied before `secrets`.
    pub clear_secrets: BTreeSet<String>,
    /// A new destination binding: re-seals the secrets under it (a new version).
    pub binding: Option<String>,
}

/// Query for [`Store::list_credentials`]. Results are ordered by name; every set filter
/// must match. Name filters compare canonical (NFC) text: pass them through
/// [`crate::names::filter`] first.
#[derive(Debug, Clone, Default)]
pub struct ListQuery {
    /// Only this type.
    pub kind: Option<String>,
    /// Only credentials carrying this tag.
    pub tag: Option<String>,
    /// Only the credential with exactly this name.
    pub name: Option<String>,
    /// Only names starting with this text (read as a range of the name index).
    pub name_prefix: Option<String>,
    /// Only credentials whose last live test has this outcome (or that were never tested).
    pub status: Option<TestStatusFilter>,
    /// Only credentials with this health now (see [`super::history::health_of`]).
    pub health: Option<super::Health>,
    /// The warning window before a reported expiry, for `health`.
    pub expiry_warning_ms: u64,
    /// Shorthand for `deleted: Deleted::Include` (kept for existing callers).
    pub include_deleted: bool,
    /// Live, soft-deleted or both; `include_deleted` widens `Exclude` to `Include`.
    pub deleted: Deleted,
    /// Page size (0 means 50; capped at 1000).
    pub limit: usize,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

/// One page of a listing.
#[derive(Debug, Clone)]
pub struct Page {
    pub items: Vec<Credential>,
    /// Pass as [`ListQuery::cursor`] for the next page; `None` on the last page.
    pub next_cursor: Option<String>,
    /// How many credentials match the query's filters over all pages (cursor ignored).
    pub total: usize,
}

/// Where a credential id leads, for the service's not-found handling.
#[derive(Debug)]
pub enum Lookup {
    /// The caller's own (soft-deleted or not).
    Found(Credential),
    /// No credential has this id.
    Missing,
    /// It exists in another namespace: to the caller, exactly like `Missing`.
    Elsewhere(NamespaceId),
}

/// The parts of a stored credential a listing filter reads: decoding only these lets a
/// listing count every match without building each credential.
#[derive(Deserialize)]
struct Listed {
    #[serde(rename = "type")]
    kind: String,
    tags: Vec<String>,
    deleted_at: Option<u64>,
    last_test: Option<TestResult>,
}

/// What a listing filter reads, borrowed from a [`Listed`] or a whole [`Credential`].
struct Filtered<'a> {
    kind: &'a str,
    tags: &'a [String],
    deleted_at: Option<u64>,
    last_test: Option<&'a TestResult>,
}

impl Listed {
    fn filtered(&self) -> Filtered<'_> {
        Filtered { kind: &self.kind, tags: &self.tags, deleted_at: self.deleted_at, last_test: self.last_test.as_ref() }
    }
}

impl Credential {
    fn filtered(&self) -> Filtered<'_> {
        Filtered { kind: &self.kind, tags: &self.tags, deleted_at: self.deleted_at, last_test: self.last_test.as_ref() }
    }
}

impl ListQuery {
    fn deleted(&self) -> Deleted {
        match self.deleted {
            Deleted::Exclude if self.include_deleted => Deleted::Include,
            d => d,
        }
    }

    fn keeps(&self, c: Filtered<'_>, now: u64) -> bool {
        let deleted_ok = match self.deleted() {
            Deleted::Exclude => c.deleted_at.is_none(),
            Deleted::Include => true,
            Deleted::Only => c.deleted_at.is_some(),
        };
        let status_ok = match self.status {
            None => true,
            Some(TestStatusFilter::Untested) => c.last_test.is_none(),
            Some(TestStatusFilter::Is(v)) => c.last_test.is_some_and(|t| t.status() == v),
        };
        let health_ok = self
            .health
            .is_none_or(|h| super::history::health_of(c.last_test, now, self.expiry_warning_ms) == h);
        deleted_ok
            && status_ok
            && health_ok
            && self.kind.as_ref().is_none_or(|t| c.kind == t)
            && self.tag.as_ref().is_none_or(|t| c.tags.contains(t))
    }
}

fn invalid(field: &str, message: impl Into<String>) -> StoreError {
    StoreError::InvalidField { field: field.to_owned(), message: message.into() }
}

fn field_error(e: crate::plugins::FieldError) -> StoreError {
    StoreError::InvalidField { field: e.field, message: e.message }
}

fn check_text(field: &str, v: &str, max: usize) -> Result<()> {
    if v.is_empty() || v.len() > max || v.chars().any(char::is_control) || v.trim() != v {
        return Err(invalid(
            field,
            format!("must be 1-{max} bytes without control characters or surrounding spaces"),
        ));
    }
    Ok(())
}

fn check_field_name(v: &str) -> Result<()> {
    if v.is_empty()
        || v.len() > 64
        || !v
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
    {
        return Err(invalid(v, "field names are 1-64 characters of A-Z a-z 0-9 _ - ."));
    }
    Ok(())
}

fn check_value_len(name: &str, len: usize) -> Result<()> {
    if len > MAX_VALUE_LEN {
        return Err(invalid(name, format!("is longer than {MAX_VALUE_LEN} bytes")));
    }
    Ok(())
}

/// Canonical tags (see [`crate::names::tags`]); the first problem names its index.
fn canonical_tags(tags: &[String]) -> Result<Vec<String>> {
    crate::names::tags(tags).map_err(|mut e| field_error(e.swap_remove(0)))
}

/// The error for a name already in the index: says whether a soft-deleted credential
/// holds it (then restore or purge frees it).
fn name_taken(
    creds: &Table<'_, u128, &'static [u8]>,
    ns: NamespaceId,
    holder: u128,
    name: String,
) -> Result<StoreError> {
    let holder = load(creds, ns, CredentialId::from_key(holder))?;
    Ok(StoreError::NameTaken { name, deleted: holder.deleted_at.map(|_| holder.id) })
}

/// Records a listing reads at once.
const LIST_CHUNK: usize = 128;

/// Loads a credential of `ns` (deleted or not). Another namespace's id is `NotFound`.
pub(super) fn load(
    table: &Table<'_, u128, &'static [u8]>,
    ns: NamespaceId,
    id: CredentialId,
) -> Result<Credential> {
    let cred: Credential = match table.get(id.key())? {
        Some(v) => dec(v.value(), "credential")?,
        None => return Err(StoreError::NotFound),
    };
    if cred.namespace != ns {
        return Err(StoreError::NotFound);
    }
    Ok(cred)
}

/// Like [`load`], but a soft-deleted credential is `NotFound`.
pub(super) fn load_live(
    table: &Table<'_, u128, &'static [u8]>,
    ns: NamespaceId,
    id: CredentialId,
) -> Result<Credential> {
    let cred = load(table, ns, id)?;
    if cred.deleted_at.is_some() {
        return Err(StoreError::NotFound);
    }
    Ok(cred)
}

/// A UUIDv7: the creation millisecond, then 74 bits from the OS's random source (no
/// counter, so an id is no easier to guess than 74 random bits). Time-ordered keys put a
/// burst of creates in the rightmost pages of each table: a shared transaction of 64
/// creates writes a few pages per table instead of one per create (random v4 ids capped
/// group commit at ~5,500 creates/s here, see docs/architecture.md).
fn new_credential_id() -> Result<CredentialId> {
    let mut b = [0u8; 10];
    random_bytes(&mut b)?;
    Ok(CredentialId::from_uuid(
        uuid::Builder::from_unix_timestamp_millis(now_ms(), &b).into_uuid(),
    ))
}

/// A create's credential: sealed before its transaction, or still to seal in it.
enum Draft {
    Sealed(Sealed),
    Open(NewCredential),
}

/// A new credential ready to write: its record, encoded record, sealed version 1 and the
/// audit detail (all made before the one writer's turn where possible).
#[derive(Clone)]
struct Sealed {
    cred: Credential,
    record: Vec<u8>,
    blob: Vec<u8>,
    detail: String,
}

/// The new credential `id` with version 1's fingerprints, and its sealed secrets.
fn seal_new(dek: &crate::crypto::DataKey, ns: NamespaceId, id: CredentialId, new: NewCredential) -> Result<Sealed> {
    let fpk = dek.fingerprint_key();
    let secrets = new
        .secrets
        .iter()
        .map(|(k, v)| (k.clone(), SecretField { fingerprint: fpk.fingerprint(id.as_uuid(), k, v), version: 1 }))
        .collect();
    let mut sealed = new.secrets.clone();
    if let Some(b) = &new.binding {
        sealed.insert(BINDING_KEY.into(), secrecy::SecretString::from(b.clone()));
    }
    let blob = dek.seal_secrets(ns.as_uuid(), id.as_uuid(), 1, &sealed)?;
    let now = now_ms();
    let cred = Credential {
        id,
        namespace: ns,
        name: new.name,
        kind: new.kind,
        description: new.description,
        tags: new.tags,
        environment: new.environment,
        created_at: now,
        updated_at: now,
        deleted_at: None,
        last_test: None,
        monitor: new.monitor,
        version: 1,
        pending_version: None,
        fields: new.fields,
        secrets,
    };
    let detail = format!("name={:?} type={} secrets={:?}", cred.name, cred.kind, cred.secrets.keys().collect::<Vec<_>>());
    Ok(Sealed { record: enc(&cred), cred, blob, detail })
}

/// The secrets of `cred`'s current version, opened with its namespace's data key.
fn open_current(
    versions: &Table<'_, (u128, u32), &'static [u8]>,
    dek: &crate::crypto::DataKey,
    cred: &Credential,
) -> Result<SecretMap> {
    let (id, version) = (cred.id, cred.version);
    let blob = versions
        .get((id.key(), version))?
        .ok_or_else(|| StoreError::Corrupt(format!("credential {id} has no version {version}")))?;
    Ok(dek.open_secrets(cred.namespace.as_uuid(), id.as_uuid(), version, blob.value())?)
}

/// The body of [`Store::update_credential`] in a (batched) write transaction: every check
/// and the sealing of a new version first, then the writes.
fn apply_update(
    store: &Store,
    txn: &Txn,
    actor: &str,
    ns: NamespaceId,
    id: CredentialId,
    upd: CredentialUpdate,
) -> Result<Credential> {
    let mut changed: Vec<String> = Vec::new();
    let mut creds = txn.open_table(CREDENTIALS)?;
    let mut cred = load_live(&creds, ns, id)?;
    let old_name = cred.name.clone();
    let rename = upd.name.filter(|n| *n != cred.name);
    if let Some(name) = &rename {
        if let Some(holder) = txn.open_table(NAMES)?.get((ns.key(), name.as_str()))?.map(|v| v.value()) {
            return Err(name_taken(&creds, ns, holder, name.clone())?);
        }
        cred.name = name.clone();
        changed.push("name".into());
    }
    if let Some(d) = upd.description {
        cred.description = d;
        changed.push("description".into());
    }
    if let Some(t) = upd.tags {
        cred.tags = t;
        changed.push("tags".into());
    }
    if let Some(e) = upd.environment {
        cred.environment = e;
        changed.push("environment".into());
    }
    for (k, v) in upd.fields {
        match v {
            Some(v) => {
                if cred.secrets.contains_key(&k) && !upd.clear_secrets.contains(&k) {
                    return Err(invalid(&k, "is a secret field"));
                }
                cred.fields.insert(k.clone(), v);
            }
            None => {
                cred.fields.remove(&k);
            }
        }
        changed.push(format!("fields.{k}"));
    }
    let clears: Vec<String> = upd.clear_secrets.into_iter().filter(|k| cred.secrets.contains_key(k)).collect();
    // A new version's number and sealed secrets, and the version it replaces.
    let mut sealed = None;
    if !upd.secrets.is_empty() || !clears.is_empty() || upd.binding.is_some() {
        if let Some(k) = upd.secrets.keys().find(|k| cred.fields.contains_key(*k)) {
            return Err(invalid(k, "is a non-secret field"));
        }
        let dek = store.dek_in(&txn.open_table(NAMESPACES)?, ns)?;
        let versions = txn.open_table(VERSIONS)?;
        let mut merged = open_current(&versions, &dek, &cred)?;
        let version = super::versions::next_number(&versions, id)?;
        for k in &clears {
            merged.remove(k);
            cred.secrets.remove(k);
            changed.push(format!("secrets.{k}(cleared)"));
        }
        let fpk = dek.fingerprint_key();
        for (k, v) in upd.secrets {
            cred.secrets
                .insert(k.clone(), SecretField { fingerprint: fpk.fingerprint(id.as_uuid(), &k, &v), version });
            changed.push(format!("secrets.{k}"));
            merged.insert(k, v);
        }
        if let Some(b) = upd.binding {
            merged.insert(BINDING_KEY.into(), secrecy::SecretString::from(b));
            changed.push("destination".into());
        }
        let blob = dek.seal_secrets(ns.as_uuid(), id.as_uuid(), version, &merged)?;
        sealed = Some((version, blob, cred.version));
        cred.version = version;
        // A pending rotation was merged with the old secrets: superseded.
        cred.pending_version = None;
    }
    cred.updated_at = now_ms();
    // Checked and sealed: an error from here on is the storage's.
    txn.writing();
    if rename.is_some() {
        let mut names = txn.open_table(NAMES)?;
        names.remove((ns.key(), old_name.as_str()))?;
        names.insert((ns.key(), cred.name.as_str()), id.key())?;
    }
    let mut replaced = None;
    if let Some((version, blob, old)) = sealed {
        txn.open_table(VERSIONS)?.insert((id.key(), version), blob.as_slice())?;
        replaced = Some(old);
    }
    creds.insert(id.key(), enc(&cred).as_slice())?;
    drop(creds);
    let destroyed = match replaced {
        Some(r) => super::versions::record_current(txn, &cred, actor, super::versions::VersionReason::Update, Some(r))?,
        None => Vec::new(),
    };
    let mut detail = format!("version={} changed={changed:?}", cred.version);
    if !destroyed.is_empty() {
        detail.push_str(&format!(" destroyed_versions={destroyed:?}"));
    }
    audit::append(txn, AuditEntry::ok(actor, "credential.update").ns(ns).cred(id).detail(detail))?;
    Ok(cred)
}

impl Store {
    /// Creates a credential in `ns`: metadata, name index entry, sealed version 1 and the
    /// audit record, in one transaction. Names are unique per namespace.
    pub fn create_credential(
        &self,
        actor: &str,
        ns: NamespaceId,
        mut new: NewCredential,
    ) -> Result<Credential> {
        new.name = crate::names::name(&new.name).map_err(field_error)?;
        check_text("type", &new.kind, 64)?;
        new.tags = canonical_tags(&new.tags)?;
        if let Some(env) = &new.environment {
            check_text("environment", env, 64)?;
        }
        for (k, v) in &new.fields {
            check_field_name(k)?;
            check_value_len(k, v.len())?;
        }
        for (k, v) in &new.secrets {
            check_field_name(k)?;
            check_value_len(k, v.expose_secret().len())?;
            if new.fields.contains_key(k) {
                return Err(invalid(k, "is given both as secret and non-secret"));
            }
        }
        let id = new_credential_id()?;
        let actor = actor.to_owned();
        // On redb the data key is read and the secrets sealed before the batch, outside
        // the one writer's turn (a data key never changes; rotation only re-wraps it);
        // PostgreSQL reads the key in the operation's own transaction.
        let draft = match self.is_shared() {
            true => Draft::Open(new),
            false => {
                let snap = self.begin_read_in(ns)?;
                let dek = snap.dek_in(&snap.open_table(NAMESPACES)?, ns)?;
                Draft::Sealed(seal_new(&dek, ns, id, new)?)
            }
        };
        // Creates come in bursts: a queue of them runs in one transaction (see `batch`).
        self.write_batched(ns, move |store, txn| {
            // Borrowed, not taken: a batched operation may run again (see `batch`).
            let sealed = match &draft {
                Draft::Sealed(sealed) => std::borrow::Cow::Borrowed(sealed),
                Draft::Open(new) => {
                    let dek = store.dek_in(&txn.open_table(NAMESPACES)?, ns)?;
                    std::borrow::Cow::Owned(seal_new(&dek, ns, id, new.clone())?)
                }
            };
            let Sealed { cred, record, blob, detail } = sealed.as_ref();
            let mut names = txn.open_table(NAMES)?;
            if let Some(holder) = names.get((ns.key(), cred.name.as_str()))?.map(|v| v.value()) {
                return Err(name_taken(&txn.open_table(CREDENTIALS)?, ns, holder, cred.name.clone())?);
            }
            // Checked and sealed: an error from here on is the storage's.
            txn.writing();
            txn.open_table(CREDENTIALS)?.insert(id.key(), record.as_slice())?;
            names.insert((ns.key(), cred.name.as_str()), id.key())?;
            txn.open_table(VERSIONS)?
                .insert((id.key(), 1u32), blob.as_slice())?;
            super::history::reschedule(txn, id, None, cred.monitor.next_test_at)?;
            super::versions::record_current(txn, cred, &actor, super::versions::VersionReason::Create, None)?;
            audit::append(
                txn,
                AuditEntry::ok(&actor, "credential.create")
                    .ns(ns)
                    .cred(id)
                    .detail(detail.clone()),
            )?;
            Ok(cred.clone())
        })
    }

    /// Metadata of a credential in `ns`, soft-deleted ones included (see `deleted_at`).
    pub fn get_credential(&self, ns: NamespaceId, id: CredentialId) -> Result<Credential> {
        let txn = self.begin_read_in(ns)?;
        let creds = txn.open_table(CREDENTIALS)?;
        load(&creds, ns, id)
    }

    /// Where `id` leads from `ns`: the caller's credential, nothing, or another
    /// namespace's credential (which callers must treat exactly like nothing).
    pub fn find_credential(&self, ns: NamespaceId, id: CredentialId) -> Result<Lookup> {
        // The host's scope: telling a probe of another namespace's id from a missing one
        // reads across namespaces (and returns no more than the owner's namespace id).
        let txn = self.begin_read()?;
        let creds = txn.open_table(CREDENTIALS)?;
        let cred: Credential = match creds.get(id.key())? {
            Some(v) => dec(v.value(), "credential")?,
            None => return Ok(Lookup::Missing),
        };
        Ok(if cred.namespace == ns { Lookup::Found(cred) } else { Lookup::Elsewhere(cred.namespace) })
    }

    /// One page of the credentials of `ns`, ordered by name; every credential appears
    /// exactly once across the pages of an unchanged namespace. `total` counts every
    /// match, so each page reads the whole filtered range of the name index (only the
    /// page's own credentials are decoded in full).
    pub fn list_credentials(&self, ns: NamespaceId, query: &ListQuery) -> Result<Page> {
        let page = self.list_credentials_within(ns, query, usize::MAX)?;
        Ok(page.expect("no listing has more than usize::MAX names"))
    }

    /// [`Store::list_credentials`] when at most `max_names` names are in the query's name
    /// range, else `None` having read only those names (so a caller can tell a quick
    /// listing from a long one before doing the long one).
    pub fn list_credentials_within(&self, ns: NamespaceId, query: &ListQuery, max_names: usize) -> Result<Option<Page>> {
        let limit = match query.limit {
            0 => 50,
            n => n.min(1000),
        };
        let bad_cursor = || invalid("cursor", "is not a cursor this listing returned");
        let after = match &query.cursor {
            Some(c) => {
                let raw = URL_SAFE_NO_PAD.decode(c).map_err(|_| bad_cursor())?;
                Some(String::from_utf8(raw).map_err(|_| bad_cursor())?)
            }
            None => None,
        };
        let txn = self.begin_read_in(ns)?;
        let names = txn.open_table(NAMES)?;
        let creds = txn.open_table(CREDENTIALS)?;
        // The range of the index the name filters allow: an exact name is a one-key range.
        let from = query.name.as_deref().or(query.name_prefix.as_deref()).unwrap_or("");
        let in_range = |name: &str| {
            query.name.as_ref().is_none_or(|n| name == n)
                && query.name_prefix.as_ref().is_none_or(|p| name.starts_with(p.as_str()))
        };
        let mut items = Vec::new();
        let mut next_cursor = None;
        let mut total = 0;
        let now = now_ms();
        // The names first, then their records a chunk at a time (one statement per chunk on
        // PostgreSQL).
        let mut indexed: Vec<(String, u128)> = Vec::new();
        for row in names.range::<(u128, &str)>((ns.key(), from)..)? {
            let (k, v) = row?;
            let (row_ns, name) = k.value();
            if row_ns != ns.key() || !in_range(name) {
                break;
            }
            if indexed.len() == max_names {
                return Ok(None);
            }
            indexed.push((name.to_owned(), v.value()));
        }
        // In chunks, so a page holds a chunk's records at a time, not the whole namespace's.
        for chunk in indexed.chunks(LIST_CHUNK) {
            let ids: Vec<u128> = chunk.iter().map(|(_, id)| *id).collect();
            for ((name, _), raw) in chunk.iter().zip(creds.get_many(&ids)?) {
                let name = name.as_str();
                let missing = || StoreError::Corrupt(format!("name index points to a missing credential ({name:?})"));
                let raw = raw.ok_or_else(missing)?;
                let past_cursor = after.as_deref().is_none_or(|a| name > a);
                // One that may go on the page is decoded whole, once; the others only as
                // far as the filter reads.
                if past_cursor && items.len() < limit {
                    let cred: Credential = dec(raw.value(), "credential")?;
                    if !query.keeps(cred.filtered(), now) {
                        continue;
                    }
                    if cred.namespace != ns {
                        return Err(missing());
                    }
                    total += 1;
                    items.push(cred);
                    continue;
                }
                let listed: Listed = dec(raw.value(), "credential")?;
                if !query.keeps(listed.filtered(), now) {
                    continue;
                }
                total += 1;
                if past_cursor {
                    // There is at least one more: the page ends at the last item taken.
                    if next_cursor.is_none() {
                        let last: &Credential = items.last().expect("limit >= 1");
                        next_cursor = Some(URL_SAFE_NO_PAD.encode(last.name.as_bytes()));
                    }
                }
            }
        }
        Ok(Some(Page { items, next_cursor, total }))
    }

    /// Applies a partial update to a live credential. Secret changes write version N+1
    /// with the merged secret set (untouched secrets carried over); old versions stay.
    pub fn update_credential(
        &self,
        actor: &str,
        ns: NamespaceId,
        id: CredentialId,
        upd: CredentialUpdate,
    ) -> Result<Credential> {
        let mut upd = upd;
        if let Some(name) = &upd.name {
            upd.name = Some(crate::names::name(name).map_err(field_error)?);
        }
        if let Some(tags) = &upd.tags {
            upd.tags = Some(canonical_tags(tags)?);
        }
        if let Some(Some(env)) = &upd.environment {
            check_text("environment", env, 64)?;
        }
        for (k, v) in &upd.fields {
            check_field_name(k)?;
            check_value_len(k, v.as_ref().map_or(0, String::len))?;
        }
        for (k, v) in &upd.secrets {
            check_field_name(k)?;
            check_value_len(k, v.expose_secret().len())?;
        }
        let actor = actor.to_owned();
        // Batched like creates (see `batch`): it refuses only before `writing`, and may
        // run again, so it works on a copy of the update.
        self.write_batched(ns, move |store, txn| apply_update(store, txn, &actor, ns, id, upd.clone()))
    }

    fn set_deleted(
        &self,
        actor: &str,
        ns: NamespaceId,
        id: CredentialId,
        delete: bool,
    ) -> Result<Credential> {
        let actor = actor.to_owned();
        self.write_batched(ns, move |_, txn| {
            let mut creds = txn.open_table(CREDENTIALS)?;
            let mut cred = load(&creds, ns, id)?;
            if cred.deleted_at.is_some() == delete {
                // Deleting a deleted one is NotFound (like any other read of it as live);
                // restoring a live one changes nothing.
                return if delete { Err(StoreError::NotFound) } else { Ok(cred) };
            }
            txn.writing();
            let now = now_ms();
            if delete {
                super::history::unschedule(txn, &mut cred)?;
            }
            cred.deleted_at = delete.then_some(now);
            cred.updated_at = now;
            creds.insert(id.key(), enc(&cred).as_slice())?;
            drop(creds);
            let action = if delete { "credential.delete" } else { "credential.restore" };
            audit::append(txn, AuditEntry::ok(&actor, action).ns(ns).cred(id).detail(format!("name={:?}", cred.name)))?;
            Ok(cred)
        })
    }

    /// Soft-deletes a live credential: hidden from listings (unless asked), not
    /// revealable, name still reserved, restorable.
    pub fn delete_credential(
        &self,
        actor: &str,
        ns: NamespaceId,
        id: CredentialId,
    ) -> Result<Credential> {
        self.set_deleted(actor, ns, id, true)
    }

    /// Restores a soft-deleted credential (a live one is returned unchanged).
    pub fn restore_credential(
        &self,
        actor: &str,
        ns: NamespaceId,
        id: CredentialId,
    ) -> Result<Credential> {
        self.set_deleted(actor, ns, id, false)
    }

    /// Destroys a credential (deleted or not): metadata, name and every version.
    pub fn purge_credential(&self, actor: &str, ns: NamespaceId, id: CredentialId) -> Result<()> {
        let txn = self.begin_write_in(ns)?;
        let cred = {
            let mut creds = txn.open_table(CREDENTIALS)?;
            let cred = load(&creds, ns, id)?;
            creds.remove(id.key())?;
            txn.open_table(NAMES)?
                .remove((ns.key(), cred.name.as_str()))?;
            super::versions::destroy_all(&txn, id)?;
            super::history::forget(&txn, &cred)?;
            cred
        };
        let detail = format!("name={:?} versions={}", cred.name, cred.version);
        audit::append(
            &txn,
            AuditEntry::ok(actor, "credential.purge")
                .ns(ns)
                .cred(id)
                .detail(detail),
        )?;
        txn.commit()?;
        Ok(())
    }

    /// Stores the outcome of a live test on a live credential.
    pub fn record_test_result(
        &self,
        actor: &str,
        ns: NamespaceId,
        id: CredentialId,
        result: TestResult,
    ) -> Result<Credential> {
        self.record_test(actor, ns, id, result, super::RecordOpts::default())
    }

    /// Decrypts the current secrets of a live credential to hand them to the caller
    /// (audited as `credential.reveal`). See [`Store::unseal`] for the host's own use.
    pub fn reveal(
        &self,
        actor: &str,
        ns: NamespaceId,
        id: CredentialId,
        purpose: &str,
    ) -> Result<SecretMap> {
        self.open_audited("credential.reveal", actor, ns, id, purpose)
    }

    /// Decrypts the current secrets for the host's own use — filling them into a plugin
    /// call's requests, validating, comparing — never shown to anyone (audited as
    /// `credential.unseal`, distinct from a reveal to the caller and from a plugin's
    /// `secrets.reveal`, which is `plugin.secrets.reveal`).
    pub fn unseal(
        &self,
        actor: &str,
        ns: NamespaceId,
        id: CredentialId,
        purpose: &str,
    ) -> Result<SecretMap> {
        self.open_audited("credential.unseal", actor, ns, id, purpose)
    }

    /// The only decrypting read with an audit record of its own (actor, purpose, field
    /// names), committed before the secrets are returned; if it cannot be written,
    /// nothing is decrypted for the caller.
    fn open_audited(
        &self,
        action: &str,
        actor: &str,
        ns: NamespaceId,
        id: CredentialId,
        purpose: &str,
    ) -> Result<SecretMap> {
        let (action, actor, purpose) = (action.to_owned(), actor.to_owned(), purpose.to_owned());
        self.write_batched(ns, move |store, txn| {
            let (secrets, version) = {
                let cred = load_live(&txn.open_table(CREDENTIALS)?, ns, id)?;
                let dek = store.dek_in(&txn.open_table(NAMESPACES)?, ns)?;
                (open_current(&txn.open_table(VERSIONS)?, &dek, &cred)?, cred.version)
            };
            let detail = format!("purpose={purpose:?} version={version} fields={:?}", secrets.keys().collect::<Vec<_>>());
            txn.writing();
            audit::append(txn, AuditEntry::ok(&actor, &action).ns(ns).cred(id).detail(detail))?;
            Ok(secrets)
        })
    }

    /// A live credential and its current secrets, read in one read transaction without
    /// an audit record of its own: for the proxy, whose every call is audited as a use
    /// of the credential (a durable write per call would dominate its latency).
    pub fn credential_for_use(&self, ns: NamespaceId, id: CredentialId) -> Result<(Credential, SecretMap)> {
        let txn = self.begin_read_in(ns)?;
        let cred = load_live(&txn.open_table(CREDENTIALS)?, ns, id)?;
        let dek = txn.dek_in(&txn.open_table(NAMESPACES)?, ns)?;
        let secrets = open_current(&txn.open_table(VERSIONS)?, &dek, &cred)?;
        Ok((cred, secrets))
    }
}
