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
use oxserve_server::rest::json::{self, Format, Number, Value};

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
    match Duration::try_from_secs_f64(args.timeout_secs) {
        Ok(timeout) if !timeout.is_zero() => Ok(timeout),
        _ => bail!(
            "--timeout_secs {}: give a positive number of seconds, at most {}",
            args.timeout_secs,
            Duration::MAX.as_secs()
        ),
    }
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

/// The body to send, with `--signature` (`flag`) in it, and the signature it names. The body is
/// sent as written (re-serialised, NaN and Infinity would not survive, nor the digits of every
/// float64 literal): `"signature_name"` is written in after the top-level object's opening brace.
fn with_signature(body: Vec<u8>, flag: &str) -> anyhow::Result<(Vec<u8>, String)> {
    use oxserve_core::signature::signature_key;
    // Not an object, or not JSON: the server says what is wrong with it.
    let Ok(Value::Object(members)) = json::parse_json(&body) else {
        return Ok((body, flag.to_string()));
    };
    // The first, as the server takes it.
    if let Some((_, named)) = members.iter().find(|(key, _)| key == b"signature_name") {
        // Not a string: the server's error says so.
        let Value::String(name) = named else {
            return Ok((body, flag.to_string()));
        };
        let name = String::from_utf8_lossy(name).into_owned();
        if !flag.is_empty() && signature_key(flag) != signature_key(&name) {
            bail!(
                "--signature {flag} conflicts with the request body's \"signature_name\": {name:?}; give one of them"
            );
        }
        return Ok((body, name));
    }
    if flag.is_empty() {
        return Ok((body, String::new()));
    }
    // Only spaces come before the object's brace.
    let open = body.iter().position(|&b| b == b'{').map_or(0, |at| at + 1);
    let member = format!(
        "\"signature_name\":{}{}",
        serde_json::Value::from(flag),
        if members.is_empty() { "" } else { "," }
    );
    let mut with = Vec::with_capacity(body.len() + member.len());
    with.extend_from_slice(&body[..open]);
    with.extend_from_slice(member.as_bytes());
    with.extend_from_slice(&body[open..]);
    Ok((with, flag.to_string()))
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
        // The body is only read (a whole document) when it gets a signature or --top_k needs
        // the one it names.
        let (body, signature_name) = if p.signature.is_empty() && p.top_k.is_none() {
            (body, String::new())
        } else {
            with_signature(body, &p.signature)?
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

type Outputs = Vec<(String, Value)>;

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn members(members: &[(Vec<u8>, Value)]) -> Outputs {
    members.iter().map(|(k, v)| (text(k), v.clone())).collect()
}

/// The answer split per instance: each instance's outputs by alias (`single` for a bare single
/// output).
fn instances_of(answer: &[u8], single: &str) -> anyhow::Result<Vec<Outputs>> {
    let value = json::parse_json(answer)
        .map_err(|e| anyhow::anyhow!("the answer is not JSON: {}", e.message))?;
    let is_b64 = |v: &Value| v.base64_payload().is_some();
    if let Some(Value::Array(rows)) = value.find_member(b"predictions") {
        return Ok(rows
            .iter()
            .map(|row| match row {
                Value::Object(map) if !is_b64(row) => members(map),
                _ => vec![(single.to_string(), row.clone())],
            })
            .collect());
    }
    if let Some(outputs) = value.find_member(b"outputs") {
        let columns: Outputs = match outputs {
            Value::Object(map) if !is_b64(outputs) => members(map),
            _ => vec![(single.to_string(), outputs.clone())],
        };
        let batch = columns
            .iter()
            .filter_map(|(_, v)| match v {
                Value::Array(items) => Some(items.len()),
                _ => None,
            })
            .max()
            .unwrap_or(0);
        return Ok((0..batch)
            .map(|i| {
                columns
                    .iter()
                    .filter_map(|(k, v)| match v {
                        Value::Array(items) => items.get(i).map(|x| (k.clone(), x.clone())),
                        _ => None,
                    })
                    .collect()
            })
            .collect());
    }
    bail!("the answer has neither \"predictions\" nor \"outputs\"")
}

fn numbers(v: &Value) -> Option<Vec<f64>> {
    match v {
        Value::Array(items) => items
            .iter()
            .map(|x| match x {
                Value::Number(n) => Some(n.as_f64()),
                _ => None,
            })
            .collect(),
        _ => None,
    }
}

/// A number as the server wrote it: integers exactly, floats by their shortest digits.
fn number_text(n: Number) -> String {
    match n {
        Number::U(u) => u.to_string(),
        Number::I(i) => i.to_string(),
        Number::D(d) if d.is_nan() => "NaN".to_string(),
        Number::D(d) if d.is_infinite() => {
            if d > 0.0 { "Infinity" } else { "-Infinity" }.to_string()
        }
        Number::D(d) => d.to_string(),
    }
}

/// Compact JSON, as the server's values read.
fn compact(v: &Value) -> String {
    let quoted = |s: &[u8]| serde_json::Value::from(text(s)).to_string();
    match v {
        Value::Null => "null".to_string(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => number_text(*n),
        Value::String(s) => quoted(s),
        Value::Array(items) => format!(
            "[{}]",
            items.iter().map(compact).collect::<Vec<_>>().join(",")
        ),
        Value::Object(members) => format!(
            "{{{}}}",
            members
                .iter()
                .map(|(k, v)| format!("{}:{}", quoted(k), compact(v)))
                .collect::<Vec<_>>()
                .join(",")
        ),
    }
}

/// Highest first; NaN, which is no score, below every number.
fn by_score(a: f64, b: f64) -> std::cmp::Ordering {
    a.is_nan().cmp(&b.is_nan()).then(b.total_cmp(&a))
}

/// Top-k lines for one instance: `classes` and `scores` paired when both are there, every other
/// vector of numbers ranked with its indices, anything else printed as is.
fn top_k_lines(outputs: &Outputs, k: usize) -> Vec<String> {
    let get = |name: &str| outputs.iter().find(|(a, _)| a == name).map(|(_, v)| v);
    let mut lines = Vec::new();
    let mut paired = false;
    if let (Some(Value::Array(classes)), Some(scores)) = (get("classes"), get("scores")) {
        let labels: Option<Vec<String>> = classes
            .iter()
            .map(|c| match c {
                Value::String(s) => Some(text(s)),
                Value::Number(n) => Some(number_text(*n)),
                _ => None,
            })
            .collect();
        if let (Some(labels), Some(scores)) = (labels, numbers(scores)) {
            if labels.len() == scores.len() {
                let mut pairs: Vec<(String, f64)> = labels.into_iter().zip(scores).collect();
                pairs.sort_by(|a, b| by_score(a.1, b.1));
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
                ranked.sort_by(|a, b| by_score(a.1, b.1));
                let ranked: Vec<String> = ranked
                    .iter()
                    .take(k)
                    .map(|(i, s)| format!("#{i} {s:.6}"))
                    .collect();
                lines.push(format!("{alias}: {}", ranked.join(", ")));
            }
            None => lines.push(format!("{alias}: {}", compact(value))),
        }
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    fn signed(body: &str, flag: &str) -> anyhow::Result<(String, String)> {
        let (body, name) = with_signature(body.as_bytes().to_vec(), flag)?;
        Ok((String::from_utf8(body).unwrap(), name))
    }

    #[test]
    fn signature_is_written_into_the_body_as_written() {
        // NaN, Infinity and float64 literals stay as they are.
        let body = r#" {"instances": [[1.0], [NaN], [-Infinity], [9.0093432428344947e3]]}"#;
        assert_eq!(
            signed(body, "s").unwrap(),
            (
                r#" {"signature_name":"s","instances": [[1.0], [NaN], [-Infinity], [9.0093432428344947e3]]}"#.into(),
                "s".into()
            )
        );
        assert_eq!(
            signed("{ }", "a\"b").unwrap(),
            (r#"{"signature_name":"a\"b" }"#.into(), "a\"b".into())
        );
        // No flag: the body's signature, if any.
        let named = r#"{"signature_name": "t", "instances": [NaN]}"#;
        assert_eq!(signed(named, "").unwrap(), (named.into(), "t".into()));
        assert_eq!(signed("{}", "").unwrap(), ("{}".into(), "".into()));
        // The same signature twice is fine ("" is serving_default), two are not.
        assert_eq!(signed(named, "t").unwrap(), (named.into(), "t".into()));
        let default = r#"{"signature_name": "", "instances": []}"#;
        assert!(signed(default, "serving_default").is_ok());
        let err = signed(named, "u").unwrap_err().to_string();
        assert_eq!(
            err,
            r#"--signature u conflicts with the request body's "signature_name": "t"; give one of them"#
        );
        // A member of a nested object is not the body's.
        let nested = r#"{"inputs": {"signature_name": "t"}}"#;
        assert_eq!(signed(nested, "s").unwrap().1, "s");
        // Not an object, or a signature_name that is not a string: as written, for the server
        // to refuse.
        for body in ["[1]", "nonsense", r#"{"signature_name": 1}"#] {
            assert_eq!(signed(body, "s").unwrap(), (body.into(), "s".into()));
        }
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
    }

    #[test]
    fn nan_ranks_last_and_infinities_as_numbers() {
        let answer = br#"{"predictions": [{"scores": [0.5, NaN, Infinity, -Infinity], "classes": ["a", "b", "c", "d"],
            "logits": [NaN, -Infinity, 1, Infinity], "words": ["\u00e9", {"b64": "aGk="}, 9223372036854775807, -0.5, null]}]}"#;
        let rows = instances_of(answer, "y").unwrap();
        assert_eq!(
            top_k_lines(&rows[0], 4),
            vec![
                "classes/scores: c inf, a 0.500000, d -inf, b NaN",
                "logits: #3 inf, #2 1.000000, #1 -inf, #0 NaN",
                r#"words: ["é",{"b64":"aGk="},9223372036854775807,-0.5,null]"#,
            ]
        );
        // Integer class ids are printed exactly.
        let answer =
            br#"{"outputs": {"classes": [[9007199254740993, 2]], "scores": [[0.75, 0.25]]}}"#;
        let rows = instances_of(answer, "y").unwrap();
        assert_eq!(
            top_k_lines(&rows[0], 1),
            vec!["classes/scores: 9007199254740993 0.750000"]
        );
    }
}
