//! The fast path: one pass over the body, numbers decoded straight into each input's typed
//! buffer, TF Serving's shape checks made on the way; `None` at the first irregularity.

use oxserve_core::{bf16, f16, narrow, DType, Error, Tensor, TensorData};

use super::super::base64;
use super::super::dom::Number;
use super::super::reader::{Reader, MAX_DEPTH};
use super::super::split;
use super::{empty_map_error, int_value, Format, Lookup, Named, PredictRequestJson};
use crate::memory_budget;

pub(crate) enum Fast {
    Done(PredictRequestJson),
    /// An error that is certainly TF Serving's answer (the whole body has been checked).
    Error(Error),
    /// Anything else: let the reference path decide.
    Fallback,
}

const UNKNOWN: usize = usize::MAX;

/// The shape of one tensor as discovered while streaming through it.
struct Shape {
    /// Set by the first scalar (its level) or the first empty list (its level + 1).
    rank: Option<usize>,
    /// Size of the lists at each level, set when the first list at that level closes.
    dims: Vec<usize>,
}

/// One element type of a tensor: how a scalar JSON value becomes an element, with TF Serving's
/// acceptance rules (`AddValueToTensor`). `None` means "not accepted"; a list never is.
pub(crate) trait Elem: Sized + Send + 'static {
    fn read(r: &mut Reader<'_>, scratch: &mut Vec<u8>) -> Option<Self>;
}

/// A number (anything else is not accepted): the common short forms inline, the rest out of line
/// so that the loops over scalars stay small.
#[inline(always)]
fn read_number(r: &mut Reader<'_>) -> Option<Number> {
    match r.parse_number_swar() {
        Some(n) => Some(n),
        None => read_number_general(r),
    }
}

#[inline(never)]
fn read_number_general(r: &mut Reader<'_>) -> Option<Number> {
    match r.peek() {
        b'n' | b't' | b'f' | b'"' | b'{' | b'[' => None,
        _ => r.parse_number_quick().ok(),
    }
}

impl Elem for f32 {
    #[inline(always)]
    fn read(r: &mut Reader<'_>, _: &mut Vec<u8>) -> Option<f32> {
        match r.parse_f32_swar() {
            Some(v) => Some(v),
            None => read_f32_general(r),
        }
    }
}

/// What `parse_f32_swar` leaves: numbers outside its window, and texts it does not read (the
/// SWAR routine would not read them either).
#[inline(never)]
fn read_f32_general(r: &mut Reader<'_>) -> Option<f32> {
    read_number_general(r).map(|n| n.as_f64() as f32)
}

impl Elem for f16 {
    fn read(r: &mut Reader<'_>, _: &mut Vec<u8>) -> Option<f16> {
        read_number(r).map(|n| narrow::f16_from_f64(n.as_f64()))
    }
}

impl Elem for bf16 {
    fn read(r: &mut Reader<'_>, _: &mut Vec<u8>) -> Option<bf16> {
        read_number(r).map(|n| narrow::bf16_from_f64(n.as_f64()))
    }
}

/// Complex numbers have no JSON form: the reference path answers TF Serving's error.
macro_rules! no_json_elem {
    ($t:ty) => {
        impl Elem for $t {
            fn read(_: &mut Reader<'_>, _: &mut Vec<u8>) -> Option<$t> {
                None
            }
        }
    };
}

no_json_elem!([f32; 2]);
no_json_elem!([f64; 2]);

impl Elem for f64 {
    #[inline(always)]
    fn read(r: &mut Reader<'_>, _: &mut Vec<u8>) -> Option<f64> {
        read_number(r).map(Number::as_f64)
    }
}

macro_rules! int_elem {
    ($t:ty, $accept:expr) => {
        impl Elem for $t {
            #[inline]
            fn read(r: &mut Reader<'_>, _: &mut Vec<u8>) -> Option<$t> {
                let n = read_number(r)?;
                let accept: fn(Number) -> bool = $accept;
                if !accept(n) {
                    return None;
                }
                <$t>::try_from(int_value(n)).ok()
            }
        }
    };
}

