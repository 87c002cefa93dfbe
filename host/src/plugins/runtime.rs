//! The sandbox: one engine, components compiled once, a fresh store per call.
//!
//! Every call runs in its own `Store` with a memory cap, an epoch deadline (wall
//! time) and WASI without preopens, env, args, stdin/stdout or sockets; stderr goes to
//! a bounded buffer that is logged, scrubbed, after the call. A trap, a timeout,
//! a memory overrun or an oversize result ends that call with a [`PluginError`];
//! the engine and every other plugin go on serving.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};
use wasmtime::component::{Component, ComponentExportIndex, HasSelf, Linker};
use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, Store};

use super::bindings::credhost::provider::http as wit_http;
use super::bindings::credhost::provider::types as wit;
use super::bindings::{CredentialType, CredentialTypePre};
use super::manifest::{is_identifier, AllowedHost, Capability, Manifest};
use super::state::{Bound, CallState, CapabilityEvent, Phase};
use super::types::{AuthPlan, FieldError, FieldKind, TestReport, TestStatus, TypeDescriptor, Validated};
use super::PluginError;
use crate::redact;

/// Epoch tick; deadlines are whole ticks, so a budget is honoured within one tick.
const TICK: Duration = Duration::from_millis(10);
/// Concurrent plugin instances the pool holds; a call beyond this fails as busy (503).
pub(crate) const POOL_INSTANCES: u32 = 128;
/// Largest linear memory any plugin may have (manifests cap lower).
const POOL_MAX_MEMORY: usize = super::manifest::MAX_LIMITS.memory_mib as usize * 1024 * 1024;
/// Per-component bounds, so one plugin cannot take a large share of the pool's slots.
/// The built-ins and the hostile fixture (Rust, wasm32-wasip2) each have 3 core
/// instances, 1 memory and 2 tables; toolchains with a preview1 adapter add one memory.
/// Checked when a component is compiled or loaded from the cache, and again per store.
pub(crate) const MAX_CORE_INSTANCES_PER_COMPONENT: u32 = 16;
pub(crate) const MAX_MEMORIES_PER_COMPONENT: u32 = 4;
pub(crate) const MAX_TABLES_PER_COMPONENT: u32 = 8;

/// Table bytes a pool slot keeps resident (reset with a memset instead of `madvise`):
/// the built-ins' tables use a few KiB.
const TABLE_KEEP_RESIDENT: usize = 64 * 1024;
/// With the in-place reset, the most bytes of a memory's written pages reset in place
/// and kept resident per slot; beyond it the rest is released as before. A `validate`
/// writes ~16 KiB.
const MEMORY_KEEP_RESIDENT: usize = 512 * 1024;
/// Unused slots that stay warm (affine to a plugin, pages resident) before they are
/// handed to another plugin: bounds the pool's idle resident memory.
const MAX_UNUSED_WARM_SLOTS: u32 = 32;
/// How often (in epoch ticks) the in-place reset re-checks that no swap was turned on.
const SWAP_CHECK_TICKS: u32 = 100;

/// Whether swap is (or may be) active: any swap area in `/proc/swaps`, or no way to tell.
fn swap_active() -> bool {
    match std::fs::read_to_string("/proc/swaps") {
        // A header line, then one line per active swap area.
        Ok(text) => text.lines().skip(1).any(|l| !l.trim().is_empty()),
        Err(_) => true,
    }
}

/// Runs on the epoch thread when pool slots are reset in place: once swap is on, a
/// written page may be swapped out before its reset and escape it, so plugin calls stop
/// (fail closed) until a restart picks the `madvise` reset.
struct SwapWatch {
    appeared: Arc<AtomicBool>,
    ticks: u32,
}

impl SwapWatch {
    fn tick(&mut self) {
        self.ticks += 1;
        if self.ticks < SWAP_CHECK_TICKS || self.appeared.load(Ordering::Relaxed) {
            return;
        }
        self.ticks = 0;
        if swap_active() {
            self.appeared.store(true, Ordering::SeqCst);
            tracing::error!(
                "swap was turned on while credhost runs: plugin calls are refused until credhost is \
                 restarted (its plugin sandbox resets memory in place only when no swap is active)"
            );
        }
    }
}

/// Host-side services capabilities use (network clients, policies).
#[derive(Debug, Default)]
pub struct HostServices {
    /// Allow outgoing calls to loopback/private addresses (tests, on-prem services).
    pub allow_private_networks: bool,
}

