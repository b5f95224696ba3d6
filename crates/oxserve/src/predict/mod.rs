//! `oxserve predict`: batch prediction over JSON-lines and TFRecord files, in process (no server),
//! with Cloud ML Engine's input and output conventions. See the README for the semantics.

mod batch;
mod decode;
mod example;
mod inputs;
mod pipeline;
mod shard;

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Args;
use oxserve_core::Servable;
use oxserve_tensorflow::BackendOptions;

use inputs::DataFormat;
use shard::{ShardFiles, WorkerSpec, STATE_DIR};

/// The environment variable a Kubernetes Indexed Job sets to the pod's index.
pub const JOB_COMPLETION_INDEX: &str = "JOB_COMPLETION_INDEX";

#[derive(Args, Debug)]
#[command(rename_all = "snake_case")]
pub struct PredictArgs {
    /// The SavedModel: a version directory (holding saved_model.pb), or a model base path whose
    /// highest numeric version is used.
    #[arg(long)]
    pub model_dir: PathBuf,
    /// Key of the SignatureDef to run.
    #[arg(long, default_value = "serving_default")]
    pub signature_def: String,
    /// Comma-separated tag set of the MetaGraphDef to load.
    #[arg(long, default_value = "serve")]
    pub tag_set: String,
    /// Input files: paths or glob patterns (quote them), repeatable. Files ending in .gz are
    /// decompressed.
    #[arg(long, required = true, num_args = 1..)]
    pub input: Vec<String>,
    /// json (one instance per line, as an element of REST's "instances"), tf-record or
    /// tf-record-gzip. Default: from each file's name (.jsonl/.json, .tfrecord/.tfrecords[.gz]).
    #[arg(long, value_enum)]
    pub data_format: Option<DataFormat>,
    /// Directory for prediction.results-* and prediction.errors_stats-* (created if needed).
    #[arg(long)]
    pub output_dir: PathBuf,
    /// Instances per model run.
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub batch_size: u64,
    /// Number of output shards (prediction.results-0000i-of-0000M). Default: the number of
    /// workers.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=99_999))]
    pub num_shards: Option<u64>,
    /// This worker's part of the job, as `i/N` (0-based): worker i writes the output shards j
    /// with j mod N == i. Default: from JOB_COMPLETION_INDEX (a Kubernetes Indexed Job) and
    /// --num_workers, else the whole job.
    #[arg(long)]
    pub shard: Option<String>,
    /// The number of workers N when the worker index comes from JOB_COMPLETION_INDEX
    /// (the Job's `completions`).
    #[arg(long, env = "OXSERVE_NUM_WORKERS",
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    pub num_workers: Option<usize>,
    /// The member of a JSON instance (or feature of a tf.Example record) that carries the
    /// instance key: copied to the output line, not fed to the model (unless the signature has an
    /// input of that name). Empty to disable.
    #[arg(long, default_value = "key")]
    pub key_field: String,
    /// Threads decoding JSON lines and records (default: the number of CPUs).
    #[arg(long)]
    pub num_decode_threads: Option<usize>,
    /// Model runs in flight at once.
    #[arg(long, default_value_t = 1)]
    pub num_inference_threads: usize,
    /// Predict every shard of this worker again, even those already complete, and accept an
    /// output directory left by a different job.
    #[arg(long)]
    pub overwrite: bool,
    /// At the end, print a JSON report to stdout: counts, instances/s (over the whole run, and
    /// after the first answer: the steady state, without the warm-up), the time spent in the
    /// runtime, CPU time per instance, and the runtime's own throughput (and CPU time) on one
    /// batch of --batch_size (measured afterwards by running that batch again).
    #[arg(long)]
    pub report: bool,
    /// TensorFlow's intra-op thread pool size (0: TensorFlow's default).
    #[arg(long, default_value_t = 0)]
    pub tensorflow_intra_op_parallelism: i64,
    /// TensorFlow's inter-op thread pool size (0: TensorFlow's default).
    #[arg(long, default_value_t = 0)]
    pub tensorflow_inter_op_parallelism: i64,
    /// Directory holding libtensorflow_cc.so.2 (default: found by scripts/setup).
    #[arg(long, env = "OXSERVE_TENSORFLOW_LIB_DIR")]
    pub tensorflow_library_dir: Option<PathBuf>,
}

