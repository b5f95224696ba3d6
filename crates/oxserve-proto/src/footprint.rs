//! An upper bound of the heap prost allocates to decode a message, computed from the wire bytes
//! before they are decoded.
//!
//! prost decodes a gRPC request before the server sees it, and its structs can be many times the
//! size of the wire bytes: an empty `string_val` is 2 bytes on the wire and a 32-byte `Bytes` in a
//! `Vec`, an empty `Example` 2 bytes and a 48-byte struct, a short distinct map key a hashbrown
//! bucket and a `String`. A message of gRPC's 2 GiB maximum can decode into tens of GB. The codec
//! charges [`decoded_bound`] to the request memory budget before it lets prost decode.
//!
//! The walk reads the wire format with the message's descriptor the way prost's decoder does: one
//! cursor over the whole buffer, a nested message's length checked against the whole buffer and
//! its end checked after its fields, prost's recursion limit. Where prost would fail, the walk
//! fails at the same byte or later (it accepts what prost rejects, such as a wrong wire type, and
//! skips it), so everything prost allocated before its error has been counted.
//!
//! What is counted, per field occurrence:
//! - a `String` (and prost-types' `Vec<u8>`, which copy): its length, at least 8 (`Vec::reserve`'s
//!   minimum);
//! - a `bytes` field: nothing of its own, `Bytes` shares the request buffer; in a `Vec`, its handle;
//! - a repeated field: one element of its `Vec` (per value for a packed field: varints counted by
//!   their last bytes, fixed-width values by the length);
//! - a map entry: a hashbrown bucket of `(key, value)`, the key's `String`;
//! - a message field: its fields, recursively (its struct is inline in its parent's, or the `Vec`'s
//!   or bucket's element);
//!
//! and the containers' growth: a `Vec` of n elements has a power-of-two capacity (from 4, or 8 for
//! bytes), a map `hashbrown`'s power-of-two bucket count at 7/8 load, and while one grows its old
//! buffer is alive next to the new one. Containers grow one at a time, so the bound is the sum of the
//! final sizes plus the largest old buffer.
//!
//! Capacities need each container's element count, counted per struct. That holds while every struct
//! is decoded from one stretch of bytes, as encoders write them. A singular message field written
//! twice is merged by prost into one struct whose containers then grow across both: when the walk
//! sees that, it starts over and charges each container occurrence on its own, 3 elements per
//! element (a `Vec` holds fewer than 2n slots and, growing, 1.5x that), which stays an upper bound
//! however occurrences add up.
//!
//! proto2 groups are skipped, not read: TensorFlow's protos have none (a test checks).

use std::collections::HashMap;
use std::mem::size_of;
use std::sync::OnceLock;

use prost_reflect::{DescriptorPool, FieldDescriptor, Kind, MessageDescriptor};

/// An upper bound of the heap bytes prost allocates to decode `wire` as an `M` (its structs'
/// inline size included), without decoding it.
///
/// The bound assumes prost decodes from a shared buffer (`Bytes`, or tonic's `DecodeBuf`), so that
/// `bytes` fields share it. It covers a decode that fails, up to prost's error. `usize::MAX` for a
/// type that is not in [`crate::descriptor_pool`] (every generated type is).
pub fn decoded_bound<M: prost::Name>(wire: &[u8]) -> usize {
    let schema = schema();
    match schema.index.get(&M::full_name()) {
        Some(&message) => schema.bound(message, wire),
        None => usize::MAX,
    }
}

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

/// Field numbers looked up in a table rather than searched for.
const DIRECT_NUMBERS: u32 = 256;

/// Repeated fields and maps per message whose element counts are kept; the rest of a message's (none
/// in TensorFlow's protos) are charged per occurrence.
const SLOTS: usize = 16;

/// Singular message fields per message that are checked for being written twice; a message's
/// further ones (none in TensorFlow's protos) count as written twice.
const SEEN_BITS: usize = 64;

// `size_of` the generated types a request decodes into: a message's struct is an element of a
// `Vec` or a map bucket. Other messages' sizes are estimated from their descriptors, from above.
macro_rules! rust_sizes {
    ($($message:ty),* $(,)?) => {
        fn rust_sizes() -> HashMap<String, usize> {
            HashMap::from([$((<$message as prost::Name>::full_name(), size_of::<$message>())),*])
        }
    };
}

