//! Tests of the JSON codec. Cases marked "json_tensor_test.cc" reproduce TF Serving's own tests
//! (tensorflow_serving/util/json_tensor_test.cc) as data; exact messages and bytes come from
//! reading json_tensor.cc and rapidjson 1.1.0.

use std::collections::BTreeMap;

use oxserve_core::{Code, DType, Error, Result, Tensor, TensorData, TensorSpec};

use super::predict::{self, Fast};
use super::*;

// ------------------------------------------------------------------------------------------------
// Helpers
// ------------------------------------------------------------------------------------------------

fn sig(inputs: &[(&str, DType)]) -> BTreeMap<String, TensorSpec> {
    inputs
        .iter()
        .map(|(name, dtype)| {
            (
                name.to_string(),
                TensorSpec {
                    name: format!("{name}:0"),
                    dtype: *dtype,
                    shape: None,
                },
            )
        })
        .collect()
}

fn lookup_vec(map: &BTreeMap<String, TensorSpec>) -> Vec<(String, DType)> {
    map.iter().map(|(k, s)| (k.clone(), s.dtype)).collect()
}

/// Parses with the public API, from a borrowed body and from a shared one (whose long lists may
/// be decoded on two threads), and checks that both agree with the literal port of TF Serving's
/// code, for successes and errors alike.
fn parse(body: &[u8], map: &BTreeMap<String, TensorSpec>) -> Result<PredictRequestJson> {
    let public = parse_predict_request(body, |_: &str| Ok(map));
    let shared =
        parse_shared_predict_request(&bytes::Bytes::copy_from_slice(body), |_: &str| Ok(map));
    let mut lookup = |_: &[u8]| -> Result<Vec<(String, DType)>> { Ok(lookup_vec(map)) };
    let reference = predict::parse_reference(body, &mut lookup);
    let text = String::from_utf8_lossy(body);
    assert_eq!(
        format!("{public:?}"),
        format!("{reference:?}"),
        "fast and reference paths disagree on {text:?}"
    );
    assert_eq!(
        format!("{shared:?}"),
        format!("{public:?}"),
        "shared and borrowed bodies disagree on {text:?}"
    );
    public
}

/// Like `parse`, and also requires the streaming path to have handled the request by itself.
fn parse_fast(body: &str, map: &BTreeMap<String, TensorSpec>) -> PredictRequestJson {
    let mut lookup = |_: &[u8]| -> Result<Vec<(String, DType)>> { Ok(lookup_vec(map)) };
    match predict::parse_fast(body.as_bytes(), &mut lookup) {
        Fast::Done(_) => {}
        Fast::Error(e) => panic!("fast path error {e:?} on {body}"),
        Fast::Fallback => panic!("fast path gave up on {body}"),
    }
    parse(body.as_bytes(), map).expect("valid request")
}

fn err(body: &str, map: &BTreeMap<String, TensorSpec>) -> Error {
    match parse(body.as_bytes(), map) {
        Ok(r) => panic!("expected an error for {body}, got {r:?}"),
        Err(e) => e,
    }
}

fn err_msg(body: &str, map: &BTreeMap<String, TensorSpec>) -> String {
    let e = err(body, map);
    assert_eq!(e.code, Code::InvalidArgument, "{e:?}");
    e.message
}

fn tensor(shape: &[usize], data: TensorData) -> Tensor {
    Tensor::new(shape.to_vec(), data).unwrap()
}

fn input<'a>(r: &'a PredictRequestJson, name: &str) -> &'a Tensor {
    &r.inputs
        .iter()
        .find(|(n, _)| n == name)
        .unwrap_or_else(|| panic!("no input {name}"))
        .1
}

fn strings(v: &[&str]) -> TensorData {
    TensorData::String(v.iter().map(|s| s.as_bytes().to_vec()).collect())
}

fn text(bytes: Vec<u8>) -> String {
    String::from_utf8(bytes).unwrap()
}

fn response(outputs: Vec<(&str, Tensor)>, format: Format) -> Result<String> {
    let outputs: Vec<(String, Tensor)> = outputs
        .into_iter()
        .map(|(n, t)| (n.to_string(), t))
        .collect();
    write_predict_response(&outputs, format).map(text)
}

// ------------------------------------------------------------------------------------------------
// json_tensor_test.cc: requests
// ------------------------------------------------------------------------------------------------

