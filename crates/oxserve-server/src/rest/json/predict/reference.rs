//! The reference path: TF Serving's code (`util/json_tensor.cc`), step by step, on a parsed
//! document.

use std::collections::{BTreeMap, BTreeSet};

use oxserve_core::{narrow, DType, Error, Result, Tensor, TensorData};

use super::super::base64;
use super::super::dom::{self, Number, Value};
use super::{empty_map_error, int_value, Format, Lookup, PredictRequestJson};

/// `GetDenseTensorShape`: the sizes along the first element of every level.
fn dense_shape(mut v: &Value) -> Vec<usize> {
    let mut shape = Vec::new();
    while let Value::Array(elements) = v {
        shape.push(elements.len());
        match elements.first() {
            Some(first) => v = first,
            None => break,
        }
    }
    shape
}

/// `ShapeToString`: "[2,3]".
fn shape_to_string(shape: &[usize]) -> String {
    let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    format!("[{}]", dims.join(","))
}

/// `JsonDecodeBase64Object`.
fn decode_base64_object(v: &Value) -> Result<Vec<u8>> {
    let Some(text) = v.base64_payload() else {
        return Err(dom::base64_format_error(v));
    };
    base64::decode(text).ok_or_else(|| Error::invalid_argument("Unable to base64 decode"))
}

/// `AddValueToTensor`, with typed buffers instead of a TensorProto. Integer types narrower than
/// 32 bits are range-checked (TF Serving accepts any int32 and wraps it when converting the
/// TensorProto); uint16 is accepted (TF Serving has no case for it and fails with
/// "Conversion of JSON Value: ... to type: uint16").
fn add_value_to_tensor(v: &Value, dtype: DType, data: &mut Option<TensorData>) -> Result<()> {
    let unimplemented = || {
        Error::unimplemented(format!(
            "Conversion of JSON Value: {} to type: {}",
            dom::json_value_to_string(v),
            dtype.name()
        ))
    };
    let Some(data) = data.as_mut() else {
        return Err(unimplemented());
    };
    let number = match v {
        Value::Number(n) => Some(*n),
        _ => None,
    };
    let type_error = || dom::type_error(v, dtype);
    macro_rules! int {
        ($vec:expr, $t:ty, $accept:expr) => {{
            let n = number.ok_or_else(type_error)?;
            let accept: fn(Number) -> bool = $accept;
            if !accept(n) {
                return Err(type_error());
            }
            $vec.push(<$t>::try_from(int_value(n)).map_err(|_| type_error())?);
        }};
    }
    match data {
        // rapidjson's GetFloat(), GetDouble(): any number, rounded to nearest; a float out of
        // range is infinite (TF Serving has taken those silently since it dropped
        // IsLosslessDecimal; its REST guide's "Floating Point Precision").
        TensorData::Float(vec) => vec.push(number.ok_or_else(type_error)?.as_f64() as f32),
        TensorData::Double(vec) => vec.push(number.ok_or_else(type_error)?.as_f64()),
        TensorData::Half(vec) => vec.push(narrow::f16_from_f64(
            number.ok_or_else(type_error)?.as_f64(),
        )),
        TensorData::BFloat16(vec) => vec.push(narrow::bf16_from_f64(
            number.ok_or_else(type_error)?.as_f64(),
        )),
        TensorData::Complex64(_) | TensorData::Complex128(_) => return Err(unimplemented()),
        TensorData::Int32(vec) => int!(vec, i32, Number::is_int),
        TensorData::Int16(vec) => int!(vec, i16, Number::is_int),
        TensorData::Int8(vec) => int!(vec, i8, Number::is_int),
        TensorData::UInt8(vec) => int!(vec, u8, Number::is_int),
        TensorData::UInt16(vec) => int!(vec, u16, Number::is_uint),
        TensorData::UInt32(vec) => int!(vec, u32, Number::is_uint),
        TensorData::Int64(vec) => int!(vec, i64, Number::is_int64),
        TensorData::UInt64(vec) => match number {
            Some(n @ Number::U(u)) if n.is_uint64() => vec.push(u),
            _ => return Err(type_error()),
        },
        TensorData::Bool(vec) => match v {
            Value::Bool(b) => vec.push(*b),
            _ => return Err(type_error()),
        },
        TensorData::String(vec) => match v {
            Value::String(s) => vec.push(s.clone()),
            _ => return Err(type_error()),
        },
    }
    Ok(())
}

