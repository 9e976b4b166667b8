//! `SET key = value` (or `SET key TO value`) on the admin console: one key
//! of the configuration in force, named as SHOW CONFIG names it
//! (`pool.size`) or by its PgBouncer name (`default_pool_size`,
//! `log_connections`), applied as a reload applies a file. It lasts
//! until the next reload, which reads the file again.

use bytes::BytesMut;
use pgwake_config::SetError;
use pgwake_protocol::backend::{self, ErrorMessage, Severity};
use pgwake_protocol::sqlstate;

use crate::Shared;

/// PgBouncer's names for settings pgwake has, as SHOW CONFIG lists them.
const PGBOUNCER_NAMES: &[(&str, &str)] = &[
    ("default_pool_size", "pool.size"),
    ("min_pool_size", "pool.min_idle"),
    ("pool_mode", "pool.mode"),
    ("max_client_conn", "listen.max_client_conn"),
    ("log_connections", "log.connections"),
    ("log_disconnections", "log.disconnections"),
    ("stats_period", "log.stats_period"),
];

/// Session settings some PgBouncer clients send on connecting: accepted and
/// ignored, as PgBouncer does.
const IGNORED: &[&str] = &[
    "client_encoding",
    "datestyle",
    "default_transaction_isolation",
    "extra_float_digits",
    "standard_conforming_strings",
    "timezone",
];

const USAGE: &str = "SET key = value, e.g. SET pool.size = 10 (keys as SHOW CONFIG lists them; quote values with spaces: SET admin.admin_users = 'ops, boss')";

/// Runs `SET` with what follows the word, writing the replies.
pub(super) fn run(shared: &Shared, arg: Option<&str>, out: &mut BytesMut) {
    let Some((key, value)) = arg.and_then(parse) else {
        ErrorMessage::error(sqlstate::SYNTAX_ERROR, format!("usage: {USAGE}")).write(out);
        return;
    };
    let lower = key.to_ascii_lowercase();
    if IGNORED.contains(&lower.as_str()) {
        ErrorMessage::new(
            Severity::Notice,
            sqlstate::SUCCESSFUL_COMPLETION,
            "SET ignored",
        )
        .write(out);
        backend::command_complete(out, "SET");
        return;
    }
    let pgbouncer = PGBOUNCER_NAMES.iter().find(|(name, _)| *name == lower);
    let key = pgbouncer.map_or(key, |(_, ours)| (*ours).to_owned());
    // PgBouncer's periods are seconds; pgwake's durations say their unit.
    let value = match pgbouncer {
        Some(_) if key == "log.stats_period" && value.bytes().all(|b| b.is_ascii_digit()) => {
            format!("{value}s")
        }
        _ => value,
    };
    match shared.set_setting(&key, &value) {
        Ok(notes) => {
            for n in notes {
                ErrorMessage::new(Severity::Notice, sqlstate::SUCCESSFUL_COMPLETION, n).write(out);
            }
            backend::command_complete(out, "SET");
        }
        Err(e) => {
            let code = match &e {
                SetError::Unknown(_) => sqlstate::UNDEFINED_OBJECT,
                SetError::Invalid(_) => sqlstate::INVALID_PARAMETER_VALUE,
                SetError::NeedsRestart(_) | SetError::Secret(_) => {
                    sqlstate::CANT_CHANGE_RUNTIME_PARAM
                }
            };
            ErrorMessage::error(code, e.to_string()).write(out);
        }
    }
}

/// `key = value` or `key TO value`; a value may be `'quoted'` (`''` for a
/// quote) or `"quoted"`.
fn parse(text: &str) -> Option<(String, String)> {
    let (key, rest) = match text.find(|c: char| c == '=' || c.is_whitespace()) {
        Some(at) => text.split_at(at),
        None => return None,
    };
    let rest = rest.trim_start();
    let rest = match rest.strip_prefix('=') {
        Some(r) => r,
        None => {
            let (word, r) = rest.split_at(rest.find(char::is_whitespace)?);
            if !word.eq_ignore_ascii_case("to") {
                return None;
            }
            r
        }
    };
    let value = rest.trim();
    let value = if let Some(q) = value.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')) {
        q.replace("''", "'")
    } else if let Some(q) = value.strip_prefix('"').and_then(|v| v.strip_suffix('"')) {
        q.replace("\"\"", "\"")
    } else {
        value.to_owned()
    };
    (!key.is_empty() && !value.is_empty()).then(|| (key.to_owned(), value))
}

#[cfg(test)]
mod tests {
    use super::parse;

    #[test]
    fn key_and_value_in_every_spelling() {
        let kv = |k: &str, v: &str| Some((k.to_owned(), v.to_owned()));
        assert_eq!(parse("pool.size = 10"), kv("pool.size", "10"));
        assert_eq!(parse("pool.size=10"), kv("pool.size", "10"));
        assert_eq!(parse("pool.size TO 10"), kv("pool.size", "10"));
        assert_eq!(
            parse("log.level = 'warn,pgwake=info'"),
            kv("log.level", "warn,pgwake=info")
        );
        assert_eq!(parse("a = 'it''s'"), kv("a", "it's"));
        assert_eq!(parse("a = \"x y\""), kv("a", "x y"));
        for bad in [
            "pool.size",
            "pool.size 10",
            "= 10",
            "pool.size =",
            "pool.size = ''",
        ] {
            assert_eq!(parse(bad), None, "{bad}");
        }
    }
}
