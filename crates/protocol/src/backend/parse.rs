//! Reading the backend messages pgwake looks into on their way to a client:
//! ErrorResponse and NoticeResponse fields, ParameterStatus, DataRow.
//!
//! `postgres-protocol` parses these too, but only out of a `BytesMut` holding
//! the whole frame, which it splits off and freezes; its bodies cannot be
//! built over the `&[u8]` a [`Scanner`](crate::Scanner) hands out without
//! copying every frame, and the relay looks into every ErrorResponse. These
//! readers borrow the body instead, and agree with `postgres-protocol` on
//! every body it accepts (the tests and fuzz targets check that).
//!
//! pgwake forwards these frames as they came and reads them only to follow
//! the session, so the readers take what they need and ignore bytes after
//! it: a stricter reading would change nothing the client receives.

use thiserror::Error;

use super::{ErrorMessage, Severity};
use crate::sqlstate;

/// A backend message body that does not follow the protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
#[error("malformed {message}: {reason}")]
pub struct Malformed {
    /// The message type, e.g. `"DataRow"`.
    pub message: &'static str,
    pub reason: &'static str,
}

/// The fields of an ErrorResponse or NoticeResponse body.
pub fn error_fields(body: &[u8]) -> ErrorFields<'_> {
    ErrorFields { rest: body }
}

/// Iterates `(code, value)` in the order sent, up to the zero code that ends
/// the list. A last field missing its NUL runs to the end of the body.
#[derive(Debug, Clone)]
pub struct ErrorFields<'a> {
    rest: &'a [u8],
}

impl<'a> Iterator for ErrorFields<'a> {
    type Item = (u8, &'a [u8]);

    #[inline]
    fn next(&mut self) -> Option<Self::Item> {
        let (&code, after) = self.rest.split_first()?;
        if code == 0 {
            self.rest = &[];
            return None;
        }
        let end = after.iter().position(|&b| b == 0).unwrap_or(after.len());
        let (value, rest) = after.split_at(end);
        self.rest = rest.get(1..).unwrap_or_default();
        Some((code, value))
    }
}

impl std::iter::FusedIterator for ErrorFields<'_> {}

impl<'a> ErrorFields<'a> {
    /// The value of the first field with this code. PostgreSQL sends each
    /// field at most once; taking the first lets a check stop early.
    #[inline]
    pub fn get(&self, code: u8) -> Option<&'a [u8]> {
        self.clone().find_map(|(c, v)| (c == code).then_some(v))
    }

    /// The `V` field: the severity, never translated (`S` may be).
    #[inline]
    pub fn severity(&self) -> Option<&'a [u8]> {
        self.get(b'V')
    }

    /// Whether the severity is FATAL or PANIC: the server closes the
    /// connection right after it.
    #[inline]
    pub fn is_fatal(&self) -> bool {
        matches!(self.severity(), Some(b"FATAL" | b"PANIC"))
    }

    /// The `C` field: the SQLSTATE code.
    #[inline]
    pub fn sqlstate(&self) -> Option<&'a [u8]> {
        self.get(b'C')
    }

    /// The `M` field: the primary message.
    #[inline]
    pub fn message(&self) -> Option<&'a [u8]> {
        self.get(b'M')
    }
}

impl ErrorMessage {
    /// The error or notice a server sent, from its fields ([`error_fields`],
    /// or `postgres-protocol`'s for a parsed message). Text is read as
    /// UTF-8 with invalid bytes replaced; a field that is absent reads as in
    /// an ERROR `08P01` "(no message)". The first of a repeated field counts,
    /// as in [`ErrorFields::get`].
    pub fn from_fields<'a>(fields: impl IntoIterator<Item = (u8, &'a [u8])>) -> Self {
        let (mut severity, mut code, mut message, mut detail, mut hint) =
            (None, None, None, None, None);
        for (c, value) in fields {
            let slot = match c {
                b'V' => &mut severity,
                b'C' => &mut code,
                b'M' => &mut message,
                b'D' => &mut detail,
                b'H' => &mut hint,
                _ => continue,
            };
            slot.get_or_insert(value);
        }
        let text = |v: &[u8]| String::from_utf8_lossy(v).into_owned();
        let severity = match severity {
            Some(b"FATAL" | b"PANIC") => Severity::Fatal,
            Some(b"WARNING") => Severity::Warning,
            Some(b"NOTICE" | b"INFO" | b"LOG" | b"DEBUG") => Severity::Notice,
            _ => Severity::Error,
        };
        ErrorMessage {
            severity,
            code: code.map_or_else(|| sqlstate::PROTOCOL_VIOLATION.to_owned(), text),
            message: message.map_or_else(|| "(no message)".to_owned(), text),
            detail: detail.map(text),
            hint: hint.map(text),
        }
    }
}

