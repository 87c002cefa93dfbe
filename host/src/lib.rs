//! credhost: a credential host whose credential types are sandboxed
//! WebAssembly components.
//!
//! - [`plugins`]: the WIT contract's host side, the sandbox and the built-in types.
//! - [`crypto`], [`store`]: the key hierarchy and the encrypted redb store.
//! - [`service`]: the operations, shared by the [`api`], the [`cli`] and config.
//! - [`redact`]: scrubbing secret values out of text that leaves the host.

pub mod api;
pub mod app;
pub mod cli;
pub mod config;
pub mod crypto;
pub mod egress;
pub mod fsperm;
pub mod names;
pub mod metrics;
pub mod plugins;
pub mod provision;
pub mod redact;
pub mod server;
pub mod service;
pub mod store;
