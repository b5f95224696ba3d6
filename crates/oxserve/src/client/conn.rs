//! Talking to a TF Serving-compatible server: REST (reqwest) or gRPC (the generated tonic
//! clients), plain or over TLS, gRPC also over a Unix socket. Both return what REST returns, byte
//! for byte where oxserve writes it, so the rest of the client does not care which was used.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use oxserve_core::{
    Code, DType, Error, NamedTensors, Signature, SignatureMap, TensorSpec, VersionState,
    VersionStatus,
};
use oxserve_proto::tensorflow::serving::{
    model_service_client::ModelServiceClient, model_spec::VersionChoice,
    prediction_service_client::PredictionServiceClient, GetModelMetadataRequest,
    GetModelMetadataResponse, GetModelStatusRequest, ModelSpec, PredictRequest, SignatureDefMap,
};
use oxserve_server::grpc::tensor::{tensor_from_proto, tensor_to_proto};
use oxserve_server::rest::json::{self, Format};
use oxserve_server::rest::status::{metadata_json, status_value, to_proto_style_json};
use prost::Message;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::rustls::pki_types::ServerName;
use tokio_rustls::TlsConnector;
use tonic::transport::Channel;

use super::tls::{tls_problem, TlsArgs};
use super::ServerArgs;

/// Which model, version and signature a call is about.
#[derive(Clone, Debug)]
pub struct Target {
    pub model: String,
    pub version: Option<i64>,
    pub label: Option<String>,
}

pub enum Conn {
    Rest {
        client: reqwest::Client,
        base: String,
        timeout: Duration,
    },
    Grpc {
        channel: Channel,
        server: String,
        /// See [`transport_hint`].
        hint: &'static str,
        timeout: Duration,
    },
}

/// Where `--server` points.
#[derive(Debug, PartialEq)]
enum Address {
    /// `host:port` as written, and whether to speak TLS there.
    Tcp {
        authority: String,
        tls: bool,
    },
    Unix(PathBuf),
}

impl Address {
    /// `host:port`, `http://host:port`, `https://host:port` or `unix:PATH` (also gRPC's
    /// `unix:///abs/path`); `tls_flags` (any --ssl_* given) turns TLS on for `host:port`.
    fn parse(server: &str, tls_flags: bool) -> anyhow::Result<Address> {
        let server = server.trim();
        if let Some(path) = server.strip_prefix("unix:") {
            let path = path
                .strip_prefix("//")
                .filter(|p| p.starts_with('/'))
                .unwrap_or(path);
            if path.is_empty() {
                bail!("--server unix: give the socket's path, e.g. unix:/tmp/tfs.sock");
            }
            return Ok(Address::Unix(path.into()));
        }
        let server = server.trim_end_matches('/');
        let (rest, tls) = if let Some(rest) = server.strip_prefix("https://") {
            (rest, true)
        } else if let Some(rest) = server.strip_prefix("http://") {
            if tls_flags {
                bail!("--server {server} is plain HTTP, but --ssl_* flags ask for TLS: give https://{rest} or {rest}");
            }
            (rest, false)
        } else {
            (server, tls_flags)
        };
        if rest.is_empty() || rest.contains('/') {
            bail!("--server: expected host:port, got {server:?}");
        }
        if !rest.contains(':') {
            bail!("--server {server}: give the port too (host:port; TF Serving's defaults are 8501 for REST, 8500 for gRPC)");
        }
        Ok(Address::Tcp {
            authority: rest.to_string(),
            tls,
        })
    }

    /// The host of `host:port` (an IPv6 address without its brackets).
    fn host(authority: &str) -> &str {
        match authority.strip_prefix('[') {
            Some(v6) => v6.split(']').next().unwrap_or(v6),
            None => authority.rsplit_once(':').map_or(authority, |(h, _)| h),
        }
    }
}

impl std::fmt::Display for Address {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Address::Tcp { authority, tls } => {
                write!(f, "{}://{authority}", if *tls { "https" } else { "http" })
            }
            Address::Unix(path) => write!(f, "unix:{}", path.display()),
        }
    }
}

/// Any stream the gRPC connector makes: TCP or Unix, with or without TLS.
trait Stream: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Stream for T {}

