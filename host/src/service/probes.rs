//! Cross-namespace probes: a caller naming a credential id that exists in another user's
//! namespace. The caller gets the same 404 as for an id that exists nowhere (the lookup
//! that tells them apart is made for every miss); the event is handed to a background
//! writer, so the answer waits for no disk write either. Admins see it in the audit log
//! as `security.probe` (owner and token named in `detail`); the prober does not, since
//! a record written only for existing ids would tell.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, SyncSender, TrySendError};
use std::sync::{Arc, Weak};

use crate::store::{AuditEntry, CredentialId, NamespaceId, Outcome, Principal, Store};

/// The action of a probe record.
pub const PROBE_ACTION: &str = "security.probe";

/// Probes queued beyond this are counted and logged, not recorded: a flood of probes must
/// not grow memory without bound.
const QUEUE: usize = 4096;

struct Probe {
    actor: String,
    namespace: NamespaceId,
    token: String,
    credential: CredentialId,
    owner: NamespaceId,
}

/// The sending side; the writer thread ends when this is dropped (with the service).
pub(super) struct Probes {
    tx: SyncSender<Probe>,
    dropped: Arc<AtomicU64>,
}

impl Probes {
    pub(super) fn start(store: Weak<Store>) -> Probes {
        let (tx, rx) = sync_channel::<Probe>(QUEUE);
        let dropped = Arc::new(AtomicU64::new(0));
        let lost = dropped.clone();
        let _ = std::thread::Builder::new().name("credhost-probes".into()).spawn(move || {
            while let Ok(first) = rx.recv() {
                let mut batch = vec![first];
                batch.extend(rx.try_iter().take(255));
                let Some(store) = store.upgrade() else { break };
                let entries: Vec<AuditEntry> = batch.into_iter().map(|probe| entry(&store, probe)).collect();
                let n = lost.swap(0, Ordering::Relaxed);
                if n > 0 {
                    tracing::warn!(dropped = n, "security: probe records dropped (queue full)");
                }
                if let Err(e) = store.append_audit_batch(entries) {
                    tracing::error!(error = %e, "could not write security.probe audit records");
                }
            }
        });
        Probes { tx, dropped }
    }

    /// Queues a probe by `p` of `credential`, which lives in namespace `owner`. Never blocks.
    pub(super) fn report(&self, p: &Principal, credential: CredentialId, owner: NamespaceId) {
        let probe = Probe {
            actor: p.user.clone(),
            namespace: p.namespace,
            token: p.token_id.clone(),
            credential,
            owner,
        };
        if let Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) = self.tx.try_send(probe) {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

fn entry(store: &Store, probe: Probe) -> AuditEntry {
    let owner = store.namespace_user(probe.owner).unwrap_or_else(|_| probe.owner.to_string());
    tracing::warn!(
        actor = %probe.actor, credential = %probe.credential, owner = %owner,
        "security: a caller named another user's credential id (answered 404)"
    );
    let mut e = AuditEntry::ok(&probe.actor, PROBE_ACTION);
    e.namespace = Some(probe.namespace);
    e.credential = Some(probe.credential);
    e.outcome = Outcome::Denied;
    e.detail = format!("owner={owner} via={}", probe.token);
    e
}
