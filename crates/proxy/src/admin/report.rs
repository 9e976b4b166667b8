//! The tables behind the admin console's SHOW commands, with PgBouncer's
//! column names and types where PgBouncer has the command.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::time::SystemTime;

use pgwake_config::PoolMode;
use pgwake_protocol::backend::oid::{INT4, INT8, TEXT};

use crate::clients::{unix_micros, ClientState};
use crate::pool::{totals_by_database, PoolSnapshot};
use crate::stats::micros;
use crate::Shared;

/// A result set.
pub(crate) struct Table {
    pub columns: Vec<(&'static str, u32)>,
    pub rows: Vec<Vec<Option<String>>>,
}

impl Table {
    pub(super) fn new(columns: &[(&'static str, u32)]) -> Table {
        Table {
            columns: columns.to_vec(),
            rows: Vec::new(),
        }
    }

    pub(super) fn row(&mut self, values: Vec<Option<String>>) {
        debug_assert_eq!(values.len(), self.columns.len());
        self.rows.push(values);
    }
}

pub(super) fn s(v: impl ToString) -> Option<String> {
    Some(v.to_string())
}

pub(super) fn mode_name(m: PoolMode) -> &'static str {
    match m {
        PoolMode::Transaction => "transaction",
        PoolMode::Session => "session",
    }
}

/// PgBouncer prints times as `YYYY-MM-DD HH:MM:SS UTC`.
fn timestamp(unix_us: u64) -> String {
    let t = SystemTime::UNIX_EPOCH + std::time::Duration::from_micros(unix_us);
    // RFC 3339 in seconds: `YYYY-MM-DDTHH:MM:SSZ`.
    let rfc = humantime::format_rfc3339_seconds(t).to_string();
    format!("{} UTC", rfc.trim_end_matches('Z').replacen('T', " ", 1))
}

fn split_peer(peer: &str) -> (String, String) {
    match peer.rsplit_once(':') {
        Some((host, port)) => (
            host.trim_start_matches('[')
                .trim_end_matches(']')
                .to_owned(),
            port.to_owned(),
        ),
        None => (peer.to_owned(), "0".to_owned()),
    }
}

const SOCKET_COLUMNS: &[(&str, u32)] = &[
    ("type", TEXT),
    ("user", TEXT),
    ("database", TEXT),
    ("state", TEXT),
    ("addr", TEXT),
    ("port", INT4),
    ("local_addr", TEXT),
    ("local_port", INT4),
    ("connect_time", TEXT),
    ("request_time", TEXT),
    ("wait", INT4),
    ("wait_us", INT4),
    ("close_needed", INT4),
    ("ptr", TEXT),
    ("link", TEXT),
    ("remote_pid", INT4),
    ("tls", TEXT),
    ("application_name", TEXT),
    ("prepared_statements", INT4),
    // PgBouncer 1.23's: what KILL_CLIENT takes (`ptr` is the same number in hex).
    ("id", INT8),
];

/// The SHOW command named `what` (upper case), or `None` when unknown.
pub(crate) fn show(shared: &Shared, what: &str) -> Option<Table> {
    Some(match what {
        "POOLS" => pools(shared),
        "STATS" | "STATS_TOTALS" => stats(shared, what == "STATS"),
        "CLIENTS" => clients(shared),
        "SERVERS" => servers(shared),
        "DATABASES" => databases(shared),
        "LISTS" => lists(shared),
        "CONFIG" => config(shared),
        "VERSION" => {
            let mut t = Table::new(&[("version", TEXT)]);
            t.row(vec![s(format!("pgwake {}", env!("CARGO_PKG_VERSION")))]);
            t
        }
        "STATE" => state(shared),
        "USERS" => super::usage::users(shared),
        "MEM" => super::usage::mem(shared),
        _ => return None,
    })
}

fn pools(shared: &Shared) -> Table {
    let mut t = Table::new(&[
        ("database", TEXT),
        ("user", TEXT),
        ("cl_active", INT4),
        ("cl_waiting", INT4),
        ("cl_active_cancel_req", INT4),
        ("cl_waiting_cancel_req", INT4),
        ("sv_active", INT4),
        ("sv_active_cancel", INT4),
        ("sv_being_canceled", INT4),
        ("sv_idle", INT4),
        ("sv_used", INT4),
        ("sv_tested", INT4),
        ("sv_login", INT4),
        ("maxwait", INT4),
        ("maxwait_us", INT4),
        ("pool_mode", TEXT),
        ("load_balance_hosts", TEXT),
    ]);
    for p in shared.pools() {
        let snap = p.snapshot();
        let clients = p.stats().clients.load(Ordering::Relaxed);
        let wait = micros(snap.max_wait);
        t.row(vec![
            s(&p.key().database),
            s(&p.key().user),
            s(clients.saturating_sub(snap.waiting)),
            s(snap.waiting),
            s(0),
            s(0),
            s(snap.active()),
            s(0),
            s(0),
            s(snap.idle),
            s(0),
            s(0),
            s(snap.login),
            s(wait / 1_000_000),
            s(wait % 1_000_000),
            s(mode_name(snap.settings.mode)),
            None,
        ]);
    }
    t
}

/// Per server database: PgBouncer's SHOW STATS (averages are per second,
/// or per transaction/query for times, since pgwake started).
fn stats(shared: &Shared, averages: bool) -> Table {
    let mut columns = vec![
        ("database", TEXT),
        ("total_server_assignment_count", INT8),
        ("total_xact_count", INT8),
        ("total_query_count", INT8),
        ("total_received", INT8),
        ("total_sent", INT8),
        ("total_xact_time", INT8),
        ("total_query_time", INT8),
        ("total_wait_time", INT8),
        ("total_client_parse_count", INT8),
        ("total_server_parse_count", INT8),
        ("total_bind_count", INT8),
    ];
    if averages {
        columns.extend([
            ("avg_server_assignment_count", INT8),
            ("avg_xact_count", INT8),
            ("avg_query_count", INT8),
            ("avg_recv", INT8),
            ("avg_sent", INT8),
            ("avg_xact_time", INT8),
            ("avg_query_time", INT8),
            ("avg_wait_time", INT8),
            ("avg_client_parse_count", INT8),
            ("avg_server_parse_count", INT8),
            ("avg_bind_count", INT8),
        ]);
    }
    // PgBouncer before 1.8 called the query count total_requests; some
    // exporters still read it.
    columns.push(("total_requests", INT8));
    let mut t = Table {
        columns,
        rows: Vec::new(),
    };
    let uptime = shared.started.elapsed().as_secs().max(1);
    for (db, c) in totals_by_database(&shared.pools()) {
        let mut row = vec![
            s(db),
            s(c.assignments),
            s(c.xacts),
            s(c.queries),
            s(c.received),
            s(c.sent),
            s(c.xact_us),
            s(c.query_us),
            s(c.wait_us),
            s(0),
            s(0),
            s(0),
        ];
        if averages {
            let (xact, query, wait) = c.averages();
            row.extend([
                s(c.assignments / uptime),
                s(c.xacts / uptime),
                s(c.queries / uptime),
                s(c.received / uptime),
                s(c.sent / uptime),
                s(xact),
                s(query),
                s(wait),
                s(0),
                s(0),
                s(0),
            ]);
        }
        row.push(s(c.queries));
        t.row(row);
    }
    t
}

/// One row of SHOW CLIENTS or SHOW SERVERS.
struct Socket<'a> {
    kind: &'a str,
    user: &'a str,
    database: &'a str,
    state: &'a str,
    peer: &'a str,
    /// Connect and request time, Unix µs.
    times: (u64, u64),
    wait_us: u64,
    /// Its own ID, the ID of the socket it is linked to, the remote pid.
    ids: (u64, Option<u64>, u32),
    /// A server connection made before the last RECONNECT or change of
    /// server settings, closed when released.
    close_needed: bool,
    tls: bool,
    application_name: &'a str,
}

impl Socket<'_> {
    fn row(&self) -> Vec<Option<String>> {
        let (addr, port) = split_peer(self.peer);
        let (ptr, link, remote_pid) = self.ids;
        vec![
            s(self.kind),
            s(self.user),
            s(self.database),
            s(self.state),
            s(addr),
            s(port),
            None,
            s(0),
            s(timestamp(self.times.0)),
            s(timestamp(self.times.1)),
            s(self.wait_us / 1_000_000),
            s(self.wait_us % 1_000_000),
            s(i32::from(self.close_needed)),
            s(format!("{ptr:#x}")),
            s(link.map(|l| format!("{l:#x}")).unwrap_or_default()),
            s(remote_pid),
            s(if self.tls { "TLS" } else { "" }),
            s(self.application_name),
            s(0),
            s(ptr),
        ]
    }
}

