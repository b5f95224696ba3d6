//! Numbers as TF Serving's JSON parser reads them: rapidjson 1.1.0's `ParseNumber` with
//! `kParseNanAndInfFlag`, not full precision, 64-bit build, its values converted with
//! `StrtodNormalPrecision` (rapidjson's "normal precision" algorithm), and the [`Number`] it
//! produces. Line-by-line ports of those routines, so that the values produced are bit-identical
//! to TF Serving's and the error offsets match `GetErrorOffset()`. Quirks kept on purpose: `-0` is
//! the integer 0, `-NaN` is NaN, `Inf` is infinity, `NInf` is infinity, `NaN.5` is 0.5.
//!
//! The routines that compute the same values eight digits at a time are in
//! [`super::fast_number`].

use super::reader::{err, ParseError, ParseErrorKind, Reader};

/// A JSON number as rapidjson classifies it. Integers are normalised the way `GenericValue`'s
/// constructors set their flags: every non-negative integer (including `-0`) is `U`, negative
/// ones are `I`; anything with a fraction, an exponent, too many digits, `NaN` or `Infinity` is `D`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Number {
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
    pub fn as_f64(self) -> f64 {
        match self {
            Number::U(u) => u as f64,
            Number::I(i) => i as f64,
            Number::D(d) => d,
        }
    }
}

/// `internal::Pow10` (include/rapidjson/internal/pow10.h): 1e0 ..= 1e308 as double literals.
#[rustfmt::skip]
pub(super) static POW10: [f64; 309] = [
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
pub(super) fn strtod_normal_precision(d: f64, p: i64) -> f64 {
    if p < -308 {
        // Prevent expSum < -308, making Pow10(p) = 0.
        let d = fast_path(d, -308);
        fast_path(d, p + 308)
    } else {
        fast_path(d, p)
    }
}

impl<'a> Reader<'a> {
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
}

/// `Peek()` at `p`: the byte, `'\0'` at the end.
#[inline(always)]
pub(super) fn at(buf: &[u8], p: usize) -> u8 {
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
