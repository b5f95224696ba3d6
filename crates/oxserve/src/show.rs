//! `oxserve show`: what `saved_model_cli show` prints, read straight from `saved_model.pb` (no
//! runtime needed).

use std::collections::HashMap;
use std::fmt::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use clap::Args;
use oxserve_proto::tensorflow::tensor_info::Encoding;
use oxserve_proto::tensorflow::{DataType, MetaGraphDef, SavedModel, SignatureDef, TensorInfo};
use prost::Message;

#[derive(Args, Debug)]
#[command(rename_all = "snake_case")]
pub struct ShowArgs {
    /// Directory containing the SavedModel (one version directory).
    #[arg(long)]
    pub dir: PathBuf,
    /// Show every tag set and every signature.
    #[arg(long)]
    pub all: bool,
    /// Comma-separated tag set of the MetaGraphDef to show.
    #[arg(long)]
    pub tag_set: Option<String>,
    /// Key of the SignatureDef to show (with --tag_set; without, the tag sets are listed).
    #[arg(long)]
    pub signature_def: Option<String>,
}

/// Reads and decodes `<dir>/saved_model.pb`.
pub fn read_saved_model(dir: &Path) -> anyhow::Result<SavedModel> {
    let path = dir.join("saved_model.pb");
    let bytes = std::fs::read(&path)
        .with_context(|| format!("SavedModel file does not exist at: {}", path.display()))?;
    SavedModel::decode(&bytes[..])
        .with_context(|| format!("{} is not a SavedModel", path.display()))
}

fn tags_of(meta_graph: &MetaGraphDef) -> Vec<String> {
    meta_graph
        .meta_info_def
        .as_ref()
        .map(|info| info.tags.clone())
        .unwrap_or_default()
}

/// The MetaGraphDef whose tag set equals `tag_set` (order does not matter).
pub fn find_meta_graph<'a>(
    model: &'a SavedModel,
    tag_set: &str,
) -> anyhow::Result<&'a MetaGraphDef> {
    // Tag sets are sets, as TensorFlow's loader compares them: `serve,serve` is `serve`.
    let mut wanted = crate::local_model::parse_tags(tag_set);
    wanted.sort_unstable();
    wanted.dedup();
    model
        .meta_graphs
        .iter()
        .find(|meta_graph| {
            let mut tags = tags_of(meta_graph);
            tags.sort_unstable();
            tags.dedup();
            tags == wanted
        })
        .with_context(|| {
            let available: Vec<String> = model.meta_graphs.iter().map(|m| format!("'{}'", tags_of(m).join(", "))).collect();
            format!(
                "MetaGraphDef associated with tag-set '{tag_set}' could not be found in SavedModel; available tag-sets: {}",
                available.join(" ")
            )
        })
}

pub fn show(args: &ShowArgs) -> anyhow::Result<()> {
    let model = read_saved_model(&args.dir)?;
    print!("{}", render(&model, args)?);
    Ok(())
}

fn render(model: &SavedModel, args: &ShowArgs) -> anyhow::Result<String> {
    let mut out = String::new();
    if args.all {
        let mut meta_graphs: Vec<&MetaGraphDef> = model.meta_graphs.iter().collect();
        meta_graphs.sort_by_key(|meta_graph| tags_of(meta_graph));
        for meta_graph in meta_graphs {
            let _ = writeln!(
                out,
                "\nMetaGraphDef with tag-set: '{}' contains the following SignatureDefs:",
                tags_of(meta_graph).join(", ")
            );
            for (key, signature) in sorted(&meta_graph.signature_def) {
                let _ = writeln!(out, "\nsignature_def['{key}']:");
                write_signature(&mut out, signature, "  ");
            }
        }
        return Ok(out);
    }
    match (&args.tag_set, &args.signature_def) {
        // As saved_model_cli, a signature without a tag set lists the tag sets.
        (None, _) => {
            out.push_str("The given SavedModel contains the following tag-sets:\n");
            let mut tag_sets: Vec<Vec<String>> = model.meta_graphs.iter().map(tags_of).collect();
            tag_sets.sort();
            for mut tags in tag_sets {
                tags.sort();
                let _ = writeln!(out, "'{}'", tags.join(", "));
            }
        }
        (Some(tag_set), None) => {
            let meta_graph = find_meta_graph(model, tag_set)?;
            out.push_str(
                "The given SavedModel MetaGraphDef contains SignatureDefs with the following keys:\n",
            );
            for (key, _) in sorted(&meta_graph.signature_def) {
                let _ = writeln!(out, "SignatureDef key: \"{key}\"");
            }
        }
        (Some(tag_set), Some(key)) => {
            let meta_graph = find_meta_graph(model, tag_set)?;
            let Some(signature) = meta_graph.signature_def.get(key) else {
                let keys: Vec<&str> = sorted(&meta_graph.signature_def)
                    .into_iter()
                    .map(|(key, _)| key.as_str())
                    .collect();
                bail!(
                    "Could not find signature \"{key}\". Please choose from: {}",
                    keys.join(", ")
                );
            };
            write_signature(&mut out, signature, "");
        }
    }
    Ok(out)
}

