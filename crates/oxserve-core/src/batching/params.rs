//! `BatchingParameters` (TF Serving's `session_bundle_config.proto`): TF Serving's defaults for
//! every omitted field and its start-up checks, with its error messages.

use std::path::Path;
use std::time::Duration;

use oxserve_proto::tensorflow::serving::BatchingParameters;

use crate::error::{Error, Result};

/// `SharedBatchScheduler::QueueOptions().input_batch_size_limit`.
pub const DEFAULT_MAX_BATCH_SIZE: usize = 1000;
/// `SharedBatchScheduler::QueueOptions().max_enqueued_batches`.
pub const DEFAULT_MAX_ENQUEUED_BATCHES: usize = 10;
/// The thread pool name tensorflow_model_server gives when no parameters file is given.
pub const DEFAULT_THREAD_POOL_NAME: &str = "model_server_batch_threads";

/// Validated batching parameters, TF Serving's defaults filled in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BatchingParams {
    /// Largest request accepted (`input_batch_size_limit`); also the largest executed batch
    /// unless large batch splitting is on.
    pub max_batch_size: usize,
    /// How long the first request of a non-full batch may wait for more.
    pub batch_timeout: Duration,
    /// Batches (the open one included) a queue may hold before requests are refused.
    pub max_enqueued_batches: usize,
    /// Threads running batches, shared by every batching model.
    pub num_batch_threads: usize,
    pub thread_pool_name: String,
    /// Batch sizes batches are padded up to (increasing; empty: no padding).
    pub allowed_batch_sizes: Vec<usize>,
    /// Pad inputs whose non-batch dimensions differ to the largest of the batch.
    pub pad_variable_length_inputs: bool,
    /// Split requests across batches instead of refusing those that do not fit.
    pub enable_large_batch_splitting: bool,
    /// Largest executed batch: `max_execution_batch_size` with splitting on, else `max_batch_size`.
    pub max_execution_batch_size: usize,
}

impl Default for BatchingParams {
    /// tensorflow_model_server's parameters for `--enable_batching` without a parameters file.
    fn default() -> BatchingParams {
        BatchingParams::from_proto(&BatchingParameters {
            thread_pool_name: Some(DEFAULT_THREAD_POOL_NAME.to_string()),
            ..BatchingParameters::default()
        })
        .unwrap_or_else(|_| unreachable!("the default parameters are valid"))
    }
}

/// More batch threads than any machine can use (each is an OS thread, started with the server).
const MAX_BATCH_THREADS: i64 = 4096;

fn positive(value: i64, field: &str) -> Result<usize> {
    if value <= 0 {
        return Err(Error::invalid_argument(format!(
            "{field} must be positive; was {value}"
        )));
    }
    usize::try_from(value)
        .map_err(|_| Error::invalid_argument(format!("{field} is too large; was {value}")))
}

/// The number of CPUs, as `port::MaxParallelism()`.
pub fn cpu_count() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

