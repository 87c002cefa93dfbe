//! The event outbox: events (health changes, rotations, security events) are appended in
//! the same write transaction as the change that caused them, so a crash never loses one
//! and never reports a change that did not commit. The webhook delivery worker
//! (`service::webhooks`) drains it.

use serde::{Deserialize, Serialize};

use super::error::Result;
use super::schema::{dec, enc, CredentialId, NamespaceId, OUTBOX};
use super::{now_ms, Txn};

/// One event. `data` is non-secret JSON (ids, names, statuses, summaries that were already
/// scrubbed); it becomes the webhook body's `data`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// Unique, stable across retries (`webhook-id`): `evt_<uuid v7>`.
    pub id: String,
    /// e.g. `credential.health_changed`, `credential.rotation.completed`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The user the event is about (their subscriptions get it); `None`: deployment-wide.
    pub namespace: Option<NamespaceId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential: Option<CredentialId>,
    /// Unix ms.
    pub at: u64,
    pub data: serde_json::Value,
}

impl Event {
    pub fn new(kind: &str, namespace: Option<NamespaceId>, credential: Option<CredentialId>, data: serde_json::Value) -> Self {
        Event {
            id: format!("evt_{}", uuid::Uuid::now_v7().simple()),
            kind: kind.to_owned(),
            namespace,
            credential,
            at: now_ms(),
            data,
        }
    }
}

/// Appends `event` to the outbox inside `txn` (committed with the change that caused it).
pub(crate) fn emit(txn: &Txn, event: &Event) -> Result<u64> {
    let mut table = txn.open_table(OUTBOX)?;
    let seq = table.last()?.map(|(k, _)| k.value() + 1).unwrap_or(1);
    table.insert(seq, enc(event).as_slice())?;
    Ok(seq)
}

/// Decodes an outbox row.
pub(crate) fn decode(bytes: &[u8]) -> Result<Event> {
    dec(bytes, "outbox event")
}
