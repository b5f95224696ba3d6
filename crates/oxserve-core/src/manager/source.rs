//! The file-system source: the numeric version directories under a model's base path, and
//! whether each one is complete enough to load.
//!
//! TF Serving loads a version directory as soon as it appears, so a directory still being copied
//! is loaded half-written and fails (or worse). Here a version directory is loaded only once it is
//! *stable*: its fingerprint (every file's and directory's relative path, type, size and
//! modification time) is the same at two scans at least a poll apart, or, the first time it is
//! seen, nothing in it was modified during the last [`SETTLE`] (so that a server starting on
//! finished directories loads them at once).

use std::collections::btree_map::Entry;
use std::collections::BTreeMap;
use std::fs;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use crate::error::{Error, Result};

/// How long a directory seen for the first time must have been left untouched to count as
/// complete; also the longest wait before a directory that is still changing is looked at again.
pub const SETTLE: Duration = Duration::from_secs(1);

/// Entries looked at per version directory at most; a larger tree cannot be read whole.
const MAX_ENTRIES: usize = 100_000;
/// Directory depth looked at, at most.
const MAX_DEPTH: usize = 32;

/// The numeric version directories under a model's base path, as TF Serving sees them: names of
/// digits only (`00000123` is version 123), others ignored. Where two names give one version
/// (`3` and `0003`), the one with fewer leading zeros is taken, whatever order the directory lists
/// them in (TF Serving keeps the one listed last, which can change from one scan to the next).
pub fn version_dirs(base_path: &Path) -> Result<BTreeMap<i64, PathBuf>> {
    let entries = fs::read_dir(base_path).map_err(|err| {
        Error::not_found(format!(
            "Could not find base path {} for servable: {err}",
            base_path.display()
        ))
    })?;
    let mut versions = BTreeMap::new();
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if name.is_empty() || !name.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        if let (Ok(version), true) = (name.parse::<i64>(), entry.path().is_dir()) {
            // Of two names of one value, the shorter has fewer leading zeros.
            let longer = |taken: &PathBuf| taken.file_name().is_some_and(|t| t.len() > name.len());
            match versions.entry(version) {
                Entry::Vacant(slot) => {
                    slot.insert(entry.path());
                }
                Entry::Occupied(mut slot) if longer(slot.get()) => {
                    slot.insert(entry.path());
                }
                Entry::Occupied(_) => {}
            }
        }
    }
    Ok(versions)
}

/// What a scan saw of one version directory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fingerprint {
    /// A hash of every entry's relative path, type, size and modification time.
    pub hash: u64,
    /// The newest modification time in the tree.
    pub newest: SystemTime,
}

/// Why a tree could not be fingerprinted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Unreadable {
    /// An entry vanished or changed mid-walk: the tree is being written.
    Changing,
    /// It will not become readable by itself (permissions, a tree too deep or too large).
    Lasting(String),
}

/// Fingerprints the tree under `dir`; an error when it cannot be read whole.
pub fn fingerprint(dir: &Path) -> std::result::Result<Fingerprint, Unreadable> {
    let unreadable = |path: &Path, err: std::io::Error| {
        if err.kind() == std::io::ErrorKind::NotFound {
            Unreadable::Changing
        } else {
            Unreadable::Lasting(format!("{}: {err}", path.display()))
        }
    };
    let top = fs::metadata(dir).map_err(|e| unreadable(dir, e))?;
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    let mut newest = top.modified().map_err(|e| unreadable(dir, e))?;
    let mut entries = 0usize;
    let mut stack = vec![(PathBuf::new(), 0usize)];
    while let Some((relative, depth)) = stack.pop() {
        let here = dir.join(&relative);
        let mut children: Vec<_> = fs::read_dir(&here)
            .and_then(|listing| {
                listing
                    .map(|entry| entry.map(|entry| entry.file_name()))
                    .collect::<std::io::Result<Vec<_>>>()
            })
            .map_err(|e| unreadable(&here, e))?;
        children.sort();
        for name in children {
            entries += 1;
            if entries > MAX_ENTRIES {
                return Err(Unreadable::Lasting(format!(
                    "more than {MAX_ENTRIES} entries"
                )));
            }
            let path = relative.join(&name);
            let full = dir.join(&path);
            let meta = fs::symlink_metadata(&full).map_err(|e| unreadable(&full, e))?;
            let modified = meta.modified().map_err(|e| unreadable(&full, e))?;
            newest = newest.max(modified);
            path.hash(&mut hasher);
            (meta.is_dir(), meta.is_symlink(), meta.len()).hash(&mut hasher);
            modified.hash(&mut hasher);
            if meta.is_dir() {
                if depth + 1 >= MAX_DEPTH {
                    return Err(Unreadable::Lasting(format!(
                        "{} is more than {MAX_DEPTH} directories deep",
                        full.display()
                    )));
                }
                stack.push((path, depth + 1));
            }
        }
    }
    Ok(Fingerprint {
        hash: hasher.finish(),
        newest,
    })
}