/// The version directory to load: `dir` itself, or its highest numeric subdirectory.
fn version_dir(dir: &Path) -> anyhow::Result<PathBuf> {
    if dir.join("saved_model.pb").is_file() || dir.join("saved_model.pbtxt").is_file() {
        return Ok(dir.to_path_buf());
    }
    let versions = oxserve_core::manager::version_dirs(dir)
        .with_context(|| format!("--model_dir {}", dir.display()))?;
    match versions.into_iter().next_back() {
        Some((_, path)) => Ok(path),
        None => bail!(
            "--model_dir {}: no saved_model.pb and no numeric version directory in it",
            dir.display()
        ),
    }
}

/// What identifies the model a job runs, whatever its path: the CRC-32C of its graph
/// (`saved_model.pb` or `.pbtxt`) and of its variables' index (which holds a checksum of every
/// variable), so that a resumed job never mixes the answers of two models or two versions.
fn model_fingerprint(dir: &Path) -> anyhow::Result<serde_json::Value> {
    let mut crcs = serde_json::Map::new();
    for name in [
        "saved_model.pb",
        "saved_model.pbtxt",
        "variables/variables.index",
    ] {
        let path = dir.join(name);
        match std::fs::read(&path) {
            Ok(bytes) => {
                let crc = format!("{:08x}", crc32c::crc32c(&bytes));
                crcs.insert(name.to_string(), crc.into());
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        }
    }
    Ok(serde_json::Value::Object(crcs))
}

fn worker_spec(args: &PredictArgs) -> anyhow::Result<WorkerSpec> {
    if let Some(text) = &args.shard {
        let spec = WorkerSpec::parse(text)?;
        if let Some(n) = args.num_workers {
            if n != spec.count {
                bail!("--shard {text} and --num_workers {n} disagree on the number of workers");
            }
        }
        return Ok(spec);
    }
    match std::env::var(JOB_COMPLETION_INDEX) {
        Ok(index) => {
            let index: usize = index.trim().parse().with_context(|| {
                format!("{JOB_COMPLETION_INDEX}={index:?} is not a worker index")
            })?;
            let Some(count) = args.num_workers else {
                bail!("{JOB_COMPLETION_INDEX} is set ({index}): give the number of workers (the Job's completions) with --num_workers or OXSERVE_NUM_WORKERS");
            };
            WorkerSpec::new(index, count)
                .with_context(|| format!("{JOB_COMPLETION_INDEX}={index}, --num_workers {count}"))
        }
        Err(_) => match args.num_workers {
            Some(n) if n > 1 => bail!(
                "--num_workers {n} without a worker index: give --shard i/{n} or set {JOB_COMPLETION_INDEX}"
            ),
            _ => Ok(WorkerSpec::SINGLE),
        },
    }
}

pub fn predict(args: &PredictArgs) -> anyhow::Result<()> {
    let worker = worker_spec(args)?;
    let num_shards = args.num_shards.map_or(worker.count, |m| m as usize);
    if num_shards < worker.count {
        bail!(
            "--num_shards {num_shards} is less than the number of workers ({}): some workers would have nothing to do",
            worker.count
        );
    }
    let files = inputs::expand(&args.input, args.data_format)?;
    let dir = version_dir(&args.model_dir)?;
    let fingerprint = serde_json::json!({
        "model": model_fingerprint(&dir)?,
        "inputs": files.iter().map(|f| serde_json::json!([f.name.as_ref(), f.size])).collect::<Vec<_>>(),
        "data_format": args.data_format.map(|f| format!("{f:?}")),
        "num_shards": num_shards,
        "signature_def": args.signature_def,
        "tag_set": args.tag_set,
        "key_field": args.key_field,
    });
    std::fs::create_dir_all(args.output_dir.join(STATE_DIR))
        .with_context(|| format!("creating {}", args.output_dir.display()))?;
    for (files, marker) in shard::completed_shards(&args.output_dir)? {
        if marker.get("job") == Some(&fingerprint) {
            continue;
        }
        if !args.overwrite {
            bail!(
                "{} holds a completed shard {} of {} of a different job (another model, other inputs, sizes or options): use another --output_dir, or --overwrite to predict it again",
                args.output_dir.display(),
                files.shard,
                files.num_shards
            );
        }
        // Shards of this count are predicted again (by this worker or the others); shards of
        // another count would stay next to them, and a reader globbing the outputs would take
        // both jobs for one.
        if files.num_shards != num_shards {
            tracing::info!(
                "--overwrite: removing {} of a different job",
                files.results.display()
            );
            files.remove()?;
        }
    }
    let mut pending = Vec::new();
    // Held to the end of the run. Taken before a shard's completion is read: a run that starts
    // as another ends then sees the shards that one completed instead of predicting them again.
    let mut _locks = Vec::new();
    for shard in worker.shards(num_shards) {
        let files = ShardFiles::new(&args.output_dir, shard, num_shards);
        _locks.push(files.lock()?);
        match files.completed()? {
            Some(_) if !args.overwrite => {
                tracing::info!(
                    "shard {shard} of {num_shards} is already complete ({}): skipped",
                    files.results.display()
                );
            }
            _ => pending.push(files),
        }
    }
    if pending.is_empty() {
        tracing::info!(
            "nothing to do: every shard of worker {}/{} is complete in {}",
            worker.index,
            worker.count,
            args.output_dir.display()
        );
        if args.report {
            println!(
                "{}",
                serde_json::json!({"instances": 0, "predictions": 0, "errors": 0, "skipped_shards": worker.shards(num_shards).len()})
            );
        }
        return Ok(());
    }

    let load_start = Instant::now();
    let servable = Arc::new(crate::local_model::load(
        &dir,
        &args.tag_set,
        BackendOptions {
            library_dir: args.tensorflow_library_dir.clone(),
            intra_op_parallelism: args.tensorflow_intra_op_parallelism,
            inter_op_parallelism: args.tensorflow_inter_op_parallelism,
            ..BackendOptions::default()
        },
    )?);
    let signature = servable.signature(&args.signature_def)?.clone();
    tracing::info!(
        "loaded {} in {:.1}s; signature {}",
        dir.display(),
        load_start.elapsed().as_secs_f64(),
        args.signature_def
    );
    let decoder = decode::Decoder::new(&signature, &args.key_field)?;
    let single_output = match signature.outputs.len() {
        0 => bail!("signature {} has no outputs", args.signature_def),
        1 => signature.outputs.keys().next().cloned(),
        _ => None,
    };
    if !args.key_field.is_empty()
        && !signature.inputs.contains_key(&args.key_field)
        && signature.outputs.contains_key(&args.key_field)
    {
        bail!(
            "the signature has an output named {:?}, which keyed output lines would repeat: choose another --key_field",
            args.key_field
        );
    }
    if files.iter().any(|f| f.kind == inputs::Kind::TfRecord) {
        tracing::info!("{}", decoder.record_mode_description());
    }
    let decode_threads = args.num_decode_threads.unwrap_or_else(|| {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(2)
    });
    tracing::info!(
        "worker {}/{}: predicting shard(s) {:?} of {num_shards} from {} file(s), batch size {}",
        worker.index,
        worker.count,
        pending.iter().map(|s| s.shard).collect::<Vec<_>>(),
        files.len(),
        args.batch_size
    );
    let outcome = pipeline::run(pipeline::Job {
        servable: servable.clone(),
        signature_name: args.signature_def.clone(),
        decoder: Arc::new(decoder),
        files: Arc::new(files),
        shards: pending,
        num_shards,
        batch_size: args.batch_size as usize,
        decode_threads,
        inference_threads: args.num_inference_threads,
        key_field: args.key_field.clone(),
        single_output,
        fingerprint,
        keep_sample: args.report,
    })?;
    let cpu_end = pipeline::process_cpu_seconds();

    let stats = &outcome.stats;
    let instances = stats.instances.load(Ordering::Relaxed);
    let predictions = stats.predictions.load(Ordering::Relaxed);
    let errors = stats.errors.load(Ordering::Relaxed);
    let secs = outcome.elapsed.as_secs_f64().max(1e-9);
    let busy = Duration::from_nanos(stats.busy_nanos.load(Ordering::Relaxed)).as_secs_f64();
    let retried = stats.retried_batches.load(Ordering::Relaxed);
    // After the first answer: the speed once the pipeline is full and the graph optimised.
    let warmup =
        Duration::from_nanos(stats.first_answer_nanos.load(Ordering::Relaxed)).as_secs_f64();
    let steady_instances =
        instances.saturating_sub(stats.first_answer_instances.load(Ordering::Relaxed));
    let steady = (warmup > 0.0 && steady_instances > 0 && secs > warmup)
        .then(|| steady_instances as f64 / (secs - warmup));
    // CPU time per instance (all threads), over the same steady part.
    let cpu_first = stats.first_answer_cpu_micros.load(Ordering::Relaxed) as f64 / 1e6;
    let steady_cpu_ms = cpu_end
        .filter(|_| cpu_first > 0.0 && steady_instances > 0)
        .map(|end| 1e3 * (end - cpu_first) / steady_instances as f64);
    tracing::info!(
        "done: {instances} instances ({predictions} predictions, {errors} errors) in {secs:.2}s: {:.1} instances/s ({}); the runtime was busy {:.0}% of the time",
        instances as f64 / secs,
        steady.map_or_else(
            || "no steady state".to_string(),
            |v| format!("{v:.1}/s after the first {warmup:.2}s")
        ),
        100.0 * busy / secs
    );
    if retried > 0 {
        tracing::warn!(
            "{retried} batch(es) failed as a whole and were run again one instance at a time"
        );
    }
    if args.report {
        let raw = outcome
            .sample
            .map(|sample| raw_throughput(&servable, &args.signature_def, sample))
            .transpose()?;
        let mut report = serde_json::json!({
            "instances": instances,
            "predictions": predictions,
            "errors": errors,
            "batch_size": args.batch_size,
            "batches": stats.batches.load(Ordering::Relaxed),
            "retried_batches": retried,
            "seconds": secs,
            "instances_per_second": instances as f64 / secs,
            "warmup_seconds": warmup,
            "steady_instances_per_second": steady,
            "runtime_busy_seconds": busy,
            "runtime_busy_fraction": busy / secs,
            "steady_cpu_ms_per_instance": steady_cpu_ms,
        });
        if let Some(raw) = raw {
            report["raw_runtime_instances_per_second"] = raw.per_second.into();
            report["pipeline_vs_raw"] = (instances as f64 / secs / raw.per_second).into();
            report["steady_pipeline_vs_raw"] = steady.map(|v| v / raw.per_second).into();
            report["raw_runtime_cpu_ms_per_instance"] = raw.cpu_ms.into();
        }
        println!("{report}");
    }
    Ok(())
}

/// The runtime's own speed on one batch.
struct Raw {
    per_second: f64,
    /// CPU time (all threads) per instance, when known.
    cpu_ms: Option<f64>,
}

/// The runtime's own throughput on one batch: the batch run again and again (at least 5 times
/// and 2 seconds), nothing else.
fn raw_throughput(
    servable: &Servable,
    signature: &str,
    sample: oxserve_core::NamedTensors,
) -> anyhow::Result<Raw> {
    let count = sample
        .first()
        .and_then(|(_, t)| t.shape().first().copied())
        .unwrap_or(1);
    servable.predict(signature, sample.clone(), &[])?;
    let cpu_start = pipeline::process_cpu_seconds();
    let start = Instant::now();
    let mut runs = 0u64;
    let mut busy = Duration::ZERO;
    while runs < 5 || start.elapsed() < Duration::from_secs(2) {
        // Only the run is timed, not the copy of the inputs it consumes.
        let inputs = sample.clone();
        let run_start = Instant::now();
        servable.predict(signature, inputs, &[])?;
        busy += run_start.elapsed();
        runs += 1;
    }
    let instances = runs as f64 * count as f64;
    Ok(Raw {
        per_second: instances / busy.as_secs_f64().max(1e-9),
        cpu_ms: cpu_start
            .zip(pipeline::process_cpu_seconds())
            .map(|(a, b)| 1e3 * (b - a) / instances),
    })
}
