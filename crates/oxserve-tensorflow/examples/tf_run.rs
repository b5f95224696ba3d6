//! Loads a SavedModel with the TensorFlow backend, prints its signatures, and runs one.
//! Prints timings for information only; it asserts nothing.
//!
//! ```text
//! cargo run -p oxserve-tensorflow --example tf_run -- <saved_model_version_dir> [signature]
//! ```
//!
//! With a signature (default `serving_default`) whose inputs are all float, each input is fed a
//! batch of 3 rows holding 1, 2, 5, ... (unknown dims become 3, then 1), and the outputs are
//! printed.

use std::path::PathBuf;
use std::time::Instant;

use oxserve_core::{DType, Model, Tensor, TensorData};
use oxserve_tensorflow::{BackendOptions, TensorFlowBackend};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let Some(dir) = args.next().map(PathBuf::from) else {
        eprintln!("usage: tf_run <saved_model_version_dir> [signature]");
        std::process::exit(2);
    };
    let signature_key = args.next().unwrap_or_else(|| "serving_default".to_string());
    // Before any thread exists: TensorFlow reads its environment once.
    oxserve_tensorflow::set_tensorflow_env_defaults();

    let started = Instant::now();
    let backend = TensorFlowBackend::new(BackendOptions::default())?;
    println!(
        "TensorFlow {} from {} loaded in {:.2?} (tensor alignment {} bytes)",
        backend.tensorflow_version(),
        backend.library_dir().display(),
        started.elapsed(),
        backend.tensor_alignment()
    );

    let started = Instant::now();
    let model = backend.load_model(&dir, &["serve".to_string()])?;
    println!("{} loaded in {:.2?}", dir.display(), started.elapsed());
    for (key, signature) in model.signatures() {
        println!("signature {key} ({})", signature.method_name);
        for (direction, specs) in [("in ", &signature.inputs), ("out", &signature.outputs)] {
            for (alias, spec) in specs {
                println!(
                    "  {direction} {alias}: {} {} shape {:?}",
                    spec.name,
                    spec.dtype.proto_name(),
                    spec.shape
                );
            }
        }
    }

    let Some(signature) = model.signatures().get(&signature_key) else {
        println!("no signature {signature_key}: nothing run");
        return Ok(());
    };
    let mut feeds = Vec::new();
    for (alias, spec) in &signature.inputs {
        if spec.dtype != DType::Float {
            println!(
                "input {alias} is {}, not float: nothing run",
                spec.dtype.name()
            );
            return Ok(());
        }
        let shape: Vec<usize> = match &spec.shape {
            Some(dims) => dims
                .iter()
                .enumerate()
                .map(|(i, &d)| {
                    if d >= 0 {
                        d as usize
                    } else if i == 0 {
                        3
                    } else {
                        1
                    }
                })
                .collect(),
            None => vec![3],
        };
        let count = shape.iter().product::<usize>();
        let values = [1.0f32, 2.0, 5.0]
            .iter()
            .copied()
            .cycle()
            .take(count)
            .collect();
        feeds.push((
            spec.name.as_str(),
            Tensor::new(shape, TensorData::Float(values))?,
        ));
    }
    let fetches: Vec<&str> = signature
        .outputs
        .values()
        .map(|s| s.name.as_str())
        .collect();
    let started = Instant::now();
    let outputs = model.run(feeds, &fetches)?;
    println!("ran {signature_key} in {:.2?}", started.elapsed());
    for (alias, tensor) in signature.outputs.keys().zip(outputs) {
        println!("  {alias}: shape {:?} {:?}", tensor.shape(), tensor.data());
    }
    Ok(())
}
