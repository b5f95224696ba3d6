//! The client's deadline (`grpc-timeout`), and its end answered as gRPC's C core answers it.
//!
//! tonic's server enforces `grpc-timeout` itself, outside every layer of ours, and ends an expired
//! call with CANCELLED ("Timeout expired"). gRPC's C core, TF Serving's transport, ends it with
//! DEADLINE_EXCEEDED, and clients see the server's status whenever it arrives before their own
//! timer fires (proxies that forward the deadline without enforcing it, clients on a busy machine),
//! so retry policies and alerts that tell the two apart must get the same code from oxserve.
//! [`DeadlineLayer`] sits right inside tonic's timeout and ends the call first: tokio's timers fire
//! on millisecond ticks and tonic polls the call before its own timer, so a timer of ours due a
//! millisecond before the deadline (or in the same tick as tonic's, at the latest) always wins.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tonic::body::Body;
use tonic::codegen::http::{HeaderMap, Request, Response};
use tonic::metadata::MetadataMap;
use tower::{Layer, Service};

use super::status;
use oxserve_core::Error;

/// The header gRPC over HTTP/2 carries the client's timeout in.
const GRPC_TIMEOUT: &str = "grpc-timeout";

/// How much earlier than the client's deadline [`DeadlineLayer`] ends a call: one tick of tokio's
/// timer, so that its timer never fires after tonic's.
pub const TIMER_TICK: Duration = Duration::from_millis(1);

/// The status of a call whose deadline passed.
pub fn deadline_exceeded() -> tonic::Status {
    status(Error::deadline_exceeded(
        "Deadline exceeded: the request did not complete within the client's gRPC deadline",
    ))
}

/// The client's timeout from a `grpc-timeout` value (up to 8 digits and a unit). A malformed
/// value is ignored, as if no deadline was set.
fn parse_timeout(value: &str) -> Option<Duration> {
    if value.len() < 2 || value.len() > 9 {
        return None;
    }
    let (amount, unit) = value.split_at(value.len() - 1);
    let amount: u64 = amount.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(amount * 3600),
        "M" => Duration::from_secs(amount * 60),
        "S" => Duration::from_secs(amount),
        "m" => Duration::from_millis(amount),
        "u" => Duration::from_micros(amount),
        "n" => Duration::from_nanos(amount),
        _ => return None,
    })
}

fn header_timeout(headers: &HeaderMap) -> Option<Duration> {
    parse_timeout(headers.get(GRPC_TIMEOUT)?.to_str().ok()?)
}

/// The client's deadline, from the `grpc-timeout` header of a call's metadata.
pub fn request_deadline(metadata: &MetadataMap) -> Option<Instant> {
    Instant::now().checked_add(header_timeout(metadata.as_ref())?)
}

/// Ends every call whose client deadline passes with DEADLINE_EXCEEDED (see the module).
#[derive(Clone, Copy, Debug, Default)]
pub struct DeadlineLayer;

impl<S> Layer<S> for DeadlineLayer {
    type Service = Deadline<S>;

    fn layer(&self, inner: S) -> Deadline<S> {
        Deadline { inner }
    }
}

/// The service [`DeadlineLayer`] makes.
#[derive(Clone, Debug)]
pub struct Deadline<S> {
    inner: S,
}

impl<S, B> Service<Request<B>> for Deadline<S>
where
    S: Service<Request<B>, Response = Response<Body>>,
    S::Future: Send + 'static,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let timeout = header_timeout(request.headers());
        let call = self.inner.call(request);
        match timeout {
            None => Box::pin(call),
            Some(timeout) => {
                let end = tokio::time::Instant::now() + timeout.saturating_sub(TIMER_TICK);
                Box::pin(async move {
                    match tokio::time::timeout_at(end, call).await {
                        Ok(answered) => answered,
                        Err(_) => Ok(deadline_exceeded().into_http()),
                    }
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::metadata::MetadataValue;

    #[test]
    fn grpc_timeout_header() {
        let mut metadata = MetadataMap::new();
        assert!(request_deadline(&metadata).is_none());
        metadata.insert(GRPC_TIMEOUT, MetadataValue::from_static("1500m"));
        let deadline = request_deadline(&metadata).unwrap();
        let left = deadline - Instant::now();
        assert!(left <= Duration::from_millis(1500) && left > Duration::from_millis(1000));
        metadata.insert(GRPC_TIMEOUT, MetadataValue::from_static("123456789S"));
        assert!(request_deadline(&metadata).is_none());
        metadata.insert(GRPC_TIMEOUT, MetadataValue::from_static("5x"));
        assert!(request_deadline(&metadata).is_none());
        assert_eq!(parse_timeout("2H"), Some(Duration::from_secs(7200)));
        assert_eq!(parse_timeout("7u"), Some(Duration::from_micros(7)));
        assert_eq!(parse_timeout("S"), None);
    }
}