rust_sizes!(
    crate::tensorflow::serving::PredictRequest,
    crate::tensorflow::serving::predict_request::RequestOptions,
    crate::tensorflow::serving::predict_request::request_options::Handshake,
    crate::tensorflow::serving::PredictStreamedOptions,
    crate::tensorflow::serving::ModelSpec,
    crate::tensorflow::serving::ClassificationRequest,
    crate::tensorflow::serving::RegressionRequest,
    crate::tensorflow::serving::MultiInferenceRequest,
    crate::tensorflow::serving::InferenceTask,
    crate::tensorflow::serving::Input,
    crate::tensorflow::serving::ExampleList,
    crate::tensorflow::serving::ExampleListWithContext,
    crate::tensorflow::serving::GetModelMetadataRequest,
    crate::tensorflow::serving::GetModelStatusRequest,
    crate::tensorflow::serving::ReloadConfigRequest,
    crate::tensorflow::serving::ModelServerConfig,
    crate::tensorflow::serving::ModelConfigList,
    crate::tensorflow::serving::ModelConfig,
    crate::tensorflow::serving::file_system_storage_path_source_config::ServableVersionPolicy,
    crate::tensorflow::serving::file_system_storage_path_source_config::servable_version_policy::Latest,
    crate::tensorflow::serving::file_system_storage_path_source_config::servable_version_policy::All,
    crate::tensorflow::serving::file_system_storage_path_source_config::servable_version_policy::Specific,
    crate::tensorflow::serving::LoggingConfig,
    crate::tensorflow::serving::LogCollectorConfig,
    crate::tensorflow::serving::SamplingConfig,
    crate::tensorflow::serving::PerTaskSamplingConfig,
    crate::tensorflow::TensorProto,
    crate::tensorflow::TensorShapeProto,
    crate::tensorflow::tensor_shape_proto::Dim,
    crate::tensorflow::ResourceHandleProto,
    crate::tensorflow::resource_handle_proto::DtypeAndShape,
    crate::tensorflow::VariantTensorDataProto,
    crate::tensorflow::Example,
    crate::tensorflow::Features,
    crate::tensorflow::Feature,
    crate::tensorflow::BytesList,
    crate::tensorflow::FloatList,
    crate::tensorflow::Int64List,
    prost_types::Any,
);

fn schema() -> &'static Schema {
    static SCHEMA: OnceLock<Schema> = OnceLock::new();
    SCHEMA.get_or_init(|| Builder::new(crate::descriptor_pool(), &rust_sizes()).build())
}

/// Every message of the pool, compiled to what the walk needs.
struct Schema {
    index: HashMap<String, usize>,
    messages: Vec<Message>,
}

struct Message {
    /// `size_of` its struct; for a map entry, of its `(key, value)` bucket.
    size: usize,
    /// By number.
    fields: Vec<Field>,
    /// Where in `fields` (plus one; 0 for none) the field numbered as the index is, for the
    /// numbers below `DIRECT_NUMBERS`: the binary search would take most of the walk's time.
    by_number: Vec<u16>,
    /// The containers whose element counts are kept per struct, by slot.
    containers: Vec<Container>,
}

impl Message {
    fn field(&self, number: u32) -> Option<&Field> {
        match self.by_number.get(number as usize) {
            Some(&at) => at.checked_sub(1).map(|at| &self.fields[usize::from(at)]),
            None => {
                let found = self
                    .fields
                    .binary_search_by_key(&number, |field| field.number);
                found.ok().map(|at| &self.fields[at])
            }
        }
    }
}

#[derive(Clone, Copy)]
struct Field {
    number: u32,
    shape: Shape,
}

#[derive(Clone, Copy)]
enum Shape {
    /// A scalar, or a `Bytes`: nothing on the heap of its own.
    Inline,
    /// A `String`, or prost-types' `Vec<u8>`: a copy of its bytes.
    Copied,
    /// A singular message: its struct is in its parent's, or boxed where prost boxes it.
    Message {
        message: usize,
        boxed: bool,
        seen_bit: Option<u8>,
    },
    /// A repeated field or a map (whose elements are `Element::Entry`s).
    Repeated {
        element: Element,
        container: Container,
        slot: Option<u8>,
    },
}

