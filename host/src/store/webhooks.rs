//! Webhook subscriptions and their deliveries.
//!
//! A user's subscription holds a URL, an event filter and its signing secret, sealed with
//! the user's data key (like a credential's secrets; AAD binds namespace and subscription
//! id). Deployment-wide subscriptions come from the configuration and are not stored;
//! their deliveries are (owner `None`).
//!
//! Delivery is at least once and survives a crash: [`Store::fan_out`] turns outbox events
//! into one persistent delivery per matching subscription in the same transaction that
//! removes them from the outbox; a delivery stays queued (`webhook_queue`, by due time)
//! until an attempt's outcome is recorded ([`Store::record_deliveries`]). A crash between
//! sending and recording sends again, with the same `webhook-id` (the event id).

use std::collections::{BTreeMap, HashMap};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use super::kv::Table;
use secrecy::SecretString;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::audit::{self, AuditEntry};
use super::error::{Result, StoreError};
use super::outbox::{self, Event};
use super::schema::{
    dec, enc, NamespaceId, NAMESPACES, OUTBOX, TOKENS, USERS, WEBHOOKS, WEBHOOK_DELIVERIES, WEBHOOK_QUEUE,
};
use super::{now_ms, Store};

/// The event a ping emits: delivered to the pinged subscription only, whatever its filter.
pub const PING_EVENT: &str = "webhook.ping";

/// A revoked or expired grant was used (see [`Store::record_token_misuse`]).
pub const MISUSE_EVENT: &str = "security.token_misuse";

/// Queue entries [`Store::due_deliveries`] looks at when choosing a fair batch (keys
/// only: a few milliseconds).
pub const FAIR_SCAN: usize = 50_000;

/// Finished deliveries kept per subscription (its delivery log); older ones are dropped.
pub const KEPT_PER_SUBSCRIPTION: usize = 100;

/// Sealed-blob "version" of a signing secret: credentials start at 1, so a subscription's
/// blob can never pass for a credential version (their ids differ too).
const SECRET_VERSION: u32 = 0;
const SECRET_FIELD: &str = "signing_secret";

/// A user's subscription. `sealed_secret` is the signing secret, sealed.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Subscription {
    #[serde(with = "uuid_text")]
    pub id: Uuid,
    pub namespace: NamespaceId,
    pub url: String,
    /// Event type patterns (`credential.health_changed`, `credential.*`, `*`).
    pub events: Vec<String>,
    pub created_at: u64,
    pub created_by: String,
    sealed_secret: String,
}

/// Where a delivery stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum DeliveryState {
    /// Waiting for its next attempt.
    Pending,
    /// A 2xx answer was received.
    Delivered,
    /// Every attempt of the retry schedule failed.
    Failed,
}

/// One attempt: when, how long, and the HTTP status or the class of error.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attempt {
    pub at: u64,
    pub ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// One event on its way to one subscription.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Delivery {
    #[serde(with = "uuid_text")]
    pub id: Uuid,
    #[serde(with = "uuid_text")]
    pub subscription: Uuid,
    /// The subscription's owner; `None` for a deployment-wide (configured) subscription.
    pub owner: Option<NamespaceId>,
    pub event: Event,
    pub state: DeliveryState,
    pub attempts: Vec<Attempt>,
    /// When the next attempt is due (pending deliveries only).
    pub next_attempt_at: Option<u64>,
    pub created_at: u64,
}

/// A deployment-wide subscription as fan-out sees it.
pub struct DeploymentTarget {
    pub id: Uuid,
    pub events: Vec<String>,
}

/// A due delivery with its subscription and signing secret (`None` for deployment-wide
/// subscriptions, which the caller knows, and for a subscription deleted meanwhile).
pub struct Due {
    pub delivery: Delivery,
    pub target: Option<(Subscription, SecretString)>,
}

/// What an attempt came to.
pub enum Next {
    Delivered,
    RetryAt(u64),
    Failed,
    /// The subscription is gone: the delivery is dropped.
    Dropped,
}

/// Does `pattern` (`*`, `prefix.*` or an exact type) match event type `kind`?
pub fn pattern_matches(pattern: &str, kind: &str) -> bool {
    if pattern == "*" {
        return true;
    }
    match pattern.strip_suffix(".*") {
        Some(prefix) => kind.strip_prefix(prefix).is_some_and(|rest| rest.starts_with('.')),
        None => pattern == kind,
    }
}

