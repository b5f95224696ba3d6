//! The model manager: which versions of which models are loaded, and how a request's model name,
//! version or label resolves to one of them.
//!
//! TF Serving's design, in small:
//! - the *configuration* ([`config`]): a `ModelServerConfig` (from `--model_config_file`, from
//!   `--model_name`/`--model_base_path`, or from gRPC `HandleReloadConfigRequest`) names the models,
//!   their base paths, version policies and labels. [`ModelManager::reload_config`] replaces the
//!   whole set: new models load, removed models unload, changed ones are re-pointed;
//! - one *source* per model ([`worker`]): a thread that polls the base path
//!   (`--file_system_poll_wait_seconds`), applies the version policy ([`policy`]) to the numeric
//!   version directories it finds, and waits until a directory is complete ([`source`]);
//! - the *manager*: each source loads what its policy wants, highest version first, retrying
//!   failures (`--max_num_load_retries`, `--load_retry_interval_micros`), and unloads what the
//!   policy no longer wants only once a wanted version is available (TF Serving's
//!   availability-preserving policy). An unloaded version leaves the serving snapshot at once but
//!   is dropped only after the requests still running on it finish (they hold its `Arc`).
//!
//! Reads are lock-free: requests resolve against an `ArcSwap` snapshot of models → versions →
//! `Arc<Servable>`; every change builds a new snapshot under a mutex, so a request never waits for
//! a load. Version states are TF Serving's: START (wanted, not loading yet, e.g. its directory is
//! still being written), LOADING (including between retries, with the last error), AVAILABLE,
//! UNLOADING (waiting for in-flight requests), END (unloaded, or failed with the error). Each
//! model keeps at most [`MAX_ENDED_VERSIONS`] END entries.

mod config;
mod policy;
mod source;
mod worker;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use oxserve_proto::tensorflow::serving::ModelServerConfig;

use crate::backend::Backend;
use crate::error::{Code, Error, Result};
use crate::servable::Servable;

pub use config::{
    models_of, parse_text_proto, read_text_proto, single_model_config, ModelConfigEntry,
};
pub use policy::VersionPolicy;
pub use source::{fingerprint, version_dirs, DirTracker, VersionDir, SETTLE};

/// END entries kept per model (the most recent ones); older ones are pruned from the status.
pub const MAX_ENDED_VERSIONS: usize = 10;

/// Which version a request asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum VersionRequest {
    Latest,
    Specific(i64),
    Label(String),
}

/// The model a request names (TF Serving's `ModelSpec`, less the signature).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ModelSpec {
    pub name: String,
    pub version: VersionRequest,
}

/// TF Serving's `ModelVersionStatus.State`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VersionState {
    Start,
    Loading,
    Available,
    Unloading,
    End,
}

impl VersionState {
    pub fn name(self) -> &'static str {
        match self {
            VersionState::Start => "START",
            VersionState::Loading => "LOADING",
            VersionState::Available => "AVAILABLE",
            VersionState::Unloading => "UNLOADING",
            VersionState::End => "END",
        }
    }

    /// The enum number of `ModelVersionStatus.State`.
    pub fn number(self) -> i32 {
        match self {
            VersionState::Start => 10,
            VersionState::Loading => 20,
            VersionState::Available => 30,
            VersionState::Unloading => 40,
            VersionState::End => 50,
        }
    }
}

/// The state of one version, with the error that ended it (or, while LOADING between retries,
/// the error of the last attempt), if any.
#[derive(Clone, Debug)]
pub struct VersionStatus {
    pub version: i64,
    pub state: VersionState,
    pub error: Option<Error>,
}

/// One configured model, for listings (`GET /v1/models`).
#[derive(Clone, Debug)]
pub struct ModelSummary {
    pub name: String,
    pub base_path: PathBuf,
    /// Newest version first.
    pub versions: Vec<VersionStatus>,
    pub labels: BTreeMap<String, i64>,
}

