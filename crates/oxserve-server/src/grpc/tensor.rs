//! `tensorflow.TensorProto` <-> [`Tensor`], following TensorFlow's `Tensor::FromProto`,
//! `AsProtoField` and `AsProtoTensorContent`, but stricter where TensorFlow silently pads or
//! truncates, and never allocating more than the request carried (plus a bounded fill).
//!
//! Accepted inputs:
//! - values in `tensor_content` (native little-endian bytes; strings as TensorFlow's string list:
//!   every length as a varint32, then every string's bytes), or in the typed field of the dtype
//!   (`float_val`, `double_val`, `int_val` for int32/int16/int8/uint8/uint16, `int64_val`,
//!   `uint32_val`, `uint64_val`, `bool_val`, `string_val`, `half_val` for half and bfloat16 (each
//!   value's bits in the low 16 bits), `scomplex_val` / `dcomplex_val` (real and imaginary parts
//!   alternating)). `int_val` and `half_val` values are narrowed to the dtype with C++'s
//!   truncating conversion, as TensorFlow does;
//! - exactly as many values as the shape has elements, or one value, which fills the whole shape
//!   as TensorFlow does (e.g. `tf.make_tensor_proto(0.0, shape=[2, 2])`).
//!
//! Everything else is an error: a count that matches neither (TensorFlow would repeat the last
//! value or drop the extra ones), values in a field the dtype does not read, `tensor_content`
//! together with typed values, negative dimensions, more than 254 dimensions, shapes whose
//! element count overflows, `DT_INVALID` or unknown dtype numbers. Valid TensorFlow dtypes that
//! oxserve cannot hold (quantized, resource, variant) are UNIMPLEMENTED.

use bytes::Bytes;
use oxserve_core::tensor::element_count;
use oxserve_core::{bf16, f16, DType, Error, Result, Tensor, TensorData};
use oxserve_proto::tensorflow::{TensorProto, TensorShapeProto};

/// TensorFlow's `TensorShape::MaxDimensions()`.
pub const MAX_DIMS: usize = 254;

/// The most bytes one value may be expanded to when it fills a shape. Filling is the one place
/// where a small request turns into a large tensor, so it is capped (TensorFlow is not).
pub const MAX_FILL_BYTES: usize = 256 << 20;

/// Converts a request's input tensor; errors read `tensor parsing error: <alias> (<why>)`, after
/// TF Serving's `tensor parsing error: <alias>`.
pub fn parse_input(alias: &str, proto: TensorProto) -> Result<Tensor> {
    tensor_from_proto(proto).map_err(|err| {
        Error::new(
            err.code,
            format!("tensor parsing error: {alias} ({})", err.message),
        )
    })
}

/// The shape of a `TensorShapeProto`; a missing shape is a scalar, as in TensorFlow.
pub fn shape_from_proto(shape: Option<&TensorShapeProto>) -> Result<Vec<usize>> {
    let Some(shape) = shape else {
        return Ok(Vec::new());
    };
    if shape.unknown_rank {
        return Err(Error::invalid_argument(
            "tensor_shape has unknown_rank set: a tensor needs a fully known shape",
        ));
    }
    if shape.dim.len() > MAX_DIMS {
        return Err(Error::invalid_argument(format!(
            "tensor_shape has {} dimensions, more than the {MAX_DIMS} TensorFlow allows",
            shape.dim.len()
        )));
    }
    let dims = shape
        .dim
        .iter()
        .map(|dim| {
            usize::try_from(dim.size).map_err(|_| {
                Error::invalid_argument(format!(
                    "tensor_shape {} has a negative dimension ({})",
                    shape_string(&shape.dim.iter().map(|d| d.size).collect::<Vec<_>>()),
                    dim.size
                ))
            })
        })
        .collect::<Result<Vec<usize>>>()?;
    match element_count(&dims) {
        Ok(n) if i64::try_from(n).is_ok() => Ok(dims),
        _ => Err(Error::invalid_argument(format!(
            "tensor_shape {} has more than 2**63 - 1 elements",
            usize_shape_string(&dims)
        ))),
    }
}

