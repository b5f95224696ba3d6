//! `oxserve run`: what `saved_model_cli run` does — run one signature of a SavedModel on inputs
//! from `.npy`/`.npz` files, JSON literals or tf.Examples, and print or save the outputs.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::Args;
use oxserve_core::{Signature, Tensor};
use oxserve_server::rest::json::{self, Format};
use oxserve_tensorflow::BackendOptions;

use crate::{local_model, npy};

#[derive(Args, Debug)]
#[command(rename_all = "snake_case")]
pub struct RunArgs {
    /// Directory containing the SavedModel (one version directory).
    #[arg(long)]
    pub dir: PathBuf,
    /// Comma-separated tag set of the MetaGraphDef to load.
    #[arg(long, default_value = "serve")]
    pub tag_set: String,
    /// Key of the SignatureDef to run.
    #[arg(long, default_value = "serving_default")]
    pub signature_def: String,
    /// `alias=file.npy`, `alias=file.npz` or `alias=file.npz[name]`, separated by ';'.
    #[arg(long)]
    pub inputs: Option<String>,
    /// `alias=<JSON value>` (e.g. `x=[[1,2]]`, `{"b64": ...}` for bytes), separated by ';'.
    /// Unlike saved_model_cli, expressions are JSON literals, not Python.
    #[arg(long)]
    pub input_exprs: Option<String>,
    /// `alias=[{"feature": [values]}, ...]`: tf.Examples, serialized into a string input.
    #[arg(long)]
    pub input_examples: Option<String>,
    /// Write each output to `<outdir>/<alias>.npy` instead of printing it.
    #[arg(long)]
    pub outdir: Option<PathBuf>,
    /// Overwrite existing files in --outdir.
    #[arg(long)]
    pub overwrite: bool,
    /// Directory holding libtensorflow_cc.so.2 (default: found by scripts/setup).
    #[arg(long, env = "OXSERVE_TENSORFLOW_LIB_DIR")]
    pub tensorflow_library_dir: Option<PathBuf>,
}

/// Splits `a=x;b=y` into (alias, value) pairs. JSON values may contain ';' inside strings, so
/// a part without '=' before any bracket continues the previous value; a trailing ';' ends the
/// list, as in `saved_model_cli`.
fn split_assignments(text: &str, flag: &str) -> anyhow::Result<Vec<(String, String)>> {
    let mut pairs: Vec<(String, String)> = Vec::new();
    let text = text.trim_end().strip_suffix(';').unwrap_or(text);
    for part in text.split(';') {
        match part.split_once('=') {
            Some((alias, value))
                if !alias.trim().is_empty()
                    && alias
                        .trim()
                        .chars()
                        .all(|c| c.is_alphanumeric() || "_-./".contains(c)) =>
            {
                pairs.push((alias.trim().to_string(), value.to_string()));
            }
            _ => match pairs.last_mut() {
                Some((_, value)) => {
                    value.push(';');
                    value.push_str(part);
                }
                None if part.trim().is_empty() => {}
                None => bail!("--{flag}: expected <input_key>=<value>, got {part:?}"),
            },
        }
    }
    Ok(pairs)
}

fn json_input(signature: &Signature, alias: &str, expr: &str) -> anyhow::Result<Tensor> {
    json::check_json_value(expr.as_bytes()).map_err(|e| {
        anyhow::anyhow!("--input_exprs: bad value for input {alias}: {}", e.message)
    })?;
    let body = format!(
        "{{\"inputs\": {{{}: {expr}}}}}",
        serde_json::to_string(alias)?
    );
    let parsed = json::parse_predict_request(body.as_bytes(), |_| Ok(signature))
        .with_context(|| format!("--input_exprs: bad value for input {alias}"))?;
    parsed
        .inputs
        .into_iter()
        .next()
        .map(|(_, tensor)| tensor)
        .with_context(|| format!("--input_exprs: no value for input {alias}"))
}

fn example_input(alias: &str, examples: &str) -> anyhow::Result<Tensor> {
    json::check_json_value(examples.as_bytes()).map_err(|e| {
        anyhow::anyhow!(
            "--input_examples: bad examples for input {alias}: {}",
            e.message
        )
    })?;
    let body = format!("{{\"examples\": {examples}}}");
    let parsed = json::parse_example_request(body.as_bytes())
        .with_context(|| format!("--input_examples: bad examples for input {alias}"))?;
    Ok(oxserve_core::inference::serialize_examples(
        None,
        &parsed.examples,
    )?)
}

fn gather_inputs(args: &RunArgs, signature: &Signature) -> anyhow::Result<Vec<(String, Tensor)>> {
    let mut inputs: BTreeMap<String, Tensor> = BTreeMap::new();
    let mut add = |alias: String, tensor: Tensor| -> anyhow::Result<()> {
        if inputs.insert(alias.clone(), tensor).is_some() {
            bail!("input {alias} is given more than once");
        }
        Ok(())
    };
    if let Some(text) = &args.inputs {
        for (alias, file) in split_assignments(text, "inputs")? {
            let tensor = npy::read_tensor(file.trim())?;
            add(alias, tensor)?;
        }
    }
    if let Some(text) = &args.input_exprs {
        for (alias, expr) in split_assignments(text, "input_exprs")? {
            let tensor = json_input(signature, &alias, &expr)?;
            add(alias, tensor)?;
        }
    }
    if let Some(text) = &args.input_examples {
        for (alias, examples) in split_assignments(text, "input_examples")? {
            let tensor = example_input(&alias, &examples)?;
            add(alias, tensor)?;
        }
    }
    Ok(inputs.into_iter().collect())
}

pub fn run(args: &RunArgs) -> anyhow::Result<()> {
    if let Some(outdir) = &args.outdir {
        std::fs::create_dir_all(outdir)
            .with_context(|| format!("creating {}", outdir.display()))?;
    }
    let servable = local_model::load(
        &args.dir,
        &args.tag_set,
        BackendOptions {
            library_dir: args.tensorflow_library_dir.clone(),
            ..BackendOptions::default()
        },
    )?;
    let signature = servable.signature(&args.signature_def)?;
    let inputs = gather_inputs(args, signature)?;
    let outputs = servable.predict(&args.signature_def, inputs, &[])?;
    for (alias, tensor) in &outputs {
        match &args.outdir {
            Some(outdir) => {
                let path = outdir.join(format!("{alias}.npy"));
                if path.exists() && !args.overwrite {
                    bail!("Output file {} already exists. Add \"--overwrite\" to overwrite the existing output files.", path.display());
                }
                npy::write_tensor(&path, tensor)?;
                println!("Output {alias} is saved to {}", path.display());
            }
            None => {
                let single = [(alias.clone(), tensor.clone())];
                let body = json::write_predict_response(&single, Format::Columnar)?;
                let value: serde_json::Value = serde_json::from_slice(&body)?;
                println!("Result for output key {alias}:\n{}", value["outputs"]);
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn assignments_split_on_semicolons_outside_values() {
        let pairs = split_assignments("x=[[1,2]];y={\"b64\": \"a;b\"}", "input_exprs").unwrap();
        assert_eq!(
            pairs,
            vec![
                ("x".into(), "[[1,2]]".into()),
                ("y".into(), "{\"b64\": \"a;b\"}".into())
            ]
        );
        assert!(split_assignments("nonsense", "inputs").is_err());
        assert_eq!(
            split_assignments("x=a.npy; ", "inputs").unwrap(),
            vec![("x".into(), "a.npy".into())]
        );
    }
}
