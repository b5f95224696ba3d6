//! `oxserve serve`'s model lifecycle: tensorflow_model_server's flags for the model configuration,
//! version polling, load retries, warm-up and monitoring, and the start-up they drive.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::builder::BoolishValueParser;
use clap::{ArgAction, Args};
use oxserve_core::manager::{read_text_proto, single_model_config, SETTLE};
use oxserve_core::{Backend, ManagerOptions, ModelManager};
use oxserve_proto::tensorflow::serving::{ModelServerConfig, MonitoringConfig};
use oxserve_server::metrics::Prometheus;

/// tensorflow_model_server's lifecycle flags, names and defaults verbatim.
#[derive(Args, Debug)]
#[command(rename_all = "snake_case")]
pub struct LifecycleFlags {
    /// If non-empty, read an ascii ModelServerConfig protobuf from the supplied file name, and
    /// serve the models in that file. This config file can be used to specify multiple models to
    /// serve and other advanced parameters including non-default version policy. (If used,
    /// --model_name, --model_base_path are ignored.)
    #[arg(long, default_value = "")]
    pub model_config_file: String,
    /// Interval in seconds between each poll of the filesystem for model_config_file. If unset or
    /// set to zero, poll will be done exactly once and not periodically.
    #[arg(long, default_value_t = 0, allow_hyphen_values = true)]
    pub model_config_file_poll_wait_seconds: i32,
    /// If true, allows assigning unused version labels to models that are not available yet.
    #[arg(long, num_args = 0..=1, default_missing_value = "true", default_value_t = false, action = ArgAction::Set, value_parser = BoolishValueParser::new())]
    pub allow_version_labels_for_unavailable_models: bool,
    /// Maximum number of times it retries loading a model after the first failure, before giving
    /// up. If set to 0, a load is attempted only once. (oxserve also retries at once when the
    /// version directory changes.)
    #[arg(long, default_value_t = 5, allow_hyphen_values = true)]
    pub max_num_load_retries: i32,
    /// The interval, in microseconds, between each servable load retry. If set negative, it
    /// doesn't wait.
    #[arg(long, default_value_t = 60_000_000, allow_hyphen_values = true)]
    pub load_retry_interval_micros: i64,
    /// Interval in seconds between each poll of the filesystem for new model version. If set to
    /// zero (or negative), the filesystem is polled once (until the versions found are complete).
    #[arg(long, default_value_t = 1, allow_hyphen_values = true)]
    pub file_system_poll_wait_seconds: i32,
    /// Enables model warmup, which triggers lazy initializations (such as TF optimizations) at
    /// load time, to reduce first request latency: replays
    /// assets.extra/tf_serving_warmup_requests.
    #[arg(long, num_args = 0..=1, default_missing_value = "true", default_value_t = true, action = ArgAction::Set, value_parser = BoolishValueParser::new())]
    pub enable_model_warmup: bool,
    /// Number of times a request is iterated during warmup replay. This value is used only if > 0.
    #[arg(long, default_value_t = 1, allow_hyphen_values = true)]
    pub num_request_iterations_for_warmup: i32,
    /// If non-empty, read an ascii MonitoringConfig protobuf from the supplied file name
    /// (`prometheus_config { enable: true path: "/monitoring/prometheus/metrics" }` serves
    /// Prometheus metrics at that path of the REST port).
    #[arg(long, default_value = "")]
    pub monitoring_config_file: String,
}

/// The models being served, and the metrics when enabled.
pub struct Lifecycle {
    pub manager: Arc<ModelManager>,
    pub prometheus: Option<Arc<Prometheus>>,
}

/// Installs the metrics, reads the model configuration and loads it: returns once every model
/// has loaded, or has no version yet (it is then polled for one, and readiness says so). A model
/// whose versions fail to load (after the retries) fails the start, as in TF Serving.
/// `warmup_iterations`: how often warm-up replays each request, `None` for no warm-up (decided
/// by the platform config, see `platform_config`).
pub fn start(
    flags: &LifecycleFlags,
    model_name: &str,
    model_base_path: Option<&Path>,
    backend: Arc<dyn Backend>,
    tags: Vec<String>,
    warmup_iterations: Option<u32>,
) -> anyhow::Result<Lifecycle> {
    let prometheus = if flags.monitoring_config_file.is_empty() {
        None
    } else {
        let config: MonitoringConfig = read_text_proto(Path::new(&flags.monitoring_config_file))
            .context("reading --monitoring_config_file")?;
        Prometheus::install(&config)
            .map_err(anyhow::Error::msg)
            .context("--monitoring_config_file")?
            .map(Arc::new)
    };

    let (config, config_file) = if !flags.model_config_file.is_empty() {
        if model_base_path.is_some() {
            tracing::warn!(
                "--model_base_path and --model_name are ignored: --model_config_file is set"
            );
        }
        let path = PathBuf::from(&flags.model_config_file);
        let config: ModelServerConfig =
            read_text_proto(&path).context("reading --model_config_file")?;
        (config, Some(path))
    } else if let Some(base_path) = model_base_path {
        // A URI is left for the configuration's checks to take or refuse.
        let base_path = if base_path.to_string_lossy().contains("://") {
            base_path.to_path_buf()
        } else {
            std::path::absolute(base_path)
                .with_context(|| format!("--model_base_path {}", base_path.display()))?
        };
        (single_model_config(model_name, &base_path), None)
    } else {
        bail!("--model_base_path or --model_config_file is required (the directory holding the model's numeric version directories, or a ModelServerConfig file)");
    };

    let options = ManagerOptions {
        tags,
        file_system_poll_wait: u64::try_from(flags.file_system_poll_wait_seconds)
            .ok()
            .filter(|seconds| *seconds > 0)
            .map(Duration::from_secs),
        max_num_load_retries: u32::try_from(flags.max_num_load_retries).unwrap_or(0),
        load_retry_interval: Duration::from_micros(
            u64::try_from(flags.load_retry_interval_micros).unwrap_or(0),
        ),
        allow_version_labels_for_unavailable_models: flags
            .allow_version_labels_for_unavailable_models,
        warmup: warmup_iterations.map(oxserve_server::warmup::hook),
        settle: SETTLE,
    };
    let manager = Arc::new(ModelManager::with_options(backend, options));
    manager
        .reload_config(config)
        .context("loading the models")?;
    if let Some(path) = config_file {
        if let Ok(seconds @ 1..) = u64::try_from(flags.model_config_file_poll_wait_seconds) {
            manager.watch_config_file(path, Duration::from_secs(seconds));
        }
    }
    Ok(Lifecycle {
        manager,
        prometheus,
    })
}
