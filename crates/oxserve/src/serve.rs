//! `oxserve serve`: tensorflow_model_server's flags, names and defaults verbatim.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::builder::BoolishValueParser;
use clap::{ArgAction, Args};
use oxserve_core::batching::BatchingBackend;
use oxserve_core::manager::read_text_proto;
use oxserve_core::{Backend, ModelManager};
use oxserve_proto::tensorflow::serving::SslConfig;
use oxserve_server::grpc::{ChannelArguments, GrpcOptions, GrpcServer};
use oxserve_server::memory_budget::MemoryBudget;
use oxserve_server::metrics::Prometheus;
use oxserve_server::rest::{self, RestState};
use oxserve_tensorflow::{BackendOptions, TensorFlowBackend};
use tokio::signal::unix::{signal, Signal, SignalKind};

use crate::lifecycle::{self, Lifecycle, LifecycleFlags};
use crate::platform_config::SessionBundleSettings;

#[derive(Args, Debug)]
// A flag given twice takes its last value, as in TF's flag parser: TF Serving's Docker image
// runs `tensorflow_model_server --port=8500 --rest_api_port=8501 ... "$@"`, so that users
// override those flags by repeating them.
#[command(rename_all = "snake_case", args_override_self = true)]
pub struct ServeArgs {
    /// TCP port to listen on for gRPC API. Disabled if port set to zero.
    #[arg(long, default_value_t = 8500)]
    pub port: u16,
    /// If non-empty, listen to a UNIX socket for gRPC API on the given path. Can be either
    /// relative or absolute path.
    #[arg(long, default_value = "")]
    pub grpc_socket_path: String,
    /// A comma separated list of arguments to be passed to the grpc server. (e.g.
    /// grpc.max_connection_age_ms=2000). Message sizes, keepalive, connection age, concurrent
    /// streams, frame and metadata sizes are applied; others are logged and ignored.
    #[arg(long, default_value = "")]
    pub grpc_channel_arguments: String,
    /// Max grpc server threads to handle grpc messages: at most this many Predict, Classify,
    /// Regress and MultiInference calls run at once, others wait. 0: 4 per CPU, as
    /// tensorflow_model_server.
    #[arg(long, default_value_t = 0)]
    pub grpc_max_threads: usize,
    /// Enable the standard gRPC healthcheck service.
    #[arg(long, num_args = 0..=1, default_missing_value = "true", default_value_t = false, action = ArgAction::Set, value_parser = BoolishValueParser::new())]
    pub enable_grpc_healthcheck_service: bool,
    /// Enable serialization of predict response as tensor content.
    #[arg(long, num_args = 0..=1, default_missing_value = "true", default_value_t = false, action = ArgAction::Set, value_parser = BoolishValueParser::new())]
    pub enable_serialization_as_tensor_content: bool,
    /// Port to listen on for HTTP/REST API. If set to zero HTTP/REST API will not be exported.
    #[arg(long, default_value_t = 0)]
    pub rest_api_port: u16,
    /// Number of threads for HTTP/REST API processing. If not set, will be auto set based on
    /// number of CPUs.
    #[arg(long, default_value_t = 0)]
    pub rest_api_num_threads: usize,
    /// Timeout for HTTP/REST API calls.
    #[arg(long, default_value_t = 30000)]
    pub rest_api_timeout_in_ms: u64,
    /// The most bytes of request bodies (REST and gRPC together) held in memory at once;
    /// requests beyond it get RESOURCE_EXHAUSTED (REST 429). 0: no limit. Default: half the
    /// memory the process may use (oxserve's own flag).
    #[arg(long)]
    pub max_request_bytes_in_flight: Option<usize>,
    /// If non-empty, read an ascii SSLConfig protobuf from the supplied file name and set up a
    /// secure gRPC channel.
    #[arg(long, default_value = "")]
    pub ssl_config_file: String,
    /// Enable CORS headers in response.
    #[arg(long, num_args = 0..=1, default_missing_value = "true", default_value_t = false, action = ArgAction::Set, value_parser = BoolishValueParser::new())]
    pub rest_api_enable_cors_support: bool,
    /// Name of model.
    #[arg(long, default_value = "default")]
    pub model_name: String,
    /// Path to export (the directory holding the numeric version directories).
    #[arg(long)]
    pub model_base_path: Option<PathBuf>,
    /// Comma-separated set of tags corresponding to the meta graph def to load from SavedModel.
    #[arg(long, default_value = "serve")]
    pub saved_model_tags: String,
    /// Enable method_name check for SignatureDef. Disable this if serving native TF2
    /// regression/classification models.
    #[arg(long, num_args = 0..=1, default_missing_value = "true", default_value_t = false, action = ArgAction::Set, value_parser = BoolishValueParser::new())]
    pub enable_signature_method_name_check: bool,
    /// Number of threads to use for running a Tensorflow session. Auto-configured by default.
    #[arg(long, default_value_t = 0)]
    pub tensorflow_session_parallelism: i64,
    /// Number of threads to use to parallelize the execution of an individual op.
    #[arg(long, default_value_t = 0)]
    pub tensorflow_intra_op_parallelism: i64,
    /// Controls the number of operators that can be executed simultaneously.
    #[arg(long, default_value_t = 0)]
    pub tensorflow_inter_op_parallelism: i64,
    /// If non-empty, read an ascii TensorFlow Session ConfigProto protobuf from the supplied file
    /// name. Note, parts of the session config (threads, parallelism etc.) can be overridden if
    /// needed, via corresponding command line flags.
    #[arg(long, default_value = "")]
    pub tensorflow_session_config_file: String,
    /// Display version.
    #[arg(long, num_args = 0..=1, default_missing_value = "true", default_value_t = false, action = ArgAction::Set)]
    pub version: bool,
    /// Directory holding libtensorflow_cc.so.2 (oxserve's own flag; default: found by scripts/setup).
    #[arg(long, env = "OXSERVE_TENSORFLOW_LIB_DIR")]
    pub tensorflow_library_dir: Option<PathBuf>,
    /// Enable batching.
    #[arg(long, num_args = 0..=1, default_missing_value = "true", default_value_t = false, action = ArgAction::Set, value_parser = BoolishValueParser::new())]
    pub enable_batching: bool,
    /// If non-empty, read an ascii BatchingParameters protobuf from the supplied file name and
    /// use the contained values instead of the defaults.
    #[arg(long, default_value = "")]
    pub batching_parameters_file: String,
    /// Enables model specific batching params like batch sizes, timeouts, batching feature flags
    /// to be read from `batching_params.pbtxt` file present in SavedModel dir of the model.
    /// Associated params in the global config from --batching_parameters_file are *ignored*.
    /// Only threadpool (name and size) related params are used from the global config. This
    /// option is only applicable when --enable_batching flag is set.
    #[arg(long, num_args = 0..=1, default_missing_value = "true", default_value_t = false, action = ArgAction::Set, value_parser = BoolishValueParser::new())]
    pub enable_per_model_batching_parameters: bool,
    /// If non-empty, read an ascii PlatformConfigMap protobuf from the supplied file name, and
    /// use that platform config instead of the Tensorflow platform. (If used, --enable_batching
    /// is ignored.) Its "tensorflow" platform's SessionBundleConfig then decides the session
    /// config, batching, SavedModel tags and warm-up.
    #[arg(long, default_value = "")]
    pub platform_config_file: String,

