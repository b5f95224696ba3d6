//! Instances into batches, and a batch's REST row-format answer back into one line per instance.

use oxserve_core::{NamedTensors, Tensor, TensorData};

use super::decode::Instance;

/// Collects instances for one batch. Only instances whose inputs have the same shapes and dtypes
/// can share a batch.
#[derive(Default)]
pub struct Accumulator {
    rows: Vec<Instance>,
}

/// A batch ready to run: the concatenated inputs, and the instances themselves (kept to run them
/// one by one should the batch fail).
pub struct Ready {
    pub inputs: NamedTensors,
    pub rows: Vec<Instance>,
}

impl Accumulator {
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    /// Whether `instance` can join the current batch.
    pub fn accepts(&self, instance: &Instance) -> bool {
        let Some(first) = self.rows.first() else {
            return true;
        };
        instance.inputs.len() == first.inputs.len()
            && instance
                .inputs
                .iter()
                .zip(&first.inputs)
                .all(|(a, b)| a.dtype() == b.dtype() && a.shape() == b.shape())
    }

    /// Adds an instance; the caller checked [`Accumulator::accepts`].
    pub fn push(&mut self, instance: Instance) {
        self.rows.push(instance);
    }

    /// Concatenates the instances along the batch dimension into tensors named by `aliases`;
    /// empties the accumulator.
    pub fn take(&mut self, aliases: &[String]) -> Option<Ready> {
        let rows = std::mem::take(&mut self.rows);
        let first = rows.first()?;
        let count = rows.len();
        let mut inputs = Vec::with_capacity(first.inputs.len());
        for (i, (alias, model)) in aliases.iter().zip(&first.inputs).enumerate() {
            let len: usize = model.shape().iter().product();
            let mut data = TensorData::with_capacity(model.dtype(), len * count).ok()?;
            for row in &rows {
                row.extend_into(i, &mut data);
            }
            let mut shape = model.shape().to_vec();
            *shape.first_mut()? = count;
            // Element counts add up by construction ([`Accumulator::accepts`]).
            inputs.push((alias.clone(), Tensor::new(shape, data).ok()?));
        }
        Some(Ready { inputs, rows })
    }
}

/// Splits a REST row-format body (`{"predictions": [a, b, ...]}`, as TF Serving lays it out) into
/// its elements, each made compact (no whitespace outside strings) so that it fits on one line.
pub fn split_predictions(body: &[u8]) -> Result<Vec<Vec<u8>>, String> {
    let mut compact = Vec::with_capacity(body.len());
    let mut strings = Strings::default();
    for &b in body {
        if strings.holds(b) || !matches!(b, b' ' | b'\n' | b'\r' | b'\t') {
            compact.push(b);
        }
    }
    let inner = compact
        .strip_prefix(b"{\"predictions\":[")
        .and_then(|rest| rest.strip_suffix(b"]}"))
        .ok_or_else(|| "the model's answer is not a row-format predictions list".to_string())?;
    let mut rows = Vec::new();
    let mut depth = 0usize;
    let mut start = 0;
    let mut strings = Strings::default();
    for (i, &b) in inner.iter().enumerate() {
        if strings.holds(b) {
            continue;
        }
        match b {
            b'[' | b'{' => depth += 1,
            b']' | b'}' => depth = depth.saturating_sub(1),
            b',' if depth == 0 => {
                rows.push(inner[start..i].to_vec());
                start = i + 1;
            }
            _ => {}
        }
    }
    if start < inner.len() {
        rows.push(inner[start..].to_vec());
    }
    Ok(rows)
}

/// Where a byte-by-byte walk over JSON text is with respect to strings.
#[derive(Default)]
struct Strings {
    inside: bool,
    escaped: bool,
}

impl Strings {
    /// Takes the next byte; whether it belongs to a string (its quotes included).
    fn holds(&mut self, b: u8) -> bool {
        if self.inside {
            if self.escaped {
                self.escaped = false;
            } else if b == b'\\' {
                self.escaped = true;
            } else if b == b'"' {
                self.inside = false;
            }
            true
        } else {
            self.inside = b == b'"';
            self.inside
        }
    }
}

