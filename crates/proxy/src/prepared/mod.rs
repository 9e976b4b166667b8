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

use pgwake_protocol::sql;
use std::borrow::Borrow;
use std::collections::{HashMap, HashSet, VecDeque};
use std::fmt;
use std::hash::{BuildHasher, BuildHasherDefault, Hash, Hasher, RandomState};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::{BufMut, BytesMut};
use pgwake_protocol::backend::parse::error_fields;
use thiserror::Error;

/// Length of a server statement name: `pgwake_` and 16 hex digits.
pub const SERVER_NAME_LEN: usize = 23;

/// A statement pgwake keeps on a server connection only so that a client's
/// Parse of a name it already uses fails there as it would in the client's
/// own session (see [`Rewriter`]). `ROLLBACK` parses even in a failed
/// transaction, so preparing it never fails; it is never executed.
const PROBE_NAME: &[u8] = b"pgwake_probe";
const PROBE_QUERY: &[u8] = b"ROLLBACK";

/// The server statement name for a content hash.
pub fn server_name(hash: u64) -> [u8; SERVER_NAME_LEN] {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut name = *b"pgwake_0000000000000000";
    for (i, byte) in hash.to_be_bytes().into_iter().enumerate() {
        name[7 + 2 * i] = HEX[usize::from(byte >> 4)];
        name[8 + 2 * i] = HEX[usize::from(byte & 0xf)];
    }
    name
}

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

/// Server frames whose whole body the [`ReplyTracker`] needs: ErrorResponse
/// (renamed statements), CommandComplete (`DISCARD ALL`) and ReadyForQuery
/// (transaction status).
#[inline]
pub fn server_frame_read_whole(tag: u8) -> bool {
    matches!(tag, b'E' | b'C' | b'Z')
}

/// The keyed hash that names server statements. One per pool: every client
/// of a pool must derive the same name from the same content. The key is
/// random per process, so nobody can craft a statement whose name collides
/// with another client's.
///
/// It also counts the schema changes the pool's connections reported
/// ("cached plan must not change result type"): a server statement
/// prepared before the last one is not used for a client statement
/// prepared after it (see [`StatementSpec`]).
#[derive(Clone, Default)]
pub struct StatementHasher {
    key: RandomState,
    schema: Arc<AtomicU64>,
    /// The client's `search_path` (a fingerprint; 0: the server's): the
    /// same text under another one may mean other tables, so it is another
    /// server statement.
    settings: u64,
}

impl StatementHasher {
    pub fn new() -> Self {
        StatementHasher::default()
    }

    /// This hasher for a client whose `search_path` has fingerprint `settings`.
    pub fn for_settings(&self, settings: u64) -> Self {
        StatementHasher {
            settings,
            ..self.clone()
        }
    }

    fn hash(&self, content: &[u8]) -> u64 {
        self.key.hash_one((self.settings, content))
    }

    /// The hash of a SQL `PREPARE`'s text after the name: never the same
    /// input as a Parse's content.
    fn hash_sql(&self, rest: &[u8]) -> u64 {
        self.key.hash_one((self.settings, b'S', rest))
    }

    /// Schema changes reported so far.
    pub fn schema_epoch(&self) -> u64 {
        self.schema.load(Ordering::Relaxed)
    }

    fn schema_changed(&self) {
        self.schema.fetch_add(1, Ordering::Relaxed);
    }
}

impl fmt::Debug for StatementHasher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("StatementHasher")
    }
}

/// A client's named statement: its Parse as the client sent it, or the
/// text of its SQL `PREPARE`, which is all it takes to prepare it again on
/// another server connection.
pub struct StatementSpec {
    /// The Parse body: name, NUL, query text, NUL, parameter count and
    /// types; for SQL: name, NUL, the `PREPARE` text after the name.
    parse: Box<[u8]>,
    name_len: usize,
    /// Hash of everything after the name.
    hash: u64,
    /// Prepared by SQL `PREPARE` (parameter types by name, so it is
    /// prepared on a connection by `PREPARE` too).
    sql: bool,
    /// The pool's schema epoch when the client prepared it: a server
    /// statement prepared in an earlier one may return rows of another
    /// shape than the client's statement would, and is prepared anew.
    epoch: u64,
}

impl StatementSpec {
    fn new(body: &[u8], name_len: usize, hasher: &StatementHasher) -> Self {
        StatementSpec {
            hash: hasher.hash(&body[name_len + 1..]),
            parse: body.into(),
            name_len,
            sql: false,
            epoch: hasher.schema_epoch(),
        }
    }

