//! The loaded plugins, by type id: the built-ins embedded by `build.rs` plus the
//! operator's plugin directory (`<name>.wasm` + `<name>.toml`).
//!
//! A reload builds a whole new catalog and swaps it in at once; a call in flight
//! keeps the `Arc<Plugin>` it started with. A bad plugin is reported and skipped,
//! never a reason to stop the others from loading; one that served before keeps its
//! previous version.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use serde::Serialize;

use super::cache;
use super::manifest::{Manifest, PluginOverride};
use super::runtime::{Plugin, Runtime};
use super::PluginError;

mod embedded {
    include!(concat!(env!("OUT_DIR"), "/builtins.rs"));
}

/// The built-in plugins as shipped: (crate name, manifest text, component bytes).
pub fn builtin_sources() -> &'static [(&'static str, &'static str, &'static [u8])] {
    embedded::BUILTINS
}

/// Where plugins come from and how the operator configured them.
#[derive(Debug, Clone, Default)]
pub struct Sources {
    /// Operator plugin directory; `None` loads the built-ins only.
    pub dir: Option<PathBuf>,
    /// Precompiled-artefact cache; `None` compiles every time.
    pub cache: Option<cache::CompileCache>,
    /// `[plugins.overrides.<type_id>]` from the config.
    pub overrides: BTreeMap<String, PluginOverride>,
}

/// A plugin that did not load, and why (names the file and the problem).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct LoadProblem {
    pub origin: String,
    pub message: String,
}

/// What a (re)load produced.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct LoadReport {
    /// Type ids now loaded.
    pub loaded: Vec<String>,
    /// Plugins refused (a plugin that served before and fails now keeps its previous
    /// version serving; its problem says so).
    pub problems: Vec<LoadProblem>,
    /// Not errors: e.g. an override for a type that is not installed (yet).
    pub warnings: Vec<LoadProblem>,
}

struct Catalog {
    plugins: BTreeMap<String, Arc<Plugin>>,
    problems: Vec<LoadProblem>,
    warnings: Vec<LoadProblem>,
}

impl Catalog {
    fn report(&self) -> LoadReport {
        LoadReport {
            loaded: self.plugins.keys().cloned().collect(),
            problems: self.problems.clone(),
            warnings: self.warnings.clone(),
        }
    }
}

/// Re-reads the operator's overrides at reload (the config file, with the environment
/// applied as at start); an error leaves everything as it is.
pub type Reconfigure = Box<dyn Fn() -> Result<BTreeMap<String, PluginOverride>, String> + Send + Sync>;

pub struct Registry {
    runtime: Arc<Runtime>,
    sources: RwLock<Sources>,
    reconfigure: Option<Reconfigure>,
    catalog: RwLock<Arc<Catalog>>,
    /// One reload at a time; readers never wait for it.
    reloading: Mutex<()>,
}

impl Registry {
    /// The built-in types only, no cache.
    pub fn with_builtins(runtime: Arc<Runtime>) -> Result<Registry, PluginError> {
        Self::load(runtime, Sources::default())
    }

    /// Loads built-ins and the plugin directory. Fails only when a built-in fails
    /// (a build defect, or a bad override of a built-in); directory plugins with problems
    /// are skipped and listed in [`Registry::problems`].
    pub fn load(runtime: Arc<Runtime>, sources: Sources) -> Result<Registry, PluginError> {
        let registry = Self::empty(runtime, sources);
        registry.load_all()?;
        Ok(registry)
    }

    /// A registry with nothing loaded yet; [`Registry::load_all`] fills it. Lets the
    /// server listen (and answer health checks) while plugins compile.
    pub fn empty(runtime: Arc<Runtime>, sources: Sources) -> Registry {
        let catalog = Catalog { plugins: BTreeMap::new(), problems: Vec::new(), warnings: Vec::new() };
        Registry {
            runtime,
            sources: RwLock::new(sources),
            reconfigure: None,
            catalog: RwLock::new(Arc::new(catalog)),
            reloading: Mutex::new(()),
        }
    }

    /// Where [`Registry::reload`] re-reads the overrides from.
    pub fn with_reconfigure(mut self, reconfigure: Reconfigure) -> Registry {
        self.reconfigure = Some(reconfigure);
        self
    }

