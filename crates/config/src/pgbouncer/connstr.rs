//! The `key=value key='quoted value'` strings of `[databases]`, `[users]`
//! and `[peers]`, as PgBouncer reads them (libpq-like, but not libpq): a
//! value is quoted with `'` (`''` for a quote) or runs to the next blank,
//! and may not be empty.

/// The pairs in order, or why the string cannot be read.
pub(super) fn parse(text: &str) -> Result<Vec<(String, String)>, String> {
    let mut out = Vec::new();
    let mut rest = text.trim_start();
    while !rest.is_empty() {
        let key_end = rest
            .find(|c: char| c == '=' || c.is_whitespace())
            .unwrap_or(rest.len());
        let key = &rest[..key_end];
        let after = rest[key_end..].trim_start();
        let Some(after) = after.strip_prefix('=') else {
            return Err(format!("expected key=value at {:?}", clip(rest)));
        };
        if key.is_empty() {
            return Err(format!("a value without a key at {:?}", clip(rest)));
        }
        let after = after.trim_start();
        let (value, next) = if after.starts_with('\'') {
            crate::userlist::quoted(after, '\'')
                .ok_or_else(|| format!("{key}: the quoted value has no closing '"))?
        } else {
            let end = after.find(char::is_whitespace).unwrap_or(after.len());
            (after[..end].to_owned(), &after[end..])
        };
        if value.is_empty() {
            return Err(format!("{key}: the value is empty"));
        }
        out.push((key.to_owned(), value));
        rest = next.trim_start();
    }
    Ok(out)
}

/// The start of `s`, for a message.
fn clip(s: &str) -> &str {
    match s.char_indices().nth(30) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

#[cfg(test)]
mod tests {
    use super::parse;

    #[test]
    fn pairs_quotes_and_blanks() {
        let got =
            parse(" host=db.internal  port = 5433 connect_query='SELECT ''x'', 1' dbname=app ")
                .unwrap();
        let want: Vec<(String, String)> = [
            ("host", "db.internal"),
            ("port", "5433"),
            ("connect_query", "SELECT 'x', 1"),
            ("dbname", "app"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        assert_eq!(got, want);
        assert!(parse("").unwrap().is_empty());
    }

    #[test]
    fn malformed_strings_say_where() {
        for (text, want) in [
            ("host", "expected key=value at \"host\""),
            ("=x", "a value without a key"),
            ("host=", "host: the value is empty"),
            (
                "connect_query='select 1",
                "connect_query: the quoted value has no closing '",
            ),
        ] {
            let e = parse(text).unwrap_err();
            assert!(e.contains(want), "{text:?}: {e}");
        }
    }
}
