//! The batch scheduler: per-(model, tensor signature, input shape) queues of batches, and a pool
//! of batch threads shared by every batching model, after TF Serving's `SharedBatchScheduler`.
//!
//! A queue is a deque of batches whose back is the open batch. A request (task) joins the open
//! batch; when it does not fit, the open batch is closed and a new one started, unless the queue
//! already holds `max_enqueued_batches` batches: then the request is refused at once with
//! UNAVAILABLE. A batch thread takes the front batch of a queue (round robin over queues) when it
//! is closed, full, or has waited `batch_timeout` since its first task arrived.

use std::collections::VecDeque;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError, SyncSender};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Instant;

use crate::backend::Model;
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::tensor::Tensor;

use super::params::BatchingParams;
use super::tensors;

/// What a batching model shares with its queues: the wrapped model and its parameters.
pub(crate) struct Owner {
    pub id: u64,
    pub model: Arc<dyn Model>,
    pub params: BatchingParams,
    /// The queue-length gauge, labelled with the version directory.
    pub queued_gauge: metrics::Gauge,
    /// Requests in this model's queues (pieces of a split request count one each); changed
    /// under the scheduler's lock only, so that the gauge is set in order.
    pub queued: AtomicUsize,
}

impl Owner {
    fn add_queued(&self, delta: isize) {
        let queued = self
            .queued
            .load(Ordering::Relaxed)
            .saturating_add_signed(delta);
        self.queued.store(queued, Ordering::Relaxed);
        self.queued_gauge.set(queued as f64);
    }
}

/// Requests are batched together only when all of this is equal.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct QueueKey {
    /// Feed tensor names, sorted.
    pub feeds: Vec<String>,
    /// Fetch tensor names, in the caller's order.
    pub fetches: Vec<String>,
    /// Per feed: dtype and non-batch dimensions (only the rank when padding variable-length
    /// inputs).
    pub inputs: Vec<(DType, Vec<usize>)>,
}

type Outputs = Result<Vec<Tensor>>;

/// Where a task's outputs go.
enum Reply {
    Whole(SyncSender<Outputs>),
    /// One piece of a request split across batches.
    Part {
        join: Arc<Join>,
        index: usize,
    },
}

/// Collects the pieces of a split request.
struct Join {
    state: Mutex<JoinState>,
    sender: SyncSender<Outputs>,
}

struct JoinState {
    pieces: Vec<Option<Vec<Tensor>>>,
    remaining: usize,
    failed: bool,
}

impl Join {
    fn complete(&self, index: usize, result: Outputs) {
        let mut state = lock(&self.state);
        if state.failed {
            return;
        }
        match result {
            Err(err) => {
                state.failed = true;
                let _ = self.sender.try_send(Err(err));
            }
            Ok(outputs) => {
                state.pieces[index] = Some(outputs);
                state.remaining -= 1;
                if state.remaining == 0 {
                    let pieces: Vec<Vec<Tensor>> = state
                        .pieces
                        .drain(..)
                        .map(Option::unwrap_or_default)
                        .collect();
                    let _ = self.sender.try_send(join_pieces(pieces));
                }
            }
        }
    }
}

/// Concatenates the outputs of the pieces of a split request, output by output. Pieces that ran in
/// different batches may come back of different widths (padded to their batch's widest request
/// with `pad_variable_length_inputs`, or from a model whose output width follows its batch): they
/// are padded to the widest piece, as an unsplit request's rows are padded to its batch's widest.
fn join_pieces(pieces: Vec<Vec<Tensor>>) -> Outputs {
    let count = pieces.first().map_or(0, Vec::len);
    let mut columns: Vec<Vec<Tensor>> = (0..count).map(|_| Vec::new()).collect();
    for piece in pieces {
        if piece.len() != count {
            return Err(Error::internal(
                "split request pieces returned different outputs",
            ));
        }
        for (column, tensor) in columns.iter_mut().zip(piece) {
            column.push(tensor);
        }
    }
    columns
        .into_iter()
        .map(|parts| tensors::concat(tensors::pad_to_widest(parts)?, 0))
        .collect()
}

