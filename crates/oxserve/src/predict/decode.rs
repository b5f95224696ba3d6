//! One input item (a JSON line or a TFRecord record) into one instance: a tensor per signature
//! input with a batch dimension of 1, plus the instance's key. Every problem is an error for that
//! item alone.

use base64::Engine;
use oxserve_core::{bf16, f16, DType, Signature, Tensor, TensorData, TensorSpec};
use oxserve_server::rest::json;

use super::example::{self, Features, Floats, Values};
use super::inputs::Bytes;

/// A decoded instance.
#[derive(Debug)]
pub struct Instance {
    /// The instance key as JSON text, when the input carried one.
    pub key: Option<String>,
    /// One input per signature input, in alias order, each of shape `[1, ...]`.
    pub inputs: Vec<Input>,
    /// The record that [`Input::Packed`] inputs point into (empty when there are none).
    pub record: Bytes,
}

/// One input of an instance.
#[derive(Debug)]
pub enum Input {
    Tensor(Tensor),
    /// A float input whose values are the packed little-endian floats `record[range]` of the
    /// instance's tf.Example record: they are copied once, straight into the batch, instead of
    /// into a tensor of their own first.
    Packed {
        shape: Vec<usize>,
        range: std::ops::Range<usize>,
    },
}

impl Input {
    pub fn dtype(&self) -> DType {
        match self {
            Input::Tensor(t) => t.dtype(),
            Input::Packed { .. } => DType::Float,
        }
    }

    pub fn shape(&self) -> &[usize] {
        match self {
            Input::Tensor(t) => t.shape(),
            Input::Packed { shape, .. } => shape,
        }
    }
}

impl Instance {
    /// Appends the values of input `i` to `out` (of the input's dtype).
    pub fn extend_into(&self, i: usize, out: &mut TensorData) {
        match (self.inputs.get(i), out) {
            (Some(Input::Tensor(t)), out) => extend_data(out, t.data()),
            (Some(Input::Packed { range, .. }), TensorData::Float(out)) => {
                example::extend_from_packed(out, self.record.get(range.clone()).unwrap_or_default())
            }
            _ => {}
        }
    }

    /// Input `i` as a tensor of its own (a copy).
    pub fn tensor(&self, i: usize) -> Option<Tensor> {
        let input = self.inputs.get(i)?;
        if let Input::Tensor(t) = input {
            return Some(t.clone());
        }
        let mut data = TensorData::with_capacity(input.dtype(), 0).ok()?;
        self.extend_into(i, &mut data);
        Tensor::new(input.shape().to_vec(), data).ok()
    }

    /// The inputs as tensors of their own (to run the instance alone).
    pub fn into_tensors(self) -> Vec<Tensor> {
        (0..self.inputs.len())
            .filter_map(|i| self.tensor(i))
            .collect()
    }
}

/// Appends a copy of `src` to `dst` (nothing when the dtypes differ: callers only merge inputs
/// that match).
pub fn extend_data(dst: &mut TensorData, src: &TensorData) {
    use TensorData::*;
    match (dst, src) {
        (Float(a), Float(b)) => a.extend_from_slice(b),
        (Double(a), Double(b)) => a.extend_from_slice(b),
        (Int8(a), Int8(b)) => a.extend_from_slice(b),
        (Int16(a), Int16(b)) => a.extend_from_slice(b),
        (Int32(a), Int32(b)) => a.extend_from_slice(b),
        (Int64(a), Int64(b)) => a.extend_from_slice(b),
        (UInt8(a), UInt8(b)) => a.extend_from_slice(b),
        (UInt16(a), UInt16(b)) => a.extend_from_slice(b),
        (UInt32(a), UInt32(b)) => a.extend_from_slice(b),
        (UInt64(a), UInt64(b)) => a.extend_from_slice(b),
        (Half(a), Half(b)) => a.extend_from_slice(b),
        (BFloat16(a), BFloat16(b)) => a.extend_from_slice(b),
        (Bool(a), Bool(b)) => a.extend_from_slice(b),
        (String(a), String(b)) => a.extend_from_slice(b),
        _ => {}
    }
}

/// Where `inner` (a subslice of `outer`) lies in `outer`.
fn range_in(outer: &[u8], inner: &[u8]) -> Option<std::ops::Range<usize>> {
    let start = (inner.as_ptr() as usize).checked_sub(outer.as_ptr() as usize)?;
    let end = start.checked_add(inner.len())?;
    (end <= outer.len()).then_some(start..end)
}

#[derive(Debug)]
pub enum Decoded {
    /// A blank line: not an instance.
    Skip,
    Instance(Instance),
    Error {
        message: String,
        key: Option<String>,
    },
}

/// How TFRecord records become instances.
#[derive(Clone, Debug)]
enum RecordMode {
    /// The signature has one string input: the record is its element, as `{"b64": ...}` would be.
    Bytes { inner_shape: Vec<usize> },
    /// Otherwise each record is a tf.Example whose features are named after the inputs.
    Example,
}

pub struct Decoder {
    signature: Signature,
    aliases: Vec<String>,
    specs: Vec<TensorSpec>,
    /// The member/feature that carries the key; `None` when the signature has an input of that
    /// name (then it is fed to the model like any input).
    key_field: Option<String>,
    record_mode: RecordMode,
    /// The alias of the signature's only input when it takes strings (and is not named "b64"):
    /// lines of `{"b64": ...}` objects are then read by [`json::parse_b64_instance`].
    b64_input: Option<String>,
    /// The signature's only input when its shape per instance is fully known: lines that are
    /// lists of that shape are then read by [`json::parse_dense_instance`].
    dense_input: Option<DenseInput>,
}

struct DenseInput {
    alias: String,
    dtype: DType,
    /// The shape of one instance (without the batch dimension).
    shape: Vec<usize>,
}

