//! Dynamic batching with TF Serving's semantics (`--enable_batching`), as a [`Model`] wrapper.
//!
//! [`BatchingBackend`] wraps any [`Backend`]: every model it loads comes back wrapped in a
//! [`BatchingModel`], whose `run` queues the call instead of running it. Calls with the same feed
//! tensor names, the same fetch list, dtypes and non-batch dimensions (only the rank when
//! `pad_variable_length_inputs` is on) share a queue; a batch thread concatenates the queued
//! inputs along dimension 0, pads the batch up to the next of `allowed_batch_sizes`, runs the
//! wrapped model once and splits every output back into each call's rows. Nothing above the
//! `Model` trait (the manager, the protocol adapters, classify/regress) knows batching exists.
//!
//! Like TF Serving's `BatchingSession`:
//! - every input must have a dimension 0 of the same size across the call's inputs;
//! - a call larger than `max_batch_size` is refused (INVALID_ARGUMENT); with
//!   `enable_large_batch_splitting` a call larger than `max_execution_batch_size` is split across
//!   batches and its outputs joined back;
//! - a full queue (`max_enqueued_batches`) refuses a call at once with UNAVAILABLE;
//! - the batch threads (`num_batch_threads`) are shared by every model of the backend;
//! - a call whose deadline ([`crate::deadline`]) passes while it is queued gets
//!   DEADLINE_EXCEEDED and is left out of the batch it was in.
//!
//! Unlike TF Serving's sync gRPC threads, a queued call gives back its protocol adapter's
//! call slot ([`release_when_queued`]): the adapter's limit does not cap the batch sizes.

mod params;
mod queue_slot;
mod scheduler;
pub mod tensors;

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

pub use params::{BatchingParams, DEFAULT_MAX_BATCH_SIZE, DEFAULT_MAX_ENQUEUED_BATCHES};
pub use queue_slot::release_when_queued;

use oxserve_proto::tensorflow::SignatureDef;

use crate::backend::{Backend, Model};
use crate::error::{Error, Result};
use crate::signature::SignatureMap;
use crate::tensor::Tensor;
use scheduler::{Handle, Owner, QueueKey, Scheduler};

/// The per-model parameters file read with `--enable_per_model_batching_parameters`.
pub const PER_MODEL_PARAMS_FILE: &str = "batching_params.pbtxt";

/// A backend whose models batch their runs.
pub struct BatchingBackend {
    inner: Arc<dyn Backend>,
    params: BatchingParams,
    per_model: bool,
    scheduler: Scheduler,
}

impl BatchingBackend {
    /// Wraps `inner`; starts `params.num_batch_threads` batch threads shared by all its models.
    pub fn new(inner: Arc<dyn Backend>, params: BatchingParams) -> Result<BatchingBackend> {
        let scheduler = Scheduler::new(params.num_batch_threads, &params.thread_pool_name)?;
        Ok(BatchingBackend {
            inner,
            params,
            per_model: false,
            scheduler,
        })
    }

    /// `--enable_per_model_batching_parameters`: a model version directory holding
    /// `batching_params.pbtxt` is batched with those parameters (the batch threads stay the
    /// shared ones); one without it is not batched, as in TF Serving.
    pub fn with_per_model_parameters(mut self, enabled: bool) -> BatchingBackend {
        self.per_model = enabled;
        self
    }

    pub fn params(&self) -> &BatchingParams {
        &self.params
    }
}

impl Backend for BatchingBackend {
    fn load(&self, dir: &Path, tags: &[String]) -> Result<Box<dyn Model>> {
        let params = if self.per_model {
            let path = dir.join(PER_MODEL_PARAMS_FILE);
            // As TF Serving's FileExists: a directory of that name is there, and fails to read.
            if !path.exists() {
                tracing::info!(model = %dir.display(), "no {PER_MODEL_PARAMS_FILE}: not batching this model");
                return self.inner.load(dir, tags);
            }
            let params = BatchingParams::from_file(&path)?;
            tracing::info!(model = %dir.display(), ?params, "batching with the model's own parameters");
            params
        } else {
            self.params.clone()
        };
        let model = self.inner.load(dir, tags)?;
        tracing::info!(model = %dir.display(), "Wrapping session to perform batch processing");
        Ok(Box::new(BatchingModel::new(
            Arc::from(model),
            params,
            &dir.display().to_string(),
            &self.scheduler,
        )))
    }
}

