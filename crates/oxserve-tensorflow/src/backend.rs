//! `TensorFlowBackend` (loads SavedModels) and `TensorFlowModel` (runs them).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use oxserve_core::signature::signatures_from_meta_graph;
use oxserve_core::{Backend, Code, Error, Model, Result, SignatureMap, Tensor};
use oxserve_proto::tensorflow::{ConfigProto, MetaGraphDef, SignatureDef};
use prost::Message;

use crate::ffi::{Api, Output, Session};
use crate::graph_shapes::check_graph_shapes;
use crate::library;

/// How to find and configure the TensorFlow runtime.
#[derive(Clone, Debug, Default)]
pub struct BackendOptions {
    /// The directory holding `libtensorflow_cc.so.2` and `libtensorflow_framework.so.2`
    /// (`--tensorflow_library_dir`). When `None`: `$OXSERVE_TENSORFLOW_LIB_DIR`, then
    /// `.oxserve/tf-lib-dir` in the current directory, the executable's directory, or their
    /// ancestors.
    pub library_dir: Option<PathBuf>,
    /// The ConfigProto every session starts from (`--tensorflow_session_config_file`; TensorFlow's
    /// defaults when left empty).
    pub session_config: ConfigProto,
    /// Replaces `intra_op_parallelism_threads` of `session_config` unless 0.
    pub intra_op_parallelism: i64,
    /// Replaces `inter_op_parallelism_threads` of `session_config` unless 0.
    pub inter_op_parallelism: i64,
}

/// The TensorFlow runtime, loaded from its shared libraries. Cheap to clone; the libraries are
/// loaded once per process.
#[derive(Clone)]
pub struct TensorFlowBackend {
    api: &'static Api,
    /// The serialized ConfigProto given to every session.
    config: Vec<u8>,
}

impl std::fmt::Debug for TensorFlowBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TensorFlowBackend")
            .field("version", &self.api.version())
            .field("library_dir", &self.api.library_dir())
            .finish()
    }
}

fn thread_count(value: i64, flag: &str) -> Result<i32> {
    i32::try_from(value).map_err(|_| {
        Error::invalid_argument(format!(
            "{flag} must fit in 32 bits (TensorFlow's ConfigProto), got {value}"
        ))
    })
}

/// More threads than any machine gives a session; TensorFlow crashes on some values beyond.
const MAX_THREADS: i32 = 4096;

/// TensorFlow aborts the process on a negative intra-op or thread pool size (a failed CHECK)
/// and crashes on huge ones: refused up front, naming the field. A negative
/// `inter_op_parallelism_threads` is TensorFlow's "run ops in the caller's thread".
fn check_thread_counts(config: &ConfigProto) -> Result<()> {
    let check = |value: i32, field: &str, min: i32| {
        if (min..=MAX_THREADS).contains(&value) {
            Ok(())
        } else {
            Err(Error::invalid_argument(format!(
                "session config: {field} must be between {min} and {MAX_THREADS}, got {value}"
            )))
        }
    };
    check(
        config.intra_op_parallelism_threads,
        "intra_op_parallelism_threads",
        0,
    )?;
    check(
        config.inter_op_parallelism_threads,
        "inter_op_parallelism_threads",
        i32::MIN,
    )?;
    for (i, pool) in config.session_inter_op_thread_pool.iter().enumerate() {
        check(
            pool.num_threads,
            &format!("session_inter_op_thread_pool[{i}].num_threads"),
            0,
        )?;
    }
    Ok(())
}

impl TensorFlowBackend {
    /// Loads the TensorFlow libraries (first call in the process only) and prepares the session
    /// configuration. Fails with FAILED_PRECONDITION, naming what was tried and what to run,
    /// when the libraries cannot be found or loaded.
    pub fn new(options: BackendOptions) -> Result<TensorFlowBackend> {
        let mut config = options.session_config;
        if options.intra_op_parallelism != 0 {
            config.intra_op_parallelism_threads = thread_count(
                options.intra_op_parallelism,
                "tensorflow_intra_op_parallelism",
            )?;
        }
        if options.inter_op_parallelism != 0 {
            config.inter_op_parallelism_threads = thread_count(
                options.inter_op_parallelism,
                "tensorflow_inter_op_parallelism",
            )?;
        }
        check_thread_counts(&config)?;
        let config = config.encode_to_vec();
        let api = library::load_api(options.library_dir.as_deref())?;
        Ok(TensorFlowBackend { api, config })
    }

