//! The server's side of SCRAM-SHA-256 (RFC 5802, RFC 7677) as PostgreSQL
//! runs it: the user name comes from the startup packet (the SCRAM `n=` is
//! ignored); over TLS, SCRAM-SHA-256-PLUS binds the exchange to the
//! server's certificate (`tls-server-end-point`, RFC 5929).

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use hmac::{Hmac, KeyInit, Mac};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

pub(crate) const MECHANISM: &str = "SCRAM-SHA-256";
pub(crate) const MECHANISM_PLUS: &str = "SCRAM-SHA-256-PLUS";

/// Channel binding: what was offered and what the client chose.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Binding<'a> {
    /// Only SCRAM-SHA-256 was offered (no TLS).
    NotOffered,
    /// SCRAM-SHA-256-PLUS was offered; the client chose SCRAM-SHA-256.
    Declined,
    /// The client chose SCRAM-SHA-256-PLUS: the certificate's end-point data.
    Plus(&'a [u8]),
}
/// Nonce bytes pgwake adds to the client's (as PostgreSQL does, 18).
const NONCE_LEN: usize = 18;

/// What a server keeps to check a password: `SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>`.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct Verifier {
    pub iterations: u32,
    pub salt: Vec<u8>,
    pub stored_key: [u8; 32],
    pub server_key: [u8; 32],
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Verifier(<redacted>)")
    }
}

impl Verifier {
    /// Parses a verifier as `pg_authid.rolpassword` holds it.
    pub fn parse(text: &str) -> Option<Verifier> {
        let rest = text.strip_prefix("SCRAM-SHA-256$")?;
        let (iter_salt, keys) = rest.split_once('$')?;
        let (iterations, salt) = iter_salt.split_once(':')?;
        let (stored, server) = keys.split_once(':')?;
        let key = |s: &str| -> Option<[u8; 32]> { B64.decode(s).ok()?.try_into().ok() };
        let iterations: u32 = iterations.parse().ok().filter(|&i| i > 0)?;
        Some(Verifier {
            iterations,
            salt: B64.decode(salt).ok().filter(|s| !s.is_empty())?,
            stored_key: key(stored)?,
            server_key: key(server)?,
        })
    }

    /// A verifier for a plain password (SASLprep'd, random salt, 4096 iterations).
    pub fn from_password(password: &str) -> Verifier {
        let text = postgres_protocol::password::scram_sha_256(password.as_bytes());
        // The library's output is always a well-formed verifier.
        Verifier::parse(&text).unwrap_or_else(|| Verifier::mock(password.as_bytes(), &[0; 32]))
    }

    /// A verifier no password matches, stable per user name so that
    /// repeated attempts see the same salt whether or not the user exists.
    pub fn mock(user: &[u8], secret: &[u8; 32]) -> Verifier {
        let mut h = Sha256::new();
        h.update(b"pgwake mock salt");
        h.update(secret);
        h.update(user);
        let digest = h.finalize();
        let mut stored_key = [0u8; 32];
        stored_key.copy_from_slice(&digest);
        // No ClientKey hashes to this: it is not a SHA-256 output of anything
        // derived from a password (the negation of a random-looking value).
        for b in &mut stored_key {
            *b = !*b;
        }
        Verifier {
            iterations: 4096,
            salt: digest[..16].to_vec(),
            stored_key,
            server_key: [0; 32],
        }
    }
}

/// Why an exchange failed.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Failure {
    /// The client's messages do not follow the protocol.
    Malformed(&'static str),
    /// The client asked for channel binding that is not offered.
    ChannelBinding,
    /// The client supports channel binding but thinks the server does not,
    /// though it was offered: a downgrade.
    Downgrade,
    /// The proof does not match: wrong password or unknown user.
    WrongPassword,
}

/// After the server-first message: what the client's final message must match.
pub(crate) struct Exchange {
    client_first_bare: String,
    server_first: String,
    /// What the client-final message's `c=` must decode to.
    cbind: Vec<u8>,
    nonce: String,
}

