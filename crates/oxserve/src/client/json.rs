//! JSON as TF Serving's REST API reads and writes it, where numbers may be `NaN`, `Infinity` or
//! `-Infinity`: serde_json refuses those. Request bodies are only scanned (they are sent as
//! written); answers are parsed to be ranked.

use std::fmt;

fn is_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\r' | b'\n')
}

pub fn skip_space(text: &[u8], mut at: usize) -> usize {
    while text.get(at).copied().is_some_and(is_space) {
        at += 1;
    }
    at
}

/// Where the string whose opening quote is at `start` ends (after its closing quote).
fn string_end(text: &[u8], start: usize) -> Option<usize> {
    let mut at = start + 1;
    while at < text.len() {
        match text[at] {
            b'\\' => at += 2,
            b'"' => return Some(at + 1),
            _ => at += 1,
        }
    }
    None
}

/// Where the value starting at `start` ends: before the `,`, `]` or `}` after it, spaces trimmed.
/// Nested values are skipped by their brackets, not checked.
fn value_end(text: &[u8], start: usize) -> usize {
    let mut depth = 0usize;
    let mut at = start;
    while at < text.len() {
        match text[at] {
            b'"' => {
                at = string_end(text, at).unwrap_or(text.len());
                continue;
            }
            b'[' | b'{' => depth += 1,
            b',' | b']' | b'}' if depth == 0 => break,
            b']' | b'}' => depth -= 1,
            _ => {}
        }
        at += 1;
    }
    while at > start && is_space(text[at - 1]) {
        at -= 1;
    }
    at
}

/// An object's members: (key, the value's text).
pub type Members<'a> = Vec<(String, &'a [u8])>;

/// The top-level object of `text`: where its opening brace ends, and its members as (key, the
/// value's text). `None` when `text` is not an object. Only what precedes a syntax error is
/// found: the server, which gets the text as written, says what is wrong with it.
pub fn top_level_members(text: &[u8]) -> Option<(usize, Members<'_>)> {
    let open = skip_space(text, 0);
    if text.get(open) != Some(&b'{') {
        return None;
    }
    let mut members = Vec::new();
    let mut at = skip_space(text, open + 1);
    while text.get(at) == Some(&b'"') {
        let Some(key_end) = string_end(text, at) else {
            break;
        };
        let key = serde_json::from_slice(&text[at..key_end]).unwrap_or_default();
        at = skip_space(text, key_end);
        if text.get(at) != Some(&b':') {
            break;
        }
        let start = skip_space(text, at + 1);
        let end = value_end(text, start);
        members.push((key, &text[start..end]));
        at = skip_space(text, end);
        if text.get(at) != Some(&b',') {
            break;
        }
        at = skip_space(text, at + 1);
    }
    Some((open + 1, members))
}

/// A parsed JSON value. Numbers keep their text: an int64 class id prints as the server wrote it.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    Number(f64, String),
    String(String),
    Array(Vec<Value>),
    Object(Vec<(String, Value)>),
    /// `true`, `false` or `null`.
    Literal(String),
}

impl Value {
    pub fn get(&self, key: &str) -> Option<&Value> {
        match self {
            Value::Object(members) => members.iter().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }
}

/// Compact JSON, as serde_json writes it.
impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let quoted = |s: &str| serde_json::Value::from(s).to_string();
        match self {
            Value::Number(_, text) | Value::Literal(text) => f.write_str(text),
            Value::String(s) => f.write_str(&quoted(s)),
            Value::Array(items) => {
                f.write_str("[")?;
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        f.write_str(",")?;
                    }
                    write!(f, "{item}")?;
                }
                f.write_str("]")
            }
            Value::Object(members) => {
                f.write_str("{")?;
                for (i, (key, value)) in members.iter().enumerate() {
                    if i > 0 {
                        f.write_str(",")?;
                    }
                    write!(f, "{}:{value}", quoted(key))?;
                }
                f.write_str("}")
            }
        }
    }
}

/// serde_json's limit: deeper nesting is refused rather than overflowing the stack.
const MAX_DEPTH: usize = 128;

/// Parses a whole JSON text.
pub fn parse(text: &[u8]) -> Result<Value, String> {
    let mut parser = Parser { text, at: 0 };
    let value = parser.value(0)?;
    if skip_space(text, parser.at) != text.len() {
        return Err(parser.error("text after the JSON value"));
    }
    Ok(value)
}

struct Parser<'a> {
    text: &'a [u8],
    at: usize,
}

