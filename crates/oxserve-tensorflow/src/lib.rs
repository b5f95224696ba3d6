//! oxserve's TensorFlow backend: runs SavedModels through the TensorFlow C API.
//!
//! The C API is not linked at build time: `libtensorflow_framework.so.2` and
//! `libtensorflow_cc.so.2`, as shipped in the `tensorflow-cpu` 2.21 wheel, are `dlopen`ed at run
//! time (once per process, never closed) and their functions resolved by name (see [`ffi`]).
//!
//! ```no_run
//! use oxserve_core::{Model, Tensor, TensorData};
//! use oxserve_tensorflow::{BackendOptions, TensorFlowBackend};
//!
//! let backend = TensorFlowBackend::new(BackendOptions::default())?;
//! let model = backend.load_model("half_plus_two/123".as_ref(), &["serve".to_string()])?;
//! let x = Tensor::new(vec![3, 1], TensorData::Float(vec![1.0, 2.0, 5.0]))?;
//! let y = model.run(vec![("x:0", x)], &["y:0"])?;
//! # Ok::<(), oxserve_core::Error>(())
//! ```
#![deny(unsafe_code)]
#![deny(unsafe_op_in_unsafe_fn)]
#![warn(clippy::undocumented_unsafe_blocks)]

#[cfg(not(unix))]
compile_error!("oxserve-tensorflow supports Unix targets (Linux, macOS) only");

mod alloc;
mod backend;
mod ffi;
mod graph_shapes;
mod library;

pub use alloc::TensorAligned;
pub use backend::{BackendOptions, TensorFlowBackend, TensorFlowModel};
pub use ffi::parse_tensor_name;
pub use library::{set_tensorflow_env_defaults, LIB_DIR_ENV, LIB_DIR_FILE};

// What the binaries install, so that the tests see the buffers they do.
#[cfg(test)]
#[global_allocator]
static ALLOC: TensorAligned = TensorAligned;
