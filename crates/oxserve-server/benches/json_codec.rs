//! Micro-benchmarks of TF Serving's JSON codec (`rest::json`) on image tensors: decode of a
//! predict request and encode of a predict response, for one 128x128x3 float image and a batch
//! of 32 (and the decode of one image with pixels in [0, 255)), reported in MB/s of JSON text;
//! and the encode of a classifier's 1000 scores (`encode/1x1000-probabilities`).
//!
//! ```sh
//! cargo bench -p oxserve-server --bench json_codec
//! ```
//!
//! `decode/.../instances` decodes on one thread (`parse_predict_request`, a borrowed body);
//! `decode/.../instances-shared` as the REST server does (`parse_shared_predict_request`, a body
//! in `Bytes`), where a long list takes the helper thread when it is free (`rest::json::split`):
//! on a machine busy with other work, its times are those of one thread, or worse.

use std::collections::BTreeMap;
use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use oxserve_core::{DType, Result, Tensor, TensorData, TensorSpec};
use oxserve_server::rest::json::{
    parse_predict_request, parse_shared_predict_request, write_predict_response, Format,
};

const SIDE: usize = 128;
const CHANNELS: usize = 3;

/// Deterministic pixel values in [0, 1), as a client sending normalised float images would.
fn pixels(images: usize) -> Vec<f32> {
    let mut state = 0x2545_f491_4f6c_dd1du64;
    (0..images * SIDE * SIDE * CHANNELS)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 40) as f32 / (1u64 << 24) as f32
        })
        .collect()
}

/// A classifier's 1000 scores: the softmax of deterministic logits spread over [0, 80), so that
/// as in Keras ResNet50's outputs most are tiny probabilities (down to 1e-35), which TF Serving
/// writes in exponent form (4.08229628e-31, 1.62049e-16).
fn probabilities() -> Vec<f32> {
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let logits: Vec<f64> = (0..1000)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 11) as f64 / (1u64 << 53) as f64 * 80.0
        })
        .collect();
    let max = logits.iter().copied().fold(f64::MIN, f64::max);
    let sum: f64 = logits.iter().map(|l| (l - max).exp()).sum();
    logits
        .iter()
        .map(|l| ((l - max).exp() / sum) as f32)
        .collect()
}

/// A response tensor of `images` images.
fn image_tensor(images: usize) -> Tensor {
    Tensor::new(
        vec![images, SIDE, SIDE, CHANNELS],
        TensorData::Float(pixels(images)),
    )
    .expect("shape matches")
}

/// `{"instances": [...]}`: the request a Python client sends. `json.dumps(image.tolist())` on a
/// float32 array writes each value as the shortest text of the *double* it widens to (about 17
/// significant digits, ~1 MB per 128x128x3 image), as Rust's `{:?}` of an `f64` does.
fn request_body(images: usize, scale: f32) -> Vec<u8> {
    let values: Vec<f32> = pixels(images).iter().map(|v| v * scale).collect();
    let mut out = String::with_capacity(values.len() * 12);
    out.push_str("{\"instances\": [");
    for (i, image) in values.chunks(SIDE * SIDE * CHANNELS).enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        out.push('[');
        for (r, row) in image.chunks(SIDE * CHANNELS).enumerate() {
            if r > 0 {
                out.push_str(", ");
            }
            out.push('[');
            for (p, pixel) in row.chunks(CHANNELS).enumerate() {
                if p > 0 {
                    out.push_str(", ");
                }
                out.push('[');
                for (c, v) in pixel.iter().enumerate() {
                    if c > 0 {
                        out.push_str(", ");
                    }
                    out.push_str(&format!("{:?}", f64::from(*v)));
                }
                out.push(']');
            }
            out.push(']');
        }
        out.push(']');
    }
    out.push_str("]}");
    out.into_bytes()
}

fn signature() -> BTreeMap<String, TensorSpec> {
    BTreeMap::from([(
        "image".to_string(),
        TensorSpec {
            name: "serving_default_image:0".to_string(),
            dtype: DType::Float,
            shape: Some(vec![-1, SIDE as i64, SIDE as i64, CHANNELS as i64]),
        },
    )])
}

fn codec(c: &mut Criterion) {
    let inputs = signature();
    // Pixels in [0, 1) as normalised images, and in [0, 255) as models that preprocess in the
    // graph take them (Keras ResNet50): their numbers have an integer part and fewer fraction
    // digits.
    for (images, scale, suffix) in [(1usize, 1.0, ""), (1, 255.0, "x255"), (32, 1.0, "")] {
        let body = request_body(images, scale);
        let mut group = c.benchmark_group(format!("decode/{images}x128x128x3{suffix}"));
        group.throughput(Throughput::Bytes(body.len() as u64));
        group.sample_size(if images == 1 { 50 } else { 10 });
        group.bench_function("instances", |b| {
            b.iter(|| {
                let request =
                    parse_predict_request(black_box(&body), |_| -> Result<_> { Ok(&inputs) })
                        .expect("valid request");
                black_box(request)
            })
        });
        let shared = bytes::Bytes::from(body.clone());
        group.bench_function("instances-shared", |b| {
            b.iter(|| {
                let request = parse_shared_predict_request(black_box(&shared), |_| -> Result<_> {
                    Ok(&inputs)
                })
                .expect("valid request");
                black_box(request)
            })
        });
        group.finish();
        if scale != 1.0 {
            continue;
        }

        let outputs = vec![("output_0".to_string(), image_tensor(images))];
        for (format, name) in [(Format::Row, "predictions"), (Format::Columnar, "outputs")] {
            let size = write_predict_response(&outputs, format)
                .expect("encodes")
                .len();
            let mut group = c.benchmark_group(format!("encode/{images}x128x128x3"));
            group.throughput(Throughput::Bytes(size as u64));
            group.sample_size(if images == 1 { 50 } else { 10 });
            group.bench_function(name, |b| {
                b.iter(|| black_box(write_predict_response(black_box(&outputs), format)))
            });
            group.finish();
        }
    }
}

fn classifier(c: &mut Criterion) {
    let scores = Tensor::new(vec![1, 1000], TensorData::Float(probabilities())).expect("shape");
    let outputs = vec![("output_0".to_string(), scores)];
    for (format, name) in [(Format::Row, "predictions"), (Format::Columnar, "outputs")] {
        let size = write_predict_response(&outputs, format)
            .expect("encodes")
            .len();
        let mut group = c.benchmark_group("encode/1x1000-probabilities");
        group.throughput(Throughput::Bytes(size as u64));
        group.bench_function(name, |b| {
            b.iter(|| black_box(write_predict_response(black_box(&outputs), format)))
        });
        group.finish();
    }
}

criterion_group!(benches, codec, classifier);
criterion_main!(benches);