struct Task {
    /// One tensor per feed of the queue key, in key order.
    inputs: Vec<Tensor>,
    size: usize,
    /// When the request was queued (for a piece of a split request: the whole request).
    enqueued: Instant,
    deadline: Option<Instant>,
    cancelled: Arc<AtomicBool>,
    reply: Reply,
}

impl Task {
    fn send(self, result: Outputs) {
        match self.reply {
            Reply::Whole(sender) => {
                let _ = sender.try_send(result);
            }
            Reply::Part { join, index } => join.complete(index, result),
        }
    }
}

#[derive(Default)]
struct Batch {
    tasks: Vec<Task>,
    size: usize,
    /// With `pad_variable_length_inputs`, per feed: the largest size of each non-batch dimension
    /// among the tasks (what they are padded to), and the most elements in a row of one task.
    widest: Vec<(Vec<usize>, usize)>,
}

impl Batch {
    /// Whether `task` may join this batch with its inputs padded (`pad_variable_length_inputs`):
    /// only if the padded batch holds no more elements than `limit` rows of its widest task do.
    /// Requests wide in different dimensions (`[1, n, 1]`, `[1, 1, n]`) would otherwise pad each
    /// other to the product of their sizes; they run in batches of their own instead.
    fn pads_within(&self, task: &Task, limit: usize) -> bool {
        if self.tasks.is_empty() {
            return true;
        }
        // A task larger than the room left is split (`enable_large_batch_splitting`): no batch
        // holds more than `limit` rows.
        let rows = (self.size + task.size).min(limit);
        self.widest
            .iter()
            .zip(&task.inputs)
            .all(|((dims, widest_row), input)| {
                let inner = input.shape().get(1..).unwrap_or(&[]);
                let padded = dims
                    .iter()
                    .zip(inner)
                    .try_fold(rows, |product, (&a, &b)| product.checked_mul(a.max(b)));
                let widest_row =
                    tensors::row_len(input.shape()).map_or(usize::MAX, |row| row.max(*widest_row));
                padded.is_some_and(|padded| padded <= limit.saturating_mul(widest_row))
            })
    }

    /// Widens `widest` to `task`'s inputs.
    fn widen(&mut self, task: &Task) {
        if self.widest.is_empty() {
            self.widest = task
                .inputs
                .iter()
                .map(|input| (vec![0; input.shape().len().saturating_sub(1)], 0))
                .collect();
        }
        for ((dims, widest_row), input) in self.widest.iter_mut().zip(&task.inputs) {
            let inner = input.shape().get(1..).unwrap_or(&[]);
            for (dim, &size) in dims.iter_mut().zip(inner) {
                *dim = (*dim).max(size);
            }
            *widest_row = (*widest_row).max(tensors::row_len(input.shape()).unwrap_or(0));
        }
    }
}

struct Queue {
    id: u64,
    owner: Arc<Owner>,
    key: Arc<QueueKey>,
    /// Never empty; the back batch is the open one.
    batches: VecDeque<Batch>,
    /// When the first task joined the open batch.
    open_since: Instant,
    /// Batches of this queue being run by batch threads.
    in_flight: usize,
}

impl Queue {
    fn open(&self) -> &Batch {
        self.batches
            .back()
            .unwrap_or_else(|| unreachable!("a queue always has an open batch"))
    }

    fn open_mut(&mut self) -> &mut Batch {
        self.batches
            .back_mut()
            .unwrap_or_else(|| unreachable!("a queue always has an open batch"))
    }

    fn start_new_batch(&mut self) {
        self.batches.push_back(Batch::default());
    }

