//! `tensorflow.serving.PredictionService` and `tensorflow.serving.ModelService`: each call turns
//! the request into oxserve-core calls and the results back into TF Serving's response messages,
//! checking requests in the order TF Serving does so that the first error reported is the same.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Instant;

use oxserve_core::inference::{self, Class, TaskResult};
use oxserve_core::signature::{join_keys, signature_key};
use oxserve_core::{Error, ModelManager, Result, VersionRequest, VersionState};
use oxserve_proto::tensorflow::serving::{
    self as pb, input, model_service_server::ModelService, model_spec::VersionChoice,
    prediction_service_server::PredictionService,
};
use oxserve_proto::tensorflow::Example;
use tokio::runtime::Handle;
use tokio::sync::{Semaphore, TryAcquireError};
use tokio::task::JoinHandle;
use tonic::{Request, Response, Status};

use super::deadline::{deadline_exceeded, request_deadline};
use super::{status, tensor};
use crate::memory_budget::{Charge, MemoryBudget};

/// The only `metadata_field` TF Serving knows.
const SIGNATURE_DEF: &str = "signature_def";

/// Serves both services; cheap to clone.
#[derive(Clone)]
pub struct Handler {
    manager: Arc<ModelManager>,
    /// `--grpc_max_threads`: model calls running (or queued on the blocking pool) at once; a
    /// call waiting in a batching queue does not count.
    limiter: Arc<Semaphore>,
    /// `--enable_serialization_as_tensor_content`.
    tensor_content: bool,
    /// The runtime whose blocking pool runs model calls: the server's, shared with REST, not the
    /// gRPC I/O thread's the call arrives on. `None`: the calling task's runtime.
    blocking: Option<Handle>,
}

impl Handler {
    /// Model calls will run on the blocking pool of the runtime this is called from, if any.
    pub fn new(
        manager: Arc<ModelManager>,
        max_concurrent_calls: usize,
        tensor_content: bool,
    ) -> Self {
        Handler {
            manager,
            limiter: Arc::new(Semaphore::new(max_concurrent_calls.max(1))),
            tensor_content,
            blocking: Handle::try_current().ok(),
        }
    }

    fn spawn_blocking<T, F>(&self, work: F) -> JoinHandle<T>
    where
        T: Send + 'static,
        F: FnOnce() -> T + Send + 'static,
    {
        match &self.blocking {
            Some(handle) => handle.spawn_blocking(work),
            None => tokio::task::spawn_blocking(work),
        }
    }

    /// Runs `work` on the blocking pool, within the client's deadline (TF Serving passes the
    /// remaining time to `Session::Run` as its timeout). Work whose deadline passed while it
    /// waited for a slot or a thread is not started.
    ///
    /// One timer for the whole call (tonic adds its own for `grpc-timeout`), and no waiting for a
    /// free slot: registering a timer due before the runtime's next wake-up wakes its driver.
    async fn run<Req, Resp, F>(
        &self,
        request: Request<Req>,
        deadline: Option<Instant>,
        work: F,
    ) -> Result<Response<Resp>, Status>
    where
        Req: Send + 'static,
        Resp: Send + 'static,
        F: FnOnce(&ModelManager, &Charge, Req) -> Result<Resp> + Send + 'static,
    {
        // The request's bytes stay charged until the work ends, even after a DEADLINE_EXCEEDED.
        let charge = request
            .extensions()
            .get::<Charge>()
            .cloned()
            .unwrap_or_else(|| MemoryBudget::new(0).charge());
        let message = request.into_inner();
        let expired = async {
            match deadline {
                Some(deadline) => tokio::time::sleep_until(deadline.into()).await,
                None => std::future::pending().await,
            }
        };
        tokio::pin!(expired);
        let shutting_down = || Status::unavailable("the server is shutting down");
        let permit = match self.limiter.clone().try_acquire_owned() {
            Ok(permit) => permit,
            Err(TryAcquireError::Closed) => return Err(shutting_down()),
            Err(TryAcquireError::NoPermits) => tokio::select! {
                biased;
                permit = self.limiter.clone().acquire_owned() => {
                    permit.map_err(|_| shutting_down())?
                }
                () = &mut expired => return Err(deadline_exceeded()),
            },
        };
        let manager = self.manager.clone();
        let task = self.spawn_blocking(move || {
            if deadline.is_some_and(|deadline| Instant::now() >= deadline) {
                return Err(Error::deadline_exceeded(
                    "Deadline exceeded before the model ran",
                ));
            }
            // The batcher reads the deadline from the thread: a call that expires in its queue
            // is left out of the batch. A call waiting in a batching queue is not running: its
            // slot goes to the next call, so that `--grpc_max_threads` does not cap the batches.
            oxserve_core::batching::release_when_queued(
                move || drop(permit),
                || oxserve_core::deadline::scope(deadline, || work(&manager, &charge, message)),
            )
        });
        let joined = tokio::select! {
            biased;
            joined = task => joined,
            () = &mut expired => return Err(deadline_exceeded()),
        };
        match joined {
            Ok(result) => result.map(Response::new).map_err(status),
            Err(join_error) => Err(status(Error::internal(format!(
                "request handler failed: {join_error}"
            )))),
        }
    }
}

