//! One connection to the Postgres server, and the typed state pgwake derives
//! from the messages that pass: transaction status and the replies still
//! owed. Making the connection is in `connect.rs`, why it can fail in
//! `error.rs`, and pgwake's own queries on it in `internal.rs`.

use std::io;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use pgwake_protocol::backend::parse;
use pgwake_protocol::Scanner;
use postgres_protocol::message::frontend;
use tokio::io::AsyncWriteExt;

use crate::params::Params;
use crate::tls::ServerStream;

mod connect;
mod error;
mod internal;

pub(crate) use connect::{resolve, ConnectTrace, WakeTrace};
pub use connect::{send_cancel, send_cancel_within, ConnectPhase, ConnectPhases, Target};
pub use error::{ConnectError, LoginProtocol};

/// Largest frame accepted from the server. Postgres itself never sends more
/// than 1 GiB in one message.
pub const SERVER_MAX_FRAME: usize = 1 << 30;

pub use pgwake_protocol::TxStatus;

/// Transaction status from the last ReadyForQuery, and the replies still owed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TxState {
    pub status: TxStatus,
    /// ReadyForQuery messages still to come: one per Query, Sync or FunctionCall sent.
    pub owed: u32,
    /// Extended-protocol messages were sent since the last Sync.
    pub open_extended: bool,
}

impl TxState {
    const IDLE: TxState = TxState {
        status: TxStatus::Idle,
        owed: 0,
        open_extended: false,
    };

    /// Nothing in flight and no transaction open: the connection can serve anyone.
    pub fn is_idle(&self) -> bool {
        self.owed == 0 && !self.open_extended && self.status == TxStatus::Idle
    }

    /// A transaction block is open, or extended-protocol messages await
    /// their Sync: the client owes the server its next message.
    pub fn in_transaction(&self) -> bool {
        self.status != TxStatus::Idle || self.open_extended
    }

    /// Records a message sent to the server.
    #[inline]
    pub fn sent(&mut self, tag: u8) {
        match tag {
            b'Q' | b'F' => self.owed += 1,
            b'S' => {
                self.owed += 1;
                self.open_extended = false;
            }
            b'P' | b'B' | b'D' | b'E' | b'C' | b'H' => self.open_extended = true,
            _ => {}
        }
    }

    /// Records a ReadyForQuery received, with its status byte.
    #[inline]
    pub fn ready(&mut self, status: u8) {
        self.owed = self.owed.saturating_sub(1);
        self.status = TxStatus::from_byte(status);
    }

    /// Records the status of a ReadyForQuery that answered pgwake's own
    /// Sync (not counted in `owed`): the status is the connection's all the same.
    #[inline]
    pub fn saw_status(&mut self, status: u8) {
        self.status = TxStatus::from_byte(status);
    }
}

/// Bytes of one server connection pgwake holds (SHOW MEM), its buffers aside.
pub(crate) const CONNECTION_SIZE: usize = std::mem::size_of::<ServerConn>();

/// A logged-in server connection.
#[derive(Debug)]
pub struct ServerConn {
    pub(crate) stream: ServerStream,
    /// Bytes read from the server, not yet forwarded.
    pub(crate) buf: BytesMut,
    pub(crate) scan: Scanner,
    pub(crate) tx: TxState,
    /// Settings in force, lower-case names: what the server reported plus what pgwake set.
    pub(crate) params: Params,
    /// [`crate::params::fingerprint`] of the client settings this connection
    /// was last brought in line with; 0: the server's defaults.
    pub(crate) settings_fp: u64,
    /// ParameterStatus as sent at login, names as the server spells them.
    pub(crate) reported: Vec<(String, String)>,
    pub(crate) pid: u32,
    pub(crate) secret_key: u32,
    pub(crate) peer: SocketAddr,
    pub(crate) created: Instant,
    pub(crate) last_used: Instant,
    /// [`pgwake_credentials::CredentialSource::generation`] of the secret this
    /// connection logged in with.
    pub(crate) credential_generation: u64,
    /// The connection broke or is in a state pgwake cannot vouch for.
    pub(crate) broken: bool,
    /// Prepared statements and the reply plan (transaction mode). Boxed: a
    /// connection moves by value through checkouts and client tasks.
    pub(crate) prepared: Box<crate::prepared::OnServer>,
    /// How this connection was opened for a client, until the first traced
    /// statement on it takes it (`[tracing]`).
    pub(crate) born: Option<Box<ConnectTrace>>,
}

/// The frames whose bodies the relay reads from the server side:
/// ReadyForQuery, ParameterStatus, ErrorResponse (to catch a FATAL), and
/// CommandComplete (DISCARD ALL and DEALLOCATE ALL clear prepared
/// statements) and RowDescription (whole, so that pgwake's own replies due
/// after it never land inside it).
#[inline]
pub fn inspected_server_frame(tag: u8) -> bool {
    matches!(tag, b'Z' | b'S' | b'E' | b'C' | b'T')
}

