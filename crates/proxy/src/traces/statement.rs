//! What a session and a pool note about a traced statement while it runs:
//! plain instants and durations, turned into spans once it is over.

use std::net::SocketAddr;
use std::time::Instant;

use opentelemetry::Context;

use crate::server::ConnectTrace;

/// One statement that carried a sampled trace context.
#[derive(Debug)]
pub(crate) struct Statement {
    /// The app's span.
    pub(crate) parent: Context,
    pub(crate) database: String,
    pub(crate) server: Option<SocketAddr>,
    /// From the request's arrival to the server connection's attachment,
    /// for the first traced statement of an attachment.
    pub(crate) pool_wait: Option<(Instant, Instant)>,
    /// The server connection was opened for this client.
    pub(crate) connect: Option<Box<ConnectTrace>>,
    /// When its bytes were written to the server.
    pub(crate) sent: Option<Instant>,
    /// ReadyForQuery messages still to come before its reply is complete.
    pub(crate) readies_left: u32,
    /// The first error the server answered with.
    pub(crate) sqlstate: Option<[u8; 5]>,
    /// Retries, timeouts: (when, name, detail).
    pub(crate) events: Vec<(Instant, &'static str, String)>,
    /// The masked text, when `tracing.statement_text` is on.
    pub(crate) text: Option<String>,
}

/// A session's traced statements in flight, and what its last attachment
/// cost until a traced statement claims it. Empty (and never allocating)
/// for statements without a trace context.
#[derive(Debug, Default)]
pub(crate) struct InSession {
    /// Made with tracing on only (at the first attachment or traced
    /// statement): every session, idle ones too, holds this field.
    traced: Option<Box<Traced>>,
}

#[derive(Debug, Default)]
struct Traced {
    attach: Option<Attach>,
    statements: Vec<Statement>,
}

#[derive(Debug)]
struct Attach {
    began: Instant,
    attached: Instant,
    born: Option<Box<ConnectTrace>>,
}

impl InSession {
    fn traced(&mut self) -> &mut Traced {
        self.traced.get_or_insert_with(Default::default)
    }

    /// The statements in flight (none without tracing).
    fn statements(&mut self) -> &mut [Statement] {
        match &mut self.traced {
            Some(t) => &mut t.statements,
            None => &mut [],
        }
    }

    /// A server connection was attached after a wait from `began`;
    /// `born` says how it was opened, if it was opened for this client.
    pub(crate) fn attached(&mut self, began: Instant, born: Option<Box<ConnectTrace>>) {
        self.traced().attach = Some(Attach {
            began,
            attached: Instant::now(),
            born,
        });
    }

    /// The connection was given back: the next attachment is another's.
    pub(crate) fn detached(&mut self) {
        if let Some(t) = &mut self.traced {
            t.attach = None;
            t.statements.clear();
        }
    }

    /// A statement under `parent` is on its way to `server`, which owes
    /// `owed` ReadyForQuery messages before this one's.
    pub(crate) fn begin(
        &mut self,
        parent: Context,
        database: &str,
        server: SocketAddr,
        owed: u32,
        text: Option<String>,
    ) {
        let traced = self.traced();
        let (pool_wait, connect) = match traced.attach.take() {
            Some(a) => (Some((a.began, a.attached)), a.born),
            None => (None, None),
        };
        traced.statements.push(Statement {
            parent,
            database: database.to_owned(),
            server: Some(server),
            pool_wait,
            connect,
            sent: None,
            readies_left: owed.saturating_add(1),
            sqlstate: None,
            events: Vec::new(),
            text,
        });
    }

    /// Whether a traced statement is in flight.
    #[inline]
    pub(crate) fn is_empty(&self) -> bool {
        self.traced.as_ref().is_none_or(|t| t.statements.is_empty())
    }

    /// Client bytes were written to the server: statements not yet sent
    /// now are.
    #[inline]
    pub(crate) fn sent(&mut self) {
        if self.is_empty() {
            return;
        }
        let now = Instant::now();
        for s in self.statements().iter_mut().filter(|s| s.sent.is_none()) {
            s.sent = Some(now);
        }
    }

    /// The server answered the earliest statement in flight with an error.
    pub(crate) fn error(&mut self, sqlstate: Option<&[u8]>) {
        let Some(code) = sqlstate.and_then(|c| <[u8; 5]>::try_from(c).ok()) else {
            return;
        };
        if let Some(s) = self.statements().iter_mut().find(|s| s.sqlstate.is_none()) {
            s.sqlstate = Some(code);
        }
    }

    /// Something happened to the statements in flight (a retry, a timeout).
    pub(crate) fn event(&mut self, name: &'static str, detail: &str) {
        if self.is_empty() {
            return;
        }
        let now = Instant::now();
        for s in self.statements() {
            s.events.push((now, name, detail.to_owned()));
        }
    }

    /// A retry landed on a connection opened for it.
    pub(crate) fn reconnected(&mut self, born: Option<Box<ConnectTrace>>) {
        if let Some(s) = self
            .statements()
            .first_mut()
            .filter(|s| s.connect.is_none())
        {
            s.connect = born;
        }
    }

    /// `n` ReadyForQuery messages arrived: statements whose reply is now
    /// complete become spans.
    pub(crate) fn readies(&mut self, n: u64, now: Instant, traces: &super::Traces) {
        let Some(t) = &mut self.traced else {
            return;
        };
        let n = u32::try_from(n).unwrap_or(u32::MAX);
        let mut i = 0;
        while i < t.statements.len() {
            let s = &mut t.statements[i];
            s.readies_left = s.readies_left.saturating_sub(n);
            if s.readies_left == 0 {
                traces.finish_statement(t.statements.remove(i), now);
            } else {
                i += 1;
            }
        }
    }
}
