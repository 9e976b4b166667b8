//! Backend messages pgwake writes to its clients itself: the startup replies
//! and its own errors and notices. (`postgres-protocol` parses backend
//! messages but writes only frontend ones.) [`parse`] reads the server's
//! messages pgwake looks into as they pass.

use bytes::{BufMut, BytesMut};

pub mod parse;

/// The one-byte answer to SSLRequest and GSSENCRequest when encryption is off.
pub const ENCRYPTION_REFUSED: u8 = b'N';
/// The answer to an SSLRequest that the server accepts: TLS starts next.
pub const ENCRYPTION_ACCEPTED: u8 = b'S';

/// Severity of an error or notice (both the localized `S` and the fixed `V` field).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    Error,
    Fatal,
    Notice,
    Warning,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Error => "ERROR",
            Severity::Fatal => "FATAL",
            Severity::Notice => "NOTICE",
            Severity::Warning => "WARNING",
        }
    }
}

/// An error or notice as a client sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorMessage {
    pub severity: Severity,
    pub code: String,
    pub message: String,
    pub detail: Option<String>,
    pub hint: Option<String>,
}

impl ErrorMessage {
    /// An `ERROR` (the session goes on).
    pub fn error(code: &str, message: impl Into<String>) -> Self {
        Self::new(Severity::Error, code, message)
    }

    /// A `FATAL` (the connection closes after it).
    pub fn fatal(code: &str, message: impl Into<String>) -> Self {
        Self::new(Severity::Fatal, code, message)
    }

    pub fn new(severity: Severity, code: &str, message: impl Into<String>) -> Self {
        ErrorMessage {
            severity,
            code: code.to_owned(),
            message: message.into(),
            detail: None,
            hint: None,
        }
    }

    pub fn with_hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }

    pub fn with_detail(mut self, detail: impl Into<String>) -> Self {
        self.detail = Some(detail.into());
        self
    }

    /// Appends this as an ErrorResponse (`E`), or a NoticeResponse (`N`) for
    /// the notice and warning severities.
    pub fn write(&self, buf: &mut BytesMut) {
        let tag = match self.severity {
            Severity::Error | Severity::Fatal => b'E',
            Severity::Notice | Severity::Warning => b'N',
        };
        frame(buf, tag, |b| {
            let sev = self.severity.as_str();
            field(b, b'S', sev);
            field(b, b'V', sev);
            field(b, b'C', &self.code);
            field(b, b'M', &self.message);
            if let Some(d) = &self.detail {
                field(b, b'D', d);
            }
            if let Some(h) = &self.hint {
                field(b, b'H', h);
            }
            b.put_u8(0);
        });
    }
}

/// Postgres strings cannot hold NUL; a NUL in text we did not write ends it there.
fn field(buf: &mut BytesMut, code: u8, value: &str) {
    buf.put_u8(code);
    cstr(buf, value);
}

fn cstr(buf: &mut BytesMut, value: &str) {
    let bytes = value.as_bytes();
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    buf.put_slice(&bytes[..end]);
    buf.put_u8(0);
}

/// Writes one frame, filling in its length after the body.
fn frame(buf: &mut BytesMut, tag: u8, body: impl FnOnce(&mut BytesMut)) {
    buf.put_u8(tag);
    let at = buf.len();
    buf.put_u32(0);
    body(buf);
    // Every message written here is far below 4 GiB.
    let len = u32::try_from(buf.len() - at).unwrap_or(u32::MAX);
    buf[at..at + 4].copy_from_slice(&len.to_be_bytes());
}

/// AuthenticationOk.
pub fn auth_ok(buf: &mut BytesMut) {
    frame(buf, b'R', |b| b.put_u32(0));
}

/// AuthenticationMD5Password with its 4-byte salt.
pub fn auth_md5(buf: &mut BytesMut, salt: [u8; 4]) {
    frame(buf, b'R', |b| {
        b.put_u32(5);
        b.put_slice(&salt);
    });
}

/// AuthenticationSASL: the SASL mechanisms the client may choose from.
pub fn auth_sasl(buf: &mut BytesMut, mechanisms: &[&str]) {
    frame(buf, b'R', |b| {
        b.put_u32(10);
        for m in mechanisms {
            cstr(b, m);
        }
        b.put_u8(0);
    });
}

/// AuthenticationSASLContinue with the mechanism's challenge.
pub fn auth_sasl_continue(buf: &mut BytesMut, data: &[u8]) {
    frame(buf, b'R', |b| {
        b.put_u32(11);
        b.put_slice(data);
    });
}

/// AuthenticationSASLFinal with the mechanism's outcome.
pub fn auth_sasl_final(buf: &mut BytesMut, data: &[u8]) {
    frame(buf, b'R', |b| {
        b.put_u32(12);
        b.put_slice(data);
    });
}

/// ParameterStatus.
pub fn parameter_status(buf: &mut BytesMut, name: &str, value: &str) {
    frame(buf, b'S', |b| {
        cstr(b, name);
        cstr(b, value);
    });
}

/// BackendKeyData: the process id and secret key a client quotes to cancel.
pub fn backend_key_data(buf: &mut BytesMut, pid: u32, key: u32) {
    frame(buf, b'K', |b| {
        b.put_u32(pid);
        b.put_u32(key);
    });
}

