//! Numbers written the way TF Serving writes them.
//!
//! Tensor values and scores go through `WriteDecimal` (util/json_tensor.cc):
//! `absl::StrCat(val)` (six significant digits, `%g` layout), and if that does not parse back to
//! the same value, `absl::StrFormat("%.*g", max_digits10, val)` (9 digits for float, 17 for
//! double); then ".0" is appended when the text has neither '.' nor 'e'. NaN and infinities are
//! written as `NaN`, `Infinity`, `-Infinity`.
//!
//! For floats, both roundings and the round-trip test are done exactly with integer arithmetic:
//! in `u64` for [1e-9, 1e6), where images' and most scores' values are (`f32_fast`), in `u128`
//! for every other finite nonzero float, subnormals included (`f32_wide`); the text is laid out
//! in machine words (`write_fast_g`). For doubles: the six-digit text parses back to the value
//! exactly when the shortest round-trip representation has at most six digits (for normal
//! numbers, the rounding interval of a double is narrower than the spacing of six-digit decimals,
//! so there is at most one such decimal in it and it is both the shortest and the correctly
//! rounded one); `ryu` gives that shortest representation. Subnormal doubles, where the argument
//! does not hold, take the literal route (format, parse back, compare). The 17-digit texts are
//! exact, correctly rounded (half-to-even) decimal expansions as glibc's `printf` produces them.
//!
//! Doubles nested inside JSON values echoed in error messages go through rapidjson's
//! `Writer::Double` instead (`internal::dtoa`: shortest digits, `Prettify` layout).

use std::fmt::Write as _;

/// Significant decimal digits of a finite positive number: value = 0.d1 d2 .. dn × 10^point.
/// No leading or trailing zeros.
#[derive(Clone, Copy)]
struct Digits {
    buf: [u8; 32],
    len: usize,
    point: i32,
}

