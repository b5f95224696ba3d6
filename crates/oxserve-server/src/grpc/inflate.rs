//! Compressed gRPC messages (`grpc-encoding: gzip` or `deflate`), inflated under the call's
//! memory charge.
//!
//! tonic would inflate a compressed message into a buffer of its own, up to
//! `grpc.max_receive_message_length` (2 GiB by default, as in TF Serving), before any code of
//! ours sees it: a few MB of gzipped zeros would take GBs, and the memory budget could charge
//! them only once they were allocated. [`InflateLayer`] inflates those messages before tonic
//! does, in chunks that are each charged before they are allocated, and hands tonic the same
//! messages uncompressed (and the request without its `grpc-encoding`). Other encodings are left
//! to tonic, which refuses them.

use std::collections::VecDeque;
use std::io::Read;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::{BufMut, Bytes, BytesMut};
use flate2::read::{GzDecoder, ZlibDecoder};
use http_body::{Body, Frame, SizeHint};
use tower::{Layer, Service};

use crate::memory_budget::Charge;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A gRPC message's prefix: its compressed flag and its length (big-endian).
const PREFIX: usize = 5;

/// How much inflated data is allocated, and charged, at a time.
const CHUNK: usize = 64 * 1024;

const GRPC_ENCODING: &str = "grpc-encoding";

/// The encodings inflated here: gRPC's `deflate` is zlib's format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Encoding {
    Gzip,
    Deflate,
}

impl Encoding {
    fn of(request: &http::request::Parts) -> Option<Encoding> {
        let encoding = match request.headers.get(GRPC_ENCODING)?.as_bytes() {
            b"gzip" => Encoding::Gzip,
            b"deflate" => Encoding::Deflate,
            _ => return None,
        };
        super::is_grpc_call(request).then_some(encoding)
    }

    fn name(self) -> &'static str {
        match self {
            Encoding::Gzip => "gzip",
            Encoding::Deflate => "deflate",
        }
    }
}

/// Inflates the compressed messages of gRPC calls (see the module's comment). It sits inside
/// [`crate::memory_budget::MemoryBudgetLayer`], whose [`Charge`] it takes from the request.
#[derive(Clone, Debug)]
pub struct InflateLayer {
    /// `grpc.max_receive_message_length`: the most a message may inflate to.
    pub max_message: usize,
}

impl<S> Layer<S> for InflateLayer {
    type Service = Inflating<S>;

    fn layer(&self, inner: S) -> Inflating<S> {
        Inflating {
            inner,
            max_message: self.max_message,
        }
    }
}

/// The service [`InflateLayer`] makes.
#[derive(Clone, Debug)]
pub struct Inflating<S> {
    inner: S,
    max_message: usize,
}

impl<S, B> Service<http::Request<B>> for Inflating<S>
where
    S: Service<http::Request<InflatingBody<B>>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> S::Future {
        let (mut parts, inner) = request.into_parts();
        let inflate = Encoding::of(&parts).and_then(|encoding| {
            let charge = parts.extensions.get::<Charge>()?.clone();
            parts.headers.remove(GRPC_ENCODING);
            Some(Inflate::new(encoding, charge, self.max_message))
        });
        let body = InflatingBody { inner, inflate };
        self.inner.call(http::Request::from_parts(parts, body))
    }
}

/// A request body whose compressed messages come out inflated; any other body as it is.
pub struct InflatingBody<B> {
    inner: B,
    inflate: Option<Inflate>,
}

struct Inflate {
    encoding: Encoding,
    charge: Charge,
    max_message: usize,
    /// Bytes received and not yet handed on: a message's prefix, or a whole compressed message.
    received: BytesMut,
    /// Bytes of an uncompressed message still to pass through as they come.
    passing: usize,
    /// Set once the body stops making sense as gRPC messages: the rest passes as it is, for
    /// tonic to report.
    raw: bool,
    /// Frames ready to hand on.
    ready: VecDeque<Frame<Bytes>>,
}

impl Inflate {
    fn new(encoding: Encoding, charge: Charge, max_message: usize) -> Inflate {
        Inflate {
            encoding,
            charge,
            max_message,
            received: BytesMut::new(),
            passing: 0,
            raw: false,
            ready: VecDeque::new(),
        }
    }

