//! Finding and loading the TensorFlow shared libraries, once per process.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use oxserve_core::{Error, Result};

use crate::ffi::{Api, CC_LIBRARY, FRAMEWORK_LIBRARY};

/// Environment variable naming the directory that holds the TensorFlow libraries.
pub const LIB_DIR_ENV: &str = "OXSERVE_TENSORFLOW_LIB_DIR";

/// The file, relative to a directory or one of its ancestors, that `scripts/setup` writes with
/// the library directory on its first line.
pub const LIB_DIR_FILE: &str = ".oxserve/tf-lib-dir";

static API: OnceLock<&'static Api> = OnceLock::new();
static LOADING: Mutex<()> = Mutex::new(());

/// Where a candidate library directory came from, for error messages.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Origin {
    /// `--tensorflow_library_dir` (or whatever the caller passed explicitly).
    Explicit,
    /// The `OXSERVE_TENSORFLOW_LIB_DIR` environment variable.
    Env,
    /// A `.oxserve/tf-lib-dir` file.
    File(PathBuf),
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Origin::Explicit => f.write_str("--tensorflow_library_dir"),
            Origin::Env => write!(f, "${LIB_DIR_ENV}"),
            Origin::File(path) => write!(f, "{}", path.display()),
        }
    }
}

/// Where to look, gathered from the process (separate from the search itself for testing).
#[derive(Clone, Debug, Default)]
pub struct SearchContext {
    pub explicit: Option<PathBuf>,
    pub env: Option<OsString>,
    pub current_dir: Option<PathBuf>,
    pub exe_dir: Option<PathBuf>,
}

impl SearchContext {
    pub fn from_process(explicit: Option<&Path>) -> SearchContext {
        SearchContext {
            explicit: explicit.map(Path::to_path_buf),
            env: std::env::var_os(LIB_DIR_ENV).filter(|v| !v.is_empty()),
            current_dir: std::env::current_dir().ok(),
            exe_dir: std::env::current_exe()
                .ok()
                .and_then(|exe| exe.parent().map(Path::to_path_buf)),
        }
    }

    /// The candidate directories in priority order: the explicit directory alone if given, else
    /// the environment variable alone if set, else every `.oxserve/tf-lib-dir` file found in the
    /// current directory and its ancestors, then the executable's directory and its ancestors.
    /// The second list holds the problems met on the way (unreadable files).
    pub fn candidates(&self) -> (Vec<(PathBuf, Origin)>, Vec<String>) {
        if let Some(dir) = &self.explicit {
            return (vec![(dir.clone(), Origin::Explicit)], Vec::new());
        }
        if let Some(dir) = &self.env {
            return (vec![(PathBuf::from(dir), Origin::Env)], Vec::new());
        }
        let mut found = Vec::new();
        let mut problems = Vec::new();
        let mut seen_files = Vec::new();
        for start in [&self.current_dir, &self.exe_dir].into_iter().flatten() {
            for dir in start.ancestors() {
                let file = dir.join(LIB_DIR_FILE);
                if seen_files.contains(&file) || !file.is_file() {
                    continue;
                }
                seen_files.push(file.clone());
                match std::fs::read_to_string(&file) {
                    Ok(text) => match text.lines().map(str::trim).find(|l| !l.is_empty()) {
                        Some(line) => {
                            let mut lib_dir = PathBuf::from(line);
                            if lib_dir.is_relative() {
                                // Relative to the repository root holding `.oxserve/`.
                                lib_dir = dir.join(lib_dir);
                            }
                            found.push((lib_dir, Origin::File(file)));
                        }
                        None => problems.push(format!("{} is empty", file.display())),
                    },
                    Err(e) => problems.push(format!("cannot read {}: {e}", file.display())),
                }
            }
        }
        (found, problems)
    }
}

/// The environment TensorFlow reads once, when loaded, and the values oxserve gives it unless the
/// user set them:
/// - `TF_CPP_MIN_LOG_LEVEL=1` hides TensorFlow's INFO logs;
/// - `TF_ENABLE_ONEDNN_OPTS=0` keeps TensorFlow's own (Eigen) kernels. The wheel switches to its
///   oneDNN kernels on CPUs with AVX512-VNNI, AVX-VNNI or AMX, and those check a malformed input
///   with a fatal CHECK: a rank-2 tensor sent to a Conv2D aborts the process instead of failing
///   the request ("convolution input must be 4-dimensional"). TF Serving's standard build has no
///   oneDNN kernels either. `TF_ENABLE_ONEDNN_OPTS=1` opts in.
const TENSORFLOW_ENV_DEFAULTS: [(&str, &str); 2] =
    [("TF_CPP_MIN_LOG_LEVEL", "1"), (ONEDNN_ENV, "0")];

const ONEDNN_ENV: &str = "TF_ENABLE_ONEDNN_OPTS";

/// Sets each variable of [`TENSORFLOW_ENV_DEFAULTS`] that is not set. TensorFlow reads them once,
/// so this must run before the libraries are loaded; the backend calls it just before `dlopen`.
///
/// Setting the environment is only sound while no other thread reads it without Rust's lock
/// (C code calling `getenv`). Before TensorFlow is loaded no TensorFlow thread exists, and Rust's
/// own `std::env` accesses are serialized, so the remaining risk is foreign code (e.g. libc's
/// resolver on another thread) reading the environment at that very moment. A binary that
/// creates threads before loading TensorFlow should call this first thing in `main`.
pub fn set_tensorflow_env_defaults() {
    for (name, value) in TENSORFLOW_ENV_DEFAULTS {
        if std::env::var_os(name).is_none() {
            std::env::set_var(name, value);
        }
    }
}

