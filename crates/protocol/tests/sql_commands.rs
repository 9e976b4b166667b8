//! The reader of SQL `PREPARE`/`EXECUTE`/`DEALLOCATE` simple queries: any
//! bytes are read without a panic, names point inside the text, and the
//! relay's early decision from a prefix never misses a statement that the
//! whole text turns out to be.

use pgwake_protocol::sql::{self, Command, Parsed};
use proptest::prelude::*;

/// Pieces queries are made of: the keywords, names (plain, quoted, with
/// escapes), comments, strings, separators and junk.
fn piece() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("PREPARE".to_owned()),
        Just("prepare".to_owned()),
        Just("EXECUTE".to_owned()),
        Just("Deallocate".to_owned()),
        Just("ALL".to_owned()),
        Just("AS".to_owned()),
        Just("select 1".to_owned()),
        Just(" ".to_owned()),
        Just("\n".to_owned()),
        Just(";".to_owned()),
        Just("(".to_owned()),
        Just(")".to_owned()),
        Just("-- note\n".to_owned()),
        Just("/* a /* nested */ comment */".to_owned()),
        Just("'it''s'".to_owned()),
        Just("E'\\''".to_owned()),
        Just("\"Quoted \"\" Name\"".to_owned()),
        Just("U&\"d\\0061t\"".to_owned()),
        "[a-zA-Z_][a-zA-Z0-9_$]{0,70}",
        "[ -~]{0,8}",
    ]
}

fn names_inside(parsed: &Parsed, len: usize) -> bool {
    let name = match parsed {
        Parsed::Command(Command::Prepare { name, rest }) => {
            if !(name.end <= rest.0 && rest.0 <= rest.1 && rest.1 <= len) {
                return false;
            }
            name
        }
        Parsed::Command(Command::Execute { name } | Command::Deallocate { name }) => name,
        _ => return true,
    };
    name.start < name.end && name.end <= len && name.folded.len() <= sql::NAME_MAX
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 4_000, ..ProptestConfig::default() })]

    #[test]
    fn statements_are_read_safely_and_never_missed_early(
        pieces in prop::collection::vec(piece(), 0..10),
    ) {
        let text = pieces.concat();
        let mut body = text.clone().into_bytes();
        body.push(0);
        let parsed = sql::parse(&body);
        prop_assert!(names_inside(&parsed, text.len()), "{parsed:?} for {text:?}");
        if parsed != Parsed::Other {
            // The relay reads a query whole only when a prefix says it may
            // be one of these: every prefix must say so.
            for end in 0..=body.len() {
                prop_assert!(
                    sql::may_be_command(&body[..end]),
                    "{text:?} is {parsed:?}, but its first {end} bytes were judged not"
                );
            }
        }
    }

    #[test]
    fn any_bytes_are_read_without_a_panic(body in prop::collection::vec(any::<u8>(), 0..300)) {
        let parsed = sql::parse(&body);
        prop_assert!(names_inside(&parsed, body.len()));
        let _ = sql::may_be_command(&body);
    }
}

#[test]
fn a_prepared_name_is_folded_as_postgresql_does() {
    let parsed = sql::parse(b"PREPARE Fast_One (int) AS select $1\0");
    let Parsed::Command(Command::Prepare { name, .. }) = parsed else {
        panic!("{parsed:?}");
    };
    assert_eq!(name.folded, b"fast_one");
    assert!(!sql::may_be_command(b"select 1"));
}