impl Exchange {
    /// Reads the client-first message and builds the server-first one.
    pub fn start(
        client_first: &[u8],
        verifier: &Verifier,
        random: [u8; NONCE_LEN],
        binding: Binding<'_>,
    ) -> Result<(Exchange, String), Failure> {
        let text = std::str::from_utf8(client_first)
            .map_err(|_| Failure::Malformed("client-first-message is not UTF-8"))?;
        // gs2-header: cbind-flag "," [authzid] ","
        let (flag, rest) = text
            .split_once(',')
            .ok_or(Failure::Malformed("client-first-message has no GS2 header"))?;
        let end_point = match (flag, binding) {
            ("n", Binding::NotOffered | Binding::Declined) | ("y", Binding::NotOffered) => None,
            ("y", Binding::Declined) => return Err(Failure::Downgrade),
            ("p=tls-server-end-point", Binding::Plus(data)) => Some(data),
            (f, Binding::NotOffered | Binding::Declined) if f.starts_with("p=") => {
                return Err(Failure::ChannelBinding)
            }
            (_, Binding::Plus(_)) => {
                return Err(Failure::Malformed(
                    "SCRAM-SHA-256-PLUS needs channel binding type tls-server-end-point",
                ))
            }
            _ => return Err(Failure::Malformed("unexpected channel-binding flag")),
        };
        let (authzid, bare) = rest
            .split_once(',')
            .ok_or(Failure::Malformed("client-first-message has no GS2 header"))?;
        if !authzid.is_empty() {
            return Err(Failure::Malformed(
                "authorization identity is not supported",
            ));
        }
        let mut parts = bare.split(',');
        if !parts.next().is_some_and(|p| p.starts_with("n=")) {
            return Err(Failure::Malformed(
                "client-first-message has no user name attribute",
            ));
        }
        let client_nonce = parts
            .next()
            .and_then(|p| p.strip_prefix("r="))
            .filter(|n| !n.is_empty() && n.bytes().all(|b| (0x21..=0x7e).contains(&b) && b != b','))
            .ok_or(Failure::Malformed("client-first-message has no nonce"))?;
        let nonce = format!("{client_nonce}{}", B64.encode(random));
        let server_first = format!(
            "r={nonce},s={},i={}",
            B64.encode(&verifier.salt),
            verifier.iterations
        );
        let mut cbind = format!("{flag},{authzid},").into_bytes();
        cbind.extend_from_slice(end_point.unwrap_or_default());
        Ok((
            Exchange {
                client_first_bare: bare.to_owned(),
                server_first: server_first.clone(),
                cbind,
                nonce,
            },
            server_first,
        ))
    }

    /// Checks the client-final message's proof; on success returns the
    /// server-final message (the server's signature).
    pub fn finish(self, client_final: &[u8], verifier: &Verifier) -> Result<String, Failure> {
        let text = std::str::from_utf8(client_final)
            .map_err(|_| Failure::Malformed("client-final-message is not UTF-8"))?;
        let (without_proof, proof) = text
            .rsplit_once(",p=")
            .ok_or(Failure::Malformed("client-final-message has no proof"))?;
        let mut parts = without_proof.split(',');
        let binding = parts
            .next()
            .and_then(|p| p.strip_prefix("c="))
            .ok_or(Failure::Malformed(
                "client-final-message has no channel binding",
            ))?;
        if B64.decode(binding).ok().as_deref() != Some(self.cbind.as_slice()) {
            return Err(Failure::Malformed(
                "channel binding does not match the GS2 header or the server certificate",
            ));
        }
        if parts.next().and_then(|p| p.strip_prefix("r=")) != Some(self.nonce.as_str()) {
            return Err(Failure::Malformed("nonce does not match"));
        }
        let proof: [u8; 32] = B64
            .decode(proof)
            .ok()
            .and_then(|p| p.try_into().ok())
            .ok_or(Failure::Malformed("malformed proof"))?;
        let auth_message = format!(
            "{},{},{}",
            self.client_first_bare, self.server_first, without_proof
        );
        let signature = hmac(&verifier.stored_key, auth_message.as_bytes());
        let mut client_key = [0u8; 32];
        for (k, (p, s)) in client_key.iter_mut().zip(proof.iter().zip(signature)) {
            *k = p ^ s;
        }
        let stored: [u8; 32] = Sha256::digest(client_key).into();
        if !bool::from(stored.ct_eq(&verifier.stored_key)) {
            return Err(Failure::WrongPassword);
        }
        let server_signature = hmac(&verifier.server_key, auth_message.as_bytes());
        Ok(format!("v={}", B64.encode(server_signature)))
    }
}

