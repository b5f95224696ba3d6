//! `oxserve client`: predict, status and metadata against any TF Serving-compatible server
//! (oxserve or TensorFlow Serving), over REST or gRPC.

mod conn;
mod images;
mod tls;

use std::io::Read;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{ArgGroup, Args, Subcommand};
use oxserve_server::rest::json::Format;

use conn::{Conn, Target};
use images::Range;

#[derive(Args, Debug)]
pub struct ClientArgs {
    #[command(subcommand)]
    pub command: ClientCommand,
}

#[derive(Subcommand, Debug)]
pub enum ClientCommand {
    /// Send a predict request: a REST body from a file, instances, or image files.
    Predict(ClientPredictArgs),
    /// Print the model's version status (GET /v1/models/NAME or gRPC GetModelStatus).
    Status(ServerArgs),
    /// Print the model's signatures (GET /v1/models/NAME/metadata or gRPC GetModelMetadata).
    Metadata(ServerArgs),
}

#[derive(Args, Debug, Clone)]
#[command(rename_all = "snake_case")]
pub struct ServerArgs {
    /// The server: host:port (http://host:port), its REST port (TF Serving: 8501) or its gRPC
    /// port (8500) with --grpc; https://host:port for TLS; unix:PATH for the gRPC socket of
    /// --grpc_socket_path.
    #[arg(long)]
    pub server: String,
    /// The model name.
    #[arg(long)]
    pub model: String,
    /// A model version (default: the latest).
    #[arg(long, conflicts_with = "label")]
    pub version: Option<i64>,
    /// A version label, e.g. stable.
    #[arg(long)]
    pub label: Option<String>,
    /// Use gRPC instead of REST.
    #[arg(long)]
    pub grpc: bool,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 60.0)]
    pub timeout_secs: f64,
    #[command(flatten)]
    pub tls: tls::TlsArgs,
}

#[derive(Args, Debug)]
#[command(rename_all = "snake_case")]
#[command(group(ArgGroup::new("request").required(true).args(["json", "image", "instances"])))]
pub struct ClientPredictArgs {
    #[command(flatten)]
    pub server: ServerArgs,
    /// The signature to run (default: serving_default).
    #[arg(long, default_value = "")]
    pub signature: String,
    /// A REST predict request body ({"instances": ...} or {"inputs": ...}); - for stdin.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Image files (JPEG or PNG): sent as bytes ({"b64": ...}) to a string input, or decoded,
    /// resized to the input's height and width as tf.image.resize does (bilinear, on float
    /// pixels) and sent as pixels to a numeric image input (rounded for an integer input).
    #[arg(long, num_args = 1..)]
    pub image: Vec<PathBuf>,
    /// A JSON list of instances, as REST's "instances", e.g. '[[1.0], [2.0]]'.
    #[arg(long)]
    pub instances: Option<String>,
    /// Print the k highest scores of each output (with their class index, or their label when
    /// the model returns classes and scores) instead of the raw answer.
    #[arg(long, value_parser = at_least_one)]
    pub top_k: Option<usize>,
    /// The float range pixels 0..255 map to for float image inputs.
    #[arg(long, default_value = "0,1", allow_hyphen_values = true)]
    pub image_range: Range,
}

/// A count of 1 or more (clap's ranged parser would print the range up to `u64::MAX`).
fn at_least_one(text: &str) -> Result<usize, String> {
    match text.parse::<usize>() {
        Ok(0) => Err("it must be 1 or more".into()),
        Ok(k) => Ok(k),
        Err(e) => Err(e.to_string()),
    }
}

fn target(args: &ServerArgs) -> Target {
    Target {
        model: args.model.clone(),
        version: args.version,
        label: args.label.clone(),
    }
}

fn timeout(args: &ServerArgs) -> anyhow::Result<Duration> {
    if !(args.timeout_secs.is_finite() && args.timeout_secs > 0.0) {
        bail!("--timeout_secs must be a positive number of seconds");
    }
    Ok(Duration::from_secs_f64(args.timeout_secs))
}

pub fn client(args: ClientArgs) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async move {
        match args.command {
            ClientCommand::Status(s) => {
                let conn = Conn::connect(&s, timeout(&s)?).await?;
                print_json(&conn.status(&target(&s)).await?)
            }
            ClientCommand::Metadata(s) => {
                let conn = Conn::connect(&s, timeout(&s)?).await?;
                print_json(&conn.metadata(&target(&s)).await?.0)
            }
            ClientCommand::Predict(p) => predict(p).await,
        }
    })
}

/// Prints a line to stdout; a closed pipe (`| head`) ends the output quietly.
fn emit(text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match writeln!(out, "{text}").and_then(|()| out.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e).context("writing to stdout"),
        _ => Ok(()),
    }
}

fn print_json(body: &[u8]) -> anyhow::Result<()> {
    emit(String::from_utf8_lossy(body).trim_end())
}