/// The transaction status a ReadyForQuery reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TxStatus {
    /// `I`: no transaction block.
    Idle,
    /// `T`: in a transaction block.
    InTransaction,
    /// `E`: in a failed transaction block (queries refused until it ends).
    Failed,
}

impl TxStatus {
    /// The status byte of a ReadyForQuery body; anything unknown counts as
    /// failed, so that such a connection is never handed to another client.
    pub fn from_byte(b: u8) -> TxStatus {
        match b {
            b'I' => TxStatus::Idle,
            b'T' => TxStatus::InTransaction,
            _ => TxStatus::Failed,
        }
    }

    /// The status byte a ReadyForQuery carries.
    pub fn byte(self) -> u8 {
        match self {
            TxStatus::Idle => b'I',
            TxStatus::InTransaction => b'T',
            TxStatus::Failed => b'E',
        }
    }
}

/// ReadyForQuery with a transaction status of `I`, `T` or `E`.
pub fn ready_for_query(buf: &mut BytesMut, status: u8) {
    frame(buf, b'Z', |b| b.put_u8(status));
}

/// NegotiateProtocolVersion: the newest minor version supported and the
/// protocol options that were not recognised.
pub fn negotiate_protocol_version(buf: &mut BytesMut, minor: u16, unsupported: &[&str]) {
    frame(buf, b'v', |b| {
        b.put_u32((3u32 << 16) | u32::from(minor));
        b.put_u32(u32::try_from(unsupported.len()).unwrap_or(u32::MAX));
        for o in unsupported {
            cstr(b, o);
        }
    });
}

/// CommandComplete.
pub fn command_complete(buf: &mut BytesMut, tag: &str) {
    frame(buf, b'C', |b| cstr(b, tag));
}

/// Type OIDs of result columns.
pub mod oid {
    pub const TEXT: u32 = 25;
    pub const INT4: u32 = 23;
    pub const INT8: u32 = 20;
}

/// RowDescription: column names and type OIDs, all in text format.
pub fn row_description(buf: &mut BytesMut, columns: &[(&str, u32)]) {
    frame(buf, b'T', |b| {
        b.put_u16(u16::try_from(columns.len()).unwrap_or(u16::MAX));
        for (name, type_oid) in columns {
            cstr(b, name);
            b.put_u32(0); // table
            b.put_u16(0); // column
            b.put_u32(*type_oid);
            let size: i16 = match *type_oid {
                oid::INT4 => 4,
                oid::INT8 => 8,
                _ => -1,
            };
            b.put_i16(size);
            b.put_i32(-1); // type modifier
            b.put_u16(0); // text format
        }
    });
}

/// DataRow with text values; `None` is NULL.
pub fn data_row<S: AsRef<str>>(buf: &mut BytesMut, values: &[Option<S>]) {
    frame(buf, b'D', |b| {
        b.put_u16(u16::try_from(values.len()).unwrap_or(u16::MAX));
        for v in values {
            match v {
                None => b.put_i32(-1),
                Some(v) => {
                    let v = v.as_ref().as_bytes();
                    b.put_i32(i32::try_from(v.len()).unwrap_or(i32::MAX));
                    b.put_slice(v);
                }
            }
        }
    });
}

/// EmptyQueryResponse.
pub fn empty_query(buf: &mut BytesMut) {
    frame(buf, b'I', |_| {});
}

#[cfg(test)]
mod tests {
    use super::*;
    use postgres_protocol::message::backend::Message;

    fn parse_one(buf: &mut BytesMut) -> Message {
        Message::parse(buf).unwrap().expect("complete message")
    }

    #[test]
    fn error_response_decodes_with_postgres_protocol() {
        let mut buf = BytesMut::new();
        ErrorMessage::fatal("53300", "too many clients")
            .with_hint("raise max_client_conn")
            .write(&mut buf);
        let Message::ErrorResponse(body) = parse_one(&mut buf) else {
            panic!("not an error")
        };
        use fallible_iterator::FallibleIterator;
        let fields: Vec<(u8, String)> = body
            .fields()
            .map(|f| {
                Ok((
                    f.type_(),
                    String::from_utf8_lossy(f.value_bytes()).into_owned(),
                ))
            })
            .collect()
            .unwrap();
        assert!(fields.contains(&(b'C', "53300".into())));
        assert!(fields.contains(&(b'S', "FATAL".into())));
        assert!(fields.contains(&(b'H', "raise max_client_conn".into())));
        assert!(buf.is_empty());
    }

    #[test]
    fn startup_replies_decode() {
        let mut buf = BytesMut::new();
        auth_ok(&mut buf);
        parameter_status(&mut buf, "TimeZone", "UTC");
        backend_key_data(&mut buf, 42, 7);
        ready_for_query(&mut buf, b'I');
        assert!(matches!(parse_one(&mut buf), Message::AuthenticationOk));
        let Message::ParameterStatus(p) = parse_one(&mut buf) else {
            panic!()
        };
        assert_eq!((p.name().unwrap(), p.value().unwrap()), ("TimeZone", "UTC"));
        let Message::BackendKeyData(k) = parse_one(&mut buf) else {
            panic!()
        };
        assert_eq!((k.process_id(), k.secret_key()), (42, 7));
        let Message::ReadyForQuery(r) = parse_one(&mut buf) else {
            panic!()
        };
        assert_eq!(r.status(), b'I');
    }
}
