//! The protocol- and runtime-independent heart of oxserve.

pub mod backend;
pub mod batching;
pub mod deadline;
pub mod dtype;
pub mod error;
pub mod inference;
pub mod manager;
pub mod metrics;
pub mod narrow;
pub mod servable;
pub mod signature;
pub mod tensor;
pub mod tfrecord;
mod threads;

pub use backend::{Backend, Model};
pub use dtype::DType;
pub use error::{Code, Error, Result};
pub use half::{bf16, f16};
pub use manager::{
    ManagerOptions, ModelManager, ModelSpec, ModelSummary, VersionRequest, VersionState,
    VersionStatus,
};
pub use servable::{NamedTensors, Servable};
pub use signature::{Signature, SignatureMap, TensorSpec};
pub use tensor::{Tensor, TensorData};