/// One version directory as the latest scan saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VersionDir {
    pub path: PathBuf,
    /// `None` while the tree is changing under the scan.
    pub fingerprint: Option<u64>,
    /// Complete enough to load (see the module documentation).
    pub stable: bool,
}

/// Remembers what earlier scans saw, to tell stable directories from ones being written.
#[derive(Debug)]
pub struct DirTracker {
    seen: BTreeMap<i64, u64>,
    /// Versions whose tree cannot be read, with the reason last logged.
    unreadable: BTreeMap<i64, String>,
    settle: Duration,
}

impl Default for DirTracker {
    fn default() -> Self {
        DirTracker::new(SETTLE)
    }
}

impl DirTracker {
    pub fn new(settle: Duration) -> DirTracker {
        DirTracker {
            seen: BTreeMap::new(),
            unreadable: BTreeMap::new(),
            settle,
        }
    }

    /// Forgets everything seen (the base path changed).
    pub fn reset(&mut self) {
        self.seen.clear();
        self.unreadable.clear();
    }

    /// Looks at the given version directories (the ones the policy wants) and forgets the others.
    pub fn observe(&mut self, dirs: &BTreeMap<i64, PathBuf>) -> BTreeMap<i64, VersionDir> {
        self.observe_at(dirs, SystemTime::now())
    }

    fn observe_at(
        &mut self,
        dirs: &BTreeMap<i64, PathBuf>,
        now: SystemTime,
    ) -> BTreeMap<i64, VersionDir> {
        let mut seen = BTreeMap::new();
        let mut out = BTreeMap::new();
        let mut unreadable = BTreeMap::new();
        for (&version, path) in dirs {
            // A tree that cannot be read whole, and will not become readable by itself, is loaded
            // once it reads the same way at two scans, as TF Serving would load it: TensorFlow
            // says whether it needs what cannot be read (PERMISSION_DENIED), and a version it does
            // not need it for (an unrelated subdirectory) serves. Its fingerprint is the reason,
            // so that the version is retried when that changes.
            let (print, quiet) = match fingerprint(path) {
                Ok(print) => (
                    Some(print.hash),
                    now.duration_since(print.newest)
                        .is_ok_and(|quiet| quiet >= self.settle),
                ),
                Err(Unreadable::Changing) => (None, false),
                Err(Unreadable::Lasting(reason)) => {
                    // Once per reason: the directory is scanned every poll.
                    if self.unreadable.get(&version) != Some(&reason) {
                        tracing::warn!(
                            "version {version} at {} cannot all be read ({reason}): it is loaded if it stays so",
                            path.display()
                        );
                    }
                    let mut hasher = std::collections::hash_map::DefaultHasher::new();
                    reason.hash(&mut hasher);
                    unreadable.insert(version, reason);
                    (Some(hasher.finish()), false)
                }
            };
            let stable = match (print, self.seen.get(&version)) {
                (None, _) => false,
                (Some(print), Some(previous)) => print == *previous,
                (Some(_), None) => quiet,
            };
            if let Some(print) = print {
                seen.insert(version, print);
            }
            out.insert(
                version,
                VersionDir {
                    path: path.clone(),
                    fingerprint: print,
                    stable,
                },
            );
        }
        self.seen = seen;
        self.unreadable = unreadable;
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(path: &Path, text: &str) {
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, text).unwrap();
    }

    #[test]
    fn numeric_directories_only() {
        let base = tempfile::tempdir().unwrap();
        for name in ["1", "00000123", "abc", "12a", "-3"] {
            fs::create_dir(base.path().join(name)).unwrap();
        }
        write(&base.path().join("7"), "a file, not a directory");
        let versions = version_dirs(base.path()).unwrap();
        assert_eq!(versions.keys().copied().collect::<Vec<_>>(), [1, 123]);
        assert!(version_dirs(&base.path().join("missing")).is_err());
    }

