//! A pool's state at one moment, for the admin console (SHOW POOLS, SHOW
//! SERVERS) and the metrics.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use std::collections::BTreeMap;

use super::{Pool, PoolSettings};
use crate::stats::Totals;

/// Counts since start per client database name (the pools of one
/// `[databases]` entry summed), for SHOW STATS and the stats line.
pub fn totals_by_database(pools: &[Pool]) -> BTreeMap<String, Totals> {
    let mut by_db: BTreeMap<String, Totals> = BTreeMap::new();
    for p in pools {
        by_db
            .entry(p.key().database.clone())
            .or_default()
            .add(p.stats());
    }
    by_db
}

impl Pool {
    /// A consistent view for the admin console and metrics.
    pub fn snapshot(&self) -> PoolSnapshot {
        let st = self.inner.lock();
        let now = Instant::now();
        let epoch = self.inner.epoch.load(Ordering::Relaxed);
        PoolSnapshot {
            settings: st.settings.clone(),
            total: st.total,
            idle: st.idle.len(),
            login: self.inner.logins.load(Ordering::Relaxed),
            waiting: st.waiters.len(),
            max_wait: st
                .waiters
                .front()
                .map_or(Duration::ZERO, |(_, since)| now.duration_since(*since)),
            idle_conns: st
                .idle
                .iter()
                .map(|p| IdleConn {
                    pid: p.conn.cancel_key().1,
                    addr: p.conn.cancel_key().0,
                    age: now.duration_since(p.conn.created),
                    idle_for: now.duration_since(p.conn.last_used),
                    tls: p.conn.is_tls(),
                    close_needed: p.epoch != epoch,
                })
                .collect(),
        }
    }
}

/// What [`Pool::snapshot`] returns.
#[derive(Debug, Clone)]
pub struct PoolSnapshot {
    pub settings: PoolSettings,
    /// Connections open or being opened.
    pub total: usize,
    pub idle: usize,
    /// Being opened.
    pub login: usize,
    /// Clients waiting for a connection.
    pub waiting: usize,
    /// How long the longest-waiting client has waited.
    pub max_wait: Duration,
    pub idle_conns: Vec<IdleConn>,
}

impl PoolSnapshot {
    /// Connections serving clients.
    pub fn active(&self) -> usize {
        self.total.saturating_sub(self.idle + self.login)
    }
}

/// An idle server connection, for SHOW SERVERS.
#[derive(Debug, Clone)]
pub struct IdleConn {
    pub pid: u32,
    pub addr: std::net::SocketAddr,
    pub age: Duration,
    pub idle_for: Duration,
    pub tls: bool,
    /// Made before the last `RECONNECT` or change of server settings.
    pub close_needed: bool,
}
