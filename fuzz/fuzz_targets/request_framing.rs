//! Drives the session's framing model (`crates/protocol/tests/support/
//! request_model.rs`, shared with the property test) with random bytes cut
//! into reads at random points: whatever arrives, a request taken up always
//! moves a byte, memory stays within one frame, and the reads' cut points
//! change nothing.
//!
//! Input layout:
//!
//! | bytes        | meaning                                                 |
//! |--------------|---------------------------------------------------------|
//! | 0            | N, the number of cut points that follow                 |
//! | 1..1+2N      | cut offsets, big-endian u16 each                        |
//! | 1+2N         | release pattern: bit i says whether turn i releases     |
//! | rest         | the client's bytes as they would arrive from a socket   |
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../../crates/protocol/tests/support/request_model.rs"]
mod request_model;

use request_model::{forward, Broken};

fuzz_target!(|data: &[u8]| {
    let Some((&n, rest)) = data.split_first() else {
        return;
    };
    let Some((cuts, rest)) = rest.split_at_checked(2 * usize::from(n)) else {
        return;
    };
    let Some((&pattern, stream)) = rest.split_first() else {
        return;
    };
    let cuts: Vec<usize> = cuts
        .chunks_exact(2)
        .map(|c| usize::from(u16::from_be_bytes([c[0], c[1]])))
        .collect();
    let release: Vec<bool> = (0..8).map(|i| pattern & (1 << i) != 0).collect();
    let max_len = 1 << 16;
    let cut = forward(stream, &cuts, &release, max_len);
    let at_once = forward(stream, &[], &release, max_len);
    for r in [&cut, &at_once] {
        assert!(
            !matches!(r, Err(Broken::Stalled { .. } | Broken::Overbuffered { .. })),
            "{r:?}"
        );
    }
    // Malformed or cut-off input may be noticed at another point, but the
    // outcome is the same however the bytes arrived.
    assert_eq!(cut.is_ok(), at_once.is_ok());
    if let (Ok(a), Ok(b)) = (&cut, &at_once) {
        assert_eq!(a, b);
        assert_eq!(a.concat(), stream);
    }
});
