//! The relay: moving bytes between a client and the server connection it
//! holds, noting on the way what makes the connection's state (replies
//! owed, transaction status, settings, named statements), and cleaning up
//! when either side goes away.

use std::time::{Duration, Instant};

use bytes::{Buf, BytesMut};
use pgwake_config::PoolMode;
use pgwake_protocol::backend::{self, ErrorMessage};
use pgwake_protocol::{sqlstate, Scanned};
use postgres_protocol::message::frontend;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::{too_large, ClientStream, Session, Stop, CLEANUP_TIMEOUT, INTERNAL_TIMEOUT};
use crate::params;
use crate::pool::Pooled;
use crate::server::{inspected_server_frame, send_cancel};
use crate::stats::{micros, PoolCounts, TimeoutKind};

/// Largest first request kept for a replay on a fresh connection.
const MAX_REPLAY: usize = 64 * 1024;
/// How long the server has to answer a cancel sent for `query_timeout`
/// before its connection is given up.
const CANCEL_GRACE: Duration = Duration::from_secs(5);
/// Bytes of query text kept for the slow-query log.
const QUERY_TEXT_MAX: usize = 200;

/// Waits for the session's timer when a deadline applies, else forever.
async fn expiry(
    timer: &mut Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
    deadline: Option<(Instant, TimeoutKind)>,
) -> TimeoutKind {
    match (timer.as_mut(), deadline) {
        (Some(t), Some((_, kind))) => {
            t.await;
            kind
        }
        _ => std::future::pending().await,
    }
}

/// A query's text for the log, with the contents of string literals
/// replaced by `…` (they may hold secrets: `ALTER ROLE … PASSWORD '…'`).
fn mask_literals(text: &[u8]) -> String {
    let text = String::from_utf8_lossy(text);
    let mut out = String::with_capacity(text.len());
    let mut in_literal = false;
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if in_literal {
            if c == '\'' {
                if chars.peek() == Some(&'\'') {
                    chars.next();
                } else {
                    in_literal = false;
                    out.push_str("…'");
                }
            }
        } else {
            out.push(c);
            in_literal = c == '\'';
        }
    }
    if in_literal {
        out.push('…');
    }
    out
}

/// Keeps the start of a query's text (up to its terminating NUL).
fn keep_text(out: &mut Vec<u8>, text: &[u8]) {
    let text = &text[..text.len().min(QUERY_TEXT_MAX)];
    let end = text.iter().position(|&b| b == 0).unwrap_or(text.len());
    out.extend_from_slice(&text[..end]);
}

impl<C: ClientStream> Session<C> {
    /// Moves bytes both ways until the transaction ends (transaction mode)
    /// or either side leaves.
    pub(super) async fn relay(&mut self) -> Stop {
        if let Err(stop) = self.forward_client().await {
            return stop;
        }
        loop {
            if let Err(stop) = self.reserve_client_buffer().await {
                return stop;
            }
            let deadline = self.timeout_deadline();
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
            let server = &mut self.server.as_mut().expect("attached").conn;
            if self.mode == PoolMode::Transaction
                && self.cscan.at_boundary()
                && !self.held
                && server.is_at_rest()
            {
                return Stop::Released;
            }
            tokio::select! {
                // Fixed order: no random draw per turn.
                biased;
                r = self.client.read_buf(&mut self.cbuf) => match r {
                    Ok(0) | Err(_) => return Stop::ClientGone,
                    Ok(_) => if let Err(stop) = self.forward_client().await { return stop },
                },
                r = server.read_more() => match r {
                    Err(e) => {
                        server.broken = true;
                        if self.replay > 0 {
                            tracing::info!(peer = %self.peer, error = %e, "server connection dead on first use");
                            return Stop::Retry;
                        }
                        tracing::warn!(peer = %self.peer, pool = %self.pool.key(), error = %e, "server connection lost while serving a client");
                        return Box::pin(self.server_lost(&e.to_string())).await;
                    }
                    Ok(_) => {
                        if let Err(stop) = self.forward_server().await { return stop }
                        // Frames held back until the server answered more.
                        if self.held {
                            // Boxed: rare, and it would enlarge every session's task.
                            if let Err(stop) = Box::pin(self.forward_client()).await { return stop }
                        }
                    }
                },
                kind = expiry(timer, deadline) => {
                    if let Err(stop) = Box::pin(self.on_timeout(kind)).await { return stop }
                },
            }
        }
    }

