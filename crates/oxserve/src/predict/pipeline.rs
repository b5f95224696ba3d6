//! The batch-prediction pipeline: reading, decoding, batching, inference and writing run on their
//! own threads, connected by bounded channels, so that the runtime always has the next batch
//! ready while memory stays bounded.
//!
//! ```text
//! reader ──chunks──▶ decoders (N threads) ──decoded chunks──▶ batcher ──batches──▶ inference
//!                                                                                     │
//!                                          shard files ◀── writer ◀──answers──────────┘
//! ```
//!
//! Chunks and batches carry sequence numbers; the batcher and the writer put them back in order,
//! so the output of a shard is in input order whatever the number of threads.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufWriter, IsTerminal, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use oxserve_core::{NamedTensors, Servable};
use oxserve_server::rest::json::{write_predict_response, Format};

use super::batch::{json_string, output_line, split_predictions, Accumulator, Ready};
use super::decode::{Decoded, Decoder};
use super::inputs::{Bytes, InputFile, Item, ItemReader, Kind, Pools};
use super::shard::{shard_of, ShardFiles};

/// Where an item came from.
#[derive(Clone, Copy, Debug)]
struct Loc {
    file: usize,
    index: u64,
}

enum Raw {
    Data(Bytes),
    Broken(String),
}

struct Chunk {
    id: u64,
    shard: usize,
    items: Vec<(Loc, Raw)>,
    end_of_shard: bool,
    /// Input bytes read when the chunk was complete (for progress).
    progress: u64,
}

struct DecodedChunk {
    id: u64,
    shard: usize,
    items: Vec<(Loc, Decoded)>,
    end_of_shard: bool,
    progress: u64,
}

enum Entry {
    /// The next row of the batch's answer.
    Row { loc: Loc, key: Option<String> },
    Error {
        loc: Loc,
        message: String,
        key: Option<String>,
    },
}

struct Batch {
    id: u64,
    shard: usize,
    entries: Vec<Entry>,
    ready: Option<Ready>,
    count: usize,
    end_of_shard: bool,
    progress: u64,
}

enum Answer {
    None,
    Batch(Result<NamedTensors, String>),
    /// The batch failed; each instance was run alone.
    Each(Vec<Result<NamedTensors, String>>),
}

struct Answered {
    batch: Batch,
    answer: Answer,
}

/// What the pipeline needs to know.
pub struct Job {
    pub servable: Arc<Servable>,
    pub signature_name: String,
    pub decoder: Arc<Decoder>,
    pub files: Arc<Vec<InputFile>>,
    pub shards: Vec<ShardFiles>,
    pub num_shards: usize,
    pub batch_size: usize,
    pub decode_threads: usize,
    pub inference_threads: usize,
    pub key_field: String,
    /// The output alias of a single-output signature (a keyed line puts the value under it).
    pub single_output: Option<String>,
    /// Recorded in every completion marker.
    pub fingerprint: serde_json::Value,
    /// Keep a copy of one full batch for measuring the raw runtime afterwards.
    pub keep_sample: bool,
}

/// Counters shared by the threads.
#[derive(Default)]
pub struct Stats {
    pub instances: AtomicU64,
    pub predictions: AtomicU64,
    pub errors: AtomicU64,
    pub batches: AtomicU64,
    /// Time spent inside the runtime, summed over inference threads.
    pub busy_nanos: AtomicU64,
    pub retried_batches: AtomicU64,
    /// When the answer to the first model run was written (nanoseconds since the start), and the
    /// instances written by then: the warm-up (the pipeline filling up, TensorFlow optimising
    /// the graph on its first run), left out of the steady-state throughput.
    pub first_answer_nanos: AtomicU64,
    pub first_answer_instances: AtomicU64,
    /// The process's CPU time then, in microseconds (0: unknown).
    pub first_answer_cpu_micros: AtomicU64,
}

