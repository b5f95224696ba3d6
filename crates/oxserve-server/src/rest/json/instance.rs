//! One instance of `oxserve predict`'s JSON lines read on its own, without wrapping it into a
//! `{"instances": [...]}` request first (a copy of the line, a megabyte for an image of floats),
//! for the two kinds of lines that carry images:
//! - the `{"b64": ...}` object of a model that takes one encoded image (or other bytes),
//!   optionally with a key member beside it: its string is scanned once and decoded straight
//!   from the line;
//! - the nested list of a model with one input whose shape per instance is fully known, decoded
//!   with the REST fast path's loops for lists of a known shape.
//!
//! Both give up (`None`) on anything else, invalid lines included; the caller then wraps the line
//! into a request for [`super::parse_predict_request`], which gives REST's result or error. On
//! the lines they accept, they give what that would give.

use oxserve_core::{DType, Tensor, TensorData};

use super::base64;
use super::predict::{items_with, Next};
use super::reader::Reader;

/// A line that is a `{"b64": ...}` object.
#[derive(Debug, PartialEq)]
pub struct B64Instance<'a> {
    /// The decoded bytes.
    pub bytes: Vec<u8>,
    /// The key member's value as written in the line (syntax checked, not normalised).
    pub key: Option<&'a [u8]>,
}

/// `line` (trimmed) as an object with exactly one `"b64"` member, whose value is a string of
/// valid base64, and, when `key_field` is given, at most one member of that name. `None` for
/// anything else, invalid lines included: [`super::parse_predict_request`] on the line wrapped
/// into a request (the key member taken out) then gives REST's result or error, which for the
/// lines accepted here is a string tensor of shape `[1]` holding `bytes`.
///
/// Member names are compared as written; one with an escape sequence sends the line to the
/// general path, as does a `key_field` of "b64".
pub fn parse_b64_instance<'a>(line: &'a [u8], key_field: Option<&str>) -> Option<B64Instance<'a>> {
    let key_field = key_field.map(str::as_bytes);
    if key_field == Some(b"b64") {
        return None;
    }
    let mut r = Reader::at(line, 0);
    let mut scratch = Vec::new();
    r.skip_ws();
    if !r.consume(b'{') || r.object_empty() {
        return None;
    }
    let mut bytes = None;
    let mut key = None;
    loop {
        if r.peek() != b'"' {
            return None;
        }
        let start = r.pos();
        let name = r.parse_string_ref(&mut scratch).ok()?;
        // An escape sequence always makes the decoded name shorter than the text.
        if line.get(start + 1..r.pos() - 1) != Some(name) {
            return None;
        }
        let is_b64 = name == b"b64";
        let is_key = Some(name) == key_field;
        r.skip_ws();
        if !r.consume(b':') {
            return None;
        }
        r.skip_ws();
        if is_b64 && bytes.is_none() && r.peek() == b'"' {
            bytes = Some(base64::decode(r.parse_string_ref(&mut scratch).ok()?)?);
        } else if is_key && key.is_none() {
            let start = r.pos();
            r.skip_value(1, &mut scratch).ok()?;
            key = Some(&line[start..r.pos()]);
        } else {
            return None;
        }
        if !r.member_end().ok()? {
            break;
        }
    }
    at_end(&mut r)?;
    Some(B64Instance { bytes: bytes?, key })
}

/// `line` (trimmed) as a list of exactly the shape `shape` (at least one dimension) of scalars
/// of `dtype`, as the instance of a single-input model: a tensor of shape `[1, shape...]`.
/// `None` for anything else, a list of another shape included.
pub fn parse_dense_instance(line: &[u8], dtype: DType, shape: &[usize]) -> Option<Tensor> {
    let (&n, inner) = shape.split_first()?;
    let mut r = Reader::at(line, 0);
    r.skip_ws();
    if !r.consume(b'[') || r.array_empty() {
        return None;
    }
    let len = shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d))?;
    // Never more than the line could hold (each scalar takes at least two bytes).
    let mut data = TensorData::with_capacity(dtype, len.min(line.len() / 2 + 1)).ok()?;
    let mut scratch = Vec::new();
    let count = oxserve_core::for_each_data!(&mut data, v => {
        items_with(&mut r, inner, v, &mut scratch, |_, _| Some(Next::Item))
    })?;
    if count != n {
        return None;
    }
    at_end(&mut r)?;
    let mut dims = Vec::with_capacity(shape.len() + 1);
    dims.push(1);
    dims.extend_from_slice(shape);
    Tensor::new(dims, data).ok()
}