    /// The statement of `PREPARE name rest`.
    fn new_sql(name: &[u8], rest: &[u8], hasher: &StatementHasher) -> Self {
        let mut parse = Vec::with_capacity(name.len() + 1 + rest.len());
        parse.extend_from_slice(name);
        parse.push(0);
        parse.extend_from_slice(rest);
        StatementSpec {
            hash: hasher.hash_sql(rest),
            parse: parse.into(),
            name_len: name.len(),
            sql: true,
            epoch: hasher.schema_epoch(),
        }
    }

    /// The client's name for it.
    pub fn name(&self) -> &[u8] {
        &self.parse[..self.name_len]
    }

    /// Query text, NUL, parameter count and types: the Parse body after the name.
    fn content(&self) -> &[u8] {
        &self.parse[self.name_len + 1..]
    }

    /// The query text.
    pub fn query(&self) -> &[u8] {
        let c = self.content();
        &c[..c.iter().position(|&b| b == 0).unwrap_or(c.len())]
    }

    /// The parameter type OIDs the client declared (as far as they are well formed).
    pub fn param_types(&self) -> impl Iterator<Item = u32> + '_ {
        let types = self.content().get(self.query().len() + 3..).unwrap_or(&[]);
        types
            .chunks_exact(4)
            .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]))
    }

    /// The content hash the server name is derived from.
    pub fn hash(&self) -> u64 {
        self.hash
    }

    /// Its name on server connections.
    pub fn server_name(&self) -> [u8; SERVER_NAME_LEN] {
        server_name(self.hash)
    }
}

impl fmt::Debug for StatementSpec {
    // No query text: it may carry secrets (`ALTER ROLE … PASSWORD '…'`).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StatementSpec")
            .field("name", &String::from_utf8_lossy(self.name()))
            .field("hash", &format_args!("{:016x}", self.hash))
            .finish()
    }
}

/// A spec in a set keyed by its client name.
#[derive(Debug, Clone)]
struct ByName(Arc<StatementSpec>);

impl Borrow<[u8]> for ByName {
    fn borrow(&self) -> &[u8] {
        self.0.name()
    }
}

impl Hash for ByName {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.0.name().hash(state)
    }
}

impl PartialEq for ByName {
    fn eq(&self, other: &Self) -> bool {
        self.0.name() == other.0.name()
    }
}

impl Eq for ByName {}

/// One client's named statements, by the client's names.
#[derive(Debug)]
pub struct ClientStatements {
    by_name: HashSet<ByName>,
    hasher: StatementHasher,
}

impl ClientStatements {
    /// `hasher`: the pool's, shared by all its clients.
    pub fn new(hasher: StatementHasher) -> Self {
        ClientStatements {
            by_name: HashSet::new(),
            hasher,
        }
    }

    pub fn get(&self, name: &[u8]) -> Option<&Arc<StatementSpec>> {
        self.by_name.get(name).map(|b| &b.0)
    }

    pub fn len(&self) -> usize {
        self.by_name.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }

    /// Forgets every statement (`DEALLOCATE ALL`, `DISCARD ALL`, or a lost
    /// server connection in the middle of a transaction).
    pub fn clear(&mut self) {
        self.by_name.clear();
    }

    pub fn iter(&self) -> impl Iterator<Item = &Arc<StatementSpec>> {
        self.by_name.iter().map(|b| &b.0)
    }

    fn put(&mut self, spec: Arc<StatementSpec>) {
        self.by_name.replace(ByName(spec));
    }

    fn take(&mut self, name: &[u8]) -> Option<Arc<StatementSpec>> {
        self.by_name.take(name).map(|b| b.0)
    }
}

/// Cache counts of one server connection, for metrics.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct CacheCounts {
    /// Statements a client used that were prepared on the connection already.
    pub hits: u64,
    /// Statements that had to be prepared on the connection first.
    pub misses: u64,
    /// Statements closed to stay within the bound.
    pub evictions: u64,
}

/// Identity hash for keys that are hashes already.
#[derive(Default)]
struct PassThrough(u64);

