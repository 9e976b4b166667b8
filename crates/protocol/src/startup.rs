//! The server side of the startup handshake: the first packet a client sends
//! (SSLRequest, GSSENCRequest, CancelRequest or StartupMessage). Startup
//! packets have no tag byte: a four-byte length, then a four-byte code.

use thiserror::Error;

/// PostgreSQL's own cap on a startup packet (`MAX_STARTUP_PACKET_LENGTH`).
pub const MAX_STARTUP_LEN: usize = 10_000;

const SSL_REQUEST: u32 = 80_877_103;
const GSSENC_REQUEST: u32 = 80_877_104;
const CANCEL_REQUEST: u32 = 80_877_102;
const PROTOCOL_3: u16 = 3;
/// The newest minor version of protocol 3 pgwake speaks. Clients asking for a
/// newer one get a NegotiateProtocolVersion naming this one.
pub const SUPPORTED_MINOR: u16 = 0;

/// A parsed startup packet, borrowing from the packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartupRequest<'a> {
    Ssl,
    GssEnc,
    Cancel {
        pid: u32,
        key: u32,
    },
    Startup {
        /// Minor protocol version the client asked for.
        minor: u16,
        params: StartupParams<'a>,
    },
}

/// A StartupMessage's parameters, read in place: [`parse`] checked their
/// layout and UTF-8 once, so reading them copies and allocates nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StartupParams<'a> {
    /// `key NUL value NUL` pairs, the packet's final terminator excluded.
    pairs: &'a str,
    /// Where the first value of each of [`LOOKED_UP`] lies in `pairs`
    /// (start, length), found while checking; `NOT_SENT` if absent. Offsets
    /// rather than slices keep the struct small: logins move it around.
    looked_up: [(u16, u16); LOOKED_UP.len()],
    /// Whether any key is a `_pq_.` protocol option (nearly never): the
    /// common login then reads the pairs without looking for them.
    has_protocol_options: bool,
}

const NOT_SENT: (u16, u16) = (u16::MAX, 0);
const _: () = assert!(MAX_STARTUP_LEN < u16::MAX as usize);

/// The parameters a login looks up, each perhaps several times: found once.
const LOOKED_UP: [&str; 5] = [
    "user",
    "database",
    "application_name",
    "replication",
    "options",
];

impl<'a> StartupParams<'a> {
    fn all(self) -> impl Iterator<Item = (&'a str, &'a str)> {
        let mut rest = self.pairs;
        std::iter::from_fn(move || {
            if rest.is_empty() {
                return None;
            }
            let (key, after) = split_field(rest);
            let (value, after) = split_field(after);
            rest = after;
            Some((key, value))
        })
    }

    /// The parameters as sent (`key NUL value NUL` pairs): two packets with
    /// the same text ask for the same.
    pub fn as_text(self) -> &'a str {
        self.pairs
    }

    /// Parameters in the order sent, `_pq_.` protocol options excluded.
    pub fn iter(self) -> impl Iterator<Item = (&'a str, &'a str)> {
        let options = self.has_protocol_options;
        self.all()
            .filter(move |(k, _)| !options || !k.starts_with("_pq_."))
    }

    /// The first value sent for `key`.
    pub fn get(self, key: &str) -> Option<&'a str> {
        match LOOKED_UP.iter().position(|k| *k == key) {
            Some(i) => {
                let (start, len) = self.looked_up[i];
                let start = usize::from(start);
                self.pairs.get(start..start + usize::from(len))
            }
            None => self.iter().find(|(k, _)| *k == key).map(|(_, v)| v),
        }
    }

    /// The `_pq_.` protocol options the client sent; none is supported.
    pub fn protocol_options(self) -> impl Iterator<Item = &'a str> {
        let pairs = if self.has_protocol_options {
            self.pairs
        } else {
            ""
        };
        StartupParams { pairs, ..self }
            .all()
            .map(|(k, _)| k)
            .filter(|k| k.starts_with("_pq_."))
    }
}

