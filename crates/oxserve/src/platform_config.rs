//! The "tensorflow" platform's settings, as TF Serving's `Server::BuildAndStart` decides them:
//! from `--platform_config_file` when it is given (a text `PlatformConfigMap`), otherwise from
//! the flags it would otherwise build its `SessionBundleConfig` from. Both produce the same
//! [`SessionBundleSettings`], so the rest of `serve` never asks where they came from.

use std::path::Path;

use anyhow::{anyhow, bail, Context};
use oxserve_core::batching::BatchingParams;
use oxserve_core::manager::read_text_proto;
use oxserve_proto::tensorflow::serving::{
    ModelWarmupOptions, PlatformConfigMap, SavedModelBundleSourceAdapterConfig, SessionBundleConfig,
};
use oxserve_proto::tensorflow::ConfigProto;
use prost::Name;

use crate::serve::ServeArgs;

/// The only platform oxserve serves, as `model_platform` in `--model_config_file`.
const TENSORFLOW_PLATFORM: &str = "tensorflow";

/// The flags TF Serving builds the SessionBundleConfig from, and so does not read when
/// `--platform_config_file` is given.
const REPLACED_FLAGS: [&str; 10] = [
    "enable_batching",
    "batching_parameters_file",
    "enable_per_model_batching_parameters",
    "tensorflow_session_parallelism",
    "tensorflow_intra_op_parallelism",
    "tensorflow_inter_op_parallelism",
    "tensorflow_session_config_file",
    "saved_model_tags",
    "enable_model_warmup",
    "num_request_iterations_for_warmup",
];

/// How sessions are configured, batched, tagged and warmed up.
#[derive(Debug)]
pub struct SessionBundleSettings {
    /// The ConfigProto every session starts from.
    pub session_config: ConfigProto,
    /// Replaces `intra_op_parallelism_threads` of `session_config` unless 0.
    pub intra_op_parallelism: i64,
    /// Replaces `inter_op_parallelism_threads` of `session_config` unless 0.
    pub inter_op_parallelism: i64,
    /// `None`: runs are not batched.
    pub batching: Option<BatchingParams>,
    /// Read `batching_params.pbtxt` of each SavedModel (`--enable_per_model_batching_parameters`).
    pub per_model_batching: bool,
    /// The tag set of the MetaGraphDef to load.
    pub saved_model_tags: Vec<String>,
    /// Times each warm-up request is replayed; `None` disables warm-up.
    pub warmup_iterations: Option<u32>,
}

impl SessionBundleSettings {
    /// `given` holds the flags given on the command line, for the warnings about the ones that
    /// `--platform_config_file` replaces (TF Serving ignores them without a word).
    pub fn new(args: &ServeArgs, given: &[String]) -> anyhow::Result<SessionBundleSettings> {
        if args.platform_config_file.is_empty() {
            return SessionBundleSettings::from_flags(args);
        }
        for flag in REPLACED_FLAGS {
            if given.iter().any(|g| g == flag) {
                tracing::warn!("--{flag} is ignored: --platform_config_file is set");
            }
        }
        let path = Path::new(&args.platform_config_file);
        let map: PlatformConfigMap =
            read_text_proto(path).context("reading --platform_config_file")?;
        SessionBundleSettings::from_platform_config_map(&map)
            .with_context(|| format!("--platform_config_file {}", path.display()))
    }

    fn from_flags(args: &ServeArgs) -> anyhow::Result<SessionBundleSettings> {
        // TF Serving's precedence: the intra/inter flags over --tensorflow_session_parallelism,
        // and all three at once is an error.
        let (intra, inter, session) = (
            args.tensorflow_intra_op_parallelism,
            args.tensorflow_inter_op_parallelism,
            args.tensorflow_session_parallelism,
        );
        if intra > 0 && inter > 0 && session > 0 {
            bail!("Either configure server_options.tensorflow_session_parallelism or (server_options.tensorflow_intra_op_parallelism, server_options.tensorflow_inter_op_parallelism) separately. You cannot configure all.");
        }
        let (intra_op_parallelism, inter_op_parallelism) = if intra > 0 || inter > 0 {
            (intra, inter)
        } else {
            (session, session)
        };
        let session_config = if args.tensorflow_session_config_file.is_empty() {
            ConfigProto::default()
        } else {
            read_text_proto(Path::new(&args.tensorflow_session_config_file))
                .context("reading --tensorflow_session_config_file")?
        };
        let batching = if args.enable_batching {
            Some(if args.batching_parameters_file.is_empty() {
                BatchingParams::default()
            } else {
                BatchingParams::from_file(args.batching_parameters_file.as_ref())
                    .map_err(anyhow::Error::msg)?
            })
        } else {
            if !args.batching_parameters_file.is_empty() {
                bail!("Batching parameters file provided but batching not enabled (--batching_parameters_file needs --enable_batching)");
            }
            if args.enable_per_model_batching_parameters {
                tracing::warn!(
                    "--enable_per_model_batching_parameters has no effect without --enable_batching"
                );
            }
            None
        };
        let warmup = &args.lifecycle;
        Ok(SessionBundleSettings {
            session_config,
            intra_op_parallelism,
            inter_op_parallelism,
            batching,
            per_model_batching: args.enable_per_model_batching_parameters,
            saved_model_tags: crate::local_model::parse_tags(&args.saved_model_tags),
            // TF Serving sets num_request_iterations only when the flag is positive; unset is 1.
            warmup_iterations: warmup.enable_model_warmup.then(|| {
                u32::try_from(warmup.num_request_iterations_for_warmup)
                    .ok()
                    .filter(|n| *n > 0)
                    .unwrap_or(1)
            }),
        })
    }