    #[command(flatten)]
    pub lifecycle: LifecycleFlags,
    #[command(flatten)]
    pub tuning: TuningFlags,
    #[command(flatten)]
    pub pending: PendingFlags,
}

/// Declares flags of tensorflow_model_server as hidden options taking an optional value (a bare
/// `--flag` means `true`, as in TF's flag parser), plus `given()`, the first one on the command line.
macro_rules! tf_flags {
    ($(#[$meta:meta])* $struct_name:ident { $($name:ident),* $(,)? }) => {
        $(#[$meta])*
        #[derive(Args, Debug)]
        #[command(rename_all = "snake_case")]
        pub struct $struct_name {
            $(
                #[arg(long, hide = true, num_args = 0..=1, default_missing_value = "true")]
                $name: Option<String>,
            )*
        }

        impl $struct_name {
            fn given(&self) -> Option<&'static str> {
                $(
                    if self.$name.is_some() {
                        return Some(stringify!($name));
                    }
                )*
                None
            }
        }
    };
}

tf_flags! {
    /// tensorflow_model_server flags that tune its own internals and have no counterpart here:
    /// accepted so that existing command lines keep working.
    TuningFlags {
        num_load_threads,
        num_unload_threads,
        flush_filesystem_caches,
        remove_unused_fields_from_bundle_metagraph,
        per_process_gpu_memory_fraction,
        xla_cpu_compilation_enabled,
        enable_profiler,
        // They size TFLite's interpreter pools, used only with --prefer_tflite_model.
        num_tflite_pools,
        num_tflite_interpreters_per_pool,
    }
}

/// tensorflow_model_server flags for features oxserve does not have yet, with their defaults:
/// giving one its default value is fine, asking for the feature is an error rather than a
/// silently different server.
#[derive(Args, Debug)]
#[command(rename_all = "snake_case")]
pub struct PendingFlags {
    #[arg(long, hide = true, num_args = 0..=1, default_missing_value = "true", default_value_t = false, action = ArgAction::Set, value_parser = BoolishValueParser::new())]
    use_alts_credentials: bool,
    #[arg(long, hide = true, num_args = 0..=1, default_missing_value = "true", default_value_t = false, action = ArgAction::Set, value_parser = BoolishValueParser::new())]
    prefer_tflite_model: bool,
    #[arg(long, hide = true, default_value = "")]
    thread_pool_factory_config_file: String,
}

impl PendingFlags {
    /// The first flag that asks for a missing feature.
    fn requested(&self) -> Option<&'static str> {
        if self.use_alts_credentials {
            Some("use_alts_credentials")
        } else if self.prefer_tflite_model {
            Some("prefer_tflite_model")
        } else if !self.thread_pool_factory_config_file.is_empty() {
            Some("thread_pool_factory_config_file")
        } else {
            None
        }
    }
}

