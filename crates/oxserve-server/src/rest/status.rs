//! Model status and metadata responses, laid out as TF Serving's protobuf JSON printer lays them
//! out (`add_whitespace`, `always_print_primitive_fields`, proto field names, int64 as strings).

use std::collections::HashMap;

use oxserve_core::{ModelSummary, VersionStatus};
use oxserve_proto::tensorflow::serving::SignatureDefMap;
use oxserve_proto::tensorflow::SignatureDef;
use serde::Serialize;

use serde_json::{json, Map, Value};

use super::proto_json;

/// Pretty-prints with the one-space indent of protobuf's JSON printer.
pub fn to_proto_style_json(value: &Value) -> Vec<u8> {
    let mut out = Vec::with_capacity(1024);
    let formatter = serde_json::ser::PrettyFormatter::with_indent(b" ");
    let mut serializer = serde_json::Serializer::with_formatter(&mut out, formatter);
    // Serializing a `Value` into a Vec cannot fail.
    let _ = value.serialize(&mut serializer);
    out.push(b'\n');
    out
}

/// `GetModelStatusResponse` as JSON.
pub fn status_json(statuses: &[VersionStatus]) -> Vec<u8> {
    to_proto_style_json(&status_value(statuses))
}

/// `GetModelStatusResponse` as a JSON value, for [`to_proto_style_json`].
pub fn status_value(statuses: &[VersionStatus]) -> Value {
    let versions: Vec<Value> = statuses.iter().map(version_status).collect();
    json!({ "model_version_status": versions })
}

/// `GET /v1/models`: every configured model with its base path, versions (newest first, laid
/// out as in `GetModelStatusResponse`) and version labels, by name.
pub fn models_json(models: &[ModelSummary]) -> Vec<u8> {
    let models: Vec<Value> = models
        .iter()
        .map(|model| {
            let labels: Map<String, Value> = model
                .labels
                .iter()
                .map(|(label, version)| (label.clone(), Value::from(version.to_string())))
                .collect();
            json!({
                "name": model.name,
                "base_path": model.base_path.to_string_lossy(),
                "version_labels": labels,
                "model_version_status": model.versions.iter().map(version_status).collect::<Vec<_>>(),
            })
        })
        .collect();
    to_proto_style_json(&json!({ "models": models }))
}

fn version_status(status: &VersionStatus) -> Value {
    let (code, message) = match &status.error {
        Some(err) => (err.code.name(), err.message.as_str()),
        None => ("OK", ""),
    };
    json!({
        "version": status.version.to_string(),
        "state": status.state.name(),
        "status": { "error_code": code, "error_message": message },
    })
}

/// `GetModelMetadataResponse` with the `signature_def` metadata field as JSON: the SignatureDefs
/// as the model holds them, laid out by protobuf's printer.
pub fn metadata_json(
    model: &str,
    version: i64,
    signature_defs: HashMap<String, SignatureDef>,
) -> Vec<u8> {
    let map = SignatureDefMap {
        signature_def: signature_defs,
    };
    // `None` only for a type missing from oxserve_proto's descriptor pool, which has them all.
    let defs = proto_json::to_json(&map).unwrap_or_default();
    to_proto_style_json(&json!({
        "model_spec": { "name": model, "signature_name": "", "version": version.to_string() },
        "metadata": { "signature_def": defs },
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use oxserve_core::{DType, Error, Signature, TensorSpec, VersionState};

    #[test]
    fn status_matches_tf_serving_layout() {
        let statuses = [VersionStatus {
            version: 123,
            state: VersionState::Available,
            error: None,
        }];
        let text = String::from_utf8(status_json(&statuses)).unwrap();
        assert_eq!(
            text,
            "{\n \"model_version_status\": [\n  {\n   \"version\": \"123\",\n   \"state\": \"AVAILABLE\",\n   \"status\": {\n    \"error_code\": \"OK\",\n    \"error_message\": \"\"\n   }\n  }\n ]\n}\n"
        );
        let failed = [VersionStatus {
            version: 1,
            state: VersionState::End,
            error: Some(Error::not_found("gone")),
        }];
        let value: Value = serde_json::from_slice(&status_json(&failed)).unwrap();
        assert_eq!(
            value["model_version_status"][0]["status"]["error_code"],
            "NOT_FOUND"
        );
    }

    #[test]
    fn model_listing() {
        let models = [ModelSummary {
            name: "m".into(),
            base_path: "/models/m".into(),
            versions: vec![
                VersionStatus {
                    version: 2,
                    state: VersionState::Loading,
                    error: None,
                },
                VersionStatus {
                    version: 1,
                    state: VersionState::Available,
                    error: None,
                },
            ],
            labels: [("stable".to_string(), 1)].into_iter().collect(),
        }];
        let value: Value = serde_json::from_slice(&models_json(&models)).unwrap();
        assert_eq!(
            value,
            json!({ "models": [{
                "name": "m",
                "base_path": "/models/m",
                "version_labels": { "stable": "1" },
                "model_version_status": [
                    { "version": "2", "state": "LOADING", "status": { "error_code": "OK", "error_message": "" } },
                    { "version": "1", "state": "AVAILABLE", "status": { "error_code": "OK", "error_message": "" } },
                ],
            }]})
        );
        assert_eq!(models_json(&[]), b"{\n \"models\": []\n}\n");
    }

    #[test]
    fn metadata_of_signatures_without_a_signature_def() {
        let signature = Signature {
            method_name: "tensorflow/serving/predict".into(),
            inputs: [(
                "x".to_string(),
                TensorSpec {
                    name: "x:0".into(),
                    dtype: DType::String,
                    shape: None,
                },
            )]
            .into(),
            outputs: [(
                "y".to_string(),
                TensorSpec {
                    name: "y:0".into(),
                    dtype: DType::Float,
                    shape: Some(vec![-1, 1]),
                },
            )]
            .into(),
            defaults: Default::default(),
        };
        let defs = [("k".to_string(), signature.to_proto())].into();
        let value: Value = serde_json::from_slice(&metadata_json("m", 3, defs)).unwrap();
        assert_eq!(value["model_spec"]["version"], "3");
        let def = &value["metadata"]["signature_def"]["signature_def"]["k"];
        assert_eq!(
            def["inputs"]["x"],
            json!({ "dtype": "DT_STRING", "tensor_shape": { "dim": [], "unknown_rank": true }, "name": "x:0" })
        );
        assert_eq!(def["outputs"]["y"]["tensor_shape"]["dim"][0]["size"], "-1");
        assert_eq!(def["defaults"], json!({}));
    }
}
