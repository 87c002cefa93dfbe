//! Per-call state: what one plugin call may see and do. A fresh `CallState`
//! lives in a fresh `Store` for exactly one export call.

use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Instant;

use secrecy::SecretString;
use wasmtime::component::ResourceTable;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use super::bindings::credhost::provider::types;
use super::manifest::{Capability, Manifest};
use super::runtime::HostServices;

/// Which export is running; network capabilities exist only during `test`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Describe,
    Validate,
    Test,
}

/// A capability use the host recorded during a call; the service layer audits these.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CapabilityEvent {
    pub capability: Capability,
    /// What was asked (a field name, a URL origin); never a secret value.
    pub detail: String,
    pub allowed: bool,
}

/// The credential a call is bound to: the only fields host capabilities can reach.
#[derive(Default)]
pub struct Bound {
    pub environment: Option<String>,
    /// Non-secret field values.
    pub fields: BTreeMap<String, String>,
    /// Secret field values; never handed to the guest except through `secrets.reveal`.
    pub secrets: BTreeMap<String, SecretString>,
}

impl std::fmt::Debug for Bound {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bound")
            .field("environment", &self.environment)
            .field("fields", &self.fields)
            .field("secrets", &self.secrets.keys().collect::<Vec<_>>())
            .finish()
    }
}

/// Capability calls one plugin call may make; beyond this every call is denied at once,
/// unrecorded (a loop of denied calls must not turn into a flood of audit records).
pub const MAX_CAPABILITY_CALLS: u32 = 1_000;
/// Capability events recorded (audited and logged) per plugin call; the rest are
/// counted in one summary event.
pub const MAX_RECORDED_EVENTS: usize = 64;

pub struct CallState {
    pub(crate) manifest: Arc<Manifest>,
    pub(crate) phase: Phase,
    pub(crate) bound: Arc<Bound>,
    pub(crate) host: Arc<HostServices>,
    events: Vec<CapabilityEvent>,
    /// Capability calls so far, and those not recorded as events (over the caps above).
    capability_calls: u32,
    unrecorded: u32,
    pub(crate) log_lines: u32,
    /// When the call started; network capabilities fit their timeouts in what is left.
    pub(crate) started: Instant,
    /// `memory_mib` in bytes: the cap on all linear memories of the call together.
    memory_cap: usize,
    /// Bytes granted to all memories so far (never lowered on a failed growth: a plugin
    /// could otherwise walk the count down by failing growths on purpose).
    memory_used: usize,
    pub(crate) memory_exceeded: bool,
    /// What the guest wrote to stderr (bounded); logged after the call.
    pub(crate) stderr: StderrCapture,
    /// Built on the guest's first WASI call: many calls (a Rust `validate`) make none.
    wasi: Option<WasiCtx>,
    table: ResourceTable,
}

impl CallState {
    pub(crate) fn new(manifest: Arc<Manifest>, phase: Phase, bound: Arc<Bound>, host: Arc<HostServices>) -> Self {
        let stderr = StderrCapture::default();
        let memory_cap = manifest.limits.memory_mib as usize * 1024 * 1024;
        CallState {
            manifest,
            phase,
            bound,
            host,
            events: Vec::new(),
            capability_calls: 0,
            unrecorded: 0,
            log_lines: 0,
            started: Instant::now(),
            memory_cap,
            memory_used: 0,
            memory_exceeded: false,
            stderr,
            wasi: None,
            table: ResourceTable::new(),
        }
    }

    /// The single check every capability call passes through. Fails closed: an
    /// undeclared capability, or a network one outside `test`, is denied and recorded.
    pub(crate) fn gate(&mut self, cap: Capability, detail: &str) -> Result<(), types::Error> {
        self.capability_calls = self.capability_calls.saturating_add(1);
        if self.capability_calls > MAX_CAPABILITY_CALLS {
            self.unrecorded = self.unrecorded.saturating_add(1);
            return Err(types::Error::Denied(format!(
                "this call has used its budget of {MAX_CAPABILITY_CALLS} capability calls"
            )));
        }
        let denial = if !self.manifest.has(cap) {
            Some(format!("capability `{cap}` is not declared in the manifest of `{}`", self.manifest.id))
        } else if cap.is_network() && self.phase != Phase::Test {
            Some(format!("capability `{cap}` is only available during `test`"))
        } else {
            None
        };
        let allowed = denial.is_none();
        // `log`/`settings` uses are too frequent and harmless to record when allowed.
        let recorded = (!allowed || !matches!(cap, Capability::Log | Capability::Settings))
            && self.record(CapabilityEvent { capability: cap, detail: detail.to_string(), allowed });
        match denial {
            Some(msg) => {
                if recorded {
                    tracing::warn!(plugin = %self.manifest.id, capability = %cap, detail, "capability denied");
                }
                Err(types::Error::Denied(msg))
            }
            None => Ok(()),
        }
    }

    /// Records a refusal that happened after the gate (host not allowed, field not revealable).
    pub(crate) fn refuse(&mut self, cap: Capability, detail: String) {
        if let Some(last) = self.events.last_mut() {
            if last.capability == cap && last.allowed {
                last.allowed = false;
                last.detail = detail;
                return;
            }
        }
        self.record(CapabilityEvent { capability: cap, detail, allowed: false });
    }