/// Why a startup packet was refused. Each maps to the SQLSTATE PostgreSQL uses.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum StartupError {
    #[error("invalid length of startup packet: {0} bytes")]
    BadLength(u32),
    #[error(
        "unsupported frontend protocol {major}.{minor}: server supports 3.0 to 3.{SUPPORTED_MINOR}"
    )]
    UnsupportedProtocol { major: u16, minor: u16 },
    #[error("invalid startup packet layout: {0}")]
    Malformed(&'static str),
}

impl StartupError {
    /// The SQLSTATE a client receives for this error.
    pub fn sqlstate(&self) -> &'static str {
        match self {
            StartupError::UnsupportedProtocol { .. } => crate::sqlstate::FEATURE_NOT_SUPPORTED,
            _ => crate::sqlstate::PROTOCOL_VIOLATION,
        }
    }
}

/// The length of the startup packet at the start of `buf` once its length
/// field has arrived, checked against PostgreSQL's limits before anything is
/// buffered for it.
pub fn packet_len(buf: &[u8]) -> Result<Option<usize>, StartupError> {
    let Some(head) = buf.get(..4) else {
        return Ok(None);
    };
    let len = u32::from_be_bytes([head[0], head[1], head[2], head[3]]);
    let ok = usize::try_from(len)
        .ok()
        .filter(|l| (8..=MAX_STARTUP_LEN).contains(l));
    match ok {
        Some(l) => Ok(Some(l)),
        None => Err(StartupError::BadLength(len)),
    }
}

/// Whether a complete startup packet asks for encryption (SSLRequest or
/// GSSENCRequest), by its code alone: such a packet is answered before the
/// next one is read, and any other is left whole for [`parse`].
pub fn is_encryption_request(packet: &[u8]) -> bool {
    match packet.get(4..8) {
        Some(&[a, b, c, d]) => matches!(
            u32::from_be_bytes([a, b, c, d]),
            SSL_REQUEST | GSSENC_REQUEST
        ),
        _ => false,
    }
}

/// Parses one complete startup packet (length field included).
pub fn parse(packet: &[u8]) -> Result<StartupRequest<'_>, StartupError> {
    let len = packet_len(packet)?.ok_or(StartupError::Malformed("truncated"))?;
    if packet.len() != len {
        return Err(StartupError::Malformed("length does not match packet"));
    }
    let code = u32::from_be_bytes([packet[4], packet[5], packet[6], packet[7]]);
    let rest = &packet[8..];
    match code {
        SSL_REQUEST | GSSENC_REQUEST if !rest.is_empty() => {
            Err(StartupError::Malformed("encryption request with a body"))
        }
        SSL_REQUEST => Ok(StartupRequest::Ssl),
        GSSENC_REQUEST => Ok(StartupRequest::GssEnc),
        CANCEL_REQUEST => {
            let [a, b, c, d, e, f, g, h] = rest else {
                return Err(StartupError::Malformed("cancel request must be 16 bytes"));
            };
            Ok(StartupRequest::Cancel {
                pid: u32::from_be_bytes([*a, *b, *c, *d]),
                key: u32::from_be_bytes([*e, *f, *g, *h]),
            })
        }
        _ => {
            let major = u16::try_from(code >> 16).unwrap_or(u16::MAX);
            let minor = u16::try_from(code & 0xffff).unwrap_or(u16::MAX);
            if major != PROTOCOL_3 {
                return Err(StartupError::UnsupportedProtocol { major, minor });
            }
            Ok(StartupRequest::Startup {
                minor,
                params: parse_params(rest)?,
            })
        }
    }
}

/// The field at the start of `text` and what follows its terminator. A
/// plain byte scan: fields are short, and a `str` pattern search costs more
/// in setting up than in searching them.
fn split_field(text: &str) -> (&str, &str) {
    match text.bytes().position(|b| b == 0) {
        Some(n) => (&text[..n], &text[n + 1..]),
        None => (text, ""),
    }
}