/// The name and value of a ParameterStatus body.
pub fn parameter_status(body: &[u8]) -> Result<(&str, &str), Malformed> {
    let malformed = |reason| Malformed {
        message: "ParameterStatus",
        reason,
    };
    let (name, rest) = cstr(body).ok_or(malformed("name without a NUL"))?;
    let (value, _) = cstr(rest).ok_or(malformed("value without a NUL"))?;
    let utf8 = |s| std::str::from_utf8(s).map_err(|_| malformed("not valid UTF-8"));
    Ok((utf8(name)?, utf8(value)?))
}

/// The NUL-terminated string at the start of `buf`, and what follows its NUL.
fn cstr(buf: &[u8]) -> Option<(&[u8], &[u8])> {
    let end = buf.iter().position(|&b| b == 0)?;
    Some((&buf[..end], &buf[end + 1..]))
}

/// The columns of a DataRow body; `Err` when it lacks even the column count.
pub fn data_row(body: &[u8]) -> Result<DataRow<'_>, Malformed> {
    let (count, rest) = body.split_first_chunk::<2>().ok_or(Malformed {
        message: "DataRow",
        reason: "no column count",
    })?;
    Ok(DataRow {
        rest,
        remaining: u16::from_be_bytes(*count),
    })
}

/// Iterates the columns of a DataRow in order: `Some(value)`, or `None` for
/// NULL. A column cut short yields one `Err`, and the iteration ends.
#[derive(Debug, Clone)]
pub struct DataRow<'a> {
    rest: &'a [u8],
    /// Columns still to read, as the count field says.
    remaining: u16,
}

impl<'a> DataRow<'a> {
    fn cut_short(&mut self, reason: &'static str) -> Option<Result<Option<&'a [u8]>, Malformed>> {
        self.remaining = 0;
        self.rest = &[];
        Some(Err(Malformed {
            message: "DataRow",
            reason,
        }))
    }
}

impl<'a> Iterator for DataRow<'a> {
    type Item = Result<Option<&'a [u8]>, Malformed>;

    fn next(&mut self) -> Option<Self::Item> {
        self.remaining = self.remaining.checked_sub(1)?;
        let Some((len, after)) = self.rest.split_first_chunk::<4>() else {
            return self.cut_short("column length cut short");
        };
        self.rest = after;
        // -1 is NULL; any negative length counts as NULL, as in
        // postgres-protocol and libpq.
        let Ok(len) = usize::try_from(i32::from_be_bytes(*len)) else {
            return Some(Ok(None));
        };
        let Some((value, rest)) = self.rest.split_at_checked(len) else {
            return self.cut_short("column value cut short");
        };
        self.rest = rest;
        Some(Ok(Some(value)))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (0, Some(usize::from(self.remaining)))
    }
}

impl std::iter::FusedIterator for DataRow<'_> {}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::{BufMut, BytesMut};
    use fallible_iterator::FallibleIterator;
    use postgres_protocol::message::backend::Message;
    use proptest::prelude::*;

    /// What postgres-protocol makes of a body with this tag, when it accepts it.
    fn reference(tag: u8, body: &[u8]) -> Option<Message> {
        let mut buf = BytesMut::new();
        buf.put_u8(tag);
        buf.put_u32(u32::try_from(body.len() + 4).unwrap());
        buf.put_slice(body);
        Message::parse(&mut buf).ok().flatten()
    }

    fn reference_error_fields(body: &[u8]) -> Option<Vec<(u8, Vec<u8>)>> {
        let Some(Message::ErrorResponse(e)) = reference(b'E', body) else {
            return None;
        };
        e.fields()
            .map(|f| Ok((f.type_(), f.value_bytes().to_vec())))
            .collect()
            .ok()
    }

    fn reference_data_row(body: &[u8]) -> Option<Vec<Option<Vec<u8>>>> {
        let Some(Message::DataRow(row)) = reference(b'D', body) else {
            return None;
        };
        let storage = row.buffer();
        row.ranges()
            .map(|r| Ok(r.map(|r| storage[r].to_vec())))
            .collect()
            .ok()
    }

    fn reference_parameter_status(body: &[u8]) -> Option<(String, String)> {
        let Some(Message::ParameterStatus(p)) = reference(b'S', body) else {
            return None;
        };
        Some((p.name().ok()?.to_owned(), p.value().ok()?.to_owned()))
    }

    fn owned_fields(body: &[u8]) -> Vec<(u8, Vec<u8>)> {
        error_fields(body).map(|(c, v)| (c, v.to_vec())).collect()
    }

    fn owned_row(body: &[u8]) -> Result<Vec<Option<Vec<u8>>>, Malformed> {
        data_row(body)?
            .map(|c| c.map(|v| v.map(<[u8]>::to_vec)))
            .collect()
    }

