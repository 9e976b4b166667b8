//! What pgwake counts, for `/metrics` and the admin console's SHOW commands.
//!
//! Counters live in plain atomics next to what they count (one relaxed add on
//! the relay path, no lookup); they are copied into the Prometheus registry
//! when `/metrics` is scraped. Histograms are fixed buckets of atomics too
//! (one search and three relaxed adds per observation), rendered at scrape.
//! Each proxy has its own registry, so several can run in one process.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use std::fmt::Write as _;
use std::sync::{Arc, Mutex};

use metrics::{Counter, Gauge, Key, Label, Metadata, Recorder};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle, PrometheusRecorder};

/// Histogram buckets (seconds): 100 µs to 2 min.
const BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0, 30.0, 60.0, 120.0,
];

static METADATA: Metadata<'static> = Metadata::new("pgwake", metrics::Level::INFO, None);

/// Every metric: name, type, help. Types: c = counter, g = gauge, h = histogram.
const DESCRIPTIONS: &[(&str, char, &str)] = &[
    ("pgwake_client_connections", 'g', "Client connections by state: active (holding a server connection), waiting (for one), idle"),
    ("pgwake_server_connections", 'g', "Server connections by state: active (serving a client), idle, login (being opened)"),
    ("pgwake_clients_parked", 'g', "Idle clients parked outside the async runtime (listen.park_idle_clients_after): counted among the idle client connections too"),
    ("pgwake_pool_size", 'g', "Most server connections the pool may open"),
    ("pgwake_pool_wait_seconds", 'h', "Time clients waited for a server connection"),
    ("pgwake_transactions_total", 'c', "Transactions completed (a query outside a transaction block counts as one)"),
    ("pgwake_queries_total", 'c', "Queries completed (each ReadyForQuery)"),
    ("pgwake_transaction_duration_seconds", 'h', "Time from a transaction's first message to its end"),
    ("pgwake_query_duration_seconds", 'h', "Time from a query's first message to ReadyForQuery"),
    ("pgwake_received_bytes_total", 'c', "Bytes received from clients"),
    ("pgwake_sent_bytes_total", 'c', "Bytes sent to clients"),
    ("pgwake_server_connect_phase_seconds", 'h', "Time each phase of opening a server connection took (dns, tcp, tls, auth)"),
    ("pgwake_server_connects_total", 'c', "Server connections opened"),
    ("pgwake_server_connections_lost_total", 'c', "Idle server connections the server or the network closed (a restart, a failover, a terminated backend, a NAT's drop found by TCP keepalive): closed, and pool.min_idle opened again at once"),
    ("pgwake_server_connect_errors_total", 'c', "Failed attempts to open a server connection, by kind"),
    ("pgwake_credential_fetches_total", 'c', "Tokens fetched from the credential source"),
    ("pgwake_credential_fetch_failures_total", 'c', "Failed token fetches"),
    ("pgwake_credential_expiry_seconds", 'g', "Seconds until the current token expires (negative: expired)"),
    ("pgwake_credential_valid", 'g', "1 when a valid token or password is at hand"),
    ("pgwake_server_state", 'g', "1 for the server's last known state as the provider reports it"),
    ("pgwake_wakes_total", 'c', "Wakes of a stopped server started"),
    ("pgwake_trace_spans_exported_total", 'c', "Spans sent to the OTLP collector ([tracing])"),
    ("pgwake_trace_spans_dropped_total", 'c', "Spans not sent, by reason: queue_full (the collector is slow or away and the queue, tracing.queue_size, was full), export_failed (the collector refused or did not answer within tracing.export_timeout)"),
    ("pgwake_wake_failures_total", 'c', "Wakes that failed"),
    ("pgwake_wake_duration_seconds", 'h', "Time from the start of a wake until the server answered"),
    ("pgwake_idle_stops_total", 'c', "Stop requests sent to the provider (idle stop, SLEEP, stop on shutdown)"),
    ("pgwake_cancels_total", 'c', "Cancel requests forwarded to the server"),
    ("pgwake_cancels_forwarded_total", 'c', "Cancel requests for a key another replica issued, sent on to that replica ([peering]), by result: ok or failed"),
    ("pgwake_cancels_dropped_total", 'c', "Cancel requests that reached no query, by reason: unknown_key (no client of this pgwake has the key, and it names no other replica or peering is off), no_peer (it names a replica not among the peers), in_flight (the same request is being forwarded already)"),
    ("pgwake_timeouts_total", 'c', "Clients or queries ended by a timeout, by kind"),
    ("pgwake_client_auth_failures_total", 'c', "Client logins refused, by reason: password (wrong password, unknown user or malformed exchange) or blocked (the address is over client_auth.max_failures_per_minute)"),
    ("pgwake_client_limit_refusals_total", 'c', "Client connections refused by max_client_conn (global, per database or per user)"),
    ("pgwake_prepared_statement_hits_total", 'c', "Named statements a client used that the server connection had prepared already"),
    ("pgwake_prepared_statement_misses_total", 'c', "Named statements prepared on a server connection for a client"),
    ("pgwake_prepared_statement_evictions_total", 'c', "Server-side statements closed to stay within pool.max_prepared_statements"),
    ("pgwake_paused", 'g', "1 while the admin console's PAUSE is in force"),
    ("pgwake_client_buffer_bytes", 'g', "Client messages held whole: bytes in use, and the budget (listen.client_buffer_budget)"),
    ("pgwake_client_buffer_refusals_total", 'c', "Client messages refused for want of buffer room: too_large (beyond the budget) or busy (no room within pool_wait_timeout)"),
    ("pgwake_reloads_total", 'c', "Configuration reloads, by result"),
];

