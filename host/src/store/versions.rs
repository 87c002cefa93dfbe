//! Secret versions: who wrote each one and when, its fingerprints and test outcome, the
//! pending version of a rotation, promotion (rotation's last step, and rollback), and
//! retention. The sealed blobs themselves live in `versions` (see [`super::schema`]);
//! a version's metadata is written in the same transaction as its blob and destroyed
//! with it.
//!
//! States are derived, never stored twice: `current` is `Credential::version`, `pending`
//! is `Credential::pending_version`, `previous` is the version the current one replaced,
//! every other kept version is `retired`. One write transaction moves a credential from
//! one state to the next, so a crash leaves the old state or the new one.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU32, Ordering};

use super::kv::Table;
use secrecy::ExposeSecret;
use serde::{Deserialize, Serialize};
use sha2::Digest as _;

use super::audit::{self, AuditEntry};
use super::credentials::load_live;
use super::error::{Result, StoreError};
use super::outbox::{self, Event};
use super::schema::{
    dec, enc, CredentialId, NamespaceId, CREDENTIALS, NAMESPACES, ROTATION_KEYS, VERSIONS,
};
use super::{now_ms, Credential, SecretField, Store, TestResult, Txn, BINDING_KEY};
use crate::crypto::SecretMap;

/// Versions kept per credential unless configured (`[storage] max_versions`).
pub const DEFAULT_MAX_VERSIONS: u32 = 10;
/// The largest `max_versions` accepted.
pub const MAX_MAX_VERSIONS: u32 = 1000;
/// How long a rotate request's idempotency key is remembered.
pub const IDEMPOTENCY_TTL_MS: u64 = 24 * 3600 * 1000;

/// Process-wide: one server process opens one store, and retention applies to every
/// write path (API, CLI, config reconciler) alike.
static MAX_VERSIONS: AtomicU32 = AtomicU32::new(DEFAULT_MAX_VERSIONS);

/// Sets how many versions each credential keeps (clamped to 1..=[`MAX_MAX_VERSIONS`];
/// the config refuses other values with an error naming the key).
pub fn set_max_versions(n: u32) {
    MAX_VERSIONS.store(n.clamp(1, MAX_MAX_VERSIONS), Ordering::Relaxed);
}

pub fn max_versions() -> u32 {
    MAX_VERSIONS.load(Ordering::Relaxed)
}

/// Why a version was written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VersionReason {
    /// The credential was created.
    Create,
    /// A PATCH changed secrets, or their destination binding was re-sealed (SSH host pin).
    Update,
    /// A rotation wrote it as pending.
    Rotation,
}

/// Who made a version current and how.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Promotion {
    pub at: u64,
    pub actor: String,
    /// Made current without a `valid` test (rotate with `force`, or a manual promote).
    pub forced: bool,
}

/// Metadata of one version; never a secret value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionMeta {
    pub created_at: u64,
    pub actor: String,
    pub reason: VersionReason,
    /// The secret fields this version holds, with their fingerprints.
    pub secrets: BTreeMap<String, SecretField>,
    /// The live test of this version before promotion (rotation), if one ran.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub test: Option<TestResult>,
    /// The version that was current when this one became current.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replaced: Option<u32>,
    /// Set when a rotation promoted it or someone promoted it by hand (latest only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub promoted: Option<Promotion>,
}

/// Where a version stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VersionState {
    Current,
    Pending,
    Previous,
    Retired,
}

/// A kept version: its number, state, and metadata (absent for versions written before
/// metadata was kept).
#[derive(Debug, Clone)]
pub struct VersionInfo {
    pub number: u32,
    pub state: VersionState,
    pub meta: Option<VersionMeta>,
}

/// A rotate request remembered under its idempotency key.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RotationKey {
    /// Keyed digest of the request body (see [`Store::rotation_digest`]).
    pub digest: String,
    /// The pending version the request wrote.
    pub version: u32,
    /// The answer, once the rotation finished (absent: interrupted, can be resumed).
    #[serde(default)]
    pub answer: Option<serde_json::Value>,
    pub created_at: u64,
}