    fn push(&mut self, task: Task, now: Instant) {
        let pad = self.owner.params.pad_variable_length_inputs;
        let open = self.open_mut();
        let was_empty = open.tasks.is_empty();
        if pad {
            open.widen(&task);
        }
        open.size += task.size;
        open.tasks.push(task);
        if was_empty {
            self.open_since = now;
        }
        self.owner.add_queued(1);
    }

    fn is_idle(&self) -> bool {
        self.in_flight == 0 && self.batches.len() == 1 && self.open().tasks.is_empty()
    }

    /// When the front batch may be taken: now (closed or full), at the open batch's timeout, or
    /// never (empty).
    fn ready_at(&self, now: Instant) -> Option<Instant> {
        if self.batches.len() > 1 {
            return Some(now);
        }
        let open = self.open();
        if open.tasks.is_empty() {
            return None;
        }
        if open.size >= self.owner.params.max_execution_batch_size {
            return Some(self.open_since);
        }
        Some(self.open_since + self.owner.params.batch_timeout)
    }

    /// Schedules a task, as `Queue::Schedule` of TF's SharedBatchScheduler.
    fn schedule(&mut self, task: Task, now: Instant) -> Result<()> {
        let params = &self.owner.params;
        let limit = params.max_execution_batch_size;
        if task.size > params.max_batch_size {
            return Err(Error::invalid_argument(format!(
                "Task size {} is larger than maximum input batch size {}",
                task.size, params.max_batch_size
            )));
        }
        if params.pad_variable_length_inputs && !self.open().pads_within(&task, limit) {
            if self.batches.len() >= params.max_enqueued_batches {
                return Err(Error::unavailable(
                    "The batch scheduling queue to which this task was submitted is full",
                ));
            }
            // `start_new_batch`, through the field: `params` still borrows `self.owner`.
            self.batches.push_back(Batch::default());
        }
        if params.enable_large_batch_splitting {
            let free_batches = params
                .max_enqueued_batches
                .saturating_sub(self.batches.len());
            // Saturating: both limits come from a configuration file, and may be huge.
            let capacity = free_batches
                .saturating_mul(limit)
                .saturating_add(limit - self.open().size.min(limit));
            if task.size > capacity {
                return Err(Error::unavailable(format!(
                    "The batch scheduling queue to which this task was submitted is full; task size is {} but scheduling capacity is only {capacity} (num_enqueued_batches={}, max_enqueued_batches={}, open_batch_size={}, max_execution_batch_size={limit})",
                    task.size,
                    self.batches.len(),
                    params.max_enqueued_batches,
                    self.open().size
                )));
            }
            let room = limit - self.open().size.min(limit);
            if task.size <= room {
                self.push(task, now);
                return Ok(());
            }
            for piece in split_task(task, room, limit)? {
                if self.open().size + piece.size > limit {
                    self.start_new_batch();
                }
                self.push(piece, now);
            }
            return Ok(());
        }
        if self.open().size + task.size > limit {
            if self.batches.len() >= params.max_enqueued_batches {
                return Err(Error::unavailable(
                    "The batch scheduling queue to which this task was submitted is full",
                ));
            }
            self.start_new_batch();
        }
        self.push(task, now);
        Ok(())
    }
}

/// Splits a task into a first piece of `first` rows (if any) and pieces of at most `limit` rows.
fn split_task(task: Task, first: usize, limit: usize) -> Result<Vec<Task>> {
    let mut sizes = Vec::new();
    let mut left = task.size;
    if first > 0 {
        sizes.push(first);
        left -= first;
    }
    while left > 0 {
        let n = left.min(limit);
        sizes.push(n);
        left -= n;
    }
    let Reply::Whole(sender) = task.reply else {
        return Err(Error::internal(
            "a piece of a split request cannot be split again",
        ));
    };
    let join = Arc::new(Join {
        state: Mutex::new(JoinState {
            pieces: (0..sizes.len()).map(|_| None).collect(),
            remaining: sizes.len(),
            failed: false,
        }),
        sender,
    });
    let mut pieces = Vec::with_capacity(sizes.len());
    let mut start = 0;
    for (index, &n) in sizes.iter().enumerate() {
        let inputs = task
            .inputs
            .iter()
            .map(|tensor| tensors::slice_rows(tensor, start, n))
            .collect::<Result<Vec<_>>>()?;
        start += n;
        pieces.push(Task {
            inputs,
            size: n,
            enqueued: task.enqueued,
            deadline: task.deadline,
            cancelled: task.cancelled.clone(),
            reply: Reply::Part {
                join: join.clone(),
                index,
            },
        });
    }
    Ok(pieces)
}

