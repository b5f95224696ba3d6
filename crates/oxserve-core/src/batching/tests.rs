//! The batcher against a fake model that records every run and can be held inside `run`, so
//! that tests decide which requests are queued together without relying on timing.

use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use super::*;
use crate::tensor::TensorData;
use crate::Code;

/// y = 2x + 1 on feed `x` (any shape), `label` echoes feed `s`, `scalar` is rank 0.
struct FakeModel {
    signatures: SignatureMap,
    /// The shapes of `x` of every run, in order.
    runs: Mutex<Vec<Vec<usize>>>,
    /// The request deadline each run saw ([`crate::deadline::current`]), in order.
    deadlines: Mutex<Vec<Option<Instant>>>,
    /// While set, each run reports on `entered` then waits for one message on `release`.
    gate: Mutex<Option<(Sender<()>, Receiver<()>)>>,
    fail: bool,
}

impl FakeModel {
    fn new() -> Arc<FakeModel> {
        Arc::new(FakeModel {
            signatures: SignatureMap::new(),
            runs: Mutex::new(Vec::new()),
            deadlines: Mutex::new(Vec::new()),
            gate: Mutex::new(None),
            fail: false,
        })
    }

    fn runs(&self) -> Vec<Vec<usize>> {
        self.runs.lock().unwrap().clone()
    }
}

/// Holds a `FakeModel`'s runs: `entered` tells that a run started, `release` lets one finish.
struct Gate {
    entered: Receiver<()>,
    release: Sender<()>,
}

fn gate(model: &FakeModel) -> Gate {
    let (entered_tx, entered) = channel();
    let (release, release_rx) = channel();
    *model.gate.lock().unwrap() = Some((entered_tx, release_rx));
    Gate { entered, release }
}

impl Model for FakeModel {
    fn signatures(&self) -> &SignatureMap {
        &self.signatures
    }

    fn run(&self, feeds: Vec<(&str, Tensor)>, fetches: &[&str]) -> Result<Vec<Tensor>> {
        let x = feeds
            .iter()
            .find(|(n, _)| *n == "x")
            .map(|(_, t)| t.clone());
        if let Some(x) = &x {
            self.runs.lock().unwrap().push(x.shape().to_vec());
        }
        self.deadlines
            .lock()
            .unwrap()
            .push(crate::deadline::current());
        if let Some((entered, release)) = &*self.gate.lock().unwrap() {
            entered.send(()).unwrap();
            release.recv().unwrap();
        }
        if self.fail {
            return Err(Error::internal("the model failed"));
        }
        fetches
            .iter()
            .map(|fetch| match *fetch {
                "y" => {
                    let x = x.clone().unwrap();
                    let TensorData::Float(v) = x.data() else {
                        panic!("x is float")
                    };
                    Tensor::new(
                        x.shape().to_vec(),
                        TensorData::Float(v.iter().map(|v| 2.0 * v + 1.0).collect()),
                    )
                }
                "label" => Ok(feeds.iter().find(|(n, _)| *n == "s").unwrap().1.clone()),
                "scalar" => Tensor::new(vec![], TensorData::Float(vec![1.0])),
                other => Err(Error::invalid_argument(format!("no tensor {other}"))),
            })
            .collect()
    }
}

struct FakeBackend {
    model: Arc<FakeModel>,
}

impl Backend for FakeBackend {
    fn load(&self, _dir: &Path, _tags: &[String]) -> Result<Box<dyn Model>> {
        Ok(Box::new(Shared(self.model.clone())))
    }
}

/// Lets a test keep its own `Arc` of the model a backend hands out.
struct Shared(Arc<FakeModel>);

impl Model for Shared {
    fn signatures(&self) -> &SignatureMap {
        self.0.signatures()
    }
    fn run(&self, feeds: Vec<(&str, Tensor)>, fetches: &[&str]) -> Result<Vec<Tensor>> {
        self.0.run(feeds, fetches)
    }
}

fn params(text: &str) -> BatchingParams {
    BatchingParams::parse(text, "test").unwrap()
}