/// `FillTensorProto`.
fn fill_tensor(
    v: &Value,
    level: usize,
    shape: &[usize],
    dtype: DType,
    data: &mut Option<TensorData>,
    count: &mut usize,
) -> Result<()> {
    let rank = shape.len();
    let Value::Array(elements) = v else {
        if level != rank {
            return Err(Error::invalid_argument(format!(
                "JSON Value: {} found at incorrect level: {} in the JSON DOM. Expected at level: {}",
                dom::json_value_to_string(v),
                level + 1,
                rank
            )));
        }
        if v.is_object() {
            if dtype != DType::String {
                return Err(dom::type_error(v, dtype));
            }
            let bytes = decode_base64_object(v)?;
            if let Some(TensorData::String(vec)) = data.as_mut() {
                vec.push(bytes);
            }
        } else {
            add_value_to_tensor(v, dtype, data)?;
        }
        *count += 1;
        return Ok(());
    };
    if level >= rank {
        return Err(Error::invalid_argument(format!(
            "Encountered list at unexpected level: {level} expected < {rank}"
        )));
    }
    if elements.len() != shape[level] {
        return Err(Error::invalid_argument(format!(
            "Encountered list at unexpected size: {} at level: {} expected size: {}",
            elements.len(),
            level,
            shape[level]
        )));
    }
    for e in elements {
        fill_tensor(e, level + 1, shape, dtype, data, count)?;
    }
    Ok(())
}

/// One tensor of a row request being assembled (`tensor_map`, `size_map`, `shape_map` entries).
struct RowTensor {
    dtype: DType,
    data: Option<TensorData>,
    size: Option<usize>,
    shape: Vec<usize>,
}

/// `AddInstanceItem`.
fn add_instance_item(
    item: &Value,
    name: &str,
    inputs: &[(String, DType)],
    tensors: &mut BTreeMap<String, RowTensor>,
) -> Result<()> {
    let Some((_, dtype)) = inputs.iter().find(|(n, _)| n == name) else {
        return Err(Error::invalid_argument(format!(
            "JSON object: does not have named input: {name}"
        )));
    };
    let t = tensors
        .entry(name.to_string())
        .or_insert_with(|| RowTensor {
            dtype: *dtype,
            data: TensorData::with_capacity(*dtype, 0).ok(),
            size: None,
            shape: Vec::new(),
        });
    let shape = dense_shape(item);
    let mut size = 0;
    fill_tensor(item, 0, &shape, t.dtype, &mut t.data, &mut size)?;
    match t.size {
        None => {
            t.size = Some(size);
            t.shape = shape;
        }
        Some(expected) if expected != size => {
            return Err(Error::invalid_argument(format!(
                "Expecting tensor size: {expected} but got: {size}"
            )));
        }
        Some(_) if t.shape != shape => {
            return Err(Error::invalid_argument(format!(
                "Expecting shape {} but got: {}",
                shape_to_string(&t.shape),
                shape_to_string(&shape)
            )));
        }
        Some(_) => {}
    }
    Ok(())
}

/// Builds a tensor the way `Tensor::FromProto` reads a TensorProto: values beyond the shape's
/// element count (only possible with duplicate keys in an instance) are ignored.
fn finish_tensor(shape: Vec<usize>, dtype: DType, data: Option<TensorData>) -> Result<Tensor> {
    let mut data = match data {
        Some(data) => data,
        None => TensorData::with_capacity(dtype, 0)?,
    };
    let n = oxserve_core::tensor::element_count(&shape)?;
    oxserve_core::for_each_data!(&mut data, v => v.truncate(n));
    Tensor::new(shape, data)
}

