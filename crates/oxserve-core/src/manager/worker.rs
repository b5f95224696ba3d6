//! One model's source and loader: a thread that scans the model's base path, applies its version
//! policy, loads wanted versions (with retries), and unloads unwanted ones without ever leaving
//! the model with nothing to serve while a wanted version is still loading.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::source::{version_dirs, DirTracker, VersionDir, SETTLE};
use super::{
    Inner, ModelConfigEntry, ModelEntry, SourceState, Unload, VersionPolicy, VersionSlot,
    VersionState, WorkerHandle,
};
use crate::error::{Error, Result};

pub(super) enum Command {
    /// The model's configuration changed (or the model was added again).
    Update(ModelConfigEntry),
    /// The model left the configuration: unload everything and end the thread (a model added
    /// again gets a new one).
    Retire,
    /// The manager stops.
    Stop,
}

pub(super) fn spawn(inner: Arc<Inner>, config: ModelConfigEntry) -> Result<WorkerHandle> {
    let (commands, receiver) = mpsc::channel();
    let name = config.name.clone();
    let worker = Worker {
        tracker: DirTracker::new(inner.options.settle),
        inner,
        name: name.clone(),
        config: Some(config),
        attempts: BTreeMap::new(),
        aspired: BTreeSet::new(),
        dirs: BTreeMap::new(),
        scanned: false,
        pending: false,
        notice: None,
    };
    let thread = crate::threads::named(format!("model-{name}"))
        .spawn(move || worker.run(receiver))
        .map_err(|err| {
            Error::internal(format!("could not start the source of model {name}: {err}"))
        })?;
    Ok(WorkerHandle {
        commands,
        thread: Some(thread),
        retired: false,
    })
}

/// The failed load attempts of one version.
struct Attempt {
    /// Failed attempts in a row (the first one included).
    failures: u32,
    /// When to try again; `None` once the retries are used up.
    retry_at: Option<Instant>,
    /// The directory's fingerprint at the failed attempt: a different stable one retries at once.
    fingerprint: Option<u64>,
}

struct Worker {
    inner: Arc<Inner>,
    name: String,
    /// `None` once the model left the configuration.
    config: Option<ModelConfigEntry>,
    tracker: DirTracker,
    attempts: BTreeMap<i64, Attempt>,
    /// What the policy wants, from the latest scan that found versions.
    aspired: BTreeSet<i64>,
    /// The wanted version directories, from that scan.
    dirs: BTreeMap<i64, VersionDir>,
    /// A scan happened since the configuration was last set.
    scanned: bool,
    /// Some wanted, not yet loaded directory was not stable at the last scan.
    pending: bool,
    /// The last problem logged about the base path, to log each one once.
    notice: Option<String>,
}

impl Worker {
    fn run(mut self, commands: mpsc::Receiver<Command>) {
        loop {
            if self.inner.stopping() {
                return;
            }
            let wait = self.step();
            if self.inner.stopping() {
                return;
            }
            let command = match wait {
                Some(wait) => commands.recv_timeout(wait),
                None => commands.recv().map_err(|_| RecvTimeoutError::Disconnected),
            };
            match command {
                Ok(Command::Update(config)) => self.configure(Some(config)),
                Ok(Command::Retire) => {
                    self.configure(None);
                    self.step();
                    return;
                }
                Ok(Command::Stop) | Err(RecvTimeoutError::Disconnected) => return,
                Err(RecvTimeoutError::Timeout) => {}
            }
        }
    }

    fn configure(&mut self, config: Option<ModelConfigEntry>) {
        let same_path = match (&self.config, &config) {
            (Some(old), Some(new)) => old.base_path == new.base_path,
            _ => false,
        };
        if !same_path {
            self.tracker.reset();
            self.attempts.clear();
            self.dirs.clear();
            self.aspired.clear();
        }
        self.scanned = false;
        self.notice = None;
        self.config = config;
    }

    /// Scans (when due), reconciles, and returns how long to wait before the next step (`None`:
    /// until a command arrives).
    fn step(&mut self) -> Option<Duration> {
        let poll = self.inner.options.file_system_poll_wait;
        let Some(config) = self.config.clone() else {
            self.aspired.clear();
            self.dirs.clear();
            self.reconcile(None);
            return None;
        };
        let source = if poll.is_some() || !self.scanned || self.pending {
            Some(self.scan(&config))
        } else {
            None
        };
        self.reconcile(source);

        let now = Instant::now();
        let mut wait = poll;
        if self.pending {
            let settle = self.inner.options.settle.min(SETTLE);
            wait = Some(wait.map_or(settle, |wait| wait.min(settle)));
        }
        for attempt in self.attempts.values() {
            if let Some(at) = attempt.retry_at {
                let until = at.saturating_duration_since(now);
                wait = Some(wait.map_or(until, |wait| wait.min(until)));
            }
        }
        wait
    }