/// Replays a version's warm-up requests (`assets.extra/tf_serving_warmup_requests`) before it
/// becomes available: called with the loaded servable and its version directory. An error fails
/// the load. Provided by the server crate, which knows the request formats.
pub type WarmupHook = Arc<dyn Fn(&Servable, &Path) -> Result<()> + Send + Sync>;

/// How the manager finds, loads and retries versions (`tensorflow_model_server`'s flags).
#[derive(Clone)]
pub struct ManagerOptions {
    /// `--saved_model_tags`.
    pub tags: Vec<String>,
    /// `--file_system_poll_wait_seconds`; `None` (0) scans once (until what it found is stable).
    pub file_system_poll_wait: Option<Duration>,
    /// `--max_num_load_retries`: retries after the first failed attempt.
    pub max_num_load_retries: u32,
    /// `--load_retry_interval_micros`.
    pub load_retry_interval: Duration,
    /// `--allow_version_labels_for_unavailable_models`.
    pub allow_version_labels_for_unavailable_models: bool,
    /// Warm-up replay (`--enable_model_warmup`); `None` disables it.
    pub warmup: Option<WarmupHook>,
    /// How long a version directory seen for the first time must have been left untouched to be
    /// loaded at once (see [`source`]); [`SETTLE`] by default.
    pub settle: Duration,
}

impl ManagerOptions {
    /// TF Serving's defaults: poll every second, 5 retries a minute apart, no warm-up hook.
    pub fn new(tags: Vec<String>) -> ManagerOptions {
        ManagerOptions {
            tags,
            file_system_poll_wait: Some(Duration::from_secs(1)),
            max_num_load_retries: 5,
            load_retry_interval: Duration::from_secs(60),
            allow_version_labels_for_unavailable_models: false,
            warmup: None,
            settle: SETTLE,
        }
    }
}

#[derive(Clone)]
struct VersionSlot {
    state: VersionState,
    servable: Option<Arc<Servable>>,
    error: Option<Error>,
    /// Bumped on every state change made by a loader or unloader, so that a late unloader does
    /// not overwrite a newer state.
    generation: u64,
    /// Order in which versions reached END, for pruning.
    ended: u64,
}

impl VersionSlot {
    fn new(state: VersionState) -> VersionSlot {
        VersionSlot {
            state,
            servable: None,
            error: None,
            generation: 0,
            ended: 0,
        }
    }
}

/// What a model's source saw at its latest scan.
#[derive(Clone, Debug, Default)]
struct SourceState {
    /// At least one scan since the model was (re)configured.
    scanned: bool,
    /// The versions the policy wants.
    aspired: BTreeSet<i64>,
}

#[derive(Clone)]
struct ModelEntry {
    /// In the current configuration (removed models keep their status, not their versions).
    configured: bool,
    base_path: PathBuf,
    versions: BTreeMap<i64, VersionSlot>,
    labels: BTreeMap<String, i64>,
    source: SourceState,
}

impl ModelEntry {
    fn new(base_path: PathBuf) -> ModelEntry {
        ModelEntry {
            configured: true,
            base_path,
            versions: BTreeMap::new(),
            labels: BTreeMap::new(),
            source: SourceState::default(),
        }
    }

    fn is_available(&self, version: i64) -> bool {
        self.versions
            .get(&version)
            .is_some_and(|slot| slot.state == VersionState::Available)
    }

    /// Drops the oldest END entries beyond [`MAX_ENDED_VERSIONS`].
    fn prune(&mut self) {
        let mut ended: Vec<(u64, i64)> = self
            .versions
            .iter()
            .filter(|(_, slot)| slot.state == VersionState::End)
            .map(|(version, slot)| (slot.ended, *version))
            .collect();
        if ended.len() <= MAX_ENDED_VERSIONS {
            return;
        }
        ended.sort_unstable();
        for (_, version) in &ended[..ended.len() - MAX_ENDED_VERSIONS] {
            self.versions.remove(version);
        }
    }
}

