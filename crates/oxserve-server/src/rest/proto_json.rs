//! Protobuf messages as TF Serving's REST API prints them: protobuf's C++ JSON printer with
//! `always_print_primitive_fields` and `preserve_proto_field_names` (the layout of TF Serving's
//! golden metadata files), for messages echoed from a model file, whatever they hold.
//!
//! The printer's `DefaultValueObjectWriter` lays a message out from its type: the fields outside
//! oneofs in declaration order, each printed even when it holds its default (empty lists and
//! maps included), except message fields, printed only when set; then the oneof members that are
//! set. That is why a `TensorInfo` prints `dtype`, `tensor_shape`, then `name`, although `name`
//! is declared first. Map entries come sorted by key; 64-bit integers are strings; floats print
//! as the shortest text that reads back as the same float; bytes as base64; enums by name.

use base64::Engine;
use prost_reflect::{DynamicMessage, FieldDescriptor, Kind, MapKey, ReflectMessage, Value};
use serde_json::{Map, Number, Value as Json};

/// `message` in TF Serving's JSON layout; `None` for a message type oxserve's protos lack.
pub fn to_json<M: prost::Name>(message: &M) -> Option<Json> {
    let descriptor = oxserve_proto::descriptor_pool().get_message_by_name(&M::full_name())?;
    // Its own encoding always decodes.
    let dynamic = DynamicMessage::decode(descriptor, message.encode_to_vec().as_slice()).ok()?;
    Some(message_json(&dynamic))
}

fn message_json(message: &DynamicMessage) -> Json {
    let descriptor = message.descriptor();
    // prost-reflect iterates fields by number; the printer goes by declaration.
    let declared: Vec<FieldDescriptor> = descriptor
        .descriptor_proto()
        .field
        .iter()
        .filter_map(|f| descriptor.get_field(f.number() as u32))
        .collect();
    let mut out = Map::new();
    let plain = declared
        .iter()
        .filter(|f| f.containing_oneof().is_none())
        .filter(|f| f.is_list() || f.is_map() || !is_message(f) || message.has_field(f));
    let oneof_members = declared
        .iter()
        .filter(|f| f.containing_oneof().is_some() && message.has_field(f));
    for field in plain.chain(oneof_members) {
        out.insert(
            field.name().to_string(),
            field_json(field, &message.get_field(field)),
        );
    }
    Json::Object(out)
}

fn is_message(field: &FieldDescriptor) -> bool {
    matches!(field.kind(), Kind::Message(_))
}

fn field_json(field: &FieldDescriptor, value: &Value) -> Json {
    match value {
        Value::List(items) => Json::Array(
            items
                .iter()
                .map(|item| value_json(&field.kind(), item))
                .collect(),
        ),
        Value::Map(entries) => {
            let value_kind = match field.kind() {
                Kind::Message(entry) => entry.map_entry_value_field().kind(),
                kind => kind,
            };
            let mut entries: Vec<_> = entries
                .iter()
                .map(|(key, value)| (map_key(key), value))
                .collect();
            entries.sort_by(|a, b| a.0.cmp(&b.0));
            Json::Object(
                entries
                    .into_iter()
                    .map(|(key, value)| (key, value_json(&value_kind, value)))
                    .collect(),
            )
        }
        value => value_json(&field.kind(), value),
    }
}

fn map_key(key: &MapKey) -> String {
    match key {
        MapKey::Bool(b) => b.to_string(),
        MapKey::I32(v) => v.to_string(),
        MapKey::I64(v) => v.to_string(),
        MapKey::U32(v) => v.to_string(),
        MapKey::U64(v) => v.to_string(),
        MapKey::String(s) => s.clone(),
    }
}

fn value_json(kind: &Kind, value: &Value) -> Json {
    match value {
        Value::Bool(b) => Json::Bool(*b),
        Value::I32(v) => Json::from(*v),
        Value::U32(v) => Json::from(*v),
        Value::I64(v) => Json::String(v.to_string()),
        Value::U64(v) => Json::String(v.to_string()),
        Value::F32(v) => float_json(f64::from(*v), || {
            // The f32's own shortest text, not its widened double's (0.1, not 0.10000000149...).
            let mut buf = ryu::Buffer::new();
            buf.format_finite(*v).parse().unwrap_or(f64::from(*v))
        }),
        Value::F64(v) => float_json(*v, || *v),
        Value::String(s) => Json::String(s.clone()),
        Value::Bytes(b) => Json::String(base64::engine::general_purpose::STANDARD.encode(b)),
        Value::EnumNumber(number) => match kind {
            Kind::Enum(descriptor) => match descriptor.get_value(*number) {
                Some(v) => Json::String(v.name().to_string()),
                None => Json::from(*number),
            },
            _ => Json::from(*number),
        },
        Value::Message(message) => message_json(message),
        // Lists and maps are fields of their own, never elements.
        Value::List(_) | Value::Map(_) => Json::Null,
    }
}