#[derive(Clone, Copy)]
enum Element {
    Varint,
    /// Its width on the wire.
    Fixed(usize),
    /// A `Bytes`.
    Shared,
    /// A `String` or `Vec<u8>`.
    Copied,
    Message(usize),
    /// A map entry, a message of its key and value.
    Entry(usize),
}

#[derive(Clone, Copy)]
enum Container {
    /// A `Vec` of elements of this size.
    Vec { element: usize },
    /// A `HashMap` of buckets of this size.
    Map { bucket: usize },
}

impl Container {
    /// The allocation holding `count` elements, and the old one alive while it last grew.
    fn exact(self, count: usize) -> (usize, usize) {
        match self {
            Container::Vec { element } => {
                let min = growth::vec_min_capacity(element);
                let capacity = growth::vec_capacity(count, element);
                let old = if capacity > min { capacity / 2 } else { 0 };
                (
                    capacity.saturating_mul(element),
                    old.saturating_mul(element),
                )
            }
            Container::Map { bucket } => {
                let (buckets, old) = growth::map_buckets(count, bucket);
                let old_bytes = old.map_or(0, |old| growth::map_bytes(old, bucket));
                (growth::map_bytes(buckets, bucket), old_bytes)
            }
        }
    }

    /// An upper bound of the peak of a container whose `count` elements are some of its elements:
    /// the bounds of its occurrences add up to a bound of the whole.
    fn per_occurrence(self, count: usize) -> usize {
        match self {
            // Fewer than 2n slots once grown past the minimum, and the old half while growing.
            Container::Vec { element } => count
                .saturating_mul(3)
                .max(growth::vec_min_capacity(element))
                .saturating_mul(element),
            // Fewer than 16/7 n buckets plus their control bytes, and the old half while growing;
            // the constant covers the first table's at most 4 buckets and 31 bytes of control and
            // alignment.
            Container::Map { bucket } => count.saturating_mul(4 * (bucket + 1) + 32),
        }
    }
}

impl Schema {
    fn bound(&self, message: usize, wire: &[u8]) -> usize {
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

/// How `Vec` and the standard library's `HashMap` (hashbrown) grow, one element at a time.
mod growth {
    /// hashbrown's control bytes are read in groups of 16 (SSE2; 8 elsewhere, which needs less).
    const GROUP_WIDTH: usize = 16;

    /// `RawVec`'s first capacity.
    pub(super) fn vec_min_capacity(element: usize) -> usize {
        match element {
            1 => 8,
            0..=1024 => 4,
            _ => 1,
        }
    }

    /// The capacity of a `Vec` after `count` pushes: doubled from the minimum as needed.
    pub(super) fn vec_capacity(count: usize, element: usize) -> usize {
        let doubled = count.checked_next_power_of_two().unwrap_or(usize::MAX);
        doubled.max(vec_min_capacity(element))
    }

    /// hashbrown's `capacity_to_buckets`.
    fn buckets_for(capacity: usize, bucket: usize) -> usize {
        if capacity < 15 {
            let min = match bucket {
                0..=1 => 14,
                2..=3 => 7,
                _ => 3,
            };
            match capacity.max(min) {
                0..=3 => 4,
                4..=7 => 8,
                _ => 16,
            }
        } else {
            (capacity.saturating_mul(8) / 7)
                .checked_next_power_of_two()
                .unwrap_or(usize::MAX)
        }
    }

    /// hashbrown's `bucket_mask_to_capacity`: 7/8 of the buckets, all but one of up to 8.
    pub(super) fn bucket_capacity(buckets: usize) -> usize {
        if buckets <= 8 {
            buckets - 1
        } else {
            buckets / 8 * 7
        }
    }

    /// The buckets of a map after `count` inserts, and before its last resize if it had one: each
    /// resize asks for one more than the full capacity.
    pub(super) fn map_buckets(count: usize, bucket: usize) -> (usize, Option<usize>) {
        let mut buckets = buckets_for(1, bucket);
        let mut old = None;
        while bucket_capacity(buckets) < count && buckets < usize::MAX {
            old = Some(buckets);
            buckets = buckets_for(bucket_capacity(buckets) + 1, bucket);
        }
        (buckets, old)
    }

    /// The size of a table's allocation: its buckets, aligned for its control bytes, one per bucket
    /// and a group's more.
    pub(super) fn map_bytes(buckets: usize, bucket: usize) -> usize {
        (buckets
            .saturating_mul(bucket)
            .saturating_add(GROUP_WIDTH - 1)
            / GROUP_WIDTH
            * GROUP_WIDTH)
            .saturating_add(buckets)
            .saturating_add(GROUP_WIDTH)
    }
}

/// Compiles a descriptor pool into a [`Schema`].
struct Builder<'a> {
    descriptors: Vec<MessageDescriptor>,
    index: HashMap<String, usize>,
    rust_sizes: &'a HashMap<String, usize>,
    /// The message types of each message's singular message fields.
    singular: Vec<Vec<usize>>,
    sizes: Vec<Option<usize>>,
}

impl<'a> Builder<'a> {
    fn new(pool: &DescriptorPool, rust_sizes: &'a HashMap<String, usize>) -> Self {
        let descriptors: Vec<MessageDescriptor> = pool.all_messages().collect();
        let index: HashMap<String, usize> = descriptors
            .iter()
            .enumerate()
            .map(|(at, message)| (message.full_name().to_owned(), at))
            .collect();
        let singular = descriptors
            .iter()
            .map(|message| {
                message
                    .fields()
                    .filter(|field| !field.is_list() && !field.is_map())
                    .filter_map(|field| match field.kind() {
                        Kind::Message(child) => Some(index[child.full_name()]),
                        _ => None,
                    })
                    .collect()
            })
            .collect();
        Builder {
            sizes: vec![None; descriptors.len()],
            descriptors,
            index,
            rust_sizes,
            singular,
        }
    }