    /// Keeps `event` if the call is under [`MAX_RECORDED_EVENTS`]; counts it otherwise.
    fn record(&mut self, event: CapabilityEvent) -> bool {
        if self.events.len() < MAX_RECORDED_EVENTS {
            self.events.push(event);
            true
        } else {
            self.unrecorded = self.unrecorded.saturating_add(1);
            false
        }
    }

    /// The call's events, with one summary event for those over the caps.
    pub(crate) fn take_events(&mut self) -> Vec<CapabilityEvent> {
        let mut events = std::mem::take(&mut self.events);
        if self.unrecorded > 0 {
            let capability = events.last().map_or(Capability::Log, |e| e.capability);
            events.push(CapabilityEvent {
                capability,
                detail: format!(
                    "{} more capability calls not recorded one by one (at most {MAX_RECORDED_EVENTS} events \
                     and {MAX_CAPABILITY_CALLS} calls per plugin call)",
                    self.unrecorded
                ),
                allowed: false,
            });
        }
        events
    }
}

impl WasiView for CallState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        let stderr = &self.stderr;
        let ctx = self.wasi.get_or_insert_with(|| wasi_ctx(stderr));
        WasiCtxView { ctx, table: &mut self.table }
    }
}

/// The WASI a call sees: no preopens, env, args, stdin/stdout or sockets: the builder's
/// defaults plus explicit network denial (its defaults have changed between releases).
/// Stderr goes to the call's bounded buffer, logged (scrubbed) after the call.
fn wasi_ctx(stderr: &StderrCapture) -> WasiCtx {
    WasiCtx::builder()
        .stderr(stderr.clone())
        .allow_tcp(false)
        .allow_udp(false)
        .allow_ip_name_lookup(false)
        .build()
}

/// The cap is per call: the sum of every memory in the store (a component may hold
/// several), so many small memories cannot add up past `memory_mib`. Creating a memory
/// is reported as growth from 0; the counts below back up the pool's per-component
/// limits (see `runtime::MAX_MEMORIES_PER_COMPONENT`).
impl wasmtime::ResourceLimiter for CallState {
    fn memory_growing(&mut self, current: usize, desired: usize, _max: Option<usize>) -> wasmtime::Result<bool> {
        let total = self.memory_used.saturating_add(desired.saturating_sub(current));
        if total > self.memory_cap {
            self.memory_exceeded = true;
            // An error traps the guest: a memory bomb ends the call instead of limping on.
            wasmtime::bail!("memory limit of {} MiB exceeded", self.memory_cap / (1024 * 1024));
        }
        self.memory_used = total;
        Ok(true)
    }

    fn instances(&self) -> usize {
        super::runtime::MAX_CORE_INSTANCES_PER_COMPONENT as usize
    }

    fn memories(&self) -> usize {
        super::runtime::MAX_MEMORIES_PER_COMPONENT as usize
    }

    fn tables(&self) -> usize {
        super::runtime::MAX_TABLES_PER_COMPONENT as usize
    }

    fn table_growing(&mut self, _current: usize, desired: usize, _max: Option<usize>) -> wasmtime::Result<bool> {
        Ok(desired <= 100_000)
    }
}

impl types::Host for CallState {}

/// Bytes of a call's stderr kept; the rest is counted and dropped (the guest's writes
/// always succeed, so a chatty plugin is not broken by the cap).
pub const STDERR_CAP: usize = 8 * 1024;

/// A call's stderr: a bounded in-memory buffer.
#[derive(Clone, Default)]
pub struct StderrCapture(Arc<Mutex<Captured>>);

#[derive(Default)]
struct Captured {
    bytes: Vec<u8>,
    dropped: usize,
}

impl StderrCapture {
    fn push(&self, data: &[u8]) {
        let mut c = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let n = STDERR_CAP.saturating_sub(c.bytes.len()).min(data.len());
        c.bytes.extend_from_slice(&data[..n]);
        c.dropped = c.dropped.saturating_add(data.len() - n);
    }

    /// What was kept, and how many bytes were dropped over the cap.
    pub(crate) fn take(&self) -> (Vec<u8>, usize) {
        let mut c = self.0.lock().unwrap_or_else(|p| p.into_inner());
        (std::mem::take(&mut c.bytes), std::mem::take(&mut c.dropped))
    }
}

impl wasmtime_wasi::cli::IsTerminal for StderrCapture {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl wasmtime_wasi::cli::StdoutStream for StderrCapture {
    fn p2_stream(&self) -> Box<dyn wasmtime_wasi::p2::OutputStream> {
        Box::new(self.clone())
    }

    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

#[wasmtime_wasi::async_trait]
impl wasmtime_wasi::p2::OutputStream for StderrCapture {
    fn write(&mut self, bytes: bytes::Bytes) -> wasmtime_wasi::p2::StreamResult<()> {
        self.push(&bytes);
        Ok(())
    }

    fn flush(&mut self) -> wasmtime_wasi::p2::StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> wasmtime_wasi::p2::StreamResult<usize> {
        Ok(64 * 1024)
    }
}

#[wasmtime_wasi::async_trait]
impl wasmtime_wasi::p2::Pollable for StderrCapture {
    async fn ready(&mut self) {}
}

impl tokio::io::AsyncWrite for StderrCapture {
    fn poll_write(self: Pin<&mut Self>, _cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        self.push(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}
