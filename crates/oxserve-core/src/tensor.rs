//! Dense tensors: a shape and one typed, contiguous buffer. Strings are byte strings (TF strings are
//! binary-safe), never assumed UTF-8.

use half::{bf16, f16};

use crate::dtype::DType;
use crate::error::{Error, Result};

/// The element buffer of a tensor, one variant per dtype oxserve can serve.
#[derive(Clone, Debug, PartialEq)]
pub enum TensorData {
    Float(Vec<f32>),
    Double(Vec<f64>),
    Int8(Vec<i8>),
    Int16(Vec<i16>),
    Int32(Vec<i32>),
    Int64(Vec<i64>),
    UInt8(Vec<u8>),
    UInt16(Vec<u16>),
    UInt32(Vec<u32>),
    UInt64(Vec<u64>),
    Half(Vec<f16>),
    BFloat16(Vec<bf16>),
    /// Real and imaginary parts, as TensorFlow lays them out.
    Complex64(Vec<[f32; 2]>),
    Complex128(Vec<[f64; 2]>),
    Bool(Vec<bool>),
    String(Vec<Vec<u8>>),
}

/// Applies `$body` to the inner `Vec` of every variant, binding it to `$v`.
#[macro_export]
macro_rules! for_each_data {
    ($data:expr, $v:ident => $body:expr) => {
        match $data {
            $crate::TensorData::Float($v) => $body,
            $crate::TensorData::Double($v) => $body,
            $crate::TensorData::Int8($v) => $body,
            $crate::TensorData::Int16($v) => $body,
            $crate::TensorData::Int32($v) => $body,
            $crate::TensorData::Int64($v) => $body,
            $crate::TensorData::UInt8($v) => $body,
            $crate::TensorData::UInt16($v) => $body,
            $crate::TensorData::UInt32($v) => $body,
            $crate::TensorData::UInt64($v) => $body,
            $crate::TensorData::Half($v) => $body,
            $crate::TensorData::BFloat16($v) => $body,
            $crate::TensorData::Complex64($v) => $body,
            $crate::TensorData::Complex128($v) => $body,
            $crate::TensorData::Bool($v) => $body,
            $crate::TensorData::String($v) => $body,
        }
    };
}

/// Applies `$body` to the inner `Vec` of every plain-old-data variant (all but bool and string),
/// binding it to `$v`; `$other` handles the rest.
#[macro_export]
macro_rules! for_each_pod {
    ($data:expr, $v:ident => $body:expr, $rest:ident => $other:expr) => {
        match $data {
            $crate::TensorData::Float($v) => $body,
            $crate::TensorData::Double($v) => $body,
            $crate::TensorData::Int8($v) => $body,
            $crate::TensorData::Int16($v) => $body,
            $crate::TensorData::Int32($v) => $body,
            $crate::TensorData::Int64($v) => $body,
            $crate::TensorData::UInt8($v) => $body,
            $crate::TensorData::UInt16($v) => $body,
            $crate::TensorData::UInt32($v) => $body,
            $crate::TensorData::UInt64($v) => $body,
            $crate::TensorData::Half($v) => $body,
            $crate::TensorData::BFloat16($v) => $body,
            $crate::TensorData::Complex64($v) => $body,
            $crate::TensorData::Complex128($v) => $body,
            $rest => $other,
        }
    };
}

impl TensorData {
    pub fn dtype(&self) -> DType {
        match self {
            TensorData::Float(_) => DType::Float,
            TensorData::Double(_) => DType::Double,
            TensorData::Int8(_) => DType::Int8,
            TensorData::Int16(_) => DType::Int16,
            TensorData::Int32(_) => DType::Int32,
            TensorData::Int64(_) => DType::Int64,
            TensorData::UInt8(_) => DType::UInt8,
            TensorData::UInt16(_) => DType::UInt16,
            TensorData::UInt32(_) => DType::UInt32,
            TensorData::UInt64(_) => DType::UInt64,
            TensorData::Half(_) => DType::Half,
            TensorData::BFloat16(_) => DType::BFloat16,
            TensorData::Complex64(_) => DType::Complex64,
            TensorData::Complex128(_) => DType::Complex128,
            TensorData::Bool(_) => DType::Bool,
            TensorData::String(_) => DType::String,
        }
    }

