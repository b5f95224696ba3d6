//! A pull reader that accepts exactly what TF Serving's JSON parser accepts and fails with the same
//! error at the same offset.
//!
//! TF Serving parses request bodies with rapidjson 1.1.0 (`tensorflow_serving/workspace.bzl`) as
//! `doc.ParseStream<kParseNanAndInfFlag>(EncodedInputStream<UTF8<>, MemoryStream>)`: recursive
//! descent, no comments, no trailing commas, no UTF-8 validation, `NaN`/`Inf`/`Infinity` accepted,
//! numbers converted with rapidjson's "normal precision" algorithm. Every routine below is a
//! line-by-line port of the corresponding `GenericReader` routine (`ParseObject`, `ParseArray`,
//! `ParseStringToStream`, `ParseHex4`, `ParseNumber`, `StrtodNormalPrecision`, ...), so that the
//! values produced are bit-identical to TF Serving's and the error offsets match
//! `GetErrorOffset()`. Quirks kept on purpose:
//! - the input stream returns `'\0'` at the end, so an embedded NUL byte ends the document
//!   (`{}\0junk` is valid, a NUL inside a string is "Missing a closing quotation mark");
//! - the bytes 0xEF, 0xBB, 0xBF are each skipped once, in that order, at the very start (BOM);
//! - string bytes >= 0x80 are copied as they are, valid UTF-8 or not;
//! - `-0` is the integer 0, `-NaN` is NaN, `Inf` is infinity, `NInf` is infinity, `NaN.5` is 0.5.
//!
//! Unlike rapidjson (which recurses without limit and can overflow the stack), nesting is bounded
//! by [`MAX_DEPTH`].

use std::fmt;

use super::dom::is_lossless_f32;

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

fn err<T>(kind: ParseErrorKind, offset: usize) -> Result<T, ParseError> {
    Err(ParseError { kind, offset })
}

/// A JSON number as rapidjson classifies it. Integers are normalised the way `GenericValue`'s
/// constructors set their flags: every non-negative integer (including `-0`) is `U`, negative
/// ones are `I`; anything with a fraction, an exponent, too many digits, `NaN` or `Infinity` is `D`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum Number {
    U(u64),
    I(i64),
    D(f64),
}

impl Number {
    /// `IsInt()`: fits in `int32_t`.
    pub(crate) fn is_int(self) -> bool {
        match self {
            Number::U(u) => u <= i32::MAX as u64,
            Number::I(i) => i >= i32::MIN as i64,
            Number::D(_) => false,
        }
    }
    /// `IsUint()`: fits in `uint32_t`.
    pub(crate) fn is_uint(self) -> bool {
        matches!(self, Number::U(u) if u <= u32::MAX as u64)
    }
    /// `IsInt64()`.
    pub(crate) fn is_int64(self) -> bool {
        match self {
            Number::U(u) => u <= i64::MAX as u64,
            Number::I(_) => true,
            Number::D(_) => false,
        }
    }
    /// `IsUint64()`.
    pub(crate) fn is_uint64(self) -> bool {
        matches!(self, Number::U(_))
    }
    /// `IsDouble()`.
    pub(crate) fn is_double(self) -> bool {
        matches!(self, Number::D(_))
    }
    /// `GetDouble()`.
    pub(crate) fn as_f64(self) -> f64 {
        match self {
            Number::U(u) => u as f64,
            Number::I(i) => i as f64,
            Number::D(d) => d,
        }
    }
}

/// `internal::Pow10` (include/rapidjson/internal/pow10.h): 1e0 ..= 1e308 as double literals.
#[rustfmt::skip]
static POW10: [f64; 309] = [
    1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15, 1e16,
    1e17, 1e18, 1e19, 1e20, 1e21, 1e22, 1e23, 1e24, 1e25, 1e26, 1e27, 1e28, 1e29, 1e30, 1e31, 1e32,
    1e33, 1e34, 1e35, 1e36, 1e37, 1e38, 1e39, 1e40, 1e41, 1e42, 1e43, 1e44, 1e45, 1e46, 1e47, 1e48,
    1e49, 1e50, 1e51, 1e52, 1e53, 1e54, 1e55, 1e56, 1e57, 1e58, 1e59, 1e60, 1e61, 1e62, 1e63, 1e64,
    1e65, 1e66, 1e67, 1e68, 1e69, 1e70, 1e71, 1e72, 1e73, 1e74, 1e75, 1e76, 1e77, 1e78, 1e79, 1e80,
    1e81, 1e82, 1e83, 1e84, 1e85, 1e86, 1e87, 1e88, 1e89, 1e90, 1e91, 1e92, 1e93, 1e94, 1e95, 1e96,
    1e97, 1e98, 1e99, 1e100, 1e101, 1e102, 1e103, 1e104, 1e105, 1e106, 1e107, 1e108, 1e109, 1e110,
    1e111, 1e112, 1e113, 1e114, 1e115, 1e116, 1e117, 1e118, 1e119, 1e120, 1e121, 1e122, 1e123,
    1e124, 1e125, 1e126, 1e127, 1e128, 1e129, 1e130, 1e131, 1e132, 1e133, 1e134, 1e135, 1e136,
    1e137, 1e138, 1e139, 1e140, 1e141, 1e142, 1e143, 1e144, 1e145, 1e146, 1e147, 1e148, 1e149,
    1e150, 1e151, 1e152, 1e153, 1e154, 1e155, 1e156, 1e157, 1e158, 1e159, 1e160, 1e161, 1e162,
    1e163, 1e164, 1e165, 1e166, 1e167, 1e168, 1e169, 1e170, 1e171, 1e172, 1e173, 1e174, 1e175,
    1e176, 1e177, 1e178, 1e179, 1e180, 1e181, 1e182, 1e183, 1e184, 1e185, 1e186, 1e187, 1e188,
    1e189, 1e190, 1e191, 1e192, 1e193, 1e194, 1e195, 1e196, 1e197, 1e198, 1e199, 1e200, 1e201,
    1e202, 1e203, 1e204, 1e205, 1e206, 1e207, 1e208, 1e209, 1e210, 1e211, 1e212, 1e213, 1e214,
    1e215, 1e216, 1e217, 1e218, 1e219, 1e220, 1e221, 1e222, 1e223, 1e224, 1e225, 1e226, 1e227,
    1e228, 1e229, 1e230, 1e231, 1e232, 1e233, 1e234, 1e235, 1e236, 1e237, 1e238, 1e239, 1e240,
    1e241, 1e242, 1e243, 1e244, 1e245, 1e246, 1e247, 1e248, 1e249, 1e250, 1e251, 1e252, 1e253,
    1e254, 1e255, 1e256, 1e257, 1e258, 1e259, 1e260, 1e261, 1e262, 1e263, 1e264, 1e265, 1e266,
    1e267, 1e268, 1e269, 1e270, 1e271, 1e272, 1e273, 1e274, 1e275, 1e276, 1e277, 1e278, 1e279,
    1e280, 1e281, 1e282, 1e283, 1e284, 1e285, 1e286, 1e287, 1e288, 1e289, 1e290, 1e291, 1e292,
    1e293, 1e294, 1e295, 1e296, 1e297, 1e298, 1e299, 1e300, 1e301, 1e302, 1e303, 1e304, 1e305,
    1e306, 1e307, 1e308
];

