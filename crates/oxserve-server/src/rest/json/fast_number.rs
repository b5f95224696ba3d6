//! Fast routes to what [`Reader::parse_number`] computes, for the numbers request bodies are made
//! of: the same operations on the same values (fraction digits go into the 64-bit significand
//! while it is at most 2^53 - 1, then into the double up to 17 significant digits, and the result
//! is `StrtodNormalPrecision`'s), eight digits at a time (sixteen with SSE2) where that cannot
//! change the result; anything else is left to the general routines.
//!
//! - [`Reader::parse_number_swar`]: the numbers float tensors are made of, with at least 32 bytes
//!   of input from the start of the number.
//! - [`Reader::parse_f32_swar`]: the same followed by TF Serving's conversion to `float`, with the
//!   division by a power of ten that ends a fraction multiplied out by its reciprocal where that
//!   gives the same float.
//! - [`Reader::parse_number_quick`]: an integer part of at most 15 digits, any fraction, an
//!   exponent of at most three digits.

use super::digits::{
    decimal_digits, digits_value, eight_digits, leading_digits, load8, sixteen_digits, word,
    POW10_U64,
};
use super::number::{at, strtod_normal_precision, Number, POW10};
use super::reader::{ParseError, Reader};

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

impl<'a> Reader<'a> {
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

    /// What [`Reader::parse_number_swar`] followed by TF Serving's conversion to `float`
    /// (`static_cast<float>(GetDouble())`) gives, where the number is one that routine takes;
    /// `None`, without moving, otherwise.
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
            Scanned::Int { minus, int } => int_number(minus, int).as_f64() as f32,
            Scanned::Double { minus, d, exp } => {
                let v =
                    quotient_f32(d, exp).unwrap_or_else(|| strtod_normal_precision(d, exp) as f32);
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
}

/// Below 2^53 - 1 a fraction digit goes into the 64-bit significand, above into the double.
const MAX_SAFE: u64 = (1 << 53) - 1;

/// The fraction at `s[q..]` (after the '.', `q` at most 9) of a number whose integer part `int`
/// is below 10^7, `win` being the first 32 bytes of `s`: after an integer part of 0, sixteen
/// digits at once (a float image's numbers) and a 17th (Python's `repr` of a double writes up to
/// 17 significant digits); otherwise the first eight digits (or fewer) at once, then up to eight
/// more at once; the rare longer fractions digit by digit. Returns the position after the digits,
/// the significand as a double and the fraction exponent (minus the number of digits taken), or
/// `None` when there is no digit ("Miss fraction part in number.").
#[inline(always)]
fn fraction(s: &[u8], win: &[u8; 32], q: usize, int: u64) -> Option<(usize, f64, i64)> {
    if int == 0 {
        if let Some(sig) = sixteen_digits(win, q) {
            return seventeenth_digit(s, win, q + 16, sig);
        }
    }
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
        return Some(
            int_fraction_tail(win, q + 8, sig)
                .unwrap_or_else(|| fraction_rest(s, q + 8, sig, true, -8)),
        );
    }
    // An integer part of 0 and eight digits, but not sixteen (those were taken above).
    let w = word(win, q + 8)?;
    let m = leading_digits(w);
    debug_assert!(m < 8);
    let sig = match m {
        0 => sig,
        _ => sig * POW10_U64[m] + digits_value(w, m),
    };
    Some((q + 8 + m, (sig as i64) as f64, -8 - m as i64))
}

