//! The relay: moving bytes between a client and the server connection it
//! holds, noting on the way what makes the connection's state (replies
//! owed, transaction status, settings, named statements), and cleaning up
//! when either side goes away.

use std::future::Future;
use std::pin::Pin;
use std::task::Poll;
use std::time::Instant;

use bytes::{Buf, BytesMut};
use pgwake_config::PoolMode;
use pgwake_protocol::backend::{self, ErrorMessage};
use pgwake_protocol::{sqlstate, Scanned};
use tokio_util::io::poll_read_buf;

use super::accounting::keep_text;
use super::buffers::spare_buffers;
use super::{too_large, ClientStream, Session, Stop};
use crate::params;
use crate::pool::Pooled;
use crate::prepared::Verdict;
use crate::server::{inspected_server_frame, ServerConn};
use crate::stats::PoolCounts;

/// Largest first request kept for a replay on a fresh connection.
const MAX_REPLAY: usize = 64 * 1024;

/// What ended the relay's wait.
enum Woke {
    /// The server sent more (or its connection failed).
    Server(std::io::Result<usize>),
    /// The client sent more; 0 or an error: it left.
    Client(std::io::Result<usize>),
    /// A timeout ran out.
    Timeout(crate::stats::TimeoutKind),
    /// The admin console ended the client.
    Killed(crate::clients::Kill),
}

impl<C: ClientStream> Session<C> {
    /// Moves bytes both ways until the transaction ends (transaction mode)
    /// or either side leaves.
    pub(super) async fn relay(&mut self, p: &mut Pooled) -> Stop {
        let server = &mut *p.conn;
        if let Err(stop) = self.forward_client(server).await {
            return stop;
        }
        loop {
            if let Err(stop) = self.reserve_client_buffer().await {
                return stop;
            }
            let deadline = self.timeout_deadline(server);
            // One timer per session, moved only when the deadline changes
            // (allocated once, for clients a timeout applies to).
            if let Some((at, _)) = deadline {
                let at = tokio::time::Instant::from_std(at);
                match &mut self.timer {
                    Some(t) if t.deadline() == at => {}
                    Some(t) => t.as_mut().reset(at),
                    None => self.timer = Some(Box::pin(tokio::time::sleep_until(at))),
                }
            }
            let timer = &mut self.timer;
            if self.mode == PoolMode::Transaction
                && self.cscan.at_boundary()
                && !self.held
                && server.is_at_rest()
            {
                return Stop::Released;
            }
            // The side expected to speak is polled first: the server while
            // it owes replies, the client once it owes none (mid-transaction,
            // the client's next statement). A branch found ready spares
            // polling (and re-registering) the others; polled by hand, the
            // wait builds no future per turn. Tokio's per-task budget makes
            // a busy side pending now and then, so the other is still polled.
            let client_first = server.tx.owed == 0 && server.prepared.is_settled();
            let woke = std::future::poll_fn(|cx| {
                for client in [client_first, !client_first] {
                    let polled = if client {
                        poll_read_buf(Pin::new(&mut self.client), cx, &mut self.cbuf)
                            .map(Woke::Client)
                    } else {
                        server.poll_read_more(cx).map(Woke::Server)
                    };
                    if polled.is_ready() {
                        return polled;
                    }
                }
                if let (Some(t), Some((_, kind))) = (timer.as_mut(), deadline) {
                    if t.as_mut().poll(cx).is_ready() {
                        return Poll::Ready(Woke::Timeout(kind));
                    }
                }
                Pin::new(&mut self.registered.info.killed())
                    .poll(cx)
                    .map(Woke::Killed)
            })
            .await;
            match woke {
                Woke::Server(Err(e)) => {
                    server.broken = true;
                    if self.replay > 0 {
                        tracing::info!(peer = %self.peer(), error = %e, "server connection dead on first use");
                        return Stop::Retry;
                    }
                    tracing::warn!(peer = %self.peer(), pool = %self.pool.key(), error = %e, "server connection lost while serving a client");
                    return Box::pin(self.server_lost(server, &e.to_string())).await;
                }
                Woke::Server(Ok(_)) => {
                    if let Err(stop) = self.forward_server(server).await {
                        return stop;
                    }
                    // Frames held back until the server answered more.
                    if self.held {
                        // Boxed: rare, and it would enlarge every session's task.
                        if let Err(stop) = Box::pin(self.forward_client(server)).await {
                            return stop;
                        }
                    }
                }
                Woke::Client(Ok(0) | Err(_)) => return Stop::ClientGone,
                Woke::Client(Ok(_)) => {
                    if let Err(stop) = self.forward_client(server).await {
                        return stop;
                    }
                }
                Woke::Timeout(kind) => {
                    if let Err(stop) = Box::pin(self.on_timeout(server, kind)).await {
                        return stop;
                    }
                }
                Woke::Killed(by) => return Stop::Killed(by),
            }
        }
    }

