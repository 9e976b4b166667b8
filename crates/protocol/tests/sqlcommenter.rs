//! The sqlcommenter reader: any bytes are read without a panic; a
//! well-formed trailing comment is found after any statement and gives back
//! the exact ids; truncated, oversized, wrongly versioned, non-hex and
//! nested comments give nothing.

use pgwake_protocol::sqlcommenter::{self, trace_context, trailing_comment};
use proptest::prelude::*;

/// Statement pieces, including ones that look like comments inside strings.
fn piece() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("select 1".to_owned()),
        Just(" ".to_owned()),
        Just("\n".to_owned()),
        Just(";".to_owned()),
        Just("-- note\n".to_owned()),
        Just("/* a /* nested */ comment */".to_owned()),
        Just("'it''s /* not */ a comment'".to_owned()),
        Just("E'\\' /*'".to_owned()),
        Just("$q$ /* */ $q$".to_owned()),
        Just("\"Quoted /* \"\" Name\"".to_owned()),
        Just("$1".to_owned()),
        "[a-zA-Z_][a-zA-Z0-9_$]{0,20}",
        "[ -~]{0,8}",
    ]
}

/// A statement that leaves no string, identifier or comment open.
fn statement() -> impl Strategy<Value = String> {
    prop::collection::vec(
        prop_oneof![
            Just("select 1".to_owned()),
            Just(" ".to_owned()),
            Just("-- note\n".to_owned()),
            Just("/* a /* nested */ comment */".to_owned()),
            Just("'it''s /* not */ a comment'".to_owned()),
            Just("$q$ /* ' */ $q$".to_owned()),
            Just("\"Quoted /* \"\" Name\"".to_owned()),
            "[a-z_][a-z0-9_]{0,20}",
        ],
        1..8,
    )
    .prop_map(|v| v.join(" "))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn ids() -> impl Strategy<Value = ([u8; 16], [u8; 8], u8)> {
    (any::<[u8; 16]>(), any::<[u8; 8]>(), any::<u8>())
        .prop_filter("ids are not all zero", |(t, s, _)| {
            *t != [0; 16] && *s != [0; 8]
        })
}

fn comment(t: &[u8; 16], s: &[u8; 8], flags: u8) -> String {
    format!(
        "/*db_driver='psycopg%3A3.2',traceparent='00-{}-{}-{:02x}'*/",
        hex(t),
        hex(s),
        flags
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn any_bytes_are_read_without_a_panic(text in prop::collection::vec(any::<u8>(), 0..300)) {
        if let Some(r) = trailing_comment(&text) {
            prop_assert!(r.start + 4 <= r.end && r.end <= text.len());
            prop_assert!(text[r.start..].starts_with(b"/*") && text[..r.end].ends_with(b"*/"));
        }
        if trace_context(&text).is_some() {
            prop_assert!(sqlcommenter::may_carry_comment(&text));
        }
    }

    #[test]
    fn any_pieces_are_read_without_a_panic(
        pieces in prop::collection::vec(piece(), 0..12),
        (t, s, f) in ids(),
    ) {
        let text = format!("{}{}", pieces.concat(), comment(&t, &s, f));
        if let Some(c) = trace_context(text.as_bytes()) {
            prop_assert_eq!(c.parent.trace_id, t);
            prop_assert_eq!(c.parent.parent_id, s);
        }
    }

    #[test]
    fn a_trailing_comment_gives_its_ids_and_its_place(
        stmt in statement(),
        (t, s, f) in ids(),
        tail in prop_oneof![Just(""), Just(";"), Just(" ;\n"), Just("\0")],
    ) {
        let c = comment(&t, &s, f);
        let text = format!("{stmt} {c}{tail}");
        let got = trace_context(text.as_bytes());
        prop_assert!(got.is_some(), "{}", text);
        let got = got.unwrap();
        prop_assert_eq!(got.parent.trace_id, t);
        prop_assert_eq!(got.parent.parent_id, s);
        prop_assert_eq!(got.parent.flags, f);
        let r = trailing_comment(text.as_bytes()).unwrap();
        prop_assert_eq!(&text[..r.start], format!("{stmt} "));
        prop_assert_eq!(&text[r.end..], tail);
    }

    #[test]
    fn of_two_trailing_comments_the_last_gives_the_parent_and_both_are_the_place(
        stmt in statement(),
        (t1, s1, f1) in ids(),
        (t2, s2, f2) in ids(),
        gap in prop_oneof![Just(""), Just(" "), Just("\n ")],
    ) {
        let outer = comment(&t1, &s1, f1).replace("db_driver", "framework");
        let inner = comment(&t2, &s2, f2);
        let text = format!("{stmt} {outer}{gap}{inner};");
        let got = trace_context(text.as_bytes()).unwrap();
        prop_assert_eq!(got.parent.parent_id, s2);
        let r = trailing_comment(text.as_bytes()).unwrap();
        prop_assert_eq!(&text[..r.start], format!("{stmt} "));
        prop_assert_eq!(&text[r.end..], ";");
    }

    #[test]
    fn a_truncated_comment_gives_nothing(
        stmt in statement(),
        (t, s, f) in ids(),
        cut in 1usize..70,
    ) {
        let c = comment(&t, &s, f);
        let text = format!("{stmt} {c}");
        let cut = cut.min(c.len() - 1);
        let short = &text.as_bytes()[..text.len() - cut];
        prop_assert_eq!(trace_context(short), None);
    }

    #[test]
    fn a_damaged_traceparent_gives_nothing(
        (t, s, f) in ids(),
        at in 0usize..55,
        with in prop::sample::select(vec![b'G', b'A', b'F', b'-', b' ', b'z', b'\'']),
    ) {
        let mut tp = format!("00-{}-{}-{:02x}", hex(&t), hex(&s), f).into_bytes();
        prop_assume!(tp[at] != with);
        tp[at] = with;
        let mut text = b"select 1 /*traceparent='".to_vec();
        text.extend_from_slice(&tp);
        text.extend_from_slice(b"'*/");
        prop_assert_eq!(trace_context(&text), None);
    }
}

#[test]
fn a_one_mib_comment_gives_nothing() {
    let tp = "00-5bd66ef5095369c7b0d1f8f4bd33716a-c532cb4098ac3dd2-01";
    let long = "a".repeat(1 << 20);
    for text in [
        format!("select 1 /*traceparent='{tp}',x='{long}*/"),
        format!("select 1 /*traceparent='{tp}{long}'*/"),
        format!("select 1 /*{long}*/"),
        format!("select ${long}$ /*traceparent='{tp}'*/"),
        format!(
            "select {} /*traceparent='{tp}'*/",
            "$a$ $a$".repeat(100_000)
        ),
    ] {
        assert_eq!(trace_context(text.as_bytes()), None);
    }
    // A long statement with a valid comment is still read.
    let text = format!("select '{long}' /*traceparent='{tp}'*/");
    assert!(trace_context(text.as_bytes()).is_some());
}