    fn build(mut self) -> Schema {
        let messages = (0..self.descriptors.len())
            .map(|message| self.compile(message))
            .collect();
        Schema {
            index: self.index,
            messages,
        }
    }

    fn compile(&mut self, message: usize) -> Message {
        let descriptor = self.descriptors[message].clone();
        let mut fields: Vec<FieldDescriptor> = descriptor.fields().collect();
        fields.sort_by_key(FieldDescriptor::number);
        let mut containers = Vec::new();
        let mut seen_bits = 0;
        let fields: Vec<Field> = fields
            .iter()
            .map(|field| {
                let shape = if field.is_list() || field.is_map() {
                    let (element, container) = self.repeated(field);
                    let slot = (containers.len() < SLOTS).then(|| {
                        containers.push(container);
                        (containers.len() - 1) as u8
                    });
                    Shape::Repeated {
                        element,
                        container,
                        slot,
                    }
                } else {
                    match field.kind() {
                        Kind::Message(child) => {
                            let child = self.index[child.full_name()];
                            let seen_bit = (seen_bits < SEEN_BITS).then(|| {
                                seen_bits += 1;
                                (seen_bits - 1) as u8
                            });
                            Shape::Message {
                                message: child,
                                boxed: self.boxed(message, child),
                                seen_bit,
                            }
                        }
                        Kind::String => Shape::Copied,
                        Kind::Bytes if copies_bytes(&descriptor) => Shape::Copied,
                        _ => Shape::Inline,
                    }
                };
                Field {
                    number: field.number(),
                    shape,
                }
            })
            .collect();
        Message {
            size: self.size(message),
            by_number: by_number(&fields),
            fields,
            containers,
        }
    }

    fn repeated(&mut self, field: &FieldDescriptor) -> (Element, Container) {
        if let (true, Kind::Message(entry)) = (field.is_map(), field.kind()) {
            let entry = self.index[entry.full_name()];
            let bucket = self.size(entry);
            return (Element::Entry(entry), Container::Map { bucket });
        }
        let element = match field.kind() {
            Kind::Fixed32 | Kind::Sfixed32 | Kind::Float => Element::Fixed(4),
            Kind::Fixed64 | Kind::Sfixed64 | Kind::Double => Element::Fixed(8),
            Kind::String => Element::Copied,
            Kind::Bytes if copies_bytes(field.parent_message()) => Element::Copied,
            Kind::Bytes => Element::Shared,
            Kind::Message(child) => Element::Message(self.index[child.full_name()]),
            _ => Element::Varint,
        };
        let element_size = self.value_size(field);
        (
            element,
            Container::Vec {
                element: element_size,
            },
        )
    }

