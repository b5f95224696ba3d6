//! `oxserve run`: what `saved_model_cli run` does — run one signature of a SavedModel on inputs
//! from `.npy`/`.npz` files, JSON literals or tf.Examples, and print or save the outputs.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::Args;
use oxserve_core::{Servable, Signature, Tensor, TensorSpec};
use oxserve_server::grpc::tensor::tensor_from_proto;
use oxserve_server::rest::json;
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
    /// Also write each output to `<outdir>/<alias>.npy`.
    #[arg(long)]
    pub outdir: Option<PathBuf>,
    /// Overwrite existing files in --outdir.
    #[arg(long)]
    pub overwrite: bool,
    /// Directory holding libtensorflow_cc.so.2 (default: found by scripts/setup).
    #[arg(long, env = "OXSERVE_TENSORFLOW_LIB_DIR")]
    pub tensorflow_library_dir: Option<PathBuf>,
}

/// Splits `a=x;b=y` into (alias, value) pairs at the first '=' of each part, as
/// `saved_model_cli` does (so an alias may hold any other character: `in:put`, `my input`).
/// Beyond it, a JSON value may contain ';' inside strings: a part that comes while the previous
/// value is an unfinished JSON string, array or object continues it. A trailing ';' ends the
/// list, as in `saved_model_cli`.
fn split_assignments(text: &str, flag: &str) -> anyhow::Result<Vec<(String, String)>> {
    let mut pairs: Vec<(String, String)> = Vec::new();
    let text = text.trim_end().strip_suffix(';').unwrap_or(text);
    for part in text.split(';') {
        if let Some((_, value)) = pairs.last_mut().filter(|(_, value)| unfinished_json(value)) {
            value.push(';');
            value.push_str(part);
            continue;
        }
        match part.split_once('=') {
            Some((alias, value)) if !alias.trim().is_empty() => {
                pairs.push((alias.trim().to_string(), value.to_string()));
            }
            _ if part.trim().is_empty() => {}
            _ => bail!("--{flag}: expected <input_key>=<value>, got {part:?}"),
        }
    }
    Ok(pairs)
}

/// Whether `value` stops inside a JSON string or with a bracket or brace still open.
fn unfinished_json(value: &str) -> bool {
    let (mut depth, mut in_string, mut escaped) = (0i64, false, false);
    for byte in value.bytes() {
        match (in_string, byte) {
            (true, _) if escaped => escaped = false,
            (true, b'\\') => escaped = true,
            (true, b'"') | (false, b'"') => in_string = !in_string,
            (false, b'[' | b'{') => depth += 1,
            (false, b']' | b'}') => depth -= 1,
            _ => {}
        }
    }
    in_string || depth > 0
}

/// The signature's input `alias`, or saved_model_cli's error listing the valid keys.
fn input_spec<'a>(signature: &'a Signature, alias: &str) -> anyhow::Result<&'a TensorSpec> {
    signature.inputs.get(alias).with_context(|| {
        format!(
            "\"{alias}\" is not a valid input key. Please choose from {}, or use the show command.",
            signature
                .inputs
                .keys()
                .map(|k| format!("\"{k}\""))
                .collect::<Vec<_>>()
                .join(", ")
        )
    })
}