/// The typed field TensorFlow reads a dtype's values from.
fn value_field(dtype: DType) -> &'static str {
    match dtype {
        DType::Float => "float_val",
        DType::Double => "double_val",
        DType::Int32 | DType::Int16 | DType::Int8 | DType::UInt8 | DType::UInt16 => "int_val",
        DType::Int64 => "int64_val",
        DType::UInt32 => "uint32_val",
        DType::UInt64 => "uint64_val",
        DType::Bool => "bool_val",
        DType::Half | DType::BFloat16 => "half_val",
        DType::Complex64 => "scomplex_val",
        DType::Complex128 => "dcomplex_val",
        _ => "string_val",
    }
}

/// Every typed value field with its number of values.
fn value_counts(proto: &TensorProto) -> [(&'static str, usize); 14] {
    [
        ("float_val", proto.float_val.len()),
        ("double_val", proto.double_val.len()),
        ("int_val", proto.int_val.len()),
        ("int64_val", proto.int64_val.len()),
        ("uint32_val", proto.uint32_val.len()),
        ("uint64_val", proto.uint64_val.len()),
        ("bool_val", proto.bool_val.len()),
        ("string_val", proto.string_val.len()),
        ("half_val", proto.half_val.len()),
        ("scomplex_val", proto.scomplex_val.len()),
        ("dcomplex_val", proto.dcomplex_val.len()),
        ("resource_handle_val", proto.resource_handle_val.len()),
        ("variant_val", proto.variant_val.len()),
        ("float8_val", proto.float8_val.len()),
    ]
}

/// The dtype of a request tensor, if oxserve can hold it.
fn servable_dtype(value: i32) -> Result<DType> {
    let dtype = DType::from_tf(value);
    match dtype {
        _ if dtype.is_servable() => Ok(dtype),
        DType::Invalid => Err(Error::invalid_argument("dtype is DT_INVALID (not set)")),
        DType::Other(number) => Err(Error::invalid_argument(format!(
            "dtype {number} is not a TensorFlow DataType that can be fed"
        ))),
        other => Err(Error::unimplemented(format!(
            "tensors of type {} are not supported by oxserve",
            other.proto_name()
        ))),
    }
}

/// TensorFlow's `Tensor::FromProto`, strict as described in the module documentation.
pub fn tensor_from_proto(mut proto: TensorProto) -> Result<Tensor> {
    let dtype = servable_dtype(proto.dtype)?;
    let shape = shape_from_proto(proto.tensor_shape.as_ref())?;
    // `shape_from_proto` checked that the count fits.
    let n = element_count(&shape)?;
    let field = value_field(dtype);
    let counts = value_counts(&proto);
    if let Some((stray, count)) = counts
        .iter()
        .find(|(name, count)| *count > 0 && *name != field)
    {
        return Err(Error::invalid_argument(format!(
            "{} tensors take their values from {field} or tensor_content, but {stray} has {count} values",
            dtype.name()
        )));
    }
    let given = counts
        .iter()
        .find(|(name, _)| *name == field)
        .map_or(0, |(_, c)| *c);
    if !proto.tensor_content.is_empty() {
        if given > 0 {
            return Err(Error::invalid_argument(format!(
                "both tensor_content and {field} are set; give the values in one of them"
            )));
        }
        let data = decode_content(dtype, &proto.tensor_content, n, &shape)?;
        return Tensor::new(shape, data);
    }
    let shaped = Shaped {
        n,
        shape: &shape,
        field,
        dtype,
    };
    let data = match dtype {
        DType::Float => TensorData::Float(shaped.fill(std::mem::take(&mut proto.float_val))?),
        DType::Double => TensorData::Double(shaped.fill(std::mem::take(&mut proto.double_val))?),
        DType::Int32 => TensorData::Int32(shaped.fill(std::mem::take(&mut proto.int_val))?),
        DType::Int16 => TensorData::Int16(shaped.fill(narrow(&proto.int_val, |v| v as i16))?),
        DType::Int8 => TensorData::Int8(shaped.fill(narrow(&proto.int_val, |v| v as i8))?),
        DType::UInt16 => TensorData::UInt16(shaped.fill(narrow(&proto.int_val, |v| v as u16))?),
        DType::UInt8 => TensorData::UInt8(shaped.fill(narrow(&proto.int_val, |v| v as u8))?),
        DType::Int64 => TensorData::Int64(shaped.fill(std::mem::take(&mut proto.int64_val))?),
        DType::UInt32 => TensorData::UInt32(shaped.fill(std::mem::take(&mut proto.uint32_val))?),
        DType::UInt64 => TensorData::UInt64(shaped.fill(std::mem::take(&mut proto.uint64_val))?),
        DType::Bool => TensorData::Bool(shaped.fill(std::mem::take(&mut proto.bool_val))?),
        // half_val holds the bits of each value in the low 16 bits of an int32.
        DType::Half => {
            TensorData::Half(shaped.fill(narrow(&proto.half_val, |v| f16::from_bits(v as u16)))?)
        }
        DType::BFloat16 => TensorData::BFloat16(
            shaped.fill(narrow(&proto.half_val, |v| bf16::from_bits(v as u16)))?,
        ),
        DType::Complex64 => TensorData::Complex64(shaped.fill(pairs(&proto.scomplex_val)?)?),
        DType::Complex128 => TensorData::Complex128(shaped.fill(pairs(&proto.dcomplex_val)?)?),
        _ => TensorData::String(shaped.fill_strings(std::mem::take(&mut proto.string_val))?),
    };
    Tensor::new(shape, data)
}

fn narrow<T>(values: &[i32], convert: impl Fn(i32) -> T) -> Vec<T> {
    values.iter().map(|&v| convert(v)).collect()
}

/// Complex values: real and imaginary parts alternate in `scomplex_val` / `dcomplex_val`.
fn pairs<T: Copy>(values: &[T]) -> Result<Vec<[T; 2]>> {
    if !values.len().is_multiple_of(2) {
        return Err(Error::invalid_argument(format!(
            "complex values come in (real, imaginary) pairs, but {} values were given",
            values.len()
        )));
    }
    Ok(values.chunks_exact(2).map(|p| [p[0], p[1]]).collect())
}

/// What the values of one typed field must fill.
struct Shaped<'a> {
    n: usize,
    shape: &'a [usize],
    field: &'static str,
    dtype: DType,
}