    fn encode_fields(fields: &[(u8, Vec<u8>)]) -> Vec<u8> {
        let mut body = Vec::new();
        for (code, value) in fields {
            body.push(*code);
            body.extend_from_slice(value);
            body.push(0);
        }
        body.push(0);
        body
    }

    fn encode_row(columns: &[Option<Vec<u8>>]) -> Vec<u8> {
        let mut body = u16::try_from(columns.len()).unwrap().to_be_bytes().to_vec();
        for c in columns {
            match c {
                None => body.extend_from_slice(&(-1i32).to_be_bytes()),
                Some(v) => {
                    body.extend_from_slice(&i32::try_from(v.len()).unwrap().to_be_bytes());
                    body.extend_from_slice(v);
                }
            }
        }
        body
    }

    /// The body of the one frame in `buf`.
    fn body_of(buf: &BytesMut) -> &[u8] {
        &buf[crate::HEADER_LEN..]
    }

    #[test]
    fn parses_server_errors() {
        let mut buf = BytesMut::new();
        ErrorMessage::fatal("3D000", "database \"x\" does not exist").write(&mut buf);
        let e = ErrorMessage::from_fields(error_fields(&buf[5..]));
        assert_eq!(e.code, "3D000");
        assert_eq!(e.severity, Severity::Fatal);
        assert_eq!(e.message, "database \"x\" does not exist");
    }

    #[test]
    fn fatal_is_read_from_the_untranslated_severity() {
        assert!(error_fields(b"SFATAL\0VFATAL\0C57P01\0\0").is_fatal());
        assert!(error_fields(b"VPANIC\0").is_fatal());
        // A translated `S` says nothing; `V` decides.
        assert!(!error_fields(b"SFATAL\0VERROR\0\0").is_fatal());
        assert!(
            !error_fields(b"SFATAL\0\0VFATAL\0").is_fatal(),
            "after the end"
        );
        assert!(!error_fields(b"").is_fatal());
    }

    #[test]
    fn error_fields_are_lenient_at_the_end() {
        assert_eq!(
            owned_fields(b"Cx\0Mcut"),
            vec![(b'C', b"x".to_vec()), (b'M', b"cut".to_vec())]
        );
        assert_eq!(owned_fields(b"M\0\0trailing"), vec![(b'M', vec![])]);
        let e = ErrorMessage::from_fields(error_fields(b"Sx\0"));
        assert_eq!(
            e,
            ErrorMessage::error(sqlstate::PROTOCOL_VIOLATION, "(no message)")
        );
    }

    #[test]
    fn notices_keep_their_severity() {
        for (v, severity) in [
            ("WARNING", Severity::Warning),
            ("LOG", Severity::Notice),
            ("INFO", Severity::Notice),
            ("PANIC", Severity::Fatal),
            ("whatever", Severity::Error),
        ] {
            let body = encode_fields(&[(b'V', v.into()), (b'C', b"01000".to_vec())]);
            assert_eq!(
                ErrorMessage::from_fields(error_fields(&body)).severity,
                severity
            );
        }
    }

    #[test]
    fn data_rows() {
        let body = encode_row(&[Some(b"1".to_vec()), None, Some(vec![])]);
        assert_eq!(
            owned_row(&body),
            Ok(vec![Some(b"1".to_vec()), None, Some(vec![])])
        );
        assert!(data_row(b"\0").is_err());
        // Two columns announced, the second cut short: the first still reads.
        let mut cut = encode_row(&[Some(b"ab".to_vec()), Some(b"cd".to_vec())]);
        cut.pop();
        let cols: Vec<_> = data_row(&cut).unwrap().collect();
        assert_eq!(cols.len(), 2);
        assert_eq!(cols[0], Ok(Some(&b"ab"[..])));
        assert!(cols[1].is_err());
        // A huge length never allocates or reads past the body.
        let mut huge = 1u16.to_be_bytes().to_vec();
        huge.extend_from_slice(&i32::MAX.to_be_bytes());
        assert!(owned_row(&huge).is_err());
    }

    #[test]
    fn parameter_statuses() {
        assert_eq!(
            parameter_status(b"TimeZone\0UTC\0"),
            Ok(("TimeZone", "UTC"))
        );
        assert!(parameter_status(b"TimeZone\0UTC").is_err());
        assert!(parameter_status(b"").is_err());
        assert!(parameter_status(b"\xff\0x\0").is_err());
    }

    /// Any bytes, zero more often than by chance: it ends strings and fields
    /// and makes the lengths small enough to land inside the body.
    fn bytes_with_nuls(len: std::ops::Range<usize>) -> impl Strategy<Value = Vec<u8>> {
        proptest::collection::vec(prop_oneof![3 => any::<u8>(), 1 => Just(0u8)], len)
    }

    fn text() -> impl Strategy<Value = String> {
        any::<String>().prop_map(|s| s.replace('\0', ""))
    }