fn batching(model: &Arc<FakeModel>, text: &str) -> Arc<BatchingModel> {
    let scheduler = Scheduler::new(1, "test").unwrap();
    let params = params(text);
    let scheduler = if params.num_batch_threads == 1 {
        scheduler
    } else {
        Scheduler::new(params.num_batch_threads, "test").unwrap()
    };
    let model = BatchingModel::new(Arc::new(Shared(model.clone())), params, "test", &scheduler);
    // The scheduler (and its batch threads) must outlive the model: leak it for the test.
    std::mem::forget(scheduler);
    Arc::new(model)
}

fn rows(values: &[f32], width: usize) -> Tensor {
    Tensor::new(
        vec![values.len() / width, width],
        TensorData::Float(values.to_vec()),
    )
    .unwrap()
}

fn expected(x: &Tensor) -> Tensor {
    let TensorData::Float(v) = x.data() else {
        unreachable!()
    };
    Tensor::new(
        x.shape().to_vec(),
        TensorData::Float(v.iter().map(|v| 2.0 * v + 1.0).collect()),
    )
    .unwrap()
}

/// Lets the run held at the gate finish and `more` batches after it, then drops the gate: a batch
/// more than expected fails (its run finds the gate gone) rather than waiting for ever.
fn release_batches(gate: Gate, more: usize) {
    for _ in 0..more {
        gate.release.send(()).unwrap();
        gate.entered
            .recv_timeout(Duration::from_secs(30))
            .expect("another batch");
    }
    gate.release.send(()).unwrap();
}

/// Runs `x` through `model` on a new thread.
fn spawn_run(model: &Arc<BatchingModel>, x: Tensor) -> thread::JoinHandle<Result<Vec<Tensor>>> {
    let model = model.clone();
    thread::spawn(move || model.run(vec![("x", x)], &["y"]))
}

/// Waits until the batch threads hold `count` queued tasks (not yet running).
fn wait_queued(model: &BatchingModel, count: usize) {
    for _ in 0..10_000 {
        if model.queued_requests() >= count {
            return;
        }
        thread::sleep(Duration::from_millis(1));
    }
    panic!("{count} tasks were never queued");
}

#[test]
fn concurrent_requests_get_exactly_their_own_rows() {
    let fake = FakeModel::new();
    let model = batching(
        &fake,
        "num_batch_threads { value: 1 } max_batch_size { value: 64 }",
    );
    let gate = gate(&fake);
    // The first request runs alone and holds the only batch thread...
    let first = rows(&[100.0], 1);
    let held = spawn_run(&model, first.clone());
    gate.entered.recv().unwrap();
    // ...while requests of different sizes queue behind it.
    let inputs: Vec<Tensor> = (0..5)
        .map(|i| {
            let n = i + 1;
            rows(
                &(0..n * 3).map(|k| (i * 100 + k) as f32).collect::<Vec<_>>(),
                3,
            )
        })
        .collect();
    let handles: Vec<_> = inputs
        .iter()
        .map(|x| spawn_run(&model, x.clone()))
        .collect();
    wait_queued(&model, inputs.len());
    gate.release.send(()).unwrap();
    gate.entered.recv().unwrap();
    gate.release.send(()).unwrap();
    assert_eq!(held.join().unwrap().unwrap(), vec![expected(&first)]);
    for (x, handle) in inputs.iter().zip(handles) {
        assert_eq!(handle.join().unwrap().unwrap(), vec![expected(x)]);
    }
    // One run for the first request, one for all the others together.
    assert_eq!(fake.runs(), vec![vec![1, 1], vec![15, 3]]);
}