/// One output line: the row as REST returns it, or, with a key, an object with the key first
/// and then the outputs by alias (a single output's bare value goes under its alias).
pub fn output_line(
    row: &[u8],
    key: Option<&str>,
    single_output: Option<&str>,
    key_field: &str,
) -> Vec<u8> {
    let Some(key) = key else {
        let mut line = Vec::with_capacity(row.len() + 1);
        line.extend_from_slice(row);
        line.push(b'\n');
        return line;
    };
    let mut line = Vec::with_capacity(row.len() + key.len() + key_field.len() + 32);
    line.push(b'{');
    line.extend_from_slice(json_string(key_field).as_bytes());
    line.push(b':');
    line.extend_from_slice(key.as_bytes());
    line.push(b',');
    match single_output {
        Some(alias) => {
            line.extend_from_slice(json_string(alias).as_bytes());
            line.push(b':');
            line.extend_from_slice(row);
            line.push(b'}');
        }
        // Several outputs: the row is an object `{...}`.
        None => line.extend_from_slice(row.get(1..).unwrap_or_default()),
    }
    line.push(b'\n');
    line
}

pub fn json_string(s: &str) -> String {
    serde_json::Value::from(s).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::predict::decode::Input;
    use crate::predict::inputs::Bytes;
    use oxserve_server::rest::json::{write_predict_response, Format};

    fn tensor(shape: &[usize], v: Vec<f32>) -> Tensor {
        Tensor::new(shape.to_vec(), TensorData::Float(v)).unwrap()
    }

    fn instance(v: Vec<f32>) -> Instance {
        let n = v.len();
        Instance {
            key: None,
            inputs: vec![Input::Tensor(tensor(&[1, n], v))],
            record: Bytes::default(),
        }
    }

    #[test]
    fn instances_concatenate_along_the_batch_dimension() {
        let mut acc = Accumulator::default();
        assert!(acc.take(&["x".into()]).is_none());
        let a = instance(vec![1.0, 2.0]);
        assert!(acc.accepts(&a));
        acc.push(a);
        // Packed floats in a record join tensors of the same shape.
        let record: Vec<u8> = [9.0f32, 3.0, 4.0]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        let b = Instance {
            key: None,
            inputs: vec![Input::Packed {
                shape: vec![1, 2],
                range: 4..12,
            }],
            record: Bytes::from_vec(record),
        };
        assert!(acc.accepts(&b));
        acc.push(b);
        assert!(!acc.accepts(&instance(vec![5.0])));
        let ready = acc.take(&["x".into()]).unwrap();
        assert_eq!(ready.inputs[0].0, "x");
        assert_eq!(ready.inputs[0].1, tensor(&[2, 2], vec![1.0, 2.0, 3.0, 4.0]));
        assert_eq!(
            ready.rows[1].tensor(0).unwrap(),
            tensor(&[1, 2], vec![3.0, 4.0])
        );
        assert_eq!(acc.len(), 0);
        assert!(acc.accepts(&instance(vec![5.0])));
    }

    #[test]
    fn rest_rows_split_into_compact_lines() {
        let outputs = vec![
            ("a".to_string(), tensor(&[2, 2], vec![1.0, 2.5, -3.0, 4.0])),
            (
                "b_bytes".to_string(),
                Tensor::new(
                    vec![2],
                    TensorData::String(vec![b"x, ]\" y".to_vec(), b"\xff".to_vec()]),
                )
                .unwrap(),
            ),
        ];
        let body = write_predict_response(&outputs, Format::Row).unwrap();
        let rows = split_predictions(&body).unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!(
            String::from_utf8(rows[0].clone()).unwrap(),
            r#"{"a":[1.0,2.5],"b_bytes":{"b64":"eCwgXSIgeQ=="}}"#
        );
        let single = vec![(
            "s".to_string(),
            Tensor::new(
                vec![2],
                TensorData::String(vec![b"a b".to_vec(), b"[".to_vec()]),
            )
            .unwrap(),
        )];
        let rows =
            split_predictions(&write_predict_response(&single, Format::Row).unwrap()).unwrap();
        assert_eq!(rows, vec![b"\"a b\"".to_vec(), b"\"[\"".to_vec()]);
        // An escaped quote does not end a string: the brackets, comma and space inside stay.
        assert_eq!(
            split_predictions(br#"{"predictions": ["a\"], b", 2]}"#).unwrap(),
            vec![br#""a\"], b""#.to_vec(), b"2".to_vec()]
        );
        assert!(split_predictions(b"{\"outputs\": 1}").is_err());
    }

    #[test]
    fn keys_go_first() {
        assert_eq!(output_line(b"[1.0]", None, Some("y"), "key"), b"[1.0]\n");
        assert_eq!(
            output_line(b"[1.0]", Some("\"k\""), Some("y"), "key"),
            b"{\"key\":\"k\",\"y\":[1.0]}\n"
        );
        assert_eq!(
            output_line(b"{\"a\":1,\"b\":2}", Some("3"), None, "id"),
            b"{\"id\":3,\"a\":1,\"b\":2}\n"
        );
    }
}
