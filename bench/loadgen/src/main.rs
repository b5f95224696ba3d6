//! The benchmark's load generator. Every target is driven the same way: a closed loop of
//! `--concurrency` workers, each sending one request and waiting for its answer before sending
//! the next, for `--duration-secs` seconds or `--max-requests` requests (whichever comes first),
//! after `--warmup-secs` of unmeasured traffic. Only loopback addresses are accepted.
//!
//! ```text
//! loadgen http --url http://127.0.0.1:8501/v1/models/m:predict --body request.json --concurrency 16
//! loadgen grpc --addr 127.0.0.1:8500 --model m --input image=planet.npy --concurrency 16
//! loadgen raw  --model-dir demo_models/planet/1 --input image=planet.npy --concurrency 1
//! loadgen paired --model-dir m/1 --input image=planet.npy --url http://... --body request.json \
//!     --addr 127.0.0.1:8500 --model m
//! ```
//!
//! Prints one JSON object: requests, errors, elapsed seconds, throughput (requests/s) and latency
//! percentiles (ms). `paired` prints one such object per target, and every cycle's latencies.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::{Args, Parser, Subcommand};

#[derive(Parser)]
#[command(about = "Closed-loop load generator for oxserve's benchmark (loopback only)")]
struct Cli {
    #[command(subcommand)]
    target: Target,
}

#[derive(Subcommand)]
enum Target {
    /// POST one JSON body again and again (TF Serving REST, KServe v1, FastAPI).
    Http(HttpArgs),
    /// TF Serving gRPC Predict with the input as `tensor_content`.
    Grpc(GrpcArgs),
    /// The SavedModel run in-process through oxserve's TensorFlow backend: the limit.
    Raw(RawArgs),
    /// Concurrency 1 on several targets at once, one request to each in turn (see `paired`).
    Paired(PairedArgs),
}

#[derive(Args, Clone)]
struct Load {
    /// Requests in flight at any time (closed loop).
    #[arg(long, default_value_t = 1)]
    concurrency: usize,
    /// Measured time.
    #[arg(long, default_value_t = 10.0)]
    duration_secs: f64,
    /// Stop after this many measured requests.
    #[arg(long, default_value_t = 1_000_000)]
    max_requests: u64,
    /// Unmeasured traffic first.
    #[arg(long, default_value_t = 1.0)]
    warmup_secs: f64,
    /// Added to the JSON output as "label".
    #[arg(long, default_value = "")]
    label: String,
}

#[derive(Args)]
struct HttpArgs {
    #[arg(long)]
    url: String,
    /// The request body (sent as is, `Content-Type: application/json`).
    #[arg(long)]
    body: PathBuf,
    #[command(flatten)]
    load: Load,
}

#[derive(Args)]
struct GrpcArgs {
    /// host:port (loopback).
    #[arg(long)]
    addr: String,
    #[arg(long)]
    model: String,
    #[arg(long, default_value = "")]
    signature: String,
    /// alias=file.npy (float32), repeatable.
    #[arg(long, required = true)]
    input: Vec<String>,
    /// HTTP/2 connections shared by the workers (default: one per worker, as the HTTP/1.1
    /// targets get).
    #[arg(long)]
    connections: Option<usize>,
    #[command(flatten)]
    load: Load,
}

#[derive(Args)]
struct RawArgs {
    /// A SavedModel version directory.
    #[arg(long)]
    model_dir: PathBuf,
    #[arg(long, default_value = "serving_default")]
    signature: String,
    /// alias=file.npy (float32), repeatable.
    #[arg(long, required = true)]
    input: Vec<String>,
    /// Directory of libtensorflow_cc.so.2 (default: as oxserve finds it).
    #[arg(long, env = "OXSERVE_TENSORFLOW_LIB_DIR")]
    tensorflow_library_dir: Option<PathBuf>,
    #[command(flatten)]
    load: Load,
}