impl Parser<'_> {
    fn error(&self, what: &str) -> String {
        format!("{what} at byte {}", self.at)
    }

    /// The next byte after spaces, consumed.
    fn next(&mut self) -> Option<u8> {
        self.at = skip_space(self.text, self.at);
        let b = self.text.get(self.at).copied();
        self.at += 1;
        b
    }

    fn string(&mut self) -> Result<String, String> {
        self.at = skip_space(self.text, self.at);
        let end = match self.text.get(self.at) {
            Some(b'"') => {
                string_end(self.text, self.at).ok_or_else(|| self.error("unterminated string"))?
            }
            _ => return Err(self.error("expected a string")),
        };
        let s = serde_json::from_slice(&self.text[self.at..end])
            .map_err(|e| self.error(&format!("bad string ({e})")))?;
        self.at = end;
        Ok(s)
    }

    fn value(&mut self, depth: usize) -> Result<Value, String> {
        if depth > MAX_DEPTH {
            return Err(self.error("nested too deeply"));
        }
        self.at = skip_space(self.text, self.at);
        match self.text.get(self.at) {
            Some(b'"') => return self.string().map(Value::String),
            Some(b'[') => {
                self.at += 1;
                let mut items = Vec::new();
                if self.text.get(skip_space(self.text, self.at)) == Some(&b']') {
                    self.next();
                    return Ok(Value::Array(items));
                }
                loop {
                    items.push(self.value(depth + 1)?);
                    match self.next() {
                        Some(b',') => {}
                        Some(b']') => return Ok(Value::Array(items)),
                        _ => return Err(self.error("expected , or ]")),
                    }
                }
            }
            Some(b'{') => {
                self.at += 1;
                let mut members = Vec::new();
                if self.text.get(skip_space(self.text, self.at)) == Some(&b'}') {
                    self.next();
                    return Ok(Value::Object(members));
                }
                loop {
                    let key = self.string()?;
                    if self.next() != Some(b':') {
                        return Err(self.error("expected :"));
                    }
                    members.push((key, self.value(depth + 1)?));
                    match self.next() {
                        Some(b',') => {}
                        Some(b'}') => return Ok(Value::Object(members)),
                        _ => return Err(self.error("expected , or }")),
                    }
                }
            }
            _ => {}
        }
        let start = self.at;
        while self
            .text
            .get(self.at)
            .is_some_and(|&b| !is_space(b) && !b",:]}".contains(&b))
        {
            self.at += 1;
        }
        let token = String::from_utf8_lossy(&self.text[start..self.at]).into_owned();
        let number = match token.as_str() {
            "true" | "false" | "null" => return Ok(Value::Literal(token)),
            "NaN" => Some(f64::NAN),
            "Infinity" => Some(f64::INFINITY),
            "-Infinity" => Some(f64::NEG_INFINITY),
            // Rust's float syntax is JSON's plus "inf", "nan" and the like: not numbers here.
            t if t.starts_with(|c: char| c == '-' || c.is_ascii_digit()) => t.parse().ok(),
            _ => None,
        };
        match number {
            Some(n) => Ok(Value::Number(n, token)),
            None => {
                self.at = start;
                Err(self.error("expected a JSON value"))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn members_are_found_around_strings_nesting_and_non_finite_numbers() {
        let text =
            br#" { "a\"b" : [1, {"signature_name": "x"}, "]"], "signature_name" : "s\u0031" ,
            "n": NaN, "i": -Infinity}"#;
        let (open, members) = top_level_members(text).unwrap();
        assert_eq!(open, 2);
        let got: Vec<(&str, &[u8])> = members.iter().map(|(k, v)| (k.as_str(), *v)).collect();
        assert_eq!(
            got,
            vec![
                ("a\"b", &br#"[1, {"signature_name": "x"}, "]"]"#[..]),
                ("signature_name", br#""s\u0031""#),
                ("n", b"NaN"),
                ("i", b"-Infinity"),
            ]
        );
        assert_eq!(top_level_members(b" {}").unwrap(), (2, vec![]));
        assert_eq!(top_level_members(b"[1]"), None);
        // Up to a syntax error; a string cut short ends the scan.
        let (_, members) = top_level_members(br#"{"a": 1 "b": 2}"#).unwrap();
        assert_eq!(members.len(), 1);
        assert_eq!(top_level_members(br#"{"a": "x"#).unwrap().1.len(), 1);
        assert!(top_level_members(br#"{"a"#).unwrap().1.is_empty());
    }

    #[test]
    fn answers_parse_with_non_finite_numbers() {
        let text =
            br#"{"predictions": [[NaN, -Infinity, 1e3, 9223372036854775807], {"b64": "aGk="}],
            "t": [true, null, "\u00e9"], "e": {}, "a": []}"#;
        let value = parse(text).unwrap();
        let Some(Value::Array(rows)) = value.get("predictions") else {
            panic!("{value:?}");
        };
        let Value::Array(row) = &rows[0] else {
            panic!("{rows:?}");
        };
        assert!(matches!(row[0], Value::Number(n, _) if n.is_nan()));
        assert_eq!(row[1], Value::Number(f64::NEG_INFINITY, "-Infinity".into()));
        assert_eq!(row[2], Value::Number(1000.0, "1e3".into()));
        assert_eq!(
            value.to_string(),
            r#"{"predictions":[[NaN,-Infinity,1e3,9223372036854775807],{"b64":"aGk="}],"t":[true,null,"é"],"e":{},"a":[]}"#
        );
        for bad in [
            &b"[1,]"[..],
            b"{\"a\" 1}",
            b"[nan]",
            b"[inf]",
            b"[1] 2",
            b"\"x",
            b"",
            b"[1",
        ] {
            assert!(parse(bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
        let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
        assert!(parse(deep.as_bytes())
            .unwrap_err()
            .contains("nested too deeply"));
    }
}