    /// Whether prost boxes a singular field of type `child` in `parent`: when `child` contains
    /// `parent` through singular message fields (or is it), its struct would contain itself.
    fn boxed(&self, parent: usize, child: usize) -> bool {
        let mut visited = vec![false; self.descriptors.len()];
        let mut stack = vec![child];
        while let Some(message) = stack.pop() {
            if message == parent {
                return true;
            }
            if !std::mem::replace(&mut visited[message], true) {
                stack.extend(&self.singular[message]);
            }
        }
        false
    }

    /// `size_of` a message's struct: from the table, or estimated from above.
    fn size(&mut self, message: usize) -> usize {
        if let Some(size) = self.sizes[message] {
            return size;
        }
        let descriptor = self.descriptors[message].clone();
        let size = if descriptor.is_map_entry() {
            let key = self.value_size(&descriptor.map_entry_key_field());
            let value = self.value_size(&descriptor.map_entry_value_field());
            (key + value).next_multiple_of(8)
        } else if let Some(&size) = self.rust_sizes.get(descriptor.full_name()) {
            size
        } else {
            self.estimate(message)
        };
        self.sizes[message] = Some(size);
        size
    }

    /// An upper bound of a message's `size_of` from its fields: each at 8-byte alignment, a
    /// singular message in an `Option` (8 bytes more at most), a oneof (or proto3 `optional`) an
    /// enum of its largest field and a tag. Rust orders a struct's fields to need no padding
    /// between them. Boxed fields break the recursion through message types.
    fn estimate(&mut self, message: usize) -> usize {
        let descriptor = self.descriptors[message].clone();
        let mut size = 0;
        for field in descriptor.fields() {
            if field.containing_oneof().is_none() {
                size += self.member_size(message, &field);
            }
        }
        for oneof in descriptor.oneofs() {
            let largest = oneof
                .fields()
                .map(|field| self.member_size(message, &field))
                .max()
                .unwrap_or(0);
            size += 8 + largest;
        }
        size.next_multiple_of(8)
    }

    fn member_size(&mut self, message: usize, field: &FieldDescriptor) -> usize {
        if field.is_map() {
            return size_of::<HashMap<String, String>>();
        }
        if field.is_list() {
            return size_of::<Vec<u8>>();
        }
        match field.kind() {
            Kind::Message(child) => {
                let child = self.index[child.full_name()];
                if self.boxed(message, child) {
                    8
                } else {
                    self.size(child) + 8
                }
            }
            _ => self.value_size(field).next_multiple_of(8),
        }
    }

    /// `size_of` a value of the field's type, as an element of a `Vec` or in a map bucket.
    fn value_size(&mut self, field: &FieldDescriptor) -> usize {
        match field.kind() {
            Kind::Bool => 1,
            Kind::Int32
            | Kind::Uint32
            | Kind::Sint32
            | Kind::Fixed32
            | Kind::Sfixed32
            | Kind::Float
            | Kind::Enum(_) => 4,
            Kind::Int64
            | Kind::Uint64
            | Kind::Sint64
            | Kind::Fixed64
            | Kind::Sfixed64
            | Kind::Double => 8,
            Kind::String => size_of::<String>(),
            Kind::Bytes if copies_bytes(field.parent_message()) => size_of::<Vec<u8>>(),
            Kind::Bytes => size_of::<bytes::Bytes>(),
            Kind::Message(child) => {
                let child = self.index[child.full_name()];
                self.size(child)
            }
        }
    }
}

/// [`Message::by_number`] of fields sorted by number.
fn by_number(fields: &[Field]) -> Vec<u16> {
    let direct = fields
        .iter()
        .take_while(|field| field.number < DIRECT_NUMBERS);
    let len = direct.clone().last().map_or(0, |field| field.number + 1);
    let mut by_number = vec![0; len as usize];
    // Below DIRECT_NUMBERS, `at` fits.
    for (at, field) in direct.enumerate() {
        by_number[field.number as usize] = at as u16 + 1;
    }
    by_number
}

/// Whether a message's `bytes` fields are `Vec<u8>`, copied: prost-types' well-known types are not
/// built with `bytes::Bytes`.
fn copies_bytes(message: &MessageDescriptor) -> bool {
    message.full_name().starts_with("google.protobuf.")
}

#[cfg(test)]
mod tests {
    use std::collections::{HashMap, HashSet};