impl Hasher for PassThrough {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

const NIL: usize = usize::MAX;

#[derive(Debug, Clone, Copy)]
struct Node {
    hash: u64,
    /// Towards the most recently used end.
    newer: usize,
    older: usize,
    /// The epoch of the last Bind: its portal may still be open.
    pinned: u64,
    /// The pool's schema epoch when it was prepared.
    schema: u64,
}

/// The statements pgwake prepared on one server connection, by content
/// hash, in an LRU list bounded by `max`. Lookups, uses and evictions cost a
/// hash lookup and a few index updates; nodes are reused, so a connection in
/// steady state allocates nothing.
///
/// A statement bound since the connection was last idle with nothing in
/// flight is not evicted: closing a statement closes the portals made from
/// it, and a client may still fetch from one (a cursor inside a
/// transaction). The bound is then exceeded until the next eviction.
#[derive(Debug)]
pub struct ServerStatements {
    max: usize,
    index: HashMap<u64, usize, BuildHasherDefault<PassThrough>>,
    nodes: Vec<Node>,
    free: Vec<usize>,
    mru: usize,
    lru: usize,
    epoch: u64,
    /// [`PROBE_NAME`] is prepared.
    probe: bool,
    counts: CacheCounts,
}

impl ServerStatements {
    /// At most `max` statements (at least 1) stay prepared.
    pub fn new(max: usize) -> Self {
        ServerStatements {
            max: max.max(1),
            index: HashMap::default(),
            nodes: Vec::new(),
            free: Vec::new(),
            mru: NIL,
            lru: NIL,
            epoch: 1,
            probe: false,
            counts: CacheCounts::default(),
        }
    }

    pub fn max(&self) -> usize {
        self.max
    }

    pub fn len(&self) -> usize {
        self.index.len()
    }

    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    /// Whether the statement with this content hash is prepared (or about
    /// to be, by a message already sent).
    pub fn contains(&self, hash: u64) -> bool {
        self.index.contains_key(&hash)
    }

    /// Content hashes, most recently used first.
    pub fn iter(&self) -> impl Iterator<Item = u64> + '_ {
        let mut at = self.mru;
        std::iter::from_fn(move || {
            let n = self.nodes.get(at)?;
            at = n.older;
            Some(n.hash)
        })
    }

    /// Forgets everything: the server's statements are gone (`DISCARD ALL`,
    /// `DEALLOCATE ALL`) or cannot be vouched for.
    pub fn invalidate(&mut self) {
        self.index.clear();
        self.nodes.clear();
        self.free.clear();
        self.mru = NIL;
        self.lru = NIL;
        self.probe = false;
    }

    /// The counts since the last call.
    pub fn take_counts(&mut self) -> CacheCounts {
        std::mem::take(&mut self.counts)
    }

    /// Marks a use of a statement that must have been prepared in schema
    /// epoch `since` or later.
    fn touch(&mut self, hash: u64, since: u64) -> Lookup {
        let Some(&i) = self.index.get(&hash) else {
            return Lookup::Missing;
        };
        let schema = self.nodes[i].schema;
        if schema < since {
            self.remove(hash);
            return Lookup::Stale(schema);
        }
        self.unlink(i);
        self.link_newest(i);
        Lookup::Ready
    }

    /// Adds a statement not yet present as the most recently used.
    fn insert(&mut self, hash: u64, schema: u64) {
        let i = self.new_node(hash, schema);
        self.link_newest(i);
    }

    /// Puts back a statement whose Close the server ignored, as the least
    /// recently used.
    fn restore(&mut self, hash: u64, schema: u64) {
        if !self.contains(hash) {
            let i = self.new_node(hash, schema);
            self.link_oldest(i);
        }
    }

    /// Forgets a statement; its schema epoch if it was there.
    fn remove(&mut self, hash: u64) -> Option<u64> {
        let i = self.index.remove(&hash)?;
        self.unlink(i);
        self.free.push(i);
        Some(self.nodes[i].schema)
    }

    /// The statement to close before another is prepared, if the bound is
    /// reached: the least recently used one without a possibly open portal.
    fn victim(&self) -> Option<u64> {
        if self.len() < self.max {
            return None;
        }
        let mut at = self.lru;
        while let Some(n) = self.nodes.get(at) {
            if n.pinned != self.epoch {
                return Some(n.hash);
            }
            at = n.newer;
        }
        None
    }

    fn pin(&mut self, hash: u64) {
        if let Some(&i) = self.index.get(&hash) {
            self.nodes[i].pinned = self.epoch;
        }
    }

    /// The connection is idle with nothing in flight: no portal is open.
    fn unpin_all(&mut self) {
        self.epoch += 1;
    }

