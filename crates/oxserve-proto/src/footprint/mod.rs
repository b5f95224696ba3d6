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

mod growth;
mod schema;
mod walk;

/// An upper bound of the heap bytes prost allocates to decode `wire` as an `M` (its structs'
/// inline size included), without decoding it.
///
/// The bound assumes prost decodes from a shared buffer (`Bytes`, or tonic's `DecodeBuf`), so that
/// `bytes` fields share it. It covers a decode that fails, up to prost's error. `usize::MAX` for a
/// type that is not in [`crate::descriptor_pool`] (every generated type is).
pub fn decoded_bound<M: prost::Name>(wire: &[u8]) -> usize {
    let schema = schema::schema();
    match schema.index.get(&M::full_name()) {
        Some(&message) => schema.bound(message, wire),
        None => usize::MAX,
    }
}
