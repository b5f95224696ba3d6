//! `footprint::decoded_bound` against the heap prost really uses.
//!
//! A counting global allocator (`support/peak_heap.rs`) measures the peak heap of `M::decode`
//! from a `Bytes` (so that `bytes` fields share the buffer, as in tonic), counting a
//! reallocation's old and new buffers both, as the bound does. Counters are per thread, so tests
//! can run in parallel.
//!
//! Every case checks that the bound covers the peak, the decoded struct included (the bound counts
//! it: the server keeps it on the heap). Each request built here and each Python fixture also
//! checks that the bound is at most `K` times the peak plus `SLACK`. The walk charges what prost
//! allocates, with the capacities `Vec` and hashbrown grow to, so what is left is what the bytes
//! do not tell: the regrowth a singular string would need if written twice, the old buffer of a
//! container that grew before the peak, the error a failing decode would build, a few constants
//! (the request buffer's sharing), and for types outside the table of Rust sizes (responses,
//! configs) struct sizes estimated from their descriptors, up to 1.8x too large. Requests of a
//! few KB and more come within 1.35x here, most within 1.1x; a message of a few hundred bytes is
//! mostly the constants, which `SLACK` covers. `K` = 2 leaves room without letting the bound refuse
//! requests the budget has room for.
//! Mutated messages, which can write a message field twice and make the walk charge containers
//! per occurrence, only check that the bound covers the peak.
//!
//! `cargo test -p oxserve-proto --release --test footprint -- --nocapture` prints each case's
//! bound / peak; `-- --ignored --nocapture` the cost of a call.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use bytes::Bytes;
use oxserve_proto::footprint::decoded_bound;
use oxserve_proto::tensorflow::serving::{
    input, model_spec::VersionChoice, ClassificationRequest, ClassificationResponse, ExampleList,
    ExampleListWithContext, GetModelMetadataRequest, GetModelMetadataResponse,
    GetModelStatusRequest, GetModelStatusResponse, InferenceTask, Input, ModelServerConfig,
    ModelSpec, MultiInferenceRequest, MultiInferenceResponse, PredictRequest, PredictResponse,
    PredictionLog, RegressionRequest, RegressionResponse, ReloadConfigRequest,
    ReloadConfigResponse,
};
use oxserve_proto::tensorflow::{
    feature, BytesList, ConfigProto, DataType, Example, Feature, Features, FloatList, Int64List,
    SequenceExample, TensorProto, TensorShapeProto, VariantTensorDataProto,
};
use prost::encoding::{encode_key, encode_varint, WireType};
use prost::{Message, Name};

const K: usize = 2;
const SLACK: usize = 1024;

#[path = "support/peak_heap.rs"]
mod peak_heap;

use peak_heap::{peak_of, Counting};

#[global_allocator]
static ALLOCATOR: Counting = Counting;

struct Measured {
    bound: usize,
    peak: usize,
    decoded: bool,
}

impl Measured {
    fn ratio(&self) -> f64 {
        self.bound as f64 / self.peak.max(1) as f64
    }
}

/// Checks that the bound covers the decode's peak.
fn check<M: Message + Default + Name>(case: &str, wire: &[u8]) -> Measured {
    let bound = decoded_bound::<M>(wire);
    let (peak, decoded) = peak_of::<M>(wire);
    assert!(
        bound >= peak,
        "{case}: bound {bound} < peak {peak} ({} wire bytes)",
        wire.len()
    );
    Measured {
        bound,
        peak,
        decoded,
    }
}

/// [`check`], and that a message that decodes has a bound within `K` of its peak; prints a line of
/// the tightness table.
fn report<M: Message + Default + Name>(case: &str, wire: &[u8]) {
    let measured = check::<M>(case, wire);
    assert!(
        !measured.decoded || measured.bound <= K * measured.peak + SLACK,
        "{case}: bound {} > {K} x peak {} + {SLACK}",
        measured.bound,
        measured.peak
    );
    print_row(case, wire, &measured);
}

fn print_row(case: &str, wire: &[u8], measured: &Measured) {
    println!(
        "{case:<48} wire {:>10}  peak {:>11}  bound {:>11}  bound/peak {:>5.2}  bound/wire {:>6.2}",
        wire.len(),
        measured.peak,
        measured.bound,
        measured.ratio(),
        measured.bound as f64 / wire.len().max(1) as f64,
    );
}