impl Digits {
    fn digits(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

/// Parses the output of `ryu` or of Rust's `{:e}`: `123.45`, `1e-7`, `1.2345e16`, `0.001`.
fn parse_digits(text: &[u8]) -> Digits {
    let mut d = Digits {
        buf: [0; 32],
        len: 0,
        point: 0,
    };
    let mut int_digits: i32 = 0;
    let mut seen_dot = false;
    let mut exp: i32 = 0;
    let mut exp_neg = false;
    let mut in_exp = false;
    let mut leading = true;
    for &c in text {
        match c {
            b'0'..=b'9' if in_exp => exp = exp.saturating_mul(10).saturating_add((c - b'0') as i32),
            b'0'..=b'9' => {
                if leading && c == b'0' {
                    // A leading zero before the point counts nothing; after it, it moves the point.
                    if seen_dot {
                        int_digits -= 1;
                    }
                    continue;
                }
                leading = false;
                if !seen_dot {
                    int_digits += 1;
                }
                if d.len < d.buf.len() {
                    d.buf[d.len] = c;
                    d.len += 1;
                }
            }
            b'.' => seen_dot = true,
            b'e' | b'E' => in_exp = true,
            b'-' if in_exp => exp_neg = true,
            _ => {}
        }
    }
    while d.len > 0 && d.buf[d.len - 1] == b'0' {
        d.len -= 1;
    }
    d.point = int_digits + if exp_neg { -exp } else { exp };
    d
}

/// Shortest round-trip digits of a finite positive f64.
fn shortest_f64(a: f64) -> Digits {
    let mut buf = ryu::Buffer::new();
    parse_digits(buf.format_finite(a).as_bytes())
}

/// A fixed buffer for `core::fmt` output, so that formatting does not allocate.
struct StackText {
    buf: [u8; 64],
    len: usize,
}

impl std::fmt::Write for StackText {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        let bytes = s.as_bytes();
        let end = self.len + bytes.len();
        if end > self.buf.len() {
            return Err(std::fmt::Error);
        }
        self.buf[self.len..end].copy_from_slice(bytes);
        self.len = end;
        Ok(())
    }
}

/// The exact decimal expansion of `a` rounded half-to-even to `sig` significant digits (what
/// `printf("%.*e", sig - 1, a)` computes).
fn exact_digits(a: f64, sig: usize) -> Digits {
    let mut text = StackText {
        buf: [0; 64],
        len: 0,
    };
    // 17 significant digits fit easily in 64 bytes, so this cannot fail.
    let _ = write!(text, "{:.*e}", sig.saturating_sub(1), a);
    parse_digits(&text.buf[..text.len])
}

/// 5^i for i in 0..=53. 5^53 < 2^124 scales the smallest subnormal (1.4e-45) to nine digits;
/// the narrow path reads the entries up to 5^17 as `u64`.
const POW5: [u128; 54] = {
    let mut table = [1u128; 54];
    let mut i = 1;
    while i < table.len() {
        table[i] = table[i - 1] * 5;
        i += 1;
    }
    table
};

const ASCII_ZEROS: u64 = 0x3030_3030_3030_3030;

/// The eight decimal digits of `x` < 10^8 as ASCII, most significant first in memory (the
/// little-endian bytes of the result), computed in registers: split into 4-digit halves, then
/// 2-digit quarters, then digits, each step in parallel over the lanes of one `u64`.
fn ascii8(x: u32) -> u64 {
    let x = x as u64;
    let v = (x / 10_000) | ((x % 10_000) << 32);
    // Per 32-bit lane, v / 100 (exact for v < 10^4), and the remainder.
    let hi = ((v * 5243) >> 19) & 0x0000_007F_0000_007F;
    let v = hi | ((v - hi * 100) << 16);
    // Per 16-bit lane, v / 10 (exact for v < 100), and the remainder.
    let hi = ((v * 103) >> 10) & 0x000F_000F_000F_000F;
    let v = hi | ((v - hi * 10) << 8);
    v + ASCII_ZEROS
}

/// floor(log10(2^e)) for e in -149..=128 except 0, where it is -1: the decimal exponent of the
/// values just below 2^e.
fn floor_log10_below_pow2(e: i32) -> i32 {
    (e * 78_913 - 1) >> 18
}

/// `value × 10^(8-x)` for value = m × 2^e2, exactly, as `num / 2^k`. `None` for x outside -9..=6
/// (m × 5^(8-x) no longer fits a `u64`, or x is out of `f32_fast`'s range anyway).
fn scale9(m: u64, e2: i32, x: i32) -> Option<(u64, u32)> {
    let s = 8 - x;
    if !(2..=17).contains(&s) {
        return None;
    }
    let k = -(e2 + s);
    debug_assert!(k >= 1, "below 2^20, value × 10^s always has a fraction");
    Some((m * POW5[s as usize] as u64, k as u32))
}

/// `q` plus one if the remainder it was truncated from is above `half` a unit, or exactly half
/// and `q` is odd: rounding half-to-even. Without a branch: which way it goes is a coin toss.
fn round_half_even(q: u64, remainder: u64, half: u64) -> u64 {
    q + u64::from(remainder + (q & 1) > half)
}

/// Whether the decimal `n9` (nine digits) parses back to the float m × 2^e2 whose value is
/// `num / 2^k` on the same scale (10^s × value): it lies within the float's rounding interval,
/// ties going to the even significand.
fn parses_back(n9: u64, num: u64, k: u32, m: u64, s: i32) -> bool {
    // Distance from the value to the decimal, in units of 2^-k: |n9 - q9| < 2^10, k < 40.
    let to_decimal = ((n9 as i64 - (num >> k) as i64) << k) - (num & ((1 << k) - 1)) as i64;
    // The float's spacing is 5^s in these units, half of it 5^s / 2; below a power of two the
    // lower neighbour is twice as close.
    let closer_below = to_decimal <= 0 && m == 0x80_0000;
    let scaled = to_decimal.unsigned_abs() << (1 + u32::from(closer_below));
    scaled < POW5[s as usize] as u64 + u64::from(m & 1 == 0)
}

/// `WriteDecimal<float>`'s digits for a positive f32 in [1e-9, 1e6), with `u64` arithmetic
/// only: `(n, x)` with n in [10^8, 10^9) and value ≈ n × 10^(x-8). n is the six-digit rounding
/// padded with zeros when that parses back to the same float, else the nine-digit rounding;
/// trailing zeros are not significant, so the layout is that of `%.6g` or `%.9g` alike (both
/// print x in -9..=5 the same way). `None` outside that range, for `f32_wide`.
fn f32_fast(a: f32) -> Option<(u32, i32)> {
    let bits = a.to_bits();
    let exp_bits = (bits >> 23) as i32;
    // Below 2^-30 (9.3e-10: x is -10 or less) and from 2^20 on (1e6 and up).
    if !(97..147).contains(&exp_bits) {
        return None;
    }
    let m = u64::from(bits & 0x7F_FFFF | 0x80_0000);
    let e2 = exp_bits - 150;
    // x from the binade's (exclusive) upper end 2^(exp_bits-126), or one less when the value is
    // below a power of ten inside its binade.
    let mut x = floor_log10_below_pow2(exp_bits - 126);
    let (mut num, mut k) = scale9(m, e2, x)?;
    if num >> k < 100_000_000 {
        x -= 1;
        (num, k) = scale9(m, e2, x)?;
    }
    if x > 5 {
        return None;
    }
    let (q9, rem) = (num >> k, num & ((1 << k) - 1));
    debug_assert!((100_000_000..1_000_000_000).contains(&q9));
    // The six-digit candidate, rounded from the truncated nine digits: the float's spacing is less
    // than 120 nine-digit units (2^-23 of a value below 10^9), so a six-digit decimal parses back
    // only from within 60 units, where this is also the correctly rounded one; where the two can
    // differ (a tie at 500), neither parses back.
    let n6 = (q9 + 500) / 1000 * 1000;
    let n = if parses_back(n6, num, k, m, 8 - x) {
        n6
    } else {
        round_half_even(q9, rem, 1 << (k - 1))
    };
    // Rounded up to the next power of ten. No float below 1e6 rounds up to 1e6 (1e6 is itself a
    // float and the nearest, so six digits do not round-trip; nine digits stop at 999999.938).
    Some(if n == 1_000_000_000 {
        debug_assert!(x < 5);
        (100_000_000, x + 1)
    } else {
        (n as u32, x)
    })
}

/// A float's value scaled by 10^s, exactly: `q + r / d` with `r < d`; and the float's spacing
/// 2^e2 on the same scale, times `d` (an integer in every case).
struct Scaled {
    q: u64,
    r: u128,
    d: u128,
    spacing: u128,
}

/// `value × 10^(8-x)` for value = m × 2^e2 (m < 2^24, e2 in -149..=104) at least 10^(x-1), as
/// a `Scaled` with q < 10^9.
/// - s = 8 - x ≥ 0: m × 5^s × 2^(e2+s), a whole number when e2 + s ≥ 0, else over d = 2^k,
///   k = -(e2 + s), where the spacing is 5^s. m × 5^s fits a `u128` up to s = 44 (5^44 < 2^103);
///   beyond (values below 1e-36, where k ≥ 96) it is multiplied in two 64-bit halves of 5^s.
/// - s < 0 (x ≥ 9): 10^s = 2^-t × 5^-t with t = -s, and t ≤ e2 (a value of at least 10^(7+t)
///   has e2 ≥ 3.3 t), so the value is m × 2^(e2-t) (< 2^98) over d = 5^t, the spacing 2^(e2-t).
///
/// d is a power of two up to 2^103 (k = 103 at the smallest normal, x = -38) or a power of five
/// up to 5^30 (at f32::MAX).
fn scale_wide(m: u64, e2: i32, x: i32) -> Scaled {
    let s = 8 - x;
    let shift = e2 + s;
    if s < 0 {
        debug_assert!(shift >= 0);
        let num = u128::from(m) << shift;
        let d = POW5[s.unsigned_abs() as usize];
        let q = num / d;
        return Scaled {
            q: q as u64,
            r: num - q * d,
            d,
            spacing: 1 << shift,
        };
    }
    let p = POW5[s as usize];
    if shift >= 0 {
        return Scaled {
            q: ((u128::from(m) * p) << shift) as u64,
            r: 0,
            d: 1,
            spacing: p << shift,
        };
    }
    let k = shift.unsigned_abs();
    debug_assert!(k <= 103);
    let (q, r) = if s <= 44 {
        let num = u128::from(m) * p;
        (num >> k, num & ((1 << k) - 1))
    } else {
        // m × 5^s = mid × 2^64 + low, mid < 2^85; k ≥ 64.
        debug_assert!(k >= 64);
        let low = u128::from(m) * (p as u64 as u128);
        let mid = u128::from(m) * (p >> 64) + (low >> 64);
        let r = (mid & ((1 << (k - 64)) - 1)) << 64 | (low as u64 as u128);
        (mid >> (k - 64), r)
    };
    Scaled {
        q: q as u64,
        r,
        d: 1 << k,
        spacing: p,
    }
}

/// `WriteDecimal<float>`'s digits for any finite nonzero positive f32, with `u128` arithmetic:
/// `(n, x)` as `f32_fast` gives them (n in [10^8, 10^9), value ≈ n × 10^(x-8), the six-digit
/// rounding padded with zeros if that parses back, else the nine-digit one). `None` for zero,
/// infinities and NaN.
///
/// The same reasoning as in `f32_fast`, on `scale_wide`'s exact `q + r / d`. The six-digit
/// candidate is rounded from q, so it is the correctly rounded one except at an exact tie (q
/// ending in 500, r = 0: a value of exactly seven significant digits, the last a 5). A normal
/// float there is spaced less than 120 nine-digit units from its neighbours, so neither six-digit
/// neighbour (500 units away) parses back; a subnormal, m × 2^-149 with m < 2^23, has at least 127
/// fraction digits and is below 1.2e-38, so it is never that short a decimal. The round-trip test
/// compares twice the distance to the candidate with the spacing, ties going to the even
/// significand; below a power of two the lower neighbour is twice as close, except at the
/// smallest normal, whose lower neighbour is the largest subnormal, spaced alike. The nine-digit
/// rounding is half-to-even on r / d.
#[inline(never)]
fn f32_wide(a: f32) -> Option<(u32, i32)> {
    let bits = a.to_bits();
    let exp_bits = bits >> 23;
    if exp_bits == 0xFF || bits == 0 {
        return None;
    }
    let fraction = u64::from(bits & 0x7F_FFFF);
    let (m, e2) = if exp_bits == 0 {
        (fraction, -149)
    } else {
        (fraction | 0x80_0000, exp_bits as i32 - 150)
    };
    // The value lies in [2^(upper-1), 2^upper).
    let upper = (64 - m.leading_zeros()) as i32 + e2;
    let mut x = floor_log10_below_pow2(upper);
    let mut v = scale_wide(m, e2, x);
    if v.q < 100_000_000 {
        x -= 1;
        v = scale_wide(m, e2, x);
    }
    debug_assert!((100_000_000..1_000_000_000).contains(&v.q));
    let n6 = (v.q + 500) / 1000 * 1000;
    // Distance from the value to the candidate, in units of 1 / d: |n6 - q| ≤ 500 and
    // d ≤ 2^103, so this and four times it fit an i128.
    let to_decimal = (n6 as i128 - v.q as i128) * v.d as i128 - v.r as i128;
    let closer_below = to_decimal <= 0 && m == 0x80_0000 && exp_bits > 1;
    let scaled = to_decimal.unsigned_abs() << (1 + u32::from(closer_below));
    let n = if scaled < v.spacing + u128::from(m & 1 == 0) {
        n6
    } else {
        v.q + u64::from(2 * v.r + u128::from(v.q & 1) > v.d)
    };
    Some(if n == 1_000_000_000 {
        (100_000_000, x + 1)
    } else {
        (n as u32, x)
    })
}

/// The low `n` (< 8) bytes of `v`.
fn low_bytes(v: u64, n: usize) -> u64 {
    v & ((1 << (8 * n)) - 1)
}

/// `%g` layout of n × 10^(x-8) (n of nine digits, x in -45..=38) as `WriteDecimal<float>`'s
/// digits, with ".0" appended when that has neither '.' nor 'e'. At most 15 bytes, written
/// straight into `out` as a few overlapping word-sized stores, after which the vector's length is
/// cut back (a digit buffer written byte-wise and copied out stalls on store forwarding).
fn write_fast_g(out: &mut Vec<u8>, negative: bool, n: u32, x: i32) {
    let first = u64::from(b'0' + (n / 100_000_000) as u8);
    let rest = ascii8(n % 100_000_000);
    // Digits after the first, up to the last nonzero one.
    let frac = 8 - (rest ^ ASCII_ZEROS).leading_zeros() as usize / 8;
    let start = out.len();
    out.extend_from_slice(&[b'-'; 16]);
    let text = &mut out[start + usize::from(negative)..];
    let len = if (0..6).contains(&x) {
        // Integer part, '.', fraction. A whole number's fraction is the '0' digit after its
        // integer part: the ".0" WriteDecimal appends.
        let x = x as usize;
        let int = low_bytes(first | rest << 8, x + 1);
        text[..8].copy_from_slice(&(int | u64::from(b'.') << (8 * (x + 1))).to_le_bytes());
        text[x + 2..x + 10].copy_from_slice(&(rest >> (8 * x)).to_le_bytes());
        x + 2 + frac.saturating_sub(x).max(1)
    } else if (-4..0).contains(&x) {
        // "0.", -x-1 zeros, the digits.
        let zeros = x.unsigned_abs() as usize;
        let head = low_bytes(u64::from_le_bytes(*b"0.000000"), 1 + zeros);
        text[..8].copy_from_slice(&(head | first << (8 * (1 + zeros))).to_le_bytes());
        text[2 + zeros..10 + zeros].copy_from_slice(&rest.to_le_bytes());
        2 + zeros + frac
    } else if frac < 6 || !(-4..9).contains(&x) {
        // d[.dddddddd]e±dd: f32 exponents have two digits. From 10^6 to 10^9 this is `%.6g`'s
        // layout, while `%.9g` writes whole numbers (1.5e+07, 15000001.0): a nine-digit rounding
        // has at least seven significant digits, since one with fewer equals the six-digit
        // rounding, which then parses back as well and is taken instead.
        let mantissa_len = if frac == 0 { 1 } else { frac + 2 };
        text[..2].copy_from_slice(&[first as u8, b'.']);
        text[2..10].copy_from_slice(&rest.to_le_bytes());
        let e = x.unsigned_abs() as u8;
        let sign = if x < 0 { b'-' } else { b'+' };
        let exponent = [b'e', sign, b'0' + e / 10, b'0' + e % 10];
        text[mantissa_len..mantissa_len + 4].copy_from_slice(&exponent);
        mantissa_len + 4
    } else {
        // Seven to nine integer digits (nine-digit roundings only): the digits, padded with '0's
        // (the ".0"), with '.' pushed in after the integer part.
        let x = x as usize;
        let digits = u128::from(first) | u128::from(rest) << 8 | u128::from(ASCII_ZEROS) << 72;
        let int_mask = (1u128 << (8 * (x + 1))) - 1;
        let word =
            (digits & int_mask) | u128::from(b'.') << (8 * (x + 1)) | (digits & !int_mask) << 8;
        text[..15].copy_from_slice(&word.to_le_bytes()[..15]);
        x + 2 + frac.saturating_sub(x).max(1)
    };
    out.truncate(start + usize::from(negative) + len);
}

/// `printf("%.<precision>g")` layout of `digits` (which has at most `precision` digits).
/// Returns whether the text contains '.' or 'e'.
fn write_g(out: &mut Vec<u8>, negative: bool, d: &Digits, precision: i32) -> bool {
    if negative {
        out.push(b'-');
    }
    let digits = d.digits();
    let n = digits.len() as i32;
    let x = d.point - 1;
    if x < -4 || x >= precision {
        out.push(digits[0]);
        if n > 1 {
            out.push(b'.');
            out.extend_from_slice(&digits[1..]);
        }
        out.push(b'e');
        out.push(if x < 0 { b'-' } else { b'+' });
        let e = x.unsigned_abs();
        if e >= 100 {
            out.push(b'0' + (e / 100) as u8);
        }
        out.push(b'0' + (e / 10 % 10) as u8);
        out.push(b'0' + (e % 10) as u8);
        true
    } else if x >= 0 {
        let int_len = (x + 1) as usize;
        if digits.len() <= int_len {
            out.extend_from_slice(digits);
            out.resize(out.len() + int_len - digits.len(), b'0');
            false
        } else {
            out.extend_from_slice(&digits[..int_len]);
            out.push(b'.');
            out.extend_from_slice(&digits[int_len..]);
            true
        }
    } else {
        out.extend_from_slice(b"0.");
        out.resize(out.len() + (-x - 1) as usize, b'0');
        out.extend_from_slice(digits);
        true
    }
}

/// NaN, ±Infinity and ±0 as `WriteDecimal` writes them; `false` (nothing written) for any other
/// value. Widening a float to f64 keeps all of these exactly.
fn write_special(out: &mut Vec<u8>, v: f64) -> bool {
    let text: &[u8] = if v.is_nan() {
        b"NaN"
    } else if v.is_infinite() {
        if v < 0.0 {
            b"-Infinity"
        } else {
            b"Infinity"
        }
    } else if v == 0.0 {
        if v.is_sign_negative() {
            b"-0.0"
        } else {
            b"0.0"
        }
    } else {
        return false;
    };
    out.extend_from_slice(text);
    true
}

/// `WriteDecimal<float>`'s digits for a positive f32, from `f32_fast` in its range, else from
/// `f32_wide`. `None` for zero, infinities and NaN.
fn f32_digits(a: f32) -> Option<(u32, i32)> {
    f32_fast(a).or_else(|| f32_wide(a))
}

/// `WriteDecimal<float>`.
pub(crate) fn write_f32(out: &mut Vec<u8>, v: f32) {
    match f32_digits(v.abs()) {
        Some((n, x)) => write_fast_g(out, v.is_sign_negative(), n, x),
        None => {
            let written = write_special(out, f64::from(v));
            debug_assert!(written);
        }
    }
}

/// `WriteDecimal<double>`.
pub(crate) fn write_f64(out: &mut Vec<u8>, v: f64) {
    if write_special(out, v) {
        return;
    }
    let negative = v.is_sign_negative();
    let a = v.abs();
    let (digits, precision) = if a < f64::MIN_POSITIVE {
        let six = exact_digits(a, 6);
        let mut text = Vec::with_capacity(16);
        write_g(&mut text, false, &six, 6);
        let round_trips = std::str::from_utf8(&text)
            .ok()
            .and_then(|t| t.parse::<f64>().ok())
            .is_some_and(|back| back == a);
        if round_trips {
            (six, 6)
        } else {
            (exact_digits(a, 17), 17)
        }
    } else {
        let shortest = shortest_f64(a);
        if shortest.len <= 6 {
            (shortest, 6)
        } else {
            (exact_digits(a, 17), 17)
        }
    };
    if !write_g(out, negative, &digits, precision) {
        out.extend_from_slice(b".0");
    }
}

/// rapidjson's `Writer::WriteDouble` with default flags: `false` (nothing written) for NaN and
/// infinities, else `internal::dtoa(d, buffer, 324)`.
pub(crate) fn write_rapidjson_double(out: &mut Vec<u8>, v: f64) -> bool {
    if !v.is_finite() {
        return false;
    }
    if v == 0.0 {
        if v.is_sign_negative() {
            out.push(b'-');
        }
        out.extend_from_slice(b"0.0");
        return true;
    }
    if v < 0.0 {
        out.push(b'-');
    }
    let d = shortest_f64(v.abs());
    let digits = d.digits();
    let length = digits.len() as i32;
    let kk = d.point; // 10^(kk-1) <= v < 10^kk
    let k = kk - length;
    if 0 <= k && kk <= 21 {
        // 1234e7 -> 12340000000.0
        out.extend_from_slice(digits);
        out.resize(out.len() + k as usize, b'0');
        out.extend_from_slice(b".0");
    } else if 0 < kk && kk <= 21 {
        // 1234e-2 -> 12.34
        out.extend_from_slice(&digits[..kk as usize]);
        out.push(b'.');
        out.extend_from_slice(&digits[kk as usize..]);
    } else if -6 < kk && kk <= 0 {
        // 1234e-6 -> 0.001234
        out.extend_from_slice(b"0.");
        out.resize(out.len() + (-kk) as usize, b'0');
        out.extend_from_slice(digits);
    } else {
        // 1e30, 1234e30 -> 1.234e33
        out.push(digits[0]);
        if length > 1 {
            out.push(b'.');
            out.extend_from_slice(&digits[1..]);
        }
        out.push(b'e');
        let e = kk - 1;
        if e < 0 {
            out.push(b'-');
        }
        write_u64(out, e.unsigned_abs() as u64);
    }
    true
}

/// Decimal digits of an unsigned integer (`Writer::Uint64`).
pub(crate) fn write_u64(out: &mut Vec<u8>, mut v: u64) {
    let mut buf = [0u8; 20];
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    out.extend_from_slice(&buf[i..]);
}

/// Decimal digits of a signed integer (`Writer::Int64`).
pub(crate) fn write_i64(out: &mut Vec<u8>, v: i64) {
    if v < 0 {
        out.push(b'-');
    }
    write_u64(out, v.unsigned_abs());
}

#[cfg(test)]
mod tests {
    use super::*;