fn hmac(key: &[u8], data: &[u8]) -> [u8; 32] {
    let Ok(mut mac) = <Hmac<Sha256> as KeyInit>::new_from_slice(key) else {
        // HMAC takes keys of any length.
        return [0; 32];
    };
    mac.update(data);
    mac.finalize().into_bytes().into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};

    /// Runs a whole exchange with rust-postgres's client side.
    fn login(password: &str, verifier: &Verifier) -> Result<(), Failure> {
        login_bound(
            password,
            verifier,
            ChannelBinding::unrequested(),
            Binding::NotOffered,
        )
    }

    fn login_bound(
        password: &str,
        verifier: &Verifier,
        client_binding: ChannelBinding,
        binding: Binding<'_>,
    ) -> Result<(), Failure> {
        let mut client = ScramSha256::new(password.as_bytes(), client_binding);
        let (exchange, server_first) =
            Exchange::start(client.message(), verifier, [7; NONCE_LEN], binding)?;
        client
            .update(server_first.as_bytes())
            .map_err(|_| Failure::Malformed("client rejected server-first"))?;
        let server_final = exchange.finish(client.message(), verifier)?;
        client
            .finish(server_final.as_bytes())
            .map_err(|_| Failure::Malformed("client rejected the server's signature"))
    }

    #[test]
    fn the_right_password_passes_and_a_wrong_one_fails() {
        let v = Verifier::from_password("s3cret");
        assert_eq!(login("s3cret", &v), Ok(()));
        assert_eq!(login("s3cret ", &v), Err(Failure::WrongPassword));
        assert_eq!(login("", &v), Err(Failure::WrongPassword));
    }

    #[test]
    fn a_verifier_from_postgres_parses_and_verifies() {
        // Password "pencil", salt sixteen 0x01 bytes, as `pg_authid` holds it
        // (computed independently with Python's hashlib).
        let text = "SCRAM-SHA-256$4096:AQEBAQEBAQEBAQEBAQEBAQ==$CLOMo8qgbxJsmUfKdTNE/wr2IdJLA5AvV/eYa4FqZFI=:hk21aVU+f32ZZQQNDcX1Bif2AKJFB369tbGxAlPELtU=";
        let v = Verifier::parse(text).expect("parses");
        assert_eq!(v.iterations, 4096);
        assert_eq!(login("pencil", &v), Ok(()));
        assert_eq!(login("pencil2", &v), Err(Failure::WrongPassword));
    }

    #[test]
    fn channel_binding_ties_the_exchange_to_the_certificate() {
        let v = Verifier::from_password("pw");
        let cert = [5u8; 32];
        let plus = |data: &[u8]| ChannelBinding::tls_server_end_point(data.to_vec());
        assert_eq!(
            login_bound("pw", &v, plus(&cert), Binding::Plus(&cert)),
            Ok(())
        );
        // Another certificate (a man in the middle) fails.
        assert!(matches!(
            login_bound("pw", &v, plus(&[6; 32]), Binding::Plus(&cert)),
            Err(Failure::Malformed(_))
        ));
        // A client able to bind that thinks nothing was offered (flag `y`)
        // although it was: a downgrade.
        assert_eq!(
            login_bound("pw", &v, ChannelBinding::unrequested(), Binding::Declined),
            Err(Failure::Downgrade)
        );
        // Without TLS, `y` is what such a client says.
        assert_eq!(
            login_bound("pw", &v, ChannelBinding::unrequested(), Binding::NotOffered),
            Ok(())
        );
        // A client that cannot bind (flag `n`) may decline what was offered.
        assert_eq!(
            login_bound("pw", &v, ChannelBinding::unsupported(), Binding::Declined),
            Ok(())
        );
        // Binding data on a connection that offered none.
        assert_eq!(
            login_bound("pw", &v, plus(&cert), Binding::Declined),
            Err(Failure::ChannelBinding)
        );
    }

    #[test]
    fn a_mock_verifier_matches_no_password_and_is_stable_per_user() {
        let secret = [9; 32];
        let a = Verifier::mock(b"alice", &secret);
        assert_eq!(a, Verifier::mock(b"alice", &secret));
        assert_ne!(a.salt, Verifier::mock(b"bob", &secret).salt);
        for p in ["", "alice", "password"] {
            assert_eq!(login(p, &a), Err(Failure::WrongPassword));
        }
    }

    #[test]
    fn malformed_messages_are_refused_without_panicking() {
        let v = Verifier::from_password("x");
        for first in [
            &b""[..],
            b"n",
            b"n,,",
            b"n,,n=,r=",
            b"x,,n=,r=abc",
            b"n,a=someone,n=,r=abc",
            b"\xff\xfe",
        ] {
            assert!(matches!(
                Exchange::start(first, &v, [0; NONCE_LEN], Binding::NotOffered),
                Err(Failure::Malformed(_))
            ));
        }
        assert_eq!(
            Exchange::start(
                b"p=tls-server-end-point,,n=,r=abc",
                &v,
                [0; NONCE_LEN],
                Binding::NotOffered
            )
            .err(),
            Some(Failure::ChannelBinding)
        );
        for last in [
            &b""[..],
            b"c=biws",
            b"c=biws,r=wrong,p=AAAA",
            b"c=eSws,r=abc,p=AAAA",
        ] {
            let (ex, _) = Exchange::start(b"n,,n=,r=abc", &v, [0; NONCE_LEN], Binding::NotOffered)
                .expect("first");
            assert!(matches!(ex.finish(last, &v), Err(Failure::Malformed(_))));
        }
        for bad in [
            "SCRAM-SHA-256$",
            "SCRAM-SHA-256$0:AAAA$AAAA:AAAA",
            "SCRAM-SHA-256$4096:$x:y",
            "md5abc",
        ] {
            assert!(Verifier::parse(bad).is_none(), "{bad}");
        }
    }
}