    fn new_node(&mut self, hash: u64, schema: u64) -> usize {
        let node = Node {
            hash,
            newer: NIL,
            older: NIL,
            pinned: 0,
            schema,
        };
        let i = match self.free.pop() {
            Some(i) => {
                self.nodes[i] = node;
                i
            }
            None => {
                self.nodes.push(node);
                self.nodes.len() - 1
            }
        };
        self.index.insert(hash, i);
        i
    }

    fn unlink(&mut self, i: usize) {
        let Node { newer, older, .. } = self.nodes[i];
        match self.nodes.get_mut(newer) {
            Some(n) => n.older = older,
            None => self.mru = older,
        }
        match self.nodes.get_mut(older) {
            Some(n) => n.newer = newer,
            None => self.lru = newer,
        }
    }

    fn link_newest(&mut self, i: usize) {
        self.nodes[i].newer = NIL;
        self.nodes[i].older = self.mru;
        match self.nodes.get_mut(self.mru) {
            Some(n) => n.newer = i,
            None => self.lru = i,
        }
        self.mru = i;
    }

    fn link_oldest(&mut self, i: usize) {
        self.nodes[i].older = NIL;
        self.nodes[i].newer = self.lru;
        match self.nodes.get_mut(self.lru) {
            Some(n) => n.older = i,
            None => self.mru = i,
        }
        self.lru = i;
    }
}

/// A statement looked up on a server connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Lookup {
    Ready,
    Missing,
    /// Prepared in this schema epoch, before a change the client's
    /// statement postdates: forgotten, to be closed and prepared anew.
    Stale(u64),
}

/// The replies that end a message's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
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
    fn ends_at(self, tag: u8) -> bool {
        match self {
            Expect::Parse => tag == b'1',
            Expect::Bind => tag == b'2',
            Expect::Close => tag == b'3',
            Expect::DescribeStatement | Expect::DescribePortal => tag == b'T' || tag == b'n',
            Expect::Execute => matches!(tag, b'C' | b'I' | b's'),
            Expect::Sync | Expect::Ready | Expect::Doomed => tag == b'Z',
        }
    }

    fn ends_with_ready(self) -> bool {
        matches!(self, Expect::Sync | Expect::Ready | Expect::Doomed)
    }
}

