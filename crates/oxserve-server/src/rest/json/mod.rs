//! TF Serving's JSON codec (`tensorflow_serving/util/json_tensor.cc`), byte-compatible: the same
//! accepted inputs, the same decoded values, the same error messages and codes, the same output
//! bytes.
//!
//! - [`parse_predict_request`]: `{"instances": ...}` (row) or `{"inputs": ...}` (columnar) into
//!   typed tensors, driven by the signature's input dtypes. Tensor data is decoded in one pass,
//!   straight into the typed buffers; no JSON tree is built unless the request is invalid.
//!   [`parse_shared_predict_request`]: the same for a body in `Bytes`, whose long lists may be
//!   decoded on two threads.
//! - [`write_predict_response`]: `{"predictions": ...}` / `{"outputs": ...}`.
//! - [`parse_example_request`], [`write_classify_response`], [`write_regress_response`]:
//!   classify and regress.
//! - [`write_error_response`]: the `{"error": ...}` body.
//!
//! Where TF Serving misbehaves, oxserve deliberately does not, and says so on the function:
//! out-of-range values for int8/int16/uint8 are errors (TF Serving wraps them), uint16 tensors
//! are supported (TF Serving rejects them), nesting is limited to 128 levels (TF Serving
//! overflows its stack), and strings that are not UTF-8 are written as `{"b64": ...}` (TF
//! Serving writes them raw, producing text that is not UTF-8).

mod apart;
mod base64;
mod decimal;
mod digits;
mod dom;
mod example;
mod fast_number;
mod instance;
mod number;
mod predict;
mod pretty;
mod reader;
mod split;
mod writer;

#[cfg(test)]
mod tests;

pub use dom::{check_json_value, parse_json, Number, Value};
pub use example::{parse_example_request, ExamplesRequestJson};
pub use instance::{parse_b64_instance, parse_dense_instance, B64Instance};
#[cfg(fuzzing)]
pub use predict::parse_predict_request_by_reference;
pub use predict::{
    parse_predict_request, parse_shared_predict_request, Format, PredictRequestJson,
    SignatureInputs,
};
pub use writer::{
    write_classify_response, write_error_response, write_predict_response, write_regress_response,
    write_tensor_line, LabelScore,
};