    /// Makes room for the next read: at least a few KiB, and a whole frame
    /// of those read in full (Parse, Close, a query that may be `PREPARE`),
    /// a large one with room from the shared budget.
    async fn reserve_client_buffer(&mut self) -> Result<(), Stop> {
        let mut want = 8 * 1024;
        if self.cscan.at_boundary() {
            if let Ok(Some(len)) = self.cscan.frame_len(&self.cbuf) {
                if read_whole_at(self.mode == PoolMode::Transaction, &self.cbuf) {
                    want = want.max(len);
                }
            }
        }
        if want > crate::budget::FREE {
            // Boxed: rare, and it would enlarge every session's task.
            return Box::pin(self.room_for(want)).await;
        }
        if self.cbuf.capacity() - self.cbuf.len() < want.min(1024) || self.cbuf.capacity() < want {
            self.cbuf.reserve(want);
        }
        Ok(())
    }

    /// The server connection broke under the client. Outside a transaction
    /// the client only loses the statement in flight: it gets an error and
    /// ReadyForQuery for each reply owed, and its next statement runs on a
    /// fresh connection. Inside a transaction the session state is gone, so
    /// the client is closed, as a direct connection would be.
    ///
    /// The connection is marked broken: whoever holds it closes it.
    async fn server_lost(&mut self, server: &mut ServerConn, e: &str) -> Stop {
        server.broken = true;
        let tx = server.tx;
        self.detached();
        let lost = ErrorMessage::error(
            sqlstate::CONNECTION_FAILURE,
            format!("pgwake lost its server connection while running this statement: {e}"),
        );
        if tx.in_transaction() || !self.cscan.at_boundary() || self.mode == PoolMode::Session {
            return Stop::Fatal(
                ErrorMessage { severity: backend::Severity::Fatal, ..lost }
                    .with_hint("the open transaction is lost (if COMMIT was in flight, it may or may not have completed); reconnect and retry"),
            );
        }
        if tx.owed == 0 {
            // Nothing in flight: the client only loses its named statements,
            // and an unsolicited error would make many drivers hang up.
            return Stop::Released;
        }
        let mut out = BytesMut::new();
        lost.with_hint(
            "the statement may or may not have completed; it is safe to retry on this connection",
        )
        .write(&mut out);
        for _ in 0..tx.owed {
            backend::ready_for_query(&mut out, b'I');
        }
        self.idle_since = Instant::now();
        match self.client.send(&out).await {
            Ok(()) => Stop::Released,
            Err(_) => Stop::ClientGone,
        }
    }

