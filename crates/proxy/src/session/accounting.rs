//! Counting and timing what a client's server connection answered, and
//! the slow-query log.

use std::time::Instant;

use super::Session;
use crate::client_io::ClientStream;
use crate::stats::{micros, PoolCounts};

/// Bytes of query text kept for the slow-query log.
const QUERY_TEXT_MAX: usize = 200;

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

/// A statement's text for a span: its start, string literals masked as
/// in the slow-query log.
pub(super) fn masked(text: &[u8]) -> String {
    let mut kept = Vec::new();
    keep_text(&mut kept, text);
    mask_literals(&kept)
}

/// Keeps the start of a query's text (up to its terminating NUL).
pub(super) fn keep_text(out: &mut Vec<u8>, text: &[u8]) {
    let text = &text[..text.len().min(QUERY_TEXT_MAX)];
    let end = memchr::memchr(0, text).unwrap_or(text.len());
    out.extend_from_slice(&text[..end]);
}

impl<C: ClientStream> Session<C> {
    /// Counts and times the queries (`readies` ReadyForQuery messages) and
    /// transactions (`xact_ends` of them left it idle) just answered.
    pub(super) fn account_ready(&mut self, readies: u64, xact_ends: u64, owed: u32) {
        let now = Instant::now();
        self.idle_since = now;
        let stats = self.pool.stats();
        PoolCounts::add(&stats.queries, readies);
        let mut query_took = None;
        if let Some(start) = self.query_start.take() {
            let took = now.duration_since(start);
            query_took = Some((start, took));
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
                    database = %info.database(),
                    user = %info.user(),
                    application_name = %info.application_name(),
                    client = %self.peer(),
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
                // Mostly a transaction of one query: its time is known.
                let took = match query_took {
                    Some((q, took)) if q == start => took,
                    _ => now.duration_since(start),
                };
                PoolCounts::add(&stats.xact_us, micros(took));
                if let Some(h) = self.pool.histograms() {
                    h.xact.record(took.as_secs_f64());
                }
            }
        }
    }
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
