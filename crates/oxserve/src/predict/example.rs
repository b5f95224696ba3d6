//! A reader of serialized `tf.Example` protos that borrows from the record, packed float lists
//! included: batch prediction decodes one Example per instance, and the generic protobuf decoder
//! reads packed floats one by one into a list of their own, which the batch then copies again.
//! Here a float list that is one packed field (what every writer produces) stays a slice of the
//! record, copied once, straight into the batch. Protobuf semantics are kept (merging of repeated
//! messages, last map entry wins, unpacked and packed lists, unknown fields skipped); tests check
//! it against prost on the same bytes.

use std::collections::HashMap;

/// The values of one feature.
#[derive(Clone, Debug, PartialEq)]
pub enum Values<'a> {
    /// A feature with none of the three lists set.
    None,
    Bytes(Vec<&'a [u8]>),
    Floats(Floats<'a>),
    Ints(Vec<i64>),
}

/// A float list.
#[derive(Clone, Debug)]
pub enum Floats<'a> {
    /// The little-endian bytes of a single packed field (a multiple of 4 bytes), in the record.
    Packed(&'a [u8]),
    /// Values gathered from several fields (unpacked values, or lists merged by protobuf rules).
    Owned(Vec<f32>),
}

impl Floats<'_> {
    pub fn len(&self) -> usize {
        match self {
            Floats::Packed(bytes) => bytes.len() / 4,
            Floats::Owned(values) => values.len(),
        }
    }

    /// Appends the values to `out`.
    pub fn extend_into(&self, out: &mut Vec<f32>) {
        match self {
            Floats::Packed(bytes) => extend_from_packed(out, bytes),
            Floats::Owned(values) => out.extend_from_slice(values),
        }
    }

    pub fn to_vec(&self) -> Vec<f32> {
        let mut out = Vec::with_capacity(self.len());
        self.extend_into(&mut out);
        out
    }
}

impl PartialEq for Floats<'_> {
    fn eq(&self, other: &Self) -> bool {
        self.to_vec() == other.to_vec()
    }
}

/// Appends packed little-endian floats (`bytes.len()` a multiple of 4) to `out`.
pub fn extend_from_packed(out: &mut Vec<f32>, bytes: &[u8]) {
    out.reserve(bytes.len() / 4);
    out.extend(
        bytes
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])),
    );
}

/// Features by name.
pub type Features<'a> = HashMap<&'a [u8], Values<'a>>;

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

const VARINT: u8 = 0;
const FIXED64: u8 = 1;
const LEN: u8 = 2;
const FIXED32: u8 = 5;

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8]) -> Reader<'a> {
        Reader { buf, pos: 0 }
    }

    fn done(&self) -> bool {
        self.pos >= self.buf.len()
    }

    fn varint(&mut self) -> Result<u64, String> {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let byte = *self.buf.get(self.pos).ok_or("truncated varint")?;
            self.pos += 1;
            value |= u64::from(byte & 0x7f) << shift;
            if byte < 0x80 {
                return Ok(value);
            }
        }
        Err("varint longer than 10 bytes".into())
    }

    /// The next field's number and wire type.
    fn key(&mut self) -> Result<(u64, u8), String> {
        let key = self.varint()?;
        Ok((key >> 3, (key & 7) as u8))
    }

    fn bytes(&mut self, n: usize) -> Result<&'a [u8], String> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&end| end <= self.buf.len())
            .ok_or("truncated field")?;
        let out = &self.buf[self.pos..end];
        self.pos = end;
        Ok(out)
    }

    fn len_delimited(&mut self) -> Result<&'a [u8], String> {
        let n = self.varint()?;
        let n = usize::try_from(n).map_err(|_| "length out of range")?;
        self.bytes(n)
    }

    fn skip(&mut self, wire_type: u8) -> Result<(), String> {
        match wire_type {
            VARINT => self.varint().map(drop),
            FIXED64 => self.bytes(8).map(drop),
            LEN => self.len_delimited().map(drop),
            FIXED32 => self.bytes(4).map(drop),
            other => Err(format!("unsupported wire type {other}")),
        }
    }
}

/// The features of a serialized tf.Example.
pub fn parse(record: &[u8]) -> Result<Features<'_>, String> {
    let mut features = Features::new();
    let mut r = Reader::new(record);
    while !r.done() {
        match r.key()? {
            (1, LEN) => features_message(r.len_delimited()?, &mut features)?,
            (_, wire_type) => r.skip(wire_type)?,
        }
    }
    Ok(features)
}

/// `Features`: map entries, the last entry for a key wins.
fn features_message<'a>(buf: &'a [u8], features: &mut Features<'a>) -> Result<(), String> {
    let mut r = Reader::new(buf);
    while !r.done() {
        match r.key()? {
            (1, LEN) => {
                let (name, values) = entry(r.len_delimited()?)?;
                features.insert(name, values);
            }
            (_, wire_type) => r.skip(wire_type)?,
        }
    }
    Ok(())
}

