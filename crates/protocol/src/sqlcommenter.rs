//! sqlcommenter comments: the `/*key='value',…*/` that OpenTelemetry
//! instrumentations append to each SQL statement to carry the W3C trace
//! context (`traceparent`, `tracestate`) to the database side.
//!
//! Reading one costs the relay nothing for most statements:
//! [`may_carry_comment`] looks only at the last bytes of the text, and the
//! rest (a lexer pass that proves the comment is a real top-level comment,
//! not the inside of a string) runs only for text ending in `*/`.
//!
//! Anything malformed (truncated, unknown version, upper-case or non-hex
//! ids, all-zero ids, nested comments, repeated keys, text after the
//! comment) reads as no comment: never an error.

use std::ops::Range;

use crate::sql::{ident_char, ident_start, skip_line, skip_quoted, skip_string};

/// Longest dollar-quote tag the lexer follows; a longer one makes it give
/// up (no comment), which keeps a hostile statement's cost linear.
const DOLLAR_TAG_MAX: usize = 64;
/// Longest `tracestate` kept (W3C: 32 members of at most 256 bytes, but
/// vendors are asked to keep it under 512 bytes).
const TRACESTATE_MAX: usize = 512;

/// A W3C `traceparent` (version 00).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceParent {
    pub trace_id: [u8; 16],
    /// The span id of the app's span that ran the statement.
    pub parent_id: [u8; 8],
    pub flags: u8,
}

impl TraceParent {
    /// The app sampled this trace: spans made under it are recorded.
    pub fn sampled(&self) -> bool {
        self.flags & 1 == 1
    }
}

/// The trace context a statement carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceContext {
    pub parent: TraceParent,
    /// `tracestate`, percent-decoded; `None` when absent or malformed.
    pub tracestate: Option<String>,
}

/// Whether `text` (a statement, NUL-terminated or not) ends with `*/` once
/// trailing whitespace, semicolons and NULs are set aside: the only
/// statements worth a closer look. Reads a few bytes from the end.
#[inline]
pub fn may_carry_comment(text: &[u8]) -> bool {
    let end = trimmed_end(text);
    end >= 4 && &text[end - 2..end] == b"*/"
}

/// The byte range of the trailing sqlcommenter comments of `text` (`/*`
/// of the first to `*/` of the last): top-level block comments whose
/// bodies are well-formed `key='value'` lists, with only whitespace
/// between them and nothing but whitespace, semicolons and NULs after. Two
/// instrumentations may each append one (Django's and psycopg's). `None`
/// for anything else.
pub fn trailing_comment(text: &[u8]) -> Option<Range<usize>> {
    let (first, _, end) = trailing_comments(text)?;
    Some(first..end)
}

/// (start of the first trailing sqlcommenter comment, start of the last,
/// end of the last).
fn trailing_comments(text: &[u8]) -> Option<(usize, usize, usize)> {
    if !may_carry_comment(text) {
        return None;
    }
    let end = trimmed_end(text);
    let (first, last) = top_level_comments_at_end(&text[..end])?;
    Some((first, last, end))
}

/// The trace context in `text`'s trailing sqlcommenter comment, if it
/// holds a valid version-00 `traceparent`.
pub fn trace_context(text: &[u8]) -> Option<TraceContext> {
    // The last comment: the one the innermost instrumentation (the driver's,
    // whose span is the statement's) appended.
    let (_, last, end) = trailing_comments(text)?;
    let body = &text[last + 2..end - 2];
    let mut parent = None;
    let mut state = None;
    for pair in Pairs::new(body) {
        let (key, value) = pair?;
        match key {
            b"traceparent" => {
                if parent.is_some() {
                    return None;
                }
                parent = Some(parse_traceparent(value)?);
            }
            b"tracestate" => {
                if state.is_some() {
                    return None;
                }
                state = Some(value);
            }
            _ => {}
        }
    }
    Some(TraceContext {
        parent: parent?,
        tracestate: state.and_then(decode_tracestate),
    })
}

/// `text` without a trailing NUL and trailing whitespace and semicolons.
fn trimmed_end(text: &[u8]) -> usize {
    let mut end = text.len();
    while end > 0
        && matches!(
            text[end - 1],
            0 | b';' | b' ' | b'\t' | b'\n' | b'\r' | b'\x0c'
        )
    {
        end -= 1;
    }
    end
}

