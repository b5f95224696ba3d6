//! gRPC's I/O threads: each accepted connection is served, whole, on one of a few single-threaded
//! tokio runtimes, one per CPU, connections handed out in turn.
//!
//! hyper runs every HTTP/2 stream as a task of its own beside the connection's task: the
//! connection task reads the request and wakes the stream task, which answers and wakes the
//! connection task to write. On the shared multi-threaded runtime these tasks (and the
//! connections) move between worker threads, and a wake across threads is a futex call and a
//! context switch. On one thread per connection they stay put: measured on 2 CPUs (interleaved
//! A/B runs on a shared, noisy machine), half_plus_two over 16 connections served ~10-20% more
//! calls per second, with lower latency at one call at a time. Model calls still leave the I/O
//! thread: they run on the server's blocking pool (see `service::Handler::run`), so a slow model
//! never stalls the other connections of its thread.
//!
//! TF Serving also serves gRPC on threads of its own (gRPC's), apart from its REST threads.

use std::future::Future;
use std::io;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::runtime::Handle;
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::UnboundedReceiverStream;
use tokio_stream::StreamExt;
use tonic::transport::server::Connected;

use super::handshake::HandshakeDeadline;
use super::Router;

/// How long to wait before accepting again after `accept` failed (e.g. out of file descriptors),
/// so that the loop does not spin.
const ACCEPT_BACKOFF: std::time::Duration = std::time::Duration::from_millis(20);

/// The I/O threads. Dropping this ends them (and any connection still open on them).
pub struct IoThreads {
    handles: Vec<Handle>,
    /// How long a connection may take from its accept to the end of HTTP/2's handshake.
    handshake_timeout: Option<std::time::Duration>,
    /// Dropped with `self`: each thread returns when its receiver sees the sender gone.
    _stop: Vec<oneshot::Sender<()>>,
}

impl IoThreads {
    /// Starts `count` (at least one) threads, named `grpc-io-<n>`, for connections that must send
    /// HTTP/2's preface and first SETTINGS within `handshake_timeout` of their accept.
    pub fn start(
        count: usize,
        handshake_timeout: Option<std::time::Duration>,
    ) -> io::Result<IoThreads> {
        let mut handles = Vec::new();
        let mut stops = Vec::new();
        for index in 0..count.max(1) {
            let (stop, stopped) = oneshot::channel::<()>();
            let (ready, started) = std::sync::mpsc::channel();
            // The runtime is built, run and dropped on its own thread (a runtime cannot be
            // dropped from async code).
            std::thread::Builder::new()
                .name(format!("grpc-io-{index}"))
                .spawn(move || {
                    let runtime = match tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .thread_name("grpc-io-blocking")
                        .build()
                    {
                        Ok(runtime) => runtime,
                        Err(err) => {
                            let _ = ready.send(Err(err));
                            return;
                        }
                    };
                    let _ = ready.send(Ok(runtime.handle().clone()));
                    // Drives every task spawned on this runtime until the owner goes away.
                    let _ = runtime.block_on(stopped);
                })?;
            let handle = started
                .recv()
                .map_err(|_| io::Error::other("a gRPC I/O thread exited while starting"))??;
            handles.push(handle);
            stops.push(stop);
        }
        Ok(IoThreads {
            handles,
            handshake_timeout,
            _stop: stops,
        })
    }

    /// Serves `router` on the connections `accept` yields until `stopped()` resolves, then waits
    /// for the connections to finish (tonic's graceful shutdown). `accept` runs on the caller's
    /// runtime and returns each connection detached from it (a std socket); the future `adopt`
    /// makes of it runs on the I/O thread the connection goes to, registers it with that
    /// runtime and may do more (the TLS handshake): each connection is adopted in a task of its
    /// own, so that a slow client holds up nobody else, and one that cannot be adopted is
    /// dropped alone.
    pub async fn serve<Std, IO, Accept, AcceptFut, Adopt, AdoptFut, Stop, StopFut>(
        &self,
        router: &Router,
        mut accept: Accept,
        adopt: Adopt,
        stopped: Stop,
    ) -> Result<(), tonic::transport::Error>
    where
        Accept: FnMut() -> AcceptFut,
        AcceptFut: Future<Output = io::Result<Std>>,
        Adopt: Fn(Std) -> AdoptFut,
        AdoptFut: Future<Output = io::Result<IO>> + Send + 'static,
        IO: AsyncRead + AsyncWrite + Connected + Unpin + Send + 'static,
        Stop: Fn() -> StopFut,
        StopFut: Future<Output = ()> + Send + 'static,
    {
        let mut senders = Vec::with_capacity(self.handles.len());
        let mut served = Vec::with_capacity(self.handles.len());
        for handle in &self.handles {
            let (sender, receiver) = mpsc::unbounded_channel::<HandshakeDeadline<IO>>();
            let incoming = UnboundedReceiverStream::new(receiver).map(Ok::<_, io::Error>);
            served.push(
                handle.spawn(
                    router
                        .clone()
                        .serve_with_incoming_shutdown(incoming, stopped()),
                ),
            );
            senders.push(sender);
        }
        let stop = stopped();
        tokio::pin!(stop);
        let mut next = 0;
        loop {
            tokio::select! {
                () = &mut stop => break,
                accepted = accept() => match accepted {
                    Ok(connection) => {
                        let deadline = self
                            .handshake_timeout
                            .map(|timeout| tokio::time::Instant::now() + timeout);
                        let adopting = adopt(connection);
                        let adopted = senders[next].clone();
                        self.handles[next].spawn(async move {
                            match adopting.await {
                                // The receiver only goes away once the server stopped
                                // accepting: the connection is dropped, as it should be.
                                Ok(connection) => drop(
                                    adopted.send(HandshakeDeadline::new(connection, deadline)),
                                ),
                                // A client that connects and leaves without a word (a TCP
                                // probe) is not worth a warning; a failed handshake is.
                                Err(err) if err.kind() == io::ErrorKind::UnexpectedEof => {
                                    tracing::debug!("gRPC: a new connection closed early: {err}")
                                }
                                Err(err) => {
                                    tracing::warn!("gRPC: dropping a new connection: {err}")
                                }
                            }
                        });
                        next = (next + 1) % senders.len();
                    }
                    Err(err) => {
                        tracing::debug!("gRPC: accepting a connection failed: {err}");
                        tokio::time::sleep(ACCEPT_BACKOFF).await;
                    }
                },
            }
        }
        // tonic stops accepting on `stopped()` and drains; a handshake still under way finds its
        // thread's receiver gone and drops its connection.
        drop(senders);
        let mut result = Ok(());
        for task in served {
            match task.await {
                Ok(Err(err)) if result.is_ok() => result = Err(err),
                Ok(_) => {}
                Err(join_error) => {
                    tracing::error!("gRPC: an I/O thread's server failed: {join_error}")
                }
            }
        }
        result
    }
}