/// Checks a StartupMessage's body: `key NUL value NUL` pairs, then a
/// final NUL, all of it UTF-8 (NUL is a UTF-8 character, so one check
/// covers every field).
fn parse_params(body: &[u8]) -> Result<StartupParams<'_>, StartupError> {
    let text = std::str::from_utf8(body)
        .map_err(|_| StartupError::Malformed("parameter is not valid UTF-8"))?;
    let mut looked_up = [NOT_SENT; LOOKED_UP.len()];
    let mut has_protocol_options = false;
    let mut at = 0;
    loop {
        let key_end = field_end(text, at)?;
        if key_end == at {
            if key_end + 1 != text.len() {
                return Err(StartupError::Malformed("bytes after the final terminator"));
            }
            return Ok(StartupParams {
                pairs: &text[..at],
                looked_up,
                has_protocol_options,
            });
        }
        let value_end = field_end(text, key_end + 1)?;
        let key = &text[at..key_end];
        has_protocol_options |= key.starts_with("_pq_.");
        if let Some(i) = LOOKED_UP.iter().position(|k| *k == key) {
            if looked_up[i] == NOT_SENT {
                // Within MAX_STARTUP_LEN, so within u16.
                let start = u16::try_from(key_end + 1).unwrap_or(u16::MAX);
                let len = u16::try_from(value_end - key_end - 1).unwrap_or(0);
                looked_up[i] = (start, len);
            }
        }
        at = value_end + 1;
    }
}

/// Where the field starting at `at` ends (its terminator).
fn field_end(text: &str, at: usize) -> Result<usize, StartupError> {
    text.as_bytes()
        .get(at..)
        .and_then(|rest| rest.iter().position(|&b| b == 0))
        .map(|n| at + n)
        .ok_or(StartupError::Malformed("missing terminator"))
}

