//! A loaded model version and the signature-level checks TF Serving applies before running it.

use std::collections::{BTreeSet, HashMap};

use oxserve_proto::tensorflow::SignatureDef;

use crate::backend::Model;
use crate::error::{Error, Result};
use crate::signature::{
    check_prediction_method, find_signature, join_keys, Signature, SignatureMap,
};
use crate::tensor::Tensor;

/// One loaded version of one model.
pub struct Servable {
    pub name: String,
    pub version: i64,
    model: Box<dyn Model>,
}

/// Named tensors, keyed by signature alias.
pub type NamedTensors = Vec<(String, Tensor)>;

impl Servable {
    pub fn new(name: String, version: i64, model: Box<dyn Model>) -> Servable {
        Servable {
            name,
            version,
            model,
        }
    }

    pub fn signatures(&self) -> &SignatureMap {
        self.model.signatures()
    }

    /// The SignatureDefs of metadata responses (see [`Model::signature_defs`]).
    pub fn signature_defs(&self) -> HashMap<String, SignatureDef> {
        self.model.signature_defs()
    }

    pub fn signature(&self, requested: &str) -> Result<&Signature> {
        find_signature(self.signatures(), requested)
    }

    /// Runs a signature on alias-keyed inputs and returns the outputs named in `output_filter`
    /// (all outputs, ordered by alias, when it is empty). Blocks.
    pub fn predict(
        &self,
        signature_name: &str,
        inputs: NamedTensors,
        output_filter: &[String],
    ) -> Result<NamedTensors> {
        self.predict_api("Predict", signature_name, inputs, output_filter)
    }

    /// [`Servable::predict`] on behalf of TF Serving API `api` (`Predict`, `Classify`, `Regress`,
    /// `MultiInference`), the label of the run's `runtime_latency` metric.
    pub fn predict_api(
        &self,
        api: &'static str,
        signature_name: &str,
        inputs: NamedTensors,
        output_filter: &[String],
    ) -> Result<NamedTensors> {
        let signature = self.signature(signature_name)?;
        if api == "Predict" {
            check_prediction_method(signature)?;
        }
        check_inputs(signature, &inputs)?;
        let aliases = select_outputs(signature, output_filter)?;
        let mut feeds = Vec::with_capacity(inputs.len());
        for (alias, tensor) in inputs {
            let spec = &signature.inputs[&alias];
            if tensor.dtype() != spec.dtype {
                return Err(Error::invalid_argument(format!(
                    "Expects arg[{}] to be {} but {} is provided",
                    feeds.len(),
                    spec.dtype.name(),
                    tensor.dtype().name()
                )));
            }
            feeds.push((spec.name.as_str(), tensor));
        }
        let fetches: Vec<&str> = aliases
            .iter()
            .map(|alias| signature.outputs[*alias].name.as_str())
            .collect();
        let outputs = self.run_graph(api, feeds, &fetches)?;
        Ok(aliases.into_iter().map(String::from).zip(outputs).collect())
    }

    /// Runs the model on graph tensors, for TF Serving API `api` (the label of the run's
    /// `runtime_latency` metric): feeds by tensor name, and the fetched tensors in order. Blocks.
    pub fn run_graph(
        &self,
        api: &'static str,
        feeds: Vec<(&str, Tensor)>,
        fetches: &[&str],
    ) -> Result<Vec<Tensor>> {
        let started = std::time::Instant::now();
        let outputs = self.model.run(feeds, fetches);
        if outputs.is_ok() {
            crate::metrics::record_runtime_latency(&self.name, api, started.elapsed());
        }
        outputs
    }
}

/// TF Serving's first check of a request's inputs (`VerifyRequestInputsSize`): as many as the
/// signature has, or fewer where it has default values, naming the extra and the missing aliases
/// when not.
pub fn check_input_count(signature: &Signature, sent: &[&str]) -> Result<()> {
    let expected = signature.inputs.len();
    if sent.len() == expected || (sent.len() < expected && !signature.defaults.is_empty()) {
        return Ok(());
    }
    let sent: BTreeSet<&str> = sent.iter().copied().collect();
    let expected: BTreeSet<&str> = signature.inputs.keys().map(String::as_str).collect();
    let join = |set: BTreeSet<&str>| set.into_iter().collect::<Vec<_>>().join(",");
    Err(Error::invalid_argument(format!(
        "input size does not match signature: {}!={} len({{{}}}) != len({{{}}}). Sent extra: {{{}}}. Missing but required: {{{}}}.",
        sent.len(),
        signature.inputs.len(),
        join(sent.clone()),
        join(expected.clone()),
        join(sent.difference(&expected).copied().collect()),
        join(expected.difference(&sent).copied().collect()),
    )))
}

/// TF Serving's checks of the request's input aliases against the signature.
fn check_inputs(signature: &Signature, inputs: &NamedTensors) -> Result<()> {
    let aliases: Vec<&str> = inputs.iter().map(|(alias, _)| alias.as_str()).collect();
    let sent: BTreeSet<&str> = aliases.iter().copied().collect();
    if sent.len() != aliases.len() {
        return Err(Error::invalid_argument("duplicate input tensor alias"));
    }
    check_input_count(signature, &aliases)?;
    if let Some(alias) = sent
        .iter()
        .find(|alias| !signature.inputs.contains_key(**alias))
    {
        return Err(Error::invalid_argument(format!(
            "input tensor alias not found in signature: {alias}. Inputs expected to be in the set {{{}}}.",
            join_keys(&signature.inputs)
        )));
    }
    Ok(())
}

/// The output aliases to fetch: the filter, checked and de-duplicated as TF Serving does.
fn select_outputs<'a>(signature: &'a Signature, filter: &'a [String]) -> Result<Vec<&'a str>> {
    if filter.is_empty() {
        return Ok(signature.outputs.keys().map(String::as_str).collect());
    }
    let mut seen = BTreeSet::new();
    for alias in filter {
        if !signature.outputs.contains_key(alias) {
            return Err(Error::invalid_argument(format!(
                "output tensor alias not found in signature: {alias} Outputs expected to be in the set {{{}}}.",
                join_keys(&signature.outputs)
            )));
        }
        if !seen.insert(alias.as_str()) {
            return Err(Error::invalid_argument(format!(
                "duplicate output tensor alias: {alias}"
            )));
        }
    }
    Ok(filter.iter().map(String::as_str).collect())
}