#[derive(Clone, Default)]
struct Snapshot {
    models: BTreeMap<String, ModelEntry>,
}

struct WorkerHandle {
    commands: mpsc::Sender<worker::Command>,
    thread: Option<JoinHandle<()>>,
    /// Sent `Retire`: the thread ends once it has unloaded the model's versions.
    retired: bool,
}

impl WorkerHandle {
    /// Waits for the thread to end (at once, for a retired worker that has unloaded).
    fn join(&mut self) {
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }

    fn ended(&self) -> bool {
        self.thread.as_ref().is_none_or(JoinHandle::is_finished)
    }
}

/// Everything shared by the manager, its sources and its unloaders.
struct Inner {
    backend: Arc<dyn Backend>,
    options: ManagerOptions,
    snapshot: ArcSwap<Snapshot>,
    writer: Mutex<()>,
    /// Bumped (and notified) after every snapshot change, for waiters.
    epoch: Mutex<u64>,
    changed: Condvar,
    workers: Mutex<BTreeMap<String, WorkerHandle>>,
    /// The configuration last applied, by model name.
    config: Mutex<Option<BTreeMap<String, ModelConfigEntry>>>,
    /// Serializes reloads.
    reload: Mutex<()>,
    stopping: AtomicBool,
    stop_lock: Mutex<()>,
    stop_signal: Condvar,
    ended_seq: AtomicU64,
    pollers: Mutex<Vec<JoinHandle<()>>>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A poisoned lock only means another thread panicked; the data it guards is still whole.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Inner {
    fn stopping(&self) -> bool {
        self.stopping.load(Ordering::SeqCst)
    }

    /// Sleeps for `duration` unless the manager stops first; returns false when stopping.
    fn sleep(&self, duration: Duration) -> bool {
        let deadline = Instant::now() + duration;
        let mut guard = lock(&self.stop_lock);
        loop {
            if self.stopping() {
                return false;
            }
            let now = Instant::now();
            if now >= deadline {
                return true;
            }
            guard = self
                .stop_signal
                .wait_timeout(guard, deadline - now)
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .0;
        }
    }

    fn next_ended(&self) -> u64 {
        self.ended_seq.fetch_add(1, Ordering::SeqCst) + 1
    }

    /// Applies `change` to a copy of the snapshot and publishes it.
    fn mutate<R>(&self, change: impl FnOnce(&mut Snapshot) -> R) -> R {
        let result = {
            let _writer = lock(&self.writer);
            let mut next = Snapshot::clone(&self.snapshot.load());
            let result = change(&mut next);
            self.snapshot.store(Arc::new(next));
            result
        };
        *lock(&self.epoch) += 1;
        self.changed.notify_all();
        result
    }

    /// Waits until `check` returns `Some`, re-checking after every snapshot change.
    fn wait_for<T>(&self, mut check: impl FnMut(&Snapshot) -> Option<T>) -> Option<T> {
        let mut epoch = lock(&self.epoch);
        loop {
            if let Some(found) = check(&self.snapshot.load()) {
                return Some(found);
            }
            if self.stopping() {
                return None;
            }
            epoch = self
                .changed
                .wait_timeout(epoch, Duration::from_millis(500))
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .0;
        }
    }

    /// Loads one version: the backend's load, then warm-up. Blocks. The error is the loader's
    /// own, as TF Serving reports it in the version's status.
    fn load_servable(&self, name: &str, version: i64, dir: &Path) -> Result<Arc<Servable>> {
        let attempt = || -> Result<Arc<Servable>> {
            let started = Instant::now();
            let loaded = self.backend.load(dir, &self.options.tags);
            crate::metrics::record_load(&dir.to_string_lossy(), loaded.is_ok(), started.elapsed());
            let servable = Arc::new(Servable::new(name.to_string(), version, loaded?));
            if let Some(warmup) = &self.options.warmup {
                warmup(&servable, dir)?;
            }
            Ok(servable)
        };
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(attempt)) {
            Ok(result) => result,
            Err(panic) => {
                let what = panic
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "unknown panic".to_string());
                Err(Error::internal(format!("the loader panicked: {what}")))
            }
        }
    }

    fn finish_unloads(self: &Arc<Self>, unloads: Vec<Unload>) {
        for unload in unloads {
            tracing::info!(
                "Unloading servable version {{name: {} version: {}}}",
                unload.name,
                unload.version
            );
            let inner = self.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("unload-{}", unload.version))
                .spawn(move || inner.unload(unload));
            if let Err(err) = spawned {
                tracing::error!("could not start an unloader thread: {err}");
            }
        }
    }

    fn unload(&self, unload: Unload) {
        let Unload {
            name,
            version,
            servable,
            generation,
        } = unload;
        // Old snapshots and in-flight requests hold clones; once ours is the last, nothing can
        // reach this servable any more (it is in no current snapshot).
        let mut pause = Duration::from_millis(1);
        while Arc::strong_count(&servable) > 1 {
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(50));
        }
        drop(servable);
        let ended = self.next_ended();
        self.mutate(|snapshot| {
            if let Some(entry) = snapshot.models.get_mut(&name) {
                if let Some(slot) = entry.versions.get_mut(&version) {
                    if slot.generation == generation {
                        slot.state = VersionState::End;
                        slot.ended = ended;
                    }
                }
                entry.prune();
            }
        });
        tracing::info!("Done unloading servable version {{name: {name} version: {version}}}");
    }

    /// TF Serving's label rules (`ServerCore::UpdateModelVersionLabelMap`): a label may point
    /// only at an AVAILABLE version, unless `--allow_version_labels_for_unavailable_models` is
    /// set and the label is new or keeps its version (moving an existing label always needs the
    /// target to be available, so that requests to the label never fail during a swap).
    fn check_labels(&self, models: &[ModelConfigEntry]) -> Result<()> {
        let snapshot = self.snapshot.load();
        for model in models {
            let entry = snapshot.models.get(&model.name);
            for (label, &version) in &model.labels {
                let current = entry
                    .filter(|entry| entry.configured)
                    .and_then(|entry| entry.labels.get(label));
                let moves = current.is_some_and(|&current| current != version);
                if self.options.allow_version_labels_for_unavailable_models && !moves {
                    continue;
                }
                if !entry.is_some_and(|entry| entry.is_available(version)) {
                    return Err(Error::failed_precondition(format!(
                        "Request to assign label to version {version} of model {}, which is not currently available for inference",
                        model.name
                    )));
                }
            }
        }
        Ok(())
    }

    fn reload_config(self: &Arc<Self>, config: &ModelServerConfig) -> Result<()> {
        if config.config.is_none() {
            tracing::info!("Taking no action for empty config.");
            return Ok(());
        }
        let models = models_of(config)?;
        let _reload = lock(&self.reload);
        if self.stopping() {
            return Err(Error::unavailable("the server is shutting down"));
        }
        self.check_labels(&models)?;
        let old = lock(&self.config).clone().unwrap_or_default();
        let new: BTreeMap<String, ModelConfigEntry> = models
            .iter()
            .map(|model| (model.name.clone(), model.clone()))
            .collect();
        let added: Vec<String> = new
            .keys()
            .filter(|name| !old.contains_key(*name))
            .cloned()
            .collect();
        let removed: Vec<String> = old
            .keys()
            .filter(|name| !new.contains_key(*name))
            .cloned()
            .collect();
        for model in &models {
            tracing::info!(
                "Config entry: name: {} base_path: {} policy: {:?} labels: {:?}",
                model.name,
                model.base_path.display(),
                model.policy,
                model.labels
            );
        }
        self.mutate(|snapshot| {
            for name in &removed {
                if let Some(entry) = snapshot.models.get_mut(name) {
                    entry.configured = false;
                    entry.labels.clear();
                }
            }
            for model in &models {
                let entry = snapshot
                    .models
                    .entry(model.name.clone())
                    .or_insert_with(|| ModelEntry::new(model.base_path.clone()));
                if added.contains(&model.name) {
                    entry.source = SourceState::default();
                }
                entry.configured = true;
                entry.base_path = model.base_path.clone();
                entry.labels = model.labels.clone();
            }
        });
        {
            let mut workers = lock(&self.workers);
            // The threads of models removed earlier, done with their unloads, are let go, so
            // that names that come and go do not add up to threads.
            workers.retain(|_, worker| {
                let ended = worker.retired && worker.ended();
                if ended {
                    worker.join();
                }
                !ended
            });
            for name in &removed {
                tracing::info!("Removing model {name}: unloading its versions");
                if let Some(worker) = workers.get_mut(name) {
                    let _ = worker.commands.send(worker::Command::Retire);
                    worker.retired = true;
                }
            }
            for model in &models {
                let unchanged = old.get(&model.name).is_some_and(|previous| {
                    previous.base_path == model.base_path && previous.policy == model.policy
                });
                if unchanged {
                    continue;
                }
                match workers.get_mut(&model.name) {
                    Some(worker) if !worker.retired => {
                        let _ = worker.commands.send(worker::Command::Update(model.clone()));
                    }
                    retired => {
                        // A model added again once its old thread has finished unloading it:
                        // the two never work on the model at once.
                        if let Some(worker) = retired {
                            worker.join();
                        }
                        let handle = worker::spawn(self.clone(), model.clone())?;
                        workers.insert(model.name.clone(), handle);
                    }
                }
            }
        }
        *lock(&self.config) = Some(new);

        // Like TF Serving, wait for the models this configuration adds (not for changes to the
        // others): each one until a version is available, or it has none yet, or it failed.
        let mut failures = Vec::new();
        for name in &added {
            match self.wait_for(|snapshot| settled(snapshot, name)) {
                Some(Ok(Some(version))) => {
                    tracing::info!("Model {name} is available (version {version})")
                }
                Some(Ok(None)) => tracing::warn!(
                    "Model {name} has no version to serve yet; its base path is polled for one"
                ),
                Some(Err((version, err))) => failures.push(format!(
                    "{{name: {name} version: {version}}} due to error: {err}"
                )),
                None => return Err(Error::unavailable("the server is shutting down")),
            }
        }
        if !failures.is_empty() {
            return Err(Error::new(
                Code::Unknown,
                format!(
                    "{} model(s) did not become available: {{{}}}",
                    failures.len(),
                    failures.join("; ")
                ),
            ));
        }
        Ok(())
    }

    fn shutdown(&self) {
        {
            let _guard = lock(&self.stop_lock);
            self.stopping.store(true, Ordering::SeqCst);
        }
        self.stop_signal.notify_all();
        self.changed.notify_all();
        let handles: Vec<WorkerHandle> = {
            let mut workers = lock(&self.workers);
            std::mem::take(&mut *workers).into_values().collect()
        };
        for handle in &handles {
            let _ = handle.commands.send(worker::Command::Stop);
        }
        for mut handle in handles {
            if let Some(thread) = handle.thread.take() {
                let _ = thread.join();
            }
        }
        let pollers = std::mem::take(&mut *lock(&self.pollers));
        for poller in pollers {
            let _ = poller.join();
        }
    }
}