impl BatchingParams {
    /// Applies TF Serving's defaults and checks (`bundle_factory_util`, `SharedBatchScheduler`).
    pub fn from_proto(proto: &BatchingParameters) -> Result<BatchingParams> {
        let max_batch_size = match proto.max_batch_size {
            Some(value) => positive(value, "max_batch_size")?,
            None => DEFAULT_MAX_BATCH_SIZE,
        };
        let batch_timeout = match proto.batch_timeout_micros {
            Some(value) if value < 0 => {
                return Err(Error::invalid_argument(format!(
                    "batch_timeout_micros must be non-negative; was {value}"
                )))
            }
            Some(value) => Duration::from_micros(value as u64),
            None => Duration::ZERO,
        };
        let splitting = proto.enable_large_batch_splitting.unwrap_or(false);
        let max_enqueued_batches = match proto.max_enqueued_batches {
            // SharedBatchScheduler::AddQueue rewrites 0 to 1 when splitting is off.
            Some(0) if !splitting => 1,
            Some(value) => positive(value, "max_enqueued_batches")?,
            None => DEFAULT_MAX_ENQUEUED_BATCHES,
        };
        let num_batch_threads = match proto.num_batch_threads {
            Some(value) if value > MAX_BATCH_THREADS => {
                return Err(Error::invalid_argument(format!(
                    "num_batch_threads must be at most {MAX_BATCH_THREADS}; was {value}"
                )))
            }
            Some(value) => positive(value, "num_batch_threads")?,
            None => cpu_count(),
        };
        let max_execution_batch_size = match (splitting, proto.max_execution_batch_size) {
            (true, Some(value)) => positive(value, "max_execution_batch_size")?,
            _ => max_batch_size,
        };
        if splitting && max_batch_size < max_execution_batch_size {
            return Err(Error::invalid_argument(format!(
                "When enable_large_batch_splitting is true, input_batch_size_limit must be greater than or equal to max_execution_batch_size; input_batch_size_limit was {max_batch_size}, max_execution_batch_size {max_execution_batch_size}"
            )));
        }
        let mut allowed_batch_sizes = Vec::with_capacity(proto.allowed_batch_sizes.len());
        for &size in &proto.allowed_batch_sizes {
            let size = positive(size, "allowed_batch_sizes entries")?;
            if allowed_batch_sizes.last().is_some_and(|&last| size <= last) {
                return Err(Error::invalid_argument(
                    "allowed_batch_sizes entries must be monotonically increasing",
                ));
            }
            allowed_batch_sizes.push(size);
        }
        if let Some(&last) = allowed_batch_sizes.last() {
            if splitting {
                if last > max_batch_size {
                    return Err(Error::invalid_argument(format!(
                        "Last entry in allowed_batch_sizes must be less than or equal to max_batch_size; last entry was {last}; expected {max_batch_size}"
                    )));
                }
                if last != max_execution_batch_size {
                    return Err(Error::invalid_argument(format!(
                        "Last entry in allowed_batch_sizes must be equal to max_execution_batch_size; last entry was {last}; expected {max_execution_batch_size}"
                    )));
                }
            } else if last != max_batch_size {
                return Err(Error::invalid_argument(format!(
                    "Last entry in allowed_batch_sizes must match max_batch_size; last entry was {last}; expected {max_batch_size}"
                )));
            }
        }
        Ok(BatchingParams {
            max_batch_size,
            batch_timeout,
            max_enqueued_batches,
            num_batch_threads,
            thread_pool_name: proto
                .thread_pool_name
                .clone()
                .unwrap_or_else(|| "batch_threads".to_string()),
            allowed_batch_sizes,
            pad_variable_length_inputs: proto.pad_variable_length_inputs,
            enable_large_batch_splitting: splitting,
            max_execution_batch_size,
        })
    }