#[derive(Args)]
struct PairedArgs {
    /// The raw runtime: a SavedModel version directory (fed `--input`).
    #[arg(long)]
    model_dir: Option<PathBuf>,
    /// Directory of libtensorflow_cc.so.2 (default: as oxserve finds it).
    #[arg(long, env = "OXSERVE_TENSORFLOW_LIB_DIR")]
    tensorflow_library_dir: Option<PathBuf>,
    /// REST: the predict URL (POSTed `--body`).
    #[arg(long, requires = "body")]
    url: Option<String>,
    #[arg(long)]
    body: Option<PathBuf>,
    /// gRPC: host:port of PredictionService (sent `--input` as `tensor_content`).
    #[arg(long, requires = "model")]
    addr: Option<String>,
    /// The model name for gRPC.
    #[arg(long)]
    model: Option<String>,
    /// The signature, for the raw runtime and gRPC.
    #[arg(long, default_value = "serving_default")]
    signature: String,
    /// alias=file.npy (float32), repeatable: the input of the raw runtime and of gRPC.
    #[arg(long)]
    input: Vec<String>,
    /// Measured time.
    #[arg(long, default_value_t = 10.0)]
    duration_secs: f64,
    /// Unmeasured cycles first.
    #[arg(long, default_value_t = 1.0)]
    warmup_secs: f64,
    /// Added to the JSON output as "label".
    #[arg(long, default_value = "")]
    label: String,
}

/// Latencies of measured requests, in microseconds, plus error counts.
#[derive(Default)]
struct Stats {
    latencies_us: Vec<u32>,
    errors: u64,
    first_error: Option<String>,
}

impl Stats {
    fn merge(&mut self, other: Stats) {
        self.latencies_us.extend(other.latencies_us);
        self.errors += other.errors;
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
    }

    fn record(&mut self, took: Duration, outcome: Result<(), String>) {
        match outcome {
            Ok(()) => self.latencies_us.push(micros(took)),
            Err(message) => {
                self.errors += 1;
                if self.first_error.is_none() {
                    self.first_error = Some(message);
                }
            }
        }
    }
}

fn micros(took: Duration) -> u32 {
    took.as_micros().min(u32::MAX as u128) as u32
}

/// When the measured phase runs and when it ends.
struct Clock {
    measure_from: Instant,
    stop_at: Instant,
    max_requests: u64,
    measured: AtomicU64,
    done: AtomicBool,
}

impl Clock {
    fn new(load: &Load) -> Clock {
        let now = Instant::now();
        let measure_from = now + Duration::from_secs_f64(load.warmup_secs.max(0.0));
        Clock {
            measure_from,
            stop_at: measure_from + Duration::from_secs_f64(load.duration_secs.max(0.01)),
            max_requests: load.max_requests.max(1),
            measured: AtomicU64::new(0),
            done: AtomicBool::new(false),
        }
    }

    /// Whether a request starting now is measured; `None` when the run is over.
    fn next(&self) -> Option<bool> {
        let now = Instant::now();
        if self.done.load(Ordering::Relaxed) || now >= self.stop_at {
            self.done.store(true, Ordering::Relaxed);
            return None;
        }
        if now < self.measure_from {
            return Some(false);
        }
        if self.measured.fetch_add(1, Ordering::Relaxed) >= self.max_requests {
            self.done.store(true, Ordering::Relaxed);
            return None;
        }
        Some(true)
    }
}

fn report(load: &Load, target: &str, clock: &Clock, stats: Stats, finished: Instant) {
    let elapsed = finished
        .min(clock.stop_at)
        .max(clock.measure_from)
        .duration_since(clock.measure_from)
        .as_secs_f64();
    println!(
        "{}",
        summary(&load.label, target, load.concurrency, stats, elapsed)
    );
}