    /// Looks at the base path; updates what the policy wants when it found some of them (an
    /// empty or unreadable base path, or one without any version the policy wants, changes
    /// nothing: what is served keeps serving).
    fn scan(&mut self, config: &ModelConfigEntry) -> SourceState {
        self.scanned = true;
        match version_dirs(&config.base_path) {
            Err(err) => self.notice(format!(
                "File system source of model {}: {err}; polling on",
                self.name
            )),
            Ok(found) if found.is_empty() => self.notice(format!(
                "No versions of servable {} found under base path {}. Did you forget to name your leaf directories as numbers (eg. '/1/')?",
                self.name,
                config.base_path.display()
            )),
            Ok(found) => {
                self.notice = None;
                let numbers: BTreeSet<i64> = found.keys().copied().collect();
                let aspired = config.policy.select(&numbers);
                if let VersionPolicy::Specific(wanted) = &config.policy {
                    let missing: Vec<_> = wanted.difference(&numbers).collect();
                    if !missing.is_empty() {
                        self.notice(format!(
                            "Versions {missing:?} of servable {} (specific policy) not found under base path {}",
                            self.name,
                            config.base_path.display()
                        ));
                    }
                }
                if aspired.is_empty() {
                    // Nothing the policy wants exists (yet): like an empty base path, this keeps
                    // what is served serving rather than unloading it all.
                    return SourceState {
                        scanned: true,
                        aspired: self.aspired.clone(),
                    };
                }
                let wanted: BTreeMap<i64, std::path::PathBuf> = found
                    .into_iter()
                    .filter(|(version, _)| aspired.contains(version))
                    .collect();
                self.dirs = self.tracker.observe(&wanted);
                self.aspired = aspired;
            }
        }
        SourceState {
            scanned: true,
            aspired: self.aspired.clone(),
        }
    }

    fn notice(&mut self, message: String) {
        if self.notice.as_deref() != Some(message.as_str()) {
            tracing::warn!("{message}");
            self.notice = Some(message);
        }
    }

    /// Brings the model's versions in line with what the policy wants: END for wanted-no-more
    /// versions that never loaded, unloads (availability-preserving), START for newly wanted
    /// versions, then loads, highest version first, one at a time, until nothing is left to do.
    fn reconcile(&mut self, mut source: Option<SourceState>) {
        let aspired = self.aspired.clone();
        self.attempts.retain(|version, _| aspired.contains(version));
        loop {
            let name = self.name.clone();
            let inner = self.inner.clone();
            let ended = inner.next_ended();
            let (unloads, states) = inner.mutate(|snapshot| {
                let entry = snapshot
                    .models
                    .entry(name.clone())
                    .or_insert_with(|| ModelEntry::new(Default::default()));
                if let Some(source) = source.take() {
                    entry.source = source;
                }
                // Wanted no more, never loaded: END (keeping the last error, if any).
                for (version, slot) in entry.versions.iter_mut() {
                    if !aspired.contains(version)
                        && matches!(slot.state, VersionState::Start | VersionState::Loading)
                    {
                        slot.state = VersionState::End;
                        slot.ended = ended;
                        slot.generation += 1;
                    }
                }
                let unloads = availability_preserving_unloads(&name, entry, &aspired);
                // Newly wanted: START (a version unloaded or failed earlier is loaded anew, as
                // a new harness would be in TF Serving).
                for version in &aspired {
                    let fresh = match entry.versions.get(version) {
                        None => true,
                        Some(slot) => {
                            slot.state == VersionState::End && !self.attempts.contains_key(version)
                        }
                    };
                    if fresh {
                        entry
                            .versions
                            .insert(*version, VersionSlot::new(VersionState::Start));
                    }
                }
                entry.prune();
                let states: BTreeMap<i64, VersionState> = entry
                    .versions
                    .iter()
                    .map(|(version, slot)| (*version, slot.state))
                    .collect();
                (unloads, states)
            });
            inner.finish_unloads(unloads);

            self.pending = aspired.iter().any(|version| {
                matches!(
                    states.get(version),
                    Some(VersionState::Start | VersionState::Loading | VersionState::End)
                ) && self.dirs.get(version).is_some_and(|dir| !dir.stable)
            });
            let now = Instant::now();
            let next = aspired.iter().rev().copied().find(|version| {
                let Some(dir) = self.dirs.get(version) else {
                    return false;
                };
                match states.get(version) {
                    Some(VersionState::Start) => dir.stable,
                    Some(VersionState::Loading | VersionState::End) => {
                        dir.stable
                            && self.attempts.get(version).is_some_and(|attempt| {
                                attempt.fingerprint != dir.fingerprint
                                    || attempt.retry_at.is_some_and(|at| at <= now)
                            })
                    }
                    _ => false,
                }
            });
            match next {
                Some(version) if !self.inner.stopping() => self.load(version),
                _ => return,
            }
        }
    }

