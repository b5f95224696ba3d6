//! Predict requests: `FillPredictRequestFromJson` (util/json_tensor.cc).
//!
//! Two implementations share the rapidjson-exact reader:
//! - the fast path streams the body once, decoding numbers straight into the typed buffer of each
//!   input while checking the shape the way TF Serving does (the shape is that of the first
//!   element at every level; every list at a level must have that size; scalars only at the
//!   innermost level). It handles every valid request that a client would plausibly send and gives
//!   up (`None`) at the first irregularity of any kind;
//! - the reference path parses the whole document and replays TF Serving's checks in their exact
//!   order on it, so that whenever the fast path gives up, the result (an error, nearly always) is
//!   TF Serving's, message for message. Tests check that both agree on every input the fast path
//!   accepts.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use bytes::Bytes;
use oxserve_core::{
    bf16, f16, narrow, DType, Error, Result, Signature, Tensor, TensorData, TensorSpec,
};

use super::base64;
use super::dom::{self, Number, Value};
use super::reader::{Reader, MAX_DEPTH};
use super::split;
use crate::memory_budget;

/// Which of TF Serving's two request layouts a predict request used; the response uses the same.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// `{"instances": [...]}` in, `{"predictions": [...]}` out.
    Row,
    /// `{"inputs": ...}` in, `{"outputs": ...}` out.
    Columnar,
}

/// A decoded predict request.
#[derive(Clone, Debug, PartialEq)]
pub struct PredictRequestJson {
    /// The request's `signature_name`, "" when absent.
    pub signature_name: String,
    pub format: Format,
    /// Input tensors by alias, sorted by alias. Normally one per signature input; a row request
    /// whose first instance is a `{"b64": ...}` object sent to a multi-input signature yields only
    /// the first input, as TF Serving does (the caller's signature check then reports the rest).
    pub inputs: Vec<(String, Tensor)>,
}

/// What the signature lookup of [`parse_predict_request`] may return: a [`Signature`], its input
/// map, or a reference or `Arc` to either.
pub trait SignatureInputs {
    fn input_specs(&self) -> &BTreeMap<String, TensorSpec>;
}

impl SignatureInputs for Signature {
    fn input_specs(&self) -> &BTreeMap<String, TensorSpec> {
        &self.inputs
    }
}

impl SignatureInputs for BTreeMap<String, TensorSpec> {
    fn input_specs(&self) -> &BTreeMap<String, TensorSpec> {
        self
    }
}

impl<T: SignatureInputs + ?Sized> SignatureInputs for &T {
    fn input_specs(&self) -> &BTreeMap<String, TensorSpec> {
        (**self).input_specs()
    }
}

impl<T: SignatureInputs + ?Sized> SignatureInputs for Arc<T> {
    fn input_specs(&self) -> &BTreeMap<String, TensorSpec> {
        (**self).input_specs()
    }
}

/// Parses a predict request body exactly as TF Serving's REST API does.
///
/// `signature_inputs` maps a signature name as written in the request ("" when the request has
/// none) to that signature's inputs; their dtypes drive decoding. Its error is returned as is (TF
/// Serving: `GetInfoMap`), after syntax errors and a non-string `signature_name`, before any other.
/// It may be called more than once: when the tensors come before `"signature_name"` in the body,
/// they are decoded speculatively with the signature for "" and decoded again if the request turns
/// out to name another one.
pub fn parse_predict_request<F, M>(
    body: &[u8],
    mut signature_inputs: F,
) -> Result<PredictRequestJson>
where
    F: FnMut(&str) -> Result<M>,
    M: SignatureInputs,
{
    let mut lookup = |name: &[u8]| -> Result<Vec<(String, DType)>> {
        let name = String::from_utf8_lossy(name);
        let map = signature_inputs(&name)?;
        Ok(map
            .input_specs()
            .iter()
            .map(|(alias, spec)| (alias.clone(), spec.dtype))
            .collect())
    };
    match parse_fast(body, &mut lookup) {
        Fast::Done(request) => Ok(request),
        Fast::Error(e) => Err(e),
        Fast::Fallback => parse_reference(body, &mut lookup),
    }
}

