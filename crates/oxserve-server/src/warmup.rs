//! Model warm-up (`--enable_model_warmup`): before a version becomes available, replay the
//! requests recorded in its `assets.extra/tf_serving_warmup_requests`, a TFRecord file of
//! `PredictionLog`s (predict, classify, regress, multi-inference), as TF Serving's
//! `saved_model_warmup` does: each record `--num_request_iterations_for_warmup` times, at most
//! 1000 records, any failure failing the load. The requests' model names and versions are
//! ignored: they run on the version being loaded.

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use oxserve_core::inference;
use oxserve_core::manager::WarmupHook;
use oxserve_core::tfrecord::{self, Compression};
use oxserve_core::{Code, Error, Result, Servable};
use oxserve_proto::tensorflow::serving::{self as pb, input, prediction_log::LogType};
use oxserve_proto::tensorflow::Example;
use prost::Message;

use crate::grpc::tensor;

/// Where TF Serving looks for warm-up requests, under a version directory.
pub const WARMUP_FILE: &str = "assets.extra/tf_serving_warmup_requests";
/// TF Serving's `WarmupConsts::kMaxNumRecords`.
pub const MAX_RECORDS: usize = 1000;

/// The manager's warm-up hook, replaying each record `iterations` times (at least once).
pub fn hook(iterations: u32) -> WarmupHook {
    let iterations = iterations.max(1);
    Arc::new(move |servable: &Servable, dir: &Path| run(servable, dir, iterations).map(|_| ()))
}

/// Replays the warm-up file of the version in `dir`, if it has one; returns the records read.
pub fn run(servable: &Servable, dir: &Path, iterations: u32) -> Result<usize> {
    let started = Instant::now();
    let path = dir.join(WARMUP_FILE);
    // As TF Serving's FileExists: a directory of that name is there, and fails the load.
    if !path.exists() {
        tracing::info!("No warmup data file found at {}", path.display());
        return Ok(0);
    }
    tracing::info!(
        "Starting to read warmup data for model at {} with {iterations} iteration(s) per record",
        path.display()
    );
    let result = replay(servable, &path, iterations);
    let elapsed = started.elapsed();
    let status = match &result {
        Ok(_) => Some("OK".to_string()),
        Err(Stop::Unreadable(err)) => Some(format!("{}: {}", err.code.name(), err.message)),
        Err(Stop::Failed(_)) => None,
    };
    if let Some(status) = status {
        oxserve_core::metrics::record_warmup(&dir.to_string_lossy(), &status, elapsed);
    }
    let records = result.map_err(|stop| stop.into_error(&path))?;
    tracing::info!(
        "Finished reading warmup data for model at {}. Number of warmup records read: {records}. Elapsed time (microseconds): {}.",
        path.display(),
        elapsed.as_micros()
    );
    Ok(records)
}

/// Why a replay stopped. TF Serving records the warm-up's time for a file that reads to its end
/// or stops reading, not for a file it cannot open or a record that fails to parse or to run.
enum Stop {
    Unreadable(Error),
    Failed(Error),
}

impl Stop {
    fn into_error(self, path: &Path) -> Error {
        match self {
            Stop::Unreadable(err) if err.code == Code::DataLoss => Error::new(
                Code::DataLoss,
                format!(
                    "{} of {}. Please verify your warmup data is in TFRecord format.",
                    err.message,
                    path.display()
                ),
            ),
            Stop::Unreadable(err) | Stop::Failed(err) => err,
        }
    }
}

fn replay(servable: &Servable, path: &Path, iterations: u32) -> Result<usize, Stop> {
    let reader = tfrecord::open(path, Compression::None).map_err(Stop::Failed)?;
    let mut records = 0;
    for record in reader {
        let record = record.map_err(Stop::Unreadable)?;
        records += 1;
        if records > MAX_RECORDS {
            return Err(Stop::Failed(Error::invalid_argument(format!(
                "Number of warmup records exceeds the maximum ({MAX_RECORDS}) at {}",
                path.display()
            ))));
        }
        let log = pb::PredictionLog::decode(&record[..]).map_err(|err| {
            Stop::Failed(Error::invalid_argument(format!(
                "Failed to parse warmup record {records} from {}: {err}",
                path.display()
            )))
        })?;
        for _ in 0..iterations {
            run_record(servable, &log).map_err(|err| {
                Stop::Failed(Error::new(
                    err.code,
                    format!(
                        "Warm-up record {records} of {} failed: {}",
                        path.display(),
                        err.message
                    ),
                ))
            })?;
        }
    }
    Ok(records)
}

fn examples_of(input: Option<&pb::Input>) -> (Option<&Example>, &[Example]) {
    match input.and_then(|input| input.kind.as_ref()) {
        Some(input::Kind::ExampleList(list)) => (None, &list.examples),
        Some(input::Kind::ExampleListWithContext(list)) => (list.context.as_ref(), &list.examples),
        None => (None, &[]),
    }
}

fn signature_name(spec: Option<&pb::ModelSpec>) -> &str {
    spec.map_or("", |spec| spec.signature_name.as_str())
}

/// Runs one warm-up record on `servable`, as the matching API would.
fn run_record(servable: &Servable, log: &pb::PredictionLog) -> Result<()> {
    let missing = || Error::invalid_argument("warm-up record has no request");
    match &log.log_type {
        Some(LogType::PredictLog(predict)) => {
            let request = predict.request.as_ref().ok_or_else(missing)?;
            let mut inputs = Vec::with_capacity(request.inputs.len());
            for (alias, proto) in &request.inputs {
                inputs.push((alias.clone(), tensor::parse_input(alias, proto.clone())?));
            }
            servable.predict(
                signature_name(request.model_spec.as_ref()),
                inputs,
                &request.output_filter,
            )?;
        }
        Some(LogType::ClassifyLog(classify)) => {
            let request = classify.request.as_ref().ok_or_else(missing)?;
            let (context, examples) = examples_of(request.input.as_ref());
            inference::classify(
                servable,
                signature_name(request.model_spec.as_ref()),
                context,
                examples,
            )?;
        }
        Some(LogType::RegressLog(regress)) => {
            let request = regress.request.as_ref().ok_or_else(missing)?;
            let (context, examples) = examples_of(request.input.as_ref());
            inference::regress(
                servable,
                signature_name(request.model_spec.as_ref()),
                context,
                examples,
            )?;
        }
        Some(LogType::MultiInferenceLog(multi)) => {
            let request = multi.request.as_ref().ok_or_else(missing)?;
            let (context, examples) = examples_of(request.input.as_ref());
            inference::multi_inference(servable, &request.tasks, context, examples)?;
        }
        Some(LogType::SessionRunLog(_)) => {
            return Err(Error::unimplemented(
                "Unsupported log_type for warmup: session_run_log",
            ))
        }
        // TF Serving's `default: break`: skipped.
        Some(LogType::PredictStreamedLog(_)) | None => {}
    }
    Ok(())
}
