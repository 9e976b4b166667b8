//! Rewriting a client's messages for the server connection it holds.

use std::sync::Arc;

use bytes::{BufMut, BytesMut};
use pgwake_protocol::TxStatus;
use thiserror::Error;

use super::cache::{Lookup, ServerStatements};
use super::names::{
    server_name, ClientStatements, StatementSpec, PROBE_NAME, PROBE_QUERY, SERVER_NAME_LEN,
};
use super::plan::{ClientUndo, Entry, Expect, Kind, Rename, ReplyPlan, ServerUndo, Undo};
use super::sql_commands;
use super::wire::{
    cstr, fixed_length, length, put_close_statement, put_cstr, put_describe_statement, put_header,
};

/// A rewritten frame would exceed the protocol's length field.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("message type {tag:?} with a body of {len} bytes is too long once statement names are rewritten")]
pub struct TooLarge {
    pub tag: char,
    pub len: usize,
}

/// What to do with the client's frame, after sending whatever the call
/// appended to `to_server`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Send the frame unchanged.
    Pass,
    /// The frame is consumed: send only what was appended.
    Replace,
    /// Send the frame's body from this offset on: what was appended ends
    /// with the rewritten header and start of it.
    Tail(usize),
    /// Nothing was done: offer the frame again once the server has sent
    /// more replies. Frames after it must wait too.
    Wait,
}

/// Rewrites one client's messages for the server connection it holds.
///
/// - Parse of a new name: recorded; when the connection has the statement
///   already, pgwake answers ParseComplete itself and sends nothing,
///   otherwise the Parse goes out under the server name. Parse of a name
///   the client uses already is sent under a name the server is known to
///   have, so that the server fails it in step (the same error precedence,
///   the transaction aborted as it would be), and the error is shown with
///   the client's name. Unnamed and malformed Parses pass unchanged.
/// - Bind and Describe of a known name: the statement is prepared on the
///   connection first if needed (an injected Parse whose success is
///   swallowed), then the name is rewritten. Unknown names pass unchanged:
///   the server answers as it would.
/// - Close of a named statement: forgotten, answered by pgwake; the server
///   keeps its statement for others.
/// - Preparing beyond the bound closes the least recently used statement first.
pub(super) struct Rewriter<'a> {
    pub(super) client: &'a mut ClientStatements,
    pub(super) server: &'a mut ServerStatements,
    pub(super) plan: &'a mut ReplyPlan,
    /// The transaction status of the server's last ReadyForQuery.
    pub(super) status: TxStatus,
}

