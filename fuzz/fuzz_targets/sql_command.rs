//! Reads any bytes as the body of a simple query with the lexer for SQL
//! `PREPARE`, `EXECUTE` and `DEALLOCATE` (`pgwake_protocol::sql`): it never
//! panics, every name it returns lies inside the text, and whenever the
//! whole text is one of these statements, every prefix of it was judged to
//! maybe be one (the relay reads a query whole only then).
#![no_main]

use libfuzzer_sys::fuzz_target;
use pgwake_protocol::sql::{self, Command, Parsed};

fuzz_target!(|body: &[u8]| {
    let parsed = sql::parse(body);
    match &parsed {
        Parsed::Command(Command::Prepare { name, rest }) => {
            assert!(name.start < name.end && name.end <= rest.0);
            assert!(rest.0 <= rest.1 && rest.1 <= body.len());
            assert!(name.folded.len() <= sql::NAME_MAX);
        }
        Parsed::Command(Command::Execute { name } | Command::Deallocate { name }) => {
            assert!(name.start < name.end && name.end <= body.len());
            assert!(name.folded.len() <= sql::NAME_MAX);
        }
        _ => {}
    }
    if parsed != Parsed::Other {
        for end in 0..=body.len().min(4096) {
            assert!(sql::may_be_command(&body[..end]), "prefix of {end} bytes");
        }
    }
});
