//! The replies a server connection owes, in order, with what pgwake does
//! with each, and what to undo when the server did not carry a message out.

use std::collections::VecDeque;
use std::sync::Arc;

use bytes::BytesMut;
use pgwake_protocol::TxStatus;

use super::cache::ServerStatements;
use super::names::{ClientStatements, StatementSpec, PROBE_NAME};
use super::sql_commands;
use super::track::ReplyTracker;
use super::wire::{edit_error, put_empty, Position};

/// The replies that end a message's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Expect {
    Parse,
    Bind,
    Close,
    DescribeStatement,
    DescribePortal,
    Execute,
    Sync,
    /// Query or FunctionCall: answered up to ReadyForQuery, errors included.
    Ready,
    /// A query whose statement pgwake could not prepare first: the
    /// preparation's error stood for it, so only its ReadyForQuery is given.
    Doomed,
}

impl Expect {
    pub(super) fn ends_at(self, tag: u8) -> bool {
        match self {
            Expect::Parse => tag == b'1',
            Expect::Bind => tag == b'2',
            Expect::Close => tag == b'3',
            Expect::DescribeStatement | Expect::DescribePortal => tag == b'T' || tag == b'n',
            Expect::Execute => matches!(tag, b'C' | b'I' | b's'),
            Expect::Sync | Expect::Ready | Expect::Doomed => tag == b'Z',
        }
    }

    pub(super) fn ends_with_ready(self) -> bool {
        matches!(self, Expect::Sync | Expect::Ready | Expect::Doomed)
    }
}

#[derive(Debug)]
pub(super) enum Kind {
    /// Sent for the client; its replies are the client's.
    Forward(Expect),
    /// Sent by pgwake; its replies are dropped, but an error is forwarded:
    /// it stands for the client's message that follows.
    Swallow(Expect),
    /// Answered by pgwake with an empty message of this tag as soon as every
    /// earlier entry has been answered.
    Answer(u8),
    /// A Describe of a prepared server statement sent in place of a
    /// client's Parse where the transaction may have failed: its replies are
    /// dropped and ParseComplete given instead; an error is forwarded.
    Confirm,
    /// The client ended a COPY: Syncs before this were read as part of it.
    CopyEnd,
}

/// How a server error naming a server statement is shown to the client.
#[derive(Debug)]
pub(super) enum Rename {
    Statement(Arc<StatementSpec>),
    Probe(Arc<StatementSpec>),
    /// A SQL command whose statement name pgwake replaced.
    Sql(Box<sql_commands::Spliced>),
    /// The error is pgwake's own: the server's (for a query that fails
    /// without side effects) only aborts the transaction as the client's
    /// statement would have.
    Replace(Box<[u8]>),
}

impl Rename {
    pub(super) fn apply(&self, body: &[u8], out: &mut BytesMut) -> bool {
        match self {
            // Positions in an error of pgwake's own `PREPARE` mean nothing
            // to the client.
            Rename::Statement(s) if s.sql => {
                edit_error(body, &s.server_name(), s.name(), Position::Drop, out)
            }
            Rename::Statement(s) => {
                edit_error(body, &s.server_name(), s.name(), Position::Keep, out)
            }
            Rename::Probe(s) => edit_error(body, PROBE_NAME, s.name(), Position::Keep, out),
            Rename::Sql(s) => s.apply(body, out),
            Rename::Replace(frame) => {
                out.extend_from_slice(frame);
                true
            }
        }
    }

    /// The server statement the failed message used.
    pub(super) fn statement(&self) -> Option<u64> {
        match self {
            Rename::Statement(s) => Some(s.hash),
            Rename::Sql(s) => s.hash,
            Rename::Probe(_) | Rename::Replace(_) => None,
        }
    }
}

/// What to restore if the server did not carry a message out.
#[derive(Debug, Default)]
pub(super) struct Undo {
    pub(super) client: Option<ClientUndo>,
    pub(super) server: ServerUndo,
}

impl Undo {
    pub(super) fn is_some(&self) -> bool {
        self.client.is_some() || !matches!(self.server, ServerUndo::None)
    }
}

#[derive(Debug)]
pub(super) struct ClientUndo {
    /// A spec with the name concerned.
    pub(super) name: Arc<StatementSpec>,
    /// What the name stood for before.
    pub(super) prev: Option<Arc<StatementSpec>>,
}

#[derive(Debug, Default)]
pub(super) enum ServerUndo {
    #[default]
    None,
    /// A Parse that failed or was ignored: not prepared.
    Unprepare(u64),
    /// A Close that was ignored: still prepared (in this schema epoch).
    Reprepare(u64, u64),
    Unprobe,
}

#[derive(Debug)]
pub(super) struct Entry {
    pub(super) kind: Kind,
    pub(super) rename: Option<Rename>,
    pub(super) undo: Undo,
}

impl Entry {
    pub(super) fn forward(expect: Expect) -> Self {
        Entry {
            kind: Kind::Forward(expect),
            rename: None,
            undo: Undo::default(),
        }
    }
}

