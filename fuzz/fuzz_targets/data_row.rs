//! Reads arbitrary bytes as the body of a DataRow, as pgwake does with the
//! rows of its own queries to the server, and checks each column against the
//! bytes it came from and against `postgres-protocol`.
#![no_main]

use bytes::{BufMut, BytesMut};
use fallible_iterator::FallibleIterator;
use libfuzzer_sys::fuzz_target;
use pgwake_protocol::backend::parse::data_row;
use postgres_protocol::message::backend::Message;

fuzz_target!(|body: &[u8]| {
    let Ok(row) = data_row(body) else {
        assert!(
            body.len() < 2,
            "only a missing column count is refused up front"
        );
        return;
    };
    let declared = usize::from(u16::from_be_bytes([body[0], body[1]]));
    let columns: Vec<_> = row.collect();
    // One item per declared column at most, whatever the lengths say: a
    // huge count over a short body costs nothing.
    assert!(columns.len() <= declared);

    // Each column is a length and that many bytes, read in order without
    // copying; a negative length is NULL.
    let mut at = 2;
    for (i, column) in columns.iter().enumerate() {
        match column {
            Ok(value) => {
                let len = i32::from_be_bytes(body[at..at + 4].try_into().expect("4 bytes"));
                at += 4;
                match value {
                    None => assert!(len < 0),
                    Some(v) => {
                        assert_eq!(usize::try_from(len).ok(), Some(v.len()));
                        assert!(std::ptr::eq(v.as_ptr(), body[at..].as_ptr()));
                        at += v.len();
                    }
                }
            }
            Err(_) => {
                // Only the last item is an error, and only when the body
                // truly cannot hold the column.
                assert_eq!(i, columns.len() - 1);
                let rest = &body[at..];
                let cut = match rest.split_first_chunk::<4>() {
                    None => true,
                    Some((len, after)) => {
                        usize::try_from(i32::from_be_bytes(*len)).is_ok_and(|l| l > after.len())
                    }
                };
                assert!(cut, "column {i} refused at {at}");
            }
        }
    }
    let complete = columns.iter().all(Result::is_ok);
    if complete {
        assert_eq!(columns.len(), declared);
    }

    // Where postgres-protocol accepts the body, it reads the same columns.
    let mut frame = BytesMut::new();
    frame.put_u8(b'D');
    frame.put_u32(u32::try_from(body.len() + 4).expect("fuzz inputs are small"));
    frame.put_slice(body);
    if let Ok(Some(Message::DataRow(reference))) = Message::parse(&mut frame) {
        let storage = reference.buffer();
        let reference: Result<Vec<Option<&[u8]>>, _> = reference
            .ranges()
            .map(|r| Ok(r.map(|r| &storage[r])))
            .collect();
        if let Ok(reference) = reference {
            let ours: Vec<Option<&[u8]>> =
                columns.into_iter().map(|c| c.expect("complete")).collect();
            assert_eq!(ours, reference);
            assert_eq!(at, body.len());
        }
    }
});