#[derive(Default)]
struct State {
    queues: Vec<Queue>,
    /// Round-robin position in `queues`.
    next: usize,
    next_id: u64,
    shutdown: bool,
}

struct Shared {
    state: Mutex<State>,
    wake: Condvar,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A poisoned lock means a thread panicked while holding it; the queues it guards are still
    // consistent (every mutation is completed before any call that could panic).
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// One batch taken off a queue, to be run by a batch thread.
struct Job {
    queue_id: u64,
    owner: Arc<Owner>,
    key: Arc<QueueKey>,
    batch: Batch,
}

/// The shared batch thread pool and its queues. Dropping it stops the threads once every queued
/// batch has been run.
pub(crate) struct Scheduler {
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
}

/// A cheap handle for enqueueing, held by batching models.
#[derive(Clone)]
pub(crate) struct Handle {
    shared: Arc<Shared>,
}

impl Scheduler {
    pub fn new(threads: usize, name: &str) -> Result<Scheduler> {
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            wake: Condvar::new(),
        });
        let mut handles = Vec::with_capacity(threads);
        for i in 0..threads.max(1) {
            let shared = shared.clone();
            let handle = crate::threads::named(format!("{name}_{i}"))
                .spawn(move || batch_thread(&shared))
                .map_err(|e| Error::internal(format!("could not start a batch thread: {e}")))?;
            handles.push(handle);
        }
        Ok(Scheduler {
            shared,
            threads: handles,
        })
    }

    pub fn handle(&self) -> Handle {
        Handle {
            shared: self.shared.clone(),
        }
    }

    pub fn next_owner_id(&self) -> u64 {
        let mut state = lock(&self.shared.state);
        state.next_id += 1;
        state.next_id
    }
}