/// The CPU time (user + system, all threads) of this process so far, from `/proc/self/stat`
/// (in clock ticks of 1/100 s, Linux's `USER_HZ`); `None` where there is no such file.
pub fn process_cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // After "pid (comm) ": state, ppid, ..., utime (field 14), stime (field 15).
    let fields: Vec<&str> = stat
        .get(stat.rfind(')')? + 1..)?
        .split_whitespace()
        .collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / 100.0)
}

pub struct Outcome {
    pub stats: Arc<Stats>,
    pub elapsed: Duration,
    pub sample: Option<NamedTensors>,
}

fn err_text(e: &oxserve_core::Error) -> String {
    format!("{}: {}", e.code.name(), e.message)
}

pub fn run(job: Job) -> anyhow::Result<Outcome> {
    let job = Arc::new(job);
    let stats = Arc::new(Stats::default());
    let start = Instant::now();
    let decode_threads = job.decode_threads.max(1);
    let inference_threads = job.inference_threads.max(1);
    let (chunk_tx, chunk_rx) = sync_channel::<Chunk>(decode_threads * 2);
    let (decoded_tx, decoded_rx) = sync_channel::<DecodedChunk>(decode_threads * 2);
    let (batch_tx, batch_rx) = sync_channel::<Batch>(inference_threads + 1);
    let (answer_tx, answer_rx) = sync_channel::<Answered>(inference_threads * 2 + 2);
    let sample: Arc<Mutex<Option<NamedTensors>>> = Arc::default();

    let total_bytes: u64 = job.files.iter().map(|f| f.size).sum::<u64>() * job.shards.len() as u64;
    let progress = Progress::new(total_bytes, stats.clone());

    std::thread::scope(|scope| -> anyhow::Result<()> {
        let reader = {
            let job = job.clone();
            std::thread::Builder::new()
                .name("predict-reader".into())
                .spawn_scoped(scope, move || read(&job, chunk_tx))?
        };
        let chunk_rx = Arc::new(Mutex::new(chunk_rx));
        for i in 0..decode_threads {
            let (job, rx, tx) = (job.clone(), chunk_rx.clone(), decoded_tx.clone());
            std::thread::Builder::new()
                .name(format!("predict-decode-{i}"))
                .spawn_scoped(scope, move || decode(&job, &rx, &tx))?;
        }
        // Each stage's receiver lives only in the threads of the stage, so that when they end,
        // the stage upstream finds it gone and ends too, instead of waiting on a full channel.
        drop(chunk_rx);
        drop(decoded_tx);
        {
            let job = job.clone();
            std::thread::Builder::new()
                .name("predict-batcher".into())
                .spawn_scoped(scope, move || batcher(&job, decoded_rx, batch_tx))?;
        }
        let batch_rx = Arc::new(Mutex::new(batch_rx));
        for i in 0..inference_threads {
            let (job, rx, tx) = (job.clone(), batch_rx.clone(), answer_tx.clone());
            let (stats, sample) = (stats.clone(), sample.clone());
            std::thread::Builder::new()
                .name(format!("predict-infer-{i}"))
                .spawn_scoped(scope, move || infer(&job, &rx, &tx, &stats, &sample))?;
        }
        drop(batch_rx);
        drop(answer_tx);
        // The writer runs here; when it fails, dropping its receiver stops every thread upstream.
        let written = write(&job, answer_rx, &stats, &progress);
        let read = reader
            .join()
            .map_err(|_| anyhow::anyhow!("the reader thread panicked"))?;
        written?;
        read
    })?;
    progress.finish();
    let sample = sample.lock().map(|mut s| s.take()).unwrap_or(None);
    Ok(Outcome {
        stats,
        elapsed: start.elapsed(),
        sample,
    })
}

