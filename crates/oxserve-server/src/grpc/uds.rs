//! Unix socket connections: gRPC's C core (the Python, C++, Ruby, ... clients) sends the
//! %-encoded socket path as the `:authority` of requests over a Unix socket (since gRPC 1.57,
//! grpc/grpc#33571), which h2, under tonic, rejects as a malformed header with RST_STREAM
//! PROTOCOL_ERROR (hyperium/h2#487 is not merged). TF Serving's clients would all fail on
//! `--grpc_socket_path`.
//!
//! [`AuthorityFix`] sits between the socket and h2 and rewrites the client's header blocks: it
//! decodes each HEADERS (+ CONTINUATION) block with an HPACK decoder that mirrors the client's
//! encoder, replaces an `:authority` that is not a valid authority by `localhost` (what gRPC sent
//! before 1.57, and what grpc-go sends), and re-encodes the block with its own HPACK encoder, which
//! h2's decoder then mirrors. Every other frame passes through untouched, so flow control and
//! everything else is h2's business. Anything it cannot parse is passed on as is, and from then on
//! the connection is passed through unchanged, for h2 to reject.
//!
//! It works on HTTP/2's plaintext bytes, so with `--ssl_config_file` it wraps the TLS session of
//! the socket, not the socket itself.

use std::io;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use axum::http::uri::Authority;
use bytes::{BufMut, BytesMut};
use fluke_hpack::{Decoder, Encoder};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tonic::transport::server::Connected;

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const FRAME_HEADER: usize = 9;
const HEADERS: u8 = 0x1;
const CONTINUATION: u8 = 0x9;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const PRIORITY: u8 = 0x20;
/// HTTP/2's smallest SETTINGS_MAX_FRAME_SIZE, so every peer accepts frames of this size.
const OUT_FRAME: usize = 16_384;
/// Header frames and blocks larger than this are not rewritten (h2 refuses them anyway).
const MAX_HEADER_BYTES: usize = 1 << 20;
/// The most a header block may decode to, counted as RFC 7541 counts a header list (name, value
/// and 32 bytes a field): h2's default SETTINGS_MAX_HEADER_LIST_SIZE, past which it refuses the
/// request anyway. One byte of HPACK can name a 4 KB entry of the dynamic table, so a block of
/// `MAX_HEADER_BYTES` could otherwise decode into 4 GB here. Larger blocks pass through to h2.
const MAX_HEADER_LIST: usize = 16 << 20;
/// HTTP/2's default SETTINGS_HEADER_TABLE_SIZE, which h2 does not change.
const TABLE_SIZE: usize = 4096;
const REPLACEMENT_AUTHORITY: &[u8] = b"localhost";

#[derive(Clone, Copy, Debug, PartialEq)]
enum Mode {
    Preface,
    Frames,
    Passthrough,
}

/// A header block being collected from HEADERS and CONTINUATION frames.
struct Pending {
    stream: u32,
    flags: u8,
    priority: Option<[u8; 5]>,
    block: Vec<u8>,
    /// The frames as received, passed on if the block cannot be rewritten.
    raw: Vec<u8>,
}

/// The client-to-server byte stream rewriter (no I/O: see [`AuthorityFix`]).
struct Rewriter {
    mode: Mode,
    input: BytesMut,
    output: BytesMut,
    /// Bytes of a passed-through frame's payload still to come.
    payload_left: usize,
    pending: Option<Pending>,
    decoder: Decoder<'static>,
    encoder: Encoder<'static>,
}

impl Rewriter {
    fn new() -> Rewriter {
        let mut decoder = Decoder::new();
        decoder.set_max_allowed_table_size(TABLE_SIZE);
        Rewriter {
            mode: Mode::Preface,
            input: BytesMut::new(),
            output: BytesMut::new(),
            payload_left: 0,
            pending: None,
            decoder,
            encoder: Encoder::new(),
        }
    }

    fn push(&mut self, bytes: &[u8]) {
        self.input.extend_from_slice(bytes);
        self.process();
    }