const PREFIX: &[u8] = b"{\"instances\":[";
const SUFFIX: &[u8] = b"]}";

fn shape_text<T: std::fmt::Display>(dims: &[T]) -> String {
    let dims: Vec<String> = dims.iter().map(ToString::to_string).collect();
    format!("[{}]", dims.join(","))
}

impl Decoder {
    pub fn new(signature: &Signature, key_field: &str) -> anyhow::Result<Decoder> {
        if signature.inputs.is_empty() {
            anyhow::bail!("the signature has no inputs: nothing to feed instances into");
        }
        let aliases: Vec<String> = signature.inputs.keys().cloned().collect();
        let specs: Vec<TensorSpec> = signature.inputs.values().cloned().collect();
        let key_field = (!key_field.is_empty() && !signature.inputs.contains_key(key_field))
            .then(|| key_field.to_string());
        let record_mode = match specs.as_slice() {
            [spec] if spec.dtype == DType::String => {
                let inner: Vec<i64> = match &spec.shape {
                    Some(dims) if !dims.is_empty() => dims[1..].to_vec(),
                    _ => Vec::new(),
                };
                if inner.iter().any(|&d| d != 1 && d != -1) {
                    // Records cannot fill such an input one by one; JSON lines still can.
                    RecordMode::Example
                } else {
                    RecordMode::Bytes {
                        inner_shape: vec![1; inner.len()],
                    }
                }
            }
            _ => RecordMode::Example,
        };
        let b64_input = match (aliases.as_slice(), specs.as_slice()) {
            ([alias], [spec]) if spec.dtype == DType::String && alias != "b64" => {
                Some(alias.clone())
            }
            _ => None,
        };
        let dense_input = match (aliases.as_slice(), specs.as_slice()) {
            ([alias], [spec]) if alias != "b64" => spec
                .shape
                .as_deref()
                .and_then(|dims| dims.get(1..))
                .filter(|inner| !inner.is_empty())
                .and_then(|inner| inner.iter().map(|&d| usize::try_from(d).ok()).collect())
                .map(|shape| DenseInput {
                    alias: alias.clone(),
                    dtype: spec.dtype,
                    shape,
                }),
            _ => None,
        };
        Ok(Decoder {
            b64_input,
            dense_input,
            signature: signature.clone(),
            aliases,
            specs,
            key_field,
            record_mode,
        })
    }

    /// How a TFRecord record is read, for the log.
    pub fn record_mode_description(&self) -> String {
        match self.record_mode {
            RecordMode::Bytes { .. } => format!(
                "each TFRecord record is fed as is to the string input {}",
                self.aliases[0]
            ),
            RecordMode::Example => format!(
                "each TFRecord record is a tf.Example with a feature per input ({})",
                self.aliases.join(", ")
            ),
        }
    }

    /// A JSON line: an element of REST's `"instances"`, optionally an object with a key member.
    pub fn decode_json(&self, line: &[u8]) -> Decoded {
        thread_local! {
            /// The request body a line is wrapped into, reused: a fresh buffer of a megabyte
            /// per line would cost a page fault per 4 KiB.
            static BODY: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
        }
        let line = line.trim_ascii();
        if line.is_empty() {
            return Decoded::Skip;
        }
        if let Some(alias) = &self.b64_input {
            if let Some(instance) = json::parse_b64_instance(line, self.key_field.as_deref()) {
                return self.b64_instance(alias, instance);
            }
        }
        if let Some(input) = &self.dense_input {
            if let Some(tensor) = json::parse_dense_instance(line, input.dtype, &input.shape) {
                return self.direct_instance(&input.alias, tensor, None);
            }
        }
        let mut body = BODY.with(|b| b.take());
        body.clear();
        let decoded = self.decode_json_into(line, &mut body);
        if body.capacity() <= 64 << 20 {
            BODY.with(|b| b.replace(body));
        }
        decoded
    }

    /// A line that [`json::parse_b64_instance`] read: what the general path would make of it.
    fn b64_instance(&self, alias: &str, instance: json::B64Instance<'_>) -> Decoded {
        let key = match instance.key.map(|value| self.key_text(value)).transpose() {
            Ok(key) => key,
            Err(message) => return Decoded::Error { message, key: None },
        };
        match Tensor::new(vec![1], TensorData::String(vec![instance.bytes])) {
            Ok(tensor) => self.direct_instance(alias, tensor, key),
            Err(e) => Decoded::Error {
                message: e.message,
                key,
            },
        }
    }

    /// The input of a line read without the general path, checked as that path's would be.
    fn direct_instance(&self, alias: &str, tensor: Tensor, key: Option<String>) -> Decoded {
        match self.check(vec![(alias.to_string(), tensor)]) {
            Ok(inputs) => Decoded::Instance(Instance {
                key,
                inputs: inputs.into_iter().map(Input::Tensor).collect(),
                record: Bytes::default(),
            }),
            Err(message) => Decoded::Error { message, key },
        }
    }

    /// The key member's value as written (a number keeps its digits: `12345678901234567890123`
    /// and `-0` are copied, not rounded through a double), once checked to be one JSON value.
    fn key_text(&self, value: &[u8]) -> Result<String, String> {
        let field = self.key_field.as_deref().unwrap_or_default();
        let text = value.trim_ascii();
        json::check_json_value(text)
            .map_err(|e| format!("the {field:?} member is not valid JSON: {}", e.message))?;
        String::from_utf8(text.to_vec())
            .map_err(|_| format!("the {field:?} member is not valid UTF-8"))
    }

