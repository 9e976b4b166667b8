//! The admin HTTP server: `/metrics` (Prometheus), `/healthz` (the process
//! answers; never touches the database) and `/readyz` (warm and ready to
//! serve; `?wait=30s` blocks until then).

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::extract::{Query, State};
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use metrics::Label;
use pgwake_lifecycle::ServerState;

use crate::stats::pool_labels;
use crate::{Shared, StartError};

/// Longest `/readyz?wait=`.
const MAX_WAIT: Duration = Duration::from_secs(300);

/// Binds `addr` (empty: no server) and serves until the proxy stops.
pub(crate) async fn start(
    shared: &Arc<Shared>,
    admin: &pgwake_config::Admin,
) -> Result<Option<std::net::SocketAddr>, StartError> {
    if admin.addr.is_empty() {
        return Ok(None);
    }
    let err = |source| StartError::Admin {
        addr: admin.addr.clone(),
        source,
    };
    let sock = admin.socket_addr().ok_or_else(|| {
        err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "not an address like 127.0.0.1:9930",
        ))
    })?;
    let listener = tokio::net::TcpListener::bind(sock).await.map_err(err)?;
    let local = listener.local_addr().map_err(err)?;
    tracing::info!(addr = %local, "admin HTTP: /metrics /healthz /readyz");
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(Arc::downgrade(shared));
    shared.spawn_until_stopped(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "admin HTTP server stopped");
        }
    });
    Ok(Some(local))
}

type AppState = State<std::sync::Weak<Shared>>;

fn gone() -> axum::response::Response {
    (StatusCode::SERVICE_UNAVAILABLE, "pgwake is stopping\n").into_response()
}

async fn healthz(State(shared): AppState) -> axum::response::Response {
    match shared.upgrade() {
        Some(_) => (StatusCode::OK, "ok\n").into_response(),
        None => gone(),
    }
}

