//! `--model_config_file`: a text-format `ModelServerConfig`, read with a real text-format parser
//! (prost-reflect) and checked as TF Serving's `ServerCore` checks it.
//!
//! As in TF Serving, nothing in the file is expanded: `${VAR}` in a `base_path` is taken
//! literally (and, not being an absolute path, refused).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use miette::Diagnostic;
use oxserve_proto::tensorflow::serving::model_server_config::Config;
use oxserve_proto::tensorflow::serving::{
    ModelConfig, ModelConfigList, ModelServerConfig, ModelType,
};
use oxserve_proto::TextFormatError;

use super::policy::VersionPolicy;
use crate::error::{Code, Error, Result};

/// One model of the configuration, checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ModelConfigEntry {
    pub name: String,
    pub base_path: PathBuf,
    pub policy: VersionPolicy,
    pub labels: BTreeMap<String, i64>,
}

/// Reads a text-format protobuf file (`--model_config_file`, `--monitoring_config_file`, ...).
/// Errors name the file and, for syntax errors, the line and column:
/// `models.config:3:7: expected ..., but found '...'`.
pub fn read_text_proto<T>(path: &Path) -> Result<T>
where
    T: prost::Message + prost::Name + Default,
{
    let bytes = std::fs::read(path).map_err(|err| {
        Error::new(
            if err.kind() == std::io::ErrorKind::NotFound {
                Code::NotFound
            } else {
                Code::InvalidArgument
            },
            format!("could not read {} file {}: {err}", T::NAME, path.display()),
        )
    })?;
    // protobuf's tokenizer takes any bytes in comments (a Latin-1 `modèle`, say); invalid UTF-8
    // in a string value then shows as U+FFFD in the value and in messages.
    parse_text_proto(&String::from_utf8_lossy(&bytes), path)
}

/// Parses text-format `text`, read from `path` (used in messages only).
pub fn parse_text_proto<T>(text: &str, path: &Path) -> Result<T>
where
    T: prost::Message + prost::Name + Default,
{
    oxserve_proto::parse_text_format::<T>(text).map_err(|err| {
        let (offset, message) = match &err {
            TextFormatError::Parse { source, .. } => {
                let offset = source
                    .labels()
                    .and_then(|mut labels| labels.next())
                    .map_or(text.len(), |label| label.offset());
                (Some(offset), source.to_string())
            }
            other => (None, other.to_string()),
        };
        match offset {
            Some(offset) => {
                let (line, column) = line_and_column(text, offset);
                Error::invalid_argument(format!(
                    "{}:{line}:{column}: invalid text-format {}: {message}",
                    path.display(),
                    T::NAME
                ))
            }
            None => Error::invalid_argument(format!("{}: {message}", path.display())),
        }
    })
}

/// The platform of a model, as TF Serving's `GetPlatform` reads it: the deprecated `model_type`
/// (`TENSORFLOW` only, and never next to `model_platform`), else `model_platform`. Where TF
/// Serving refuses a model that gives neither, oxserve takes it as `tensorflow`.
fn platform<'a>(name: &str, model: &'a ModelConfig) -> Result<&'a str> {
    #[allow(deprecated)]
    let model_type = model.model_type;
    if model_type == ModelType::Unspecified as i32 {
        return Ok(match model.model_platform.as_str() {
            "" => "tensorflow",
            platform => platform,
        });
    }
    tracing::warn!(
        "Deprecated ModelServerConfig::model_type field used (model {name}). Prefer ModelServerConfig::model_platform."
    );
    if !model.model_platform.is_empty() {
        return Err(Error::invalid_argument(
            "Illegal setting both ModelServerConfig::model_type (deprecated) and ModelServerConfig::model_platform.",
        ));
    }
    if model_type != ModelType::Tensorflow as i32 {
        return Err(Error::invalid_argument(format!(
            "ModelServerConfig::model_type choice {model_type} not supported."
        )));
    }
    Ok("tensorflow")
}

/// The 1-based line and column (in characters) of byte `offset` of `text`.
fn line_and_column(text: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    (line, before[line_start..].chars().count() + 1)
}