#[test]
fn batches_are_padded_to_the_next_allowed_size() {
    let fake = FakeModel::new();
    let model = batching(
        &fake,
        "num_batch_threads { value: 1 } max_batch_size { value: 8 } allowed_batch_sizes: 2 allowed_batch_sizes: 4 allowed_batch_sizes: 8",
    );
    let gate = gate(&fake);
    let held = spawn_run(&model, rows(&[1.0], 1));
    gate.entered.recv().unwrap();
    let a = rows(&[1.0, 2.0], 1);
    let b = rows(&[3.0], 1);
    let ha = spawn_run(&model, a.clone());
    wait_queued(&model, 1);
    let hb = spawn_run(&model, b.clone());
    wait_queued(&model, 2);
    gate.release.send(()).unwrap();
    gate.entered.recv().unwrap();
    gate.release.send(()).unwrap();
    held.join().unwrap().unwrap();
    assert_eq!(ha.join().unwrap().unwrap(), vec![expected(&a)]);
    assert_eq!(hb.join().unwrap().unwrap(), vec![expected(&b)]);
    // 1 row padded to 2, then 2 + 1 rows padded to 4.
    assert_eq!(fake.runs(), vec![vec![2, 1], vec![4, 1]]);
}

#[test]
fn a_full_queue_refuses_at_once_with_unavailable() {
    let fake = FakeModel::new();
    let model = batching(
        &fake,
        "num_batch_threads { value: 1 } max_batch_size { value: 2 } max_enqueued_batches { value: 1 }",
    );
    let gate = gate(&fake);
    let held = spawn_run(&model, rows(&[1.0], 1));
    gate.entered.recv().unwrap();
    let queued = spawn_run(&model, rows(&[1.0, 2.0], 1));
    wait_queued(&model, 1);
    // The only batch the queue may hold is full.
    let err = model.run(vec![("x", rows(&[3.0], 1))], &["y"]).unwrap_err();
    assert_eq!(err.code, Code::Unavailable);
    assert_eq!(
        err.message,
        "The batch scheduling queue to which this task was submitted is full"
    );
    // Too large for any batch: INVALID_ARGUMENT, whatever the queue holds.
    let err = model
        .run(vec![("x", rows(&[1.0, 2.0, 3.0], 1))], &["y"])
        .unwrap_err();
    assert_eq!(err.code, Code::InvalidArgument);
    assert_eq!(
        err.message,
        "Task size 3 is larger than maximum input batch size 2"
    );
    gate.release.send(()).unwrap();
    gate.entered.recv().unwrap();
    gate.release.send(()).unwrap();
    held.join().unwrap().unwrap();
    queued.join().unwrap().unwrap();
}

#[test]
fn large_requests_are_split_with_large_batch_splitting() {
    let fake = FakeModel::new();
    let model = batching(
        &fake,
        "num_batch_threads { value: 1 } max_batch_size { value: 16 } enable_large_batch_splitting { value: true } max_execution_batch_size { value: 2 }",
    );
    let x = rows(&[1.0, 2.0, 3.0, 4.0, 5.0], 1);
    let out = model.run(vec![("x", x.clone())], &["y"]).unwrap();
    assert_eq!(out, vec![expected(&x)]);
    let mut sizes: Vec<usize> = fake.runs().iter().map(|shape| shape[0]).collect();
    sizes.sort();
    assert_eq!(sizes, [1, 2, 2]);
}

#[test]
fn unlimited_enqueued_batches_with_large_batch_splitting() {
    // i64::MAX batches of 4 rows: the queue's capacity does not fit in usize.
    let fake = FakeModel::new();
    let model = batching(
        &fake,
        "num_batch_threads { value: 1 } max_batch_size { value: 8 } enable_large_batch_splitting { value: true } max_execution_batch_size { value: 4 } max_enqueued_batches { value: 9223372036854775807 }",
    );
    let x = rows(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0], 1);
    let out = model.run(vec![("x", x.clone())], &["y"]).unwrap();
    assert_eq!(out, vec![expected(&x)]);
}