fn entry(buf: &[u8]) -> Result<(&[u8], Values<'_>), String> {
    let mut name: &[u8] = b"";
    let mut values = Values::None;
    let mut r = Reader::new(buf);
    while !r.done() {
        match r.key()? {
            (1, LEN) => name = r.len_delimited()?,
            (2, LEN) => feature(r.len_delimited()?, &mut values)?,
            (_, wire_type) => r.skip(wire_type)?,
        }
    }
    Ok((name, values))
}

/// `Feature` (a oneof of three lists), merged into `values`.
fn feature<'a>(buf: &'a [u8], values: &mut Values<'a>) -> Result<(), String> {
    let mut r = Reader::new(buf);
    while !r.done() {
        match r.key()? {
            (1, LEN) => {
                if !matches!(values, Values::Bytes(_)) {
                    *values = Values::Bytes(Vec::new());
                }
                if let Values::Bytes(list) = values {
                    bytes_list(r.len_delimited()?, list)?;
                }
            }
            (2, LEN) => {
                let list = r.len_delimited()?;
                match values {
                    Values::Floats(floats) => float_list(list, floats)?,
                    _ => {
                        let mut floats = Floats::Owned(Vec::new());
                        float_list(list, &mut floats)?;
                        *values = Values::Floats(floats);
                    }
                }
            }
            (3, LEN) => {
                if !matches!(values, Values::Ints(_)) {
                    *values = Values::Ints(Vec::new());
                }
                if let Values::Ints(list) = values {
                    int64_list(r.len_delimited()?, list)?;
                }
            }
            (_, wire_type) => r.skip(wire_type)?,
        }
    }
    Ok(())
}

fn bytes_list<'a>(buf: &'a [u8], out: &mut Vec<&'a [u8]>) -> Result<(), String> {
    let mut r = Reader::new(buf);
    while !r.done() {
        match r.key()? {
            (1, LEN) => out.push(r.len_delimited()?),
            (_, wire_type) => r.skip(wire_type)?,
        }
    }
    Ok(())
}

/// A `FloatList` merged into `out`: a lone packed field stays borrowed; anything more is
/// gathered into an owned list.
fn float_list<'a>(buf: &'a [u8], out: &mut Floats<'a>) -> Result<(), String> {
    let mut r = Reader::new(buf);
    while !r.done() {
        match r.key()? {
            (1, LEN) => {
                let packed = r.len_delimited()?;
                if packed.len() % 4 != 0 {
                    return Err("packed float list of a length not a multiple of 4".into());
                }
                match out {
                    Floats::Owned(values) if values.is_empty() => *out = Floats::Packed(packed),
                    Floats::Owned(values) => extend_from_packed(values, packed),
                    Floats::Packed(first) => {
                        let mut values = Vec::with_capacity((first.len() + packed.len()) / 4);
                        extend_from_packed(&mut values, first);
                        extend_from_packed(&mut values, packed);
                        *out = Floats::Owned(values);
                    }
                }
            }
            (1, FIXED32) => {
                let b = r.bytes(4)?;
                let value = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
                match out {
                    Floats::Owned(values) => values.push(value),
                    Floats::Packed(first) => {
                        let mut values = Vec::with_capacity(first.len() / 4 + 1);
                        extend_from_packed(&mut values, first);
                        values.push(value);
                        *out = Floats::Owned(values);
                    }
                }
            }
            (_, wire_type) => r.skip(wire_type)?,
        }
    }
    Ok(())
}