    /// Forwards every buffered client byte that belongs to a frame whose
    /// header arrived; a partial header waits for more.
    async fn forward_client(&mut self, server: &mut ServerConn) -> Result<(), Stop> {
        // More client bytes before the server answered: the first request is
        // no longer alone in flight, so it can no longer be replayed.
        if self.replay > 0 {
            self.cbuf.advance(std::mem::take(&mut self.replay));
        }
        self.held = false;
        let track = self.mode == PoolMode::Transaction;
        // A first request on a fresh attachment, with no session state on the
        // connection, may go to another connection if this one proves dead.
        let mut replayable = std::mem::take(&mut self.fresh) && server.tx.is_idle();
        let mut capture = self.query_text.is_empty() && self.shared.timeouts.slow_query().is_some();
        // Rewritten output: empty unless a frame was changed, added or held
        // back; then it holds everything from the buffer's start to `pos`.
        // (Both from the spare buffers when needed: no allocation per
        // rewritten request.)
        let mut out = BytesMut::new();
        let mut to_server = BytesMut::new();
        let mut to_client = BytesMut::new();
        let mut copied = 0;
        let mut pos = 0;
        let mut terminate = false;
        loop {
            // Decided by the frame's tag, and for a Query its first keyword.
            let whole = read_whole_at(track, &self.cbuf[pos..]);
            let step = self.cscan.next(&self.cbuf, pos, |_| whole);
            let Some((item, next)) = step.map_err(|e| Stop::Fatal(too_large(&e)))? else {
                break;
            };
            let (tag, body) = match item {
                Scanned::Start { tag: b'X' } => {
                    terminate = true;
                    break;
                }
                Scanned::Start { tag } => {
                    if capture && tag == b'Q' {
                        capture = false;
                        keep_text(&mut self.query_text, &self.cbuf[pos + 5..next]);
                    }
                    (tag, &self.cbuf[pos + 5..next])
                }
                Scanned::Frame { tag, body } => {
                    if capture && tag == b'Q' {
                        capture = false;
                        keep_text(&mut self.query_text, body);
                    }
                    if capture && tag == b'P' {
                        capture = false;
                        let name_end = memchr::memchr(0, body).unwrap_or(body.len());
                        keep_text(
                            &mut self.query_text,
                            body.get(name_end + 1..).unwrap_or(&[]),
                        );
                    }
                    (tag, body)
                }
                Scanned::Body => {
                    pos = next;
                    continue;
                }
            };
            // A whole statement whose text carries the app's trace context.
            let traced = match &self.shared.traces {
                Some(t) if self.cscan.at_boundary() => crate::traces::Traces::parent_of(tag, body)
                    .map(|parent| {
                        let text = t.statement_text().then(|| {
                            super::accounting::masked(crate::traces::Traces::text_of(tag, body))
                        });
                        (parent, text, server.tx.owed)
                    }),
                _ => None,
            };
            if !track {
                if let Some((parent, text, owed)) = traced {
                    let db = &self.pool.key().dbname;
                    self.traced.begin(parent, db, server.peer, owed, text);
                }
                server.tx.sent(tag);
                pos = next;
                continue;
            }
            to_server.clear();
            if crate::prepared::client_frame_names_statement(tag, body) {
                // The messages that name statements: rewritten, mostly.
                spare_room(&mut to_server);
            }
            let step = server
                .prepared
                .client_message(
                    &mut self.prepared,
                    server.tx.status,
                    tag,
                    body,
                    &mut to_server,
                    &mut to_client,
                )
                .map_err(|e| {
                    Stop::Fatal(ErrorMessage::fatal(
                        sqlstate::PROGRAM_LIMIT_EXCEEDED,
                        format!("invalid message from client: {e}"),
                    ))
                })?;
            if step == crate::prepared::Step::Wait {
                if !to_server.is_empty() {
                    // A Sync so that what is in flight gets answered.
                    spare_room(&mut out);
                    out.extend_from_slice(&self.cbuf[copied..pos]);
                    out.extend_from_slice(&to_server);
                    copied = pos;
                }
                // Offered again once the server has answered more.
                tracing::debug!(peer = %self.peer(), tag = %(tag as char), plan = server.prepared.owed(), owed = server.tx.owed, "holding a client message until the server answers");
                self.held = true;
                break;
            }
            // A query pgwake answers itself gets no server reply to time (a
            // Parse answered from the cache still has its Sync's).
            let to_server_too = tag == b'P'
                || matches!(
                    step,
                    crate::prepared::Step::Pass | crate::prepared::Step::Tail(_)
                );
            if let Some((parent, text, owed)) = traced.filter(|_| to_server_too) {
                let db = &self.pool.key().dbname;
                self.traced.begin(parent, db, server.peer, owed, text);
            }
            if step == crate::prepared::Step::Pass && to_server.is_empty() && copied == 0 {
                server.tx.sent(tag);
                pos = next;
                continue;
            }
            // Bytes change from here on: copy what passed unchanged so far.
            spare_room(&mut out);
            out.extend_from_slice(&self.cbuf[copied..pos]);
            if !to_server.is_empty() {
                out.extend_from_slice(&to_server);
            }
            match step {
                crate::prepared::Step::Pass => {
                    out.extend_from_slice(&self.cbuf[pos..next]);
                    server.tx.sent(tag);
                }
                crate::prepared::Step::Tail(k) => {
                    out.extend_from_slice(&body[k..]);
                    server.tx.sent(tag);
                }
                // A query pgwake answered itself: sent again on another
                // connection, it would be answered twice.
                _ if tag == b'Q' => replayable = false,
                _ => {}
            }
            copied = next;
            pos = next;
        }
        let unchanged = copied == 0 && out.is_empty();
        if !unchanged {
            out.extend_from_slice(&self.cbuf[copied..pos]);
        }
        let sending: &[u8] = if unchanged { &self.cbuf[..pos] } else { &out };
        if !sending.is_empty() {
            let written = server.stream.send(sending).await;
            self.traced.sent();
            PoolCounts::add(&self.pool.stats().received, pos as u64);
            if self.query_start.is_none() {
                let now = Instant::now();
                self.query_start = Some(now);
                self.xact_start.get_or_insert(now);
            }
            let keep = replayable
                && !self.held
                && !terminate
                && self.cscan.at_boundary()
                && pos <= MAX_REPLAY;
            if keep {
                self.replay = pos;
            } else {
                self.cbuf.advance(pos);
            }
            if let Err(e) = written {
                server.broken = true;
                if keep {
                    return Err(Stop::Retry);
                }
                // Answered by server_lost like any other request in flight.
                return Err(Box::pin(self.server_lost(server, &e.to_string())).await);
            }
        } else {
            self.cbuf.advance(pos);
        }
        spare_buffers::give_back(out);
        spare_buffers::give_back(to_server);
        self.settle_buffer();
        if !to_client.is_empty() && self.client.send(&to_client).await.is_err() {
            return Err(Stop::ClientGone);
        }
        if terminate {
            return Err(Stop::ClientGone);
        }
        Ok(())
    }

