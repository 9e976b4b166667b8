//! The session's framing of client bytes, against a model: any sequence of
//! messages, cut into reads anywhere (one byte at a time, and exactly at
//! 512, 8192 and 65536 bytes, the sizes of pgwake's buffers), is forwarded
//! exactly once and in order, and a request taken up always moves a byte.

mod support;

use proptest::prelude::*;
use support::request_model::{forward, forward_with, Broken};

/// Buffer sizes in pgwake's session: the idle probe, the read buffer, and
/// a common socket read.
const BUFFER_SIZES: [usize; 3] = [512, 8192, 65536];

fn frame(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut v = vec![tag];
    v.extend_from_slice(&u32::try_from(body.len() + 4).unwrap().to_be_bytes());
    v.extend_from_slice(body);
    v
}

/// A message: a tag the session treats one way or another, and a body
/// whose size lands near the buffer sizes often. Bodies are numbered so a
/// duplicate or reordering shows.
fn message() -> impl Strategy<Value = (u8, usize, u8)> {
    let tag = prop::sample::select(vec![b'P', b'B', b'D', b'E', b'S', b'H', b'C', b'Q', b'd']);
    let len = prop_oneof![
        6 => 0usize..64,
        3 => 440usize..600,
        2 => 8150usize..8250,
        1 => 65500usize..65600,
    ];
    // A Query starting with `p` may be `PREPARE` (read whole), with `s` not.
    let first = prop::sample::select(vec![b'p', b's', b'E', b' ']);
    (tag, len, first)
}

fn build(messages: &[(u8, usize, u8)]) -> (Vec<u8>, Vec<Vec<u8>>, Vec<usize>) {
    let mut stream = Vec::new();
    let mut frames = Vec::new();
    let mut starts = Vec::new();
    for (i, &(tag, len, first)) in messages.iter().enumerate() {
        let mut body = vec![b'x'; len];
        if let Some(b) = body.first_mut() {
            *b = first;
        }
        for (slot, byte) in body
            .iter_mut()
            .skip(1)
            .zip(u32::try_from(i).unwrap().to_be_bytes())
        {
            *slot = byte;
        }
        starts.push(stream.len());
        let f = frame(tag, &body);
        stream.extend_from_slice(&f);
        frames.push(f);
    }
    (stream, frames, starts)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 10_000, ..ProptestConfig::default() })]

    #[test]
    fn any_cut_forwards_every_frame_once_in_order(
        messages in prop::collection::vec(message(), 0..12),
        random_cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..24),
        cut_at_buffer_sizes in any::<bool>(),
        one_byte_at_a_time in any::<bool>(),
        release in prop::collection::vec(any::<bool>(), 1..8),
    ) {
        let (stream, frames, starts) = build(&messages);
        let mut cuts: Vec<usize> = random_cuts
            .iter()
            .map(|i| i.index(stream.len().max(1)))
            .collect();
        if cut_at_buffer_sizes {
            // From the stream's start and from each frame's start: where
            // the idle probe or a read buffer fills up.
            for size in BUFFER_SIZES {
                cuts.push(size);
                cuts.extend(starts.iter().map(|s| s + size));
            }
        }
        if one_byte_at_a_time && stream.len() <= 4096 {
            cuts.extend(1..stream.len());
        }
        let got = forward(&stream, &cuts, &release, 1 << 20);
        prop_assert_eq!(got, Ok(frames));
    }
}

#[test]
fn a_parse_larger_than_the_idle_probe_is_read_before_it_is_taken_up() {
    // psycopg's first batch for a 480-byte statement: Parse, Bind,
    // Describe, Execute, Sync, arriving as a 512-byte read and the rest.
    let mut text = b"select length('".to_vec();
    text.resize(text.len() + 450, b'x');
    text.extend_from_slice(b"') + $1\0");
    let mut parse_body = vec![0u8];
    parse_body.extend_from_slice(&text);
    parse_body.extend_from_slice(&[0, 0]);
    let mut stream = frame(b'P', &parse_body);
    stream.extend(frame(b'B', &[0, 0, 0, 0, 0, 1, 0, 0, 0, 1, b'1', 0, 0]));
    stream.extend(frame(b'D', b"P\0"));
    stream.extend(frame(b'E', &[0, 0, 0, 0, 0]));
    stream.extend(frame(b'S', &[]));
    assert!(stream.len() > 512);
    for release in [[true], [false]] {
        let got = forward(&stream, &[512], &release, 1 << 20).unwrap();
        assert_eq!(got.len(), 5);
        assert_eq!(got.concat(), stream);
    }
}

#[test]
fn the_model_catches_a_session_that_takes_up_half_a_frame() {
    // The rule that froze pgwake: a request called ready from its header
    // alone, though the relay forwards a Parse only whole. The session
    // takes a connection, moves nothing, gives it back, and again.
    let header_only: fn(&[u8]) -> bool = |_| false;
    let stream = frame(b'P', &[b'x'; 600]);
    assert_eq!(
        forward_with(&stream, &[512], &[true], 1 << 20, header_only),
        Err(Broken::Stalled { at: 512 })
    );
    // With the relay's own rule the same reads go through.
    assert_eq!(
        forward(&stream, &[512], &[true], 1 << 20),
        Ok(vec![stream.clone()])
    );
}
