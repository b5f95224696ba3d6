//! One SavedModel version loaded in-process, for the commands that need no server (`run`,
//! `predict`), and the tag-set syntax every command shares.

use std::path::Path;

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
    let backend = TensorFlowBackend::new(options)?;
    let model = backend.load(dir, &parse_tags(tag_set)).map_err(|err| {
        // A missing tag set is named with the ones there are, as `show` names them (TensorFlow
        // points at saved_model_cli). Read only when loading failed, and only from a binary
        // SavedModel (a text one is left to TensorFlow's words).
        let missing_tags = crate::show::read_saved_model(dir)
            .ok()
            .and_then(|model| crate::show::find_meta_graph(&model, tag_set).err());
        // The backend's load errors name the directory.
        missing_tags.unwrap_or_else(|| anyhow::Error::from(err))
    })?;
    Ok(Servable::new(String::new(), 0, model))
}