fn wants(events: &[String], kind: &str) -> bool {
    events.iter().any(|p| pattern_matches(p, kind))
}

impl Store {
    /// Stores a new subscription of `ns` with its signing secret sealed; audited as
    /// `webhook.create` (the URL's origin only: a path or query may hold a token).
    /// Refused when `ns` already has `max` subscriptions.
    pub fn create_webhook(
        &self,
        actor: &str,
        ns: NamespaceId,
        url: &str,
        events: Vec<String>,
        secret: &SecretString,
        max: usize,
    ) -> Result<Subscription> {
        let id = Uuid::new_v4();
        let txn = self.begin_write_in(ns)?;
        let sub = {
            let mut table = txn.open_table(WEBHOOKS)?;
            if table.range((ns.key(), 0)..=(ns.key(), u128::MAX))?.count() >= max {
                return Err(StoreError::Invalid(format!(
                    "at most {max} webhook subscriptions per user; delete one first"
                )));
            }
            let dek = self.dek_in(&txn.open_table(NAMESPACES)?, ns)?;
            let mut map = BTreeMap::new();
            map.insert(SECRET_FIELD.to_string(), secret.clone());
            let blob = dek.seal_secrets(ns.as_uuid(), &id, SECRET_VERSION, &map)?;
            let sub = Subscription {
                id,
                namespace: ns,
                url: url.to_string(),
                events,
                created_at: now_ms(),
                created_by: actor.to_string(),
                sealed_secret: B64.encode(blob),
            };
            table.insert((ns.key(), id.as_u128()), enc(&sub).as_slice())?;
            sub
        };
        audit::append(
            &txn,
            AuditEntry::ok(actor, "webhook.create")
                .ns(ns)
                .detail(format!("id={id} origin={} events={}", origin(url), sub.events.join(","))),
        )?;
        txn.commit()?;
        Ok(sub)
    }

    /// The subscriptions of `ns`.
    pub fn list_webhooks(&self, ns: NamespaceId) -> Result<Vec<Subscription>> {
        let txn = self.begin_read_in(ns)?;
        let table = txn.open_table(WEBHOOKS)?;
        let mut out = Vec::new();
        for row in table.range((ns.key(), 0)..=(ns.key(), u128::MAX))? {
            out.push(dec(row?.1.value(), "webhook")?);
        }
        out.sort_by_key(|s: &Subscription| s.created_at);
        Ok(out)
    }

    /// One subscription of `ns` (another user's is `NotFound`).
    pub fn get_webhook(&self, ns: NamespaceId, id: Uuid) -> Result<Subscription> {
        let txn = self.begin_read_in(ns)?;
        let table = txn.open_table(WEBHOOKS)?;
        let v = table.get((ns.key(), id.as_u128()))?.ok_or(StoreError::NotFound)?;
        dec(v.value(), "webhook")
    }

    /// Deletes a subscription of `ns` with its delivery log; its pending deliveries are
    /// never attempted again. Audited as `webhook.delete`. Returns how many were pending.
    pub fn delete_webhook(&self, actor: &str, ns: NamespaceId, id: Uuid) -> Result<usize> {
        let txn = self.begin_write_in(ns)?;
        let (sub, pending) = {
            let mut table = txn.open_table(WEBHOOKS)?;
            let sub: Subscription = match table.remove((ns.key(), id.as_u128()))? {
                Some(v) => dec(v.value(), "webhook")?,
                None => return Err(StoreError::NotFound),
            };
            let pending = remove_deliveries(&txn, id)?;
            (sub, pending)
        };
        audit::append(
            &txn,
            AuditEntry::ok(actor, "webhook.delete")
                .ns(ns)
                .detail(format!("id={id} origin={} pending_dropped={pending}", origin(&sub.url))),
        )?;
        txn.commit()?;
        Ok(pending)
    }

    /// The newest `limit` deliveries of a subscription of `ns`, newest first.
    pub fn webhook_deliveries(&self, ns: NamespaceId, id: Uuid, limit: usize) -> Result<Vec<Delivery>> {
        let txn = self.begin_read_in(ns)?;
        if txn.open_table(WEBHOOKS)?.get((ns.key(), id.as_u128()))?.is_none() {
            return Err(StoreError::NotFound);
        }
        let table = txn.open_table(WEBHOOK_DELIVERIES)?;
        let mut out = Vec::new();
        for row in table.range((id.as_u128(), 0)..=(id.as_u128(), u128::MAX))?.rev().take(limit) {
            out.push(dec(row?.1.value(), "webhook delivery")?);
        }
        Ok(out)
    }

