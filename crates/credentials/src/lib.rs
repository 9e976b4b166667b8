#![forbid(unsafe_code)]
//! Where pgwake gets the secret it logs in to the server with.
//!
//! A [`Secret`] never prints itself. A [`CredentialSource`] yields the secret
//! to use for the next server connection; every new connection asks again,
//! so a rotated secret is picked up without a restart.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use thiserror::Error;

/// A secret string (password or token). `Debug` and `Display` print
/// `<redacted>`; the value is only reachable through [`Secret::expose`].
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Arc<str>);

impl Secret {
    pub fn new(value: impl Into<Arc<str>>) -> Self {
        Secret(value.into())
    }

    /// The secret itself, for the one place that sends it to the server.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// Why no secret could be had. The message names the source, never the secret.
#[derive(Debug, Clone, Error)]
#[error("credential source {source_name}: {reason}")]
pub struct CredentialError {
    pub source_name: String,
    pub reason: String,
}

/// Yields the secret for the next server login.
pub trait CredentialSource: Send + Sync + fmt::Debug {
    /// The current secret, or `None` when the server needs none (trust).
    fn current(&self) -> Result<Option<Secret>, CredentialError>;

    /// A number that changes whenever the secret does. Connections made
    /// under an older generation are retired when next returned to a pool.
    /// Cheap: called on every check-in.
    fn generation(&self) -> u64 {
        0
    }

    /// Like [`current`](Self::current), but when no valid secret exists yet
    /// (a token source still fetching its first token, or one whose token
    /// expired) waits up to `wait` for the next fetch to finish. Never waits
    /// while a valid secret exists.
    fn secret(&self, wait: Duration) -> SecretFuture<'_> {
        let _ = wait;
        Box::pin(std::future::ready(self.current()))
    }

    /// Waits (up to `wait`) for a fetch under way, if any, to finish. A
    /// login refused while a token was being rotated can then be retried
    /// with the new one.
    fn settled(&self, wait: Duration) -> Pin<Box<dyn Future<Output = ()> + Send + '_>> {
        let _ = wait;
        Box::pin(std::future::ready(()))
    }

    /// What the source is, for operators: names it and where it gets the
    /// secret, never the secret.
    fn describe(&self) -> String;
}

/// The future [`CredentialSource::secret`] returns.
pub type SecretFuture<'a> =
    Pin<Box<dyn Future<Output = Result<Option<Secret>, CredentialError>> + Send + 'a>>;

mod azure;
mod cache;
mod command;
mod password_file;
pub use azure::{AzureIdentity, AzureSource, AZURE_POSTGRES_SCOPE};
pub use cache::{
    CacheStats, FetchObserver, FetchReport, RefreshSettings, RefreshingCache, Token, TokenFetcher,
    TokenFuture,
};
pub use command::{run_shell, CommandSource};
pub use password_file::PasswordFile;

/// A password fixed in the configuration (or its environment override).
#[derive(Debug, Clone)]
pub struct StaticPassword(pub Secret);

impl CredentialSource for StaticPassword {
    fn current(&self) -> Result<Option<Secret>, CredentialError> {
        Ok(Some(self.0.clone()))
    }

    fn describe(&self) -> String {
        "password".into()
    }
}

/// No password: the server trusts pgwake (local development, or `trust` in pg_hba.conf).
#[derive(Debug, Clone, Copy)]
pub struct NoPassword;

impl CredentialSource for NoPassword {
    fn current(&self) -> Result<Option<Secret>, CredentialError> {
        Ok(None)
    }

    fn describe(&self) -> String {
        "trust (no password)".into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_never_print() {
        let s = Secret::new("hunter2");
        assert_eq!(format!("{s} {s:?}"), "<redacted> <redacted>");
        assert_eq!(
            format!("{:?}", StaticPassword(s.clone())),
            "StaticPassword(<redacted>)"
        );
        assert_eq!(s.expose(), "hunter2");
    }
}