/// Where the run of sqlcommenter comments that ends `text` exactly begins,
/// and where its last comment begins: top-level comments (outside strings,
/// quoted identifiers, dollar quotes and other comments), each holding no
/// comment of its own and a well-formed body, with only whitespace between.
fn top_level_comments_at_end(text: &[u8]) -> Option<(usize, usize)> {
    let mut at = 0;
    // The run of valid comments so far: (first start, last start).
    let mut run: Option<(usize, usize)> = None;
    while at < text.len() {
        let b = text[at];
        if matches!(b, b' ' | b'\t' | b'\n' | b'\r' | b'\x0c') {
            at += 1;
            continue;
        }
        if b == b'/' && text.get(at + 1) == Some(&b'*') {
            let (end, nested, closed) = skip_block(text, at);
            let valid = closed
                && !nested
                && end - at >= 4
                && Pairs::new(&text[at + 2..end - 2]).all(|p| p.is_some());
            run = valid.then(|| (run.map_or(at, |(first, _)| first), at));
            at = end;
            continue;
        }
        run = None;
        at = match b {
            b'\'' => skip_string(text, at + 1, escapes_before(text, at)),
            b'"' => skip_quoted(text, at + 1, b'"'),
            b'-' if text.get(at + 1) == Some(&b'-') => skip_line(text, at),
            b'$' => skip_dollar(text, at)?,
            _ => at + 1,
        };
    }
    run
}

/// Whether the string starting at `quote` is an `E'…'` string (backslash
/// escapes): the quote follows a lone `E` or `e`.
fn escapes_before(text: &[u8], quote: usize) -> bool {
    quote >= 1
        && matches!(text[quote - 1], b'e' | b'E')
        && (quote < 2 || !ident_char(text[quote - 2]))
}

/// After the (nested) block comment at `at`, whether it held another,
/// and whether it was closed (else it runs to the end).
fn skip_block(text: &[u8], at: usize) -> (usize, bool, bool) {
    let mut depth = 0usize;
    let mut nested = false;
    let mut i = at;
    while i + 1 < text.len() {
        match (text[i], text[i + 1]) {
            (b'/', b'*') => {
                depth += 1;
                nested |= depth > 1;
                i += 2;
            }
            (b'*', b'/') => {
                depth -= 1;
                i += 2;
                if depth == 0 {
                    return (i, nested, true);
                }
            }
            _ => i += 1,
        }
    }
    (text.len(), nested, false)
}

/// After a `$tag$…$tag$` string at `at` (or a lone `$`); `None` when the
/// tag is too long to follow cheaply.
fn skip_dollar(text: &[u8], at: usize) -> Option<usize> {
    if at > 0 && ident_char(text[at - 1]) {
        // Part of an identifier (`a$b`).
        return Some(at + 1);
    }
    let mut end = at + 1;
    if text.get(end).is_some_and(|&b| ident_start(b)) {
        end += 1;
        while text.get(end).is_some_and(|&b| ident_char(b) && b != b'$') {
            end += 1;
            if end - at > DOLLAR_TAG_MAX {
                return None;
            }
        }
    }
    if text.get(end) != Some(&b'$') {
        return Some(at + 1);
    }
    let tag = &text[at..=end];
    let body = end + 1;
    Some(
        match text[body.min(text.len())..]
            .windows(tag.len())
            .position(|w| w == tag)
        {
            Some(p) => body + p + tag.len(),
            None => text.len(),
        },
    )
}

/// The `key='value'` pairs of a comment body; `None` items for malformed
/// parts (and the iteration stops after one).
struct Pairs<'a> {
    rest: &'a [u8],
    failed: bool,
    first: bool,
}

impl<'a> Pairs<'a> {
    fn new(body: &'a [u8]) -> Self {
        let start = body.iter().position(|b| *b != b' ').unwrap_or(body.len());
        let end = body
            .iter()
            .rposition(|b| *b != b' ')
            .map_or(start, |p| p + 1);
        Pairs {
            rest: &body[start..end.max(start)],
            failed: false,
            first: true,
        }
    }
}

impl<'a> Iterator for Pairs<'a> {
    type Item = Option<(&'a [u8], &'a [u8])>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed {
            return None;
        }
        if self.rest.is_empty() {
            // An empty comment is no sqlcommenter comment.
            if self.first {
                self.failed = true;
                return Some(None);
            }
            return None;
        }
        if !self.first {
            match self.rest.split_first() {
                Some((b',', r)) => self.rest = r,
                _ => {
                    self.failed = true;
                    return Some(None);
                }
            }
        }
        self.first = false;
        let pair = read_pair(self.rest);
        match pair {
            Some((key, value, rest)) => {
                self.rest = rest;
                Some(Some((key, value)))
            }
            None => {
                self.failed = true;
                Some(None)
            }
        }
    }
}

