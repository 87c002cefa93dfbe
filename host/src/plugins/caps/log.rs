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
        // Scrubbed whole, then cut: a secret crossing the cap leaves no prefix.
        let scrubber = redact::Scrubber::new(self.bound.secrets.values());
        let (mut msg, cut) = scrubber.scrub_capped(&message, MAX_LINE, false);
        if cut {
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

/// Stderr lines logged per call; more are summarised in one line.
pub const MAX_STDERR_LINES: usize = 20;
/// Stderr lines logged per type per minute, over all its calls (a plugin that prints on
/// every call cannot flood the log under load).
pub const MAX_STDERR_LINES_PER_MINUTE: u32 = 200;

/// Per type: when the current minute started, lines logged in it, lines suppressed.
static STDERR_RATE: std::sync::LazyLock<std::sync::Mutex<std::collections::HashMap<String, (std::time::Instant, u32, u64)>>> =
    std::sync::LazyLock::new(Default::default);

/// Logs what a call wrote to stderr (a guest panic message, a Python traceback): the
/// whole capture scrubbed of the call's secrets (a secret may span lines: a PEM key), then
/// split into lines, each cut to [`MAX_LINE`], at most [`MAX_STDERR_LINES`] per call and
/// [`MAX_STDERR_LINES_PER_MINUTE`] per type.
pub(crate) fn log_stderr<'a>(
    plugin: &str,
    captured: &[u8],
    dropped: usize,
    secrets: impl IntoIterator<Item = &'a secrecy::SecretString>,
) {
    if captured.is_empty() {
        return;
    }
    let scrubber = redact::Scrubber::new(secrets);
    let mut captured = captured;
    if dropped > 0 {
        // The capture cut may have split a character (of a secret, maybe): drop the
        // incomplete bytes so the partial-tail check below sees the text before them.
        if let Err(e) = std::str::from_utf8(captured) {
            if e.error_len().is_none() {
                captured = &captured[..e.valid_up_to()];
            }
        }
    }
    // Whole text first: if the capture cut a secret off, its start is redacted too.
    let (text, _) = scrubber.scrub_capped(&String::from_utf8_lossy(captured), usize::MAX, dropped > 0);
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let budget = {
        let mut rates = STDERR_RATE.lock().unwrap_or_else(|p| p.into_inner());
        let entry = rates.entry(plugin.to_string()).or_insert((std::time::Instant::now(), 0, 0));
        if entry.0.elapsed() >= std::time::Duration::from_secs(60) {
            if entry.2 > 0 {
                tracing::warn!(target: "credhost::plugin", plugin, suppressed = entry.2, "plugin stderr lines suppressed in the last minute (rate limit)");
            }
            *entry = (std::time::Instant::now(), 0, 0);
        }
        let allowed = (MAX_STDERR_LINES_PER_MINUTE.saturating_sub(entry.1) as usize).min(MAX_STDERR_LINES).min(lines.len());
        entry.1 += allowed as u32;
        entry.2 += (lines.len() - allowed) as u64;
        allowed
    };
    for line in lines.iter().take(budget) {
        // Already scrubbed; scrub_capped keeps a marker whole at the cut and drops a tail
        // that could begin a secret.
        let (mut msg, cut) = scrubber.scrub_capped(line, MAX_LINE, false);
        if cut {
            msg.push('…');
        }
        tracing::warn!(target: "credhost::plugin", plugin, stream = "stderr", "{msg}");
    }
    if budget < lines.len() || dropped > 0 {
        tracing::warn!(
            target: "credhost::plugin",
            plugin,
            stream = "stderr",
            lines_not_logged = lines.len() - budget,
            bytes_dropped = dropped,
            "more plugin stderr not logged (per-call and per-minute caps)"
        );
    }
}