/// Takes `version` of `name` out of service (called inside `mutate`, on its slot); the returned
/// [`Unload`] drops it once its in-flight requests end, on a thread of its own, then marks it END.
fn begin_unload(name: &str, version: i64, slot: &mut VersionSlot) -> Option<Unload> {
    let servable = slot.servable.take()?;
    slot.state = VersionState::Unloading;
    slot.generation += 1;
    Some(Unload {
        name: name.to_string(),
        version,
        servable,
        generation: slot.generation,
    })
}

struct Unload {
    name: String,
    version: i64,
    servable: Arc<Servable>,
    generation: u64,
}

/// Whether a newly configured model is done loading: `Ok(Some(version))` when a version is
/// available, `Ok(None)` when it has no version directory (yet), `Err` when every version it
/// wants failed for good.
fn settled(snapshot: &Snapshot, name: &str) -> Option<Result<Option<i64>, (i64, Error)>> {
    let entry = snapshot.models.get(name)?;
    if let Some((version, _)) = entry
        .versions
        .iter()
        .rev()
        .find(|(_, slot)| slot.state == VersionState::Available)
    {
        return Some(Ok(Some(*version)));
    }
    if !entry.source.scanned {
        return None;
    }
    if entry.source.aspired.is_empty() {
        return Some(Ok(None));
    }
    let mut first_error = None;
    for version in entry.source.aspired.iter().rev() {
        match entry.versions.get(version) {
            Some(slot) if slot.state == VersionState::End && slot.error.is_some() => {
                first_error = first_error.or_else(|| Some((*version, slot.error.clone()?)));
            }
            _ => return None,
        }
    }
    first_error.map(Err)
}

