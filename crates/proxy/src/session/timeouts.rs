//! The timeouts of a client's session: `query_timeout` (a cancel, then
//! the connection if the server does not answer it),
//! `idle_transaction_timeout` and `client_idle_timeout`.

use std::time::{Duration, Instant};

use pgwake_config::PoolMode;
use pgwake_protocol::backend::ErrorMessage;
use pgwake_protocol::sqlstate;

use super::{Session, Stop};
use crate::client_io::ClientStream;
use crate::server::{send_cancel, ServerConn};
use crate::stats::TimeoutKind;

/// How long the server has to answer a cancel sent for `query_timeout`
/// before its connection is given up.
const CANCEL_GRACE: Duration = Duration::from_secs(5);

/// A cancel request pgwake sent because a query ran past `query_timeout`.
#[derive(Debug, Clone, Copy)]
pub(super) struct CancelSent {
    pub(super) at: Instant,
    /// The server answered it: the query failed with 57014.
    pub(super) answered: bool,
}

impl<C: ClientStream> Session<C> {
    /// When the next timeout fires, if any applies now.
    pub(super) fn timeout_deadline(&self, server: &ServerConn) -> Option<(Instant, TimeoutKind)> {
        if let Some(c) = self.cancel_sent.as_deref() {
            return Some((c.at + CANCEL_GRACE, TimeoutKind::Query));
        }
        let t = &self.shared.timeouts;
        if server.tx.owed > 0 {
            return Some((self.query_start? + t.query()?, TimeoutKind::Query));
        }
        if !self.cbuf.is_empty() || !self.cscan.at_boundary() {
            return None;
        }
        if server.tx.in_transaction() {
            return Some((
                self.idle_since + t.idle_transaction()?,
                TimeoutKind::IdleTransaction,
            ));
        }
        // Idle between transactions while still holding the connection
        // (session mode): the client is idle here, not in `await_first_frame`.
        if self.mode == PoolMode::Session {
            return Some((self.idle_since + t.client_idle()?, TimeoutKind::ClientIdle));
        }
        None
    }

    /// A timeout fired while the client held a server connection.
    pub(super) async fn on_timeout(
        &mut self,
        server: &mut ServerConn,
        kind: TimeoutKind,
    ) -> Result<(), Stop> {
        self.traced.event("timeout", kind.name());
        let limit = |d: Option<Duration>| d.unwrap_or_default();
        if self.cancel_sent.is_some() {
            // The server did not answer the cancel: give the connection up.
            server.broken = true;
            tracing::warn!(peer = %self.peer(), pool = %self.pool.key(), "the server did not answer a cancel request within {CANCEL_GRACE:?}; closed its connection");
            return Err(Stop::Fatal(ErrorMessage::fatal(
                sqlstate::QUERY_CANCELED,
                format!("canceling statement due to pgwake timeouts.query_timeout ({:?}); the server did not answer the cancel, so the connection was closed", limit(self.shared.timeouts.query())),
            )));
        }
        match kind {
            TimeoutKind::Query => {
                self.shared.metrics.timeout(kind);
                let (addr, pid, key) = server.cancel_key();
                tracing::info!(peer = %self.peer(), pool = %self.pool.key(), backend_pid = pid, "query ran past timeouts.query_timeout; cancelling it");
                self.cancel_sent = Some(Box::new(CancelSent {
                    at: Instant::now(),
                    answered: false,
                }));
                self.shared
                    .metrics
                    .cancels
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if let Err(e) = send_cancel(addr, pid, key).await {
                    tracing::warn!(peer = %self.peer(), error = %e, "could not send the cancel request");
                }
                Ok(())
            }
            TimeoutKind::IdleTransaction => {
                self.shared.metrics.timeout(kind);
                let limit = limit(self.shared.timeouts.idle_transaction());
                tracing::info!(peer = %self.peer(), pool = %self.pool.key(), "client idle in transaction for {limit:?} (timeouts.idle_transaction_timeout); rolling back and disconnecting it");
                // `run` rolls the transaction back and returns the connection.
                Err(Stop::Fatal(ErrorMessage::fatal(
                    sqlstate::IDLE_IN_TRANSACTION_TIMEOUT,
                    format!("terminating connection due to idle-in-transaction timeout (pgwake timeouts.idle_transaction_timeout = {limit:?}); the transaction was rolled back"),
                )))
            }
            // Counted by `client_idle_timeout`, which the idle path shares.
            _ => Err(Stop::Fatal(
                self.client_idle_timeout(self.shared.timeouts.client_idle()),
            )),
        }
    }

    /// The error a client idle past `timeouts.client_idle_timeout` gets.
    pub(super) fn client_idle_timeout(&self, limit: Option<Duration>) -> ErrorMessage {
        self.shared.metrics.timeout(TimeoutKind::ClientIdle);
        let limit = limit.unwrap_or_default();
        tracing::info!(peer = %self.peer(), "closing a client idle for {limit:?} (timeouts.client_idle_timeout)");
        ErrorMessage::fatal(
            sqlstate::IDLE_SESSION_TIMEOUT,
            format!("terminating connection due to idle-session timeout (pgwake timeouts.client_idle_timeout = {limit:?})"),
        )
    }
}