int_elem!(i32, Number::is_int);
int_elem!(i16, Number::is_int);
int_elem!(i8, Number::is_int);
int_elem!(u8, Number::is_int);
int_elem!(u16, Number::is_uint);
int_elem!(u32, Number::is_uint);
int_elem!(i64, Number::is_int64);

impl Elem for u64 {
    #[inline]
    fn read(r: &mut Reader<'_>, _: &mut Vec<u8>) -> Option<u64> {
        match read_number(r)? {
            n @ Number::U(u) if n.is_uint64() => Some(u),
            _ => None,
        }
    }
}

impl Elem for bool {
    fn read(r: &mut Reader<'_>, _: &mut Vec<u8>) -> Option<bool> {
        match r.peek() {
            b't' => r.parse_literal(b"true").ok().map(|_| true),
            b'f' => r.parse_literal(b"false").ok().map(|_| false),
            _ => None,
        }
    }
}

impl Elem for Vec<u8> {
    fn read(r: &mut Reader<'_>, scratch: &mut Vec<u8>) -> Option<Vec<u8>> {
        match r.peek() {
            b'"' => {
                let mut s = Vec::new();
                r.parse_string(&mut s).ok()?;
                Some(s)
            }
            b'{' => read_b64_object(r, scratch),
            _ => None,
        }
    }
}

/// `{"b64": "<standard base64>"}` (exactly one member), decoded.
fn read_b64_object(r: &mut Reader<'_>, scratch: &mut Vec<u8>) -> Option<Vec<u8>> {
    r.bump();
    r.skip_ws();
    r.member_name(scratch).ok()?;
    if scratch.as_slice() != b"b64" || r.peek() != b'"' {
        return None;
    }
    scratch.clear();
    r.parse_string(scratch).ok()?;
    if r.member_end().ok()? {
        return None;
    }
    base64::decode(scratch)
}

/// Whether the value at `r` is a `{"b64": "..."}` object (`IsValBase64Object`), without moving.
fn is_b64_object_ahead(r: &Reader<'_>) -> bool {
    let mut probe = *r;
    if probe.peek() != b'{' {
        return false;
    }
    probe.bump();
    probe.skip_ws();
    let mut scratch = Vec::new();
    if probe.member_name(&mut scratch).is_err()
        || scratch.as_slice() != b"b64"
        || probe.peek() != b'"'
    {
        return false;
    }
    scratch.clear();
    probe.parse_string(&mut scratch).is_ok() && matches!(probe.member_end(), Ok(false))
}

impl Shape {
    /// The sizes of the levels from `level` to the innermost, when all of them are known (the
    /// first list at each of these levels has closed).
    fn known_from(&self, level: usize) -> Option<&[usize]> {
        let dims = self.dims.get(level..self.rank?)?;
        (!dims.contains(&UNKNOWN)).then_some(dims)
    }
}