#[test]
fn single_unnamed_tensor() {
    let map = sig(&[("default", DType::Int32)]);
    let r = parse_fast(r#"{ "instances": [[1,2],[3,4],[5,6]] }"#, &map);
    assert_eq!(r.format, Format::Row);
    assert_eq!(r.signature_name, "");
    assert_eq!(r.inputs.len(), 1);
    assert_eq!(
        input(&r, "default"),
        &tensor(&[3, 2], TensorData::Int32(vec![1, 2, 3, 4, 5, 6]))
    );
}

#[test]
fn mixed_input_for_float_and_double_tensors() {
    let map = sig(&[("default", DType::Float)]);
    let r = parse_fast(r#"{"instances": [1, 2.0, 3, 4, 5.003, 0.007, 0.0]}"#, &map);
    assert_eq!(
        input(&r, "default"),
        &tensor(
            &[7],
            TensorData::Float(vec![1.0, 2.0, 3.0, 4.0, 5.003, 0.007, 0.0])
        )
    );
    let map = sig(&[("default", DType::Double)]);
    let r = parse_fast(r#"{"instances": [1.0, 2, 3, 4, 0.662, 0, 0.0]}"#, &map);
    assert_eq!(
        input(&r, "default"),
        &tensor(
            &[7],
            TensorData::Double(vec![1.0, 2.0, 3.0, 4.0, 0.662, 0.0, 0.0])
        )
    );
}

#[test]
fn single_unnamed_tensor_with_signature() {
    let map = sig(&[("default", DType::Int32)]);
    let r = parse_fast(
        r#"{"signature_name": "predict_images", "instances": [[1,2]]}"#,
        &map,
    );
    assert_eq!(r.signature_name, "predict_images");
    assert_eq!(
        input(&r, "default"),
        &tensor(&[1, 2], TensorData::Int32(vec![1, 2]))
    );
}

#[test]
fn tensor_from_non_null_terminated_buffer() {
    let map = sig(&[("default", DType::Int32)]);
    let full = br#"{"instances": [[1,2],[3,4],[5,6]]}X"#;
    let r = parse(&full[..full.len() - 1], &map).unwrap();
    assert_eq!(input(&r, "default").shape(), &[3, 2]);
    // With the X the document has a second root.
    assert_eq!(
        parse(full, &map).unwrap_err().message,
        "JSON Parse error: The document root must not be followed by other values. at offset: 34"
    );
}

#[test]
fn base64_scalars_lists_and_named() {
    let map = sig(&[("default", DType::String)]);
    let r = parse_fast(
        r#"{"instances": [ { "b64" : "aGVsbG8=" }, { "b64": "d29ybGQ=" } ]}"#,
        &map,
    );
    assert_eq!(
        input(&r, "default"),
        &tensor(&[2], strings(&["hello", "world"]))
    );
    let r = parse_fast(
        r#"{"instances": [ [{ "b64" : "aGVsbG8=" }], [{ "b64": "d29ybGQ=" }] ]}"#,
        &map,
    );
    assert_eq!(
        input(&r, "default"),
        &tensor(&[2, 1], strings(&["hello", "world"]))
    );
    let r = parse_fast(
        r#"{"instances": [{"default": [ [{ "b64" : "aGVsbG8=" }], [{ "b64": "d29ybGQ=" }] ]}]}"#,
        &map,
    );
    assert_eq!(
        input(&r, "default"),
        &tensor(&[1, 2, 1], strings(&["hello", "world"]))
    );
}

#[test]
fn multiple_named_tensors_with_nan_and_infinity() {
    let map = sig(&[
        ("int_tensor", DType::Int32),
        ("str_tensor", DType::String),
        ("float_tensor", DType::Float),
        ("dbl_tensor", DType::Double),
    ]);
    let r = parse_fast(
        r#"{
      "instances": [
        {
          "int_tensor": [[1,2],[3,4],[5,6]],
          "str_tensor": ["foo", "bar"],
          "float_tensor": [1.0, NaN],
          "dbl_tensor": [NaN]
        },
        {
          "int_tensor": [[7,8],[9,0],[1,2]],
          "str_tensor": ["baz", "bat"],
          "float_tensor": [2.0, Infinity],
          "dbl_tensor": [2.0]
        }
      ]
    }"#,
        &map,
    );
    assert_eq!(r.inputs.len(), 4);
    assert_eq!(
        input(&r, "int_tensor"),
        &tensor(
            &[2, 3, 2],
            TensorData::Int32(vec![1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1, 2])
        )
    );
    assert_eq!(
        input(&r, "str_tensor"),
        &tensor(&[2, 2], strings(&["foo", "bar", "baz", "bat"]))
    );
    let TensorData::Float(f) = input(&r, "float_tensor").data() else {
        panic!()
    };
    assert_eq!(input(&r, "float_tensor").shape(), &[2, 2]);
    assert!(f[0] == 1.0 && f[1].is_nan() && f[2] == 2.0 && f[3] == f32::INFINITY);
    let TensorData::Double(d) = input(&r, "dbl_tensor").data() else {
        panic!()
    };
    assert_eq!(input(&r, "dbl_tensor").shape(), &[2, 1]);
    assert!(d[0].is_nan() && d[1] == 2.0);
}

#[test]
fn columnar_format() {
    let map = sig(&[("int_tensor", DType::Int32)]);
    let want = tensor(&[1, 3, 2], TensorData::Int32(vec![1, 2, 3, 4, 5, 6]));
    let r = parse_fast(r#"{"inputs": {"int_tensor": [[[1,2],[3,4],[5,6]]]}}"#, &map);
    assert_eq!(r.format, Format::Columnar);
    assert_eq!(input(&r, "int_tensor"), &want);
    let r = parse_fast(r#"{"inputs": [[[1,2],[3,4],[5,6]]]}"#, &map);
    assert_eq!(input(&r, "int_tensor"), &want);

    let map = sig(&[
        ("int_tensor", DType::Int32),
        ("str_tensor", DType::String),
        ("bin_tensor", DType::String),
    ]);
    let r = parse_fast(
        r#"{"inputs": {
            "int_tensor": [[[1,2],[3,4],[5,6]]],
            "str_tensor": ["foo", "bar"],
            "bin_tensor": { "b64" : "aGVsbG8=" }
        }}"#,
        &map,
    );
    assert_eq!(input(&r, "int_tensor"), &want);
    assert_eq!(
        input(&r, "str_tensor"),
        &tensor(&[2], strings(&["foo", "bar"]))
    );
    assert_eq!(input(&r, "bin_tensor"), &tensor(&[], strings(&["hello"])));
    // Inputs come back sorted by alias.
    let names: Vec<&str> = r.inputs.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["bin_tensor", "int_tensor", "str_tensor"]);
}

#[test]
fn single_unnamed_tensor_errors() {
    let map = sig(&[("default", DType::Int32)]);
    assert_eq!(
        parse(b"", &map).unwrap_err(),
        Error::invalid_argument("JSON Parse error: The document is empty")
    );
    assert_eq!(
        err_msg(r#"{"signature_name": 5, "instances": [[1,2],[3,4],[5,6,7]]}"#, &map),
        "JSON Value: {\n    \"signature_name\": 5,\n    \"instances\": [\n        [\n            1,\n            \
         2\n        ],\n        [\n            3,\n            4\n        ],\n        [\n            5,\n            \
         6,\n            7\n        ]\n    ]\n} not formatted correctly. 'signature_name' key must be a string value."
    );
    assert_eq!(
        err_msg(r#"{"instances": [1], "inputs": [1]}"#, &map),
        "JSON Value: {\n    \"instances\": [\n        1\n    ],\n    \"inputs\": [\n        1\n    ]\n} Not \
         formatted correctly expecting only one of 'inputs' or 'instances' keys to exist "
    );
    assert_eq!(
        err_msg(r#"{"instances": [[1,2],[3,4],[5,6,7]]}"#, &map),
        "Failed to process element: 2 of 'instances' list. Error: INVALID_ARGUMENT: Expecting tensor \
         size: 2 but got: 3"
    );
    assert_eq!(
        err_msg(r#"{"instances": [[1,2],[3,4],[[5,6]]]}"#, &map),
        "Failed to process element: 2 of 'instances' list. Error: INVALID_ARGUMENT: Expecting shape \
         [2] but got: [1,2]"
    );
    assert_eq!(
        err_msg(r#"{"instances": [1, [1]]}"#, &map),
        "Failed to process element: 1 of 'instances' list. Error: INVALID_ARGUMENT: Expecting shape \
         [] but got: [1]"
    );
    assert_eq!(
        err_msg(r#"{"instances": [[1,2],["a", "b"]]}"#, &map),
        "Failed to process element: 1 of 'instances' list. Error: INVALID_ARGUMENT: JSON Value: \"a\" \
         Type: String is not of expected type: int32"
    );
}

/// TF Serving takes any number for a float or double, as rapidjson's GetFloat() and GetDouble()
/// give it: rounded to nearest, infinite beyond float's range (its REST guide's "Floating Point
/// Precision": 1435774380 becomes 1435774336). Half and bfloat16 follow float.
#[test]
fn floats_take_any_number_rounded() {
    let floats = [
        ("1435774380", 1435774336.0),
        ("1435774380.0", 1435774336.0),
        ("16777217", 16777216.0),
        ("18446744073709551615", 18446744073709551615.0),
        ("-9223372036854775808", -9223372036854775808.0),
        ("1.79769e+308", f32::INFINITY),
        ("-1e39", f32::NEG_INFINITY),
        ("1e-50", 0.0),
    ];
    let map = sig(&[("x", DType::Float)]);
    for (text, value) in floats {
        for body in [
            format!(r#"{{"instances": [{text}]}}"#),
            format!(r#"{{"inputs": [{text}, 1.5]}}"#),
        ] {
            let parsed = parse(body.as_bytes(), &map).expect(&body);
            let TensorData::Float(got) = parsed.inputs[0].1.data() else {
                panic!("{body}: not floats");
            };
            assert_eq!(got[0].to_bits(), f32::to_bits(value), "{body}");
        }
    }
    let map = sig(&[("x", DType::Double)]);
    let parsed = parse(
        br#"{"instances": [9007199254740993, -9007199254740995]}"#,
        &map,
    )
    .unwrap();
    assert_eq!(
        parsed.inputs[0].1.data(),
        &TensorData::Double(vec![9007199254740992.0, -9007199254740996.0])
    );
    let half = parse(
        br#"{"inputs": [65520.0, 2049]}"#,
        &sig(&[("x", DType::Half)]),
    )
    .unwrap();
    assert_eq!(
        half.inputs[0].1.data(),
        &TensorData::Half(vec![
            oxserve_core::f16::INFINITY,
            oxserve_core::f16::from_f32(2048.0)
        ])
    );
    let bf16 = parse(
        br#"{"inputs": [257, 1e39]}"#,
        &sig(&[("x", DType::BFloat16)]),
    )
    .unwrap();
    assert_eq!(
        bf16.inputs[0].1.data(),
        &TensorData::BFloat16(vec![
            oxserve_core::bf16::from_f32(256.0),
            oxserve_core::bf16::INFINITY
        ])
    );
}

#[test]
fn multiple_named_tensor_errors() {
    let map = sig(&[("int_tensor", DType::Int32), ("str_tensor", DType::String)]);
    assert_eq!(
        err_msg(
            r#"{"instances": [
                {"int_tensor": [[1,2],[3,4],[5,6]], "str_tensor": ["foo", "bar"]},
                {"int_tensor": [[[7,8],[9,0],[1,2]]], "str_tensor": ["baz", "bat"]}]}"#,
            &map
        ),
        "Failed to process element: 1 key: int_tensor of 'instances' list. Error: INVALID_ARGUMENT: \
         Expecting shape [3,2] but got: [1,3,2]"
    );
    assert_eq!(
        err_msg(
            r#"{"instances": [
                {"int_tensor": [[1,2],[3,4],[5,6],[7,8]], "str_tensor": ["foo", "bar"]},
                {"int_tensor": [[7,8],[9,0],[1,2]], "str_tensor": ["baz", "bat"]}]}"#,
            &map
        ),
        "Failed to process element: 1 key: int_tensor of 'instances' list. Error: INVALID_ARGUMENT: \
         Expecting tensor size: 8 but got: 6"
    );
    assert_eq!(
        err_msg(
            r#"{"instances": [
                {"int_tensor": [[1,2],[3,4],[5,6]], "str_tensor": ["foo", "bar"]},
                [1, 20, 30],
                {"int_tensor": [[[7,8],[9,0],[1,2]]], "str_tensor": ["baz", "bat"]}]}"#,
            &map
        ),
        "Expecting object but got list at item 1 of input list"
    );
    let map = sig(&[("str_tensor", DType::String)]);
    assert_eq!(
        err_msg(
            r#"{"instances": [["baz", "bar"], {"str_tensor": ["baz", "bat"]}]}"#,
            &map
        ),
        "Expecting value/list but got object at item 1 of input list"
    );
}

// ------------------------------------------------------------------------------------------------
// json_tensor_test.cc: responses
// ------------------------------------------------------------------------------------------------

fn int_2x3x2() -> Tensor {
    tensor(
        &[2, 3, 2],
        TensorData::Int32(vec![1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1, 2]),
    )
}

#[test]
fn from_json_single_tensor() {
    assert_eq!(
        response(vec![("int_tensor", int_2x3x2())], Format::Row).unwrap(),
        "{\n    \"predictions\": [[[1, 2], [3, 4], [5, 6]], [[7, 8], [9, 0], [1, 2]]\n    ]\n}"
    );
    let columnar = response(vec![("int_tensor", int_2x3x2())], Format::Columnar).unwrap();
    assert!(columnar.starts_with(
        "{\n    \"outputs\": [\n        [\n            [\n                1,\n                2\n            ],\n"
    ));
    assert!(columnar.ends_with("                2\n            ]\n        ]\n    ]\n}"));
    let value: serde_json::Value = serde_json::from_str(&columnar).unwrap();
    assert_eq!(
        value,
        serde_json::json!({"outputs": [[[1, 2], [3, 4], [5, 6]], [[7, 8], [9, 0], [1, 2]]]})
    );
}

#[test]
fn from_json_single_scalar_tensor() {
    let t = tensor(&[5], TensorData::Int32(vec![1, 2, 3, 4, 5]));
    assert_eq!(
        response(vec![("int_tensor", t.clone())], Format::Row).unwrap(),
        "{\n    \"predictions\": [1, 2, 3, 4, 5\n    ]\n}"
    );
    assert_eq!(
        response(vec![("int_tensor", t)], Format::Columnar).unwrap(),
        "{\n    \"outputs\": [\n        1,\n        2,\n        3,\n        4,\n        5\n    ]\n}"
    );
}

#[test]
fn half_plus_two_response() {
    // g3doc/api_rest.md: {"predictions": [2.5, 3.0, 4.5]}
    let t = tensor(&[3], TensorData::Float(vec![2.5, 3.0, 4.5]));
    assert_eq!(
        response(vec![("y", t)], Format::Row).unwrap(),
        "{\n    \"predictions\": [2.5, 3.0, 4.5\n    ]\n}"
    );
}

#[test]
fn from_json_single_bytes_tensor() {
    let t = tensor(&[2, 2], strings(&["hello", "world", "tf", "serving"]));
    assert_eq!(
        response(vec![("str_tensor_bytes", t)], Format::Row).unwrap(),
        "{\n    \"predictions\": [[{\n                \"b64\": \"aGVsbG8=\"\n            }, {\n                \
         \"b64\": \"d29ybGQ=\"\n            }], [{\n                \"b64\": \"dGY=\"\n            }, {\n                \
         \"b64\": \"c2VydmluZw==\"\n            }]\n    ]\n}"
    );
}

#[test]
fn from_json_float_six_digit_precision_and_non_finite() {
    let t = tensor(
        &[2, 3],
        TensorData::Float(vec![9e6, 999999.0, 0.5, 0.0003, 0.00003, 555557.5]),
    );
    assert_eq!(
        response(vec![("float_tensor", t)], Format::Row).unwrap(),
        "{\n    \"predictions\": [[9e+06, 999999.0, 0.5], [0.0003, 3e-05, 555557.5]\n    ]\n}"
    );
    let t = tensor(
        &[2, 2],
        TensorData::Float(vec![f32::NAN, f32::INFINITY, 3.0, f32::NEG_INFINITY]),
    );
    assert_eq!(
        response(vec![("float_tensor", t)], Format::Row).unwrap(),
        "{\n    \"predictions\": [[NaN, Infinity], [3.0, -Infinity]\n    ]\n}"
    );
}

#[test]
fn from_json_single_tensor_errors() {
    assert_eq!(
        response(vec![], Format::Row).unwrap_err(),
        Error::invalid_argument("Cannot convert empty tensor map to JSON")
    );
    let scalar = tensor(&[], TensorData::Int32(vec![1]));
    assert_eq!(
        response(vec![("tensor", scalar.clone())], Format::Row).unwrap_err(),
        Error::invalid_argument("Tensor name: tensor has no shape information ")
    );
    assert_eq!(
        response(vec![("tensor", scalar)], Format::Columnar).unwrap(),
        "{\n    \"outputs\": 1\n}"
    );
    // Zero rows (TF Serving's issue #1610): an empty list, in either format; with several
    // outputs they must all have none.
    let empty = tensor(&[0, 3], TensorData::Float(vec![]));
    assert_eq!(
        response(vec![("tensor", empty.clone())], Format::Row).unwrap(),
        "{\n    \"predictions\": []\n}"
    );
    assert_eq!(
        response(
            vec![("a", empty.clone()), ("b", empty.clone())],
            Format::Row
        )
        .unwrap(),
        "{\n    \"predictions\": []\n}"
    );
    let one = tensor(&[1], TensorData::Float(vec![1.0]));
    assert_eq!(
        response(vec![("a", empty.clone()), ("b", one)], Format::Row).unwrap_err(),
        Error::invalid_argument("Tensor name: b has inconsistent batch size: 1 expecting: 0")
    );
    assert_eq!(
        response(vec![("tensor", empty)], Format::Columnar).unwrap(),
        "{\n    \"outputs\": []\n}"
    );
}

#[test]
fn from_json_multiple_named_tensors() {
    let outputs = || {
        vec![
            (
                "double_scalar_tensor",
                tensor(&[2], TensorData::Double(vec![8.0, 9.0])),
            ),
            (
                "float_tensor",
                tensor(&[2, 1], TensorData::Float(vec![1.0, 2.0])),
            ),
            ("int_tensor", int_2x3x2()),
            (
                "str_tensor",
                tensor(&[2, 2], strings(&["foo", "bar", "baz", "bat"])),
            ),
            (
                "str_tensor_bytes",
                tensor(&[2, 2], strings(&["hello", "world", "tf", "serving"])),
            ),
        ]
    };
    let row = response(outputs(), Format::Row).unwrap();
    assert!(row.starts_with(
        "{\n    \"predictions\": [\n        {\n            \"double_scalar_tensor\": 8.0,\n            \
         \"float_tensor\": [1.0],\n            \"int_tensor\": [[1, 2], [3, 4], [5, 6]],\n            \
         \"str_tensor\": [\"foo\", \"bar\"],\n            \"str_tensor_bytes\": [{\n"
    ));
    assert!(row.ends_with("            }]\n        }\n    ]\n}"));
    let value: serde_json::Value = serde_json::from_str(&row).unwrap();
    assert_eq!(
        value,
        serde_json::json!({"predictions": [
            {"double_scalar_tensor": 8.0, "float_tensor": [1.0], "int_tensor": [[1, 2], [3, 4], [5, 6]],
             "str_tensor": ["foo", "bar"], "str_tensor_bytes": [{"b64": "aGVsbG8="}, {"b64": "d29ybGQ="}]},
            {"double_scalar_tensor": 9.0, "float_tensor": [2.0], "int_tensor": [[7, 8], [9, 0], [1, 2]],
             "str_tensor": ["baz", "bat"], "str_tensor_bytes": [{"b64": "dGY="}, {"b64": "c2VydmluZw=="}]}
        ]})
    );
    let columnar = response(outputs(), Format::Columnar).unwrap();
    assert!(columnar.starts_with(
        "{\n    \"outputs\": {\n        \"double_scalar_tensor\": [\n            8.0,\n            9.0\n        ],\n"
    ));
    let value: serde_json::Value = serde_json::from_str(&columnar).unwrap();
    assert_eq!(
        value,
        serde_json::json!({"outputs": {
            "double_scalar_tensor": [8.0, 9.0],
            "float_tensor": [[1.0], [2.0]],
            "int_tensor": [[[1, 2], [3, 4], [5, 6]], [[7, 8], [9, 0], [1, 2]]],
            "str_tensor": [["foo", "bar"], ["baz", "bat"]],
            "str_tensor_bytes": [[{"b64": "aGVsbG8="}, {"b64": "d29ybGQ="}],
                                 [{"b64": "dGY="}, {"b64": "c2VydmluZw=="}]]
        }})
    );
}

#[test]
fn multi_output_row_layout_and_inconsistent_batch() {
    let a = tensor(&[2, 2], TensorData::Int64(vec![1, 2, 3, 4]));
    let b = tensor(&[2], TensorData::Bool(vec![true, false]));
    assert_eq!(
        response(vec![("a", a.clone()), ("b", b)], Format::Row).unwrap(),
        "{\n    \"predictions\": [\n        {\n            \"a\": [1, 2],\n            \"b\": true\n        },\n        \
         {\n            \"a\": [3, 4],\n            \"b\": false\n        }\n    ]\n}"
    );
    let s = tensor(&[1, 3], strings(&["foo", "bar", "baz"]));
    assert_eq!(
        response(vec![("int_tensor", a), ("str_tensor", s)], Format::Row).unwrap_err(),
        Error::invalid_argument(
            "Tensor name: str_tensor has inconsistent batch size: 1 expecting: 2"
        )
    );
}

// ------------------------------------------------------------------------------------------------
// json_tensor_test.cc: classify and regress
// ------------------------------------------------------------------------------------------------

fn feature_kind(
    e: &oxserve_proto::tensorflow::Example,
    name: &str,
) -> oxserve_proto::tensorflow::feature::Kind {
    e.features.as_ref().unwrap().feature[name]
        .kind
        .clone()
        .unwrap()
}

#[test]
fn examples_request_no_context() {
    use oxserve_proto::tensorflow::feature::Kind;
    use oxserve_proto::tensorflow::{BytesList, FloatList, Int64List};
    let r = parse_example_request(
        br#"{"examples": [
            {"names": [ "foo", "bar" ], "ratings": [ 8.0, 9.0 ], "age": 20},
            {"names": [ "baz" ], "ratings": 6.0}
        ]}"#,
    )
    .unwrap();
    assert_eq!(r.signature_name, "");
    assert!(r.context.is_none());
    assert_eq!(r.examples.len(), 2);
    let e = &r.examples[0];
    assert_eq!(
        feature_kind(e, "names"),
        Kind::BytesList(BytesList {
            value: vec!["foo".into(), "bar".into()]
        })
    );
    assert_eq!(
        feature_kind(e, "ratings"),
        Kind::FloatList(FloatList {
            value: vec![8.0, 9.0]
        })
    );
    assert_eq!(
        feature_kind(e, "age"),
        Kind::Int64List(Int64List { value: vec![20] })
    );
    assert_eq!(
        feature_kind(&r.examples[1], "ratings"),
        Kind::FloatList(FloatList { value: vec![6.0] })
    );
}

#[test]
fn example_floats_take_any_double_rounded() {
    use oxserve_proto::tensorflow::feature::Kind;
    use oxserve_proto::tensorflow::FloatList;
    let r = parse_example_request(br#"{"examples": [{"x": [1.79769e+308, 16777217.0]}]}"#).unwrap();
    assert_eq!(
        feature_kind(&r.examples[0], "x"),
        Kind::FloatList(FloatList {
            value: vec![f32::INFINITY, 16777216.0]
        })
    );
}

#[test]
fn examples_request_with_context_and_signature() {
    use oxserve_proto::tensorflow::feature::Kind;
    use oxserve_proto::tensorflow::{BytesList, Int64List};
    let r = parse_example_request(
        br#"{
      "signature_name": "custom_signture",
      "context": { "query": "pizza", "location": [ "sfo" ] },
      "examples": [
        { "names": [ "foo", "bar" ], "ratings": [ 8.0, 9.0, NaN, Infinity ], "age": 20 },
        { "names": [ "baz", { "b64": "aGVsbG8=" } ], "ratings": 6.0, "intboolmix": [ 1, true, false ] },
        { "names": "bar", "ratings": -Infinity }
      ]
    }"#,
    )
    .unwrap();
    assert_eq!(r.signature_name, "custom_signture");
    let context = r.context.as_ref().unwrap();
    assert_eq!(
        feature_kind(context, "query"),
        Kind::BytesList(BytesList {
            value: vec!["pizza".into()]
        })
    );
    assert_eq!(
        feature_kind(context, "location"),
        Kind::BytesList(BytesList {
            value: vec!["sfo".into()]
        })
    );
    let Kind::FloatList(ratings) = feature_kind(&r.examples[0], "ratings") else {
        panic!()
    };
    assert_eq!(ratings.value[..2], [8.0, 9.0]);
    assert!(ratings.value[2].is_nan() && ratings.value[3] == f32::INFINITY);
    assert_eq!(
        feature_kind(&r.examples[1], "names"),
        Kind::BytesList(BytesList {
            value: vec!["baz".into(), "hello".into()]
        })
    );
    assert_eq!(
        feature_kind(&r.examples[1], "intboolmix"),
        Kind::Int64List(Int64List {
            value: vec![1, 1, 0]
        })
    );
    let Kind::FloatList(ratings) = feature_kind(&r.examples[2], "ratings") else {
        panic!()
    };
    assert_eq!(ratings.value, [f32::NEG_INFINITY]);
}

#[test]
fn examples_request_errors() {
    let e = |body: &str| parse_example_request(body.as_bytes()).unwrap_err().message;
    assert_eq!(
        e(r#"{"signature_name": [ "hello" ], "examples": [ { "names": [ "foo", "bar" ] } ]}"#),
        "JSON Value: {\n    \"signature_name\": [\n        \"hello\"\n    ],\n    \"examples\": [\n        {\n            \
         \"names\": [\n                \"foo\",\n                \"bar\"\n            ]\n        }\n    ]\n} not \
         formatted correctly. 'signature_name' key must be a string value."
    );
    assert_eq!(
        e(r#"{"context": [ { "names": [ "foo", "bar" ] } ]}"#),
        "Example must be JSON object but got JSON Array"
    );
    assert_eq!(
        e(r#"{"examples": { "names": [ "foo", "bar" ] }}"#),
        "JSON Value: {\n    \"examples\": {\n        \"names\": [\n            \"foo\",\n            \"bar\"\n        \
         ]\n    }\n} Expecting 'examples' value to be an list/array"
    );
    assert_eq!(
        e(r#"{"examples": [ [ { "names": [ "foo", "bar" ] } ] ]}"#),
        "Example must be JSON object but got JSON Array"
    );
    assert_eq!(
        e(r#"{"examples": [ { "names": [ 10, null ] } ]}"#),
        "Feature: names has element with unexpected JSON type: Null"
    );
    assert_eq!(
        e(r#"{"examples": [ { "names": [ 10, 10.0 ] } ]}"#),
        "Unexpected element type in feature: names expecting type: int64"
    );
    assert_eq!(
        e(r#"{"examples": [ { "names": [ 10, { "test": 10 } ] } ]}"#),
        "Feature: names has element with unexpected JSON type: Object"
    );
    assert_eq!(
        e(r#"{"examples": [ { "names": [ [10], 20 ] } ]}"#),
        "Feature: names has element with unexpected JSON type: Array"
    );
    assert_eq!(
        e(r#"{"examples": [ { "names": [ 20, 18446744073709551603 ] } ]}"#),
        "Feature: names has uint64 element. Only int64 is supported."
    );
    assert_eq!(
        e(r#"{"examples": []}"#),
        "JSON Value: {\n    \"examples\": []\n} 'examples' value is an empty array"
    );
    assert_eq!(
        e(r#"{"instances": [1]}"#),
        "JSON Value: {\n    \"instances\": [\n        1\n    ]\n} When method is classify, key 'examples' is \
         expected and was not found"
    );
    assert_eq!(
        e(r#"{"examples": [{"a": {"b64": "Q"}}]}"#),
        "Unable to base64 decode"
    );
    assert_eq!(
        e(r#"{"examples": [{"a": ["x", 1]}]}"#),
        "Unexpected element type in feature: a expecting type: bytes"
    );
    assert_eq!(
        e(r#"{"examples": [{"a": [1.5, true]}]}"#),
        "Unexpected element type in feature: a expecting type: float"
    );
    assert_eq!(e(""), "JSON Parse error: The document is empty");
}

#[test]
fn classification_and_regression_results() {
    let results = vec![
        vec![("car", 0.2f32), ("bike", 0.7), ("bus", 0.1)],
        vec![("car", 0.7), ("bike", 0.1), ("bus", 0.2)],
    ];
    assert_eq!(
        text(write_classify_response(&results)),
        "{\n    \"results\": [[[\"car\", 0.2], [\"bike\", 0.7], [\"bus\", 0.1]], [[\"car\", 0.7], [\"bike\", \
         0.1], [\"bus\", 0.2]]\n    ]\n}"
    );
    let classes = vec![vec![oxserve_core::inference::Class {
        label: "a\"b".into(),
        score: 1.0,
    }]];
    assert_eq!(
        text(write_classify_response(&classes)),
        "{\n    \"results\": [[[\"a\\\"b\", 1.0]]\n    ]\n}"
    );
    assert_eq!(
        text(write_regress_response(&[0.2, 0.9, 1.0])),
        "{\n    \"results\": [0.2, 0.9, 1.0]\n}"
    );
    assert_eq!(
        text(write_regress_response(&[
            0.2,
            f32::INFINITY,
            1.0,
            f32::NEG_INFINITY,
            f32::NAN
        ])),
        "{\n    \"results\": [0.2, Infinity, 1.0, -Infinity, NaN]\n}"
    );
    assert_eq!(
        text(write_error_response("bad \"x\"\n")),
        "{\n    \"error\": \"bad \\\"x\\\"\\n\"\n}"
    );
}

// ------------------------------------------------------------------------------------------------
// Syntax errors: rapidjson 1.1.0 messages and offsets
// ------------------------------------------------------------------------------------------------

#[test]
fn rapidjson_parse_errors() {
    let map = sig(&[("x", DType::Float)]);
    let cases: &[(&[u8], &str)] = &[
        (b"   ", "The document is empty. at offset: 3"),
        (b"\0{}", "The document is empty. at offset: 0"),
        (b"{", "Missing a name for object member. at offset: 1"),
        (
            b"{\"a\" 1}",
            "Missing a colon after a name of object member. at offset: 5",
        ),
        (
            b"{\"a\":1 \"b\":2}",
            "Missing a comma or '}' after an object member. at offset: 7",
        ),
        (
            b"{\"a\":[1 2]}",
            "Missing a comma or ']' after an array element. at offset: 8",
        ),
        (b"{\"a\":[1,]}", "Invalid value. at offset: 8"),
        (
            b"{\"a\":1,}",
            "Missing a name for object member. at offset: 7",
        ),
        (
            b"{} x",
            "The document root must not be followed by other values. at offset: 3",
        ),
        (b"{\"a\": tru}", "Invalid value. at offset: 9"),
        (b"{\"a\": nul", "Invalid value. at offset: 9"),
        (
            b"{\"a\": \"abc",
            "Missing a closing quotation mark in string. at offset: 10",
        ),
        (
            b"{\"a\": \"a\0\"}",
            "Missing a closing quotation mark in string. at offset: 8",
        ),
        (
            b"{\"a\": \"\\x\"}",
            "Invalid escape character in string. at offset: 7",
        ),
        (
            b"{\"a\": \"x\x01\"}",
            "Invalid escape character in string. at offset: 8",
        ),
        (
            b"{\"a\": \"\\u12G4\"}",
            "Incorrect hex digit after \\u escape in string. at offset: 7",
        ),
        (
            b"{\"a\": \"\\uD800\"}",
            "The surrogate pair in string is invalid. at offset: 7",
        ),
        (
            b"{\"a\": \"\\uD800\\u0041\"}",
            "The surrogate pair in string is invalid. at offset: 7",
        ),
        (
            b"{\"a\": 1e999}",
            "Number too big to be stored in double. at offset: 6",
        ),
        (
            b"{\"a\": -1e309}",
            "Number too big to be stored in double. at offset: 6",
        ),
        (b"{\"a\": 1.}", "Miss fraction part in number. at offset: 8"),
        (b"{\"a\": 1e}", "Miss exponent in number. at offset: 8"),
        (b"{\"a\": 1e+}", "Miss exponent in number. at offset: 9"),
        (b"{\"a\": -}", "Invalid value. at offset: 7"),
        (b"{\"a\": .5}", "Invalid value. at offset: 6"),
        (b"{\"a\": +1}", "Invalid value. at offset: 6"),
        (
            b"{\"a\": 01}",
            "Missing a comma or '}' after an object member. at offset: 7",
        ),
        (b"{\"a\": Nan}", "Invalid value. at offset: 8"),
        (b"{\"a\": Infinit}", "Invalid value. at offset: 13"),
        (b"{\"a\": 'x'}", "Invalid value. at offset: 6"),
        (b"{\"a\": [}", "Invalid value. at offset: 7"),
        (
            b"{'a': 1}",
            "Missing a name for object member. at offset: 1",
        ),
        (
            b"{\"instances\": [1,2,3]]",
            "Missing a comma or '}' after an object member. at offset: 21",
        ),
        (
            b"{\"instances\": [1,2,3]}]",
            "The document root must not be followed by other values. at offset: 22",
        ),
    ];
    for (body, want) in cases {
        let e = parse(body, &map).unwrap_err();
        assert_eq!(e.code, Code::InvalidArgument);
        assert_eq!(
            e.message,
            format!("JSON Parse error: {want}"),
            "body {:?}",
            String::from_utf8_lossy(body)
        );
    }
    // A 400-digit integer overflows while its digits are read.
    let big = format!("{{\"a\": {}}}", "9".repeat(400));
    assert_eq!(
        err_msg(&big, &map),
        "JSON Parse error: Number too big to be stored in double. at offset: 6"
    );
}

#[test]
fn rapidjson_accepts_what_tf_serving_accepts() {
    let map = sig(&[("x", DType::Float)]);
    let values = |body: &[u8]| -> Vec<f32> {
        let r = parse(body, &map).unwrap();
        let TensorData::Float(v) = input(&r, "x").data() else {
            panic!()
        };
        v.clone()
    };
    // NaN and infinity spellings of rapidjson 1.1.0 with kParseNanAndInfFlag.
    let v = values(br#"{"inputs": [NaN, -NaN, Inf, -Inf, Infinity, -Infinity, NInf]}"#);
    assert!(v[0].is_nan() && v[1].is_nan());
    assert_eq!(
        v[2..],
        [
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::INFINITY
        ]
    );
    // -0 is the integer 0; -0.0 is negative zero.
    let v = values(br#"{"inputs": [-0, -0.0, 1E2, 1e-2, 2.5e+1]}"#);
    assert_eq!(
        v.iter().map(|f| f.to_bits()).collect::<Vec<_>>()[..2],
        [0, 0x8000_0000]
    );
    assert_eq!(v[2..], [100.0, 0.01, 25.0]);
    // A UTF-8 byte order mark, any whitespace, a NUL ending the document early.
    let v = values(b"\xEF\xBB\xBF \t\r\n{\"inputs\" :\n[ 1 , 2 ]\n}\n\0 trailing junk");
    assert_eq!(v, [1.0, 2.0]);
    // Strings: escapes, surrogate pairs, raw bytes that are not UTF-8.
    let map = sig(&[("s", DType::String)]);
    let r = parse(b"{\"inputs\": [\"a\\\"\\\\\\/\\b\\f\\n\\r\\t\\u00e9\\uD83D\\uDE00\", \"\xff\xfe\", \"\\uDC00\"]}", &map).unwrap();
    assert_eq!(
        input(&r, "s").data(),
        &TensorData::String(vec![
            "a\"\\/\u{8}\u{c}\n\r\té😀".as_bytes().to_vec(),
            vec![0xFF, 0xFE],
            vec![0xED, 0xB0, 0x80],
        ])
    );
}

#[test]
fn numbers_convert_like_rapidjson_normal_precision() {
    let map = sig(&[("x", DType::Double)]);
    let r = parse(
        br#"{"inputs": [0.1, 1e-400, 123456789012345678901234567890, 4.9e-324, 1e308]}"#,
        &map,
    )
    .unwrap();
    let TensorData::Double(v) = input(&r, "x").data() else {
        panic!()
    };
    assert_eq!(v[0], 0.1);
    assert_eq!(v[1], 0.0, "1 / 1e308 / 1e92 underflows");
    assert!(
        (v[2] / 1.2345678901234568e29 - 1.0).abs() < 1e-15,
        "{}",
        v[2]
    );
    assert_eq!(v[3], 5e-324, "49 / 1e308 / 1e17");
    assert_eq!(v[4], 1e308);
}

// ------------------------------------------------------------------------------------------------
// Every dtype, both formats, ranges and types
// ------------------------------------------------------------------------------------------------

#[test]
fn every_dtype_row_and_columnar() {
    let cases: Vec<(DType, &str, TensorData)> = vec![
        (
            DType::Float,
            "[1, -2.5, 3e2]",
            TensorData::Float(vec![1.0, -2.5, 300.0]),
        ),
        (
            DType::Double,
            "[1, -2.5, 1e300]",
            TensorData::Double(vec![1.0, -2.5, 1e300]),
        ),
        (
            DType::Int8,
            "[-128, 0, 127]",
            TensorData::Int8(vec![-128, 0, 127]),
        ),
        (
            DType::Int16,
            "[-32768, 0, 32767]",
            TensorData::Int16(vec![-32768, 0, 32767]),
        ),
        (
            DType::Int32,
            "[-2147483648, 0, 2147483647]",
            TensorData::Int32(vec![i32::MIN, 0, i32::MAX]),
        ),
        (
            DType::Int64,
            "[-9223372036854775808, 0, 9223372036854775807]",
            TensorData::Int64(vec![i64::MIN, 0, i64::MAX]),
        ),
        (
            DType::UInt8,
            "[0, 1, 255]",
            TensorData::UInt8(vec![0, 1, 255]),
        ),
        (
            DType::UInt16,
            "[0, 1, 65535]",
            TensorData::UInt16(vec![0, 1, 65535]),
        ),
        (
            DType::UInt32,
            "[0, 1, 4294967295]",
            TensorData::UInt32(vec![0, 1, u32::MAX]),
        ),
        (
            DType::UInt64,
            "[0, 1, 18446744073709551615]",
            TensorData::UInt64(vec![0, 1, u64::MAX]),
        ),
        (
            DType::Bool,
            "[true, false, true]",
            TensorData::Bool(vec![true, false, true]),
        ),
        (
            DType::String,
            r#"["a", {"b64": "Yg=="}, ""]"#,
            strings(&["a", "b", ""]),
        ),
    ];
    for (dtype, values, data) in cases {
        let map = sig(&[("x", dtype)]);
        let want = tensor(&[3], data);
        let r = parse_fast(&format!(r#"{{"instances": {values}}}"#), &map);
        assert_eq!(input(&r, "x"), &want, "{dtype:?} row");
        let r = parse_fast(&format!(r#"{{"inputs": {values}}}"#), &map);
        assert_eq!(input(&r, "x"), &want, "{dtype:?} columnar");
        let r = parse_fast(&format!(r#"{{"inputs": {{"x": {values}}}}}"#), &map);
        assert_eq!(input(&r, "x"), &want, "{dtype:?} named columnar");
        let r = parse_fast(&format!(r#"{{"instances": [{{"x": {values}}}]}}"#), &map);
        assert_eq!(input(&r, "x").shape(), &[1, 3], "{dtype:?} named row");
        // And back: every dtype can be written.
        let json = response(vec![("x", want.clone())], Format::Row).unwrap();
        assert!(json.starts_with("{\n    \"predictions\": ["), "{json}");
    }
}

#[test]
fn out_of_range_and_wrong_types() {
    let row_err = |dtype: DType, value: &str| -> String {
        err_msg(
            &format!(r#"{{"instances": [{value}]}}"#),
            &sig(&[("x", dtype)]),
        )
    };
    let wrapped = |inner: &str| {
        format!(
            "Failed to process element: 0 of 'instances' list. Error: INVALID_ARGUMENT: {inner}"
        )
    };
    assert_eq!(
        row_err(DType::UInt8, "300"),
        wrapped("JSON Value: 300 Type: Number is not of expected type: uint8")
    );
    assert_eq!(
        row_err(DType::UInt8, "-1"),
        wrapped("JSON Value: -1 Type: Number is not of expected type: uint8")
    );
    assert_eq!(
        row_err(DType::Int8, "128"),
        wrapped("JSON Value: 128 Type: Number is not of expected type: int8")
    );
    assert_eq!(
        row_err(DType::Int16, "-32769"),
        wrapped("JSON Value: -32769 Type: Number is not of expected type: int16")
    );
    assert_eq!(
        row_err(DType::Int32, "1.5"),
        wrapped("JSON Value: 1.5 Type: Number is not of expected type: int32")
    );
    assert_eq!(
        row_err(DType::Int32, "1.0"),
        wrapped("JSON Value: 1.0 Type: Number is not of expected type: int32")
    );
    assert_eq!(
        row_err(DType::Int32, "2147483648"),
        wrapped("JSON Value: 2147483648 Type: Number is not of expected type: int32")
    );
    assert_eq!(
        row_err(DType::Int64, "9223372036854775808"),
        wrapped("JSON Value: 9223372036854775808 Type: Number is not of expected type: int64")
    );
    assert_eq!(
        row_err(DType::UInt32, "-1"),
        wrapped("JSON Value: -1 Type: Number is not of expected type: uint32")
    );
    assert_eq!(
        row_err(DType::UInt64, "18446744073709551616"),
        wrapped("JSON Value: 1.84467441e+19 Type: Number is not of expected type: uint64")
    );
    assert_eq!(
        row_err(DType::UInt16, "65536"),
        wrapped("JSON Value: 65536 Type: Number is not of expected type: uint16")
    );
    assert_eq!(
        row_err(DType::Float, "\"abc\""),
        wrapped("JSON Value: \"abc\" Type: String is not of expected type: float")
    );
    assert_eq!(
        row_err(DType::Float, "null"),
        wrapped("JSON Value: null Type: Null is not of expected type: float")
    );
    assert_eq!(
        row_err(DType::Float, "true"),
        wrapped("JSON Value: true Type: True is not of expected type: float")
    );
    assert_eq!(
        row_err(DType::Bool, "0"),
        wrapped("JSON Value: 0 Type: Number is not of expected type: bool")
    );
    assert_eq!(
        row_err(DType::String, "1"),
        wrapped("JSON Value: 1 Type: Number is not of expected type: string")
    );
    assert_eq!(
        row_err(DType::Float, "{\"a\": 1}"),
        "Failed to process element: 0 key: a of 'instances' list. Error: INVALID_ARGUMENT: JSON object: \
         does not have named input: a"
    );
    assert_eq!(
        row_err(DType::Float, "[{\"a\": [1, NaN]}]"),
        wrapped("JSON Value: {\n    \"a\": [\n        1,\n         Type: Object is not of expected type: float")
    );
    // Base64 errors.
    assert_eq!(
        row_err(DType::String, "{\"b64\": \"Q\"}"),
        wrapped("Unable to base64 decode")
    );
    assert_eq!(
        row_err(DType::String, "{\"b64\": \"-_8=\"}"),
        wrapped("Unable to base64 decode")
    );
    assert_eq!(
        row_err(DType::String, "[{\"b64\": 1}]"),
        wrapped("JSON Value: {\n    \"b64\": 1\n} not formatted correctly for base64 data")
    );
    // Columnar errors are not wrapped.
    let map = sig(&[("x", DType::Float)]);
    assert_eq!(
        err_msg(r#"{"inputs": [[1, 2], [3]]}"#, &map),
        "Encountered list at unexpected size: 1 at level: 1 expected size: 2"
    );
    assert_eq!(
        err_msg(r#"{"inputs": [[1, 2], 3]}"#, &map),
        "JSON Value: 3 found at incorrect level: 2 in the JSON DOM. Expected at level: 2"
    );
    assert_eq!(
        err_msg(r#"{"inputs": [1, [2]]}"#, &map),
        "Encountered list at unexpected level: 1 expected < 1"
    );
    assert_eq!(
        err_msg(r#"{"inputs": [[], [1]]}"#, &map),
        "Encountered list at unexpected size: 1 at level: 1 expected size: 0"
    );
    assert_eq!(
        err_msg(r#"{"inputs": ["x"]}"#, &map),
        "JSON Value: \"x\" Type: String is not of expected type: float"
    );
    assert_eq!(
        err_msg(r#"{"inputs": 1.5e-7}"#, &sig(&[("x", DType::Int64)])),
        "JSON Value: 1.5e-07 Type: Number is not of expected type: int64"
    );
    // Dtypes JSON has no form for: Unimplemented, wrapped in row format.
    let complex = sig(&[("x", DType::Complex64)]);
    let e = err(r#"{"inputs": [1]}"#, &complex);
    assert_eq!(
        (e.code, e.message.as_str()),
        (
            Code::Unimplemented,
            "Conversion of JSON Value: 1 to type: complex64"
        )
    );
    assert_eq!(
        err_msg(r#"{"instances": [1]}"#, &complex),
        "Failed to process element: 0 of 'instances' list. Error: UNIMPLEMENTED: Conversion of JSON Value: \
         1 to type: complex64"
    );
    // Half and bfloat16 take numbers (TF Serving's JSON has neither).
    let half = sig(&[("x", DType::Half)]);
    let parsed = parse(br#"{"inputs": [1, 0.1, -65504.0]}"#, &half).unwrap();
    let expected = [1.0, 0.1, -65504.0].map(oxserve_core::f16::from_f64);
    assert_eq!(
        parsed.inputs[0].1.data(),
        &TensorData::Half(expected.to_vec())
    );
}

#[test]
fn valid_edge_values() {
    let map = sig(&[("x", DType::Bool)]);
    assert_eq!(
        input(&parse_fast(r#"{"instances": [false]}"#, &map), "x").data(),
        &TensorData::Bool(vec![false])
    );
    let map = sig(&[("x", DType::Float)]);
    let r = parse_fast(
        r#"{"instances": [[1.2345678901], [16777215], [-16777215], [3.4028234e38]]}"#,
        &map,
    );
    assert_eq!(
        input(&r, "x").data(),
        &TensorData::Float(vec![1.2345679, 16777215.0, -16777215.0, 3.4028234e38])
    );
    let map = sig(&[("x", DType::Double)]);
    let r = parse_fast(
        r#"{"instances": [9007199254740991, -9007199254740991]}"#,
        &map,
    );
    assert_eq!(
        input(&r, "x").data(),
        &TensorData::Double(vec![9007199254740991.0, -9007199254740991.0])
    );
}

#[test]
fn request_structure_errors() {
    let one = sig(&[("x", DType::Float)]);
    let two = sig(&[("a", DType::Float), ("b", DType::Float)]);
    assert_eq!(
        err_msg(r#"{}"#, &one),
        "Missing 'inputs' or 'instances' key"
    );
    assert_eq!(
        err_msg(r#"{"instance": [1]}"#, &one),
        "Missing 'inputs' or 'instances' key"
    );
    assert_eq!(
        err_msg(r#"[1, 2]"#, &one),
        "JSON Value: [\n    1,\n    2\n] Is not object"
    );
    assert_eq!(err_msg(r#"1.5"#, &one), "JSON Value: 1.5 Is not object");
    assert_eq!(err_msg(r#""x""#, &one), "JSON Value: \"x\" Is not object");
    assert_eq!(
        err_msg(r#"{"instances": 1}"#, &one),
        "JSON Value: {\n    \"instances\": 1\n} Excepting 'instances' to be an list/array"
    );
    assert_eq!(
        err_msg(r#"{"instances": []}"#, &one),
        "JSON Value: {\n    \"instances\": []\n} No values in 'instances' array"
    );
    assert_eq!(
        err_msg(r#"{"instances": [1], "signature_name": null}"#, &one),
        "JSON Value: {\n    \"instances\": [\n        1\n    ],\n    \"signature_name\": null\n} not formatted \
         correctly. 'signature_name' key must be a string value."
    );
    assert_eq!(
        err_msg(r#"{"instances": [1, 2]}"#, &two),
        "instances is a plain list, but expecting list of objects as multiple input tensors required as \
         per tensorinfo_map"
    );
    assert_eq!(
        err_msg(r#"{"inputs": [1, 2]}"#, &two),
        "inputs is a plain value/list, but expecting an object as multiple input tensors required as per \
         tensorinfo_map"
    );
    assert_eq!(
        err_msg(r#"{"inputs": {"a": [1]}}"#, &two),
        "Missing named input: b in 'inputs' object."
    );
    assert_eq!(
        err_msg(r#"{"inputs": {"y": [1]}}"#, &one),
        "Missing named input: x in 'inputs' object."
    );
    assert_eq!(
        err_msg(r#"{"instances": [{"a": 1, "c": 2}]}"#, &two),
        "Failed to process element: 0 key: c of 'instances' list. Error: INVALID_ARGUMENT: JSON object: \
         does not have named input: c"
    );
    assert_eq!(
        err_msg(r#"{"instances": [{"a": 1}]}"#, &two),
        "Failed to process element: 0 of 'instances' list. JSON object: {\n    \"a\": 1\n} must only have \
         keys: a,b"
    );
    assert_eq!(
        err_msg(r#"{"instances": [{"a": 1, "b": 2}, {"b": 1, "a": [2]}]}"#, &two),
        "Failed to process element: 1 key: a of 'instances' list. Error: INVALID_ARGUMENT: Expecting shape \
         [] but got: [1]"
    );
    // The signature lookup's error comes after syntax and signature_name errors, before the rest.
    let lookup_error = |body: &str| {
        parse_predict_request(
            body.as_bytes(),
            |name: &str| -> Result<&BTreeMap<String, TensorSpec>> {
                Err(Error::failed_precondition(format!(
                    "Serving signature key \"{name}\" not found."
                )))
            },
        )
        .unwrap_err()
    };
    assert_eq!(
        lookup_error(r#"{"signature_name": "foo", "bar": 1}"#),
        Error::failed_precondition("Serving signature key \"foo\" not found.")
    );
    assert_eq!(
        lookup_error(r#"{"instances": [1], "signature_name": "foo"}"#),
        Error::failed_precondition("Serving signature key \"foo\" not found.")
    );
    assert!(lookup_error(r#"{"instances": [1], "signature_name": 1}"#)
        .message
        .contains("must be a string"));
    assert!(
        lookup_error(r#"{"instances": [1], "signature_name": "foo""#)
            .message
            .starts_with("JSON Parse error")
    );
    let empty = BTreeMap::new();
    assert_eq!(
        err_msg(r#"{"instances": [1]}"#, &empty),
        "Failed to get input map for signature: DEFAULT"
    );
    assert_eq!(
        err_msg(r#"{"instances": [1], "signature_name": "s"}"#, &empty),
        "Failed to get input map for signature: s"
    );
}

#[test]
fn signature_name_after_the_tensors() {
    // The tensors are decoded with the default signature first, then again with the right one.
    let default = sig(&[("x", DType::Int32)]);
    let other = sig(&[("y", DType::Float)]);
    let mut calls = Vec::new();
    let r = parse_predict_request(
        br#"{"instances": [1, 2], "signature_name": "other"}"#,
        |name: &str| {
            calls.push(name.to_string());
            Ok(if name == "other" { &other } else { &default })
        },
    )
    .unwrap();
    assert_eq!(calls, ["", "other"]);
    assert_eq!(r.signature_name, "other");
    assert_eq!(
        r.inputs,
        vec![(
            "y".to_string(),
            tensor(&[2], TensorData::Float(vec![1.0, 2.0]))
        )]
    );
    // The default signature need not exist.
    let r = parse_predict_request(
        br#"{"inputs": {"y": [[1.5]]}, "signature_name": "other"}"#,
        |name: &str| {
            if name == "other" {
                Ok(&other)
            } else {
                Err(Error::failed_precondition("no default"))
            }
        },
    )
    .unwrap();
    assert_eq!(
        input(&r, "y"),
        &tensor(&[1, 1], TensorData::Float(vec![1.5]))
    );
    // Only the first signature_name counts, as FindMember() returns the first member.
    let r = parse_predict_request(
        br#"{"signature_name": "other", "signature_name": 5, "inputs": [1]}"#,
        |_: &str| Ok(&other),
    )
    .unwrap();
    assert_eq!(r.signature_name, "other");
}

#[test]
fn duplicate_and_unknown_keys() {
    let map = sig(&[("x", DType::Int32)]);
    // First "instances" wins; unknown top-level keys are ignored.
    let r = parse_fast(
        r#"{"parameters": {"a": [1, {"b": null}]}, "instances": [1], "instances": [[2]]}"#,
        &map,
    );
    assert_eq!(input(&r, "x"), &tensor(&[1], TensorData::Int32(vec![1])));
    // Extra members of a columnar object are ignored, the first of a repeated name wins.
    let r = parse_fast(
        r#"{"inputs": {"z": "ignored", "x": [3], "x": "ignored"}}"#,
        &map,
    );
    assert_eq!(input(&r, "x"), &tensor(&[1], TensorData::Int32(vec![3])));
    // A repeated key inside an instance: TF Serving appends both values and Tensor::FromProto keeps
    // the first shape-worth of them.
    let r = parse(
        br#"{"instances": [{"x": [1, 2], "x": [3, 4]}, {"x": [5, 6]}]}"#,
        &map,
    )
    .unwrap();
    assert_eq!(
        input(&r, "x"),
        &tensor(&[2, 2], TensorData::Int32(vec![1, 2, 3, 4]))
    );
}

#[test]
fn shapes() {
    let map = sig(&[("x", DType::Float)]);
    // Empty lists inside tensors.
    let r = parse_fast(r#"{"instances": [[], []]}"#, &map);
    assert_eq!(input(&r, "x"), &tensor(&[2, 0], TensorData::Float(vec![])));
    let r = parse_fast(r#"{"inputs": []}"#, &map);
    assert_eq!(input(&r, "x"), &tensor(&[0], TensorData::Float(vec![])));
    let r = parse_fast(r#"{"inputs": [[[]], [[]]]}"#, &map);
    assert_eq!(
        input(&r, "x"),
        &tensor(&[2, 1, 0], TensorData::Float(vec![]))
    );
    let r = parse_fast(r#"{"inputs": 7}"#, &map);
    assert_eq!(input(&r, "x"), &tensor(&[], TensorData::Float(vec![7.0])));
    let r = parse_fast(
        r#"{"instances": [[[1], [2]], [[3], [4]], [[5], [6]]]}"#,
        &map,
    );
    assert_eq!(input(&r, "x").shape(), &[3, 2, 1]);
    // A 128x128x3 image per instance, two instances.
    let pixel = "[0.5, 0.25, 1]";
    let row = format!("[{}]", vec![pixel; 128].join(","));
    let image = format!("[{}]", vec![row.as_str(); 128].join(","));
    let body = format!(r#"{{"instances": [{image}, {image}]}}"#);
    let r = parse_fast(&body, &map);
    assert_eq!(input(&r, "x").shape(), &[2, 128, 128, 3]);
    assert_eq!(input(&r, "x").len(), 2 * 128 * 128 * 3);
}

#[test]
fn deep_nesting_is_bounded() {
    let map = sig(&[("x", DType::Float)]);
    let deep = |n: usize| format!("{{\"inputs\": {}1{}}}", "[".repeat(n), "]".repeat(n));
    // 126 nested lists inside the top-level object (depth 127) are fine.
    let r = parse(deep(126).as_bytes(), &map).unwrap();
    assert_eq!(input(&r, "x").shape().len(), 126);
    let e = err_msg(&deep(128), &map);
    assert_eq!(e, "JSON Parse error: The document is nested too deeply (more than 128 levels). at offset: 138");
    // Far deeper than any stack could take: rejected without recursing.
    let e = err_msg(&"[".repeat(1_000_000), &map);
    assert!(e.contains("nested too deeply"), "{e}");
    let e = parse_example_request("{\"examples\": ".repeat(100_000).as_bytes()).unwrap_err();
    assert!(e.message.contains("nested too deeply"), "{e:?}");
}

#[test]
fn non_utf8_strings_in_responses() {
    let t = tensor(
        &[2],
        TensorData::String(vec![b"ok".to_vec(), vec![0xFF, 0x00]]),
    );
    assert_eq!(
        response(vec![("s", t)], Format::Columnar).unwrap(),
        "{\n    \"outputs\": [\n        \"ok\",\n        {\n            \"b64\": \"/wA=\"\n        }\n    ]\n}"
    );
    let t = tensor(
        &[1],
        TensorData::String(vec![b"\x01\x1f\x7f\"\\/".to_vec()]),
    );
    assert_eq!(
        response(vec![("s", t)], Format::Row).unwrap(),
        "{\n    \"predictions\": [\"\\u0001\\u001F\x7f\\\"\\\\/\"\n    ]\n}"
    );
}

#[test]
fn nan_and_infinity_round_trip() {
    let map = sig(&[("x", DType::Float)]);
    let r = parse_fast(r#"{"inputs": [NaN, Infinity, -Infinity, 1.5]}"#, &map);
    let json = response(vec![("x", input(&r, "x").clone())], Format::Row).unwrap();
    assert_eq!(
        json,
        "{\n    \"predictions\": [NaN, Infinity, -Infinity, 1.5\n    ]\n}"
    );
    let back = parse(json.replace("predictions", "instances").as_bytes(), &map).unwrap();
    assert_eq!(
        format!("{:?}", input(&back, "x")),
        format!("{:?}", input(&r, "x"))
    );
    // Doubles too, with 17 significant digits when six are not enough.
    let t = tensor(&[3], TensorData::Double(vec![f64::NAN, 0.1, 1.0 / 3.0]));
    assert_eq!(
        response(vec![("d", t)], Format::Row).unwrap(),
        "{\n    \"predictions\": [NaN, 0.1, 0.33333333333333331\n    ]\n}"
    );
}

// ------------------------------------------------------------------------------------------------
// Robustness
// ------------------------------------------------------------------------------------------------

fn corpus() -> Vec<(&'static str, BTreeMap<String, TensorSpec>)> {
    let two = sig(&[("a", DType::Float), ("b", DType::String)]);
    vec![
        (
            r#"{"instances": [[1,2],[3,4],[5,6]]}"#,
            sig(&[("x", DType::Int32)]),
        ),
        (
            r#"{"signature_name": "s", "inputs": {"a": [[1.5, NaN]], "b": [{"b64": "aGk="}]}}"#,
            two.clone(),
        ),
        (
            r#"{"instances": [{"a": [1e3, -2], "b": "x\u00e9"}, {"a": [3, 4], "b": "\"y\""}]}"#,
            two,
        ),
        (
            r#"{"inputs": [true, false], "x": null}"#,
            sig(&[("x", DType::Bool)]),
        ),
        (
            r#"{"instances": [{"b64": "aGVsbG8="}, {"b64": "d29ybGQ="}]}"#,
            sig(&[("x", DType::String)]),
        ),
        (
            r#"{"inputs": {"x": [[[-1, 18446744073709551615]]]}}"#,
            sig(&[("x", DType::UInt64)]),
        ),
    ]
}

/// A small deterministic pseudo-random sequence (xorshift64) for the generated-input tests.
fn xorshift(mut seed: u64) -> impl FnMut() -> u64 {
    move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    }
}

/// Truncations and byte mutations of valid requests never panic, and the streaming path always
/// agrees with the reference path (`parse` asserts it).
#[test]
fn fuzz_truncations_and_mutations() {
    let mut next = xorshift(0x2545_F491_4F6C_DD1D);
    let alphabet = b"[]{}\",:0123456789.eE+-NaIfinty \\u/b64\x00\xff";
    for (body, map) in corpus() {
        let bytes = body.as_bytes();
        for end in 0..=bytes.len() {
            let _ = parse(&bytes[..end], &map);
            let _ = parse_example_request(&bytes[..end]);
        }
        for _ in 0..3000 {
            let mut mutated = bytes.to_vec();
            for _ in 0..(next() % 4 + 1) {
                let pos = (next() as usize) % mutated.len();
                match next() % 3 {
                    0 => mutated[pos] = alphabet[(next() as usize) % alphabet.len()],
                    1 => {
                        mutated.remove(pos);
                    }
                    _ => mutated.insert(pos, alphabet[(next() as usize) % alphabet.len()]),
                }
                if mutated.is_empty() {
                    break;
                }
            }
            let _ = parse(&mutated, &map);
            let _ = parse_example_request(&mutated);
        }
    }
}

#[test]
fn fuzz_random_documents() {
    let mut next = xorshift(0x9E37_79B9_7F4A_7C15);
    let atoms = [
        "1",
        "-1",
        "0",
        "2.5",
        "1e2",
        "NaN",
        "-Infinity",
        "true",
        "null",
        "\"s\"",
        "{\"b64\": \"QQ==\"}",
        "300",
        "[]",
        "{}",
    ];
    let maps = [
        sig(&[("x", DType::Float)]),
        sig(&[("x", DType::UInt8)]),
        sig(&[("x", DType::String)]),
        sig(&[("a", DType::Int64), ("b", DType::Bool)]),
    ];
    fn value(next: &mut dyn FnMut() -> u64, atoms: &[&str], depth: u32) -> String {
        match next() % 6 {
            0..=2 if depth < 4 => {
                let n = (next() % 4) as usize;
                let items: Vec<String> = (0..n).map(|_| value(next, atoms, depth + 1)).collect();
                format!("[{}]", items.join(","))
            }
            3 if depth < 3 => {
                let keys = ["a", "b", "x", "b64"];
                let n = (next() % 3) as usize;
                let items: Vec<String> = (0..n)
                    .map(|_| {
                        format!(
                            "\"{}\": {}",
                            keys[(next() % 4) as usize],
                            value(next, atoms, depth + 1)
                        )
                    })
                    .collect();
                format!("{{{}}}", items.join(","))
            }
            _ => atoms[(next() as usize) % atoms.len()].to_string(),
        }
    }
    let mut accepted = 0;
    for i in 0..20_000 {
        let key = if next() & 1 == 0 {
            "instances"
        } else {
            "inputs"
        };
        let body = format!("{{\"{key}\": {}}}", value(&mut next, &atoms, 0));
        if parse(body.as_bytes(), &maps[i % maps.len()]).is_ok() {
            accepted += 1;
        }
    }
    assert!(
        accepted > 1000,
        "only {accepted} random documents were valid"
    );
}

/// Decoding speed of a typical image batch: `cargo test --release -p oxserve-server
/// decode_speed -- --ignored --nocapture`.
#[test]
#[ignore]
fn decode_speed() {
    let map = sig(&[("x", DType::Float)]);
    let mut body = String::from("{\"instances\": [");
    let mut v = 0u32;
    for i in 0..32 {
        if i > 0 {
            body.push(',');
        }
        body.push('[');
        for r in 0..128 {
            if r > 0 {
                body.push(',');
            }
            body.push('[');
            for c in 0..128 {
                if c > 0 {
                    body.push(',');
                }
                let mut px = Vec::new();
                for _ in 0..3 {
                    v = v.wrapping_mul(1_103_515_245).wrapping_add(12345);
                    px.push(format!("{}", (v >> 8) as f32 / 16_777_216.0));
                }
                body.push_str(&format!("[{}]", px.join(", ")));
            }
            body.push(']');
        }
        body.push(']');
    }
    body.push_str("]}");
    let runs: u32 = std::env::var("DECODE_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10);
    let mut best = std::time::Duration::MAX;
    for _ in 0..runs {
        let start = std::time::Instant::now();
        let r = parse_predict_request(body.as_bytes(), |_: &str| Ok(&map)).unwrap();
        best = best.min(start.elapsed());
        assert_eq!(r.inputs[0].1.shape(), &[32, 128, 128, 3]);
    }
    println!(
        "decode: {} bytes in {best:?} (best of {runs}, {:.0} MB/s)",
        body.len(),
        body.len() as f64 / best.as_secs_f64() / 1e6
    );
    // For scale: serde_json into typed nested Vecs (no NaN support, no TF semantics).
    #[derive(serde::Deserialize)]
    struct Instances {
        #[allow(dead_code)]
        instances: Vec<Vec<Vec<Vec<f32>>>>,
    }
    let mut best_serde = std::time::Duration::MAX;
    for _ in 0..runs.min(5) {
        let start = std::time::Instant::now();
        let parsed: Instances = serde_json::from_slice(body.as_bytes()).unwrap();
        best_serde = best_serde.min(start.elapsed());
        drop(parsed);
    }
    println!("serde_json typed: {best_serde:?}");
    let r = parse_predict_request(body.as_bytes(), |_: &str| Ok(&map)).unwrap();
    let outputs = vec![("y".to_string(), r.inputs[0].1.clone())];
    let mut best = std::time::Duration::MAX;
    let mut len = 0;
    for _ in 0..runs.min(10) {
        let start = std::time::Instant::now();
        len = write_predict_response(&outputs, Format::Row).unwrap().len();
        best = best.min(start.elapsed());
    }
    println!("encode: {len} bytes in {best:?}");
}

/// The body of `benches/json_codec.rs`: `images` 128x128x3 float32 images in [0, 1) as Python's
/// `json.dumps(image.tolist())` writes them (the shortest text of each value widened to double).
fn planet_body(images: usize) -> Vec<u8> {
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut pixel = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state >> 40) as f32 / (1u64 << 24) as f32
    };
    let list = |n: usize, item: &mut dyn FnMut() -> String| {
        let items: Vec<String> = (0..n).map(|_| item()).collect();
        format!("[{}]", items.join(", "))
    };
    let body = list(images, &mut || {
        list(128, &mut || {
            list(128, &mut || {
                list(3, &mut || format!("{:?}", f64::from(pixel())))
            })
        })
    });
    format!("{{\"instances\": {body}}}").into_bytes()
}

/// Bodies long enough for the decoding to take a second thread (the first and the second half
/// of a list decoded at once) give the reference path's values, and its errors, message for
/// message, wherever the error is.
#[test]
fn long_requests_decode_like_the_reference() {
    let floats = sig(&[("x", DType::Float)]);
    let doubles = sig(&[("x", DType::Double)]);
    let one = String::from_utf8(planet_body(1)).unwrap();
    let three = String::from_utf8(planet_body(3)).unwrap();
    let columnar = one.replacen("instances", "inputs", 1);
    let tabs = one.replace(", ", ",\n\t");
    for (body, map) in [
        (&one, &floats),
        (&three, &floats),
        (&columnar, &floats),
        (&tabs, &doubles),
    ] {
        let request = parse_fast(body, map);
        let shape = request.inputs[0].1.shape()[1..].to_vec();
        assert_eq!(shape, [128, 128, 3]);
    }

    // Numbers of every form in a long list of short lists, and errors planted in it.
    let mut next = xorshift(0x5DEE_CE66_D1CE_4E5B);
    let atoms = [
        "NaN",
        "-Infinity",
        "0",
        "-0",
        "-0.0",
        "1e-7",
        "2.5E+3",
        "17",
        "-3",
    ];
    let rows: Vec<String> = (0..20_000)
        .map(|_| {
            let values: Vec<String> = (0..3)
                .map(|_| match next() % 8 {
                    0 => atoms[(next() % atoms.len() as u64) as usize].to_string(),
                    1 => format!("{:?}", f64::from_bits(next()) % 1e9),
                    _ => format!("{:?}", f64::from((next() >> 40) as f32 / 16_777_216.0)),
                })
                .collect();
            format!("[{}]", values.join(", "))
        })
        .collect();
    let body = format!("{{\"inputs\": [{}]}}", rows.join(", "));
    assert!(body.len() > 300_000);
    parse_fast(&body, &doubles);
    let _ = parse(body.as_bytes(), &floats);
    for percent in [1, 20, 49, 50, 51, 52, 60, 75, 99] {
        let at = body.len() * percent / 100;
        for (from, to) in [
            (",", "]"),
            ("]", ","),
            ("5", "x"),
            (", [", ", [["),
            ("]", ""),
        ] {
            let Some(offset) = body[at..].find(from) else {
                continue;
            };
            let mut broken = body.clone();
            broken.replace_range(at + offset..at + offset + from.len(), to);
            let e = err(&broken, &doubles);
            assert_eq!(e.code, Code::InvalidArgument, "{e:?}");
        }
    }
}

/// A fixed number of decodes of the benchmark's body, to measure with `perf stat -e task-clock`
/// or valgrind (timings are noisy when other builds share the machine); `DECODE_THREADS=1`
/// measures one thread:
/// `DECODE_IMAGES=1 DECODE_RUNS=2000 cargo test --release -p oxserve-server --lib decode_loop
/// -- --ignored --nocapture`.
#[test]
#[ignore]
fn decode_loop() {
    let env = |name: &str, default: usize| {
        std::env::var(name)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    if env("DECODE_THREADS", 2) == 1 {
        super::split::DISABLED.store(true, std::sync::atomic::Ordering::Relaxed);
    }
    let images = env("DECODE_IMAGES", 1);
    let body = bytes::Bytes::from(planet_body(images));
    let map = sig(&[("x", DType::Float)]);
    let mut times = Vec::new();
    for _ in 0..env("DECODE_RUNS", 100) {
        let start = std::time::Instant::now();
        let r = super::parse_shared_predict_request(&body, |_: &str| Ok(&map)).unwrap();
        times.push(start.elapsed());
        assert_eq!(r.inputs[0].1.shape(), &[images, 128, 128, 3]);
    }
    times.sort();
    let at = |q: usize| {
        times
            .get(times.len() * q / 100)
            .copied()
            .unwrap_or_default()
    };
    println!(
        "decode of {} bytes: min {:?}, p10 {:?}, p25 {:?}, median {:?} ({:.0} MB/s at the median)",
        body.len(),
        at(0),
        at(10),
        at(25),
        at(50),
        body.len() as f64 / at(50).as_secs_f64() / 1e6
    );
}

/// Found by `fuzz/rest_predict`: after an empty first item, an item that opens a list and does
/// not close it (`[,`) was taken as empty, and the list's missing ']' made up by a later one.
#[test]
fn items_known_to_be_empty_must_be_empty_lists() {
    let map = sig(&[("a", DType::Float)]);
    for body in [
        "{\"inputs\": [[], [\r\r\r\r\r, [\r\r]\r\r\r]}",
        "{\"inputs\": [[], [, []]}",
        "{\"instances\": [[], [, []]}",
    ] {
        assert!(
            err_msg(body, &map).starts_with("JSON Parse error: Invalid value."),
            "{body:?}"
        );
    }
    assert_eq!(
        err_msg(r#"{"inputs": [[], [1]]}"#, &map),
        "Encountered list at unexpected size: 1 at level: 1 expected size: 0"
    );
}