    /// TF Serving's algorithm spelled out literally: "%.6g", parse back, else "%.9g"/"%.17g".
    fn reference_f32(v: f32) -> String {
        fn g(a: f64, p: usize) -> String {
            let mut out = Vec::new();
            write_g(&mut out, a < 0.0, &exact_digits(a.abs(), p), p as i32);
            String::from_utf8(out).unwrap()
        }
        if v.is_nan() || v.is_infinite() || v == 0.0 {
            let mut out = Vec::new();
            write_f32(&mut out, v);
            return String::from_utf8(out).unwrap();
        }
        let mut s = g(v as f64, 6);
        if s.parse::<f32>().unwrap() != v {
            s = g(v as f64, 9);
        }
        if !s.contains('.') && !s.contains('e') {
            s.push_str(".0");
        }
        s
    }

    fn reference_f64(v: f64) -> String {
        fn g(a: f64, p: usize) -> String {
            let mut out = Vec::new();
            write_g(&mut out, a < 0.0, &exact_digits(a.abs(), p), p as i32);
            String::from_utf8(out).unwrap()
        }
        let mut s = g(v, 6);
        if s.parse::<f64>().unwrap() != v {
            s = g(v, 17);
        }
        if !s.contains('.') && !s.contains('e') {
            s.push_str(".0");
        }
        s
    }

