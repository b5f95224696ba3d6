//! The check of a SavedModel graph's tensor shapes, made before TensorFlow loads the graph.
//!
//! TensorFlow validates some of the shapes it reads from a graph and merely CHECKs others: a
//! `Const` whose value declares [2^20, 2^20, 2^20, 2^20] (more than 2^63 - 1 elements) or 255
//! dimensions fails a CHECK inside `TF_LoadSessionFromSavedModel`, and the SIGABRT takes the whole
//! process down, with the versions it was serving. So every shape in the meta graph TensorFlow
//! would load is held to TensorFlow's own rule (`PartialTensorShape::IsValid`) first, and a graph
//! that breaks it is refused like any other bad version. Which invalid shapes TensorFlow survives
//! (a Placeholder's, say) depends on where they sit and on its version: all are refused alike,
//! even in an attr the node's op does not declare and TensorFlow would ignore.
//!
//! Checked: the attrs of the graph's nodes and of the nodes of every function in its library
//! (shapes, tensors' shapes, lists of either, nested `func` attrs), the functions' own attrs,
//! argument attrs and signature attr defaults, and the shapes inside resource-handle and variant
//! tensors. Not checked: `saved_model.pbtxt` (read by TensorFlow only when there is no .pb, and
//! parsing text needs the full descriptors oxserve does not carry), chunked `saved_model.cpb`,
//! meta graphs other than the one loaded, and the rest of the meta graph (signatures, object
//! graph), which the C API's loader does not build tensors from. A `saved_model.pb` that does not
//! decode is left to TensorFlow, which refuses a truncated or garbled file with its own error
//! (the one operators and TF Serving's users know); prost is stricter than TensorFlow's parser in
//! two ways, though (a declared field with the wrong wire type, nesting deeper than 100 levels),
//! so a file crafted that way goes unchecked.

use std::collections::BTreeSet;
use std::fmt::Write;
use std::path::Path;

use oxserve_core::{Error, Result};
use oxserve_proto::oxserve::graph_shapes::{
    attr_value, AttrEntry, AttrValue, FunctionDef, GraphDef, MetaGraphDef, MetaGraphTags,
    NameAttrList, NodeDef, SavedModel, TensorProto, TensorShapeProto,
};
use prost::bytes::Bytes;
use prost::Message;

/// TensorFlow's `TensorShape::MaxDimensions()`.
const MAX_DIMENSIONS: usize = 254;

/// Why TensorFlow's `PartialTensorShape::IsValid` would refuse `shape`; `None` if it accepts it.
/// Its quirks are kept: known dimensions after an unknown one (-1) are not multiplied, and a
/// shape of unknown rank is valid as long as it lists no dimensions.
pub(crate) fn invalid_shape(shape: &TensorShapeProto) -> Option<&'static str> {
    if shape.unknown_rank {
        return (!shape.dim.is_empty()).then_some("an unknown rank with dimensions set");
    }
    if shape.dim.len() > MAX_DIMENSIONS {
        return Some("more than 254 dimensions");
    }
    let mut elements: i64 = 1;
    for dim in &shape.dim {
        if dim.size < -1 {
            return Some("dimensions below -1 (where -1 means unknown)");
        }
        if dim.size == -1 {
            elements = -1;
        } else if elements >= 0 {
            match elements.checked_mul(dim.size) {
                Some(product) => elements = product,
                None => return Some("too large (more than 2**63 - 1 elements)"),
            }
        }
    }
    None
}

/// Refuses, with INVALID_ARGUMENT naming the file, the node and the shape, a SavedModel in `dir`
/// whose meta graph for `tags` holds a shape TensorFlow's rule calls invalid.
pub(crate) fn check_graph_shapes(dir: &Path, tags: &[String]) -> Result<()> {
    let file = dir.join("saved_model.pb");
    let Some(contents) = read(&file) else {
        return Ok(());
    };
    let graph = match graph_to_load(contents, tags) {
        Ok(Some(graph)) => graph,
        // TensorFlow reports a missing meta graph with the tag sets there are.
        Ok(None) => return Ok(()),
        Err(e) => {
            tracing::debug!(file = %file.display(), "shapes not checked: {e}");
            return Ok(());
        }
    };
    check_graph(&graph).map_err(|found| {
        Error::invalid_argument(format!(
            "{}: {}: invalid shape {}: {}; refused before TensorFlow loads the graph, as it may \
             abort the process on one",
            file.display(),
            found.place(),
            found.shape,
            found.reason
        ))
    })
}

