//! Classify and Regress: tf.Examples serialized into a signature's single string input, and the
//! `classes`/`scores` or `outputs` tensors read back, following TF Serving's classifier and
//! regressor.

use oxserve_proto::tensorflow::Example;
use prost::Message;

use crate::error::{Error, Result};
use crate::servable::Servable;
use crate::signature::{
    check_example_method, signature_key, Signature, CLASSIFY_METHOD, REGRESS_METHOD,
};
use crate::tensor::{Tensor, TensorData};

pub const CLASSES: &str = "classes";
pub const SCORES: &str = "scores";
pub const OUTPUTS: &str = "outputs";

/// One class of one example's classification.
#[derive(Clone, Debug, PartialEq)]
pub struct Class {
    pub label: String,
    pub score: f32,
}

/// Serializes each example after the context: protobuf merges concatenated messages, so features of
/// the example override those of the context, exactly as TF Serving builds its input tensor.
pub fn serialize_examples(context: Option<&Example>, examples: &[Example]) -> Result<Tensor> {
    if examples.is_empty() {
        return Err(Error::invalid_argument("Input is empty."));
    }
    let context = context.map(Message::encode_to_vec).unwrap_or_default();
    let serialized = examples
        .iter()
        .map(|example| {
            let mut bytes = Vec::with_capacity(context.len() + example.encoded_len());
            bytes.extend_from_slice(&context);
            example.encode_raw(&mut bytes);
            bytes
        })
        .collect();
    Ok(Tensor::vector(TensorData::String(serialized)))
}

/// The bytes [`serialize_examples`] will hold (and TensorFlow's copy of its tensor again): the
/// context is repeated in every example's string, so a large context and many small examples
/// make a tensor far larger than the request.
pub fn serialized_footprint(context: Option<&Example>, examples: &[Example]) -> usize {
    let context = context.map_or(0, Message::encoded_len);
    examples.iter().fold(0usize, |total, example| {
        total
            .saturating_add(size_of::<Vec<u8>>())
            .saturating_add(context)
            .saturating_add(example.encoded_len())
    })
}

pub const INPUTS: &str = "inputs";

/// Finds the signature and applies the checks common to Classify and Regress.
fn example_signature<'a>(
    servable: &'a Servable,
    signature_name: &str,
    what: &str,
    method: &str,
) -> Result<&'a Signature> {
    let key = signature_key(signature_name);
    let signature = servable.signatures().get(key).ok_or_else(|| {
        Error::invalid_argument(format!("No signature was found with the name: {key}"))
    })?;
    check_example_method(signature, what, method)?;
    if signature.inputs.len() != 1 {
        return Err(Error::invalid_argument("Expected one input Tensor."));
    }
    Ok(signature).and_then(|signature| {
        if signature.inputs.contains_key(INPUTS) {
            Ok(signature)
        } else {
            Err(Error::invalid_argument(format!(
                "No {what} inputs found in SignatureDef: {}",
                describe(signature)
            )))
        }
    })
}

/// A one-line description of a signature, standing in for TF's `SignatureDef.DebugString()`.
fn describe(signature: &Signature) -> String {
    let aliases = |map: &std::collections::BTreeMap<String, crate::signature::TensorSpec>| {
        map.iter()
            .map(|(alias, spec)| format!("{alias}: {}", spec.name))
            .collect::<Vec<_>>()
            .join(", ")
    };
    format!(
        "inputs {{{}}} outputs {{{}}} method_name: \"{}\"",
        aliases(&signature.inputs),
        aliases(&signature.outputs),
        signature.method_name
    )
}

/// TF Serving's Classify.
pub fn classify(
    servable: &Servable,
    signature_name: &str,
    context: Option<&Example>,
    examples: &[Example],
) -> Result<Vec<Vec<Class>>> {
    let signature = example_signature(servable, signature_name, "classification", CLASSIFY_METHOD)?;
    let count = signature.outputs.len();
    if count != 1 && count != 2 {
        return Err(Error::invalid_argument(format!(
            "Expected one or two output Tensors, found {count}"
        )));
    }
    let wanted: Vec<String> = [CLASSES, SCORES]
        .into_iter()
        .filter(|alias| signature.outputs.contains_key(*alias))
        .map(String::from)
        .collect();
    if wanted.is_empty() {
        return Err(Error::invalid_argument(format!(
            "Expected classification signature outputs to contain at least one of \"{CLASSES}\" or \"{SCORES}\". Signature was: {}",
            describe(signature)
        )));
    }
    let input = serialize_examples(context, examples)?;
    crate::metrics::record_example_count(&servable.name, examples.len());
    let outputs = servable.predict_api(
        "Classify",
        signature_name,
        vec![(INPUTS.to_string(), input)],
        &wanted,
    )?;
    let find = |alias: &str| outputs.iter().find(|(a, _)| a == alias).map(|(_, t)| t);
    let batch = examples.len();
    let classes = find(CLASSES)
        .map(|tensor| {
            let n = class_count(tensor)?;
            let TensorData::String(labels) = tensor.data() else {
                return Err(Error::invalid_argument(format!(
                    "Expected classes Tensor of DT_STRING. Got: {}",
                    tensor.dtype().proto_name()
                )));
            };
            check_batch(tensor, batch, "classes")?;
            Ok((labels, n))
        })
        .transpose()?;
    let scores = find(SCORES)
        .map(|tensor| {
            let n = class_count(tensor)?;
            let TensorData::Float(values) = tensor.data() else {
                return Err(Error::invalid_argument(format!(
                    "Expected scores Tensor of DT_FLOAT. Got: {}",
                    tensor.dtype().proto_name()
                )));
            };
            check_batch(tensor, batch, "scores")?;
            Ok((values, n))
        })
        .transpose()?;
    let num_classes = match (&classes, &scores) {
        (Some((_, c)), Some((_, s))) if c != s => {
            return Err(Error::invalid_argument(format!(
                "Tensors class and score should match in dim_size(1). Got {c} vs. {s}"
            )))
        }
        (Some((_, n)), _) | (None, Some((_, n))) => *n,
        (None, None) => 0,
    };
    Ok((0..batch)
        .map(|i| {
            (0..num_classes)
                .map(|j| {
                    let k = i * num_classes + j;
                    Class {
                        label: classes
                            .as_ref()
                            .map(|(labels, _)| String::from_utf8_lossy(&labels[k]).into_owned())
                            .unwrap_or_default(),
                        score: scores.as_ref().map_or(0.0, |(values, _)| values[k]),
                    }
                })
                .collect()
        })
        .collect())
}