/// `FillTensorProto` for one JSON value at `level`, streaming. `depth` is the nesting depth of the
/// container holding the value.
fn fill<T: Elem>(
    r: &mut Reader<'_>,
    level: usize,
    depth: usize,
    shape: &mut Shape,
    out: &mut Vec<T>,
    scratch: &mut Vec<u8>,
) -> Option<()> {
    if let Some(dims) = shape.known_from(level) {
        // Never more than the bytes left could hold (each scalar takes at least two).
        let size = dims.iter().fold(1usize, |a, &d| a.saturating_mul(d));
        reserve(out, size.min(r.remaining() / 2 + 1))?;
        return fill_known(r, dims, out, scratch);
    }
    if r.peek() != b'[' {
        match shape.rank {
            None => {
                if shape.dims.len() != level {
                    return None;
                }
                shape.rank = Some(level);
            }
            Some(rank) if rank != level => return None,
            Some(_) => {}
        }
        return push(out, T::read(r, scratch)?);
    }
    match shape.rank {
        Some(rank) if level >= rank => return None,
        Some(_) => {}
        None => {
            if shape.dims.len() != level {
                return None;
            }
            shape.dims.push(UNKNOWN);
        }
    }
    if depth + 1 > MAX_DEPTH {
        return None;
    }
    r.bump();
    let mut count = 0usize;
    if !r.array_empty() {
        loop {
            if let Some(inner) = shape.known_from(level + 1) {
                // The first item told the shape of the others: the rest in one go.
                count += items(r, inner, out, scratch, true)?;
                break;
            }
            fill(r, level + 1, depth + 1, shape, out, scratch)?;
            count += 1;
            if !r.element_end().ok()? {
                break;
            }
        }
    }
    let dim = shape.dims.get_mut(level)?;
    if *dim == UNKNOWN {
        *dim = count;
    } else if *dim != count {
        return None;
    }
    if count == 0 && shape.rank.is_none() {
        shape.rank = Some(level + 1);
    }
    Some(())
}

/// [`fill`] for a value whose shape is already known: `dims` are the sizes of its levels (empty
/// for a scalar). The checks are the same (a list of exactly the known size at each level,
/// scalars exactly at the innermost), without the bookkeeping that discovers the shape. Depth
/// needs no check: lists this deep were accepted when the shape was discovered.
fn fill_known<T: Elem>(
    r: &mut Reader<'_>,
    dims: &[usize],
    out: &mut Vec<T>,
    scratch: &mut Vec<u8>,
) -> Option<()> {
    let Some((&n, inner)) = dims.split_first() else {
        return scalar(r, out, scratch);
    };
    if !open_list(r)? {
        return (n == 0).then_some(());
    }
    (items(r, inner, out, scratch, false)? == n).then_some(())
}

/// The items of a list from the start of one (whitespace skipped) to the closing ']'
/// (consumed), each of the known shape `inner`; returns how many there were. Separators as
/// `element_end`. With `may_split`, a long list may be decoded on two threads (same result).
fn items<T: Elem>(
    r: &mut Reader<'_>,
    inner: &[usize],
    out: &mut Vec<T>,
    scratch: &mut Vec<u8>,
    may_split: bool,
) -> Option<usize> {
    if may_split && split::worth_trying(r) {
        return split::items(r, inner, out, scratch);
    }
    items_with(r, inner, out, scratch, |_, _| Some(Next::Item))
}

/// What [`items_with`] does next, as its `before` hook decides.
pub(crate) enum Next {
    /// Read the item at the reader.
    Item,
    /// The hook read this many more items and left the reader after the list's ']'.
    Done(usize),
}

/// [`items`], calling `before` before each item; it stops the loop with `None` or `Next::Done`.
#[inline(always)]
pub(crate) fn items_with<'a, T: Elem>(
    r: &mut Reader<'a>,
    inner: &[usize],
    out: &mut Vec<T>,
    scratch: &mut Vec<u8>,
    mut before: impl FnMut(&mut Reader<'a>, &mut Vec<T>) -> Option<Next>,
) -> Option<usize> {
    let mut count = 0;
    loop {
        if let Next::Done(more) = before(r, out)? {
            return Some(count + more);
        }
        match inner {
            [] => scalar(r, out, scratch)?,
            // Lists of scalars (an image's pixels): inline, they are short.
            [n] => scalars(r, *n, out, scratch)?,
            _ => fill_known(r, inner, out, scratch)?,
        }
        count += 1;
        if !r.element_end().ok()? {
            return Some(count);
        }
    }
}