    fn from_platform_config_map(map: &PlatformConfigMap) -> anyhow::Result<SessionBundleSettings> {
        if let Some(other) = map
            .platform_configs
            .keys()
            .find(|name| *name != TENSORFLOW_PLATFORM)
        {
            bail!("platform \"{other}\" is configured: oxserve serves \"{TENSORFLOW_PLATFORM}\" SavedModels only");
        }
        let platform = map.platform_configs.get(TENSORFLOW_PLATFORM).ok_or_else(|| {
            anyhow!("no \"{TENSORFLOW_PLATFORM}\" platform in platform_configs: the models are served by that platform's configuration")
        })?;
        let expected = SavedModelBundleSourceAdapterConfig::type_url();
        let any = platform.source_adapter_config.as_ref().ok_or_else(|| {
            anyhow!("the \"{TENSORFLOW_PLATFORM}\" platform has no source_adapter_config (expected a [{expected}])")
        })?;
        if any.type_url != expected {
            bail!(
                "the source_adapter_config of the \"{TENSORFLOW_PLATFORM}\" platform is a [{}]; oxserve takes a [{expected}]",
                any.type_url
            );
        }
        let adapter: SavedModelBundleSourceAdapterConfig = any
            .to_msg()
            .with_context(|| format!("decoding the [{expected}]"))?;
        SessionBundleSettings::from_session_bundle_config(adapter.legacy_config.unwrap_or_default())
            .context("legacy_config of the \"tensorflow\" platform")
    }

    fn from_session_bundle_config(
        config: SessionBundleConfig,
    ) -> anyhow::Result<SessionBundleSettings> {
        refuse_unsupported(&config)?;
        let warmup_options = config.model_warmup_options.unwrap_or_default();
        let iterations = warmup_iterations(&warmup_options)?;
        let batching = config
            .batching_parameters
            .as_ref()
            .map(BatchingParams::from_proto)
            .transpose()
            .map_err(|err| anyhow!("Invalid BatchingParameters in batching_parameters: {err}"))?;
        let saved_model_tags = if config.saved_model_tags.is_empty() {
            vec!["serve".to_string()]
        } else {
            config.saved_model_tags
        };
        Ok(SessionBundleSettings {
            session_config: config.session_config.unwrap_or_default(),
            intra_op_parallelism: 0,
            inter_op_parallelism: 0,
            batching,
            // Upstream's enable_per_model_batching_params is not in our SessionBundleConfig
            // (its field number is unconfirmed): a file setting it does not parse.
            per_model_batching: false,
            saved_model_tags,
            warmup_iterations: config.enable_model_warmup.then_some(iterations),
        })
    }
}

/// Fields of SessionBundleConfig that would change what TF Serving does and that oxserve does
/// not do: refused by name rather than served differently.
fn refuse_unsupported(config: &SessionBundleConfig) -> anyhow::Result<()> {
    if !config.session_target.is_empty() {
        bail!(
            "session_target \"{}\": oxserve runs sessions in process only (leave session_target empty)",
            config.session_target
        );
    }
    let unsupported = [
        (
            config.session_run_load_threadpool_index.is_some(),
            "session_run_load_threadpool_index",
        ),
        (
            config.experimental_transient_ram_bytes_during_load != 0,
            "experimental_transient_ram_bytes_during_load",
        ),
        (config.enable_session_metadata, "enable_session_metadata"),
        (config.prefer_tflite_model, "prefer_tflite_model"),
        (
            config.resource_estimation_uses_validation_result,
            "resource_estimation_uses_validation_result",
        ),
    ];
    if let Some((_, field)) = unsupported.iter().find(|(set, _)| *set) {
        bail!("{field} is set: oxserve does not support it");
    }
    if config.remove_unused_fields_from_bundle_metagraph {
        tracing::info!(
            "remove_unused_fields_from_bundle_metagraph tunes TF Serving's memory use and has no effect here"
        );
    }
    // Only a TFLite model reads them, and prefer_tflite_model is refused above.
    #[allow(deprecated)]
    let tflite = config.num_tflite_interpreters != 0
        || config.num_tflite_interpreters_per_pool != 0
        || config.num_tflite_pools != 0;
    if tflite {
        tracing::info!("the num_tflite_* fields configure TFLite models and have no effect here");
    }
    Ok(())
}