impl Shaped<'_> {
    /// Exactly `n` values, or one value repeated `n` times.
    fn fill<T: Clone>(&self, values: Vec<T>) -> Result<Vec<T>> {
        self.fill_sized(values, std::mem::size_of::<T>())
    }

    fn fill_strings(&self, values: Vec<Bytes>) -> Result<Vec<Vec<u8>>> {
        let element_bytes = values
            .first()
            .map_or(0, |s| s.len() + std::mem::size_of::<Vec<u8>>());
        let values = self.fill_sized(values, element_bytes)?;
        Ok(values.into_iter().map(|s| s.to_vec()).collect())
    }

    fn fill_sized<T: Clone>(&self, values: Vec<T>, element_bytes: usize) -> Result<Vec<T>> {
        let count = values.len();
        if count == self.n {
            return Ok(values);
        }
        if count == 1 && self.n > 0 {
            let bytes = self.n.saturating_mul(element_bytes);
            if bytes > MAX_FILL_BYTES {
                return Err(Error::invalid_argument(format!(
                    "filling shape {} from one {} value needs {bytes} bytes, more than oxserve's limit of {MAX_FILL_BYTES}",
                    usize_shape_string(self.shape),
                    self.dtype.name()
                )));
            }
            return Ok(vec![values[0].clone(); self.n]);
        }
        Err(Error::invalid_argument(if count == 0 {
            format!(
                "shape {} has {} elements, but neither {} nor tensor_content holds any value",
                usize_shape_string(self.shape),
                self.n,
                self.field
            )
        } else {
            format!(
                "shape {} has {} elements, but {} has {count} values (give {}, or 1 to fill the shape)",
                usize_shape_string(self.shape),
                self.n,
                self.field,
                self.n
            )
        }))
    }
}