/// A list of exactly `n` scalars at `r`.
#[inline(always)]
fn scalars<T: Elem>(
    r: &mut Reader<'_>,
    n: usize,
    out: &mut Vec<T>,
    scratch: &mut Vec<u8>,
) -> Option<()> {
    if !open_list(r)? {
        return (n == 0).then_some(());
    }
    if n == 0 {
        // A list that should be empty is not (`[1]`, or `[,` which the loop would not read).
        return None;
    }
    for i in 1..=n {
        scalar(r, out, scratch)?;
        // ',' after all but the last, ']' after the last.
        if r.element_end().ok()? != (i < n) {
            return None;
        }
    }
    Some(())
}

/// One scalar at `r`, appended to `out` (a list is not one: no `Elem::read` accepts a '[').
#[inline(always)]
fn scalar<T: Elem>(r: &mut Reader<'_>, out: &mut Vec<T>, scratch: &mut Vec<u8>) -> Option<()> {
    push(out, T::read(r, scratch)?)
}

/// Typed buffers are charged to the call as they grow, before they allocate (see
/// [`memory_budget::take_current`]): a body of short values decodes into many times its size (an
/// empty string, 3 bytes with its comma, into 24). A refused charge leaves the body to the
/// reference path, which charges its document as it builds it.
#[inline(always)]
fn push<T>(out: &mut Vec<T>, value: T) -> Option<()> {
    if out.len() == out.capacity() {
        grow(out)?;
    }
    out.push(value);
    Some(())
}

/// Doubles a full buffer, as `Vec::push` would.
#[cold]
fn grow<T>(out: &mut Vec<T>) -> Option<()> {
    reserve(out, out.capacity().max(4))
}

/// Room for `additional` more elements, charged first: what `Vec::reserve` adds, at least
/// doubling (which spares a buffer filled a little past an estimate another copy).
pub(crate) fn reserve<T>(out: &mut Vec<T>, additional: usize) -> Option<()> {
    let capacity = out.capacity();
    if additional > capacity - out.len() {
        let grown = out
            .len()
            .saturating_add(additional)
            .max(capacity.saturating_mul(2));
        memory_budget::take_current((grown - capacity).saturating_mul(size_of::<T>())).ok()?;
        out.reserve(additional);
    }
    Some(())
}

/// The '[' of a list at `r` and the whitespace after it; `Some(false)` when the list is empty
/// (its ']' consumed too), `None` when `r` is not at a list.
#[inline(always)]
fn open_list(r: &mut Reader<'_>) -> Option<bool> {
    if r.peek() != b'[' {
        return None;
    }
    r.bump();
    Some(!r.array_empty())
}

/// Appends the values at `level` to the typed buffer, whichever dtype it holds.
fn fill_data(
    data: &mut TensorData,
    r: &mut Reader<'_>,
    level: usize,
    depth: usize,
    shape: &mut Shape,
    scratch: &mut Vec<u8>,
) -> Option<()> {
    oxserve_core::for_each_data!(data, v => fill(r, level, depth, shape, v, scratch))
}

/// [`items`] into the typed buffer, whichever dtype it holds.
fn items_data(
    data: &mut TensorData,
    r: &mut Reader<'_>,
    inner: &[usize],
    scratch: &mut Vec<u8>,
) -> Option<usize> {
    oxserve_core::for_each_data!(data, v => items(r, inner, v, scratch, true))
}

/// An empty buffer for `dtype`; `None` for dtypes the JSON path does not decode.
fn empty_data(dtype: DType) -> Option<TensorData> {
    TensorData::with_capacity(dtype, 0).ok()
}

/// After the first instance, reserve room for the others, guessing from the bytes it took (never
/// more elements than half the remaining bytes, each element taking at least two).
fn reserve_for_rest(
    accs: &mut [TensorData],
    first_bytes: usize,
    remaining_bytes: usize,
) -> Option<()> {
    let instances_left = remaining_bytes / first_bytes.max(1) + 1;
    for acc in accs {
        let wanted = acc
            .len()
            .saturating_mul(instances_left)
            .min(remaining_bytes / 2 + 1);
        oxserve_core::for_each_data!(acc, v => reserve(v, wanted)?);
    }
    Some(())
}

