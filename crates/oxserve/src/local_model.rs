//! One SavedModel version loaded in-process, for the commands that need no server (`run`,
//! `predict`), and the tag-set syntax every command shares.

use std::path::Path;

use anyhow::Context;
use oxserve_core::{Backend, Servable};
use oxserve_tensorflow::{BackendOptions, TensorFlowBackend};

/// A comma-separated tag set (`serve`, `serve,gpu`), trimmed, empty entries dropped.
pub fn parse_tags(tag_set: &str) -> Vec<String> {
    tag_set
        .split(',')
        .map(str::trim)
        .filter(|tag| !tag.is_empty())
        .map(String::from)
        .collect()
}

/// Loads the TensorFlow runtime and the MetaGraphDef of `dir` tagged `tag_set`.
pub fn load(dir: &Path, tag_set: &str, options: BackendOptions) -> anyhow::Result<Servable> {
    // A missing tag set is named with the ones there are, as `show` names them (TensorFlow
    // would point at saved_model_cli). A text SavedModel is left to TensorFlow.
    if dir.join("saved_model.pb").is_file() {
        crate::show::find_meta_graph(&crate::show::read_saved_model(dir)?, tag_set)?;
    }
    let backend = TensorFlowBackend::new(options)?;
    let model = backend
        .load(dir, &parse_tags(tag_set))
        .with_context(|| format!("loading the SavedModel in {}", dir.display()))?;
    Ok(Servable::new(String::new(), 0, model))
}