    /// Gives up rewriting: what is held back goes on as received, and so does everything after.
    fn pass_through(&mut self) {
        if let Some(pending) = self.pending.take() {
            self.output.extend_from_slice(&pending.raw);
        }
        self.mode = Mode::Passthrough;
    }

    /// At end of input: whatever is incomplete goes on as is.
    fn finish(&mut self) {
        self.pass_through();
        self.process();
    }

    fn process(&mut self) {
        loop {
            match self.mode {
                Mode::Passthrough => {
                    let rest = self.input.split();
                    self.output.unsplit(rest);
                    return;
                }
                Mode::Preface => {
                    let n = self.input.len().min(PREFACE.len());
                    if self.input[..n] != PREFACE[..n] {
                        self.pass_through();
                        continue;
                    }
                    if n < PREFACE.len() {
                        return;
                    }
                    let preface = self.input.split_to(PREFACE.len());
                    self.output.unsplit(preface);
                    self.mode = Mode::Frames;
                }
                Mode::Frames => {
                    if self.payload_left > 0 {
                        let n = self.payload_left.min(self.input.len());
                        if n == 0 {
                            return;
                        }
                        let payload = self.input.split_to(n);
                        self.output.unsplit(payload);
                        self.payload_left -= n;
                        continue;
                    }
                    if self.input.len() < FRAME_HEADER {
                        return;
                    }
                    let header = &self.input[..FRAME_HEADER];
                    let length = usize::from(header[0]) << 16
                        | usize::from(header[1]) << 8
                        | usize::from(header[2]);
                    let (kind, flags) = (header[3], header[4]);
                    let stream = u32::from_be_bytes([header[5], header[6], header[7], header[8]])
                        & 0x7fff_ffff;
                    if kind != HEADERS && kind != CONTINUATION {
                        if self.pending.is_some() {
                            // Only CONTINUATION may follow an unfinished block: h2's error to raise.
                            self.pass_through();
                            continue;
                        }
                        let header = self.input.split_to(FRAME_HEADER);
                        self.output.unsplit(header);
                        self.payload_left = length;
                        continue;
                    }
                    if length > MAX_HEADER_BYTES {
                        self.pass_through();
                        continue;
                    }
                    if self.input.len() < FRAME_HEADER + length {
                        return;
                    }
                    let frame = self.input.split_to(FRAME_HEADER + length);
                    if self.header_frame(kind, flags, stream, &frame).is_err() {
                        self.pass_through();
                        self.output.extend_from_slice(&frame);
                    }
                }
            }
        }
    }

    /// Collects a HEADERS or CONTINUATION frame; rewrites the block once it is complete.
    fn header_frame(&mut self, kind: u8, flags: u8, stream: u32, frame: &[u8]) -> Result<(), ()> {
        let payload = &frame[FRAME_HEADER..];
        if kind == HEADERS {
            if self.pending.is_some() {
                return Err(());
            }
            let mut rest = payload;
            let padding = if flags & PADDED != 0 {
                let (&pad, tail) = rest.split_first().ok_or(())?;
                rest = tail;
                usize::from(pad)
            } else {
                0
            };
            let priority = if flags & PRIORITY != 0 {
                let bytes: [u8; 5] = rest.get(..5).ok_or(())?.try_into().map_err(|_| ())?;
                rest = &rest[5..];
                Some(bytes)
            } else {
                None
            };
            let fragment = rest
                .get(..rest.len().checked_sub(padding).ok_or(())?)
                .ok_or(())?;
            self.pending = Some(Pending {
                stream,
                flags,
                priority,
                block: fragment.to_vec(),
                raw: frame.to_vec(),
            });
        } else {
            let pending = self.pending.as_mut().ok_or(())?;
            if pending.stream != stream || pending.block.len() + payload.len() > MAX_HEADER_BYTES {
                return Err(());
            }
            pending.block.extend_from_slice(payload);
            pending.raw.extend_from_slice(frame);
        }
        if flags & END_HEADERS != 0 {
            let pending = self.pending.take().ok_or(())?;
            if self.rewrite(&pending).is_err() {
                self.output.extend_from_slice(&pending.raw);
                self.mode = Mode::Passthrough;
            }
        }
        Ok(())
    }

