//! JSON documents other than predict bodies: classify and regress bodies, any value a client may
//! send where TF Serving only checks the syntax, and the lines of `oxserve predict`, whose fast
//! paths must give what a predict request holding the line as its one instance gives.
//!
//! The first byte picks the dense line's dtype, the next three its shape (one to three
//! dimensions of 1 to 4); the rest is the document.

#![no_main]

use std::collections::BTreeMap;

use libfuzzer_sys::fuzz_target;
use oxserve_core::{DType, Result, Tensor, TensorData, TensorSpec};
use oxserve_server::rest::json::{
    check_json_value, parse_b64_instance, parse_dense_instance, parse_example_request,
    parse_predict_request,
};

const DTYPES: &[DType] = &[
    DType::Float,
    DType::Double,
    DType::Int32,
    DType::UInt8,
    DType::Int8,
    DType::Int64,
    DType::Bool,
    DType::Half,
    DType::UInt64,
];

/// The predict request holding `line` as its one instance, for a signature with one input.
fn as_instance(line: &[u8], dtype: DType) -> Result<Vec<(String, Tensor)>> {
    let mut body = b"{\"instances\": [".to_vec();
    body.extend_from_slice(line);
    body.extend_from_slice(b"]}");
    let spec = TensorSpec {
        name: "a:0".into(),
        dtype,
        shape: None,
    };
    let inputs: BTreeMap<_, _> = [("a".to_string(), spec)].into();
    parse_predict_request(&body, |_: &str| Ok(&inputs)).map(|request| request.inputs)
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 4 {
        return;
    }
    let (head, doc) = data.split_at(4);
    let _ = parse_example_request(doc);
    let _ = check_json_value(doc);
    let _ = parse_b64_instance(doc, Some("key"));
    if let Some(instance) = parse_b64_instance(doc, None) {
        let inputs = as_instance(doc, DType::String).expect("a b64 line is a valid instance");
        let [(_, tensor)] = &inputs[..] else {
            panic!("one input expected: {inputs:?}");
        };
        assert_eq!(tensor.shape(), [1]);
        assert_eq!(*tensor.data(), TensorData::String(vec![instance.bytes]));
    }
    let dtype = DTYPES[usize::from(head[0]) % DTYPES.len()];
    let rank = 1 + usize::from(head[1] % 3);
    let shape: Vec<usize> = head[1..=rank]
        .iter()
        .map(|d| 1 + usize::from(d % 4))
        .collect();
    if let Some(tensor) = parse_dense_instance(doc, dtype, &shape) {
        let inputs = as_instance(doc, dtype).expect("a dense line is a valid instance");
        assert_eq!(
            format!("{inputs:?}"),
            format!("{:?}", [("a".to_string(), tensor)])
        );
    }
});
