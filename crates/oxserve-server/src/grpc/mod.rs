//! TensorFlow Serving's gRPC API (tonic): `tensorflow.serving.PredictionService` and
//! `tensorflow.serving.ModelService`, plus server reflection and, when enabled, the standard
//! `grpc.health.v1.Health` service.
//!
//! Like the REST adapter, every model call runs on the blocking pool; core errors become gRPC
//! statuses in one place ([`status`]), with the same code numbers (TensorFlow's codes are gRPC's).
//! Connections are served on gRPC I/O threads of their own ([`io`]), with HTTP/2 flow control set
//! for large messages ([`channel_args`]).

mod channel_args;
mod client_certs;
mod deadline;
mod handshake;
mod health;
mod inflate;
mod io;
mod service;
pub mod tensor;
mod tls;
mod uds;

use std::future::Future;
use std::sync::Arc;

use oxserve_core::{Error, ModelManager};
use oxserve_proto::tensorflow::serving::model_service_server::ModelServiceServer;
use oxserve_proto::tensorflow::serving::prediction_service_server::PredictionServiceServer;
use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};
use tokio::sync::watch;
use tonic::codec::CompressionEncoding;
use tonic::transport::server::Router as TonicRouter;
use tonic::transport::Server;
use tonic::Status;
use tonic_health::pb::health_server::HealthServer;
use tower::layer::util::{Identity, Stack};

use crate::memory_budget::{MemoryBudget, MemoryBudgetLayer};
use deadline::DeadlineLayer;
#[cfg(fuzzing)]
pub use inflate::inflate_pieces;
use inflate::InflateLayer;

/// Every service, behind [`DeadlineLayer`], [`MemoryBudgetLayer`] and [`InflateLayer`].
type Router =
    TonicRouter<Stack<InflateLayer, Stack<MemoryBudgetLayer, Stack<DeadlineLayer, Identity>>>>;

pub use channel_args::{
    ChannelArguments, FlowControl, DEFAULT_CONNECTION_WINDOW, DEFAULT_MAX_MESSAGE_BYTES,
    DEFAULT_STREAM_WINDOW,
};

/// TF Serving's `kErrorMessageLimit`: longer messages are cut and marked.
const ERROR_MESSAGE_LIMIT: usize = 1024;

/// The one mapping of core errors to gRPC statuses: TF's codes are gRPC's codes, and messages are
/// cut at 1024 bytes with `...TRUNCATED`, as TF Serving's `ToGRPCStatus` does.
pub fn status(err: Error) -> Status {
    let mut message = err.message;
    if message.len() > ERROR_MESSAGE_LIMIT {
        let mut end = ERROR_MESSAGE_LIMIT;
        while !message.is_char_boundary(end) {
            end -= 1;
        }
        message.truncate(end);
        message.push_str("...TRUNCATED");
    }
    Status::new(tonic::Code::from_i32(err.code as i32), message)
}

/// The gRPC side of `oxserve serve`.
#[derive(Clone, Debug, Default)]
pub struct GrpcOptions {
    /// `--enable_serialization_as_tensor_content`: Predict outputs in `tensor_content`.
    pub tensor_content_output: bool,
    /// `--grpc_max_threads`: at most this many model calls run at once; more wait their turn
    /// (within their deadline). A call waiting in a batching queue gives its slot back. 0 means
    /// TF Serving's default, 4 per CPU.
    pub max_threads: usize,
    /// `--grpc_channel_arguments`, parsed.
    pub channel_arguments: ChannelArguments,
    /// `--enable_grpc_healthcheck_service`.
    pub health_check: bool,
    /// `--ssl_config_file`, parsed: TLS on the TCP port and the Unix socket.
    pub ssl: Option<oxserve_proto::tensorflow::serving::SslConfig>,
    /// `--max_request_bytes_in_flight`, shared with REST: messages are charged to it.
    pub memory_budget: Arc<MemoryBudget>,
}