#[test]
fn padding_never_grows_a_batch_past_full_batches_of_its_widest_request() {
    let fake = FakeModel::new();
    let model = batching(
        &fake,
        "num_batch_threads { value: 1 } max_batch_size { value: 4 } pad_variable_length_inputs: true",
    );
    let gate = gate(&fake);
    let held = spawn_run(&model, rows(&[0.0], 1));
    gate.entered.recv().unwrap();
    let shaped = |shape: Vec<usize>| {
        let n = shape.iter().product::<usize>();
        Tensor::new(shape, TensorData::Float((0..n).map(|i| i as f32).collect())).unwrap()
    };
    // Wide in different dimensions: together they would pad to [3, 16, 16, 16], 12,288 elements,
    // where 4 rows of the widest hold 64.
    let inputs = [
        shaped(vec![1, 16, 1, 1]),
        shaped(vec![1, 1, 16, 1]),
        shaped(vec![1, 1, 1, 16]),
        // Narrower than the last one in every dimension: padded to [2, 1, 1, 16], it joins it.
        shaped(vec![1, 1, 1, 9]),
    ];
    let handles: Vec<_> = inputs
        .iter()
        .enumerate()
        .map(|(i, x)| {
            let handle = spawn_run(&model, x.clone());
            wait_queued(&model, i + 1);
            handle
        })
        .collect();
    release_batches(gate, 3);
    held.join().unwrap().unwrap();
    let outputs: Vec<_> = handles
        .into_iter()
        .map(|h| h.join().unwrap().unwrap())
        .collect();
    for (x, out) in inputs.iter().zip(&outputs).take(3) {
        assert_eq!(out, &vec![expected(x)]);
    }
    // The narrow request's row was padded with its first element to the batch's width.
    let mut padded = (0..9).map(|i| i as f32).collect::<Vec<_>>();
    padded.extend([0.0; 7]);
    assert_eq!(
        outputs[3],
        vec![expected(&shaped_from(&[1, 1, 1, 16], padded))]
    );
    assert_eq!(
        fake.runs(),
        vec![
            vec![1, 1],
            vec![1, 16, 1, 1],
            vec![1, 1, 16, 1],
            vec![2, 1, 1, 16]
        ]
    );
}

#[test]
fn padding_on_leaves_split_requests_of_one_shape_to_fill_the_open_batch() {
    let fake = FakeModel::new();
    let model = batching(
        &fake,
        "num_batch_threads { value: 1 } max_batch_size { value: 16 } enable_large_batch_splitting { value: true } max_execution_batch_size { value: 4 } pad_variable_length_inputs: true",
    );
    let gate = gate(&fake);
    let held = spawn_run(&model, rows(&[0.0], 1));
    gate.entered.recv().unwrap();
    let one = rows(&[1.0, 2.0], 2);
    let ten = rows(&(0..20).map(|i| i as f32).collect::<Vec<_>>(), 2);
    let h_one = spawn_run(&model, one.clone());
    wait_queued(&model, 1);
    let h_ten = spawn_run(&model, ten.clone());
    // The ten rows go in pieces of 3, 4 and 3: the first fills the open batch.
    wait_queued(&model, 4);
    release_batches(gate, 3);
    held.join().unwrap().unwrap();
    assert_eq!(h_one.join().unwrap().unwrap(), vec![expected(&one)]);
    assert_eq!(h_ten.join().unwrap().unwrap(), vec![expected(&ten)]);
    assert_eq!(
        fake.runs(),
        vec![vec![1, 1], vec![4, 2], vec![4, 2], vec![3, 2]]
    );
}