fn decode_content(dtype: DType, content: &[u8], n: usize, shape: &[usize]) -> Result<TensorData> {
    if dtype == DType::String {
        return decode_string_list(content, n, shape).map(TensorData::String);
    }
    let size = dtype.element_size().unwrap_or(1);
    let expected = n.saturating_mul(size);
    if content.len() != expected {
        return Err(Error::invalid_argument(format!(
            "tensor_content has {} bytes, but shape {} of {} needs {n} x {size} = {expected}",
            content.len(),
            usize_shape_string(shape),
            dtype.name()
        )));
    }
    TensorData::from_bytes(dtype, content)
}

/// TensorFlow's `port::DecodeStringList`: `n` varint32 lengths, then the strings' bytes.
fn decode_string_list(content: &[u8], n: usize, shape: &[usize]) -> Result<Vec<Vec<u8>>> {
    let bad = |why: String| {
        Error::invalid_argument(format!(
            "tensor_content of {} bytes is not a list of {n} strings for shape {}: {why}",
            content.len(),
            usize_shape_string(shape)
        ))
    };
    // Every length takes at least one byte: this bounds `n` before anything is allocated.
    if n > content.len() {
        return Err(bad("too short to hold the lengths".to_string()));
    }
    let mut lengths = Vec::with_capacity(n);
    let mut rest = content;
    for i in 0..n {
        let (length, used) =
            read_varint32(rest).ok_or_else(|| bad(format!("length {i} is not a varint32")))?;
        lengths.push(length as usize);
        rest = &rest[used..];
    }
    let total: u64 = lengths.iter().map(|&l| l as u64).sum();
    if total != rest.len() as u64 {
        return Err(bad(format!(
            "the lengths add up to {total} bytes, but {} bytes follow them",
            rest.len()
        )));
    }
    let mut strings = Vec::with_capacity(n);
    for length in lengths {
        let (head, tail) = rest.split_at(length);
        strings.push(head.to_vec());
        rest = tail;
    }
    Ok(strings)
}

fn read_varint32(bytes: &[u8]) -> Option<(u32, usize)> {
    let mut value: u64 = 0;
    for (i, &byte) in bytes.iter().take(5).enumerate() {
        value |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return u32::try_from(value).ok().map(|v| (v, i + 1));
        }
    }
    None
}

/// TensorFlow's `port::EncodeStringList`.
fn encode_string_list(strings: &[Vec<u8>]) -> Bytes {
    let total: usize = strings.iter().map(|s| s.len() + 5).sum();
    let mut out = Vec::with_capacity(total);
    for s in strings {
        let mut length = s.len() as u64;
        loop {
            let byte = (length & 0x7f) as u8;
            length >>= 7;
            if length == 0 {
                out.push(byte);
                break;
            }
            out.push(byte | 0x80);
        }
    }
    for s in strings {
        out.extend_from_slice(s);
    }
    Bytes::from(out)
}

pub fn shape_to_proto(shape: &[usize]) -> TensorShapeProto {
    TensorShapeProto::from_sizes(shape.iter().map(|&size| size as i64))
}

/// TensorFlow's `AsProtoField` (typed fields) or, with `as_content`, `AsProtoTensorContent`.
pub fn tensor_to_proto(tensor: Tensor, as_content: bool) -> TensorProto {
    let dtype = tensor.dtype();
    let (shape, data) = tensor.into_parts();
    let mut proto = TensorProto {
        dtype: dtype.to_tf(),
        tensor_shape: Some(shape_to_proto(&shape)),
        ..TensorProto::default()
    };
    if as_content {
        proto.tensor_content = match data {
            TensorData::String(strings) => encode_string_list(&strings),
            TensorData::UInt8(bytes) => Bytes::from(bytes),
            other => Bytes::copy_from_slice(other.as_bytes().unwrap_or_default()),
        };
        return proto;
    }
    match data {
        TensorData::Float(v) => proto.float_val = v,
        TensorData::Double(v) => proto.double_val = v,
        TensorData::Int32(v) => proto.int_val = v,
        TensorData::Int16(v) => proto.int_val = v.into_iter().map(i32::from).collect(),
        TensorData::Int8(v) => proto.int_val = v.into_iter().map(i32::from).collect(),
        TensorData::UInt16(v) => proto.int_val = v.into_iter().map(i32::from).collect(),
        TensorData::UInt8(v) => proto.int_val = v.into_iter().map(i32::from).collect(),
        TensorData::Int64(v) => proto.int64_val = v,
        TensorData::UInt32(v) => proto.uint32_val = v,
        TensorData::UInt64(v) => proto.uint64_val = v,
        TensorData::Half(v) => proto.half_val = v.into_iter().map(|x| x.to_bits().into()).collect(),
        TensorData::BFloat16(v) => {
            proto.half_val = v.into_iter().map(|x| x.to_bits().into()).collect()
        }
        TensorData::Complex64(v) => proto.scomplex_val = v.into_iter().flatten().collect(),
        TensorData::Complex128(v) => proto.dcomplex_val = v.into_iter().flatten().collect(),
        TensorData::Bool(v) => proto.bool_val = v,
        TensorData::String(v) => proto.string_val = v.into_iter().map(Bytes::from).collect(),
    }
    proto
}

