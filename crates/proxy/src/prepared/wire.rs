//! Reading and writing the few message fields the rewriter and tracker
//! touch, and editing statement names out of server errors.

use bytes::{BufMut, BytesMut};
use pgwake_protocol::backend::parse::error_fields;

use super::rewrite::TooLarge;

/// The NUL-terminated string at `body[at..]` and the offset after its NUL.
pub(super) fn cstr(body: &[u8], at: usize) -> Option<(&[u8], usize)> {
    let s = body.get(at..)?;
    let end = s.iter().position(|&b| b == 0)?;
    Some((&s[..end], at + end + 1))
}

/// The length field of a message with a body of `body` bytes.
pub(super) fn length(tag: u8, body: usize) -> Result<i32, TooLarge> {
    body.checked_add(4)
        .and_then(|n| i32::try_from(n).ok())
        .ok_or(TooLarge {
            tag: char::from(tag),
            len: body,
        })
}

/// The length field of one of pgwake's own small messages.
pub(super) fn fixed_length(body: usize) -> i32 {
    i32::try_from(body + 4).unwrap_or(i32::MAX)
}

pub(super) fn put_header(out: &mut BytesMut, tag: u8, len: i32) {
    out.put_u8(tag);
    out.put_i32(len);
}

pub(super) fn put_cstr(out: &mut BytesMut, s: &[u8]) {
    out.put_slice(s);
    out.put_u8(0);
}

/// A message without a body: ParseComplete, CloseComplete.
pub(super) fn put_empty(out: &mut BytesMut, tag: u8) {
    put_header(out, tag, 4);
}

pub(super) fn put_describe_statement(out: &mut BytesMut, name: &[u8]) {
    put_header(out, b'D', fixed_length(name.len() + 2));
    out.put_u8(b'S');
    put_cstr(out, name);
}

pub(super) fn put_close_statement(out: &mut BytesMut, name: &[u8]) {
    put_header(out, b'C', fixed_length(name.len() + 2));
    out.put_u8(b'S');
    put_cstr(out, name);
}

pub(super) fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() {
        return None;
    }
    hay.windows(needle.len()).position(|w| w == needle)
}

/// What becomes of an error's position (field `P`, 1-based, in characters)
/// when the query text was changed on the way to the server.
#[derive(Debug, Clone, Copy)]
pub(super) enum Position {
    Keep,
    /// It points into text pgwake wrote.
    Drop,
    /// `new` characters at offset `at` replaced `old` ones of the client's text.
    Shift {
        at: usize,
        old: usize,
        new: usize,
    },
}

impl Position {
    pub(super) fn map(self, value: &[u8]) -> Option<Vec<u8>> {
        let Position::Shift { at, old, new } = self else {
            return matches!(self, Position::Keep).then(|| value.to_vec());
        };
        let p: usize = std::str::from_utf8(value).ok()?.parse().ok()?;
        let p = match p.checked_sub(1)? {
            i if i < at => p,
            i if i < at + new => at + 1,
            _ => p - new + old,
        };
        Some(p.to_string().into_bytes())
    }
}

/// Writes the ErrorResponse `body` with every `from` replaced by `to`, as
/// the client's own session would have named the statement, and its
/// position mapped; false (and nothing written) when that changes nothing.
pub(super) fn edit_error(
    body: &[u8],
    from: &[u8],
    to: &[u8],
    position: Position,
    out: &mut BytesMut,
) -> bool {
    if find(body, from).is_none() && matches!(position, Position::Keep) {
        return false;
    }
    let start = out.len();
    out.put_u8(b'E');
    out.put_i32(0);
    for (code, mut value) in error_fields(body) {
        if code == b'P' {
            if let Some(p) = position.map(value) {
                out.put_u8(code);
                put_cstr(out, &p);
            }
            continue;
        }
        out.put_u8(code);
        while let Some(at) = find(value, from) {
            out.put_slice(&value[..at]);
            out.put_slice(to);
            value = &value[at + from.len()..];
        }
        put_cstr(out, value);
    }
    out.put_u8(0);
    match i32::try_from(out.len() - start - 1) {
        Ok(len) => {
            out[start + 1..start + 5].copy_from_slice(&len.to_be_bytes());
            true
        }
        Err(_) => {
            out.truncate(start);
            false
        }
    }
}
