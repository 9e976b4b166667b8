//! Protocol-level prepared statements in transaction mode.
//!
//! A client's named statements are mapped onto server statements named by a
//! hash of their content (`pgwake_<16 hex>`), prepared on a server connection
//! the first time they are used there and cached per connection with an LRU
//! bound. No I/O here: the relay offers each client message to a
//! [`Rewriter`], which appends what to send to the server and records in the
//! connection's [`ReplyPlan`] what each message will be answered with; it then
//! offers each server frame to a [`ReplyTracker`], which says whether the
//! client sees it and writes the replies pgwake gives itself. The client sees
//! exactly what one server session would have sent, in order.
//!
//! Pipelining: a message is rewritten before the server has answered the
//! ones before it, on the assumption that they succeed. When the server
//! reports an error in the extended protocol it ignores everything up to the
//! next Sync, so the tracker undoes, newest first, what the failed message
//! and the ignored ones did to the statement tables. A message whose meaning
//! depends on what an earlier, already synced part of the pipeline may still
//! undo is held back ([`Step::Wait`]) until the server has answered that part.

use bytes::BytesMut;
use pgwake_protocol::{sql, Scanned, TxStatus};

mod cache;
mod names;
mod plan;
mod rewrite;
mod sql_commands;
mod track;
mod wire;

pub use cache::{CacheCounts, ServerStatements};
pub use names::{server_name, ClientStatements, StatementHasher, StatementSpec, SERVER_NAME_LEN};
pub use rewrite::{Step, TooLarge};
pub use track::Verdict;

use plan::ReplyPlan;
use rewrite::Rewriter;
use track::ReplyTracker;

/// Client frames whose whole body the [`Rewriter`] needs: Parse, Bind,
/// Describe and Close name statements. Other frames may be offered with an
/// empty or partial body.
#[inline]
pub fn client_frame_read_whole(tag: u8) -> bool {
    matches!(tag, b'P' | b'B' | b'D' | b'C')
}

/// Like [`client_frame_read_whole`], for the client frame whose bytes (as
/// far as they arrived) start at `frame[0]`: a simple Query is read whole
/// when it may be a SQL `PREPARE`, `EXECUTE` or `DEALLOCATE`, which its
/// first keyword tells.
#[inline]
pub fn client_frame_read_whole_at(frame: &[u8]) -> bool {
    match frame.first() {
        Some(b'Q') => sql::may_be_command(frame.get(5..).unwrap_or_default()),
        Some(&tag) => client_frame_read_whole(tag),
        None => false,
    }
}

/// Whether the client frame `tag` with `body` names a prepared statement
/// (a Parse, Bind, Describe or Close of a named one): only such a frame,
/// or a simple Query, may be rewritten. Unnamed ones pass unchanged.
#[inline]
pub fn client_frame_names_statement(tag: u8, body: &[u8]) -> bool {
    match tag {
        b'P' => body.first().is_some_and(|&b| b != 0),
        b'B' => body
            .iter()
            .position(|&b| b == 0)
            .and_then(|portal_end| body.get(portal_end + 1))
            .is_some_and(|&b| b != 0),
        b'D' | b'C' => body.first() == Some(&b'S') && body.get(1).is_some_and(|&b| b != 0),
        _ => false,
    }
}

/// Server frames whose whole body the [`ReplyTracker`] needs: ErrorResponse
/// (renamed statements), CommandComplete (`DISCARD ALL`) and ReadyForQuery
/// (transaction status).
#[inline]
pub fn server_frame_read_whole(tag: u8) -> bool {
    matches!(tag, b'E' | b'C' | b'Z')
}

/// A server connection's side of named prepared statements: what it has
/// prepared, and the plan of the replies it owes. The relay offers it each
/// client message and each server frame; nothing else reaches inside.
#[derive(Debug)]
pub struct OnServer {
    statements: ServerStatements,
    plan: ReplyPlan,
    /// The server frame being read was dropped: so is the rest of it.
    dropping: bool,
}

impl OnServer {
    /// A connection with nothing prepared, which keeps at most `max`
    /// statements (at least 1).
    pub fn new(max: usize) -> Self {
        OnServer {
            statements: ServerStatements::new(max),
            plan: ReplyPlan::new(),
            dropping: false,
        }
    }

    /// The statements prepared on the connection.
    pub fn statements(&self) -> &ServerStatements {
        &self.statements
    }

    /// The cache counts since the last call, for metrics.
    pub fn take_counts(&mut self) -> CacheCounts {
        self.statements.take_counts()
    }

    /// Nothing owed, and the server is neither skipping to a Sync nor in
    /// COPY: the connection may serve another client as far as prepared
    /// statements go.
    pub fn is_settled(&self) -> bool {
        self.plan.is_empty()
    }

    /// Replies the plan still expects (for logs).
    pub fn owed(&self) -> usize {
        self.plan.len()
    }

    /// Offers the client message `tag` with `body` (whole for the tags of
    /// [`client_frame_read_whole`]), sent while `status` is the transaction
    /// status of the server's last ReadyForQuery. See [`Step`]; what goes to the
    /// server before or instead of the frame is appended to `to_server`,
    /// pgwake's own replies due now to `to_client`.
    pub fn client_message(
        &mut self,
        client: &mut ClientStatements,
        status: TxStatus,
        tag: u8,
        body: &[u8],
        to_server: &mut BytesMut,
        to_client: &mut BytesMut,
    ) -> Result<Step, TooLarge> {
        Rewriter {
            client,
            server: &mut self.statements,
            plan: &mut self.plan,
            status,
        }
        .message(tag, body, to_server, to_client)
    }

    /// Offers what the server scanner read (`whole_frame_read` is whether
    /// the scanner is now at a frame boundary): a frame's start or whole
    /// frame, or more body bytes of the last one. Bytes appended to
    /// `to_client` go to the client right after it (or in its place when
    /// it is dropped).
    pub fn server_item(
        &mut self,
        client: &mut ClientStatements,
        item: &Scanned<'_>,
        at_boundary: bool,
        to_client: &mut BytesMut,
    ) -> Verdict {
        let (tag, body) = match *item {
            Scanned::Body if self.dropping => {
                self.dropping = !at_boundary;
                return Verdict::Drop;
            }
            Scanned::Body => return Verdict::Forward,
            Scanned::Start { tag } => (tag, &[][..]),
            Scanned::Frame { tag, body } => (tag, body),
        };
        let verdict = ReplyTracker {
            client,
            server: &mut self.statements,
            plan: &mut self.plan,
        }
        .frame(tag, body, to_client);
        if verdict == Verdict::Drop && matches!(item, Scanned::Start { .. }) {
            self.dropping = !at_boundary;
        }
        verdict
    }

    /// Takes back, newest first, every change the messages still
    /// unanswered made: the connection died before answering, and the
    /// request goes to another connection as if never sent.
    pub fn undo_unanswered(&mut self, client: &mut ClientStatements) {
        self.plan.undo_all(client, &mut self.statements);
        self.dropping = false;
    }

    /// Gives up on the replies owed (the client left and the server is
    /// drained by other means). What the server really prepared is then
    /// unknown: the caller must `DEALLOCATE ALL` on it (then
    /// [`Self::forget_all`]) or close it.
    pub fn abandon(&mut self) {
        self.plan.abandon(&mut self.statements);
        self.dropping = false;
    }

    /// The server's statements are gone (`DEALLOCATE ALL`, `DISCARD ALL`).
    pub fn forget_all(&mut self) {
        self.statements.invalidate();
    }
}

#[cfg(test)]
mod tests;
