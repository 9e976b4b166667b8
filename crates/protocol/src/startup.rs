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

/// A parsed startup packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartupRequest {
    Ssl,
    GssEnc,
    Cancel {
        pid: u32,
        key: u32,
    },
    Startup {
        /// Minor protocol version the client asked for.
        minor: u16,
        /// Parameters in the order sent, `_pq_.` options excluded.
        params: Vec<(String, String)>,
        /// `_pq_.` protocol options the client sent; none is supported.
        protocol_options: Vec<String>,
    },
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

/// Parses one complete startup packet (length field included).
pub fn parse(packet: &[u8]) -> Result<StartupRequest, StartupError> {
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
            let (params, protocol_options) = parse_params(rest)?;
            Ok(StartupRequest::Startup {
                minor,
                params,
                protocol_options,
            })
        }
    }
}

type Params = (Vec<(String, String)>, Vec<String>);

fn parse_params(mut rest: &[u8]) -> Result<Params, StartupError> {
    let mut params = Vec::new();
    let mut options = Vec::new();
    loop {
        let (key, after) = cstr(rest)?;
        if key.is_empty() {
            if !after.is_empty() {
                return Err(StartupError::Malformed("bytes after the final terminator"));
            }
            return Ok((params, options));
        }
        let (value, after) = cstr(after)?;
        rest = after;
        if key.starts_with("_pq_.") {
            options.push(key.to_owned());
        } else {
            params.push((key.to_owned(), value.to_owned()));
        }
    }
}

fn cstr(buf: &[u8]) -> Result<(&str, &[u8]), StartupError> {
    let nul = buf
        .iter()
        .position(|&b| b == 0)
        .ok_or(StartupError::Malformed("missing terminator"))?;
    let s = std::str::from_utf8(&buf[..nul])
        .map_err(|_| StartupError::Malformed("parameter is not valid UTF-8"))?;
    Ok((s, &buf[nul + 1..]))
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
    fn parses_startup_message() {
        let p = startup(196_608, b"user\0app\0database\0db\0_pq_.x\0\x31\0\0");
        let StartupRequest::Startup {
            minor,
            params,
            protocol_options,
        } = parse(&p).unwrap()
        else {
            panic!("not a startup")
        };
        assert_eq!(minor, 0);
        assert_eq!(
            params,
            vec![
                ("user".into(), "app".into()),
                ("database".into(), "db".into())
            ]
        );
        assert_eq!(protocol_options, vec!["_pq_.x".to_string()]);
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
        assert!(matches!(
            parse(&startup(196_608, b"user\0app")),
            Err(StartupError::Malformed(_))
        ));
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
            let got = parse(&startup(196_608, &body)).unwrap();
            let want: Vec<(String, String)> = params.into_iter().filter(|(k, _)| !k.starts_with("_pq_.")).collect();
            prop_assert_eq!(got, StartupRequest::Startup { minor: 0, params: want, protocol_options: vec![] });
        }
    }
}
