//! Loads the real TensorFlow runtime (found like the server finds it: here through
//! `.oxserve/tf-lib-dir` at the repository root, written by `scripts/setup`) and runs TensorFlow
//! Serving's test models plus `tests/fixtures/dtypes_model` (see `make_dtypes_model.py`).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use oxserve_core::{bf16, f16, Code, DType, Model, Signature, Tensor, TensorData, TensorSpec};
use oxserve_proto::tensorflow::{feature, Example, Feature, Features, FloatList};
use oxserve_tensorflow::{BackendOptions, TensorFlowBackend, TensorFlowModel};
use prost::Message;

fn testdata(model: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/tf-serving-testdata")
        .join(model)
}

fn backend() -> &'static TensorFlowBackend {
    static BACKEND: OnceLock<TensorFlowBackend> = OnceLock::new();
    BACKEND.get_or_init(|| {
        TensorFlowBackend::new(BackendOptions {
            intra_op_parallelism: 1,
            inter_op_parallelism: 1,
            ..BackendOptions::default()
        })
        .unwrap_or_else(|e| panic!("TensorFlow runtime not available: {e}"))
    })
}

fn load(model: &str, version: &str) -> TensorFlowModel {
    let dir = testdata(model).join(version);
    backend()
        .load_model(&dir, &["serve".to_string()])
        .unwrap_or_else(|e| panic!("loading {}: {e}", dir.display()))
}

fn dtypes_model() -> TensorFlowModel {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/dtypes_model/1");
    backend().load_model(&dir, &["serve".to_string()]).unwrap()
}

fn floats(shape: &[usize], values: &[f32]) -> Tensor {
    Tensor::new(shape.to_vec(), TensorData::Float(values.to_vec())).unwrap()
}

fn run_one(model: &dyn Model, input: &str, tensor: Tensor, output: &str) -> Tensor {
    let mut outputs = model.run(vec![(input, tensor)], &[output]).unwrap();
    assert_eq!(outputs.len(), 1);
    outputs.remove(0)
}

/// Runs a signature by alias, as the server will: alias -> tensor name from the signature.
fn run_signature(model: &dyn Model, key: &str, input: Tensor) -> Tensor {
    let signature = &model.signatures()[key];
    assert_eq!(signature.inputs.len(), 1, "{key}");
    assert_eq!(signature.outputs.len(), 1, "{key}");
    let input_name = &signature.inputs.values().next().unwrap().name;
    let output_name = &signature.outputs.values().next().unwrap().name;
    run_one(model, input_name, input, output_name)
}

#[test]
fn runtime_reports_its_version() {
    let backend = backend();
    assert_eq!(backend.tensorflow_version(), "2.21.0");
    assert!(backend
        .library_dir()
        .join("libtensorflow_cc.so.2")
        .is_file());
    assert!(backend.tensor_alignment() >= 8);
}

#[test]
fn half_plus_two_serving_default() {
    let model = load("saved_model_half_plus_two_cpu", "00000123");
    let y = run_signature(&model, "serving_default", floats(&[3, 1], &[1.0, 2.0, 5.0]));
    assert_eq!(y, floats(&[3, 1], &[2.5, 3.0, 4.5]));
}

#[test]
fn half_plus_two_regress_x2_to_y3() {
    let model = load("saved_model_half_plus_two_cpu", "00000123");
    let y3 = run_signature(
        &model,
        "regress_x2_to_y3",
        floats(&[3, 1], &[1.0, 2.0, 5.0]),
    );
    assert_eq!(y3, floats(&[3, 1], &[3.5, 4.0, 5.5]));
}

#[test]
fn half_plus_two_tf2() {
    let model = load("saved_model_half_plus_two_tf2_cpu", "00000123");
    let y = run_signature(&model, "serving_default", floats(&[1], &[5.0]));
    assert_eq!(y, floats(&[1], &[4.5]));
    let y3 = run_signature(&model, "regress_x2_to_y3", floats(&[1], &[1.0]));
    assert_eq!(y3, floats(&[1], &[3.5]));
}

#[test]
fn half_plus_three_and_two_versions() {
    let model = load("saved_model_half_plus_three", "00000123");
    let y = run_signature(&model, "serving_default", floats(&[3, 1], &[1.0, 2.0, 5.0]));
    assert_eq!(y, floats(&[3, 1], &[3.5, 4.0, 5.5]));
    for version in ["00000123", "00000124"] {
        let model = load("saved_model_half_plus_two_2_versions", version);
        let y = run_signature(&model, "serving_default", floats(&[2, 1], &[0.0, 4.0]));
        assert_eq!(y, floats(&[2, 1], &[2.0, 4.0]), "version {version}");
    }
}

