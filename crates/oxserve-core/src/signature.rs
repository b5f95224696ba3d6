//! SignatureDefs as the server uses them: aliases mapped to graph tensor names, dtypes and shapes.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};

use oxserve_proto::tensorflow::tensor_info::Encoding;
use oxserve_proto::tensorflow::{SignatureDef, TensorInfo, TensorProto, TensorShapeProto};

use crate::dtype::DType;
use crate::error::{Error, Result};

/// The signature TF Serving uses when a request names none.
pub const DEFAULT_SIGNATURE: &str = "serving_default";
pub const PREDICT_METHOD: &str = "tensorflow/serving/predict";
pub const CLASSIFY_METHOD: &str = "tensorflow/serving/classify";
pub const REGRESS_METHOD: &str = "tensorflow/serving/regress";

/// `--enable_signature_method_name_check`. Process-wide and set once at start-up, as TF Serving's
/// `SetSignatureMethodNameCheckFeature` is: it is a property of the server, not of a model.
static METHOD_NAME_CHECK: AtomicBool = AtomicBool::new(false);

/// Turns TF Serving's signature method-name checks on or off (off by default: TF2 exports name
/// every signature `tensorflow/serving/predict`, classification and regression ones included).
pub fn set_method_name_check(enabled: bool) {
    METHOD_NAME_CHECK.store(enabled, Ordering::Relaxed);
}

/// With the method-name check on, Predict takes predict, classify and regress signatures only
/// (TF Serving's `VerifySignature`, an INTERNAL error).
pub fn check_prediction_method(signature: &Signature) -> Result<()> {
    if !METHOD_NAME_CHECK.load(Ordering::Relaxed)
        || [PREDICT_METHOD, CLASSIFY_METHOD, REGRESS_METHOD]
            .contains(&signature.method_name.as_str())
    {
        return Ok(());
    }
    Err(Error::internal(format!(
        "Expected prediction signature method_name to be one of {{{PREDICT_METHOD}, {CLASSIFY_METHOD}, {REGRESS_METHOD}}}. Was: {}",
        signature.method_name
    )))
}

/// With the method-name check on, Classify and Regress take only signatures of their own method
/// (`what`: "classification" or "regression", as in TF Serving's messages).
pub fn check_example_method(signature: &Signature, what: &str, expected: &str) -> Result<()> {
    if !METHOD_NAME_CHECK.load(Ordering::Relaxed) || signature.method_name == expected {
        return Ok(());
    }
    Err(Error::invalid_argument(format!(
        "Expected {what} signature method_name to be {expected}. Was: {}",
        signature.method_name
    )))
}

/// One input or output of a signature (a `TensorInfo`).
#[derive(Clone, Debug, PartialEq)]
pub struct TensorSpec {
    /// The graph tensor name, e.g. `x:0`. Empty for sparse or composite tensors, which
    /// oxserve reports in metadata but cannot feed.
    pub name: String,
    pub dtype: DType,
    /// Dimension sizes, -1 for unknown; `None` when the rank itself is unknown.
    pub shape: Option<Vec<i64>>,
}

impl TensorSpec {
    /// Whether a tensor of `shape` fits this spec from dimension `from` on, as TensorFlow checks
    /// a fed value against its placeholder: any shape when the rank is unknown, else the same
    /// rank and every known size (not -1) equal.
    pub fn fits(&self, shape: &[usize], from: usize) -> bool {
        self.shape.as_deref().is_none_or(|dims| {
            dims.len() == shape.len()
                && dims
                    .iter()
                    .zip(shape)
                    .skip(from)
                    .all(|(&want, &got)| want < 0 || want as u64 == got as u64)
        })
    }
}

/// A `SignatureDef`. Maps are ordered so that messages listing aliases are stable.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct Signature {
    pub method_name: String,
    pub inputs: BTreeMap<String, TensorSpec>,
    pub outputs: BTreeMap<String, TensorSpec>,
    /// Values of inputs a Predict request may leave out (a TF2 function's default arguments).
    pub defaults: BTreeMap<String, TensorProto>,
}

/// All signatures of a model, by key.
pub type SignatureMap = BTreeMap<String, Signature>;

/// The key a request means: TF Serving treats an empty name as `serving_default`.
pub fn signature_key(requested: &str) -> &str {
    if requested.is_empty() {
        DEFAULT_SIGNATURE
    } else {
        requested
    }
}

/// Looks a signature up by the name a request gave, with TF Serving's error.
pub fn find_signature<'a>(signatures: &'a SignatureMap, requested: &str) -> Result<&'a Signature> {
    let key = signature_key(requested);
    signatures.get(key).ok_or_else(|| {
        Error::failed_precondition(format!("Serving signature key \"{key}\" not found."))
    })
}

/// Joins map keys with commas, as TF Serving's messages list them.
pub fn join_keys<V>(map: &BTreeMap<String, V>) -> String {
    map.keys().map(String::as_str).collect::<Vec<_>>().join(",")
}