/// The engine, the linker and the epoch ticker shared by every plugin.
pub struct Runtime {
    engine: Engine,
    linker: Linker<CallState>,
    host: Arc<HostServices>,
    stop_ticker: Arc<AtomicBool>,
    /// Set when swap was turned on after start-up with the in-place reset: calls refused.
    swap_appeared: Arc<AtomicBool>,
    /// The engine's compilation settings, hashed (part of compile cache entry names).
    fingerprint: u64,
}

impl Drop for Runtime {
    fn drop(&mut self) {
        self.stop_ticker.store(true, Ordering::Relaxed);
    }
}

/// A loaded plugin: manifest, descriptor and its pre-linked component.
pub struct Plugin {
    pub manifest: Arc<Manifest>,
    pub descriptor: TypeDescriptor,
    /// Hex SHA-256 of the component bytes.
    pub sha256: String,
    /// Where it came from (`builtin:alpaca`, a file path).
    pub origin: String,
    pre: CredentialTypePre<CallState>,
    /// The 0.1.1 export `authenticate`, if the component has it (0.1.0 components do not).
    authenticate: Option<ComponentExportIndex>,
}

impl Plugin {
    /// The manifest's `[use]` policy; `None`: no proxy use, no reveal, no exec.
    pub fn use_policy(&self) -> Option<&super::manifest::UsePolicy> {
        self.manifest.use_policy.as_ref()
    }

    /// Whether the component exports `authenticate` (built against WIT 0.1.1 or later).
    pub fn has_authenticate(&self) -> bool {
        self.authenticate.is_some()
    }
}

impl std::fmt::Debug for Plugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Plugin").field("id", &self.manifest.id).field("origin", &self.origin).finish()
    }
}

/// What a call produced, plus the capability uses it made (for the audit log).
#[derive(Debug)]
pub struct Call<T> {
    pub result: Result<T, PluginError>,
    pub events: Vec<CapabilityEvent>,
}

impl Runtime {
    pub fn new(host: HostServices) -> Result<Runtime, PluginError> {
        let mut pool = PoolingAllocationConfig::default();
        pool.total_component_instances(POOL_INSTANCES)
            .total_core_instances(POOL_INSTANCES * 4)
            .total_memories(POOL_INSTANCES * 2)
            .total_tables(POOL_INSTANCES * 4)
            .total_stacks(POOL_INSTANCES)
            .max_core_instances_per_component(MAX_CORE_INSTANCES_PER_COMPONENT)
            .max_memories_per_component(MAX_MEMORIES_PER_COMPONENT)
            .max_tables_per_component(MAX_TABLES_PER_COMPONENT)
            .max_memory_size(POOL_MAX_MEMORY);
        // Resetting a slot after a call. By default wasmtime `madvise`s the whole memory
        // away: a TLB shootdown per call, and the next call faults every page back in (most
        // of a sandboxed call's cost). With the `PAGEMAP_SCAN` ioctl it resets only the pages
        // the call wrote (memcpy from the image / zero) and keeps them mapped. That scan sees
        // present pages only: a written page swapped out before the reset would keep its
        // old contents (a secret of the previous call) for the next instance in the slot.
        // So it is used only when no swap is active (checked here, and again while running:
        // see `SwapWatch`). Tables are small: a memset of a few KiB beats an madvise.
        let in_place_reset = !swap_active() && PoolingAllocationConfig::is_pagemap_scan_available();
        pool.table_keep_resident(TABLE_KEEP_RESIDENT)
            // A warm slot keeps what its last call wrote resident (≤ MEMORY_KEEP_RESIDENT):
            // bound how many unused warm slots there are.
            .max_unused_warm_slots(MAX_UNUSED_WARM_SLOTS);
        if in_place_reset {
            pool.pagemap_scan(wasmtime::Enabled::Yes).linear_memory_keep_resident(MEMORY_KEEP_RESIDENT);
        } else {
            // Without the scan a keep-resident region is memset blindly from address 0,
            // where a Rust guest's stack bottom is: no gain. Leave memories to madvise.
            pool.pagemap_scan(wasmtime::Enabled::No).linear_memory_keep_resident(0);
        }
        let mut config = Config::new();
        config
            .epoch_interruption(true)
            .allocation_strategy(InstanceAllocationStrategy::Pooling(pool))
            // A small reservation keeps 128 pooled memories within modest address space.
            .memory_reservation(POOL_MAX_MEMORY as u64)
            .memory_guard_size(64 * 1024);
        let engine = Engine::new(&config).map_err(|e| PluginError::Engine(format!("{e:#}")))?;

        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker).map_err(|e| PluginError::Engine(format!("{e:#}")))?;
        CredentialType::add_to_linker::<_, HasSelf<_>>(&mut linker, |s| s)
            .map_err(|e| PluginError::Engine(format!("{e:#}")))?;