/// A start that failed. TF Serving reports one as "Failed to start server. Error: ..." and exits
/// with status 255; supervisors and log alerts written for it look for both.
#[derive(Debug)]
pub struct StartFailed(anyhow::Error);

impl std::fmt::Display for StartFailed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:#}", self.0)
    }
}

impl std::error::Error for StartFailed {}

/// `given`: the flags given on the command line (clap ids), for the warnings about flags that
/// `--platform_config_file` replaces. An error before every listener is bound is a
/// [`StartFailed`].
pub fn serve(args: ServeArgs, given: &[String]) -> anyhow::Result<()> {
    let Some(Started {
        runtime,
        manager,
        listening,
    }) = start(args, given).map_err(StartFailed)?
    else {
        return Ok(());
    };
    let served = runtime.block_on(listening.serve());
    manager.shutdown();
    served
}

/// A server whose models have loaded and whose listeners are bound.
struct Started {
    runtime: tokio::runtime::Runtime,
    manager: Arc<ModelManager>,
    listening: Listening,
}

/// Loads the runtime and the models and binds the listeners; `None` after `--version`.
fn start(mut args: ServeArgs, given: &[String]) -> anyhow::Result<Option<Started>> {
    if let Some(name) = args.pending.requested() {
        bail!("--{name} asks for a tensorflow_model_server feature that this oxserve build does not support yet");
    }
    if let Some(name) = args.tuning.given() {
        tracing::info!("--{name} tunes tensorflow_model_server's internals and has no effect here");
    }
    oxserve_core::signature::set_method_name_check(args.enable_signature_method_name_check);
    let settings = SessionBundleSettings::new(&args, given)?;
    let backend = TensorFlowBackend::new(BackendOptions {
        library_dir: args.tensorflow_library_dir.clone(),
        session_config: settings.session_config,
        intra_op_parallelism: settings.intra_op_parallelism,
        inter_op_parallelism: settings.inter_op_parallelism,
    })
    .context("loading the TensorFlow runtime")?;
    if args.version {
        println!(
            "oxserve: {}\nTensorFlow Library: {}",
            env!("CARGO_PKG_VERSION"),
            backend.tensorflow_version()
        );
        return Ok(None);
    }
    let ssl = ssl_config(&args)?;
    let backend: Arc<dyn Backend> = Arc::new(backend);
    let backend = match settings.batching {
        Some(params) => {
            tracing::info!(?params, "batching enabled");
            Arc::new(
                BatchingBackend::new(backend, params)
                    .map_err(anyhow::Error::msg)?
                    .with_per_model_parameters(settings.per_model_batching),
            )
        }
        None => backend,
    };
    // Read only where there is a REST port to serve the metrics on, as in TF Serving.
    if args.rest_api_port == 0 && !args.lifecycle.monitoring_config_file.is_empty() {
        tracing::warn!(
            "--monitoring_config_file is not read: the metrics are served on the REST port, and --rest_api_port is 0"
        );
        args.lifecycle.monitoring_config_file.clear();
    }
    let Lifecycle {
        manager,
        prometheus,
    } = lifecycle::start(
        &args.lifecycle,
        &args.model_name,
        args.model_base_path.as_deref(),
        backend,
        settings.saved_model_tags,
        settings.warmup_iterations,
    )?;

    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    if args.rest_api_num_threads > 0 {
        runtime.worker_threads(args.rest_api_num_threads);
    }
    let runtime = runtime.enable_all().build()?;
    match runtime.block_on(listen(args, manager.clone(), prometheus, ssl)) {
        Ok(listening) => Ok(Some(Started {
            runtime,
            manager,
            listening,
        })),
        Err(err) => {
            manager.shutdown();
            Err(err)
        }
    }
}