/// Opens a connection for tonic: `Endpoint::connect` can neither reach a Unix socket nor do a
/// TLS handshake with our rustls configuration (tonic's own TLS is not compiled in).
#[derive(Clone)]
struct Connector {
    address: Arc<Address>,
    tls: Option<(TlsConnector, ServerName<'static>)>,
}

impl Connector {
    async fn open(self) -> std::io::Result<hyper_util::rt::TokioIo<Box<dyn Stream>>> {
        let stream: Box<dyn Stream> = match &*self.address {
            Address::Tcp { authority, .. } => {
                let tcp = tokio::net::TcpStream::connect(authority.as_str()).await?;
                // As tonic's own connector: gRPC's small frames must not wait for Nagle.
                tcp.set_nodelay(true)?;
                self.secure(tcp).await?
            }
            Address::Unix(path) => {
                self.secure(tokio::net::UnixStream::connect(path).await?)
                    .await?
            }
        };
        Ok(hyper_util::rt::TokioIo::new(stream))
    }

    async fn secure<S: Stream + 'static>(&self, stream: S) -> std::io::Result<Box<dyn Stream>> {
        Ok(match &self.tls {
            Some((connector, name)) => Box::new(connector.connect(name.clone(), stream).await?),
            None => Box::new(stream),
        })
    }
}

/// Percent-encodes a path segment (model names are usually plain, but need not be).
fn segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn rest_path(target: &Target) -> String {
    let mut path = format!("/v1/models/{}", segment(&target.model));
    if let Some(v) = target.version {
        path.push_str(&format!("/versions/{v}"));
    } else if let Some(l) = &target.label {
        path.push_str(&format!("/labels/{}", segment(l)));
    }
    path
}

fn model_spec(target: &Target, signature: &str) -> ModelSpec {
    ModelSpec {
        name: target.model.clone(),
        signature_name: signature.to_string(),
        version_choice: match (&target.version, &target.label) {
            (Some(v), _) => Some(VersionChoice::Version(*v)),
            (None, Some(l)) => Some(VersionChoice::VersionLabel(l.clone())),
            (None, None) => None,
        },
    }
}

/// `hint`: what may be wrong when the connection fails after it was made (see `transport_hint`).
fn grpc_error(server: &str, hint: &str, timeout: Duration, status: tonic::Status) -> anyhow::Error {
    use std::error::Error as _;
    if let Some(problem) = tls_problem(&status, true) {
        return anyhow!("the TLS connection to the gRPC server at {server} failed: {problem}");
    }
    // A status with a source is the transport's, not an answer from the server.
    if let Some(source) = status.source() {
        if caused_by::<tonic::TimeoutExpired>(source) {
            return no_answer_in_time(&format!("the gRPC server at {server}"), timeout);
        }
        let detail = format!("{}: {}", status.message(), error_chain(source));
        if status.code() == tonic::Code::Unavailable {
            return anyhow!("cannot reach the gRPC server at {server} ({detail}); is it running, and is this its gRPC --port?");
        }
        return anyhow!("the connection to the gRPC server at {server} failed ({detail}); {hint}");
    }
    // tonic's words for an HTTP answer that is not gRPC's (a REST server's 404, say).
    let message = status.message();
    if message.contains("while receiving response with status:")
        || message.contains("grpc-status header missing, mapped from HTTP status code")
    {
        return anyhow!("the server at {server} does not speak gRPC there ({message}); is this a REST port (drop --grpc)?");
    }
    anyhow!(
        "the server answered {}: {message}",
        Code::from_i32(status.code() as i32).name(),
    )
}

fn no_answer_in_time(what: &str, timeout: Duration) -> anyhow::Error {
    anyhow!(
        "{what}: no answer in time (--timeout_secs {})",
        timeout.as_secs_f64()
    )
}

/// Whether an `E` is in `err`'s chain.
fn caused_by<E: std::error::Error + 'static>(err: &(dyn std::error::Error + 'static)) -> bool {
    let mut next = Some(err);
    while let Some(e) = next {
        if e.is::<E>() {
            return true;
        }
        next = e.source();
    }
    false
}