/// The signatures TF Serving reports for a model, from its golden metadata JSON.
fn golden_signatures(file: &str) -> BTreeMap<String, Signature> {
    let text = std::fs::read_to_string(testdata(file)).unwrap();
    let json: serde_json::Value = serde_json::from_str(&text).unwrap();
    let defs = json["metadata"]["signature_def"]["signature_def"]
        .as_object()
        .unwrap();
    let spec = |info: &serde_json::Value| {
        let shape = &info["tensor_shape"];
        TensorSpec {
            name: info["name"].as_str().unwrap().to_string(),
            dtype: (0..=23)
                .map(DType::from_tf)
                .find(|d| d.proto_name() == info["dtype"].as_str().unwrap())
                .unwrap(),
            shape: if shape["unknown_rank"].as_bool().unwrap() {
                None
            } else {
                Some(
                    shape["dim"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|d| d["size"].as_str().unwrap().parse().unwrap())
                        .collect(),
                )
            },
        }
    };
    let specs = |map: &serde_json::Value| {
        map.as_object()
            .unwrap()
            .iter()
            .map(|(alias, info)| (alias.clone(), spec(info)))
            .collect()
    };
    defs.iter()
        .map(|(key, def)| {
            let signature = Signature {
                method_name: def["method_name"].as_str().unwrap().to_string(),
                inputs: specs(&def["inputs"]),
                outputs: specs(&def["outputs"]),
                defaults: BTreeMap::new(),
            };
            (key.clone(), signature)
        })
        .collect()
}

#[test]
fn signatures_match_tf_serving_metadata() {
    let model = load("saved_model_half_plus_two_cpu", "00000123");
    let golden = golden_signatures("half_plus_two_model_metadata.json");
    assert_eq!(golden.len(), 5);
    assert_eq!(model.signatures(), &golden);
    let classify = &model.signatures()["classify_x_to_y"];
    assert_eq!(classify.method_name, "tensorflow/serving/classify");
    assert_eq!(classify.inputs["inputs"].dtype, DType::String);
    assert_eq!(classify.inputs["inputs"].shape, None);
    assert_eq!(model.signature_defs().len(), 5);

    // TF2 export of the same model (the 2-versions metadata lists the same signatures,
    // including `__saved_model_init_op`, whose output is the NoOp).
    // This export's serving_default gives x a default value; the golden metadata's export has none.
    let model = load("saved_model_half_plus_two_tf2_cpu", "00000123");
    let golden = golden_signatures("saved_model_half_plus_two_tf2_2_versions_metadata.json");
    let mut signatures = model.signatures().clone();
    let defaults = std::mem::take(&mut signatures.get_mut("serving_default").unwrap().defaults);
    assert_eq!(defaults["x"].float_val, [0.0]);
    assert_eq!(signatures, golden);
    assert_eq!(
        model.signatures()["__saved_model_init_op"].outputs["__saved_model_init_op"].dtype,
        DType::Invalid
    );
}

fn example(x: f32) -> Vec<u8> {
    let feature = Feature {
        kind: Some(feature::Kind::FloatList(FloatList { value: vec![x] })),
    };
    Example {
        features: Some(Features {
            feature: [("x".to_string(), feature)].into_iter().collect(),
        }),
    }
    .encode_to_vec()
}

#[test]
fn classify_takes_serialized_examples() {
    let model = load("saved_model_half_plus_two_cpu", "00000123");
    let input = Tensor::vector(TensorData::String(vec![example(2.0), example(5.0)]));
    let scores = run_signature(&model, "classify_x_to_y", input.clone());
    assert_eq!(scores, floats(&[2, 1], &[3.0, 4.5]));
    // regress_x_to_y2 is y2 = 0.5x + 3.
    let y2 = run_signature(&model, "regress_x_to_y2", input);
    assert_eq!(y2, floats(&[2, 1], &[4.0, 5.5]));

    // The TF2 export takes a [-1] vector of examples too.
    let model = load("saved_model_half_plus_two_tf2_cpu", "00000123");
    let input = Tensor::vector(TensorData::String(vec![example(1.0)]));
    let scores = run_signature(&model, "classify_x_to_y", input);
    assert_eq!(scores, floats(&[1, 1], &[2.5]));
}