    /// Replaces a connection that died before answering the first request
    /// sent on it, and sends that request again on a fresh one: the client
    /// never sees the dead connection. `Ok(false)`: no connection could be
    /// had; the client got an error for the request instead.
    pub(super) async fn retry_on_fresh_connection(
        &mut self,
        mut dead: Pooled,
    ) -> Result<Option<Pooled>, Stop> {
        // What the request did to the session's statements is taken back:
        // it is sent again, as new, on the next connection.
        dead.conn.prepared.undo_unanswered(&mut self.prepared);
        drop(dead);
        self.cancel.set(None);
        // The request is still at the front of the buffer.
        self.replay = 0;
        tracing::info!(peer = %self.peer(), pool = %self.pool.key(), "retrying the request on a fresh server connection");
        self.traced.event(
            "retry",
            "the pooled server connection was dead on first use",
        );
        let mut p = match self.pool.checkout_fresh().await {
            Ok(p) => p,
            Err(e) => {
                // The request is still buffered; answer it with the error.
                self.detached();
                Box::pin(self.skip_request(e.to_client())).await?;
                return Ok(None);
            }
        };
        if p.conn.settings_fp != self.want_fp {
            if let Err(stop) = Box::pin(self.sync_settings(&mut p)).await {
                self.detached();
                return Err(stop);
            }
        }
        self.attached(p.conn.cancel_key());
        self.traced.reconnected(p.conn.born.take());
        // Sent as any request is (by the relay, first thing); no second
        // replay if this one dies too.
        self.fresh = false;
        Ok(Some(p))
    }

