//! A rapidjson-like document, used only where TF Serving's behaviour depends on the whole tree:
//! error messages that echo JSON values (`JsonValueToString`), the reference (slow) path that
//! reproduces TF Serving's checks in their exact order, and classify/regress requests.
//! Tensor data on the normal path never goes through it (see `predict.rs`).

use oxserve_core::{DType, Error};

use super::decimal;
use super::pretty::PrettyWriter;
use super::reader::{ParseError, ParseErrorKind, Reader, MAX_DEPTH};
use crate::memory_budget;

pub use super::number::Number;

/// A JSON value as TF Serving's rapidjson reads it.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    Null,
    Bool(bool),
    Number(Number),
    String(Vec<u8>),
    Array(Vec<Value>),
    /// Members in document order; duplicate names are kept, as rapidjson does.
    Object(Vec<(Vec<u8>, Value)>),
}

impl Value {
    pub(crate) fn is_object(&self) -> bool {
        matches!(self, Value::Object(_))
    }

    /// `FindMember`: the first member with this name.
    pub fn find_member(&self, name: &[u8]) -> Option<&Value> {
        match self {
            Value::Object(members) => members.iter().find(|(k, _)| k == name).map(|(_, v)| v),
            _ => None,
        }
    }

    /// `JsonTypeString`.
    pub(crate) fn type_string(&self) -> &'static str {
        match self {
            Value::Null => "Null",
            Value::Bool(false) => "False",
            Value::Bool(true) => "True",
            Value::Object(_) => "Object",
            Value::Array(_) => "Array",
            Value::String(_) => "String",
            Value::Number(_) => "Number",
        }
    }

    /// `IsValBase64Object`: an object with exactly one member, "b64", holding a string.
    pub fn base64_payload(&self) -> Option<&[u8]> {
        match self {
            Value::Object(members) if members.len() == 1 && members[0].0 == b"b64" => {
                match &members[0].1 {
                    Value::String(s) => Some(s),
                    _ => None,
                }
            }
            _ => None,
        }
    }
}

/// Why a document was not built.
#[derive(Debug)]
pub(crate) enum DocumentError {
    Syntax(ParseError),
    /// The call's memory budget had no room for the document's values.
    OverBudget(tonic::Status),
}

impl From<ParseError> for DocumentError {
    fn from(err: ParseError) -> Self {
        DocumentError::Syntax(err)
    }
}

impl From<DocumentError> for Error {
    fn from(err: DocumentError) -> Self {
        match err {
            DocumentError::Syntax(err) => Error::invalid_argument(err.to_string()),
            DocumentError::OverBudget(refused) => Error::resource_exhausted(refused.message()),
        }
    }
}

/// What a document's values take, charged to the call the thread works on
/// ([`memory_budget::take_current`]) as they are built: a value is 32 bytes, so `[0,0,...]`
/// takes 16 times its text (32 with the arrays' spare capacity), which the body's own charge
/// does not cover.
struct Builder {
    scratch: Vec<u8>,
    used: usize,
    taken: usize,
}

impl Builder {
    /// Charged at once, so that the budget is not asked for every value.
    const STEP: usize = 64 << 10;

    fn new() -> Builder {
        Builder {
            scratch: Vec::new(),
            used: 0,
            taken: 0,
        }
    }

    fn add(&mut self, bytes: usize) -> Result<(), DocumentError> {
        self.used = self.used.saturating_add(bytes);
        if self.used > self.taken {
            let more = (self.used - self.taken).max(Self::STEP);
            memory_budget::take_current(more).map_err(DocumentError::OverBudget)?;
            self.taken = self.taken.saturating_add(more);
        }
        Ok(())
    }
}

/// An element of an array, or of an object with its name, where the container's spare capacity
/// can double it.
const ELEMENT: usize = 2 * size_of::<Value>();
const MEMBER: usize = 2 * size_of::<(Vec<u8>, Value)>();

/// A whole JSON text read as the REST API reads request bodies (`NaN` and `Infinity` included),
/// for tools that read what TF Serving-compatible servers write.
pub fn parse_json(text: &[u8]) -> Result<Value, Error> {
    if text.is_empty() {
        return Err(Error::invalid_argument(
            "JSON Parse error: The document is empty",
        ));
    }
    parse_document(text).map_err(Error::from)
}

/// `Document::ParseStream<kParseNanAndInfFlag>` on a non-empty body.
pub(crate) fn parse_document(body: &[u8]) -> Result<Value, DocumentError> {
    let mut r = Reader::new(body);
    r.start()?;
    let mut builder = Builder::new();
    builder.add(size_of::<Value>())?;
    let v = parse_value(&mut r, 0, &mut builder)?;
    r.finish()?;
    Ok(v)
}

