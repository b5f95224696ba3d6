//! The gRPC codec of the generated services: prost's, except for the status of a request that
//! does not parse.
//!
//! gRPC (C-core, which TF Serving runs on, and tonic alike) answers a request message it cannot
//! parse with INTERNAL; TF Serving's message is even empty. That reads as a server fault to
//! clients, retry policies and error-rate alerts, while the fault is the client's: a server
//! decoding a request answers INVALID_ARGUMENT, with prost's description of where the bytes
//! went wrong. A client decoding a response keeps INTERNAL (the server is then at fault).

use std::marker::PhantomData;

use prost::{Message, Name};
use tonic::codec::{BufferSettings, Codec, DecodeBuf, Decoder};
use tonic::{Code, Status};
use tonic_prost::{ProstCodec, ProstDecoder, ProstEncoder};

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
    type Encoder = ProstEncoder<T>;
    type Decoder = ServingDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstCodec::<T, U>::default().encoder()
    }

    fn decoder(&mut self) -> Self::Decoder {
        ServingDecoder {
            inner: ProstCodec::<T, U>::default().decoder(),
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
