//! Base64 exactly as TF Serving decodes and encodes it: `absl::Base64Unescape` and
//! `absl::Base64Escape` (absl/strings/escaping.cc).
//!
//! Decoding uses the standard alphabet only (`-` and `_` of the URL-safe alphabet are rejected),
//! skips ASCII whitespace anywhere, accepts the padding as either absent or complete (`=` or `.`
//! as pad characters, whitespace between them allowed), rejects a lone trailing character (6 bits)
//! and anything after the padding, and does not check that unused trailing bits are zero.
//! Encoding uses the standard alphabet with `=` padding.

const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

const fn unbase64_table() -> [i8; 256] {
    let mut table = [-1i8; 256];
    let mut i = 0;
    while i < 64 {
        table[ALPHABET[i] as usize] = i as i8;
        i += 1;
    }
    table
}

static UNBASE64: [i8; 256] = unbase64_table();

/// `absl::ascii_isspace`.
fn is_space(c: u8) -> bool {
    matches!(c, b' ' | b'\t' | b'\n' | 0x0B | 0x0C | b'\r')
}

/// [`UNBASE64`] with each value already shifted to its place among a quantum's 24 bits, one
/// table per position in the quantum; characters outside the alphabet set bits above them.
const fn shifted_table(shift: u32) -> [u32; 256] {
    let mut table = [0xFF00_0000u32; 256];
    let mut i = 0;
    while i < 64 {
        table[ALPHABET[i] as usize] = (i as u32) << shift;
        i += 1;
    }
    table
}

static QUANTUM: [[u32; 256]; 4] = [
    shifted_table(18),
    shifted_table(12),
    shifted_table(6),
    shifted_table(0),
];

/// The 24 bits of four characters; above them, bits set when one is outside the alphabet.
#[inline(always)]
fn quantum(c: &[u8]) -> u32 {
    QUANTUM[0][c[0] as usize]
        | QUANTUM[1][c[1] as usize]
        | QUANTUM[2][c[2] as usize]
        | QUANTUM[3][c[3] as usize]
}

/// Decodes the longest prefix of `src` made of whole groups of 8 alphabet characters (two
/// quanta) into `out`; returns its length. That is what the byte loop of [`decode`] would do with
/// them, whose state is back to the start after each quantum; it goes on from there with whatever
/// comes next (whitespace, padding, the last characters). A quantum is four independent table
/// lookups and no branch, and a group's 6 bytes go to a place made for them beforehand.
fn decode_plain_groups(src: &[u8], out: &mut Vec<u8>) -> usize {
    let start = out.len();
    out.resize(start + src.len() / 8 * 6, 0);
    let mut groups = 0;
    for (group, dst) in src.chunks_exact(8).zip(out[start..].chunks_exact_mut(6)) {
        let (a, b) = (quantum(&group[..4]), quantum(&group[4..]));
        if (a | b) >> 24 != 0 {
            break;
        }
        dst[..3].copy_from_slice(&a.to_be_bytes()[1..]);
        dst[3..].copy_from_slice(&b.to_be_bytes()[1..]);
        groups += 1;
    }
    out.truncate(start + groups * 6);
    groups * 8
}

/// `absl::Base64Unescape`; `None` where it returns false.
pub(crate) fn decode(src: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(src.len() / 4 * 3 + 3);
    let groups = decode_plain_groups(src, &mut out);
    decode_bytewise(&src[groups..], out)
}

/// absl's loop, one character at a time, from the start of a quantum, appending to `out`.
fn decode_bytewise(src: &[u8], mut out: Vec<u8>) -> Option<Vec<u8>> {
    let mut i = 0;
    let mut temp: u32 = 0;
    let mut state = 0;
    while i < src.len() {
        let c = src[i];
        let d = UNBASE64[c as usize];
        if d >= 0 {
            temp = (temp << 6) | d as u32;
            state += 1;
            if state == 4 {
                out.extend_from_slice(&[(temp >> 16) as u8, (temp >> 8) as u8, temp as u8]);
                state = 0;
                temp = 0;
            }
        } else if c == b'=' || c == b'.' {
            break;
        } else if !is_space(c) {
            return None;
        }
        i += 1;
    }
    let expected_equals = match state {
        0 => 0,
        2 => {
            out.push((temp >> 4) as u8);
            2
        }
        3 => {
            let t = temp >> 2;
            out.extend_from_slice(&[(t >> 8) as u8, t as u8]);
            1
        }
        _ => return None,
    };
    let mut equals = 0;
    for &c in &src[i..] {
        if c == b'=' || c == b'.' {
            equals += 1;
        } else if !is_space(c) {
            return None;
        }
    }
    (equals == 0 || equals == expected_equals).then_some(out)
}