    /// When the next timeout fires, if any applies now.
    fn timeout_deadline(&self) -> Option<(Instant, TimeoutKind)> {
        if let Some(c) = self.cancel_sent {
            return Some((c.at + CANCEL_GRACE, TimeoutKind::Query));
        }
        let server = &self.server.as_ref()?.conn;
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
    async fn on_timeout(&mut self, kind: TimeoutKind) -> Result<(), Stop> {
        let limit = |d: Option<Duration>| d.unwrap_or_default();
        if self.cancel_sent.is_some() {
            // The server did not answer the cancel: give the connection up.
            drop(self.server.take());
            self.detached();
            self.cancel.set(None);
            tracing::warn!(peer = %self.peer, pool = %self.pool.key(), "the server did not answer a cancel request within {CANCEL_GRACE:?}; closed its connection");
            return Err(Stop::Fatal(ErrorMessage::fatal(
                sqlstate::QUERY_CANCELED,
                format!("canceling statement due to pgwake timeouts.query_timeout ({:?}); the server did not answer the cancel, so the connection was closed", limit(self.shared.timeouts.query())),
            )));
        }
        match kind {
            TimeoutKind::Query => {
                self.shared.metrics.timeout(kind);
                let (addr, pid, key) = self.server.as_ref().expect("attached").conn.cancel_key();
                tracing::info!(peer = %self.peer, pool = %self.pool.key(), backend_pid = pid, "query ran past timeouts.query_timeout; cancelling it");
                self.cancel_sent = Some(super::CancelSent {
                    at: Instant::now(),
                    answered: false,
                });
                self.shared
                    .metrics
                    .cancels
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if let Err(e) = send_cancel(addr, pid, key).await {
                    tracing::warn!(peer = %self.peer, error = %e, "could not send the cancel request");
                }
                Ok(())
            }
            TimeoutKind::IdleTransaction => {
                self.shared.metrics.timeout(kind);
                let limit = limit(self.shared.timeouts.idle_transaction());
                tracing::info!(peer = %self.peer, pool = %self.pool.key(), "client idle in transaction for {limit:?} (timeouts.idle_transaction_timeout); rolling back and disconnecting it");
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
    async fn server_lost(&mut self, e: &str) -> Stop {
        let p = self.server.take().expect("attached");
        let tx = p.conn.tx;
        drop(p);
        self.detached();
        self.cancel_sent = None;
        self.cancel.set(None);
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
        match self.client.send(&out).await {
            Ok(()) => Stop::Released,
            Err(_) => Stop::ClientGone,
        }
    }

    /// Forwards every buffered client byte that belongs to a frame whose
    /// header arrived; a partial header waits for more.
    async fn forward_client(&mut self) -> Result<(), Stop> {
        // More client bytes before the server answered: the first request is
        // no longer alone in flight, so it can no longer be replayed.
        if self.replay > 0 {
            self.cbuf.advance(std::mem::take(&mut self.replay));
        }
        self.held = false;
        let server = &mut self.server.as_mut().expect("attached").conn;
        let track = self.mode == PoolMode::Transaction;
        // A first request on a fresh attachment, with no session state on the
        // connection, may go to another connection if this one proves dead.
        let mut replayable = std::mem::take(&mut self.fresh) && server.tx.is_idle();
        let mut capture = self.query_text.is_empty() && self.shared.timeouts.slow_query().is_some();
        // Rewritten output: empty unless a frame was changed, added or held
        // back; then it holds everything from the buffer's start to `pos`.
        let mut out = BytesMut::new();
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
                        let name_end = body.iter().position(|&b| b == 0).unwrap_or(body.len());
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
            if !track {
                server.tx.sent(tag);
                pos = next;
                continue;
            }
            let mut to_server = BytesMut::new();
            let step = crate::prepared::Rewriter {
                client: &mut self.prepared,
                server: &mut server.prepared.statements,
                plan: &mut server.prepared.plan,
            }
            .message(tag, body, &mut to_server, &mut to_client)
            .map_err(|e| {
                Stop::Fatal(ErrorMessage::fatal(
                    sqlstate::PROGRAM_LIMIT_EXCEEDED,
                    format!("invalid message from client: {e}"),
                ))
            })?;
            if step == crate::prepared::Step::Wait {
                if !to_server.is_empty() {
                    // A Sync so that what is in flight gets answered.
                    out.extend_from_slice(&self.cbuf[copied..pos]);
                    out.extend_from_slice(&to_server);
                    copied = pos;
                }
                // Offered again once the server has answered more.
                tracing::debug!(peer = %self.peer, tag = %(tag as char), plan = server.prepared.plan.len(), owed = server.tx.owed, "holding a client message until the server answers");
                self.held = true;
                break;
            }
            if step == crate::prepared::Step::Pass && to_server.is_empty() && copied == 0 {
                server.tx.sent(tag);
                pos = next;
                continue;
            }
            // Bytes change from here on: copy what passed unchanged so far.
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
            let written = server.stream.write_all(sending).await;
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
                return Err(Box::pin(self.server_lost(&e.to_string())).await);
            }
        } else {
            self.cbuf.advance(pos);
        }
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
    pub(super) async fn retry_on_fresh_connection(&mut self) -> Result<bool, Stop> {
        if let Some(mut dead) = self.server.take() {
            // What the request did to the session's statements is taken back:
            // it is sent again, as new, on the next connection.
            let prepared = &mut *dead.conn.prepared;
            prepared
                .plan
                .undo_all(&mut self.prepared, &mut prepared.statements);
        }
        self.cancel.set(None);
        // The request is still at the front of the buffer.
        self.replay = 0;
        tracing::info!(peer = %self.peer, pool = %self.pool.key(), "retrying the request on a fresh server connection");
        let mut p = match self.pool.checkout_fresh().await {
            Ok(p) => p,
            Err(e) => {
                // The request is still buffered; answer it with the error.
                self.detached();
                Box::pin(self.skip_request(e.to_client())).await?;
                return Ok(false);
            }
        };
        if p.conn.settings_fp != self.want_fp {
            if let Err(stop) = Box::pin(self.sync_settings(&mut p)).await {
                self.detached();
                return Err(stop);
            }
        }
        self.attached(p.conn.cancel_key().1);
        self.cancel.set(Some(p.conn.cancel_key()));
        self.server = Some(p);
        // Sent as any request is; no second replay if this one dies too.
        self.fresh = false;
        self.forward_client().await?;
        Ok(true)
    }

    /// Forwards every buffered server byte to the client, noting
    /// ReadyForQuery and ParameterStatus on the way.
    async fn forward_server(&mut self) -> Result<(), Stop> {
        let server = &mut self.server.as_mut().expect("attached").conn;
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
                if fields.is_fatal() {
                    // The server is closing this connection (shutdown, terminated
                    // backend): not the client's session to end. Keep it from the
                    // client and handle it as a lost connection.
                    fatal = Some(ErrorMessage::from_fields(fields).message);
                    break;
                }
            }
            // The plan of replies: which go to the client, and pgwake's own.
            let mut dropped = false;
            if track {
                let verdict = match item {
                    Scanned::Body => {
                        if server.prepared.dropping {
                            server.prepared.dropping = !server.scan.at_boundary();
                            Some(crate::prepared::Verdict::Drop)
                        } else {
                            None
                        }
                    }
                    Scanned::Start { tag } => Some(
                        crate::prepared::ReplyTracker {
                            client: &mut self.prepared,
                            server: &mut server.prepared.statements,
                            plan: &mut server.prepared.plan,
                        }
                        .frame(tag, &[], &mut extra),
                    ),
                    Scanned::Frame { tag, body } => Some(
                        crate::prepared::ReplyTracker {
                            client: &mut self.prepared,
                            server: &mut server.prepared.statements,
                            plan: &mut server.prepared.plan,
                        }
                        .frame(tag, body, &mut extra),
                    ),
                };
                if verdict == Some(crate::prepared::Verdict::Drop) {
                    dropped = true;
                    if matches!(item, Scanned::Start { .. }) {
                        server.prepared.dropping = !server.scan.at_boundary();
                    }
                    out.extend_from_slice(&server.buf[flushed..frame_at]);
                    flushed = next;
                    edited = true;
                }
            }
            match item {
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
                            self.want.remove(&k);
                        } else {
                            self.want.insert(k, v.to_owned());
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
                tracing::info!(peer = %self.peer, %message, "server connection closed before answering the first request");
                return Err(Stop::Retry);
            }
            tracing::warn!(peer = %self.peer, pool = %self.pool.key(), %message, "server closed a connection while serving a client");
            return Err(Box::pin(self.server_lost(&format!("server: {message}"))).await);
        }
        if readies > 0 {
            let owed = server.tx.owed;
            self.account_ready(readies, xact_ends, owed);
        }
        Ok(())
    }

    /// Counts and times the queries (`readies` ReadyForQuery messages) and
    /// transactions (`xact_ends` of them left it idle) just answered.
    fn account_ready(&mut self, readies: u64, xact_ends: u64, owed: u32) {
        let now = Instant::now();
        self.idle_since = now;
        let stats = self.pool.stats();
        PoolCounts::add(&stats.queries, readies);
        if let Some(start) = self.query_start.take() {
            let took = now.duration_since(start);
            PoolCounts::add(&stats.query_us, micros(took));
            if let Some(h) = self.pool.histograms() {
                h.query.record(took.as_secs_f64());
            }
            if self
                .shared
                .timeouts
                .slow_query()
                .is_some_and(|slow| took >= slow)
            {
                let info = &self.registered.info;
                tracing::warn!(
                    duration_ms = micros(took) / 1000,
                    database = %info.database,
                    user = %info.user,
                    application_name = %info.application_name,
                    client = %self.peer,
                    query = %mask_literals(&self.query_text),
                    "slow query"
                );
            }
        }
        self.query_text.clear();
        if owed > 0 {
            // The next pipelined query runs from now.
            self.query_start = Some(now);
        }
        if xact_ends > 0 {
            PoolCounts::add(&stats.xacts, xact_ends);
            if let Some(start) = self.xact_start.take() {
                let took = now.duration_since(start);
                PoolCounts::add(&stats.xact_us, micros(took));
                if let Some(h) = self.pool.histograms() {
                    h.xact.record(took.as_secs_f64());
                }
            }
        }
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
        let peer = self.peer.clone();

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
            if !p.conn.prepared.plan.is_empty() {
                // Replies the departed client's plan still expected: what the
                // connection has prepared can no longer be vouched for.
                p.conn
                    .prepared
                    .plan
                    .abandon(&mut p.conn.prepared.statements);
                p.conn
                    .run_internal("DEALLOCATE ALL", INTERNAL_TIMEOUT)
                    .await
                    .ok()?;
                p.conn.prepared.statements.invalidate();
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

/// Whether pgwake reads the whole client frame starting at `frame[0]`: in
/// transaction mode, the ones that name prepared statements; in session
/// mode, none.
#[inline]
pub(super) fn read_whole_at(track: bool, frame: &[u8]) -> bool {
    track && crate::prepared::client_frame_read_whole_at(frame)
}

#[cfg(test)]
mod tests {
    #[test]
    fn string_literals_are_masked_in_the_slow_query_log() {
        let m = super::mask_literals(b"alter role app password 'se''cret' valid until 'x");
        assert_eq!(m, "alter role app password '…' valid until '…");
        assert_eq!(super::mask_literals(b"select 1"), "select 1");
    }
}