    fn f32_text(v: f32) -> String {
        let mut out = Vec::new();
        write_f32(&mut out, v);
        String::from_utf8(out).unwrap()
    }

    /// `WriteDecimal<float>` through `f32_wide` alone, whichever path `write_f32` takes.
    fn wide_text(v: f32) -> String {
        let (n, x) = f32_wide(v.abs()).unwrap();
        let mut out = Vec::new();
        write_fast_g(&mut out, v.is_sign_negative(), n, x);
        String::from_utf8(out).unwrap()
    }

    fn f64_text(v: f64) -> String {
        let mut out = Vec::new();
        write_f64(&mut out, v);
        String::from_utf8(out).unwrap()
    }

    fn rj_text(v: f64) -> String {
        let mut out = Vec::new();
        assert!(write_rapidjson_double(&mut out, v));
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn ascii8_matches_plain_formatting() {
        for n in (0..100_000_000u32)
            .step_by(9_973)
            .chain([0, 1, 9, 10, 99_999_999])
        {
            assert_eq!(
                ascii8(n).to_le_bytes(),
                *format!("{n:08}").as_bytes(),
                "{n}"
            );
        }
    }

    #[test]
    fn tf_serving_float_examples() {
        // json_tensor_test.cc FromJsonSingleFloatTensorSixDigitPrecision / NonFinite, and the
        // half_plus_two outputs from api_rest.md.
        let cases: &[(f32, &str)] = &[
            (9_000_000.0, "9e+06"),
            (999_999.0, "999999.0"),
            (0.5, "0.5"),
            (0.0003, "0.0003"),
            (0.00003, "3e-05"),
            (555_557.5, "555557.5"),
            (3.0, "3.0"),
            (2.5, "2.5"),
            (4.5, "4.5"),
            (0.2, "0.2"),
            (0.1, "0.1"),
            (1_234_567.0, "1234567.0"),
            (0.123_456_79, "0.123456791"),
            (1e-10, "1e-10"),
            (1.5e20, "1.5e+20"),
            (f32::MAX, "3.40282347e+38"),
            (-2.0, "-2.0"),
            (-0.0, "-0.0"),
            (0.0, "0.0"),
            (f32::NAN, "NaN"),
            (f32::INFINITY, "Infinity"),
            (f32::NEG_INFINITY, "-Infinity"),
            (1e-45, "1.4013e-45"),
            (100.0, "100.0"),
            (123_456_789.0, "123456792.0"),
            (16_777_216.0, "16777216.0"),
            // Softmax scores of an image classifier (Keras ResNet50 through TF Serving).
            (4.082_296_3e-31, "4.08229628e-31"),
            (1.62049e-16, "1.62049e-16"),
            (3.603_899_5e-12, "3.60389951e-12"),
            (f32::MIN_POSITIVE, "1.17549435e-38"),
            (f32::from_bits(0x7F_FFFF), "1.17549421e-38"),
            (1e-38, "1e-38"),
            (1e-40, "9.99995e-41"),
            (1e38, "1e+38"),
            (-3.402_823_3e38, "-3.40282326e+38"),
            (1e7, "1e+07"),
            (1.5e7, "1.5e+07"),
            (12_345_678.0, "12345678.0"),
            (1_048_576.0, "1048576.0"),
            (1_048_576.1, "1048576.12"),
            (999_999_999.0, "1e+09"),
            (1_234_567_890.0, "1.23456794e+09"),
            (4.5e15, "4.5e+15"),
        ];
        for &(v, want) in cases {
            assert_eq!(f32_text(v), want, "{v:e}");
        }
        let cases64: &[(f64, &str)] = &[
            (8.0, "8.0"),
            (0.662, "0.662"),
            (0.1, "0.1"),
            (1e21, "1e+21"),
            (0.123456789, "0.123456789"),
            (1.0 / 3.0, "0.33333333333333331"),
            (0.1 + 0.2, "0.30000000000000004"),
            (1e300, "1e+300"),
            ((1u64 << 50) as f64 + 0.25, "1125899906842624.2"),
            (-3.5, "-3.5"),
            (5e-324, "4.94066e-324"),
        ];
        for &(v, want) in cases64 {
            assert_eq!(f64_text(v), want, "{v:e}");
        }
    }

    #[test]
    fn matches_literal_algorithm_on_many_floats() {
        // A deterministic pseudo-random walk over bit patterns plus every power of two and ten.
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut checked = 0;
        for _ in 0..200_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let v = f32::from_bits(x as u32);
            if v.is_finite() {
                assert_eq!(f32_text(v), reference_f32(v), "bits {:#x}", v.to_bits());
                checked += 1;
            }
            let d = f64::from_bits(x);
            if d.is_finite() && d != 0.0 {
                assert_eq!(f64_text(d), reference_f64(d), "bits {:#x}", d.to_bits());
            }
        }
        for e in -149..128 {
            let v = 2f32.powi(e);
            assert_eq!(f32_text(v), reference_f32(v));
            assert_eq!(f32_text(-v), reference_f32(-v));
        }
        for e in -45..39 {
            let v: f32 = format!("1e{e}").parse().unwrap();
            for w in [
                v,
                f32::from_bits(v.to_bits() + 1),
                f32::from_bits(v.to_bits() - 1),
            ] {
                assert_eq!(f32_text(w), reference_f32(w), "{w:e}");
            }
        }
        for i in 0..100_000u32 {
            let v = i as f32 / 997.0;
            assert_eq!(f32_text(v), reference_f32(v));
        }
        assert!(checked > 100_000);
    }

