//! The REST listener: HTTP/1.1 (and HTTP/2 with prior knowledge) on hyper, with the timeouts
//! `axum::serve` does not set.
//!
//! Without them a client that opens connections and sends a partial request line, or nothing,
//! holds each one forever: enough of them use up the process's file descriptors, and then neither
//! REST nor gRPC accepts anything. TF Serving's HTTP server (libevent) closes such connections
//! after its read timeout. Here a connection without an open request is closed after
//! [`super::connection::IDLE_TIMEOUT`] (its first request counts from its accept, whatever the
//! protocol), as is one holding an answer its client stopped taking (see [`super::connection`]);
//! over HTTP/1 hyper also times each request's head; HTTP/2 connections are pinged and closed
//! when the peer is gone; and a body must keep coming (see `body::read`).
//!
//! Two answers are not ours to shape:
//! - A request head hyper cannot parse (headers over its buffer: 431, a URI over 65,534 bytes:
//!   414, a bad `Content-Length`: 400) is answered by hyper itself, with an empty body instead of
//!   TF Serving's `{"error": ...}`, and the connection closed: hyper 1 has no hook for these
//!   answers (`role::Server::on_error` builds them) and the request never reaches the router.
//! - Over HTTP/2 an early answer (a 413 for a body over the limit) is followed by RST_STREAM with
//!   NO_ERROR, which asks the client to stop sending (RFC 9113, 8.1: it must not discard the
//!   answer). Clients that discard it anyway, as curl 7.88 does, report a stream error; waiting
//!   for the rest of the body instead would take in up to the whole oversized body.

use std::convert::Infallible;
use std::future::Future;
use std::time::Duration;

use axum::http::Request;
use axum::response::Response;
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tower::ServiceExt;

use super::connection::Activity;

/// How long an HTTP/1 connection may take to send a request's head once it has started one.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// How often an HTTP/2 connection is pinged, and how long the answer may take before the
/// connection is closed.
const HTTP2_KEEP_ALIVE: Duration = Duration::from_secs(30);

/// How long to wait before accepting again after `accept` failed (out of file descriptors, say),
/// so that the loop does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(20);

/// Serves `router` on `listener` until `stopped` resolves, then waits for the connections to
/// finish their requests (each closes once its answer is written).
pub async fn serve(
    listener: TcpListener,
    router: Router,
    stopped: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        // A client that shuts down its sending side once its request is out (`nc -N`, some
        // probes) still gets the answer.
        .half_close(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(HTTP2_KEEP_ALIVE)
        .keep_alive_timeout(HTTP2_KEEP_ALIVE);
    let graceful = GracefulShutdown::new();
    tokio::pin!(stopped);
    loop {
        let (stream, _) = tokio::select! {
            () = &mut stopped => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    tracing::warn!("REST: accepting a connection failed: {err}");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            },
        };
        let activity = Activity::new();
        let requests = activity.clone();
        let service = TowerToHyperService::new(ServiceExt::<Request<Incoming>>::map_future(
            router.clone(),
            move |answering| {
                let request = requests.open();
                async move {
                    let answered: Result<Response, Infallible> = answering.await;
                    answered.map(|answer| answer.map(|body| request.answer(body)))
                }
            },
        ));
        let connection = builder
            .serve_connection_with_upgrades(TokioIo::new(stream), service)
            .into_owned();
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            tokio::select! {
                ended = connection => {
                    if let Err(err) = ended {
                        tracing::debug!("REST: connection ended: {err}");
                    }
                }
                // Dropping the connection closes it.
                () = activity.unused() => {}
            }
        });
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}