/// [`parse_predict_request`] for a body held in `Bytes` (the REST server's): a long list in it
/// may be decoded on two threads (`split`: the helper thread holds the body), with the same
/// result.
pub fn parse_shared_predict_request<F, M>(
    body: &Bytes,
    signature_inputs: F,
) -> Result<PredictRequestJson>
where
    F: FnMut(&str) -> Result<M>,
    M: SignatureInputs,
{
    split::with_shared_body(body, || parse_predict_request(body, signature_inputs))
}

/// Tensors by alias.
type Named = Vec<(String, Tensor)>;

type Lookup<'a> = dyn FnMut(&[u8]) -> Result<Vec<(String, DType)>> + 'a;

fn empty_map_error(signature: &[u8]) -> Error {
    let name = if signature.is_empty() {
        "DEFAULT".into()
    } else {
        String::from_utf8_lossy(signature)
    };
    Error::invalid_argument(format!("Failed to get input map for signature: {name}"))
}

// ---------------------------------------------------------------------------------------------
// Fast path
// ---------------------------------------------------------------------------------------------

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
pub(super) trait Elem: Sized + Send + 'static {
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

fn int_value(n: Number) -> i64 {
    match n {
        Number::U(u) => u as i64,
        Number::I(i) => i,
        Number::D(d) => d as i64,
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

/// What `parse_f32_swar` leaves: values outside its window or refused, and texts it does not
/// read (the SWAR routine would not read them either).
#[inline(never)]
fn read_f32_general(r: &mut Reader<'_>) -> Option<f32> {
    let n = read_number_general(r)?;
    dom::is_lossless_f32(n).then(|| n.as_f64() as f32)
}

impl Elem for f16 {
    fn read(r: &mut Reader<'_>, _: &mut Vec<u8>) -> Option<f16> {
        let n = read_number(r)?;
        dom::is_lossless_f16(n).then(|| narrow::f16_from_f64(n.as_f64()))
    }
}

impl Elem for bf16 {
    fn read(r: &mut Reader<'_>, _: &mut Vec<u8>) -> Option<bf16> {
        let n = read_number(r)?;
        dom::is_lossless_bf16(n).then(|| narrow::bf16_from_f64(n.as_f64()))
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
        let n = read_number(r)?;
        dom::is_lossless_f64(n).then(|| n.as_f64())
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
pub(super) enum Next {
    /// Read the item at the reader.
    Item,
    /// The hook read this many more items and left the reader after the list's ']'.
    Done(usize),
}

/// [`items`], calling `before` before each item; it stops the loop with `None` or `Next::Done`.
#[inline(always)]
pub(super) fn items_with<'a, T: Elem>(
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
pub(super) fn reserve<T>(out: &mut Vec<T>, additional: usize) -> Option<()> {
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
        let mut acc = empty_data(*dtype)?;
        let mut shape = Shape {
            rank: None,
            dims: Vec::new(),
        };
        fill_data(&mut acc, r, 0, 1, &mut shape, &mut scratch)?;
        let rank = shape.rank?;
        let dims = shape.dims.get(..rank)?.to_vec();
        return Some(vec![(name.clone(), Tensor::new(dims, acc).ok()?)]);
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
                    let mut acc = empty_data(inputs[idx].1)?;
                    let mut shape = Shape {
                        rank: None,
                        dims: Vec::new(),
                    };
                    fill_data(&mut acc, r, 0, 2, &mut shape, &mut scratch)?;
                    let rank = shape.rank?;
                    let dims = shape.dims.get(..rank)?.to_vec();
                    found[idx] = Some(Tensor::new(dims, acc).ok()?);
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

// ---------------------------------------------------------------------------------------------
// Reference path: TF Serving's code, step by step, on a parsed document.
// ---------------------------------------------------------------------------------------------

/// `GetDenseTensorShape`: the sizes along the first element of every level.
fn dense_shape(mut v: &Value) -> Vec<usize> {
    let mut shape = Vec::new();
    while let Value::Array(elements) = v {
        shape.push(elements.len());
        match elements.first() {
            Some(first) => v = first,
            None => break,
        }
    }
    shape
}

/// `ShapeToString`: "[2,3]".
fn shape_to_string(shape: &[usize]) -> String {
    let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    format!("[{}]", dims.join(","))
}

/// `JsonDecodeBase64Object`.
fn decode_base64_object(v: &Value) -> Result<Vec<u8>> {
    let Some(text) = v.base64_payload() else {
        return Err(dom::base64_format_error(v));
    };
    base64::decode(text).ok_or_else(|| Error::invalid_argument("Unable to base64 decode"))
}

/// `AddValueToTensor`, with typed buffers instead of a TensorProto. Integer types narrower than
/// 32 bits are range-checked (TF Serving accepts any int32 and wraps it when converting the
/// TensorProto); uint16 is accepted (TF Serving has no case for it and fails with
/// "Conversion of JSON Value: ... to type: uint16").
fn add_value_to_tensor(v: &Value, dtype: DType, data: &mut Option<TensorData>) -> Result<()> {
    let unimplemented = || {
        Error::unimplemented(format!(
            "Conversion of JSON Value: {} to type: {}",
            dom::json_value_to_string(v),
            dtype.name()
        ))
    };
    let Some(data) = data.as_mut() else {
        return Err(unimplemented());
    };
    let number = match v {
        Value::Number(n) => Some(*n),
        _ => None,
    };
    let type_error = || dom::type_error(v, dtype);
    macro_rules! int {
        ($vec:expr, $t:ty, $accept:expr) => {{
            let n = number.ok_or_else(type_error)?;
            let accept: fn(Number) -> bool = $accept;
            if !accept(n) {
                return Err(type_error());
            }
            $vec.push(<$t>::try_from(int_value(n)).map_err(|_| type_error())?);
        }};
    }
    match data {
        TensorData::Float(vec) => {
            let n = number.ok_or_else(type_error)?;
            if !dom::is_lossless_f32(n) {
                return Err(dom::lossy_decimal_error(v, "float"));
            }
            vec.push(n.as_f64() as f32);
        }
        TensorData::Double(vec) => {
            let n = number.ok_or_else(type_error)?;
            if !dom::is_lossless_f64(n) {
                return Err(dom::lossy_decimal_error(v, "double"));
            }
            vec.push(n.as_f64());
        }
        TensorData::Half(vec) => {
            let n = number.ok_or_else(type_error)?;
            if !dom::is_lossless_f16(n) {
                return Err(dom::lossy_decimal_error(v, "half"));
            }
            vec.push(narrow::f16_from_f64(n.as_f64()));
        }
        TensorData::BFloat16(vec) => {
            let n = number.ok_or_else(type_error)?;
            if !dom::is_lossless_bf16(n) {
                return Err(dom::lossy_decimal_error(v, "bfloat16"));
            }
            vec.push(narrow::bf16_from_f64(n.as_f64()));
        }
        TensorData::Complex64(_) | TensorData::Complex128(_) => return Err(unimplemented()),
        TensorData::Int32(vec) => int!(vec, i32, Number::is_int),
        TensorData::Int16(vec) => int!(vec, i16, Number::is_int),
        TensorData::Int8(vec) => int!(vec, i8, Number::is_int),
        TensorData::UInt8(vec) => int!(vec, u8, Number::is_int),
        TensorData::UInt16(vec) => int!(vec, u16, Number::is_uint),
        TensorData::UInt32(vec) => int!(vec, u32, Number::is_uint),
        TensorData::Int64(vec) => int!(vec, i64, Number::is_int64),
        TensorData::UInt64(vec) => match number {
            Some(n @ Number::U(u)) if n.is_uint64() => vec.push(u),
            _ => return Err(type_error()),
        },
        TensorData::Bool(vec) => match v {
            Value::Bool(b) => vec.push(*b),
            _ => return Err(type_error()),
        },
        TensorData::String(vec) => match v {
            Value::String(s) => vec.push(s.clone()),
            _ => return Err(type_error()),
        },
    }
    Ok(())
}

/// `FillTensorProto`.
fn fill_tensor(
    v: &Value,
    level: usize,
    shape: &[usize],
    dtype: DType,
    data: &mut Option<TensorData>,
    count: &mut usize,
) -> Result<()> {
    let rank = shape.len();
    let Value::Array(elements) = v else {
        if level != rank {
            return Err(Error::invalid_argument(format!(
                "JSON Value: {} found at incorrect level: {} in the JSON DOM. Expected at level: {}",
                dom::json_value_to_string(v),
                level + 1,
                rank
            )));
        }
        if v.is_object() {
            if dtype != DType::String {
                return Err(dom::type_error(v, dtype));
            }
            let bytes = decode_base64_object(v)?;
            if let Some(TensorData::String(vec)) = data.as_mut() {
                vec.push(bytes);
            }
        } else {
            add_value_to_tensor(v, dtype, data)?;
        }
        *count += 1;
        return Ok(());
    };
    if level >= rank {
        return Err(Error::invalid_argument(format!(
            "Encountered list at unexpected level: {level} expected < {rank}"
        )));
    }
    if elements.len() != shape[level] {
        return Err(Error::invalid_argument(format!(
            "Encountered list at unexpected size: {} at level: {} expected size: {}",
            elements.len(),
            level,
            shape[level]
        )));
    }
    for e in elements {
        fill_tensor(e, level + 1, shape, dtype, data, count)?;
    }
    Ok(())
}

/// One tensor of a row request being assembled (`tensor_map`, `size_map`, `shape_map` entries).
struct RowTensor {
    dtype: DType,
    data: Option<TensorData>,
    size: Option<usize>,
    shape: Vec<usize>,
}

/// `AddInstanceItem`.
fn add_instance_item(
    item: &Value,
    name: &str,
    inputs: &[(String, DType)],
    tensors: &mut BTreeMap<String, RowTensor>,
) -> Result<()> {
    let Some((_, dtype)) = inputs.iter().find(|(n, _)| n == name) else {
        return Err(Error::invalid_argument(format!(
            "JSON object: does not have named input: {name}"
        )));
    };
    let t = tensors
        .entry(name.to_string())
        .or_insert_with(|| RowTensor {
            dtype: *dtype,
            data: TensorData::with_capacity(*dtype, 0).ok(),
            size: None,
            shape: Vec::new(),
        });
    let shape = dense_shape(item);
    let mut size = 0;
    fill_tensor(item, 0, &shape, t.dtype, &mut t.data, &mut size)?;
    match t.size {
        None => {
            t.size = Some(size);
            t.shape = shape;
        }
        Some(expected) if expected != size => {
            return Err(Error::invalid_argument(format!(
                "Expecting tensor size: {expected} but got: {size}"
            )));
        }
        Some(_) if t.shape != shape => {
            return Err(Error::invalid_argument(format!(
                "Expecting shape {} but got: {}",
                shape_to_string(&t.shape),
                shape_to_string(&shape)
            )));
        }
        Some(_) => {}
    }
    Ok(())
}

/// Builds a tensor the way `Tensor::FromProto` reads a TensorProto: values beyond the shape's
/// element count (only possible with duplicate keys in an instance) are ignored.
fn finish_tensor(shape: Vec<usize>, dtype: DType, data: Option<TensorData>) -> Result<Tensor> {
    let mut data = match data {
        Some(data) => data,
        None => TensorData::with_capacity(dtype, 0)?,
    };
    let n = oxserve_core::tensor::element_count(&shape)?;
    oxserve_core::for_each_data!(&mut data, v => v.truncate(n));
    Tensor::new(shape, data)
}

/// `FillTensorMapFromInstancesList`.
fn row_reference(elements: &[Value], inputs: &[(String, DType)]) -> Result<Vec<(String, Tensor)>> {
    let first = &elements[0];
    if !first.is_object() && inputs.len() > 1 {
        return Err(Error::invalid_argument(
            "instances is a plain list, but expecting list of objects as multiple input tensors \
             required as per tensorinfo_map",
        ));
    }
    let is_element_object = |v: &Value| v.is_object() && v.base64_payload().is_none();
    let elements_are_objects = is_element_object(first);
    let input_names: BTreeSet<&str> = inputs.iter().map(|(n, _)| n.as_str()).collect();
    let mut tensors: BTreeMap<String, RowTensor> = BTreeMap::new();
    for (i, elem) in elements.iter().enumerate() {
        if elements_are_objects {
            let Value::Object(members) = elem else {
                return Err(Error::invalid_argument(format!(
                    "Expecting object but got list at item {i} of input list"
                )));
            };
            if !is_element_object(elem) {
                return Err(Error::invalid_argument(format!(
                    "Expecting object but got list at item {i} of input list"
                )));
            }
            let mut keys: BTreeSet<String> = BTreeSet::new();
            for (key, value) in members {
                let name = String::from_utf8_lossy(key).into_owned();
                keys.insert(name.clone());
                add_instance_item(value, &name, inputs, &mut tensors).map_err(|e| {
                    Error::invalid_argument(format!(
                        "Failed to process element: {i} key: {name} of 'instances' list. Error: {}",
                        dom::status_to_string(&e)
                    ))
                })?;
            }
            if keys
                .iter()
                .map(String::as_str)
                .ne(input_names.iter().copied())
            {
                return Err(Error::invalid_argument(format!(
                    "Failed to process element: {i} of 'instances' list. JSON object: {} must only \
                     have keys: {}",
                    dom::json_value_to_string(elem),
                    input_names.iter().copied().collect::<Vec<_>>().join(",")
                )));
            }
        } else {
            if is_element_object(elem) {
                return Err(Error::invalid_argument(format!(
                    "Expecting value/list but got object at item {i} of input list"
                )));
            }
            let name = &inputs[0].0;
            add_instance_item(elem, name, inputs, &mut tensors).map_err(|e| {
                Error::invalid_argument(format!(
                    "Failed to process element: {i} of 'instances' list. Error: {}",
                    dom::status_to_string(&e)
                ))
            })?;
        }
    }
    let count = elements.len();
    tensors
        .into_iter()
        .map(|(name, t)| {
            let mut shape = Vec::with_capacity(t.shape.len() + 1);
            shape.push(count);
            shape.extend_from_slice(&t.shape);
            Ok((name, finish_tensor(shape, t.dtype, t.data)?))
        })
        .collect()
}

/// One columnar tensor.
fn columnar_tensor(v: &Value, dtype: DType) -> Result<Tensor> {
    let shape = dense_shape(v);
    let mut data = TensorData::with_capacity(dtype, 0).ok();
    let mut count = 0;
    fill_tensor(v, 0, &shape, dtype, &mut data, &mut count)?;
    finish_tensor(shape, dtype, data)
}

/// `FillTensorMapFromInputsMap`.
fn columnar_reference(v: &Value, inputs: &[(String, DType)]) -> Result<Vec<(String, Tensor)>> {
    if !v.is_object() || v.base64_payload().is_some() {
        if inputs.len() > 1 {
            return Err(Error::invalid_argument(
                "inputs is a plain value/list, but expecting an object as multiple input tensors \
                 required as per tensorinfo_map",
            ));
        }
        let (name, dtype) = &inputs[0];
        return Ok(vec![(name.clone(), columnar_tensor(v, *dtype)?)]);
    }
    inputs
        .iter()
        .map(|(name, dtype)| {
            let item = v.find_member(name.as_bytes()).ok_or_else(|| {
                Error::invalid_argument(format!("Missing named input: {name} in 'inputs' object."))
            })?;
            Ok((name.clone(), columnar_tensor(item, *dtype)?))
        })
        .collect()
}

/// `FillPredictRequestFromJson`, literally.
pub(crate) fn parse_reference(body: &[u8], lookup: &mut Lookup<'_>) -> Result<PredictRequestJson> {
    let doc = dom::parse_request_document(body)?;
    let signature = dom::signature_name(&doc)?;
    let inputs = lookup(&signature)?;
    if inputs.is_empty() {
        return Err(empty_map_error(&signature));
    }
    let signature_name = String::from_utf8_lossy(&signature).into_owned();
    let instances = doc.find_member(b"instances");
    let columns = doc.find_member(b"inputs");
    if let Some(instances) = instances {
        if columns.is_some() {
            return Err(dom::format_error(
                &doc,
                "Not formatted correctly expecting only one of 'inputs' or 'instances' keys to exist ",
            ));
        }
        let Value::Array(elements) = instances else {
            return Err(dom::format_error(
                &doc,
                "Excepting 'instances' to be an list/array",
            ));
        };
        if elements.is_empty() {
            return Err(dom::format_error(&doc, "No values in 'instances' array"));
        }
        let inputs = row_reference(elements, &inputs)?;
        return Ok(PredictRequestJson {
            signature_name,
            format: Format::Row,
            inputs,
        });
    }
    if let Some(columns) = columns {
        let inputs = columnar_reference(columns, &inputs)?;
        return Ok(PredictRequestJson {
            signature_name,
            format: Format::Columnar,
            inputs,
        });
    }
    Err(Error::invalid_argument(
        "Missing 'inputs' or 'instances' key",
    ))
}