/// The configuration of `--model_name` / `--model_base_path`: one model, latest version.
pub fn single_model_config(name: &str, base_path: &Path) -> ModelServerConfig {
    ModelServerConfig {
        config: Some(Config::ModelConfigList(ModelConfigList {
            config: vec![ModelConfig {
                name: name.to_string(),
                base_path: base_path.to_string_lossy().into_owned(),
                model_platform: "tensorflow".to_string(),
                ..ModelConfig::default()
            }],
        })),
    }
}

/// The directory a `base_path` names. TF Serving takes an absolute path or a URI; oxserve reads
/// version directories from the local file system, so of URIs it takes `file://` ones only, and
/// says so of the others rather than finding no versions at a path that cannot exist.
fn local_base_path(name: &str, base_path: &str) -> Result<PathBuf> {
    let path = match base_path.split_once("://") {
        Some(("file", path)) => path,
        Some((scheme, _))
            if !scheme.is_empty() && scheme.bytes().all(|b| b.is_ascii_alphanumeric()) =>
        {
            return Err(Error::unimplemented(format!(
                "Model {name} has base_path {base_path}: oxserve reads models from the local file \
                 system only, not from {scheme}:// URIs (mount the storage, e.g. a bucket with \
                 gcsfuse, and give its local path)"
            )));
        }
        _ => base_path,
    };
    if !Path::new(path).is_absolute() {
        return Err(Error::invalid_argument(format!(
            "Expected model {name} to have an absolute path or URI; got base_path()={base_path}"
        )));
    }
    Ok(PathBuf::from(path))
}

/// Checks a configuration as TF Serving's `ServerCore` does and returns its models.
pub fn models_of(config: &ModelServerConfig) -> Result<Vec<ModelConfigEntry>> {
    let list = match &config.config {
        None => return Ok(Vec::new()),
        Some(Config::ModelConfigList(list)) => list,
        Some(Config::CustomModelConfig(_)) => {
            return Err(Error::unimplemented(
                "custom_model_config is not supported: oxserve serves a model_config_list",
            ))
        }
    };
    let mut names = BTreeSet::new();
    let mut models = Vec::with_capacity(list.config.len());
    for (index, model) in list.config.iter().enumerate() {
        let name = &model.name;
        if name.is_empty() {
            return Err(Error::invalid_argument(format!(
                "model_config_list entry {index} has no name"
            )));
        }
        if !names.insert(name.clone()) {
            return Err(Error::invalid_argument(format!(
                "Illegal to list model {name} multiple times in config list"
            )));
        }
        let base_path = local_base_path(name, &model.base_path)?;
        let platform = platform(name, model)?;
        if platform != "tensorflow" {
            return Err(Error::invalid_argument(format!(
                "Model {name} requests model_platform \"{platform}\": oxserve serves \"tensorflow\" SavedModels"
            )));
        }
        if model.logging_config.is_some() {
            return Err(Error::unimplemented(format!(
                "logging_config of model {name}: request logging is not supported by oxserve yet"
            )));
        }
        models.push(ModelConfigEntry {
            name: name.clone(),
            base_path,
            policy: VersionPolicy::from_proto(name, model.model_version_policy.as_ref()),
            labels: model
                .version_labels
                .iter()
                .map(|(label, version)| (label.clone(), *version))
                .collect(),
        });
    }
    Ok(models)
}

#[cfg(test)]
mod tests {
    use super::*;
    use oxserve_proto::tensorflow::serving::MonitoringConfig;

    fn parse(text: &str) -> Result<ModelServerConfig> {
        parse_text_proto(text, Path::new("/etc/models.config"))
    }

    #[test]
    fn syntax_errors_name_file_line_and_column() {
        let err = parse(
            "model_config_list {\n  config {\n    name: \"a\"\n    base_path = \"/x\"\n  }\n}\n",
        )
        .unwrap_err();
        assert_eq!(err.code, Code::InvalidArgument);
        assert!(
            err.message.starts_with("/etc/models.config:4:"),
            "{}",
            err.message
        );
        let err = parse("model_config_list {\n  config {\n    nmae: \"a\"\n  }\n}\n").unwrap_err();
        assert!(
            err.message.starts_with("/etc/models.config:3:5: "),
            "{}",
            err.message
        );
        assert!(err.message.contains("nmae"), "{}", err.message);
        // Truncated input points at its end.
        let err = parse("model_config_list {\n  config {").unwrap_err();
        assert!(
            err.message.starts_with("/etc/models.config:2:11: "),
            "{}",
            err.message
        );
        // TF Serving's own bad config.
        let err = parse("improperly formatted file").unwrap_err();
        assert!(
            err.message.starts_with("/etc/models.config:1:12: "),
            "{}",
            err.message
        );
    }