/// `--ssl_config_file`: the text SSLConfig of the gRPC port and socket, read before any model
/// loads.
fn ssl_config(args: &ServeArgs) -> anyhow::Result<Option<SslConfig>> {
    let path = &args.ssl_config_file;
    if path.is_empty() {
        return Ok(None);
    }
    let ssl = read_text_proto(Path::new(path)).context("reading --ssl_config_file")?;
    Ok(Some(ssl))
}

/// Binds gRPC (TCP and/or Unix socket) and REST and serves them on this runtime.
async fn listen(
    args: ServeArgs,
    manager: Arc<ModelManager>,
    prometheus: Option<Arc<Prometheus>>,
    ssl: Option<SslConfig>,
) -> anyhow::Result<Listening> {
    let socket_path =
        (!args.grpc_socket_path.is_empty()).then(|| PathBuf::from(&args.grpc_socket_path));
    if args.port == 0 && socket_path.is_none() && args.rest_api_port == 0 {
        bail!("--port and --rest_api_port are both 0 and no --grpc_socket_path is given: nothing to serve");
    }
    if args.rest_api_port != 0 && args.rest_api_port == args.port {
        bail!(
            "--rest_api_port ({}) must differ from the gRPC --port",
            args.rest_api_port
        );
    }
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let mut servers = tokio::task::JoinSet::new();
    let memory_budget = MemoryBudget::new(
        args.max_request_bytes_in_flight
            .unwrap_or_else(MemoryBudget::default_limit),
    );
    match memory_budget.limit() {
        0 => tracing::info!("Request bytes in memory are not limited"),
        limit => tracing::info!(
            "At most {limit} bytes of requests are held in memory at once \
             (--max_request_bytes_in_flight)"
        ),
    }
    let drain_limit = match args.rest_api_timeout_in_ms {
        0 => DRAIN_LIMIT,
        ms => Duration::from_millis(ms),
    };

    if args.port != 0 || socket_path.is_some() {
        let options = GrpcOptions {
            tensor_content_output: args.enable_serialization_as_tensor_content,
            max_threads: args.grpc_max_threads,
            channel_arguments: ChannelArguments::parse(&args.grpc_channel_arguments)
                .map_err(anyhow::Error::msg)?,
            health_check: args.enable_grpc_healthcheck_service,
            ssl,
            memory_budget: memory_budget.clone(),
        };
        let grpc = Arc::new(
            GrpcServer::new(manager.clone(), &options, stopped.clone())
                .map_err(anyhow::Error::msg)?,
        );
        if args.port != 0 {
            let listener = tokio::net::TcpListener::bind(("0.0.0.0", args.port))
                .await
                .with_context(|| format!("binding the gRPC API to port {}", args.port))?;
            tracing::info!("Running gRPC ModelServer at 0.0.0.0:{} ...", args.port);
            let grpc = grpc.clone();
            servers.spawn(async move {
                grpc.serve_tcp(listener)
                    .await
                    .context("serving gRPC over TCP")
            });
        }
        if let Some(path) = &socket_path {
            remove_stale_socket(path)?;
            let listener = tokio::net::UnixListener::bind(path).with_context(|| {
                format!("binding the gRPC API to UNIX socket {}", path.display())
            })?;
            tracing::info!(
                "Running gRPC ModelServer at UNIX socket {} ...",
                path.display()
            );
            let grpc = grpc.clone();
            servers.spawn(async move {
                grpc.serve_unix(listener)
                    .await
                    .context("serving gRPC over a UNIX socket")
            });
        }
    }

    if args.rest_api_port != 0 {
        let state = Arc::new(RestState {
            manager,
            timeout: (args.rest_api_timeout_in_ms > 0)
                .then(|| Duration::from_millis(args.rest_api_timeout_in_ms)),
            prometheus,
            shutting_down: Some(stopped.clone()),
            cors: args.rest_api_enable_cors_support,
            calls: Arc::new(tokio::sync::Semaphore::new(
                match args.rest_api_num_threads {
                    0 => oxserve_server::default_handler_threads(),
                    n => n,
                },
            )),
            budget: memory_budget,
        });
        let listener = tokio::net::TcpListener::bind(("0.0.0.0", args.rest_api_port))
            .await
            .with_context(|| format!("binding the REST API to port {}", args.rest_api_port))?;
        tracing::info!(
            "Exporting HTTP/REST API at:localhost:{} ...",
            args.rest_api_port
        );
        let mut stopped = stopped.clone();
        servers.spawn(async move {
            let stopped = async move {
                let _ = stopped.wait_for(|stop| *stop).await;
            };
            rest::server::serve(listener, rest::router(state), stopped)
                .await
                .context("serving REST")
        });
    }

    Ok(Listening {
        servers,
        stop,
        stopped,
        socket_path,
        drain_limit,
    })
}

