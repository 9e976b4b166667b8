//! Why a server connection could not be made, and what each reason means to
//! a client (its SQLSTATE) and to the metrics (its kind): one mapping each,
//! side by side.

use std::io;
use std::time::Duration;

use pgwake_credentials::CredentialError;
use pgwake_lifecycle::WakeError;
use pgwake_protocol::backend::{ErrorMessage, Severity};
use pgwake_protocol::sqlstate;

use crate::stats::ConnectErrorKind;

/// Why a server connection could not be made.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ConnectError {
    #[error("could not connect to server at {host}:{port}: {reason}")]
    Unreachable {
        host: String,
        port: u16,
        reason: String,
        refused: bool,
    },
    #[error("connecting to server at {host}:{port} took longer than {timeout:?} (server.connect_timeout)")]
    Timeout {
        host: String,
        port: u16,
        timeout: Duration,
    },
    /// The server refused the login (bad password, missing database, starting up…).
    #[error("server refused the connection: {}", .0.message)]
    Server(ErrorMessage),
    #[error("the server asked for a password, and server.auth has none (set server.auth.password or PGWAKE_SERVER_AUTH_PASSWORD)")]
    NoPassword,
    #[error("server.sslmode = \"{sslmode}\" requires TLS, and the server at {host}:{port} does not accept it (a downgrade: pgwake sends no password or token without TLS)")]
    TlsRequired {
        host: String,
        port: u16,
        sslmode: &'static str,
    },
    /// The server asked for the password in cleartext over a connection
    /// without TLS: sending it would put the password or token on the wire.
    #[error("the server at {host}:{port} asked for the password in cleartext over a connection without TLS; pgwake did not send it (use TLS with server.sslmode = \"verify-full\", or set server.auth.allow_cleartext_without_tls = true to accept the risk)")]
    CleartextWithoutTls { host: String, port: u16 },
    #[error("TLS with the server at {host}:{port} failed: {reason}")]
    Tls {
        host: String,
        port: u16,
        reason: String,
    },
    /// The login exchange broke off or went against the protocol.
    #[error("unexpected reply from server during login: {0}")]
    Protocol(LoginProtocol),
    /// A connection was had, yet no login recorded the server's defaults.
    /// Every successful login records them first, so this is a pgwake fault,
    /// answered as an error rather than a panic.
    #[error("unexpected reply from server during login: no defaults")]
    NoDefaults,
    /// The credential source has no secret to log in with.
    #[error("{0}")]
    Credential(CredentialError),
    /// The server is stopped and did not come up within `wake_timeout`, or
    /// could not be started.
    #[error("{0}")]
    Asleep(WakeError),
}

/// How a login exchange with the server failed on the protocol level. Shown
/// after "unexpected reply from server during login: ".
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LoginProtocol {
    /// Reading from or writing to the server failed mid-login.
    #[error("connection lost: {reason}")]
    ConnectionLost { kind: io::ErrorKind, reason: String },
    /// The socket had no peer address: it was no longer connected.
    #[error("{0}")]
    NoPeerAddress(String),
    #[error("server closed the connection during login")]
    Closed,
    /// A login message beyond 1 MiB.
    #[error("login message too large")]
    TooLarge,
    /// A message from the server could not be parsed.
    #[error("{0}")]
    Malformed(String),
    /// A message to the server could not be encoded (a NUL byte in the
    /// user name or password, say).
    #[error("{0}")]
    Encode(String),
    #[error("server offers no SASL mechanism pgwake supports (SCRAM-SHA-256)")]
    NoScram,
    #[error("SASL continue before start")]
    SaslContinueBeforeStart,
    #[error("SASL final before start")]
    SaslFinalBeforeStart,
    /// The server's SCRAM challenge was invalid.
    #[error("SCRAM: {0}")]
    Scram(String),
    /// The server could not prove it knows the password.
    #[error("SCRAM server signature: {0}")]
    ScramSignature(String),
    #[error("unexpected message during login")]
    UnexpectedMessage,
}

impl LoginProtocol {
    pub(crate) fn connection_lost(e: &io::Error) -> Self {
        LoginProtocol::ConnectionLost {
            kind: e.kind(),
            reason: e.to_string(),
        }
    }

    pub(crate) fn malformed(e: &io::Error) -> Self {
        LoginProtocol::Malformed(e.to_string())
    }

    pub(crate) fn encode(e: &io::Error) -> Self {
        LoginProtocol::Encode(e.to_string())
    }
}

// Not `#[from]`: that would also make it the `source`, and its text is
// already part of this error's, so error chains would print it twice.
impl From<LoginProtocol> for ConnectError {
    fn from(e: LoginProtocol) -> Self {
        ConnectError::Protocol(e)
    }
}