/// Splits the `options` startup parameter (`-c name=value`, `--name=value`,
/// backslash escapes spaces) into settings, as the server would.
pub fn parse_options(options: &str) -> Result<Vec<(String, String)>, &'static str> {
    let mut words = Vec::new();
    let mut cur = String::new();
    let mut chars = options.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => cur.push(chars.next().unwrap_or('\\')),
            c if c.is_ascii_whitespace() => {
                if !cur.is_empty() {
                    words.push(std::mem::take(&mut cur));
                }
            }
            c => cur.push(c),
        }
    }
    if !cur.is_empty() {
        words.push(cur);
    }
    let mut out = Vec::new();
    let mut it = words.into_iter();
    while let Some(w) = it.next() {
        let setting = if w == "-c" {
            it.next().ok_or("-c without a setting")?
        } else if let Some(s) = w.strip_prefix("-c") {
            s.to_owned()
        } else if let Some(s) = w.strip_prefix("--") {
            s.to_owned()
        } else {
            return Err("only -c name=value and --name=value are supported in options");
        };
        let (k, v) = setting
            .split_once('=')
            .ok_or("setting in options lacks '='")?;
        out.push((k.replace('-', "_"), v.to_owned()));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn startup(code: u32, body: &[u8]) -> Vec<u8> {
        let mut v = u32::try_from(body.len() + 8)
            .unwrap()
            .to_be_bytes()
            .to_vec();
        v.extend_from_slice(&code.to_be_bytes());
        v.extend_from_slice(body);
        v
    }

    #[test]
    fn tells_encryption_requests_by_their_code() {
        assert!(is_encryption_request(&startup(SSL_REQUEST, b"")));
        assert!(is_encryption_request(&startup(GSSENC_REQUEST, b"")));
        // Its body is refused by `parse`, not here.
        assert!(is_encryption_request(&startup(SSL_REQUEST, b"x")));
        assert!(!is_encryption_request(&startup(196_608, b"user\0u\0\0")));
        assert!(!is_encryption_request(&startup(CANCEL_REQUEST, &[0; 8])));
        assert!(!is_encryption_request(&[0, 0, 0, 8, 4, 210]));
    }

    #[test]
    fn parses_startup_message() {
        let p = startup(
            196_608,
            b"user\0app\0database\0db\0_pq_.x\0\x31\0empty\0\0user\0again\0\0",
        );
        let StartupRequest::Startup { minor, params } = parse(&p).unwrap() else {
            panic!("not a startup")
        };
        assert_eq!(minor, 0);
        assert_eq!(
            params.iter().collect::<Vec<_>>(),
            vec![
                ("user", "app"),
                ("database", "db"),
                ("empty", ""),
                ("user", "again")
            ]
        );
        assert_eq!(params.get("user"), Some("app"));
        assert_eq!(params.get("database"), Some("db"));
        assert_eq!(params.get("application_name"), None);
        assert_eq!(params.get("empty"), Some(""));
        assert_eq!(params.get("_pq_.x"), None);
        assert_eq!(params.get("options"), None);
        assert_eq!(params.protocol_options().collect::<Vec<_>>(), ["_pq_.x"]);

        // Without protocol options: every pair is a parameter.
        let p = startup(196_608, b"user\0app\0_pq\0x\0\0");
        let StartupRequest::Startup { params, .. } = parse(&p).unwrap() else {
            panic!("not a startup")
        };
        assert_eq!(params.protocol_options().count(), 0);
        assert_eq!(
            params.iter().collect::<Vec<_>>(),
            vec![("user", "app"), ("_pq", "x")]
        );
    }

    #[test]
    fn special_requests() {
        assert_eq!(parse(&startup(SSL_REQUEST, b"")), Ok(StartupRequest::Ssl));
        assert_eq!(
            parse(&startup(GSSENC_REQUEST, b"")),
            Ok(StartupRequest::GssEnc)
        );
        let mut body = 7u32.to_be_bytes().to_vec();
        body.extend(9u32.to_be_bytes());
        assert_eq!(
            parse(&startup(CANCEL_REQUEST, &body)),
            Ok(StartupRequest::Cancel { pid: 7, key: 9 })
        );
    }

    #[test]
    fn rejects_bad_packets() {
        assert!(matches!(
            packet_len(b"GET / HTTP/1.1"),
            Err(StartupError::BadLength(_))
        ));
        assert!(matches!(
            packet_len(&0x7fff_ffffu32.to_be_bytes()),
            Err(StartupError::BadLength(_))
        ));
        assert!(matches!(
            parse(&startup(0x0002_0000, b"\0")),
            Err(StartupError::UnsupportedProtocol { major: 2, .. })
        ));
        for body in [
            &b"user\0app"[..],
            b"user\0app\0",
            b"user",
            b"",
            b"user\0app\0\0extra",
            b"user\0\xff\0\0",
        ] {
            assert!(
                matches!(
                    parse(&startup(196_608, body)),
                    Err(StartupError::Malformed(_))
                ),
                "{body:?}"
            );
        }
        let empty = startup(196_608, b"\0");
        let StartupRequest::Startup { params, .. } = parse(&empty).unwrap() else {
            panic!("not a startup")
        };
        assert_eq!(params.iter().count(), 0);
    }

    #[test]
    fn options_parse_like_the_server() {
        assert_eq!(
            parse_options("-c search_path=a,b --statement-timeout=5s -cwork_mem=1MB").unwrap(),
            vec![
                ("search_path".into(), "a,b".into()),
                ("statement_timeout".into(), "5s".into()),
                ("work_mem".into(), "1MB".into())
            ]
        );
        assert_eq!(
            parse_options(r"-c application_name=my\ app").unwrap(),
            vec![("application_name".into(), "my app".into())]
        );
        assert!(parse_options("-x").is_err());
    }

    proptest! {
        #[test]
        fn never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = packet_len(&bytes);
            let _ = parse(&bytes);
        }

        #[test]
        fn params_round_trip(params in proptest::collection::vec(("[a-z_]{1,12}", "[ -~]{0,20}"), 0..10)) {
            let mut body = Vec::new();
            for (k, v) in &params {
                body.extend_from_slice(k.as_bytes());
                body.push(0);
                body.extend_from_slice(v.as_bytes());
                body.push(0);
            }
            body.push(0);
            let packet = startup(196_608, &body);
            let StartupRequest::Startup { minor, params: got } = parse(&packet).unwrap() else {
                panic!("not a startup")
            };
            prop_assert_eq!(minor, 0);
            let want: Vec<(&str, &str)> = params.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            prop_assert_eq!(got.iter().collect::<Vec<_>>(), want.clone());
            for (k, _) in &want {
                let first = want.iter().find(|(w, _)| w == k).map(|(_, v)| *v);
                prop_assert_eq!(got.get(k), first);
            }
            for k in LOOKED_UP {
                prop_assert_eq!(got.get(k), want.iter().find(|(w, _)| *w == k).map(|(_, v)| *v));
            }
        }
    }
}