    #[test]
    fn of_two_names_for_one_version_the_one_with_fewer_leading_zeros_is_taken() {
        // Several orders of creation: the directory may list them in any order.
        for names in [
            ["3", "03", "0003"],
            ["0003", "03", "3"],
            ["03", "0003", "3"],
        ] {
            let base = tempfile::tempdir().unwrap();
            for name in names {
                fs::create_dir(base.path().join(name)).unwrap();
            }
            fs::create_dir(base.path().join("007")).unwrap();
            fs::create_dir(base.path().join("0007")).unwrap();
            let versions = version_dirs(base.path()).unwrap();
            assert_eq!(versions[&3], base.path().join("3"), "{names:?}");
            assert_eq!(versions[&7], base.path().join("007"), "{names:?}");
        }
    }

    #[test]
    fn a_directory_being_written_is_not_stable_until_unchanged_across_scans() {
        let base = tempfile::tempdir().unwrap();
        let v1 = base.path().join("1");
        write(&v1.join("saved_model.pb"), "graph");
        let mut tracker = DirTracker::new(Duration::from_secs(3600));
        let dirs = version_dirs(base.path()).unwrap();
        // Just written: not quiet for an hour, so not stable at first sight.
        let seen = tracker.observe(&dirs);
        assert!(!seen[&1].stable);
        // Unchanged at the next scan: stable.
        assert!(tracker.observe(&dirs)[&1].stable);
        // A file added (a copy going on): not stable, then stable once unchanged again.
        write(&v1.join("variables/variables.index"), "index");
        assert!(!tracker.observe(&dirs)[&1].stable);
        assert!(tracker.observe(&dirs)[&1].stable);
        // A file growing in place changes the fingerprint too.
        write(&v1.join("variables/variables.index"), "index, longer");
        assert!(!tracker.observe(&dirs)[&1].stable);
        assert!(tracker.observe(&dirs)[&1].stable);
    }

    #[test]
    fn a_tree_that_cannot_be_read_whole_is_stable_once_it_stays_so() {
        let base = tempfile::tempdir().unwrap();
        let v1 = base.path().join("1");
        write(&v1.join("saved_model.pb"), "graph");
        let mut deep = v1.join("notes");
        for _ in 0..=MAX_DEPTH {
            deep.push("d");
        }
        fs::create_dir_all(&deep).unwrap();
        let dirs = version_dirs(base.path()).unwrap();
        let later = SystemTime::now() + Duration::from_secs(10);
        let mut tracker = DirTracker::new(Duration::from_secs(1));
        let first = tracker.observe_at(&dirs, later);
        assert!(!first[&1].stable);
        let second = tracker.observe_at(&dirs, later);
        assert!(second[&1].stable);
        assert_eq!(second[&1].fingerprint, first[&1].fingerprint);
        assert!(second[&1].fingerprint.is_some());
        // Readable again: a new fingerprint, which retries a version that failed.
        fs::remove_dir_all(v1.join("notes")).unwrap();
        assert_ne!(
            tracker.observe_at(&dirs, later)[&1].fingerprint,
            first[&1].fingerprint
        );
    }

    #[test]
    fn quiet_directories_are_stable_at_first_sight() {
        let base = tempfile::tempdir().unwrap();
        write(&base.path().join("5/saved_model.pb"), "graph");
        let dirs = version_dirs(base.path()).unwrap();
        let later = SystemTime::now() + Duration::from_secs(10);
        let mut tracker = DirTracker::new(Duration::from_secs(1));
        assert!(tracker.observe_at(&dirs, later)[&5].stable);
        // Forgotten versions start over: just written, so not stable at first sight now.
        tracker.reset();
        assert!(!tracker.observe(&dirs)[&5].stable);
    }

    #[test]
    fn fingerprints_differ_by_content_metadata() {
        let base = tempfile::tempdir().unwrap();
        write(&base.path().join("a/x"), "1");
        write(&base.path().join("b/x"), "1");
        write(&base.path().join("c/y"), "1");
        let a = fingerprint(&base.path().join("a")).unwrap();
        let c = fingerprint(&base.path().join("c")).unwrap();
        assert_ne!(a.hash, c.hash);
        assert_eq!(
            fingerprint(&base.path().join("missing")),
            Err(Unreadable::Changing)
        );
        let mut deep = base.path().join("deep");
        for _ in 0..=MAX_DEPTH {
            deep.push("d");
        }
        fs::create_dir_all(&deep).unwrap();
        assert!(matches!(
            fingerprint(&base.path().join("deep")),
            Err(Unreadable::Lasting(reason)) if reason.contains("deep")
        ));
    }
}