    fn load(&mut self, version: i64) {
        let Some(dir) = self.dirs.get(&version).cloned() else {
            return;
        };
        let name = self.name.clone();
        let generation = self.inner.mutate(|snapshot| {
            let entry = snapshot.models.get_mut(&name)?;
            let slot = entry.versions.get_mut(&version)?;
            slot.state = VersionState::Loading;
            slot.generation += 1;
            Some(slot.generation)
        });
        let Some(generation) = generation else {
            return;
        };
        tracing::info!("Loading servable version {{name: {name} version: {version}}}");
        let started = Instant::now();
        let result = self.inner.load_servable(&name, version, &dir.path);
        match result {
            Ok(servable) => {
                self.attempts.remove(&version);
                tracing::info!(
                    "Successfully loaded servable version {{name: {name} version: {version}}} in {:.3}s",
                    started.elapsed().as_secs_f64()
                );
                self.inner.mutate(|snapshot| {
                    if let Some(slot) = snapshot
                        .models
                        .get_mut(&name)
                        .and_then(|entry| entry.versions.get_mut(&version))
                        .filter(|slot| slot.generation == generation)
                    {
                        slot.state = VersionState::Available;
                        slot.servable = Some(servable);
                        slot.error = None;
                    }
                });
            }
            Err(err) => self.failed(version, generation, &dir, err),
        }
    }

    fn failed(&mut self, version: i64, generation: u64, dir: &VersionDir, err: Error) {
        let options = &self.inner.options;
        let failures = match self.attempts.get(&version) {
            Some(attempt) if attempt.fingerprint == dir.fingerprint => attempt.failures + 1,
            _ => 1,
        };
        let retry = failures <= options.max_num_load_retries;
        let retry_at = retry.then(|| Instant::now() + options.load_retry_interval);
        let what = format!(
            "Loading servable: {{name: {} version: {version}}} failed: {err}",
            self.name
        );
        if retry {
            tracing::error!(
                "{what}; retry {failures} of {} in {:?}, or as soon as the directory changes",
                options.max_num_load_retries,
                options.load_retry_interval
            );
        } else if options.file_system_poll_wait.is_some() {
            tracing::error!(
                "{what}; giving up after {failures} attempt(s) until the version directory changes"
            );
        } else {
            tracing::error!("{what}; giving up after {failures} attempt(s)");
        }
        self.attempts.insert(
            version,
            Attempt {
                failures,
                retry_at,
                fingerprint: dir.fingerprint,
            },
        );
        let name = self.name.clone();
        let ended = self.inner.next_ended();
        self.inner.mutate(|snapshot| {
            if let Some(entry) = snapshot.models.get_mut(&name) {
                if let Some(slot) = entry
                    .versions
                    .get_mut(&version)
                    .filter(|slot| slot.generation == generation)
                {
                    slot.error = Some(err);
                    if retry {
                        slot.state = VersionState::Loading;
                    } else {
                        slot.state = VersionState::End;
                        slot.ended = ended;
                    }
                }
                entry.prune();
            }
        });
    }
}

/// TF Serving's `AvailabilityPreservingPolicy`: an available version the policy no longer wants
/// is unloaded when the policy wants nothing, or when a wanted version is available; otherwise
/// the highest such version keeps serving (and any lower ones unload).
fn availability_preserving_unloads(
    name: &str,
    entry: &mut ModelEntry,
    aspired: &BTreeSet<i64>,
) -> Vec<Unload> {
    let available: Vec<i64> = entry
        .versions
        .iter()
        .filter(|(_, slot)| slot.state == VersionState::Available)
        .map(|(version, _)| *version)
        .collect();
    let unwanted: Vec<i64> = available
        .iter()
        .copied()
        .filter(|version| !aspired.contains(version))
        .collect();
    if unwanted.is_empty() {
        return Vec::new();
    }
    let wanted_available = available.iter().any(|version| aspired.contains(version));
    let to_unload = if aspired.is_empty() || wanted_available {
        &unwanted[..]
    } else {
        &unwanted[..unwanted.len() - 1]
    };
    to_unload
        .iter()
        .filter_map(|version| {
            let slot = entry.versions.get_mut(version)?;
            super::begin_unload(name, *version, slot)
        })
        .collect()
}