fn missing_model_spec() -> Error {
    Error::invalid_argument("Missing ModelSpec")
}

/// The core request for a `ModelSpec`, after TF Serving's `ServableRequestFromModelSpec`.
fn core_spec(spec: &pb::ModelSpec) -> Result<oxserve_core::ModelSpec> {
    if spec.name.is_empty() {
        return Err(Error::invalid_argument("ModelSpec has no name specified."));
    }
    let version = match &spec.version_choice {
        Some(VersionChoice::Version(version)) => VersionRequest::Specific(*version),
        Some(VersionChoice::VersionLabel(label)) => VersionRequest::Label(label.clone()),
        None => VersionRequest::Latest,
    };
    Ok(oxserve_core::ModelSpec {
        name: spec.name.clone(),
        version,
    })
}

/// TF Serving's `MakeModelSpec`: the signature name, when given, with the default filled in.
fn response_spec(name: &str, signature_name: Option<&str>, version: i64) -> pb::ModelSpec {
    pb::ModelSpec {
        name: name.to_string(),
        signature_name: signature_name
            .map(|s| signature_key(s).to_string())
            .unwrap_or_default(),
        version_choice: Some(VersionChoice::Version(version)),
    }
}

/// The request's context and examples, charged for what serializing them will hold
/// ([`Charge::hold_examples`]). Tasks of a MultiInference call serialize them one after another:
/// charged once.
fn examples_of(
    charge: &Charge,
    input: Option<pb::Input>,
) -> Result<(Option<Example>, Vec<Example>)> {
    let (context, examples) = match input.and_then(|input| input.kind) {
        Some(input::Kind::ExampleList(list)) => (None, list.examples),
        Some(input::Kind::ExampleListWithContext(list)) => (list.context, list.examples),
        None => (None, Vec::new()),
    };
    charge.hold_examples(context.as_ref(), &examples)?;
    Ok((context, examples))
}

fn sorted_keys<V>(map: &HashMap<String, V>) -> String {
    let keys: BTreeSet<&str> = map.keys().map(String::as_str).collect();
    keys.into_iter().collect::<Vec<_>>().join(",")
}