/// `FillTensorMapFromInstancesList`.
fn row_reference(elements: &[Value], inputs: &[(String, DType)]) -> Result<Vec<(String, Tensor)>> {
    let first = &elements[0];
    if !first.is_object() && inputs.len() > 1 {
        return Err(Error::invalid_argument(
            "instances is a plain list, but expecting list of objects as multiple input tensors \
             required as per tensorinfo_map",
        ));
    }
    let is_element_object = |v: &Value| v.is_object() && v.base64_payload().is_none();
    let elements_are_objects = is_element_object(first);
    let input_names: BTreeSet<&str> = inputs.iter().map(|(n, _)| n.as_str()).collect();
    let mut tensors: BTreeMap<String, RowTensor> = BTreeMap::new();
    for (i, elem) in elements.iter().enumerate() {
        if elements_are_objects {
            let Value::Object(members) = elem else {
                return Err(Error::invalid_argument(format!(
                    "Expecting object but got list at item {i} of input list"
                )));
            };
            if !is_element_object(elem) {
                return Err(Error::invalid_argument(format!(
                    "Expecting object but got list at item {i} of input list"
                )));
            }
            let mut keys: BTreeSet<String> = BTreeSet::new();
            for (key, value) in members {
                let name = String::from_utf8_lossy(key).into_owned();
                keys.insert(name.clone());
                add_instance_item(value, &name, inputs, &mut tensors).map_err(|e| {
                    Error::invalid_argument(format!(
                        "Failed to process element: {i} key: {name} of 'instances' list. Error: {}",
                        dom::status_to_string(&e)
                    ))
                })?;
            }
            if keys
                .iter()
                .map(String::as_str)
                .ne(input_names.iter().copied())
            {
                return Err(Error::invalid_argument(format!(
                    "Failed to process element: {i} of 'instances' list. JSON object: {} must only \
                     have keys: {}",
                    dom::json_value_to_string(elem),
                    input_names.iter().copied().collect::<Vec<_>>().join(",")
                )));
            }
        } else {
            if is_element_object(elem) {
                return Err(Error::invalid_argument(format!(
                    "Expecting value/list but got object at item {i} of input list"
                )));
            }
            let name = &inputs[0].0;
            add_instance_item(elem, name, inputs, &mut tensors).map_err(|e| {
                Error::invalid_argument(format!(
                    "Failed to process element: {i} of 'instances' list. Error: {}",
                    dom::status_to_string(&e)
                ))
            })?;
        }
    }
    let count = elements.len();
    tensors
        .into_iter()
        .map(|(name, t)| {
            let mut shape = Vec::with_capacity(t.shape.len() + 1);
            shape.push(count);
            shape.extend_from_slice(&t.shape);
            Ok((name, finish_tensor(shape, t.dtype, t.data)?))
        })
        .collect()
}

/// One columnar tensor.
fn columnar_tensor(v: &Value, dtype: DType) -> Result<Tensor> {
    let shape = dense_shape(v);
    let mut data = TensorData::with_capacity(dtype, 0).ok();
    let mut count = 0;
    fill_tensor(v, 0, &shape, dtype, &mut data, &mut count)?;
    finish_tensor(shape, dtype, data)
}

/// `FillTensorMapFromInputsMap`.
fn columnar_reference(v: &Value, inputs: &[(String, DType)]) -> Result<Vec<(String, Tensor)>> {
    if !v.is_object() || v.base64_payload().is_some() {
        if inputs.len() > 1 {
            return Err(Error::invalid_argument(
                "inputs is a plain value/list, but expecting an object as multiple input tensors \
                 required as per tensorinfo_map",
            ));
        }
        let (name, dtype) = &inputs[0];
        return Ok(vec![(name.clone(), columnar_tensor(v, *dtype)?)]);
    }
    inputs
        .iter()
        .map(|(name, dtype)| {
            let item = v.find_member(name.as_bytes()).ok_or_else(|| {
                Error::invalid_argument(format!("Missing named input: {name} in 'inputs' object."))
            })?;
            Ok((name.clone(), columnar_tensor(item, *dtype)?))
        })
        .collect()
}

/// `FillPredictRequestFromJson`, literally.
pub(crate) fn parse_reference(body: &[u8], lookup: &mut Lookup<'_>) -> Result<PredictRequestJson> {
    let doc = dom::parse_request_document(body)?;
    let signature = dom::signature_name(&doc)?;
    let inputs = lookup(&signature)?;
    if inputs.is_empty() {
        return Err(empty_map_error(&signature));
    }
    let signature_name = String::from_utf8_lossy(&signature).into_owned();
    let instances = doc.find_member(b"instances");
    let columns = doc.find_member(b"inputs");
    if let Some(instances) = instances {
        if columns.is_some() {
            return Err(dom::format_error(
                &doc,
                "Not formatted correctly expecting only one of 'inputs' or 'instances' keys to exist ",
            ));
        }
        let Value::Array(elements) = instances else {
            return Err(dom::format_error(
                &doc,
                "Excepting 'instances' to be an list/array",
            ));
        };
        if elements.is_empty() {
            return Err(dom::format_error(&doc, "No values in 'instances' array"));
        }
        let inputs = row_reference(elements, &inputs)?;
        return Ok(PredictRequestJson {
            signature_name,
            format: Format::Row,
            inputs,
        });
    }
    if let Some(columns) = columns {
        let inputs = columnar_reference(columns, &inputs)?;
        return Ok(PredictRequestJson {
            signature_name,
            format: Format::Columnar,
            inputs,
        });
    }
    Err(Error::invalid_argument(
        "Missing 'inputs' or 'instances' key",
    ))
}