/// The file's bytes; `None` for what TensorFlow is better placed to report (missing, unreadable,
/// not a regular file: reading a FIFO would block here) or refuses to parse anyway (over
/// protobuf's 2 GiB limit: not worth reading whole first).
fn read(file: &Path) -> Option<Bytes> {
    let meta = std::fs::metadata(file).ok()?;
    if !meta.is_file() || meta.len() > i32::MAX as u64 {
        return None;
    }
    std::fs::read(file).ok().map(Bytes::from)
}

/// The graph of the first meta graph whose tag set is `tags`, as TensorFlow's
/// `FindMetaGraphDef` picks it. Only that one is decoded past its tags.
fn graph_to_load(
    contents: Bytes,
    tags: &[String],
) -> std::result::Result<Option<GraphDef>, prost::DecodeError> {
    let wanted: BTreeSet<&[u8]> = tags.iter().map(|t| t.as_bytes()).collect();
    for meta_graph in SavedModel::decode(contents)?.meta_graphs {
        let info = MetaGraphTags::decode(meta_graph.clone())?.meta_info_def;
        let have: BTreeSet<&[u8]> = info.iter().flat_map(|i| &i.tags).map(|t| &t[..]).collect();
        if have == wanted {
            return Ok(Some(
                MetaGraphDef::decode(meta_graph)?
                    .graph_def
                    .unwrap_or_default(),
            ));
        }
    }
    Ok(None)
}

/// An invalid shape and where it sits: the places are pushed innermost first, as the walk
/// returns, so that a valid graph costs no allocation.
#[derive(Debug)]
struct Found {
    places: Vec<String>,
    shape: String,
    reason: &'static str,
}

impl Found {
    fn place(&self) -> String {
        let mut places = self.places.iter().rev().map(String::as_str);
        let first = places.next().unwrap_or("graph");
        places.fold(first.to_owned(), |all, place| all + ", " + place)
    }
}

type Walk = std::result::Result<(), Box<Found>>;

