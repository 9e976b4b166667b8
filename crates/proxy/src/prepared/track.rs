//! Matching server replies against the plan, for the client attached.

use bytes::BytesMut;
use pgwake_protocol::backend::parse::error_fields;

use super::cache::ServerStatements;
use super::names::ClientStatements;
use super::plan::{Entry, Expect, Kind, ReplyPlan, ServerUndo, Undo};
use super::wire::put_empty;

/// What the relay does with a server frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The client gets it.
    Forward,
    /// The client does not get it.
    Drop,
}

/// Matches server frames against the plan of the connection, for the client
/// attached to it.
///
/// After an error in the extended protocol the server ignores messages up
/// to the next Sync: their answers (pgwake's own included) are not given and
/// what they did to the statement tables is undone. An error of an injected
/// Parse is forwarded: it stands for the client's Bind or Describe. A
/// CommandComplete of `DISCARD ALL` or `DEALLOCATE ALL` clears both the
/// connection's statements and the client's.
pub(super) struct ReplyTracker<'a> {
    pub(super) client: &'a mut ClientStatements,
    pub(super) server: &'a mut ServerStatements,
    pub(super) plan: &'a mut ReplyPlan,
}

impl ReplyTracker<'_> {
    /// Handles the start of a server frame: `body` is whole for the tags of
    /// [`server_frame_read_whole`] (and may be empty for others). Bytes
    /// appended to `to_client` go to the client right after the frame (or
    /// in its place when it is dropped). A dropped frame's later body bytes
    /// are dropped too.
    pub(super) fn frame(&mut self, tag: u8, body: &[u8], to_client: &mut BytesMut) -> Verdict {
        match tag {
            // NoticeResponse, NotificationResponse, ParameterStatus: asynchronous.
            b'N' | b'A' | b'S' => return Verdict::Forward,
            b'E' => return self.error(body, to_client),
            b'Z' => return self.ready(body, to_client),
            b'C' if is_deallocate_all(body) => {
                self.server.invalidate();
                self.client.clear();
            }
            _ => {}
        }
        let plan = &mut *self.plan;
        let Some(head) = plan.entries.front() else {
            return Verdict::Forward;
        };
        let (expect, verdict) = match head.kind {
            Kind::Forward(Expect::Doomed) => (Expect::Doomed, Verdict::Drop),
            Kind::Forward(e) => (e, Verdict::Forward),
            Kind::Swallow(e) => (e, Verdict::Drop),
            Kind::Confirm => (Expect::DescribeStatement, Verdict::Drop),
            // Never at the head once settled.
            Kind::Answer(_) | Kind::CopyEnd => return Verdict::Forward,
        };
        if tag == b'G' && matches!(expect, Expect::Execute | Expect::Ready) {
            plan.copy_started();
        }
        if expect.ends_at(tag) {
            if let Some(Entry {
                kind: Kind::Confirm,
                ..
            }) = plan.pop()
            {
                put_empty(to_client, b'1');
            }
            plan.settle(to_client);
        }
        verdict
    }

    pub(super) fn error(&mut self, body: &[u8], to_client: &mut BytesMut) -> Verdict {
        let plan = &mut *self.plan;
        plan.copy_in = false;
        if let Some(head) = plan.entries.front() {
            if let Kind::Forward(e) = head.kind {
                if e.ends_with_ready() {
                    // Query, FunctionCall, Sync: ReadyForQuery follows, no
                    // skipping; what a failed query of pgwake's did is undone.
                    if e == Expect::Doomed {
                        return Verdict::Drop;
                    }
                    let verdict = self.failed(body, to_client);
                    // `failed` leaves the plan's head in place.
                    if let Some(head) = self.plan.entries.front() {
                        apply_undo(self.client, self.server, &head.undo);
                    }
                    return verdict;
                }
            }
        }
        let verdict = self.failed(body, to_client);
        let plan = &mut *self.plan;
        let Some(failed) = plan.pop() else {
            return verdict;
        };
        let injected = matches!(failed.kind, Kind::Swallow(_));
        plan.scratch.push(failed);
        while let Some(next) = plan.entries.front() {
            if matches!(next.kind, Kind::Forward(Expect::Sync)) {
                break;
            }
            if matches!(next.kind, Kind::Swallow(Expect::Sync)) {
                // pgwake's Sync before a query whose statement it was
                // preparing: the error stood for the query.
                if let Some(query) = plan.entries.get_mut(1) {
                    if injected && matches!(query.kind, Kind::Forward(Expect::Ready)) {
                        query.kind = Kind::Forward(Expect::Doomed);
                    }
                }
                break;
            }
            let ignored = plan.pop();
            plan.scratch.extend(ignored);
        }
        if plan.entries.is_empty() {
            plan.skipping = true;
        }
        self.undo_scratch();
        verdict
    }

    /// The error of the message at the head of the plan, as the client
    /// sees it. A schema change it reports makes the pool prepare anew the
    /// statements clients prepare from now on.
    pub(super) fn failed(&mut self, body: &[u8], to_client: &mut BytesMut) -> Verdict {
        let Some(rename) = self.plan.entries.front().and_then(|e| e.rename.as_ref()) else {
            return Verdict::Forward;
        };
        if rename.statement().is_some() && is_stale_plan(body) {
            self.client.hasher.schema_changed();
        }
        if rename.apply(body, to_client) {
            Verdict::Drop
        } else {
            Verdict::Forward
        }
    }

    pub(super) fn ready(&mut self, body: &[u8], to_client: &mut BytesMut) -> Verdict {
        let plan = &mut *self.plan;
        let status = body.first().copied().unwrap_or(b'I');
        plan.skipping = false;
        plan.copy_in = false;
        let mut verdict = Verdict::Forward;
        while let Some(e) = plan.pop() {
            match e.kind {
                Kind::Forward(x) if x.ends_with_ready() => break,
                Kind::Swallow(Expect::Sync) => {
                    verdict = Verdict::Drop;
                    break;
                }
                // Answered by nothing: the server ignored it.
                _ => plan.scratch.push(e),
            }
        }
        self.undo_scratch();
        if status == b'I' && self.plan.entries.is_empty() {
            self.server.unpin_all();
        }
        self.plan.settle(to_client);
        verdict
    }

    /// Undoes the collected entries, newest first.
    pub(super) fn undo_scratch(&mut self) {
        while let Some(e) = self.plan.scratch.pop() {
            apply_undo(self.client, self.server, &e.undo);
        }
    }
}

