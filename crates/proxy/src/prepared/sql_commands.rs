//! SQL `PREPARE`, `EXECUTE` and `DEALLOCATE` in transaction mode, per client.
//!
//! A client's SQL-prepared statements live in its statement map next to
//! its protocol-level ones (PostgreSQL keeps one namespace for both). On a
//! server connection they are prepared by `PREPARE` under the same content
//! hashed names, in the same LRU:
//!
//! - `PREPARE name …`: a name new to the client is recorded; when the
//!   connection has the statement pgwake answers `PREPARE` itself,
//!   otherwise the query goes out with the server name in place of the
//!   client's. A name the client uses already goes out as `PREPARE
//!   pgwake_probe …`, so that the server fails it in step (syntax and
//!   analysis errors first, then 42P05, the transaction aborted).
//! - `EXECUTE name …`: the server name replaces the client's, after
//!   preparing the statement on the connection if needed. An unknown name
//!   becomes one no connection has, so the server reports 26000.
//! - `DEALLOCATE name` / `DEALLOCATE ALL` forget the client's statements
//!   only, answered by pgwake; the connection keeps its statements for
//!   other clients. An unknown name is sent as for `EXECUTE`.
//!
//! Errors name the client's statement and point into the client's text.
//! What the server would refuse regardless (in a failed transaction,
//! syntax errors) goes out as it came. One of these statements followed by
//! others in the same query gets 0A000: splitting it would change what the
//! server sees, and relaying it would share its names with other clients.

use std::sync::Arc;

use bytes::{BufMut, BytesMut};
use pgwake_protocol::backend::{self, ErrorMessage};
use pgwake_protocol::{sqlstate, TxStatus};

use super::names::{StatementSpec, PROBE_NAME, SERVER_NAME_LEN};
use super::plan::{ClientUndo, Entry, Expect, Kind, Rename, ServerUndo, Undo};
use super::rewrite::{Rewriter, Step, TooLarge};
use super::wire::{
    edit_error, fixed_length, length, put_close_statement, put_cstr, put_header, Position,
};
use pgwake_protocol::sql::{self, Command, Name, Parsed};

/// A name no connection has a statement by: stands for one the client
/// does not have, so that the server reports it missing in step.
const UNKNOWN_NAME: &[u8] = b"pgwake_unknown";
/// pgwake's own statement and portal that run `PREPARE` for a SQL-prepared
/// statement used by Bind, Describe or `EXECUTE` on a connection that lacks it.
const HELPER: &[u8] = b"pgwake_sql";
const PREPARE: &[u8] = b"PREPARE ";
/// Fails everywhere without side effects: aborts the transaction, as the
/// client's refused statement would, when pgwake answers with its own error.
const FAILING_QUERY: &[u8] = b"SELECT 1/0";

/// A query sent with another statement name than the client wrote.
#[derive(Debug)]
pub(super) struct Spliced {
    /// The name the server saw.
    from: Box<[u8]>,
    /// The client's.
    to: Box<[u8]>,
    position: Position,
    /// The server statement used, if any.
    pub(super) hash: Option<u64>,
}

impl Spliced {
    pub(super) fn apply(&self, body: &[u8], out: &mut BytesMut) -> bool {
        edit_error(body, &self.from, &self.to, self.position, out)
    }
}

/// Whether pgwake's Parse preparing a SQL statement with `rest_len` bytes
/// of text after its name fits a message.
pub(super) fn check_prepare_len(rest_len: usize) -> Result<(), TooLarge> {
    let body = HELPER.len() + 1 + PREPARE.len() + SERVER_NAME_LEN + 1 + rest_len + 1 + 2;
    length(b'P', body).map(drop)
}

/// CommandComplete and ReadyForQuery, as the server sends them.
fn put_reply(out: &mut BytesMut, tag: &str, status: u8) {
    backend::command_complete(out, tag);
    backend::ready_for_query(out, status);
}

