//! `log.write`: plugin diagnostics into the host log, capped and scrubbed.

use crate::plugins::bindings::credhost::provider::log::{self, Level};
use crate::plugins::manifest::Capability;
use crate::plugins::state::CallState;
use crate::redact;

/// Lines a single call may write; more are dropped (one notice is logged).
pub const MAX_LINES: u32 = 32;
/// Longest line kept, bytes.
pub const MAX_LINE: usize = 1024;

impl log::Host for CallState {
    fn write(&mut self, level: Level, message: String) {
        if self.gate(Capability::Log, "write").is_err() {
            return;
        }
        self.log_lines += 1;
        if self.log_lines > MAX_LINES {
            if self.log_lines == MAX_LINES + 1 {
                tracing::warn!(plugin = %self.manifest.id, "plugin log limit reached; further lines dropped");
            }
            return;
        }
        let mut msg = redact::scrub(&message, self.bound.secrets.values());
        if msg.len() > MAX_LINE {
            let mut cut = MAX_LINE;
            while !msg.is_char_boundary(cut) {
                cut -= 1;
            }
            msg.truncate(cut);
            msg.push('…');
        }
        let plugin = self.manifest.id.as_str();
        match level {
            Level::Debug => tracing::debug!(target: "credhost::plugin", plugin, "{msg}"),
            Level::Info => tracing::info!(target: "credhost::plugin", plugin, "{msg}"),
            Level::Warn => tracing::warn!(target: "credhost::plugin", plugin, "{msg}"),
            Level::Error => tracing::error!(target: "credhost::plugin", plugin, "{msg}"),
        }
    }
}
