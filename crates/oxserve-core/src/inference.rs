//! Classify, Regress and MultiInference: tf.Examples serialized into a signature's single string
//! input, and the `classes`/`scores` or `outputs` tensors read back, following TF Serving's
//! classifier, regressor and multi-inference runner (its tasks checked first, then one run).

use oxserve_proto::tensorflow::serving::{InferenceTask, ModelSpec};
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

/// A Classify or Regress task on one signature, checked as TF Serving's
/// `PreProcessClassification` and `PreProcessRegression` check it: the graph tensors to feed
/// the serialized examples to and to fetch.
pub enum Task<'a> {
    Classify {
        input: &'a str,
        classes: Option<&'a str>,
        scores: Option<&'a str>,
    },
    Regress {
        input: &'a str,
        outputs: &'a str,
    },
}

/// A task's answer: each example's classes, or each example's value.
#[derive(Clone, Debug, PartialEq)]
pub enum TaskResult {
    Classes(Vec<Vec<Class>>),
    Values(Vec<f32>),
}

impl<'a> Task<'a> {
    /// `PreProcessClassification`.
    pub fn classification(signature: &'a Signature) -> Result<Task<'a>> {
        check_example_method(signature, "classification", CLASSIFY_METHOD)?;
        let count = signature.outputs.len();
        if signature.inputs.len() != 1 {
            return Err(Error::invalid_argument("Expected one input Tensor."));
        }
        if count != 1 && count != 2 {
            return Err(Error::invalid_argument(format!(
                "Expected one or two output Tensors, found {count}"
            )));
        }
        let input = example_input(signature, "classification")?;
        let output = |alias| signature.outputs.get(alias).map(|spec| spec.name.as_str());
        let (classes, scores) = (output(CLASSES), output(SCORES));
        if classes.is_none() && scores.is_none() {
            return Err(Error::invalid_argument(format!(
                "Expected classification signature outputs to contain at least one of \"{CLASSES}\" or \"{SCORES}\". Signature was: {}",
                describe(signature)
            )));
        }
        Ok(Task::Classify {
            input,
            classes,
            scores,
        })
    }

    /// `PreProcessRegression`.
    pub fn regression(signature: &'a Signature) -> Result<Task<'a>> {
        check_example_method(signature, "regression", REGRESS_METHOD)?;
        if signature.inputs.len() != 1 {
            return Err(Error::invalid_argument("Expected one input Tensor."));
        }
        if signature.outputs.len() != 1 {
            return Err(Error::invalid_argument("Expected one output Tensor."));
        }
        let input = example_input(signature, "regression")?;
        let outputs = signature.outputs.get(OUTPUTS).ok_or_else(|| {
            Error::invalid_argument(format!(
                "No regression outputs found in SignatureDef: {}",
                describe(signature)
            ))
        })?;
        Ok(Task::Regress {
            input,
            outputs: &outputs.name,
        })
    }

    /// The graph tensor the serialized examples feed.
    pub fn input(&self) -> &'a str {
        match self {
            Task::Classify { input, .. } | Task::Regress { input, .. } => input,
        }
    }

    fn fetches(&self) -> impl Iterator<Item = &'a str> {
        let (first, second) = match *self {
            Task::Classify {
                classes, scores, ..
            } => (classes, scores),
            Task::Regress { outputs, .. } => (Some(outputs), None),
        };
        first.into_iter().chain(second)
    }

    /// `PostProcessClassificationResult` or `PostProcessRegressionResult`, on the run's outputs
    /// by tensor name.
    fn read<'t>(&self, output: impl Fn(&str) -> &'t Tensor, batch: usize) -> Result<TaskResult> {
        match *self {
            Task::Classify {
                classes, scores, ..
            } => read_classes(classes.map(&output), scores.map(&output), batch)
                .map(TaskResult::Classes),
            Task::Regress { outputs, .. } => {
                read_values(output(outputs), batch).map(TaskResult::Values)
            }
        }
    }
}

/// The graph tensor of the `inputs` alias, which Classify and Regress feed.
fn example_input<'a>(signature: &'a Signature, what: &str) -> Result<&'a str> {
    signature
        .inputs
        .get(INPUTS)
        .map(|spec| spec.name.as_str())
        .ok_or_else(|| {
            Error::invalid_argument(format!(
                "No {what} inputs found in SignatureDef: {}",
                describe(signature)
            ))
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

/// The signature a Classify or Regress request names.
fn example_signature<'a>(servable: &'a Servable, signature_name: &str) -> Result<&'a Signature> {
    let key = signature_key(signature_name);
    servable.signatures().get(key).ok_or_else(|| {
        Error::invalid_argument(format!("No signature was found with the name: {key}"))
    })
}