/// Adds `"signature_name"` to a REST body that has none (when the body is a JSON object).
fn with_signature(body: Vec<u8>, signature: &str) -> Vec<u8> {
    if signature.is_empty() {
        return body;
    }
    match serde_json::from_slice::<serde_json::Value>(&body) {
        Ok(serde_json::Value::Object(mut map)) if !map.contains_key("signature_name") => {
            let mut with = serde_json::Map::new();
            with.insert("signature_name".into(), signature.into());
            with.append(&mut map);
            serde_json::to_vec(&serde_json::Value::Object(with)).unwrap_or(body)
        }
        _ => body,
    }
}

async fn predict(p: ClientPredictArgs) -> anyhow::Result<()> {
    let s = &p.server;
    let target = target(s);
    let conn = Conn::connect(s, timeout(s)?).await?;
    // The signature the answers are of, and the model's signatures when they were needed.
    let (answers, labels, signature_name, signatures) = if !p.image.is_empty() {
        let (_, signatures) = conn.metadata(&target).await?;
        let key = oxserve_core::signature::signature_key(&p.signature);
        let signature = signatures.get(key).with_context(|| {
            format!(
                "model {} has no signature {key:?} (it has: {})",
                s.model,
                signatures.keys().cloned().collect::<Vec<_>>().join(", ")
            )
        })?;
        let batches = images::image_batches(&p.image, key, signature, p.image_range)?;
        let mut answers = Vec::with_capacity(batches.len());
        for batch in batches {
            answers.push(
                conn.predict_tensors(&target, &p.signature, batch, Format::Row)
                    .await?,
            );
        }
        let labels = p.image.iter().map(|f| f.display().to_string()).collect();
        (answers, labels, key.to_string(), Some(signatures))
    } else {
        let body = if let Some(path) = &p.json {
            let mut body = Vec::new();
            if path.as_os_str() == "-" {
                std::io::stdin()
                    .read_to_end(&mut body)
                    .context("--json -: reading stdin")?;
            } else {
                body = std::fs::read(path).with_context(|| format!("--json {}", path.display()))?;
            }
            body
        } else {
            let instances = p.instances.as_deref().unwrap_or("[]");
            oxserve_server::rest::json::check_json_value(instances.as_bytes())
                .map_err(|e| anyhow::anyhow!("--instances: {}", e.message))?;
            format!("{{\"instances\": {instances}}}").into_bytes()
        };
        let body = with_signature(body, &p.signature);
        let signature_name = match p.top_k {
            Some(_) => signature_of(&body),
            None => String::new(),
        };
        let answer = conn.predict_json(&target, body).await?;
        (vec![answer], Vec::new(), signature_name, None)
    };
    match p.top_k {
        None => {
            for answer in &answers {
                print_json(answer)?;
            }
        }
        Some(k) => {
            // A single output comes without its name (as bare rows, or bare "outputs"): the
            // signature has it.
            let signatures = match signatures {
                Some(signatures) => Some(signatures),
                // Only a label is at stake: without metadata it stays "output".
                None => conn.metadata(&target).await.ok().map(|(_, s)| s),
            };
            let single = signatures
                .as_ref()
                .and_then(|all| oxserve_core::signature::find_signature(all, &signature_name).ok())
                .and_then(
                    |signature| match signature.outputs.keys().collect::<Vec<_>>()[..] {
                        [only] => Some(only.clone()),
                        _ => None,
                    },
                )
                .unwrap_or_else(|| "output".to_string());
            let mut rows = Vec::new();
            for answer in &answers {
                rows.extend(instances_of(answer, &single)?);
            }
            for (i, outputs) in rows.iter().enumerate() {
                let label = labels
                    .get(i)
                    .cloned()
                    .unwrap_or_else(|| format!("instance {i}"));
                emit(&format!("{label}:"))?;
                for line in top_k_lines(outputs, k) {
                    emit(&format!("  {line}"))?;
                }
            }
        }
    }
    Ok(())
}

/// The `"signature_name"` of a REST request body ("" when it has none).
fn signature_of(body: &[u8]) -> String {
    serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v.get("signature_name")?.as_str().map(String::from))
        .unwrap_or_default()
}

type Outputs = Vec<(String, serde_json::Value)>;