fn parse_value(
    r: &mut Reader<'_>,
    depth: usize,
    builder: &mut Builder,
) -> Result<Value, DocumentError> {
    match r.peek() {
        b'n' => Ok(r.parse_literal(b"null").map(|_| Value::Null)?),
        b't' => Ok(r.parse_literal(b"true").map(|_| Value::Bool(true))?),
        b'f' => Ok(r.parse_literal(b"false").map(|_| Value::Bool(false))?),
        b'"' => {
            let mut s = Vec::new();
            r.parse_string(&mut s)?;
            builder.add(s.capacity())?;
            Ok(Value::String(s))
        }
        b'{' => {
            if depth + 1 > MAX_DEPTH {
                return Err(too_deep(r));
            }
            r.bump();
            let mut members = Vec::new();
            if r.object_empty() {
                return Ok(Value::Object(members));
            }
            loop {
                r.member_name(&mut builder.scratch)?;
                let name = builder.scratch.clone();
                builder.add(MEMBER + name.len())?;
                let v = parse_value(r, depth + 1, builder)?;
                members.push((name, v));
                if !r.member_end()? {
                    return Ok(Value::Object(members));
                }
            }
        }
        b'[' => {
            if depth + 1 > MAX_DEPTH {
                return Err(too_deep(r));
            }
            r.bump();
            let mut elements = Vec::new();
            if r.array_empty() {
                return Ok(Value::Array(elements));
            }
            loop {
                builder.add(ELEMENT)?;
                elements.push(parse_value(r, depth + 1, builder)?);
                if !r.element_end()? {
                    return Ok(Value::Array(elements));
                }
            }
        }
        _ => Ok(r.parse_number().map(Value::Number)?),
    }
}

fn too_deep(r: &Reader<'_>) -> DocumentError {
    DocumentError::Syntax(ParseError {
        kind: ParseErrorKind::TooDeep,
        offset: r.pos(),
    })
}

/// Whether `text` is one JSON value, as the request parser reads values (NaN and Infinity
/// included); the error's offset is into `text`. For command-line values that are put into a
/// request body: without the check, a value could close its list and add members of its own.
pub fn check_json_value(text: &[u8]) -> Result<(), Error> {
    if text.iter().all(u8::is_ascii_whitespace) {
        return Err(Error::invalid_argument(
            "JSON Parse error: The document is empty",
        ));
    }
    parse_document(text).map(drop).map_err(Error::from)
}

/// `ParseJson` in json_tensor.cc: an empty body, then rapidjson's errors, then a non-object root.
pub(crate) fn parse_request_document(body: &[u8]) -> Result<Value, Error> {
    if body.is_empty() {
        return Err(Error::invalid_argument(
            "JSON Parse error: The document is empty",
        ));
    }
    let doc = parse_document(body)?;
    if !doc.is_object() {
        return Err(format_error(&doc, "Is not object"));
    }
    Ok(doc)
}

/// `FillSignature`: the first "signature_name" member, which must be a string.
pub(crate) fn signature_name(doc: &Value) -> Result<Vec<u8>, Error> {
    match doc.find_member(b"signature_name") {
        None => Ok(Vec::new()),
        Some(Value::String(s)) => Ok(s.clone()),
        Some(_) => Err(Error::invalid_argument(format!(
            "JSON Value: {} not formatted correctly. 'signature_name' key must be a string value.",
            json_value_to_string(doc)
        ))),
    }
}

/// rapidjson's `Value::Accept(PrettyWriter)`; false when a NaN/infinite double aborts the walk.
fn accept(w: &mut PrettyWriter, v: &Value) -> bool {
    match v {
        Value::Null => w.null(),
        Value::Bool(b) => w.boolean(*b),
        Value::Number(Number::U(u)) => w.uint(*u),
        Value::Number(Number::I(i)) => w.int(*i),
        Value::Number(Number::D(d)) => return w.double(*d),
        Value::String(s) => w.string(s),
        Value::Array(elements) => {
            w.start_array();
            for e in elements {
                if !accept(w, e) {
                    return false;
                }
            }
            w.end_array();
        }
        Value::Object(members) => {
            w.start_object();
            for (k, e) in members {
                w.string(k);
                if !accept(w, e) {
                    return false;
                }
            }
            w.end_object();
        }
    }
    true
}

/// `JsonValueToString`: a top-level double goes through `WriteDecimal` (as float when it is within
/// float range, `IsFloat()`), anything else through the pretty writer. Bytes that are not UTF-8
/// (TF Serving echoes them raw) are replaced by U+FFFD.
pub(crate) fn json_value_to_string(v: &Value) -> String {
    let mut w = PrettyWriter::with_capacity(64);
    match v {
        Value::Number(Number::D(d)) => {
            if *d >= -3.402_823_4e38 && *d <= 3.402_823_4e38 {
                decimal::write_f32(&mut w.out, *d as f32);
            } else {
                decimal::write_f64(&mut w.out, *d);
            }
        }
        _ => {
            accept(&mut w, v);
        }
    }
    match String::from_utf8(w.into_bytes()) {
        Ok(s) => s,
        Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
    }
}

/// `FormatError`: "JSON Value: <value> <message>".
pub(crate) fn format_error(v: &Value, message: &str) -> Error {
    Error::invalid_argument(format!(
        "JSON Value: {} {}",
        json_value_to_string(v),
        message
    ))
}

/// `TypeError`.
pub(crate) fn type_error(v: &Value, dtype: DType) -> Error {
    Error::invalid_argument(format!(
        "JSON Value: {} Type: {} is not of expected type: {}",
        json_value_to_string(v),
        v.type_string(),
        dtype.name()
    ))
}

/// `Base64FormatError`.
pub(crate) fn base64_format_error(v: &Value) -> Error {
    Error::invalid_argument(format!(
        "JSON Value: {} not formatted correctly for base64 data",
        json_value_to_string(v)
    ))
}

/// A status rendered as absl's `Status::ToString()`: "INVALID_ARGUMENT: message".
pub(crate) fn status_to_string(e: &Error) -> String {
    format!("{}: {}", e.code.name(), e.message)
}