fn spec(name: &str) -> Option<ModelSpec> {
    Some(ModelSpec {
        name: name.into(),
        signature_name: "serving_default".into(),
        version_choice: Some(VersionChoice::Version(1)),
    })
}

fn tensor(dtype: DataType, dims: &[i64]) -> TensorProto {
    TensorProto {
        dtype: dtype as i32,
        tensor_shape: Some(TensorShapeProto::from_sizes(dims.iter().copied())),
        ..Default::default()
    }
}

fn predict(inputs: impl IntoIterator<Item = (String, TensorProto)>) -> PredictRequest {
    PredictRequest {
        model_spec: spec("model"),
        inputs: inputs.into_iter().collect(),
        ..Default::default()
    }
}

fn planet_tensor_content() -> PredictRequest {
    let mut image = tensor(DataType::DtFloat, &[1, 128, 128, 3]);
    image.tensor_content = Bytes::from(vec![0x3f; 128 * 128 * 3 * 4]);
    PredictRequest {
        model_spec: spec("planet"),
        inputs: HashMap::from([("image".into(), image)]),
        ..Default::default()
    }
}

fn planet_float_val() -> PredictRequest {
    let mut image = tensor(DataType::DtFloat, &[1, 128, 128, 3]);
    image.float_val = (0..128 * 128 * 3).map(|i| i as f32 / 7.0).collect();
    PredictRequest {
        model_spec: spec("planet"),
        inputs: HashMap::from([("image".into(), image)]),
        ..Default::default()
    }
}

fn half_plus_two() -> PredictRequest {
    let mut x = tensor(DataType::DtFloat, &[3]);
    x.float_val = vec![1.0, 2.0, 5.0];
    PredictRequest {
        model_spec: spec("half_plus_two"),
        inputs: HashMap::from([("x".into(), x)]),
        ..Default::default()
    }
}

fn float_feature(values: Vec<f32>) -> Feature {
    Feature {
        kind: Some(feature::Kind::FloatList(FloatList { value: values })),
    }
}

fn example(features: impl IntoIterator<Item = (String, Feature)>) -> Example {
    Example {
        features: Some(Features {
            feature: features.into_iter().collect(),
        }),
    }
}

fn classify(examples: Vec<Example>) -> ClassificationRequest {
    ClassificationRequest {
        model_spec: spec("classifier"),
        input: Some(Input {
            kind: Some(input::Kind::ExampleList(ExampleList { examples })),
        }),
    }
}

/// A field key and a length-delimited value.
fn length_delimited(number: u32, value: &[u8], out: &mut Vec<u8>) {
    encode_key(number, WireType::LengthDelimited, out);
    encode_varint(value.len() as u64, out);
    out.extend_from_slice(value);
}

/// A PredictRequest of one input, "x", whose TensorProto is `tensor` (wire bytes).
fn predict_wire(tensor: &[u8]) -> Vec<u8> {
    let mut entry = Vec::new();
    length_delimited(1, b"x", &mut entry);
    length_delimited(2, tensor, &mut entry);
    let mut wire = Vec::new();
    length_delimited(2, &entry, &mut wire);
    wire
}

