//! Credential-type plugins: WebAssembly components run in a sandbox.
//!
//! - [`runtime`]: the engine and the per-call sandbox.
//! - [`manifest`]: what a plugin may do, parsed and checked once.
//! - [`registry`]: the loaded plugins by type id (built-ins embedded in the binary).
//! - `caps/`: one module per host capability a plugin can import.

pub mod bindings;
pub mod cache;
pub(crate) mod caps;
pub mod manifest;
pub mod registry;
pub mod runtime;
pub mod state;
pub mod types;

pub use manifest::{BaseUrl, Capability, Limits, Manifest, UsePolicy, UseSource};
pub use registry::{LoadProblem, LoadReport, Registry, Sources};
pub use runtime::{Call, HostServices, Plugin, Runtime};
pub use state::{Bound, CapabilityEvent};
pub use types::{
    AuthPlan, FieldError, FieldKind, FieldSpec, PlanValue, TestReport, TestStatus, TypeDescriptor, Validated,
};

use secrecy::SecretString;

use bindings::credhost::provider::types as wit;

/// Why a plugin call or load failed. Messages never carry secret values.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum PluginError {
    #[error("plugin `{plugin}` exceeded its time limit of {limit_ms} ms")]
    Timeout { plugin: String, limit_ms: u32 },
    #[error("plugin `{plugin}` exceeded its memory limit of {limit_mib} MiB")]
    MemoryLimit { plugin: String, limit_mib: u32 },
    #[error("plugin `{plugin}` returned {size} bytes, over its output limit of {limit} bytes")]
    OutputTooLarge { plugin: String, size: usize, limit: usize },
    #[error("plugin `{plugin}` crashed: {message}")]
    Trap { plugin: String, message: String },
    #[error("plugin `{plugin}` broke the plugin contract: {message}")]
    Contract { plugin: String, message: String },
    /// The plugin's `test` returned an error of its own (e.g. a denied capability).
    #[error("plugin `{plugin}` reported {kind}: {message}")]
    Reported { plugin: String, kind: ReportedKind, message: String },
    #[error("cannot load plugin {origin}: {message}")]
    Load { origin: String, message: String },
    #[error("no credential type `{0}` is loaded")]
    UnknownType(String),
    #[error("the plugin sandbox is at capacity; retry shortly")]
    Busy,
    #[error("plugin engine: {0}")]
    Engine(String),
}

/// The WIT `error` cases a plugin can report from `test`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ReportedKind {
    Invalid,
    Unreachable,
    Rejected,
    Denied,
    Unsupported,
    Internal,
}

impl std::fmt::Display for ReportedKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = match self {
            ReportedKind::Invalid => "invalid input",
            ReportedKind::Unreachable => "unreachable",
            ReportedKind::Rejected => "rejected",
            ReportedKind::Denied => "denied",
            ReportedKind::Unsupported => "unsupported",
            ReportedKind::Internal => "an internal error",
        };
        f.write_str(s)
    }
}

impl PluginError {
    pub(crate) fn reported(plugin: &str, e: wit::Error, secrets: &[SecretString]) -> Self {
        let (kind, message) = match e {
            wit::Error::Invalid(errs) => (
                ReportedKind::Invalid,
                errs.iter().map(|e| format!("{}: {}", e.field, e.message)).collect::<Vec<_>>().join("; "),
            ),
            wit::Error::Unreachable(m) => (ReportedKind::Unreachable, m),
            wit::Error::Rejected(m) => (ReportedKind::Rejected, m),
            wit::Error::Denied(m) => (ReportedKind::Denied, m),
            wit::Error::Unsupported(m) => (ReportedKind::Unsupported, m),
            wit::Error::Internal(m) => (ReportedKind::Internal, m),
        };
        PluginError::Reported { plugin: plugin.into(), kind, message: crate::redact::scrub(&message, secrets) }
    }
}
