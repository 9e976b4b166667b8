//! Reads arbitrary bytes as the body of an ErrorResponse or NoticeResponse,
//! as the relay does with every error a server sends (to catch a FATAL and a
//! query_timeout cancel), and checks the fields against the bytes they came
//! from and against `postgres-protocol`.
#![no_main]

use bytes::{BufMut, BytesMut};
use fallible_iterator::FallibleIterator;
use libfuzzer_sys::fuzz_target;
use pgwake_protocol::backend::parse::error_fields;
use pgwake_protocol::backend::{ErrorMessage, Severity};
use pgwake_protocol::sqlstate;
use postgres_protocol::message::backend::Message;

fuzz_target!(|body: &[u8]| {
    let fields: Vec<(u8, &[u8])> = error_fields(body).collect();

    // Each field is a non-zero code and a value up to its NUL, read in
    // order from the start of the body, without copying: written back out
    // they give the body's first bytes, and what follows is the zero code
    // that ends the list (or nothing: the last field may lack its NUL).
    let mut at = 0;
    for (code, value) in &fields {
        assert_ne!(*code, 0);
        assert!(!value.contains(&0));
        assert_eq!(body[at], *code);
        assert!(std::ptr::eq(value.as_ptr(), body[at + 1..].as_ptr()));
        at += 1 + value.len();
        match body.get(at) {
            Some(0) => at += 1,
            Some(_) => unreachable!("a value ends at a NUL or the body's end"),
            None => {}
        }
    }
    assert!(at == body.len() || body[at] == 0, "stopped early at {at}");

    // The helpers read the first field of their code.
    let first = |code: u8| fields.iter().find(|(c, _)| *c == code).map(|(_, v)| *v);
    let view = error_fields(body);
    assert_eq!(view.severity(), first(b'V'));
    assert_eq!(view.sqlstate(), first(b'C'));
    assert_eq!(view.message(), first(b'M'));
    assert_eq!(
        view.is_fatal(),
        matches!(first(b'V'), Some(b"FATAL" | b"PANIC"))
    );

    // The owned form agrees with the view.
    let text = |v: &[u8]| String::from_utf8_lossy(v).into_owned();
    let msg = ErrorMessage::from_fields(error_fields(body));
    assert_eq!(msg.severity == Severity::Fatal, view.is_fatal());
    assert_eq!(
        msg.code,
        first(b'C').map_or_else(|| sqlstate::PROTOCOL_VIOLATION.to_owned(), text)
    );
    assert_eq!(
        msg.message,
        first(b'M').map_or_else(|| "(no message)".to_owned(), text)
    );
    assert_eq!(msg.detail, first(b'D').map(text));
    assert_eq!(msg.hint, first(b'H').map(text));

    // Where postgres-protocol accepts the body, it reads the same fields.
    let mut frame = BytesMut::new();
    frame.put_u8(b'E');
    frame.put_u32(u32::try_from(body.len() + 4).expect("fuzz inputs are small"));
    frame.put_slice(body);
    if let Ok(Some(Message::ErrorResponse(e))) = Message::parse(&mut frame) {
        let reference: Result<Vec<(u8, Vec<u8>)>, _> = e
            .fields()
            .map(|f| Ok((f.type_(), f.value_bytes().to_vec())))
            .collect();
        if let Ok(reference) = reference {
            let ours: Vec<(u8, Vec<u8>)> = fields.iter().map(|(c, v)| (*c, v.to_vec())).collect();
            assert_eq!(ours, reference);
        }
    }
});
