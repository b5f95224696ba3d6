//! Responses: `MakeJsonFromTensors`, `MakeJsonFromClassificationResult`,
//! `MakeJsonFromRegressionResult` and the error body, byte for byte as TF Serving writes them
//! (rapidjson `PrettyWriter`, see `pretty.rs`; numbers as in `decimal.rs`).

use oxserve_core::inference::Class;
use oxserve_core::{Error, Result, Tensor, TensorData};

use super::base64;
use super::predict::Format;
use super::pretty::PrettyWriter;

/// TF Serving writes DT_STRING outputs whose alias ends in "_bytes" as `{"b64": ...}`.
fn is_bytes_alias(name: &str) -> bool {
    name.ends_with("_bytes")
}

fn write_b64_object(w: &mut PrettyWriter, bytes: &[u8], scratch: &mut Vec<u8>) {
    scratch.clear();
    base64::encode_into(bytes, scratch);
    w.start_object();
    w.string(b"b64");
    w.string(scratch);
    w.end_object();
}

/// A string element: a JSON string, or `{"b64": ...}` for "_bytes" aliases. Not valid UTF-8 in a
/// plain string output is also written as `{"b64": ...}` (TF Serving copies the raw bytes into the
/// JSON text, which then is not valid UTF-8 and most clients cannot parse it).
fn write_string_element(w: &mut PrettyWriter, s: &[u8], as_bytes: bool, scratch: &mut Vec<u8>) {
    if as_bytes || std::str::from_utf8(s).is_err() {
        write_b64_object(w, s, scratch);
    } else {
        w.string(s);
    }
}

/// `AddSingleValueAndAdvance` for `len` consecutive elements starting at `start`.
fn write_run(
    w: &mut PrettyWriter,
    data: &TensorData,
    start: usize,
    len: usize,
    as_bytes: bool,
    scratch: &mut Vec<u8>,
) {
    let end = start + len;
    match data {
        TensorData::Float(v) => v[start..end].iter().for_each(|&x| w.decimal_f32(x)),
        TensorData::Double(v) => v[start..end].iter().for_each(|&x| w.decimal_f64(x)),
        TensorData::Int8(v) => v[start..end].iter().for_each(|&x| w.int(x as i64)),
        TensorData::Int16(v) => v[start..end].iter().for_each(|&x| w.int(x as i64)),
        TensorData::Int32(v) => v[start..end].iter().for_each(|&x| w.int(x as i64)),
        TensorData::Int64(v) => v[start..end].iter().for_each(|&x| w.int(x)),
        TensorData::UInt8(v) => v[start..end].iter().for_each(|&x| w.int(x as i64)),
        TensorData::UInt16(v) => v[start..end].iter().for_each(|&x| w.int(x as i64)),
        TensorData::UInt32(v) => v[start..end].iter().for_each(|&x| w.uint(x as u64)),
        TensorData::UInt64(v) => v[start..end].iter().for_each(|&x| w.uint(x)),
        // Written as the float they widen to exactly (TF Serving writes neither).
        TensorData::Half(v) => v[start..end]
            .iter()
            .for_each(|&x| w.decimal_f32(x.to_f32())),
        TensorData::BFloat16(v) => v[start..end]
            .iter()
            .for_each(|&x| w.decimal_f32(x.to_f32())),
        // Refused by `check_writable` before anything is written.
        TensorData::Complex64(_) | TensorData::Complex128(_) => {}
        TensorData::Bool(v) => v[start..end].iter().for_each(|&x| w.boolean(x)),
        TensorData::String(v) => {
            for s in &v[start..end] {
                write_string_element(w, s, as_bytes, scratch);
            }
        }
    }
}

/// TF Serving's error for outputs JSON has no form for (complex numbers; TF Serving cannot write
/// half and bfloat16 either, oxserve writes them as floats).
fn check_writable(outputs: &[(String, Tensor)]) -> Result<()> {
    match outputs.iter().find(|(_, t)| {
        matches!(
            t.data(),
            TensorData::Complex64(_) | TensorData::Complex128(_)
        )
    }) {
        Some((_, t)) => Err(Error::invalid_argument(format!(
            "Failed to write JSON value for tensor type: {}",
            t.dtype().name()
        ))),
        None => Ok(()),
    }
}