pub(super) fn apply_undo(
    client: &mut ClientStatements,
    server: &mut ServerStatements,
    undo: &Undo,
) {
    if let Some(c) = &undo.client {
        match &c.prev {
            Some(prev) => client.put(prev.clone()),
            None => {
                client.take(c.name.name());
            }
        }
    }
    match undo.server {
        ServerUndo::None => {}
        ServerUndo::Unprepare(h) => {
            server.remove(h);
        }
        ServerUndo::Reprepare(h, schema) => server.restore(h, schema),
        ServerUndo::Unprobe => server.probe = false,
    }
}

/// "cached plan must not change result type": a statement's result
/// columns changed under it (`ALTER TABLE`, a changed `search_path`).
/// Known by the routine reporting it, which messages in other languages
/// keep.
pub(super) fn is_stale_plan(body: &[u8]) -> bool {
    let mut code = false;
    let mut routine = false;
    for (f, v) in error_fields(body) {
        match f {
            b'C' => code = v == b"0A000",
            b'R' => routine = v == b"RevalidateCachedQuery",
            b'M' if v == b"cached plan must not change result type" => routine = true,
            _ => {}
        }
    }
    code && routine
}

pub(super) fn is_deallocate_all(body: &[u8]) -> bool {
    body == b"DISCARD ALL\0" || body == b"DEALLOCATE ALL\0"
}
