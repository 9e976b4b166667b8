//! The statements prepared on one server connection: an LRU by content hash.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

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
pub(super) struct PassThrough(u64);

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

pub(super) const NIL: usize = usize::MAX;

#[derive(Debug, Clone, Copy)]
pub(super) struct Node {
    pub(super) hash: u64,
    /// Towards the most recently used end.
    pub(super) newer: usize,
    pub(super) older: usize,
    /// The epoch of the last Bind: its portal may still be open.
    pub(super) pinned: u64,
    /// The pool's schema epoch when it was prepared.
    pub(super) schema: u64,
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
    pub(super) max: usize,
    pub(super) index: HashMap<u64, usize, BuildHasherDefault<PassThrough>>,
    pub(super) nodes: Vec<Node>,
    pub(super) free: Vec<usize>,
    pub(super) mru: usize,
    pub(super) lru: usize,
    pub(super) epoch: u64,
    /// [`PROBE_NAME`] is prepared.
    pub(super) probe: bool,
    pub(super) counts: CacheCounts,
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
    pub(super) fn touch(&mut self, hash: u64, since: u64) -> Lookup {
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
    pub(super) fn insert(&mut self, hash: u64, schema: u64) {
        let i = self.new_node(hash, schema);
        self.link_newest(i);
    }

    /// Puts back a statement whose Close the server ignored, as the least
    /// recently used.
    pub(super) fn restore(&mut self, hash: u64, schema: u64) {
        if !self.contains(hash) {
            let i = self.new_node(hash, schema);
            self.link_oldest(i);
        }
    }

    /// Forgets a statement; its schema epoch if it was there.
    pub(super) fn remove(&mut self, hash: u64) -> Option<u64> {
        let i = self.index.remove(&hash)?;
        self.unlink(i);
        self.free.push(i);
        Some(self.nodes[i].schema)
    }

    /// The statement to close before another is prepared, if the bound is
    /// reached: the least recently used one without a possibly open portal.
    pub(super) fn victim(&self) -> Option<u64> {
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

    pub(super) fn pin(&mut self, hash: u64) {
        if let Some(&i) = self.index.get(&hash) {
            self.nodes[i].pinned = self.epoch;
        }
    }

    /// The connection is idle with nothing in flight: no portal is open.
    pub(super) fn unpin_all(&mut self) {
        self.epoch += 1;
    }

    pub(super) fn new_node(&mut self, hash: u64, schema: u64) -> usize {
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

    pub(super) fn unlink(&mut self, i: usize) {
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

    pub(super) fn link_newest(&mut self, i: usize) {
        self.nodes[i].newer = NIL;
        self.nodes[i].older = self.mru;
        match self.nodes.get_mut(self.mru) {
            Some(n) => n.newer = i,
            None => self.lru = i,
        }
        self.mru = i;
    }

    pub(super) fn link_oldest(&mut self, i: usize) {
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
pub(super) enum Lookup {
    Ready,
    Missing,
    /// Prepared in this schema epoch, before a change the client's
    /// statement postdates: forgotten, to be closed and prepared anew.
    Stale(u64),
}