/// Requests, errors, throughput over `elapsed` seconds and latency percentiles of `stats`.
fn summary(
    label: &str,
    target: &str,
    concurrency: usize,
    stats: Stats,
    elapsed: f64,
) -> serde_json::Value {
    let mut latencies = stats.latencies_us;
    latencies.sort_unstable();
    let elapsed = elapsed.max(1e-9);
    let pct = |p: f64| -> f64 {
        if latencies.is_empty() {
            return f64::NAN;
        }
        let rank = ((p / 100.0) * latencies.len() as f64).ceil() as usize;
        latencies[rank.clamp(1, latencies.len()) - 1] as f64 / 1000.0
    };
    let mean = if latencies.is_empty() {
        f64::NAN
    } else {
        latencies.iter().map(|&v| v as f64).sum::<f64>() / latencies.len() as f64 / 1000.0
    };
    let num = |v: f64| {
        if v.is_finite() {
            serde_json::json!((v * 1000.0).round() / 1000.0)
        } else {
            serde_json::Value::Null
        }
    };
    serde_json::json!({
        "label": label,
        "target": target,
        "concurrency": concurrency,
        "requests": latencies.len(),
        "errors": stats.errors,
        "first_error": stats.first_error,
        "elapsed_s": num(elapsed),
        "throughput_rps": num(latencies.len() as f64 / elapsed),
        "mean_ms": num(mean),
        "p50_ms": num(pct(50.0)),
        "p90_ms": num(pct(90.0)),
        "p99_ms": num(pct(99.0)),
        "max_ms": num(pct(100.0)),
    })
}

/// Refuses anything but loopback: the benchmark never sends traffic elsewhere.
fn check_loopback(host: &str) -> anyhow::Result<()> {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let ok = host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    if !ok {
        bail!("{host} is not a loopback address: the load generator only targets this machine");
    }
    Ok(())
}

fn read_f32_npy(path: &Path) -> anyhow::Result<(Vec<usize>, Vec<f32>)> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let npy =
        npyz::NpyFile::new(&bytes[..]).with_context(|| format!("parsing {}", path.display()))?;
    let shape = npy.shape().iter().map(|&d| d as usize).collect();
    let data: Vec<f32> = npy
        .into_vec()
        .with_context(|| format!("{}: expected a float32 array", path.display()))?;
    Ok((shape, data))
}

/// An input of the request: alias, shape and float32 values.
type Input = (String, Vec<usize>, Vec<f32>);

fn parse_inputs(specs: &[String]) -> anyhow::Result<Vec<Input>> {
    specs
        .iter()
        .map(|spec| {
            let (alias, path) = spec
                .split_once('=')
                .with_context(|| format!("--input {spec}: expected alias=file.npy"))?;
            let (shape, data) = read_f32_npy(Path::new(path))?;
            Ok((alias.to_string(), shape, data))
        })
        .collect()
}

/// The allocator oxserve installs: the raw runtime gets TensorFlow-aligned input buffers too.
#[global_allocator]
static ALLOC: oxserve_tensorflow::TensorAligned = oxserve_tensorflow::TensorAligned;

fn main() -> anyhow::Result<()> {
    match Cli::parse().target {
        Target::Http(args) => http(args),
        Target::Grpc(args) => grpc(args),
        Target::Raw(args) => raw(args),
        Target::Paired(args) => paired(args),
    }
}

/// A single-threaded runtime: the load generator takes one core at most, leaving the rest to
/// the server under test.
fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

fn http(args: HttpArgs) -> anyhow::Result<()> {
    let url = reqwest::Url::parse(&args.url).context("--url")?;
    check_loopback(url.host_str().unwrap_or(""))?;
    let body = bytes::Bytes::from(std::fs::read(&args.body).context("--body")?);
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(args.load.concurrency)
        .timeout(Duration::from_secs(120))
        .build()?;
    let clock = Arc::new(Clock::new(&args.load));
    let call = move || post(&client, &url, &body);
    let workers = vec![call; args.load.concurrency.max(1)];
    let stats = runtime()?.block_on(closed_loop(&clock, workers));
    report(&args.load, "http", &clock, stats, Instant::now());
    Ok(())
}