    /// Emits a `webhook.ping` event for one subscription of `ns` through the outbox.
    pub fn ping_webhook(&self, ns: NamespaceId, id: Uuid) -> Result<Event> {
        let txn = self.begin_write_in(ns)?;
        if txn.open_table(WEBHOOKS)?.get((ns.key(), id.as_u128()))?.is_none() {
            return Err(StoreError::NotFound);
        }
        let event = Event::new(
            PING_EVENT,
            Some(ns),
            None,
            serde_json::json!({"subscription": id.to_string(), "message": "a test event asked for by the subscription's owner"}),
        );
        outbox::emit(&txn, &event)?;
        txn.commit()?;
        Ok(event)
    }

    /// Moves up to `max` events from the outbox into deliveries, one per matching
    /// subscription (the owner's subscriptions and every deployment-wide one), due now.
    /// One transaction: an event leaves the outbox exactly when its deliveries exist.
    /// Returns the number of events taken.
    pub fn fan_out(&self, deployment: &[DeploymentTarget], max: usize) -> Result<usize> {
        let txn = self.begin_write()?;
        let now = now_ms();
        let mut taken = 0;
        {
            let mut out = txn.open_table(OUTBOX)?;
            let subs = txn.open_table(WEBHOOKS)?;
            let mut deliveries = txn.open_table(WEBHOOK_DELIVERIES)?;
            let mut queue = txn.open_table(WEBHOOK_QUEUE)?;
            let mut rows = Vec::new();
            for row in out.iter()?.take(max) {
                let (k, v) = row?;
                rows.push((k.value(), v.value().to_vec()));
            }
            for (seq, bytes) in rows {
                out.remove(seq)?;
                taken += 1;
                let event = match outbox::decode(&bytes) {
                    Ok(e) => e,
                    Err(e) => {
                        // Not retried forever: one unreadable row must not stop delivery.
                        tracing::error!(seq, error = %e, "dropping an unreadable outbox event");
                        continue;
                    }
                };
                let mut targets: Vec<(Uuid, Option<NamespaceId>)> = Vec::new();
                if let Some(ns) = event.namespace {
                    if event.kind == PING_EVENT {
                        let pinged = event.data["subscription"].as_str().and_then(|s| Uuid::parse_str(s).ok());
                        if let Some(id) = pinged {
                            if subs.get((ns.key(), id.as_u128()))?.is_some() {
                                targets.push((id, Some(ns)));
                            }
                        }
                    } else {
                        for row in subs.range((ns.key(), 0)..=(ns.key(), u128::MAX))? {
                            let sub: Subscription = dec(row?.1.value(), "webhook")?;
                            if wants(&sub.events, &event.kind) {
                                targets.push((sub.id, Some(ns)));
                            }
                        }
                    }
                }
                if event.kind != PING_EVENT {
                    targets.extend(deployment.iter().filter(|t| wants(&t.events, &event.kind)).map(|t| (t.id, None)));
                }
                for (sub, owner) in targets {
                    let id = Uuid::now_v7();
                    let d = Delivery {
                        id,
                        subscription: sub,
                        owner,
                        event: event.clone(),
                        state: DeliveryState::Pending,
                        attempts: Vec::new(),
                        next_attempt_at: Some(now),
                        created_at: now,
                    };
                    deliveries.insert((sub.as_u128(), id.as_u128()), enc(&d).as_slice())?;
                    queue.insert((now, id.as_u128()), sub.as_u128())?;
                }
            }
        }
        if taken > 0 {
            txn.commit()?;
        }
        Ok(taken)
    }

