//! Reads any bytes as a statement's text with the sqlcommenter reader
//! (`pgwake_protocol::sqlcommenter`): it never panics, a comment it finds
//! lies inside the text and is delimited as one, and a trace context is
//! only ever found where the cheap end-of-text check said to look.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pgwake_protocol::sqlcommenter;

fuzz_target!(|text: &[u8]| {
    let cheap = sqlcommenter::may_carry_comment(text);
    if let Some(r) = sqlcommenter::trailing_comment(text) {
        assert!(cheap);
        assert!(r.start + 4 <= r.end && r.end <= text.len());
        assert!(text[r.start..].starts_with(b"/*"));
        assert!(text[..r.end].ends_with(b"*/"));
    }
    if let Some(c) = sqlcommenter::trace_context(text) {
        assert!(cheap);
        assert!(c.parent.trace_id != [0; 16] && c.parent.parent_id != [0; 8]);
        assert!(c.tracestate.as_deref().is_none_or(|s| s.len() <= 512));
    }
});