    fn decode_json_into(&self, line: &[u8], body: &mut Vec<u8>) -> Decoded {
        let mut key = None;
        body.reserve(line.len() + PREFIX.len() + SUFFIX.len());
        body.extend_from_slice(PREFIX);
        let mut rest_start = body.len();
        match self
            .key_field
            .as_deref()
            .and_then(|k| strip_member(line, k))
        {
            Some(Stripped { key_value, rest }) => {
                match self.key_text(key_value) {
                    Ok(text) => key = Some(text),
                    Err(message) => return Decoded::Error { message, key: None },
                }
                if rest.is_empty() {
                    return Decoded::Error {
                        message: format!(
                            "the instance has a {:?} member but no inputs",
                            self.key_field.as_deref().unwrap_or_default()
                        ),
                        key,
                    };
                }
                body.push(b'{');
                rest_start += 1;
                for (i, member) in rest.iter().enumerate() {
                    if i > 0 {
                        body.push(b',');
                    }
                    body.extend_from_slice(member);
                }
                body.push(b'}');
            }
            None => body.extend_from_slice(line),
        }
        body.extend_from_slice(SUFFIX);
        let parsed = json::parse_predict_request(body, |_| Ok(&self.signature));
        match parsed {
            Ok(request) => match self.check(request.inputs) {
                Ok(inputs) => Decoded::Instance(Instance {
                    key,
                    inputs: inputs.into_iter().map(Input::Tensor).collect(),
                    record: Bytes::default(),
                }),
                Err(message) => Decoded::Error { message, key },
            },
            Err(e) => Decoded::Error {
                message: shift_offsets(&e.message, rest_start),
                key,
            },
        }
    }

    /// A TFRecord record.
    pub fn decode_record(&self, record: Bytes) -> Decoded {
        match &self.record_mode {
            RecordMode::Bytes { inner_shape } => {
                // A key is reported when the record is a tf.Example with a key feature; the record
                // itself still goes to the model unchanged.
                let key = self.key_field.as_deref().and_then(|field| {
                    example::parse(&record)
                        .ok()
                        .and_then(|features| feature_key(&features, field))
                });
                let mut shape = vec![1];
                shape.extend_from_slice(inner_shape);
                match Tensor::new(shape, TensorData::String(vec![record.into_vec()])) {
                    Ok(tensor) => Decoded::Instance(Instance {
                        key,
                        inputs: vec![Input::Tensor(tensor)],
                        record: Bytes::default(),
                    }),
                    Err(e) => Decoded::Error {
                        message: e.message,
                        key,
                    },
                }
            }
            RecordMode::Example => {
                let mut features = match example::parse(&record) {
                    Ok(features) => features,
                    Err(e) => {
                        return Decoded::Error {
                            message: format!(
                                "the record is not a serialized tf.Example ({e}); the signature's inputs ({}) are read from tf.Example features of the same names",
                                self.aliases.join(", ")
                            ),
                            key: None,
                        }
                    }
                };
                let key = self
                    .key_field
                    .as_deref()
                    .and_then(|field| feature_key(&features, field));
                let mut inputs = Vec::with_capacity(self.aliases.len());
                for (i, (alias, spec)) in self.aliases.iter().zip(&self.specs).enumerate() {
                    // Moved out, not copied: float lists can be large.
                    let Some(values) = features.remove(alias.as_bytes()) else {
                        let mut names: Vec<String> = features
                            .keys()
                            .map(|k| String::from_utf8_lossy(k).into_owned())
                            .chain(self.aliases[..i].iter().cloned())
                            .collect();
                        names.sort_unstable();
                        return Decoded::Error {
                            message: format!(
                                "the tf.Example has no feature {alias:?} for input {alias} (its features: {})",
                                names.join(", ")
                            ),
                            key,
                        };
                    };
                    match feature_input(alias, spec, values, &record) {
                        Ok(input) => inputs.push(input),
                        Err(message) => return Decoded::Error { message, key },
                    }
                }
                let packed = inputs.iter().any(|i| matches!(i, Input::Packed { .. }));
                drop(features);
                Decoded::Instance(Instance {
                    key,
                    inputs,
                    record: if packed { record } else { Bytes::default() },
                })
            }
        }
    }

    /// The signature's checks, per instance, so that a bad instance fails alone instead of
    /// failing the batch it would join: every input present, shapes compatible with the
    /// signature's.
    fn check(&self, mut inputs: Vec<(String, Tensor)>) -> Result<Vec<Tensor>, String> {
        inputs.sort_by(|a, b| a.0.cmp(&b.0));
        let sent: Vec<&str> = inputs.iter().map(|(a, _)| a.as_str()).collect();
        if sent != self.aliases {
            return Err(format!(
                "the instance gives the inputs {{{}}} but the signature takes {{{}}}",
                sent.join(","),
                self.aliases.join(",")
            ));
        }
        let mut out = Vec::with_capacity(inputs.len());
        for ((alias, tensor), spec) in inputs.into_iter().zip(&self.specs) {
            check_shape(&alias, tensor.shape(), spec)?;
            out.push(tensor);
        }
        Ok(out)
    }
}

/// Checks a `[1, ...]` instance tensor against the signature's shape for the input.
fn check_shape(alias: &str, shape: &[usize], spec: &TensorSpec) -> Result<(), String> {
    let Some(dims) = &spec.shape else {
        return Ok(());
    };
    // The batch dimension is the batch's, not the instance's.
    if spec.fits(shape, 1) {
        Ok(())
    } else {
        Err(format!(
            "input {alias}: the instance has shape {} but the signature takes {} per instance (shape {})",
            shape_text(&shape[1.min(shape.len())..]),
            shape_text(&dims[1.min(dims.len())..]),
            shape_text(dims)
        ))
    }
}