    #[test]
    fn integer_paths_cover_every_finite_nonzero_float() {
        // f32_fast takes [1e-9, 1e6) ...
        let mut v = 1.3e-9f32;
        while v < 9.9e5 {
            for w in [v, f32::from_bits(v.to_bits() + 7)] {
                assert!(f32_fast(w).is_some(), "{w:e}");
                assert_eq!(f32_text(w), reference_f32(w), "{w:e}");
                assert_eq!(wide_text(w), reference_f32(w), "{w:e}");
            }
            v *= 1.37;
        }
        // ... and f32_wide everything else; it gives the same as f32_fast where both do. Bit
        // patterns spread over every exponent field, subnormals included, and the ends of the
        // normal and subnormal ranges.
        let ends = [
            1,
            2,
            3,
            0x7F_FFFE,
            0x7F_FFFF,
            0x80_0000,
            0x80_0001,
            0x80_0002,
            0xFF_FFFF,
            0x100_0000,
            0x7F7F_FFFE,
            0x7F7F_FFFF,
        ];
        for bits in (1..0x7F80_0000u32).step_by(65_521).chain(ends) {
            let v = f32::from_bits(bits);
            let want = reference_f32(v);
            assert_eq!(wide_text(v), want, "bits {bits:#x}");
            assert_eq!(f32_text(v), want, "bits {bits:#x}");
            assert_eq!(f32_text(-v), format!("-{want}"), "bits {bits:#x}");
        }
        for v in [0.0, -0.0, f32::INFINITY, f32::NEG_INFINITY, f32::NAN] {
            assert!(f32_digits(v.abs()).is_none(), "{v}");
        }
    }