/// TF Serving's `RunPredict`: input checks of `VerifyRequestInputsSize` and `GetInputValues`, in
/// signature order (an input the request leaves out takes the signature's default value), before
/// the output filter and the run.
fn predict(
    manager: &ModelManager,
    charge: &Charge,
    request: pb::PredictRequest,
    tensor_content: bool,
) -> Result<pb::PredictResponse> {
    let pb::PredictRequest {
        model_spec,
        mut inputs,
        output_filter,
        ..
    } = request;
    let spec = model_spec.ok_or_else(missing_model_spec)?;
    let servable = manager.servable(&core_spec(&spec)?)?;
    let key = signature_key(&spec.signature_name);
    let signature = servable.signature(key)?;
    oxserve_core::signature::check_prediction_method(signature)?;
    let aliases: Vec<&str> = inputs.keys().map(String::as_str).collect();
    oxserve_core::servable::check_input_count(signature, &aliases)?;
    let request_keys = sorted_keys(&inputs);
    let mut tensors = Vec::with_capacity(signature.inputs.len());
    let mut used = Vec::with_capacity(inputs.len());
    for (alias, info) in &signature.inputs {
        let proto = match inputs.remove(alias) {
            Some(proto) => {
                used.push(alias.as_str());
                proto
            }
            None => signature.defaults.get(alias).cloned().ok_or_else(|| {
                Error::invalid_argument(format!(
                    "Signature input alias: {alias}(feed name: {}) not found in request and no default value provided. Inputs expected to be in the request {{{request_keys}}}, or default input alias set: {}",
                    info.name,
                    join_keys(&signature.defaults)
                ))
            })?,
        };
        tensors.push((alias.clone(), tensor::parse_input(alias, proto)?));
    }
    if !inputs.is_empty() {
        return Err(Error::invalid_argument(format!(
            "Inputs contains invalid name. Used request inputs: {}, request input: {request_keys}",
            used.join(",")
        )));
    }
    charge.hold_tensors(tensors.iter().map(|(_, t)| t))?;
    let outputs = servable.predict(key, tensors, &output_filter)?;
    Ok(pb::PredictResponse {
        model_spec: Some(response_spec(&spec.name, Some(key), servable.version)),
        outputs: outputs
            .into_iter()
            .map(|(alias, tensor)| (alias, tensor::tensor_to_proto(tensor, tensor_content)))
            .collect(),
    })
}

fn classification_result(results: Vec<Vec<Class>>) -> pb::ClassificationResult {
    pb::ClassificationResult {
        classifications: results
            .into_iter()
            .map(|classes| pb::Classifications {
                classes: classes
                    .into_iter()
                    .map(|class| pb::Class {
                        label: class.label,
                        score: class.score,
                    })
                    .collect(),
            })
            .collect(),
    }
}

fn regression_result(values: Vec<f32>) -> pb::RegressionResult {
    pb::RegressionResult {
        regressions: values
            .into_iter()
            .map(|value| pb::Regression { value })
            .collect(),
    }
}

fn classify(
    manager: &ModelManager,
    charge: &Charge,
    request: pb::ClassificationRequest,
) -> Result<pb::ClassificationResponse> {
    let spec = request.model_spec.ok_or_else(missing_model_spec)?;
    let servable = manager.servable(&core_spec(&spec)?)?;
    let (context, examples) = examples_of(charge, request.input)?;
    let results =
        inference::classify(&servable, &spec.signature_name, context.as_ref(), &examples)?;
    Ok(pb::ClassificationResponse {
        model_spec: Some(response_spec(
            &spec.name,
            Some(&spec.signature_name),
            servable.version,
        )),
        result: Some(classification_result(results)),
    })
}

fn regress(
    manager: &ModelManager,
    charge: &Charge,
    request: pb::RegressionRequest,
) -> Result<pb::RegressionResponse> {
    let spec = request.model_spec.ok_or_else(missing_model_spec)?;
    let servable = manager.servable(&core_spec(&spec)?)?;
    let (context, examples) = examples_of(charge, request.input)?;
    let values = inference::regress(&servable, &spec.signature_name, context.as_ref(), &examples)?;
    Ok(pb::RegressionResponse {
        model_spec: Some(response_spec(
            &spec.name,
            Some(&spec.signature_name),
            servable.version,
        )),
        result: Some(regression_result(values)),
    })
}