#[test]
fn typical_and_adversarial_requests() {
    let empty_strings = {
        let mut t = tensor(DataType::DtString, &[200_000]);
        t.string_val = vec![Bytes::new(); 200_000];
        predict([("x".into(), t)])
    };
    report::<PredictRequest>(
        "predict: 200k empty string_val",
        &empty_strings.encode_to_vec(),
    );

    let zeros = {
        let mut t = tensor(DataType::DtInt64, &[1_000_000]);
        t.int64_val = vec![0; 1_000_000];
        predict([("x".into(), t)])
    };
    report::<PredictRequest>("predict: 1M packed int64_val zeros", &zeros.encode_to_vec());

    let unpacked = {
        let mut t = Vec::new();
        for i in 0..30_000_u64 {
            encode_key(10, WireType::Varint, &mut t); // int64_val
            encode_varint(i % 3, &mut t);
            encode_key(5, WireType::ThirtyTwoBit, &mut t); // float_val
            t.extend_from_slice(&1.5_f32.to_le_bytes());
            encode_key(11, WireType::Varint, &mut t); // bool_val
            encode_varint(1, &mut t);
            encode_key(6, WireType::SixtyFourBit, &mut t); // double_val
            t.extend_from_slice(&2.5_f64.to_le_bytes());
        }
        predict_wire(&t)
    };
    report::<PredictRequest>("predict: 4 x 30k unpacked repeated scalars", &unpacked);

    let keys = predict((0..50_000).map(|i| (format!("k{i}"), tensor(DataType::DtFloat, &[]))));
    report::<PredictRequest>("predict: 50k distinct input keys", &keys.encode_to_vec());

    let content = {
        let mut t = tensor(DataType::DtFloat, &[1 << 18]);
        t.tensor_content = Bytes::from(vec![7; 1 << 20]);
        predict([("x".into(), t)])
    };
    report::<PredictRequest>("predict: 1 MB tensor_content", &content.encode_to_vec());
    report::<PredictRequest>(
        "predict: Planet, 196 KB tensor_content",
        &planet_tensor_content().encode_to_vec(),
    );
    report::<PredictRequest>(
        "predict: Planet, 49k float_val",
        &planet_float_val().encode_to_vec(),
    );
    report::<PredictRequest>("predict: half_plus_two", &half_plus_two().encode_to_vec());

    let empty_examples = classify(vec![Example::default(); 100_000]);
    report::<ClassificationRequest>(
        "classify: 100k empty Examples",
        &empty_examples.encode_to_vec(),
    );

    let wide = classify(
        (0..20)
            .map(|e| example((0..2_000).map(|k| (format!("f{k}"), float_feature(vec![e as f32])))))
            .collect(),
    );
    report::<ClassificationRequest>(
        "classify: 20 Examples x 2k distinct keys",
        &wide.encode_to_vec(),
    );

    let bytes_lists = classify(
        (0..1_000)
            .map(|e| {
                example([
                    (
                        "image".into(),
                        Feature {
                            kind: Some(feature::Kind::BytesList(BytesList {
                                value: vec![Bytes::from(vec![e as u8; 2_000])],
                            })),
                        },
                    ),
                    (
                        "tags".into(),
                        Feature {
                            kind: Some(feature::Kind::BytesList(BytesList {
                                value: (0..20).map(|t| Bytes::from(format!("tag{t}"))).collect(),
                            })),
                        },
                    ),
                    (
                        "ids".into(),
                        Feature {
                            kind: Some(feature::Kind::Int64List(Int64List {
                                value: vec![e, e + 1, 1 << 40],
                            })),
                        },
                    ),
                ])
            })
            .collect(),
    );
    report::<ClassificationRequest>(
        "classify: 1k Examples of bytes_list, int64_list",
        &bytes_lists.encode_to_vec(),
    );

    let few = classify(
        (0..8)
            .map(|e| {
                example([
                    ("age".into(), float_feature(vec![30.0 + e as f32])),
                    ("income".into(), float_feature(vec![5e4])),
                    ("scores".into(), float_feature(vec![0.5; 16])),
                ])
            })
            .collect(),
    );
    report::<ClassificationRequest>("classify: 8 small Examples", &few.encode_to_vec());

    let regress = RegressionRequest {
        model_spec: spec("regressor"),
        input: classify(vec![example([("x".into(), float_feature(vec![1.0]))]); 64]).input,
    };
    report::<RegressionRequest>("regress: 64 one-feature Examples", &regress.encode_to_vec());

    let multi = MultiInferenceRequest {
        tasks: ["classify", "regress", "classify"]
            .iter()
            .map(|method| InferenceTask {
                model_spec: spec("multi"),
                method_name: format!("tensorflow/serving/{method}"),
            })
            .collect(),
        input: Some(Input {
            kind: Some(input::Kind::ExampleListWithContext(
                ExampleListWithContext {
                    examples: (0..500)
                        .map(|e| example([("x".into(), float_feature(vec![e as f32; 4]))]))
                        .collect(),
                    context: Some(example([("user".into(), float_feature(vec![1.0; 32]))])),
                },
            )),
        }),
    };
    report::<MultiInferenceRequest>(
        "multi_inference: 3 tasks, 500 Examples, context",
        &multi.encode_to_vec(),
    );

    let metadata = GetModelMetadataRequest {
        model_spec: spec("model"),
        metadata_field: vec!["signature_def".into(); 100_000],
    };
    report::<GetModelMetadataRequest>(
        "get_model_metadata: 100k metadata_field",
        &metadata.encode_to_vec(),
    );

    let status = GetModelStatusRequest {
        model_spec: spec("model"),
    };
    report::<GetModelStatusRequest>("get_model_status", &status.encode_to_vec());
}