/// `key='value'` at the start of `s`: key, value (quotes off, escapes
/// kept), and what follows. Besides the spec's single quotes, values as
/// instrumentations write them are read too: unquoted numbers
/// (`libpq_version=170000`, Python's `repr` of an int) and double quotes
/// (its `repr` of a string holding a single quote).
fn read_pair(s: &[u8]) -> Option<(&[u8], &[u8], &[u8])> {
    let eq = s.iter().position(|&b| b == b'=')?;
    let key = &s[..eq];
    if key.is_empty() || !key.iter().all(|&b| is_key_byte(b)) {
        return None;
    }
    let rest = &s[eq + 1..];
    let quote = match rest.first() {
        Some(&q @ (b'\'' | b'"')) => q,
        _ => {
            let end = rest.iter().position(|&b| b == b',').unwrap_or(rest.len());
            let value = &rest[..end];
            let plain = !value.is_empty() && value.iter().all(|&b| is_key_byte(b) || b == b':');
            return plain.then_some((key, value, &rest[end..]));
        }
    };
    let mut i = 1;
    while let Some(&b) = rest.get(i) {
        match b {
            b'\\' => i += 2,
            b if b == quote => return Some((key, &rest[1..i], &rest[i + 1..])),
            // A value never spans a comment's delimiters.
            b'*' if rest.get(i + 1) == Some(&b'/') => return None,
            b'/' if rest.get(i + 1) == Some(&b'*') => return None,
            _ => i += 1,
        }
    }
    None
}

fn is_key_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b'%' | b'~')
}

/// `00-<32 hex>-<16 hex>-<2 hex>`, lower-case, ids not all zero.
fn parse_traceparent(v: &[u8]) -> Option<TraceParent> {
    if v.len() != 55 || &v[..3] != b"00-" || v[35] != b'-' || v[52] != b'-' {
        return None;
    }
    let mut trace_id = [0u8; 16];
    let mut parent_id = [0u8; 8];
    let mut flags = [0u8; 1];
    hex_into(&v[3..35], &mut trace_id)?;
    hex_into(&v[36..52], &mut parent_id)?;
    hex_into(&v[53..55], &mut flags)?;
    if trace_id == [0; 16] || parent_id == [0; 8] {
        return None;
    }
    Some(TraceParent {
        trace_id,
        parent_id,
        flags: flags[0],
    })
}

fn hex_into(hex: &[u8], out: &mut [u8]) -> Option<()> {
    if hex.len() != out.len() * 2 {
        return None;
    }
    for (o, pair) in out.iter_mut().zip(hex.chunks_exact(2)) {
        *o = (nibble(pair[0])? << 4) | nibble(pair[1])?;
    }
    Some(())
}

fn nibble(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        _ => None,
    }
}

/// A percent-encoded `tracestate`, decoded; `None` unless the result is
/// printable ASCII of a sane length.
fn decode_tracestate(v: &[u8]) -> Option<String> {
    if v.len() > TRACESTATE_MAX * 3 {
        return None;
    }
    let mut out = String::with_capacity(v.len());
    let mut i = 0;
    while i < v.len() {
        let b = match v[i] {
            b'%' => {
                let hi = upper_or_lower_nibble(*v.get(i + 1)?)?;
                let lo = upper_or_lower_nibble(*v.get(i + 2)?)?;
                i += 3;
                (hi << 4) | lo
            }
            b => {
                i += 1;
                b
            }
        };
        if !(0x20..=0x7e).contains(&b) {
            return None;
        }
        out.push(char::from(b));
    }
    (!out.is_empty() && out.len() <= TRACESTATE_MAX).then_some(out)
}