/// The answer split per instance: each instance's outputs by alias (`single` for a bare single
/// output).
fn instances_of(answer: &[u8], single: &str) -> anyhow::Result<Vec<Outputs>> {
    let value: serde_json::Value = serde_json::from_slice(answer)
        .context("the answer is not JSON that can be ranked (NaN or Infinity in it?)")?;
    let is_b64 = |v: &serde_json::Value| {
        v.as_object()
            .is_some_and(|o| o.len() == 1 && o.contains_key("b64"))
    };
    if let Some(rows) = value.get("predictions").and_then(|p| p.as_array()) {
        return Ok(rows
            .iter()
            .map(|row| match row.as_object() {
                Some(map) if !is_b64(row) => {
                    map.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
                }
                _ => vec![(single.to_string(), row.clone())],
            })
            .collect());
    }
    if let Some(outputs) = value.get("outputs") {
        let columns: Outputs = match outputs.as_object() {
            Some(map) if !is_b64(outputs) => {
                map.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
            }
            _ => vec![(single.to_string(), outputs.clone())],
        };
        let batch = columns
            .iter()
            .filter_map(|(_, v)| v.as_array().map(Vec::len))
            .max()
            .unwrap_or(0);
        return Ok((0..batch)
            .map(|i| {
                columns
                    .iter()
                    .filter_map(|(k, v)| v.get(i).map(|x| (k.clone(), x.clone())))
                    .collect()
            })
            .collect());
    }
    bail!("the answer has neither \"predictions\" nor \"outputs\"")
}

fn numbers(v: &serde_json::Value) -> Option<Vec<f64>> {
    v.as_array()?
        .iter()
        .map(serde_json::Value::as_f64)
        .collect()
}

/// Top-k lines for one instance: `classes` and `scores` paired when both are there, every other
/// vector of numbers ranked with its indices, anything else printed as is.
fn top_k_lines(outputs: &Outputs, k: usize) -> Vec<String> {
    let get = |name: &str| outputs.iter().find(|(a, _)| a == name).map(|(_, v)| v);
    let mut lines = Vec::new();
    let mut paired = false;
    if let (Some(classes), Some(scores)) = (get("classes"), get("scores")) {
        let labels: Option<Vec<String>> = classes.as_array().and_then(|a| {
            a.iter()
                .map(|c| match c {
                    serde_json::Value::String(s) => Some(s.clone()),
                    serde_json::Value::Number(n) => Some(n.to_string()),
                    _ => None,
                })
                .collect()
        });
        if let (Some(labels), Some(scores)) = (labels, numbers(scores)) {
            if labels.len() == scores.len() {
                let mut pairs: Vec<(String, f64)> = labels.into_iter().zip(scores).collect();
                pairs.sort_by(|a, b| b.1.total_cmp(&a.1));
                let ranked: Vec<String> = pairs
                    .iter()
                    .take(k)
                    .map(|(l, s)| format!("{l} {s:.6}"))
                    .collect();
                lines.push(format!("classes/scores: {}", ranked.join(", ")));
                paired = true;
            }
        }
    }
    for (alias, value) in outputs {
        if paired && (alias == "classes" || alias == "scores") {
            continue;
        }
        match numbers(value) {
            Some(scores) => {
                let mut ranked: Vec<(usize, f64)> = scores.into_iter().enumerate().collect();
                ranked.sort_by(|a, b| b.1.total_cmp(&a.1));
                let ranked: Vec<String> = ranked
                    .iter()
                    .take(k)
                    .map(|(i, s)| format!("#{i} {s:.6}"))
                    .collect();
                lines.push(format!("{alias}: {}", ranked.join(", ")));
            }
            None => lines.push(format!("{alias}: {value}")),
        }
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_is_added_when_missing() {
        let body = with_signature(br#"{"instances": [1]}"#.to_vec(), "s");
        assert_eq!(body, br#"{"signature_name":"s","instances":[1]}"#.to_vec());
        let kept = br#"{"signature_name": "t", "instances": [1]}"#.to_vec();
        assert_eq!(with_signature(kept.clone(), "s"), kept);
        assert_eq!(
            with_signature(b"nonsense".to_vec(), "s"),
            b"nonsense".to_vec()
        );
    }

    #[test]
    fn answers_split_per_instance_and_rank() {
        let rows = instances_of(
            br#"{"predictions": [{"weather": [0.1, 0.7, 0.2], "classes": ["a", "b"], "scores": [0.3, 0.6]}]}"#,
            "unused",
        )
        .unwrap();
        let lines = top_k_lines(&rows[0], 2);
        assert_eq!(
            lines,
            vec![
                "classes/scores: b 0.600000, a 0.300000".to_string(),
                "weather: #1 0.700000, #2 0.200000".to_string()
            ]
        );
        let rows = instances_of(br#"{"outputs": [[1, 2], [3, 0]]}"#, "y").unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!(top_k_lines(&rows[1], 1), vec!["y: #0 3.000000"]);
        let rows = instances_of(br#"{"predictions": [{"b64": "aGk="}]}"#, "y").unwrap();
        assert_eq!(top_k_lines(&rows[0], 1), vec![r#"y: {"b64":"aGk="}"#]);
        assert!(instances_of(b"{}", "y").is_err());
        assert_eq!(
            signature_of(br#"{"signature_name": "s", "instances": []}"#),
            "s"
        );
        assert_eq!(signature_of(br#"{"instances": []}"#), "");
    }
}