fn clients(shared: &Shared) -> Table {
    let mut t = Table::new(SOCKET_COLUMNS);
    let now = unix_micros(SystemTime::now());
    for c in shared.clients.all() {
        let state = c.state();
        let wait = if state == ClientState::Waiting {
            now.saturating_sub(c.request_time())
        } else {
            0
        };
        let pid = c.server_pid();
        t.row(
            Socket {
                kind: "C",
                user: c.user(),
                database: c.database(),
                state: state.name(),
                peer: c.peer(),
                times: (unix_micros(c.connect_time), c.request_time()),
                wait_us: wait,
                ids: (c.id, (pid != 0).then_some(u64::from(pid) << 32), 0),
                close_needed: false,
                tls: false,
                application_name: c.application_name(),
            }
            .row(),
        );
    }
    t
}

fn servers(shared: &Shared) -> Table {
    let mut t = Table::new(SOCKET_COLUMNS);
    let now = SystemTime::now();
    let ago = |d: std::time::Duration| unix_micros(now.checked_sub(d).unwrap_or(now));
    // Connections in use, from the clients holding them.
    for c in shared.clients.all() {
        let pid = c.server_pid();
        if pid == 0 {
            continue;
        }
        t.row(
            Socket {
                kind: "S",
                user: &c.pool.user,
                database: &c.pool.database,
                state: "active",
                peer: &shared.server_addr(),
                times: (c.request_time(), c.request_time()),
                wait_us: 0,
                ids: (u64::from(pid) << 32, Some(c.id), pid),
                // Known once it is given back (then it closes).
                close_needed: false,
                tls: false,
                application_name: "",
            }
            .row(),
        );
    }
    for p in shared.pools() {
        let snap: PoolSnapshot = p.snapshot();
        for conn in snap.idle_conns {
            t.row(
                Socket {
                    kind: "S",
                    user: &p.key().user,
                    database: &p.key().database,
                    state: "idle",
                    peer: &conn.addr.to_string(),
                    times: (ago(conn.age), ago(conn.idle_for)),
                    wait_us: 0,
                    ids: (u64::from(conn.pid) << 32, None, conn.pid),
                    close_needed: conn.close_needed,
                    tls: conn.tls,
                    application_name: "",
                }
                .row(),
            );
        }
    }
    t
}