/// The answers a server connection owes, in order, with what pgwake does
/// with each: one entry per message that gets a reply. Kept with the
/// server connection; it must be empty before the connection serves
/// another client.
#[derive(Debug)]
pub(super) struct ReplyPlan {
    pub(super) entries: VecDeque<Entry>,
    /// An extended-protocol message failed and no Sync was sent since: the
    /// server ignores everything up to the next Sync.
    pub(super) skipping: bool,
    /// The server is reading COPY data and the client has not ended it.
    pub(super) copy_in: bool,
    /// Entries with an [`Undo`] before the last Sync in the plan, and after it.
    pub(super) changes_synced: usize,
    pub(super) changes_open: usize,
    /// Sync entries, and Query or FunctionCall entries, in the plan.
    pub(super) syncs: usize,
    pub(super) queries: usize,
    /// Entries to undo, newest last (kept to reuse its allocation).
    pub(super) scratch: Vec<Entry>,
}

impl Default for ReplyPlan {
    fn default() -> Self {
        Self::new()
    }
}

impl ReplyPlan {
    /// The plan of a connection that is idle.
    pub fn new() -> Self {
        ReplyPlan {
            entries: VecDeque::new(),
            skipping: false,
            copy_in: false,
            changes_synced: 0,
            changes_open: 0,
            syncs: 0,
            queries: 0,
            scratch: Vec::new(),
        }
    }

    /// Nothing owed, and the server is neither skipping to a Sync nor in COPY.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty() && !self.skipping && !self.copy_in
    }

    /// Replies still owed (entries).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Gives up on the replies owed (the client left and the relay drains
    /// the server by other means). What the server really prepared is then
    /// unknown: the connection's statements are invalidated, and the relay
    /// must `DEALLOCATE ALL` on it or close it.
    pub fn abandon(&mut self, server: &mut ServerStatements) {
        *self = ReplyPlan::new();
        server.invalidate();
    }

    /// Takes back, newest first, every change the messages still unanswered
    /// made: their connection died before answering, and the request goes
    /// to another connection as if never sent.
    pub fn undo_all(&mut self, client: &mut ClientStatements, server: &mut ServerStatements) {
        while let Some(e) = self.pop() {
            self.scratch.push(e);
        }
        ReplyTracker {
            client,
            server,
            plan: self,
        }
        .undo_scratch();
        let scratch = std::mem::take(&mut self.scratch);
        *self = ReplyPlan::new();
        self.scratch = scratch;
    }

    pub(super) fn push(&mut self, e: Entry) {
        if e.undo.is_some() {
            self.changes_open += 1;
        }
        match e.kind {
            Kind::Forward(Expect::Sync) => {
                self.syncs += 1;
                self.changes_synced += std::mem::take(&mut self.changes_open);
            }
            Kind::Forward(Expect::Ready | Expect::Doomed) => self.queries += 1,
            _ => {}
        }
        self.entries.push_back(e);
    }

    pub(super) fn pop(&mut self) -> Option<Entry> {
        let e = self.entries.pop_front()?;
        // Every change before the last Sync precedes every change after it.
        if e.undo.is_some() {
            if self.changes_synced > 0 {
                self.changes_synced -= 1;
            } else {
                self.changes_open = self.changes_open.saturating_sub(1);
            }
        }
        match e.kind {
            Kind::Forward(Expect::Sync) => self.syncs -= 1,
            Kind::Forward(Expect::Ready | Expect::Doomed) => self.queries -= 1,
            _ => {}
        }
        Some(e)
    }

    /// A message naming a statement must wait: a part of the pipeline ended
    /// by a Sync may still undo changes (if it fails, what follows its Sync
    /// is not skipped and would have been rewritten wrongly), or a query
    /// may still run `DISCARD ALL`.
    pub(super) fn must_wait(&self) -> bool {
        self.changes_synced > 0 || self.queries > 0
    }

    /// The server cannot be in a failed transaction when it reaches the
    /// next message, unless a message before it in the same pipeline part
    /// fails (and then the server skips that message anyway).
    pub(super) fn certainly_not_aborted(&self, status: TxStatus) -> bool {
        self.syncs == 0 && self.queries == 0 && status != TxStatus::Failed
    }

    /// Whether the last message in the plan gets a ReadyForQuery, so that
    /// every one before it will be answered.
    pub(super) fn ends_synced(&self) -> bool {
        self.entries.back().is_none_or(|e| match e.kind {
            Kind::Forward(x) => x.ends_with_ready(),
            Kind::Swallow(x) => x == Expect::Sync,
            _ => false,
        })
    }

    /// Gives the answers that are due: pgwake's own at the head.
    #[inline]
    pub(super) fn settle(&mut self, to_client: &mut BytesMut) {
        // Mostly the head is a message sent for the client: nothing is due.
        if matches!(
            self.entries.front(),
            Some(Entry {
                kind: Kind::Answer(_) | Kind::CopyEnd,
                ..
            })
        ) {
            self.settle_due(to_client);
        }
    }

    fn settle_due(&mut self, to_client: &mut BytesMut) {
        while let Some(head) = self.entries.front() {
            match head.kind {
                Kind::Answer(tag) => {
                    self.pop();
                    put_empty(to_client, tag);
                }
                Kind::CopyEnd => {
                    self.pop();
                }
                _ => break,
            }
        }
    }

    /// CopyInResponse for the message at the head: the server now reads
    /// COPY data and ignores Sync and Flush until the client ends the COPY.
    pub(super) fn copy_started(&mut self) {
        let mut i = 1;
        while i < self.entries.len() {
            match self.entries[i].kind {
                Kind::CopyEnd => return,
                Kind::Forward(Expect::Sync) => {
                    self.entries.remove(i);
                    self.syncs -= 1;
                }
                _ => i += 1,
            }
        }
        self.copy_in = true;
    }
}