/// Runs tasks that feed the same tensor in one run of the model (TF Serving's
/// `PerformOneShotTensorComputation`, with every task's outputs fetched once), on behalf of
/// API `api`, and reads each task's answer.
pub fn run_tasks(
    servable: &Servable,
    api: &'static str,
    tasks: &[Task<'_>],
    context: Option<&Example>,
    examples: &[Example],
) -> Result<Vec<TaskResult>> {
    let Some(first) = tasks.first() else {
        return Ok(Vec::new());
    };
    let input = serialize_examples(context, examples)?;
    crate::metrics::record_example_count(&servable.name, examples.len());
    let fetches: Vec<&str> = tasks
        .iter()
        .flat_map(Task::fetches)
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    let outputs = servable.run_graph(api, vec![(first.input(), input)], &fetches)?;
    let output = |name: &str| {
        let i = fetches.iter().position(|f| *f == name);
        &outputs[i.expect("every task's outputs are fetched")]
    };
    tasks
        .iter()
        .map(|task| task.read(output, examples.len()))
        .collect()
}

/// TF Serving's Classify.
pub fn classify(
    servable: &Servable,
    signature_name: &str,
    context: Option<&Example>,
    examples: &[Example],
) -> Result<Vec<Vec<Class>>> {
    let task = Task::classification(example_signature(servable, signature_name)?)?;
    match run_tasks(servable, "Classify", &[task], context, examples)?.pop() {
        Some(TaskResult::Classes(classes)) => Ok(classes),
        _ => Err(Error::internal("classification produced no result")),
    }
}

/// TF Serving's Regress.
pub fn regress(
    servable: &Servable,
    signature_name: &str,
    context: Option<&Example>,
    examples: &[Example],
) -> Result<Vec<f32>> {
    let task = Task::regression(example_signature(servable, signature_name)?)?;
    match run_tasks(servable, "Regress", &[task], context, examples)?.pop() {
        Some(TaskResult::Values(values)) => Ok(values),
        _ => Err(Error::internal("regression produced no result")),
    }
}

/// TF Serving's MultiInference on `servable`, the model of the first task: every task checked
/// (one model, distinct signatures, one input tensor), then one run for all of them.
pub fn multi_inference(
    servable: &Servable,
    tasks: &[InferenceTask],
    context: Option<&Example>,
    examples: &[Example],
) -> Result<Vec<TaskResult>> {
    let mut model_name = "";
    let mut signatures = std::collections::BTreeSet::new();
    let mut checked = Vec::with_capacity(tasks.len());
    for task in tasks {
        let spec = task_spec(task);
        if spec.name.is_empty() {
            return Err(Error::invalid_argument(
                "Found ModelSpec with an empty model name.",
            ));
        }
        if model_name.is_empty() {
            model_name = &spec.name;
        } else if model_name != spec.name {
            return Err(Error::invalid_argument(
                "All ModelSpecs in a MultiInferenceRequest must access the same model name.",
            ));
        }
        let key = signature_key(&spec.signature_name);
        if !signatures.insert(key) {
            return Err(Error::invalid_argument(format!(
                "Duplicate evaluation of signature: {key}"
            )));
        }
        let signature = servable.signatures().get(key).ok_or_else(|| {
            Error::invalid_argument(format!(
                "Requested signature not found in model graph: {key}"
            ))
        })?;
        let checked_task = match task.method_name.as_str() {
            CLASSIFY_METHOD => Task::classification(signature)?,
            REGRESS_METHOD => Task::regression(signature)?,
            other => {
                return Err(Error::unimplemented(format!(
                    "Unsupported signature method_name: {other}"
                )))
            }
        };
        if checked
            .first()
            .is_some_and(|first: &Task| first.input() != checked_task.input())
        {
            return Err(Error::invalid_argument(
                "Input tensor must be the same for all Signatures.",
            ));
        }
        checked.push(checked_task);
    }
    run_tasks(servable, "MultiInference", &checked, context, examples)
}

/// A task's model spec; a missing one is the empty spec, as protobuf's default instance.
pub fn task_spec(task: &InferenceTask) -> &ModelSpec {
    static EMPTY: ModelSpec = ModelSpec {
        name: String::new(),
        signature_name: String::new(),
        version_choice: None,
    };
    task.model_spec.as_ref().unwrap_or(&EMPTY)
}

/// `PostProcessClassificationResult`.
fn read_classes(
    classes: Option<&Tensor>,
    scores: Option<&Tensor>,
    batch: usize,
) -> Result<Vec<Vec<Class>>> {
    let classes = classes
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
    let scores = scores
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

/// `PostProcessRegressionResult`.
fn read_values(tensor: &Tensor, batch: usize) -> Result<Vec<f32>> {
    let shape = tensor.shape();
    if !(shape.len() == 1 || (shape.len() == 2 && shape[1] == 1)) {
        return Err(Error::invalid_argument(format!(
            "Expected output Tensor shape to be either [batch_size] or [batch_size, 1] but got {}",
            shape_string(shape)
        )));
    }
    if shape[0] != batch {
        return Err(Error::invalid_argument(format!(
            "Input batch size did not match output batch size: {batch} vs. {}",
            shape[0]
        )));
    }
    match tensor.data() {
        TensorData::Float(values) => Ok(values.clone()),
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