    /// Decodes, fixes and re-encodes one complete header block, and frames it.
    fn rewrite(&mut self, pending: &Pending) -> Result<(), ()> {
        let decoder = &mut self.decoder;
        let mut headers = Vec::new();
        let mut size = 0usize;
        // The decoder asserts on some malformed input: a panic is a parse failure here.
        catch_unwind(AssertUnwindSafe(|| {
            decoder.decode_with_cb(&pending.block, |name, value| {
                size = size.saturating_add(name.len() + value.len() + 32);
                if size <= MAX_HEADER_LIST {
                    headers.push((name.into_owned(), value.into_owned()));
                }
            })
        }))
        .map_err(|_| ())?
        .map_err(|_| ())?;
        if size > MAX_HEADER_LIST {
            return Err(());
        }
        for (name, value) in &mut headers {
            if name == b":authority" && Authority::try_from(&value[..]).is_err() {
                *value = REPLACEMENT_AUTHORITY.to_vec();
            }
        }
        let block = self
            .encoder
            .encode(headers.iter().map(|(name, value)| (&name[..], &value[..])));
        let first_room = OUT_FRAME - if pending.priority.is_some() { 5 } else { 0 };
        let (first, mut rest) = block.split_at(block.len().min(first_room));
        let mut flags = pending.flags & !(PADDED | END_HEADERS);
        if rest.is_empty() {
            flags |= END_HEADERS;
        }
        let mut payload = Vec::with_capacity(first.len() + 5);
        if let Some(priority) = pending.priority {
            payload.extend_from_slice(&priority);
        }
        payload.extend_from_slice(first);
        self.frame(HEADERS, flags, pending.stream, &payload);
        while !rest.is_empty() {
            let (chunk, tail) = rest.split_at(rest.len().min(OUT_FRAME));
            rest = tail;
            let flags = if rest.is_empty() { END_HEADERS } else { 0 };
            self.frame(CONTINUATION, flags, pending.stream, chunk);
        }
        Ok(())
    }

    fn frame(&mut self, kind: u8, flags: u8, stream: u32, payload: &[u8]) {
        let length = payload.len() as u32;
        self.output.put_slice(&length.to_be_bytes()[1..]);
        self.output.put_u8(kind);
        self.output.put_u8(flags);
        self.output.put_u32(stream);
        self.output.put_slice(payload);
    }
}

/// A Unix socket stream (plain, or the TLS session over one) whose incoming header blocks carry a
/// valid `:authority`.
pub struct AuthorityFix<S> {
    inner: S,
    rewriter: Rewriter,
    eof: bool,
}

