//! Table layout (schema version 2). Values are JSON (serde_json) unless noted.
//!
//! | table         | key                                  | value                                        |
//! |---------------|--------------------------------------|----------------------------------------------|
//! | `meta`        | `&str`: `schema_version`, `kek_id`, `key_check`, `audit_chain_head`, `audit_keyed_from`, `audit_index` (`audit_head`: schema 1's head, a marker since) | JSON / raw bytes (`key_check`) |
//! | `namespaces`  | `u128` namespace id                  | [`NamespaceRecord`] (user, wrapped DEK)      |
//! | `users`       | `&str` user name                     | [`User`](super::User)                        |
//! | `credentials` | `u128` credential id                 | [`Credential`](super::Credential) metadata   |
//! | `names`       | `(u128 namespace, &str name)`        | `u128` credential id                         |
//! | `versions`    | `(u128 credential, u32 n)`           | n < 2³¹: version n's raw sealed blob (version byte 1, nonce, ciphertext+tag); n ≥ 2³¹: `VersionMeta` of version n − 2³¹ (who, when, fingerprints, test outcome) |
//! | `audit`       | `u64` seq (from 1, contiguous)       | [`AuditRecord`](super::AuditRecord)          |
//! | `audit_by_namespace` | `(u128 namespace, u64 seq)`   | `()`: index of `audit` by namespace          |
//! | `tokens`      | `&[u8]` SHA-256 of the token text    | [`TokenInfo`](super::TokenInfo)              |
//! | `outbox`      | `u64` seq                            | [`Event`](super::Event): events to deliver   |
//! | `test_history` | `(u128 credential, u64 seq)`        | [`TestResult`](super::TestResult): the last N tests |
//! | `monitor_due` | `(u64 due ms, u128 credential)`      | `()`: index of scheduled tests by due time   |
//! | `version_meta` | `(u128 credential, u32 version)`    | empty since schema 2 (moved into `versions`) |
//! | `rotation_keys` | `(u128 credential, &str idempotency key)` | `RotationKey`: a rotate request's digest and answer |
//! | `webhooks`    | `(u128 namespace, u128 subscription)` | `Subscription`: URL, event filter, sealed signing secret |
//! | `webhook_deliveries` | `(u128 subscription, u128 delivery)` | `Delivery`: the event, attempts, state |
//! | `webhook_queue` | `(u64 due ms, u128 delivery)`      | `u128` subscription: pending deliveries by due time |
//!
//! Tables added after schema version 1 was first written are created when a store is
//! opened ([`ensure_tables`]), so older files gain them without a version bump. Schema 2
//! folded a version's metadata into `versions`, which a create writes anyway (a redb
//! commit costs per dirty page), and renamed the audit head; `store::upgrade` brings a
//! schema 1 store to it.
//!
//! The table definitions are public so that tools and tests can inspect a file with redb
//! directly; the store itself is the only writer.

use std::fmt;
use std::str::FromStr;

use redb::TableDefinition;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use uuid::Uuid;

use super::error::{Result, StoreError};

/// The schema version this build writes (older ones are upgraded at open, see
/// `store::upgrade`).
pub const SCHEMA_VERSION: u32 = 2;

pub const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
pub const NAMESPACES: TableDefinition<u128, &[u8]> = TableDefinition::new("namespaces");
pub const USERS: TableDefinition<&str, &[u8]> = TableDefinition::new("users");
pub const CREDENTIALS: TableDefinition<u128, &[u8]> = TableDefinition::new("credentials");
pub const NAMES: TableDefinition<(u128, &str), u128> = TableDefinition::new("names");
pub const VERSIONS: TableDefinition<(u128, u32), &[u8]> = TableDefinition::new("versions");
pub const AUDIT: TableDefinition<u64, &[u8]> = TableDefinition::new("audit");
pub const TOKENS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("tokens");
/// Index of `audit` by namespace, so one user's page is read without scanning the log.
pub const AUDIT_BY_NS: TableDefinition<(u128, u64), ()> = TableDefinition::new("audit_by_namespace");
/// Events waiting for delivery, by seq (see `store::outbox`).
pub const OUTBOX: TableDefinition<u64, &[u8]> = TableDefinition::new("outbox");
/// The last N test outcomes per credential (see `store::history`).
pub const TEST_HISTORY: TableDefinition<(u128, u64), &[u8]> = TableDefinition::new("test_history");
/// Scheduled tests by due time; mirrors each credential's `monitor.next_test_at`.
pub const MONITOR_DUE: TableDefinition<(u64, u128), ()> = TableDefinition::new("monitor_due");
/// Metadata of each kept secret version (see `store::versions`); no secret values.
pub const VERSION_META: TableDefinition<(u128, u32), &[u8]> = TableDefinition::new("version_meta");
/// Idempotency keys of rotate requests, per credential (see `store::versions`).
pub const ROTATION_KEYS: TableDefinition<(u128, &str), &[u8]> = TableDefinition::new("rotation_keys");
/// Webhook subscriptions of users, by namespace (see `store::webhooks`).
pub const WEBHOOKS: TableDefinition<(u128, u128), &[u8]> = TableDefinition::new("webhooks");
/// Webhook deliveries (one per event and subscription), by subscription, oldest first.
pub const WEBHOOK_DELIVERIES: TableDefinition<(u128, u128), &[u8]> = TableDefinition::new("webhook_deliveries");
/// Pending deliveries by when they are due: `(due unix ms, delivery)` -> subscription.
pub const WEBHOOK_QUEUE: TableDefinition<(u64, u128), u128> = TableDefinition::new("webhook_queue");

