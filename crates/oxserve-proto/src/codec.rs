//! The gRPC codec of the generated services: prost's, except for the status of a request that
//! does not parse, and the speed of a PredictResponse's `float_val`s.
//!
//! gRPC (C-core, which TF Serving runs on, and tonic alike) answers a request message it cannot
//! parse with INTERNAL; TF Serving's message is even empty. That reads as a server fault to
//! clients, retry policies and error-rate alerts, while the fault is the client's: a server
//! decoding a request answers INVALID_ARGUMENT, with prost's description of where the bytes
//! went wrong. A client decoding a response keeps INTERNAL (the server is then at fault).
//!
//! What a request message decodes into can be many times its wire size (an empty string of a
//! `repeated bytes` is 2 bytes on the wire and a 32-byte `Bytes` in a `Vec`; a 2 GiB message could
//! take tens of GB). A server that runs a call inside [`charge_decodes`] has each request message
//! charged, before prost decodes it, with [`crate::footprint::decoded_bound`], and refused with
//! the charge's status when there is no room.
//!
//! TF Serving answers Predict with float outputs in `float_val` (unless
//! `--enable_serialization_as_tensor_content`); prost writes a packed float field value by value,
//! at about 6 ns a float, 0.3 ms for one 128x128x3 image. [`encode_predict_response`] writes the
//! same bytes with the floats copied at once.

use std::any::Any;
use std::future::Future;
use std::marker::PhantomData;
use std::sync::Arc;

use bytes::{Buf, BufMut};
use prost::encoding::{encode_key, encode_varint, encoded_len_varint, key_len, WireType};
use prost::{Message, Name};
use tonic::codec::{BufferSettings, Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::{Code, Status};
use tonic_prost::{ProstCodec, ProstDecoder};

use crate::tensorflow::serving::PredictResponse;
use crate::tensorflow::TensorProto;

/// Charges the bytes a request message will decode into at most, or refuses them.
pub type DecodeCharge = Arc<dyn Fn(usize) -> Result<(), Status> + Send + Sync>;

tokio::task_local! {
    static DECODE_CHARGE: DecodeCharge;
}

/// Runs `call`, a server's handling of one call, with the request messages it decodes charged to
/// `charge` first.
pub async fn charge_decodes<F: Future>(charge: DecodeCharge, call: F) -> F::Output {
    DECODE_CHARGE.scope(charge, call).await
}

/// [`ProstCodec`] with client-error statuses for requests that do not parse.
#[derive(Debug, Clone)]
pub struct ServingCodec<T, U> {
    _types: PhantomData<(T, U)>,
}

impl<T, U> Default for ServingCodec<T, U> {
    fn default() -> Self {
        ServingCodec {
            _types: PhantomData,
        }
    }
}

impl<T, U> Codec for ServingCodec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Name + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ServingEncoder<T>;
    type Decoder = ServingDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ServingEncoder { _type: PhantomData }
    }

    fn decoder(&mut self) -> Self::Decoder {
        ServingDecoder {
            inner: ProstCodec::<T, U>::default().decoder(),
        }
    }
}

/// Encodes `T` as prost does; a PredictResponse faster (see the module documentation).
#[derive(Debug)]
pub struct ServingEncoder<T> {
    _type: PhantomData<T>,
}

impl<T: Message + 'static> Encoder for ServingEncoder<T> {
    type Item = T;
    type Error = Status;

    fn encode(&mut self, mut item: T, buf: &mut EncodeBuf<'_>) -> Result<(), Status> {
        if let Some(response) = (&mut item as &mut dyn Any).downcast_mut::<PredictResponse>() {
            buf.reserve(response.encoded_len());
            encode_predict_response(response, buf);
            return Ok(());
        }
        // An EncodeBuf grows as needed: encoding cannot run out of room.
        item.encode(buf)
            .map_err(|err| Status::internal(format!("encoding the response: {err}")))
    }
}

/// The bytes prost writes for a packed `float_val` (field 5) holding `values`, less the values.
fn float_val_header_len(values: &[f32]) -> usize {
    if values.is_empty() {
        return 0;
    }
    key_len(5) + encoded_len_varint(4 * values.len() as u64)
}

/// Whether `tensor` (its `float_val` taken out), whose encoding is `len` bytes, has only fields
/// before `float_val` (tags 1 to 4): then `float_val` appended at the end is where prost puts it.
fn only_fields_before_float_val(tensor: &TensorProto, len: usize) -> bool {
    let head = TensorProto {
        dtype: tensor.dtype,
        tensor_shape: tensor.tensor_shape.clone(),
        version_number: tensor.version_number,
        tensor_content: tensor.tensor_content.clone(),
        ..TensorProto::default()
    };
    head.encoded_len() == len
}