/// How a rotation ends (see [`Store::finish_rotation`]).
#[derive(Debug)]
pub struct RotationEnd {
    pub version: u32,
    pub result: TestResult,
    /// Make the pending version current.
    pub promote: bool,
    /// Promoted without a `valid` test.
    pub forced: bool,
    /// The idempotency key and the answer to remember under it.
    pub key: Option<(String, serde_json::Value)>,
}

/// A version's metadata is kept in `versions` beside its blob, under the number with
/// this bit set: a create then dirties one table fewer (a redb commit costs per dirty
/// page), and a credential's blobs and metadata sit together.
pub(crate) const META_PART: u32 = 1 << 31;

/// Where version `n`'s metadata is kept in `versions`.
pub(crate) fn meta_key(id: CredentialId, n: u32) -> (u128, u32) {
    (id.key(), n | META_PART)
}

/// The keys of `id`'s sealed blobs (its metadata follows them).
fn version_range(id: CredentialId) -> std::ops::Range<(u128, u32)> {
    (id.key(), 0)..(id.key(), META_PART)
}

/// Where version `n`'s sealed blob is kept; a number a caller gave that is a metadata
/// number is not found (it must not read metadata as a blob).
fn blob_key(id: CredentialId, n: u32) -> Result<(u128, u32)> {
    match n < META_PART {
        true => Ok((id.key(), n)),
        false => Err(StoreError::NotFound),
    }
}

/// The number for a new version of `id`: one past the highest ever kept. Retention
/// destroys the oldest first and the newest is always kept, so numbers are never reused.
pub(crate) fn next_number(
    blobs: &Table<'_, (u128, u32), &'static [u8]>,
    id: CredentialId,
) -> Result<u32> {
    let last = blobs.range(version_range(id))?.next_back().transpose()?.map(|(k, _)| k.value().1);
    match last.unwrap_or(0) + 1 {
        META_PART => Err(StoreError::Conflict(format!("credential {id} has used every version number"))),
        n => Ok(n),
    }
}

/// Records a freshly written current version (create, PATCH of secrets, re-binding) and
/// applies retention, inside the write's transaction.
pub(crate) fn record_current(
    txn: &Txn,
    cred: &Credential,
    actor: &str,
    reason: VersionReason,
    replaced: Option<u32>,
) -> Result<Vec<u32>> {
    let meta = VersionMeta {
        created_at: now_ms(),
        actor: actor.to_owned(),
        reason,
        secrets: cred.secrets.clone(),
        test: None,
        replaced,
        promoted: None,
    };
    txn.open_table(VERSIONS)?.insert(meta_key(cred.id, cred.version), enc(&meta).as_slice())?;
    // A new credential holds its one version: nothing to look for.
    if matches!(reason, VersionReason::Create) {
        return Ok(Vec::new());
    }
    retain(txn, cred)
}

/// Destroys the oldest versions beyond `max_versions`, never the current or pending one.
fn retain(txn: &Txn, cred: &Credential) -> Result<Vec<u32>> {
    let mut blobs = txn.open_table(VERSIONS)?;
    let mut numbers = Vec::new();
    for row in blobs.range(version_range(cred.id))? {
        numbers.push(row?.0.value().1);
    }
    let mut excess = numbers.len().saturating_sub(max_versions() as usize);
    let mut destroyed = Vec::new();
    for n in numbers {
        if excess == 0 {
            break;
        }
        if n == cred.version || cred.pending_version == Some(n) {
            continue;
        }
        blobs.remove((cred.id.key(), n))?;
        blobs.remove(meta_key(cred.id, n))?;
        destroyed.push(n);
        excess -= 1;
    }
    Ok(destroyed)
}