/// The model manager. Cheap to share behind an `Arc`; stops its threads when dropped.
pub struct ModelManager {
    inner: Arc<Inner>,
}

impl ModelManager {
    /// A manager with TF Serving's default options and no warm-up.
    pub fn new(backend: Arc<dyn Backend>, tags: Vec<String>) -> ModelManager {
        ModelManager::with_options(backend, ManagerOptions::new(tags))
    }

    pub fn with_options(backend: Arc<dyn Backend>, options: ManagerOptions) -> ModelManager {
        ModelManager {
            inner: Arc::new(Inner {
                backend,
                options,
                snapshot: ArcSwap::from_pointee(Snapshot::default()),
                writer: Mutex::new(()),
                epoch: Mutex::new(0),
                changed: Condvar::new(),
                workers: Mutex::new(BTreeMap::new()),
                config: Mutex::new(None),
                reload: Mutex::new(()),
                stopping: AtomicBool::new(false),
                stop_lock: Mutex::new(()),
                stop_signal: Condvar::new(),
                ended_seq: AtomicU64::new(0),
                pollers: Mutex::new(Vec::new()),
            }),
        }
    }

    pub fn options(&self) -> &ManagerOptions {
        &self.inner.options
    }

    /// Replaces the served set of models with `config` (TF Serving's `ServerCore::ReloadConfig`,
    /// behind `--model_config_file` and gRPC `HandleReloadConfigRequest`). Blocks until every
    /// model the configuration adds has loaded (or has no version directory yet, or failed);
    /// removed models unload in the background once their in-flight requests finish, changed
    /// ones switch policy or base path. Errors:
    /// - INVALID_ARGUMENT / UNIMPLEMENTED: the configuration is invalid (nothing changes);
    /// - FAILED_PRECONDITION: a version label breaks TF Serving's rules (nothing changes);
    /// - UNKNOWN `N model(s) did not become available: {...}`: the new set is in place, but
    ///   added models failed to load (their status has the error).
    ///
    /// A configuration with nothing set (`ModelServerConfig {}`) changes nothing, as in TF.
    pub fn reload_config(&self, config: ModelServerConfig) -> Result<()> {
        self.inner.reload_config(&config)
    }