/// TF Serving's `RunMultiInferenceWithServerCore`: the servable of the first task, TF Serving's
/// checks of every task, then one run of the model for all of them.
fn multi_inference(
    manager: &ModelManager,
    charge: &Charge,
    request: pb::MultiInferenceRequest,
) -> Result<pb::MultiInferenceResponse> {
    let first = request
        .tasks
        .first()
        .and_then(|task| task.model_spec.clone())
        .unwrap_or_default();
    let servable = manager.servable(&core_spec(&first)?)?;
    let (context, examples) = examples_of(charge, request.input)?;
    let answers =
        inference::multi_inference(&servable, &request.tasks, context.as_ref(), &examples)?;
    let results = request
        .tasks
        .iter()
        .zip(answers)
        .map(|(task, answer)| {
            let spec = inference::task_spec(task);
            pb::InferenceResult {
                model_spec: Some(response_spec(
                    &spec.name,
                    Some(&spec.signature_name),
                    servable.version,
                )),
                result: Some(match answer {
                    TaskResult::Classes(classes) => {
                        pb::inference_result::Result::ClassificationResult(classification_result(
                            classes,
                        ))
                    }
                    TaskResult::Values(values) => {
                        pb::inference_result::Result::RegressionResult(regression_result(values))
                    }
                }),
            }
        })
        .collect();
    Ok(pb::MultiInferenceResponse { results })
}

/// TF Serving's `GetModelMetadataImpl`: the request is checked before the model is looked up.
fn model_metadata(
    manager: &ModelManager,
    request: pb::GetModelMetadataRequest,
) -> Result<pb::GetModelMetadataResponse> {
    let spec = request.model_spec.ok_or_else(missing_model_spec)?;
    if request.metadata_field.is_empty() {
        return Err(Error::invalid_argument(
            "GetModelMetadataRequest must specify at least one metadata_field",
        ));
    }
    if let Some(field) = request.metadata_field.iter().find(|f| *f != SIGNATURE_DEF) {
        // Verbatim: TF Serving builds this message with StrCat, so the `%s` stays and the field
        // name follows it directly.
        return Err(Error::invalid_argument(format!(
            "Metadata field %s is not supported{field}"
        )));
    }
    let servable = manager.servable(&core_spec(&spec)?)?;
    let map = pb::SignatureDefMap {
        signature_def: servable.signature_defs(),
    };
    let any = prost_types::Any::from_msg(&map)
        .map_err(|err| Error::internal(format!("encoding SignatureDefMap: {err}")))?;
    Ok(pb::GetModelMetadataResponse {
        model_spec: Some(response_spec(&servable.name, None, servable.version)),
        metadata: [(SIGNATURE_DEF.to_string(), any)].into_iter().collect(),
    })
}

/// TF Serving's `GetModelStatusImpl`: one version when `version` is set, else every version
/// (a `version_label` is not resolved, as in TF Serving).
fn model_status(
    manager: &ModelManager,
    request: pb::GetModelStatusRequest,
) -> Result<pb::GetModelStatusResponse> {
    let spec = request.model_spec.ok_or_else(missing_model_spec)?;
    let version = match spec.version_choice {
        Some(VersionChoice::Version(version)) => Some(version),
        _ => None,
    };
    let statuses = manager.status(&spec.name, version)?;
    Ok(pb::GetModelStatusResponse {
        model_version_status: statuses
            .into_iter()
            .map(|status| pb::ModelVersionStatus {
                version: status.version,
                state: status.state.number(),
                status: Some(match status.error {
                    Some(err) => pb::StatusProto {
                        error_code: err.code as i32,
                        error_message: err.message,
                    },
                    None => pb::StatusProto::default(),
                }),
            })
            .collect(),
    })
}

/// Whether any version of `name` is available: `None` when the model is unknown.
pub fn model_available(manager: &ModelManager, name: &str) -> Option<bool> {
    let statuses = manager.status(name, None).ok()?;
    Some(statuses.iter().any(|s| s.state == VersionState::Available))
}