/// Adds `place` to the path of what was found under it.
fn within(place: impl FnOnce() -> String) -> impl FnOnce(Box<Found>) -> Box<Found> {
    move |mut found| {
        found.places.push(place());
        found
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn check_graph(graph: &GraphDef) -> Walk {
    for node in &graph.node {
        check_node(node)?;
    }
    for function in graph.library.iter().flat_map(|l| &l.function) {
        check_function(function).map_err(within(|| {
            let name = function.signature.as_ref().map_or(&[][..], |s| &s.name);
            format!("function {:?}", text(name))
        }))?;
    }
    Ok(())
}

fn check_function(function: &FunctionDef) -> Walk {
    for attr in function.signature.iter().flat_map(|s| &s.attr) {
        for value in [&attr.default_value, &attr.allowed_values]
            .into_iter()
            .flatten()
        {
            check_attr_value(value)
                .map_err(within(|| format!("signature attr {:?}", text(&attr.name))))?;
        }
    }
    check_attrs(&function.attr)?;
    for arg in &function.arg_attr {
        if let Some(attrs) = &arg.value {
            check_attrs(&attrs.attr).map_err(within(|| format!("argument {}", arg.key)))?;
        }
    }
    for node in &function.node_def {
        check_node(node)?;
    }
    Ok(())
}

fn check_node(node: &NodeDef) -> Walk {
    check_attrs(&node.attr).map_err(within(|| {
        format!("node {:?} (op {})", text(&node.name), text(&node.op))
    }))
}

fn check_attrs(attrs: &[AttrEntry]) -> Walk {
    for entry in attrs {
        if let Some(value) = &entry.value {
            check_attr_value(value).map_err(within(|| format!("attr {:?}", text(&entry.key))))?;
        }
    }
    Ok(())
}

fn check_attr_value(value: &AttrValue) -> Walk {
    match &value.value {
        Some(attr_value::Value::Shape(shape)) => check_shape(shape),
        Some(attr_value::Value::Tensor(tensor)) => check_tensor(tensor),
        Some(attr_value::Value::Func(func)) => check_func(func),
        Some(attr_value::Value::List(list)) => {
            for (i, shape) in list.shape.iter().enumerate() {
                check_shape(shape).map_err(within(|| format!("shape {i}")))?;
            }
            for (i, tensor) in list.tensor.iter().enumerate() {
                check_tensor(tensor).map_err(within(|| format!("tensor {i}")))?;
            }
            for (i, func) in list.func.iter().enumerate() {
                check_func(func).map_err(within(|| format!("func {i}")))?;
            }
            Ok(())
        }
        None => Ok(()),
    }
}

fn check_func(func: &NameAttrList) -> Walk {
    check_attrs(&func.attr).map_err(within(|| format!("func {:?}", text(&func.name))))
}

fn check_tensor(tensor: &TensorProto) -> Walk {
    if let Some(shape) = &tensor.tensor_shape {
        check_shape(shape)?;
    }
    for (i, handle) in tensor.resource_handle_val.iter().enumerate() {
        for (j, dtype_and_shape) in handle.dtypes_and_shapes.iter().enumerate() {
            if let Some(shape) = &dtype_and_shape.shape {
                check_shape(shape).map_err(within(|| {
                    format!("resource handle {i}, dtype and shape {j}")
                }))?;
            }
        }
    }
    for (i, variant) in tensor.variant_val.iter().enumerate() {
        for (j, inner) in variant.tensors.iter().enumerate() {
            check_tensor(inner).map_err(within(|| format!("variant {i}, tensor {j}")))?;
        }
    }
    Ok(())
}

fn check_shape(shape: &TensorShapeProto) -> Walk {
    match invalid_shape(shape) {
        None => Ok(()),
        Some(reason) => Err(Box::new(Found {
            places: Vec::new(),
            shape: describe(shape),
            reason,
        })),
    }
}

/// How many dimensions of a shape an error message lists.
const SHOWN_DIMENSIONS: usize = 8;

/// TensorFlow's notation (`[2,?,3]`, `<unknown>`), cut short for shapes of many dimensions.
fn describe(shape: &TensorShapeProto) -> String {
    let mut out = String::new();
    if shape.unknown_rank {
        out.push_str("<unknown>");
        if shape.dim.is_empty() {
            return out;
        }
    }
    out.push('[');
    for (i, dim) in shape.dim.iter().take(SHOWN_DIMENSIONS).enumerate() {
        if i > 0 {
            out.push(',');
        }
        match dim.size {
            -1 => out.push('?'),
            size => {
                let _ = write!(out, "{size}");
            }
        }
    }
    if shape.dim.len() > SHOWN_DIMENSIONS {
        let _ = write!(out, ",... ({} dimensions)", shape.dim.len());
    }
    out.push(']');
    out
}

#[cfg(test)]
mod tests {
    use oxserve_core::Code;
    use oxserve_proto::oxserve::graph_shapes::{
        function_def, meta_graph_tags, tensor_shape_proto::Dim, FunctionDefLibrary, OpDef,
    };

    use super::*;

    fn shape(sizes: &[i64]) -> TensorShapeProto {
        TensorShapeProto {
            dim: sizes.iter().map(|&size| Dim { size }).collect(),
            unknown_rank: false,
        }
    }

    const HUGE: i64 = 1 << 20;

    #[test]
    fn shapes_are_held_to_tensorflows_rule() {
        for valid in [
            &[][..],
            &[2, 3],
            &[0, i64::MAX],
            &[-1, 3],
            &[i64::MAX, 1],
            // TensorFlow multiplies no known size after an unknown one.
            &[-1, HUGE, HUGE, HUGE, HUGE],
            &[1; 254],
        ] {
            assert_eq!(invalid_shape(&shape(valid)), None, "{valid:?}");
        }
        let unknown = TensorShapeProto {
            dim: Vec::new(),
            unknown_rank: true,
        };
        assert_eq!(invalid_shape(&unknown), None);

        let too_large = Some("too large (more than 2**63 - 1 elements)");
        assert_eq!(invalid_shape(&shape(&[HUGE, HUGE, HUGE, HUGE])), too_large);
        assert_eq!(
            invalid_shape(&shape(&[HUGE, HUGE, HUGE, HUGE, -1])),
            too_large
        );
        assert_eq!(invalid_shape(&shape(&[i64::MAX, 2])), too_large);
        assert_eq!(
            invalid_shape(&shape(&[1; 255])),
            Some("more than 254 dimensions")
        );
        let below = Some("dimensions below -1 (where -1 means unknown)");
        assert_eq!(invalid_shape(&shape(&[-2])), below);
        assert_eq!(invalid_shape(&shape(&[-1, 3, i64::MIN])), below);
        let mut unknown_with_dims = shape(&[3]);
        unknown_with_dims.unknown_rank = true;
        assert_eq!(
            invalid_shape(&unknown_with_dims),
            Some("an unknown rank with dimensions set")
        );
    }

    fn attr(key: &str, value: attr_value::Value) -> AttrEntry {
        AttrEntry {
            key: Bytes::from(key.to_owned()),
            value: Some(AttrValue { value: Some(value) }),
        }
    }

    fn node(name: &str, op: &str, attrs: Vec<AttrEntry>) -> NodeDef {
        NodeDef {
            name: Bytes::from(name.to_owned()),
            op: Bytes::from(op.to_owned()),
            attr: attrs,
        }
    }

    fn constant(name: &str, sizes: &[i64]) -> NodeDef {
        let tensor = TensorProto {
            tensor_shape: Some(shape(sizes)),
            ..Default::default()
        };
        node(
            name,
            "Const",
            vec![attr("value", attr_value::Value::Tensor(tensor))],
        )
    }

    #[test]
    fn the_place_of_a_bad_shape_is_named() {
        let mut graph = GraphDef {
            node: vec![constant("fine", &[2, 2])],
            library: None,
        };
        assert!(check_graph(&graph).is_ok());

        let list = attr_value::ListValue {
            shape: vec![shape(&[1]), shape(&[-7])],
            ..Default::default()
        };
        let func = NameAttrList {
            name: Bytes::from_static(b"inner"),
            attr: vec![attr("shapes", attr_value::Value::List(list))],
        };
        graph.library = Some(FunctionDefLibrary {
            function: vec![FunctionDef {
                signature: Some(OpDef {
                    name: Bytes::from_static(b"f"),
                    attr: Vec::new(),
                }),
                node_def: vec![node(
                    "call",
                    "PartitionedCall",
                    vec![attr("f", attr_value::Value::Func(func))],
                )],
                ..Default::default()
            }],
        });
        let found = check_graph(&graph).unwrap_err();
        assert_eq!(
            found.place(),
            r#"function "f", node "call" (op PartitionedCall), attr "f", func "inner", attr "shapes", shape 1"#
        );
        assert_eq!(found.shape, "[-7]");

        graph.library.as_mut().unwrap().function[0].arg_attr = vec![function_def::ArgAttrEntry {
            key: 0,
            value: Some(function_def::ArgAttrs {
                attr: vec![attr(
                    "_output_shapes",
                    attr_value::Value::Shape(shape(&[1; 300])),
                )],
            }),
        }];
        let found = check_graph(&graph).unwrap_err();
        assert_eq!(
            found.place(),
            r#"function "f", argument 0, attr "_output_shapes""#
        );
        assert_eq!(found.shape, "[1,1,1,1,1,1,1,1,... (300 dimensions)]");
    }

    /// A serialized MetaGraphDef: the two views' encodings concatenated, as protobuf merges them.
    fn meta_graph(tags: &[&str], graph: GraphDef) -> Bytes {
        let mut bytes = MetaGraphTags {
            meta_info_def: Some(meta_graph_tags::MetaInfoDef {
                tags: tags.iter().map(|t| Bytes::from(t.to_string())).collect(),
            }),
        }
        .encode_to_vec();
        MetaGraphDef {
            graph_def: Some(graph),
        }
        .encode(&mut bytes)
        .unwrap();
        bytes.into()
    }

    #[test]
    fn only_the_meta_graph_to_load_is_checked() {
        let dir = tempfile::tempdir().unwrap();
        let bad = || GraphDef {
            node: vec![constant("hugeconst", &[HUGE; 4])],
            library: None,
        };
        let good = GraphDef {
            node: vec![constant("c", &[3])],
            library: None,
        };
        let write = |meta_graphs| {
            let model = SavedModel { meta_graphs };
            std::fs::write(dir.path().join("saved_model.pb"), model.encode_to_vec()).unwrap();
        };
        let serve = ["serve".to_string()];

        write(vec![
            meta_graph(&["train"], bad()),
            meta_graph(&["serve"], good),
        ]);
        check_graph_shapes(dir.path(), &serve).unwrap();

        write(vec![
            meta_graph(&["serve", "gpu"], bad()),
            meta_graph(&["serve"], bad()),
        ]);
        let err = check_graph_shapes(dir.path(), &serve).unwrap_err();
        assert_eq!(err.code, Code::InvalidArgument);
        assert_eq!(
            err.message,
            format!(
                "{}: node \"hugeconst\" (op Const), attr \"value\": invalid shape \
                 [1048576,1048576,1048576,1048576]: too large (more than 2**63 - 1 elements); \
                 refused before TensorFlow loads the graph, as it may abort the process on one",
                dir.path().join("saved_model.pb").display()
            )
        );
        // Tags are a set, as TensorFlow compares them.
        check_graph_shapes(dir.path(), &["gpu".into(), "serve".into(), "serve".into()])
            .unwrap_err();

        // What does not decode is TensorFlow's to report.
        std::fs::write(
            dir.path().join("saved_model.pb"),
            b"this is not a SavedModel",
        )
        .unwrap();
        check_graph_shapes(dir.path(), &serve).unwrap();
        std::fs::remove_file(dir.path().join("saved_model.pb")).unwrap();
        check_graph_shapes(dir.path(), &serve).unwrap();
    }
}