    /// Re-reads the text-format `ModelServerConfig` at `path` every `interval` and applies it when
    /// it changed (`--model_config_file_poll_wait_seconds`). Errors are logged; the models keep
    /// serving.
    pub fn watch_config_file(&self, path: PathBuf, interval: Duration) {
        let inner = self.inner.clone();
        let spawned = std::thread::Builder::new()
            .name("config-poll".to_string())
            .spawn(move || {
                let mut last_problem: Option<String> = None;
                let mut empty_noted = false;
                while inner.sleep(interval) {
                    let result = read_text_proto::<ModelServerConfig>(&path).and_then(|config| {
                        // Said once, not at every poll, while the file stays empty.
                        let empty = config.config.is_none();
                        if empty && !empty_noted {
                            tracing::info!(
                                "{} holds no model_config_list: taking no action for empty config",
                                path.display()
                            );
                        }
                        empty_noted = empty;
                        let models = models_of(&config)?;
                        let current = lock(&inner.config).clone().unwrap_or_default();
                        let same = models.len() == current.len()
                            && models.iter().all(|m| current.get(&m.name) == Some(m));
                        if same || empty {
                            return Ok(false);
                        }
                        tracing::info!(
                            "{} changed: reloading the model configuration",
                            path.display()
                        );
                        inner.reload_config(&config).map(|()| true)
                    });
                    match result {
                        Ok(reloaded) => {
                            if reloaded {
                                tracing::info!(
                                    "Reloaded the model configuration from {}",
                                    path.display()
                                );
                            }
                            last_problem = None;
                        }
                        Err(err) => {
                            if last_problem.as_deref() != Some(err.message.as_str()) {
                                tracing::error!("Reloading {} failed: {err}", path.display());
                                last_problem = Some(err.message);
                            }
                        }
                    }
                }
            });
        match spawned {
            Ok(handle) => lock(&self.inner.pollers).push(handle),
            Err(err) => tracing::error!("could not start the config file poller: {err}"),
        }
    }

