//! The walk over a message's wire bytes, as prost's decoder reads them, adding up what it
//! allocates.

use super::growth;
use super::schema::{Element, Field, Message, Schema, Shape, SLOTS};

/// prost's `RECURSION_LIMIT`: a message or map entry nested deeper fails to decode.
const RECURSION_LIMIT: u32 = 100;

/// A decode from a `Bytes` or `BytesMut` that owns a `Vec` turns it into a shared buffer once: one
/// small allocation.
const SHARED_BUFFER_BYTES: usize = 64;

/// A failed decode's `DecodeError` at `depth` levels of nesting: its box, and its stack of
/// (message, field) names, one per level and 32 bytes each, grown by doubling. prost fails where
/// the walk does or earlier, and also on what the walk does not check (a string's UTF-8), so every
/// bound covers an error at the deepest level the walk reached. No container grows while the error
/// is built: it takes the place of the growth term.
fn error_bytes(depth: usize) -> usize {
    let entries = growth::vec_capacity(depth + 1, 32);
    128 + (entries + entries / 2) * 32
}

impl Schema {
    pub(super) fn bound(&self, message: usize, wire: &[u8]) -> usize {
        let mut walk = Walk::new(wire, false);
        // Where prost fails, the walk has counted all it allocated: the error is all there is to
        // add.
        if let Err(Stop::Merged) = walk.run(self, message) {
            walk = Walk::new(wire, true);
            // Merged is not returned when charging per occurrence: the result is only an error.
            let _ = walk.run(self, message);
        }
        walk.live
            .saturating_add(walk.growth.max(error_bytes(walk.depth)))
            .saturating_add(self.messages[message].size + SHARED_BUFFER_BYTES)
    }
}

/// Why a walk stopped early.
enum Stop {
    /// The bytes do not parse, as prost would find, at this byte or earlier.
    Malformed,
    /// A singular message field was written twice: the walk must count per occurrence.
    Merged,
}

const VARINT: u8 = 0;
const FIXED64: u8 = 1;
const LENGTH_DELIMITED: u8 = 2;
const START_GROUP: u8 = 3;
const END_GROUP: u8 = 4;
const FIXED32: u8 = 5;

struct Walk<'a> {
    wire: &'a [u8],
    pos: usize,
    /// Allocations that may all be alive at once.
    live: usize,
    /// The largest allocation alive only while something grows.
    growth: usize,
    /// The deepest nesting reached.
    depth: usize,
    /// Whether containers are charged per occurrence (see the module documentation).
    per_occurrence: bool,
}

/// What a struct being walked keeps: its containers' element counts, its singular message fields
/// seen.
struct Open {
    counts: [usize; SLOTS],
    seen: u64,
}

impl<'a> Walk<'a> {
    fn new(wire: &'a [u8], per_occurrence: bool) -> Self {
        Walk {
            wire,
            pos: 0,
            live: 0,
            growth: 0,
            depth: 0,
            per_occurrence,
        }
    }

    fn run(&mut self, schema: &Schema, message: usize) -> Result<(), Stop> {
        self.message(schema, message, self.wire.len(), RECURSION_LIMIT)
    }

    /// The fields of a `message` that ends at `end`, at `budget` levels from the recursion limit.
    fn message(
        &mut self,
        schema: &Schema,
        message: usize,
        end: usize,
        budget: u32,
    ) -> Result<(), Stop> {
        let info = &schema.messages[message];
        let mut open = Open {
            counts: [0; SLOTS],
            seen: 0,
        };
        let result = self.fields(schema, info, end, budget, &mut open);
        // Also on an error: prost's containers so far are alive until it reports it.
        for (container, &count) in info.containers.iter().zip(&open.counts) {
            if count > 0 {
                let (bytes, old) = container.exact(count);
                self.charge(bytes);
                self.growth = self.growth.max(old);
            }
        }
        result?;
        // A field can run past its message's end, as in prost, which then fails.
        if self.pos == end {
            Ok(())
        } else {
            Err(Stop::Malformed)
        }
    }

    fn fields(
        &mut self,
        schema: &Schema,
        info: &Message,
        end: usize,
        budget: u32,
        open: &mut Open,
    ) -> Result<(), Stop> {
        while self.pos < end {
            let (number, wire_type) = self.key()?;
            match info.field(number) {
                Some(field) => self.field(schema, field, wire_type, budget, open)?,
                None => self.skip(wire_type)?,
            }
        }
        Ok(())
    }

    fn field(
        &mut self,
        schema: &Schema,
        field: &Field,
        wire_type: u8,
        budget: u32,
        open: &mut Open,
    ) -> Result<(), Stop> {
        match (field.shape, wire_type) {
            (Shape::Copied, LENGTH_DELIMITED) => {
                let bytes = string_capacity(self.length()?);
                self.charge(bytes);
                // A second occurrence reuses the first's buffer, regrown (at most doubled, and
                // below the new length).
                self.growth = self.growth.max(bytes);
                Ok(())
            }
            (
                Shape::Message {
                    message,
                    boxed,
                    seen_bit,
                },
                LENGTH_DELIMITED,
            ) => {
                if !self.per_occurrence {
                    let bit = seen_bit.map_or(u64::MAX, |bit| 1 << bit);
                    if open.seen & bit != 0 {
                        return Err(Stop::Merged);
                    }
                    open.seen |= bit;
                }
                if boxed {
                    self.charge(schema.messages[message].size);
                }
                self.nested(schema, message, budget)
            }
            (
                Shape::Repeated {
                    element,
                    container,
                    slot,
                },
                _,
            ) => {
                let count = self.elements(schema, element, wire_type, budget)?;
                match slot {
                    Some(slot) if !self.per_occurrence => open.counts[usize::from(slot)] += count,
                    _ if count > 0 => self.charge(container.per_occurrence(count)),
                    _ => {}
                }
                Ok(())
            }
            // A wrong wire type fails prost's decode here; the walk goes on.
            _ => self.skip(wire_type),
        }
    }

