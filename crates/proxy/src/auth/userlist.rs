//! The user file, in PgBouncer's `userlist.txt` format (read by
//! [`pgwake_config::parse_userlist`]): each user's secret is a SCRAM
//! verifier (`SCRAM-SHA-256$…`, as `pg_authid` holds it), an MD5 hash
//! (`md5…`, checked with the MD5 challenge under `md5` rules) or a plain
//! password.

use std::collections::HashMap;

use pgwake_config::SecretKind;

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
        match SecretKind::of(text) {
            SecretKind::Scram => Verifier::parse(text)
                .map(Secret::Scram)
                .ok_or("a malformed SCRAM-SHA-256 verifier"),
            SecretKind::Md5 => Md5Hash::parse(text)
                .map(Secret::Md5)
                .ok_or("a malformed MD5 hash"),
            SecretKind::Empty => Err("an empty password"),
            SecretKind::Plain => Ok(Secret::Scram(Verifier::from_password(text))),
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
        for entry in pgwake_config::parse_userlist(text)? {
            let secret = Secret::from_text(entry.secret.expose())
                .map_err(|e| format!("line {}: user {:?} has {e}", entry.line, entry.user))?;
            map.insert(entry.user, secret);
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
    fn bad_secrets_are_named_without_the_secret() {
        // The format's own errors are pgwake_config::parse_userlist's.
        for (text, want) in [
            ("\"a\" \"\"", "line 1: user \"a\" has an empty password"),
            (
                "\"a\" \"SCRAM-SHA-256$hunter2\"",
                "line 1: user \"a\" has a malformed",
            ),
            ("\"alice\"", "line 1: expected a quoted password"),
        ] {
            let e = Users::parse(text).expect_err(text);
            assert!(e.starts_with(want), "{text:?}: {e}");
            assert!(!e.contains("hunter2"), "{e}");
        }
    }
}
