//! Talking to a TF Serving-compatible server: REST (reqwest, plain HTTP) or gRPC (the generated
//! tonic clients). Both return what REST returns, byte for byte where oxserve writes it, so the
//! rest of the client does not care which was used.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use oxserve_core::{
    Code, DType, Error, NamedTensors, Signature, SignatureMap, TensorSpec, VersionState,
    VersionStatus,
};
use oxserve_proto::tensorflow::serving::{
    model_service_client::ModelServiceClient, model_spec::VersionChoice,
    prediction_service_client::PredictionServiceClient, GetModelMetadataRequest,
    GetModelStatusRequest, ModelSpec, PredictRequest, SignatureDefMap,
};
use oxserve_server::grpc::tensor::{tensor_from_proto, tensor_to_proto};
use oxserve_server::rest::json::{self, Format};
use oxserve_server::rest::status::{metadata_json, status_json};
use prost::Message;
use tonic::transport::Channel;

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
    },
    Grpc {
        channel: Channel,
        server: String,
    },
}

/// `host:port` or `http://host:port` into `http://host:port`.
fn base_url(server: &str) -> anyhow::Result<String> {
    let server = server.trim().trim_end_matches('/');
    if server.starts_with("https://") {
        bail!(
            "--server {server}: TLS is not supported by this client; use a plain http:// address"
        );
    }
    let rest = server.strip_prefix("http://").unwrap_or(server);
    if rest.is_empty() || rest.contains('/') {
        bail!("--server: expected host:port, got {server:?}");
    }
    if !rest.contains(':') {
        bail!("--server {server}: give the port too (host:port; TF Serving's defaults are 8501 for REST, 8500 for gRPC)");
    }
    Ok(format!("http://{rest}"))
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

fn grpc_error(server: &str, status: tonic::Status) -> anyhow::Error {
    use std::error::Error as _;
    if status.code() == tonic::Code::Unavailable {
        let mut detail = status.message().to_string();
        let mut source = status.source();
        while let Some(s) = source {
            detail = format!("{detail}: {s}");
            source = s.source();
        }
        return anyhow!("cannot reach the gRPC server at {server} ({detail}); is it running, and is this its gRPC --port?");
    }
    anyhow!(
        "the server answered {}: {}",
        Code::from_i32(status.code() as i32).name(),
        status.message()
    )
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
                },
            )
        })
        .collect())
}

fn version_state(number: i32) -> VersionState {
    match number {
        10 => VersionState::Start,
        20 => VersionState::Loading,
        40 => VersionState::Unloading,
        50 => VersionState::End,
        _ => VersionState::Available,
    }
}

impl Conn {
    pub async fn connect(server: &str, grpc: bool, timeout: Duration) -> anyhow::Result<Conn> {
        let base = base_url(server)?;
        if grpc {
            let endpoint = tonic::transport::Endpoint::from_shared(base.clone())
                .with_context(|| format!("--server {server}"))?
                .connect_timeout(timeout.min(Duration::from_secs(10)))
                .timeout(timeout);
            let channel = endpoint.connect().await.map_err(|e| {
                anyhow!(
                    "cannot reach the gRPC server at {base}: {}; is it running, and is this its gRPC --port?",
                    error_chain(&e)
                )
            })?;
            Ok(Conn::Grpc {
                channel,
                server: base,
            })
        } else {
            let client = reqwest::Client::builder()
                .timeout(timeout)
                .connect_timeout(timeout.min(Duration::from_secs(10)))
                .build()
                .context("creating the HTTP client")?;
            Ok(Conn::Rest { client, base })
        }
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
        let Conn::Rest { client, base } = self else {
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
            if e.is_timeout() {
                anyhow!("{url}: no answer in time ({})", error_chain(&e))
            } else if e.is_connect() {
                anyhow!(
                    "cannot reach the REST server at {base}: {}; is it running, and is this its --rest_api_port?",
                    error_chain(&e)
                )
            } else {
                anyhow!("{url}: {}", error_chain(&e))
            }
        })?;
        let status = response.status();
        let bytes = response
            .bytes()
            .await
            .map_err(|e| anyhow!("{url}: reading the answer: {}", error_chain(&e)))?;
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

    /// The model's version statuses, as REST's JSON.
    pub async fn status(&self, target: &Target) -> anyhow::Result<Vec<u8>> {
        match self {
            Conn::Rest { .. } => self.rest(&rest_path(target), None).await,
            Conn::Grpc { channel, server } => {
                let mut client = ModelServiceClient::new(channel.clone());
                let response = client
                    .get_model_status(GetModelStatusRequest {
                        model_spec: Some(model_spec(target, "")),
                    })
                    .await
                    .map_err(|s| grpc_error(server, s))?
                    .into_inner();
                let statuses: Vec<VersionStatus> =
                    response
                        .model_version_status
                        .iter()
                        .map(|s| VersionStatus {
                            version: s.version,
                            state: version_state(s.state),
                            error: s.status.as_ref().filter(|st| st.error_code != 0).map(|st| {
                                Error {
                                    code: Code::from_i32(st.error_code),
                                    message: st.error_message.clone(),
                                }
                            }),
                        })
                        .collect();
                Ok(status_json(&statuses))
            }
        }
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
            Conn::Grpc { server, .. } => {
                let mut client = self.prediction().context("internal: no gRPC client")?;
                let response = client
                    .get_model_metadata(GetModelMetadataRequest {
                        model_spec: Some(model_spec(target, "")),
                        metadata_field: vec!["signature_def".into()],
                    })
                    .await
                    .map_err(|s| grpc_error(server, s))?
                    .into_inner();
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
            Conn::Grpc { server, .. } => {
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
                    .map_err(|s| grpc_error(server, s))?
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
        assert_eq!(base_url("localhost:8501").unwrap(), "http://localhost:8501");
        assert_eq!(base_url("http://h:1/").unwrap(), "http://h:1");
        assert!(base_url("https://h:1").is_err());
        assert!(base_url("localhost").is_err());
        assert!(base_url("h:1/v1").is_err());
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
