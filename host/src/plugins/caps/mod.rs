//! Host capabilities, one module each. Every entry point passes through
//! [`CallState::gate`](super::state::CallState::gate) first.

mod http;
pub mod keys;
pub(crate) mod log;
mod net;
pub(crate) mod netio;
pub(crate) mod pgtls;
mod secrets;
mod settings;
mod sql;
mod ssh;
