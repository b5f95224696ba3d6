//! `--rest_api_enable_cors_support`: lets a web page from any origin call the REST API. Every
//! response carries the CORS headers, and a browser's preflight (`OPTIONS` before a JSON `POST`)
//! is answered 200 with them, whatever the path.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

const HEADERS: [(header::HeaderName, &str); 3] = [
    (header::ACCESS_CONTROL_ALLOW_ORIGIN, "*"),
    (header::ACCESS_CONTROL_ALLOW_METHODS, "POST, GET"),
    (header::ACCESS_CONTROL_ALLOW_HEADERS, "Content-Type"),
];

/// The answer to a preflight request.
pub fn preflight() -> Response {
    with_headers(StatusCode::OK.into_response())
}

/// `response` with the CORS headers.
pub fn with_headers(mut response: Response) -> Response {
    let headers = response.headers_mut();
    for (name, value) in HEADERS {
        headers.insert(name, HeaderValue::from_static(value));
    }
    response
}