/// Whether a request is a gRPC call (`application/grpc`, `application/grpc+proto`, ...).
pub(crate) fn is_grpc_call(request: &http::request::Parts) -> bool {
    request
        .headers
        .get(http::header::CONTENT_TYPE)
        .is_some_and(|kind| kind.as_bytes().starts_with(b"application/grpc"))
}

/// How many gRPC I/O threads serve connections: one per CPU.
fn io_thread_count() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// The gRPC server: every service, configured once, served on any number of listeners.
pub struct GrpcServer {
    router: Router,
    /// `--ssl_config_file`: every connection, TCP or Unix, starts with this handshake.
    tls: Option<tls::Tls>,
    shutdown: watch::Receiver<bool>,
    io: io::IoThreads,
    /// `grpc.server_handshake_timeout_ms`.
    handshake_timeout: Option<std::time::Duration>,
}

impl GrpcServer {
    /// Builds the services and starts the I/O threads. Model calls run on the blocking pool of the
    /// runtime this is called from (or of the runtime of each call, outside one). `shutdown` turns
    /// `true` when the server should stop: listeners stop accepting, in-flight calls finish,
    /// health watches end.
    pub fn new(
        manager: Arc<ModelManager>,
        options: &GrpcOptions,
        shutdown: watch::Receiver<bool>,
    ) -> Result<GrpcServer, String> {
        let tls = options.ssl.as_ref().map(tls::Tls::new).transpose()?;
        let args = &options.channel_arguments;
        for ignored in &args.ignored {
            tracing::warn!(
                "--grpc_channel_arguments: {ignored} has no equivalent in oxserve's gRPC server and is ignored"
            );
        }
        let max_threads = match options.max_threads {
            0 => crate::default_handler_threads(),
            n => n,
        };
        let handler =
            service::Handler::new(manager.clone(), max_threads, options.tensor_content_output);
        let prediction = PredictionServiceServer::new(handler.clone())
            .max_decoding_message_size(args.max_receive_message_bytes)
            .max_encoding_message_size(args.max_send_message_bytes)
            .accept_compressed(CompressionEncoding::Gzip)
            .accept_compressed(CompressionEncoding::Deflate);
        let model = ModelServiceServer::new(handler)
            .max_decoding_message_size(args.max_receive_message_bytes)
            .max_encoding_message_size(args.max_send_message_bytes)
            .accept_compressed(CompressionEncoding::Gzip)
            .accept_compressed(CompressionEncoding::Deflate);

        // Both reflection protocols in use (v1, and v1alpha, which many clients still ask for)
        // list the same services.
        let reflection = || {
            let builder = tonic_reflection::server::Builder::configure()
                .register_encoded_file_descriptor_set(oxserve_proto::FILE_DESCRIPTOR_SET);
            if options.health_check {
                builder.register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            } else {
                builder
            }
        };
        let reflection_error = |err| format!("building gRPC server reflection: {err}");
        let reflection_v1 = reflection().build_v1().map_err(reflection_error)?;
        let reflection_v1alpha = reflection().build_v1alpha().map_err(reflection_error)?;

        let flow = args.flow_control();
        // TCP_NODELAY is set on each accepted connection (see `serve_tcp`).
        let mut builder = Server::builder()
            .http2_keepalive_interval(args.keepalive_time)
            .http2_keepalive_timeout(args.keepalive_timeout)
            .max_concurrent_streams(args.max_concurrent_streams)
            .max_frame_size(flow.max_frame_size)
            .http2_max_header_list_size(args.max_metadata_size)
            .layer(DeadlineLayer)
            .layer(MemoryBudgetLayer(options.memory_budget.clone()))
            .layer(InflateLayer {
                max_message: args.max_receive_message_bytes,
            });
        builder = if flow.adaptive {
            builder.http2_adaptive_window(Some(true))
        } else {
            builder
                .initial_stream_window_size(flow.stream_window)
                .initial_connection_window_size(flow.connection_window)
        };
        if let Some(age) = args.max_connection_age {
            builder = builder.max_connection_age(age);
        }
        if let Some(grace) = args.max_connection_age_grace {
            builder = builder.max_connection_age_grace(grace);
        }
        let router =
            builder
                .add_service(prediction)
                .add_service(model)
                .add_service(reflection_v1)
                .add_service(reflection_v1alpha)
                .add_optional_service(options.health_check.then(|| {
                    HealthServer::new(health::ModelHealth::new(manager, shutdown.clone()))
                }));
        let io = io::IoThreads::start(io_thread_count(), args.server_handshake_timeout)
            .map_err(|err| format!("starting the gRPC I/O threads: {err}"))?;
        Ok(GrpcServer {
            router,
            tls,
            shutdown,
            io,
            handshake_timeout: args.server_handshake_timeout,
        })
    }

