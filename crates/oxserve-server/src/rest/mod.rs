//! TensorFlow Serving's REST API: one handler that, like TF Serving's, matches the path against
//! its patterns, runs the call on the blocking pool and answers JSON or `{"error": "..."}`.

mod body;
mod connection;
mod cors;
pub mod json;
mod lifecycle;
mod path;
mod proto_json;
pub mod server;
pub mod status;

use std::io::Read;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{header, HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Router;
use oxserve_core::{Code, Error, ModelManager, ModelSpec, Result, VersionRequest};

use crate::memory_budget::{Charge, MemoryBudget, MemoryBudgetLayer};
use body::BodyError;
use path::{Action, Route};

/// TF Serving's cap on a request body, compressed or inflated.
pub const MAX_BODY_BYTES: usize = 100 << 20;

pub struct RestState {
    pub manager: Arc<ModelManager>,
    /// `--rest_api_timeout_in_ms`; `None` when 0 (no deadline).
    pub timeout: Option<Duration>,
    /// The Prometheus metrics and their path (`--monitoring_config_file`), when enabled.
    pub prometheus: Option<Arc<crate::metrics::Prometheus>>,
    /// Turns `true` when the server starts shutting down (readiness then answers 503).
    pub shutting_down: Option<tokio::sync::watch::Receiver<bool>>,
    /// `--rest_api_enable_cors_support`: CORS headers on every response, preflights answered.
    pub cors: bool,
    /// `--rest_api_num_threads`: at most this many requests are processed at once, as by TF
    /// Serving's HTTP handler threads; more wait their turn (within `timeout`).
    pub calls: Arc<tokio::sync::Semaphore>,
    /// `--max_request_bytes_in_flight`, shared with gRPC: bodies are charged to it.
    pub budget: Arc<MemoryBudget>,
}

pub use lifecycle::{LIVE_PATH, READY_PATH};

/// TF Serving's REST API, plus `GET /v1/models`, the health endpoints and the metrics path.
pub fn router(state: Arc<RestState>) -> Router {
    let budget = MemoryBudgetLayer(state.budget.clone());
    Router::new()
        .fallback(lifecycle::entry)
        .with_state(state)
        .layer(budget)
}

/// TF Serving's mapping of status codes to HTTP statuses (`http_server.cc`).
pub fn http_status(code: Code) -> StatusCode {
    match code {
        Code::Cancelled => StatusCode::from_u16(499).unwrap_or(StatusCode::BAD_REQUEST),
        Code::InvalidArgument | Code::FailedPrecondition | Code::OutOfRange => {
            StatusCode::BAD_REQUEST
        }
        Code::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
        Code::NotFound => StatusCode::NOT_FOUND,
        Code::AlreadyExists | Code::Aborted => StatusCode::CONFLICT,
        Code::PermissionDenied => StatusCode::FORBIDDEN,
        Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
        Code::Unimplemented => StatusCode::NOT_IMPLEMENTED,
        Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        Code::Unauthenticated => StatusCode::UNAUTHORIZED,
        Code::Unknown | Code::Internal | Code::DataLoss => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

fn json_response(status: StatusCode, body: Vec<u8>) -> Response {
    (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

/// `{"error": "..."}` as TF Serving writes it (`MakeJsonFromStatus`).
pub fn error_response(status: StatusCode, message: &str) -> Response {
    json_response(status, json::write_error_response(message))
}

fn error_to_response(err: &Error) -> Response {
    let mut response = error_response(http_status(err.code), &err.message);
    // For the request metrics: the code itself, which the HTTP status does not always tell.
    response.extensions_mut().insert(err.code);
    response
}

pub(crate) async fn handle(
    state: Arc<RestState>,
    charge: Charge,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let path = uri.path().to_string();
    if !path.to_ascii_lowercase().starts_with("/v1/") {
        return error_response(StatusCode::NOT_FOUND, &format!("Not found: {path}"));
    }
    let body = match body::read(&headers, body, MAX_BODY_BYTES).await {
        Ok(body) => body,
        Err(BodyError::TooLarge) => {
            return error_response(
                StatusCode::PAYLOAD_TOO_LARGE,
                &format!("Request body is larger than {MAX_BODY_BYTES} bytes"),
            )
        }
        Err(BodyError::Broken(err)) => {
            return error_response(
                StatusCode::BAD_REQUEST,
                &format!("Could not read the request body: {err}"),
            )
        }
        Err(BodyError::OverBudget(message)) => {
            return error_response(http_status(Code::ResourceExhausted), &message)
        }
        Err(BodyError::Stalled) => {
            return error_response(
                StatusCode::REQUEST_TIMEOUT,
                &format!(
                    "The request body stopped arriving: nothing for {} s",
                    body::BODY_IDLE_TIMEOUT.as_secs()
                ),
            )
        }
    };
    let body = match inflate(&headers, body, &charge).await {
        Ok(body) => body,
        Err(response) => return *response,
    };
    let manager = state.manager.clone();
    let method_name = method.as_str().to_string();
    // The deadline also bounds the wait in a batching queue (see `oxserve_core::deadline`).
    let deadline = state
        .timeout
        .and_then(|limit| std::time::Instant::now().checked_add(limit));
    let calls = state.calls.clone();
    let work = async move {
        // The slot is held until the work ends, even when the client was answered 504 before:
        // timed-out calls do not make room for more work than the cores can do. A call waiting
        // in a batching queue gives it back, so that the limit does not cap the batches.
        let slot = calls.acquire_owned().await;
        // The call's charge (its body and what that decodes into) moves into the work and is
        // given back when the work ends, answered or not.
        tokio::task::spawn_blocking(move || {
            oxserve_core::batching::release_when_queued(
                move || drop(slot),
                || {
                    oxserve_core::deadline::scope(deadline, || {
                        charge.enter(|| process(&manager, &charge, &method_name, &path, &body))
                    })
                },
            )
        })
        .await
    };
    let joined = match state.timeout {
        Some(limit) => match tokio::time::timeout(limit, work).await {
            Ok(joined) => joined,
            Err(_) => {
                return error_to_response(&Error::deadline_exceeded(format!(
                    "Request did not complete within --rest_api_timeout_in_ms ({} ms)",
                    limit.as_millis()
                )))
            }
        },
        None => work.await,
    };
    match joined {
        Ok(Ok(body)) => json_response(StatusCode::OK, body),
        Ok(Err(err)) => error_to_response(&err),
        Err(join_error) => error_to_response(&Error::internal(format!(
            "request handler failed: {join_error}"
        ))),
    }
}

/// Undoes `Content-Encoding: gzip` on the blocking pool, so that a large inflation does not hold
/// up the other connections' I/O.
async fn inflate(
    headers: &HeaderMap,
    body: Bytes,
    charge: &Charge,
) -> std::result::Result<Bytes, Box<Response>> {
    let encoding = headers
        .get(header::CONTENT_ENCODING)
        .and_then(|value| value.to_str().ok())
        .map(|value| value.trim().to_ascii_lowercase());
    match encoding.as_deref() {
        None | Some("") | Some("identity") => Ok(body),
        // TF Serving inflates only a body there is (a GET may carry the header).
        Some("gzip" | "x-gzip") if body.is_empty() => Ok(body),
        Some("gzip" | "x-gzip") => {
            let charge = charge.clone();
            match tokio::task::spawn_blocking(move || inflate_gzip(&body, &charge)).await {
                Ok(inflated) => inflated,
                Err(join_error) => Err(Box::new(error_to_response(&Error::internal(format!(
                    "inflating the request body failed: {join_error}"
                ))))),
            }
        }
        Some(other) => Err(Box::new(error_response(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            &format!("Unsupported Content-Encoding: {other}"),
        ))),
    }
}

/// How much inflated data is read at a time: each piece is charged before the buffer grows.
const INFLATE_CHUNK: usize = 64 << 10;

/// Inflates a gzip body, at most [`MAX_BODY_BYTES`] of it, charging the call for its buffer as
/// the buffer grows: a small body that inflates to a lot is refused once the budget is spent,
/// not after the whole of it has been allocated.
#[allow(clippy::result_large_err)]
fn inflate_gzip(body: &[u8], charge: &Charge) -> std::result::Result<Bytes, Box<Response>> {
    let mut decoder = flate2::read::MultiGzDecoder::new(body);
    let mut inflated = Vec::new();
    let mut chunk = vec![0u8; INFLATE_CHUNK];
    loop {
        let n = match decoder.read(&mut chunk) {
            Ok(0) => return Ok(Bytes::from(inflated)),
            Ok(n) => n,
            Err(err) if err.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(err) => {
                return Err(Box::new(error_response(
                    StatusCode::BAD_REQUEST,
                    &format!("Failed to decompress gzip request body: {err}"),
                )))
            }
        };
        let needed = inflated.len() + n;
        if needed > MAX_BODY_BYTES {
            return Err(Box::new(error_response(
                StatusCode::PAYLOAD_TOO_LARGE,
                &format!("Request body inflates to more than {MAX_BODY_BYTES} bytes"),
            )));
        }
        if needed > inflated.capacity() {
            let grown = needed.max(inflated.capacity() * 2).min(MAX_BODY_BYTES);
            if let Err(status) = charge.take(grown - inflated.capacity()) {
                return Err(Box::new(error_response(
                    http_status(Code::ResourceExhausted),
                    status.message(),
                )));
            }
            inflated.reserve_exact(grown - inflated.len());
        }
        inflated.extend_from_slice(&chunk[..n]);
    }
}

/// Runs one REST call. Blocks: called on the blocking pool.
fn process(
    manager: &ModelManager,
    charge: &Charge,
    method: &str,
    path: &str,
    body: &Bytes,
) -> Result<Vec<u8>> {
    let route = path::parse(method, path)?
        .ok_or_else(|| Error::invalid_argument(format!("Malformed request: {method} {path}")))?;
    let Route {
        model,
        version,
        action,
    } = route;
    if model.is_empty() {
        if action == Action::Status && version == VersionRequest::Latest {
            // `GET /v1/models`: every model (TF Serving has no such call; its issue #795).
            return Ok(status::models_json(&manager.models()));
        }
        return Err(Error::invalid_argument("Missing model name in request."));
    }
    let spec = ModelSpec {
        name: model,
        version,
    };
    match action {
        Action::Status => {
            // A label is not resolved: every version's status, as TF Serving's
            // `GetModelStatusWithModelSpec` (and the gRPC call) answers.
            let version = match &spec.version {
                VersionRequest::Latest | VersionRequest::Label(_) => None,
                VersionRequest::Specific(v) => Some(*v),
            };
            Ok(status::status_json(&manager.status(&spec.name, version)?))
        }
        Action::Metadata => {
            let servable = manager.servable(&spec)?;
            Ok(status::metadata_json(
                &spec.name,
                servable.version,
                servable.signature_defs(),
            ))
        }
        Action::Predict => {
            let servable = manager.servable(&spec)?;
            let request = json::parse_shared_predict_request(body, |name| {
                let key = oxserve_core::signature::signature_key(name);
                servable.signatures().get(key).ok_or_else(|| {
                    Error::invalid_argument(format!(
                        "Serving signature name: \"{key}\" not found in signature def"
                    ))
                })
            })?;
            // Up to 16 times the body for strings (`[""]` is 3 bytes, two 24-byte strings).
            charge.hold_tensors(request.inputs.iter().map(|(_, t)| t))?;
            let outputs = servable.predict(&request.signature_name, request.inputs, &[])?;
            json::write_predict_response(&outputs, request.format)
        }
        Action::Classify => {
            let servable = manager.servable(&spec)?;
            let request = json::parse_example_request(body)?;
            charge.hold_examples(request.context.as_ref(), &request.examples)?;
            let results = oxserve_core::inference::classify(
                &servable,
                &request.signature_name,
                request.context.as_ref(),
                &request.examples,
            )?;
            Ok(json::write_classify_response(&results))
        }
        Action::Regress => {
            let servable = manager.servable(&spec)?;
            let request = json::parse_example_request(body)?;
            charge.hold_examples(request.context.as_ref(), &request.examples)?;
            let results = oxserve_core::inference::regress(
                &servable,
                &request.signature_name,
                request.context.as_ref(),
                &request.examples,
            )?;
            Ok(json::write_regress_response(&results))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_statuses_are_tf_servings() {
        // ToHTTPStatusCode in TF Serving's http_server.cc, code by code.
        let table = [
            (Code::Cancelled, 499),
            (Code::Unknown, 500),
            (Code::InvalidArgument, 400),
            (Code::DeadlineExceeded, 504),
            (Code::NotFound, 404),
            (Code::AlreadyExists, 409),
            (Code::PermissionDenied, 403),
            (Code::ResourceExhausted, 429),
            (Code::FailedPrecondition, 400),
            (Code::Aborted, 409),
            (Code::OutOfRange, 400),
            (Code::Unimplemented, 501),
            (Code::Internal, 500),
            (Code::Unavailable, 503),
            (Code::DataLoss, 500),
            (Code::Unauthenticated, 401),
        ];
        for (code, status) in table {
            assert_eq!(http_status(code).as_u16(), status, "{code:?}");
        }
    }
}