/// Writes exactly the bytes of `response.encode(buf)`, copying each output's `float_val` at once
/// (the outputs' floats are taken out: the response is spent).
pub fn encode_predict_response(response: &mut PredictResponse, buf: &mut impl BufMut) {
    // Field 1, `map<string, TensorProto> outputs`, as prost's `hash_map::encode` writes it: one
    // entry per pair, in the map's order, the key and value left out where they are default.
    for (key, tensor) in response.outputs.iter_mut() {
        let floats = std::mem::take(&mut tensor.float_val);
        let rest_len = tensor.encoded_len();
        if !only_fields_before_float_val(tensor, rest_len) {
            tensor.float_val = floats;
            let entry = PredictResponse {
                outputs: [(key.clone(), std::mem::take(tensor))].into(),
                model_spec: None,
            };
            entry.encode_raw(buf);
            continue;
        }
        let skip_value = floats.is_empty() && *tensor == TensorProto::default();
        let tensor_len = rest_len + float_val_header_len(&floats) + 4 * floats.len();
        let key_bytes = if key.is_empty() {
            0
        } else {
            prost::encoding::string::encoded_len(1, key)
        };
        let value_bytes = if skip_value {
            0
        } else {
            key_len(2) + encoded_len_varint(tensor_len as u64) + tensor_len
        };
        encode_key(1, WireType::LengthDelimited, buf);
        encode_varint((key_bytes + value_bytes) as u64, buf);
        if !key.is_empty() {
            prost::encoding::string::encode(1, key, buf);
        }
        if skip_value {
            continue;
        }
        encode_key(2, WireType::LengthDelimited, buf);
        encode_varint(tensor_len as u64, buf);
        tensor.encode_raw(buf);
        if !floats.is_empty() {
            encode_key(5, WireType::LengthDelimited, buf);
            encode_varint(4 * floats.len() as u64, buf);
            put_f32s_le(&floats, buf);
        }
    }
    if let Some(spec) = &response.model_spec {
        prost::encoding::message::encode(2, spec, buf);
    }
}

/// The floats as little-endian bytes, in one copy where the machine is little-endian.
fn put_f32s_le(values: &[f32], buf: &mut impl BufMut) {
    if cfg!(target_endian = "little") {
        buf.put_slice(bytemuck::cast_slice(values));
    } else {
        for &value in values {
            buf.put_f32_le(value);
        }
    }
}

/// Decodes `U` as prost does; see the module documentation for its errors.
#[derive(Debug)]
pub struct ServingDecoder<U> {
    inner: ProstDecoder<U>,
}

impl<U: Message + Name + Default> Decoder for ServingDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        // A DecodeBuf holds the whole message in one chunk.
        let charged = DECODE_CHARGE
            .try_with(|charge| charge(crate::footprint::decoded_bound::<U>(buf.chunk())));
        if let Ok(Err(refused)) = charged {
            return Err(refused);
        }
        self.inner.decode(buf).map_err(|status| {
            // Every RPC of TF Serving's services takes a message named `...Request`.
            if status.code() == Code::Internal && U::NAME.ends_with("Request") {
                Status::invalid_argument(status.message())
            } else {
                status
            }
        })
    }

    fn buffer_settings(&self) -> BufferSettings {
        self.inner.buffer_settings()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tensorflow::serving::ModelSpec;
    use crate::tensorflow::{tensor_shape_proto, DataType, TensorShapeProto};

    fn floats(n: usize) -> TensorProto {
        TensorProto {
            dtype: DataType::DtFloat as i32,
            tensor_shape: Some(TensorShapeProto {
                dim: vec![tensor_shape_proto::Dim {
                    size: n as i64,
                    name: String::new(),
                }],
                unknown_rank: false,
            }),
            float_val: (0..n).map(|i| i as f32 * 0.37 - 5.0).collect(),
            ..TensorProto::default()
        }
    }

    /// Our bytes are prost's, for whatever the response holds.
    fn assert_same_bytes(mut response: PredictResponse) {
        let expected = response.encode_to_vec();
        let mut got = Vec::new();
        encode_predict_response(&mut response, &mut got);
        assert_eq!(got, expected);
    }

    #[test]
    fn predict_responses_encode_as_prost_encodes_them() {
        let spec = Some(ModelSpec {
            name: "m".into(),
            signature_name: "serving_default".into(),
            version_choice: None,
        });
        // Lengths whose varints take 1, 2, 3 and 4 bytes.
        for n in [0, 1, 3, 31, 32, 4_095, 4_096, 49_152, 600_000] {
            for model_spec in [None, spec.clone()] {
                assert_same_bytes(PredictResponse {
                    model_spec,
                    outputs: [("y".to_string(), floats(n))].into(),
                });
            }
        }
        let mut mixed = floats(5);
        mixed.double_val = vec![1.0, 2.0];
        let strings = TensorProto {
            dtype: DataType::DtString as i32,
            string_val: vec!["a".into(), "".into()],
            ..TensorProto::default()
        };
        let content = TensorProto {
            dtype: DataType::DtFloat as i32,
            tensor_content: vec![0u8, 0, 128, 63].into(),
            ..TensorProto::default()
        };
        let no_dtype = TensorProto {
            float_val: vec![1.5],
            ..TensorProto::default()
        };
        assert_same_bytes(PredictResponse {
            model_spec: spec,
            outputs: [
                ("a".to_string(), floats(10)),
                (String::new(), floats(2)),
                ("mixed".to_string(), mixed),
                ("strings".to_string(), strings),
                ("content".to_string(), content),
                ("empty".to_string(), TensorProto::default()),
                (String::new(), TensorProto::default()),
                ("no_dtype".to_string(), no_dtype),
            ]
            .into_iter()
            .collect(),
        });
    }
}