#[test]
fn messages_written_twice() {
    // Concatenated messages merge: a singular message field written twice is one struct whose
    // Vecs and maps grow across both (8 + 1 Examples need a capacity of 16, where each alone needs
    // 8 and 4), a string written twice is regrown in place, a map key written twice replaces.
    // The walk then charges each occurrence on its own: covered, not as tightly.
    fn covered<M: Message + Default + Name>(case: &str, wire: &[u8]) {
        print_row(case, wire, &check::<M>(case, wire));
    }
    let few = |count| {
        classify(vec![
            example([("x".into(), float_feature(vec![1.0]))]);
            count
        ])
    };
    for (first, second) in [(8, 1), (3, 2), (65_536, 1)] {
        let wire = [few(first).encode_to_vec(), few(second).encode_to_vec()].concat();
        covered::<ClassificationRequest>(&format!("classify: {first} + {second} Examples"), &wire);
    }

    let names = [8, 9, 17, 1000, 1001].map(|len| {
        GetModelStatusRequest {
            model_spec: spec(&"n".repeat(len)),
        }
        .encode_to_vec()
    });
    covered::<GetModelStatusRequest>("get_model_status: a name written 5 times", &names.concat());

    let inputs = [3, 40, 7].map(|len| {
        let mut t = tensor(DataType::DtInt64, &[len]);
        t.int64_val = vec![5; len as usize];
        predict([("x".into(), t)]).encode_to_vec()
    });
    covered::<PredictRequest>("predict: an input written 3 times", &inputs.concat());
}

fn fixture(name: &str) -> Vec<u8> {
    let path = format!(
        "{}/tests/fixtures/python/{name}.pb",
        env!("CARGO_MANIFEST_DIR")
    );
    std::fs::read(path).unwrap()
}

#[test]
fn python_fixtures() {
    macro_rules! fixtures {
        ($($name:literal => $message:ty),* $(,)?) => {
            $( report::<$message>(concat!("python: ", $name), &fixture($name)); )*
        };
    }
    fixtures!(
        "classification_request" => ClassificationRequest,
        "classification_response" => ClassificationResponse,
        "config_proto" => ConfigProto,
        "get_model_metadata_request" => GetModelMetadataRequest,
        "get_model_metadata_response" => GetModelMetadataResponse,
        "get_model_status_response" => GetModelStatusResponse,
        "model_server_config" => ModelServerConfig,
        "multi_inference_request" => MultiInferenceRequest,
        "multi_inference_response" => MultiInferenceResponse,
        "predict_request" => PredictRequest,
        "predict_response" => PredictResponse,
        "prediction_log" => PredictionLog,
        "regression_request" => RegressionRequest,
        "regression_response" => RegressionResponse,
        "reload_config_request" => ReloadConfigRequest,
        "reload_config_response" => ReloadConfigResponse,
        "sequence_example" => SequenceExample,
    );
}