    #[test]
    fn line_and_column_count_characters() {
        assert_eq!(line_and_column("ab\ncd", 0), (1, 1));
        assert_eq!(line_and_column("ab\ncd", 4), (2, 2));
        assert_eq!(line_and_column("é\nx", 3), (2, 1));
        assert_eq!(line_and_column("ab", 99), (1, 3));
    }

    #[test]
    fn models_policies_and_labels() {
        let config = parse(
            r#"model_config_list {
                 config { name: "a" base_path: "/m/a" model_platform: "tensorflow" }
                 config {
                   name: "b" base_path: "/m/b"
                   model_version_policy { all {} }
                   version_labels { key: "stable" value: 1 }
                   version_labels { key: "canary" value: 2 }
                 }
               }"#,
        )
        .unwrap();
        let models = models_of(&config).unwrap();
        assert_eq!(models.len(), 2);
        assert_eq!(models[0].policy, VersionPolicy::Latest(1));
        assert_eq!(models[1].policy, VersionPolicy::All);
        assert_eq!(models[1].labels["canary"], 2);
        assert!(models_of(&ModelServerConfig::default()).unwrap().is_empty());
    }

    #[test]
    fn base_paths_are_local_directories() {
        let models = |base_path: &str| {
            let text = format!(
                r#"model_config_list {{ config {{ name: "a" base_path: "{base_path}" }} }}"#
            );
            models_of(&parse(&text).unwrap())
        };
        assert_eq!(
            models("file:///m/a").unwrap()[0].base_path,
            Path::new("/m/a")
        );
        let err = models("gs://bucket/a").unwrap_err();
        assert_eq!(err.code, Code::Unimplemented);
        assert!(err.message.starts_with("Model a has base_path gs://bucket/a: oxserve reads models from the local file system only, not from gs:// URIs"), "{}", err.message);
        assert_eq!(
            models("file://m/a").unwrap_err().message,
            "Expected model a to have an absolute path or URI; got base_path()=file://m/a"
        );
    }

    #[test]
    fn tf_serving_checks() {
        let check = |text: &str| models_of(&parse(text).unwrap()).unwrap_err().message;
        assert_eq!(
            check(
                r#"model_config_list { config { name: "a" base_path: "/a" } config { name: "a" base_path: "/b" } }"#
            ),
            "Illegal to list model a multiple times in config list"
        );
        // Placeholders are not expanded, as in TF Serving.
        assert_eq!(
            check(r#"model_config_list { config { name: "a" base_path: "${MODELS}/a" } }"#),
            "Expected model a to have an absolute path or URI; got base_path()=${MODELS}/a"
        );
        assert!(check(
            r#"model_config_list { config { name: "a" base_path: "/a" model_platform: "onnx" } }"#
        )
        .contains("onnx"));
        assert!(check(r#"model_config_list { config { base_path: "/a" } }"#).contains("no name"));
    }

    #[test]
    fn monitoring_config() {
        let config: MonitoringConfig = parse_text_proto(
            "prometheus_config: {\n  enable: true,\n  path: \"/monitoring/prometheus/metrics\"\n}\n",
            Path::new("m.txt"),
        )
        .unwrap();
        let prometheus = config.prometheus_config.unwrap();
        assert!(prometheus.enable);
        assert_eq!(prometheus.path, "/monitoring/prometheus/metrics");
    }

    #[test]
    fn missing_file() {
        let err = read_text_proto::<ModelServerConfig>(Path::new("/nonexistent/models.config"))
            .unwrap_err();
        assert_eq!(err.code, Code::NotFound);
        assert!(err.message.contains("/nonexistent/models.config"));
    }
}