#[test]
fn the_pieces_of_a_split_request_padded_apart_are_joined_at_one_width() {
    // [3, 2] split into pieces of at most 2 rows, next to a [1, 5] request: whichever comes first,
    // one piece shares its batch (padded to width 5) and the other runs at width 2.
    let split = shaped_from(&[3, 2], (0..6).map(|i| i as f32).collect());
    let wide = shaped_from(&[1, 5], (10..15).map(|i| i as f32).collect());
    #[rustfmt::skip]
    let cases = [
        // The split request first: its 2-row piece runs alone; its last row is padded with 4.
        (true, vec![1.0, 3.0, 1.0, 1.0, 1.0, 5.0, 7.0, 1.0, 1.0, 1.0, 9.0, 11.0, 9.0, 9.0, 9.0]),
        // The wide request first: the split one's first row joins it, padded with 0.
        (false, vec![1.0, 3.0, 1.0, 1.0, 1.0, 5.0, 7.0, 5.0, 5.0, 5.0, 9.0, 11.0, 5.0, 5.0, 5.0]),
    ];
    for (split_first, want) in cases {
        let fake = FakeModel::new();
        let model = batching(
            &fake,
            "num_batch_threads { value: 1 } max_batch_size { value: 8 } enable_large_batch_splitting { value: true } max_execution_batch_size { value: 2 } pad_variable_length_inputs: true",
        );
        let gate = gate(&fake);
        let held = spawn_run(&model, rows(&[0.0], 1));
        gate.entered.recv().unwrap();
        let (first, second) = if split_first {
            (&split, &wide)
        } else {
            (&wide, &split)
        };
        let h_first = spawn_run(&model, first.clone());
        wait_queued(&model, if split_first { 2 } else { 1 });
        let h_second = spawn_run(&model, second.clone());
        wait_queued(&model, 3);
        release_batches(gate, 2);
        held.join().unwrap().unwrap();
        let (h_split, h_wide) = if split_first {
            (h_first, h_second)
        } else {
            (h_second, h_first)
        };
        let joined = h_split.join().unwrap().unwrap();
        assert_eq!(
            joined,
            vec![shaped_from(&[3, 5], want)],
            "split first: {split_first}"
        );
        assert_eq!(h_wide.join().unwrap().unwrap(), vec![expected(&wide)]);
    }
}

fn shaped_from(shape: &[usize], values: Vec<f32>) -> Tensor {
    Tensor::new(shape.to_vec(), TensorData::Float(values)).unwrap()
}

#[test]
fn different_shapes_are_not_merged_unless_padding_is_on() {
    for (pad, runs) in [
        (false, vec![vec![1, 1], vec![1, 2], vec![1, 3]]),
        (true, vec![vec![1, 1], vec![2, 3]]),
    ] {
        let fake = FakeModel::new();
        let model = batching(
            &fake,
            &format!("num_batch_threads {{ value: 1 }} pad_variable_length_inputs: {pad}"),
        );
        let gate = gate(&fake);
        let held = spawn_run(&model, rows(&[0.0], 1));
        gate.entered.recv().unwrap();
        let a = rows(&[1.0, 2.0], 2);
        let b = rows(&[3.0, 4.0, 5.0], 3);
        let ha = spawn_run(&model, a.clone());
        wait_queued(&model, 1);
        let hb = spawn_run(&model, b.clone());
        wait_queued(&model, 2);
        for _ in 0..runs.len() - 1 {
            gate.release.send(()).unwrap();
            gate.entered.recv().unwrap();
        }
        gate.release.send(()).unwrap();
        held.join().unwrap().unwrap();
        let out_a = ha.join().unwrap().unwrap();
        let out_b = hb.join().unwrap().unwrap();
        assert_eq!(out_b, vec![expected(&b)], "pad={pad}");
        if pad {
            // a's row was padded with its first element to the batch's width.
            assert_eq!(out_a, vec![expected(&rows(&[1.0, 2.0, 1.0], 3))]);
        } else {
            assert_eq!(out_a, vec![expected(&a)]);
        }
        let mut seen = fake.runs();
        seen.sort();
        assert_eq!(seen, runs, "pad={pad}");
    }
}

#[test]
fn a_request_whose_deadline_passes_in_the_queue_is_left_out() {
    let fake = FakeModel::new();
    let model = batching(&fake, "num_batch_threads { value: 1 }");
    let gate = gate(&fake);
    let held = spawn_run(&model, rows(&[1.0], 1));
    gate.entered.recv().unwrap();
    let late = {
        let model = model.clone();
        thread::spawn(move || {
            crate::deadline::scope(Some(Instant::now() + Duration::from_millis(20)), || {
                model.run(vec![("x", rows(&[7.0, 8.0], 1))], &["y"])
            })
        })
    };
    let err = late.join().unwrap().unwrap_err();
    assert_eq!(err.code, Code::DeadlineExceeded);
    gate.release.send(()).unwrap();
    held.join().unwrap().unwrap();
    *fake.gate.lock().unwrap() = None;
    // The expired request's batch was dropped without running the model.
    model.run(vec![("x", rows(&[2.0], 1))], &["y"]).ok();
    assert_eq!(fake.runs().iter().filter(|s| s[0] == 2).count(), 0);
    // A deadline already passed is refused before queueing.
    let err = crate::deadline::scope(Some(Instant::now()), || {
        model.run(vec![("x", rows(&[1.0], 1))], &["y"])
    })
    .unwrap_err();
    assert_eq!(err.code, Code::DeadlineExceeded);
}