fn has_libraries(dir: &Path) -> bool {
    dir.join(CC_LIBRARY).is_file() && dir.join(FRAMEWORK_LIBRARY).is_file()
}

/// The loaded API. The first successful load wins for the whole process: later calls return it
/// whatever directory they ask for (with a warning when it differs). A failed load is not
/// remembered, so a later call may try again elsewhere.
pub fn load_api(explicit: Option<&Path>) -> Result<&'static Api> {
    load_api_from(SearchContext::from_process(explicit))
}

fn load_api_from(context: SearchContext) -> Result<&'static Api> {
    if let Some(api) = API.get() {
        warn_if_other_dir(api, &context);
        return Ok(api);
    }
    // A poisoned lock only means another loader panicked; the OnceLock is still consistent.
    let _guard = LOADING.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(api) = API.get() {
        warn_if_other_dir(api, &context);
        return Ok(api);
    }
    let api = load_first(&context)?;
    let api: &'static Api = Box::leak(Box::new(api));
    // Cannot fail: we hold the lock and saw it empty.
    let _ = API.set(api);
    Ok(api)
}

/// Loads the libraries from the first candidate directory that works (touches no static).
fn load_first(context: &SearchContext) -> Result<Api> {
    let (candidates, mut tried) = context.candidates();
    for (dir, origin) in &candidates {
        if !has_libraries(dir) {
            tried.push(format!(
                "{} (from {origin}): {CC_LIBRARY} and {FRAMEWORK_LIBRARY} not found there",
                dir.display()
            ));
            continue;
        }
        set_tensorflow_env_defaults();
        let started = std::time::Instant::now();
        match Api::load(dir) {
            Ok(api) => {
                tracing::info!(
                    version = api.version(),
                    dir = %dir.display(),
                    onednn_opts = std::env::var(ONEDNN_ENV).unwrap_or_default(),
                    elapsed_ms = started.elapsed().as_millis() as u64,
                    "loaded TensorFlow"
                );
                return Ok(api);
            }
            Err(e) => tried.push(format!("{} (from {origin}): {e}", dir.display())),
        }
    }
    if candidates.is_empty() {
        tried.push(format!(
            "no --tensorflow_library_dir, no ${LIB_DIR_ENV}, and no {LIB_DIR_FILE} in {} or {} \
             or their ancestors",
            display_opt(&context.current_dir),
            display_opt(&context.exe_dir),
        ));
    }
    Err(Error::failed_precondition(format!(
        "Could not load the TensorFlow runtime ({CC_LIBRARY}). Tried: {}. Run scripts/setup \
         (installs tensorflow-cpu==2.21.0 into .venv and writes {LIB_DIR_FILE}), or pass \
         --tensorflow_library_dir / set {LIB_DIR_ENV} to the directory holding {CC_LIBRARY} \
         (the tensorflow/ directory of the tensorflow-cpu wheel).",
        tried.join("; ")
    )))
}

fn display_opt(path: &Option<PathBuf>) -> String {
    path.as_ref()
        .map_or_else(|| "<unknown>".to_string(), |p| p.display().to_string())
}

fn warn_if_other_dir(api: &Api, context: &SearchContext) {
    let (candidates, _) = context.candidates();
    let Some((wanted, origin)) = candidates.first() else {
        return;
    };
    let same = match (wanted.canonicalize(), api.library_dir().canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => wanted == api.library_dir(),
    };
    if !same && matches!(origin, Origin::Explicit | Origin::Env) {
        tracing::warn!(
            loaded = %api.library_dir().display(),
            requested = %wanted.display(),
            "TensorFlow is already loaded in this process from another directory; using it"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn explicit_then_env_then_files_nearest_first() {
        let root = tempfile::tempdir().unwrap();
        let nested = root.path().join("a/b");
        std::fs::create_dir_all(nested.join(".oxserve")).unwrap();
        std::fs::create_dir_all(root.path().join(".oxserve")).unwrap();
        std::fs::write(nested.join(LIB_DIR_FILE), "/opt/near\n").unwrap();
        std::fs::write(root.path().join(LIB_DIR_FILE), "  far/lib  ").unwrap();

        let mut context = SearchContext {
            explicit: Some(PathBuf::from("/explicit")),
            env: Some("/env".into()),
            current_dir: Some(nested.clone()),
            exe_dir: Some(root.path().to_path_buf()),
        };
        let dirs = |c: &SearchContext| {
            c.candidates()
                .0
                .into_iter()
                .map(|d| d.0)
                .collect::<Vec<_>>()
        };
        assert_eq!(dirs(&context), vec![PathBuf::from("/explicit")]);
        context.explicit = None;
        assert_eq!(dirs(&context), vec![PathBuf::from("/env")]);
        context.env = None;
        // The exe dir's file was already seen from the current directory: listed once.
        assert_eq!(
            dirs(&context),
            vec![PathBuf::from("/opt/near"), root.path().join("far/lib")]
        );
    }

    #[test]
    fn missing_libraries_are_explained() {
        let empty = tempfile::tempdir().unwrap();
        let context = SearchContext {
            explicit: Some(empty.path().to_path_buf()),
            ..SearchContext::default()
        };
        let err = load_first(&context).unwrap_err();
        assert_eq!(err.code, oxserve_core::Code::FailedPrecondition);
        assert!(
            err.message.contains("--tensorflow_library_dir"),
            "{}",
            err.message
        );
        assert!(err.message.contains("scripts/setup"), "{}", err.message);
        assert!(err.message.contains(&empty.path().display().to_string()));

        let nowhere = SearchContext::default();
        let err = load_first(&nowhere).unwrap_err();
        assert!(err.message.contains(LIB_DIR_FILE), "{}", err.message);
        assert!(err.message.contains(LIB_DIR_ENV), "{}", err.message);
    }
}