/// What ended a client's wait or query.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeoutKind {
    Query,
    IdleTransaction,
    ClientIdle,
    PoolWait,
    ServerConnect,
    ClientLogin,
}

impl TimeoutKind {
    const ALL: [TimeoutKind; 6] = [
        TimeoutKind::Query,
        TimeoutKind::IdleTransaction,
        TimeoutKind::ClientIdle,
        TimeoutKind::PoolWait,
        TimeoutKind::ServerConnect,
        TimeoutKind::ClientLogin,
    ];

    pub fn name(self) -> &'static str {
        match self {
            TimeoutKind::Query => "query",
            TimeoutKind::IdleTransaction => "idle_transaction",
            TimeoutKind::ClientIdle => "client_idle",
            TimeoutKind::PoolWait => "pool_wait",
            TimeoutKind::ServerConnect => "server_connect",
            TimeoutKind::ClientLogin => "client_login",
        }
    }
}

/// Why a server connection could not be opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectErrorKind {
    Refused,
    Timeout,
    Auth,
    Tls,
    Credential,
    Asleep,
    /// The server (or something on the path) declined TLS, or asked for the
    /// password in cleartext without TLS: pgwake refused to send it.
    Downgrade,
    Other,
}

impl ConnectErrorKind {
    const ALL: [ConnectErrorKind; 8] = [
        ConnectErrorKind::Refused,
        ConnectErrorKind::Timeout,
        ConnectErrorKind::Auth,
        ConnectErrorKind::Tls,
        ConnectErrorKind::Credential,
        ConnectErrorKind::Asleep,
        ConnectErrorKind::Downgrade,
        ConnectErrorKind::Other,
    ];

    fn name(self) -> &'static str {
        match self {
            ConnectErrorKind::Refused => "refused",
            ConnectErrorKind::Timeout => "timeout",
            ConnectErrorKind::Auth => "auth",
            ConnectErrorKind::Tls => "tls",
            ConnectErrorKind::Credential => "credential",
            ConnectErrorKind::Asleep => "asleep",
            ConnectErrorKind::Downgrade => "downgrade",
            ConnectErrorKind::Other => "other",
        }
    }
}

/// Why a cancel request reached no query.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CancelDrop {
    UnknownKey,
    NoPeer,
    InFlight,
}