/// Reads every input once per shard, keeping the items of that shard.
fn read(job: &Job, tx: SyncSender<Chunk>) -> anyhow::Result<()> {
    let chunk_len = job.batch_size.clamp(1, 64);
    let mut next_id = 0u64;
    let pools = Pools::default();
    let mut progress_base = 0u64;
    for shard in &job.shards {
        let shard = shard.shard;
        let mut items = Vec::with_capacity(chunk_len);
        for (f, file) in job.files.iter().enumerate() {
            let mut reader = ItemReader::open(file, &pools);
            let m = job.num_shards;
            while let Some((index, item)) = reader.next_item(|k| shard_of(f, k, m) == shard) {
                if shard_of(f, index, m) != shard {
                    continue;
                }
                let raw = match item {
                    Item::Data(data) => Raw::Data(data),
                    Item::Broken(message) => Raw::Broken(message),
                };
                items.push((Loc { file: f, index }, raw));
                if items.len() >= chunk_len {
                    let chunk = Chunk {
                        id: next_id,
                        shard,
                        items: std::mem::replace(&mut items, Vec::with_capacity(chunk_len)),
                        end_of_shard: false,
                        progress: progress_base + reader.bytes_read(),
                    };
                    next_id += 1;
                    if tx.send(chunk).is_err() {
                        return Ok(()); // the writer stopped: it reports why
                    }
                }
            }
            progress_base += file.size;
        }
        let chunk = Chunk {
            id: next_id,
            shard,
            items,
            end_of_shard: true,
            progress: progress_base,
        };
        next_id += 1;
        if tx.send(chunk).is_err() {
            return Ok(());
        }
    }
    Ok(())
}

fn decode(job: &Job, rx: &Mutex<Receiver<Chunk>>, tx: &SyncSender<DecodedChunk>) {
    loop {
        let chunk = match rx.lock() {
            Ok(rx) => match rx.recv() {
                Ok(chunk) => chunk,
                Err(_) => return,
            },
            Err(_) => return,
        };
        let items = chunk
            .items
            .into_iter()
            .map(|(loc, raw)| {
                let decoded = match raw {
                    Raw::Broken(message) => Decoded::Error {
                        message: format!("{message}; the rest of the file is skipped"),
                        key: None,
                    },
                    Raw::Data(data) => match job.files[loc.file].kind {
                        Kind::JsonLines => job.decoder.decode_json(&data),
                        Kind::TfRecord => job.decoder.decode_record(data),
                    },
                };
                (loc, decoded)
            })
            .collect();
        let out = DecodedChunk {
            id: chunk.id,
            shard: chunk.shard,
            items,
            end_of_shard: chunk.end_of_shard,
            progress: chunk.progress,
        };
        if tx.send(out).is_err() {
            return;
        }
    }
}

/// Puts decoded chunks back in order and groups instances into batches.
fn batcher(job: &Job, rx: Receiver<DecodedChunk>, tx: SyncSender<Batch>) {
    let aliases: Vec<String> = job.decoder_aliases();
    let mut pending: BTreeMap<u64, DecodedChunk> = BTreeMap::new();
    let mut next_chunk = 0u64;
    let mut next_batch = 0u64;
    let mut acc = Accumulator::default();
    let mut entries: Vec<Entry> = Vec::new();
    let mut flush = |acc: &mut Accumulator,
                     entries: &mut Vec<Entry>,
                     shard: usize,
                     end_of_shard: bool,
                     progress: u64|
     -> bool {
        let count = acc.len();
        let batch = Batch {
            id: next_batch,
            shard,
            entries: std::mem::take(entries),
            ready: acc.take(&aliases),
            count,
            end_of_shard,
            progress,
        };
        next_batch += 1;
        tx.send(batch).is_ok()
    };
    while let Ok(chunk) = rx.recv() {
        pending.insert(chunk.id, chunk);
        while let Some(chunk) = pending.remove(&next_chunk) {
            next_chunk += 1;
            let (shard, progress) = (chunk.shard, chunk.progress);
            for (loc, decoded) in chunk.items {
                match decoded {
                    Decoded::Skip => {}
                    Decoded::Error { message, key } => {
                        entries.push(Entry::Error { loc, message, key });
                        if acc.len() == 0
                            && entries.len() >= 1024
                            && !flush(&mut acc, &mut entries, shard, false, progress)
                        {
                            return;
                        }
                    }
                    Decoded::Instance(mut instance) => {
                        if !acc.accepts(&instance)
                            && !flush(&mut acc, &mut entries, shard, false, progress)
                        {
                            return;
                        }
                        entries.push(Entry::Row {
                            loc,
                            key: instance.key.take(),
                        });
                        acc.push(instance);
                        if acc.len() >= job.batch_size
                            && !flush(&mut acc, &mut entries, shard, false, progress)
                        {
                            return;
                        }
                    }
                }
            }
            if chunk.end_of_shard && !flush(&mut acc, &mut entries, shard, true, progress) {
                return;
            }
        }
    }
}