/// The error messages of the REST codec give byte offsets into the wrapped body
/// (`{"instances":[` + line + `]}`): make them offsets into the line.
fn shift_offsets(message: &str, prefix: usize) -> String {
    const MARK: &str = "at offset: ";
    let Some(at) = message.find(MARK) else {
        return message.to_string();
    };
    let start = at + MARK.len();
    let digits: String = message[start..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    match digits.parse::<usize>() {
        Ok(offset) => format!(
            "{}{}{}",
            &message[..start],
            offset.saturating_sub(prefix),
            &message[start + digits.len()..]
        ),
        Err(_) => message.to_string(),
    }
}

/// A feature as the key's JSON: one value bare, several as a list; bytes as a string when UTF-8,
/// else `{"b64": ...}`.
fn feature_key(features: &Features<'_>, field: &str) -> Option<String> {
    let values: Vec<serde_json::Value> = match features.get(field.as_bytes())? {
        // Written as REST writes floats: the shortest digits of the float32 (`0.1`, `NaN`).
        Values::Floats(list) => {
            let values = list.to_vec();
            let shape = if values.len() == 1 {
                vec![]
            } else {
                vec![values.len()]
            };
            let tensor = Tensor::new(shape, TensorData::Float(values)).ok()?;
            return String::from_utf8(json::write_tensor_line("", &tensor)).ok();
        }
        Values::None => return None,
        Values::Bytes(list) => list
            .iter()
            .map(|b| match std::str::from_utf8(b) {
                Ok(s) => serde_json::Value::from(s),
                Err(_) => serde_json::json!({
                    "b64": base64::engine::general_purpose::STANDARD.encode(b)
                }),
            })
            .collect(),
        Values::Ints(list) => list.iter().map(|&v| v.into()).collect(),
    };
    Some(match <[serde_json::Value; 1]>::try_from(values) {
        Ok([one]) => one.to_string(),
        Err(values) => serde_json::Value::from(values).to_string(),
    })
}

/// A tf.Example feature (of `record`) as one instance of a signature input.
fn feature_input(
    alias: &str,
    spec: &TensorSpec,
    values: Values<'_>,
    record: &[u8],
) -> Result<Input, String> {
    let kind_name = match &values {
        Values::Bytes(_) => "a bytes_list",
        Values::Floats(_) => "a float_list",
        Values::Ints(_) => "an int64_list",
        Values::None => "empty",
    };
    let mismatch = || {
        format!(
            "feature {alias} is {kind_name}, which cannot feed input {alias} of type {}",
            spec.dtype.proto_name()
        )
    };
    fn ints<T: TryFrom<i64>>(alias: &str, values: &[i64], dtype: DType) -> Result<Vec<T>, String> {
        values
            .iter()
            .map(|&v| {
                T::try_from(v).map_err(|_| {
                    format!(
                        "feature {alias}: {v} is out of range for {}",
                        dtype.proto_name()
                    )
                })
            })
            .collect()
    }
    let data = match (spec.dtype, values) {
        (DType::Float, Values::Floats(Floats::Packed(bytes))) => match range_in(record, bytes) {
            Some(range) => {
                return Ok(Input::Packed {
                    shape: instance_shape(alias, spec, bytes.len() / 4)?,
                    range,
                })
            }
            None => TensorData::Float(Floats::Packed(bytes).to_vec()),
        },
        (DType::Float, Values::Floats(Floats::Owned(l))) => TensorData::Float(l),
        (DType::Float, Values::Ints(l)) => TensorData::Float(l.iter().map(|&v| v as f32).collect()),
        (DType::Double, Values::Floats(l)) => {
            TensorData::Double(l.to_vec().into_iter().map(f64::from).collect())
        }
        (DType::Double, Values::Ints(l)) => {
            TensorData::Double(l.iter().map(|&v| v as f64).collect())
        }
        // Keras mixed-precision models take float16 inputs, which tf.io.parse_example cannot
        // make: their float features are narrowed here, as a tf.cast in the model would. Ints go
        // through f32 as TensorFlow's and numpy's casts to these types do.
        (DType::Half, Values::Floats(l)) => TensorData::Half(narrowed(alias, spec, l.to_vec())?),
        (DType::Half, Values::Ints(l)) => {
            TensorData::Half(narrowed(alias, spec, l.iter().map(|&v| v as f32))?)
        }
        (DType::BFloat16, Values::Floats(l)) => {
            TensorData::BFloat16(narrowed(alias, spec, l.to_vec())?)
        }
        (DType::BFloat16, Values::Ints(l)) => {
            TensorData::BFloat16(narrowed(alias, spec, l.iter().map(|&v| v as f32))?)
        }
        (DType::Int64, Values::Ints(l)) => TensorData::Int64(l),
        (DType::Int32, Values::Ints(l)) => TensorData::Int32(ints(alias, &l, spec.dtype)?),
        (DType::Int16, Values::Ints(l)) => TensorData::Int16(ints(alias, &l, spec.dtype)?),
        (DType::Int8, Values::Ints(l)) => TensorData::Int8(ints(alias, &l, spec.dtype)?),
        (DType::UInt8, Values::Ints(l)) => TensorData::UInt8(ints(alias, &l, spec.dtype)?),
        (DType::UInt16, Values::Ints(l)) => TensorData::UInt16(ints(alias, &l, spec.dtype)?),
        (DType::UInt32, Values::Ints(l)) => TensorData::UInt32(ints(alias, &l, spec.dtype)?),
        (DType::UInt64, Values::Ints(l)) => TensorData::UInt64(ints(alias, &l, spec.dtype)?),
        (DType::Bool, Values::Ints(l)) => TensorData::Bool(l.iter().map(|&v| v != 0).collect()),
        (DType::String, Values::Bytes(l)) => {
            TensorData::String(l.into_iter().map(|b| b.to_vec()).collect())
        }
        _ => return Err(mismatch()),
    };
    let shape = instance_shape(alias, spec, data.len())?;
    Tensor::new(shape, data)
        .map(Input::Tensor)
        .map_err(|e| e.message)
}

/// The 16-bit float types a float or int64 feature can feed.
trait Float16: Copy + std::fmt::Debug {
    const MAX: Self;
    fn from_f32(value: f32) -> Self;
    fn is_infinite(self) -> bool;
}

impl Float16 for f16 {
    const MAX: f16 = f16::MAX;
    fn from_f32(value: f32) -> f16 {
        f16::from_f32(value)
    }
    fn is_infinite(self) -> bool {
        f16::is_infinite(self)
    }
}

impl Float16 for bf16 {
    const MAX: bf16 = bf16::MAX;
    fn from_f32(value: f32) -> bf16 {
        bf16::from_f32(value)
    }
    fn is_infinite(self) -> bool {
        bf16::is_infinite(self)
    }
}

/// `values` rounded to the nearest `T` (ties to even), as numpy's `astype` and `tf.cast` round.
/// A finite value that rounds to infinity fails the record, naming the feature: numpy and
/// TensorFlow would quietly feed the model an infinity, and its answer would be garbage.
fn narrowed<T: Float16>(
    alias: &str,
    spec: &TensorSpec,
    values: impl IntoIterator<Item = f32>,
) -> Result<Vec<T>, String> {
    values
        .into_iter()
        .map(|v| {
            let narrow = T::from_f32(v);
            if narrow.is_infinite() && v.is_finite() {
                Err(format!(
                    "feature {alias}: {v:?} is out of range for input {alias} of type {} (its largest finite value is {:?})",
                    spec.dtype.proto_name(),
                    T::MAX
                ))
            } else {
                Ok(narrow)
            }
        })
        .collect()
}

/// The shape `[1, ...]` of an instance of input `alias` with `n` values.
fn instance_shape(alias: &str, spec: &TensorSpec, n: usize) -> Result<Vec<usize>, String> {
    let inner: Vec<usize> = match &spec.shape {
        None => vec![n],
        Some(dims) if dims.is_empty() => {
            return Err(format!(
                "input {alias} is a scalar without a batch dimension: it cannot be batched"
            ))
        }
        Some(dims) => {
            let inner = &dims[1..];
            let bad = || {
                format!(
                    "feature {alias} has {n} values, which do not fit input {alias}'s shape {} per instance",
                    shape_text(inner)
                )
            };
            // The dimensions come from a model file: their product may not fit.
            let known = inner
                .iter()
                .filter(|&&d| d >= 0)
                .try_fold(1usize, |product, &d| product.checked_mul(d as usize))
                .ok_or_else(bad)?;
            let unknown = inner.iter().filter(|&&d| d < 0).count();
            match unknown {
                0 if known == n => inner.iter().map(|&d| d as usize).collect(),
                1 if known > 0 && n.is_multiple_of(known) => inner
                    .iter()
                    .map(|&d| if d < 0 { n / known } else { d as usize })
                    .collect(),
                _ if unknown > 1 && inner.len() == 1 => vec![n],
                _ => return Err(bad()),
            }
        }
    };
    let mut shape = vec![1];
    shape.extend(inner);
    Ok(shape)
}

/// A top-level JSON object with one member taken out.
struct Stripped<'a> {
    key_value: &'a [u8],
    /// The other members, each `"name":value` as written.
    rest: Vec<&'a [u8]>,
}