    /// Moves what can be handed on from `received` to `ready`.
    fn advance(&mut self) -> Result<(), tonic::Status> {
        loop {
            if self.raw || self.passing > 0 {
                let n = if self.raw {
                    self.received.len()
                } else {
                    self.passing.min(self.received.len())
                };
                if n == 0 {
                    return Ok(());
                }
                self.passing -= n.min(self.passing);
                self.ready
                    .push_back(Frame::data(self.received.split_to(n).freeze()));
                continue;
            }
            if self.received.len() < PREFIX {
                return Ok(());
            }
            let compressed = self.received[0];
            let len = u32::from_be_bytes([
                self.received[1],
                self.received[2],
                self.received[3],
                self.received[4],
            ]) as usize;
            match compressed {
                // Uncompressed messages may come in a compressed call: passed as they arrive, so
                // that tonic checks their length before they are all received.
                0 => {
                    self.passing = PREFIX + len;
                }
                1 => {
                    if len > self.max_message {
                        // What tonic says of it (it checks the length as sent).
                        return Err(tonic::Status::out_of_range(format!(
                            "Error, decoded message length too large: found {len} bytes, the \
                             limit is: {} bytes",
                            self.max_message
                        )));
                    }
                    if self.received.len() < PREFIX + len {
                        // The message's bytes, charged as they arrive, wait here whole. Nothing
                        // is reserved for them ahead: the length is only the client's word.
                        return Ok(());
                    }
                    let message = self.received.split_to(PREFIX + len);
                    self.inflate(&message[PREFIX..])?;
                }
                // Not a gRPC message: tonic answers it.
                _ => self.raw = true,
            }
        }
    }

    /// Inflates one message into charged chunks, queued behind an uncompressed prefix.
    fn inflate(&mut self, compressed: &[u8]) -> Result<(), tonic::Status> {
        let mut reader: Box<dyn Read + '_> = match self.encoding {
            Encoding::Gzip => Box::new(GzDecoder::new(compressed)),
            Encoding::Deflate => Box::new(ZlibDecoder::new(compressed)),
        };
        let mut chunks = Vec::new();
        let mut total = 0usize;
        loop {
            let room = (self.max_message - total).saturating_add(1).min(CHUNK);
            self.charge.take(room)?;
            let mut chunk = Vec::with_capacity(room);
            (&mut reader)
                .take(room as u64)
                .read_to_end(&mut chunk)
                .map_err(|err| {
                    // The client's fault, as for a message that does not parse (`codec`).
                    tonic::Status::invalid_argument(format!(
                        "Failed to decompress the request message ({}): {err}",
                        self.encoding.name()
                    ))
                })?;
            let n = chunk.len();
            total += n;
            if total > self.max_message {
                return Err(too_large(self.max_message));
            }
            if n > 0 {
                chunks.push(Bytes::from(chunk));
            }
            if n < room {
                break;
            }
        }
        let mut prefix = BytesMut::with_capacity(PREFIX);
        prefix.put_u8(0);
        // A gRPC message's length has 32 bits: one that inflates past 4 GiB cannot be handed on.
        prefix.put_u32(u32::try_from(total).map_err(|_| too_large(self.max_message))?);
        self.ready.push_back(Frame::data(prefix.freeze()));
        self.ready.extend(chunks.into_iter().map(Frame::data));
        Ok(())
    }
}

/// tonic's answer to a message over `grpc.max_receive_message_length`, which a compressed one
/// gets too (its length is only known as far as it was inflated).
fn too_large(max: usize) -> tonic::Status {
    tonic::Status::out_of_range(format!(
        "Error, decompressed message length too large: over {max} bytes, the limit"
    ))
}

impl<B> Body for InflatingBody<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        let Some(inflate) = this.inflate.as_mut() else {
            return Pin::new(&mut this.inner).poll_frame(cx).map_err(Into::into);
        };
        loop {
            if let Some(frame) = inflate.ready.pop_front() {
                return Poll::Ready(Some(Ok(frame)));
            }
            match ready!(Pin::new(&mut this.inner).poll_frame(cx)) {
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => {
                        inflate.received.extend_from_slice(&data);
                        if let Err(status) = inflate.advance() {
                            return Poll::Ready(Some(Err(Box::new(status))));
                        }
                    }
                    Err(trailers) => inflate.ready.push_back(trailers),
                },
                Some(Err(err)) => return Poll::Ready(Some(Err(err.into()))),
                // A message cut short: tonic reports it.
                None if !inflate.received.is_empty() => {
                    let rest = inflate.received.split().freeze();
                    return Poll::Ready(Some(Ok(Frame::data(rest))));
                }
                None => return Poll::Ready(None),
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.inflate {
            None => self.inner.is_end_stream(),
            Some(inflate) => {
                inflate.ready.is_empty()
                    && inflate.received.is_empty()
                    && self.inner.is_end_stream()
            }
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inflate {
            None => self.inner.size_hint(),
            // Inflated messages are longer than what arrives.
            Some(_) => SizeHint::default(),
        }
    }
}