    pub fn len(&self) -> usize {
        for_each_data!(self, v => v.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The bytes the elements take in memory: a string costs its bytes and its `Vec`'s 24.
    pub fn footprint(&self) -> usize {
        match self {
            TensorData::String(v) => v.iter().map(|s| s.len() + size_of::<Vec<u8>>()).sum(),
            TensorData::Bool(v) => v.len(),
            pod => for_each_pod!(pod, v => size_of_val(v.as_slice()), _other => 0),
        }
    }

    /// An empty buffer of `dtype` with room for `capacity` elements.
    pub fn with_capacity(dtype: DType, capacity: usize) -> Result<TensorData> {
        Ok(match dtype {
            DType::Float => TensorData::Float(Vec::with_capacity(capacity)),
            DType::Double => TensorData::Double(Vec::with_capacity(capacity)),
            DType::Int8 => TensorData::Int8(Vec::with_capacity(capacity)),
            DType::Int16 => TensorData::Int16(Vec::with_capacity(capacity)),
            DType::Int32 => TensorData::Int32(Vec::with_capacity(capacity)),
            DType::Int64 => TensorData::Int64(Vec::with_capacity(capacity)),
            DType::UInt8 => TensorData::UInt8(Vec::with_capacity(capacity)),
            DType::UInt16 => TensorData::UInt16(Vec::with_capacity(capacity)),
            DType::UInt32 => TensorData::UInt32(Vec::with_capacity(capacity)),
            DType::UInt64 => TensorData::UInt64(Vec::with_capacity(capacity)),
            DType::Half => TensorData::Half(Vec::with_capacity(capacity)),
            DType::BFloat16 => TensorData::BFloat16(Vec::with_capacity(capacity)),
            DType::Complex64 => TensorData::Complex64(Vec::with_capacity(capacity)),
            DType::Complex128 => TensorData::Complex128(Vec::with_capacity(capacity)),
            DType::Bool => TensorData::Bool(Vec::with_capacity(capacity)),
            DType::String => TensorData::String(Vec::with_capacity(capacity)),
            other => {
                return Err(Error::unimplemented(format!(
                    "tensors of type {} are not supported",
                    other.name()
                )))
            }
        })
    }

    /// The raw native-endian bytes of a fixed-size buffer; `None` for strings.
    pub fn as_bytes(&self) -> Option<&[u8]> {
        match self {
            TensorData::Bool(v) => Some(bytemuck::cast_slice(v)),
            TensorData::String(_) => None,
            pod => for_each_pod!(pod, v => Some(bytemuck::cast_slice(v)), _other => None),
        }
    }

    /// Builds a fixed-size buffer from raw native-endian bytes (any alignment).
    pub fn from_bytes(dtype: DType, bytes: &[u8]) -> Result<TensorData> {
        let size = dtype.element_size().ok_or_else(|| {
            Error::unimplemented(format!(
                "tensors of type {} are not supported",
                dtype.name()
            ))
        })?;
        if !bytes.len().is_multiple_of(size) {
            return Err(Error::invalid_argument(format!(
                "{} bytes is not a whole number of {} elements",
                bytes.len(),
                dtype.name()
            )));
        }
        Ok(match dtype {
            DType::Float => TensorData::Float(bytemuck::pod_collect_to_vec(bytes)),
            DType::Double => TensorData::Double(bytemuck::pod_collect_to_vec(bytes)),
            DType::Int8 => TensorData::Int8(bytemuck::pod_collect_to_vec(bytes)),
            DType::Int16 => TensorData::Int16(bytemuck::pod_collect_to_vec(bytes)),
            DType::Int32 => TensorData::Int32(bytemuck::pod_collect_to_vec(bytes)),
            DType::Int64 => TensorData::Int64(bytemuck::pod_collect_to_vec(bytes)),
            DType::UInt8 => TensorData::UInt8(bytes.to_vec()),
            DType::UInt16 => TensorData::UInt16(bytemuck::pod_collect_to_vec(bytes)),
            DType::UInt32 => TensorData::UInt32(bytemuck::pod_collect_to_vec(bytes)),
            DType::UInt64 => TensorData::UInt64(bytemuck::pod_collect_to_vec(bytes)),
            DType::Half => TensorData::Half(bytemuck::pod_collect_to_vec(bytes)),
            DType::BFloat16 => TensorData::BFloat16(bytemuck::pod_collect_to_vec(bytes)),
            DType::Complex64 => TensorData::Complex64(bytemuck::pod_collect_to_vec(bytes)),
            DType::Complex128 => TensorData::Complex128(bytemuck::pod_collect_to_vec(bytes)),
            DType::Bool => TensorData::Bool(bytes.iter().map(|&b| b != 0).collect()),
            _ => unreachable!("element_size is None for every other dtype"),
        })
    }
}

/// A dense tensor. The element count always equals the product of the shape.
#[derive(Clone, Debug, PartialEq)]
pub struct Tensor {
    shape: Vec<usize>,
    data: TensorData,
}

/// The number of elements of `shape`, or an error when it overflows.
pub fn element_count(shape: &[usize]) -> Result<usize> {
    shape
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| Error::invalid_argument(format!("Tensor shape {shape:?} is too large")))
}

impl Tensor {
    pub fn new(shape: Vec<usize>, data: TensorData) -> Result<Tensor> {
        let expected = element_count(&shape)?;
        if expected != data.len() {
            return Err(Error::invalid_argument(format!(
                "Tensor of shape {:?} needs {expected} elements, got {}",
                shape,
                data.len()
            )));
        }
        Ok(Tensor { shape, data })
    }