/// Finds member `name` of the top-level object `text` (without validating anything else: the
/// REST codec does that on what remains). `None` when `text` is not an object or has no such
/// member, or its structure cannot be followed.
fn strip_member<'a>(text: &'a [u8], name: &str) -> Option<Stripped<'a>> {
    let mut i = skip_ws(text, 0);
    if text.get(i) != Some(&b'{') {
        return None;
    }
    i += 1;
    let mut key_value = None;
    let mut rest = Vec::new();
    loop {
        i = skip_ws(text, i);
        match text.get(i)? {
            b'}' if rest.is_empty() && key_value.is_none() => return None,
            b'"' => {}
            _ => return None,
        }
        let member_start = i;
        let name_end = skip_string(text, i)?;
        let member_name = &text[i + 1..name_end - 1];
        i = skip_ws(text, name_end);
        if text.get(i) != Some(&b':') {
            return None;
        }
        i = skip_ws(text, i + 1);
        let value_start = i;
        let value_end = skip_value(text, i)?;
        if key_value.is_none() && names_member(member_name, &text[member_start..name_end], name) {
            key_value = Some(&text[value_start..value_end]);
        } else {
            rest.push(&text[member_start..value_end]);
        }
        i = skip_ws(text, value_end);
        match text.get(i)? {
            b',' => i += 1,
            b'}' => {
                if skip_ws(text, i + 1) != text.len() {
                    return None;
                }
                break;
            }
            _ => return None,
        }
    }
    Some(Stripped {
        key_value: key_value?,
        rest,
    })
}

/// Whether a member named `raw` (between its quotes; `quoted` with them) is `name`. A name with
/// escapes (`"k\u0065y"`) is the string it stands for, as the REST codec reads input names.
fn names_member(raw: &[u8], quoted: &[u8], name: &str) -> bool {
    if raw.contains(&b'\\') {
        serde_json::from_slice::<String>(quoted).is_ok_and(|s| s == name)
    } else {
        raw == name.as_bytes()
    }
}

fn skip_ws(text: &[u8], mut i: usize) -> usize {
    while i < text.len() && matches!(text[i], b' ' | b'\t' | b'\n' | b'\r') {
        i += 1;
    }
    i
}

/// The end (exclusive) of the string starting at `text[i] == '"'`.
fn skip_string(text: &[u8], mut i: usize) -> Option<usize> {
    i += 1;
    while i < text.len() {
        match text[i] {
            b'\\' => i += 2,
            b'"' => return Some(i + 1),
            _ => i += 1,
        }
    }
    None
}