/// After sixteen fraction digits (`sig`) and an integer part of 0, at `s[q..]`: a 17th digit or
/// none, and the rare longer fractions digit by digit.
#[inline(always)]
fn seventeenth_digit(s: &[u8], win: &[u8; 32], q: usize, sig: u64) -> Option<(usize, f64, i64)> {
    // Sixteen digits or seventeen (Python's `repr` of a double writes up to 17 significant
    // digits), at random in an image's numbers (about 3 to 1): whether there is a 17th is a factor
    // and an offset below, not a branch, which would mispredict (single-thread decode of a 1 MB
    // image: 1.41 to 1.28 ms). A 17th digit goes into the significand while that is at most
    // 2^53 - 1, else into the double (`significand_digit`, 16 less the leading zeros, is below
    // 17 either way). An 18th digit: the general loop.
    let [c0, c1] = win
        .get(q..)?
        .first_chunk::<2>()?
        .map(|c| c.wrapping_sub(b'0'));
    if (c0 < 10) & (c1 < 10) {
        return Some(fraction_rest(s, q, sig, false, -16));
    }
    let more = u8::from(c0 < 10);
    let digit = u64::from(c0 * more);
    let into_sig = ((sig * (1 + 9 * u64::from(more)) + digit) as i64) as f64;
    let into_double = ((sig as i64) as f64) * 10.0 + digit as f64;
    // `into_double` where the 17th digit goes into the double, chosen arithmetically: a select
    // of doubles is compiled into a branch. Both are within an ulp of each other there, so
    // their difference is exact and adding it back gives `into_double` exactly.
    let to_double = more & u8::from(sig > MAX_SAFE);
    let d = into_sig + (into_double - into_sig) * f64::from(to_double);
    Some((q + usize::from(more), d, -16 - i64::from(more)))
}

/// The rest of a fraction after a non-zero integer part and eight fraction digits (`sig`, below
/// 10^15), when there are at most eight more digits and at most 17 in all. An image scaled to
/// [0, 255) as Python writes it has 3 + 14, 2 + 14, 3 + 13, 2 + 15 digits ... at random, so the
/// count is a factor and a shift below, not a loop whose exit mispredicts (single-thread decode
/// of such an image: 1.89 to 1.52 ms). Every digit goes into the significand, but a 17th after
/// 16 that are above 2^53 - 1 goes into the double. `None` for longer fractions.
#[inline(always)]
fn int_fraction_tail(win: &[u8; 32], q: usize, sig: u64) -> Option<(usize, f64, i64)> {
    let w = word(win, q)?;
    let r = leading_digits(w);
    if r == 0 {
        return Some((q, (sig as i64) as f64, -8));
    }
    if r == 8 {
        return None;
    }
    // An integer part of five digits or more and a long fraction can pass 2^64 here.
    let all = sig
        .checked_mul(POW10_U64[r])?
        .checked_add(digits_value(w, r))?;
    if all >= 100_000_000_000_000_000 {
        return None;
    }
    let (first, last) = (all / 10, all % 10);
    let into_sig = (all as i64) as f64;
    let into_double = ((first as i64) as f64) * 10.0 + last as f64;
    // As in `fraction`: chosen arithmetically, the difference being exact where it counts.
    let to_double = u8::from(first > MAX_SAFE);
    let d = into_sig + (into_double - into_sig) * f64::from(to_double);
    Some((q + r, d, -8 - r as i64))
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
/// `int_nonzero`. For what [`fraction`] leaves: more than 16 fraction digits or 17 digits in all
/// after a non-zero integer part, leading zeros followed by many digits, more than 17 digits.
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

#[cfg(test)]
mod tests {
    use super::*;

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
            "0.90071992547409925",
            "0.99999999999999999",
            "0.01234567890123456",
            "0.00000000000000005",
            "0.00000000000000000",
            "0.000000000000000001",
            "123.12345678",
            "99.999999999999999",
            "999.99999999999999",
            "1234567.1234567890",
            "5.1234567812345678",
            "0.12345678901234567890123",
            "9.007199254740993",
            "0.000000000000000000000000000001",
            "0.0000000000000000000000000000012345678901234",
            "1234567.1234567890123456789",
            // Up to seven integer digits and fifteen fraction digits do not fit in 64 bits.
            "18447.123456781234567",
            "99999.999999999999999",
            "1844674.4073709551616",
            "9999999.9999999999999",
            "0.00000001",
            "0.000000010000000000000001",
            "4503599627370495.5",
            "900719925474099.17",
            "-0.00000000123e-300",
            "0.1234567890123456e-5",
            "90.07199254740993",
            "90.071992547409935",
            "90.0719925474099355",
            "9007199.254740993",
            "9007199.2547409931",
            "9007199.25474099",
            "1234567.123456789",
            "1.2345678901234567",
            "12.345678901234567",
            "123.45678901234567",
            "123.456789012345678",
            "9.0071992547409935",
            "9.00719925474099",
            "254.99999999999997e2",
            "1.00000000",
            "1.000000001",
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
            let expected = full.parse_number().ok().map(|n| n.as_f64() as f32);
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