    /// Up to `max` pending deliveries due at `now`, earliest first, with their user
    /// subscription and its unsealed signing secret. A queue entry whose delivery cannot
    /// be read is returned in the second list, for [`Store::record_deliveries`] to drop:
    /// one bad row must not hold the queue up.
    ///
    /// Fair between owners: one owner (a user, or one deployment-wide subscription) gets
    /// at most a quarter of the batch while others have due deliveries among the first
    /// [`FAIR_SCAN`] queue entries; a user flooding their own subscriptions with events
    /// (to a receiver that never answers, say) cannot hold back everyone else's. Slots
    /// nobody else wants go to the capped owners, earliest first.
    pub fn due_deliveries(&self, now: u64, max: usize) -> Result<(Vec<Due>, Vec<(u64, u128)>)> {
        let txn = self.begin_read()?;
        let queue = txn.open_table(WEBHOOK_QUEUE)?;
        let deliveries = txn.open_table(WEBHOOK_DELIVERIES)?;
        let subs = txn.open_table(WEBHOOKS)?;
        let namespaces = txn.open_table(NAMESPACES)?;
        // Subscription -> owner, from the keys alone (nothing decoded).
        let mut owner_of: HashMap<u128, u128> = HashMap::new();
        for row in subs.iter()? {
            let (ns, sub) = row?.0.value();
            owner_of.insert(sub, ns);
        }
        let share = (max / 4).max(1);
        let mut taken: HashMap<(bool, u128), usize> = HashMap::new();
        let mut picked: Vec<((u64, u128), u128)> = Vec::new();
        let mut deferred: Vec<((u64, u128), u128)> = Vec::new();
        for row in queue.range((0, 0)..=(now, u128::MAX))?.take(FAIR_SCAN) {
            if picked.len() >= max {
                break;
            }
            let (k, sub) = row?;
            let (key, sub) = (k.value(), sub.value());
            let owner = match owner_of.get(&sub) {
                Some(ns) => (true, *ns),
                None => (false, sub),
            };
            let n = taken.entry(owner).or_default();
            if *n < share {
                *n += 1;
                picked.push((key, sub));
            } else if deferred.len() < max {
                deferred.push((key, sub));
            }
        }
        let room = max.saturating_sub(picked.len());
        picked.extend(deferred.into_iter().take(room));
        picked.sort_unstable();
        let mut out = Vec::new();
        let mut broken = Vec::new();
        for ((due, id), sub) in picked {
            let delivery = match deliveries.get((sub, id))? {
                Some(v) => dec::<Delivery>(v.value(), "webhook delivery"),
                None => Err(StoreError::Corrupt("queued webhook delivery without its record".into())),
            };
            let delivery = match delivery {
                Ok(d) => d,
                Err(e) => {
                    tracing::error!(error = %e, "dropping an unreadable webhook delivery");
                    broken.push((due, id));
                    continue;
                }
            };
            let target = match delivery.owner {
                None => None,
                Some(ns) => match subs.get((ns.key(), delivery.subscription.as_u128()))? {
                    None => None,
                    Some(v) => match self.unseal_subscription(&txn, &namespaces, v.value()) {
                        Ok(t) => Some(t),
                        Err(e) => {
                            // Dropped as if unsubscribed (the log says why): never sent unsigned.
                            tracing::error!(error = %e, subscription = %delivery.subscription, "webhook signing secret does not open");
                            None
                        }
                    },
                },
            };
            out.push(Due { delivery, target });
        }
        Ok((out, broken))
    }

    fn unseal_subscription(
        &self,
        txn: &super::Snapshot,
        namespaces: &Table<'_, u128, &'static [u8]>,
        bytes: &[u8],
    ) -> Result<(Subscription, SecretString)> {
        let sub: Subscription = dec(bytes, "webhook")?;
        let dek = txn.dek_in(namespaces, sub.namespace)?;
        let blob = B64
            .decode(&sub.sealed_secret)
            .map_err(|_| StoreError::Corrupt(format!("webhook {}: sealed secret is not base64", sub.id)))?;
        let mut map = dek.open_secrets(sub.namespace.as_uuid(), &sub.id, SECRET_VERSION, &blob)?;
        let secret =
            map.remove(SECRET_FIELD).ok_or_else(|| StoreError::Corrupt(format!("webhook {}: no signing secret", sub.id)))?;
        Ok((sub, secret))
    }