impl Handler {
    /// Counts a Predict, Classify or Regress call in TF Serving's request metrics: its status in
    /// `request_count`, and its time in `request_latency` when it succeeded. Only models the
    /// server knows get a label: clients cannot grow the registry at will.
    async fn measured<T>(
        &self,
        api: &'static str,
        spec: Option<&pb::ModelSpec>,
        deadline: Option<Instant>,
        call: impl std::future::Future<Output = Result<Response<T>, Status>>,
    ) -> Result<Response<T>, Status> {
        let model = spec.map(|spec| spec.name.clone()).unwrap_or_default();
        let record = self.manager.knows(&model).then(|| CallRecord {
            model,
            api,
            deadline,
            started: Instant::now(),
            recorded: false,
        });
        let result = in_flight(call).await;
        if let Some(mut record) = record {
            let code = result
                .as_ref()
                .err()
                .map(|status| oxserve_core::Code::from_i32(status.code() as i32));
            record.record(code);
        }
        result
    }
}

/// Counts a call in `requests_in_flight` while it runs.
async fn in_flight<T>(call: impl std::future::Future<Output = T>) -> T {
    let _in_flight = oxserve_core::metrics::request_in_flight("GRPC");
    call.await
}

/// The metrics of one measured call. When the deadline layer or a client's reset ends the call,
/// its future is dropped before it answers, and so is this: the call is counted then, as
/// DEADLINE_EXCEEDED (what the client was told) or CANCELLED, so that overload does not silence
/// the error counts.
struct CallRecord {
    model: String,
    api: &'static str,
    deadline: Option<Instant>,
    started: Instant,
    recorded: bool,
}

impl CallRecord {
    fn record(&mut self, code: Option<oxserve_core::Code>) {
        self.recorded = true;
        let elapsed = self.started.elapsed();
        oxserve_core::metrics::record_request(&self.model, self.api, "GRPC", code, elapsed);
    }
}

impl Drop for CallRecord {
    fn drop(&mut self) {
        if self.recorded {
            return;
        }
        // The deadline layer ends a call one timer tick before its deadline.
        let expired = self
            .deadline
            .is_some_and(|deadline| Instant::now() + super::deadline::TIMER_TICK >= deadline);
        self.record(Some(if expired {
            oxserve_core::Code::DeadlineExceeded
        } else {
            oxserve_core::Code::Cancelled
        }));
    }
}

#[tonic::async_trait]
impl PredictionService for Handler {
    async fn classify(
        &self,
        request: Request<pb::ClassificationRequest>,
    ) -> Result<Response<pb::ClassificationResponse>, Status> {
        let spec = request.get_ref().model_spec.clone();
        let deadline = request_deadline(request.metadata());
        let call = self.run(request, deadline, classify);
        self.measured("Classify", spec.as_ref(), deadline, call)
            .await
    }

    async fn regress(
        &self,
        request: Request<pb::RegressionRequest>,
    ) -> Result<Response<pb::RegressionResponse>, Status> {
        let spec = request.get_ref().model_spec.clone();
        let deadline = request_deadline(request.metadata());
        let call = self.run(request, deadline, regress);
        self.measured("Regress", spec.as_ref(), deadline, call)
            .await
    }

    async fn predict(
        &self,
        request: Request<pb::PredictRequest>,
    ) -> Result<Response<pb::PredictResponse>, Status> {
        let tensor_content = self.tensor_content;
        let spec = request.get_ref().model_spec.clone();
        let deadline = request_deadline(request.metadata());
        let call = self.run(request, deadline, move |manager, charge, request| {
            predict(manager, charge, request, tensor_content)
        });
        self.measured("Predict", spec.as_ref(), deadline, call)
            .await
    }

    async fn multi_inference(
        &self,
        request: Request<pb::MultiInferenceRequest>,
    ) -> Result<Response<pb::MultiInferenceResponse>, Status> {
        // Not in the request metrics: TF Serving records none for MultiInference.
        let deadline = request_deadline(request.metadata());
        in_flight(self.run(request, deadline, multi_inference)).await
    }

    /// Reads in-memory state only: answered on the async worker, outside the model-call limit.
    async fn get_model_metadata(
        &self,
        request: Request<pb::GetModelMetadataRequest>,
    ) -> Result<Response<pb::GetModelMetadataResponse>, Status> {
        // Not in the request metrics: TF Serving records none for GetModelMetadata.
        model_metadata(&self.manager, request.into_inner())
            .map(Response::new)
            .map_err(status)
    }
}

