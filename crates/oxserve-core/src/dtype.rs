//! TensorFlow's `DataType`, with the two spellings TF uses: `DT_FLOAT` in protos and JSON metadata,
//! `float` in error messages.

/// Every base TensorFlow dtype (`tensorflow/core/framework/types.proto`); reference types and the
/// newer narrow float types are not servable and fall under `Other`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DType {
    Invalid,
    Float,
    Double,
    Int32,
    UInt8,
    Int16,
    Int8,
    String,
    Complex64,
    Int64,
    Bool,
    QInt8,
    QUInt8,
    QInt32,
    BFloat16,
    QInt16,
    QUInt16,
    UInt16,
    Complex128,
    Half,
    Resource,
    Variant,
    UInt32,
    UInt64,
    Other(i32),
}

const TABLE: &[(DType, i32, &str, &str)] = &[
    (DType::Invalid, 0, "DT_INVALID", "INVALID"),
    (DType::Float, 1, "DT_FLOAT", "float"),
    (DType::Double, 2, "DT_DOUBLE", "double"),
    (DType::Int32, 3, "DT_INT32", "int32"),
    (DType::UInt8, 4, "DT_UINT8", "uint8"),
    (DType::Int16, 5, "DT_INT16", "int16"),
    (DType::Int8, 6, "DT_INT8", "int8"),
    (DType::String, 7, "DT_STRING", "string"),
    (DType::Complex64, 8, "DT_COMPLEX64", "complex64"),
    (DType::Int64, 9, "DT_INT64", "int64"),
    (DType::Bool, 10, "DT_BOOL", "bool"),
    (DType::QInt8, 11, "DT_QINT8", "qint8"),
    (DType::QUInt8, 12, "DT_QUINT8", "quint8"),
    (DType::QInt32, 13, "DT_QINT32", "qint32"),
    (DType::BFloat16, 14, "DT_BFLOAT16", "bfloat16"),
    (DType::QInt16, 15, "DT_QINT16", "qint16"),
    (DType::QUInt16, 16, "DT_QUINT16", "quint16"),
    (DType::UInt16, 17, "DT_UINT16", "uint16"),
    (DType::Complex128, 18, "DT_COMPLEX128", "complex128"),
    (DType::Half, 19, "DT_HALF", "half"),
    (DType::Resource, 20, "DT_RESOURCE", "resource"),
    (DType::Variant, 21, "DT_VARIANT", "variant"),
    (DType::UInt32, 22, "DT_UINT32", "uint32"),
    (DType::UInt64, 23, "DT_UINT64", "uint64"),
];

impl DType {
    /// From the `DataType` enum number of TF's protos and C API.
    pub fn from_tf(value: i32) -> DType {
        TABLE
            .iter()
            .find(|row| row.1 == value)
            .map_or(DType::Other(value), |row| row.0)
    }

    /// The `DataType` enum number.
    pub fn to_tf(self) -> i32 {
        match self {
            DType::Other(value) => value,
            known => TABLE
                .iter()
                .find(|row| row.0 == known)
                .map_or(0, |row| row.1),
        }
    }

    /// The proto enum name, e.g. `DT_FLOAT`, as TF Serving's JSON metadata prints it. Reference
    /// types (TF1 variables, enum number base + 100) print as e.g. `DT_FLOAT_REF`.
    pub fn proto_name(self) -> String {
        if let DType::Other(value @ 101..=123) = self {
            return format!("{}_REF", DType::from_tf(value - 100).proto_name());
        }
        TABLE
            .iter()
            .find(|row| row.0 == self)
            .map_or_else(|| self.to_tf().to_string(), |row| row.2.to_string())
    }

    /// TF's `DataTypeString`, e.g. `float`, as TF Serving's error messages print it.
    pub fn name(self) -> String {
        TABLE.iter().find(|row| row.0 == self).map_or_else(
            || format!("unknown dtype enum ({})", self.to_tf()),
            |row| row.3.to_string(),
        )
    }

    /// Whether oxserve can hold tensors of this dtype: strings and the fixed-size dtypes.
    pub fn is_servable(self) -> bool {
        self == DType::String || self.element_size().is_some()
    }

    /// Size in bytes of one element for fixed-size dtypes that oxserve can hold in a `Tensor`.
    pub fn element_size(self) -> Option<usize> {
        Some(match self {
            DType::Float | DType::Int32 | DType::UInt32 => 4,
            DType::Double | DType::Int64 | DType::UInt64 | DType::Complex64 => 8,
            DType::Complex128 => 16,
            DType::Int16 | DType::UInt16 | DType::Half | DType::BFloat16 => 2,
            DType::Int8 | DType::UInt8 | DType::Bool => 1,
            _ => return None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enum_numbers_round_trip() {
        for value in 0..=23 {
            assert_eq!(DType::from_tf(value).to_tf(), value);
        }
        assert_eq!(DType::from_tf(101), DType::Other(101));
        assert_eq!(DType::Float.proto_name(), "DT_FLOAT");
        assert_eq!(DType::UInt64.name(), "uint64");
        assert_eq!(DType::from_tf(101).proto_name(), "DT_FLOAT_REF");
    }
}