impl Job {
    fn decoder_aliases(&self) -> Vec<String> {
        self.servable
            .signature(&self.signature_name)
            .map(|s| s.inputs.keys().cloned().collect())
            .unwrap_or_default()
    }
}

fn infer(
    job: &Job,
    rx: &Mutex<Receiver<Batch>>,
    tx: &SyncSender<Answered>,
    stats: &Stats,
    sample: &Mutex<Option<NamedTensors>>,
) {
    let aliases = job.decoder_aliases();
    let run = |inputs: NamedTensors| -> Result<NamedTensors, String> {
        let start = Instant::now();
        let result = job
            .servable
            .predict(&job.signature_name, inputs, &[])
            .map_err(|e| err_text(&e));
        stats
            .busy_nanos
            .fetch_add(start.elapsed().as_nanos() as u64, Ordering::Relaxed);
        result
    };
    loop {
        let mut batch = match rx.lock() {
            Ok(rx) => match rx.recv() {
                Ok(batch) => batch,
                Err(_) => return,
            },
            Err(_) => return,
        };
        let answer = match batch.ready.take() {
            None => Answer::None,
            Some(Ready { inputs, rows }) => {
                if job.keep_sample && batch.count == job.batch_size {
                    if let Ok(mut s) = sample.lock() {
                        if s.is_none() {
                            *s = Some(inputs.clone());
                        }
                    }
                }
                stats.batches.fetch_add(1, Ordering::Relaxed);
                match run(inputs) {
                    Ok(outputs) => Answer::Batch(Ok(outputs)),
                    Err(e) if rows.len() <= 1 => Answer::Batch(Err(e)),
                    Err(e) => {
                        // One bad instance (a corrupt JPEG, say) fails the whole batch: find it.
                        stats.retried_batches.fetch_add(1, Ordering::Relaxed);
                        tracing::debug!(
                            "a batch of {} failed ({e}); running its instances one by one",
                            batch.count
                        );
                        Answer::Each(
                            rows.into_iter()
                                .map(|row| {
                                    run(aliases.iter().cloned().zip(row.into_tensors()).collect())
                                })
                                .collect(),
                        )
                    }
                }
            }
        };
        if tx.send(Answered { batch, answer }).is_err() {
            return;
        }
    }
}

/// The open output files of the shard being written.
struct ShardWriter {
    files: ShardFiles,
    results: BufWriter<File>,
    errors: BufWriter<File>,
    instances: u64,
    predictions: u64,
    errors_count: u64,
}

impl ShardWriter {
    fn open(files: &ShardFiles) -> anyhow::Result<ShardWriter> {
        files.clean()?;
        let create = |path: &std::path::Path| -> anyhow::Result<BufWriter<File>> {
            Ok(BufWriter::with_capacity(
                1 << 20,
                File::create(path).with_context(|| format!("creating {}", path.display()))?,
            ))
        };
        Ok(ShardWriter {
            results: create(&files.results_tmp)?,
            errors: create(&files.errors_tmp)?,
            files: files.clone(),
            instances: 0,
            predictions: 0,
            errors_count: 0,
        })
    }