#[tonic::async_trait]
impl ModelService for Handler {
    /// Reads in-memory state only: answered on the async worker, outside the model-call limit.
    async fn get_model_status(
        &self,
        request: Request<pb::GetModelStatusRequest>,
    ) -> Result<Response<pb::GetModelStatusResponse>, Status> {
        model_status(&self.manager, request.into_inner())
            .map(Response::new)
            .map_err(status)
    }

    async fn handle_reload_config_request(
        &self,
        request: Request<pb::ReloadConfigRequest>,
    ) -> Result<Response<pb::ReloadConfigResponse>, Status> {
        let manager = self.manager.clone();
        let config = request.into_inner().config.unwrap_or_default();
        // Loading models blocks, and takes as long as it takes: no deadline, as in TF Serving.
        match self
            .spawn_blocking(move || reload_config(&manager, config))
            .await
        {
            Ok(result) => result.map(Response::new).map_err(status),
            Err(join_error) => Err(status(Error::internal(format!(
                "request handler failed: {join_error}"
            )))),
        }
    }
}

/// `HandleReloadConfigRequest`: replaces the served model set with the request's
/// `model_config_list`, the only kind of config TF Serving accepts here.
fn reload_config(
    manager: &ModelManager,
    config: pb::ModelServerConfig,
) -> Result<pb::ReloadConfigResponse> {
    let Some(pb::model_server_config::Config::ModelConfigList(_)) = &config.config else {
        return Err(Error::invalid_argument(
            "ServerModelConfig type not supported by HandleReloadConfigRequest. Only \
             ModelConfigList is currently supported",
        ));
    };
    manager.reload_config(config)?;
    Ok(pb::ReloadConfigResponse {
        status: Some(pb::StatusProto::default()),
        ..Default::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use oxserve_core::{Backend, Model, Tensor};
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::Duration;

    struct NoBackend;

    impl Backend for NoBackend {
        fn load(&self, _dir: &std::path::Path, _tags: &[String]) -> Result<Box<dyn Model>> {
            Err(Error::unimplemented("no models in this test"))
        }
    }

    /// The deadline of a call whose client gave it `millis` (its `grpc-timeout`).
    fn deadline_in(millis: u64) -> Option<Instant> {
        let mut request = Request::new(());
        let value = format!("{millis}m").parse().expect("ascii");
        request.metadata_mut().insert("grpc-timeout", value);
        request_deadline(request.metadata())
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn deadlines_bound_both_waiting_and_running() {
        let manager = Arc::new(ModelManager::new(Arc::new(NoBackend), Vec::new()));
        let handler = Handler::new(manager, 1, false);
        // A call running past its deadline is answered DEADLINE_EXCEEDED when the deadline passes.
        let started = Instant::now();
        let slow = handler.run(Request::new(()), deadline_in(100), |_, _, ()| {
            std::thread::sleep(Duration::from_millis(700));
            Ok(())
        });
        assert_eq!(
            slow.await.unwrap_err().code(),
            tonic::Code::DeadlineExceeded
        );
        assert!(started.elapsed() < Duration::from_millis(500));
        // The model call itself cannot be cut short and keeps its slot: a call that waits for the
        // slot past its own deadline is answered DEADLINE_EXCEEDED and never runs.
        let ran = Arc::new(AtomicBool::new(false));
        let flag = ran.clone();
        let queued = handler.run(Request::new(()), deadline_in(100), move |_, _, ()| {
            flag.store(true, Ordering::SeqCst);
            Ok(())
        });
        assert_eq!(
            queued.await.unwrap_err().code(),
            tonic::Code::DeadlineExceeded
        );
        // Without a deadline a call waits for its turn.
        let answer = handler
            .run(Request::new(()), None, |_, _, ()| Ok(42))
            .await
            .unwrap();
        assert_eq!(answer.into_inner(), 42);
        assert!(!ran.load(Ordering::SeqCst));
        // Core errors keep their code and message.
        let err = handler
            .run(Request::new(()), None, |_, _, ()| -> Result<()> {
                Err(Error::not_found("gone"))
            })
            .await
            .unwrap_err();
        assert_eq!((err.code(), err.message()), (tonic::Code::NotFound, "gone"));
    }

    /// Answers every run with its feeds; records the rows of each run.
    struct Echo {
        signatures: oxserve_core::SignatureMap,
        runs: Arc<std::sync::Mutex<Vec<usize>>>,
    }

    impl Model for Echo {
        fn signatures(&self) -> &oxserve_core::SignatureMap {
            &self.signatures
        }

        fn run(&self, feeds: Vec<(&str, Tensor)>, _fetches: &[&str]) -> Result<Vec<Tensor>> {
            let rows = feeds.first().map_or(0, |(_, t)| t.shape()[0]);
            self.runs.lock().unwrap().push(rows);
            Ok(feeds.into_iter().map(|(_, tensor)| tensor).collect())
        }
    }

    struct EchoBackend(Arc<std::sync::Mutex<Vec<usize>>>);

    impl Backend for EchoBackend {
        fn load(&self, _dir: &std::path::Path, _tags: &[String]) -> Result<Box<dyn Model>> {
            Ok(Box::new(Echo {
                signatures: Default::default(),
                runs: self.0.clone(),
            }))
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn calls_waiting_for_their_batch_give_their_slot_to_the_next_call() {
        use oxserve_core::batching::{BatchingBackend, BatchingParams};
        let runs = Arc::new(std::sync::Mutex::new(Vec::new()));
        // A batch runs when it holds 2 requests (the timeout only ends the test if it fails).
        let params = BatchingParams::parse(
            "max_batch_size { value: 2 } batch_timeout_micros { value: 10000000 } \
             num_batch_threads { value: 1 }",
            "test",
        )
        .unwrap();
        let backend = BatchingBackend::new(Arc::new(EchoBackend(runs.clone())), params).unwrap();
        let model: Arc<dyn Model> =
            Arc::from(backend.load(std::path::Path::new("-"), &[]).unwrap());
        let manager = Arc::new(ModelManager::new(Arc::new(NoBackend), Vec::new()));
        // One call slot: both calls meet in one batch only if the first gives it back while it
        // waits in the queue.
        let handler = Handler::new(manager, 1, false);
        let call = |value: f32| {
            let model = model.clone();
            handler.run(Request::new(()), None, move |_, _, ()| {
                let x = Tensor::new(vec![1], oxserve_core::TensorData::Float(vec![value]))?;
                model.run(vec![("x", x)], &["x"])
            })
        };
        let (a, b) = tokio::join!(call(1.0), call(2.0));
        let value = |answer: Result<Response<Vec<Tensor>>, Status>| {
            answer.unwrap().into_inner()[0].data().clone()
        };
        assert_eq!(value(a), oxserve_core::TensorData::Float(vec![1.0]));
        assert_eq!(value(b), oxserve_core::TensorData::Float(vec![2.0]));
        assert_eq!(*runs.lock().unwrap(), vec![2]);
    }

    #[test]
    fn model_spec_conversions() {
        let spec = pb::ModelSpec {
            name: "m".into(),
            signature_name: String::new(),
            version_choice: None,
        };
        assert_eq!(core_spec(&spec).unwrap().version, VersionRequest::Latest);
        let labelled = pb::ModelSpec {
            version_choice: Some(VersionChoice::VersionLabel("stable".into())),
            ..spec.clone()
        };
        assert_eq!(
            core_spec(&labelled).unwrap().version,
            VersionRequest::Label("stable".into())
        );
        let nameless = pb::ModelSpec::default();
        assert_eq!(
            core_spec(&nameless).unwrap_err().message,
            "ModelSpec has no name specified."
        );
        let echoed = response_spec("m", Some(""), 7);
        assert_eq!(echoed.signature_name, "serving_default");
        assert_eq!(echoed.version_choice, Some(VersionChoice::Version(7)));
        assert_eq!(response_spec("m", None, 7).signature_name, "");
    }
}