/// `absl::Base64Escape`, appended to `out`.
pub(crate) fn encode_into(src: &[u8], out: &mut Vec<u8>) {
    out.reserve(src.len().div_ceil(3) * 4);
    let mut chunks = src.chunks_exact(3);
    for c in &mut chunks {
        let n = (c[0] as u32) << 16 | (c[1] as u32) << 8 | c[2] as u32;
        out.extend_from_slice(&[
            ALPHABET[(n >> 18) as usize & 63],
            ALPHABET[(n >> 12) as usize & 63],
            ALPHABET[(n >> 6) as usize & 63],
            ALPHABET[n as usize & 63],
        ]);
    }
    match *chunks.remainder() {
        [a] => {
            let n = (a as u32) << 16;
            out.extend_from_slice(&[
                ALPHABET[(n >> 18) as usize & 63],
                ALPHABET[(n >> 12) as usize & 63],
                b'=',
                b'=',
            ]);
        }
        [a, b] => {
            let n = (a as u32) << 16 | (b as u32) << 8;
            out.extend_from_slice(&[
                ALPHABET[(n >> 18) as usize & 63],
                ALPHABET[(n >> 12) as usize & 63],
                ALPHABET[(n >> 6) as usize & 63],
                b'=',
            ]);
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn absl_unescape_rules() {
        assert_eq!(decode(b"aGVsbG8=").as_deref(), Some(&b"hello"[..]));
        assert_eq!(
            decode(b"aGVsbG8").as_deref(),
            Some(&b"hello"[..]),
            "padding is optional"
        );
        assert_eq!(
            decode(b"aGVsbG8.").as_deref(),
            Some(&b"hello"[..]),
            "'.' pads too"
        );
        assert_eq!(
            decode(b"aGVs\nbG8 =").as_deref(),
            Some(&b"hello"[..]),
            "whitespace skipped"
        );
        assert_eq!(decode(b"d29ybGQ=").as_deref(), Some(&b"world"[..]));
        assert_eq!(decode(b"").as_deref(), Some(&b""[..]));
        assert_eq!(decode(b"QQ==").as_deref(), Some(&b"A"[..]));
        assert_eq!(
            decode(b"QR==").as_deref(),
            Some(&b"A"[..]),
            "unused bits are ignored"
        );
        assert_eq!(decode(b"QQ=").as_deref(), None, "partial padding");
        assert_eq!(decode(b"QQ==="), None, "too much padding");
        assert_eq!(decode(b"QUJD="), None, "padding after a full quantum");
        assert_eq!(decode(b"Q"), None, "a lone 6-bit group");
        assert_eq!(decode(b"QQ==QQ=="), None, "data after padding");
        assert_eq!(decode(b"-_8="), None, "URL-safe alphabet");
        assert_eq!(decode(b"aGVs\0bG8="), None);
        assert_eq!(decode(b"/+8=").as_deref(), Some(&[0xFF, 0xEF][..]));
    }

    /// The decoder before [`decode_plain_groups`]: absl's loop alone.
    fn one_at_a_time(src: &[u8]) -> Option<Vec<u8>> {
        decode_bytewise(src, Vec::new())
    }

    /// Every string of up to 5 characters drawn from alphabet characters, both pad characters,
    /// absl's whitespace and bytes outside the alphabet, after prefixes of whole and partial
    /// 8-character groups: the group decoder hands over to the byte loop at every position and
    /// in every state, and the result is always the byte loop's alone.
    #[test]
    fn groups_decode_as_one_character_at_a_time() {
        let chars = b"AQw/+=. \n\x0b-\0\xff";
        let prefixes: [&[u8]; 6] = [
            b"",
            b"QUJDREV",
            b"QUJDREVG",
            b"QUJDREVGR",
            b"QUJDREVGR0hJSktM",
            b"QUJD REVGR0hJSktMTU5P",
        ];
        let mut tail = Vec::new();
        for len in 0..=5u32 {
            for mut n in 0..chars.len().pow(len) {
                tail.clear();
                for _ in 0..len {
                    tail.push(chars[n % chars.len()]);
                    n /= chars.len();
                }
                for prefix in prefixes {
                    let src = [prefix, &tail].concat();
                    assert_eq!(
                        decode(&src),
                        one_at_a_time(&src),
                        "{:?}",
                        src.escape_ascii()
                    );
                }
            }
        }
    }

    #[test]
    fn escape_round_trips() {
        for len in 0..40usize {
            let data: Vec<u8> = (0..len).map(|i| (i * 37 + 11) as u8).collect();
            let mut text = Vec::new();
            encode_into(&data, &mut text);
            assert_eq!(text.len(), len.div_ceil(3) * 4);
            assert_eq!(decode(&text), Some(data));
        }
        let mut text = Vec::new();
        encode_into(b"serving", &mut text);
        assert_eq!(text, b"c2VydmluZw==");
    }
}
