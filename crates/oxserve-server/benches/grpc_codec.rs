//! Micro-benchmarks of the gRPC codec on image tensors: a PredictRequest's `tensor_content` or
//! `float_val` decoded into a tensor, and a PredictResponse encoded with the image in `float_val` (TF
//! Serving's default) or in `tensor_content` (`--enable_serialization_as_tensor_content`), for one
//! 128x128x3 float image and a batch of 32, reported in MB/s of protobuf. Responses are encoded
//! as the server's codec does (`encode_predict_response`), and as prost alone would (`prost-`).
//!
//! ```sh
//! cargo bench -p oxserve-server --bench grpc_codec
//! ```

use std::hint::black_box;

use bytes::BytesMut;
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use oxserve_core::{Tensor, TensorData};
use oxserve_proto::codec::encode_predict_response;
use oxserve_proto::tensorflow::serving::{PredictRequest, PredictResponse};
use oxserve_server::grpc::tensor::{parse_input, tensor_to_proto};
use prost::Message;

fn image(images: usize) -> Tensor {
    let values = (0..images * 128 * 128 * 3)
        .map(|i| (i % 251) as f32 / 251.0)
        .collect();
    Tensor::new(vec![images, 128, 128, 3], TensorData::Float(values)).expect("shape matches")
}

fn response(images: usize, as_content: bool) -> PredictResponse {
    PredictResponse {
        outputs: [(
            "output_0".to_string(),
            tensor_to_proto(image(images), as_content),
        )]
        .into(),
        ..PredictResponse::default()
    }
}

fn codec(c: &mut Criterion) {
    for images in [1usize, 32] {
        let mut group = c.benchmark_group(format!("decode/{images}x128x128x3"));
        group.sample_size(if images == 1 { 50 } else { 10 });
        for (as_content, name) in [(true, "tensor_content"), (false, "float_val")] {
            let request = PredictRequest {
                inputs: [(
                    "image".to_string(),
                    tensor_to_proto(image(images), as_content),
                )]
                .into(),
                ..PredictRequest::default()
            };
            // As tonic hands it over: the message's bytes in one buffer.
            let bytes = bytes::Bytes::from(request.encode_to_vec());
            group.throughput(Throughput::Bytes(bytes.len() as u64));
            group.bench_function(name, |b| {
                b.iter(|| {
                    let mut request =
                        PredictRequest::decode(black_box(bytes.clone())).expect("decodes");
                    let proto = request.inputs.remove("image").expect("has the input");
                    black_box(parse_input("image", proto).expect("valid"))
                })
            });
        }
        group.finish();

        for (as_content, name) in [(false, "float_val"), (true, "tensor_content")] {
            let message = response(images, as_content);
            let mut group = c.benchmark_group(format!("encode/{images}x128x128x3"));
            group.throughput(Throughput::Bytes(message.encoded_len() as u64));
            group.sample_size(if images == 1 { 50 } else { 10 });
            let mut buf = BytesMut::with_capacity(message.encoded_len());
            group.bench_function(name, |b| {
                b.iter_batched_ref(
                    || message.clone(),
                    |message| {
                        buf.clear();
                        encode_predict_response(message, &mut buf);
                        black_box(buf.len())
                    },
                    BatchSize::LargeInput,
                )
            });
            group.bench_function(format!("prost-{name}"), |b| {
                b.iter(|| {
                    buf.clear();
                    black_box(&message).encode(&mut buf).expect("room");
                    black_box(buf.len())
                })
            });
            group.finish();
        }
    }
}

criterion_group!(benches, codec);
criterion_main!(benches);