/// One POST of `body`; the answer is read whole.
fn post(
    client: &reqwest::Client,
    url: &reqwest::Url,
    body: &bytes::Bytes,
) -> impl std::future::Future<Output = Result<(), String>> + Send + 'static {
    let request = client
        .post(url.clone())
        .header("content-type", "application/json")
        .body(body.clone());
    async move {
        let resp = request.send().await.map_err(|e| e.to_string())?;
        let status = resp.status();
        let text = resp.bytes().await.map_err(|e| e.to_string())?;
        if !status.is_success() {
            return Err(format!(
                "HTTP {status}: {}",
                String::from_utf8_lossy(&text[..text.len().min(300)])
            ));
        }
        Ok(())
    }
}

/// One closed-loop worker per element of `calls`, each making its calls one after another until
/// the clock stops; the measured outcomes of all of them.
async fn closed_loop<F, Fut>(clock: &Arc<Clock>, calls: Vec<F>) -> Stats
where
    F: FnMut() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Result<(), String>> + Send,
{
    let tasks: Vec<_> = calls
        .into_iter()
        .map(|mut call| {
            let clock = clock.clone();
            tokio::spawn(async move {
                let mut stats = Stats::default();
                while let Some(measured) = clock.next() {
                    let started = Instant::now();
                    let outcome = call().await;
                    if measured {
                        stats.record(started.elapsed(), outcome);
                    }
                }
                stats
            })
        })
        .collect();
    let mut all = Stats::default();
    for task in tasks {
        all.merge(task.await.unwrap_or_default());
    }
    all
}

/// The gRPC client's HTTP/2 receive windows (see `grpc`).
const CLIENT_STREAM_WINDOW: u32 = 4 << 20;
const CLIENT_CONNECTION_WINDOW: u32 = 16 << 20;

fn grpc(args: GrpcArgs) -> anyhow::Result<()> {
    let request = grpc_request(&args.addr, &args.model, &args.signature, &args.input)?;
    let clock = Arc::new(Clock::new(&args.load));
    let rt = runtime()?;
    let stats = rt.block_on(async {
        let workers = args.load.concurrency.max(1);
        let mut channels = Vec::new();
        for _ in 0..args.connections.unwrap_or(workers).clamp(1, workers) {
            channels.push(grpc_channel(&args.addr).await?);
        }
        let calls = (0..workers)
            .map(|worker| {
                let client = grpc_client(channels[worker % channels.len()].clone());
                let request = request.clone();
                move || predict(&client, &request)
            })
            .collect();
        anyhow::Ok(closed_loop(&clock, calls).await)
    })?;
    report(&args.load, "grpc", &clock, stats, Instant::now());
    Ok(())
}

type PredictionClient =
    oxserve_proto::tensorflow::serving::prediction_service_client::PredictionServiceClient<
        tonic::transport::Channel,
    >;

/// A PredictRequest for `model` with the `--input` arrays as `tensor_content`, to a loopback
/// `addr`.
fn grpc_request(
    addr: &str,
    model: &str,
    signature: &str,
    specs: &[String],
) -> anyhow::Result<oxserve_proto::tensorflow::serving::PredictRequest> {
    use oxserve_proto::tensorflow::serving::{ModelSpec, PredictRequest};
    use oxserve_server::grpc::tensor::tensor_to_proto;

    let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h);
    check_loopback(host)?;
    let mut inputs = std::collections::HashMap::new();
    for (alias, shape, data) in parse_inputs(specs)? {
        let tensor = oxserve_core::Tensor::new(shape, oxserve_core::TensorData::Float(data))?;
        inputs.insert(alias, tensor_to_proto(tensor, true));
    }
    Ok(PredictRequest {
        model_spec: Some(ModelSpec {
            name: model.to_string(),
            signature_name: signature.to_string(),
            version_choice: None,
        }),
        inputs,
        ..PredictRequest::default()
    })
}

async fn grpc_channel(addr: &str) -> anyhow::Result<tonic::transport::Channel> {
    // gRPC's C core (what TF Serving's Python and C++ clients run on) grows its HTTP/2 windows
    // from bandwidth-delay-product estimates and advertises frames as large as its window; h2's
    // defaults (16 KiB frames, 2 MiB stream window) would have every large response arrive in
    // 16 KiB frames. Start where C-core ends up instead: large fixed windows and frames.
    // (Requests are framed by the server's settings.)
    tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?
        .initial_stream_window_size(CLIENT_STREAM_WINDOW)
        .initial_connection_window_size(CLIENT_CONNECTION_WINDOW)
        .max_frame_size(CLIENT_STREAM_WINDOW)
        .connect()
        .await
        .with_context(|| format!("connecting to {addr}"))
}