impl ServerConn {
    /// Nothing in flight either way and no transaction open: the client
    /// that holds this connection may give it back.
    pub fn is_at_rest(&self) -> bool {
        self.tx.is_idle()
            && self.prepared.is_settled()
            && self.buf.is_empty()
            && self.scan.at_boundary()
    }

    /// At rest and not marked for closing: another client may use it.
    pub fn is_reusable(&self) -> bool {
        self.is_at_rest() && !self.broken
    }
}

impl ServerConn {
    /// The TCP options in force on the socket, read back from the kernel:
    /// (keepalive idle, keepalive interval, keepalive probes, user timeout).
    pub fn tcp_options(&self) -> io::Result<(Duration, Duration, u32, Option<Duration>)> {
        let sock = socket2::SockRef::from(self.stream.tcp());
        Ok((
            sock.tcp_keepalive_time()?,
            sock.tcp_keepalive_interval()?,
            sock.tcp_keepalive_retries()?,
            sock.tcp_user_timeout()?,
        ))
    }

    /// Whether the connection is encrypted.
    pub fn is_tls(&self) -> bool {
        self.stream.is_tls()
    }

    /// Process id and secret key of the backend, for cancel requests.
    pub fn cancel_key(&self) -> (SocketAddr, u32, u32) {
        (self.peer, self.pid, self.secret_key)
    }

    /// Applies what a server frame says about the connection's state.
    #[inline]
    pub(crate) fn observe(&mut self, tag: u8, body: &[u8]) {
        match tag {
            b'Z' => self.tx.ready(body.first().copied().unwrap_or(b'E')),
            b'S' => {
                if let Ok((k, v)) = parse::parameter_status(body) {
                    self.params.insert(k.to_ascii_lowercase(), v.to_owned());
                }
            }
            _ => {}
        }
    }

    /// Whether a connection that sat in the pool is still usable: no EOF,
    /// no error and no stray bytes waiting. Never blocks.
    pub fn is_alive(&mut self) -> bool {
        if self.broken || !self.buf.is_empty() {
            return false;
        }
        let mut probe = [0u8; 1];
        match self.stream.tcp().try_read(&mut probe) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => true,
            // EOF, an error, or unsolicited bytes (often a FATAL before close).
            _ => false,
        }
    }

    /// For a connection at rest in the pool: whether the server closed it
    /// (EOF, an error, or bytes it should not have sent, often a FATAL
    /// before the close), else `cx` is woken when its socket next becomes
    /// readable. Whoever reads the connection next (a client's session)
    /// takes the wake-up over; nothing is registered per transaction.
    pub(crate) fn poll_closed(&mut self, cx: &mut std::task::Context<'_>) -> bool {
        // A readiness left from the connection's last use is cleared by the
        // probe in `is_alive`; the second poll then registers `cx`.
        for _ in 0..2 {
            match self.stream.tcp().poll_read_ready(cx) {
                std::task::Poll::Pending => return false,
                std::task::Poll::Ready(Err(_)) => return true,
                std::task::Poll::Ready(Ok(())) if !self.is_alive() => return true,
                std::task::Poll::Ready(Ok(())) => {}
            }
        }
        false
    }

    /// Reads more bytes from the server into `buf`. Cancel-safe.
    pub(crate) async fn read_more(&mut self) -> io::Result<usize> {
        std::future::poll_fn(|cx| self.poll_read_more(cx)).await
    }

    /// [`Self::read_more`] as a poll: ready with the bytes read (never 0:
    /// the server's close is `UnexpectedEof`).
    pub(crate) fn poll_read_more(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<usize>> {
        if self.buf.capacity() - self.buf.len() < 1024 {
            self.buf.reserve(16 * 1024);
        }
        tokio_util::io::poll_read_buf(std::pin::Pin::new(&mut self.stream), cx, &mut self.buf).map(
            |r| match r {
                Ok(0) => Err(io::ErrorKind::UnexpectedEof.into()),
                r => r,
            },
        )
    }

    /// Ends the session politely (Terminate), ignoring errors: the connection is going away.
    pub async fn terminate(mut self) {
        let mut out = BytesMut::new();
        frontend::terminate(&mut out);
        let _ = tokio::time::timeout(Duration::from_secs(1), self.stream.write_all(&out)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tx_state_counts_replies() {
        let mut t = TxState::IDLE;
        for tag in [b'P', b'B', b'E', b'S'] {
            t.sent(tag);
        }
        assert!(!t.is_idle());
        t.ready(b'I');
        assert!(t.is_idle());
        t.sent(b'Q');
        t.ready(b'T');
        assert!(!t.is_idle(), "in a transaction");
        t.sent(b'P');
        t.sent(b'H');
        assert!(!t.is_idle(), "extended messages without Sync");
    }
}
