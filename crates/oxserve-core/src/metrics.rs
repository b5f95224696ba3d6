//! Metric names and recording helpers, over the `metrics` facade.
//!
//! Names are TF Serving's, spelled as its Prometheus exporter spells them (`/` becomes `:`), with
//! its label names and its units (microseconds). Recording is a no-op until a recorder is
//! installed: `oxserve_server::metrics::install` installs the Prometheus one when
//! `--monitoring_config_file` enables it. Anything in the process (the manager, the batcher, the
//! protocol adapters) records through these functions into that one registry.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use crate::error::Code;

/// `/tensorflow/serving/request_count`: requests by model and final status code name.
pub const REQUEST_COUNT: &str = ":tensorflow:serving:request_count";
/// `/tensorflow/serving/request_latency`: wall time of a request (µs), by model, API, entrypoint.
pub const REQUEST_LATENCY: &str = ":tensorflow:serving:request_latency";
/// `/tensorflow/serving/runtime_latency`: wall time of the model run (µs), by model, API, runtime.
pub const RUNTIME_LATENCY: &str = ":tensorflow:serving:runtime_latency";
/// `/tensorflow/serving/request_example_counts`: tf.Examples per Classify/Regress request.
pub const REQUEST_EXAMPLE_COUNTS: &str = ":tensorflow:serving:request_example_counts";
/// `/tensorflow/serving/request_example_count_total`: tf.Examples received, by model.
pub const REQUEST_EXAMPLE_COUNT_TOTAL: &str = ":tensorflow:serving:request_example_count_total";
/// `/tensorflow/cc/saved_model/load_attempt_count`: loads by model path and `success`/`fail`.
pub const LOAD_ATTEMPT_COUNT: &str = ":tensorflow:cc:saved_model:load_attempt_count";
/// `/tensorflow/cc/saved_model/load_latency`: total µs spent in successful loads, by model path.
pub const LOAD_LATENCY: &str = ":tensorflow:cc:saved_model:load_latency";
/// `/tensorflow/serving/model_warmup_latency`: warm-up wall time (µs) by model path and status.
pub const MODEL_WARMUP_LATENCY: &str = ":tensorflow:serving:model_warmup_latency";
/// `/tensorflow/serving/batching_session/input_batch_size`: dimension 0 of each input tensor of
/// each call queued for batching (no labels: TF Serving's batching session does not know the
/// model).
pub const INPUT_BATCH_SIZE: &str = ":tensorflow:serving:batching_session:input_batch_size";
/// `/tensorflow/serving/batching_session/processed_batch_size`: rows of each batch run, padding
/// included.
pub const PROCESSED_BATCH_SIZE: &str = ":tensorflow:serving:batching_session:processed_batch_size";
/// `/tensorflow/serving/batching_session/padding_size`: rows of padding added to each batch, by
/// `execution_batch_size` (the padded size).
pub const PADDING_SIZE: &str = ":tensorflow:serving:batching_session:padding_size";
/// `/tensorflow/serving/batching_session/queuing_latency`: time (µs) each call waited in its
/// queue until its batch was taken, by `thread_pool_name` (always empty).
pub const QUEUING_LATENCY: &str = ":tensorflow:serving:batching_session:queuing_latency";
/// oxserve's own: calls waiting in a model version's batching queues right now, by
/// `model_path` (the version directory, as the load metrics name it).
pub const QUEUED_CALLS: &str = ":oxserve:batching:queued_calls";
/// oxserve's own: requests being processed right now, by entrypoint (`REST`, `GRPC`).
pub const REQUESTS_IN_FLIGHT: &str = ":oxserve:requests_in_flight";

/// The `runtime` label of TF Serving's runtime latency for the TensorFlow session runtime.
pub const RUNTIME_TF: &str = "TF1";
/// TF's `Buckets::Exponential(10, 1.8, 33)`, used by every latency histogram: 10 µs to ~20 min.
pub fn latency_buckets() -> Vec<f64> {
    exponential_buckets(10.0, 1.8, 33)
}

/// TF's `Buckets::Exponential(scale, growth, count)`: the `count` finite upper bounds
/// `scale * growth^i`, i < count (`ComputeBucketLimits`; TF then adds `DBL_MAX`, which TF
/// Serving's exporter writes as `+Inf`, implicit in Prometheus here).
pub fn exponential_buckets(scale: f64, growth: f64, count: usize) -> Vec<f64> {
    // Rounded to 4 decimals, so that `le` labels read 32.4 rather than 32.400000000000006.
    (0..count)
        .map(|i| (scale * growth.powi(i as i32) * 1e4).round() / 1e4)
        .collect()
}

/// The histograms and their buckets, for the exporter to render them as Prometheus histograms.
pub fn histogram_buckets() -> Vec<(&'static str, Vec<f64>)> {
    vec![
        (REQUEST_LATENCY, latency_buckets()),
        (RUNTIME_LATENCY, latency_buckets()),
        (MODEL_WARMUP_LATENCY, latency_buckets()),
        (REQUEST_EXAMPLE_COUNTS, exponential_buckets(1.0, 2.0, 15)),
        (INPUT_BATCH_SIZE, exponential_buckets(1.0, 2.0, 14)),
        (PROCESSED_BATCH_SIZE, exponential_buckets(1.0, 2.0, 14)),
        (PADDING_SIZE, exponential_buckets(1.0, 2.0, 14)),
        (QUEUING_LATENCY, exponential_buckets(100.0, 1.2, 52)),
    ]
}

fn micros(elapsed: Duration) -> f64 {
    elapsed.as_secs_f64() * 1e6
}