        let stop_ticker = Arc::new(AtomicBool::new(false));
        let swap_appeared = Arc::new(AtomicBool::new(false));
        let (ticker_engine, stop) = (engine.clone(), stop_ticker.clone());
        let mut watch = in_place_reset.then(|| SwapWatch { appeared: swap_appeared.clone(), ticks: 0 });
        std::thread::Builder::new()
            .name("credhost-epoch".into())
            .spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(TICK);
                    ticker_engine.increment_epoch();
                    if let Some(w) = &mut watch {
                        w.tick();
                    }
                }
            })
            .map_err(|e| PluginError::Engine(format!("epoch thread: {e}")))?;
        tracing::debug!(in_place_reset, "plugin sandbox pool ready");
        let fingerprint = super::cache::engine_fingerprint(&engine);
        Ok(Runtime { engine, linker, host: Arc::new(host), stop_ticker, swap_appeared, fingerprint })
    }

    /// Whether outgoing calls may reach private addresses (the operator's choice).
    pub fn allow_private_networks(&self) -> bool {
        self.host.allow_private_networks
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// Hash of the engine's compilation settings (see [`super::cache::entry_path`]).
    pub fn engine_fingerprint(&self) -> u64 {
        self.fingerprint
    }

    /// Compiles a component (slow: tens of ms in release). See [`Runtime::load`].
    pub fn compile(&self, wasm: &[u8]) -> Result<Component, String> {
        Component::new(&self.engine, wasm).map_err(|e| format!("not a valid component: {e:#}"))
    }

    /// Compiles, links and describes a plugin; checks it against its manifest.
    pub fn load(&self, wasm: &[u8], manifest: Manifest, origin: String) -> Result<Plugin, PluginError> {
        let sha256 = sha256_hex(wasm);
        check_pin(&sha256, &manifest, &origin)?;
        let component = self.compile(wasm).map_err(|message| PluginError::Load { origin: origin.clone(), message })?;
        self.link(component, manifest, sha256, origin)
    }

    /// Links an already compiled component (fresh or from the precompiled cache) and
    /// calls its `describe`.
    pub fn link(
        &self,
        component: Component,
        manifest: Manifest,
        sha256: String,
        origin: String,
    ) -> Result<Plugin, PluginError> {
        self.link_described(component, manifest, sha256, origin, None)
    }

    /// Like [`Runtime::link`]; with `descriptor` (what this component's `describe`
    /// returned under this very manifest, kept by the compile cache beside the artefact)
    /// no `describe` call is made. Either way the descriptor is checked against the manifest.
    pub fn link_described(
        &self,
        component: Component,
        manifest: Manifest,
        sha256: String,
        origin: String,
        descriptor: Option<TypeDescriptor>,
    ) -> Result<Plugin, PluginError> {
        let load_err = |message: String| PluginError::Load { origin: origin.clone(), message };
        // Optional since 0.1.1: looked up here, type-checked when called.
        let authenticate = component.get_export_index(None, super::bindings::AUTHENTICATE);
        let instance_pre = self
            .linker
            .instantiate_pre(&component)
            .map_err(|e| load_err(format!("does not fit the credhost:provider world: {e:#}")))?;
        let pre = CredentialTypePre::new(instance_pre)
            .map_err(|e| load_err(format!("does not export the credential-type world: {e:#}")))?;
        let manifest = Arc::new(manifest);
        let descriptor = match descriptor {
            Some(d) => d,
            None => {
                let call = self.run(&pre, &manifest, Phase::Describe, Arc::default(), |ct, store| {
                    ct.call_describe(store)
                });
                let raw = call.result.map_err(|e| load_err(format!("describe failed: {e}")))?;
                TypeDescriptor::from_wit(raw)
            }
        };
        check_descriptor(&descriptor, &manifest).map_err(load_err)?;
        if authenticate.is_none() && manifest.use_policy.as_ref().is_some_and(|u| u.proxy()) {
            return Err(load_err(
                "the manifest's [use] has a base_url, but the component has no `authenticate` export \
                 (built against credhost:provider@0.1.0?); rebuild it against the current WIT"
                    .into(),
            ));
        }
        Ok(Plugin { manifest, descriptor, sha256, origin, pre, authenticate })
    }

    /// Runs the plugin's offline checks on `input` (secret fields included).
    /// `Ok(Err(errors))` is a field-level verdict; `Err` is a fault of the plugin.
    ///
    /// `validate` is the one export that sees secrets in plaintext, so its clear output is
    /// checked for information taken from them (see [`Runtime::check_clear_output`]).
    pub fn validate(&self, plugin: &Plugin, input: Bound) -> Call<Result<Validated, Vec<FieldError>>> {
        // Shared with the call's state (not copied): the checks below read the same input.
        let given = Arc::new(input);
        let call = self.validate_raw(plugin, given.clone());
        let mut events = call.events;
        let id = &plugin.manifest.id;
        let result = call.result.and_then(|r| match r {
            Ok(values) => split_validated(plugin, values, &given.secrets).and_then(|mut v| {
                // Types may normalise the environment; those that don't keep the given one.
                v.environment = v.environment.or_else(|| given.environment.clone());
                self.check_clear_output(plugin, &given, &v, &mut events)?;
                Ok(Ok(v))
            }),
            Err(errors) => {
                let scrubber = redact::Scrubber::new(given.secrets.values());
                Ok(Err(errors
                    .into_iter()
                    .map(|e| FieldError { field: e.field, message: scrubber.scrub(&e.message) })
                    .collect()))
            }
        });
        if let Err(PluginError::Contract { .. }) = &result {
            tracing::warn!(plugin = %id, "validate output broke the contract");
        }
        Call { result, events }
    }

    /// One `validate` call with `input` on the wire; plaintext copies are zeroized after.
    fn validate_raw(
        &self,
        plugin: &Plugin,
        input: Arc<Bound>,
    ) -> Call<Result<Vec<wit::FieldValue>, Vec<wit::FieldError>>> {
        let mut wire: Vec<wit::FieldValue> = input
            .fields
            .iter()
            .map(|(k, v)| wit::FieldValue { name: k.clone(), value: v.clone() })
            .chain(input.secrets.iter().map(|(k, v)| wit::FieldValue {
                name: k.clone(),
                value: v.expose_secret().to_string(),
            }))
            .collect();
        if let Some(env) = &input.environment {
            wire.push(wit::FieldValue { name: "environment".into(), value: env.clone() });
        }
        self.run(&plugin.pre, &plugin.manifest, Phase::Validate, input, move |ct, store| {
            let r = ct.call_validate(store, &wire);
            for fv in &mut wire {
                zeroize::Zeroize::zeroize(&mut fv.value);
            }
            r
        })
    }

    /// Clear output (non-secret fields, the environment) may depend on clear input only:
    /// it is stored and shown in clear, so a plugin must not be able to copy a secret
    /// there in any encoding. A value that is the given one up to trimming, case or
    /// number/boolean spelling, or the declared default, is accepted as is. Any other
    /// value is checked by running `validate` again with every secret replaced by a
    /// random decoy of the same shape: the value must come out the same. If it differs,
    /// or the decoy run cannot tell, the output is refused and nothing is stored.
    fn check_clear_output(
        &self,
        plugin: &Plugin,
        given: &Bound,
        out: &Validated,
        events: &mut Vec<CapabilityEvent>,
    ) -> Result<(), PluginError> {
        let contract = |message: String| PluginError::Contract { plugin: plugin.manifest.id.clone(), message };
        let mut unexplained: Vec<(&str, Option<&str>)> = out
            .fields
            .iter()
            .filter(|(name, value)| {
                let spec = plugin.descriptor.field(name);
                !explained(spec.and_then(|s| s.default.as_deref()), given.fields.get(*name).map(String::as_str), value)
            })
            .map(|(name, value)| (name.as_str(), Some(value.as_str())))
            .collect();
        if !explained(None, given.environment.as_deref(), out.environment.as_deref().unwrap_or("")) {
            unexplained.push(("environment", out.environment.as_deref()));
        }
        if unexplained.is_empty() || given.secrets.is_empty() {
            return Ok(());
        }
        let decoy = Bound {
            environment: given.environment.clone(),
            fields: given.fields.clone(),
            secrets: given.secrets.iter().map(|(k, v)| (k.clone(), decoy_of(v))).collect(),
        };
        let decoy = Arc::new(decoy);
        let call = self.validate_raw(plugin, decoy.clone());
        events.extend(call.events);
        let again = match call.result {
            Ok(Ok(values)) => split_validated(plugin, values, &decoy.secrets).ok(),
            _ => None,
        };
        for (name, value) in unexplained {
            let Some(again) = &again else {
                return Err(contract(format!(
                    "validate changed the non-secret field `{name}` in a way that may depend on a secret \
                     (only trimming, case, number or boolean spelling and declared defaults are accepted \
                     without a check, and the check could not run); nothing was stored"
                )));
            };
            let value_again = if name == "environment" {
                again.environment.as_deref().or(given.environment.as_deref())
            } else {
                again.fields.get(name).map(String::as_str)
            };
            if value_again != value {
                return Err(contract(format!(
                    "validate derived the non-secret field `{name}` from a secret value (it changed when only \
                     the secrets did); refusing to store it in clear"
                )));
            }
        }
        Ok(())
    }

    /// Runs the plugin's live test against the credential in `bound`.
    pub fn test(&self, plugin: &Plugin, bound: Bound) -> Call<TestReport> {
        let ctx = wit::TestContext {
            environment: bound.environment.clone(),
            fields: bound.fields.iter().map(|(k, v)| wit::FieldValue { name: k.clone(), value: v.clone() }).collect(),
            secret_fields: bound.secrets.keys().cloned().collect(),
        };
        let secrets: Vec<SecretString> = bound.secrets.values().cloned().collect();
        let started = Instant::now();
        let call = self.run(&plugin.pre, &plugin.manifest, Phase::Test, Arc::new(bound), move |ct, store| {
            ct.call_test(store, &ctx)
        });
        let latency_ms = started.elapsed().as_millis() as u64;
        let id = plugin.manifest.id.clone();
        let scrubber = redact::Scrubber::new(&secrets);
        let result = call.result.and_then(|r| match r {
            Ok(o) => Ok(TestReport {
                status: TestStatus::from(o.status),
                summary: scrubber.scrub(&o.summary),
                // Keys too: a plugin may put anything it saw into either.
                facts: o.facts.into_iter().map(|f| (scrubber.scrub(&f.key), scrubber.scrub(&f.value))).collect(),
                latency_ms,
            }),
            Err(e) => Err(PluginError::reported(&id, e, &secrets)),
        });
        Call { result, events: call.events }
    }

    /// How to apply the credential in `bound` to an HTTP request: the type's `authenticate`
    /// plan, checked against its descriptor (header names legal and not host-controlled,
    /// every named field declared). Sandboxed like `test` but offline: a fresh store, the
    /// `validate_ms` budget, network capabilities and `secrets.reveal` denied.
    ///
    /// Only `bound`'s environment, non-secret fields and the *names* of its secrets are
    /// used; secret values may be left out and are dropped before the call either way.
    /// A type without HTTP use (no `authenticate` export, as in components built against
    /// WIT 0.1.0, or one answering `unsupported`) gives [`PluginError::Reported`] with
    /// [`ReportedKind::Unsupported`](super::ReportedKind::Unsupported); a plan that breaks the
    /// rules gives [`PluginError::Contract`] naming the header or field.
    pub fn authenticate(&self, plugin: &Plugin, bound: Bound) -> Call<AuthPlan> {
        let id = plugin.manifest.id.clone();
        let Some(export) = plugin.authenticate else {
            let message = format!(
                "type `{id}` has no HTTP use: its component does not export `authenticate` (built against \
                 credhost:provider@0.1.0)"
            );
            let result = Err(PluginError::Reported { plugin: id, kind: super::ReportedKind::Unsupported, message });
            return Call { result, events: Vec::new() };
        };
        let ctx = wit::TestContext {
            environment: bound.environment.clone(),
            fields: bound.fields.iter().map(|(k, v)| wit::FieldValue { name: k.clone(), value: v.clone() }).collect(),
            secret_fields: bound.secrets.keys().cloned().collect(),
        };
        let bound = Arc::new(Bound { environment: bound.environment, fields: bound.fields, secrets: Default::default() });
        let pre = plugin.pre.instance_pre();
        // `Phase::Validate`: offline and without `secrets`, within `validate_ms`.
        let call = self.run_in(&plugin.manifest, Phase::Validate, "authenticate", bound, |store| {
            let instance = pre.instantiate(&mut *store)?;
            let typed = instance
                .get_typed_func::<(&wit::TestContext,), (Result<wit_http::AuthPlan, wit::Error>,)>(&mut *store, &export);
            let func = match typed {
                Ok(f) => f,
                Err(e) => return Ok(Err(format!("its `authenticate` export has the wrong type: {e:#}"))),
            };
            Ok(Ok(func.call(&mut *store, (&ctx,))?.0))
        });
        let result = call.result.and_then(|r| match r {
            Err(message) => Err(PluginError::Contract { plugin: id.clone(), message }),
            Ok(Ok(plan)) => AuthPlan::from_wit(plan, &plugin.descriptor).map_err(|e| PluginError::Contract {
                plugin: id.clone(),
                message: format!("authenticate returned an unusable plan: {e}"),
            }),
            Ok(Err(e)) => Err(PluginError::reported(&id, e, &[])),
        });
        Call { result, events: call.events }
    }

    /// One sandboxed call of a `credential-type-core` export (see [`Runtime::run_in`]).
    fn run<T: OutputSize>(
        &self,
        pre: &CredentialTypePre<CallState>,
        manifest: &Arc<Manifest>,
        phase: Phase,
        bound: Arc<Bound>,
        f: impl FnOnce(&CredentialType, &mut Store<CallState>) -> wasmtime::Result<T>,
    ) -> Call<T> {
        let name = match phase {
            Phase::Describe => "describe",
            Phase::Validate => "validate",
            Phase::Test => "test",
        };
        self.run_in(manifest, phase, name, bound, |store| pre.instantiate(&mut *store).and_then(|ct| f(&ct, store)))
    }

    /// One sandboxed call: fresh store, limits, deadline, then `f` instantiates and calls,
    /// then the size check; then the call's stderr is logged and its time recorded under
    /// `name` (the export).
    fn run_in<T: OutputSize>(
        &self,
        manifest: &Arc<Manifest>,
        phase: Phase,
        name: &'static str,
        bound: Arc<Bound>,
        f: impl FnOnce(&mut Store<CallState>) -> wasmtime::Result<T>,
    ) -> Call<T> {
        if self.swap_appeared.load(Ordering::Relaxed) {
            let message = "swap was turned on after start-up; restart credhost to run plugins again".to_string();
            return Call { result: Err(PluginError::Engine(message)), events: Vec::new() };
        }
        let limits = manifest.limits;
        let budget_ms = if phase == Phase::Test { limits.test_ms } else { limits.validate_ms };
        let state = CallState::new(manifest.clone(), phase, bound, self.host.clone());
        let mut store = Store::new(&self.engine, state);
        store.limiter(|s| s);
        store.set_epoch_deadline(u64::from(budget_ms).div_ceil(TICK.as_millis() as u64) + 1);
        store.epoch_deadline_trap();

        let plugin = manifest.id.as_str();
        let started = Instant::now();
        let slot = crate::metrics::pool_enter();
        let outcome = f(&mut store);
        drop(slot);
        crate::metrics::plugin_call(plugin, name, started.elapsed());
        let state = store.data();
        let (stderr, dropped) = state.stderr.take();
        super::caps::log::log_stderr(plugin, &stderr, dropped, state.bound.secrets.values());
        let result = match outcome {
            Ok(value) => {
                let size = value.output_size();
                let limit = limits.output_kib as usize * 1024;
                if size > limit {
                    Err(PluginError::OutputTooLarge { plugin: plugin.into(), size, limit })
                } else {
                    Ok(value)
                }
            }
            Err(_) if state.memory_exceeded => {
                Err(PluginError::MemoryLimit { plugin: plugin.into(), limit_mib: limits.memory_mib })
            }
            Err(e) if e.downcast_ref::<wasmtime::Trap>() == Some(&wasmtime::Trap::Interrupt) => {
                Err(PluginError::Timeout { plugin: plugin.into(), limit_ms: budget_ms })
            }
            Err(e) if is_pool_exhausted(&e) => {
                crate::metrics::pool_busy();
                Err(PluginError::Busy)
            }
            Err(e) => {
                let message = match e.downcast_ref::<wasmtime::Trap>() {
                    Some(trap) => trap.to_string(),
                    None => format!("{e:#}"),
                };
                Err(PluginError::Trap { plugin: plugin.into(), message })
            }
        };
        let events = store.data_mut().take_events();
        Call { result, events }
    }
}