    /// The elements one occurrence of a repeated field adds.
    fn elements(
        &mut self,
        schema: &Schema,
        element: Element,
        wire_type: u8,
        budget: u32,
    ) -> Result<usize, Stop> {
        match (element, wire_type) {
            (Element::Varint, VARINT) => self.varint().map(|_| 1),
            (Element::Fixed(4), FIXED32) | (Element::Fixed(8), FIXED64) => {
                self.skip(wire_type).map(|()| 1)
            }
            // Packed.
            (Element::Varint, LENGTH_DELIMITED) => {
                let len = self.length()?;
                let values = &self.wire[self.pos - len..self.pos];
                // prost reads a last, unterminated value on past the end before it fails.
                let unterminated = values.last().is_some_and(|&byte| byte >= 0x80);
                Ok(values.iter().filter(|&&byte| byte < 0x80).count() + usize::from(unterminated))
            }
            (Element::Fixed(width), LENGTH_DELIMITED) => Ok(self.length()?.div_ceil(width)),
            (Element::Shared, LENGTH_DELIMITED) => self.length().map(|_| 1),
            (Element::Copied, LENGTH_DELIMITED) => {
                let bytes = string_capacity(self.length()?);
                self.charge(bytes);
                Ok(1)
            }
            (Element::Message(message), LENGTH_DELIMITED) => {
                self.nested(schema, message, budget).map(|()| 1)
            }
            // prost's map fields do not check the wire type: an entry's length follows the key.
            (Element::Entry(entry), _) => self.nested(schema, entry, budget).map(|()| 1),
            _ => self.skip(wire_type).map(|()| 0),
        }
    }

    /// A length-delimited message (or map entry), as prost's `message::merge`.
    fn nested(&mut self, schema: &Schema, message: usize, budget: u32) -> Result<(), Stop> {
        if budget == 0 {
            return Err(Stop::Malformed);
        }
        let len = self.varint()?;
        if len > (self.wire.len() - self.pos) as u64 {
            return Err(Stop::Malformed);
        }
        let end = self.pos + len as usize;
        self.depth = self.depth.max((RECURSION_LIMIT - budget + 1) as usize);
        self.message(schema, message, end, budget - 1)
    }

    fn charge(&mut self, bytes: usize) {
        self.live = self.live.saturating_add(bytes);
    }

    /// A field's number and wire type, rejected where prost's `decode_key` rejects them.
    fn key(&mut self) -> Result<(u32, u8), Stop> {
        let key = self.varint()?;
        let wire_type = (key & 7) as u8;
        if key > u64::from(u32::MAX) || key >> 3 == 0 || wire_type > FIXED32 {
            return Err(Stop::Malformed);
        }
        Ok(((key >> 3) as u32, wire_type))
    }

    /// As prost's `decode_varint`: at most 10 bytes, the last one at most 1.
    fn varint(&mut self) -> Result<u64, Stop> {
        let mut value = 0;
        let mut shift = 0;
        loop {
            let &byte = self.wire.get(self.pos).ok_or(Stop::Malformed)?;
            self.pos += 1;
            value |= u64::from(byte & 0x7f) << shift;
            if byte < 0x80 {
                return if shift == 63 && byte > 1 {
                    Err(Stop::Malformed)
                } else {
                    Ok(value)
                };
            }
            shift += 7;
            if shift > 63 {
                return Err(Stop::Malformed);
            }
        }
    }

    /// Steps over a length-delimited value, returning its length.
    fn length(&mut self) -> Result<usize, Stop> {
        let len = self.varint()?;
        if len > (self.wire.len() - self.pos) as u64 {
            return Err(Stop::Malformed);
        }
        self.advance(len as usize)?;
        Ok(len as usize)
    }

    fn advance(&mut self, len: usize) -> Result<(), Stop> {
        if len > self.wire.len() - self.pos {
            return Err(Stop::Malformed);
        }
        self.pos += len;
        Ok(())
    }

    /// Steps over a value that allocates nothing (an unknown field's, or one prost rejects).
    fn skip(&mut self, wire_type: u8) -> Result<(), Stop> {
        match wire_type {
            VARINT => self.varint().map(|_| ()),
            FIXED64 => self.advance(8),
            LENGTH_DELIMITED => self.length().map(|_| ()),
            FIXED32 => self.advance(4),
            START_GROUP => {
                // Iterative, so that nesting costs no stack; prost also matches the end group's
                // number and limits the nesting, so it fails here if the walk does.
                let mut depth = 1_usize;
                while depth > 0 {
                    match self.key()?.1 {
                        START_GROUP => depth += 1,
                        END_GROUP => depth -= 1,
                        wire_type => self.skip(wire_type)?,
                    }
                }
                Ok(())
            }
            _ => Err(Stop::Malformed),
        }
    }
}

/// The capacity prost's `String` (or `Vec<u8>`) gets for `len` bytes: `Vec::reserve`'s, at least 8.
fn string_capacity(len: usize) -> usize {
    if len == 0 {
        0
    } else {
        len.max(8)
    }
}