    /// Loads the built-ins first (swapped in as soon as they are ready), then the plugin
    /// directory; prunes the compile cache of entries nothing references.
    pub fn load_all(&self) -> Result<LoadReport, PluginError> {
        let _one = self.reloading.lock().unwrap_or_else(|p| p.into_inner());
        let sources = self.sources.read().unwrap_or_else(|p| p.into_inner()).clone();
        let builtins = build_catalog(&self.runtime, &sources, None, false)?;
        self.swap(builtins);
        let old = self.snapshot();
        let next = build_catalog(&self.runtime, &sources, Some(&old), true)?;
        self.finish(next, &sources)
    }

    pub fn runtime(&self) -> &Runtime {
        &self.runtime
    }

    /// The plugin for type `id`.
    pub fn get(&self, id: &str) -> Result<Arc<Plugin>, PluginError> {
        self.snapshot().plugins.get(id).cloned().ok_or_else(|| PluginError::UnknownType(id.to_string()))
    }

    /// Every loaded plugin, ordered by type id.
    pub fn list(&self) -> Vec<Arc<Plugin>> {
        self.snapshot().plugins.values().cloned().collect()
    }

    /// Plugins of the last (re)load that were refused.
    pub fn problems(&self) -> Vec<LoadProblem> {
        self.snapshot().problems.clone()
    }

    /// Warnings of the last (re)load.
    pub fn warnings(&self) -> Vec<LoadProblem> {
        self.snapshot().warnings.clone()
    }

    /// Re-reads the overrides (when a [`Reconfigure`] is set) and the plugin directory,
    /// and swaps the catalog atomically. Plugins whose files and manifest did not change
    /// are kept as they are (not recompiled); a directory plugin that loaded before and
    /// fails now keeps its previous version. On a config-level error (unreadable config,
    /// a bad override of a built-in) nothing changes.
    pub fn reload(&self) -> Result<LoadReport, PluginError> {
        let _one = self.reloading.lock().unwrap_or_else(|p| p.into_inner());
        let mut sources = self.sources.read().unwrap_or_else(|p| p.into_inner()).clone();
        if let Some(reconfigure) = &self.reconfigure {
            sources.overrides =
                reconfigure().map_err(|message| PluginError::Load { origin: "config".into(), message })?;
        }
        let old = self.snapshot();
        let next = build_catalog(&self.runtime, &sources, Some(&old), true)?;
        let report = self.finish(next, &sources)?;
        *self.sources.write().unwrap_or_else(|p| p.into_inner()) = sources;
        tracing::info!(loaded = report.loaded.len(), problems = report.problems.len(), "plugins reloaded");
        Ok(report)
    }

    /// Swaps in a full catalog: logs its problems, prunes the cache.
    fn finish(&self, next: Catalog, sources: &Sources) -> Result<LoadReport, PluginError> {
        for p in &next.problems {
            tracing::error!(origin = %p.origin, "plugin not loaded: {}", p.message);
        }
        for w in &next.warnings {
            tracing::warn!(origin = %w.origin, "{}", w.message);
        }
        if let Some(cache) = &sources.cache {
            let keep: Vec<&str> = next.plugins.values().map(|p| p.sha256.as_str()).collect();
            cache::prune(&self.runtime, cache, &keep);
        }
        let report = next.report();
        self.swap(next);
        Ok(report)
    }

    fn swap(&self, next: Catalog) {
        *self.catalog.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(next);
    }