/// The listeners' tasks, and what ends them.
struct Listening {
    servers: tokio::task::JoinSet<anyhow::Result<()>>,
    stop: tokio::sync::watch::Sender<bool>,
    stopped: tokio::sync::watch::Receiver<bool>,
    socket_path: Option<PathBuf>,
    drain_limit: Duration,
}

impl Listening {
    /// Serves until SIGINT or SIGTERM, then lets in-flight calls finish on every listener, for as
    /// long as a REST call may take (`--rest_api_timeout_in_ms`, else [`DRAIN_LIMIT`]): a client
    /// that never finishes sending its request must not keep the process from exiting. A
    /// listener that fails ends the others.
    async fn serve(self) -> anyhow::Result<()> {
        let Listening {
            mut servers,
            stop,
            stopped,
            socket_path,
            drain_limit,
        } = self;
        let forced_exit_socket = socket_path.clone();
        let mut signals = ShutdownSignals::listen();
        tokio::spawn(async move {
            signals.next().await;
            tracing::info!(
                "shutting down: finishing in-flight requests (a second signal exits at once)"
            );
            let _ = stop.send(true);
            // Once tokio handles a signal, its default action (ending the process) is gone for good:
            // without this, an operator's second Ctrl-C would do nothing for the whole drain.
            let signal = signals.next().await;
            tracing::warn!(
                "second shutdown signal: exiting without waiting for in-flight requests"
            );
            // What the orderly path below does too: a socket file left behind would make the next
            // server remove it first, and clients see a dead socket until then.
            if let Some(path) = &forced_exit_socket {
                let _ = std::fs::remove_file(path);
            }
            std::process::exit(128 + signal);
        });
        let mut result = Ok(());
        let mut signalled = stopped.clone();
        let drained = async move {
            let _ = signalled.wait_for(|stop| *stop).await;
            tokio::time::sleep(drain_limit).await;
        };
        tokio::pin!(drained);
        loop {
            tokio::select! {
                joined = servers.join_next() => {
                    let Some(joined) = joined else { break };
                    let outcome = joined
                        .map_err(anyhow::Error::from)
                        .and_then(|served| served);
                    if let Err(err) = outcome {
                        // Dropping the set stops the other listeners.
                        result = Err(err);
                        break;
                    }
                }
                () = &mut drained => {
                    tracing::warn!(
                        "connections still open {} ms after the shutdown signal: closing them",
                        drain_limit.as_millis()
                    );
                    break;
                }
            }
        }
        drop(servers);
        if let Some(path) = &socket_path {
            let _ = std::fs::remove_file(path);
        }
        if result.is_ok() {
            tracing::info!("shut down");
        }
        result
    }
}