    /// TensorFlow's version string, e.g. `2.21.0`.
    pub fn tensorflow_version(&self) -> &str {
        self.api.version()
    }

    /// The directory the TensorFlow libraries were loaded from.
    pub fn library_dir(&self) -> &Path {
        self.api.library_dir()
    }

    /// The alignment TensorFlow wants for tensor buffers; input buffers aligned less are copied
    /// once by TensorFlow instead of being used in place.
    pub fn tensor_alignment(&self) -> usize {
        self.api.default_alignment()
    }

    /// Loads one SavedModel version directory with the given tags (usually `["serve"]`). Its
    /// errors name `dir`.
    pub fn load_model(&self, dir: &Path, tags: &[String]) -> Result<TensorFlowModel> {
        self.load_named(dir, tags).map_err(|e| with_dir(e, dir))
    }

    fn load_named(&self, dir: &Path, tags: &[String]) -> Result<TensorFlowModel> {
        check_saved_model_file(dir)?;
        check_graph_shapes(dir, tags)?;
        let (session, meta_graph) = Session::load(self.api, dir, tags, &self.config)?;
        let meta_graph = MetaGraphDef::decode(meta_graph.as_slice()).map_err(|e| {
            Error::internal(format!(
                "Could not parse the MetaGraphDef of {}: {e}",
                dir.display()
            ))
        })?;
        check_variables_present(dir, &meta_graph)?;
        let signatures = signatures_from_meta_graph(&meta_graph);

        // Resolve every signature tensor once, so `run` never searches the graph.
        let mut tensors = HashMap::new();
        for (key, signature) in &signatures {
            for spec in signature.inputs.values().chain(signature.outputs.values()) {
                if spec.name.is_empty() || tensors.contains_key(&spec.name) {
                    continue;
                }
                match session.resolve(&spec.name) {
                    Ok(output) => {
                        tensors.insert(spec.name.clone(), output);
                    }
                    // TF2's `__saved_model_init_op` names a NoOp (no outputs) in every model:
                    // not served, not worth a warning.
                    Err(e) if key == INIT_OP_SIGNATURE => tracing::debug!(
                        model = %dir.display(),
                        signature = %key,
                        "{}",
                        e.message
                    ),
                    // TF Serving loads such a model and fails the requests that use the
                    // tensor; so do we (`run` reports the name as unknown). The operator learns
                    // it here, not from clients' 400s.
                    Err(e) => tracing::warn!(
                        model = %dir.display(),
                        signature = %key,
                        "the signature names a tensor the graph lacks; its requests will fail: {}",
                        e.message
                    ),
                }
            }
        }
        Ok(TensorFlowModel {
            session,
            signatures,
            signature_defs: meta_graph.signature_def,
            tensors,
        })
    }
}

/// The signature TF2 adds to run a model's initializers; not one clients call.
const INIT_OP_SIGNATURE: &str = "__saved_model_init_op";

/// TensorFlow reads an empty `saved_model.pb` as a SavedModel without meta graphs and answers
/// "Could not find meta graph def matching supplied tags", which sends the operator looking at
/// the tags; the file is what is wrong.
fn check_saved_model_file(dir: &Path) -> Result<()> {
    let file = dir.join("saved_model.pb");
    match std::fs::metadata(&file) {
        Ok(meta) if meta.len() == 0 => Err(Error::new(
            Code::DataLoss,
            format!(
                "{} is empty: not a SavedModel (still being written?)",
                file.display()
            ),
        )),
        _ => Ok(()),
    }
}

/// TensorFlow's load errors often name no file ("Read less bytes than requested" for a
/// truncated saved_model.pb or variables file): the version directory is added when missing,
/// to the first line (TensorFlow's node context follows on the next ones).
fn with_dir(mut err: Error, dir: &Path) -> Error {
    let dir = dir.display().to_string();
    if !err.message.contains(&dir) {
        let (first, rest) = match err.message.split_once('\n') {
            Some((first, rest)) => (first, format!("\n{rest}")),
            None => (err.message.as_str(), String::new()),
        };
        err.message = format!("{first} (loading the SavedModel in {dir}){rest}");
    }
    err
}

/// The ops whose values a SavedModel's checkpoint (`variables/`) restores.
const VARIABLE_OPS: [&str; 3] = ["VarHandleOp", "VariableV2", "Variable"];