impl Rewriter<'_> {
    /// A simple Query: relayed unless it is one of the SQL commands above.
    pub(super) fn query(
        &mut self,
        body: &[u8],
        to_server: &mut BytesMut,
        to_client: &mut BytesMut,
    ) -> Result<Step, TooLarge> {
        let parsed = sql::parse(body);
        if matches!(parsed, Parsed::Other | Parsed::Invalid) {
            return Ok(self.forward(Expect::Ready));
        }
        // What these do depends on the session as it stands once every
        // earlier message is answered: wait for that.
        if !self.plan.entries.is_empty() {
            if !self.plan.ends_synced() {
                // Extended-protocol messages without a Sync would never be
                // answered: end them, as the query would.
                self.sync_own(to_server);
            }
            return Ok(Step::Wait);
        }
        if self.status == TxStatus::Failed {
            // Refused by the server as in the client's session: 25P02, or
            // a syntax error first.
            return Ok(self.forward(Expect::Ready));
        }
        let status = self.status.byte();
        let text = &body[..body.len() - 1];
        match parsed {
            Parsed::Command(Command::Prepare { name, rest }) => {
                if self.client.get(&name.folded).is_some() {
                    self.ensure_probe(to_server);
                    return self.send_spliced(
                        text,
                        &name,
                        PROBE_NAME,
                        None,
                        Undo::default(),
                        to_server,
                    );
                }
                let rest = &text[rest.0..rest.1];
                check_prepare_len(rest.len())?;
                let spec = Arc::new(StatementSpec::new_sql(
                    &name.folded,
                    rest,
                    &self.client.hasher,
                ));
                self.client.put(spec.clone());
                if self.use_statement(&spec, to_server) {
                    put_reply(to_client, "PREPARE", status);
                    return Ok(Step::Replace);
                }
                let undo = Undo {
                    client: Some(ClientUndo {
                        name: spec.clone(),
                        prev: None,
                    }),
                    server: ServerUndo::Unprepare(spec.hash),
                };
                self.send_spliced(
                    text,
                    &name,
                    &spec.server_name(),
                    Some(spec.hash),
                    undo,
                    to_server,
                )
            }
            Parsed::Command(Command::Execute { name }) => {
                let Some(spec) = self.client.get(&name.folded).cloned() else {
                    return self.send_spliced(
                        text,
                        &name,
                        UNKNOWN_NAME,
                        None,
                        Undo::default(),
                        to_server,
                    );
                };
                let before = self.plan.len();
                self.ensure_prepared(&spec, to_server)?;
                if self.plan.len() > before {
                    // If preparing fails, the server skips to this Sync and
                    // the query still gets its ReadyForQuery.
                    self.sync_own(to_server);
                }
                self.send_spliced(
                    text,
                    &name,
                    &spec.server_name(),
                    Some(spec.hash),
                    Undo::default(),
                    to_server,
                )
            }
            Parsed::Command(Command::Deallocate { name }) => {
                if self.client.take(&name.folded).is_some() {
                    put_reply(to_client, "DEALLOCATE", status);
                    return Ok(Step::Replace);
                }
                self.send_spliced(text, &name, UNKNOWN_NAME, None, Undo::default(), to_server)
            }
            Parsed::Command(Command::DeallocateAll) => {
                self.client.clear();
                put_reply(to_client, "DEALLOCATE ALL", status);
                Ok(Step::Replace)
            }
            Parsed::Multiple | Parsed::Unsupported | Parsed::Other | Parsed::Invalid => {
                let message = if parsed == Parsed::Multiple {
                    "in transaction pooling mode pgwake runs PREPARE, EXECUTE and DEALLOCATE only as the one statement of a query"
                } else {
                    "pgwake does not read statement names written as U&\"…\""
                };
                let mut frame = BytesMut::new();
                ErrorMessage::error(sqlstate::FEATURE_NOT_SUPPORTED, message)
                    .with_hint("send each statement as a query of its own, or use a plain or double-quoted name")
                    .write(&mut frame);
                put_header(to_server, b'Q', length(b'Q', FAILING_QUERY.len() + 1)?);
                put_cstr(to_server, FAILING_QUERY);
                self.plan.push(Entry {
                    kind: Kind::Forward(Expect::Ready),
                    rename: Some(Rename::Replace(frame.to_vec().into())),
                    undo: Undo::default(),
                });
                Ok(Step::Tail(body.len()))
            }
        }
    }

    /// A Sync of pgwake's own: its ReadyForQuery is dropped.
    fn sync_own(&mut self, to_server: &mut BytesMut) {
        to_server.put_u8(b'S');
        to_server.put_i32(4);
        self.plan.push(Entry {
            kind: Kind::Swallow(Expect::Sync),
            rename: None,
            undo: Undo::default(),
        });
    }

    /// Sends the client's query `text` with `server` in place of the name,
    /// its replies forwarded with the client's name back.
    fn send_spliced(
        &mut self,
        text: &[u8],
        name: &Name,
        server: &[u8],
        hash: Option<u64>,
        undo: Undo,
        to_server: &mut BytesMut,
    ) -> Result<Step, TooLarge> {
        // `PREPARE"x"AS …` is valid; `PREPAREpgwake_…AS` would not be.
        let space_before = sql::joins_identifier(name.start.checked_sub(1).map(|i| &text[i]));
        let space_after = sql::joins_identifier(text.get(name.end));
        let new = server.len() + usize::from(space_before) + usize::from(space_after);
        let len = length(b'Q', name.start + new + (text.len() - name.end) + 1)?;
        put_header(to_server, b'Q', len);
        to_server.put_slice(&text[..name.start]);
        if space_before {
            to_server.put_u8(b' ');
        }
        to_server.put_slice(server);
        if space_after {
            to_server.put_u8(b' ');
        }
        self.plan.push(Entry {
            kind: Kind::Forward(Expect::Ready),
            rename: Some(Rename::Sql(Box::new(Spliced {
                from: server.into(),
                to: name.folded.as_slice().into(),
                position: Position::Shift {
                    at: sql::chars(&text[..name.start]),
                    old: sql::chars(&text[name.start..name.end]),
                    new,
                },
                hash,
            }))),
            undo,
        });
        // The relay sends the rest of the query, its NUL included.
        Ok(Step::Tail(name.end))
    }

    /// Prepares a SQL-prepared statement on the connection in the middle
    /// of whatever the client sends: `PREPARE` run through pgwake's own
    /// statement and portal, so the client's unnamed ones stay as they are.
    /// Replies are dropped; an error stands for the client's message.
    pub(super) fn prepare_by_sql(&mut self, spec: &Arc<StatementSpec>, to_server: &mut BytesMut) {
        let swallow = |expect, rename: bool, server| Entry {
            kind: Kind::Swallow(expect),
            rename: rename.then(|| Rename::Statement(spec.clone())),
            undo: Undo {
                client: None,
                server,
            },
        };
        // Left over if an earlier run failed after its Parse.
        put_close_statement(to_server, HELPER);
        self.plan
            .push(swallow(Expect::Close, false, ServerUndo::None));

        let rest = spec.content();
        let query = PREPARE.len() + SERVER_NAME_LEN + 1 + rest.len();
        put_header(
            to_server,
            b'P',
            fixed_length(HELPER.len() + 1 + query + 1 + 2),
        );
        put_cstr(to_server, HELPER);
        to_server.put_slice(PREPARE);
        to_server.put_slice(&spec.server_name());
        to_server.put_u8(b' ');
        put_cstr(to_server, rest);
        to_server.put_i16(0);
        self.plan
            .push(swallow(Expect::Parse, true, ServerUndo::None));

        // Bind: portal, statement, no parameter formats, no parameters, no
        // result formats.
        put_header(to_server, b'B', fixed_length(2 * (HELPER.len() + 1) + 6));
        put_cstr(to_server, HELPER);
        put_cstr(to_server, HELPER);
        to_server.put_i16(0);
        to_server.put_i16(0);
        to_server.put_i16(0);
        self.plan
            .push(swallow(Expect::Bind, true, ServerUndo::None));

        put_header(to_server, b'E', fixed_length(HELPER.len() + 1 + 4));
        put_cstr(to_server, HELPER);
        to_server.put_i32(0);
        self.plan.push(swallow(
            Expect::Execute,
            true,
            ServerUndo::Unprepare(spec.hash),
        ));

        put_header(to_server, b'C', fixed_length(HELPER.len() + 2));
        to_server.put_u8(b'P');
        put_cstr(to_server, HELPER);
        self.plan
            .push(swallow(Expect::Close, false, ServerUndo::None));
    }
}