fn databases(shared: &Shared) -> Table {
    let mut t = Table::new(&[
        ("name", TEXT),
        ("host", TEXT),
        ("port", INT4),
        ("database", TEXT),
        ("force_user", TEXT),
        ("pool_size", INT4),
        ("min_pool_size", INT4),
        ("reserve_pool", INT4),
        ("pool_mode", TEXT),
        ("max_connections", INT4),
        ("current_connections", INT4),
        ("paused", INT4),
        ("disabled", INT4),
    ]);
    let config = shared.config();
    let mut names: Vec<String> = config.databases.keys().cloned().collect();
    if names.is_empty() {
        // Every name maps through: list the ones in use, and the configured one.
        names.extend(shared.pools().iter().map(|p| p.key().database.clone()));
        names.extend(config.server.dbname.clone());
        names.sort();
        names.dedup();
    }
    let pools = shared.pools();
    for name in names {
        let Some(route) = config.route(&name) else {
            continue;
        };
        let current: usize = pools
            .iter()
            .filter(|p| p.key().database == name)
            .map(|p| p.counts().0)
            .sum();
        let server = config
            .databases
            .get(&name)
            .and_then(|d| d.server.as_ref())
            .unwrap_or(&config.server);
        t.row(vec![
            s(&name),
            s(&server.host),
            s(server.port),
            s(route.dbname),
            route.user.map(str::to_owned),
            s(route.size),
            s(route.min_idle),
            s(0),
            s(mode_name(route.mode)),
            s(0),
            s(current),
            s(i32::from(
                shared.control.paused_all() || shared.control.paused_db(&name),
            )),
            s(i32::from(shared.control.disabled(&name))),
        ]);
    }
    t
}