/// Creates every table added since schema version 1 (a no-op when they exist). Add new
/// tables here, so read transactions of an older file never meet a missing one.
pub(crate) fn ensure_tables(txn: &super::Txn) -> Result<()> {
    txn.open_table(OUTBOX)?;
    txn.open_table(TEST_HISTORY)?;
    txn.open_table(MONITOR_DUE)?;
    txn.open_table(VERSION_META)?;
    txn.open_table(ROTATION_KEYS)?;
    txn.open_table(WEBHOOKS)?;
    txn.open_table(WEBHOOK_DELIVERIES)?;
    txn.open_table(WEBHOOK_QUEUE)?;
    Ok(())
}

pub const META_SCHEMA_VERSION: &str = "schema_version";
pub const META_KEK_ID: &str = "kek_id";
pub const META_KEY_CHECK: &str = "key_check";
/// The audit head (the last record's seq and hash, keyed; see `store::audit`).
pub const META_AUDIT_HEAD: &str = "audit_chain_head";
/// Schema 1's audit head; since schema 2 it holds [`AUDIT_HEAD_MOVED`].
pub const META_AUDIT_HEAD_V1: &str = "audit_head";
/// Left in `meta.audit_head` by the upgrade to schema 2: no head decodes from it, so a
/// replica of schema 1 still running fails every write (each appends to the audit log)
/// rather than restarting the chain or writing versions where schema 2 keeps metadata.
pub const AUDIT_HEAD_MOVED: &[u8] = b"\"moved to audit_chain_head (schema 2)\"";
/// First seq whose hash is keyed (HMAC with the audit key); older records are legacy
/// unkeyed SHA-256 links (see `store::audit`).
pub const META_AUDIT_KEYED_FROM: &str = "audit_keyed_from";
/// Present once `audit_by_namespace` holds every record.
pub const META_AUDIT_INDEX: &str = "audit_index";

/// A namespace: one per user, with its data key wrapped by the master key.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NamespaceRecord {
    pub id: NamespaceId,
    pub user: String,
    /// Base64 of the wrapped DEK (AAD binds namespace id and `kek_id`).
    pub wrapped_dek: String,
    pub kek_id: String,
    pub created_at: u64,
}

/// The last audit record, kept in `meta` so truncating the log's tail is detected; `mac`
/// keys it (hex HMAC under the audit key over seq and hash), so whoever can write the file
/// but lacks the master key cannot move it back to an earlier record. Heads written before
/// it existed have none and are keyed at the first open (`Store::migrate_audit`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct AuditHead {
    pub seq: u64,
    #[serde(with = "hex32")]
    pub hash: [u8; 32],
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
}

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(Uuid);

        impl $name {
            pub fn from_uuid(id: Uuid) -> Self {
                $name(id)
            }
            pub fn as_uuid(&self) -> &Uuid {
                &self.0
            }
            pub(crate) fn key(&self) -> u128 {
                self.0.as_u128()
            }
            #[allow(dead_code)]
            pub(crate) fn from_key(k: u128) -> Self {
                $name(Uuid::from_u128(k))
            }
        }
        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.hyphenated().fmt(f)
            }
        }
        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", stringify!($name), self.0.hyphenated())
            }
        }
        impl FromStr for $name {
            type Err = StoreError;
            fn from_str(s: &str) -> Result<Self> {
                Uuid::parse_str(s).map($name).map_err(|_| StoreError::NotFound)
            }
        }
        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(&self.0.hyphenated())
            }
        }
        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
                Uuid::parse_str(&s).map($name).map_err(serde::de::Error::custom)
            }
        }
    };
}

id_type!(
    /// A namespace id (UUIDv7). Parsing an unparsable id yields `NotFound`.
    NamespaceId
);
id_type!(
    /// A credential id: UUIDv7, the creation ms and 74 random bits (not guessable; ids
    /// grow with time, so new rows land on a table's right edge). Parsing an unparsable
    /// id yields `NotFound`.
    CredentialId
);

pub(crate) mod hex32 {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &[u8; 32], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&crate::crypto::hex(v))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<[u8; 32], D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        parse(&s).ok_or_else(|| serde::de::Error::custom("expected 64 hex digits"))
    }

    pub fn parse(s: &str) -> Option<[u8; 32]> {
        let b = s.as_bytes();
        if b.len() != 64 {
            return None;
        }
        let mut out = [0u8; 32];
        for (i, pair) in b.chunks(2).enumerate() {
            let h = (pair[0] as char).to_digit(16)?;
            let l = (pair[1] as char).to_digit(16)?;
            out[i] = (h * 16 + l) as u8;
        }
        Some(out)
    }
}

pub(crate) fn enc<T: Serialize>(v: &T) -> Vec<u8> {
    serde_json::to_vec(v).expect("store records serialize")
}

pub(crate) fn dec<T: serde::de::DeserializeOwned>(bytes: &[u8], what: &str) -> Result<T> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::Corrupt(format!("{what}: {e}")))
}