    /// Forwards every buffered server byte to the client, noting
    /// ReadyForQuery and ParameterStatus on the way.
    async fn forward_server(&mut self, server: &mut ServerConn) -> Result<(), Stop> {
        let track = self.mode == PoolMode::Transaction;
        let mut pos = 0;
        // Once a frame is dropped, replaced or followed by pgwake's own
        // replies, what the client gets is assembled in `out`; `flushed` is
        // where the server bytes not yet copied there begin.
        let mut out = BytesMut::new();
        let mut edited = false;
        let mut flushed = 0;
        let mut fatal = None;
        let mut readies = 0u64;
        let mut xact_ends = 0u64;
        let mut extra = BytesMut::new();
        loop {
            let frame_at = pos;
            let step = server.scan.next(&server.buf, pos, inspected_server_frame);
            let Some((item, next)) = step.map_err(|e| {
                Stop::Fatal(ErrorMessage::fatal(
                    sqlstate::PROTOCOL_VIOLATION,
                    format!("from server: {e}"),
                ))
            })?
            else {
                break;
            };
            if let Scanned::Frame { tag: b'E', body } = item {
                let fields = backend::parse::error_fields(body);
                if !self.traced.is_empty() {
                    self.traced.error(fields.sqlstate());
                }
                if fields.is_fatal() {
                    // The server is closing this connection (shutdown, terminated
                    // backend): not the client's session to end. Keep it from the
                    // client and handle it as a lost connection.
                    fatal = Some(ErrorMessage::from_fields(fields).message);
                    break;
                }
            }
            // The plan of replies: which go to the client, and pgwake's own.
            let dropped = track
                && server.prepared.server_item(
                    &mut self.prepared,
                    &item,
                    server.scan.at_boundary(),
                    &mut extra,
                ) == Verdict::Drop;
            if dropped {
                out.extend_from_slice(&server.buf[flushed..frame_at]);
                flushed = next;
                edited = true;
            }
            match item {
                // The answer to pgwake's own Sync: not the client's, and not
                // counted as owed, but the status is the connection's.
                Scanned::Frame { tag: b'Z', body } if dropped => {
                    server.tx.saw_status(body.first().copied().unwrap_or(b'E'));
                }
                _ if dropped => {}
                Scanned::Frame { tag: b'Z', body } => {
                    server.tx.ready(body.first().copied().unwrap_or(b'E'));
                    // Counted and timed once the reply is on its way.
                    readies += 1;
                    xact_ends += u64::from(server.tx.status == crate::server::TxStatus::Idle);
                    if self.cancel_sent.take().is_some_and(|c| !c.answered) {
                        // Answered before the cancel was seen: it may still
                        // land later, on whatever runs next on this connection.
                        server.broken = true;
                    }
                }
                Scanned::Frame { tag: b'E', body }
                    if self.cancel_sent.is_some()
                        && backend::parse::error_fields(body).sqlstate()
                            == Some(sqlstate::QUERY_CANCELED.as_bytes()) =>
                {
                    // The cancel sent for query_timeout: say why.
                    if let Some(c) = &mut self.cancel_sent {
                        c.answered = true;
                    }
                    let limit = self.shared.timeouts.query().unwrap_or_default();
                    out.extend_from_slice(&server.buf[flushed..frame_at]);
                    ErrorMessage::error(
                        sqlstate::QUERY_CANCELED,
                        format!(
                            "canceling statement due to pgwake timeouts.query_timeout ({limit:?})"
                        ),
                    )
                    .write(&mut out);
                    flushed = next;
                    edited = true;
                }
                Scanned::Frame { tag: b'S', body } => {
                    // ParameterStatus: a SET by the client; it now expects this value.
                    let body = body.to_vec();
                    server.observe(b'S', &body);
                    if let Ok((k, v)) = backend::parse::parameter_status(&body) {
                        let k = k.to_ascii_lowercase();
                        if !params::follows_client(&k) {
                            // Not replayable: the connection keeps it; it is the client's
                            // own doing, as with any session state in transaction mode.
                        } else if self.defaults.params.get(&k).map(String::as_str) == Some(v) {
                            if self.want.contains_key(&k) {
                                std::sync::Arc::make_mut(&mut self.want).remove(&k);
                            }
                        } else if self.want.get(&k).map(String::as_str) != Some(v) {
                            std::sync::Arc::make_mut(&mut self.want).insert(k, v.to_owned());
                        }
                        self.want_fp = params::fingerprint(&self.want);
                        server.settings_fp = self.want_fp;
                    }
                }
                _ => {}
            }
            if !extra.is_empty() {
                // pgwake's own replies go right after this frame.
                out.extend_from_slice(&server.buf[flushed.min(next)..next]);
                out.extend_from_slice(&extra);
                extra.clear();
                flushed = next;
                edited = true;
            }
            pos = next;
        }
        // A traced statement's reply is complete before the client has it.
        let answered = (readies > 0 && !self.traced.is_empty()).then(Instant::now);
        if pos > 0 || edited {
            if self.replay > 0 {
                // The server answered: the request went through.
                self.cbuf.advance(std::mem::take(&mut self.replay));
            }
            let sending: &[u8] = if edited {
                out.extend_from_slice(&server.buf[flushed.min(pos)..pos]);
                &out
            } else {
                &server.buf[..pos]
            };
            if !sending.is_empty() && self.client.send(sending).await.is_err() {
                return Err(Stop::ClientGone);
            }
            PoolCounts::add(&self.pool.stats().sent, sending.len() as u64);
            server.buf.advance(pos);
        }
        if let Some(message) = fatal {
            server.broken = true;
            if self.replay > 0 {
                tracing::info!(peer = %self.peer(), %message, "server connection closed before answering the first request");
                return Err(Stop::Retry);
            }
            tracing::warn!(peer = %self.peer(), pool = %self.pool.key(), %message, "server closed a connection while serving a client");
            return Err(Box::pin(self.server_lost(server, &format!("server: {message}"))).await);
        }
        if readies > 0 {
            let owed = server.tx.owed;
            self.account_ready(readies, xact_ends, owed);
            if let (Some(t), Some(at)) = (self.shared.traces.as_deref(), answered) {
                self.traced.readies(readies, at, t);
            }
        }
        Ok(())
    }
}

/// A spare buffer for `out` when it has none yet.
fn spare_room(out: &mut BytesMut) {
    if out.capacity() == 0 {
        *out = spare_buffers::take();
    }
}

/// Whether pgwake reads the whole client frame starting at `frame[0]`: in
/// transaction mode, the ones that name prepared statements; in session
/// mode, none.
#[inline]
pub(super) fn read_whole_at(track: bool, frame: &[u8]) -> bool {
    track && crate::prepared::client_frame_read_whole_at(frame)
}
