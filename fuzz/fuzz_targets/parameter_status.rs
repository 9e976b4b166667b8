//! Reads arbitrary bytes as the body of a ParameterStatus, as the relay does
//! with each one a server sends (a SET changes what the client expects of
//! the next connection), and checks the result against the bytes and
//! against `postgres-protocol`.
#![no_main]

use bytes::{BufMut, BytesMut};
use libfuzzer_sys::fuzz_target;
use pgwake_protocol::backend::parse::parameter_status;
use postgres_protocol::message::backend::Message;

fuzz_target!(|body: &[u8]| {
    let parsed = parameter_status(body);
    let mut strings = body.split(|&b| b == 0);
    let (name, value) = (strings.next(), strings.next());
    let terminated = body.iter().filter(|&&b| b == 0).count() >= 2;
    match parsed {
        // Name and value are the first two NUL-terminated strings, borrowed.
        Ok((n, v)) => {
            assert!(terminated);
            assert_eq!(Some(n.as_bytes()), name);
            assert_eq!(Some(v.as_bytes()), value);
            assert!(std::ptr::eq(n.as_ptr(), body.as_ptr()));
            assert!(std::ptr::eq(v.as_ptr(), body[n.len() + 1..].as_ptr()));
        }
        // Refused only when one is unterminated or not UTF-8.
        Err(_) => assert!(
            !terminated
                || std::str::from_utf8(name.unwrap_or_default()).is_err()
                || std::str::from_utf8(value.unwrap_or_default()).is_err()
        ),
    }

    // Where postgres-protocol accepts the body, it reads the same strings.
    let mut frame = BytesMut::new();
    frame.put_u8(b'S');
    frame.put_u32(u32::try_from(body.len() + 4).expect("fuzz inputs are small"));
    frame.put_slice(body);
    if let Ok(Some(Message::ParameterStatus(p))) = Message::parse(&mut frame) {
        if let (Ok(n), Ok(v)) = (p.name(), p.value()) {
            assert_eq!(parsed, Ok((n, v)));
        }
    }
});
