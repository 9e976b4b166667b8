//! Naming statements: the client's names (its statement specs) and the
//! content-hashed names pgwake gives them on server connections.

use std::borrow::Borrow;
use std::collections::HashSet;
use std::fmt;
use std::hash::{BuildHasher, Hash, Hasher, RandomState};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Length of a server statement name: `pgwake_` and 16 hex digits.
pub const SERVER_NAME_LEN: usize = 23;

/// A statement pgwake keeps on a server connection only so that a client's
/// Parse of a name it already uses fails there as it would in the client's
/// own session (see [`Rewriter`]). `ROLLBACK` parses even in a failed
/// transaction, so preparing it never fails; it is never executed.
pub(super) const PROBE_NAME: &[u8] = b"pgwake_probe";
pub(super) const PROBE_QUERY: &[u8] = b"ROLLBACK";

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
    /// The pool's: shared by its clients (every client holds a hasher).
    pool: Arc<PoolHasher>,
    /// The client's `search_path` (a fingerprint; 0: the server's): the
    /// same text under another one may mean other tables, so it is another
    /// server statement.
    pub(super) settings: u64,
}

/// The part of [`StatementHasher`] all clients of a pool share.
#[derive(Default)]
struct PoolHasher {
    key: RandomState,
    schema: AtomicU64,
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

    /// The hash of a Parse's content (text, NUL, parameter types) given
    /// as two pieces: the same bytes hash the same however they are split.
    pub(super) fn hash(&self, before: &[u8], after: &[u8]) -> u64 {
        let mut h = self.pool.key.build_hasher();
        self.settings.hash(&mut h);
        h.write_u8(b'P');
        h.write(before);
        h.write(after);
        h.finish()
    }

    /// The hash of a SQL `PREPARE`'s text after the name: never the same
    /// input as a Parse's content.
    pub(super) fn hash_sql(&self, rest: &[u8]) -> u64 {
        self.pool.key.hash_one((self.settings, b'S', rest))
    }

    /// Schema changes reported so far.
    pub fn schema_epoch(&self) -> u64 {
        self.pool.schema.load(Ordering::Relaxed)
    }

    pub(super) fn schema_changed(&self) {
        self.pool.schema.fetch_add(1, Ordering::Relaxed);
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
    pub(super) parse: Box<[u8]>,
    pub(super) name_len: usize,
    /// Hash of everything after the name, a trailing sqlcommenter comment
    /// left out.
    pub(super) hash: u64,
    /// Where in the content the query text's trailing sqlcommenter comment
    /// (`/*traceparent='…'*/`) lies: left out of what the server prepares,
    /// so that a traced app, whose every statement text differs by its
    /// comment, still prepares each statement once per server connection.
    pub(super) comment: Option<std::ops::Range<usize>>,
    /// Prepared by SQL `PREPARE` (parameter types by name, so it is
    /// prepared on a connection by `PREPARE` too).
    pub(super) sql: bool,
    /// The pool's schema epoch when the client prepared it: a server
    /// statement prepared in an earlier one may return rows of another
    /// shape than the client's statement would, and is prepared anew.
    pub(super) epoch: u64,
}

impl StatementSpec {
    pub(super) fn new(body: &[u8], name_len: usize, hasher: &StatementHasher) -> Self {
        let content = body.get(name_len + 1..).unwrap_or(&[]);
        let text = &content[..content
            .iter()
            .position(|&b| b == 0)
            .unwrap_or(content.len())];
        let comment = pgwake_protocol::sqlcommenter::trailing_comment(text);
        let (before, after) = match &comment {
            Some(c) => (&content[..c.start], &content[c.end..]),
            None => (content, &[][..]),
        };
        StatementSpec {
            hash: hasher.hash(before, after),
            comment,
            parse: body.into(),
            name_len,
            sql: false,
            epoch: hasher.schema_epoch(),
        }
    }

    /// The statement of `PREPARE name rest`.
    pub(super) fn new_sql(name: &[u8], rest: &[u8], hasher: &StatementHasher) -> Self {
        let mut parse = Vec::with_capacity(name.len() + 1 + rest.len());
        parse.extend_from_slice(name);
        parse.push(0);
        parse.extend_from_slice(rest);
        StatementSpec {
            hash: hasher.hash_sql(rest),
            comment: None,
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
    pub(super) fn content(&self) -> &[u8] {
        &self.parse[self.name_len + 1..]
    }

    /// The content as the server prepares it: without the text's trailing
    /// sqlcommenter comment, in two pieces.
    pub(super) fn server_content(&self) -> (&[u8], &[u8]) {
        let c = self.content();
        match &self.comment {
            Some(r) => (&c[..r.start], &c[r.end..]),
            None => (c, &[]),
        }
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
pub(super) struct ByName(Arc<StatementSpec>);

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
    /// Made at the first named statement: most clients never name one,
    /// and every client, idle ones too, holds this (one word boxed, six
    /// for the set itself).
    #[allow(clippy::box_collection)]
    by_name: Option<Box<HashSet<ByName>>>,
    pub(super) hasher: StatementHasher,
}

impl ClientStatements {
    /// `hasher`: the pool's, shared by all its clients.
    pub fn new(hasher: StatementHasher) -> Self {
        ClientStatements {
            by_name: None,
            hasher,
        }
    }

    pub fn get(&self, name: &[u8]) -> Option<&Arc<StatementSpec>> {
        self.by_name.as_ref()?.get(name).map(|b| &b.0)
    }

    pub fn len(&self) -> usize {
        self.by_name.as_ref().map_or(0, |s| s.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Forgets every statement (`DEALLOCATE ALL`, `DISCARD ALL`, or a lost
    /// server connection in the middle of a transaction).
    pub fn clear(&mut self) {
        if let Some(s) = &mut self.by_name {
            s.clear();
        }
    }

    pub fn iter(&self) -> impl Iterator<Item = &Arc<StatementSpec>> {
        self.by_name.iter().flat_map(|s| s.iter()).map(|b| &b.0)
    }

    pub(super) fn put(&mut self, spec: Arc<StatementSpec>) {
        self.by_name
            .get_or_insert_with(Default::default)
            .replace(ByName(spec));
    }

    pub(super) fn take(&mut self, name: &[u8]) -> Option<Arc<StatementSpec>> {
        self.by_name.as_mut()?.take(name).map(|b| b.0)
    }
}