/// `internal::FastPath`.
#[inline]
fn fast_path(significand: f64, exp: i64) -> f64 {
    if exp < -308 {
        0.0
    } else if exp >= 0 {
        significand * POW10.get(exp as usize).copied().unwrap_or(f64::INFINITY)
    } else {
        significand / POW10.get((-exp) as usize).copied().unwrap_or(f64::INFINITY)
    }
}

/// `internal::StrtodNormalPrecision`.
#[inline]
fn strtod_normal_precision(d: f64, p: i64) -> f64 {
    if p < -308 {
        // Prevent expSum < -308, making Pow10(p) = 0.
        let d = fast_path(d, -308);
        fast_path(d, p + 308)
    } else {
        fast_path(d, p)
    }
}

/// A number as [`Reader::parse_number_swar`] reads it, before its value is computed: an integer,
/// or the double significand `d` and the power of ten `exp` that `StrtodNormalPrecision` applies.
enum Scanned {
    Int { minus: bool, int: u64 },
    Double { minus: bool, d: f64, exp: i64 },
}

/// An integer as rapidjson's value flags classify it (`-0` is unsigned).
#[inline(always)]
fn int_number(minus: bool, int: u64) -> Number {
    if minus && int != 0 {
        Number::I(-(int as i64))
    } else {
        Number::U(int)
    }
}

/// Divisions by 10^1 ..= 10^MAX_RECIPROCAL are multiplied out (fraction exponents of images'
/// numbers are -16 to -19).
const MAX_RECIPROCAL: usize = 22;

/// `1 / POW10[k]` rounded to double, for k in 0..=MAX_RECIPROCAL.
static RECIPROCAL_POW10: [f64; MAX_RECIPROCAL + 1] = {
    let mut table = [1.0; MAX_RECIPROCAL + 1];
    let mut k = 1;
    while k <= MAX_RECIPROCAL {
        table[k] = 1.0 / POW10[k];
        k += 1;
    }
    table
};

/// `strtod_normal_precision(d, exp) as f32` for d >= 0 and exp in -MAX_RECIPROCAL..0, without
/// the division, where that gives the same float: `None` where it might not (near a rounding
/// boundary of `float`, outside its normal range).
#[inline(always)]
fn quotient_f32(d: f64, exp: i64) -> Option<f32> {
    // Ulps of the double between the product and the correctly rounded quotient: each of the
    // reciprocal and the product is rounded once (at most 1/2 ulp each, relative, so at most one
    // ulp of the result each), the quotient once more; 8 leaves room to spare.
    const SLACK: u64 = 8;
    const LOW: u64 = (1 << 29) - 1; // the bits of a double's significand below a float's
    const HALF: u64 = 1 << 28; // a midpoint between two floats
    let k = usize::try_from(-exp)
        .ok()
        .filter(|k| (1..=MAX_RECIPROCAL).contains(k))?;
    let q = d * RECIPROCAL_POW10[k];
    if q == 0.0 {
        return Some(0.0); // d is 0: both are +0
    }
    // Normal floats only (their rounding boundaries are those midpoints), away from overflow.
    let normal = (1e-37..1e38).contains(&q);
    let near_boundary = (q.to_bits() & LOW).abs_diff(HALF) <= SLACK;
    (normal && !near_boundary).then_some(q as f32)
}