/// TensorFlow loads a SavedModel whose graph has variables but whose `variables/variables.index`
/// is missing (a copy caught before its variables arrived, after a pause longer than the
/// directory's settling time), and every request to it then fails on an uninitialized variable.
/// Refused instead, the load fails: the version it was to replace keeps serving, and the
/// directory's next change (the variables arriving) retries it.
fn check_variables_present(dir: &Path, meta_graph: &MetaGraphDef) -> Result<()> {
    let variable = meta_graph.graph_def.as_ref().and_then(|graph| {
        graph
            .node
            .iter()
            .find(|node| VARIABLE_OPS.contains(&node.op.as_str()))
    });
    let index = dir.join("variables").join("variables.index");
    match variable {
        Some(node) if !index.is_file() => Err(Error::not_found(format!(
            "{} is not a complete SavedModel: its graph has variables ({} {:?}, ...) but {} is missing",
            dir.display(),
            node.op,
            node.name,
            index.display()
        ))),
        _ => Ok(()),
    }
}

impl Backend for TensorFlowBackend {
    fn load(&self, dir: &Path, tags: &[String]) -> Result<Box<dyn Model>> {
        Ok(Box::new(self.load_model(dir, tags)?))
    }
}

/// A loaded SavedModel: one TensorFlow session, shared by concurrent `run` calls (the session
/// is thread-safe; see `ffi::Session`). Dropping it closes and deletes the session and graph.
pub struct TensorFlowModel {
    session: Session,
    signatures: SignatureMap,
    signature_defs: HashMap<String, SignatureDef>,
    /// Every tensor named by a signature, resolved at load time.
    tensors: HashMap<String, Output>,
}

impl std::fmt::Debug for TensorFlowModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TensorFlowModel")
            .field("signatures", &self.signatures.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl TensorFlowModel {
    fn output(&self, name: &str) -> Result<Output> {
        self.tensors.get(name).copied().ok_or_else(|| {
            Error::invalid_argument(format!(
                "Tensor {name} is not an input or output of any signature of this model"
            ))
        })
    }

    fn run_graph(&self, feeds: Vec<(&str, Tensor)>, fetches: &[&str]) -> Result<Vec<Tensor>> {
        let feeds = feeds
            .into_iter()
            .map(|(name, tensor)| Ok((self.output(name)?, tensor)))
            .collect::<Result<Vec<_>>>()?;
        let fetches = fetches
            .iter()
            .map(|name| self.output(name))
            .collect::<Result<Vec<_>>>()?;
        // The request's remaining time bounds the run, as TF Serving's RunOptions do: work for
        // a caller who has stopped waiting must not hold the session's threads.
        let timeout = match oxserve_core::deadline::current() {
            Some(deadline) => match deadline.checked_duration_since(Instant::now()) {
                Some(left) if !left.is_zero() => Some(left),
                _ => {
                    return Err(Error::deadline_exceeded(
                        "Deadline exceeded before the model ran",
                    ))
                }
            },
            None => None,
        };
        self.session.run(feeds, &fetches, timeout)
    }
}

impl Model for TensorFlowModel {
    fn signatures(&self) -> &SignatureMap {
        &self.signatures
    }

    /// Exactly as the MetaGraphDef holds them.
    fn signature_defs(&self) -> HashMap<String, SignatureDef> {
        self.signature_defs.clone()
    }

    fn run(&self, feeds: Vec<(&str, Tensor)>, fetches: &[&str]) -> Result<Vec<Tensor>> {
        // A signature may name a fed tensor as an output too (a key passed through). TensorFlow
        // refuses to fetch what is fed ("both fed and fetched"); the value is the one fed, as
        // Python's Session (and so saved_model_cli) hands it back.
        if !fetches
            .iter()
            .any(|fetch| feeds.iter().any(|(fed, _)| fed == fetch))
        {
            return self.run_graph(feeds, fetches);
        }
        let passed_through: Vec<Option<Tensor>> = fetches
            .iter()
            .map(|fetch| {
                feeds
                    .iter()
                    .find(|(fed, _)| fed == fetch)
                    .map(|(_, tensor)| tensor.clone())
            })
            .collect();
        let fetched: Vec<&str> = fetches
            .iter()
            .zip(&passed_through)
            .filter(|(_, passed)| passed.is_none())
            .map(|(name, _)| *name)
            .collect();
        let mut outputs = self.run_graph(feeds, &fetched)?.into_iter();
        passed_through
            .into_iter()
            .map(|passed| match passed {
                Some(tensor) => Ok(tensor),
                None => outputs
                    .next()
                    .ok_or_else(|| Error::internal("TensorFlow returned fewer outputs than asked")),
            })
            .collect()
    }
}