/// One request as TF Serving counts it: `request_count{model_name, status}` always, and
/// `request_latency{model_name, API, entrypoint}` only when it succeeded (TF Serving times
/// successes only, so fast failures do not pull its percentiles down). `api` is `Predict`,
/// `Classify` or `Regress` over gRPC and the URL's verb (`predict`, ...) over REST, as TF Serving
/// labels them; `entrypoint` is `REST` or `GRPC`; `code` is `None` for OK.
pub fn record_request(
    model: &str,
    api: &'static str,
    entrypoint: &'static str,
    code: Option<Code>,
    elapsed: Duration,
) {
    let status = code.map_or("OK", Code::name);
    metrics::counter!(REQUEST_COUNT, "model_name" => model.to_string(), "status" => status)
        .increment(1);
    if code.is_none() {
        metrics::histogram!(
            REQUEST_LATENCY,
            "model_name" => model.to_string(),
            "API" => api,
            "entrypoint" => entrypoint
        )
        .record(micros(elapsed));
    }
}

/// `runtime_latency{model_name, API, runtime}`: the time the model itself ran, recorded for
/// successful runs only (TF Serving returns before recording when the session run fails).
pub fn record_runtime_latency(model: &str, api: &'static str, elapsed: Duration) {
    metrics::histogram!(
        RUNTIME_LATENCY,
        "model_name" => model.to_string(),
        "API" => api,
        "runtime" => RUNTIME_TF
    )
    .record(micros(elapsed));
}

/// `request_example_counts` and `request_example_count_total` (label `model`, as in TF Serving).
pub fn record_example_count(model: &str, count: usize) {
    metrics::histogram!(REQUEST_EXAMPLE_COUNTS, "model" => model.to_string()).record(count as f64);
    metrics::counter!(REQUEST_EXAMPLE_COUNT_TOTAL, "model" => model.to_string())
        .increment(count as u64);
}

/// A load attempt of the SavedModel at `model_path`: `load_attempt_count{model_path, status}`
/// and, when it succeeded, `load_latency{model_path}` (a counter of µs, as in TensorFlow).
pub fn record_load(model_path: &str, succeeded: bool, elapsed: Duration) {
    let status = if succeeded { "success" } else { "fail" };
    metrics::counter!(LOAD_ATTEMPT_COUNT, "model_path" => model_path.to_string(), "status" => status)
        .increment(1);
    if succeeded {
        metrics::counter!(LOAD_LATENCY, "model_path" => model_path.to_string())
            .increment(elapsed.as_micros().min(u128::from(u64::MAX)) as u64);
    }
}

/// A warm-up of the SavedModel at `model_path`; `status` is `OK` or the error's text, as TF
/// Serving's `Status::ToString()`.
pub fn record_warmup(model_path: &str, status: &str, elapsed: Duration) {
    metrics::histogram!(
        MODEL_WARMUP_LATENCY,
        "model_path" => model_path.to_string(),
        "status" => status.to_string()
    )
    .record(micros(elapsed));
}

/// One call queued for batching: dimension 0 of each of its input tensors.
pub fn record_input_batch_size(rows: usize) {
    metrics::histogram!(INPUT_BATCH_SIZE).record(rows as f64);
}

/// One batch run by the batcher: `batch_size` real rows, padded to `padded_size`.
pub fn record_batch(batch_size: usize, padded_size: usize) {
    metrics::histogram!(PROCESSED_BATCH_SIZE).record(padded_size as f64);
    metrics::histogram!(PADDING_SIZE, "execution_batch_size" => padded_size.to_string())
        .record(padded_size.saturating_sub(batch_size) as f64);
}

/// How long a call waited in a batching queue before a batch thread took its batch. The label is
/// empty, as tensorflow_model_server's: it creates its batching sessions without a pool name.
pub fn record_queuing_latency(waited: Duration) {
    metrics::histogram!(QUEUING_LATENCY, "thread_pool_name" => "").record(micros(waited));
}

/// The gauge of the calls waiting in a model version's batching queues, registered once (setting
/// it then costs no lookup, under the scheduler's lock).
pub fn queued_calls_gauge(model_path: &str) -> metrics::Gauge {
    metrics::gauge!(QUEUED_CALLS, "model_path" => model_path.to_string())
}

/// Requests of every entrypoint in flight in this process (the gauges' sum, readable).
static IN_FLIGHT: AtomicUsize = AtomicUsize::new(0);

/// Counts a request in `requests_in_flight{entrypoint}` until the returned guard is dropped.
pub fn request_in_flight(entrypoint: &'static str) -> InFlight {
    let gauge = metrics::gauge!(REQUESTS_IN_FLIGHT, "entrypoint" => entrypoint);
    gauge.increment(1.0);
    IN_FLIGHT.fetch_add(1, Ordering::Relaxed);
    InFlight { gauge }
}

/// How many requests are in flight now, over every entrypoint: work that may spread over both
/// cores when it is the only one.
pub fn requests_in_flight() -> usize {
    IN_FLIGHT.load(Ordering::Relaxed)
}

/// See [`request_in_flight`].
pub struct InFlight {
    gauge: metrics::Gauge,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.gauge.decrement(1.0);
        IN_FLIGHT.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tf_exponential_buckets() {
        let buckets = latency_buckets();
        assert_eq!(buckets.len(), 33);
        assert_eq!(buckets[0], 10.0);
        assert!((buckets[1] - 18.0).abs() < 1e-9);
        // About 25 minutes in microseconds at the top ("~20 minutes", says TF).
        assert!(buckets[32] > 1.4e9 && buckets[32] < 1.6e9);
        // "Exponential buckets [1*2^0, ..., 1*2^13, DBL_MAX]" (TF Serving's batching_util.h).
        assert_eq!(exponential_buckets(1.0, 2.0, 14).last(), Some(&8192.0));
        assert_eq!(exponential_buckets(1.0, 2.0, 14).len(), 14);
    }
}
