//! Wiring the server lifecycle into the proxy: the provider `[lifecycle]`
//! describes, the readiness probe, the idle stop, and notices to clients
//! waiting for a wake.

use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use pgwake_config::{AuthMethod, Config, ProviderKind};
use pgwake_credentials::{AzureSource, CredentialSource, RefreshingCache};
use pgwake_lifecycle::{
    AzureProvider, CommandProvider, Lifecycle, Probe, Provider, ServerState, Settings,
};
use pgwake_protocol::backend::{ErrorMessage, Severity};
use pgwake_protocol::sqlstate;

use crate::Shared;

/// ARM's token audience.
const ARM_SCOPE: &str = "https://management.azure.com/.default";

/// The lifecycle `[lifecycle]` describes (`None` for `provider = "none"`),
/// and the ARM token cache to keep refreshing, if any.
type Built = (Option<Arc<Lifecycle>>, Option<Arc<RefreshingCache>>);

pub(crate) fn from_config(config: &Config) -> Result<Built, String> {
    let l = &config.lifecycle;
    let mut refresher = None;
    let provider: Arc<dyn Provider> = match l.provider {
        ProviderKind::None => return Ok((None, None)),
        ProviderKind::Command => Arc::new(CommandProvider {
            status: l.command.status.clone().unwrap_or_default(),
            start: l.command.start.clone().unwrap_or_default(),
            stop: l.command.stop.clone(),
        }),
        ProviderKind::Azure => {
            let a = &config.server.auth;
            let method = l.identity.unwrap_or(if a.effective_method().is_azure() {
                a.effective_method()
            } else {
                AuthMethod::AzureManagedIdentity
            });
            let identity = crate::credentials::azure_identity(method, a);
            let source = AzureSource::new(identity, Some(ARM_SCOPE.to_string()))
                .map_err(|e| format!("lifecycle: {e}"))?;
            let cache =
                RefreshingCache::new(Box::new(source), crate::credentials::refresh_settings(a));
            refresher = Some(cache.clone());
            let token: Arc<dyn CredentialSource> = cache;
            Arc::new(
                AzureProvider::new(
                    &l.arm_endpoint,
                    l.resource_id.as_deref().unwrap_or_default(),
                    &l.api_version,
                    token,
                )
                .map_err(|e| e.to_string())?,
            )
        }
    };
    let host = config.server.host.clone();
    let port = config.server.port;
    // The server is up when it accepts TCP connections; a login that then
    // meets "the database system is starting up" is retried by the pool.
    let probe: Probe = Arc::new(move || {
        let host = host.clone();
        Box::pin(async move {
            matches!(
                tokio::time::timeout(
                    Duration::from_secs(1),
                    tokio::net::TcpStream::connect((host.as_str(), port))
                )
                .await,
                Ok(Ok(_))
            )
        })
    });
    let lifecycle = Lifecycle::new(
        provider,
        Settings {
            wake_timeout: l.wake_timeout,
            state_cache_ttl: l.state_cache_ttl,
        },
        probe,
    );
    Ok((Some(lifecycle), refresher))
}

/// The notice a client waiting for a wake receives every few seconds.
pub(crate) const NOTICE_EVERY: Duration = Duration::from_secs(2);

/// Appends "waking the database server, waited N s" when a wake is under way.
pub(crate) fn waking_notice(lifecycle: &Lifecycle, waited: Duration, out: &mut BytesMut) {
    if lifecycle.waking_since().is_some() {
        ErrorMessage::new(
            Severity::Notice,
            sqlstate::SUCCESSFUL_COMPLETION,
            format!("waking the database server, waited {} s", waited.as_secs()),
        )
        .write(out);
    }
}

/// Starts the statement with which pgwake asks whether others use the server.
const IDLE_CHECK_MARK: &str = "/* pgwake idle check */";

/// Stops the server after `after` without client activity, when the server
/// itself shows no other client sessions active within that period.
/// The advisory lock key a replica holds while it decides to stop the
/// server ("pgwake" in ASCII, then 1).
const IDLE_STOP_LOCK: i64 = 0x7067_7761_6b65_0001;