fn shape_string(dims: &[i64]) -> String {
    let dims: Vec<String> = dims.iter().map(i64::to_string).collect();
    format!("[{}]", dims.join(","))
}

fn usize_shape_string(dims: &[usize]) -> String {
    let dims: Vec<String> = dims.iter().map(usize::to_string).collect();
    format!("[{}]", dims.join(","))
}

#[cfg(test)]
mod tests {
    use super::*;
    use oxserve_core::Code;

    fn shape(dims: &[i64]) -> Option<TensorShapeProto> {
        Some(TensorShapeProto::from_sizes(dims.iter().copied()))
    }

    fn proto(dtype: DType, dims: &[i64]) -> TensorProto {
        TensorProto {
            dtype: dtype.to_tf(),
            tensor_shape: shape(dims),
            ..TensorProto::default()
        }
    }

    fn parse(p: TensorProto) -> Tensor {
        tensor_from_proto(p).expect("parses")
    }

    fn parse_err(p: TensorProto) -> Error {
        tensor_from_proto(p).expect_err("is rejected")
    }

    /// Every supported dtype as typed values, and back through both encodings.
    fn every_dtype() -> Vec<(TensorProto, TensorData)> {
        let mut cases = Vec::new();
        let mut p = proto(DType::Float, &[2]);
        p.float_val = vec![1.5, -2.0];
        cases.push((p, TensorData::Float(vec![1.5, -2.0])));
        let mut p = proto(DType::Double, &[2]);
        p.double_val = vec![1e300, -0.5];
        cases.push((p, TensorData::Double(vec![1e300, -0.5])));
        let mut p = proto(DType::Int32, &[2]);
        p.int_val = vec![i32::MIN, 7];
        cases.push((p, TensorData::Int32(vec![i32::MIN, 7])));
        let mut p = proto(DType::Int16, &[2]);
        p.int_val = vec![-300, 300];
        cases.push((p, TensorData::Int16(vec![-300, 300])));
        let mut p = proto(DType::Int8, &[2]);
        p.int_val = vec![-128, 127];
        cases.push((p, TensorData::Int8(vec![-128, 127])));
        let mut p = proto(DType::UInt8, &[2]);
        p.int_val = vec![0, 255];
        cases.push((p, TensorData::UInt8(vec![0, 255])));
        let mut p = proto(DType::UInt16, &[2]);
        p.int_val = vec![0, 65535];
        cases.push((p, TensorData::UInt16(vec![0, 65535])));
        let mut p = proto(DType::Half, &[2]);
        p.half_val = vec![0x3C00, 0xC000];
        cases.push((p, TensorData::Half(vec![f16::ONE, -f16::from_f32(2.0)])));
        let mut p = proto(DType::BFloat16, &[2]);
        p.half_val = vec![0x3F80, 0x7F7F];
        cases.push((p, TensorData::BFloat16(vec![bf16::ONE, bf16::MAX])));
        let mut p = proto(DType::Complex64, &[2]);
        p.scomplex_val = vec![1.0, -2.0, 0.5, 0.0];
        cases.push((p, TensorData::Complex64(vec![[1.0, -2.0], [0.5, 0.0]])));
        let mut p = proto(DType::Complex128, &[2]);
        p.dcomplex_val = vec![1e300, -2.0, 0.5, 0.0];
        cases.push((p, TensorData::Complex128(vec![[1e300, -2.0], [0.5, 0.0]])));
        let mut p = proto(DType::Int64, &[2]);
        p.int64_val = vec![i64::MIN, i64::MAX];
        cases.push((p, TensorData::Int64(vec![i64::MIN, i64::MAX])));
        let mut p = proto(DType::UInt32, &[2]);
        p.uint32_val = vec![0, u32::MAX];
        cases.push((p, TensorData::UInt32(vec![0, u32::MAX])));
        let mut p = proto(DType::UInt64, &[2]);
        p.uint64_val = vec![0, u64::MAX];
        cases.push((p, TensorData::UInt64(vec![0, u64::MAX])));
        let mut p = proto(DType::Bool, &[2]);
        p.bool_val = vec![true, false];
        cases.push((p, TensorData::Bool(vec![true, false])));
        let mut p = proto(DType::String, &[2]);
        p.string_val = vec![Bytes::from_static(b"\xff\x00jpeg"), Bytes::new()];
        cases.push((
            p,
            TensorData::String(vec![b"\xff\x00jpeg".to_vec(), Vec::new()]),
        ));
        cases
    }

