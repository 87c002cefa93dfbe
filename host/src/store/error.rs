//! The store's one error type.

use crate::crypto::CryptoError;

/// Everything a [`Store`](super::Store) operation can fail with. Messages never carry
/// secret values.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// No such user, token or credential — or it belongs to another namespace, which is
    /// reported identically so existence never leaks across users.
    #[error("not found")]
    NotFound,
    /// A credential with this name already exists in the namespace (soft-deleted ones
    /// keep their name until purged: then `deleted` is the holder's id).
    #[error("a credential named {name:?} already exists")]
    NameTaken { name: String, deleted: Option<super::CredentialId> },
    /// A user with this name already exists.
    #[error("user {name:?} already exists")]
    UserExists { name: String },
    /// The operation does not fit the record's current state (e.g. a version that is no
    /// longer pending); the message says why.
    #[error("{0}")]
    Conflict(String),
    /// Input rejected before touching the database.
    #[error("invalid input: {0}")]
    Invalid(String),
    /// One input field rejected before touching the database.
    #[error("invalid {field}: {message}")]
    InvalidField { field: String, message: String },
    /// The master key given is not the one this database was written with. Nothing was
    /// read or written.
    #[error(
        "wrong master key: the database expects key id {expected}, the key given has id {given}"
    )]
    WrongKey { expected: String, given: String },
    /// The file was written by a schema this build does not know.
    #[error("unsupported store schema version {found} (this build supports {supported})")]
    SchemaVersion { found: u32, supported: u32 },
    /// The audit chain is broken at `seq`.
    #[error("audit chain broken at seq {seq}: {reason}")]
    AuditBroken { seq: u64, reason: String },
    /// Stored data is inconsistent or unreadable.
    #[error("store is corrupt: {0}")]
    Corrupt(String),
    /// Sealing or opening failed; opening fails when a blob or wrapped key was tampered
    /// with or moved to another record.
    #[error(transparent)]
    Crypto(#[from] CryptoError),
    /// The embedded database failed.
    #[error("database: {0}")]
    Db(#[from] redb::Error),
    /// PostgreSQL failed or refused (the message is PostgreSQL's, or what to fix).
    #[error("PostgreSQL: {0}")]
    Postgres(String),
}

macro_rules! from_redb {
    ($($t:ty),*) => {$(
        impl From<$t> for StoreError {
            fn from(e: $t) -> Self {
                StoreError::Db(e.into())
            }
        }
    )*};
}
from_redb!(
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError,
    redb::SetDurabilityError
);

/// Result alias for store operations.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;