    fn snapshot(&self) -> Arc<Catalog> {
        self.catalog.read().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// One plugin's source before compilation.
struct Candidate {
    origin: String,
    manifest: Manifest,
    /// Built-ins borrow the bytes embedded in the binary.
    wasm: std::borrow::Cow<'static, [u8]>,
    builtin: bool,
}

/// Builds a catalog: the built-ins, and with `with_dir` the plugin directory and the
/// check of the overrides against what loaded. A plugin identical to one in `previous`
/// (origin, component bytes, manifest after overrides) is reused, not recompiled.
fn build_catalog(
    runtime: &Runtime,
    sources: &Sources,
    previous: Option<&Catalog>,
    with_dir: bool,
) -> Result<Catalog, PluginError> {
    let mut plugins: BTreeMap<String, Arc<Plugin>> = BTreeMap::new();
    let mut problems = Vec::new();
    let mut warnings = Vec::new();

    let mut todo = Vec::new();
    for (name, manifest, wasm) in builtin_sources() {
        let origin = format!("builtin:{name}");
        let manifest = Manifest::parse(manifest).map_err(|message| PluginError::Load { origin: origin.clone(), message })?;
        todo.push(Candidate { origin, manifest, wasm: std::borrow::Cow::Borrowed(wasm), builtin: true });
    }

    if let (true, Some(dir)) = (with_dir, &sources.dir) {
        match scan_dir(dir) {
            Ok((found, refused)) => {
                todo.extend(found);
                problems.extend(refused);
            }
            Err(message) => problems.push(LoadProblem { origin: dir.display().to_string(), message }),
        }
    }

    // Type ids: built-ins win unless the operator explicitly replaces one.
    let builtin_ids: Vec<String> = todo.iter().filter(|c| c.builtin).map(|c| c.manifest.id.clone()).collect();
    let mut accepted: BTreeMap<String, Candidate> = BTreeMap::new();
    let mut failed_ids = Vec::new();
    for c in todo {
        let id = c.manifest.id.clone();
        if c.builtin {
            accepted.insert(id, c);
            continue;
        }
        let replaces = sources.overrides.get(&id).is_some_and(|o| o.replace_builtin);
        if builtin_ids.contains(&id) && !replaces {
            problems.push(LoadProblem {
                origin: c.origin,
                message: format!(
                    "type id `{id}` is a built-in type; set `replace_builtin = true` in \
                     [plugins.overrides.{id}] to replace it"
                ),
            });
            continue;
        }
        if let Some(first) = accepted.get(&id).filter(|first| !first.builtin) {
            problems.push(LoadProblem {
                origin: c.origin,
                message: format!("type id `{id}` is already provided by {}", first.origin),
            });
            continue;
        }
        accepted.insert(id, c);
    }

    // Overrides and reuse first, in type-id order; what is left is loaded in parallel
    // (each load is independent: hash, cache read or compile, link); the outcomes are
    // then taken in type-id order again, so problems and errors come out as before.
    enum Step {
        Ready(Arc<Plugin>),
        Refused(LoadProblem),
        Load(Candidate, Option<String>),
    }
    let mut steps: Vec<(String, Step)> = Vec::with_capacity(accepted.len());
    for (id, mut c) in accepted {
        if let Some(o) = sources.overrides.get(&id) {
            if let Err(message) = c.manifest.apply_override(o) {
                // A bad override of a built-in is a config error; of a dir plugin, that plugin's problem.
                if c.builtin {
                    return Err(PluginError::Load { origin: format!("config [plugins.overrides.{id}]"), message });
                }
                steps.push((id, Step::Refused(LoadProblem { origin: c.origin, message })));
                continue;
            }
        }
        // Hashed once per candidate. A built-in's origin names the bytes embedded in this
        // binary, so the same origin is the same component: no hash needed to compare.
        let mut sha256 = None;
        let unchanged = previous.and_then(|prev| prev.plugins.get(&id)).filter(|p| {
            p.origin == c.origin
                && *p.manifest == c.manifest
                && (c.builtin || p.sha256 == *sha256.get_or_insert_with(|| super::runtime::sha256_hex(&c.wasm)))
        });
        let step = match unchanged {
            Some(p) => Step::Ready(p.clone()),
            None => Step::Load(c, sha256),
        };
        steps.push((id, step));
    }
    let jobs: Vec<&(String, Step)> = steps.iter().filter(|(_, s)| matches!(s, Step::Load(..))).collect();
    let mut loaded = parallel_map(&jobs, |(_, step)| {
        let Step::Load(c, sha256) = step else { unreachable!("only loads are jobs") };
        let sha256 = sha256.clone().unwrap_or_else(|| super::runtime::sha256_hex(&c.wasm));
        cache::load_hashed(runtime, &c.wasm, &sha256, c.manifest.clone(), c.origin.clone(), sources.cache.as_ref())
    })
    .into_iter();
    for (id, step) in steps {
        match step {
            Step::Ready(p) => {
                plugins.insert(id, p);
            }
            Step::Refused(problem) => {
                problems.push(problem);
                failed_ids.push(id);
            }
            Step::Load(c, _) => match loaded.next().expect("one outcome per load") {
                Ok(p) => {
                    plugins.insert(p.manifest.id.clone(), Arc::new(p));
                }
                Err(e) if c.builtin => return Err(e),
                Err(e) => {
                    problems.push(LoadProblem { origin: c.origin, message: e.to_string() });
                    failed_ids.push(id);
                }
            },
        }
    }

    // A directory plugin that served before and fails now (bad manifest, broken
    // component, bad override) keeps serving in its previous version.
    if let Some(prev) = previous {
        for (id, p) in &prev.plugins {
            if p.origin.starts_with("builtin:") || plugins.contains_key(id) {
                continue;
            }
            let Some(problem) = problems.iter_mut().find(|pr| pr.origin == p.origin) else { continue };
            problem.message.push_str(&format!(
                "; the previously loaded version of `{id}` (sha256 {}) keeps serving",
                &p.sha256[..12]
            ));
            plugins.insert(id.clone(), p.clone());
        }
    }

    if with_dir {
        for unknown in sources.overrides.keys().filter(|k| !plugins.contains_key(*k) && !failed_ids.contains(k)) {
            warnings.push(LoadProblem {
                origin: format!("config [plugins.overrides.{unknown}]"),
                message: format!(
                    "no credential type `{unknown}` is loaded; the override applies once it is installed \
                     (then reload)"
                ),
            });
        }
    }
    Ok(Catalog { plugins, problems, warnings })
}

/// `f` over `items` on up to one thread per core, outcomes in the order of `items`.
fn parallel_map<T: Sync, R: Send>(items: &[T], f: impl Fn(&T) -> R + Sync) -> Vec<R> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).min(items.len());
    if threads <= 1 {
        return items.iter().map(f).collect();
    }
    let next = std::sync::atomic::AtomicUsize::new(0);
    let mut done: Vec<(usize, R)> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                scope.spawn(|| {
                    let mut mine = Vec::new();
                    loop {
                        let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let Some(item) = items.get(i) else { break mine };
                        mine.push((i, f(item)));
                    }
                })
            })
            .collect();
        // A panic in `f` is re-raised here, as it would be without threads.
        workers.into_iter().flat_map(|w| w.join().unwrap_or_else(|p| std::panic::resume_unwind(p))).collect()
    });
    done.sort_by_key(|(i, _)| *i);
    done.into_iter().map(|(_, r)| r).collect()
}

