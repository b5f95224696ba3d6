//! What a runtime (TensorFlow, later ONNX Runtime or OpenVINO) must provide to serve a model.

use std::collections::HashMap;
use std::path::Path;

use oxserve_proto::tensorflow::SignatureDef;

use crate::error::Result;
use crate::signature::SignatureMap;
use crate::tensor::Tensor;

/// A runtime that loads model directories.
pub trait Backend: Send + Sync {
    /// Loads the model in `dir` (one version directory) with the given tag set.
    fn load(&self, dir: &Path, tags: &[String]) -> Result<Box<dyn Model>>;
}

/// A loaded model. `run` blocks: callers run it on a blocking thread pool, and it must be safe to
/// call from many threads at once.
pub trait Model: Send + Sync {
    fn signatures(&self) -> &SignatureMap;

    /// The SignatureDefs that metadata responses echo: TF Serving returns them as the model file
    /// holds them (dimension names, defaults, sparse and composite encodings, which
    /// [`Model::signatures`] does not keep). Models without SignatureDefs of their own build them
    /// from their signatures.
    fn signature_defs(&self) -> HashMap<String, SignatureDef> {
        self.signatures()
            .iter()
            .map(|(key, signature)| (key.clone(), signature.to_proto()))
            .collect()
    }

    /// Feeds tensors by graph tensor name and fetches the named graph tensors, in order.
    fn run(&self, feeds: Vec<(&str, Tensor)>, fetches: &[&str]) -> Result<Vec<Tensor>>;
}