impl TensorSpec {
    /// From a `TensorInfo`. Sparse and composite tensors keep an empty name.
    pub fn from_proto(info: &TensorInfo) -> TensorSpec {
        let name = match &info.encoding {
            Some(Encoding::Name(name)) => name.clone(),
            _ => String::new(),
        };
        let shape = match &info.tensor_shape {
            Some(shape) if shape.unknown_rank => None,
            Some(shape) => Some(shape.dim.iter().map(|d| d.size).collect()),
            None => None,
        };
        TensorSpec {
            name,
            dtype: DType::from_tf(info.dtype),
            shape,
        }
    }

    /// As a `TensorInfo` (a sparse or composite tensor, kept without its component names,
    /// comes back without an encoding).
    pub fn to_proto(&self) -> TensorInfo {
        let tensor_shape = match &self.shape {
            Some(dims) => TensorShapeProto::from_sizes(dims.iter().copied()),
            None => TensorShapeProto {
                dim: Vec::new(),
                unknown_rank: true,
            },
        };
        TensorInfo {
            dtype: self.dtype.to_tf(),
            tensor_shape: Some(tensor_shape),
            encoding: (!self.name.is_empty()).then(|| Encoding::Name(self.name.clone())),
        }
    }
}

impl Signature {
    /// From a `SignatureDef`.
    pub fn from_proto(def: &SignatureDef) -> Signature {
        let specs = |map: &HashMap<String, TensorInfo>| {
            map.iter()
                .map(|(alias, info)| (alias.clone(), TensorSpec::from_proto(info)))
                .collect()
        };
        Signature {
            method_name: def.method_name.clone(),
            inputs: specs(&def.inputs),
            outputs: specs(&def.outputs),
            defaults: def
                .defaults
                .iter()
                .map(|(alias, value)| (alias.clone(), value.clone()))
                .collect(),
        }
    }

    /// As a `SignatureDef`, for models whose backend keeps no SignatureDef of its own.
    pub fn to_proto(&self) -> SignatureDef {
        let infos = |specs: &BTreeMap<String, TensorSpec>| {
            specs
                .iter()
                .map(|(alias, spec)| (alias.clone(), spec.to_proto()))
                .collect()
        };
        SignatureDef {
            inputs: infos(&self.inputs),
            outputs: infos(&self.outputs),
            method_name: self.method_name.clone(),
            defaults: self
                .defaults
                .iter()
                .map(|(alias, value)| (alias.clone(), value.clone()))
                .collect(),
        }
    }
}

/// Every signature of a `MetaGraphDef`.
pub fn signatures_from_meta_graph(
    meta_graph: &oxserve_proto::tensorflow::MetaGraphDef,
) -> SignatureMap {
    meta_graph
        .signature_def
        .iter()
        .map(|(key, def)| (key.clone(), Signature::from_proto(def)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use oxserve_proto::tensorflow::tensor_shape_proto::Dim;

    #[test]
    fn shapes_fit_known_sizes_from_a_dimension_on() {
        let spec = |shape| TensorSpec {
            name: "x:0".into(),
            dtype: DType::Float,
            shape,
        };
        let batch_of_pairs = spec(Some(vec![4, -1, 2]));
        assert!(batch_of_pairs.fits(&[4, 7, 2], 0));
        assert!(!batch_of_pairs.fits(&[1, 7, 2], 0));
        assert!(batch_of_pairs.fits(&[1, 7, 2], 1));
        assert!(!batch_of_pairs.fits(&[4, 7, 3], 1));
        assert!(!batch_of_pairs.fits(&[4, 7], 1));
        assert!(spec(None).fits(&[1, 2, 3, 4], 0));
        assert!(spec(Some(vec![])).fits(&[], 0));
        assert!(!spec(Some(vec![])).fits(&[1], 0));
    }

    #[test]
    fn signature_defs_round_trip() {
        let mut def = SignatureDef {
            method_name: "tensorflow/serving/predict".into(),
            ..SignatureDef::default()
        };
        def.inputs.insert(
            "x".into(),
            TensorInfo {
                dtype: DType::Float.to_tf(),
                tensor_shape: Some(TensorShapeProto {
                    dim: vec![
                        Dim {
                            size: -1,
                            name: String::new(),
                        },
                        Dim {
                            size: 3,
                            name: String::new(),
                        },
                    ],
                    unknown_rank: false,
                }),
                encoding: Some(Encoding::Name("x:0".into())),
            },
        );
        def.outputs.insert(
            "y".into(),
            TensorInfo {
                dtype: DType::String.to_tf(),
                tensor_shape: Some(TensorShapeProto {
                    dim: Vec::new(),
                    unknown_rank: true,
                }),
                encoding: Some(Encoding::Name("y:0".into())),
            },
        );
        assert_eq!(Signature::from_proto(&def).to_proto(), def);
    }
}