/// What to suspect when a connection that was made fails at the first call. A TLS server answers
/// a plain client's HTTP/2 preface with an alert and hangs up; a server that verifies its clients
/// refuses a missing or unknown certificate only after the client's side of a TLS 1.3 handshake
/// is done. Whether the client sees the alert or only the closed connection is a race.
fn transport_hint(tls: &TlsArgs, secure: bool) -> &'static str {
    match (secure, tls.ssl_cert.is_some()) {
        // An HTTP/1 server (TF Serving's REST port) answers the HTTP/2 preface as a TLS server
        // does: with bytes that are no HTTP/2 frame.
        (false, _) => "if the server uses TLS (--ssl_config_file), give https:// or --ssl_ca; if this is its REST port, drop --grpc",
        (true, false) => {
            "if the server verifies its clients (client_verify), give --ssl_cert and --ssl_key"
        }
        (true, true) => {
            "is --ssl_cert signed by the certificate authority the server trusts (custom_ca)?"
        }
    }
}

fn dtype_from_name(name: &str) -> DType {
    (0..=30)
        .map(DType::from_tf)
        .find(|d| d.proto_name() == name)
        .unwrap_or(DType::Other(0))
}

/// Signatures from REST's metadata JSON (`metadata.signature_def.signature_def`).
fn signatures_from_json(body: &[u8]) -> anyhow::Result<SignatureMap> {
    let value: serde_json::Value =
        serde_json::from_slice(body).context("the metadata is not JSON")?;
    let defs = value
        .pointer("/metadata/signature_def/signature_def")
        .and_then(|d| d.as_object())
        .context("the metadata has no metadata.signature_def.signature_def")?;
    let specs = |v: Option<&serde_json::Value>| -> BTreeMap<String, TensorSpec> {
        v.and_then(|v| v.as_object())
            .map(|m| {
                m.iter()
                    .map(|(alias, info)| {
                        let shape = info.get("tensor_shape");
                        let unknown_rank = shape
                            .and_then(|s| s.get("unknown_rank"))
                            .and_then(|u| u.as_bool())
                            .unwrap_or(false);
                        let dims = shape
                            .and_then(|s| s.get("dim"))
                            .and_then(|d| d.as_array())
                            .map(|dims| {
                                dims.iter()
                                    .map(|d| match d.get("size") {
                                        Some(serde_json::Value::String(s)) => {
                                            s.parse().unwrap_or(-1)
                                        }
                                        Some(n) => n.as_i64().unwrap_or(-1),
                                        None => -1,
                                    })
                                    .collect()
                            })
                            .unwrap_or_default();
                        let spec = TensorSpec {
                            name: info
                                .get("name")
                                .and_then(|n| n.as_str())
                                .unwrap_or_default()
                                .to_string(),
                            dtype: dtype_from_name(
                                info.get("dtype").and_then(|d| d.as_str()).unwrap_or(""),
                            ),
                            shape: (!unknown_rank).then_some(dims),
                        };
                        (alias.clone(), spec)
                    })
                    .collect()
            })
            .unwrap_or_default()
    };
    Ok(defs
        .iter()
        .map(|(key, def)| {
            (
                key.clone(),
                Signature {
                    method_name: def
                        .get("method_name")
                        .and_then(|m| m.as_str())
                        .unwrap_or_default()
                        .to_string(),
                    inputs: specs(def.get("inputs")),
                    outputs: specs(def.get("outputs")),
                    defaults: Default::default(),
                },
            )
        })
        .collect())
}

/// A `ModelVersionStatus.State` number, or how TF Serving's REST status prints one that is no
/// version's state: UNKNOWN by name, any other as its number (protobuf's JSON printer does so
/// with enum values it does not know).
fn version_state(number: i32) -> Result<VersionState, serde_json::Value> {
    match number {
        0 => Err("UNKNOWN".into()),
        10 => Ok(VersionState::Start),
        20 => Ok(VersionState::Loading),
        30 => Ok(VersionState::Available),
        40 => Ok(VersionState::Unloading),
        50 => Ok(VersionState::End),
        n => Err(n.into()),
    }
}