/// Destroys every version (blob and metadata) and idempotency key of `id` (purge).
pub(crate) fn destroy_all(txn: &Txn, id: CredentialId) -> Result<()> {
    let mut blobs = txn.open_table(VERSIONS)?;
    // Blobs and metadata.
    blobs.retain_in((id.key(), 0)..=(id.key(), u32::MAX), |_, _| false)?;
    let mut keys = txn.open_table(ROTATION_KEYS)?;
    keys.retain_in::<(u128, &str), _>((id.key(), "")..(id.key() + 1, ""), |_, _| false)?;
    Ok(())
}

/// Fingerprints of the secrets in `secrets` (the binding excluded): a field whose value
/// is unchanged since `current` keeps the version it was set in.
fn fingerprints(
    fpk: &crate::crypto::FingerprintKey,
    id: CredentialId,
    version: u32,
    secrets: &SecretMap,
    current: &BTreeMap<String, SecretField>,
) -> BTreeMap<String, SecretField> {
    secrets
        .iter()
        .filter(|(k, _)| k.as_str() != BINDING_KEY)
        .map(|(k, v)| {
            let fingerprint = fpk.fingerprint(id.as_uuid(), k, v);
            let set_in = match current.get(k) {
                Some(old) if old.fingerprint == fingerprint => old.version,
                _ => version,
            };
            (k.clone(), SecretField { fingerprint, version: set_in })
        })
        .collect()
}

/// The data of a rotation event (`credential.rotation.*`): names and numbers only.
fn rotation_event(
    kind: &str,
    cred: &Credential,
    version: u32,
    previous: u32,
    forced: bool,
    test: Option<&TestResult>,
    via: &str,
) -> Event {
    let status = test.map(|t| serde_json::to_value(t.status()).unwrap_or(serde_json::Value::Null));
    Event::new(
        kind,
        Some(cred.namespace),
        Some(cred.id),
        serde_json::json!({
            "credential": {"id": cred.id.to_string(), "name": cred.name, "type": cred.kind},
            "version": version,
            "previous_version": previous,
            "forced": forced,
            "status": status,
            "summary": test.map(|t| t.summary.clone()),
            "via": via,
        }),
    )
}

impl Store {
    /// A credential (live) and every kept version of it, newest first.
    pub fn list_versions(&self, ns: NamespaceId, id: CredentialId) -> Result<(Credential, Vec<VersionInfo>)> {
        let txn = self.begin_read_in(ns)?;
        let cred = load_live(&txn.open_table(CREDENTIALS)?, ns, id)?;
        let blobs = txn.open_table(VERSIONS)?;
        let mut numbers = Vec::new();
        for row in blobs.range(version_range(id))? {
            numbers.push(row?.0.value().1);
        }
        let mut found = BTreeMap::new();
        for n in &numbers {
            if let Some(v) = blobs.get(meta_key(id, *n))? {
                found.insert(*n, dec::<VersionMeta>(v.value(), "version metadata")?);
            }
        }
        // Versions that predate the metadata only ever replaced the one before them.
        let previous = match found.get(&cred.version) {
            Some(m) => m.replaced,
            None => cred.version.checked_sub(1).filter(|p| numbers.contains(p)),
        };
        let mut out: Vec<VersionInfo> = numbers
            .into_iter()
            .map(|n| {
                let state = if n == cred.version {
                    VersionState::Current
                } else if cred.pending_version == Some(n) {
                    VersionState::Pending
                } else if previous == Some(n) {
                    VersionState::Previous
                } else {
                    VersionState::Retired
                };
                VersionInfo { number: n, state, meta: found.remove(&n) }
            })
            .collect();
        out.reverse();
        Ok((cred, out))
    }

    /// A keyed digest of a rotate request (field names, value fingerprints under the
    /// namespace's fingerprint key, `force`): equal requests have equal digests, and the
    /// digest says nothing about a value to anyone without the key.
    pub fn rotation_digest(&self, ns: NamespaceId, id: CredentialId, fields: &SecretMap, force: bool) -> Result<String> {
        let txn = self.begin_read_in(ns)?;
        let fpk = txn.dek_in(&txn.open_table(NAMESPACES)?, ns)?.fingerprint_key();
        let mut h = sha2::Sha256::new();
        h.update(b"credhost rotate v1\n");
        for (k, v) in fields {
            h.update(format!("{}:{k}={}\n", k.len(), fpk.fingerprint(id.as_uuid(), k, v)).as_bytes());
        }
        h.update(if force { b"force\n" as &[u8] } else { b"\n" });
        Ok(crate::crypto::hex(&h.finalize()))
    }