fn is_pool_exhausted(e: &wasmtime::Error) -> bool {
    let s = format!("{e:#}");
    s.contains("maximum concurrent") || s.contains("concurrent instance limit")
}

/// Splits validate's output into non-secret and secret fields, by the descriptor.
fn split_validated(
    plugin: &Plugin,
    values: Vec<wit::FieldValue>,
    input_secrets: &BTreeMap<String, SecretString>,
) -> Result<Validated, PluginError> {
    let contract = |message: String| PluginError::Contract { plugin: plugin.manifest.id.clone(), message };
    let mut out = Validated::default();
    // Built once, on the first clear field (not per field).
    let mut scrubber: Option<redact::Scrubber> = None;
    for fv in values {
        if fv.name == "environment" && !plugin.descriptor.environments.is_empty() {
            if !plugin.descriptor.environments.contains(&fv.value) {
                // The value is the plugin's text: never echoed (it could carry a secret).
                return Err(contract("validate returned an environment the type does not declare".into()));
            }
            out.environment = Some(fv.value);
            continue;
        }
        let Some(spec) = plugin.descriptor.field(&fv.name) else {
            return Err(contract("validate returned a field the type does not declare".into()));
        };
        if spec.secret {
            out.secrets.insert(fv.name, SecretString::from(fv.value));
        } else {
            // A plugin must not move a secret into a field that is stored and shown in clear.
            let scrubber = scrubber.get_or_insert_with(|| redact::Scrubber::new(input_secrets.values()));
            if scrubber.scrub(&fv.value) != fv.value {
                return Err(contract(format!("validate put a secret value into non-secret field `{}`", fv.name)));
            }
            out.fields.insert(fv.name, fv.value);
        }
    }
    Ok(out)
}