/// A finished wake as the traces module records it.
pub(crate) fn report_trace(
    w: &pgwake_lifecycle::WakeReport,
    provider: &str,
) -> crate::traces::WakeTrace {
    let began = w.began.into_std();
    crate::traces::WakeTrace {
        began,
        ended: began + w.took,
        provider: provider.to_owned(),
        state: w.state.clone(),
        waiters: w.waiters,
        client: w
            .trigger
            .strip_prefix("client ")
            .and_then(|r| r.split(' ').next())
            .map(str::to_owned),
        error: w.error.clone(),
    }
}

pub(crate) async fn idle_stop(shared: Arc<Shared>, lifecycle: Arc<Lifecycle>, after: Duration) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if lifecycle.idle_for() < after || lifecycle.waking_since().is_some() {
            continue;
        }
        let pools = shared.pools();
        if pools.iter().any(|p| {
            let (total, idle, waiting) = p.counts();
            total > idle || waiting > 0
        }) {
            continue;
        }
        match lifecycle.state().await {
            Ok(ServerState::Ready) => {}
            _ => continue,
        }
        // Ask the server whether anyone else used it within the period.
        let Some(pool) = pools.iter().find(|p| p.defaults().is_some()) else {
            continue;
        };
        let mine: Vec<String> = pools
            .iter()
            .flat_map(|p| p.idle_backend_pids())
            .map(|pid| pid.to_string())
            .collect();
        let Ok(mut conn) = pool.checkout_quiet().await else {
            continue;
        };
        // Sessions that count as someone else's use: any not idle (but not
        // those still logging in, whose state is null), and idle ones that
        // ran something within the period, except connections that never
        // ran a query (another pgwake's warm or freshly recycled pool
        // connections) and other pgwakes running this same check; otherwise
        // replicas sharing a server would keep each other from stopping it.
        let sql = format!(
            "{IDLE_CHECK_MARK} DO $$ BEGIN IF EXISTS (SELECT 1 FROM pg_stat_activity \
             WHERE backend_type = 'client backend' AND pid <> pg_backend_pid() \
             AND NOT (pid = ANY ('{{{}}}'::int[])) \
             AND (coalesce(state, 'idle') <> 'idle' OR (state_change > now() - interval '{} seconds' \
             AND query <> '' AND query NOT LIKE '{IDLE_CHECK_MARK}%'))) \
             THEN RAISE EXCEPTION 'busy'; END IF; \
             IF NOT pg_try_advisory_lock({IDLE_STOP_LOCK}) THEN RAISE EXCEPTION 'busy'; END IF; END $$",
            mine.join(","),
            after.as_secs().max(1)
        );
        // Only one replica decides at a time: the check ends by taking a
        // session lock, held on this connection until the stop is sent.
        // Without it, two replicas checking a moment apart both found the
        // server unused and both stopped it.
        let busy = conn.conn.run_internal(&sql, Duration::from_secs(10)).await;
        match busy {
            Ok(None) => {}
            Ok(Some(_)) => {
                pool.checkin(conn);
                tracing::debug!("idle stop: the server has other client sessions; not stopping");
                lifecycle.touch();
                continue;
            }
            Err(e) => {
                tracing::debug!(error = %e, "idle stop: cannot check the server's activity");
                continue;
            }
        }
        if lifecycle.idle_for() >= after {
            for p in &pools {
                p.drain_idle();
            }
            let why = format!("no client activity for {}s", after.as_secs());
            let began = std::time::Instant::now();
            let stopped = lifecycle.stop_server(&why).await;
            if let Err(e) = &stopped {
                tracing::warn!(error = %e, "idle stop failed");
            }
            if let Some(t) = &shared.traces {
                let error = stopped.as_ref().err().map(ToString::to_string);
                t.idle_stop_trace(
                    began,
                    &lifecycle.describe(),
                    lifecycle.idle_for(),
                    error.as_deref(),
                );
            }
        }
        // Closing the connection gives the lock back, whatever happened.
        drop(conn);
        lifecycle.touch();
    }
}