    /// The rotate request remembered under `key` for `id`, if any (and not expired).
    pub fn rotation_key(&self, id: CredentialId, key: &str) -> Result<Option<RotationKey>> {
        let txn = self.begin_read()?;
        let keys = txn.open_table(ROTATION_KEYS)?;
        let Some(v) = keys.get((id.key(), key))? else { return Ok(None) };
        let rec: RotationKey = dec(v.value(), "rotation key")?;
        Ok((rec.created_at + IDEMPOTENCY_TTL_MS > now_ms()).then_some(rec))
    }

    /// Writes `secrets` as the pending version of a live credential, sealed with
    /// `binding`, in one transaction with its metadata, its idempotency key and the audit
    /// record. Refused if the current version is no longer `base` (the secrets were
    /// merged with it). A pending version already there is superseded (it becomes
    /// retired, its outcome kept). Returns the credential, the new number and the
    /// superseded one.
    #[allow(clippy::too_many_arguments)]
    pub fn write_pending(
        &self,
        actor: &str,
        ns: NamespaceId,
        id: CredentialId,
        base: u32,
        mut secrets: SecretMap,
        binding: Option<String>,
        key: Option<(&str, &str)>,
    ) -> Result<(Credential, u32, Option<u32>)> {
        let txn = self.begin_write_in(ns)?;
        let (cred, n, superseded, destroyed) = {
            let mut creds = txn.open_table(CREDENTIALS)?;
            let mut cred = load_live(&creds, ns, id)?;
            if cred.version != base {
                return Err(StoreError::Conflict(format!(
                    "the credential changed while the rotation was prepared (now version {}); send it again",
                    cred.version
                )));
            }
            let dek = self.dek_in(&txn.open_table(NAMESPACES)?, ns)?;
            let mut blobs = txn.open_table(VERSIONS)?;
            let n = next_number(&blobs, id)?;
            let fields = fingerprints(&dek.fingerprint_key(), id, n, &secrets, &cred.secrets);
            if let Some(b) = binding {
                secrets.insert(BINDING_KEY.into(), secrecy::SecretString::from(b));
            }
            let blob = dek.seal_secrets(ns.as_uuid(), id.as_uuid(), n, &secrets)?;
            blobs.insert((id.key(), n), blob.as_slice())?;
            drop(blobs);
            let meta = VersionMeta {
                created_at: now_ms(),
                actor: actor.to_owned(),
                reason: VersionReason::Rotation,
                secrets: fields,
                test: None,
                replaced: None,
                promoted: None,
            };
            txn.open_table(VERSIONS)?.insert(meta_key(id, n), enc(&meta).as_slice())?;
            let superseded = cred.pending_version.replace(n);
            creds.insert(id.key(), enc(&cred).as_slice())?;
            drop(creds);
            let destroyed = retain(&txn, &cred)?;
            (cred, n, superseded, destroyed)
        };
        if let Some((key, digest)) = key {
            let mut keys = txn.open_table(ROTATION_KEYS)?;
            // Forget this credential's expired keys while here.
            let now = now_ms();
            keys.retain_in::<(u128, &str), _>((id.key(), "")..(id.key() + 1, ""), |_, v| {
                serde_json::from_slice::<RotationKey>(v).is_ok_and(|r| r.created_at + IDEMPOTENCY_TTL_MS > now)
            })?;
            let rec = RotationKey { digest: digest.to_owned(), version: n, answer: None, created_at: now };
            keys.insert((id.key(), key), enc(&rec).as_slice())?;
        }
        let detail = format!(
            "pending={n} current={} superseded={superseded:?} destroyed={destroyed:?} fields={:?}",
            cred.version,
            secrets.keys().filter(|k| k.as_str() != BINDING_KEY).collect::<Vec<_>>()
        );
        audit::append(&txn, AuditEntry::ok(actor, "credential.rotation.pending").ns(ns).cred(id).detail(detail))?;
        txn.commit()?;
        Ok((cred, n, superseded))
    }

