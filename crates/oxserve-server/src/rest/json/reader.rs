//! A pull reader that accepts exactly what TF Serving's JSON parser accepts and fails with the same
//! error at the same offset.
//!
//! TF Serving parses request bodies with rapidjson 1.1.0 (`tensorflow_serving/workspace.bzl`) as
//! `doc.ParseStream<kParseNanAndInfFlag>(EncodedInputStream<UTF8<>, MemoryStream>)`: recursive
//! descent, no comments, no trailing commas, no UTF-8 validation, `NaN`/`Inf`/`Infinity` accepted,
//! numbers converted with rapidjson's "normal precision" algorithm. Every routine below is a
//! line-by-line port of the corresponding `GenericReader` routine (`ParseObject`, `ParseArray`,
//! `ParseStringToStream`, `ParseHex4`, ...), so that the values produced are bit-identical to TF
//! Serving's and the error offsets match `GetErrorOffset()`. Quirks kept on purpose:
//! - the input stream returns `'\0'` at the end, so an embedded NUL byte ends the document
//!   (`{}\0junk` is valid, a NUL inside a string is "Missing a closing quotation mark");
//! - the bytes 0xEF, 0xBB, 0xBF are each skipped once, in that order, at the very start (BOM);
//! - string bytes >= 0x80 are copied as they are, valid UTF-8 or not.
//!
//! Numbers are read by methods of the same [`Reader`], in their own modules: [`super::number`]
//! (the port of `ParseNumber` and `StrtodNormalPrecision`, and the [`super::number::Number`] it
//! produces) and [`super::fast_number`] (the same values, eight digits at a time).
//!
//! Unlike rapidjson (which recurses without limit and can overflow the stack), nesting is bounded
//! by [`MAX_DEPTH`].

use std::fmt;

/// Deepest nesting of arrays and objects accepted anywhere in a document (rapidjson has no limit).
pub(crate) const MAX_DEPTH: usize = 128;

/// rapidjson's `ParseErrorCode`s that the default handler can produce, plus our depth limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ParseErrorKind {
    DocumentEmpty,
    DocumentRootNotSingular,
    ValueInvalid,
    ObjectMissName,
    ObjectMissColon,
    ObjectMissCommaOrCurlyBracket,
    ArrayMissCommaOrSquareBracket,
    StringUnicodeEscapeInvalidHex,
    StringUnicodeSurrogateInvalid,
    StringEscapeInvalid,
    StringMissQuotationMark,
    NumberTooBig,
    NumberMissFraction,
    NumberMissExponent,
    /// Not a rapidjson error: nesting deeper than [`MAX_DEPTH`].
    TooDeep,
}

impl ParseErrorKind {
    /// `rapidjson::GetParseError_En` (include/rapidjson/error/en.h, v1.1.0).
    pub(crate) fn text(self) -> &'static str {
        match self {
            ParseErrorKind::DocumentEmpty => "The document is empty.",
            ParseErrorKind::DocumentRootNotSingular => {
                "The document root must not be followed by other values."
            }
            ParseErrorKind::ValueInvalid => "Invalid value.",
            ParseErrorKind::ObjectMissName => "Missing a name for object member.",
            ParseErrorKind::ObjectMissColon => "Missing a colon after a name of object member.",
            ParseErrorKind::ObjectMissCommaOrCurlyBracket => {
                "Missing a comma or '}' after an object member."
            }
            ParseErrorKind::ArrayMissCommaOrSquareBracket => {
                "Missing a comma or ']' after an array element."
            }
            ParseErrorKind::StringUnicodeEscapeInvalidHex => {
                "Incorrect hex digit after \\u escape in string."
            }
            ParseErrorKind::StringUnicodeSurrogateInvalid => {
                "The surrogate pair in string is invalid."
            }
            ParseErrorKind::StringEscapeInvalid => "Invalid escape character in string.",
            ParseErrorKind::StringMissQuotationMark => {
                "Missing a closing quotation mark in string."
            }
            ParseErrorKind::NumberTooBig => "Number too big to be stored in double.",
            ParseErrorKind::NumberMissFraction => "Miss fraction part in number.",
            ParseErrorKind::NumberMissExponent => "Miss exponent in number.",
            ParseErrorKind::TooDeep => "The document is nested too deeply (more than 128 levels).",
        }
    }
}

/// A syntax error and its byte offset, as `doc.GetParseError()` / `doc.GetErrorOffset()`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct ParseError {
    pub kind: ParseErrorKind,
    pub offset: usize,
}

impl fmt::Display for ParseError {
    /// TF Serving's `ParseJson`: `"JSON Parse error: ", GetParseError_En(..), " at offset: ", ..`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "JSON Parse error: {} at offset: {}",
            self.kind.text(),
            self.offset
        )
    }
}