    use super::*;

    /// The request types of TF Serving's two services.
    const REQUESTS: [&str; 7] = [
        "tensorflow.serving.PredictRequest",
        "tensorflow.serving.ClassificationRequest",
        "tensorflow.serving.RegressionRequest",
        "tensorflow.serving.MultiInferenceRequest",
        "tensorflow.serving.GetModelMetadataRequest",
        "tensorflow.serving.GetModelStatusRequest",
        "tensorflow.serving.ReloadConfigRequest",
    ];

    /// prost maps the wrapper types to `Option<primitive>`, inline in their parent: no struct.
    fn is_wrapper(name: &str) -> bool {
        name.starts_with("google.protobuf.") && name.ends_with("Value")
    }

    #[test]
    fn every_struct_a_request_decodes_into_has_its_size() {
        let pool = crate::descriptor_pool();
        let sizes = rust_sizes();
        let mut seen = HashSet::new();
        let mut stack: Vec<MessageDescriptor> = REQUESTS
            .iter()
            .map(|name| pool.get_message_by_name(name).unwrap())
            .collect();
        while let Some(message) = stack.pop() {
            if !seen.insert(message.full_name().to_owned()) {
                continue;
            }
            if !message.is_map_entry() && !is_wrapper(message.full_name()) {
                assert!(
                    sizes.contains_key(message.full_name()),
                    "{} has no size in rust_sizes!",
                    message.full_name()
                );
            }
            for field in message.fields() {
                if let Kind::Message(child) = field.kind() {
                    stack.push(child);
                }
            }
        }
    }

    #[test]
    fn estimated_sizes_bound_the_real_ones() {
        let sizes = rust_sizes();
        let mut builder = builder_without_sizes();
        for (name, &size) in &sizes {
            let estimate = builder.estimate(builder.index[name]);
            assert!(estimate >= size, "{name}: estimated {estimate} < {size}");
        }
    }

    fn builder_without_sizes() -> Builder<'static> {
        static NONE: OnceLock<HashMap<String, usize>> = OnceLock::new();
        Builder::new(crate::descriptor_pool(), NONE.get_or_init(HashMap::new))
    }

    #[test]
    fn no_groups() {
        // The walk skips a proto2 group's contents, which prost would decode: it must meet none.
        for message in crate::descriptor_pool().all_messages() {
            for field in message.fields() {
                assert!(!field.is_group(), "{} is a group", field.full_name());
            }
        }
    }

    #[test]
    fn vec_capacity_is_modelled() {
        fn check<T: Default>() {
            let mut values = Vec::<T>::new();
            for count in 1..5000 {
                values.push(T::default());
                assert_eq!(
                    values.capacity(),
                    growth::vec_capacity(count, size_of::<T>()),
                    "{count} elements of {} bytes",
                    size_of::<T>()
                );
            }
        }
        check::<bool>();
        check::<f32>();
        check::<bytes::Bytes>();
        check::<crate::tensorflow::Example>();
        check::<[[u64; 32]; 5]>();
    }

    #[test]
    fn map_capacity_is_modelled() {
        fn check<V: Default>() {
            let bucket = size_of::<(String, V)>();
            let mut map = HashMap::<String, V>::new();
            for count in 1..5000 {
                map.insert(count.to_string(), V::default());
                let (buckets, old) = growth::map_buckets(count, bucket);
                assert_eq!(map.capacity(), growth::bucket_capacity(buckets), "{count}");
                if let Some(old) = old {
                    assert_eq!(old * 2, buckets);
                }
            }
        }
        check::<i32>();
        check::<crate::tensorflow::TensorProto>();
        check::<crate::tensorflow::Feature>();
    }
}