    /// A rank-1 tensor of the given elements.
    pub fn vector(data: TensorData) -> Tensor {
        Tensor {
            shape: vec![data.len()],
            data,
        }
    }

    pub fn dtype(&self) -> DType {
        self.data.dtype()
    }

    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    pub fn data(&self) -> &TensorData {
        &self.data
    }

    pub fn into_parts(self) -> (Vec<usize>, TensorData) {
        (self.shape, self.data)
    }

    pub fn len(&self) -> usize {
        self.data.len()
    }

    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shape_must_match_element_count() {
        assert!(Tensor::new(vec![2, 2], TensorData::Float(vec![1.0; 4])).is_ok());
        let err = Tensor::new(vec![2, 3], TensorData::Float(vec![1.0; 4])).unwrap_err();
        assert_eq!(err.code, crate::Code::InvalidArgument);
        assert!(Tensor::new(vec![usize::MAX, 2], TensorData::Float(vec![])).is_err());
    }

    #[test]
    fn bytes_round_trip_for_every_fixed_size_dtype() {
        let tensors = [
            TensorData::Float(vec![1.5, -2.0]),
            TensorData::Double(vec![1e300]),
            TensorData::Int8(vec![-1, 2]),
            TensorData::UInt16(vec![65535]),
            TensorData::Int64(vec![i64::MIN]),
            TensorData::Bool(vec![true, false]),
        ];
        for data in tensors {
            let bytes = data.as_bytes().unwrap().to_vec();
            assert_eq!(TensorData::from_bytes(data.dtype(), &bytes).unwrap(), data);
        }
        assert!(TensorData::from_bytes(DType::Float, &[0, 0, 0]).is_err());
        assert!(TensorData::String(vec![]).as_bytes().is_none());
    }

    #[test]
    fn footprints_count_elements_and_each_strings_vec() {
        assert_eq!(TensorData::Float(vec![0.0; 10]).footprint(), 40);
        assert_eq!(TensorData::Complex128(vec![[0.0; 2]; 2]).footprint(), 32);
        assert_eq!(TensorData::Bool(vec![true; 3]).footprint(), 3);
        let strings = TensorData::String(vec![vec![], b"abc".to_vec()]);
        assert_eq!(strings.footprint(), 2 * 24 + 3);
    }
}