/// Only whitespace left. (Not [`Reader::finish`]: a NUL byte, which ends a request body, does
/// not end a line wrapped into one.)
fn at_end(r: &mut Reader<'_>) -> Option<()> {
    r.skip_ws();
    (r.remaining() == 0).then_some(())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use oxserve_core::TensorSpec;

    use super::*;
    use crate::rest::json::parse_predict_request;

    /// The tensor the general path makes of `line` for a model with one input of `dtype`.
    fn wrapped_tensor(line: &[u8], dtype: DType) -> Option<Tensor> {
        let mut body = b"{\"instances\":[".to_vec();
        body.extend_from_slice(line);
        body.extend_from_slice(b"]}");
        let inputs: BTreeMap<String, TensorSpec> = [(
            "image".to_string(),
            TensorSpec {
                name: "image:0".into(),
                dtype,
                shape: None,
            },
        )]
        .into();
        let request = parse_predict_request(&body, |_| Ok(&inputs)).ok()?;
        match request.inputs.as_slice() {
            [(_, tensor)] => Some(tensor.clone()),
            _ => None,
        }
    }

    /// The bytes the general path makes of `line` for a model with one string input.
    fn wrapped(line: &[u8]) -> Option<Vec<u8>> {
        let tensor = wrapped_tensor(line, DType::String)?;
        match tensor.data() {
            TensorData::String(v) if tensor.shape() == [1] => v.first().cloned(),
            _ => None,
        }
    }

    /// Lists of the expected shape decode as the general path decodes them; everything else is
    /// left to it.
    #[test]
    fn dense_lists_decode_as_rest_instances() {
        let cases: [(&[u8], DType, &[usize], bool); 17] = [
            (b"[[1, 2.5], [3, -4e-3]]", DType::Float, &[2, 2], true),
            (b" [[1,2],[3,4]] \t", DType::Double, &[2, 2], true),
            (b"[[1, 2], [3, 4]]", DType::Int32, &[2, 2], true),
            (b"[[1, 2], [3, 300]]", DType::UInt8, &[2, 2], false),
            (b"[[1, 2], [3, NaN]]", DType::Float, &[2, 2], true),
            (
                b"[0.1, 0.30000000000000004, 3e38]",
                DType::Float,
                &[3],
                true,
            ),
            // Beyond float32's range: infinite, as REST takes it.
            (b"[0.1, 3.5e38]", DType::Float, &[2], true),
            (b"[true, false]", DType::Bool, &[2], true),
            (br#"["a", {"b64": "QQ=="}]"#, DType::String, &[2], true),
            (b"[[1, 2], [3, 4]]", DType::Float, &[2, 3], false),
            (b"[[1, 2], [3, 4]]", DType::Float, &[4], false),
            (b"[[1, 2], [3, 4], [5, 6]]", DType::Float, &[2, 2], false),
            (b"[[1, 2], [3]]", DType::Float, &[2, 2], false),
            (b"[[1, 2], [3, 4]] x", DType::Float, &[2, 2], false),
            (b"[[1, 2], [3, 4]]\0", DType::Float, &[2, 2], false),
            (b"[[1, 2], [3, 4]", DType::Float, &[2, 2], false),
            (b"[]", DType::Float, &[0], false),
        ];
        for (line, dtype, shape, accepted) in cases {
            let direct = parse_dense_instance(line, dtype, shape);
            assert_eq!(direct.is_some(), accepted, "{}", line.escape_ascii());
            if let Some(tensor) = direct {
                let expected = wrapped_tensor(line, dtype).unwrap();
                // As text: NaN is not equal to itself.
                assert_eq!(format!("{tensor:?}"), format!("{expected:?}"));
            }
        }
    }

    #[test]
    fn b64_objects_with_and_without_keys() {
        let line = br#"{"b64": "aGVsbG8="}"#;
        assert_eq!(
            parse_b64_instance(line, Some("key")),
            Some(B64Instance {
                bytes: b"hello".to_vec(),
                key: None
            })
        );
        let line = br#" { "key" : {"id": [1, "a\"b"]} ,"b64":"aGVs bG8"}"#;
        assert_eq!(
            parse_b64_instance(line, Some("key")),
            Some(B64Instance {
                bytes: b"hello".to_vec(),
                key: Some(&br#"{"id": [1, "a\"b"]}"#[..])
            })
        );
        // Escapes in the payload are decoded first, as REST does.
        let line = br#"{"b64": "aGVs\/b\u0047\u0038"}"#;
        assert_eq!(
            parse_b64_instance(line, None).unwrap().bytes,
            wrapped(line).unwrap()
        );
    }

    #[test]
    fn anything_else_takes_the_general_path() {
        for line in [
            &br#"{"b64": "aGVsbG8=", "key": 1}"#[..],
            br#"{"b64": "aGVsbG8=", "b64": "aGVsbG8="}"#,
            br#"{"b64": "aGVsbG8", "key": 1, "key": 2}"#,
            br#"{"b6\u0034": "aGVsbG8="}"#,
            br#"{"b64": "aGVsbG8=#"}"#,
            br#"{"b64": 5}"#,
            br#"{"b64": "aGVsbG8="} x"#,
            br#"{"b64": "aGVsbG8=""#,
            br#"{"key": 1}"#,
            br#"{}"#,
            br#""aGVsbG8=""#,
            b"\xEF\xBB\xBF{\"b64\": \"aGVsbG8=\"}",
            br#"[{"b64": "aGVsbG8="}]"#,
        ] {
            assert_eq!(
                parse_b64_instance(line, None),
                None,
                "{:?}",
                line.escape_ascii()
            );
        }
        assert_eq!(
            parse_b64_instance(br#"{"b64": "aGVsbG8=", "key": tru}"#, Some("key")),
            None
        );
        assert_eq!(
            parse_b64_instance(br#"{"b64": "aGVsbG8=", "k\u0065y": 1}"#, Some("key")),
            None
        );
        assert_eq!(
            parse_b64_instance(br#"{"b64": "aGVsbG8="}"#, Some("b64")),
            None
        );
    }

    /// Whatever this path accepts, the general path decodes to the same bytes, on lines made of
    /// pieces that put every branch to the test.
    #[test]
    fn accepted_lines_decode_as_rest_instances() {
        let openings: [&[u8]; 3] = [b"{", b" {\t", b"{\n "];
        let names: [&[u8]; 3] = [b"\"b64\"", b"\"b64\" ", b"\"b64 \""];
        let payloads: [&[u8]; 7] = [
            b"\"\"",
            b"\"QUJDREVGR0hJSktM\"",
            b"\"QUJD REVG\\nR0g=\"",
            b"\"QUJDREVGR0g.\"",
            b"\"QQ=\"",
            b"\"\\u0051Q==\"",
            b"\"QUJDREVGR0hJSktM\\\"\"",
        ];
        let closings: [&[u8]; 3] = [b"}", b" } ", b"}x"];
        let mut lines = 0;
        for opening in openings {
            for name in names {
                for payload in payloads {
                    for closing in closings {
                        let line = [opening, name, b":", payload, closing].concat();
                        if let Some(instance) = parse_b64_instance(&line, None) {
                            let expected = wrapped(&line);
                            assert_eq!(Some(instance.bytes), expected, "{:?}", line.escape_ascii());
                            lines += 1;
                        }
                    }
                }
            }
        }
        assert!(lines > 20, "{lines}");
    }
}
