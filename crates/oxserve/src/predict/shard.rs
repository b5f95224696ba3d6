//! How a batch-prediction job is split: into output shards, and output shards among workers.
//!
//! - Instance `k` (0-based) of input file `f` (0-based, in the order the inputs are listed) belongs
//!   to output shard `(f + k) mod M` ([`shard_of`]). Every instance has exactly one shard, shards
//!   differ in size by at most one instance per file, and the assignment depends only on the list
//!   of inputs and `M`: every worker computes the same one without talking to the others.
//! - Worker `i` of `N` predicts the output shards `j` with `j mod N == i` ([`WorkerSpec::owns`]).
//!   With the default `M = N` each worker writes exactly one shard.
//!
//! A shard is written to temporary files, then renamed into place, then marked complete; a rerun
//! skips complete shards ([`ShardFiles`]). A run holds a lock on each shard it writes from before
//! it looks at the shard until its end ([`ShardFiles::lock`]): a second run into the same
//! directory would otherwise take the first one's temporary files for leftovers of a crash and
//! remove them, and one of the two would fail at its rename.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};

/// The output shard of instance `item` of input file `file`, among `num_shards`.
pub fn shard_of(file: usize, item: u64, num_shards: usize) -> usize {
    let m = num_shards.max(1) as u64;
    ((file as u64 % m + item % m) % m) as usize
}

/// Which worker this process is, among how many.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WorkerSpec {
    pub index: usize,
    pub count: usize,
}

impl WorkerSpec {
    pub const SINGLE: WorkerSpec = WorkerSpec { index: 0, count: 1 };

    /// Parses `i/N` (0 <= i < N).
    pub fn parse(text: &str) -> anyhow::Result<WorkerSpec> {
        let Some((i, n)) = text.split_once('/') else {
            bail!("--shard: expected i/N (e.g. 0/3), got {text:?}");
        };
        let index: usize = i
            .trim()
            .parse()
            .with_context(|| format!("--shard: bad worker index {i:?} in {text:?}"))?;
        let count: usize = n
            .trim()
            .parse()
            .with_context(|| format!("--shard: bad worker count {n:?} in {text:?}"))?;
        WorkerSpec::new(index, count).with_context(|| format!("--shard {text}"))
    }

    pub fn new(index: usize, count: usize) -> anyhow::Result<WorkerSpec> {
        if count == 0 {
            bail!("the number of workers must be at least 1");
        }
        if index >= count {
            bail!("worker index {index} is out of range: it must be in 0..{count}");
        }
        Ok(WorkerSpec { index, count })
    }

    /// Whether this worker predicts output shard `shard`.
    pub fn owns(&self, shard: usize) -> bool {
        shard % self.count == self.index
    }

    /// The output shards this worker predicts, in order.
    pub fn shards(&self, num_shards: usize) -> Vec<usize> {
        (0..num_shards).filter(|&s| self.owns(s)).collect()
    }
}

/// `prediction.results-00001-of-00003`, Cloud ML Engine's (and Beam's) naming.
pub fn results_name(shard: usize, num_shards: usize) -> String {
    format!("prediction.results-{shard:05}-of-{num_shards:05}")
}

/// `prediction.errors_stats-00001-of-00003`: the per-instance errors of the same shard.
pub fn errors_name(shard: usize, num_shards: usize) -> String {
    format!("prediction.errors_stats-{shard:05}-of-{num_shards:05}")
}

/// The hidden directory under the output directory that holds temporary files and completion
/// markers.
pub const STATE_DIR: &str = ".oxserve-predict";

/// The files of one output shard.
#[derive(Clone, Debug)]
pub struct ShardFiles {
    pub shard: usize,
    pub num_shards: usize,
    pub results: PathBuf,
    pub errors: PathBuf,
    pub results_tmp: PathBuf,
    pub errors_tmp: PathBuf,
    pub marker: PathBuf,
    pub lock: PathBuf,
}

/// A shard's lock, held until dropped (or the process ends, however it ends: a `kill -9` leaves
/// nothing to clean up).
#[derive(Debug)]
pub struct ShardLock {
    _lock: Option<Flock<fs::File>>,
}

impl ShardFiles {
    pub fn new(output_dir: &Path, shard: usize, num_shards: usize) -> ShardFiles {
        let state = output_dir.join(STATE_DIR);
        let pid = std::process::id();
        let results = results_name(shard, num_shards);
        let errors = errors_name(shard, num_shards);
        ShardFiles {
            shard,
            num_shards,
            results_tmp: state.join(format!("{results}.tmp-{pid}")),
            errors_tmp: state.join(format!("{errors}.tmp-{pid}")),
            results: output_dir.join(results),
            errors: output_dir.join(errors),
            marker: state.join(format!("shard-{shard:05}-of-{num_shards:05}.done")),
            lock: state.join(format!("shard-{shard:05}-of-{num_shards:05}.lock")),
        }
    }