/// `AddTensorValues`: the values of `tensor` from dimension `dim` on, starting at `*offset`.
fn add_tensor_values(
    w: &mut PrettyWriter,
    tensor: &Tensor,
    as_bytes: bool,
    dim: usize,
    offset: &mut usize,
    scratch: &mut Vec<u8>,
) {
    let shape = tensor.shape();
    if dim >= shape.len() {
        // Scalar values are not enclosed in an array.
        write_run(w, tensor.data(), *offset, 1, as_bytes, scratch);
        *offset += 1;
        return;
    }
    w.start_array();
    if dim == shape.len() - 1 {
        write_run(w, tensor.data(), *offset, shape[dim], as_bytes, scratch);
        *offset += shape[dim];
    } else {
        for _ in 0..shape[dim] {
            add_tensor_values(w, tensor, as_bytes, dim + 1, offset, scratch);
        }
    }
    w.end_array();
}

/// A guess at the size of the JSON text, to allocate the output once.
fn estimate_size(outputs: &[(String, Tensor)]) -> usize {
    let total = outputs.iter().fold(64usize, |total, (name, t)| {
        total.saturating_add(estimate_tensor_size(name, t))
    });
    total.min(1 << 30)
}

fn estimate_tensor_size(name: &str, t: &Tensor) -> usize {
    let mut total = name.len() + 16;
    let per_element = match t.data() {
        TensorData::Float(_) => 14,
        TensorData::Double(_) => 22,
        TensorData::String(v) => {
            let bytes: usize = v.iter().map(Vec::len).sum();
            total = total.saturating_add(bytes.saturating_mul(4) / 3);
            16
        }
        _ => 8,
    };
    // Columnar output puts each value on its own indented line.
    let layout = 4 * (t.shape().len() + 2) + 2;
    total.saturating_add(t.len().saturating_mul(per_element + layout))
}

/// `MakeJsonFromTensors`: `{"predictions": ...}` for [`Format::Row`], `{"outputs": ...}` for
/// [`Format::Columnar`], laid out by rapidjson's PrettyWriter as TF Serving does:
///
/// ```text
/// {
///     "predictions": [2.5, 3.0, 4.5
///     ]
/// }
/// ```
///
/// Outputs are written in the order given (TF Serving iterates a protobuf map, whose order is
/// unspecified; pass them sorted by alias for stable output). In row format every output must
/// have a batch dimension of the same size.
pub fn write_predict_response(outputs: &[(String, Tensor)], format: Format) -> Result<Vec<u8>> {
    if outputs.is_empty() {
        return Err(Error::invalid_argument(
            "Cannot convert empty tensor map to JSON",
        ));
    }
    check_writable(outputs)?;
    let mut w = PrettyWriter::with_capacity(estimate_size(outputs));
    let mut scratch = Vec::new();
    let multiple = outputs.len() > 1;
    match format {
        Format::Row => {
            // Zero rows are `"predictions": []` (a detector that finds nothing; TF Serving's
            // issue #1610).
            let mut batch_size = None;
            for (name, tensor) in outputs {
                let Some(&cur) = tensor.shape().first() else {
                    return Err(Error::invalid_argument(format!(
                        "Tensor name: {name} has no shape information "
                    )));
                };
                if let Some(expecting) = batch_size.filter(|&b| b != cur) {
                    return Err(Error::invalid_argument(format!(
                        "Tensor name: {name} has inconsistent batch size: {cur} expecting: {expecting}"
                    )));
                }
                batch_size = Some(cur);
            }
            let mut offsets = vec![0usize; outputs.len()];
            w.start_object();
            w.string(b"predictions");
            w.start_array();
            for _ in 0..batch_size.unwrap_or(0) {
                if multiple {
                    w.start_object();
                }
                w.set_single_line_array(true);
                for ((name, tensor), offset) in outputs.iter().zip(offsets.iter_mut()) {
                    if multiple {
                        w.string(name.as_bytes());
                    }
                    let as_bytes = is_bytes_alias(name);
                    add_tensor_values(&mut w, tensor, as_bytes, 1, offset, &mut scratch);
                }
                w.set_single_line_array(false);
                if multiple {
                    w.end_object();
                }
            }
            w.end_array();
            w.end_object();
        }
        Format::Columnar => {
            w.start_object();
            w.string(b"outputs");
            if multiple {
                w.start_object();
            }
            for (name, tensor) in outputs {
                if multiple {
                    w.string(name.as_bytes());
                }
                let mut offset = 0;
                add_tensor_values(
                    &mut w,
                    tensor,
                    is_bytes_alias(name),
                    0,
                    &mut offset,
                    &mut scratch,
                );
            }
            if multiple {
                w.end_object();
            }
            w.end_object();
        }
    }
    Ok(w.into_bytes())
}