/// Valid requests of every shape the walk handles, small enough to mutate by the thousand.
fn seeds() -> Vec<(&'static str, Vec<u8>)> {
    let mut strings = tensor(DataType::DtString, &[3]);
    strings.string_val = vec![
        Bytes::from_static(b"ab"),
        Bytes::new(),
        Bytes::from_static(b"c"),
    ];
    let mut ints = tensor(DataType::DtInt64, &[4]);
    ints.int64_val = vec![0, -1, 300, 1 << 50];
    ints.bool_val = vec![true, false];
    let mut nested = tensor(DataType::DtVariant, &[1]);
    nested.variant_val = vec![VariantTensorDataProto {
        type_name: "t".into(),
        metadata: Bytes::from_static(b"m"),
        tensors: vec![ints.clone(), strings.clone()],
    }];
    let predict = predict([
        ("s".into(), strings),
        ("i".into(), ints),
        ("v".into(), nested),
        ("h".into(), half_plus_two().inputs["x"].clone()),
    ]);
    let classify = classify(
        (0..3)
            .map(|e| {
                example([
                    ("a".into(), float_feature(vec![e as f32, 2.0])),
                    (
                        "b".into(),
                        Feature {
                            kind: Some(feature::Kind::BytesList(BytesList {
                                value: vec![Bytes::from_static(b"xy"); 2],
                            })),
                        },
                    ),
                ])
            })
            .collect(),
    );
    vec![
        ("predict", predict.encode_to_vec()),
        ("classify", classify.encode_to_vec()),
        ("multi_inference", fixture("multi_inference_request")),
        ("get_model_metadata", fixture("get_model_metadata_request")),
        ("reload_config", fixture("reload_config_request")),
    ]
}

/// Checks a seed's mutation as the seed's type.
fn check_as(seed: &str, case: &str, wire: &[u8]) -> Measured {
    match seed {
        "predict" => check::<PredictRequest>(case, wire),
        "classify" => check::<ClassificationRequest>(case, wire),
        "multi_inference" => check::<MultiInferenceRequest>(case, wire),
        "get_model_metadata" => check::<GetModelMetadataRequest>(case, wire),
        _ => check::<ReloadConfigRequest>(case, wire),
    }
}

#[test]
fn truncated_messages() {
    for (seed, wire) in seeds() {
        for len in 0..wire.len() {
            check_as(seed, &format!("{seed} truncated to {len}"), &wire[..len]);
        }
    }
}

#[test]
fn malformed_messages() {
    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "huge length",
            predict_wire(&[0x2a, 0xff, 0xff, 0xff, 0xff, 0x07]),
        ),
        ("length past the end", predict_wire(&[0x2a, 0x10, 1, 2, 3])),
        ("unterminated varint", predict_wire(&[0x08, 0x80, 0x80])),
        (
            "11-byte varint",
            predict_wire(&[
                0x08, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01,
            ]),
        ),
        ("wire type 6", vec![0x0e, 0x00]),
        ("wire type 7", vec![0x0f, 0x00]),
        ("field number 0", vec![0x02, 0x00]),
        ("key above u32", vec![0x80, 0x80, 0x80, 0x80, 0x80, 0x01]),
        ("stray end group", vec![0x0c]),
        ("unclosed group", vec![0xfb, 0x06, 0x08, 0x01]),
        (
            "packed varint running past its end",
            predict_wire(&[0x52, 0x02, 0x01, 0x80]),
        ),
        (
            "packed floats not a multiple of 4",
            predict_wire(&[0x2a, 0x05, 1, 2, 3, 4, 5]),
        ),
        ("string field as varint", vec![0x0a, 0x02, 0x08, 0x01]),
    ];
    for (case, wire) in cases {
        check::<PredictRequest>(case, &wire);
    }

    // Unknown groups nested a million deep: prost stops at its recursion limit, the walk skips
    // them without recursing.
    let mut groups = Vec::new();
    for _ in 0..1_000_000 {
        encode_key(99, WireType::StartGroup, &mut groups);
    }
    for _ in 0..1_000_000 {
        encode_key(99, WireType::EndGroup, &mut groups);
    }
    check::<PredictRequest>("groups nested 1M deep", &groups);

    let mut rng = Rng(0x5eed);
    for round in 0..20_000 {
        let wire: Vec<u8> = (0..rng.below(64)).map(|_| rng.next() as u8).collect();
        check::<PredictRequest>(&format!("random bytes {round}"), &wire);
        check::<ClassificationRequest>(&format!("random bytes {round}"), &wire);
    }
}

/// TensorProto -> variant_val -> tensors -> TensorProto ..., `depth` TensorProtos deep.
fn nested_tensor(depth: usize) -> TensorProto {
    let mut t = tensor(DataType::DtFloat, &[2]);
    t.float_val = vec![1.0, 2.0];
    for _ in 1..depth {
        let mut outer = tensor(DataType::DtVariant, &[1]);
        outer.variant_val = vec![VariantTensorDataProto {
            type_name: "nested".into(),
            metadata: Bytes::new(),
            tensors: vec![t],
        }];
        t = outer;
    }
    t
}

