//! The body of a gzip or deflate gRPC call, inflated as the server inflates it before tonic:
//! whatever the bytes, no panic, and the same result however the body is cut into pieces on the
//! way (the same bytes out, or the same error). What comes out of a body that inflates is what
//! a plain reading of gRPC's framing gives.
//!
//! The first byte picks the encoding (bit 0), the limit on an inflated message (bits 1-2) and the
//! memory budget (bit 3); the second the size of the pieces; the rest is the body.

#![no_main]

use std::io::Read;

use bytes::Bytes;
use flate2::read::{GzDecoder, ZlibDecoder};
use libfuzzer_sys::fuzz_target;
use oxserve_server::grpc::inflate_pieces;

const MAX_MESSAGES: [usize; 4] = [16, 1000, 1 << 16, 1 << 20];

fn cut(body: &[u8], piece: usize) -> Vec<Bytes> {
    body.chunks(piece).map(Bytes::copy_from_slice).collect()
}

/// The body with each compressed message inflated and flagged uncompressed; what follows a
/// message cut short, or a flag byte other than 0 and 1, as it is. `None` when a message does not
/// inflate.
fn expected(mut body: &[u8], deflate: bool) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    while let [flag @ (0 | 1), a, b, c, d, rest @ ..] = body {
        let len = u32::from_be_bytes([*a, *b, *c, *d]) as usize;
        if rest.len() < len {
            break;
        }
        let (message, next) = rest.split_at(len);
        let mut inflated = Vec::new();
        let message = if *flag == 0 {
            message
        } else if deflate {
            ZlibDecoder::new(message).read_to_end(&mut inflated).ok()?;
            &inflated
        } else {
            GzDecoder::new(message).read_to_end(&mut inflated).ok()?;
            &inflated
        };
        out.push(0);
        out.extend_from_slice(&(message.len() as u32).to_be_bytes());
        out.extend_from_slice(message);
        body = next;
    }
    out.extend_from_slice(body);
    Some(out)
}

/// The result with errors as their code and message.
fn inflated(pieces: Vec<Bytes>, head: u8) -> Result<Vec<u8>, (tonic::Code, String)> {
    let deflate = head & 1 == 1;
    let max_message = MAX_MESSAGES[usize::from(head >> 1) & 3];
    // 0 is no limit.
    let budget = if head & 8 == 0 { 0 } else { 200_000 };
    inflate_pieces(pieces, deflate, max_message, budget)
        .map_err(|status| (status.code(), status.message().to_string()))
}

fuzz_target!(|data: &[u8]| {
    let [head, piece, body @ ..] = data else {
        return;
    };
    let whole = inflated(vec![Bytes::copy_from_slice(body)], *head);
    if let Ok(out) = &whole {
        let expected = expected(body, head & 1 == 1).expect("what inflated inflates");
        assert_eq!(*out, expected, "not gRPC's framing");
    }
    let mut cuts = vec![1 + usize::from(*piece)];
    if body.len() <= 4096 {
        cuts.push(1);
    }
    for piece in cuts {
        let pieces = inflated(cut(body, piece), *head);
        match (&whole, &pieces) {
            // What came out before an error may differ: it was handed on piece by piece.
            (Err(a), Err(b)) => assert_eq!(a, b, "{piece}-byte pieces"),
            _ => assert_eq!(whole, pieces, "{piece}-byte pieces"),
        }
    }
});