/// `model_warmup_options.num_request_iterations`, 1 when unset, as TF Serving's warm-up.
fn warmup_iterations(options: &ModelWarmupOptions) -> anyhow::Result<u32> {
    if options.num_model_warmup_threads.is_some_and(|n| n > 1) {
        bail!("model_warmup_options.num_model_warmup_threads is more than 1: oxserve replays warm-up requests on one thread");
    }
    if !options.model_name.is_empty() || options.model_version != 0 {
        bail!("model_warmup_options.model_name and model_version are set by the server for each model version, not in the configuration");
    }
    match options.num_request_iterations {
        None => Ok(1),
        Some(n) => u32::try_from(n).ok().filter(|n| *n > 0).ok_or_else(|| {
            anyhow!("model_warmup_options.num_request_iterations must be positive; was {n}")
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> anyhow::Result<SessionBundleSettings> {
        let map: PlatformConfigMap = oxserve_proto::parse_text_format(text)?;
        SessionBundleSettings::from_platform_config_map(&map)
    }

    fn tensorflow(legacy_config: &str) -> String {
        format!(
            r#"platform_configs {{ key: "tensorflow" value {{ source_adapter_config {{
                 [type.googleapis.com/tensorflow.serving.SavedModelBundleSourceAdapterConfig] {{
                   legacy_config {{ {legacy_config} }}
                 }} }} }} }}"#
        )
    }

    fn error(text: &str) -> String {
        format!("{:#}", parse(text).unwrap_err())
    }

    #[test]
    fn an_empty_session_bundle_config_is_tf_servings_defaults() {
        let settings = parse(&tensorflow("")).unwrap();
        assert!(settings.batching.is_none());
        assert_eq!(settings.saved_model_tags, ["serve"]);
        assert_eq!(settings.warmup_iterations, None);
        assert_eq!(settings.session_config, ConfigProto::default());
    }

    #[test]
    fn the_session_bundle_config_decides() {
        let settings = parse(&tensorflow(
            r#"session_config { inter_op_parallelism_threads: 3 }
               batching_parameters { max_batch_size { value: 4 } }
               saved_model_tags: "serve" saved_model_tags: "gpu"
               enable_model_warmup: true
               model_warmup_options { num_request_iterations { value: 2 } }
               remove_unused_fields_from_bundle_metagraph: true
               num_tflite_pools: 2"#,
        ))
        .unwrap();
        assert_eq!(settings.session_config.inter_op_parallelism_threads, 3);
        assert_eq!(settings.batching.unwrap().max_batch_size, 4);
        assert_eq!(settings.saved_model_tags, ["serve", "gpu"]);
        assert_eq!(settings.warmup_iterations, Some(2));
    }

    #[test]
    fn what_oxserve_cannot_do_is_refused_by_name() {
        let cases = [
            (String::from("platform_configs { key: \"onnx\" value {} }"), "\"onnx\""),
            (String::new(), "no \"tensorflow\" platform"),
            (
                String::from("platform_configs { key: \"tensorflow\" value {} }"),
                "no source_adapter_config",
            ),
            (
                String::from(
                    r#"platform_configs { key: "tensorflow" value { source_adapter_config {
                         [type.googleapis.com/tensorflow.serving.SessionBundleConfig] {} } } }"#,
                ),
                "is a [type.googleapis.com/tensorflow.serving.SessionBundleConfig]",
            ),
            (tensorflow(r#"session_target: "grpc://x""#), "session_target"),
            (
                tensorflow("experimental_transient_ram_bytes_during_load: 5"),
                "experimental_transient_ram_bytes_during_load",
            ),
            (tensorflow("enable_session_metadata: true"), "enable_session_metadata"),
            (tensorflow("prefer_tflite_model: true"), "prefer_tflite_model"),
            (
                tensorflow("session_run_load_threadpool_index { value: 0 }"),
                "session_run_load_threadpool_index",
            ),
            (
                tensorflow("batching_parameters { max_batch_size { value: 0 } }"),
                "max_batch_size must be positive",
            ),
            (
                tensorflow(
                    "enable_model_warmup: true model_warmup_options { num_request_iterations { value: 0 } }",
                ),
                "num_request_iterations must be positive",
            ),
            (
                tensorflow("model_warmup_options { num_model_warmup_threads { value: 4 } }"),
                "num_model_warmup_threads",
            ),
        ];
        for (text, expected) in cases {
            let message = error(&text);
            assert!(message.contains(expected), "{text}: {message}");
        }
    }
}