#[derive(Debug)]
enum Kind {
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
enum Rename {
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
    fn apply(&self, body: &[u8], out: &mut BytesMut) -> bool {
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
    fn statement(&self) -> Option<u64> {
        match self {
            Rename::Statement(s) => Some(s.hash),
            Rename::Sql(s) => s.hash,
            Rename::Probe(_) | Rename::Replace(_) => None,
        }
    }
}

/// What to restore if the server did not carry a message out.
#[derive(Debug, Default)]
struct Undo {
    client: Option<ClientUndo>,
    server: ServerUndo,
}

impl Undo {
    fn is_some(&self) -> bool {
        self.client.is_some() || !matches!(self.server, ServerUndo::None)
    }
}

#[derive(Debug)]
struct ClientUndo {
    /// A spec with the name concerned.
    name: Arc<StatementSpec>,
    /// What the name stood for before.
    prev: Option<Arc<StatementSpec>>,
}

#[derive(Debug, Default)]
enum ServerUndo {
    #[default]
    None,
    /// A Parse that failed or was ignored: not prepared.
    Unprepare(u64),
    /// A Close that was ignored: still prepared (in this schema epoch).
    Reprepare(u64, u64),
    Unprobe,
}

#[derive(Debug)]
struct Entry {
    kind: Kind,
    rename: Option<Rename>,
    undo: Undo,
}

impl Entry {
    fn forward(expect: Expect) -> Self {
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
pub struct ReplyPlan {
    entries: VecDeque<Entry>,
    /// Transaction status of the last ReadyForQuery.
    status: u8,
    /// An extended-protocol message failed and no Sync was sent since: the
    /// server ignores everything up to the next Sync.
    skipping: bool,
    /// The server is reading COPY data and the client has not ended it.
    copy_in: bool,
    /// Entries with an [`Undo`] before the last Sync in the plan, and after it.
    changes_synced: usize,
    changes_open: usize,
    /// Sync entries, and Query or FunctionCall entries, in the plan.
    syncs: usize,
    queries: usize,
    /// Entries to undo, newest last (kept to reuse its allocation).
    scratch: Vec<Entry>,
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
            status: b'I',
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

    fn push(&mut self, e: Entry) {
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

    fn pop(&mut self) -> Option<Entry> {
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
    fn must_wait(&self) -> bool {
        self.changes_synced > 0 || self.queries > 0
    }

    /// The server cannot be in a failed transaction when it reaches the
    /// next message, unless a message before it in the same pipeline part
    /// fails (and then the server skips that message anyway).
    fn certainly_not_aborted(&self) -> bool {
        self.syncs == 0 && self.queries == 0 && self.status != b'E'
    }

    /// Whether the last message in the plan gets a ReadyForQuery, so that
    /// every one before it will be answered.
    fn ends_synced(&self) -> bool {
        self.entries.back().is_none_or(|e| match e.kind {
            Kind::Forward(x) => x.ends_with_ready(),
            Kind::Swallow(x) => x == Expect::Sync,
            _ => false,
        })
    }

    /// Gives the answers that are due: pgwake's own at the head.
    fn settle(&mut self, to_client: &mut BytesMut) {
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
    fn copy_started(&mut self) {
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
pub struct Rewriter<'a> {
    pub client: &'a mut ClientStatements,
    pub server: &'a mut ServerStatements,
    pub plan: &'a mut ReplyPlan,
}

impl Rewriter<'_> {
    /// Handles the client message `tag` with `body` (whole for the tags of
    /// [`client_frame_read_whole`]). Appends what goes to the server before
    /// or instead of the frame to `to_server`, and pgwake's own replies that
    /// are due now to `to_client` (to be written after everything already
    /// forwarded to the client).
    pub fn message(
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

    fn forward(&mut self, expect: Expect) -> Step {
        self.plan.push(Entry::forward(expect));
        Step::Pass
    }

    fn parse(&mut self, body: &[u8], to_server: &mut BytesMut) -> Result<Step, TooLarge> {
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
        let len = length(b'P', SERVER_NAME_LEN + 1 + content)?;
        let spec = Arc::new(StatementSpec::new(body, name.len(), &self.client.hasher));
        self.client.put(spec.clone());
        let hash = spec.hash;
        let client = Some(ClientUndo {
            name: spec.clone(),
            prev: None,
        });
        if self.use_statement(&spec, to_server) {
            if self.plan.certainly_not_aborted() {
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
        self.plan.push(Entry {
            kind: Kind::Forward(Expect::Parse),
            rename: Some(Rename::Statement(spec)),
            undo: Undo {
                client,
                server: ServerUndo::Unprepare(hash),
            },
        });
        Ok(Step::Tail(rest))
    }

    fn bind(&mut self, body: &[u8], to_server: &mut BytesMut) -> Result<Step, TooLarge> {
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

    fn describe(&mut self, body: &[u8], to_server: &mut BytesMut) -> Result<Step, TooLarge> {
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

    fn close(&mut self, body: &[u8]) -> Step {
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
    fn use_statement(&mut self, spec: &StatementSpec, to_server: &mut BytesMut) -> bool {
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
    fn ensure_prepared(
        &mut self,
        spec: &Arc<StatementSpec>,
        to_server: &mut BytesMut,
    ) -> Result<(), TooLarge> {
        let hash = spec.hash;
        let content = spec.content();
        let len = length(b'P', SERVER_NAME_LEN + 1 + content.len())?;
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
        to_server.put_slice(content);
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
    fn make_room(&mut self, to_server: &mut BytesMut) {
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

    fn ensure_probe(&mut self, to_server: &mut BytesMut) {
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
pub struct ReplyTracker<'a> {
    pub client: &'a mut ClientStatements,
    pub server: &'a mut ServerStatements,
    pub plan: &'a mut ReplyPlan,
}

impl ReplyTracker<'_> {
    /// Handles the start of a server frame: `body` is whole for the tags of
    /// [`server_frame_read_whole`] (and may be empty for others). Bytes
    /// appended to `to_client` go to the client right after the frame (or
    /// in its place when it is dropped). A dropped frame's later body bytes
    /// are dropped too.
    pub fn frame(&mut self, tag: u8, body: &[u8], to_client: &mut BytesMut) -> Verdict {
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

    fn error(&mut self, body: &[u8], to_client: &mut BytesMut) -> Verdict {
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
                    let head = self.plan.entries.front().expect("head");
                    apply_undo(self.client, self.server, &head.undo);
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
    fn failed(&mut self, body: &[u8], to_client: &mut BytesMut) -> Verdict {
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

    fn ready(&mut self, body: &[u8], to_client: &mut BytesMut) -> Verdict {
        let plan = &mut *self.plan;
        let status = body.first().copied().unwrap_or(b'I');
        plan.status = status;
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
    fn undo_scratch(&mut self) {
        while let Some(e) = self.plan.scratch.pop() {
            apply_undo(self.client, self.server, &e.undo);
        }
    }
}

fn apply_undo(client: &mut ClientStatements, server: &mut ServerStatements, undo: &Undo) {
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
fn is_stale_plan(body: &[u8]) -> bool {
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

fn is_deallocate_all(body: &[u8]) -> bool {
    body == b"DISCARD ALL\0" || body == b"DEALLOCATE ALL\0"
}

/// The NUL-terminated string at `body[at..]` and the offset after its NUL.
fn cstr(body: &[u8], at: usize) -> Option<(&[u8], usize)> {
    let s = body.get(at..)?;
    let end = s.iter().position(|&b| b == 0)?;
    Some((&s[..end], at + end + 1))
}

/// The length field of a message with a body of `body` bytes.
fn length(tag: u8, body: usize) -> Result<i32, TooLarge> {
    body.checked_add(4)
        .and_then(|n| i32::try_from(n).ok())
        .ok_or(TooLarge {
            tag: char::from(tag),
            len: body,
        })
}

/// The length field of one of pgwake's own small messages.
fn fixed_length(body: usize) -> i32 {
    i32::try_from(body + 4).unwrap_or(i32::MAX)
}

fn put_header(out: &mut BytesMut, tag: u8, len: i32) {
    out.put_u8(tag);
    out.put_i32(len);
}

fn put_cstr(out: &mut BytesMut, s: &[u8]) {
    out.put_slice(s);
    out.put_u8(0);
}

/// A message without a body: ParseComplete, CloseComplete.
fn put_empty(out: &mut BytesMut, tag: u8) {
    put_header(out, tag, 4);
}

fn put_describe_statement(out: &mut BytesMut, name: &[u8]) {
    put_header(out, b'D', fixed_length(name.len() + 2));
    out.put_u8(b'S');
    put_cstr(out, name);
}

fn put_close_statement(out: &mut BytesMut, name: &[u8]) {
    put_header(out, b'C', fixed_length(name.len() + 2));
    out.put_u8(b'S');
    put_cstr(out, name);
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() {
        return None;
    }
    hay.windows(needle.len()).position(|w| w == needle)
}

/// What becomes of an error's position (field `P`, 1-based, in characters)
/// when the query text was changed on the way to the server.
#[derive(Debug, Clone, Copy)]
enum Position {
    Keep,
    /// It points into text pgwake wrote.
    Drop,
    /// `new` characters at offset `at` replaced `old` ones of the client's text.
    Shift {
        at: usize,
        old: usize,
        new: usize,
    },
}

impl Position {
    fn map(self, value: &[u8]) -> Option<Vec<u8>> {
        let Position::Shift { at, old, new } = self else {
            return matches!(self, Position::Keep).then(|| value.to_vec());
        };
        let p: usize = std::str::from_utf8(value).ok()?.parse().ok()?;
        let p = match p.checked_sub(1)? {
            i if i < at => p,
            i if i < at + new => at + 1,
            _ => p - new + old,
        };
        Some(p.to_string().into_bytes())
    }
}

/// Writes the ErrorResponse `body` with every `from` replaced by `to`, as
/// the client's own session would have named the statement, and its
/// position mapped; false (and nothing written) when that changes nothing.
fn edit_error(body: &[u8], from: &[u8], to: &[u8], position: Position, out: &mut BytesMut) -> bool {
    if find(body, from).is_none() && matches!(position, Position::Keep) {
        return false;
    }
    let start = out.len();
    out.put_u8(b'E');
    out.put_i32(0);
    for (code, mut value) in error_fields(body) {
        if code == b'P' {
            if let Some(p) = position.map(value) {
                out.put_u8(code);
                put_cstr(out, &p);
            }
            continue;
        }
        out.put_u8(code);
        while let Some(at) = find(value, from) {
            out.put_slice(&value[..at]);
            out.put_slice(to);
            value = &value[at + from.len()..];
        }
        put_cstr(out, value);
    }
    out.put_u8(0);
    match i32::try_from(out.len() - start - 1) {
        Ok(len) => {
            out[start + 1..start + 5].copy_from_slice(&len.to_be_bytes());
            true
        }
        Err(_) => {
            out.truncate(start);
            false
        }
    }
}

mod sql_commands;
#[cfg(test)]
mod tests;