fn grpc_client(channel: tonic::transport::Channel) -> PredictionClient {
    PredictionClient::new(channel)
        .max_decoding_message_size(usize::MAX)
        .max_encoding_message_size(usize::MAX)
}

/// One Predict call. A client is a handle on its channel: one per call costs a reference count.
fn predict(
    client: &PredictionClient,
    request: &oxserve_proto::tensorflow::serving::PredictRequest,
) -> impl std::future::Future<Output = Result<(), String>> + Send + 'static {
    let (mut client, request) = (client.clone(), request.clone());
    async move {
        client
            .predict(request)
            .await
            .map(|_| ())
            .map_err(|status| format!("{:?}: {}", status.code(), status.message()))
    }
}

/// A SavedModel loaded in-process, with its feeds built from `--input` arrays.
struct RawModel {
    model: Box<dyn oxserve_core::Model>,
    feeds: Vec<(String, oxserve_core::Tensor)>,
    fetches: Vec<String>,
}

impl RawModel {
    fn load(
        model_dir: &Path,
        library_dir: Option<PathBuf>,
        signature: &str,
        specs: &[String],
    ) -> anyhow::Result<RawModel> {
        use oxserve_core::{Model, Tensor, TensorData};
        use oxserve_tensorflow::{BackendOptions, TensorFlowBackend};

        let backend = TensorFlowBackend::new(BackendOptions {
            library_dir,
            ..BackendOptions::default()
        })
        .map_err(anyhow::Error::msg)?;
        let model = backend
            .load_model(model_dir, &["serve".to_string()])
            .map_err(anyhow::Error::msg)?;
        let signature = model
            .signatures()
            .get(signature)
            .with_context(|| format!("no signature {signature}"))?
            .clone();
        let mut feeds = Vec::new();
        for (alias, shape, data) in parse_inputs(specs)? {
            let spec = signature
                .inputs
                .get(&alias)
                .with_context(|| format!("signature has no input {alias}"))?;
            feeds.push((
                spec.name.clone(),
                Tensor::new(shape, TensorData::Float(data)).map_err(anyhow::Error::msg)?,
            ));
        }
        let fetches = signature.outputs.values().map(|s| s.name.clone()).collect();
        Ok(RawModel {
            model: Box::new(model),
            feeds,
            fetches,
        })
    }

    fn run(&self) -> Result<(), String> {
        let fetches: Vec<&str> = self.fetches.iter().map(String::as_str).collect();
        // The input is copied per run, as a server decoding a request would build it.
        let run = self
            .feeds
            .iter()
            .map(|(name, tensor)| (name.as_str(), tensor.clone()))
            .collect();
        self.model
            .run(run, &fetches)
            .map(|_| ())
            .map_err(|e| e.to_string())
    }
}

fn raw(args: RawArgs) -> anyhow::Result<()> {
    let model = RawModel::load(
        &args.model_dir,
        args.tensorflow_library_dir.clone(),
        &args.signature,
        &args.input,
    )?;
    let clock = Arc::new(Clock::new(&args.load));
    let all = Arc::new(Mutex::new(Stats::default()));
    std::thread::scope(|scope| {
        for _ in 0..args.load.concurrency.max(1) {
            let (model, clock, all) = (&model, &clock, &all);
            scope.spawn(move || {
                let mut stats = Stats::default();
                while let Some(measured) = clock.next() {
                    let started = Instant::now();
                    let outcome = model.run();
                    if measured {
                        stats.record(started.elapsed(), outcome);
                    }
                }
                all.lock().unwrap_or_else(|p| p.into_inner()).merge(stats);
            });
        }
    });
    let stats = std::mem::take(&mut *all.lock().unwrap_or_else(|p| p.into_inner()));
    report(&args.load, "raw", &clock, stats, Instant::now());
    Ok(())
}

