//! The MD5 password check (AuthenticationMD5Password), for users whose
//! entry is an MD5 hash: `md5` and the hex of md5(password + user name), as
//! `pg_authid` held it before SCRAM. PgBouncer (`auth_type = md5`) and
//! PostgreSQL (`md5`) accept such entries; pgwake does under `md5` rules.
//!
//! The client answers `md5` + hex(md5(hex(md5(password + user)) + salt)),
//! so the server checks it with the stored hash alone. That is MD5's flaw:
//! the hash is as good as the password to whoever reads the file.

use md5::{Digest, Md5};
use subtle::ConstantTimeEq;

/// The 32 lower-case hex digits of md5(password + user name).
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct Md5Hash([u8; 32]);

impl std::fmt::Debug for Md5Hash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Md5Hash(<redacted>)")
    }
}

impl Md5Hash {
    /// `md5` followed by 32 hex digits (either case), as `pg_authid` and
    /// PgBouncer's user file hold it.
    pub fn parse(text: &str) -> Option<Md5Hash> {
        let hex = text.strip_prefix("md5")?.as_bytes();
        let digits: [u8; 32] = hex.try_into().ok()?;
        if !digits.iter().all(u8::is_ascii_hexdigit) {
            return None;
        }
        Some(Md5Hash(digits.map(|b| b.to_ascii_lowercase())))
    }

    /// Whether `answer` (a PasswordMessage's text, without its NUL) is the
    /// right one for `salt`. Compared in constant time.
    pub fn accepts(&self, salt: [u8; 4], answer: &[u8]) -> bool {
        let mut h = Md5::new();
        h.update(self.0);
        h.update(salt);
        let want = salted_answer(&h.finalize());
        bool::from(want.as_slice().ct_eq(answer))
    }
}

/// `md5` and the lower-case hex of `digest`.
fn salted_answer(digest: &[u8]) -> Vec<u8> {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = b"md5".to_vec();
    for b in digest {
        out.push(HEX[usize::from(b >> 4)]);
        out.push(HEX[usize::from(b & 0xf)]);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_what_libpq_computes_and_nothing_else() {
        // What a client computes from the password, as libpq does.
        let stored = postgres_protocol::password::md5(b"mel-pw", "mel");
        let hash = Md5Hash::parse(&stored).expect("an md5 entry");
        let salt = [1, 2, 3, 4];
        let answer = postgres_protocol::authentication::md5_hash(b"mel", b"mel-pw", salt);
        assert!(hash.accepts(salt, answer.as_bytes()));
        // Another salt, password or user, or a cut answer: refused.
        assert!(!hash.accepts([4, 3, 2, 1], answer.as_bytes()));
        let wrong = postgres_protocol::authentication::md5_hash(b"mel", b"not-it", salt);
        assert!(!hash.accepts(salt, wrong.as_bytes()));
        let other = postgres_protocol::authentication::md5_hash(b"bob", b"mel-pw", salt);
        assert!(!hash.accepts(salt, other.as_bytes()));
        assert!(!hash.accepts(salt, &answer.as_bytes()[..34]));
        // Upper-case hex in the file is the same hash.
        let upper = format!("md5{}", stored[3..].to_ascii_uppercase());
        assert!(Md5Hash::parse(&upper).is_some_and(|h| h.accepts(salt, answer.as_bytes())));
        assert!(!format!("{hash:?}").contains(&stored[3..]));
    }

    #[test]
    fn only_md5_and_32_hex_digits_parse() {
        for bad in [
            "md5",
            "md5abc",
            "d41d8cd98f00b204e9800998ecf8427e",
            "md5d41d8cd98f00b204e9800998ecf8427g",
            "md5d41d8cd98f00b204e9800998ecf8427e0",
        ] {
            assert!(Md5Hash::parse(bad).is_none(), "{bad}");
        }
    }
}