/// Position in a request body, with rapidjson's stream semantics.
#[derive(Clone, Copy)]
pub(crate) struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
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

    /// [`Reader::parse_number`] for the numbers float tensors are made of, eight digits at a time:
    /// an optional '-', an integer part of 1 to 7 digits, an optional fraction, an optional
    /// exponent of 1 to 3 digits, with at least 32 bytes of input from the start of the number.
    /// The operations on the values are rapidjson's: fraction digits go into the 64-bit
    /// significand while it is at most 2^53 - 1 (checked before each digit), then into the double
    /// up to 17 significant digits, and the result is `StrtodNormalPrecision`'s. Returns `None`,
    /// without moving, for anything else (`NaN`, long integers, syntax errors, ...): the general
    /// routines decide those.
    #[inline(always)]
    pub(crate) fn parse_number_swar(&mut self) -> Option<Number> {
        let (n, end) = self.scan_number_swar()?;
        self.pos = end;
        Some(match n {
            Scanned::Int { minus, int } => int_number(minus, int),
            Scanned::Double { minus, d, exp } => {
                let d = strtod_normal_precision(d, exp);
                Number::D(if minus { -d } else { d })
            }
        })
    }

    /// What [`Reader::parse_number_swar`] followed by TF Serving's conversion to `float` gives
    /// (`IsLosslessDecimal<float>`, then `static_cast<float>(GetDouble())`), where the number is
    /// one that routine takes and the conversion accepts; `None`, without moving, otherwise.
    ///
    /// A fraction ends in a division by a power of ten, whose latency dominated the loop over an
    /// image's numbers. Instead the quotient is multiplied out with the reciprocal, within 3 ulps
    /// of the double rapidjson computes; rounding either to `float` then gives the same result
    /// unless they lie on different sides of a rounding boundary of `float` (a midpoint between
    /// two floats, where the low 29 bits of the double's significand are 1000...0), so near one
    /// the division is done after all (about one number in 30 million).
    #[inline(always)]
    pub(crate) fn parse_f32_swar(&mut self) -> Option<f32> {
        let (n, end) = self.scan_number_swar()?;
        let value = match n {
            Scanned::Int { minus, int } => {
                let n = int_number(minus, int);
                if !is_lossless_f32(n) {
                    return None;
                }
                n.as_f64() as f32
            }
            Scanned::Double { minus, d, exp } => {
                let v = match quotient_f32(d, exp) {
                    Some(v) => v,
                    None => {
                        let n = Number::D(strtod_normal_precision(d, exp));
                        if !is_lossless_f32(n) {
                            return None;
                        }
                        n.as_f64() as f32
                    }
                };
                if minus {
                    -v
                } else {
                    v
                }
            }
        };
        self.pos = end;
        Some(value)
    }

    /// The number at the reader, as [`Reader::parse_number_swar`] describes, and the position
    /// after it; the reader does not move.
    #[inline(always)]
    fn scan_number_swar(&self) -> Option<(Scanned, usize)> {
        // Positions below are relative to the start of the number; the first 32 bytes hold every
        // part read by fixed offsets, so that only those reads have (constant) bounds.
        let s = self.buf.get(self.pos..)?;
        let win: &[u8; 32] = s.first_chunk()?;
        let minus = win[0] == b'-';
        let first = minus as usize;

        // The integer part: at most 7 digits, so that it and the first eight fraction digits fit
        // in the significand (every prefix below 10^15 <= 2^53 - 1). Most often "0.".
        let w = word(win, first)?;
        let (int, n) = if w as u16 == u16::from_le_bytes(*b"0.") {
            (0, 1)
        } else {
            let n = leading_digits(w);
            if n == 0 || n == 8 || (n > 1 && w as u8 == b'0') {
                return None;
            }
            (digits_value(w, n), n)
        };
        let mut q = first + n;

        let mut exp_frac: i64 = 0;
        let mut d = 0.0f64;
        let mut use_double = false;
        if (w >> (8 * n)) as u8 == b'.' {
            (q, d, exp_frac) = fraction(s, win, q + 1, int)?;
            use_double = true;
        }

        let mut exp: i64 = 0;
        if at(s, q) | 0x20 == b'e' {
            if !use_double {
                d = (int as i64) as f64;
                use_double = true;
            }
            (q, exp) = exponent(s, q + 1, exp_frac)?;
        }

        let scanned = if use_double {
            Scanned::Double {
                minus,
                d,
                exp: exp + exp_frac,
            }
        } else {
            Scanned::Int { minus, int }
        };
        Some((scanned, self.pos + q))
    }

    /// [`Reader::parse_number`] for the numbers requests are made of: an integer part of at most
    /// 15 digits, any fraction, an exponent of at most three digits. Same operations on the same
    /// values (the fraction digits go into the 64-bit significand while it is at most 2^53 - 1,
    /// then into the double, at most 17 significant digits), with eight digits at a time where
    /// that cannot change the result; anything else goes to the full routine.
    #[inline]
    pub(crate) fn parse_number_quick(&mut self) -> Result<Number, ParseError> {
        const MAX_SAFE: u64 = 0x1F_FFFF_FFFF_FFFF; // 2^53 - 1
        let buf = self.buf;
        let mut p = self.pos;
        let at = |p: usize| -> u8 {
            match buf.get(p) {
                Some(&c) => c,
                None => 0,
            }
        };
        let minus = at(p) == b'-';
        if minus {
            p += 1;
        }
        let mut sig: u64 = 0;
        let mut significand_digit: i32 = 0;
        match at(p) {
            b'0' => p += 1,
            b'1'..=b'9' => {
                sig = (at(p) - b'0') as u64;
                p += 1;
                while at(p).is_ascii_digit() {
                    sig = sig * 10 + (at(p) - b'0') as u64;
                    p += 1;
                    significand_digit += 1;
                    if significand_digit >= 15 {
                        return self.parse_number();
                    }
                }
            }
            _ => return self.parse_number(),
        }
        let mut exp_frac: i64 = 0;
        let mut d = 0.0f64;
        let mut use_double = false;
        if at(p) == b'.' {
            p += 1;
            if !at(p).is_ascii_digit() {
                return self.parse_number();
            }
            // Into the 64-bit significand while it is at most 2^53 - 1 (checked before each digit:
            // eight at once when it is below 10^8, so every intermediate stays below 10^15).
            loop {
                if sig < 100_000_000 {
                    if let Some(eight) = eight_digits(buf, p) {
                        significand_digit += if sig > 0 { 8 } else { decimal_digits(eight) };
                        sig = sig * 100_000_000 + eight;
                        p += 8;
                        exp_frac -= 8;
                        continue;
                    }
                }
                let c = at(p);
                if !c.is_ascii_digit() || sig > MAX_SAFE {
                    break;
                }
                sig = sig * 10 + (c - b'0') as u64;
                p += 1;
                exp_frac -= 1;
                if sig != 0 {
                    significand_digit += 1;
                }
            }
            d = sig as f64;
            // The rest into the double, up to 17 significant digits.
            while at(p).is_ascii_digit() {
                if significand_digit < 17 {
                    d = d * 10.0 + (at(p) - b'0') as f64;
                    exp_frac -= 1;
                    if d > 0.0 {
                        significand_digit += 1;
                    }
                }
                p += 1;
            }
            use_double = true;
        }
        let mut exp: i64 = 0;
        if at(p) == b'e' || at(p) == b'E' {
            p += 1;
            if !use_double {
                d = sig as f64;
                use_double = true;
            }
            let exp_minus = at(p) == b'-';
            if exp_minus || at(p) == b'+' {
                p += 1;
            }
            let mut exp_digits = 0;
            while at(p).is_ascii_digit() {
                exp = exp * 10 + (at(p) - b'0') as i64;
                p += 1;
                exp_digits += 1;
                if exp_digits > 3 {
                    return self.parse_number();
                }
            }
            if exp_digits == 0 || (!exp_minus && exp > 308 - exp_frac) {
                return self.parse_number();
            }
            if exp_minus {
                exp = -exp;
            }
        }
        self.pos = p;
        if use_double {
            let d = strtod_normal_precision(d, exp + exp_frac);
            Ok(Number::D(if minus { -d } else { d }))
        } else if minus && sig != 0 {
            Ok(Number::I(-(sig as i64)))
        } else {
            Ok(Number::U(sig))
        }
    }

    /// `ParseNumber` with `kParseNanAndInfFlag`, not full precision, 64-bit build.
    pub(crate) fn parse_number(&mut self) -> Result<Number, ParseError> {
        let buf = self.buf;
        let at = |p: usize| -> u8 {
            match buf.get(p) {
                Some(&c) => c,
                None => 0,
            }
        };
        let start = self.pos;
        let mut p = start;
        let mut d = 0.0f64;
        let mut use_nan_or_inf = false;
        let minus = at(p) == b'-';
        if minus {
            p += 1;
        }

        // Parse int: zero / ( digit1-9 *DIGIT )
        let mut i: u32 = 0;
        let mut i64v: u64 = 0;
        let mut use_64bit = false;
        let mut significand_digit: i32 = 0;
        let c = at(p);
        if c == b'0' {
            p += 1;
        } else if c.is_ascii_digit() {
            // Up to 2^31 = 2147483648 for negative numbers, 2^32 - 1 = 4294967295 else.
            let limits = if minus {
                (214_748_364, b'8')
            } else {
                (429_496_729, b'5')
            };
            let first = (c - b'0') as u64;
            let (q, value, overflow) =
                int_digits(buf, p + 1, first, limits, &mut significand_digit);
            p = q;
            // Below 2^32 (it did not overflow 32 bits).
            i = value as u32;
            if overflow {
                i64v = value;
                use_64bit = true;
            }
        } else if c == b'I' || c == b'N' {
            // Parse NaN or Infinity here (rapidjson 1.1.0's exact sequence of Consume calls).
            use_nan_or_inf = true;
            let take = |p: &mut usize, want: u8| -> bool {
                if at(*p) == want {
                    *p += 1;
                    true
                } else {
                    false
                }
            };
            if take(&mut p, b'N') && take(&mut p, b'a') && take(&mut p, b'N') {
                d = f64::NAN;
            } else if take(&mut p, b'I') && take(&mut p, b'n') && take(&mut p, b'f') {
                d = if minus {
                    f64::NEG_INFINITY
                } else {
                    f64::INFINITY
                };
                if at(p) == b'i'
                    && !(take(&mut p, b'i')
                        && take(&mut p, b'n')
                        && take(&mut p, b'i')
                        && take(&mut p, b't')
                        && take(&mut p, b'y'))
                {
                    self.pos = p;
                    return err(ParseErrorKind::ValueInvalid, p);
                }
            } else {
                self.pos = p;
                return err(ParseErrorKind::ValueInvalid, p);
            }
        } else {
            self.pos = p;
            return err(ParseErrorKind::ValueInvalid, p);
        }

        // Parse 64bit int
        let mut use_double = false;
        if use_64bit {
            // Up to 2^63 = 9223372036854775808, or 2^64 - 1 = 18446744073709551615.
            let limits = if minus {
                (0x0CCC_CCCC_CCCC_CCCC, b'8')
            } else {
                (0x1999_9999_9999_9999, b'5')
            };
            let (q, value, overflow) = int_digits(buf, p, i64v, limits, &mut significand_digit);
            p = q;
            i64v = value;
            if overflow {
                d = value as f64;
                use_double = true;
            }
        }

        // Force double for big integer
        if use_double {
            loop {
                let c = at(p);
                if !c.is_ascii_digit() {
                    break;
                }
                if d >= 1.797_693_134_862_315_7e307 {
                    // Overflow
                    self.pos = p;
                    return err(ParseErrorKind::NumberTooBig, start);
                }
                d = d * 10.0 + (c - b'0') as f64;
                p += 1;
            }
        }

        // Parse frac = decimal-point 1*DIGIT
        let mut exp_frac: i64 = 0;
        if at(p) == b'.' {
            p += 1;
            if !at(p).is_ascii_digit() {
                self.pos = p;
                return err(ParseErrorKind::NumberMissFraction, p);
            }
            if !use_double {
                // Use i64 to store significand in 64-bit architecture
                if !use_64bit {
                    i64v = i as u64;
                }
                loop {
                    let c = at(p);
                    if !c.is_ascii_digit() || i64v > 0x1F_FFFF_FFFF_FFFF {
                        // 2^53 - 1 for fast path
                        break;
                    }
                    i64v = i64v * 10 + (c - b'0') as u64;
                    p += 1;
                    exp_frac -= 1;
                    if i64v != 0 {
                        significand_digit += 1;
                    }
                }
                d = i64v as f64;
                use_double = true;
            }
            loop {
                let c = at(p);
                if !c.is_ascii_digit() {
                    break;
                }
                if significand_digit < 17 {
                    d = d * 10.0 + (c - b'0') as f64;
                    exp_frac -= 1;
                    if d > 0.0 {
                        significand_digit += 1;
                    }
                }
                p += 1;
            }
        }

        // Parse exp = e [ minus / plus ] 1*DIGIT
        let mut exp: i64 = 0;
        if at(p) == b'e' || at(p) == b'E' {
            p += 1;
            if !use_double {
                d = if use_64bit { i64v as f64 } else { i as f64 };
                use_double = true;
            }
            let mut exp_minus = false;
            if at(p) == b'+' {
                p += 1;
            } else if at(p) == b'-' {
                p += 1;
                exp_minus = true;
            }
            if at(p).is_ascii_digit() {
                exp = (at(p) - b'0') as i64;
                p += 1;
                if exp_minus {
                    loop {
                        let c = at(p);
                        if !c.is_ascii_digit() {
                            break;
                        }
                        exp = exp * 10 + (c - b'0') as i64;
                        p += 1;
                        if exp >= 214_748_364 {
                            // Issue #313: prevent overflow exponent
                            while at(p).is_ascii_digit() {
                                p += 1;
                            }
                        }
                    }
                } else {
                    // positive exp
                    let max_exp = 308 - exp_frac;
                    loop {
                        let c = at(p);
                        if !c.is_ascii_digit() {
                            break;
                        }
                        exp = exp * 10 + (c - b'0') as i64;
                        p += 1;
                        if exp > max_exp {
                            self.pos = p;
                            return err(ParseErrorKind::NumberTooBig, start);
                        }
                    }
                }
            } else {
                self.pos = p;
                return err(ParseErrorKind::NumberMissExponent, p);
            }
            if exp_minus {
                exp = -exp;
            }
        }

        // Finish parsing, call event according to the type of number.
        self.pos = p;
        if use_double {
            let d = strtod_normal_precision(d, exp + exp_frac);
            Ok(Number::D(if minus { -d } else { d }))
        } else if use_nan_or_inf {
            Ok(Number::D(d))
        } else if use_64bit {
            if minus {
                Ok(Number::I((!i64v).wrapping_add(1) as i64))
            } else {
                Ok(Number::U(i64v))
            }
        } else if minus {
            let v = (!i).wrapping_add(1) as i32;
            if v >= 0 {
                Ok(Number::U(v as u64))
            } else {
                Ok(Number::I(v as i64))
            }
        } else {
            Ok(Number::U(i as u64))
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

/// `Peek()` at `p`: the byte, `'\0'` at the end.
#[inline(always)]
fn at(buf: &[u8], p: usize) -> u8 {
    match buf.get(p) {
        Some(&c) => c,
        None => 0,
    }
}

/// rapidjson's integer digit loop: the digits at `buf[p..]` go into `value` while it is below
/// `limit`, or equal to it and the digit at most `last` (`max / 10` and the last digit of `max`
/// for the width and sign at hand), each counted in `significand_digit`. Returns the position
/// after the digits taken, the value, and whether a digit was left because it would overflow.
fn int_digits(
    buf: &[u8],
    mut p: usize,
    mut value: u64,
    (limit, last): (u64, u8),
    significand_digit: &mut i32,
) -> (usize, u64, bool) {
    loop {
        let c = at(buf, p);
        if !c.is_ascii_digit() {
            return (p, value, false);
        }
        if value >= limit && (value != limit || c > last) {
            return (p, value, true);
        }
        value = value * 10 + (c - b'0') as u64;
        p += 1;
        *significand_digit += 1;
    }
}

/// Below 2^53 - 1 a fraction digit goes into the 64-bit significand, above into the double.
const MAX_SAFE: u64 = (1 << 53) - 1;

/// The eight bytes at `win[at..at + 8]` as a little-endian word (the byte at `at` lowest).
#[inline(always)]
fn word(win: &[u8; 32], at: usize) -> Option<u64> {
    let chunk: &[u8; 8] = win.get(at..)?.first_chunk()?;
    Some(u64::from_le_bytes(*chunk))
}

/// The fraction at `s[q..]` (after the '.', `q` at most 9) of a number whose integer part `int`
/// is below 10^7, `win` being the first 32 bytes of `s`: the first eight digits (or fewer) at once,
/// and when the significand is still below 10^8 (an integer part of 0) the next eight (or fewer)
/// at once, every prefix staying below 2^53 - 1; then a 17th digit (Python's `repr` of a double
/// writes up to 17 significant digits) and the rare longer fractions. Returns the position after
/// the digits, the significand as a double and the fraction exponent (minus the number of digits
/// taken), or `None` when there is no digit ("Miss fraction part in number.").
#[inline(always)]
fn fraction(s: &[u8], win: &[u8; 32], q: usize, int: u64) -> Option<(usize, f64, i64)> {
    let w = word(win, q)?;
    let n = leading_digits(w);
    if n < 8 {
        if n == 0 {
            return None;
        }
        let sig = int * POW10_U64[n] + digits_value(w, n);
        return Some((q + n, (sig as i64) as f64, -(n as i64)));
    }
    let sig = int * 100_000_000 + digits_value(w, 8);
    if sig >= 100_000_000 {
        return Some(fraction_rest(s, q + 8, sig, int != 0, -8));
    }
    let w = word(win, q + 8)?;
    let m = leading_digits(w);
    if m < 8 {
        let sig = match m {
            0 => sig,
            _ => sig * POW10_U64[m] + digits_value(w, m),
        };
        return Some((q + 8 + m, (sig as i64) as f64, -8 - m as i64));
    }
    let sig = sig * 100_000_000 + digits_value(w, 8);
    let q = q + 16;
    let c = *win.get(q)?;
    if !c.is_ascii_digit() {
        return Some((q, (sig as i64) as f64, -16));
    }
    // A 17th digit after 16 significant ones (`significand_digit` is then 16) goes into the
    // significand while that is at most 2^53 - 1, else into the double. (Leading zeros or an
    // 18th digit: the general loop.)
    if sig >= 1_000_000_000_000_000 && !win.get(q + 1)?.is_ascii_digit() {
        let digit = (c - b'0') as u64;
        let d = if sig <= MAX_SAFE {
            ((sig * 10 + digit) as i64) as f64
        } else {
            ((sig as i64) as f64) * 10.0 + digit as f64
        };
        return Some((q + 1, d, -17));
    }
    Some(fraction_rest(s, q, sig, false, -16))
}

/// The exponent at `s[q..]` (after the 'e'): a sign and 1 to 3 digits. Returns the position after
/// it and its value, or `None` when it is missing, longer, or makes the number too big (the
/// general routine reports those).
#[inline(always)]
fn exponent(s: &[u8], mut q: usize, exp_frac: i64) -> Option<(usize, i64)> {
    let exp_minus = at(s, q) == b'-';
    if exp_minus || at(s, q) == b'+' {
        q += 1;
    }
    let w = load8(s, q)?;
    let k = leading_digits(w);
    if k == 0 || k > 3 {
        return None;
    }
    let exp = digits_value(w, k) as i64;
    if exp_minus {
        Some((q + k, -exp))
    } else if exp > 308 - exp_frac {
        None // "Number too big to be stored in double."
    } else {
        Some((q + k, exp))
    }
}

/// The fraction digits at `buf[p..]` (possibly none) after the significand `sig` took some,
/// digit by digit, literally as rapidjson does it: into the 64-bit significand while it is at most
/// 2^53 - 1, then into the double while `significand_digit` is below 17; the rest are skipped.
/// rapidjson counts `significand_digit` from the second digit of a non-zero integer part, or
/// from the first non-zero digit of the fraction: the digits of `sig`, less one when
/// `int_nonzero`. For what [`fraction`] leaves: more than eight digits after a non-zero integer
/// part, leading zeros followed by many digits, more than 17 digits.
#[inline(always)]
fn fraction_rest(
    buf: &[u8],
    mut p: usize,
    mut sig: u64,
    int_nonzero: bool,
    mut exp_frac: i64,
) -> (usize, f64, i64) {
    loop {
        let c = at(buf, p);
        if !c.is_ascii_digit() {
            return (p, (sig as i64) as f64, exp_frac);
        }
        if sig > MAX_SAFE {
            break;
        }
        sig = sig * 10 + (c - b'0') as u64;
        p += 1;
        exp_frac -= 1;
    }
    fraction_in_double(buf, p, sig, int_nonzero, exp_frac)
}

/// [`fraction_rest`] once the significand is above 2^53 - 1 (and below 10^17) with digits left.
#[inline(never)]
fn fraction_in_double(
    buf: &[u8],
    mut p: usize,
    sig: u64,
    int_nonzero: bool,
    mut exp_frac: i64,
) -> (usize, f64, i64) {
    let mut significand_digit = sig.ilog10() as i32 + 1 - int_nonzero as i32;
    let mut d = (sig as i64) as f64;
    loop {
        let c = at(buf, p);
        if !c.is_ascii_digit() {
            return (p, d, exp_frac);
        }
        if significand_digit < 17 {
            d = d * 10.0 + (c - b'0') as f64;
            exp_frac -= 1;
            significand_digit += 1;
        }
        p += 1;
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

/// `10^n` for `n` in `0..=8`: the factor that makes room for `n` more digits in a significand.
const POW10_U64: [u64; 9] = [
    1,
    10,
    100,
    1_000,
    10_000,
    100_000,
    1_000_000,
    10_000_000,
    100_000_000,
];

/// `buf[p..p + 8]` as a little-endian word (the byte at `p` lowest), if there are eight bytes.
#[inline(always)]
fn load8(buf: &[u8], p: usize) -> Option<u64> {
    let chunk: [u8; 8] = buf.get(p..p.checked_add(8)?)?.try_into().ok()?;
    Some(u64::from_le_bytes(chunk))
}

/// How many bytes at the start of `w` (lowest first) are ASCII digits, 0 to 8. A byte is a digit
/// when its high nibble is 3 and adding 6 keeps it so. The addition can carry out of a non-digit
/// byte into the next one, but only bytes after the first non-digit are affected, and those are
/// not counted anyway.
#[inline(always)]
fn leading_digits(w: u64) -> usize {
    const HIGH: u64 = 0xF0F0_F0F0_F0F0_F0F0;
    const ZEROS: u64 = 0x3030_3030_3030_3030;
    let not_digit = ((w & HIGH) ^ ZEROS) | ((w.wrapping_add(0x0606_0606_0606_0606) & HIGH) ^ ZEROS);
    (not_digit.trailing_zeros() / 8) as usize
}

/// The value of the first `n` bytes of `w` (1 to 8, all ASCII digits). They are shifted to the
/// top of the word, so that the vacated low bytes read as leading zeros; the bytes after them are
/// shifted out.
#[inline(always)]
fn digits_value(w: u64, n: usize) -> u64 {
    debug_assert!((1..=8).contains(&n));
    // On digits, XOR with '0' subtracts it (and, unlike a subtraction, never borrows).
    combine_digits((w ^ 0x3030_3030_3030_3030) << (8 * (8 - n)))
}

/// The value of eight decimal digit values (0 to 9), one per byte, the first lowest: the usual
/// SWAR combination of pairs, then quads, then the eight.
#[inline(always)]
fn combine_digits(v: u64) -> u64 {
    let v = (v * 10) + (v >> 8);
    ((v & 0x0000_00FF_0000_00FF).wrapping_mul(100 + (1_000_000 << 32))
        + ((v >> 16) & 0x0000_00FF_0000_00FF).wrapping_mul(1 + (10_000 << 32)))
        >> 32
}

/// The value of the eight ASCII digits at `buf[p..p + 8]`, if they are all digits.
#[inline]
fn eight_digits(buf: &[u8], p: usize) -> Option<u64> {
    let w = load8(buf, p)?;
    (leading_digits(w) == 8).then(|| digits_value(w, 8))
}

/// Number of decimal digits of a value below 10^8 (0 for 0).
#[inline]
fn decimal_digits(v: u64) -> i32 {
    match v {
        0 => 0,
        1..=9 => 1,
        10..=99 => 2,
        100..=999 => 3,
        1_000..=9_999 => 4,
        10_000..=99_999 => 5,
        100_000..=999_999 => 6,
        1_000_000..=9_999_999 => 7,
        _ => 8,
    }
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

    #[test]
    fn eight_digit_chunks() {
        assert_eq!(eight_digits(b"12345678", 0), Some(12_345_678));
        assert_eq!(eight_digits(b"x00000009", 1), Some(9));
        assert_eq!(eight_digits(b"99999999", 0), Some(99_999_999));
        assert_eq!(eight_digits(b"1234567", 0), None);
        assert_eq!(eight_digits(b"1234567a", 0), None);
        assert_eq!(eight_digits(b"1234567:", 0), None);
        assert_eq!(eight_digits(b"1234567/", 0), None);
        for n in [0u64, 1, 10, 12_000_034, 87_654_321, 50_000_005] {
            assert_eq!(eight_digits(format!("{n:08}").as_bytes(), 0), Some(n));
        }
    }

    #[test]
    fn digit_runs() {
        let w = |s: &[u8]| {
            let mut b = [b'x'; 8];
            b[..s.len()].copy_from_slice(s);
            u64::from_le_bytes(b)
        };
        for (text, n, value) in [
            (&b"12345678"[..], 8, 12_345_678),
            (b"1234567,", 7, 1_234_567),
            (b"0", 1, 0),
            (b"09", 2, 9),
            (b"9.", 1, 9),
            (b"", 0, 0),
            (b"/", 0, 0),
            (b":", 0, 0),
            (b"00000001", 8, 1),
            (b"99999999", 8, 99_999_999),
        ] {
            let word = w(text);
            assert_eq!(leading_digits(word), n, "{text:?}");
            if n > 0 {
                assert_eq!(digits_value(word, n), value, "{text:?}");
            }
        }
        // A carry out of a non-digit byte does not hide it.
        assert_eq!(
            leading_digits(u64::from_le_bytes(
                *b"1\xFF3456789"[..8].first_chunk().unwrap()
            )),
            1
        );
    }

    /// Number texts of every kind the request bodies hold, and edge cases of rapidjson's
    /// arithmetic: Python's `repr` of float32 and float64 values, leading zeros, signs, exponents,
    /// long integer parts and fractions, and malformed ones.
    fn number_texts() -> Vec<String> {
        let mut texts: Vec<String> = [
            "0",
            "-0",
            "-0.0",
            "0.5",
            "1e5",
            "1E-5",
            "2.5e+3",
            "0e0",
            "-0e-0",
            "1.0",
            "-1.0",
            "1e",
            "1e+",
            "1e-",
            "1.",
            "-",
            "--1",
            ".5",
            "01.5",
            "00",
            "-01",
            "1.e5",
            "1e5.5",
            "NaN",
            "-Infinity",
            "Inf",
            "1e-400",
            "1e309",
            "1e308",
            "1.7976931348623157e308",
            "0.1e310",
            "1e0001",
            "1e001",
            "9999999",
            "99999999",
            "12345678.5",
            "1234567.5",
            "0.10000000149011612",
            "0.9999999403953552",
            "0.003921568859368563",
            "0.00392156862745098",
            "0.9007199254740993",
            "0.9007199254740991",
            "0.90071992547409912",
            "0.12345678901234567890123",
            "9.007199254740993",
            "0.000000000000000000000000000001",
            "0.0000000000000000000000000000012345678901234",
            "1234567.1234567890123456789",
            "0.00000001",
            "0.000000010000000000000001",
            "4503599627370495.5",
            "900719925474099.17",
            "-0.00000000123e-300",
            "0.1234567890123456e-5",
            "0.12345678901234567e+22",
            "1e-7",
            "5e-324",
            "2e-308",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for _ in 0..30_000 {
            let a = next();
            let unit = (a >> 40) as f32 / (1u64 << 24) as f32;
            texts.push(format!("{:?}", f64::from(unit)));
            texts.push(format!("{:?}", -f64::from(unit) * 2.0));
            texts.push(format!("{:?}", f64::from(unit / 1000.0)));
            texts.push(format!("{:?}", f64::from(unit * 255.0)));
            texts.push(format!("{:?}", -f64::from(unit) * 1e6));
            texts.push(format!("{:?}", f64::from_bits(a) % 1e6));
            texts.push(format!("{:?}", f64::from_bits(a)));
            texts.push(format!("{:e}", f64::from(unit) * 1e-3));
            texts.push(format!("{}", a % 100_000_000));
            texts.push(format!("-{}", a % 10_000));
            texts.push(format!("{}.{}", a % 10_000_000, next()));
            texts.push(format!(
                "0.{:0>width$}",
                next() % 1_000_000_000,
                width = (a % 25) as usize
            ));
            texts.push(format!(
                "{}e{}{}",
                a % 1000,
                ["", "+", "-"][(a % 3) as usize],
                a % 400
            ));
        }
        texts
    }

    /// The eight-at-a-time number routine computes exactly what the full port computes, where it
    /// accepts a number, and leaves the reader alone where it does not; followed by anything.
    #[test]
    fn swar_numbers_match_full_port() {
        let padding = " ".repeat(40);
        let mut handled = 0;
        let texts = number_texts();
        for t in &texts {
            for tail in [",", "]", "}", " ,", "x", "", "\0", "5", "e", "."] {
                for pad in [&padding[..], ""] {
                    let body = format!("{t}{tail}{pad}");
                    let mut swar = Reader::at(body.as_bytes(), 0);
                    let mut full = Reader::at(body.as_bytes(), 0);
                    let b = full.parse_number();
                    match swar.parse_number_swar() {
                        Some(a) => {
                            handled += 1;
                            // Debug text: tells -0.0 from 0.0, and NaN equals NaN.
                            assert_eq!(
                                format!("{:?}", Ok::<_, ParseError>(a)),
                                format!("{b:?}"),
                                "{body:?}"
                            );
                            assert_eq!(swar.pos(), full.pos(), "{body:?}");
                        }
                        None => assert_eq!(swar.pos(), 0, "{body:?}"),
                    }
                }
            }
        }
        // Most of those with room after them take the fast route (the others are long integers,
        // NaN, errors, ...).
        assert!(
            handled > texts.len() * 7,
            "{handled} of {}",
            texts.len() * 10
        );
    }

    /// Texts of doubles at, next to and between the midpoints of adjacent floats: where rounding a
    /// double to `float` is decided by its last bits.
    fn float_midpoint_texts() -> Vec<String> {
        let mut x: u64 = 0x2545_F491_4F6C_DD1D;
        let mut texts = Vec::new();
        for _ in 0..40_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            // Floats from about 1e-7 to 1e3, and all of [0, 1) at 2^-24 steps.
            let f = f32::from_bits(0x3400_0000 + (x % 0x0E00_0000) as u32);
            let g = (x >> 40) as f32 / (1u64 << 24) as f32;
            for f in [f, g] {
                let mid = (f as f64 + f.next_up() as f64) / 2.0;
                for m in [mid, mid.next_down(), mid.next_up()] {
                    texts.push(format!("{m:?}"));
                    texts.push(format!("{m:.16e}"));
                    texts.push(format!("{:.19}", m));
                }
            }
        }
        texts
    }

    /// `parse_f32_swar` gives, bit for bit, what the full port followed by TF Serving's
    /// conversion to float gives, where it takes a number; elsewhere it leaves the reader alone.
    #[test]
    fn swar_floats_match_full_port() {
        let padding = " ".repeat(40);
        let texts = number_texts();
        let midpoints = float_midpoint_texts();
        let mut handled = 0;
        for t in texts.iter().chain(&midpoints) {
            let body = format!("{t},{padding}");
            let mut swar = Reader::at(body.as_bytes(), 0);
            let mut full = Reader::at(body.as_bytes(), 0);
            let expected = full
                .parse_number()
                .ok()
                .filter(|n| is_lossless_f32(*n))
                .map(|n| n.as_f64() as f32);
            match swar.parse_f32_swar() {
                Some(v) => {
                    handled += 1;
                    assert_eq!(Some(v.to_bits()), expected.map(f32::to_bits), "{body:?}");
                    assert_eq!(swar.pos(), full.pos(), "{body:?}");
                }
                None => assert_eq!(swar.pos(), 0, "{body:?}"),
            }
        }
        assert!(
            handled > (texts.len() + midpoints.len()) * 3 / 5,
            "{handled}"
        );
    }

    /// Near a midpoint between floats the product is not trusted, and the division decides.
    #[test]
    fn quotients_near_float_midpoints_are_divided() {
        let mut near = 0;
        let texts = float_midpoint_texts();
        for t in &texts {
            let body = format!("{t},{}", " ".repeat(40));
            if let Some((Scanned::Double { d, exp, .. }, _)) =
                Reader::at(body.as_bytes(), 0).scan_number_swar()
            {
                if (-(MAX_RECIPROCAL as i64)..0).contains(&exp) && quotient_f32(d, exp).is_none() {
                    near += 1;
                }
            }
        }
        // Most texts of a midpoint's neighbours land within the slack of it.
        assert!(near > texts.len() / 3, "{near} of {}", texts.len());
    }

    /// Integers change representation exactly where rapidjson's overflow checks say.
    #[test]
    fn integer_limits() {
        let number = |text: &str| Reader::new(text.as_bytes()).parse_number().ok();
        assert_eq!(number("-2147483648"), Some(Number::I(-2_147_483_648)));
        assert_eq!(number("4294967295"), Some(Number::U(4_294_967_295)));
        assert_eq!(number("4294967296"), Some(Number::U(4_294_967_296)));
        assert_eq!(number("-9223372036854775808"), Some(Number::I(i64::MIN)));
        assert_eq!(
            number("-9223372036854775809"),
            Some(Number::D(-9_223_372_036_854_775_809.0))
        );
        assert_eq!(number("18446744073709551615"), Some(Number::U(u64::MAX)));
        assert_eq!(
            number("18446744073709551616"),
            Some(Number::D(18_446_744_073_709_551_616.0))
        );
    }

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

    /// The quick number routine computes exactly what the full port computes.
    #[test]
    fn quick_numbers_match_full_port() {
        let mut x: u64 = 0x1234_5678_9ABC_DEF1;
        let mut texts: Vec<String> = vec![
            "0".into(),
            "-0".into(),
            "-0.0".into(),
            "0.5".into(),
            "1e5".into(),
            "1E-5".into(),
            "2.5e+3".into(),
            "123456789012345".into(),
            "1234567890123456".into(),
            "0.000000000000001".into(),
            "9007199254740993".into(),
            "1e300".into(),
            "1e301".into(),
            "1.5e-320".into(),
            "00".into(),
            "1.".into(),
            "1e".into(),
            "-".into(),
            "0.12345678".into(),
            "99999999.99999999".into(),
            "0.5372549019607843".into(),
            "0.000000001234567890123456789".into(),
            "1e308".into(),
            "1.5e308".into(),
            "10e307".into(),
            "0.1e310".into(),
            "123456789012345.678901234567".into(),
            "9.999999999999999999999e-5".into(),
            "0.00000000000000000000000000001".into(),
            "4503599627370495.5".into(),
            "900719925474099.17".into(),
            "-0.00000000123e-300".into(),
            "1e-999".into(),
            "1e+999".into(),
        ];
        for _ in 0..20_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let f = f64::from_bits(x);
            if f.is_finite() {
                texts.push(format!("{f}"));
                texts.push(format!("{f:e}"));
                texts.push(format!("{}", f as f32));
            }
            texts.push(format!("{}", x % 1_000_000));
            texts.push(format!("{}", f64::from_bits(x).abs() % 1.0));
            texts.push(format!("{}.{}", x % 100_000, x));
            texts.push(format!("0.{:0>width$}", x, width = (x % 30) as usize));
            texts.push(format!("-{}.{:07}", x % 1000, (x >> 20) % 10_000_000));
        }
        for t in &texts {
            let body = format!("{t},");
            let mut quick = Reader::at(body.as_bytes(), 0);
            let mut full = Reader::at(body.as_bytes(), 0);
            let a = quick.parse_number_quick();
            let b = full.parse_number();
            assert_eq!(format!("{a:?}"), format!("{b:?}"), "{t}");
            if a.is_ok() {
                assert_eq!(quick.pos(), full.pos(), "{t}");
            }
        }
    }
}