    #[test]
    fn every_dtype_parses_from_its_typed_field_and_round_trips() {
        for (p, data) in every_dtype() {
            let tensor = parse(p.clone());
            assert_eq!(tensor.shape(), &[2]);
            assert_eq!(tensor.data(), &data);
            assert_eq!(
                tensor_to_proto(tensor.clone(), false),
                p,
                "typed output of {data:?}"
            );
            let content = tensor_to_proto(tensor.clone(), true);
            assert!(!content.tensor_content.is_empty());
            assert_eq!(value_counts(&content).iter().map(|c| c.1).sum::<usize>(), 0);
            assert_eq!(
                parse(content),
                tensor,
                "tensor_content round trip of {data:?}"
            );
        }
    }

    #[test]
    fn tensor_content_is_little_endian_bytes() {
        let mut p = proto(DType::Float, &[2, 1]);
        p.tensor_content = Bytes::from([1.0f32.to_le_bytes(), 2.5f32.to_le_bytes()].concat());
        let tensor = parse(p);
        assert_eq!(tensor.shape(), &[2, 1]);
        assert_eq!(tensor.data(), &TensorData::Float(vec![1.0, 2.5]));

        let mut p = proto(DType::Int16, &[1]);
        p.tensor_content = Bytes::from_static(&[0x01, 0x80]);
        assert_eq!(parse(p).data(), &TensorData::Int16(vec![-32767]));

        let mut p = proto(DType::Bool, &[3]);
        p.tensor_content = Bytes::from_static(&[1, 0, 1]);
        assert_eq!(parse(p).data(), &TensorData::Bool(vec![true, false, true]));
    }

    #[test]
    fn string_tensor_content_is_tensorflows_string_list() {
        let long = vec![b'x'; 200];
        let mut p = proto(DType::String, &[3]);
        let mut content = vec![2u8, 0, 0xc8, 0x01];
        content.extend_from_slice(b"ab");
        content.extend_from_slice(&long);
        p.tensor_content = Bytes::from(content.clone());
        let tensor = parse(p);
        assert_eq!(
            tensor.data(),
            &TensorData::String(vec![b"ab".to_vec(), Vec::new(), long.clone()])
        );
        assert_eq!(
            tensor_to_proto(tensor, true).tensor_content,
            Bytes::from(content)
        );
    }

    #[test]
    fn one_value_fills_the_shape() {
        let mut p = proto(DType::Float, &[2, 3]);
        p.float_val = vec![7.0];
        let tensor = parse(p);
        assert_eq!(tensor.shape(), &[2, 3]);
        assert_eq!(tensor.data(), &TensorData::Float(vec![7.0; 6]));

        let mut p = proto(DType::UInt8, &[4]);
        p.int_val = vec![9];
        assert_eq!(parse(p).data(), &TensorData::UInt8(vec![9; 4]));

        let mut p = proto(DType::String, &[2]);
        p.string_val = vec![Bytes::from_static(b"s")];
        assert_eq!(
            parse(p).data(),
            &TensorData::String(vec![b"s".to_vec(), b"s".to_vec()])
        );
    }