#[test]
fn deep_nesting() {
    // Each TensorProto level is two messages deep (a VariantTensorDataProto between), under the
    // request and its map entry: prost's limit of 100 lets 48 decode, not 50.
    for depth in [10, 48, 49, 50, 200] {
        let request = predict([("x".into(), nested_tensor(depth))]);
        let wire = request.encode_to_vec();
        check::<PredictRequest>(&format!("{depth} nested tensors"), &wire);
    }
    let wire = predict([("x".into(), nested_tensor(48))]).encode_to_vec();
    assert!(PredictRequest::decode(wire.as_slice()).is_ok());
    let wire = predict([("x".into(), nested_tensor(50))]).encode_to_vec();
    assert!(PredictRequest::decode(wire.as_slice()).is_err());
}

/// xorshift64*: reproducible without a dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

fn mutate(wire: &mut Vec<u8>, rng: &mut Rng) {
    for _ in 0..=rng.below(3) {
        if wire.is_empty() {
            return;
        }
        let at = rng.below(wire.len());
        match rng.below(6) {
            0 => wire[at] = rng.next() as u8,
            1 => wire[at] ^= 1 << rng.below(8),
            2 => wire.insert(at, rng.next() as u8),
            3 => {
                wire.remove(at);
            }
            4 => wire.truncate(at),
            // A copy of a stretch elsewhere: fields written twice, merged by prost.
            _ => {
                let end = (at + 1 + rng.below(64)).min(wire.len());
                let stretch = wire[at..end].to_vec();
                let to = rng.below(wire.len() + 1);
                wire.splice(to..to, stretch);
            }
        }
    }
}

const ROUNDS: usize = 50_000;

#[test]
fn mutated_messages() {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    for (seed, wire) in seeds() {
        let (mut decoded, mut over_k, mut worst) = (0, 0, 0.0_f64);
        for round in 0..ROUNDS {
            let mut mutated = wire.clone();
            mutate(&mut mutated, &mut rng);
            let measured = check_as(seed, &format!("{seed} mutation {round}"), &mutated);
            if measured.decoded {
                decoded += 1;
                over_k += usize::from(measured.bound > K * measured.peak + SLACK);
                worst = worst.max(measured.ratio());
            }
        }
        println!(
            "{seed}: {ROUNDS} mutations, {decoded} decode: {over_k} over {K} x peak + {SLACK}, \
             worst bound/peak {worst:.2}"
        );
    }
}

/// The cost of a call on the requests the server sees most, next to prost's decode.
#[test]
#[ignore = "timing; run with --ignored --nocapture"]
fn cost_per_call() {
    // The best of a few rounds: other work on the machine only slows a round down.
    fn best(calls: u32, mut call: impl FnMut()) -> Duration {
        (0..5)
            .map(|_| {
                let start = Instant::now();
                for _ in 0..calls {
                    call();
                }
                start.elapsed() / calls
            })
            .min()
            .unwrap_or_default()
    }
    fn time<M: Message + Default + Name>(case: &str, wire: &[u8], calls: u32) {
        let bound = best(calls, || {
            std::hint::black_box(decoded_bound::<M>(std::hint::black_box(wire)));
        });
        let buffer = Bytes::from(wire.to_vec());
        let decode = best(calls, || {
            std::hint::black_box(M::decode(buffer.clone()).is_ok());
        });
        println!(
            "{case:<24} {:>8} wire bytes: bound {bound:>10.2?}, prost's decode {decode:>10.2?}",
            wire.len()
        );
    }
    time::<PredictRequest>("half_plus_two", &half_plus_two().encode_to_vec(), 200_000);
    time::<PredictRequest>(
        "Planet, tensor_content",
        &planet_tensor_content().encode_to_vec(),
        200_000,
    );
    time::<PredictRequest>(
        "Planet, float_val",
        &planet_float_val().encode_to_vec(),
        2_000,
    );
    let examples = classify(vec![
        example([("x".into(), float_feature(vec![1.0; 4]))]);
        1_000
    ]);
    time::<ClassificationRequest>("classify, 1k Examples", &examples.encode_to_vec(), 200);
}