/// The end (exclusive) of the value starting at `i`: a string, a balanced array or object, or a
/// scalar token.
fn skip_value(text: &[u8], i: usize) -> Option<usize> {
    match text.get(i)? {
        b'"' => skip_string(text, i),
        b'[' | b'{' => {
            let mut depth = 0usize;
            let mut j = i;
            loop {
                match *text.get(j)? {
                    b'"' => {
                        j = skip_string(text, j)?;
                        continue;
                    }
                    b'[' | b'{' => depth += 1,
                    b']' | b'}' => {
                        depth -= 1;
                        if depth == 0 {
                            return Some(j + 1);
                        }
                    }
                    _ => {}
                }
                j += 1;
            }
        }
        _ => {
            let mut j = i;
            while j < text.len()
                && !matches!(text[j], b',' | b'}' | b']' | b' ' | b'\t' | b'\n' | b'\r')
            {
                j += 1;
            }
            (j > i).then_some(j)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use oxserve_proto::tensorflow::{
        feature, BytesList, Example, Feature, Features, FloatList, Int64List,
    };
    use prost::Message;

    fn spec(dtype: DType, shape: &[i64]) -> TensorSpec {
        TensorSpec {
            name: "x:0".into(),
            dtype,
            shape: Some(shape.to_vec()),
        }
    }

    fn signature(inputs: &[(&str, TensorSpec)]) -> Signature {
        Signature {
            method_name: String::new(),
            inputs: inputs
                .iter()
                .map(|(a, s)| (a.to_string(), s.clone()))
                .collect(),
            outputs: [("y".to_string(), spec(DType::Float, &[-1]))].into(),
            defaults: Default::default(),
        }
    }

    fn instance(d: Decoded) -> Instance {
        match d {
            Decoded::Instance(i) => i,
            other => panic!("expected an instance, got {other:?}"),
        }
    }

    fn error(d: Decoded) -> (String, Option<String>) {
        match d {
            Decoded::Error { message, key } => (message, key),
            other => panic!("expected an error, got {other:?}"),
        }
    }

    #[test]
    fn members_are_found_without_a_parse() {
        let s = strip_member(
            br#" {"a": [1, {"key": 2}], "key" : "k,}" , "b":"x\"y"} "#,
            "key",
        )
        .unwrap();
        assert_eq!(s.key_value, br#""k,}""#);
        assert_eq!(
            s.rest,
            vec![&br#""a": [1, {"key": 2}]"#[..], br#""b":"x\"y""#]
        );
        let s = strip_member(br#"{"key":-1.5e3,"x":true}"#, "key").unwrap();
        assert_eq!(s.key_value, b"-1.5e3");
        assert_eq!(s.rest, vec![&b"\"x\":true"[..]]);
        let s = strip_member(br#"{"x":1,"k\u0065y":"a"}"#, "key").unwrap();
        assert_eq!(s.key_value, br#""a""#);
        assert!(strip_member(br#"{"k\"ey": 1}"#, "key").is_none());
        assert!(strip_member(br#"{"a": 1}"#, "key").is_none());
        assert!(strip_member(br#"[{"key": 1}]"#, "key").is_none());
        assert!(strip_member(br#"{"key": 1"#, "key").is_none());
        assert!(strip_member(br#"{"key": 1} x"#, "key").is_none());
        assert!(strip_member(b"{", "key").is_none());
        assert!(strip_member(b"{}", "key").is_none());
    }

    #[test]
    fn json_lines_decode_like_rest_instances() {
        let sig = signature(&[("x", spec(DType::Float, &[-1, 2]))]);
        let d = Decoder::new(&sig, "key").unwrap();
        let i = instance(d.decode_json(b"[1, 2.5]"));
        assert_eq!(i.key, None);
        assert_eq!(i.inputs[0].shape(), &[1, 2]);
        assert_eq!(
            i.tensor(0).unwrap().data(),
            &TensorData::Float(vec![1.0, 2.5])
        );
        let i = instance(d.decode_json(br#"{"x": [3, 4], "key": {"id": "a"}}"#));
        // As written, spaces included.
        assert_eq!(i.key.as_deref(), Some(r#"{"id": "a"}"#));
        assert!(matches!(d.decode_json(b"  \r"), Decoded::Skip));
        let (message, _) = error(d.decode_json(b"[1, 2, 3]"));
        assert!(message.contains("shape [3]"), "{message}");
        let (message, key) = error(d.decode_json(br#"{"key": 7, "x": [1, "a"]}"#));
        assert_eq!(key.as_deref(), Some("7"));
        assert!(!message.is_empty());
        let (message, _) = error(d.decode_json(br#"{"key": 7}"#));
        assert!(message.contains("no inputs"), "{message}");
        // Offsets are into the line, not into the wrapped request.
        let (message, _) = error(d.decode_json(b"[1, x]"));
        assert!(message.contains("at offset: 4"), "{message}");
    }

    #[test]
    fn an_input_named_key_is_an_input() {
        let sig = signature(&[
            ("key", spec(DType::Int64, &[-1])),
            ("x", spec(DType::Float, &[-1])),
        ]);
        let d = Decoder::new(&sig, "key").unwrap();
        let i = instance(d.decode_json(br#"{"key": 5, "x": 1.5}"#));
        assert_eq!(i.key, None);
        assert_eq!(i.tensor(0).unwrap().data(), &TensorData::Int64(vec![5]));
        // TF Serving's own message for a missing named input.
        let (message, _) = error(d.decode_json(br#"{"x": 1.5}"#));
        assert!(message.contains("must only have keys: key,x"), "{message}");
    }

    #[test]
    fn b64_instances_and_keys_for_string_inputs() {
        let sig = signature(&[("image_bytes", spec(DType::String, &[-1]))]);
        let d = Decoder::new(&sig, "key").unwrap();
        let i = instance(d.decode_json(br#"{"b64": "aGk=", "key": "one"}"#));
        assert_eq!(i.key.as_deref(), Some("\"one\""));
        assert_eq!(
            i.tensor(0).unwrap().data(),
            &TensorData::String(vec![b"hi".to_vec()])
        );
        assert_eq!(i.inputs[0].shape(), &[1]);
        // A record is fed as is.
        let i = instance(d.decode_record(Bytes::from_vec(b"\xff\xd8raw".to_vec())));
        assert_eq!(
            i.tensor(0).unwrap().data(),
            &TensorData::String(vec![b"\xff\xd8raw".to_vec()])
        );
        assert_eq!(i.key, None);
        // A tf.Example record keeps its key.
        let example = Example {
            features: Some(Features {
                feature: [(
                    "key".to_string(),
                    Feature {
                        kind: Some(feature::Kind::Int64List(Int64List { value: vec![42] })),
                    },
                )]
                .into(),
            }),
        };
        let i = instance(d.decode_record(Bytes::from_vec(example.encode_to_vec())));
        assert_eq!(i.key.as_deref(), Some("42"));
    }

    /// The lines of `{"b64": ...}` objects that skip the request wrapping decode exactly as
    /// the wrapped request does, key and errors included.
    #[test]
    fn b64_lines_read_directly_match_the_general_path() {
        let lines: [&[u8]; 9] = [
            br#"{"b64": "aGVsbG8="}"#,
            br#"{"key": [1, {"a": "b"}], "b64": "aGVs bG8"}"#,
            br#"{"b64": "aGVsbG8.", "key": 1e400}"#,
            br#"{"b64": "aGVsbG8=", "key": NaN}"#,
            br#"{"b64": "aGVsbG8=", "key": "\udc00"}"#,
            br#"{"b64": "aGVsbG8=="}"#,
            br#"{"b64": "aGVs\/bG8="}"#,
            br#"{"b64": "aGVsbG8=", "key": 1, "key": 2}"#,
            br#"{"b64": "aGVsbG8=", "x": 1}"#,
        ];
        for shape in [vec![-1], vec![-1, 1]] {
            let sig = signature(&[("image_bytes", spec(DType::String, &shape))]);
            for key_field in ["key", ""] {
                let d = Decoder::new(&sig, key_field).unwrap();
                assert!(d.b64_input.is_some());
                for line in lines {
                    let direct = format!("{:?}", d.decode_json(line));
                    let general = format!("{:?}", d.decode_json_into(line, &mut Vec::new()));
                    assert_eq!(direct, general, "{}", line.escape_ascii());
                }
            }
        }
    }

    /// Lines of lists that skip the request wrapping decode exactly as the wrapped request
    /// does, errors included.
    #[test]
    fn dense_lines_read_directly_match_the_general_path() {
        let lines: [&[u8]; 7] = [
            b"[[1, 2.5, -3e2], [4, 5, 6]]",
            b"[[1, 2.5, -3e2], [4, 5]]",
            b"[[1, 2, 3]]",
            b"[[1, 2, 3], [4, 5, 6]] [",
            b"[[1, 2, 3], [4, 5, \"6\"]]",
            br#"{"x": [[1, 2, 3], [4, 5, 6]], "key": 3}"#,
            b"[[1, 2, 3], [4, 5, 1e400]]",
        ];
        for (dtype, shape) in [
            (DType::Float, vec![-1, 2, 3]),
            (DType::Int64, vec![-1, 2, 3]),
            (DType::Float, vec![1, 2, 3]),
            (DType::Float, vec![-1, 6]),
        ] {
            let sig = signature(&[("x", spec(dtype, &shape))]);
            let d = Decoder::new(&sig, "key").unwrap();
            assert!(d.dense_input.is_some());
            for line in lines {
                let direct = format!("{:?}", d.decode_json(line));
                let general = format!("{:?}", d.decode_json_into(line, &mut Vec::new()));
                assert_eq!(direct, general, "{}", line.escape_ascii());
            }
        }
        let sig = signature(&[("x", spec(DType::Float, &[-1, -1, 3]))]);
        assert!(Decoder::new(&sig, "key").unwrap().dense_input.is_none());
    }

    fn example(features: Vec<(&str, feature::Kind)>) -> Vec<u8> {
        Example {
            features: Some(Features {
                feature: features
                    .into_iter()
                    .map(|(n, k)| (n.to_string(), Feature { kind: Some(k) }))
                    .collect(),
            }),
        }
        .encode_to_vec()
    }

    #[test]
    fn example_records_feed_inputs_by_feature_name() {
        let sig = signature(&[
            ("image", spec(DType::Float, &[-1, 2, 2])),
            ("id", spec(DType::Int32, &[-1])),
            ("words", spec(DType::String, &[-1, -1])),
            ("yes", spec(DType::Bool, &[-1, 2])),
        ]);
        let d = Decoder::new(&sig, "key").unwrap();
        let record = example(vec![
            (
                "image",
                feature::Kind::FloatList(FloatList {
                    value: vec![1.0, 2.0, 3.0, 4.0],
                }),
            ),
            ("id", feature::Kind::Int64List(Int64List { value: vec![9] })),
            (
                "words",
                feature::Kind::BytesList(BytesList {
                    value: vec![b"a".to_vec().into(), b"b".to_vec().into()],
                }),
            ),
            (
                "key",
                feature::Kind::BytesList(BytesList {
                    value: vec![b"k1".to_vec().into()],
                }),
            ),
            (
                "yes",
                feature::Kind::Int64List(Int64List { value: vec![0, 7] }),
            ),
        ]);
        let i = instance(d.decode_record(Bytes::from_vec(record)));
        assert_eq!(i.key.as_deref(), Some("\"k1\""));
        // Alias order: id, image, words.
        assert_eq!(i.inputs[0].shape(), &[1]);
        assert_eq!(i.inputs[1].shape(), &[1, 2, 2]);
        assert_eq!(i.inputs[2].shape(), &[1, 2]);
        // The packed float list stays in the record until it is copied into a batch.
        assert!(matches!(i.inputs[1], Input::Packed { .. }));
        assert_eq!(
            i.tensor(1).unwrap(),
            Tensor::new(vec![1, 2, 2], TensorData::Float(vec![1.0, 2.0, 3.0, 4.0])).unwrap()
        );
        let tensors = i.into_tensors();
        assert_eq!(tensors[0].data(), &TensorData::Int32(vec![9]));
        assert_eq!(
            tensors[1].data(),
            &TensorData::Float(vec![1.0, 2.0, 3.0, 4.0])
        );
        assert_eq!(
            tensors[2].data(),
            &TensorData::String(vec![b"a".to_vec(), b"b".to_vec()])
        );
        assert_eq!(tensors[3].data(), &TensorData::Bool(vec![false, true]));
        let wrong = example(vec![
            (
                "image",
                feature::Kind::FloatList(FloatList {
                    value: vec![1.0; 3],
                }),
            ),
            (
                "id",
                feature::Kind::Int64List(Int64List {
                    value: vec![1 << 40],
                }),
            ),
            (
                "words",
                feature::Kind::BytesList(BytesList { value: vec![] }),
            ),
        ]);
        let (message, _) = error(d.decode_record(Bytes::from_vec(wrong)));
        assert!(message.contains("out of range"), "{message}");
        let (message, _) = error(d.decode_record(Bytes::from_vec(b"not a proto \xff".to_vec())));
        assert!(message.contains("not a serialized tf.Example"), "{message}");
        let (message, _) = error(d.decode_record(Bytes::from_vec(example(vec![]))));
        assert!(message.contains("no feature \"id\""), "{message}");
    }

    #[test]
    fn a_shape_too_large_to_count_is_an_error() {
        // 2^32 * 2^32 * 0 elements: the product of the first two overflows.
        let sig = signature(&[("x", spec(DType::Float, &[-1, 1 << 32, 1 << 32, 0]))]);
        let d = Decoder::new(&sig, "").unwrap();
        let record = example(vec![(
            "x",
            feature::Kind::FloatList(FloatList { value: vec![] }),
        )]);
        let (message, _) = error(d.decode_record(Bytes::from_vec(record)));
        assert!(message.contains("do not fit input x's shape"), "{message}");
    }

    #[test]
    fn float_and_int_features_feed_half_and_bfloat16_inputs_rounded_to_nearest_even() {
        let sig = signature(&[
            ("h", spec(DType::Half, &[-1, -1])),
            ("b", spec(DType::BFloat16, &[-1, -1])),
        ]);
        let d = Decoder::new(&sig, "").unwrap();
        let record =
            |h: feature::Kind, b: feature::Kind| Bytes::from_vec(example(vec![("h", h), ("b", b)]));
        let floats = |value: Vec<f32>| feature::Kind::FloatList(FloatList { value });
        let ints = |value: Vec<i64>| feature::Kind::Int64List(Int64List { value });
        // Ties (1 + half an ulp, 1 + 3 half ulps) go to the even neighbour; 65519 rounds down to
        // f16's largest finite value; infinities and NaN stay what they are.
        let tie = 2f32.powi(-11);
        let halves = vec![
            1.0 + tie,
            1.0 + 3.0 * tie,
            65519.0,
            1e-8,
            f32::INFINITY,
            f32::NAN,
        ];
        let btie = 2f32.powi(-8);
        let i = instance(d.decode_record(record(
            floats(halves),
            floats(vec![1.0 + btie, 1.0 + 3.0 * btie, -3e38]),
        )));
        let tensors = i.into_tensors();
        let TensorData::Half(h) = tensors[1].data() else {
            panic!("{:?}", tensors[1]);
        };
        assert_eq!(
            h[..5],
            [1.0, 1.0 + 4.0 * tie, 65504.0, 0.0, f32::INFINITY].map(f16::from_f32)
        );
        assert!(h[5].is_nan());
        let want = [1.0, 1.0 + 4.0 * btie, -3e38].map(bf16::from_f32);
        assert_eq!(tensors[0].data(), &TensorData::BFloat16(want.to_vec()));
        // Ints, through f32 as tf.cast and numpy cast them.
        let i = instance(d.decode_record(record(
            ints(vec![-2049, 65504]),
            ints(vec![257, (1 << 30) + (1 << 22) + 1]),
        )));
        let tensors = i.into_tensors();
        assert_eq!(
            tensors[1].data(),
            &TensorData::Half([-2048.0, 65504.0].map(f16::from_f32).to_vec())
        );
        let want = [256.0, 2f32.powi(30)].map(bf16::from_f32);
        assert_eq!(tensors[0].data(), &TensorData::BFloat16(want.to_vec()));
        // Finite values that would round to infinity fail the record, naming the feature.
        let (message, _) = error(d.decode_record(record(floats(vec![1.0, 65520.0]), ints(vec![]))));
        assert_eq!(
            message,
            "feature h: 65520.0 is out of range for input h of type DT_HALF (its largest finite value is 65504.0)"
        );
        let (message, _) = error(d.decode_record(record(ints(vec![]), floats(vec![f32::MAX]))));
        assert_eq!(
            message,
            "feature b: 3.4028235e38 is out of range for input b of type DT_BFLOAT16 (its largest finite value is 3.3895314e38)"
        );
        let (message, _) = error(d.decode_record(record(ints(vec![1 << 20]), ints(vec![]))));
        assert!(
            message.starts_with("feature h: 1048576.0 is out of range"),
            "{message}"
        );
    }

    #[test]
    fn offsets_are_shifted_into_the_line() {
        assert_eq!(
            shift_offsets("Invalid value. at offset: 20", 14),
            "Invalid value. at offset: 6"
        );
        assert_eq!(shift_offsets("no offset", 14), "no offset");
    }
}
