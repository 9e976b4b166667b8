//! The user file, in PgBouncer's `userlist.txt` format: one user a line,
//! `"name" "secret"` (anything after the second field is ignored, as
//! PgBouncer does), where a `"` inside a field is written `""`. Blank lines
//! and lines starting with `;` or `#` are skipped. `client_auth.file` is
//! read with this, and `import-pgbouncer` reads PgBouncer's `auth_file`.

use pgwake_credentials::Secret;

/// One user's line.
#[derive(Debug, Clone)]
pub struct UserlistEntry {
    /// 1-based line number, for messages.
    pub line: usize,
    pub user: String,
    /// As written: a SCRAM verifier, an MD5 hash or a plain password.
    pub secret: Secret,
}

/// What a user file (or `pg_authid`) holds for a user.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SecretKind {
    /// `SCRAM-SHA-256$…`: checks SCRAM, but is no password to log in with.
    Scram,
    /// `md5` and 32 hex digits: cannot check SCRAM.
    Md5,
    /// Anything else: the password itself.
    Plain,
    Empty,
}

impl SecretKind {
    pub fn of(text: &str) -> SecretKind {
        if text.starts_with("SCRAM-SHA-256$") {
            SecretKind::Scram
        } else if text.len() == 35
            && text.starts_with("md5")
            && text[3..].bytes().all(|b| b.is_ascii_hexdigit())
        {
            SecretKind::Md5
        } else if text.is_empty() {
            SecretKind::Empty
        } else {
            SecretKind::Plain
        }
    }
}

/// The users of a user file in file order. Errors name the line, never a
/// secret: a line that is not two quoted fields, an empty user name, a
/// user listed twice.
pub fn parse_userlist(text: &str) -> Result<Vec<UserlistEntry>, String> {
    let mut out: Vec<UserlistEntry> = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with(';') || line.starts_with('#') {
            continue;
        }
        let n = i + 1;
        let (user, rest) =
            quoted(line, '"').ok_or_else(|| format!("line {n}: expected \"user\" \"password\""))?;
        let (secret, _) = quoted(rest.trim_start(), '"')
            .ok_or_else(|| format!("line {n}: expected a quoted password after the user name"))?;
        if user.is_empty() {
            return Err(format!("line {n}: the user name is empty"));
        }
        if out.iter().any(|e| e.user == user) {
            return Err(format!("line {n}: user {user:?} is listed twice"));
        }
        out.push(UserlistEntry {
            line: n,
            user,
            secret: Secret::new(secret),
        });
    }
    Ok(out)
}

/// A field quoted with `q` at the start of `s` (`q` doubled for itself) and
/// what follows it: PgBouncer's user file and ini names use `"`, its
/// connection strings `'`.
pub(crate) fn quoted(s: &str, q: char) -> Option<(String, &str)> {
    let mut rest = s.strip_prefix(q)?;
    let mut out = String::new();
    loop {
        let at = rest.find(q)?;
        out.push_str(&rest[..at]);
        rest = &rest[at + q.len_utf8()..];
        match rest.strip_prefix(q) {
            Some(more) => {
                out.push(q);
                rest = more;
            }
            None => return Some((out, rest)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_comments_and_kinds() {
        let users = parse_userlist(
            "; comment\n\n# another\n\"alice\" \"plain pw\"\n\"we\"\"ird\" \"md5d41d8cd98f00b204e9800998ecf8427e\" \"extra\"\n\"bob\" \"SCRAM-SHA-256$x\"\n\"eve\" \"\"\n",
        )
        .expect("parses");
        let got: Vec<(usize, &str, SecretKind)> = users
            .iter()
            .map(|e| (e.line, e.user.as_str(), SecretKind::of(e.secret.expose())))
            .collect();
        assert_eq!(
            got,
            vec![
                (4, "alice", SecretKind::Plain),
                (5, "we\"ird", SecretKind::Md5),
                (6, "bob", SecretKind::Scram),
                (7, "eve", SecretKind::Empty),
            ]
        );
    }

    #[test]
    fn bad_lines_are_named_without_their_secret() {
        for (text, want) in [
            ("alice secret", "line 1: expected \"user\" \"password\""),
            ("\"alice\"", "line 1: expected a quoted password"),
            (
                "\n\"alice\" \"unterminated",
                "line 2: expected a quoted password",
            ),
            ("\"\" \"pw\"", "line 1: the user name is empty"),
            (
                "\"a\" \"x\"\n\"a\" \"y\"",
                "line 2: user \"a\" is listed twice",
            ),
        ] {
            let e = parse_userlist(text).expect_err(text);
            assert!(e.starts_with(want), "{text:?}: {e}");
            assert!(!e.contains("secret") && !e.contains("unterminated"), "{e}");
        }
    }
}
