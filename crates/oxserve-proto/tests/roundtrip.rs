//! Messages built in Rust survive an encode/decode round trip, and Any packing
//! uses TF Serving's type URLs.

use std::collections::HashMap;

use bytes::Bytes;
use oxserve_proto::tensorflow::serving::{model_spec::VersionChoice, ModelSpec, PredictRequest};
use oxserve_proto::tensorflow::{DataType, TensorProto, TensorShapeProto};
use prost::{Message, Name};

fn tensor(dtype: DataType, dims: &[i64]) -> TensorProto {
    TensorProto {
        dtype: dtype as i32,
        tensor_shape: Some(TensorShapeProto::from_sizes(dims.iter().copied())),
        ..Default::default()
    }
}

#[test]
fn predict_request_round_trip() {
    let mut x = tensor(DataType::DtFloat, &[2, 2]);
    x.tensor_content =
        Bytes::from_iter([1.0f32, 2.0, 3.0, 4.0].iter().flat_map(|v| v.to_le_bytes()));
    let mut s = tensor(DataType::DtString, &[2]);
    s.string_val = vec![Bytes::from_static(b"a"), Bytes::from_static(b"\xff\x00")];
    let mut i = tensor(DataType::DtInt64, &[]);
    i.int64_val = vec![-5];

    let request = PredictRequest {
        model_spec: Some(ModelSpec {
            name: "half_plus_two".into(),
            signature_name: "serving_default".into(),
            version_choice: Some(VersionChoice::Version(123)),
        }),
        inputs: HashMap::from([("x".into(), x), ("s".into(), s), ("i".into(), i)]),
        output_filter: vec!["y".into()],
        ..Default::default()
    };

    let encoded = request.encode_to_vec();
    let decoded = PredictRequest::decode(Bytes::from(encoded.clone())).unwrap();
    assert_eq!(decoded, request);
    assert_eq!(decoded.encoded_len(), encoded.len());
    assert_eq!(decoded.inputs["x"].tensor_content.len(), 16);
    assert_eq!(decoded.inputs["i"].dtype(), DataType::DtInt64);

    // An unknown field (e.g. from a newer TF Serving) is skipped, not an error.
    let mut with_unknown = encoded;
    with_unknown.extend_from_slice(&[0xF8, 0x06, 0x01]); // field 111, varint 1
    assert_eq!(
        PredictRequest::decode(with_unknown.as_slice()).unwrap(),
        request
    );
}

#[test]
fn type_urls() {
    assert_eq!(
        PredictRequest::type_url(),
        "type.googleapis.com/tensorflow.serving.PredictRequest"
    );
    assert_eq!(TensorProto::full_name(), "tensorflow.TensorProto");
}

#[test]
fn data_type_names() {
    assert_eq!(DataType::DtFloat as i32, 1);
    assert_eq!(DataType::DtUint64 as i32, 23);
    assert_eq!(DataType::DtBfloat16.as_str_name(), "DT_BFLOAT16");
    assert_eq!(DataType::from_str_name("DT_HALF"), Some(DataType::DtHalf));
    assert_eq!(DataType::try_from(33), Ok(DataType::DtFloat4E2m1fn));
    assert_eq!(DataType::try_from(101), Ok(DataType::DtFloatRef));
}