    fn error_message() -> impl Strategy<Value = ErrorMessage> {
        (
            prop::sample::select(vec![
                Severity::Error,
                Severity::Fatal,
                Severity::Notice,
                Severity::Warning,
            ]),
            text(),
            text(),
            proptest::option::of(text()),
            proptest::option::of(text()),
        )
            .prop_map(|(severity, code, message, detail, hint)| ErrorMessage {
                severity,
                code,
                message,
                detail,
                hint,
            })
    }

    fn field_list() -> impl Strategy<Value = Vec<(u8, Vec<u8>)>> {
        proptest::collection::vec(
            (1u8..=255, proptest::collection::vec(1u8..=255, 0..40)),
            0..12,
        )
    }

    proptest! {
        #[test]
        fn error_message_round_trips(msg in error_message()) {
            let mut buf = BytesMut::new();
            msg.write(&mut buf);
            let fields = error_fields(body_of(&buf));
            prop_assert_eq!(fields.is_fatal(), msg.severity == Severity::Fatal);
            prop_assert_eq!(fields.sqlstate(), Some(msg.code.as_bytes()));
            prop_assert_eq!(fields.message(), Some(msg.message.as_bytes()));
            prop_assert_eq!(ErrorMessage::from_fields(fields), msg);
        }

        #[test]
        fn error_fields_round_trip(fields in field_list()) {
            let body = encode_fields(&fields);
            prop_assert_eq!(&owned_fields(&body), &fields);
            prop_assert_eq!(reference_error_fields(&body), Some(fields));
        }

        #[test]
        fn error_fields_of_any_bytes(body in bytes_with_nuls(0..200)) {
            let fields = owned_fields(&body);
            for (code, value) in &fields {
                prop_assert!(*code != 0 && !value.contains(&0));
            }
            if let Some(reference) = reference_error_fields(&body) {
                prop_assert_eq!(&fields, &reference);
            }
            let first_v = fields.iter().find(|(c, _)| *c == b'V').map(|(_, v)| v.as_slice());
            prop_assert_eq!(error_fields(&body).is_fatal(), matches!(first_v, Some(b"FATAL" | b"PANIC")));
            let _ = ErrorMessage::from_fields(error_fields(&body));
        }

        #[test]
        fn data_row_round_trips(columns in proptest::collection::vec(proptest::option::of(any::<String>()), 0..20)) {
            let mut buf = BytesMut::new();
            super::super::data_row(&mut buf, &columns);
            let want: Vec<Option<Vec<u8>>> = columns
                .iter()
                .map(|c| c.as_ref().map(|s| s.as_bytes().to_vec()))
                .collect();
            prop_assert_eq!(owned_row(body_of(&buf)), Ok(want.clone()));
            prop_assert_eq!(reference_data_row(body_of(&buf)), Some(want));
        }

        #[test]
        fn binary_data_row_round_trips(columns in proptest::collection::vec(proptest::option::of(proptest::collection::vec(any::<u8>(), 0..50)), 0..20)) {
            let body = encode_row(&columns);
            prop_assert_eq!(owned_row(&body), Ok(columns.clone()));
            prop_assert_eq!(reference_data_row(&body), Some(columns));
        }

        #[test]
        fn data_row_of_any_bytes(body in bytes_with_nuls(0..200)) {
            let row = owned_row(&body);
            if let Some(reference) = reference_data_row(&body) {
                prop_assert_eq!(row, Ok(reference));
            }
            if let Ok(row) = data_row(&body) {
                let declared = usize::from(u16::from_be_bytes([body[0], body[1]]));
                let columns: Vec<_> = row.collect();
                prop_assert!(columns.len() <= declared);
                prop_assert!(columns.iter().take(columns.len().saturating_sub(1)).all(Result::is_ok));
            }
        }

        #[test]
        fn parameter_status_round_trips(name in text(), value in text()) {
            let mut buf = BytesMut::new();
            super::super::parameter_status(&mut buf, &name, &value);
            prop_assert_eq!(parameter_status(body_of(&buf)), Ok((name.as_str(), value.as_str())));
            prop_assert_eq!(reference_parameter_status(body_of(&buf)), Some((name, value)));
        }

        #[test]
        fn parameter_status_of_any_bytes(body in bytes_with_nuls(0..100)) {
            let parsed = parameter_status(&body);
            if let Ok((name, value)) = parsed {
                prop_assert!(!name.contains('\0') && !value.contains('\0'));
                prop_assert!(body.starts_with(&[name.as_bytes(), b"\0", value.as_bytes(), b"\0"].concat()));
            }
            if let Some((name, value)) = reference_parameter_status(&body) {
                prop_assert_eq!(parsed, Ok((name.as_str(), value.as_str())));
            }
        }
    }
}