/// Whether clear `output` is `input` up to trimming, ASCII case, number or boolean
/// spelling, or (with no input) empty or the declared `default`.
fn explained(default: Option<&str>, input: Option<&str>, output: &str) -> bool {
    match input.map(str::trim).filter(|v| !v.is_empty()) {
        Some(i) => {
            let number = |v: &str| v.trim().parse::<f64>().ok();
            let boolean = |v: &str| match v.trim().to_ascii_lowercase().as_str() {
                "true" | "yes" | "on" | "1" => Some(true),
                "false" | "no" | "off" | "0" => Some(false),
                _ => None,
            };
            output == i
                || output.eq_ignore_ascii_case(i)
                || number(i).is_some_and(|n| number(output) == Some(n))
                || boolean(i).is_some_and(|b| boolean(output) == Some(b))
        }
        None => output.is_empty() || default == Some(output),
    }
}

/// A random value of the same shape as `secret`: every ASCII letter or digit replaced by
/// a random one, everything else kept (so format checks on separators and length pass).
fn decoy_of(secret: &SecretString) -> SecretString {
    const ALNUM: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let v = secret.expose_secret();
    let mut random = vec![0u8; v.len()];
    let _ = getrandom::fill(&mut random);
    let out: String = v
        .chars()
        .zip(random.iter().chain(std::iter::repeat(&0)))
        .map(|(c, r)| if c.is_ascii_alphanumeric() { ALNUM[*r as usize % ALNUM.len()] as char } else { c })
        .collect();
    SecretString::from(out)
}