impl CancelDrop {
    const ALL: [CancelDrop; 3] = [
        CancelDrop::UnknownKey,
        CancelDrop::NoPeer,
        CancelDrop::InFlight,
    ];

    fn name(self) -> &'static str {
        match self {
            CancelDrop::UnknownKey => "unknown_key",
            CancelDrop::NoPeer => "no_peer",
            CancelDrop::InFlight => "in_flight",
        }
    }
}

/// Process-wide counts and the Prometheus registry.
pub struct Metrics {
    recorder: PrometheusRecorder,
    handle: PrometheusHandle,
    timeouts: [AtomicU64; 6],
    connect_errors: [AtomicU64; 8],
    pub connects: AtomicU64,
    /// Idle server connections found closed by the server or the network.
    pub server_conns_lost: AtomicU64,
    pub cancels: AtomicU64,
    cancels_forwarded: [AtomicU64; 2],
    cancels_dropped: [AtomicU64; 3],
    /// Client logins refused: wrong password or unknown user, and addresses
    /// over `client_auth.max_failures_per_minute`.
    pub client_auth_failures: AtomicU64,
    pub client_auth_blocked: AtomicU64,
    /// Client connections refused by a `max_client_conn` limit.
    pub client_limit_refusals: AtomicU64,
    pub reloads_ok: AtomicU64,
    pub reloads_failed: AtomicU64,
    connect_phase: [Arc<Histogram>; 4],
    pub wake_seconds: Arc<Histogram>,
    /// Every histogram: name, labels (rendered), the buckets.
    histograms: Mutex<Vec<(&'static str, String, Arc<Histogram>)>>,
}

/// A Prometheus histogram over [`BUCKETS`], as plain atomics.
#[derive(Default)]
pub struct Histogram {
    /// Observations at or below each bound (not cumulative), then above all.
    buckets: [AtomicU64; BUCKETS.len() + 1],
    count: AtomicU64,
    sum_nanos: AtomicU64,
}

impl Histogram {
    /// Records one observation, in seconds.
    pub fn record(&self, seconds: f64) {
        let i = BUCKETS.partition_point(|&b| b < seconds);
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
        // Saturating float-to-integer conversion; negative becomes 0.
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let nanos = (seconds * 1e9) as u64;
        self.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
    }