    #[test]
    fn integer_path_layouts_match_literal_algorithm() {
        // Decimals of every width 1..=9 at every decimal exponent of the floats, subnormals and
        // beyond f32::MAX included (so every %g layout: e-45..e-05, 0.000d.., d.., ddddddddd.,
        // e+06..e+38), the floats next to them, and the floats just below each power of ten,
        // which round up to it. Every (exponent, significant digits) pair the normal floats can
        // give must come up, six-digit results with 1 to 6 digits, nine-digit ones with 7 to 9
        // (from 10^6 to 10^8 the two lay out differently: 1.5e+07, 15000001.0).
        let mut seen = std::collections::BTreeSet::new();
        let mut check = |v: f32| {
            if !v.is_finite() || v == 0.0 {
                return;
            }
            let want = reference_f32(v);
            assert_eq!(f32_text(v), want, "bits {:#x}", v.to_bits());
            assert_eq!(f32_text(-v), format!("-{want}"), "bits {:#x}", v.to_bits());
            assert_eq!(wide_text(v), want, "bits {:#x}", v.to_bits());
            if (1.0001e-9..1e6).contains(&v) {
                assert!(f32_fast(v).is_some(), "{v:e}");
            }
            let (n, x) = f32_digits(v).unwrap();
            seen.insert((x, n.to_string().trim_end_matches('0').len()));
        };
        let mut state: u64 = 0x2545_F491_4F6C_DD1D;
        for x in -46..=39 {
            for width in 1..=9u32 {
                let low = 10u64.pow(width - 1);
                for _ in 0..40 {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    let digits = low + state % (9 * low);
                    let v: f32 = format!("{digits}e{}", x - width as i32 + 1)
                        .parse()
                        .unwrap();
                    let bits = v.to_bits().clamp(1, 0x7F7F_FFFE);
                    for bits in bits - 1..=bits + 1 {
                        check(f32::from_bits(bits));
                    }
                }
            }
            let power: f32 = format!("1e{x}").parse().unwrap();
            let bits = power.to_bits().min(0x7F80_0000);
            for below in 0..40.min(bits) {
                check(f32::from_bits(bits - below));
            }
        }
        for text in [
            "9.9999995",
            "99999.99",
            "999999.94",
            "0.099999994",
            "1e-5",
            "9.999999e-6",
            "999999.9",
            "9999999.0",
            "99999990.0",
            "999999900.0",
            "16777216.0",
            "16777217.0",
            "123456.5",
            "1e-36",
            "9.99999e-37",
            "9.999999e-38",
            "1.1754942e-38",
            "1.17549435e-38",
            "1e-45",
            "3.4028235e38",
        ] {
            let v: f32 = text.parse().unwrap();
            check(v);
        }
        // Every power of two, and the floats around it (the lower neighbour is twice as close).
        for bits in (0x80_0000..0x7F80_0000u32).step_by(0x80_0000) {
            for bits in bits - 2..=bits + 2 {
                check(f32::from_bits(bits));
            }
        }
        for x in -37..=38 {
            for width in 1..=9 {
                // From 2^23 on floats are whole numbers: none in [10^7, 10^8) has nine digits.
                if (x, width) != (7, 9) {
                    assert!(seen.contains(&(x, width)), "10^{x}, {width} digits");
                }
            }
        }
    }

    #[test]
    fn rapidjson_double_layout() {
        let cases: &[(f64, &str)] = &[
            (1.0, "1.0"),
            (1.5, "1.5"),
            (0.1, "0.1"),
            (1e21, "1e21"),
            (1e20, "100000000000000000000.0"),
            (1.5e22, "1.5e22"),
            (0.0001, "0.0001"),
            (1e-7, "1e-7"),
            (1.25e-7, "1.25e-7"),
            (0.000001, "0.000001"),
            (-0.0, "-0.0"),
            (123.456, "123.456"),
            (1e308, "1e308"),
            (1.7976931348623157e308, "1.7976931348623157e308"),
        ];
        for &(v, want) in cases {
            assert_eq!(rj_text(v), want);
        }
        assert!(!write_rapidjson_double(&mut Vec::new(), f64::NAN));
    }
}