fn json_input(signature: &Signature, alias: &str, expr: &str) -> anyhow::Result<Tensor> {
    let spec = input_spec(signature, alias)?;
    json::check_json_value(expr.as_bytes()).map_err(|e| {
        anyhow::anyhow!("--input_exprs: bad value for input {alias}: {}", e.message)
    })?;
    let body = format!(
        "{{\"inputs\": {{{}: {expr}}}}}",
        serde_json::to_string(alias)?
    );
    // Parsed as a request to a signature of this input alone: the others may come from other
    // flags, or from their defaults.
    let alone = Signature {
        inputs: BTreeMap::from([(alias.to_string(), spec.clone())]),
        ..Signature::default()
    };
    let parsed = json::parse_predict_request(body.as_bytes(), |_| Ok(&alone))
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

/// A shape as Python prints a tuple: `(2, 3)`, `(3,)`, `()`.
fn tuple(dims: impl IntoIterator<Item = String>) -> String {
    let dims: Vec<String> = dims.into_iter().collect();
    match dims.as_slice() {
        [one] => format!("({one},)"),
        _ => format!("({})", dims.join(", ")),
    }
}

/// Checks `tensor` (from `source`: a file, or the flag that gave it) against the signature's
/// input `alias`, as `session.run` checks a fed array against its placeholder, and converts its
/// dtype as `session.run` does (see [`npy::cast`]): a float64 array feeds a float32 input.
fn fit_input(
    signature: &Signature,
    alias: &str,
    tensor: Tensor,
    source: &str,
) -> anyhow::Result<Tensor> {
    let spec = input_spec(signature, alias)?;
    if !spec.fits(tensor.shape(), 0) {
        bail!(
            "Cannot feed value of shape {} from {source} for input {alias}, which has shape {} in the signature",
            tuple(tensor.shape().iter().map(usize::to_string)),
            spec.shape.as_ref().map_or("<unknown>".to_string(), |dims| tuple(
                dims.iter()
                    .map(|&d| if d < 0 { "None".to_string() } else { d.to_string() })
            ))
        );
    }
    let given = tensor.dtype();
    npy::cast(tensor, spec.dtype).with_context(|| {
        format!(
            "cannot feed the {} value from {source} to input {alias}, which takes {}",
            given.name(),
            spec.dtype.name()
        )
    })
}

fn gather_inputs(
    args: &RunArgs,
    signature: &Signature,
) -> anyhow::Result<BTreeMap<String, Tensor>> {
    let mut inputs: BTreeMap<String, Tensor> = BTreeMap::new();
    let mut add = |alias: String, tensor: Tensor, source: &str| -> anyhow::Result<()> {
        let tensor = fit_input(signature, &alias, tensor, source)?;
        if inputs.insert(alias.clone(), tensor).is_some() {
            bail!("input {alias} is given more than once");
        }
        Ok(())
    };
    if let Some(text) = &args.inputs {
        for (alias, file) in split_assignments(text, "inputs")? {
            let file = file.trim();
            let tensor =
                npy::read_tensor(file).with_context(|| format!("--inputs: input {alias}"))?;
            add(alias, tensor, file)?;
        }
    }
    if let Some(text) = &args.input_exprs {
        for (alias, expr) in split_assignments(text, "input_exprs")? {
            let tensor = json_input(signature, &alias, &expr)?;
            add(alias, tensor, "--input_exprs")?;
        }
    }
    if let Some(text) = &args.input_examples {
        for (alias, examples) in split_assignments(text, "input_examples")? {
            let tensor = example_input(&alias, &examples)?;
            add(alias, tensor, "--input_examples")?;
        }
    }
    Ok(inputs)
}

/// Runs the signature as `saved_model_cli run` does: feeds the inputs given and fetches every
/// output, in alias order. An input left out takes the signature's default value where it has
/// one (a TF2 function's default argument, as TF Serving fills it), else its placeholder's
/// default, else TensorFlow says which placeholder needs a value.
fn run_signature(
    servable: &Servable,
    signature: &Signature,
    mut inputs: BTreeMap<String, Tensor>,
) -> anyhow::Result<Vec<(String, Tensor)>> {
    for (alias, default) in &signature.defaults {
        if !inputs.contains_key(alias) {
            let tensor = tensor_from_proto(default.clone())
                .with_context(|| format!("the default value of input {alias}"))?;
            inputs.insert(alias.clone(), tensor);
        }
    }
    let feeds = inputs
        .into_iter()
        .map(|(alias, tensor)| Ok((input_spec(signature, &alias)?.name.as_str(), tensor)))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let fetches: Vec<&str> = signature
        .outputs
        .values()
        .map(|o| o.name.as_str())
        .collect();
    let outputs = servable.run_graph("Predict", feeds, &fetches)?;
    Ok(signature.outputs.keys().cloned().zip(outputs).collect())
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
    let signature = servable.signature(&args.signature_def).map_err(|_| {
        let keys: Vec<&str> = servable.signatures().keys().map(String::as_str).collect();
        anyhow::anyhow!(
            "Could not find signature \"{}\". Please choose from: {}",
            args.signature_def,
            keys.join(", ")
        )
    })?;
    let inputs = gather_inputs(args, signature)?;
    let outputs = run_signature(&servable, signature, inputs)?;
    let paths = match &args.outdir {
        Some(outdir) => output_paths(outdir, &outputs, args.overwrite)?,
        None => Vec::new(),
    };
    for (alias, tensor) in &outputs {
        let text = json::write_tensor_line(alias, tensor);
        println!(
            "Result for output key {alias}:\n{}",
            String::from_utf8_lossy(&text)
        );
    }
    for ((alias, tensor), path) in outputs.iter().zip(&paths) {
        npy::write_tensor(path, tensor)?;
        println!("Output {alias} is saved to {}", path.display());
    }
    Ok(())
}

/// `<outdir>/<alias>.npy` for every output, all checked before any is written: an existing
/// file without `--overwrite` leaves the others unwritten too.
fn output_paths(
    outdir: &std::path::Path,
    outputs: &[(String, Tensor)],
    overwrite: bool,
) -> anyhow::Result<Vec<PathBuf>> {
    outputs
        .iter()
        .map(|(alias, _)| {
            let path = outdir.join(format!("{alias}.npy"));
            if path.exists() && !overwrite {
                bail!("Output file {} already exists. Add \"--overwrite\" to overwrite the existing output files.", path.display());
            }
            Ok(path)
        })
        .collect()
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
        let pairs = split_assignments(
            "in:put=[1.0];my input=[\"a;b=c\", {\"d;\": 1}];ünï=[3.0]",
            "input_exprs",
        )
        .unwrap();
        assert_eq!(
            pairs,
            vec![
                ("in:put".into(), "[1.0]".into()),
                ("my input".into(), "[\"a;b=c\", {\"d;\": 1}]".into()),
                ("ünï".into(), "[3.0]".into())
            ]
        );
        assert_eq!(
            split_assignments("x=[\"\\\";y=1\"]", "input_exprs").unwrap(),
            vec![("x".into(), "[\"\\\";y=1\"]".into())]
        );
        assert!(split_assignments("nonsense", "inputs").is_err());
        assert!(split_assignments("x=1;nonsense", "inputs").is_err());
        assert_eq!(
            split_assignments("x=a.npy; ", "inputs").unwrap(),
            vec![("x".into(), "a.npy".into())]
        );
    }

    #[test]
    fn inputs_are_checked_against_the_signature_and_cast() {
        use oxserve_core::signature::TensorSpec;
        use oxserve_core::{DType, TensorData};
        let spec = |dtype, shape: Option<Vec<i64>>| TensorSpec {
            name: "x:0".into(),
            dtype,
            shape,
        };
        let mut signature = Signature::default();
        signature
            .inputs
            .insert("x".into(), spec(DType::Float, Some(vec![-1, 2])));
        signature
            .inputs
            .insert("s".into(), spec(DType::String, None));
        let doubles = |shape| Tensor::new(shape, TensorData::Double(vec![0.5; 4])).unwrap();
        let fed = fit_input(&signature, "x", doubles(vec![2, 2]), "a.npy").unwrap();
        assert_eq!(fed.data(), &TensorData::Float(vec![0.5; 4]));
        let err = fit_input(&signature, "x", doubles(vec![1, 4]), "a.npy").unwrap_err();
        assert_eq!(
            err.to_string(),
            "Cannot feed value of shape (1, 4) from a.npy for input x, which has shape (None, 2) in the signature"
        );
        let err = fit_input(&signature, "x", doubles(vec![4]), "a.npy").unwrap_err();
        assert!(err.to_string().contains("shape (4,) from a.npy"), "{err}");
        // Any rank fits an unknown one, but numbers are not strings.
        let err = fit_input(&signature, "s", doubles(vec![1, 1, 4]), "b.npy").unwrap_err();
        assert_eq!(
            err.to_string(),
            "cannot feed the double value from b.npy to input s, which takes string"
        );
        let err = fit_input(&signature, "y", doubles(vec![4]), "a.npy").unwrap_err();
        assert!(
            err.to_string().contains("Please choose from \"s\", \"x\""),
            "{err}"
        );
    }
}