/// The body of a compressed call arriving in `pieces`, through [`InflatingBody`], for the fuzz
/// target that checks that how a body is cut does not change what comes out.
#[cfg(fuzzing)]
pub fn inflate_pieces(
    pieces: Vec<Bytes>,
    deflate: bool,
    max_message: usize,
    budget: usize,
) -> Result<Vec<u8>, tonic::Status> {
    /// Pieces that are all there: every poll is ready.
    struct Pieces(VecDeque<Bytes>);
    impl Body for Pieces {
        type Data = Bytes;
        type Error = std::convert::Infallible;
        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
            Poll::Ready(self.0.pop_front().map(|piece| Ok(Frame::data(piece))))
        }
    }
    let mut body = InflatingBody {
        inner: Pieces(pieces.into()),
        inflate: Some(Inflate::new(
            if deflate {
                Encoding::Deflate
            } else {
                Encoding::Gzip
            },
            crate::memory_budget::MemoryBudget::new(budget).charge(),
            max_message,
        )),
    };
    let mut cx = Context::from_waker(std::task::Waker::noop());
    let mut out = Vec::new();
    loop {
        match Pin::new(&mut body).poll_frame(&mut cx) {
            Poll::Ready(Some(Ok(frame))) => {
                out.extend_from_slice(&frame.into_data().expect("only data frames"))
            }
            Poll::Ready(Some(Err(err))) => {
                return Err(*err.downcast::<tonic::Status>().expect("a gRPC status"))
            }
            Poll::Ready(None) => return Ok(out),
            Poll::Pending => unreachable!("every piece is there"),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::sync::Arc;

    use flate2::write::{GzEncoder, ZlibEncoder};
    use flate2::Compression;
    use http_body_util::{BodyExt, StreamBody};

    use super::*;
    use crate::memory_budget::MemoryBudget;

    fn framed(compressed: bool, message: &[u8]) -> Vec<u8> {
        let mut out = vec![u8::from(compressed)];
        out.extend_from_slice(&(message.len() as u32).to_be_bytes());
        out.extend_from_slice(message);
        out
    }

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut encoder = GzEncoder::new(Vec::new(), Compression::default());
        encoder.write_all(data).unwrap();
        encoder.finish().unwrap()
    }

    fn zlib(data: &[u8]) -> Vec<u8> {
        let mut encoder = ZlibEncoder::new(Vec::new(), Compression::default());
        encoder.write_all(data).unwrap();
        encoder.finish().unwrap()
    }

    type Chunks = StreamBody<
        tokio_stream::Iter<std::vec::IntoIter<Result<Frame<Bytes>, std::convert::Infallible>>>,
    >;

    /// `wire` as a body arriving `piece` bytes at a time.
    fn arriving(wire: &[u8], piece: usize) -> Chunks {
        let frames: Vec<_> = wire
            .chunks(piece)
            .map(|chunk| Ok(Frame::data(Bytes::copy_from_slice(chunk))))
            .collect();
        StreamBody::new(tokio_stream::iter(frames))
    }

    fn body(wire: &[u8], piece: usize, encoding: Encoding, budget: usize) -> InflatingBody<Chunks> {
        InflatingBody {
            inner: arriving(wire, piece),
            inflate: Some(Inflate::new(
                encoding,
                MemoryBudget::new(budget).charge(),
                1 << 20,
            )),
        }
    }

    async fn read(body: InflatingBody<Chunks>) -> Result<Vec<u8>, tonic::Status> {
        match body.collect().await {
            Ok(collected) => Ok(collected.to_bytes().to_vec()),
            Err(err) => Err(*err.downcast::<tonic::Status>().expect("a gRPC status")),
        }
    }

    #[tokio::test]
    async fn compressed_messages_come_out_inflated_whatever_pieces_they_arrive_in() {
        let first = b"half plus two".repeat(10_000);
        let second = b"another message".to_vec();
        let mut wire = framed(true, &gzip(&first));
        wire.extend(framed(true, &gzip(&second)));
        let mut expected = framed(false, &first);
        expected.extend(framed(false, &second));
        for piece in [1, 3, 5, 4096, wire.len()] {
            let inflated = read(body(&wire, piece, Encoding::Gzip, 0)).await.unwrap();
            assert_eq!(inflated, expected, "arriving {piece} bytes at a time");
        }
    }

    #[tokio::test]
    async fn deflate_is_zlib_and_uncompressed_messages_pass_as_they_are() {
        let message = b"x".repeat(200_000);
        let mut wire = framed(true, &zlib(&message));
        wire.extend(framed(false, b"plain"));
        let mut expected = framed(false, &message);
        expected.extend(framed(false, b"plain"));
        let inflated = read(body(&wire, 7, Encoding::Deflate, 0)).await.unwrap();
        assert_eq!(inflated, expected);
    }

    #[tokio::test]
    async fn broken_data_is_the_clients_error() {
        let mut compressed = gzip(b"some message");
        let end = compressed.len() - 1;
        compressed[end / 2] ^= 0xff;
        let wire = framed(true, &compressed);
        let status = read(body(&wire, 4096, Encoding::Gzip, 0))
            .await
            .unwrap_err();
        assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
        assert!(status.message().contains("gzip"), "{status:?}");
        // Gzip sent as deflate is not zlib's format either.
        let wire = framed(true, &gzip(b"some message"));
        let status = read(body(&wire, 4096, Encoding::Deflate, 0))
            .await
            .unwrap_err();
        assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    }

    #[tokio::test]
    async fn a_message_may_inflate_up_to_the_largest_a_server_receives() {
        let at_most = vec![0u8; 1 << 20];
        let wire = framed(true, &gzip(&at_most));
        let inflated = read(body(&wire, 4096, Encoding::Gzip, 0)).await.unwrap();
        assert_eq!(inflated.len(), PREFIX + at_most.len());

        let wire = framed(true, &gzip(&vec![0u8; (1 << 20) + 1]));
        let status = read(body(&wire, 4096, Encoding::Gzip, 0))
            .await
            .unwrap_err();
        assert_eq!(status.code(), tonic::Code::OutOfRange, "{status:?}");
        assert!(status.message().contains("too large"), "{status:?}");
    }

    #[tokio::test]
    async fn inflating_stops_when_the_budget_has_no_room() {
        let wire = framed(true, &gzip(&vec![0u8; 1 << 20]));
        let status = read(body(&wire, 4096, Encoding::Gzip, 300_000))
            .await
            .unwrap_err();
        assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
        assert!(
            status.message().contains("max_request_bytes_in_flight"),
            "{status:?}"
        );
        // Within the budget, the same message inflates.
        let inflated = read(body(&wire, 4096, Encoding::Gzip, 2 << 20)).await;
        assert_eq!(inflated.unwrap().len(), PREFIX + (1 << 20));
    }

    #[tokio::test]
    async fn a_message_cut_short_or_not_grpc_reaches_tonic_as_it_came() {
        let mut wire = framed(true, &gzip(b"some message"));
        wire.truncate(wire.len() - 3);
        assert_eq!(read(body(&wire, 2, Encoding::Gzip, 0)).await.unwrap(), wire);
        let wire = b"\x07not a gRPC message".to_vec();
        assert_eq!(read(body(&wire, 2, Encoding::Gzip, 0)).await.unwrap(), wire);
    }

    #[tokio::test]
    async fn the_layer_inflates_compressed_grpc_calls_only() {
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let record = seen.clone();
        let inner = tower::service_fn(move |request: http::Request<InflatingBody<Chunks>>| {
            let record = record.clone();
            async move {
                let (parts, body) = request.into_parts();
                let data = body.collect().await.map_err(|_| ())?.to_bytes();
                let encoding = parts.headers.get(GRPC_ENCODING).cloned();
                record.lock().unwrap().push((encoding, data));
                Ok::<_, ()>(())
            }
        });
        let mut service = InflateLayer {
            max_message: 1 << 20,
        }
        .layer(inner);
        let message = b"a request".to_vec();
        let compressed = framed(true, &gzip(&message));
        for (kind, encoding) in [
            ("application/grpc", "gzip"),
            ("application/grpc+proto", "gzip"),
            ("application/grpc", "snappy"),
            ("application/json", "gzip"),
        ] {
            let request = http::Request::builder()
                .header(http::header::CONTENT_TYPE, kind)
                .header(GRPC_ENCODING, encoding)
                .extension(MemoryBudget::new(0).charge())
                .body(arriving(&compressed, 3))
                .unwrap();
            service.call(request).await.unwrap();
        }
        let seen = seen.lock().unwrap();
        let plain = framed(false, &message);
        assert_eq!(seen[0], (None, Bytes::from(plain.clone())));
        assert_eq!(seen[1], (None, Bytes::from(plain)));
        for (i, (encoding, data)) in seen[2..].iter().enumerate() {
            assert!(
                encoding.is_some(),
                "request {}: encoding left in place",
                i + 2
            );
            assert_eq!(data, &Bytes::from(compressed.clone()), "request {}", i + 2);
        }
    }
}