    /// Parses and checks a text-format `BatchingParameters`; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> Result<BatchingParams> {
        let proto = oxserve_proto::parse_text_format::<BatchingParameters>(text).map_err(|e| {
            Error::invalid_argument(format!(
                "Could not parse BatchingParameters in {origin}: {e}"
            ))
        })?;
        BatchingParams::from_proto(&proto).map_err(|e| {
            Error::new(
                e.code,
                format!("Invalid BatchingParameters in {origin}: {e}"),
            )
        })
    }

    /// Reads, parses and checks a text-format `BatchingParameters` file.
    pub fn from_file(path: &Path) -> Result<BatchingParams> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            Error::invalid_argument(format!(
                "Could not read batching parameters file {}: {e}",
                path.display()
            ))
        })?;
        BatchingParams::parse(&text, &path.display().to_string())
    }

    /// The size a batch of `size` rows is padded up to: the smallest allowed size that holds it.
    pub fn padded_size(&self, size: usize) -> usize {
        self.allowed_batch_sizes
            .iter()
            .copied()
            .find(|&allowed| allowed >= size)
            .unwrap_or(size)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<BatchingParams> {
        BatchingParams::parse(text, "test")
    }

    #[test]
    fn defaults_are_tf_servings() {
        let params = parse("").unwrap();
        assert_eq!(params.max_batch_size, 1000);
        assert_eq!(params.max_execution_batch_size, 1000);
        assert_eq!(params.batch_timeout, Duration::ZERO);
        assert_eq!(params.max_enqueued_batches, 10);
        assert_eq!(params.num_batch_threads, cpu_count());
        assert!(params.allowed_batch_sizes.is_empty());
        assert!(!params.pad_variable_length_inputs);
        assert!(!params.enable_large_batch_splitting);
        assert_eq!(
            BatchingParams::default().thread_pool_name,
            "model_server_batch_threads"
        );
    }

    #[test]
    fn tf_serving_fixture_parses() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../tests/fixtures/tf-serving-testdata/batching_config.txt");
        let params = BatchingParams::from_file(&path).unwrap();
        assert_eq!(params.max_batch_size, 128);
        assert_eq!(params.batch_timeout, Duration::ZERO);
        assert_eq!(params.max_enqueued_batches, 1_000_000);
        assert_eq!(params.num_batch_threads, 8);
    }

    #[test]
    fn start_up_checks() {
        let err =
            parse("max_batch_size { value: 8 } allowed_batch_sizes: 2 allowed_batch_sizes: 4")
                .unwrap_err();
        assert!(
            err.message.contains(
                "Last entry in allowed_batch_sizes must match max_batch_size; last entry was 4; expected 8"
            ),
            "{err}"
        );
        // Without max_batch_size the default (1000) is what the last entry must match.
        assert!(parse("allowed_batch_sizes: 8").is_err());
        assert!(parse("allowed_batch_sizes: 1000").is_ok());
        let err = parse("max_batch_size { value: 8 } allowed_batch_sizes: 4 allowed_batch_sizes: 2 allowed_batch_sizes: 8")
            .unwrap_err();
        assert!(err.message.contains("monotonically increasing"), "{err}");
        for bad in [
            "max_batch_size { value: 0 }",
            "num_batch_threads { value: 0 }",
            "num_batch_threads { value: 100000000 }",
            "batch_timeout_micros { value: -1 }",
            "max_enqueued_batches { value: -3 }",
            "max_batch_size { value: 4 } allowed_batch_sizes: 0 allowed_batch_sizes: 4",
        ] {
            let err = parse(bad).unwrap_err();
            assert_eq!(err.code, crate::Code::InvalidArgument, "{bad}");
        }
        let err = parse("max_batch_size { value: 4 } enable_large_batch_splitting { value: true } max_execution_batch_size { value: 8 }").unwrap_err();
        assert!(err.message.contains("max_execution_batch_size"), "{err}");
        // max_enqueued_batches 0 is rewritten to 1 (SharedBatchScheduler::AddQueue).
        assert_eq!(
            parse("max_enqueued_batches { value: 0 }")
                .unwrap()
                .max_enqueued_batches,
            1
        );
        let err = parse("max_batch_size { value: 8").unwrap_err();
        assert!(
            err.message
                .contains("Could not parse BatchingParameters in test"),
            "{err}"
        );
        let err = parse("max_batch_size: 8").unwrap_err();
        assert_eq!(err.code, crate::Code::InvalidArgument);
    }

    #[test]
    fn splitting_parameters() {
        let params = parse(
            "max_batch_size { value: 64 } enable_large_batch_splitting { value: true } max_execution_batch_size { value: 16 } allowed_batch_sizes: 8 allowed_batch_sizes: 16",
        )
        .unwrap();
        assert_eq!(params.max_batch_size, 64);
        assert_eq!(params.max_execution_batch_size, 16);
        let err = parse(
            "max_batch_size { value: 64 } enable_large_batch_splitting { value: true } max_execution_batch_size { value: 16 } allowed_batch_sizes: 8",
        )
        .unwrap_err();
        assert!(
            err.message
                .contains("must be equal to max_execution_batch_size"),
            "{err}"
        );
    }

    #[test]
    fn padding_rounds_up_to_the_next_allowed_size() {
        let params = parse("max_batch_size { value: 8 } allowed_batch_sizes: 2 allowed_batch_sizes: 4 allowed_batch_sizes: 8").unwrap();
        assert_eq!(
            (1..=8).map(|n| params.padded_size(n)).collect::<Vec<_>>(),
            [2, 2, 4, 4, 8, 8, 8, 8]
        );
        assert_eq!(parse("").unwrap().padded_size(3), 3);
    }
}