fn lists(shared: &Shared) -> Table {
    let mut t = Table::new(&[("list", TEXT), ("items", INT4)]);
    let pools = shared.pools();
    let mut users: Vec<&str> = pools.iter().map(|p| p.key().user.as_str()).collect();
    users.sort_unstable();
    users.dedup();
    let mut dbs: Vec<&str> = pools.iter().map(|p| p.key().database.as_str()).collect();
    dbs.sort_unstable();
    dbs.dedup();
    let servers: usize = pools.iter().map(|p| p.counts().0).sum();
    let clients = shared.clients.all().len();
    for (name, n) in [
        ("databases", dbs.len()),
        ("users", users.len()),
        ("peers", 0),
        ("pools", pools.len()),
        ("peer_pools", 0),
        ("free_clients", 0),
        ("used_clients", clients),
        ("login_clients", 0),
        ("free_servers", 0),
        ("used_servers", servers),
        ("dns_names", 0),
        ("dns_zones", 0),
        ("dns_queries", 0),
        ("dns_pending", 0),
    ] {
        t.row(vec![s(name), s(n)]);
    }
    t
}

fn config(shared: &Shared) -> Table {
    let mut t = Table::new(&[
        ("key", TEXT),
        ("value", TEXT),
        ("default", TEXT),
        ("changeable", TEXT),
    ]);
    let config = shared.config();
    let defaults: BTreeMap<String, String> = pgwake_config::Config::default()
        .flatten()
        .into_iter()
        .collect();
    let mut rows = config.flatten();
    // PgBouncer's names for the settings tools look for.
    rows.extend([
        (
            "max_client_conn".into(),
            config.listen.max_client_conn.to_string(),
        ),
        ("default_pool_size".into(), config.pool.size.to_string()),
        ("min_pool_size".into(), config.pool.min_idle.to_string()),
        ("pool_mode".into(), mode_name(config.pool.mode).into()),
    ]);
    for (key, mut value) in rows {
        // A command line may carry a secret.
        if key == "server.auth.command" || key.starts_with("lifecycle.command.") {
            value = "<redacted>".into();
        }
        let default = defaults.get(&key).cloned();
        let yes = if pgwake_config::needs_restart(&key) {
            "no"
        } else {
            "yes"
        };
        t.row(vec![s(&key), s(value), default, s(yes)]);
    }
    t
}

fn state(shared: &Shared) -> Table {
    let mut t = Table::new(&[("key", TEXT), ("value", TEXT)]);
    let yes_no = |b: bool| if b { "yes" } else { "no" }.to_owned();
    let mut row = |k: &str, v: String| t.row(vec![s(k), Some(v)]);
    row("active", yes_no(!shared.shutdown.is_cancelled()));
    row("paused", yes_no(shared.control.paused_all()));
    row("suspended", "no".into());
    row(
        "uptime_seconds",
        shared.started.elapsed().as_secs().to_string(),
    );
    let config = shared.config();
    row(
        "server",
        format!("{}:{}", config.server.host, config.server.port),
    );
    row(
        "credential_source",
        config.server.auth.effective_method().name().to_owned(),
    );
    if let Some(cache) = shared.refresher_stats() {
        row("credential_valid", yes_no(cache.valid));
        if let Some(exp) = cache.expires_at {
            let secs = match exp.duration_since(SystemTime::now()) {
                Ok(d) => format!("{}", d.as_secs()),
                Err(e) => format!("-{}", e.duration().as_secs()),
            };
            row("credential_expires_in_seconds", secs);
        }
        row("credential_fetches", cache.fetches.to_string());
        row("credential_fetch_failures", cache.failures.to_string());
    }
    match shared.lifecycle() {
        None => row("provider", "none".into()),
        Some(l) => {
            row("provider", l.describe());
            row(
                "server_state",
                l.last_state()
                    .map_or("unknown".into(), |s| s.name().to_owned()),
            );
            row(
                "waking_for_seconds",
                l.waking_since()
                    .map_or(String::new(), |t| t.elapsed().as_secs().to_string()),
            );
            row("idle_for_seconds", l.idle_for().as_secs().to_string());
            let st = l.stats();
            row("wakes", st.wakes.to_string());
            row("wake_failures", st.wake_failures.to_string());
            row("stops", st.stops.to_string());
        }
    }
    t
}