/// The "instances" value, at `r` (the fast path's `FillTensorMapFromInstancesList`).
fn decode_row(r: &mut Reader<'_>, inputs: &[(String, DType)]) -> Option<Vec<(String, Tensor)>> {
    if r.peek() != b'[' || inputs.iter().any(|(name, _)| name == "b64") {
        return None;
    }
    let mut scratch = Vec::new();
    let mut accs = inputs
        .iter()
        .map(|(_, dtype)| empty_data(*dtype))
        .collect::<Option<Vec<_>>>()?;
    let mut shapes: Vec<Shape> = inputs
        .iter()
        .map(|_| Shape {
            rank: None,
            dims: vec![UNKNOWN],
        })
        .collect();
    r.bump();
    if r.array_empty() {
        return None;
    }
    let objects = r.peek() == b'{' && !is_b64_object_ahead(r);
    if !objects && inputs.len() != 1 {
        return None;
    }
    let mut count = 0usize;
    let mut seen = vec![false; inputs.len()];
    loop {
        if let (false, 1.., Some(inner)) = (objects, count, shapes[0].known_from(1)) {
            // The first instance told the shape of the others: the rest in one go.
            count += items_data(&mut accs[0], r, inner, &mut scratch)?;
            break;
        }
        let start = r.pos();
        if objects {
            if r.peek() != b'{' {
                return None;
            }
            r.bump();
            seen.iter_mut().for_each(|s| *s = false);
            if r.object_empty() {
                return None;
            }
            loop {
                r.member_name(&mut scratch).ok()?;
                let idx = inputs
                    .iter()
                    .position(|(name, _)| name.as_bytes() == scratch.as_slice())?;
                if std::mem::replace(&mut seen[idx], true) {
                    return None;
                }
                fill_data(&mut accs[idx], r, 1, 3, &mut shapes[idx], &mut scratch)?;
                if !r.member_end().ok()? {
                    break;
                }
            }
            if seen.iter().any(|s| !s) {
                return None;
            }
        } else {
            fill_data(&mut accs[0], r, 1, 2, &mut shapes[0], &mut scratch)?;
        }
        count += 1;
        if count == 1 {
            let remaining = r.remaining();
            reserve_for_rest(&mut accs, r.pos() - start, remaining)?;
        }
        if !r.element_end().ok()? {
            break;
        }
    }
    let mut tensors = Vec::with_capacity(inputs.len());
    for (((name, _), acc), shape) in inputs.iter().zip(accs).zip(shapes) {
        let rank = shape.rank?;
        let mut dims = Vec::with_capacity(rank);
        dims.push(count);
        dims.extend_from_slice(shape.dims.get(1..rank)?);
        tensors.push((name.clone(), Tensor::new(dims, acc).ok()?));
    }
    Some(tensors)
}

/// One tensor of the "inputs" value, at `r`: the value itself (`depth` 1) or a member (2).
fn column(r: &mut Reader<'_>, dtype: DType, depth: usize, scratch: &mut Vec<u8>) -> Option<Tensor> {
    let mut acc = empty_data(dtype)?;
    let mut shape = Shape {
        rank: None,
        dims: Vec::new(),
    };
    fill_data(&mut acc, r, 0, depth, &mut shape, scratch)?;
    let rank = shape.rank?;
    let dims = shape.dims.get(..rank)?.to_vec();
    Tensor::new(dims, acc).ok()
}