/// REST's status JSON of `statuses`, each with its [`version_state`]: a number that is no
/// version's state is written as that function gives it.
fn status_json_with(
    statuses: Vec<(VersionStatus, Result<VersionState, serde_json::Value>)>,
) -> Vec<u8> {
    let (statuses, states): (Vec<_>, Vec<_>) = statuses.into_iter().unzip();
    let mut value = status_value(&statuses);
    for (i, state) in states.into_iter().enumerate() {
        let slot = value.pointer_mut(&format!("/model_version_status/{i}/state"));
        if let (Err(state), Some(slot)) = (state, slot) {
            *slot = state;
        }
    }
    to_proto_style_json(&value)
}

impl Conn {
    pub async fn connect(args: &ServerArgs, timeout: Duration) -> anyhow::Result<Conn> {
        let address = Address::parse(&args.server, args.tls.any())?;
        let tls = match &address {
            Address::Tcp { tls, .. } => *tls,
            Address::Unix(_) => args.tls.any(),
        };
        let config = tls.then(|| args.tls.client_config()).transpose()?;
        let connect_timeout = timeout.min(Duration::from_secs(10));
        if !args.grpc {
            if let Address::Unix(_) = address {
                bail!("--server {address}: a Unix socket serves gRPC only (TF Serving's --grpc_socket_path); add --grpc");
            }
            if args.tls.ssl_target_name.is_some() {
                bail!("--ssl_target_name is for gRPC (--grpc) only: over REST the server's certificate is checked against the host in --server");
            }
            let mut builder = reqwest::Client::builder()
                .timeout(timeout)
                .connect_timeout(connect_timeout);
            if let Some(config) = config {
                builder = builder.use_preconfigured_tls(config);
            }
            let client = builder.build().context("creating the HTTP client")?;
            return Ok(Conn::Rest {
                client,
                base: address.to_string(),
                timeout,
            });
        }
        let is_tls = config.is_some();
        let tls = match config {
            Some(mut config) => {
                // gRPC is HTTP/2 only, and gRPC servers insist on negotiating it.
                config.alpn_protocols = vec![b"h2".to_vec()];
                let name = match (&args.tls.ssl_target_name, &address) {
                    (Some(name), _) => name.as_str(),
                    (None, Address::Tcp { authority, .. }) => Address::host(authority),
                    (None, Address::Unix(_)) => bail!(
                        "--server {address}: TLS over a Unix socket needs --ssl_target_name, the name in the server's certificate (a socket has no host name to check it against)"
                    ),
                };
                let name = ServerName::try_from(name.to_string()).map_err(|_| {
                    anyhow!("{name:?} is not a host name or IP address to check the server's certificate against")
                })?;
                Some((TlsConnector::from(Arc::new(config)), name))
            }
            None => None,
        };
        let uri = match &address {
            Address::Tcp { .. } => address.to_string(),
            // A socket has no authority of its own; TF Serving's clients send localhost.
            Address::Unix(_) => "http://localhost".to_string(),
        };
        let endpoint = tonic::transport::Endpoint::from_shared(uri)
            .with_context(|| format!("--server {address}"))?
            .connect_timeout(connect_timeout)
            .timeout(timeout);
        let server = address.to_string();
        let port_flag = match address {
            Address::Tcp { .. } => "gRPC --port",
            Address::Unix(_) => "--grpc_socket_path",
        };
        let connector = Connector {
            address: Arc::new(address),
            tls,
        };
        let channel = endpoint
            .connect_with_connector(tower::service_fn(move |_| connector.clone().open()))
            .await
            .map_err(|e| match tls_problem(&e, true) {
                Some(problem) => {
                    anyhow!("the TLS handshake with the gRPC server at {server} failed: {problem}")
                }
                None => anyhow!(
                    "cannot reach the gRPC server at {server}: {}; is it running, and is this its {port_flag}?",
                    error_chain(&e)
                ),
            })?;
        Ok(Conn::Grpc {
            channel,
            server,
            hint: transport_hint(&args.tls, is_tls),
            timeout,
        })
    }

    fn prediction(&self) -> Option<PredictionServiceClient<Channel>> {
        match self {
            Conn::Grpc { channel, .. } => Some(
                PredictionServiceClient::new(channel.clone())
                    .max_decoding_message_size(i32::MAX as usize)
                    .max_encoding_message_size(i32::MAX as usize),
            ),
            Conn::Rest { .. } => None,
        }
    }

