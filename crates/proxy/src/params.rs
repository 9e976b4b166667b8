//! Session settings: what a client asked for and what a server connection has.
//!
//! In transaction mode a client moves between server connections, so before
//! its first message reaches a connection, pgwake brings that connection's
//! settings in line with the client's (one round trip, only when they differ).

/// Setting name → value, as in ParameterStatus or a startup packet. Names are
/// kept in lower case: Postgres matches them case-insensitively (`timezone`
/// from a client is `TimeZone` in ParameterStatus). A sorted vector: a
/// client keeps the few settings it chose for as long as it is connected,
/// and one that chose any would otherwise hold a whole tree node (540
/// bytes) for them.
pub type Params = litemap::LiteMap<String, String>;

/// Startup parameters that are not settings.
const NOT_SETTINGS: &[&str] = &["user", "database", "options", "replication"];

/// The settings a client's startup packet asks for (its `options` included).
pub fn from_startup<'a>(
    params: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> Result<Params, pgwake_protocol::backend::ErrorMessage> {
    let mut out = Params::new();
    for (k, v) in params {
        if k == "options" {
            let parsed = pgwake_protocol::startup::parse_options(v).map_err(|e| {
                pgwake_protocol::backend::ErrorMessage::fatal(
                    pgwake_protocol::sqlstate::PROTOCOL_VIOLATION,
                    format!("invalid startup options {v:?}: {e}"),
                )
            })?;
            out.extend(parsed.into_iter().map(|(k, v)| (k.to_ascii_lowercase(), v)));
        } else if !NOT_SETTINGS.contains(&k) {
            out.insert(k.to_ascii_lowercase(), v.to_owned());
        }
    }
    Ok(out)
}

/// Settings that a client's `SET` carries from connection to connection in
/// transaction mode, when the server reports the change (ParameterStatus).
/// Others it reports (`is_superuser`, `session_authorization`, …) follow
/// from statements that cannot be replayed with `set_config`.
pub fn follows_client(name: &str) -> bool {
    matches!(
        name,
        "application_name"
            | "client_encoding"
            | "datestyle"
            | "intervalstyle"
            | "timezone"
            | "standard_conforming_strings"
            | "search_path"
    )
}

/// A 64-bit digest of a client's settings; 0 for none (a fresh connection's
/// state). Lets a connection that already has a client's settings skip the
/// comparison entirely, which is the common case.
pub fn fingerprint(p: &Params) -> u64 {
    use std::hash::{Hash, Hasher};
    if p.is_empty() {
        return 0;
    }
    let mut h = std::collections::hash_map::DefaultHasher::new();
    p.hash(&mut h);
    h.finish().max(1)
}

/// The SQL that turns a connection with settings `have` into one with
/// `want`, or `None` when nothing differs. `defaults` are the values a fresh
/// connection reports; a setting the client never chose is brought back to
/// its default. Uses `set_config` because it takes the value exactly as a
/// startup packet or `options` would (lists such as search_path included).
pub fn sync_sql(want: &Params, have: &Params, defaults: &Params) -> Option<String> {
    let mut sql = String::new();
    for (k, v) in want {
        if have.get(k) != Some(v) {
            push_set(&mut sql, k, v);
        }
    }
    for (k, v) in have {
        if want.contains_key(k) {
            continue;
        }
        match defaults.get(k) {
            Some(d) if d == v => {}
            Some(d) => push_set(&mut sql, k, d),
            None => {
                sql.push_str("RESET ");
                push_ident(&mut sql, k);
                sql.push(';');
            }
        }
    }
    (!sql.is_empty()).then_some(sql)
}

fn push_set(sql: &mut String, k: &str, v: &str) {
    sql.push_str("SELECT pg_catalog.set_config(");
    push_literal(sql, k);
    sql.push_str(", ");
    push_literal(sql, v);
    sql.push_str(", false);");
}

/// An `E'…'` literal: correct whatever `standard_conforming_strings` is.
fn push_literal(sql: &mut String, s: &str) {
    sql.push_str("E'");
    for c in s.chars() {
        match c {
            '\'' => sql.push_str("''"),
            '\\' => sql.push_str("\\\\"),
            c => sql.push(c),
        }
    }
    sql.push('\'');
}

fn push_ident(sql: &mut String, s: &str) {
    sql.push('"');
    sql.push_str(&s.replace('"', "\"\""));
    sql.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(pairs: &[(&str, &str)]) -> Params {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn nothing_to_do_when_equal() {
        let a = p(&[("application_name", "x")]);
        assert_eq!(sync_sql(&a, &a, &Params::new()), None);
    }

    #[test]
    fn sets_differences_and_restores_defaults() {
        let want = p(&[("datestyle", "ISO, DMY"), ("search_path", "a,b")]);
        let have = p(&[
            ("datestyle", "ISO, MDY"),
            ("application_name", "other"),
            ("work_mem", "1MB"),
        ]);
        let defaults = p(&[("application_name", ""), ("datestyle", "ISO, MDY")]);
        let sql = sync_sql(&want, &have, &defaults).unwrap();
        assert!(sql.contains("set_config(E'datestyle', E'ISO, DMY', false)"));
        assert!(sql.contains("set_config(E'search_path', E'a,b', false)"));
        assert!(sql.contains("set_config(E'application_name', E'', false)"));
        assert!(sql.contains("RESET \"work_mem\";"));
    }

    #[test]
    fn quotes_values() {
        let want = p(&[("application_name", r"it's a \ test")]);
        let sql = sync_sql(&want, &Params::new(), &Params::new()).unwrap();
        assert!(sql.contains(r"E'it''s a \\ test'"), "{sql}");
    }

    #[test]
    fn startup_options_become_settings() {
        let got = from_startup([
            ("user", "u"),
            ("options", "-c search_path=s"),
            ("Application_Name", "a"),
        ])
        .unwrap();
        assert_eq!(got, p(&[("application_name", "a"), ("search_path", "s")]));
    }
}
