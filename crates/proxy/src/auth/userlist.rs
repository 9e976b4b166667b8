//! The user file, in PgBouncer's `userlist.txt` format: one user a line,
//! `"name" "secret"`, where a `"` inside a field is written `""` and the
//! secret is a SCRAM verifier (`SCRAM-SHA-256$…`, as `pg_authid` holds it),
//! an MD5 hash (`md5…`, checked with the MD5 challenge under `md5` rules)
//! or a plain password.
//! Blank lines and lines starting with `;` or `#` are skipped.

use std::collections::HashMap;

use super::md5::Md5Hash;
use super::scram::Verifier;

/// Largest user file read, against a mistaken path to a huge file.
const MAX_FILE: u64 = 16 * 1024 * 1024;

/// What the file says about one user.
#[derive(Debug, Clone)]
pub(crate) enum Secret {
    Scram(Verifier),
    /// An MD5 hash: only the MD5 challenge can check it.
    Md5(Md5Hash),
}

impl Secret {
    /// A password as `pg_authid` or a user file holds it: a SCRAM verifier,
    /// an MD5 hash or a plain password. The error never repeats the text.
    pub fn from_text(text: &str) -> Result<Secret, &'static str> {
        if text.starts_with("SCRAM-SHA-256$") {
            Verifier::parse(text)
                .map(Secret::Scram)
                .ok_or("a malformed SCRAM-SHA-256 verifier")
        } else if let Some(hash) = Md5Hash::parse(text) {
            Ok(Secret::Md5(hash))
        } else if text.is_empty() {
            Err("an empty password")
        } else {
            Ok(Secret::Scram(Verifier::from_password(text)))
        }
    }
}

#[derive(Debug, Default)]
pub(crate) struct Users {
    map: HashMap<String, Secret>,
}

impl Users {
    pub fn get(&self, user: &str) -> Option<&Secret> {
        self.map.get(user)
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// The user names, in no particular order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.map.keys().map(String::as_str)
    }

    /// Reads and parses the file; errors name the file and line, never a secret.
    pub fn load(path: &std::path::Path) -> Result<Users, String> {
        let shown = path.display();
        let meta = std::fs::metadata(path).map_err(|e| format!("client_auth.file {shown}: {e}"))?;
        if meta.len() > MAX_FILE {
            return Err(format!(
                "client_auth.file {shown}: {} bytes is larger than the {MAX_FILE} bytes a user file may have",
                meta.len()
            ));
        }
        let text =
            std::fs::read_to_string(path).map_err(|e| format!("client_auth.file {shown}: {e}"))?;
        Users::parse(&text).map_err(|e| format!("client_auth.file {shown}: {e}"))
    }

    pub fn parse(text: &str) -> Result<Users, String> {
        let mut map = HashMap::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with(';') || line.starts_with('#') {
                continue;
            }
            let n = i + 1;
            let (user, rest) =
                quoted(line).ok_or_else(|| format!("line {n}: expected \"user\" \"password\""))?;
            let (secret, _) = quoted(rest.trim_start()).ok_or_else(|| {
                format!("line {n}: expected a quoted password after the user name")
            })?;
            if user.is_empty() {
                return Err(format!("line {n}: the user name is empty"));
            }
            let secret = Secret::from_text(&secret)
                .map_err(|e| format!("line {n}: user {user:?} has {e}"))?;
            if map.insert(user.clone(), secret).is_some() {
                return Err(format!("line {n}: user {user:?} is listed twice"));
            }
        }
        Ok(Users { map })
    }

    /// Users whose entries are MD5 hashes, in name order.
    pub fn md5_users(&self) -> Vec<&str> {
        let mut v: Vec<&str> = self
            .map
            .iter()
            .filter(|(_, s)| matches!(s, Secret::Md5(_)))
            .map(|(u, _)| u.as_str())
            .collect();
        v.sort_unstable();
        v
    }
}

/// A `"…"` field at the start of `s` (with `""` for a quote) and what follows it.
fn quoted(s: &str) -> Option<(String, &str)> {
    let mut rest = s.strip_prefix('"')?;
    let mut out = String::new();
    loop {
        let at = rest.find('"')?;
        out.push_str(&rest[..at]);
        rest = &rest[at + 1..];
        match rest.strip_prefix('"') {
            Some(more) => {
                out.push('"');
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
    fn parses_pgbouncer_userlist_lines() {
        let users = Users::parse(
            "; comment\n\n# another\n\"alice\" \"plain pw\"\n\"bob\" \"SCRAM-SHA-256$4096:AQEBAQEBAQEBAQEBAQEBAQ==$CLOMo8qgbxJsmUfKdTNE/wr2IdJLA5AvV/eYa4FqZFI=:hk21aVU+f32ZZQQNDcX1Bif2AKJFB369tbGxAlPELtU=\" \"extra\"\n\"we\"\"ird\" \"md5d41d8cd98f00b204e9800998ecf8427e\"\n",
        )
        .expect("parses");
        assert_eq!(users.len(), 3);
        assert!(matches!(users.get("alice"), Some(Secret::Scram(_))));
        assert!(matches!(users.get("bob"), Some(Secret::Scram(v)) if v.iterations == 4096));
        assert!(matches!(users.get("we\"ird"), Some(Secret::Md5(_))));
        assert_eq!(users.md5_users(), vec!["we\"ird"]);
        assert!(users.get("carol").is_none());
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
            ("\"a\" \"\"", "line 1: user \"a\" has an empty password"),
            (
                "\"a\" \"x\"\n\"a\" \"y\"",
                "line 2: user \"a\" is listed twice",
            ),
            (
                "\"a\" \"SCRAM-SHA-256$hunter2\"",
                "line 1: user \"a\" has a malformed",
            ),
        ] {
            let e = Users::parse(text).expect_err(text);
            assert!(e.starts_with(want), "{text:?}: {e}");
            assert!(!e.contains("hunter2") && !e.contains("secret"), "{e}");
        }
    }
}