impl Rewriter<'_> {
    /// Handles the client message `tag` with `body` (whole for the tags of
    /// [`client_frame_read_whole`]). Appends what goes to the server before
    /// or instead of the frame to `to_server`, and pgwake's own replies that
    /// are due now to `to_client` (to be written after everything already
    /// forwarded to the client).
    pub(super) fn message(
        &mut self,
        tag: u8,
        body: &[u8],
        to_server: &mut BytesMut,
        to_client: &mut BytesMut,
    ) -> Result<Step, TooLarge> {
        if self.plan.copy_in {
            if matches!(tag, b'c' | b'f') {
                self.plan.copy_in = false;
            }
            return Ok(Step::Pass);
        }
        if self.plan.skipping {
            // The server ignores it; nothing is answered, nothing changes.
            if tag == b'S' {
                self.plan.skipping = false;
                self.plan.push(Entry::forward(Expect::Sync));
            }
            return Ok(Step::Pass);
        }
        let step = match tag {
            b'P' => self.parse(body, to_server)?,
            b'B' => self.bind(body, to_server)?,
            b'D' => self.describe(body, to_server)?,
            b'C' => self.close(body),
            b'E' => self.forward(Expect::Execute),
            b'S' => self.forward(Expect::Sync),
            b'Q' => self.query(body, to_server, to_client)?,
            b'F' => self.forward(Expect::Ready),
            b'c' | b'f' => {
                self.plan.push(Entry {
                    kind: Kind::CopyEnd,
                    rename: None,
                    undo: Undo::default(),
                });
                Step::Pass
            }
            // Flush, CopyData, Terminate; unknown messages, which the server rejects.
            _ => Step::Pass,
        };
        self.plan.settle(to_client);
        Ok(step)
    }

    pub(super) fn forward(&mut self, expect: Expect) -> Step {
        self.plan.push(Entry::forward(expect));
        Step::Pass
    }

    pub(super) fn parse(
        &mut self,
        body: &[u8],
        to_server: &mut BytesMut,
    ) -> Result<Step, TooLarge> {
        let Some((name, rest)) = cstr(body, 0) else {
            return Ok(self.forward(Expect::Parse));
        };
        if name.is_empty() {
            return Ok(self.forward(Expect::Parse));
        }
        if self.plan.must_wait() {
            return Ok(Step::Wait);
        }
        let content = body.len() - rest;
        if let Some(old) = self.client.get(name).cloned() {
            // Postgres reports a name in use only once the query has parsed
            // and analysed: the server does all of that on the probe.
            let len = length(b'P', PROBE_NAME.len() + 1 + content)?;
            self.ensure_probe(to_server);
            put_header(to_server, b'P', len);
            put_cstr(to_server, PROBE_NAME);
            self.plan.push(Entry {
                kind: Kind::Forward(Expect::Parse),
                rename: Some(Rename::Probe(old)),
                undo: Undo::default(),
            });
            return Ok(Step::Tail(rest));
        }
        let spec = Arc::new(StatementSpec::new(body, name.len(), &self.client.hasher));
        let (before, after) = spec.server_content();
        let len = length(b'P', SERVER_NAME_LEN + 1 + before.len() + after.len())?;
        self.client.put(spec.clone());
        let hash = spec.hash;
        let client = Some(ClientUndo {
            name: spec.clone(),
            prev: None,
        });
        if self.use_statement(&spec, to_server) {
            if self.plan.certainly_not_aborted(self.status) {
                self.plan.push(Entry {
                    kind: Kind::Answer(b'1'),
                    rename: None,
                    undo: Undo {
                        client,
                        server: ServerUndo::None,
                    },
                });
            } else {
                // A failed transaction refuses Parse; a Describe of the
                // statement fails the same way there and succeeds elsewhere.
                put_describe_statement(to_server, &server_name(hash));
                self.plan.push(Entry {
                    kind: Kind::Confirm,
                    rename: Some(Rename::Statement(spec)),
                    undo: Undo {
                        client,
                        server: ServerUndo::None,
                    },
                });
            }
            return Ok(Step::Replace);
        }
        put_header(to_server, b'P', len);
        put_cstr(to_server, &server_name(hash));
        // The client's text after the name, or (with a sqlcommenter
        // comment) the text without it.
        let tail = if spec.comment.is_some() {
            to_server.put_slice(before);
            to_server.put_slice(after);
            body.len()
        } else {
            rest
        };
        self.plan.push(Entry {
            kind: Kind::Forward(Expect::Parse),
            rename: Some(Rename::Statement(spec)),
            undo: Undo {
                client,
                server: ServerUndo::Unprepare(hash),
            },
        });
        Ok(Step::Tail(tail))
    }

    pub(super) fn bind(&mut self, body: &[u8], to_server: &mut BytesMut) -> Result<Step, TooLarge> {
        let Some((_portal, stmt_at)) = cstr(body, 0) else {
            return Ok(self.forward(Expect::Bind));
        };
        let Some((stmt, rest)) = cstr(body, stmt_at) else {
            return Ok(self.forward(Expect::Bind));
        };
        if stmt.is_empty() {
            return Ok(self.forward(Expect::Bind));
        }
        if self.plan.must_wait() {
            return Ok(Step::Wait);
        }
        let Some(spec) = self.client.get(stmt).cloned() else {
            return Ok(self.forward(Expect::Bind));
        };
        let len = length(b'B', stmt_at + SERVER_NAME_LEN + 1 + (body.len() - rest))?;
        self.ensure_prepared(&spec, to_server)?;
        self.server.pin(spec.hash);
        put_header(to_server, b'B', len);
        to_server.put_slice(&body[..stmt_at]);
        put_cstr(to_server, &spec.server_name());
        self.plan.push(Entry {
            kind: Kind::Forward(Expect::Bind),
            rename: Some(Rename::Statement(spec)),
            undo: Undo::default(),
        });
        Ok(Step::Tail(rest))
    }

    pub(super) fn describe(
        &mut self,
        body: &[u8],
        to_server: &mut BytesMut,
    ) -> Result<Step, TooLarge> {
        if body.first() != Some(&b'S') {
            // A portal, or a malformed Describe the server rejects.
            return Ok(self.forward(Expect::DescribePortal));
        }
        let Some((name, _)) = cstr(body, 1) else {
            return Ok(self.forward(Expect::DescribeStatement));
        };
        if name.is_empty() {
            return Ok(self.forward(Expect::DescribeStatement));
        }
        if self.plan.must_wait() {
            return Ok(Step::Wait);
        }
        let Some(spec) = self.client.get(name).cloned() else {
            return Ok(self.forward(Expect::DescribeStatement));
        };
        self.ensure_prepared(&spec, to_server)?;
        put_describe_statement(to_server, &spec.server_name());
        self.plan.push(Entry {
            kind: Kind::Forward(Expect::DescribeStatement),
            rename: Some(Rename::Statement(spec)),
            undo: Undo::default(),
        });
        Ok(Step::Replace)
    }

    pub(super) fn close(&mut self, body: &[u8]) -> Step {
        if body.first() != Some(&b'S') {
            return self.forward(Expect::Close);
        }
        let Some((name, _)) = cstr(body, 1) else {
            return self.forward(Expect::Close);
        };
        if name.is_empty() {
            return self.forward(Expect::Close);
        }
        if self.plan.must_wait() {
            return Step::Wait;
        }
        // Closing a name that does not exist is not an error either.
        let client = self.client.take(name).map(|prev| ClientUndo {
            name: prev.clone(),
            prev: Some(prev),
        });
        self.plan.push(Entry {
            kind: Kind::Answer(b'3'),
            rename: None,
            undo: Undo {
                client,
                server: ServerUndo::None,
            },
        });
        Step::Replace
    }

    /// Whether the connection has `spec`'s statement, prepared recently
    /// enough for it (a hit). Otherwise it is recorded as prepared by the
    /// message the caller sends next, after closing a stale one and making
    /// room.
    pub(super) fn use_statement(&mut self, spec: &StatementSpec, to_server: &mut BytesMut) -> bool {
        let hash = spec.hash;
        match self.server.touch(hash, spec.epoch) {
            Lookup::Ready => {
                self.server.counts.hits += 1;
                return true;
            }
            Lookup::Stale(schema) => {
                put_close_statement(to_server, &server_name(hash));
                self.plan.push(Entry {
                    kind: Kind::Swallow(Expect::Close),
                    rename: None,
                    undo: Undo {
                        client: None,
                        server: ServerUndo::Reprepare(hash, schema),
                    },
                });
            }
            Lookup::Missing => {}
        }
        self.server.counts.misses += 1;
        self.make_room(to_server);
        self.server.insert(hash, self.client.hasher.schema_epoch());
        false
    }

    /// Prepares `spec` on the connection unless it is there.
    pub(super) fn ensure_prepared(
        &mut self,
        spec: &Arc<StatementSpec>,
        to_server: &mut BytesMut,
    ) -> Result<(), TooLarge> {
        let hash = spec.hash;
        let content = spec.content();
        let (before, after) = spec.server_content();
        let len = length(b'P', SERVER_NAME_LEN + 1 + before.len() + after.len())?;
        if spec.sql {
            // Checked before anything is recorded.
            sql_commands::check_prepare_len(content.len())?;
        }
        if self.use_statement(spec, to_server) {
            return Ok(());
        }
        if spec.sql {
            self.prepare_by_sql(spec, to_server);
            return Ok(());
        }
        put_header(to_server, b'P', len);
        put_cstr(to_server, &server_name(hash));
        to_server.put_slice(before);
        to_server.put_slice(after);
        self.plan.push(Entry {
            kind: Kind::Swallow(Expect::Parse),
            rename: Some(Rename::Statement(spec.clone())),
            undo: Undo {
                client: None,
                server: ServerUndo::Unprepare(hash),
            },
        });
        Ok(())
    }

    /// Closes statements until one more fits.
    pub(super) fn make_room(&mut self, to_server: &mut BytesMut) {
        while let Some(victim) = self.server.victim() {
            let schema = self.server.remove(victim).unwrap_or_default();
            self.server.counts.evictions += 1;
            put_close_statement(to_server, &server_name(victim));
            self.plan.push(Entry {
                kind: Kind::Swallow(Expect::Close),
                rename: None,
                undo: Undo {
                    client: None,
                    server: ServerUndo::Reprepare(victim, schema),
                },
            });
        }
    }

    pub(super) fn ensure_probe(&mut self, to_server: &mut BytesMut) {
        if self.server.probe {
            return;
        }
        self.server.probe = true;
        let body = PROBE_NAME.len() + 1 + PROBE_QUERY.len() + 1 + 2;
        put_header(to_server, b'P', fixed_length(body));
        put_cstr(to_server, PROBE_NAME);
        put_cstr(to_server, PROBE_QUERY);
        to_server.put_i16(0);
        self.plan.push(Entry {
            kind: Kind::Swallow(Expect::Parse),
            rename: None,
            undo: Undo {
                client: None,
                server: ServerUndo::Unprobe,
            },
        });
    }
}