    /// Takes the shard's lock, or fails at once if another run holds it. The lock file is
    /// never removed: a run that removed it could not know that no other run had opened it
    /// meanwhile, and then two runs would each hold a lock on a different file.
    pub fn lock(&self) -> anyhow::Result<ShardLock> {
        let file = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&self.lock)
            .with_context(|| format!("creating {}", self.lock.display()))?;
        match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(lock) => Ok(ShardLock { _lock: Some(lock) }),
            Err((_, Errno::EWOULDBLOCK)) => {
                let output_dir = self.results.parent().unwrap_or(Path::new("."));
                bail!(
                    "{}: another oxserve predict is writing shard {} of {} there (it holds the lock {}): wait for it to end, or use another --output_dir",
                    output_dir.display(),
                    self.shard,
                    self.num_shards,
                    self.lock.display()
                )
            }
            // Some network file systems have no locks: the run goes on as it did before locks.
            Err((_, errno)) => {
                tracing::warn!(
                    "cannot lock {} ({errno}): make sure no other run writes shard {} of {} at the same time",
                    self.lock.display(),
                    self.shard,
                    self.num_shards
                );
                Ok(ShardLock { _lock: None })
            }
        }
    }

    /// Reads the completion marker: `None` when the shard has not been completed.
    pub fn completed(&self) -> anyhow::Result<Option<serde_json::Value>> {
        let text = match fs::read_to_string(&self.marker) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e).with_context(|| format!("reading {}", self.marker.display())),
        };
        if !self.results.exists() || !self.errors.exists() {
            // Marked complete, but an output file was deleted since: predict it again.
            return Ok(None);
        }
        match serde_json::from_str(&text) {
            Ok(value) => Ok(Some(value)),
            // A marker is written atomically, so this is not a crash leftover: but redoing a
            // shard is always safe.
            Err(_) => Ok(None),
        }
    }

    /// Removes the shard's outputs and marker.
    pub fn remove(&self) -> anyhow::Result<()> {
        remove_if_exists(&self.marker)?;
        remove_if_exists(&self.results)?;
        remove_if_exists(&self.errors)
    }

    /// Removes the marker and leftovers of earlier, interrupted runs of this shard (temporary
    /// files of any process id).
    pub fn clean(&self) -> anyhow::Result<()> {
        remove_if_exists(&self.marker)?;
        let Some(state) = self.marker.parent() else {
            return Ok(());
        };
        let prefixes = [
            format!("{}.tmp-", results_name(self.shard, self.num_shards)),
            format!("{}.tmp-", errors_name(self.shard, self.num_shards)),
        ];
        let entries = match fs::read_dir(state) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e).with_context(|| format!("listing {}", state.display())),
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if prefixes.iter().any(|p| name.starts_with(p.as_str())) {
                remove_if_exists(&entry.path())?;
            }
        }
        Ok(())
    }

    /// Makes the shard visible: the temporary files (already flushed and synced by the caller)
    /// are renamed into place, then the marker is written (atomically, via its own temporary file).
    pub fn commit(&self, marker: &serde_json::Value) -> anyhow::Result<()> {
        rename(&self.errors_tmp, &self.errors)?;
        rename(&self.results_tmp, &self.results)?;
        let tmp = self
            .marker
            .with_extension(format!("tmp-{}", std::process::id()));
        {
            let mut file =
                fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
            let mut text = serde_json::to_vec_pretty(marker)?;
            text.push(b'\n');
            file.write_all(&text)
                .and_then(|()| file.sync_all())
                .with_context(|| format!("writing {}", tmp.display()))?;
        }
        rename(&tmp, &self.marker)?;
        sync_dir(self.results.parent());
        sync_dir(self.marker.parent());
        Ok(())
    }
}

/// Every completed shard in `output_dir`, of any shard count, with its marker: a job that only
/// looked at its own shards would not see a completed job of another shard count (or the
/// completed shards of other workers) and would mix its outputs with theirs.
pub fn completed_shards(output_dir: &Path) -> anyhow::Result<Vec<(ShardFiles, serde_json::Value)>> {
    let state = output_dir.join(STATE_DIR);
    let entries = match fs::read_dir(&state) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("listing {}", state.display())),
    };
    let mut found = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some((shard, count)) = name
            .to_str()
            .and_then(|n| n.strip_prefix("shard-")?.strip_suffix(".done"))
            .and_then(|n| n.split_once("-of-"))
        else {
            continue;
        };
        let (Ok(shard), Ok(count)) = (shard.parse(), count.parse()) else {
            continue;
        };
        let files = ShardFiles::new(output_dir, shard, count);
        if let Some(marker) = files.completed()? {
            found.push((files, marker));
        }
    }
    found.sort_by_key(|(f, _)| (f.num_shards, f.shard));
    Ok(found)
}