/// A map's entries in key order, as saved_model_cli prints them.
fn sorted<V>(map: &HashMap<String, V>) -> Vec<(&String, &V)> {
    let mut entries: Vec<(&String, &V)> = map.iter().collect();
    entries.sort_by_key(|(key, _)| *key);
    entries
}

/// The SignatureDef as saved_model_cli prints it, from the proto itself (a shape the export left
/// out is `()` there, as it is here).
fn write_signature(out: &mut String, signature: &SignatureDef, indent: &str) {
    let _ = writeln!(
        out,
        "{indent}The given SavedModel SignatureDef contains the following input(s):"
    );
    for (alias, info) in sorted(&signature.inputs) {
        write_tensor(out, "inputs", alias, info, indent);
    }
    let _ = writeln!(
        out,
        "{indent}The given SavedModel SignatureDef contains the following output(s):"
    );
    for (alias, info) in sorted(&signature.outputs) {
        write_tensor(out, "outputs", alias, info, indent);
    }
    let _ = writeln!(out, "{indent}Method name is: {}", signature.method_name);
}

fn write_tensor(out: &mut String, kind: &str, alias: &str, info: &TensorInfo, indent: &str) {
    let shape = match &info.tensor_shape {
        Some(shape) if shape.unknown_rank => "unknown_rank".to_string(),
        Some(shape) => {
            let dims: Vec<String> = shape.dim.iter().map(|dim| dim.size.to_string()).collect();
            format!("({})", dims.join(", "))
        }
        None => "()".to_string(),
    };
    let dtype = DataType::try_from(info.dtype).map_or("DT_INVALID", |dtype| dtype.as_str_name());
    // Sparse and composite tensors have no name of their own (saved_model_cli prints it empty).
    let name = match &info.encoding {
        Some(Encoding::Name(name)) => name.as_str(),
        _ => "",
    };
    let _ = writeln!(out, "{indent}  {kind}['{alias}'] tensor_info:");
    let _ = writeln!(out, "{indent}      dtype: {dtype}");
    let _ = writeln!(out, "{indent}      shape: {shape}");
    let _ = writeln!(out, "{indent}      name: {name}");
}

#[cfg(test)]
mod tests {
    use super::*;
    use oxserve_proto::tensorflow::meta_graph_def::MetaInfoDef;

    fn model(tag_sets: &[&[&str]]) -> SavedModel {
        SavedModel {
            meta_graphs: tag_sets
                .iter()
                .map(|tags| MetaGraphDef {
                    meta_info_def: Some(MetaInfoDef {
                        tags: tags.iter().map(|t| t.to_string()).collect(),
                        ..Default::default()
                    }),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn tag_sets_match_as_sets() {
        let saved = model(&[&["train"], &["serve", "serve"], &["gpu", "serve"]]);
        let tags = |wanted| tags_of(find_meta_graph(&saved, wanted).unwrap());
        assert_eq!(tags("serve"), ["serve", "serve"]);
        assert_eq!(tags("serve,serve"), ["serve", "serve"]);
        assert_eq!(tags("serve,gpu,gpu"), ["gpu", "serve"]);
        assert!(find_meta_graph(&saved, "eval").is_err());
    }
}