#[test]
fn malformed_example_is_a_tensorflow_error() {
    let model = load("saved_model_half_plus_two_cpu", "00000123");
    let input = Tensor::vector(TensorData::String(vec![b"\xff\xffnot a proto".to_vec()]));
    let err = model
        .run(vec![("tf_example:0", input)], &["y:0"])
        .unwrap_err();
    assert_eq!(err.code, Code::InvalidArgument, "{err}");
    assert!(!err.message.is_empty());
}

#[test]
fn bad_model_fails_to_load() {
    let dir = testdata("bad_half_plus_two").join("00000123");
    let err = backend()
        .load_model(&dir, &["serve".to_string()])
        .unwrap_err();
    assert_eq!(err.code, Code::NotFound, "{err}");
    assert!(err.message.contains("SavedModel"), "{err}");
    assert!(err.message.contains("bad_half_plus_two"), "{err}");

    let missing = testdata("no_such_model").join("1");
    let err = backend()
        .load_model(&missing, &["serve".to_string()])
        .unwrap_err();
    assert_eq!(err.code, Code::NotFound, "{err}");

    let dir = testdata("saved_model_half_plus_two_cpu").join("00000123");
    let err = backend()
        .load_model(&dir, &["gpu".to_string()])
        .unwrap_err();
    assert!(err.message.contains("gpu"), "{err}");
}

#[test]
fn unknown_tensor_names_are_invalid_arguments() {
    let model = load("saved_model_half_plus_two_cpu", "00000123");
    let x = || floats(&[1, 1], &[1.0]);
    for (feed, fetch) in [
        ("nope:0", "y:0"),
        ("x:0", "nope:0"),
        ("x:1", "y:0"),
        ("x:0", "y"),
    ] {
        let err = model.run(vec![(feed, x())], &[fetch]).unwrap_err();
        assert_eq!(err.code, Code::InvalidArgument, "{feed} {fetch}: {err}");
        assert!(
            err.message.contains("nope") || err.message.contains(':') || err.message.contains('y')
        );
    }
}

#[test]
fn tensorflow_errors_keep_their_code_and_message() {
    let model = load("saved_model_half_plus_two_cpu", "00000123");
    // int32 fed to a float placeholder.
    let x = Tensor::new(vec![1, 1], TensorData::Int32(vec![1])).unwrap();
    let err = model.run(vec![("x:0", x)], &["y:0"]).unwrap_err();
    assert_eq!(err.code, Code::InvalidArgument, "{err}");
    assert!(err.message.contains("float"), "{err}");
    // Duplicate feeds are TF's to refuse.
    let err = model
        .run(
            vec![
                ("x:0", floats(&[1, 1], &[1.0])),
                ("x:0", floats(&[1, 1], &[2.0])),
            ],
            &["y:0"],
        )
        .unwrap_err();
    assert_eq!(err.code, Code::InvalidArgument, "{err}");
}