    fn finish(self, fingerprint: &serde_json::Value, progress: &Progress) -> anyhow::Result<()> {
        let ShardWriter {
            files,
            results,
            errors,
            instances,
            predictions,
            errors_count,
        } = self;
        for (writer, path) in [(results, &files.results_tmp), (errors, &files.errors_tmp)] {
            let file = writer
                .into_inner()
                .map_err(|e| e.into_error())
                .with_context(|| format!("writing {}", path.display()))?;
            file.sync_all()
                .with_context(|| format!("writing {}", path.display()))?;
        }
        let finished = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        files.commit(&serde_json::json!({
            "job": fingerprint,
            "shard": files.shard,
            "num_shards": files.num_shards,
            "instances": instances,
            "predictions": predictions,
            "errors": errors_count,
            "finished_unix_time": finished,
        }))?;
        progress.info(&format!(
            "shard {} of {} complete: {} predictions, {} errors -> {}",
            files.shard,
            files.num_shards,
            predictions,
            errors_count,
            files.results.display()
        ));
        Ok(())
    }
}

fn error_line(job: &Job, loc: Loc, message: &str, key: Option<&str>) -> Vec<u8> {
    let file = &job.files[loc.file];
    let (what, n) = match file.kind {
        Kind::JsonLines => ("line", loc.index + 1),
        Kind::TfRecord => ("record", loc.index),
    };
    let mut line = format!("{{\"file\":{},\"{what}\":{n}", json_string(&file.name));
    if let Some(key) = key {
        line.push_str(",\"key\":");
        line.push_str(key);
    }
    line.push_str(",\"error\":");
    line.push_str(&json_string(message));
    line.push_str("}\n");
    line.into_bytes()
}

/// Formats each answer into lines; commits each shard when its last batch is written.
fn write(
    job: &Job,
    rx: Receiver<Answered>,
    stats: &Stats,
    progress: &Progress,
) -> anyhow::Result<()> {
    let mut pending: BTreeMap<u64, Answered> = BTreeMap::new();
    let mut next = 0u64;
    let mut current: Option<ShardWriter> = None;
    let shards: BTreeMap<usize, &ShardFiles> = job.shards.iter().map(|s| (s.shard, s)).collect();
    while let Ok(answered) = rx.recv() {
        pending.insert(answered.batch.id, answered);
        while let Some(Answered { batch, answer }) = pending.remove(&next) {
            next += 1;
            let writer = match &mut current {
                Some(w) if w.files.shard == batch.shard => w,
                _ => {
                    let files = shards
                        .get(&batch.shard)
                        .with_context(|| format!("internal: unknown shard {}", batch.shard))?;
                    current.insert(ShardWriter::open(files)?)
                }
            };
            let model_ran = !matches!(answer, Answer::None);
            write_batch(job, writer, &batch, answer, stats)?;
            if model_ran && stats.first_answer_nanos.load(Ordering::Relaxed) == 0 {
                let since_start = progress.start.elapsed().as_nanos().max(1);
                stats
                    .first_answer_nanos
                    .store(since_start as u64, Ordering::Relaxed);
                stats
                    .first_answer_instances
                    .store(stats.instances.load(Ordering::Relaxed), Ordering::Relaxed);
                if let Some(cpu) = process_cpu_seconds() {
                    stats
                        .first_answer_cpu_micros
                        .store((cpu * 1e6) as u64, Ordering::Relaxed);
                }
            }
            progress.update(batch.progress);
            if batch.end_of_shard {
                if let Some(w) = current.take() {
                    w.finish(&job.fingerprint, progress)?;
                }
            }
        }
    }
    if current.is_some() || !pending.is_empty() {
        anyhow::bail!("the pipeline stopped before the end of the input (see the errors above)");
    }
    Ok(())
}