    /// Records the outcome of attempts in one transaction: each attempt is appended to its
    /// delivery, which is then delivered, failed, re-queued or dropped; `broken` queue
    /// entries (see [`Store::due_deliveries`]) are removed. A delivery whose
    /// subscription was deleted meanwhile is gone already and skipped. Then trims the
    /// delivery log of each subscription touched to [`KEPT_PER_SUBSCRIPTION`] finished ones.
    pub fn record_deliveries(&self, outcomes: Vec<(Uuid, Uuid, Attempt, Next)>, broken: Vec<(u64, u128)>) -> Result<()> {
        if outcomes.is_empty() && broken.is_empty() {
            return Ok(());
        }
        let txn = self.begin_write()?;
        {
            let mut deliveries = txn.open_table(WEBHOOK_DELIVERIES)?;
            let mut queue = txn.open_table(WEBHOOK_QUEUE)?;
            for key in broken {
                queue.remove(key)?;
            }
            let mut touched = std::collections::BTreeSet::new();
            for (sub, id, attempt, next) in outcomes {
                let key = (sub.as_u128(), id.as_u128());
                let Some(v) = deliveries.get(key)?.map(|v| v.value().to_vec()) else { continue };
                let mut d: Delivery = dec(&v, "webhook delivery")?;
                if d.state != DeliveryState::Pending {
                    continue;
                }
                if let Some(due) = d.next_attempt_at.take() {
                    queue.remove((due, id.as_u128()))?;
                }
                match next {
                    Next::Dropped => {
                        deliveries.remove(key)?;
                        continue;
                    }
                    Next::Delivered => d.state = DeliveryState::Delivered,
                    Next::Failed => d.state = DeliveryState::Failed,
                    Next::RetryAt(at) => {
                        d.next_attempt_at = Some(at);
                        queue.insert((at, id.as_u128()), sub.as_u128())?;
                    }
                }
                // Only a finished delivery can push the log over its size.
                if d.state != DeliveryState::Pending {
                    touched.insert(sub.as_u128());
                }
                d.attempts.push(attempt);
                deliveries.insert(key, enc(&d).as_slice())?;
            }
            for sub in touched {
                let mut finished = Vec::new();
                for row in deliveries.range((sub, 0)..=(sub, u128::MAX))? {
                    let (k, v) = row?;
                    let d: Delivery = dec(v.value(), "webhook delivery")?;
                    if d.state != DeliveryState::Pending {
                        finished.push(k.value());
                    }
                }
                let excess = finished.len().saturating_sub(KEPT_PER_SUBSCRIPTION);
                for k in finished.into_iter().take(excess) {
                    deliveries.remove(k)?;
                }
            }
        }
        txn.commit()?;
        Ok(())
    }

    /// Drops every pending delivery of a deployment-wide subscription that the
    /// configuration no longer has. Returns how many.
    pub fn drop_deliveries_of(&self, subscription: Uuid) -> Result<usize> {
        let txn = self.begin_write()?;
        let n = remove_deliveries(&txn, subscription)?;
        txn.commit()?;
        Ok(n)
    }

    /// Records that a revoked or expired grant (the token with SHA-256 `token_hash`) was
    /// presented: a `security.token_misuse` audit record in its owner's namespace and the
    /// event of the same name, in one transaction. `reason`: `revoked` or `expired`.
    pub fn record_token_misuse(&self, token_hash: &[u8; 32], reason: &str) -> Result<()> {
        let txn = self.begin_write()?;
        let info: super::TokenInfo = match txn.open_table(TOKENS)?.get(token_hash.as_slice())? {
            Some(v) => dec(v.value(), "token")?,
            None => return Ok(()),
        };
        let user: super::User = match txn.open_table(USERS)?.get(info.user.as_str())? {
            Some(v) => dec(v.value(), "user")?,
            None => return Ok(()),
        };
        let credential = info.grant.as_ref().map(|g| g.credential);
        let mut entry = AuditEntry::ok(&info.user, MISUSE_EVENT).ns(user.namespace).detail(format!("token={} reason={reason}", info.id));
        entry.credential = credential;
        entry.outcome = super::Outcome::Denied;
        audit::append(&txn, entry)?;
        let event = Event::new(
            MISUSE_EVENT,
            Some(user.namespace),
            credential,
            serde_json::json!({
                "token_id": info.id,
                "label": info.label,
                "credential": credential.map(|c| serde_json::json!({"id": c.to_string()})),
                "reason": reason,
            }),
        );
        outbox::emit(&txn, &event)?;
        txn.commit()?;
        Ok(())
    }

    /// Events waiting in the outbox, and deliveries waiting for an attempt.
    pub fn webhook_backlog(&self) -> Result<(u64, u64)> {
        let txn = self.begin_read()?;
        let outbox = txn.open_table(OUTBOX)?.len()?;
        let queued = txn.open_table(WEBHOOK_QUEUE)?.len()?;
        Ok((outbox, queued))
    }
}