    fn stopped(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut shutdown = self.shutdown.clone();
        async move {
            // An error means the sender is gone: nobody can ask for a stop any more.
            if shutdown.wait_for(|stop| *stop).await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    }

    /// Serves on a bound TCP listener until shutdown.
    pub async fn serve_tcp(&self, listener: TcpListener) -> Result<(), tonic::transport::Error> {
        let listener = &listener;
        let accept = move || async move {
            let (connection, _) = listener.accept().await?;
            // As TF Serving's gRPC: small responses go out at once.
            if let Err(err) = connection.set_nodelay(true) {
                tracing::debug!("gRPC: setting TCP_NODELAY failed: {err}");
            }
            connection.into_std()
        };
        // The adopting futures register the socket when first polled, i.e. on the I/O thread
        // (`from_std` outside the `async` block would tie it to the accepting runtime).
        match &self.tls {
            None => {
                let adopt = |connection| async move { TcpStream::from_std(connection) };
                self.io
                    .serve(&self.router, accept, adopt, || self.stopped())
                    .await
            }
            Some(tls) => {
                let timeout = self.handshake_timeout;
                let adopt = move |connection| {
                    let tls = tls.clone();
                    async move {
                        let connection = TcpStream::from_std(connection)?;
                        let peer = connection
                            .peer_addr()
                            .map_or_else(|_| "a client".to_string(), |peer| peer.to_string());
                        tls.accept(connection, &format!("with {peer}"), timeout)
                            .await
                    }
                };
                self.io
                    .serve(&self.router, accept, adopt, || self.stopped())
                    .await
            }
        }
    }

    /// Serves on a bound Unix domain socket until shutdown. Connections go through
    /// [`uds::AuthorityFix`], so that gRPC C-core clients' `:authority` is accepted; with TLS,
    /// it rewrites the decrypted bytes: socket, then TLS session, then `AuthorityFix`, then h2.
    pub async fn serve_unix(&self, listener: UnixListener) -> Result<(), tonic::transport::Error> {
        let listener = &listener;
        let accept = move || async move {
            let (connection, _) = listener.accept().await?;
            connection.into_std()
        };
        match &self.tls {
            None => {
                let adopt = |connection| async move {
                    UnixStream::from_std(connection).map(uds::AuthorityFix::new)
                };
                self.io
                    .serve(&self.router, accept, adopt, || self.stopped())
                    .await
            }
            Some(tls) => {
                let timeout = self.handshake_timeout;
                let adopt = move |connection| {
                    let tls = tls.clone();
                    async move {
                        let connection = UnixStream::from_std(connection)?;
                        let session = tls
                            .accept(connection, "on the Unix socket", timeout)
                            .await?;
                        Ok(uds::AuthorityFix::new(session))
                    }
                };
                self.io
                    .serve(&self.router, accept, adopt, || self.stopped())
                    .await
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use oxserve_core::{Backend, Model};
    use oxserve_proto::tensorflow::serving::prediction_service_client::PredictionServiceClient;
    use oxserve_proto::tensorflow::serving::{ModelSpec, PredictRequest};
    use oxserve_proto::tensorflow::TensorProto;
    use prost::Message;
    use std::time::Duration;
    use tonic::codegen::http;
    use tonic::transport::{Channel, Endpoint};

    struct NoBackend;

    impl Backend for NoBackend {
        fn load(
            &self,
            _dir: &std::path::Path,
            _tags: &[String],
        ) -> oxserve_core::Result<Box<dyn Model>> {
            Err(Error::unimplemented("no models in this test"))
        }
    }

    /// A server without models on a loopback port, until `stop`.
    struct Running {
        stop: watch::Sender<bool>,
        serving: tokio::task::JoinHandle<Result<(), tonic::transport::Error>>,
    }

    impl Running {
        async fn start(options: GrpcOptions) -> (std::net::SocketAddr, Running) {
            let manager = Arc::new(ModelManager::new(Arc::new(NoBackend), Vec::new()));
            let (stop, shutdown) = watch::channel(false);
            let server = Arc::new(GrpcServer::new(manager, &options, shutdown).unwrap());
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let address = listener.local_addr().unwrap();
            let serving = tokio::spawn(async move { server.serve_tcp(listener).await });
            (address, Running { stop, serving })
        }

        /// Asks for a graceful stop and waits for it.
        async fn stop(self) {
            self.stop.send(true).unwrap();
            tokio::time::timeout(Duration::from_secs(10), self.serving)
                .await
                .expect("the server stops")
                .unwrap()
                .unwrap();
        }
    }

    /// A request for a model the server does not have, carrying `bytes` of tensor content: the
    /// whole message is received and decoded before the answer, NOT_FOUND, is known.
    fn large_request(bytes: usize) -> PredictRequest {
        PredictRequest {
            model_spec: Some(ModelSpec {
                name: "absent".into(),
                ..ModelSpec::default()
            }),
            inputs: [(
                "x".to_string(),
                TensorProto {
                    dtype: 1,
                    tensor_content: vec![7u8; bytes].into(),
                    ..TensorProto::default()
                },
            )]
            .into_iter()
            .collect(),
            ..PredictRequest::default()
        }
    }

    async fn call(channel: Channel, bytes: usize) -> Status {
        PredictionServiceClient::new(channel)
            .max_encoding_message_size(usize::MAX)
            .predict(large_request(bytes))
            .await
            .expect_err("no model to answer")
    }

    /// Large requests (larger than a frame, than the stream window, than the connection window),
    /// many at once over several connections, with the default flow control and with the
    /// arguments that change it; then a graceful stop.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn large_messages_over_many_connections_then_stop() {
        for arguments in [
            "",
            "grpc.http2.lookahead_bytes=65536,grpc.http2.max_frame_size=16384",
            "grpc.http2.bdp_probe=1",
        ] {
            let (address, running) = Running::start(GrpcOptions {
                channel_arguments: ChannelArguments::parse(arguments).unwrap(),
                ..GrpcOptions::default()
            })
            .await;
            let mut calls = tokio::task::JoinSet::new();
            for connection in 0..3 {
                let channel = Endpoint::from_shared(format!("http://{address}"))
                    .unwrap()
                    .connect()
                    .await
                    .unwrap();
                for size in [100 << 10, (5 << 20) + connection, 20 << 20] {
                    calls.spawn(call(channel.clone(), size));
                }
            }
            while let Some(status) = calls.join_next().await {
                let status = status.unwrap();
                assert_eq!(
                    status.code(),
                    tonic::Code::NotFound,
                    "{arguments}: {status:?}"
                );
            }
            running.stop().await;
        }
    }

    /// A call whose client deadline passes is answered DEADLINE_EXCEEDED, as gRPC's C core (TF
    /// Serving's transport) answers it, not tonic's CANCELLED. The client here does not enforce
    /// the deadline itself (raw HTTP/2, as a proxy that forwards it): it sends the headers of a
    /// call, never its message, and reads the server's status.
    #[tokio::test]
    async fn an_expired_deadline_is_deadline_exceeded() {
        let (address, running) = Running::start(GrpcOptions::default()).await;
        let tcp = TcpStream::connect(address).await.unwrap();
        let (mut client, connection) = h2::client::handshake(tcp).await.unwrap();
        let connection = tokio::spawn(connection);
        for timeout in ["100u", "1m", "30m"] {
            client = client.ready().await.unwrap();
            let request = http::Request::post(format!(
                "http://{address}/tensorflow.serving.PredictionService/Predict"
            ))
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .header("grpc-timeout", timeout)
            .body(())
            .unwrap();
            let (response, _message_never_sent) = client.send_request(request, false).unwrap();
            let response = tokio::time::timeout(Duration::from_secs(10), response)
                .await
                .expect("an answer within the deadline's time")
                .unwrap();
            assert_eq!(
                response.headers().get("grpc-status").map(|v| v.as_bytes()),
                Some(&b"4"[..]),
                "grpc-timeout {timeout}: {response:?}"
            );
        }
        drop(client);
        connection.abort();
        running.stop().await;
    }

    /// Compressed requests through the whole server: inflated before tonic sees them (gzip and
    /// deflate from tonic's client decode to the request, answered NOT_FOUND for its absent
    /// model), and a corrupt gzip message (raw HTTP/2) answered INVALID_ARGUMENT.
    #[tokio::test]
    async fn compressed_requests_are_inflated_and_broken_ones_are_client_errors() {
        let (address, running) = Running::start(GrpcOptions::default()).await;
        let channel = Endpoint::from_shared(format!("http://{address}"))
            .unwrap()
            .connect()
            .await
            .unwrap();
        for encoding in [CompressionEncoding::Gzip, CompressionEncoding::Deflate] {
            let status = PredictionServiceClient::new(channel.clone())
                .send_compressed(encoding)
                .predict(large_request(3 << 20))
                .await
                .expect_err("no model to answer");
            assert_eq!(
                status.code(),
                tonic::Code::NotFound,
                "{encoding}: {status:?}"
            );
        }

        let mut gzipped = {
            use std::io::Write;
            let mut encoder =
                flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
            encoder
                .write_all(&large_request(1000).encode_to_vec())
                .unwrap();
            encoder.finish().unwrap()
        };
        let middle = gzipped.len() / 2;
        gzipped[middle] ^= 0xff;
        let mut frame = vec![1u8];
        frame.extend_from_slice(&(gzipped.len() as u32).to_be_bytes());
        frame.extend_from_slice(&gzipped);
        let tcp = TcpStream::connect(address).await.unwrap();
        let (client, connection) = h2::client::handshake(tcp).await.unwrap();
        let connection = tokio::spawn(connection);
        let mut client = client.ready().await.unwrap();
        let request = http::Request::post(format!(
            "http://{address}/tensorflow.serving.PredictionService/Predict"
        ))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .header("grpc-encoding", "gzip")
        .body(())
        .unwrap();
        let (response, mut send) = client.send_request(request, false).unwrap();
        send.send_data(frame.into(), true).unwrap();
        let response = response.await.unwrap();
        let (parts, mut body) = response.into_parts();
        let grpc_status = match parts.headers.get("grpc-status") {
            Some(status) => status.clone(),
            None => {
                while body.data().await.is_some() {}
                let trailers = body.trailers().await.unwrap().expect("trailers");
                trailers.get("grpc-status").expect("a status").clone()
            }
        };
        assert_eq!(grpc_status.as_bytes(), b"3", "{parts:?}");
        drop(client);
        connection.abort();
        running.stop().await;
    }

    #[test]
    fn codes_keep_their_numbers_and_long_messages_are_cut() {
        let s = status(Error::not_found(
            "Servable not found for request: Latest(x)",
        ));
        assert_eq!(s.code(), tonic::Code::NotFound);
        assert_eq!(s.message(), "Servable not found for request: Latest(x)");
        assert_eq!(
            status(Error::failed_precondition("")).code(),
            tonic::Code::FailedPrecondition
        );
        assert_eq!(
            status(Error::unimplemented("")).code(),
            tonic::Code::Unimplemented
        );
        let long = "é".repeat(600);
        let s = status(Error::invalid_argument(long));
        assert!(s.message().ends_with("...TRUNCATED"));
        assert_eq!(s.message().len(), 1024 + "...TRUNCATED".len());
    }
}