    /// Serves `base_path` as model `name` (latest version), alongside the models already
    /// configured, and waits for it. Returns the version loaded.
    pub fn load_latest(&self, name: &str, base_path: &Path) -> Result<i64> {
        let mut config = single_model_config(name, base_path);
        if let Some(current) = lock(&self.inner.config).clone() {
            if let Some(
                oxserve_proto::tensorflow::serving::model_server_config::Config::ModelConfigList(
                    list,
                ),
            ) = &mut config.config
            {
                let mine = list.config.clone();
                list.config = current
                    .values()
                    .filter(|model| model.name != name)
                    .map(entry_to_proto)
                    .collect();
                list.config.extend(mine);
            }
        }
        self.reload_config(config)?;
        self.inner
            .wait_for(|snapshot| settled(snapshot, name))
            .ok_or_else(|| Error::unavailable("the server is shutting down"))?
            .map_err(|(version, err)| {
                Error::new(
                    err.code,
                    format!("Loading servable: {{name: {name} version: {version}}} failed: {err}"),
                )
            })?
            .ok_or_else(|| {
                Error::not_found(format!(
                    "No versions of servable {name} found under base path {}",
                    base_path.display()
                ))
            })
    }

    /// Resolves a request's model, version or label to a loaded servable.
    pub fn servable(&self, spec: &ModelSpec) -> Result<Arc<Servable>> {
        let snapshot = self.inner.snapshot.load();
        let entry = snapshot.models.get(&spec.name);
        let available = |version: i64| {
            entry
                .and_then(|entry| entry.versions.get(&version))
                .and_then(|slot| slot.servable.clone())
        };
        // A label stands for its version, as TF Serving resolves it before the lookup.
        let version = match &spec.version {
            VersionRequest::Latest => None,
            VersionRequest::Specific(version) => Some(*version),
            VersionRequest::Label(label) => Some(
                *entry
                    .and_then(|entry| entry.labels.get(label))
                    .ok_or_else(|| {
                        Error::invalid_argument(format!(
                            "Unrecognized servable version label: {label}"
                        ))
                    })?,
            ),
        };
        let found = match version {
            None => entry.and_then(|entry| {
                entry
                    .versions
                    .values()
                    .rev()
                    .find_map(|slot| slot.servable.clone())
            }),
            Some(version) => available(version),
        };
        found.ok_or_else(|| {
            let request = match version {
                None => format!("Latest({})", spec.name),
                Some(version) => format!("Specific({}, {version})", spec.name),
            };
            Error::not_found(format!("Servable not found for request: {request}"))
        })
    }