fn upper_or_lower_nibble(b: u8) -> Option<u8> {
    nibble(b.to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    const TP: &str = "00-5bd66ef5095369c7b0d1f8f4bd33716a-c532cb4098ac3dd2-01";

    #[test]
    fn reads_the_context_psycopg_appends() {
        let q = format!("SELECT $1::int AS n /*db_driver='psycopg%3A3.2.13',dbapi_level='2.0',libpq_version=170000,traceparent='{TP}'*/\0");
        let c = trace_context(q.as_bytes()).expect("context");
        assert_eq!(c.parent.trace_id[0], 0x5b);
        assert_eq!(c.parent.parent_id[7], 0xd2);
        assert!(c.parent.sampled());
        assert_eq!(c.tracestate, None);
    }

    #[test]
    fn reads_tracestate_and_a_comment_before_the_semicolon() {
        let q = format!("select 1 /*traceparent='{TP}',tracestate='congo%3Dt61rcWkgMzE%2Crojo%3D00f067aa0ba902b7'*/ ;\n");
        let c = trace_context(q.as_bytes()).expect("context");
        assert_eq!(
            c.tracestate.as_deref(),
            Some("congo=t61rcWkgMzE,rojo=00f067aa0ba902b7")
        );
    }

    #[test]
    fn the_range_covers_the_comment_only() {
        let q = format!("select 'a' /*traceparent='{TP}'*/;");
        let r = trailing_comment(q.as_bytes()).expect("comment");
        assert_eq!(&q[..r.start], "select 'a' ");
        assert_eq!(&q[r.end..], ";");
    }

    #[test]
    fn a_comment_inside_a_string_is_not_one() {
        for q in [
            format!("select '/*traceparent=''{TP}''*/"),
            format!("select $x$ /*traceparent='{TP}'*/"),
            format!("select E'\\' /*traceparent='{TP}'*/"),
            format!("select \"/*traceparent='{TP}'*/"),
            format!("select 1 -- /*traceparent='{TP}'*/"),
        ] {
            assert_eq!(trace_context(q.as_bytes()), None, "{q}");
            assert_eq!(trailing_comment(q.as_bytes()), None, "{q}");
        }
    }

    #[test]
    fn malformed_contexts_are_ignored() {
        let bad = [
            "01-5bd66ef5095369c7b0d1f8f4bd33716a-c532cb4098ac3dd2-01",
            "00-5BD66EF5095369C7B0D1F8F4BD33716A-c532cb4098ac3dd2-01",
            "00-5bd66ef5095369c7b0d1f8f4bd33716-c532cb4098ac3dd2-01",
            "00-00000000000000000000000000000000-c532cb4098ac3dd2-01",
            "00-5bd66ef5095369c7b0d1f8f4bd33716a-0000000000000000-01",
            "00-5bd66ef5095369c7b0d1f8f4bd33716a-c532cb4098ac3dd2-0g",
            "00-5bd66ef5095369c7b0d1f8f4bd33716a-c532cb4098ac3dd2-01-",
        ];
        for tp in bad {
            let q = format!("select 1 /*traceparent='{tp}'*/");
            assert_eq!(trace_context(q.as_bytes()), None, "{tp}");
        }
        for q in [
            format!("select 1 /*traceparent='{TP}'"),
            format!("select 1 /*traceparent='{TP}*/"),
            format!("select 1 /*traceparent='{TP}',traceparent='{TP}'*/"),
            format!("select 1 /* /*traceparent='{TP}'*/ */"),
            format!("select 1 /*x /*traceparent='{TP}'*/"),
            format!("select 1 /*traceparent='{TP}'*/ x"),
            format!("select 1 /*traceparent='{TP}'*//**/"),
            "select 1 /**/".to_owned(),
            "*/".to_owned(),
        ] {
            assert_eq!(trace_context(q.as_bytes()), None, "{q}");
        }
    }

    #[test]
    fn two_instrumentations_append_two_comments_and_the_last_is_the_statement_s() {
        let django = "/*controller='note',framework='django%3A5.2.8',traceparent='00-5bd66ef5095369c7b0d1f8f4bd33716a-1111111111111111-01'*/";
        let q = format!("SELECT 1 {django} /*traceparent='{TP}'*/;");
        let c = trace_context(q.as_bytes()).expect("context");
        assert_eq!(c.parent.parent_id[7], 0xd2);
        let r = trailing_comment(q.as_bytes()).expect("comments");
        assert_eq!(&q[..r.start], "SELECT 1 ");
        assert_eq!(&q[r.end..], ";");
        // A plain comment before them is the statement's own.
        let q = format!("SELECT 1 /* note */ /*traceparent='{TP}'*/");
        let r = trailing_comment(q.as_bytes()).expect("comment");
        assert_eq!(&q[..r.start], "SELECT 1 /* note */ ");
    }

    #[test]
    fn unsampled_parents_read_as_such() {
        let q =
            "select 1 /*traceparent='00-5bd66ef5095369c7b0d1f8f4bd33716a-c532cb4098ac3dd2-00'*/";
        assert!(!trace_context(q.as_bytes())
            .expect("context")
            .parent
            .sampled());
    }

    #[test]
    fn the_cheap_check_looks_at_the_end_only() {
        assert!(may_carry_comment(b"select 1 /* x */ ;\0"));
        assert!(!may_carry_comment(b"select 1\0"));
        assert!(!may_carry_comment(b"*/"));
    }
}