async fn readyz(
    State(shared): AppState,
    Query(q): Query<HashMap<String, String>>,
) -> axum::response::Response {
    let wait = match q.get("wait").map(|w| humantime::parse_duration(w)) {
        None => Duration::ZERO,
        Some(Ok(d)) => d.min(MAX_WAIT),
        Some(Err(e)) => {
            return (
                StatusCode::BAD_REQUEST,
                format!("wait: {e} (use e.g. wait=30s)\n"),
            )
                .into_response()
        }
    };
    let until = tokio::time::Instant::now() + wait;
    loop {
        let Some(s) = shared.upgrade() else {
            return gone();
        };
        let verdict = readiness(&s);
        drop(s);
        match verdict {
            Ok(why) => return (StatusCode::OK, format!("ready: {why}\n")).into_response(),
            Err(why) if tokio::time::Instant::now() >= until => {
                return (
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("not ready: {why}\n"),
                )
                    .into_response()
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

/// Ready: listening, and every pool the configuration names holds its
/// `min_idle` connections, unless the server is stopped on purpose (it is
/// then woken by the first client).
pub(crate) fn readiness(shared: &Shared) -> Result<String, String> {
    if shared.shutdown.is_cancelled() {
        return Err("shutting down".into());
    }
    if let Some(l) = shared.lifecycle() {
        if let Some(s @ (ServerState::Stopped | ServerState::Stopping)) = l.last_state() {
            return Ok(format!(
                "the server is {}; pgwake starts it when a client connects",
                s.name().to_ascii_lowercase()
            ));
        }
    }
    let mut warm = 0;
    for p in shared.pools() {
        let snap = p.snapshot();
        if !snap.settings.prewarm {
            continue;
        }
        let need = snap.settings.min_idle.min(snap.settings.size);
        let open = snap.total.saturating_sub(snap.login);
        if open < need {
            return Err(format!(
                "pool {} has {open} of {need} server connections open",
                p.key()
            ));
        }
        warm += 1;
    }
    Ok(format!("{warm} pools warm"))
}

async fn metrics(State(shared): AppState) -> axum::response::Response {
    let Some(shared) = shared.upgrade() else {
        return gone();
    };
    publish(&shared);
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        shared.metrics.render(),
    )
        .into_response()
}

/// Copies the current counts and states into the registry.
fn publish(shared: &Shared) {
    let m = &shared.metrics;
    m.publish();
    let as_f64 = |n: usize| n as f64;
    // Pools that never logged in (a mistyped database) leave no series.
    for p in shared
        .pools()
        .into_iter()
        .filter(|p| p.defaults().is_some())
    {
        let key = p.key();
        let labels = || pool_labels(&key.database, &key.user);
        let with = |state: &'static str| {
            let mut l = labels();
            l.push(Label::new("state", state));
            l
        };
        let snap = p.snapshot();
        let c = p.stats();
        let clients = c.clients.load(Ordering::Relaxed);
        let active = c.active.load(Ordering::Relaxed);
        for (state, n) in [
            ("active", active),
            ("waiting", snap.waiting),
            ("idle", clients.saturating_sub(active + snap.waiting)),
        ] {
            m.gauge("pgwake_client_connections", with(state))
                .set(as_f64(n));
        }
        for (state, n) in [
            ("active", snap.active()),
            ("idle", snap.idle),
            ("login", snap.login),
        ] {
            m.gauge("pgwake_server_connections", with(state))
                .set(as_f64(n));
        }
        m.gauge("pgwake_pool_size", labels())
            .set(as_f64(snap.settings.size));
        for (name, v) in [
            ("pgwake_transactions_total", &c.xacts),
            ("pgwake_queries_total", &c.queries),
            ("pgwake_received_bytes_total", &c.received),
            ("pgwake_sent_bytes_total", &c.sent),
            ("pgwake_prepared_statement_hits_total", &c.prepared_hits),
            ("pgwake_prepared_statement_misses_total", &c.prepared_misses),
            (
                "pgwake_prepared_statement_evictions_total",
                &c.prepared_evictions,
            ),
        ] {
            m.counter(name, labels())
                .absolute(v.load(Ordering::Relaxed));
        }
    }
    m.gauge("pgwake_clients_parked", vec![])
        .set(as_f64(shared.parking.count()));
    if let Some(st) = shared.refresher_stats() {
        m.counter("pgwake_credential_fetches_total", vec![])
            .absolute(st.fetches);
        m.counter("pgwake_credential_fetch_failures_total", vec![])
            .absolute(st.failures);
        m.gauge("pgwake_credential_valid", vec![])
            .set(if st.valid { 1.0 } else { 0.0 });
        if let Some(exp) = st.expires_at {
            let secs = match exp.duration_since(SystemTime::now()) {
                Ok(d) => d.as_secs_f64(),
                Err(e) => -e.duration().as_secs_f64(),
            };
            m.gauge("pgwake_credential_expiry_seconds", vec![])
                .set(secs);
        }
    }
    if let Some(l) = shared.lifecycle() {
        let current = l.last_state();
        for state in [
            ServerState::Ready,
            ServerState::Starting,
            ServerState::Stopping,
            ServerState::Stopped,
        ] {
            let name = state.name().to_ascii_lowercase();
            let on = current.as_ref() == Some(&state);
            m.gauge("pgwake_server_state", vec![Label::new("state", name)])
                .set(if on { 1.0 } else { 0.0 });
        }
        let st = l.stats();
        m.counter("pgwake_wakes_total", vec![]).absolute(st.wakes);
        m.counter("pgwake_wake_failures_total", vec![])
            .absolute(st.wake_failures);
        m.counter("pgwake_idle_stops_total", vec![])
            .absolute(st.stops);
    }
    if let Some(t) = &shared.traces {
        let c = &t.counts;
        m.counter("pgwake_trace_spans_exported_total", vec![])
            .absolute(c.exported.load(std::sync::atomic::Ordering::Relaxed));
        for (reason, n) in [
            ("queue_full", &c.dropped_queue_full),
            ("export_failed", &c.dropped_export_failed),
        ] {
            m.counter(
                "pgwake_trace_spans_dropped_total",
                vec![Label::new("reason", reason)],
            )
            .absolute(n.load(std::sync::atomic::Ordering::Relaxed));
        }
    }
    m.gauge("pgwake_paused", vec![])
        .set(if shared.control.paused_all() {
            1.0
        } else {
            0.0
        });
    let budget = &shared.buffer_budget;
    m.gauge(
        "pgwake_client_buffer_bytes",
        vec![Label::new("kind", "in_use")],
    )
    .set(budget.in_use() as f64);
    m.gauge(
        "pgwake_client_buffer_bytes",
        vec![Label::new("kind", "budget")],
    )
    .set(budget.bytes() as f64);
    for (reason, n) in budget.refusals() {
        m.counter(
            "pgwake_client_buffer_refusals_total",
            vec![Label::new("reason", reason)],
        )
        .absolute(n);
    }
}