/// Load-time checks of `describe` against the manifest: ids, field names, grants.
fn check_descriptor(d: &TypeDescriptor, m: &Manifest) -> Result<(), String> {
    if d.id != m.id {
        return Err(format!("describe() says type id `{}` but the manifest says `{}`", d.id, m.id));
    }
    let mut seen = BTreeSet::new();
    for f in &d.fields {
        if !is_identifier(&f.name) || f.name == "environment" {
            return Err(format!("field name `{}` must match [a-z][a-z0-9_]* and not be `environment`", f.name));
        }
        if !seen.insert(f.name.as_str()) {
            return Err(format!("field `{}` is declared twice", f.name));
        }
        if f.kind == FieldKind::Choice && f.choices.is_empty() {
            return Err(format!("choice field `{}` has no choices", f.name));
        }
    }
    for field in m.pins.keys() {
        if d.field(field).is_none_or(|f| f.secret) {
            return Err(format!("[pins] names `{field}`, which is not a non-secret field of the type"));
        }
    }
    for r in &m.reveal {
        if !d.field(r).is_some_and(|f| f.secret) {
            return Err(format!("manifest reveals `{r}`, which is not a secret field of the type"));
        }
    }
    for h in &m.allowed_hosts {
        let named: &[&String] = match h {
            AllowedHost::Field(name) => &[name],
            AllowedHost::HostPort { host, port } => &[host, port],
            AllowedHost::Origin { .. } => &[],
        };
        for name in named {
            if d.field(name).is_none_or(|f| f.secret) {
                return Err(format!("allowed host `{h}` must name non-secret fields of the type (`{name}` is not one)"));
            }
        }
    }
    if let Some(u) = &m.use_policy {
        let fields: Vec<(&str, bool)> = d.fields.iter().map(|f| (f.name.as_str(), f.secret)).collect();
        u.check_against(&fields, &d.environments)?;
    }
    if m.has(Capability::Secrets) && m.reveal.is_empty() {
        return Err("capability `secrets` is declared but `reveal` lists no fields".into());
    }
    Ok(())
}