    #[test]
    fn scalars_and_empty_tensors() {
        let mut p = TensorProto {
            dtype: DType::Int64.to_tf(),
            ..TensorProto::default()
        };
        p.int64_val = vec![5];
        let tensor = parse(p);
        assert!(tensor.shape().is_empty());
        assert_eq!(tensor.data(), &TensorData::Int64(vec![5]));

        let tensor = parse(proto(DType::Float, &[0, 3]));
        assert_eq!(tensor.shape(), &[0, 3]);
        assert!(tensor.is_empty());
        let out = tensor_to_proto(tensor, false);
        assert!(out.float_val.is_empty());
        assert_eq!(out.tensor_shape, shape(&[0, 3]));
    }

    #[test]
    fn int_val_narrows_like_a_cpp_cast() {
        let mut p = proto(DType::Int8, &[2]);
        p.int_val = vec![255, 256 + 3];
        assert_eq!(parse(p).data(), &TensorData::Int8(vec![-1, 3]));
        let mut p = proto(DType::UInt16, &[1]);
        p.int_val = vec![-1];
        assert_eq!(parse(p).data(), &TensorData::UInt16(vec![65535]));
    }

    #[test]
    fn value_count_must_match_the_shape() {
        let mut p = proto(DType::Float, &[2, 2]);
        p.float_val = vec![1.0, 2.0, 3.0];
        let err = parse_err(p);
        assert_eq!(err.code, Code::InvalidArgument);
        assert_eq!(
            err.message,
            "shape [2,2] has 4 elements, but float_val has 3 values (give 4, or 1 to fill the shape)"
        );

        let mut p = proto(DType::Float, &[1]);
        p.float_val = vec![1.0, 2.0];
        assert_eq!(parse_err(p).code, Code::InvalidArgument);

        let err = parse_err(proto(DType::Int32, &[3]));
        assert_eq!(
            err.message,
            "shape [3] has 3 elements, but neither int_val nor tensor_content holds any value"
        );

        let mut p = proto(DType::Float, &[0]);
        p.float_val = vec![1.0];
        assert_eq!(parse_err(p).code, Code::InvalidArgument);
    }

    #[test]
    fn huge_shapes_without_data_allocate_nothing() {
        // 2**40 floats would be 4 TiB: rejected by counting, before any allocation.
        let err = parse_err(proto(DType::Float, &[1 << 20, 1 << 20]));
        assert_eq!(err.code, Code::InvalidArgument);
        let mut p = proto(DType::String, &[1 << 40]);
        p.tensor_content = Bytes::from_static(&[0, 0, 0]);
        assert!(parse_err(p)
            .message
            .contains("too short to hold the lengths"));
        let mut p = proto(DType::Double, &[1 << 40]);
        p.tensor_content = Bytes::from_static(&[0; 8]);
        assert!(parse_err(p).message.contains("needs 1099511627776 x 8"));
        // Filling is capped too.
        let mut p = proto(DType::Float, &[1 << 40]);
        p.float_val = vec![1.0];
        assert!(parse_err(p).message.contains("more than oxserve's limit"));
        let mut p = proto(DType::String, &[1 << 30]);
        p.string_val = vec![Bytes::from_static(b"abc")];
        assert!(parse_err(p).message.contains("more than oxserve's limit"));
    }

