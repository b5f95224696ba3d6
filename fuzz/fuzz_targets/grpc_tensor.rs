//! A gRPC PredictRequest as prost decodes it, its inputs converted as the server converts them
//! (which must not panic, whatever the shapes, dtypes and value counts), then:
//! - each accepted tensor written back as TensorFlow's typed fields and as `tensor_content`, both
//!   of which must read back to the same tensor;
//! - the inputs sent back as a PredictResponse's outputs, whose one-copy encoding must be byte for
//!   byte prost's.
//!
//! The first byte picks what the rest is: a whole PredictRequest (even), or one TensorProto
//! (odd), the request's only input, two length prefixes closer to the fuzzer's mutations.

#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use oxserve_proto::codec::encode_predict_response;
use oxserve_proto::tensorflow::serving::{PredictRequest, PredictResponse};
use oxserve_proto::tensorflow::TensorProto;
use oxserve_server::grpc::tensor::{parse_input, tensor_from_proto, tensor_to_proto};
use prost::Message;

/// Round trips stop here: a one-value fill may make a 256 MiB tensor, and the trip copies it.
const ROUND_TRIP_ELEMENTS: usize = 1 << 16;

fuzz_target!(|data: &[u8]| {
    let Some((&pick, wire)) = data.split_first() else {
        return;
    };
    let request = if pick % 2 == 0 {
        PredictRequest::decode(wire)
    } else {
        TensorProto::decode(wire).map(|tensor| PredictRequest {
            inputs: [("x".to_string(), tensor)].into(),
            ..PredictRequest::default()
        })
    };
    let Ok(request) = request else {
        return;
    };
    for (alias, proto) in &request.inputs {
        let Ok(tensor) = parse_input(alias, proto.clone()) else {
            continue;
        };
        if tensor.len() > ROUND_TRIP_ELEMENTS {
            continue;
        }
        for as_content in [false, true] {
            let again = tensor_from_proto(tensor_to_proto(tensor.clone(), as_content))
                .unwrap_or_else(|e| {
                    panic!("{tensor:?} (as_content {as_content}) does not read back: {e:?}")
                });
            // Debug text compares NaNs as equal.
            assert_eq!(
                format!("{again:?}"),
                format!("{tensor:?}"),
                "as_content {as_content}"
            );
        }
    }
    let mut response = PredictResponse {
        outputs: request.inputs,
        model_spec: request.model_spec,
    };
    let expected = response.encode_to_vec();
    let mut written = BytesMut::new();
    encode_predict_response(&mut response, &mut written);
    assert_eq!(&written[..], &expected[..]);
});