#[test]
fn concurrent_runs_share_one_session() {
    let model: Arc<dyn Model> = Arc::new(load("saved_model_half_plus_two_cpu", "00000123"));
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let model = Arc::clone(&model);
            std::thread::spawn(move || {
                for i in 0..50 {
                    let rows = 1 + (t + i) % 7;
                    let xs: Vec<f32> = (0..rows).map(|r| (t * 1000 + i * 10 + r) as f32).collect();
                    let ys: Vec<f32> = xs.iter().map(|x| 0.5 * x + 2.0).collect();
                    let y = run_one(model.as_ref(), "x:0", floats(&[rows, 1], &xs), "y:0");
                    assert_eq!(y, floats(&[rows, 1], &ys));
                    let examples = xs.iter().map(|&x| example(x)).collect();
                    let input = Tensor::vector(TensorData::String(examples));
                    let scores = run_one(model.as_ref(), "tf_example:0", input, "y:0");
                    assert_eq!(scores, floats(&[rows, 1], &ys));
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().unwrap();
    }
}

#[test]
fn counter_model_keeps_state_between_runs() {
    let model = load("saved_model_counter", "00000123");
    let scalar = |v: f32| Tensor::new(vec![], TensorData::Float(vec![v])).unwrap();
    let fetch = |key: &str| {
        let name = &model.signatures()[key].outputs["output"].name;
        model.run(vec![], &[name.as_str()]).unwrap().remove(0)
    };
    assert_eq!(fetch("get_counter"), scalar(0.0));
    assert_eq!(fetch("incr_counter"), scalar(1.0));
    assert_eq!(fetch("incr_counter"), scalar(2.0));
    let by = model
        .run(
            vec![("delta:0", scalar(3.0))],
            &["incr_counter_by_op/AssignAdd:0"],
        )
        .unwrap()
        .remove(0);
    assert_eq!(by, scalar(5.0));
    assert_eq!(fetch("reset_counter"), scalar(0.0));
    assert_eq!(fetch("get_counter"), scalar(0.0));
}

#[test]
fn every_dtype_round_trips() {
    let model = dtypes_model();
    let cases = [
        (
            "float32",
            TensorData::Float(vec![
                1.5,
                -0.0,
                f32::MAX,
                f32::MIN_POSITIVE,
                f32::INFINITY,
                7.0,
            ]),
        ),
        (
            "float64",
            TensorData::Double(vec![1e300, -2.5, 0.1, f64::NEG_INFINITY, 3.0, 4.0]),
        ),
        (
            "int8",
            TensorData::Int8(vec![i8::MIN, -1, 0, 1, 2, i8::MAX]),
        ),
        (
            "int16",
            TensorData::Int16(vec![i16::MIN, -1, 0, 1, 2, i16::MAX]),
        ),
        (
            "int32",
            TensorData::Int32(vec![i32::MIN, -1, 0, 1, 2, i32::MAX]),
        ),
        (
            "int64",
            TensorData::Int64(vec![i64::MIN, -1, 0, 1, 2, i64::MAX]),
        ),
        ("uint8", TensorData::UInt8(vec![0, 1, 2, 3, 254, 255])),
        ("uint16", TensorData::UInt16(vec![0, 1, 2, 3, 4, u16::MAX])),
        ("uint32", TensorData::UInt32(vec![0, 1, 2, 3, 4, u32::MAX])),
        ("uint64", TensorData::UInt64(vec![0, 1, 2, 3, 4, u64::MAX])),
        (
            "float16",
            TensorData::Half(
                [0.0, 1.5, -2.25, 0.1, 65504.0, 6e-8]
                    .map(f16::from_f64)
                    .to_vec(),
            ),
        ),
        (
            "bfloat16",
            TensorData::BFloat16(
                [0.0, 1.5, -2.25, 0.1, 3e38, 1e-38]
                    .map(bf16::from_f64)
                    .to_vec(),
            ),
        ),
        (
            "complex64",
            TensorData::Complex64(vec![
                [0.0, 1.0],
                [1.5, -2.0],
                [f32::MAX, 0.1],
                [3.0, 4.0],
                [-1.0, -1.0],
                [0.0, 0.0],
            ]),
        ),
        (
            "complex128",
            TensorData::Complex128(vec![
                [0.0, 1.0],
                [1.5, -2.0],
                [f64::MAX, 0.1],
                [3.0, 4.0],
                [-1.0, -1.0],
                [0.0, 0.0],
            ]),
        ),
        (
            "bool",
            TensorData::Bool(vec![true, false, false, true, true, false]),
        ),
        (
            "string",
            TensorData::String(vec![
                Vec::new(),
                b"a".to_vec(),
                b"exactly twenty-two by".to_vec(),
                vec![b'x'; 100],
                b"\0binary\xff\xfe\0".to_vec(),
                vec![0xAB; 1 << 20],
            ]),
        ),
    ];
    for (name, data) in cases {
        let signature = &model.signatures()[&format!("identity_{name}")];
        assert_eq!(signature.inputs["x"].dtype, data.dtype());
        for shape in [vec![6], vec![2, 3], vec![1, 2, 1, 3]] {
            let tensor = Tensor::new(shape.clone(), data.clone()).unwrap();
            let out = run_one(
                &model,
                &format!("in_{name}:0"),
                tensor.clone(),
                &format!("out_{name}:0"),
            );
            assert_eq!(out, tensor, "{name} {shape:?}");
        }
        // Scalars and empty tensors of every dtype.
        let empty = TensorData::with_capacity(data.dtype(), 0).unwrap();
        let scalar = match &data {
            TensorData::String(v) => TensorData::String(vec![v[4].clone()]),
            other => {
                let size = other.dtype().element_size().unwrap();
                TensorData::from_bytes(other.dtype(), &other.as_bytes().unwrap()[..size]).unwrap()
            }
        };
        let scalar = Tensor::new(vec![], scalar).unwrap();
        let out = run_one(
            &model,
            &format!("in_{name}:0"),
            scalar.clone(),
            &format!("out_{name}:0"),
        );
        assert_eq!(out, scalar, "{name} scalar");
        for shape in [vec![0], vec![3, 0, 2]] {
            let tensor = Tensor::new(shape.clone(), empty.clone()).unwrap();
            let out = run_one(
                &model,
                &format!("in_{name}:0"),
                tensor.clone(),
                &format!("out_{name}:0"),
            );
            assert_eq!(out, tensor, "{name} {shape:?}");
        }
    }
}

#[test]
fn strings_are_read_by_tensorflow_byte_for_byte() {
    let model = dtypes_model();
    let strings = vec![
        Vec::new(),
        b"abc".to_vec(),
        vec![0u8; 23],
        vec![b'z'; 70_000],
        b"\0\0".to_vec(),
    ];
    let lengths: Vec<i32> = strings.iter().map(|s| s.len() as i32).collect();
    let out = run_one(
        &model,
        "len_in:0",
        Tensor::vector(TensorData::String(strings)),
        "len_out:0",
    );
    assert_eq!(out, Tensor::vector(TensorData::Int32(lengths)));
}

#[test]
fn half_and_complex_outputs_are_returned() {
    let model = dtypes_model();
    let out = run_one(&model, "half_in:0", floats(&[2], &[1.5, 0.1]), "half_out:0");
    let half = [f16::from_f32(1.5), f16::from_f32(0.1)];
    assert_eq!(out, Tensor::vector(TensorData::Half(half.to_vec())));
    let out = run_one(
        &model,
        "complex_in:0",
        floats(&[2], &[1.5, -2.0]),
        "complex_out:0",
    );
    let complex = vec![[1.5, -1.5], [-2.0, 2.0]];
    assert_eq!(out, Tensor::vector(TensorData::Complex64(complex)));
}

#[test]
fn shapes_tensorflow_would_abort_on_are_refused() {
    let model = dtypes_model();
    let deep = Tensor::new(vec![1; 255], TensorData::Float(vec![1.0])).unwrap();
    let err = model
        .run(vec![("in_float32:0", deep)], &["out_float32:0"])
        .unwrap_err();
    assert_eq!(err.code, Code::InvalidArgument, "{err}");
    // Zero elements, but a running product past int64: TensorShape would CHECK-fail.
    let wide = Tensor::new(vec![1 << 62, 3, 0], TensorData::Float(vec![])).unwrap();
    let err = model
        .run(vec![("in_float32:0", wide)], &["out_float32:0"])
        .unwrap_err();
    assert_eq!(err.code, Code::InvalidArgument, "{err}");
    // The deepest shape TF allows works.
    let deepest = Tensor::new(vec![1; 254], TensorData::Int8(vec![7])).unwrap();
    let out = run_one(&model, "in_int8:0", deepest.clone(), "out_int8:0");
    assert_eq!(out, deepest);
}

#[test]
fn models_load_and_drop_repeatedly() {
    for _ in 0..10 {
        let model = load("saved_model_half_plus_two_cpu", "00000123");
        let y = run_signature(&model, "serving_default", floats(&[1, 1], &[2.0]));
        assert_eq!(y, floats(&[1, 1], &[3.0]));
    }
}

#[test]
fn thread_counts_must_fit_configproto() {
    let err = TensorFlowBackend::new(BackendOptions {
        intra_op_parallelism: 1 << 40,
        ..BackendOptions::default()
    })
    .unwrap_err();
    assert_eq!(err.code, Code::InvalidArgument);
    assert!(err.message.contains("intra_op"), "{err}");
}

#[test]
fn backend_is_usable_as_a_trait_object() {
    let backend: Box<dyn oxserve_core::Backend> = Box::new(backend().clone());
    let dir = testdata("saved_model_half_plus_two_cpu").join("00000123");
    let model = backend.load(&dir, &["serve".to_string()]).unwrap();
    let y = run_signature(model.as_ref(), "serving_default", floats(&[1, 1], &[6.0]));
    assert_eq!(y, floats(&[1, 1], &[5.0]));
}