/// One tensor's values as JSON on one line (`[[2.5], [3.0]]`), written as the REST API writes
/// them (`NaN` and `Infinity` included; `{"b64": ...}` objects for a "_bytes" alias), for
/// `oxserve run` to print. Complex numbers, which REST refuses, are `[re, im]` pairs.
pub fn write_tensor_line(alias: &str, tensor: &Tensor) -> Vec<u8> {
    let pairs;
    let tensor = match complex_as_pairs(tensor) {
        Some(widened) => {
            pairs = widened;
            &pairs
        }
        None => tensor,
    };
    let mut w = PrettyWriter::with_capacity(estimate_tensor_size(alias, tensor).min(1 << 30));
    w.set_single_line_array(true);
    let mut offset = 0;
    add_tensor_values(
        &mut w,
        tensor,
        is_bytes_alias(alias),
        0,
        &mut offset,
        &mut Vec::new(),
    );
    w.into_bytes()
}

/// A complex tensor as real numbers, with a last dimension of 2 (real, imaginary).
fn complex_as_pairs(tensor: &Tensor) -> Option<Tensor> {
    let data = match tensor.data() {
        TensorData::Complex64(v) => TensorData::Float(v.concat()),
        TensorData::Complex128(v) => TensorData::Double(v.concat()),
        _ => return None,
    };
    let mut shape = tensor.shape().to_vec();
    shape.push(2);
    Tensor::new(shape, data).ok()
}

/// One (label, score) pair of a classification.
pub trait LabelScore {
    fn label(&self) -> &[u8];
    fn score(&self) -> f32;
}

impl LabelScore for Class {
    fn label(&self) -> &[u8] {
        self.label.as_bytes()
    }
    fn score(&self) -> f32 {
        self.score
    }
}

impl<L: AsRef<[u8]>> LabelScore for (L, f32) {
    fn label(&self) -> &[u8] {
        self.0.as_ref()
    }
    fn score(&self) -> f32 {
        self.1
    }
}

/// `MakeJsonFromClassificationResult`: `{"results": [[["label", score], ...], ...]}`, one list of
/// (label, score) pairs per example. Labels that are not valid UTF-8 are written as
/// `{"b64": ...}` (TF Serving writes the raw bytes). TF Serving refuses an empty result list
/// ("Cannot convert empty ClassificationResults to JSON"), which cannot happen after a valid
/// request (at least one example); here it gives `{"results": []}`.
pub fn write_classify_response<C: LabelScore>(results: &[Vec<C>]) -> Vec<u8> {
    let mut w =
        PrettyWriter::with_capacity(32 + results.iter().map(|c| c.len() * 32).sum::<usize>());
    let mut scratch = Vec::new();
    w.start_object();
    w.string(b"results");
    w.start_array();
    for classes in results {
        w.set_single_line_array(true);
        w.start_array();
        for class in classes {
            w.start_array();
            write_string_element(&mut w, class.label(), false, &mut scratch);
            w.decimal_f32(class.score());
            w.end_array();
        }
        w.end_array();
        w.set_single_line_array(false);
    }
    w.end_array();
    w.end_object();
    w.into_bytes()
}

/// `MakeJsonFromRegressionResult`: `{"results": [v, ...]}`, one value per example. (TF Serving
/// refuses an empty list, "Cannot convert empty RegressionResults to JSON", which a valid request
/// cannot produce; here it gives `{"results": []}`.)
pub fn write_regress_response(values: &[f32]) -> Vec<u8> {
    let mut w = PrettyWriter::with_capacity(32 + values.len() * 16);
    w.start_object();
    w.string(b"results");
    w.set_single_line_array(true);
    w.start_array();
    for &v in values {
        w.decimal_f32(v);
    }
    w.end_array();
    w.end_object();
    w.into_bytes()
}

/// `MakeJsonFromStatus`: `{"error": "<message>"}` as TF Serving's PrettyWriter lays it out.
pub fn write_error_response(message: &str) -> Vec<u8> {
    let mut w = PrettyWriter::with_capacity(message.len() + 24);
    w.start_object();
    w.string(b"error");
    w.string(message.as_bytes());
    w.end_object();
    w.into_bytes()
}