    /// The `_bucket`, `_sum` and `_count` lines of one series.
    fn render(&self, name: &str, labels: &str, out: &mut String) {
        let sep = if labels.is_empty() { "" } else { "," };
        let mut cumulative = 0;
        for (bound, n) in BUCKETS.iter().zip(&self.buckets) {
            cumulative += n.load(Ordering::Relaxed);
            let _ = writeln!(
                out,
                "{name}_bucket{{{labels}{sep}le=\"{bound}\"}} {cumulative}"
            );
        }
        cumulative += self.buckets[BUCKETS.len()].load(Ordering::Relaxed);
        let _ = writeln!(
            out,
            "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {cumulative}"
        );
        let braces = |s: &str| {
            if s.is_empty() {
                String::new()
            } else {
                format!("{{{s}}}")
            }
        };
        #[allow(clippy::cast_precision_loss)]
        let sum = self.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9;
        let _ = writeln!(out, "{name}_sum{} {sum}", braces(labels));
        // The count as of the buckets read, so that `+Inf` equals it.
        let _ = writeln!(out, "{name}_count{} {cumulative}", braces(labels));
    }
}

/// Label pairs as the text format writes them, values escaped.
fn render_labels(labels: &[(&str, &str)]) -> String {
    let mut out = String::new();
    for (i, (k, v)) in labels.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        let v = v
            .replace('\\', "\\\\")
            .replace('"', "\\\"")
            .replace('\n', "\\n");
        let _ = write!(out, "{k}=\"{v}\"");
    }
    out
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let recorder = PrometheusBuilder::new().build_recorder();
        for (name, kind, help) in DESCRIPTIONS {
            let (name, help) = (
                metrics::KeyName::from(*name),
                metrics::SharedString::from(*help),
            );
            match kind {
                'c' => recorder.describe_counter(name, None, help),
                'g' => recorder.describe_gauge(name, None, help),
                // Rendered by [`Histogram::render`].
                _ => {}
            }
        }
        let histograms = Mutex::new(Vec::new());
        let register = |name: &'static str, labels: &[(&str, &str)]| {
            let h = Arc::new(Histogram::default());
            histograms.lock().unwrap_or_else(|e| e.into_inner()).push((
                name,
                render_labels(labels),
                h.clone(),
            ));
            h
        };
        let phase = |p: &str| register("pgwake_server_connect_phase_seconds", &[("phase", p)]);
        let connect_phase = [phase("dns"), phase("tcp"), phase("tls"), phase("auth")];
        let wake_seconds = register("pgwake_wake_duration_seconds", &[]);
        Metrics {
            handle: recorder.handle(),
            connect_phase,
            wake_seconds,
            histograms,
            recorder,
            timeouts: Default::default(),
            connect_errors: Default::default(),
            connects: AtomicU64::new(0),
            server_conns_lost: AtomicU64::new(0),
            cancels: AtomicU64::new(0),
            cancels_forwarded: Default::default(),
            cancels_dropped: Default::default(),
            client_auth_failures: AtomicU64::new(0),
            client_auth_blocked: AtomicU64::new(0),
            client_limit_refusals: AtomicU64::new(0),
            reloads_ok: AtomicU64::new(0),
            reloads_failed: AtomicU64::new(0),
        }
    }

    pub fn timeout(&self, kind: TimeoutKind) {
        self.timeouts[kind as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub fn timeouts(&self, kind: TimeoutKind) -> u64 {
        self.timeouts[kind as usize].load(Ordering::Relaxed)
    }

    /// A cancel request sent on to the replica that issued its key.
    pub fn cancel_forwarded(&self, ok: bool) {
        self.cancels_forwarded[usize::from(!ok)].fetch_add(1, Ordering::Relaxed);
    }

    pub fn cancel_dropped(&self, reason: CancelDrop) {
        self.cancels_dropped[reason as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub fn connect_error(&self, kind: ConnectErrorKind) {
        self.connect_errors[kind as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Records how long each phase of a successful server connect took:
    /// dns, tcp, tls, auth, in that order (`None`: the phase did not run).
    /// Plain durations, so that this module needs nothing from `server`,
    /// which names its errors' kinds from here.
    pub fn connect_phases(&self, durations: [Option<Duration>; 4]) {
        self.connects.fetch_add(1, Ordering::Relaxed);
        for (h, d) in self.connect_phase.iter().zip(durations) {
            if let Some(d) = d {
                h.record(d.as_secs_f64());
            }
        }
    }

    /// Histograms for one pool.
    pub fn pool_histograms(&self, database: &str, user: &str) -> PoolHistograms {
        let h = |name: &'static str| {
            let h = Arc::new(Histogram::default());
            self.histograms
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push((
                    name,
                    render_labels(&[("database", database), ("user", user)]),
                    h.clone(),
                ));
            h
        };
        PoolHistograms {
            wait: h("pgwake_pool_wait_seconds"),
            xact: h("pgwake_transaction_duration_seconds"),
            query: h("pgwake_query_duration_seconds"),
        }
    }

    pub fn counter(&self, name: &'static str, labels: Vec<Label>) -> Counter {
        self.recorder
            .register_counter(&Key::from_parts(name, labels), &METADATA)
    }

    pub fn gauge(&self, name: &'static str, labels: Vec<Label>) -> Gauge {
        self.recorder
            .register_gauge(&Key::from_parts(name, labels), &METADATA)
    }

    /// Copies the process-wide counts into the registry.
    pub fn publish(&self) {
        for k in TimeoutKind::ALL {
            self.counter("pgwake_timeouts_total", vec![Label::new("kind", k.name())])
                .absolute(self.timeouts(k));
        }
        for k in ConnectErrorKind::ALL {
            self.counter(
                "pgwake_server_connect_errors_total",
                vec![Label::new("kind", k.name())],
            )
            .absolute(self.connect_errors[k as usize].load(Ordering::Relaxed));
        }
        self.counter("pgwake_server_connects_total", vec![])
            .absolute(self.connects.load(Ordering::Relaxed));
        self.counter("pgwake_server_connections_lost_total", vec![])
            .absolute(self.server_conns_lost.load(Ordering::Relaxed));
        self.counter("pgwake_cancels_total", vec![])
            .absolute(self.cancels.load(Ordering::Relaxed));
        for (result, n) in ["ok", "failed"].into_iter().zip(&self.cancels_forwarded) {
            self.counter(
                "pgwake_cancels_forwarded_total",
                vec![Label::new("result", result)],
            )
            .absolute(n.load(Ordering::Relaxed));
        }
        for r in CancelDrop::ALL {
            self.counter(
                "pgwake_cancels_dropped_total",
                vec![Label::new("reason", r.name())],
            )
            .absolute(self.cancels_dropped[r as usize].load(Ordering::Relaxed));
        }
        for (reason, n) in [
            ("password", &self.client_auth_failures),
            ("blocked", &self.client_auth_blocked),
        ] {
            self.counter(
                "pgwake_client_auth_failures_total",
                vec![Label::new("reason", reason)],
            )
            .absolute(n.load(Ordering::Relaxed));
        }
        self.counter("pgwake_client_limit_refusals_total", vec![])
            .absolute(self.client_limit_refusals.load(Ordering::Relaxed));
        for (result, n) in [("ok", &self.reloads_ok), ("failed", &self.reloads_failed)] {
            self.counter("pgwake_reloads_total", vec![Label::new("result", result)])
                .absolute(n.load(Ordering::Relaxed));
        }
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = self.handle.render();
        let histograms = self.histograms.lock().unwrap_or_else(|e| e.into_inner());
        // Each family once, its series together, in the order first registered.
        let mut names: Vec<&'static str> = Vec::new();
        for (name, _, _) in histograms.iter() {
            if !names.contains(name) {
                names.push(name);
            }
        }
        for name in names {
            let help = DESCRIPTIONS
                .iter()
                .find(|(n, _, _)| *n == name)
                .map_or("", |(_, _, h)| *h);
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} histogram");
            for (_, labels, h) in histograms.iter().filter(|(n, _, _)| *n == name) {
                h.render(name, labels, &mut out);
            }
            out.push('\n');
        }
        out
    }
}

pub fn pool_labels(database: &str, user: &str) -> Vec<Label> {
    vec![
        Label::new("database", database.to_owned()),
        Label::new("user", user.to_owned()),
    ]
}

/// Histograms of one pool.
pub struct PoolHistograms {
    pub wait: Arc<Histogram>,
    pub xact: Arc<Histogram>,
    pub query: Arc<Histogram>,
}

/// Counts of one pool, shared by its sessions. Times in microseconds, as
/// PgBouncer's SHOW STATS reports them.
#[derive(Debug, Default)]
pub struct PoolCounts {
    pub xacts: AtomicU64,
    pub queries: AtomicU64,
    pub received: AtomicU64,
    pub sent: AtomicU64,
    pub xact_us: AtomicU64,
    pub query_us: AtomicU64,
    pub wait_us: AtomicU64,
    /// Server connections handed to clients.
    pub assignments: AtomicU64,
    /// Prepared statements found on the server connection, prepared there,
    /// and closed to stay within `max_prepared_statements`.
    pub prepared_hits: AtomicU64,
    pub prepared_misses: AtomicU64,
    pub prepared_evictions: AtomicU64,
    /// Clients logged in to this pool.
    pub clients: AtomicUsize,
    /// Clients holding a server connection.
    pub active: AtomicUsize,
}

impl PoolCounts {
    pub fn add(n: &AtomicU64, v: u64) {
        n.fetch_add(v, Ordering::Relaxed);
    }

    pub fn get(n: &AtomicU64) -> u64 {
        n.load(Ordering::Relaxed)
    }
}

/// Counts since start of one or more pools (SHOW STATS, the stats line).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Totals {
    pub assignments: u64,
    pub xacts: u64,
    pub queries: u64,
    pub received: u64,
    pub sent: u64,
    pub xact_us: u64,
    pub query_us: u64,
    pub wait_us: u64,
}

impl Totals {
    /// Adds a pool's counts.
    pub fn add(&mut self, c: &PoolCounts) {
        let get = PoolCounts::get;
        self.assignments += get(&c.assignments);
        self.xacts += get(&c.xacts);
        self.queries += get(&c.queries);
        self.received += get(&c.received);
        self.sent += get(&c.sent);
        self.xact_us += get(&c.xact_us);
        self.query_us += get(&c.query_us);
        self.wait_us += get(&c.wait_us);
    }

    /// What was counted since `earlier`.
    pub fn since(&self, earlier: &Totals) -> Totals {
        Totals {
            assignments: self.assignments.saturating_sub(earlier.assignments),
            xacts: self.xacts.saturating_sub(earlier.xacts),
            queries: self.queries.saturating_sub(earlier.queries),
            received: self.received.saturating_sub(earlier.received),
            sent: self.sent.saturating_sub(earlier.sent),
            xact_us: self.xact_us.saturating_sub(earlier.xact_us),
            query_us: self.query_us.saturating_sub(earlier.query_us),
            wait_us: self.wait_us.saturating_sub(earlier.wait_us),
        }
    }

    /// Average microseconds per transaction, per query and per wait.
    pub fn averages(&self) -> (u64, u64, u64) {
        (
            self.xact_us.checked_div(self.xacts).unwrap_or(0),
            self.query_us.checked_div(self.queries).unwrap_or(0),
            self.wait_us.checked_div(self.assignments).unwrap_or(0),
        )
    }
}

/// Microseconds in `d`, saturating.
pub fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histograms_render_cumulative_buckets_with_escaped_labels() {
        let m = Metrics::new();
        let h = m.pool_histograms("app\"db", "u\\ser");
        for v in [0.00005, 0.0003, 0.0003, 7.0, 500.0] {
            h.query.record(v);
        }
        let text = m.render();
        let labels = r#"database="app\"db",user="u\\ser""#;
        let line = |suffix: &str| {
            text.lines()
                .find(|l| l.starts_with(&format!("pgwake_query_duration_seconds{suffix}")))
                .unwrap_or_else(|| panic!("{suffix} missing:\n{text}"))
                .to_owned()
        };
        assert_eq!(
            line(&format!("_bucket{{{labels},le=\"0.0001\"}}")),
            format!("pgwake_query_duration_seconds_bucket{{{labels},le=\"0.0001\"}} 1")
        );
        assert!(line(&format!("_bucket{{{labels},le=\"0.0005\"}}")).ends_with(" 3"));
        assert!(line(&format!("_bucket{{{labels},le=\"10\"}}")).ends_with(" 4"));
        assert!(line(&format!("_bucket{{{labels},le=\"+Inf\"}}")).ends_with(" 5"));
        assert!(line(&format!("_count{{{labels}}}")).ends_with(" 5"));
        let sum: f64 = line(&format!("_sum{{{labels}}}"))
            .rsplit(' ')
            .next()
            .unwrap()
            .parse()
            .unwrap();
        assert!((sum - 507.00065).abs() < 1e-6, "{sum}");
        assert_eq!(
            text.matches("# TYPE pgwake_query_duration_seconds histogram")
                .count(),
            1
        );
        // Server-wide histograms have no labels.
        m.wake_seconds.record(42.0);
        assert!(m.render().contains("pgwake_wake_duration_seconds_count 1"));
    }
}
