//! Request bodies read into one buffer each, sized from `Content-Length` and reused.
//!
//! A fresh buffer of a megabyte is mapped anew by the allocator and page-faulted in, page by
//! page (glibc returns large freed blocks to the kernel): for a 1 MB JSON body that was 250 page
//! faults and more server CPU than receiving the bytes. Large bodies are therefore read into
//! buffers kept from earlier requests.
//!
//! A body must keep coming: one that stalls for [`BODY_IDLE_TIMEOUT`] ends the request.

use std::sync::Mutex;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{header, HeaderMap};
use tokio_stream::StreamExt;

/// Bodies announced smaller than this (or not announced) are collected into a buffer of their own.
const POOLED_FROM: usize = 64 * 1024;

/// At most this many buffers are kept, each of at most `MAX_POOLED` bytes (32 MiB in all).
const POOL_BUFFERS: usize = 8;
const MAX_POOLED: usize = 4 << 20;

/// How long a body may go without a byte arriving: a client that stops sending would otherwise
/// hold its connection (and its buffer) forever.
pub(super) const BODY_IDLE_TIMEOUT: Duration = Duration::from_secs(30);

static POOL: Mutex<Vec<Vec<u8>>> = Mutex::new(Vec::new());

/// Why a body could not be read.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum BodyError {
    /// Larger than the limit (announced or in fact).
    TooLarge,
    /// Not valid HTTP framing (a bad chunk size, say), or the connection closed before its end.
    Broken(String),
    /// No byte arrived for `BODY_IDLE_TIMEOUT`.
    Stalled,
    /// The request memory budget had no room for more (see `memory_budget`): its message.
    OverBudget(String),
}

/// The whole body, at most `limit` bytes.
pub(super) async fn read(
    headers: &HeaderMap,
    body: Body,
    limit: usize,
) -> Result<Bytes, BodyError> {
    read_within(headers, body, limit, BODY_IDLE_TIMEOUT).await
}

async fn read_within(
    headers: &HeaderMap,
    body: Body,
    limit: usize,
    idle: Duration,
) -> Result<Bytes, BodyError> {
    let announced = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<usize>().ok());
    match announced {
        Some(length) if length > limit => Err(BodyError::TooLarge),
        // An announced length is only a claim: memory beyond what a pooled buffer holds is taken
        // as the bytes arrive, so that idle connections announcing large bodies hold little.
        Some(length) if length >= POOLED_FROM => {
            let mut buf = Pooled::with_capacity(length.min(MAX_POOLED));
            collect(body, &mut buf.0, limit, idle).await?;
            Ok(Bytes::from_owner(buf))
        }
        // Below `POOLED_FROM` here, so the claim is taken at its word.
        _ => {
            let mut buf = Vec::with_capacity(announced.unwrap_or(0));
            collect(body, &mut buf, limit, idle).await?;
            Ok(Bytes::from(buf))
        }
    }
}

async fn collect(
    body: Body,
    buf: &mut Vec<u8>,
    limit: usize,
    idle: Duration,
) -> Result<(), BodyError> {
    let mut chunks = body.into_data_stream();
    while let Some(chunk) = tokio::time::timeout(idle, chunks.next())
        .await
        .map_err(|_| BodyError::Stalled)?
    {
        let chunk = chunk.map_err(broken_or_over_budget)?;
        if buf.len() + chunk.len() > limit {
            return Err(BodyError::TooLarge);
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(())
}

/// `memory_budget::ChargedBody` ends a body it has no room for with RESOURCE_EXHAUSTED; any
/// other error is the connection's.
fn broken_or_over_budget(err: axum::Error) -> BodyError {
    let err = err.into_inner();
    match err.downcast_ref::<tonic::Status>() {
        Some(status) if status.code() == tonic::Code::ResourceExhausted => {
            BodyError::OverBudget(status.message().to_string())
        }
        _ => BodyError::Broken(err.to_string()),
    }
}

/// A body buffer, back to the pool once the last `Bytes` of it is dropped.
struct Pooled(Vec<u8>);

impl Pooled {
    /// An empty buffer with room for `length` bytes: a kept one that has it if any.
    fn with_capacity(length: usize) -> Pooled {
        let kept = POOL.lock().ok().and_then(|mut pool| {
            let fits = pool.iter().position(|buf| buf.capacity() >= length);
            match fits {
                Some(i) => Some(pool.swap_remove(i)),
                None => pool.pop(),
            }
        });
        let mut buf = kept.unwrap_or_default();
        buf.reserve(length);
        Pooled(buf)
    }
}

impl AsRef<[u8]> for Pooled {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

impl Drop for Pooled {
    fn drop(&mut self) {
        if self.0.capacity() > MAX_POOLED {
            return;
        }
        let mut buf = std::mem::take(&mut self.0);
        buf.clear();
        if let Ok(mut pool) = POOL.lock() {
            if pool.len() < POOL_BUFFERS {
                pool.push(buf);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(length: usize) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(header::CONTENT_LENGTH, length.into());
        headers
    }

    /// Bodies of every size come back whole, buffers are reused, and a body over the limit is
    /// refused however it is announced.
    #[tokio::test]
    async fn bodies_are_read_whole_into_reused_buffers() {
        for round in 0..3u8 {
            for size in [0, 10, POOLED_FROM, 1 << 20, 3 << 20, MAX_POOLED + 1] {
                let text: Vec<u8> = (0..size).map(|i| (i % 251) as u8 ^ round).collect();
                let got = read(&headers(size), Body::from(text.clone()), 8 << 20).await;
                assert_eq!(got.as_deref(), Ok(&text[..]), "{size} bytes");
            }
        }
        let big = vec![b'x'; 200_000];
        let too_large = Err(BodyError::TooLarge);
        assert_eq!(
            read(&headers(big.len()), Body::from(big.clone()), 100_000).await,
            too_large
        );
        assert_eq!(
            read(&HeaderMap::new(), Body::from(big.clone()), 100_000).await,
            too_large
        );
        // Announced short, longer in fact.
        assert_eq!(
            read(&headers(POOLED_FROM), Body::from(big), 100_000).await,
            too_large
        );
    }

    /// A body that starts and then stops coming ends the request, whatever its announced size.
    #[tokio::test]
    async fn a_stalled_body_times_out() {
        for announced in [10, POOLED_FROM] {
            let first = tokio_stream::once(Ok::<_, std::io::Error>(Bytes::from_static(b"{\"in")));
            let body = Body::from_stream(first.chain(tokio_stream::pending()));
            let got = read_within(
                &headers(announced),
                body,
                1 << 20,
                Duration::from_millis(50),
            )
            .await;
            assert_eq!(got, Err(BodyError::Stalled), "{announced}");
        }
    }
}