impl ConnectError {
    /// The error a client sees.
    pub fn to_client(&self) -> ErrorMessage {
        match self {
            ConnectError::Server(e) => {
                let mut e = e.clone();
                e.severity = Severity::Error;
                e.message = format!("server login failed: {}", e.message);
                e
            }
            ConnectError::NoPassword => {
                ErrorMessage::error(sqlstate::INVALID_PASSWORD, self.to_string())
            }
            // The source may recover (an identity endpoint back up): a
            // connection failure, which clients and drivers retry.
            ConnectError::Credential(_) => {
                ErrorMessage::error(sqlstate::CONNECTION_FAILURE, format!("pgwake cannot log in to the server: {self}"))
                    .with_hint("pgwake keeps retrying the credential source; check its error above")
            }
            ConnectError::Asleep(w) => ErrorMessage::error(
                sqlstate::CANNOT_CONNECT_NOW,
                format!("pgwake: {self}"),
            )
            .with_hint(match w {
                WakeError::Timeout { .. } => {
                    "pgwake is starting the database server; retry in a few seconds"
                }
                WakeError::Failed(_) => {
                    "pgwake could not start the database server; see its log for the [lifecycle] provider's error"
                }
            }),
            ConnectError::Protocol(_) | ConnectError::NoDefaults => {
                ErrorMessage::error(sqlstate::PROTOCOL_VIOLATION, self.to_string())
            }
            ConnectError::TlsRequired { .. } | ConnectError::CleartextWithoutTls { .. } => {
                ErrorMessage::error(sqlstate::UNABLE_TO_CONNECT, format!("pgwake: {self}"))
                    .with_hint("the server, or something between it and pgwake, refused TLS; pgwake sends no password or token without it")
            }
            ConnectError::Unreachable { .. } | ConnectError::Timeout { .. } | ConnectError::Tls { .. } => {
                ErrorMessage::error(sqlstate::UNABLE_TO_CONNECT, format!("pgwake {self}"))
                    .with_hint("check that the server is running and reachable; pgwake retries as soon as it accepts connections")
            }
        }
    }

    /// The kind counted in `pgwake_server_connect_errors_total`.
    pub fn metric_kind(&self) -> ConnectErrorKind {
        match self {
            ConnectError::Unreachable { .. } => ConnectErrorKind::Refused,
            ConnectError::Timeout { .. } => ConnectErrorKind::Timeout,
            ConnectError::Tls { .. } => ConnectErrorKind::Tls,
            ConnectError::TlsRequired { .. } | ConnectError::CleartextWithoutTls { .. } => {
                ConnectErrorKind::Downgrade
            }
            ConnectError::Credential(_) => ConnectErrorKind::Credential,
            ConnectError::Asleep(_) => ConnectErrorKind::Asleep,
            ConnectError::Server(_) | ConnectError::NoPassword if self.is_auth() => {
                ConnectErrorKind::Auth
            }
            ConnectError::Server(_)
            | ConnectError::NoPassword
            | ConnectError::Protocol(_)
            | ConnectError::NoDefaults => ConnectErrorKind::Other,
        }
    }

    /// Worth retrying at once: the server is restarting or briefly unreachable.
    pub fn is_transient(&self) -> bool {
        match self {
            ConnectError::Unreachable { refused, .. } => *refused,
            ConnectError::Server(e) => {
                e.code == sqlstate::CANNOT_CONNECT_NOW || e.code == sqlstate::ADMIN_SHUTDOWN
            }
            _ => false,
        }
    }

    /// The server may be stopped: nothing listens, or it is starting up
    /// or shutting down.
    pub fn may_be_asleep(&self) -> bool {
        match self {
            ConnectError::Unreachable { .. } => true,
            ConnectError::Server(e) => {
                e.code == sqlstate::CANNOT_CONNECT_NOW || e.code == sqlstate::ADMIN_SHUTDOWN
            }
            _ => false,
        }
    }

    /// A login the server refused on purpose: retrying at once would only hammer it.
    pub fn is_auth(&self) -> bool {
        match self {
            ConnectError::Server(e) => {
                e.code == sqlstate::INVALID_PASSWORD || e.code == sqlstate::INVALID_AUTHORIZATION
            }
            // Not `Credential`: the source paces its own retries, and the
            // server never saw a login.
            ConnectError::NoPassword => true,
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn login_protocol_messages_read_as_before() {
        let lost = LoginProtocol::connection_lost(&io::Error::new(
            io::ErrorKind::ConnectionReset,
            "reset by peer",
        ));
        assert_eq!(
            ConnectError::from(lost).to_string(),
            "unexpected reply from server during login: connection lost: reset by peer"
        );
        assert_eq!(
            ConnectError::from(LoginProtocol::Closed).to_string(),
            "unexpected reply from server during login: server closed the connection during login"
        );
        assert_eq!(
            ConnectError::NoDefaults.to_string(),
            "unexpected reply from server during login: no defaults"
        );
    }

    #[test]
    fn each_error_has_one_sqlstate_and_one_metric_kind() {
        let refused = ConnectError::Unreachable {
            host: "db".into(),
            port: 5432,
            reason: "connection refused".into(),
            refused: true,
        };
        assert_eq!(refused.to_client().code, sqlstate::UNABLE_TO_CONNECT);
        assert_eq!(refused.metric_kind(), ConnectErrorKind::Refused);
        let credential = ConnectError::Credential(CredentialError {
            source_name: "azure".into(),
            reason: "no token".into(),
        });
        assert_eq!(credential.to_string(), "credential source azure: no token");
        assert_eq!(credential.to_client().code, sqlstate::CONNECTION_FAILURE);
        assert_eq!(credential.metric_kind(), ConnectErrorKind::Credential);
        assert_eq!(
            ConnectError::NoPassword.metric_kind(),
            ConnectErrorKind::Auth
        );
        let bad_password = ConnectError::Server(ErrorMessage::error(
            sqlstate::INVALID_PASSWORD,
            "password authentication failed",
        ));
        assert_eq!(bad_password.metric_kind(), ConnectErrorKind::Auth);
        let no_db = ConnectError::Server(ErrorMessage::error("3D000", "no such database"));
        assert_eq!(no_db.metric_kind(), ConnectErrorKind::Other);
        let protocol = ConnectError::from(LoginProtocol::NoScram);
        assert_eq!(protocol.to_client().code, sqlstate::PROTOCOL_VIOLATION);
        assert_eq!(protocol.metric_kind(), ConnectErrorKind::Other);
    }
}