fn int64_list(buf: &[u8], out: &mut Vec<i64>) -> Result<(), String> {
    let mut r = Reader::new(buf);
    while !r.done() {
        match r.key()? {
            (1, LEN) => {
                let mut packed = Reader::new(r.len_delimited()?);
                while !packed.done() {
                    out.push(packed.varint()? as i64);
                }
            }
            (1, VARINT) => out.push(r.varint()? as i64),
            (_, wire_type) => r.skip(wire_type)?,
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use oxserve_proto::tensorflow::{
        feature, BytesList, Example, Feature, Features as PbFeatures, FloatList, Int64List,
    };
    use prost::Message;

    /// What prost makes of the same bytes, in this module's terms.
    fn via_prost(bytes: &[u8]) -> Option<HashMap<Vec<u8>, Values<'static>>> {
        let example = Example::decode(bytes).ok()?;
        Some(
            example
                .features
                .map(|f| f.feature)
                .unwrap_or_default()
                .into_iter()
                .map(|(name, f)| {
                    let values = match f.kind {
                        None => Values::None,
                        Some(feature::Kind::FloatList(l)) => Values::Floats(Floats::Owned(l.value)),
                        Some(feature::Kind::Int64List(l)) => Values::Ints(l.value),
                        Some(feature::Kind::BytesList(l)) => Values::Bytes(
                            l.value
                                .into_iter()
                                .map(|b| &*Box::leak(b.to_vec().into_boxed_slice()))
                                .collect(),
                        ),
                    };
                    (name.into_bytes(), values)
                })
                .collect(),
        )
    }

    fn ours(bytes: &[u8]) -> Option<HashMap<Vec<u8>, Values<'_>>> {
        parse(bytes)
            .ok()
            .map(|f| f.into_iter().map(|(k, v)| (k.to_vec(), v)).collect())
    }

    fn example() -> Vec<u8> {
        let f = |kind| Feature { kind: Some(kind) };
        Example {
            features: Some(PbFeatures {
                feature: [
                    (
                        "image".to_string(),
                        f(feature::Kind::FloatList(FloatList {
                            value: vec![0.5, -1.25, f32::MAX, 3.0],
                        })),
                    ),
                    (
                        "ids".to_string(),
                        f(feature::Kind::Int64List(Int64List {
                            value: vec![0, -1, i64::MIN, i64::MAX, 300],
                        })),
                    ),
                    (
                        "words".to_string(),
                        f(feature::Kind::BytesList(BytesList {
                            value: vec![b"a".to_vec().into(), b"".to_vec().into()],
                        })),
                    ),
                    ("empty".to_string(), Feature { kind: None }),
                ]
                .into(),
            }),
        }
        .encode_to_vec()
    }

    #[test]
    fn agrees_with_prost() {
        let bytes = example();
        assert_eq!(ours(&bytes), via_prost(&bytes));
        assert_eq!(
            parse(&bytes).unwrap()[&b"image"[..]],
            Values::Floats(Floats::Owned(vec![0.5, -1.25, f32::MAX, 3.0]))
        );
        // Concatenated messages merge, as protobuf parsers do (later map entries win).
        let mut twice = bytes.clone();
        twice.extend_from_slice(&bytes);
        assert_eq!(ours(&twice), via_prost(&twice));
        assert_eq!(ours(&[]), via_prost(&[]));
    }

    #[test]
    fn unpacked_lists_and_unknown_fields() {
        // Feature{float_list{value: 1.5 (unpacked), value: 2.5 (unpacked)}}, an unknown varint
        // field 7 in Example, and an int64 list with unpacked varints.
        let float_list = [0x0d, 0, 0, 0xc0, 0x3f, 0x0d, 0, 0, 0x20, 0x40];
        let mut feature = vec![0x12, float_list.len() as u8];
        feature.extend_from_slice(&float_list);
        let mut entry = vec![0x0a, 1, b'f', 0x12, feature.len() as u8];
        entry.extend_from_slice(&feature);
        let mut features = vec![0x0a, entry.len() as u8];
        features.extend_from_slice(&entry);
        let mut bytes = vec![0x38, 0x05, 0x0a, features.len() as u8];
        bytes.extend_from_slice(&features);
        assert_eq!(ours(&bytes), via_prost(&bytes));
        assert_eq!(
            parse(&bytes).unwrap()[&b"f"[..]],
            Values::Floats(Floats::Owned(vec![1.5, 2.5]))
        );
    }

    #[test]
    fn packed_lists_stay_in_the_record_unless_merged() {
        let bytes = example();
        let features = parse(&bytes).unwrap();
        let Values::Floats(Floats::Packed(packed)) = &features[&b"image"[..]] else {
            panic!("not borrowed: {:?}", features[&b"image"[..]]);
        };
        let start = packed.as_ptr() as usize - bytes.as_ptr() as usize;
        assert_eq!(&bytes[start..start + 16], *packed);
        // Feature{float_list{value: [1.5] packed}, float_list{value: [2.5] packed, 3.5 unpacked}}:
        // protobuf merges the two lists.
        let list_a = [0x0a, 4, 0, 0, 0xc0, 0x3f];
        let list_b = [0x0a, 4, 0, 0, 0x20, 0x40, 0x0d, 0, 0, 0x60, 0x40];
        let mut feature = vec![0x12, list_a.len() as u8];
        feature.extend_from_slice(&list_a);
        feature.extend_from_slice(&[0x12, list_b.len() as u8]);
        feature.extend_from_slice(&list_b);
        let mut entry = vec![0x0a, 1, b'f', 0x12, feature.len() as u8];
        entry.extend_from_slice(&feature);
        let mut features = vec![0x0a, entry.len() as u8];
        features.extend_from_slice(&entry);
        let mut bytes = vec![0x0a, features.len() as u8];
        bytes.extend_from_slice(&features);
        assert_eq!(ours(&bytes), via_prost(&bytes));
        assert!(matches!(
            &parse(&bytes).unwrap()[&b"f"[..]],
            Values::Floats(Floats::Owned(v)) if v == &[1.5, 2.5, 3.5]
        ));
    }

    #[test]
    fn every_truncation_is_an_error_or_agrees_never_a_panic() {
        let bytes = example();
        for cut in 0..bytes.len() {
            let got = ours(&bytes[..cut]);
            if let Some(got) = &got {
                assert_eq!(Some(got), via_prost(&bytes[..cut]).as_ref(), "cut {cut}");
            }
        }
        for garbage in [
            &b"\xff\xd8\xff\xe0 JPEG"[..],
            b"\x0a\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff",
            b"\x0b",
        ] {
            assert!(parse(garbage).is_err());
        }
    }
}