/// Removes a subscription's deliveries and their queue entries; returns how many were pending.
fn remove_deliveries(txn: &super::Txn, sub: Uuid) -> Result<usize> {
    let mut deliveries = txn.open_table(WEBHOOK_DELIVERIES)?;
    let mut queue = txn.open_table(WEBHOOK_QUEUE)?;
    let mut keys = Vec::new();
    let mut pending = 0;
    for row in deliveries.range((sub.as_u128(), 0)..=(sub.as_u128(), u128::MAX))? {
        let (k, v) = row?;
        let d: Delivery = dec(v.value(), "webhook delivery")?;
        if let (DeliveryState::Pending, Some(due)) = (d.state, d.next_attempt_at) {
            queue.remove((due, d.id.as_u128()))?;
            pending += 1;
        }
        keys.push(k.value());
    }
    for k in keys {
        deliveries.remove(k)?;
    }
    Ok(pending)
}

/// `scheme://host[:port]` of a URL, for logs and audit records (never its path or query).
pub fn origin(url: &str) -> String {
    url::Url::parse(url).map(|u| u.origin().ascii_serialization()).unwrap_or_else(|_| "(invalid url)".into())
}

impl std::fmt::Display for DeliveryState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            DeliveryState::Pending => "pending",
            DeliveryState::Delivered => "delivered",
            DeliveryState::Failed => "failed",
        })
    }
}

/// Uuids as their hyphenated text (the uuid crate is built without serde).
mod uuid_text {
    use serde::{Deserialize, Deserializer, Serializer};
    use uuid::Uuid;

    pub fn serialize<S: Serializer>(v: &Uuid, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&v.hyphenated())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Uuid, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        Uuid::parse_str(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::ExposeSecret;

    #[test]
    fn patterns() {
        assert!(pattern_matches("*", "credential.health_changed"));
        assert!(pattern_matches("credential.*", "credential.rotation.failed"));
        assert!(pattern_matches("credential.rotation.*", "credential.rotation.failed"));
        assert!(!pattern_matches("credential.*", "credentials.x"));
        assert!(!pattern_matches("credential.rotation.*", "credential.rotation"));
        assert!(pattern_matches("webhook.ping", "webhook.ping"));
        assert!(!pattern_matches("webhook.ping", "webhook.pingx"));
    }

    #[test]
    fn secret_is_sealed_and_deliveries_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.redb");
        let key = crate::crypto::MasterKey::generate().unwrap();
        let key_b64 = key.to_base64();
        let store = Store::open(&path, key).unwrap();
        let alice = store.add_user("admin", "alice", super::super::Role::User).unwrap();
        let secret = SecretString::from("whsec_c2VhbGVkLXNlY3JldC12YWx1ZS0xMjM0NTY3OA==".to_string());
        let sub = store.create_webhook("alice", alice.namespace, "http://127.0.0.1:9/h", vec!["*".into()], &secret, 5).unwrap();
        store.ping_webhook(alice.namespace, sub.id).unwrap();
        assert_eq!(store.fan_out(&[], 10).unwrap(), 1);
        drop(store);
        let bytes = std::fs::read(&path).unwrap();
        assert!(!bytes.windows(20).any(|w| w == &secret.expose_secret().as_bytes()[..20]), "secret in the file");
        let store = Store::open(&path, crate::crypto::MasterKey::from_base64(key_b64.expose_secret()).unwrap()).unwrap();
        let (due, broken) = store.due_deliveries(now_ms(), 10).unwrap();
        assert!(broken.is_empty());
        assert_eq!(due.len(), 1);
        let (s, got) = due[0].target.as_ref().unwrap();
        assert_eq!((s.id, got.expose_secret()), (sub.id, secret.expose_secret()));
        let attempt = Attempt { at: now_ms(), ms: 1, status: Some(500), error: None };
        store.record_deliveries(vec![(sub.id, due[0].delivery.id, attempt, Next::RetryAt(now_ms() + 60_000))], vec![]).unwrap();
        assert!(store.due_deliveries(now_ms(), 10).unwrap().0.is_empty());
        assert_eq!(store.webhook_backlog().unwrap(), (0, 1));
        assert_eq!(store.delete_webhook("alice", alice.namespace, sub.id).unwrap(), 1);
        assert_eq!(store.webhook_backlog().unwrap(), (0, 0));
    }
}