    fn server(&self) -> &str {
        match self {
            Conn::Grpc { server, .. } => server,
            Conn::Rest { base, .. } => base,
        }
    }

    async fn rest(&self, path: &str, body: Option<Vec<u8>>) -> anyhow::Result<Vec<u8>> {
        let Conn::Rest {
            client,
            base,
            timeout,
        } = self
        else {
            bail!("internal: not a REST connection");
        };
        let url = format!("{base}{path}");
        let request = match body {
            Some(body) => client
                .post(&url)
                .header("content-type", "application/json")
                .body(body),
            None => client.get(&url),
        };
        let response = request.send().await.map_err(|e| {
            if let Some(problem) = tls_problem(&e, false) {
                anyhow!("the TLS connection to the REST server at {base} failed: {problem}")
            } else if e.is_timeout() {
                no_answer_in_time(&url, *timeout)
            } else if e.is_connect() {
                anyhow!(
                    "cannot reach the REST server at {base}: {}; is it running, and is this its --rest_api_port?",
                    error_chain(&e)
                )
            } else {
                let chain = error_chain(&e);
                // hyper's words (its errors are not ours to name) for bytes that are not an
                // HTTP/1 answer, e.g. a gRPC server's HTTP/2 frames (read as an answer, or before
                // the request was sent), and for a connection a TLS server dropped when it got no
                // TLS handshake.
                let hint = if chain.contains("invalid HTTP version parsed")
                    || chain.contains("received unexpected message from connection")
                {
                    "; the server does not speak HTTP/1.1 there: is this a gRPC port (add --grpc)?"
                } else if base.starts_with("http:")
                    && (chain.contains("connection closed before message completed")
                        || caused_by_reset(&e))
                {
                    "; if the server uses TLS, give https://"
                } else {
                    ""
                };
                anyhow!("{url}: {chain}{hint}")
            }
        })?;
        let status = response.status();
        let bytes = response.bytes().await.map_err(|e| {
            if e.is_timeout() {
                no_answer_in_time(&url, *timeout)
            } else {
                anyhow!("{url}: reading the answer: {}", error_chain(&e))
            }
        })?;
        if !status.is_success() {
            let message = serde_json::from_slice::<serde_json::Value>(&bytes)
                .ok()
                .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(String::from))
                .unwrap_or_else(|| String::from_utf8_lossy(&bytes).trim().to_string());
            bail!("the server answered {status}: {message}");
        }
        Ok(bytes.to_vec())
    }

    async fn rest_predict(&self, target: &Target, body: Vec<u8>) -> anyhow::Result<Vec<u8>> {
        self.rest(&format!("{}:predict", rest_path(target)), Some(body))
            .await
    }

    /// The model's version statuses, as REST's JSON: of the label's version for a label.
    pub async fn status(&self, target: &Target) -> anyhow::Result<Vec<u8>> {
        let resolved;
        let target = match (target.version, &target.label) {
            (None, Some(label)) => {
                resolved = Target {
                    model: target.model.clone(),
                    version: Some(self.labelled_version(target, label).await?),
                    label: None,
                };
                &resolved
            }
            _ => target,
        };
        match self {
            Conn::Rest { .. } => self.rest(&rest_path(target), None).await,
            Conn::Grpc {
                channel,
                server,
                hint,
                timeout,
            } => {
                let spec = model_spec(target, "");
                let mut client = ModelServiceClient::new(channel.clone());
                let response = client
                    .get_model_status(GetModelStatusRequest {
                        model_spec: Some(spec),
                    })
                    .await
                    .map_err(|s| grpc_error(server, hint, *timeout, s))?
                    .into_inner();
                let statuses = response
                    .model_version_status
                    .iter()
                    .map(|s| {
                        let state = version_state(s.state);
                        let status = VersionStatus {
                            version: s.version,
                            // Replaced as status_json_with writes it.
                            state: state.clone().unwrap_or(VersionState::Available),
                            error: s.status.as_ref().filter(|st| st.error_code != 0).map(|st| {
                                Error {
                                    code: Code::from_i32(st.error_code),
                                    message: st.error_message.clone(),
                                }
                            }),
                        };
                        (status, state)
                    })
                    .collect();
                Ok(status_json_with(statuses))
            }
        }
    }

    /// The version a label names. The status calls ignore labels (TF Serving's as well) and
    /// answer for every version; the metadata calls resolve them, and say to which version.
    async fn labelled_version(&self, target: &Target, label: &str) -> anyhow::Result<i64> {
        let version = match self {
            Conn::Rest { .. } => {
                let body = self
                    .rest(&format!("{}/metadata", rest_path(target)), None)
                    .await?;
                serde_json::from_slice::<serde_json::Value>(&body)
                    .ok()
                    .and_then(|v| v["model_spec"]["version"].as_str()?.parse().ok())
            }
            Conn::Grpc { .. } => match self.grpc_metadata(target).await?.model_spec {
                Some(ModelSpec {
                    version_choice: Some(VersionChoice::Version(v)),
                    ..
                }) => Some(v),
                _ => None,
            },
        };
        version.with_context(|| format!("the server did not say which version label {label} names"))
    }

    /// GetModelMetadata's answer for the signatures.
    async fn grpc_metadata(&self, target: &Target) -> anyhow::Result<GetModelMetadataResponse> {
        let Conn::Grpc {
            server,
            hint,
            timeout,
            ..
        } = self
        else {
            bail!("internal: not a gRPC connection");
        };
        let mut client = self.prediction().context("internal: no gRPC client")?;
        Ok(client
            .get_model_metadata(GetModelMetadataRequest {
                model_spec: Some(model_spec(target, "")),
                metadata_field: vec!["signature_def".into()],
            })
            .await
            .map_err(|s| grpc_error(server, hint, *timeout, s))?
            .into_inner())
    }

    /// The model's metadata as REST's JSON, and its signatures.
    pub async fn metadata(&self, target: &Target) -> anyhow::Result<(Vec<u8>, SignatureMap)> {
        match self {
            Conn::Rest { .. } => {
                let body = self
                    .rest(&format!("{}/metadata", rest_path(target)), None)
                    .await?;
                let signatures = signatures_from_json(&body)?;
                Ok((body, signatures))
            }
            Conn::Grpc { .. } => {
                let response = self.grpc_metadata(target).await?;
                let any = response
                    .metadata
                    .get("signature_def")
                    .context("the server's metadata has no signature_def")?;
                let defs = SignatureDefMap::decode(any.value.as_slice())
                    .context("the server's signature_def metadata does not decode")?;
                let signatures: SignatureMap = defs
                    .signature_def
                    .iter()
                    .map(|(k, d)| (k.clone(), Signature::from_proto(d)))
                    .collect();
                let version = match response.model_spec.and_then(|s| s.version_choice) {
                    Some(VersionChoice::Version(v)) => v,
                    _ => 0,
                };
                Ok((
                    metadata_json(&target.model, version, defs.signature_def),
                    signatures,
                ))
            }
        }
    }

    /// Predict with a REST request body. Over gRPC the body is decoded with the signature's
    /// dtypes (from the metadata) exactly as REST would, and the answer written as REST writes it.
    pub async fn predict_json(&self, target: &Target, body: Vec<u8>) -> anyhow::Result<Vec<u8>> {
        match self {
            Conn::Rest { .. } => self.rest_predict(target, body).await,
            Conn::Grpc { .. } => {
                let (_, signatures) = self.metadata(target).await?;
                let request = json::parse_predict_request(&body, |name| {
                    oxserve_core::signature::find_signature(&signatures, name).cloned()
                })
                .map_err(|e| anyhow!("the request: {}", e.message))?;
                self.predict_tensors(
                    target,
                    &request.signature_name,
                    request.inputs,
                    request.format,
                )
                .await
            }
        }
    }

    /// Predict with tensors; the answer as REST writes it in `format`. Over REST the tensors are
    /// sent as row-format instances.
    pub async fn predict_tensors(
        &self,
        target: &Target,
        signature: &str,
        inputs: NamedTensors,
        format: Format,
    ) -> anyhow::Result<Vec<u8>> {
        match self {
            Conn::Rest { .. } => {
                let body = super::images::instances_body(signature, &inputs)?;
                self.rest_predict(target, body).await
            }
            Conn::Grpc {
                server,
                hint,
                timeout,
                ..
            } => {
                let mut client = self.prediction().context("internal: no gRPC client")?;
                let request = PredictRequest {
                    model_spec: Some(model_spec(target, signature)),
                    inputs: inputs
                        .into_iter()
                        .map(|(alias, t)| (alias, tensor_to_proto(t, true)))
                        .collect(),
                    ..PredictRequest::default()
                };
                let response = client
                    .predict(request)
                    .await
                    .map_err(|s| grpc_error(server, hint, *timeout, s))?
                    .into_inner();
                let mut outputs = response
                    .outputs
                    .into_iter()
                    .map(|(alias, proto)| {
                        tensor_from_proto(proto)
                            .map(|t| (alias.clone(), t))
                            .map_err(|e| anyhow!("output {alias} of the answer: {}", e.message))
                    })
                    .collect::<anyhow::Result<NamedTensors>>()?;
                outputs.sort_by(|a, b| a.0.cmp(&b.0));
                json::write_predict_response(&outputs, format)
                    .map_err(|e| anyhow!("the answer from {}: {}", self.server(), e.message))
            }
        }
    }
}