/// Reads every `<name>.toml` + `<name>.wasm` pair in `dir`. Files are checked
/// before anything is compiled: regular files only, not writable by others,
/// a sha256 pin that matches.
fn scan_dir(dir: &Path) -> Result<(Vec<Candidate>, Vec<LoadProblem>), String> {
    // Whoever can write the directory chooses the code we run: it must be ours or root's.
    crate::fsperm::check_trusted(dir)?;
    let entries = std::fs::read_dir(dir).map_err(|e| format!("cannot read plugin directory: {e}"))?;
    let mut manifests: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    manifests.sort();
    let (mut found, mut problems) = (Vec::new(), Vec::new());
    for toml_path in manifests {
        let wasm_path = toml_path.with_extension("wasm");
        let origin = wasm_path.display().to_string();
        match read_candidate(&toml_path, &wasm_path) {
            Ok((manifest, wasm)) => {
                found.push(Candidate { origin, manifest, wasm: std::borrow::Cow::Owned(wasm), builtin: false })
            }
            Err(message) => problems.push(LoadProblem { origin, message }),
        }
    }
    Ok((found, problems))
}

fn read_candidate(toml_path: &Path, wasm_path: &Path) -> Result<(Manifest, Vec<u8>), String> {
    check_file(toml_path)?;
    let text = std::fs::read_to_string(toml_path).map_err(|e| format!("{}: {e}", toml_path.display()))?;
    let manifest = Manifest::parse(&text).map_err(|e| format!("{}: {e}", toml_path.display()))?;
    if manifest.sha256.is_none() {
        return Err(format!("{}: `sha256` is required for plugins loaded from a directory", toml_path.display()));
    }
    check_file(wasm_path)?;
    let wasm = std::fs::read(wasm_path).map_err(|e| format!("{}: {e}", wasm_path.display()))?;
    Ok((manifest, wasm))
}

/// A plugin file must be a regular file (no symlink tricks), owned by us or root and not
/// writable by group or others.
fn check_file(path: &Path) -> Result<(), String> {
    let meta = std::fs::symlink_metadata(path).map_err(|e| format!("{}: {e}", path.display()))?;
    if !meta.file_type().is_file() {
        return Err(format!("{}: not a regular file", path.display()));
    }
    crate::fsperm::check_trusted(path)
}