impl<S> AuthorityFix<S> {
    pub fn new(inner: S) -> AuthorityFix<S> {
        AuthorityFix {
            inner,
            rewriter: Rewriter::new(),
            eof: false,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for AuthorityFix<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        loop {
            if !this.rewriter.output.is_empty() {
                let n = buf.remaining().min(this.rewriter.output.len());
                buf.put_slice(&this.rewriter.output.split_to(n));
                return Poll::Ready(Ok(()));
            }
            if this.eof {
                return Poll::Ready(Ok(()));
            }
            let mut chunk = [0u8; 16 * 1024];
            let mut read = ReadBuf::new(&mut chunk);
            ready!(Pin::new(&mut this.inner).poll_read(cx, &mut read))?;
            if read.filled().is_empty() {
                this.eof = true;
                this.rewriter.finish();
            } else {
                this.rewriter.push(read.filled());
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for AuthorityFix<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

impl<S: Connected> Connected for AuthorityFix<S> {
    type ConnectInfo = S::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let mut out = (payload.len() as u32).to_be_bytes()[1..].to_vec();
        out.extend([kind, flags]);
        out.extend(stream.to_be_bytes());
        out.extend(payload);
        out
    }

    /// Splits rewritten output into frames: (kind, flags, stream, payload).
    fn frames(mut bytes: &[u8]) -> Vec<(u8, u8, u32, Vec<u8>)> {
        assert!(bytes.starts_with(PREFACE));
        bytes = &bytes[PREFACE.len()..];
        let mut out = Vec::new();
        while !bytes.is_empty() {
            let length =
                usize::from(bytes[0]) << 16 | usize::from(bytes[1]) << 8 | usize::from(bytes[2]);
            let stream = u32::from_be_bytes([bytes[5], bytes[6], bytes[7], bytes[8]]);
            out.push((bytes[3], bytes[4], stream, bytes[9..9 + length].to_vec()));
            bytes = &bytes[9 + length..];
        }
        out
    }

    fn request_headers(authority: &[u8], extra: &[u8]) -> Vec<(Vec<u8>, Vec<u8>)> {
        vec![
            (b":method".to_vec(), b"POST".to_vec()),
            (b":scheme".to_vec(), b"http".to_vec()),
            (
                b":path".to_vec(),
                b"/tensorflow.serving.PredictionService/Predict".to_vec(),
            ),
            (b":authority".to_vec(), authority.to_vec()),
            (b"content-type".to_vec(), b"application/grpc".to_vec()),
            (b"x-extra".to_vec(), extra.to_vec()),
        ]
    }

    fn encode(encoder: &mut Encoder<'static>, headers: &[(Vec<u8>, Vec<u8>)]) -> Vec<u8> {
        encoder.encode(headers.iter().map(|(n, v)| (&n[..], &v[..])))
    }

    /// Feeds `input` in chunks of every size from 1 to 7 bytes and returns the output.
    fn rewrite(input: &[u8], chunk: usize) -> Vec<u8> {
        let mut rewriter = Rewriter::new();
        for piece in input.chunks(chunk) {
            rewriter.push(piece);
        }
        rewriter.finish();
        rewriter.output.to_vec()
    }

    #[test]
    fn invalid_authorities_become_localhost_and_the_rest_is_kept() {
        let mut client = Encoder::new();
        let first = request_headers(b"%2Ftmp%2Fgrpc.sock", b"one");
        let second = request_headers(b"%2Ftmp%2Fgrpc.sock", b"two");
        let valid = request_headers(b"127.0.0.1:8500", b"three");
        let mut input = PREFACE.to_vec();
        input.extend(frame(0x4, 0, 0, &[0, 3, 0, 0, 0, 100])); // SETTINGS
                                                               // Stream 1: one HEADERS frame, padded and with priority.
        let block = encode(&mut client, &first);
        let mut payload = vec![3];
        payload.extend([0, 0, 0, 0, 16]);
        payload.extend(&block);
        payload.extend([0, 0, 0]);
        input.extend(frame(HEADERS, PADDED | PRIORITY | END_HEADERS, 1, &payload));
        input.extend(frame(0x0, 0x1, 1, b"\0\0\0\0\x02hi")); // DATA, END_STREAM
                                                             // Stream 3: the block split over HEADERS + CONTINUATION, using the client's dynamic table.
        let block = encode(&mut client, &second);
        let (a, b) = block.split_at(block.len() / 2);
        input.extend(frame(HEADERS, 0, 3, a));
        input.extend(frame(CONTINUATION, END_HEADERS, 3, b));
        // Stream 5: a valid authority is left as it is.
        let block = encode(&mut client, &valid);
        input.extend(frame(HEADERS, END_HEADERS | 0x1, 5, &block));

        for chunk in 1..=7 {
            let output = rewrite(&input, chunk);
            let frames = frames(&output);
            let kinds: Vec<(u8, u8, u32)> = frames.iter().map(|f| (f.0, f.1, f.2)).collect();
            assert_eq!(
                kinds,
                [
                    (0x4, 0, 0),
                    (HEADERS, PRIORITY | END_HEADERS, 1),
                    (0x0, 0x1, 1),
                    (HEADERS, END_HEADERS, 3),
                    (HEADERS, END_HEADERS | 0x1, 5)
                ]
            );
            assert_eq!(frames[2].3, b"\0\0\0\0\x02hi");
            assert_eq!(&frames[1].3[..5], &[0, 0, 0, 0, 16]);
            // h2's side: one decoder for the whole connection, mirroring the rewriter's encoder.
            let mut server = Decoder::new();
            let decoded: Vec<_> = [&frames[1].3[5..], &frames[3].3[..], &frames[4].3[..]]
                .iter()
                .map(|block| server.decode(block).unwrap())
                .collect();
            assert_eq!(decoded[0], request_headers(b"localhost", b"one"));
            assert_eq!(decoded[1], request_headers(b"localhost", b"two"));
            assert_eq!(decoded[2], valid);
        }
    }

    #[test]
    fn large_blocks_are_split_into_continuations() {
        let mut client = Encoder::new();
        let big = vec![b'v'; 40_000];
        let headers = request_headers(b"%2Fsock", &big);
        let mut input = PREFACE.to_vec();
        input.extend(frame(
            HEADERS,
            END_HEADERS,
            1,
            &encode(&mut client, &headers),
        ));
        let frames = frames(&rewrite(&input, 4096));
        let kinds: Vec<(u8, u8)> = frames.iter().map(|f| (f.0, f.1)).collect();
        assert_eq!(
            kinds,
            [(HEADERS, 0), (CONTINUATION, 0), (CONTINUATION, END_HEADERS)]
        );
        assert!(frames.iter().all(|f| f.3.len() <= OUT_FRAME));
        let block: Vec<u8> = frames.iter().flat_map(|f| f.3.clone()).collect();
        assert_eq!(
            Decoder::new().decode(&block).unwrap(),
            request_headers(b"localhost", &big)
        );
    }

    #[test]
    fn anything_else_passes_through_unchanged() {
        // Not HTTP/2.
        let http1 = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n";
        assert_eq!(rewrite(http1, 3), http1);
        // A header block that is not HPACK: passed on as received, and everything after it.
        let mut input = PREFACE.to_vec();
        input.extend(frame(
            HEADERS,
            END_HEADERS,
            1,
            &[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff],
        ));
        input.extend(frame(0x0, 0, 1, b"after"));
        assert_eq!(rewrite(&input, 5), input);
        // A frame cut short by the end of the connection.
        let mut input = PREFACE.to_vec();
        input.extend(&frame(HEADERS, END_HEADERS, 1, &[0x82; 20])[..12]);
        assert_eq!(rewrite(&input, 2), input);
        // A block that names a 4,000-byte table entry 5,000 times: 20 MB of headers, past h2's
        // limit, is not rewritten (its authority not fixed) but left to h2, which refuses it.
        let mut block = vec![0x01, 7]; // :authority, not indexed
        block.extend(b"%2Fsock");
        block.extend([0x40, 5]);
        block.extend(b"x-big");
        block.extend([0x7f, 0xa1, 0x1e]); // 4,000, HPACK's integer with a 7-bit prefix
        block.extend([b'v'; 4000]);
        block.extend([0xbe; 5000]); // index 62: the dynamic table's newest entry
        let mut input = PREFACE.to_vec();
        let mut rest = &block[..];
        let mut kind = HEADERS;
        while !rest.is_empty() {
            let (chunk, tail) = rest.split_at(rest.len().min(OUT_FRAME));
            rest = tail;
            let flags = if rest.is_empty() { END_HEADERS } else { 0 };
            input.extend(frame(kind, flags, 1, chunk));
            kind = CONTINUATION;
        }
        assert_eq!(Decoder::new().decode(&block).unwrap().len(), 5002);
        assert_eq!(rewrite(&input, 4096), input);
        // CONTINUATION without HEADERS.
        let mut input = PREFACE.to_vec();
        input.extend(frame(CONTINUATION, END_HEADERS, 1, &[0x82]));
        assert_eq!(rewrite(&input, 1), input);
    }
}