/// A model whose runs are queued and run in batches. See the module documentation.
pub struct BatchingModel {
    owner: Arc<Owner>,
    scheduler: Handle,
}

impl BatchingModel {
    fn new(
        model: Arc<dyn Model>,
        params: BatchingParams,
        model_path: &str,
        scheduler: &Scheduler,
    ) -> BatchingModel {
        BatchingModel {
            owner: Arc::new(Owner {
                id: scheduler.next_owner_id(),
                model,
                params,
                queued_gauge: crate::metrics::queued_calls_gauge(model_path),
                queued: AtomicUsize::new(0),
            }),
            scheduler: scheduler.handle(),
        }
    }

    pub fn params(&self) -> &BatchingParams {
        &self.owner.params
    }

    /// Requests waiting in this model's queues (pieces of a split request count one each).
    pub fn queued_requests(&self) -> usize {
        self.owner.queued.load(Ordering::Relaxed)
    }
}

impl Drop for BatchingModel {
    fn drop(&mut self) {
        self.scheduler.release(self.owner.id);
    }
}

/// TF Serving's `ComputeTensorBatchSize`: the common dimension 0 of the inputs.
fn batch_size(feeds: &[(&str, Tensor)]) -> Result<usize> {
    if feeds.is_empty() {
        return Err(Error::invalid_argument(
            "Batching Run() must have at least one input tensor",
        ));
    }
    let mut size = None;
    for (_, tensor) in feeds {
        let Some(&rows) = tensor.shape().first() else {
            return Err(Error::invalid_argument(
                "Batching Run() input tensors must have at least one dimension",
            ));
        };
        match size {
            None => size = Some(rows),
            Some(size) if size != rows => {
                return Err(Error::invalid_argument(
                    "Batching Run() input tensors must have equal 0th-dimension size",
                ))
            }
            Some(_) => {}
        }
    }
    Ok(size.unwrap_or(0))
}

impl Model for BatchingModel {
    fn signatures(&self) -> &SignatureMap {
        self.owner.model.signatures()
    }

    fn signature_defs(&self) -> HashMap<String, SignatureDef> {
        self.owner.model.signature_defs()
    }

    fn run(&self, mut feeds: Vec<(&str, Tensor)>, fetches: &[&str]) -> Result<Vec<Tensor>> {
        let size = batch_size(&feeds)?;
        for _ in &feeds {
            crate::metrics::record_input_batch_size(size);
        }
        if size == 0 {
            // Nothing to batch: an empty request runs as it is.
            return self.owner.model.run(feeds, fetches);
        }
        let deadline = crate::deadline::current();
        if deadline.is_some_and(|d| d <= Instant::now()) {
            return Err(Error::deadline_exceeded(
                "Deadline exceeded before the request was queued for batching",
            ));
        }
        feeds.sort_by(|a, b| a.0.cmp(b.0));
        let pad = self.owner.params.pad_variable_length_inputs;
        let key = QueueKey {
            feeds: feeds.iter().map(|(name, _)| name.to_string()).collect(),
            fetches: fetches.iter().map(|name| name.to_string()).collect(),
            inputs: feeds
                .iter()
                .map(|(_, t)| {
                    let dims = if pad {
                        vec![usize::MAX; t.shape().len() - 1]
                    } else {
                        t.shape()[1..].to_vec()
                    };
                    (t.dtype(), dims)
                })
                .collect(),
        };
        let inputs = feeds.into_iter().map(|(_, tensor)| tensor).collect();
        let pending = self
            .scheduler
            .submit(&self.owner, key, inputs, size, deadline)?;
        queue_slot::queued();
        pending.wait()
    }
}

#[cfg(test)]
mod tests;
