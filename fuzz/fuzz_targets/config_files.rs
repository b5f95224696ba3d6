//! Configurations as the server reads them: the text-format files (`--model_config_file`, read
//! again while serving with `--model_config_file_poll_wait_seconds`; `--batching_parameters_file`
//! and each version's `batching_params.pbtxt`; `--monitoring_config_file`; `--ssl_config_file`)
//! and the `ModelServerConfig` a `HandleReloadConfigRequest` carries over the network. Any bytes
//! must end in a checked configuration or an error, never a panic, and a syntax error must point
//! at a line and column inside the text.
//!
//! The first byte picks the input's kind; the rest is the file or the message.

#![no_main]

use std::collections::BTreeSet;
use std::path::Path;

use libfuzzer_sys::fuzz_target;
use oxserve_core::batching::BatchingParams;
use oxserve_core::manager::{models_of, parse_text_proto};
use oxserve_proto::tensorflow::serving::{
    ModelServerConfig, MonitoringConfig, ReloadConfigRequest, SslConfig,
};
use prost::{Message, Name};

const PATH: &str = "/etc/oxserve/config";

/// The models of a configuration, each version policy applied to a few version sets.
fn check_models(config: &ModelServerConfig) {
    let Ok(models) = models_of(config) else {
        return;
    };
    let found: [BTreeSet<i64>; 3] = [
        BTreeSet::new(),
        [1, 2, 3].into(),
        [i64::MIN, -1, 0, i64::MAX].into(),
    ];
    for model in &models {
        assert!(model.base_path.is_absolute(), "{model:?}");
        for versions in &found {
            assert!(model.policy.select(versions).is_subset(versions));
        }
    }
}

/// Parses `text`; a syntax error's position must lie inside the text (its last line included).
fn parse<T: Message + Name + Default>(text: &str) -> Option<T> {
    match parse_text_proto::<T>(text, Path::new(PATH)) {
        Ok(message) => Some(message),
        Err(err) => {
            let position = err.message.strip_prefix(&format!("{PATH}:"));
            if let Some(rest) = position.filter(|rest| rest.contains(": invalid text-format")) {
                let mut numbers = rest.splitn(3, ':').map(|n| n.parse::<usize>());
                let (Some(Ok(line)), Some(Ok(column))) = (numbers.next(), numbers.next()) else {
                    panic!("no line and column in {:?}", err.message);
                };
                let lines: Vec<&str> = text.split('\n').collect();
                assert!((1..=lines.len()).contains(&line), "{}", err.message);
                let width = lines[line - 1].chars().count();
                assert!((1..=width + 1).contains(&column), "{}", err.message);
            }
            None
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&pick, rest)) = data.split_first() else {
        return;
    };
    let text = String::from_utf8_lossy(rest);
    match pick % 5 {
        0 => {
            if let Some(config) = parse::<ModelServerConfig>(&text) {
                check_models(&config);
            }
        }
        1 => {
            if let Ok(request) = ReloadConfigRequest::decode(rest) {
                check_models(&request.config.unwrap_or_default());
            }
        }
        2 => {
            if let Ok(params) = BatchingParams::parse(&text, PATH) {
                for size in (0..=17).chain([params.max_batch_size, usize::MAX]) {
                    let padded = params.padded_size(size);
                    assert!(padded >= size);
                }
            }
        }
        3 => {
            parse::<MonitoringConfig>(&text);
        }
        _ => {
            parse::<SslConfig>(&text);
        }
    }
});
