//! Giving a server connection back after its client left in the middle
//! of something: cancel, end COPY, roll back, forget statements.

use bytes::BytesMut;
use pgwake_config::PoolMode;
use postgres_protocol::message::frontend;
use tokio::io::AsyncWriteExt;

use super::{Session, CLEANUP_TIMEOUT, INTERNAL_TIMEOUT};
use crate::client_io::ClientStream;
use crate::clients::Kill;
use crate::pool::Pooled;
use crate::server::send_cancel;

impl<C: ClientStream> Session<C> {
    /// The admin console killed the client (`KILL_CLIENT`, `KILL db`): its
    /// server connection is closed too, as PgBouncer does, after a cancel
    /// for a statement still running (the backend would not read the
    /// Terminate before it ends).
    pub(super) async fn close_after_kill(&mut self, p: Pooled, by: Kill) {
        if !p.conn.broken && p.conn.tx.owed > 0 {
            let (addr, pid, key) = p.conn.cancel_key();
            let _ = send_cancel(addr, pid, key).await;
        }
        tracing::info!(peer = %self.peer(), pool = %self.pool.key(), "{}: closing the client's server connection", by.command());
        self.pool.discard(p);
    }

    /// The client left while holding a server connection: make it clean
    /// (cancel a running query, end COPY, roll back) and return it, or close it.
    pub(super) async fn give_back_after_client_left(&mut self, mut p: Pooled) {
        if p.conn.broken || !self.cscan.at_boundary() {
            // A message was cut off mid-way; the server cannot be brought back in step.
            return;
        }
        let pool = self.pool.clone();
        let mode = self.mode;
        let peer = self.peer().to_owned();

        let cleanup = async move {
            if !p.conn.tx.is_idle() {
                let mut out = BytesMut::new();
                if p.conn.tx.owed > 0 {
                    let (addr, pid, key) = p.conn.cancel_key();
                    let _ = send_cancel(addr, pid, key).await;
                    // Ends a COPY FROM STDIN; ignored by the server otherwise.
                    frontend::copy_fail("client disconnected", &mut out).ok()?;
                }
                if p.conn.tx.open_extended {
                    frontend::sync(&mut out);
                    p.conn.tx.sent(b'S');
                }
                frontend::query("ROLLBACK", &mut out).ok()?;
                p.conn.tx.sent(b'Q');
                p.conn.stream.write_all(&out).await.ok()?;
                p.conn.drain().await.ok()?;
            }
            if !p.conn.prepared.is_settled() {
                // Replies the departed client's plan still expected: what the
                // connection has prepared can no longer be vouched for.
                p.conn.prepared.abandon();
                p.conn
                    .run_internal("DEALLOCATE ALL", INTERNAL_TIMEOUT)
                    .await
                    .ok()?;
                p.conn.prepared.forget_all();
            }
            if mode == PoolMode::Session {
                p.conn
                    .run_internal("DISCARD ALL", INTERNAL_TIMEOUT)
                    .await
                    .ok()?;
                p.conn.params = self.defaults.params.clone();
            }
            Some(p)
        };
        match tokio::time::timeout(CLEANUP_TIMEOUT, cleanup).await {
            Ok(Some(p)) => pool.checkin(p),
            _ => {
                tracing::warn!(%peer, "closed a server connection that could not be cleaned after its client left")
            }
        }
    }
}