#[test]
fn a_batch_runs_until_its_last_callers_deadline() {
    let fake = FakeModel::new();
    let model = batching(
        &fake,
        "num_batch_threads { value: 1 } max_batch_size { value: 8 }",
    );
    let now = Instant::now();
    let soon = now + Duration::from_secs(60);
    let later = now + Duration::from_secs(120);
    let run_with = |deadlines: &[Option<Instant>]| {
        let gate = gate(&fake);
        let held = spawn_run(&model, rows(&[0.0], 1));
        gate.entered.recv().unwrap();
        let handles: Vec<_> = deadlines
            .iter()
            .map(|&deadline| {
                let model = model.clone();
                thread::spawn(move || {
                    crate::deadline::scope(deadline, || {
                        model.run(vec![("x", rows(&[1.0], 1))], &["y"])
                    })
                })
            })
            .collect();
        wait_queued(&model, deadlines.len());
        gate.release.send(()).unwrap();
        gate.entered.recv().unwrap();
        gate.release.send(()).unwrap();
        held.join().unwrap().unwrap();
        for handle in handles {
            handle.join().unwrap().unwrap();
        }
        *fake.gate.lock().unwrap() = None;
        fake.deadlines.lock().unwrap().pop().unwrap()
    };
    assert_eq!(run_with(&[Some(later), Some(soon)]), Some(later));
    // A caller without a deadline waits as long as the batch takes.
    assert_eq!(run_with(&[Some(soon), None]), None);
}

#[test]
fn batching_run_checks_inputs_like_tf_serving() {
    let fake = FakeModel::new();
    let model = batching(&fake, "");
    let scalar = Tensor::new(vec![], TensorData::Float(vec![1.0])).unwrap();
    let err = model.run(vec![("x", scalar)], &["y"]).unwrap_err();
    assert_eq!(
        err.message,
        "Batching Run() input tensors must have at least one dimension"
    );
    let err = model
        .run(
            vec![
                ("x", rows(&[1.0, 2.0], 1)),
                ("s", Tensor::vector(TensorData::String(vec![b"a".to_vec()]))),
            ],
            &["y"],
        )
        .unwrap_err();
    assert_eq!(
        err.message,
        "Batching Run() input tensors must have equal 0th-dimension size"
    );
    let err = model.run(vec![], &["y"]).unwrap_err();
    assert_eq!(err.code, Code::InvalidArgument);
    // Outputs without a batch dimension cannot be split.
    let err = model
        .run(vec![("x", rows(&[1.0], 1))], &["scalar"])
        .unwrap_err();
    assert_eq!(err.code, Code::FailedPrecondition);
    // Several feeds and fetches, strings included, come back whole and in fetch order.
    let s = Tensor::vector(TensorData::String(vec![b"a".to_vec(), vec![0xff]]));
    let x = rows(&[1.0, 2.0], 1);
    let out = model
        .run(vec![("s", s.clone()), ("x", x.clone())], &["label", "y"])
        .unwrap();
    assert_eq!(out, vec![s, expected(&x)]);
    // An empty request runs as it is.
    let empty = Tensor::new(vec![0, 1], TensorData::Float(vec![])).unwrap();
    assert_eq!(
        model.run(vec![("x", empty.clone())], &["y"]).unwrap(),
        vec![empty]
    );
}

#[test]
fn model_errors_reach_every_request_of_the_batch() {
    let fake = Arc::new(FakeModel {
        fail: true,
        ..Arc::into_inner(FakeModel::new()).unwrap()
    });
    let model = batching(&fake, "");
    let err = model.run(vec![("x", rows(&[1.0], 1))], &["y"]).unwrap_err();
    assert_eq!(err.message, "the model failed");
}