/// TF Serving's Regress.
pub fn regress(
    servable: &Servable,
    signature_name: &str,
    context: Option<&Example>,
    examples: &[Example],
) -> Result<Vec<f32>> {
    let signature = example_signature(servable, signature_name, "regression", REGRESS_METHOD)?;
    if signature.outputs.len() != 1 {
        return Err(Error::invalid_argument("Expected one output Tensor."));
    }
    if !signature.outputs.contains_key(OUTPUTS) {
        return Err(Error::invalid_argument(format!(
            "No regression outputs found in SignatureDef: {}",
            describe(signature)
        )));
    }
    let input = serialize_examples(context, examples)?;
    crate::metrics::record_example_count(&servable.name, examples.len());
    let outputs = servable.predict_api(
        "Regress",
        signature_name,
        vec![(INPUTS.to_string(), input)],
        &[OUTPUTS.to_string()],
    )?;
    let (_, tensor) = outputs
        .into_iter()
        .next()
        .ok_or_else(|| Error::internal("regression produced no output"))?;
    let shape = tensor.shape().to_vec();
    let batch = examples.len();
    if !(shape.len() == 1 || (shape.len() == 2 && shape[1] == 1)) {
        return Err(Error::invalid_argument(format!(
            "Expected output Tensor shape to be either [batch_size] or [batch_size, 1] but got {}",
            shape_string(&shape)
        )));
    }
    if shape[0] != batch {
        return Err(Error::invalid_argument(format!(
            "Input batch size did not match output batch size: {batch} vs. {}",
            shape[0]
        )));
    }
    match tensor.into_parts().1 {
        TensorData::Float(values) => Ok(values),
        other => Err(Error::invalid_argument(format!(
            "Expected output Tensor of DT_FLOAT.  Got: {}",
            other.dtype().proto_name()
        ))),
    }
}

fn class_count(tensor: &Tensor) -> Result<usize> {
    match tensor.shape() {
        [_, n] => Ok(*n),
        shape => Err(Error::invalid_argument(format!(
            "Expected Tensor shape: [batch_size num_classes] but got {}",
            shape_string(shape)
        ))),
    }
}

fn check_batch(tensor: &Tensor, batch: usize, what: &str) -> Result<()> {
    match tensor.shape().first() {
        Some(&n) if n == batch => Ok(()),
        n => Err(Error::invalid_argument(format!(
            "Expected {what} output batch size of {batch}. Got: {}",
            n.copied().unwrap_or(0)
        ))),
    }
}

fn shape_string(shape: &[usize]) -> String {
    let dims: Vec<String> = shape.iter().map(usize::to_string).collect();
    format!("[{}]", dims.join(","))
}

#[cfg(test)]
mod tests {
    use super::*;
    use oxserve_proto::tensorflow::{feature, Feature, Features, FloatList};

    fn example(key: &str, value: f32) -> Example {
        let feature = Feature {
            kind: Some(feature::Kind::FloatList(FloatList { value: vec![value] })),
        };
        Example {
            features: Some(Features {
                feature: [(key.to_string(), feature)].into_iter().collect(),
            }),
        }
    }

    #[test]
    fn serialized_footprints_count_the_context_once_per_example() {
        let context = example("c", 1.0);
        let examples = [example("x", 2.0), Example::default()];
        let tensor = serialize_examples(Some(&context), &examples).unwrap();
        let TensorData::String(serialized) = tensor.data() else {
            unreachable!("examples serialize into strings")
        };
        let held: usize = serialized
            .iter()
            .map(|s| s.len() + size_of::<Vec<u8>>())
            .sum();
        assert_eq!(serialized_footprint(Some(&context), &examples), held);
        assert_eq!(serialized_footprint(None, &[]), 0);
    }

    #[test]
    fn example_features_override_context_features() {
        let context = example("x", 1.0);
        let tensor = serialize_examples(Some(&context), &[example("x", 2.0)]).unwrap();
        let TensorData::String(serialized) = tensor.data() else {
            panic!("string tensor")
        };
        let merged = Example::decode(&serialized[0][..]).unwrap();
        assert_eq!(merged, example("x", 2.0));
    }

    #[test]
    fn empty_input_is_rejected() {
        assert_eq!(
            serialize_examples(None, &[]).unwrap_err().message,
            "Input is empty."
        );
    }
}