/// How long in-flight calls may take to finish after a shutdown signal when
/// `--rest_api_timeout_in_ms` is 0 (no REST timeout): Kubernetes' default grace period.
const DRAIN_LIMIT: Duration = Duration::from_secs(30);

/// gRPC removes a leftover socket file before binding; so does oxserve, but only a socket.
fn remove_stale_socket(path: &std::path::Path) -> anyhow::Result<()> {
    use std::os::unix::fs::FileTypeExt;
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => std::fs::remove_file(path)
            .with_context(|| format!("removing the stale UNIX socket {}", path.display())),
        Ok(_) => bail!(
            "--grpc_socket_path {} exists and is not a socket",
            path.display()
        ),
        Err(_) => Ok(()),
    }
}

/// SIGINT and SIGTERM, listened to from start-up to exit. The streams are made once: a stream
/// only sees signals that arrive after it is made, and once tokio handles a signal its default
/// action is gone, so a second signal sent before a new stream existed would be lost.
struct ShutdownSignals {
    interrupt: Option<Signal>,
    terminate: Option<Signal>,
}

impl ShutdownSignals {
    fn listen() -> Self {
        Self {
            interrupt: signal(SignalKind::interrupt()).ok(),
            terminate: signal(SignalKind::terminate()).ok(),
        }
    }

    /// The next SIGINT or SIGTERM's number.
    async fn next(&mut self) -> i32 {
        async fn received(stream: &mut Option<Signal>, kind: SignalKind) -> i32 {
            match stream {
                Some(stream) => {
                    stream.recv().await;
                    kind.as_raw_value()
                }
                None => std::future::pending().await,
            }
        }
        tokio::select! {
            number = received(&mut self.interrupt, SignalKind::interrupt()) => number,
            number = received(&mut self.terminate, SignalKind::terminate()) => number,
        }
    }
}