    #[test]
    fn bad_shapes_are_rejected() {
        let err = parse_err(proto(DType::Float, &[2, -1]));
        assert_eq!(err.code, Code::InvalidArgument);
        assert_eq!(
            err.message,
            "tensor_shape [2,-1] has a negative dimension (-1)"
        );

        let err = parse_err(proto(DType::Float, &[1 << 62, 1 << 62]));
        assert_eq!(
            err.message,
            format!(
                "tensor_shape [{0},{0}] has more than 2**63 - 1 elements",
                1u64 << 62
            )
        );
        let err = parse_err(proto(DType::Float, &[i64::MAX, 2]));
        assert_eq!(err.code, Code::InvalidArgument);

        let err = parse_err(proto(DType::Float, &vec![1; MAX_DIMS + 1]));
        assert!(err.message.contains("255 dimensions"));
        let mut p = proto(DType::Float, &vec![1; MAX_DIMS]);
        p.float_val = vec![1.0];
        assert_eq!(parse(p).shape().len(), MAX_DIMS);

        let mut p = proto(DType::Float, &[]);
        p.tensor_shape = Some(TensorShapeProto {
            dim: Vec::new(),
            unknown_rank: true,
        });
        p.float_val = vec![1.0];
        assert!(parse_err(p).message.contains("unknown_rank"));
    }

    #[test]
    fn bad_dtypes_are_rejected() {
        let mut p = proto(DType::Invalid, &[1]);
        p.float_val = vec![1.0];
        let err = parse_err(p);
        assert_eq!(
            (err.code, err.message.as_str()),
            (Code::InvalidArgument, "dtype is DT_INVALID (not set)")
        );

        let mut p = proto(DType::Float, &[1]);
        p.dtype = 999;
        p.float_val = vec![1.0];
        assert_eq!(parse_err(p).code, Code::InvalidArgument);
        let mut p = proto(DType::Float, &[1]);
        p.dtype = 101; // DT_FLOAT_REF
        p.float_val = vec![1.0];
        assert_eq!(parse_err(p).code, Code::InvalidArgument);

        for dtype in [DType::QInt8, DType::Resource, DType::Variant] {
            let err = parse_err(proto(dtype, &[1]));
            assert_eq!(err.code, Code::Unimplemented, "{dtype:?}");
        }
        let err = parse_err(proto(DType::QInt8, &[1]));
        assert_eq!(
            err.message,
            "tensors of type DT_QINT8 are not supported by oxserve"
        );
    }

    #[test]
    fn values_must_be_in_the_dtypes_field() {
        let mut p = proto(DType::Float, &[1]);
        p.int_val = vec![1];
        let err = parse_err(p);
        assert_eq!(
            err.message,
            "float tensors take their values from float_val or tensor_content, but int_val has 1 values"
        );
        let mut p = proto(DType::Int64, &[1]);
        p.int64_val = vec![1];
        p.string_val = vec![Bytes::from_static(b"x")];
        assert_eq!(parse_err(p).code, Code::InvalidArgument);

        let mut p = proto(DType::Float, &[1]);
        p.float_val = vec![1.0];
        p.tensor_content = Bytes::from(1.0f32.to_le_bytes().to_vec());
        assert!(parse_err(p)
            .message
            .starts_with("both tensor_content and float_val"));
    }

    #[test]
    fn tensor_content_length_must_match() {
        let mut p = proto(DType::Int32, &[3]);
        p.tensor_content = Bytes::from_static(&[0; 8]);
        assert_eq!(
            parse_err(p).message,
            "tensor_content has 8 bytes, but shape [3] of int32 needs 3 x 4 = 12"
        );
        let mut p = proto(DType::Float, &[0]);
        p.tensor_content = Bytes::from_static(&[0; 4]);
        assert_eq!(parse_err(p).code, Code::InvalidArgument);

        for content in [
            &[3u8, b'a', b'b'][..],
            &[1, b'a', b'b'],
            &[0x80, 0x80, 0x80, 0x80, 0x80, 0x01],
            &[0xff],
        ] {
            let mut p = proto(DType::String, &[1]);
            p.tensor_content = Bytes::copy_from_slice(content);
            assert_eq!(parse_err(p).code, Code::InvalidArgument, "{content:?}");
        }
    }

    #[test]
    fn input_errors_name_the_alias() {
        let err = parse_input("x", proto(DType::Float, &[-3])).unwrap_err();
        assert_eq!(
            err.message,
            "tensor parsing error: x (tensor_shape [-3] has a negative dimension (-3))"
        );
        let err = parse_input("x", proto(DType::Variant, &[1])).unwrap_err();
        assert_eq!(err.code, Code::Unimplemented);
        assert!(err.message.starts_with("tensor parsing error: x ("));
    }
}
