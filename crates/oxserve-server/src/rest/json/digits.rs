//! ASCII decimal digits eight at a time: eight bytes loaded as a little-endian word (the first
//! byte lowest), how many of them are digits, and their value by the usual SWAR combination of
//! pairs, then quads, then the eight; and sixteen at a time with SSE2. [`super::fast_number`]
//! reads numbers with these.

/// `10^n` for `n` in `0..=8`: the factor that makes room for `n` more digits in a significand.
pub(super) const POW10_U64: [u64; 9] = [
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
pub(super) fn load8(buf: &[u8], p: usize) -> Option<u64> {
    let chunk: [u8; 8] = buf.get(p..p.checked_add(8)?)?.try_into().ok()?;
    Some(u64::from_le_bytes(chunk))
}

/// The eight bytes at `win[at..at + 8]` as a little-endian word (the byte at `at` lowest).
#[inline(always)]
pub(super) fn word(win: &[u8; 32], at: usize) -> Option<u64> {
    let chunk: &[u8; 8] = win.get(at..)?.first_chunk()?;
    Some(u64::from_le_bytes(*chunk))
}

/// How many bytes at the start of `w` (lowest first) are ASCII digits, 0 to 8. A byte is a digit
/// when its high nibble is 3 and adding 6 keeps it so. The addition can carry out of a non-digit
/// byte into the next one, but only bytes after the first non-digit are affected, and those are
/// not counted anyway.
#[inline(always)]
pub(super) fn leading_digits(w: u64) -> usize {
    const HIGH: u64 = 0xF0F0_F0F0_F0F0_F0F0;
    const ZEROS: u64 = 0x3030_3030_3030_3030;
    let not_digit = ((w & HIGH) ^ ZEROS) | ((w.wrapping_add(0x0606_0606_0606_0606) & HIGH) ^ ZEROS);
    (not_digit.trailing_zeros() / 8) as usize
}

/// The value of the first `n` bytes of `w` (1 to 8, all ASCII digits). They are shifted to the
/// top of the word, so that the vacated low bytes read as leading zeros; the bytes after them are
/// shifted out.
#[inline(always)]
pub(super) fn digits_value(w: u64, n: usize) -> u64 {
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

/// The value of the sixteen bytes at `win[at..at + 16]` if they are all ASCII digits, with SSE2
/// (part of x86-64 itself): one digit check for the sixteen, then pairs, quads and eights
/// combined by multiply-adds, in about half the operations of two eight-byte words (a 1 MB
/// float image decoded 10% faster).
#[cfg(target_feature = "sse2")]
#[inline(always)]
pub(super) fn sixteen_digits(win: &[u8; 32], at: usize) -> Option<u64> {
    use safe_arch::{
        add_i16_m128i, bitand_m128i, cmp_eq_mask_i8_m128i, get_i64_from_m128i_s, m128i,
        min_u8_m128i, move_mask_i8_m128i, mul_i16_horizontal_add_m128i, mul_i16_keep_low_m128i,
        pack_i32_to_i16_m128i, set_splat_i16_m128i, set_splat_i32_m128i, set_splat_i8_m128i,
        shr_imm_u16_m128i, sub_i8_m128i,
    };
    let bytes: [u8; 16] = *win.get(at..)?.first_chunk()?;
    let d = sub_i8_m128i(m128i::from(bytes), set_splat_i8_m128i(b'0' as i8));
    // A digit's byte is at most 9 after the subtraction; anything else wrapped above it.
    let digits = cmp_eq_mask_i8_m128i(min_u8_m128i(d, set_splat_i8_m128i(9)), d);
    if move_mask_i8_m128i(digits) != 0xFFFF {
        return None;
    }
    // Each 16-bit lane holds two digits, the first (the higher) in its low byte.
    let firsts = bitand_m128i(d, set_splat_i16_m128i(0x00FF));
    let seconds = shr_imm_u16_m128i::<8>(d);
    let pairs = add_i16_m128i(
        mul_i16_keep_low_m128i(firsts, set_splat_i16_m128i(10)),
        seconds,
    );
    let quads = mul_i16_horizontal_add_m128i(pairs, set_splat_i32_m128i(1 << 16 | 100));
    let quads = pack_i32_to_i16_m128i(quads, quads);
    let eights = mul_i16_horizontal_add_m128i(quads, set_splat_i32_m128i(1 << 16 | 10_000));
    let both = get_i64_from_m128i_s(eights) as u64;
    Some((both & 0xFFFF_FFFF) * 100_000_000 + (both >> 32))
}

#[cfg(not(target_feature = "sse2"))]
pub(super) use sixteen_digits_by_words as sixteen_digits;

/// [`sixteen_digits`] without SSE2: two eight-byte words.
#[cfg(any(test, not(target_feature = "sse2")))]
#[inline(always)]
pub(super) fn sixteen_digits_by_words(win: &[u8; 32], at: usize) -> Option<u64> {
    Some(eight_digits(win, at)? * 100_000_000 + eight_digits(win, at.checked_add(8)?)?)
}

/// The value of the eight ASCII digits at `buf[p..p + 8]`, if they are all digits.
#[inline]
pub(super) fn eight_digits(buf: &[u8], p: usize) -> Option<u64> {
    let w = load8(buf, p)?;
    (leading_digits(w) == 8).then(|| digits_value(w, 8))
}

/// Number of decimal digits of a value below 10^8 (0 for 0).
#[inline]
pub(super) fn decimal_digits(v: u64) -> i32 {
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

    /// Both routes to sixteen digits agree: runs of digits anywhere in the window, with any
    /// other byte in any of the sixteen places, and windows too short for sixteen.
    #[test]
    fn sixteen_digits_at_once() {
        let mut win = [0u8; 32];
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for round in 0..2000 {
            for b in win.iter_mut() {
                *b = b'0' + (next() % 10) as u8;
            }
            let at = round % 17;
            let text = std::str::from_utf8(&win[at..at + 16]).unwrap();
            assert_eq!(
                sixteen_digits(&win, at),
                Some(text.parse().unwrap()),
                "{text}"
            );
            assert_eq!(sixteen_digits(&win, at), sixteen_digits_by_words(&win, at));
            let place = at + (next() % 16) as usize;
            for other in [b'/', b':', b'.', b',', b' ', b'e', 0, 0x80, 0xB0, 0xFF] {
                let digit = std::mem::replace(&mut win[place], other);
                assert_eq!(sixteen_digits(&win, at), None, "{other} at {place}");
                assert_eq!(sixteen_digits_by_words(&win, at), None);
                win[place] = digit;
            }
        }
        win.fill(b'9');
        assert_eq!(sixteen_digits(&win, 16), Some(9_999_999_999_999_999));
        assert_eq!(sixteen_digits(&win, 17), None);
        assert_eq!(sixteen_digits_by_words(&win, 17), None);
        win.fill(b'0');
        win[15] = b'7';
        assert_eq!(sixteen_digits(&win, 0), Some(7));
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
}
