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

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use oxserve_core::{DType, Error, Result, Signature, Tensor, TensorSpec};

use super::dom::Number;
use super::split;

mod fast;
mod reference;

pub(crate) use fast::{items_with, parse_fast, reserve, Elem, Fast, Next};
pub(crate) use reference::parse_reference;

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
pub fn parse_predict_request<F, M>(body: &[u8], signature_inputs: F) -> Result<PredictRequestJson>
where
    F: FnMut(&str) -> Result<M>,
    M: SignatureInputs,
{
    with_input_dtypes(signature_inputs, |lookup| match parse_fast(body, lookup) {
        Fast::Done(request) => Ok(request),
        Fast::Error(e) => Err(e),
        Fast::Fallback => parse_reference(body, lookup),
    })
}

/// [`parse_predict_request`] by the reference path alone, for the fuzz target that checks that
/// both paths agree on every body.
#[cfg(fuzzing)]
pub fn parse_predict_request_by_reference<F, M>(
    body: &[u8],
    signature_inputs: F,
) -> Result<PredictRequestJson>
where
    F: FnMut(&str) -> Result<M>,
    M: SignatureInputs,
{
    with_input_dtypes(signature_inputs, |lookup| parse_reference(body, lookup))
}

/// Runs `parse` with the signature lookup both paths take: a signature name as written in the
/// request to its inputs' aliases and dtypes.
fn with_input_dtypes<F, M>(
    mut signature_inputs: F,
    parse: impl FnOnce(&mut Lookup) -> Result<PredictRequestJson>,
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
    parse(&mut lookup)
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

/// A number that passed an integer check, as the `i64` both paths narrow to the input's type.
#[inline]
fn int_value(n: Number) -> i64 {
    match n {
        Number::U(u) => u as i64,
        Number::I(i) => i,
        Number::D(d) => d as i64,
    }
}