fn rename(from: &Path, to: &Path) -> anyhow::Result<()> {
    fs::rename(from, to).with_context(|| format!("renaming {} to {}", from.display(), to.display()))
}

fn remove_if_exists(path: &Path) -> anyhow::Result<()> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("removing {}", path.display())),
    }
}

/// Best effort: makes renames in `dir` durable.
fn sync_dir(dir: Option<&Path>) {
    if let Some(dir) = dir {
        if let Ok(d) = fs::File::open(dir) {
            let _ = d.sync_all();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[test]
    fn every_instance_has_exactly_one_shard_and_shards_are_balanced() {
        let files = [0u64, 1, 7, 100, 5];
        for m in 1..=7 {
            let mut sizes = vec![0u64; m];
            for (f, &n) in files.iter().enumerate() {
                let mut per_file = vec![0u64; m];
                for k in 0..n {
                    let s = shard_of(f, k, m);
                    assert!(s < m);
                    sizes[s] += 1;
                    per_file[s] += 1;
                }
                // Within one file, shards differ by at most one instance.
                let (lo, hi) = (per_file.iter().min(), per_file.iter().max());
                assert!(
                    hi.unwrap() - lo.unwrap() <= 1,
                    "m={m} file={f} {per_file:?}"
                );
            }
            assert_eq!(sizes.iter().sum::<u64>(), files.iter().sum::<u64>());
        }
        // Single-instance files spread over shards instead of all landing on shard 0.
        let spread: Vec<usize> = (0..6).map(|f| shard_of(f, 0, 3)).collect();
        assert_eq!(spread, vec![0, 1, 2, 0, 1, 2]);
        // Huge indices do not overflow.
        assert!(shard_of(usize::MAX, u64::MAX, 7) < 7);
        assert_eq!(shard_of(3, 9, 0), 0);
    }

    #[test]
    fn workers_together_own_every_shard_exactly_once() {
        for n in 1..=5 {
            for m in n..=12 {
                let mut owners: BTreeMap<usize, usize> = BTreeMap::new();
                for i in 0..n {
                    let w = WorkerSpec::new(i, n).unwrap();
                    for s in w.shards(m) {
                        *owners.entry(s).or_default() += 1;
                    }
                }
                assert_eq!(owners.len(), m);
                assert!(owners.values().all(|&c| c == 1));
            }
        }
    }

    #[test]
    fn worker_specs_parse_and_validate() {
        assert_eq!(
            WorkerSpec::parse("2/3").unwrap(),
            WorkerSpec { index: 2, count: 3 }
        );
        assert_eq!(WorkerSpec::parse(" 0 / 1 ").unwrap(), WorkerSpec::SINGLE);
        for bad in ["3/3", "1/0", "a/2", "1", "-1/2", "1/2/3", ""] {
            assert!(WorkerSpec::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn names_follow_cloud_ml_engine() {
        assert_eq!(results_name(0, 1), "prediction.results-00000-of-00001");
        assert_eq!(errors_name(2, 12), "prediction.errors_stats-00002-of-00012");
    }

    #[test]
    fn a_shard_is_locked_by_one_run_at_a_time() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir_all(dir.path().join(STATE_DIR)).unwrap();
        let files = ShardFiles::new(dir.path(), 0, 2);
        let held = files.lock().unwrap();
        // flock locks belong to an open file: a second open, as by another process, is refused.
        let err = format!("{:#}", files.lock().unwrap_err());
        assert!(
            err.contains("another oxserve predict is writing shard 0 of 2"),
            "{err}"
        );
        assert!(err.contains(&dir.path().display().to_string()), "{err}");
        // Other shards are free.
        let _other = ShardFiles::new(dir.path(), 1, 2).lock().unwrap();
        drop(held);
        files.lock().unwrap();
    }

    #[test]
    fn commit_and_completion() {
        let dir = tempfile::tempdir().unwrap();
        let files = ShardFiles::new(dir.path(), 1, 3);
        fs::create_dir_all(dir.path().join(STATE_DIR)).unwrap();
        assert!(files.completed().unwrap().is_none());
        fs::write(&files.results_tmp, "r\n").unwrap();
        fs::write(&files.errors_tmp, "").unwrap();
        let stale = dir
            .path()
            .join(STATE_DIR)
            .join(format!("{}.tmp-1", results_name(1, 3)));
        fs::write(&stale, "old").unwrap();
        files.commit(&serde_json::json!({"instances": 1})).unwrap();
        assert_eq!(fs::read_to_string(&files.results).unwrap(), "r\n");
        assert_eq!(files.completed().unwrap().unwrap()["instances"], 1);
        // Deleting an output makes the shard incomplete again.
        fs::remove_file(&files.results).unwrap();
        assert!(files.completed().unwrap().is_none());
        files.clean().unwrap();
        assert!(!files.marker.exists() && !stale.exists());
    }
}