impl Drop for Scheduler {
    fn drop(&mut self) {
        lock(&self.shared.state).shutdown = true;
        self.shared.wake.notify_all();
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

/// A request waiting for its batch.
pub(crate) struct Pending {
    receiver: Receiver<Outputs>,
    cancelled: Arc<AtomicBool>,
    deadline: Option<Instant>,
}

impl Pending {
    /// Blocks until the batch ran, or the request's deadline passed (then the request is
    /// withdrawn: a batch formed later skips it).
    pub fn wait(self) -> Outputs {
        let received = match self.deadline {
            Some(deadline) => self
                .receiver
                .recv_timeout(deadline.saturating_duration_since(Instant::now())),
            None => self
                .receiver
                .recv()
                .map_err(|_| RecvTimeoutError::Disconnected),
        };
        match received {
            Ok(result) => result,
            Err(RecvTimeoutError::Timeout) => {
                self.cancelled.store(true, Ordering::Relaxed);
                Err(deadline_exceeded())
            }
            Err(RecvTimeoutError::Disconnected) => Err(Error::internal(
                "the batch holding this request was dropped without an answer",
            )),
        }
    }
}

fn deadline_exceeded() -> Error {
    Error::deadline_exceeded("Deadline exceeded while the request waited in the batching queue")
}

impl Handle {
    /// Queues one request (inputs in key order, all with `size` rows).
    pub fn submit(
        &self,
        owner: &Arc<Owner>,
        key: QueueKey,
        inputs: Vec<Tensor>,
        size: usize,
        deadline: Option<Instant>,
    ) -> Result<Pending> {
        let (sender, receiver) = sync_channel(1);
        let cancelled = Arc::new(AtomicBool::new(false));
        let now = Instant::now();
        let task = Task {
            inputs,
            size,
            enqueued: now,
            deadline,
            cancelled: cancelled.clone(),
            reply: Reply::Whole(sender),
        };
        {
            let mut state = lock(&self.shared.state);
            if state.shutdown {
                return Err(Error::unavailable("the batch scheduler is shutting down"));
            }
            let position = state
                .queues
                .iter()
                .position(|q| q.owner.id == owner.id && *q.key == key);
            let index = match position {
                Some(index) => index,
                None => {
                    state.next_id += 1;
                    let id = state.next_id;
                    state.queues.push(Queue {
                        id,
                        owner: owner.clone(),
                        key: Arc::new(key),
                        batches: VecDeque::from([Batch::default()]),
                        open_since: now,
                        in_flight: 0,
                    });
                    state.queues.len() - 1
                }
            };
            let queue = &mut state.queues[index];
            let result = queue.schedule(task, now);
            if result.is_err() && queue.is_idle() {
                state.queues.remove(index);
                state.next = 0;
            }
            result?;
        }
        self.shared.wake.notify_one();
        Ok(Pending {
            receiver,
            cancelled,
            deadline,
        })
    }

    /// Forgets the idle queues of a model being unloaded (busy ones go once they drain).
    pub fn release(&self, owner_id: u64) {
        let mut state = lock(&self.shared.state);
        state
            .queues
            .retain(|q| q.owner.id != owner_id || !q.is_idle());
        state.next = 0;
    }
}

impl State {
    /// Takes the next ready batch, round robin over queues; else when to look again.
    fn take(&mut self, now: Instant) -> std::result::Result<Job, Option<Instant>> {
        let count = self.queues.len();
        let mut earliest: Option<Instant> = None;
        for offset in 0..count {
            let index = (self.next + offset) % count;
            let queue = &mut self.queues[index];
            let Some(ready) = queue.ready_at(now) else {
                continue;
            };
            if ready > now {
                earliest = Some(earliest.map_or(ready, |e| e.min(ready)));
                continue;
            }
            let batch = queue
                .batches
                .pop_front()
                .unwrap_or_else(|| unreachable!("a queue always has an open batch"));
            if queue.batches.is_empty() {
                queue.start_new_batch();
            }
            queue.owner.add_queued(-(batch.tasks.len() as isize));
            queue.in_flight += 1;
            self.next = (index + 1) % count;
            return Ok(Job {
                queue_id: queue.id,
                owner: queue.owner.clone(),
                key: queue.key.clone(),
                batch,
            });
        }
        Err(earliest)
    }

    fn finished(&mut self, queue_id: u64) {
        if let Some(index) = self.queues.iter().position(|q| q.id == queue_id) {
            let queue = &mut self.queues[index];
            queue.in_flight -= 1;
            if queue.is_idle() {
                self.queues.remove(index);
                self.next = 0;
            }
        }
    }
}

fn batch_thread(shared: &Shared) {
    loop {
        let job = {
            let mut state = lock(&shared.state);
            loop {
                match state.take(Instant::now()) {
                    Ok(job) => break job,
                    Err(_) if state.shutdown && state.queues.iter().all(|q| q.in_flight == 0) => {
                        return
                    }
                    Err(Some(when)) => {
                        let wait = when.saturating_duration_since(Instant::now());
                        state = shared
                            .wake
                            .wait_timeout(state, wait)
                            .unwrap_or_else(|poisoned| poisoned.into_inner())
                            .0;
                    }
                    Err(None) => {
                        state = shared
                            .wake
                            .wait(state)
                            .unwrap_or_else(|poisoned| poisoned.into_inner());
                    }
                }
            }
        };
        let queue_id = job.queue_id;
        // A panic in a model must not take the batch thread down; the requests of the batch
        // get an error when their reply senders are dropped.
        let _ = catch_unwind(AssertUnwindSafe(|| process(job)));
        lock(&shared.state).finished(queue_id);
        // More work may have become ready while this thread was busy.
        shared.wake.notify_one();
    }
}

/// Runs one batch: drops expired requests, merges the rest, runs the model once, splits the
/// outputs back.
fn process(job: Job) {
    let Job {
        owner, key, batch, ..
    } = job;
    let now = Instant::now();
    let mut tasks = Vec::with_capacity(batch.tasks.len());
    for task in batch.tasks {
        crate::metrics::record_queuing_latency(now.saturating_duration_since(task.enqueued));
        if task.cancelled.load(Ordering::Relaxed) || task.deadline.is_some_and(|d| d <= now) {
            task.send(Err(deadline_exceeded()));
        } else {
            tasks.push(task);
        }
    }
    if tasks.is_empty() {
        return;
    }
    let sizes: Vec<usize> = tasks.iter().map(|t| t.size).collect();
    // The batch runs until its last caller stops waiting (TF Serving's batch deadline): no
    // deadline if any caller has none, else the latest.
    let deadline = tasks
        .iter()
        .map(|task| task.deadline)
        .try_fold(now, |latest, deadline| deadline.map(|d| latest.max(d)));
    let result = crate::deadline::scope(deadline, || run_batch(&owner, &key, &mut tasks, &sizes));
    match result {
        Ok(per_task) => {
            for (task, outputs) in tasks.into_iter().zip(per_task) {
                task.send(Ok(outputs));
            }
        }
        Err(err) => {
            for task in tasks {
                task.send(Err(err.clone()));
            }
        }
    }
}

fn run_batch(
    owner: &Owner,
    key: &QueueKey,
    tasks: &mut [Task],
    sizes: &[usize],
) -> Result<Vec<Vec<Tensor>>> {
    let params = &owner.params;
    let size: usize = sizes.iter().sum();
    let padded = params.padded_size(size);
    crate::metrics::record_batch(size, padded);
    let mut feeds = Vec::with_capacity(key.feeds.len());
    for (j, name) in key.feeds.iter().enumerate() {
        let mut parts: Vec<Tensor> = tasks
            .iter_mut()
            .map(|task| std::mem::replace(&mut task.inputs[j], placeholder()))
            .collect();
        if params.pad_variable_length_inputs && parts.len() > 1 {
            parts = tensors::pad_to_widest(parts)?;
        }
        feeds.push((name.as_str(), tensors::concat(parts, padded - size)?));
    }
    let fetches: Vec<&str> = key.fetches.iter().map(String::as_str).collect();
    tracing::debug!(
        requests = sizes.len(),
        rows = size,
        padded,
        "running a batch"
    );
    let outputs = owner.model.run(feeds, &fetches)?;
    if outputs.len() != fetches.len() {
        return Err(Error::internal("Wrong number of batched output tensors"));
    }
    let mut per_task: Vec<Vec<Tensor>> = sizes
        .iter()
        .map(|_| Vec::with_capacity(outputs.len()))
        .collect();
    for output in outputs {
        if output.shape().first() != Some(&padded) {
            if output.shape().is_empty() {
                return Err(Error::failed_precondition(
                    "Batched output tensor has 0 dimensions",
                ));
            }
            return Err(Error::failed_precondition(
                "Batched output tensor's 0th dimension does not equal the sum of the 0th dimension sizes of the input tensors",
            ));
        }
        for (outputs, piece) in per_task.iter_mut().zip(tensors::split(output, sizes)?) {
            outputs.push(piece);
        }
    }
    Ok(per_task)
}

fn placeholder() -> Tensor {
    Tensor::vector(crate::tensor::TensorData::Float(Vec::new()))
}