    /// Decrypts one version's secrets for the host's own use (testing a pending version),
    /// audited as `credential.unseal` with the version.
    pub fn unseal_version(
        &self,
        actor: &str,
        ns: NamespaceId,
        id: CredentialId,
        version: u32,
        purpose: &str,
    ) -> Result<SecretMap> {
        let txn = self.begin_write_in(ns)?;
        let secrets = {
            load_live(&txn.open_table(CREDENTIALS)?, ns, id)?;
            let dek = self.dek_in(&txn.open_table(NAMESPACES)?, ns)?;
            let blobs = txn.open_table(VERSIONS)?;
            let blob = blobs.get(blob_key(id, version)?)?.ok_or(StoreError::NotFound)?;
            dek.open_secrets(ns.as_uuid(), id.as_uuid(), version, blob.value())?
        };
        let detail = format!(
            "purpose={purpose:?} version={version} fields={:?}",
            secrets.keys().filter(|k| k.as_str() != BINDING_KEY).collect::<Vec<_>>()
        );
        audit::append(&txn, AuditEntry::ok(actor, "credential.unseal").ns(ns).cred(id).detail(detail))?;
        txn.commit()?;
        Ok(secrets)
    }

    /// Ends a rotation in one transaction: keeps the test outcome on the pending version,
    /// promotes it if asked (current = pending, the old current becomes previous), emits
    /// `credential.rotation.completed` or `.failed`, remembers the answer under the
    /// idempotency key, and audits. Refused if the version is no longer pending.
    pub fn finish_rotation(&self, actor: &str, ns: NamespaceId, id: CredentialId, end: RotationEnd) -> Result<Credential> {
        let n = end.version;
        let txn = self.begin_write_in(ns)?;
        let (cred, previous) = {
            let mut creds = txn.open_table(CREDENTIALS)?;
            let mut cred = load_live(&creds, ns, id)?;
            if cred.pending_version != Some(n) {
                return Err(StoreError::Conflict(format!(
                    "version {n} is no longer pending: a later change superseded it"
                )));
            }
            let mut metas = txn.open_table(VERSIONS)?;
            let mut meta: VersionMeta = match metas.get(meta_key(id, n))? {
                Some(v) => dec(v.value(), "version metadata")?,
                None => return Err(StoreError::Corrupt(format!("credential {id}: pending version {n} has no metadata"))),
            };
            meta.test = Some(end.result.clone());
            let previous = cred.version;
            if end.promote {
                let now = now_ms();
                meta.replaced = Some(previous);
                meta.promoted = Some(Promotion { at: now, actor: actor.to_owned(), forced: end.forced });
                cred.version = n;
                cred.pending_version = None;
                cred.secrets = meta.secrets.clone();
                // The last test now describes the secrets in use.
                cred.last_test = Some(end.result.clone());
                cred.updated_at = now;
                creds.insert(id.key(), enc(&cred).as_slice())?;
            }
            metas.insert(meta_key(id, n), enc(&meta).as_slice())?;
            (cred, previous)
        };
        if let Some((key, answer)) = end.key {
            let mut keys = txn.open_table(ROTATION_KEYS)?;
            let rec = match keys.get((id.key(), key.as_str()))? {
                Some(v) => Some(dec::<RotationKey>(v.value(), "rotation key")?),
                None => None,
            };
            if let Some(mut rec) = rec {
                rec.answer = Some(answer);
                keys.insert((id.key(), key.as_str()), enc(&rec).as_slice())?;
            }
        }
        let (kind, action) = if end.promote {
            ("credential.rotation.completed", "credential.rotation.completed")
        } else {
            ("credential.rotation.failed", "credential.rotation.failed")
        };
        outbox::emit(&txn, &rotation_event(kind, &cred, n, previous, end.forced, Some(&end.result), "rotate"))?;
        let status = serde_json::to_value(end.result.status()).unwrap_or_default();
        let detail = format!("version={n} previous={previous} forced={} status={status}", end.forced);
        let mut entry = AuditEntry::ok(actor, action).ns(ns).cred(id).detail(detail);
        if !end.promote {
            entry.outcome = super::Outcome::Failed;
        }
        audit::append(&txn, entry)?;
        txn.commit()?;
        Ok(cred)
    }