pub(super) fn err<T>(kind: ParseErrorKind, offset: usize) -> Result<T, ParseError> {
    Err(ParseError { kind, offset })
}

/// Position in a request body, with rapidjson's stream semantics.
#[derive(Clone, Copy)]
pub(crate) struct Reader<'a> {
    pub(super) buf: &'a [u8],
    pub(super) pos: usize,
}

impl<'a> Reader<'a> {
    /// `EncodedInputStream<UTF8<>, MemoryStream>`'s constructor skips a UTF-8 BOM byte by byte.
    pub(crate) fn new(buf: &'a [u8]) -> Reader<'a> {
        let mut r = Reader { buf, pos: 0 };
        for bom in [0xEF, 0xBB, 0xBF] {
            if r.peek() == bom {
                r.pos += 1;
            }
        }
        r
    }

    /// A reader positioned at `pos` (a position previously returned by [`Reader::pos`]).
    pub(crate) fn at(buf: &'a [u8], pos: usize) -> Reader<'a> {
        Reader {
            buf,
            pos: pos.min(buf.len()),
        }
    }

    /// The whole body.
    pub(crate) fn buf(&self) -> &'a [u8] {
        self.buf
    }

    /// `Tell()`.
    #[inline]
    pub(crate) fn pos(&self) -> usize {
        self.pos
    }

    /// Bytes left after the current position.
    pub(crate) fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    /// `Peek()`: the next byte, `'\0'` at the end.
    #[inline]
    pub(crate) fn peek(&self) -> u8 {
        match self.buf.get(self.pos) {
            Some(&c) => c,
            None => 0,
        }
    }

    /// Skips one byte (never past the end).
    #[inline]
    pub(crate) fn bump(&mut self) {
        if self.pos < self.buf.len() {
            self.pos += 1;
        }
    }

    /// `Consume(is, c)`.
    #[inline]
    pub(crate) fn consume(&mut self, c: u8) -> bool {
        if self.peek() == c && c != 0 {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    /// `SkipWhitespace`.
    #[inline]
    pub(crate) fn skip_ws(&mut self) {
        while let Some(&c) = self.buf.get(self.pos) {
            if is_ws(c) {
                self.pos += 1;
            } else {
                break;
            }
        }
    }

    /// After the root value: whitespace then the end of the stream (`Peek() == '\0'`).
    pub(crate) fn finish(&mut self) -> Result<(), ParseError> {
        self.skip_ws();
        if self.peek() != 0 {
            return err(ParseErrorKind::DocumentRootNotSingular, self.pos);
        }
        Ok(())
    }

    /// The start of `GenericReader::Parse`: whitespace, then "The document is empty." if nothing.
    pub(crate) fn start(&mut self) -> Result<(), ParseError> {
        self.skip_ws();
        if self.peek() == 0 {
            return err(ParseErrorKind::DocumentEmpty, self.pos);
        }
        Ok(())
    }

    /// After a '{' has been consumed: `Consume(is, '}')` after whitespace for an empty object.
    /// Returns true when the object is empty (and consumed).
    pub(crate) fn object_empty(&mut self) -> bool {
        self.skip_ws();
        self.consume(b'}')
    }

    /// Reads a member name and the colon after it (at the start of a member, whitespace skipped).
    pub(crate) fn member_name(&mut self, out: &mut Vec<u8>) -> Result<(), ParseError> {
        if self.peek() != b'"' {
            return err(ParseErrorKind::ObjectMissName, self.pos);
        }
        out.clear();
        self.parse_string(out)?;
        self.skip_ws();
        if !self.consume(b':') {
            return err(ParseErrorKind::ObjectMissColon, self.pos);
        }
        self.skip_ws();
        Ok(())
    }

    /// After a member value: whitespace then ',' (returns true, more members follow, whitespace
    /// skipped) or '}' (returns false).
    pub(crate) fn member_end(&mut self) -> Result<bool, ParseError> {
        self.skip_ws();
        match self.peek() {
            b',' => {
                self.pos += 1;
                self.skip_ws();
                Ok(true)
            }
            b'}' => {
                self.pos += 1;
                Ok(false)
            }
            _ => err(ParseErrorKind::ObjectMissCommaOrCurlyBracket, self.pos),
        }
    }

    /// After a '[' has been consumed: whitespace, then true if the array is empty (']' consumed).
    pub(crate) fn array_empty(&mut self) -> bool {
        self.skip_ws();
        self.consume(b']')
    }

    /// After an element: whitespace then ',' (true, whitespace skipped) or ']' (false).
    #[inline(always)]
    pub(crate) fn element_end(&mut self) -> Result<bool, ParseError> {
        // The usual "," or ", " before a value, or "]", without the loops.
        if let Some(&[a, b, c]) = self.buf.get(self.pos..).and_then(|s| s.first_chunk()) {
            match a {
                b',' if !is_ws(b) => {
                    self.pos += 1;
                    return Ok(true);
                }
                b',' if b == b' ' && !is_ws(c) => {
                    self.pos += 2;
                    return Ok(true);
                }
                b']' => {
                    self.pos += 1;
                    return Ok(false);
                }
                _ => {}
            }
        }
        self.element_end_general()
    }

    #[inline(never)]
    fn element_end_general(&mut self) -> Result<bool, ParseError> {
        self.skip_ws();
        match self.peek() {
            b',' => {
                self.pos += 1;
                self.skip_ws();
                Ok(true)
            }
            b']' => {
                self.pos += 1;
                Ok(false)
            }
            _ => err(ParseErrorKind::ArrayMissCommaOrSquareBracket, self.pos),
        }
    }

    /// `ParseNull` / `ParseTrue` / `ParseFalse`: the first byte is known to match.
    pub(crate) fn parse_literal(&mut self, word: &[u8]) -> Result<(), ParseError> {
        self.bump();
        for &c in &word[1..] {
            if !self.consume(c) {
                return err(ParseErrorKind::ValueInvalid, self.pos);
            }
        }
        Ok(())
    }

    /// `ParseHex4`.
    fn parse_hex4(&mut self, escape_offset: usize) -> Result<u32, ParseError> {
        let mut codepoint = 0u32;
        for _ in 0..4 {
            let c = self.peek();
            let digit = match c {
                b'0'..=b'9' => c - b'0',
                b'A'..=b'F' => c - b'A' + 10,
                b'a'..=b'f' => c - b'a' + 10,
                _ => return err(ParseErrorKind::StringUnicodeEscapeInvalidHex, escape_offset),
            };
            codepoint = (codepoint << 4) | digit as u32;
            self.pos += 1;
        }
        Ok(codepoint)
    }

    /// [`Reader::parse_string`] without the copy when the string has no escape: its bytes are then
    /// a slice of the body; otherwise they are decoded into `scratch`. The next byte must be '"'.
    pub(crate) fn parse_string_ref<'s>(
        &mut self,
        scratch: &'s mut Vec<u8>,
    ) -> Result<&'s [u8], ParseError>
    where
        'a: 's,
    {
        let start = self.pos + 1;
        let rest = self.buf.get(start..).unwrap_or_default();
        let len = plain_run(rest);
        if rest.get(len) == Some(&b'"') {
            self.pos = start + len + 1;
            return Ok(&rest[..len]);
        }
        scratch.clear();
        self.parse_string(scratch)?;
        Ok(scratch)
    }

    /// `ParseString` + `ParseStringToStream`, appending the decoded bytes to `out`. The next byte
    /// must be '"'.
    pub(crate) fn parse_string(&mut self, out: &mut Vec<u8>) -> Result<(), ParseError> {
        self.bump(); // the opening quote
        let buf = self.buf;
        loop {
            let start = self.pos;
            let p = start + plain_run(&buf[start..]);
            out.extend_from_slice(&buf[start..p]);
            self.pos = p;
            let c = self.peek();
            if c == b'\\' {
                let escape_offset = self.pos;
                self.pos += 1;
                let e = self.peek();
                let unescaped = match e {
                    b'"' => Some(b'"'),
                    b'/' => Some(b'/'),
                    b'\\' => Some(b'\\'),
                    b'b' => Some(0x08),
                    b'f' => Some(0x0C),
                    b'n' => Some(b'\n'),
                    b'r' => Some(b'\r'),
                    b't' => Some(b'\t'),
                    _ => None,
                };
                if let Some(u) = unescaped {
                    self.pos += 1;
                    out.push(u);
                } else if e == b'u' {
                    self.pos += 1;
                    let mut codepoint = self.parse_hex4(escape_offset)?;
                    // rapidjson 1.1.0 only checks high surrogates; a lone low surrogate is
                    // encoded as it is (three bytes, not valid UTF-8).
                    if (0xD800..=0xDBFF).contains(&codepoint) {
                        if !self.consume(b'\\') || !self.consume(b'u') {
                            return err(
                                ParseErrorKind::StringUnicodeSurrogateInvalid,
                                escape_offset,
                            );
                        }
                        let codepoint2 = self.parse_hex4(escape_offset)?;
                        if !(0xDC00..=0xDFFF).contains(&codepoint2) {
                            return err(
                                ParseErrorKind::StringUnicodeSurrogateInvalid,
                                escape_offset,
                            );
                        }
                        codepoint =
                            (((codepoint - 0xD800) << 10) | (codepoint2 - 0xDC00)) + 0x10000;
                    }
                    encode_utf8(codepoint, out);
                } else {
                    return err(ParseErrorKind::StringEscapeInvalid, escape_offset);
                }
            } else if c == b'"' {
                self.pos += 1;
                return Ok(());
            } else if c == 0 {
                return err(ParseErrorKind::StringMissQuotationMark, self.pos);
            } else {
                // A control character: rapidjson 1.1.0 reports kParseErrorStringEscapeInvalid.
                return err(ParseErrorKind::StringEscapeInvalid, self.pos);
            }
        }
    }

    /// Parses and discards one value (any type), checking its syntax; `depth` is the nesting depth
    /// of the value's parent container (0 for the root).
    pub(crate) fn skip_value(
        &mut self,
        depth: usize,
        scratch: &mut Vec<u8>,
    ) -> Result<(), ParseError> {
        match self.peek() {
            b'n' => self.parse_literal(b"null"),
            b't' => self.parse_literal(b"true"),
            b'f' => self.parse_literal(b"false"),
            b'"' => {
                scratch.clear();
                self.parse_string(scratch)
            }
            b'{' => {
                if depth + 1 > MAX_DEPTH {
                    return err(ParseErrorKind::TooDeep, self.pos);
                }
                self.bump();
                if self.object_empty() {
                    return Ok(());
                }
                loop {
                    self.member_name(scratch)?;
                    self.skip_value(depth + 1, scratch)?;
                    if !self.member_end()? {
                        return Ok(());
                    }
                }
            }
            b'[' => {
                if depth + 1 > MAX_DEPTH {
                    return err(ParseErrorKind::TooDeep, self.pos);
                }
                self.bump();
                if self.array_empty() {
                    return Ok(());
                }
                loop {
                    self.skip_value(depth + 1, scratch)?;
                    if !self.element_end()? {
                        return Ok(());
                    }
                }
            }
            _ => self.parse_number().map(|_| ()),
        }
    }
}

/// The length of the run of bytes at the start of `s` that a string copies as they are: up to
/// the first '"', '\\' or control character (or the end). 32 bytes at a time, without an early
/// exit inside a group, which the compiler turns into vector compares: base64 payloads are tens
/// of kilobytes of such bytes.
#[inline]
fn plain_run(s: &[u8]) -> usize {
    let ends = |c: u8| (c == b'"') | (c == b'\\') | (c < 0x20);
    let mut base = 0;
    for group in s.chunks_exact(32) {
        if group.iter().fold(false, |hit, &c| hit | ends(c)) {
            break;
        }
        base += 32;
    }
    base + s[base..]
        .iter()
        .position(|&c| ends(c))
        .unwrap_or(s.len() - base)
}

/// The whitespace of `SkipWhitespace`.
#[inline(always)]
fn is_ws(c: u8) -> bool {
    matches!(c, b' ' | b'\n' | b'\r' | b'\t')
}

/// `UTF8<>::Encode`.
fn encode_utf8(codepoint: u32, out: &mut Vec<u8>) {
    if codepoint <= 0x7F {
        out.push(codepoint as u8);
    } else if codepoint <= 0x7FF {
        out.push(0xC0 | ((codepoint >> 6) & 0xFF) as u8);
        out.push(0x80 | (codepoint & 0x3F) as u8);
    } else if codepoint <= 0xFFFF {
        out.push(0xE0 | ((codepoint >> 12) & 0xFF) as u8);
        out.push(0x80 | ((codepoint >> 6) & 0x3F) as u8);
        out.push(0x80 | (codepoint & 0x3F) as u8);
    } else {
        out.push(0xF0 | ((codepoint >> 18) & 0xFF) as u8);
        out.push(0x80 | ((codepoint >> 12) & 0x3F) as u8);
        out.push(0x80 | ((codepoint >> 6) & 0x3F) as u8);
        out.push(0x80 | (codepoint & 0x3F) as u8);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The short cuts of `element_end` agree with the general loop on every combination of the
    /// separators and whitespace.
    #[test]
    fn element_ends() {
        let alphabet = [b',', b']', b' ', b'\n', b'\r', b'\t', b'1', b'[', b'x'];
        let mut bodies = vec![Vec::new()];
        for _ in 0..5 {
            bodies = bodies
                .iter()
                .flat_map(|b| alphabet.iter().map(move |&c| [b.as_slice(), &[c]].concat()))
                .collect();
            for body in &bodies {
                let mut fast = Reader::at(body, 0);
                let mut general = Reader::at(body, 0);
                assert_eq!(
                    fast.element_end(),
                    general.element_end_general(),
                    "{body:?}"
                );
                assert_eq!(fast.pos(), general.pos(), "{body:?}");
            }
        }
    }
}