    /// The status of every version of a model, or of one version, as `GetModelStatus` reports it.
    /// Removed models keep reporting their (END) versions, as in TF Serving.
    pub fn status(&self, name: &str, version: Option<i64>) -> Result<Vec<VersionStatus>> {
        let snapshot = self.inner.snapshot.load();
        let entry = snapshot
            .models
            .get(name)
            .filter(|entry| !entry.versions.is_empty())
            .ok_or_else(|| {
                Error::not_found(format!("Could not find any versions of model {name}"))
            })?;
        let statuses = version_statuses(entry, version);
        match version {
            Some(wanted) if statuses.is_empty() => Err(Error::not_found(format!(
                "Could not find version {wanted} of model {name}"
            ))),
            _ => Ok(statuses),
        }
    }

    /// Every configured model with its versions, states and labels, by name.
    pub fn models(&self) -> Vec<ModelSummary> {
        let snapshot = self.inner.snapshot.load();
        snapshot
            .models
            .iter()
            .filter(|(_, entry)| entry.configured)
            .map(|(name, entry)| ModelSummary {
                name: name.clone(),
                base_path: entry.base_path.clone(),
                versions: version_statuses(entry, None),
                labels: entry.labels.clone(),
            })
            .collect()
    }

    /// The configured models without an available version (readiness: empty when ready).
    pub fn unavailable_models(&self) -> Vec<String> {
        let snapshot = self.inner.snapshot.load();
        snapshot
            .models
            .iter()
            .filter(|(_, entry)| {
                entry.configured
                    && !entry
                        .versions
                        .values()
                        .any(|slot| slot.state == VersionState::Available)
            })
            .map(|(name, _)| name.clone())
            .collect()
    }

    /// Whether `name` is, or was, a configured model (its status is known).
    pub fn knows(&self, name: &str) -> bool {
        self.inner.snapshot.load().models.contains_key(name)
    }

    /// Whether a configuration was applied.
    pub fn configured(&self) -> bool {
        lock(&self.inner.config).is_some()
    }

    /// Stops polling and loading: sources finish the load they are in, then exit. Served models
    /// stay loaded (the process is about to exit). Idempotent.
    pub fn shutdown(&self) {
        self.inner.shutdown();
    }
}

impl Drop for ModelManager {
    fn drop(&mut self) {
        self.inner.shutdown();
    }
}

fn version_statuses(entry: &ModelEntry, version: Option<i64>) -> Vec<VersionStatus> {
    // Newest first, as TF Serving's ServableStateMonitor orders versions.
    entry
        .versions
        .iter()
        .rev()
        .filter(|(v, _)| version.is_none_or(|wanted| wanted == **v))
        .map(|(&version, slot)| VersionStatus {
            version,
            state: slot.state,
            error: slot.error.clone(),
        })
        .collect()
}

fn entry_to_proto(model: &ModelConfigEntry) -> oxserve_proto::tensorflow::serving::ModelConfig {
    use oxserve_proto::tensorflow::serving::file_system_storage_path_source_config::{
        servable_version_policy::{All, Latest, PolicyChoice, Specific},
        ServableVersionPolicy,
    };
    let choice = match &model.policy {
        VersionPolicy::Latest(n) => PolicyChoice::Latest(Latest { num_versions: *n }),
        VersionPolicy::All => PolicyChoice::All(All {}),
        VersionPolicy::Specific(versions) => PolicyChoice::Specific(Specific {
            versions: versions.iter().copied().collect(),
        }),
    };
    oxserve_proto::tensorflow::serving::ModelConfig {
        name: model.name.clone(),
        base_path: model.base_path.to_string_lossy().into_owned(),
        model_platform: "tensorflow".to_string(),
        model_version_policy: Some(ServableVersionPolicy {
            policy_choice: Some(choice),
        }),
        version_labels: model
            .labels
            .iter()
            .map(|(label, version)| (label.clone(), *version))
            .collect(),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests;