    /// Makes a kept version current (rollback, or promoting a pending one by hand) in one
    /// transaction, audited, with a `credential.rotation.completed` event (`via: promote`).
    /// A version sealed for another destination than `binding` (the credential's current
    /// destination fields) is refused: it could not be used. Promoting the current
    /// version changes nothing. Returns the credential and the version it replaced.
    pub fn promote_version(
        &self,
        actor: &str,
        ns: NamespaceId,
        id: CredentialId,
        n: u32,
        binding: Option<&str>,
    ) -> Result<(Credential, Option<u32>)> {
        let txn = self.begin_write_in(ns)?;
        let (cred, previous, test) = {
            let mut creds = txn.open_table(CREDENTIALS)?;
            let mut cred = load_live(&creds, ns, id)?;
            if cred.version == n {
                return Ok((cred, None));
            }
            let dek = self.dek_in(&txn.open_table(NAMESPACES)?, ns)?;
            let secrets = {
                let blobs = txn.open_table(VERSIONS)?;
                let blob = blobs.get(blob_key(id, n)?)?.ok_or(StoreError::NotFound)?;
                dek.open_secrets(ns.as_uuid(), id.as_uuid(), n, blob.value())?
            };
            // Like the service's binding check: versions sealed before destination binding
            // carry none and are accepted.
            if let (Some(sealed), Some(expected)) = (secrets.get(BINDING_KEY), binding) {
                if sealed.expose_secret() != expected {
                    return Err(StoreError::Conflict(format!(
                        "version {n} was sealed for a different destination than the credential's current one \
                         (its destination fields changed since); it cannot become current. Rotate with new secrets instead"
                    )));
                }
            }
            let mut metas = txn.open_table(VERSIONS)?;
            let mut meta = match metas.get(meta_key(id, n))? {
                Some(v) => dec::<VersionMeta>(v.value(), "version metadata")?,
                None => VersionMeta {
                    // Written before metadata was kept: what is known now.
                    created_at: 0,
                    actor: String::new(),
                    reason: VersionReason::Update,
                    secrets: fingerprints(&dek.fingerprint_key(), id, n, &secrets, &BTreeMap::new()),
                    test: None,
                    replaced: None,
                    promoted: None,
                },
            };
            let previous = cred.version;
            let now = now_ms();
            meta.replaced = Some(previous);
            meta.promoted = Some(Promotion { at: now, actor: actor.to_owned(), forced: true });
            if cred.pending_version == Some(n) {
                cred.pending_version = None;
            }
            cred.version = n;
            cred.secrets = meta.secrets.clone();
            // The last test was of other secrets: this version's own, if it had one.
            cred.last_test = meta.test.clone();
            cred.updated_at = now;
            creds.insert(id.key(), enc(&cred).as_slice())?;
            metas.insert(meta_key(id, n), enc(&meta).as_slice())?;
            (cred, previous, meta.test)
        };
        outbox::emit(
            &txn,
            &rotation_event("credential.rotation.completed", &cred, n, previous, true, test.as_ref(), "promote"),
        )?;
        audit::append(
            &txn,
            AuditEntry::ok(actor, "credential.version.promote")
                .ns(ns)
                .cred(id)
                .detail(format!("version={n} previous={previous} forced=true")),
        )?;
        txn.commit()?;
        Ok((cred, Some(previous)))
    }
}