/// Whether the server reset the connection.
fn caused_by_reset(err: &(dyn std::error::Error + 'static)) -> bool {
    let mut next = Some(err);
    while let Some(e) = next {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            if io.kind() == std::io::ErrorKind::ConnectionReset {
                return true;
            }
        }
        next = e.source();
    }
    false
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let s_text = s.to_string();
        if !text.contains(&s_text) {
            text = format!("{text}: {s_text}");
        }
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn servers_and_paths() {
        let tcp = |authority: &str, tls| Address::Tcp {
            authority: authority.into(),
            tls,
        };
        let parse = |s| Address::parse(s, false).unwrap();
        assert_eq!(parse("localhost:8501"), tcp("localhost:8501", false));
        assert_eq!(parse("http://h:1/"), tcp("h:1", false));
        assert_eq!(parse("https://h:1"), tcp("h:1", true));
        assert_eq!(Address::parse("h:1", true).unwrap(), tcp("h:1", true));
        assert!(Address::parse("http://h:1", true).is_err());
        assert_eq!(
            parse("unix:/tmp/s.sock"),
            Address::Unix("/tmp/s.sock".into())
        );
        assert_eq!(
            parse("unix:///tmp/s.sock"),
            Address::Unix("/tmp/s.sock".into())
        );
        assert_eq!(parse("unix:rel.sock"), Address::Unix("rel.sock".into()));
        assert!(Address::parse("unix:", false).is_err());
        assert!(Address::parse("localhost", false).is_err());
        assert!(Address::parse("h:1/v1", false).is_err());
        assert_eq!(parse("https://h:1").to_string(), "https://h:1");
        assert_eq!(Address::host("example.com:8500"), "example.com");
        assert_eq!(Address::host("[::1]:8500"), "::1");
        let t = Target {
            model: "my model".into(),
            version: None,
            label: Some("stable".into()),
        };
        assert_eq!(rest_path(&t), "/v1/models/my%20model/labels/stable");
        let t = Target {
            model: "m".into(),
            version: Some(3),
            label: None,
        };
        assert_eq!(rest_path(&t), "/v1/models/m/versions/3");
    }

    #[test]
    fn rest_metadata_gives_signatures() {
        let body = br#"{"model_spec": {}, "metadata": {"signature_def": {"signature_def": {
            "serving_default": {"method_name": "tensorflow/serving/predict",
              "inputs": {"image": {"dtype": "DT_FLOAT", "name": "x:0",
                 "tensor_shape": {"dim": [{"size": "-1", "name": ""}, {"size": "128", "name": ""}], "unknown_rank": false}}},
              "outputs": {"y": {"dtype": "DT_STRING", "tensor_shape": {"dim": [], "unknown_rank": true}}}}}}}}"#;
        let sigs = signatures_from_json(body).unwrap();
        let sig = &sigs["serving_default"];
        assert_eq!(sig.inputs["image"].dtype, DType::Float);
        assert_eq!(sig.inputs["image"].shape, Some(vec![-1, 128]));
        assert_eq!(sig.outputs["y"].dtype, DType::String);
        assert_eq!(sig.outputs["y"].shape, None);
    }
}