/// Protobuf's JSON names for the floats JSON has no numbers for.
fn float_json(v: f64, finite: impl FnOnce() -> f64) -> Json {
    if v.is_nan() {
        Json::String("NaN".into())
    } else if v.is_infinite() {
        Json::String(if v > 0.0 { "Infinity" } else { "-Infinity" }.into())
    } else {
        Number::from_f64(finite()).map_or(Json::Null, Json::Number)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use oxserve_proto::tensorflow::serving::SignatureDefMap;
    use oxserve_proto::tensorflow::tensor_info::{CooSparse, Encoding};
    use oxserve_proto::tensorflow::tensor_shape_proto::Dim;
    use oxserve_proto::tensorflow::{SignatureDef, TensorInfo, TensorProto, TensorShapeProto};
    use serde_json::json;

    fn info(encoding: Encoding, shape: Option<TensorShapeProto>) -> TensorInfo {
        TensorInfo {
            dtype: 1, // DT_FLOAT
            tensor_shape: shape,
            encoding: Some(encoding),
        }
    }

    #[test]
    fn lays_out_messages_as_tf_servings_printer() {
        let mut def = SignatureDef {
            method_name: "tensorflow/serving/predict".into(),
            ..SignatureDef::default()
        };
        let shape = TensorShapeProto {
            dim: vec![Dim {
                size: -1,
                name: "batch".into(),
            }],
            unknown_rank: false,
        };
        def.inputs
            .insert("x".into(), info(Encoding::Name("x:0".into()), Some(shape)));
        let coo = CooSparse {
            values_tensor_name: "v:0".into(),
            indices_tensor_name: "i:0".into(),
            dense_shape_tensor_name: "s:0".into(),
        };
        def.inputs
            .insert("a".into(), info(Encoding::CooSparse(coo), None));
        def.defaults.insert(
            "x".into(),
            TensorProto {
                dtype: 1,
                float_val: vec![0.1, f32::NAN],
                ..TensorProto::default()
            },
        );
        let map = SignatureDefMap {
            signature_def: [("k".to_string(), def)].into_iter().collect(),
        };
        let value = to_json(&map).unwrap();
        let signature = &value["signature_def"]["k"];
        let keys = |v: &Json| v.as_object().unwrap().keys().cloned().collect::<Vec<_>>();
        assert_eq!(
            keys(signature),
            ["inputs", "outputs", "method_name", "defaults"]
        );
        // Sorted aliases; the oneof member after the plain fields; unset messages left out.
        assert_eq!(keys(&signature["inputs"]), ["a", "x"]);
        assert_eq!(
            signature["inputs"]["x"],
            json!({
                "dtype": "DT_FLOAT",
                "tensor_shape": {"dim": [{"size": "-1", "name": "batch"}], "unknown_rank": false},
                "name": "x:0",
            })
        );
        assert_eq!(
            signature["inputs"]["a"],
            json!({
                "dtype": "DT_FLOAT",
                "coo_sparse": {
                    "values_tensor_name": "v:0",
                    "indices_tensor_name": "i:0",
                    "dense_shape_tensor_name": "s:0",
                },
            })
        );
        assert_eq!(signature["outputs"], json!({}));
        let default = &signature["defaults"]["x"];
        assert_eq!(default["float_val"], json!([0.1, "NaN"]));
        assert_eq!(default["version_number"], json!(0));
        assert_eq!(default["tensor_content"], json!(""));
        assert_eq!(default["int64_val"], json!([]));
        assert!(default.get("tensor_shape").is_none());
        // Declaration order: half_val (13) is declared right after tensor_content (4).
        assert_eq!(
            keys(default)[..6],
            [
                "dtype",
                "version_number",
                "tensor_content",
                "half_val",
                "float_val",
                "double_val"
            ]
        );
    }
}
