//! A REST predict body, decoded three ways that must agree, successes and errors alike, as
//! TF Serving's code would answer: the public entry (streaming fast path, reference fallback),
//! the reference path alone, and a shared body whose long lists are decoded on two threads.
//!
//! The first byte picks the signature's inputs (one to three, aliases "a", "b", "c") and the next
//! three their dtypes; the rest is the body.

#![no_main]

use std::collections::BTreeMap;

use libfuzzer_sys::fuzz_target;
use oxserve_core::{DType, Error, Result, TensorSpec};
use oxserve_server::rest::json::{
    parse_predict_request, parse_predict_request_by_reference, parse_shared_predict_request,
};

/// Every dtype the JSON codec decodes, and one it refuses.
const DTYPES: &[DType] = &[
    DType::Float,
    DType::Double,
    DType::Int32,
    DType::UInt8,
    DType::Int16,
    DType::Int8,
    DType::String,
    DType::Complex64,
    DType::Int64,
    DType::Bool,
    DType::BFloat16,
    DType::UInt16,
    DType::Complex128,
    DType::Half,
    DType::UInt32,
    DType::UInt64,
    DType::QInt8,
];

fn signature(head: &[u8]) -> BTreeMap<String, TensorSpec> {
    let count = 1 + usize::from(head[0] % 3);
    ["a", "b", "c"][..count]
        .iter()
        .zip(&head[1..])
        .map(|(alias, &pick)| {
            let spec = TensorSpec {
                name: format!("{alias}:0"),
                dtype: DTYPES[usize::from(pick) % DTYPES.len()],
                shape: None,
            };
            (alias.to_string(), spec)
        })
        .collect()
}

/// The default signature under "" and "serving_default"; any other name is unknown, as TF
/// Serving says it.
fn lookup<'a>(
    inputs: &'a BTreeMap<String, TensorSpec>,
) -> impl FnMut(&str) -> Result<&'a BTreeMap<String, TensorSpec>> {
    move |name| match name {
        "" | "serving_default" => Ok(inputs),
        _ => Err(Error::invalid_argument(format!(
            "Serving signature name: \"{name}\" not found in signature def"
        ))),
    }
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 4 {
        return;
    }
    let (head, body) = data.split_at(4);
    let inputs = signature(head);
    let public = parse_predict_request(body, lookup(&inputs));
    let reference = parse_predict_request_by_reference(body, lookup(&inputs));
    let shared =
        parse_shared_predict_request(&bytes::Bytes::copy_from_slice(body), lookup(&inputs));
    // Debug text compares NaNs as equal, and errors by code and message.
    let public = format!("{public:?}");
    assert_eq!(
        public,
        format!("{reference:?}"),
        "fast and reference paths disagree"
    );
    assert_eq!(
        public,
        format!("{shared:?}"),
        "shared and borrowed bodies disagree"
    );
});
