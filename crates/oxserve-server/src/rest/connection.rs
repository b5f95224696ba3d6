//! When a REST connection has stopped being useful and is closed: no request open for
//! [`IDLE_TIMEOUT`] (HTTP/1 keep-alive and HTTP/2 alike; a connection's first request counts
//! from its accept), or an answer its client has not taken any of for [`STALL_TIMEOUT`].
//!
//! HTTP/2 has no idle timer of its own in hyper (its pings only find peers that are gone), so
//! live but silent connections could use up the file descriptors. And an answer whose client
//! does not read it (a full TCP window over HTTP/1, a zero flow-control window over HTTP/2) holds
//! its bytes in memory for as long as the client likes, outside the request memory budget,
//! which is given back when the handler ends. TF Serving's libevent closes both kinds of
//! connection on its timeouts. A handler still working is not timed here: the request timeout
//! bounds it.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use bytes::Bytes;
use http_body::{Frame, SizeHint};
use tokio::time::Instant;

/// How long a connection may stay without an open request.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// How long an answer may wait for its client to take the next piece of it.
pub const STALL_TIMEOUT: Duration = Duration::from_secs(30);

/// The pieces an answer is handed to hyper in, so that taking each one is a sign of progress
/// (hyper asks for the next only when the previous is written, or fits the HTTP/2 window).
const PIECE: usize = 64 * 1024;

/// How often a connection's watcher looks at its activity: the timeouts are this precise.
const CHECK_INTERVAL: Duration = Duration::from_secs(1);

#[derive(Default)]
struct Counts {
    /// Requests between their arrival and the end of their answer.
    open: AtomicUsize,
    /// Of those, the ones whose answer is being written.
    answering: AtomicUsize,
    /// Arrivals, answers, pieces taken and ends so far: whether anything happened since the
    /// watcher last looked. Counters rather than wake-ups keep the request path to a few atomic
    /// additions.
    events: AtomicU64,
}

/// The activity of one connection, shared by its requests and its watcher.
#[derive(Clone)]
pub struct Activity(Arc<Counts>);

impl Activity {
    pub fn new() -> Activity {
        Activity(Arc::new(Counts::default()))
    }

    /// Counts a request open until the guard is dropped.
    pub fn open(&self) -> OpenRequest {
        self.0.open.fetch_add(1, Ordering::Relaxed);
        self.happened();
        OpenRequest {
            activity: self.clone(),
            answering: false,
        }
    }

    /// Resolves when the connection should be closed (never while a handler is at work: the
    /// request timeout bounds that).
    pub async fn unused(&self) {
        let mut events = self.0.events.load(Ordering::Relaxed);
        let mut since = Instant::now();
        loop {
            tokio::time::sleep(CHECK_INTERVAL).await;
            let now = self.0.events.load(Ordering::Relaxed);
            if now != events {
                (events, since) = (now, Instant::now());
                continue;
            }
            let limit = if self.0.open.load(Ordering::Relaxed) == 0 {
                IDLE_TIMEOUT
            } else if self.0.answering.load(Ordering::Relaxed) > 0 {
                STALL_TIMEOUT
            } else {
                continue;
            };
            if since.elapsed() >= limit {
                return;
            }
        }
    }

    fn happened(&self) {
        self.0.events.fetch_add(1, Ordering::Relaxed);
    }
}

/// One open request of a connection.
pub struct OpenRequest {
    activity: Activity,
    answering: bool,
}

impl OpenRequest {
    /// `body`, handed to hyper in pieces whose taking counts as progress; the request stays open
    /// until the body is dropped (written, or abandoned with its connection or stream).
    pub fn answer(mut self, body: Body) -> Body {
        self.activity.0.answering.fetch_add(1, Ordering::Relaxed);
        self.activity.happened();
        self.answering = true;
        Body::new(Answer {
            body,
            rest: Bytes::new(),
            request: self,
        })
    }
}

impl Drop for OpenRequest {
    fn drop(&mut self) {
        if self.answering {
            self.activity.0.answering.fetch_sub(1, Ordering::Relaxed);
        }
        self.activity.0.open.fetch_sub(1, Ordering::Relaxed);
        self.activity.happened();
    }
}

struct Answer {
    body: Body,
    /// What is left of a frame larger than a piece.
    rest: Bytes,
    request: OpenRequest,
}

impl Answer {
    fn piece(&mut self) -> Bytes {
        let n = self.rest.len().min(PIECE);
        self.rest.split_to(n)
    }
}

impl http_body::Body for Answer {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let this = &mut *self;
        this.request.activity.happened();
        if !this.rest.is_empty() {
            return Poll::Ready(Some(Ok(Frame::data(this.piece()))));
        }
        match Pin::new(&mut this.body).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                Ok(data) if data.len() > PIECE => {
                    this.rest = data;
                    Poll::Ready(Some(Ok(Frame::data(this.piece()))))
                }
                Ok(data) => Poll::Ready(Some(Ok(Frame::data(data)))),
                Err(frame) => Poll::Ready(Some(Ok(frame))),
            },
            other => other,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.rest.is_empty() && self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        let mut hint = self.body.size_hint();
        let rest = self.rest.len() as u64;
        hint.set_lower(hint.lower() + rest);
        if let Some(upper) = hint.upper() {
            hint.set_upper(upper + rest);
        }
        hint
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body::Body as _;
    use http_body_util::BodyExt;

    #[tokio::test]
    async fn answers_are_handed_over_in_pieces_and_keep_their_length() {
        let activity = Activity::new();
        let data = Bytes::from(vec![7u8; 3 * PIECE + 5]);
        let mut body = activity.open().answer(Body::from(data.clone()));
        assert_eq!(body.size_hint().exact(), Some(data.len() as u64));
        let mut sizes = Vec::new();
        let mut received = Vec::new();
        while let Some(frame) = body.frame().await {
            let frame = frame.unwrap().into_data().unwrap();
            sizes.push(frame.len());
            received.extend_from_slice(&frame);
        }
        assert_eq!(sizes, [PIECE, PIECE, PIECE, 5]);
        assert_eq!(received, data);
        assert_eq!(activity.0.open.load(Ordering::Relaxed), 1);
        drop(body);
        assert_eq!(activity.0.open.load(Ordering::Relaxed), 0);
        assert_eq!(activity.0.answering.load(Ordering::Relaxed), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_is_unused_when_idle_or_stalled_not_while_a_handler_works() {
        let activity = Activity::new();
        let started = tokio::time::Instant::now();
        activity.unused().await;
        assert_eq!(started.elapsed(), IDLE_TIMEOUT);

        let request = activity.open();
        let watcher = activity.clone();
        let unused = tokio::spawn(async move { watcher.unused().await });
        tokio::time::sleep(IDLE_TIMEOUT * 10).await;
        assert!(!unused.is_finished(), "closed while its handler worked");
        let answer = request.answer(Body::from(vec![0u8; 2 * PIECE]));
        let answered = tokio::time::Instant::now();
        unused.await.unwrap();
        assert!(answered.elapsed() >= STALL_TIMEOUT);
        assert!(answered.elapsed() <= STALL_TIMEOUT + 2 * CHECK_INTERVAL);
        drop(answer);
    }
}
