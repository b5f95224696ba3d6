//! Classify and regress requests: `FillClassificationRequestFromJson` /
//! `FillRegressionRequestFromJson` (util/json_tensor.cc), which turn JSON objects into
//! `tensorflow.Example`s. Per feature: integers and booleans go to `int64_list` (true = 1), other
//! numbers (with a fraction or exponent, NaN, Infinity) to `float_list`, strings and
//! `{"b64": ...}` objects to `bytes_list`; a list mixes only values of one kind.

use std::collections::HashMap;

use bytes::Bytes;
use oxserve_core::{Error, Result};
use oxserve_proto::tensorflow::{
    feature, BytesList, Example, Feature, Features, FloatList, Int64List,
};

use super::base64;
use super::dom::{self, Number, Value};

/// A decoded classify or regress request.
#[derive(Clone, Debug, PartialEq)]
pub struct ExamplesRequestJson {
    /// The request's `signature_name`, "" when absent.
    pub signature_name: String,
    /// The "context" example, when present (TF Serving then sends an `ExampleListWithContext`).
    pub context: Option<Example>,
    pub examples: Vec<Example>,
}

/// "Unexpected element type in feature: <name> expecting type: <kind>".
fn incompatible_kind(name: &str, kind: &feature::Kind) -> Error {
    let kind = match kind {
        feature::Kind::BytesList(_) => "bytes",
        feature::Kind::FloatList(_) => "float",
        feature::Kind::Int64List(_) => "int64",
    };
    Error::invalid_argument(format!(
        "Unexpected element type in feature: {name} expecting type: {kind}"
    ))
}

fn unexpected_type(name: &str, v: &Value) -> Error {
    Error::invalid_argument(format!(
        "Feature: {name} has element with unexpected JSON type: {}",
        v.type_string()
    ))
}

fn bytes_list<'a>(kind: &'a mut Option<feature::Kind>, name: &str) -> Result<&'a mut Vec<Bytes>> {
    match kind.get_or_insert_with(|| feature::Kind::BytesList(BytesList::default())) {
        feature::Kind::BytesList(list) => Ok(&mut list.value),
        other => Err(incompatible_kind(name, other)),
    }
}

fn float_list<'a>(kind: &'a mut Option<feature::Kind>, name: &str) -> Result<&'a mut Vec<f32>> {
    match kind.get_or_insert_with(|| feature::Kind::FloatList(FloatList::default())) {
        feature::Kind::FloatList(list) => Ok(&mut list.value),
        other => Err(incompatible_kind(name, other)),
    }
}

fn int64_list<'a>(kind: &'a mut Option<feature::Kind>, name: &str) -> Result<&'a mut Vec<i64>> {
    match kind.get_or_insert_with(|| feature::Kind::Int64List(Int64List::default())) {
        feature::Kind::Int64List(list) => Ok(&mut list.value),
        other => Err(incompatible_kind(name, other)),
    }
}

/// `AddValueToFeature`.
fn add_value_to_feature(v: &Value, name: &str, kind: &mut Option<feature::Kind>) -> Result<()> {
    match v {
        Value::Null | Value::Array(_) => return Err(unexpected_type(name, v)),
        Value::Bool(b) => int64_list(kind, name)?.push(*b as i64),
        Value::Object(_) => {
            if v.base64_payload().is_none() {
                return Err(unexpected_type(name, v));
            }
            let list = bytes_list(kind, name)?;
            let text = v.base64_payload().unwrap_or_default();
            let decoded = base64::decode(text)
                .ok_or_else(|| Error::invalid_argument("Unable to base64 decode"))?;
            list.push(Bytes::from(decoded));
        }
        Value::String(s) => bytes_list(kind, name)?.push(Bytes::copy_from_slice(s)),
        Value::Number(n) => {
            if n.is_double() {
                float_list(kind, name)?.push(n.as_f64() as f32);
            } else {
                let list = int64_list(kind, name)?;
                match *n {
                    Number::I(i) => list.push(i),
                    Number::U(u) => match i64::try_from(u) {
                        Ok(i) => list.push(i),
                        Err(_) => {
                            return Err(Error::invalid_argument(format!(
                                "Feature: {name} has uint64 element. Only int64 is supported."
                            )))
                        }
                    },
                    Number::D(_) => {}
                }
            }
        }
    }
    Ok(())
}

/// `MakeExampleFromJsonObject`.
fn make_example(v: &Value) -> Result<Example> {
    let Value::Object(members) = v else {
        return Err(Error::invalid_argument(format!(
            "Example must be JSON object but got JSON {}",
            v.type_string()
        )));
    };
    let mut features: HashMap<String, Feature> = HashMap::with_capacity(members.len());
    for (key, content) in members {
        let name = String::from_utf8_lossy(key).into_owned();
        let mut kind = None;
        match content {
            Value::Array(values) => {
                for value in values {
                    add_value_to_feature(value, &name, &mut kind)?;
                }
            }
            _ => add_value_to_feature(content, &name, &mut kind)?,
        }
        // A repeated name replaces the earlier feature, as the proto map assignment does.
        features.insert(name, Feature { kind });
    }
    Ok(Example {
        features: Some(Features { feature: features }),
    })
}

/// Parses a classify or regress request body exactly as TF Serving's REST API does
/// (`{"signature_name": ..., "context": {...}, "examples": [{...}, ...]}`).
pub fn parse_example_request(body: &[u8]) -> Result<ExamplesRequestJson> {
    let doc = dom::parse_request_document(body)?;
    let signature = dom::signature_name(&doc)?;
    let context = doc.find_member(b"context").map(make_example).transpose()?;
    let Some(examples) = doc.find_member(b"examples") else {
        return Err(dom::format_error(
            &doc,
            "When method is classify, key 'examples' is expected and was not found",
        ));
    };
    let Value::Array(examples) = examples else {
        return Err(dom::format_error(
            &doc,
            "Expecting 'examples' value to be an list/array",
        ));
    };
    if examples.is_empty() {
        return Err(dom::format_error(
            &doc,
            "'examples' value is an empty array",
        ));
    }
    let examples = examples
        .iter()
        .map(make_example)
        .collect::<Result<Vec<_>>>()?;
    Ok(ExamplesRequestJson {
        signature_name: String::from_utf8_lossy(&signature).into_owned(),
        context,
        examples,
    })
}