fn write_batch(
    job: &Job,
    w: &mut ShardWriter,
    batch: &Batch,
    answer: Answer,
    stats: &Stats,
) -> anyhow::Result<()> {
    // One result per row of the batch: the compact JSON of the row, or an error message.
    let rows: Vec<Result<Vec<u8>, String>> = match answer {
        Answer::None => Vec::new(),
        Answer::Batch(result) => split_answer(result, batch.count),
        Answer::Each(results) => results
            .into_iter()
            .map(|r| {
                split_answer(r, 1)
                    .pop()
                    .unwrap_or_else(|| Err("no answer".into()))
            })
            .collect(),
    };
    let mut rows = rows.into_iter();
    let path = w.files.results_tmp.clone();
    for entry in &batch.entries {
        let (loc, key, result) = match entry {
            Entry::Row { loc, key } => (
                *loc,
                key.as_deref(),
                rows.next()
                    .unwrap_or_else(|| Err("internal: missing row in the answer".into())),
            ),
            Entry::Error { loc, message, key } => (*loc, key.as_deref(), Err(message.clone())),
        };
        w.instances += 1;
        stats.instances.fetch_add(1, Ordering::Relaxed);
        match result {
            Ok(row) => {
                let line = output_line(&row, key, job.single_output.as_deref(), &job.key_field);
                w.results
                    .write_all(&line)
                    .with_context(|| format!("writing {}", path.display()))?;
                w.predictions += 1;
                stats.predictions.fetch_add(1, Ordering::Relaxed);
            }
            Err(message) => {
                w.errors
                    .write_all(&error_line(job, loc, &message, key))
                    .with_context(|| format!("writing {}", w.files.errors_tmp.display()))?;
                w.errors_count += 1;
                stats.errors.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
    Ok(())
}

/// A batch's outputs as one compact JSON row per instance, exactly as REST's row format.
fn split_answer(
    result: Result<NamedTensors, String>,
    count: usize,
) -> Vec<Result<Vec<u8>, String>> {
    let rows = result.and_then(|outputs| {
        let body = write_predict_response(&outputs, Format::Row).map_err(|e| err_text(&e))?;
        let rows = split_predictions(&body)?;
        if rows.len() != count {
            return Err(format!(
                "the model answered {} rows for a batch of {count} instances",
                rows.len()
            ));
        }
        Ok(rows)
    });
    match rows {
        Ok(rows) => rows.into_iter().map(Ok).collect(),
        Err(e) => vec![Err(e); count],
    }
}

/// A progress bar on a terminal, a log line every 10 s otherwise.
pub struct Progress {
    bar: Option<indicatif::ProgressBar>,
    stats: Arc<Stats>,
    start: Instant,
    total: u64,
    last_log: Mutex<Instant>,
}

impl Progress {
    fn new(total: u64, stats: Arc<Stats>) -> Progress {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = indicatif::ProgressBar::new(total.max(1));
            let style = indicatif::ProgressStyle::with_template(
                "{spinner} [{elapsed_precise}] {wide_bar} {percent:>3}% {msg} ETA {eta}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar());
            bar.set_style(style);
            bar.enable_steady_tick(Duration::from_millis(200));
            bar
        });
        Progress {
            bar,
            stats,
            start: Instant::now(),
            total,
            last_log: Mutex::new(Instant::now()),
        }
    }

    fn summary(&self) -> String {
        let instances = self.stats.instances.load(Ordering::Relaxed);
        let errors = self.stats.errors.load(Ordering::Relaxed);
        let secs = self.start.elapsed().as_secs_f64().max(1e-9);
        format!(
            "{instances} instances ({:.1}/s), {errors} errors",
            instances as f64 / secs
        )
    }

    fn update(&self, position: u64) {
        match &self.bar {
            Some(bar) => {
                bar.set_position(position);
                bar.set_message(self.summary());
            }
            None => {
                let Ok(mut last) = self.last_log.lock() else {
                    return;
                };
                if last.elapsed() >= Duration::from_secs(10) {
                    *last = Instant::now();
                    let pct = if self.total == 0 {
                        100.0
                    } else {
                        100.0 * position as f64 / self.total as f64
                    };
                    let elapsed = self.start.elapsed().as_secs_f64();
                    let eta = if pct > 0.0 {
                        format!("{:.0}s", elapsed * (100.0 - pct) / pct)
                    } else {
                        "unknown".into()
                    };
                    tracing::info!("{}; {pct:.1}% of the input read; ETA {eta}", self.summary());
                }
            }
        }
    }

    /// A log line that does not tear the progress bar.
    fn info(&self, message: &str) {
        match &self.bar {
            Some(bar) => bar.suspend(|| tracing::info!("{message}")),
            None => tracing::info!("{message}"),
        }
    }

    fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}