/// Hex SHA-256 of a component's bytes (its identity in the cache and the API).
pub fn sha256_hex(wasm: &[u8]) -> String {
    hex(&Sha256::digest(wasm))
}

/// Refuses a component whose hash differs from the manifest's `sha256` pin.
pub fn check_pin(sha256: &str, manifest: &Manifest, origin: &str) -> Result<(), PluginError> {
    match &manifest.sha256 {
        Some(pin) if !pin.eq_ignore_ascii_case(sha256) => Err(PluginError::Load {
            origin: origin.to_string(),
            message: format!("sha256 mismatch: manifest pins {pin}, file is {sha256}"),
        }),
        _ => Ok(()),
    }
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Bytes a call's result occupies once lifted into the host; checked against `output_kib`.
trait OutputSize {
    fn output_size(&self) -> usize;
}

impl OutputSize for wit::Descriptor {
    fn output_size(&self) -> usize {
        self.id.len()
            + self.display_name.len()
            + self.version.len()
            + self.description.len()
            + self.environments.iter().map(String::len).sum::<usize>()
            + self
                .fields
                .iter()
                .map(|f| {
                    f.name.len()
                        + f.label.len()
                        + f.help.len()
                        + f.choices.iter().map(String::len).sum::<usize>()
                        + f.default.as_ref().map_or(0, String::len)
                })
                .sum::<usize>()
    }
}

impl OutputSize for Result<Vec<wit::FieldValue>, Vec<wit::FieldError>> {
    fn output_size(&self) -> usize {
        match self {
            Ok(v) => v.iter().map(|f| f.name.len() + f.value.len()).sum(),
            Err(e) => e.iter().map(|f| f.field.len() + f.message.len()).sum(),
        }
    }
}

impl OutputSize for Result<wit::TestOutcome, wit::Error> {
    fn output_size(&self) -> usize {
        match self {
            Ok(o) => o.summary.len() + o.facts.iter().map(|f| f.key.len() + f.value.len()).sum::<usize>(),
            Err(e) => format!("{e:?}").len(),
        }
    }
}

/// `Err(text)`: the export had the wrong type (a contract fault, not the plugin's answer).
impl OutputSize for Result<Result<wit_http::AuthPlan, wit::Error>, String> {
    fn output_size(&self) -> usize {
        let value = |v: &wit_http::Value| match v {
            wit_http::Value::Plain(s) | wit_http::Value::Field(s) | wit_http::Value::Template(s) => s.len(),
            wit_http::Value::Basic((u, p)) => u.len() + p.len(),
        };
        match self {
            Ok(Ok(p)) => p.headers.iter().chain(&p.query).map(|(n, v)| n.len() + value(v)).sum(),
            Ok(Err(e)) => format!("{e:?}").len(),
            Err(m) => m.len(),
        }
    }
}
