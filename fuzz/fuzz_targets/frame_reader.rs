//! Drives `Scanner::next` the way the relay does: bytes arrive in chunks of
//! arbitrary size, each chunk is appended to the buffer, the buffer is scanned
//! from position 0 until the scanner needs more bytes, and the consumed prefix
//! is dropped.
//!
//! Input layout (a short header keeps seeds easy to write by hand):
//!
//! | bytes     | meaning                                              |
//! |-----------|------------------------------------------------------|
//! | 0         | the tag the relay asks to see as a whole frame       |
//! | 1..3      | scanner limit `max_len`, big-endian u16              |
//! | 3         | N, the number of chunk sizes that follow             |
//! | 4..4+N    | chunk sizes, cycled over the stream (0 counts as 1)  |
//! | rest      | the byte stream as it would arrive from a socket     |
#![no_main]

use libfuzzer_sys::fuzz_target;
use pgwake_protocol::{FrameError, Scanned, Scanner, HEADER_LEN};

/// What the relay acts on; `Body` pieces are left out because their number
/// depends on the chunking while their bytes are implied by `Start`.
#[derive(Debug, PartialEq)]
enum Event {
    Whole(u8, Vec<u8>),
    Start(u8),
    Error(FrameError),
}

fuzz_target!(|data: &[u8]| {
    let Some((&[whole_tag, hi, lo, n], rest)) = data.split_first_chunk::<4>() else {
        return;
    };
    let max_len = usize::from(u16::from_be_bytes([hi, lo]));
    let Some((chunks, stream)) = rest.split_at_checked(usize::from(n)) else {
        return;
    };
    let chunked = relay(stream, chunks, max_len, whole_tag);
    // Chunking is an accident of the network: the relay must see the same
    // frames and the same error when everything arrives at once.
    let at_once = relay(stream, &[], max_len, whole_tag);
    assert_eq!(chunked, at_once);
});

fn relay(stream: &[u8], chunks: &[u8], max_len: usize, whole_tag: u8) -> Vec<Event> {
    let whole = |tag: u8| tag == whole_tag;
    let mut scanner = Scanner::new(max_len);
    let mut buf: Vec<u8> = Vec::new();
    let mut events = Vec::new();
    // Bytes of the current pass-through frame still to come, tracked here
    // independently of the scanner.
    let mut remaining = 0usize;
    let mut sizes = chunks.iter().map(|&c| usize::from(c.max(1))).cycle();
    let mut fed = 0;
    while fed < stream.len() {
        let n = sizes.next().unwrap_or(usize::MAX).min(stream.len() - fed);
        buf.extend_from_slice(&stream[fed..fed + n]);
        fed += n;

        let mut pos = 0;
        loop {
            let (item, next) = match scanner.next(&buf, pos, whole) {
                Ok(Some(found)) => found,
                Ok(None) => break,
                // The relay closes the connection on a malformed frame.
                Err(e) => {
                    events.push(Event::Error(e));
                    return events;
                }
            };
            // Every step consumes at least one byte and never runs past the
            // buffer: otherwise the relay loops forever or slices out of range.
            assert!(pos < next && next <= buf.len(), "pos {pos} -> {next} of {}", buf.len());
            match item {
                Scanned::Frame { tag, body } => {
                    assert_eq!(remaining, 0, "whole frame inside a pass-through frame");
                    assert!(whole(tag) && tag == buf[pos]);
                    let len = u32::from_be_bytes(buf[pos + 1..pos + HEADER_LEN].try_into().unwrap());
                    assert_eq!(body.len() as u64, u64::from(len) - 4);
                    assert_eq!(body, &buf[pos + HEADER_LEN..next]);
                    events.push(Event::Whole(tag, body.to_vec()));
                }
                Scanned::Start { tag } => {
                    assert_eq!(remaining, 0, "frame start inside a pass-through frame");
                    assert!(!whole(tag) && tag == buf[pos]);
                    let len = u32::from_be_bytes(buf[pos + 1..pos + HEADER_LEN].try_into().unwrap());
                    remaining = usize::try_from(len).unwrap() + 1 - (next - pos);
                    events.push(Event::Start(tag));
                }
                Scanned::Body => {
                    assert!(next - pos <= remaining, "body runs past its frame");
                    remaining -= next - pos;
                }
            }
            assert_eq!(scanner.at_boundary(), remaining == 0);
            pos = next;
        }
        buf.drain(..pos);
        // What stays buffered is a partial header or a partial whole frame,
        // never more than one frame's worth: memory stays bounded by the
        // limit, whatever the input.
        assert!(
            buf.len() < max_len.max(HEADER_LEN),
            "{} bytes buffered with a limit of {max_len}",
            buf.len()
        );
        assert!(remaining == 0 || buf.is_empty(), "pass-through bytes held back");
    }
    events
}