/// The "inputs" value, at `r` (the fast path's `FillTensorMapFromInputsMap`).
fn decode_columnar(
    r: &mut Reader<'_>,
    inputs: &[(String, DType)],
) -> Option<Vec<(String, Tensor)>> {
    let mut scratch = Vec::new();
    if r.peek() != b'{' || is_b64_object_ahead(r) {
        let [(name, dtype)] = inputs else {
            return None;
        };
        return Some(vec![(name.clone(), column(r, *dtype, 1, &mut scratch)?)]);
    }
    let mut found: Vec<Option<Tensor>> = inputs.iter().map(|_| None).collect();
    r.bump();
    if !r.object_empty() {
        loop {
            r.member_name(&mut scratch).ok()?;
            match inputs
                .iter()
                .position(|(name, _)| name.as_bytes() == scratch.as_slice())
            {
                Some(idx) if found[idx].is_none() => {
                    found[idx] = Some(column(r, inputs[idx].1, 2, &mut scratch)?);
                }
                // FindMember() takes the first member of a name; others are not looked at.
                _ => r.skip_value(2, &mut scratch).ok()?,
            }
            if !r.member_end().ok()? {
                break;
            }
        }
    }
    inputs
        .iter()
        .zip(found)
        .map(|((name, _), t)| Some((name.clone(), t?)))
        .collect()
}

fn decode(
    format: Format,
    r: &mut Reader<'_>,
    inputs: &[(String, DType)],
) -> Option<Vec<(String, Tensor)>> {
    match format {
        Format::Row => decode_row(r, inputs),
        Format::Columnar => decode_columnar(r, inputs),
    }
}

pub(crate) fn parse_fast(body: &[u8], lookup: &mut Lookup<'_>) -> Fast {
    match parse_fast_inner(body, lookup) {
        Some(result) => result,
        None => Fast::Fallback,
    }
}

fn parse_fast_inner(body: &[u8], lookup: &mut Lookup<'_>) -> Option<Fast> {
    let mut r = Reader::new(body);
    r.start().ok()?;
    if r.peek() != b'{' {
        return None;
    }
    r.bump();
    let mut key = Vec::new();
    let mut scratch = Vec::new();
    let mut signature_seen = false;
    let mut signature = Vec::new();
    let mut payload: Option<(Format, usize)> = None;
    // The signature name the tensors were decoded with, and the tensors.
    let mut decoded: Option<(Vec<u8>, Named)> = None;
    if !r.object_empty() {
        loop {
            r.member_name(&mut key).ok()?;
            let format = match key.as_slice() {
                b"instances" => Some(Format::Row),
                b"inputs" => Some(Format::Columnar),
                _ => None,
            };
            if key.as_slice() == b"signature_name" && !signature_seen {
                signature_seen = true;
                if r.peek() != b'"' {
                    return None;
                }
                r.parse_string(&mut signature).ok()?;
            } else if let Some(format) = format {
                match payload {
                    // A second "instances" when "inputs" was there, or the reverse: an error.
                    Some((seen, _)) if seen != format => return None,
                    Some(_) => r.skip_value(1, &mut scratch).ok()?,
                    None => {
                        payload = Some((format, r.pos()));
                        // Until "signature_name" has been seen, decode speculatively with "".
                        match lookup(&signature) {
                            Ok(inputs) if !inputs.is_empty() => {
                                let tensors = decode(format, &mut r, &inputs)?;
                                decoded = Some((signature.clone(), tensors));
                            }
                            _ => r.skip_value(1, &mut scratch).ok()?,
                        }
                    }
                }
            } else {
                r.skip_value(1, &mut scratch).ok()?;
            }
            if !r.member_end().ok()? {
                break;
            }
        }
    }
    r.finish().ok()?;
    let (format, pos) = payload?;
    let signature_name = String::from_utf8_lossy(&signature).into_owned();
    if let Some((used, tensors)) = decoded {
        if used == signature {
            return Some(Fast::Done(PredictRequestJson {
                signature_name,
                format,
                inputs: tensors,
            }));
        }
    }
    let inputs = match lookup(&signature) {
        Ok(inputs) => inputs,
        Err(e) => return Some(Fast::Error(e)),
    };
    if inputs.is_empty() {
        return Some(Fast::Error(empty_map_error(&signature)));
    }
    let mut again = Reader::at(body, pos);
    let tensors = decode(format, &mut again, &inputs)?;
    Some(Fast::Done(PredictRequestJson {
        signature_name,
        format,
        inputs: tensors,
    }))
}
