//! SHOW USERS and SHOW MEM: who uses pgwake and what it holds, under
//! PgBouncer's column names.

use std::collections::{BTreeMap, BTreeSet};

use pgwake_protocol::backend::oid::{INT4, INT8, TEXT};

use super::report::{s, Table};
use crate::Shared;

/// One row per user pgwake knows: listed in `client_auth.file`, a pool's
/// server user, or a client logged in. pgwake has no per-user pool size,
/// reserve or mode (PgBouncer's `[users]`): those are empty, and
/// `max_user_connections` (server connections) is 0, no limit.
pub(super) fn users(shared: &Shared) -> Table {
    let mut t = Table::new(&[
        ("name", TEXT),
        ("pool_size", TEXT),
        ("reserve_pool_size", TEXT),
        ("pool_mode", TEXT),
        ("max_user_connections", INT4),
        ("current_connections", INT4),
        ("max_user_client_connections", INT4),
        ("current_client_connections", INT4),
    ]);
    let mut servers: BTreeMap<String, usize> = BTreeMap::new();
    for p in shared.pools() {
        *servers.entry(p.key().user.clone()).or_default() += p.counts().0;
    }
    let mut clients: BTreeMap<String, usize> = BTreeMap::new();
    for c in shared.clients.all() {
        *clients.entry(c.user().to_owned()).or_default() += 1;
    }
    let names: BTreeSet<String> = shared
        .client_auth
        .user_names()
        .into_iter()
        .chain(servers.keys().cloned())
        .chain(clients.keys().cloned())
        .collect();
    let per_user = shared.config().listen.max_client_conn_per_user;
    for name in names {
        t.row(vec![
            s(&name),
            s(""),
            s(""),
            None,
            s(0),
            s(servers.get(&name).copied().unwrap_or(0)),
            s(per_user),
            s(clients.get(&name).copied().unwrap_or(0)),
        ]);
    }
    t
}

/// PgBouncer lists its slab caches (`size` of one object, `used`, `free`,
/// `memtotal` in bytes); pgwake lists its registry entry per client and
/// its state per server connection, the shared budget for client
/// messages, and the process's resident memory.
pub(super) fn mem(shared: &Shared) -> Table {
    let mut t = Table::new(&[
        ("name", TEXT),
        ("size", INT8),
        ("used", INT8),
        ("free", INT8),
        ("memtotal", INT8),
    ]);
    let mut row = |name: &str, size: u64, used: u64, free: u64, total: u64| {
        t.row(vec![s(name), s(size), s(used), s(free), s(total)]);
    };
    let clients = u64::try_from(shared.clients.all().len()).unwrap_or(u64::MAX);
    let servers: usize = shared.pools().iter().map(|p| p.counts().0).sum();
    let servers = u64::try_from(servers).unwrap_or(u64::MAX);
    for (name, size, used) in [
        ("client_registry", crate::clients::ENTRY_SIZE, clients),
        ("server_connection", crate::server::CONNECTION_SIZE, servers),
    ] {
        let size = u64::try_from(size).unwrap_or(u64::MAX);
        row(name, size, used, 0, size.saturating_mul(used));
    }
    let budget = &shared.buffer_budget;
    let (in_use, total) = (budget.in_use(), budget.bytes());
    row(
        "client_buffer_budget",
        1,
        in_use,
        total.saturating_sub(in_use),
        total,
    );
    if let Some(rss) = resident_bytes() {
        row("process_rss", 1, rss, 0, rss);
    }
    t
}

/// The process's resident memory (`VmRSS` in `/proc/self/status`), on Linux.
fn resident_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kib.saturating_mul(1024))
}