/// Concurrency 1 on every target given, one request to each in turn, the order rotating every
/// cycle (raw, REST, gRPC; REST, gRPC, raw; ...). This VM's speed drifts by ±15% over seconds to
/// minutes: targets measured one after another, in runs of seconds each, meet different moments
/// of it; requests interleaved one by one meet the same ones. A target's throughput is its
/// requests over the time they took: what a closed loop at concurrency 1 on it alone does.
/// Prints each target's summary and the latencies (µs) of every measured cycle whose requests
/// all succeeded, in target order, for per-cycle ratios.
fn paired(args: PairedArgs) -> anyhow::Result<()> {
    let rt = runtime()?;
    let raw = args
        .model_dir
        .as_deref()
        .map(|dir| {
            RawModel::load(
                dir,
                args.tensorflow_library_dir.clone(),
                &args.signature,
                &args.input,
            )
        })
        .transpose()?;
    let rest = match (&args.url, &args.body) {
        (Some(url), Some(body)) => {
            let url = reqwest::Url::parse(url).context("--url")?;
            check_loopback(url.host_str().unwrap_or(""))?;
            let body = bytes::Bytes::from(std::fs::read(body).context("--body")?);
            let client = reqwest::Client::builder()
                .timeout(Duration::from_secs(120))
                .build()?;
            Some((client, url, body))
        }
        _ => None,
    };
    let grpc = match (&args.addr, &args.model) {
        (Some(addr), Some(model)) => {
            let request = grpc_request(addr, model, &args.signature, &args.input)?;
            let client = grpc_client(rt.block_on(grpc_channel(addr))?);
            Some((client, request))
        }
        _ => None,
    };
    type Call<'a> = Box<dyn FnMut() -> Result<(), String> + 'a>;
    let mut targets: Vec<(&str, Call)> = Vec::new();
    if let Some(raw) = &raw {
        targets.push(("raw", Box::new(|| raw.run())));
    }
    if let Some((client, url, body)) = &rest {
        targets.push(("REST", Box::new(|| rt.block_on(post(client, url, body)))));
    }
    if let Some((client, request)) = &grpc {
        targets.push(("gRPC", Box::new(|| rt.block_on(predict(client, request)))));
    }
    if targets.len() < 2 {
        bail!("paired needs two targets or more (--model-dir, --url/--body, --addr/--model)");
    }
    let count = targets.len();
    let measure_from = Instant::now() + Duration::from_secs_f64(args.warmup_secs.max(0.0));
    let stop_at = measure_from + Duration::from_secs_f64(args.duration_secs.max(0.01));
    let mut stats: Vec<Stats> = (0..count).map(|_| Stats::default()).collect();
    let mut cycles: Vec<Vec<u32>> = Vec::new();
    for cycle in 0.. {
        let now = Instant::now();
        if now >= stop_at {
            break;
        }
        let measured = now >= measure_from;
        let mut latencies = vec![0u32; count];
        let mut all_ok = true;
        for k in 0..count {
            let i = (cycle + k) % count;
            let started = Instant::now();
            let outcome = (targets[i].1)();
            let took = started.elapsed();
            all_ok &= outcome.is_ok();
            latencies[i] = micros(took);
            if measured {
                stats[i].record(took, outcome);
            }
        }
        if measured && all_ok {
            cycles.push(latencies);
        }
    }
    let summaries: serde_json::Map<String, serde_json::Value> = targets
        .iter()
        .zip(stats)
        .map(|((name, _), stats)| {
            let busy = stats.latencies_us.iter().map(|&us| us as f64).sum::<f64>() / 1e6;
            (name.to_string(), summary(&args.label, name, 1, stats, busy))
        })
        .collect();
    let names: Vec<&str> = targets.iter().map(|(name, _)| *name).collect();
    println!(
        "{}",
        serde_json::json!({
            "label": args.label,
            "target": "paired",
            "targets": summaries,
            "order": names,
            "cycles_us": cycles,
        })
    );
    Ok(())
}