#[test]
fn per_model_parameters_come_from_the_version_directory() {
    let fake = FakeModel::new();
    let backend = BatchingBackend::new(
        Arc::new(FakeBackend {
            model: fake.clone(),
        }),
        params("max_batch_size { value: 4 }"),
    )
    .unwrap()
    .with_per_model_parameters(true);
    let dir = tempfile::tempdir().unwrap();
    // No batching_params.pbtxt: the model is not batched (a 5-row request is fine).
    let model = backend.load(dir.path(), &[]).unwrap();
    assert!(model.run(vec![("x", rows(&[1.0; 5], 1))], &["y"]).is_ok());
    // The model's own parameters replace the server's.
    std::fs::write(
        dir.path().join(PER_MODEL_PARAMS_FILE),
        "max_batch_size { value: 2 }",
    )
    .unwrap();
    let model = backend.load(dir.path(), &[]).unwrap();
    let err = model
        .run(vec![("x", rows(&[1.0; 3], 1))], &["y"])
        .unwrap_err();
    assert_eq!(
        err.message,
        "Task size 3 is larger than maximum input batch size 2"
    );
    // A bad file fails the load, naming the file.
    std::fs::write(
        dir.path().join(PER_MODEL_PARAMS_FILE),
        "max_batch_size { value: 2 } allowed_batch_sizes: 4",
    )
    .unwrap();
    let err = backend.load(dir.path(), &[]).err().unwrap();
    assert!(err.message.contains(PER_MODEL_PARAMS_FILE), "{err}");
    assert!(
        err.message.contains("Last entry in allowed_batch_sizes"),
        "{err}"
    );
    // So does a directory of that name, as in TF Serving (it exists, and does not read).
    std::fs::remove_file(dir.path().join(PER_MODEL_PARAMS_FILE)).unwrap();
    std::fs::create_dir(dir.path().join(PER_MODEL_PARAMS_FILE)).unwrap();
    let err = backend.load(dir.path(), &[]).err().unwrap();
    assert!(err.message.contains(PER_MODEL_PARAMS_FILE), "{err}");
}

#[test]
fn a_queued_request_releases_its_callers_slot_before_its_batch_runs() {
    let fake = FakeModel::new();
    let model = batching(
        &fake,
        "num_batch_threads { value: 1 } max_batch_size { value: 8 }",
    );
    let gate = gate(&fake);
    let held = spawn_run(&model, rows(&[1.0], 1));
    gate.entered.recv().unwrap();
    // With the only batch thread held, a second request stays queued: its slot comes back
    // while it waits, and the request still gets its rows afterwards.
    let (released_tx, released) = channel();
    let waiting = {
        let model = model.clone();
        thread::spawn(move || {
            release_when_queued(
                move || released_tx.send(()).unwrap(),
                || model.run(vec![("x", rows(&[2.0], 1))], &["y"]),
            )
        })
    };
    released.recv().unwrap();
    assert_eq!(model.queued_requests(), 1);
    gate.release.send(()).unwrap();
    gate.entered.recv().unwrap();
    gate.release.send(()).unwrap();
    assert_eq!(
        held.join().unwrap().unwrap(),
        vec![expected(&rows(&[1.0], 1))]
    );
    assert_eq!(
        waiting.join().unwrap().unwrap(),
        vec![expected(&rows(&[2.0], 1))]
    );
}

#[test]
fn a_refused_request_keeps_its_callers_slot() {
    let fake = FakeModel::new();
    let model = batching(&fake, "max_batch_size { value: 1 }");
    let released = Arc::new(Mutex::new(false));
    let flag = released.clone();
    let result = release_when_queued(
        move || *flag.lock().unwrap() = true,
        || model.run(vec![("x", rows(&[1.0, 2.0], 1))], &["y"]),
    );
    assert_eq!(result.unwrap_err().code, Code::InvalidArgument);
    assert!(!*released.lock().unwrap());
}
