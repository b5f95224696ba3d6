//! What the REST port serves besides TF Serving's API calls, and the metrics of those calls:
//! - `GET /v1/health/live`: 200 while the process serves HTTP (Kubernetes liveness probe);
//! - `GET /v1/health/ready`: 200 once every configured model has an available version, 503
//!   (naming the models that have none) before that and while shutting down (readiness probe);
//! - the Prometheus metrics, at the path of `--monitoring_config_file`;
//! - with `--rest_api_enable_cors_support`, CORS headers on every response and preflights;
//! - for every call under `/v1/`: `requests_in_flight`, and for predict, classify and regress on
//!   known models `:tensorflow:serving:request_count` and (successes only) `request_latency`
//!   (entrypoint `REST`).

use std::sync::Arc;
use std::time::Instant;

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use oxserve_core::{metrics, Code};
use serde_json::json;

use super::path::{self, Action};
use super::{cors, handle, RestState};
use crate::memory_budget::Charge;

pub const LIVE_PATH: &str = "/v1/health/live";
pub const READY_PATH: &str = "/v1/health/ready";

/// The router's one handler: CORS (when enabled), health and metrics here, TF Serving's calls in
/// [`handle`].
pub async fn entry(
    State(state): State<Arc<RestState>>,
    Extension(charge): Extension<Charge>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Response {
    if !state.cors {
        return route(state, charge, method, uri, headers, body).await;
    }
    if method == Method::OPTIONS {
        return cors::preflight();
    }
    cors::with_headers(route(state, charge, method, uri, headers, body).await)
}

async fn route(
    state: Arc<RestState>,
    charge: Charge,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let path = uri.path();
    // Any method, as TF Serving registers its handler for the path alone.
    if let Some(prometheus) = state.prometheus.as_ref().filter(|p| path == p.path()) {
        return (
            [(
                header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8",
            )],
            prometheus.render(),
        )
            .into_response();
    }
    if method == Method::GET || method == Method::HEAD {
        if path.eq_ignore_ascii_case(LIVE_PATH) {
            return json_body(StatusCode::OK, &json!({ "live": true }));
        }
        if path.eq_ignore_ascii_case(READY_PATH) {
            return readiness(&state);
        }
    }
    if !path.to_ascii_lowercase().starts_with("/v1/") {
        return handle(state, charge, method, uri, headers, body).await;
    }
    let api = path::parse(method.as_str(), path)
        .ok()
        .flatten()
        .and_then(|route| {
            // TF Serving's REST label is the URL's verb, where gRPC's is the method name.
            let api = match route.action {
                Action::Predict => "predict",
                Action::Classify => "classify",
                Action::Regress => "regress",
                Action::Status | Action::Metadata => return None,
            };
            Some((route.model, api))
        });
    let _in_flight = metrics::request_in_flight("REST");
    let started = Instant::now();
    let manager = state.manager.clone();
    let response = handle(state, charge, method, uri, headers, body).await;
    // Only models the server knows get a label: clients cannot grow the registry at will.
    if let Some((model, api)) = api.filter(|(model, _)| manager.knows(model)) {
        let code = response_code(&response);
        metrics::record_request(&model, api, "REST", code, started.elapsed());
    }
    response
}

/// The TF status code of an answer: the one the handler attached to its error, else the one
/// the HTTP status stands for (`None` for success).
fn response_code(response: &Response) -> Option<Code> {
    if let Some(code) = response.extensions().get::<Code>() {
        return Some(*code);
    }
    let status = response.status();
    if status.is_success() {
        return None;
    }
    Some(match status {
        StatusCode::BAD_REQUEST | StatusCode::UNSUPPORTED_MEDIA_TYPE => Code::InvalidArgument,
        StatusCode::NOT_FOUND => Code::NotFound,
        StatusCode::PAYLOAD_TOO_LARGE | StatusCode::TOO_MANY_REQUESTS => Code::ResourceExhausted,
        StatusCode::GATEWAY_TIMEOUT => Code::DeadlineExceeded,
        StatusCode::SERVICE_UNAVAILABLE => Code::Unavailable,
        _ => Code::Unknown,
    })
}

fn json_body(status: StatusCode, value: &serde_json::Value) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        format!("{value}\n"),
    )
        .into_response()
}

fn readiness(state: &RestState) -> Response {
    if state
        .shutting_down
        .as_ref()
        .is_some_and(|stop| *stop.borrow())
    {
        return json_body(
            StatusCode::SERVICE_UNAVAILABLE,
            &json!({ "ready": false, "reason": "shutting down" }),
        );
    }
    if !state.manager.configured() {
        return json_body(
            StatusCode::SERVICE_UNAVAILABLE,
            &json!({ "ready": false, "reason": "the model configuration is not loaded yet" }),
        );
    }
    let unavailable = state.manager.unavailable_models();
    if unavailable.is_empty() {
        json_body(StatusCode::OK, &json!({ "ready": true }))
    } else {
        json_body(
            StatusCode::SERVICE_UNAVAILABLE,
            &json!({
                "ready": false,
                "reason": "some configured models have no available version",
                "unavailable_models": unavailable,
            }),
        )
    }
}
