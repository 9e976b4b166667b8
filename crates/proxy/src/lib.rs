#![deny(unsafe_code)]
//! pgwake's proxy: listeners, client sessions, pools and server connections.
//!
//! [`Proxy::bind`] opens the listeners and starts warming the pools;
//! [`Proxy::run`] serves until its shutdown future completes, then drains:
//! new connections are refused, idle clients are told, transactions in flight
//! get `listen.shutdown_grace` to finish, and server connections end with
//! Terminate.

mod admin;
mod auth;
mod budget;
mod cancel;
mod client_io;
mod clients;
mod control;
mod credentials;
pub mod doctor;
mod listener;
pub mod params;
mod parking;
pub mod peering;
mod plain_send;
pub mod pool;
pub mod prepared;
mod reload;
pub mod server;
mod session;
pub mod stats;
mod stats_log;
pub mod tls;
mod traces;
mod wake;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use pgwake_config::{Config, Route};
use pgwake_credentials::RefreshingCache;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::cancel::CancelRegistry;
use crate::clients::Clients;
use crate::pool::{KeyNames, Pool, PoolKey, PoolKeyRef, PoolSettings, ServerSide};
use crate::server::Target;
use crate::stats::Metrics;

pub use reload::{ConfigSource, Hooks, LogLevelSetter};

/// State shared by every session.
pub struct Shared {
    /// The configuration in force; replaced on reload.
    config: RwLock<Arc<Config>>,
    /// Where new pools connect and how they log in; replaced on reload.
    server: Mutex<ServerSide>,
    /// The servers of `[databases.NAME.server]` entries, by entry name
    /// (a change needs a restart).
    db_servers: HashMap<String, ServerSide>,
    /// The token cache of the credential source, if it has one, and the
    /// token that stops its refresh task.
    refresher: Mutex<Option<(Arc<RefreshingCache>, CancellationToken)>>,
    /// Starts and stops the server (`[lifecycle]`), if configured.
    lifecycle: Option<Arc<pgwake_lifecycle::Lifecycle>>,
    /// Pools, with the client database name whose route made them.
    /// (Looked up at every login: foldhash, seeded per process. A pool
    /// whose first login fails is forgotten, so clients cannot grow the
    /// map with names of their own.)
    pools: Mutex<foldhash::HashMap<PoolKey, (Pool, String)>>,
    cancels: Arc<CancelRegistry>,
    /// Cancels for other replicas' keys (`[peering]`).
    peering: peering::Peering,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) clients: Arc<Clients>,
    pub(crate) timeouts: LiveTimeouts,
    /// Client authentication (`[client_auth]`); its rules and users are
    /// replaced on reload.
    pub(crate) client_auth: auth::ClientAuth,
    /// Room for client messages held whole, shared by all clients.
    pub(crate) buffer_budget: budget::BufferBudget,
    pub(crate) client_limits: Arc<auth::ClientLimits>,
    /// TLS for clients when `listen.client_tls_mode` is not `disable`;
    /// replaced on reload (new certificate files).
    client_tls: RwLock<Option<tls::ClientTlsConfig>>,
    /// PAUSE, KILL and DISABLE from the admin console (and SIGUSR1).
    pub(crate) control: control::Control,
    hooks: Hooks,
    reloading: Mutex<()>,
    /// Woken when a reload or `SET` put a new configuration in force.
    pub(crate) reconfigured: tokio::sync::Notify,
    /// Stop accepting; idle clients leave.
    shutdown: CancellationToken,
    /// `shutdown` was cancelled: one atomic load for the check a session
    /// makes after every transaction (the token's check takes a lock).
    stopping: AtomicBool,
    /// The grace period is over: everything closes.
    hard_stop: CancellationToken,
    /// SHUTDOWN from the admin console.
    stop_request: CancellationToken,
    tasks: TaskTracker,
    /// The client sessions' tasks (a parked client's too, once resumed).
    pub(crate) sessions: TaskTracker,
    /// Idle clients parked outside the runtime.
    pub(crate) parking: Arc<parking::Parking>,
    started: std::time::Instant,
    /// OpenTelemetry traces (`[tracing]`), when on.
    pub(crate) traces: Option<Arc<traces::Traces>>,
}

/// Timeouts that change on reload without touching sessions: milliseconds,
/// 0 for none.
#[derive(Default)]
pub(crate) struct LiveTimeouts {
    query: AtomicU64,
    idle_transaction: AtomicU64,
    client_idle: AtomicU64,
    slow_query: AtomicU64,
}

impl LiveTimeouts {
    fn set(&self, c: &Config) {
        let ms = |d: Option<Duration>| {
            d.map_or(0, |d| {
                u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
            })
        };
        self.query
            .store(ms(c.timeouts.query_timeout), Ordering::Relaxed);
        self.idle_transaction
            .store(ms(c.timeouts.idle_transaction_timeout), Ordering::Relaxed);
        self.client_idle
            .store(ms(c.timeouts.client_idle_timeout), Ordering::Relaxed);
        let slow = (!c.log.slow_query.is_zero()).then_some(c.log.slow_query);
        self.slow_query.store(ms(slow), Ordering::Relaxed);
    }

    fn get(v: &AtomicU64) -> Option<Duration> {
        match v.load(Ordering::Relaxed) {
            0 => None,
            ms => Some(Duration::from_millis(ms)),
        }
    }

    pub fn query(&self) -> Option<Duration> {
        Self::get(&self.query)
    }

    pub fn idle_transaction(&self) -> Option<Duration> {
        Self::get(&self.idle_transaction)
    }

    pub fn client_idle(&self) -> Option<Duration> {
        Self::get(&self.client_idle)
    }

    pub fn slow_query(&self) -> Option<Duration> {
        Self::get(&self.slow_query)
    }
}

/// Reads the files `config` names for clients (the TLS certificate and key,
/// the user file) as `pgwake run` would, so that `pgwake check` finds their
/// problems too. Each problem names its key and file, never a secret.
pub fn check_client_files(config: &Config) -> Vec<String> {
    let mut problems = Vec::new();
    if let Err(e) = client_tls_acceptor(config) {
        problems.push(e);
    }
    if let Err(e) = auth::ClientAuth::prepare(config) {
        problems.push(e);
    }
    problems
}

/// The TLS acceptor for clients under `config`, `None` when TLS is off.
fn client_tls_acceptor(config: &Config) -> Result<Option<tls::ClientTlsConfig>, String> {
    let l = &config.listen;
    match (l.client_tls_mode, &l.client_tls_cert, &l.client_tls_key) {
        (pgwake_config::ClientTlsMode::Disable, _, _) => Ok(None),
        (_, Some(cert), Some(key)) => tls::acceptor(cert, key).map(Some),
        (mode, _, _) => Err(format!(
            "listen.client_tls_mode = {:?} needs listen.client_tls_cert and listen.client_tls_key",
            mode.name()
        )),
    }
}

/// Pool settings for a route under `config`.
fn pool_settings(config: &Config, route: &Route<'_>, prewarm: bool) -> PoolSettings {
    let p = &config.pool;
    PoolSettings {
        mode: route.mode,
        size: route.size,
        min_idle: route.min_idle,
        max_lifetime: p.max_lifetime,
        idle_timeout: p.idle_timeout,
        wait_timeout: p.pool_wait_timeout,
        max_prepared: p.max_prepared_statements,
        prewarm,
    }
}

impl Shared {
    /// The configuration in force.
    pub fn config(&self) -> Arc<Config> {
        self.config
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The TLS acceptor for clients, when TLS is on.
    pub(crate) fn client_tls(&self) -> Option<tls::ClientTlsConfig> {
        self.client_tls
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The pool for `key`, created (and its upkeep started) on first use.
    /// `prewarm`: open `min_idle` connections before any client asks (pools
    /// named in the config); other pools warm up after their first login.
    pub fn pool(
        &self,
        key: PoolKeyRef<'_>,
        route_name: &str,
        route: &Route<'_>,
        prewarm: bool,
    ) -> Pool {
        let mut pools = self.pools.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((p, _)) = pools.get(&key as &dyn KeyNames) {
            return p.clone();
        }
        let key = key.to_key();
        let settings = pool_settings(&self.config(), route, prewarm);
        tracing::info!(pool = %key, size = settings.size, min_idle = settings.min_idle, mode = ?settings.mode, "new pool");
        // An entry with a server of its own: its connections and
        // credentials, and no waking (the lifecycle is `[server]`'s).
        let (server, lifecycle) = match self.db_servers.get(route_name).filter(|_| route.own_server)
        {
            Some(s) => (s.clone(), None),
            None => (
                self.server
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .clone(),
                self.lifecycle.clone(),
            ),
        };
        let pool = Pool::new(
            key.clone(),
            settings,
            server,
            lifecycle,
            self.metrics.clone(),
            self.hard_stop.child_token(),
        );
        self.tasks.spawn(pool.clone().maintain());
        self.tasks.spawn(pool.clone().expire_waits());
        pools.insert(key, (pool.clone(), route_name.to_owned()));
        pool
    }

    /// Drops a pool created for a client whose first login failed (a
    /// database that does not exist, say), so stray names do not pile up.
    pub fn forget_failed_pool(&self, key: PoolKeyRef<'_>) {
        let key = &key as &dyn KeyNames;
        let mut pools = self.pools.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((p, _)) = pools.get(key) {
            if p.defaults().is_none()
                && p.counts() == (0, 0, 0)
                && !p.settings().prewarm
                && p.stats().clients.load(Ordering::Relaxed) == 0
            {
                p.close();
                pools.remove(key);
            }
        }
    }

    /// Whether `[databases.NAME.server]` of entry `name` was set up (at start).
    pub(crate) fn serves_own_server(&self, name: &str) -> bool {
        self.db_servers.contains_key(name)
    }

    /// Shutdown has begun: sessions end after their transaction.
    pub(crate) fn is_stopping(&self) -> bool {
        self.stopping.load(Ordering::Relaxed)
    }

    /// PAUSE, as the console's and SIGUSR1's: no new transactions start
    /// (those in flight finish). Whether pgwake was paused already.
    pub fn pause(&self) -> bool {
        let was = self.control.pause(None);
        if !was {
            tracing::info!("PAUSE: no new transactions start until RESUME");
        }
        was
    }

    /// RESUME, as the console's and SIGUSR2's: ends PAUSE. Whether pgwake
    /// was paused.
    pub fn resume(&self) -> bool {
        let was = self.control.resume(None);
        if was {
            tracing::info!("RESUME: transactions start again");
        }
        was
    }

    /// `host:port` of the server.
    pub(crate) fn server_addr(&self) -> String {
        let c = self.config();
        format!("{}:{}", c.server.host, c.server.port)
    }

    /// The token cache's counts, when the credential source has one.
    pub(crate) fn refresher_stats(&self) -> Option<pgwake_credentials::CacheStats> {
        self.refresher
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .map(|(c, _)| c.stats())
    }

    /// Asks the proxy to shut down as on SIGTERM.
    pub fn request_shutdown(&self) {
        self.stop_request.cancel();
    }

    /// The server's lifecycle, when `[lifecycle]` has a provider.
    pub(crate) fn lifecycle(&self) -> Option<&Arc<pgwake_lifecycle::Lifecycle>> {
        self.lifecycle.as_ref()
    }

    /// Creates (and so starts warming) the pools a client is known to need,
    /// so that the first query is fast.
    fn warm_configured_pools(&self, c: &Config) {
        let mut warm: Vec<String> = c.databases.keys().cloned().collect();
        if let Some(db) = &c.server.dbname {
            if c.databases.is_empty() {
                warm.push(db.clone());
            }
        }
        for db in warm {
            if let Some(route) = c.route(&db) {
                if let Some(user) = route.user {
                    let key = PoolKeyRef {
                        database: &db,
                        dbname: route.dbname,
                        user,
                    };
                    self.pool(key, &db, &route, true);
                }
            }
        }
    }

    /// Keeps a token cache refreshing until the proxy stops or a reload
    /// replaces it.
    fn run_refresher(&self, cache: Arc<RefreshingCache>) {
        self.trace_fetches(&cache);
        let stop = self.hard_stop.child_token();
        let old = self
            .refresher
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .replace((cache.clone(), stop.clone()));
        if let Some((_, old_stop)) = old {
            old_stop.cancel();
        }
        self.tasks.spawn(async move {
            tokio::select! {
                _ = stop.cancelled() => {}
                _ = cache.run() => {}
            }
        });
    }

    /// Makes each fetch of `cache` a small trace of its own (`[tracing]`).
    fn trace_fetches(&self, cache: &RefreshingCache) {
        if let Some(t) = self.traces.clone() {
            cache.observe_fetches(Box::new(move |r| t.credential_trace(r)));
        }
    }

    /// Runs `task` until the proxy stops.
    fn spawn_until_stopped(&self, task: impl std::future::Future<Output = ()> + Send + 'static) {
        let stop = self.hard_stop.clone();
        self.tasks.spawn(async move {
            tokio::select! {
                _ = stop.cancelled() => {}
                _ = task => {}
            }
        });
    }

    /// Every pool, for status and shutdown, in a stable order.
    pub fn pools(&self) -> Vec<Pool> {
        let mut v: Vec<Pool> = self
            .pools
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .map(|(p, _)| p.clone())
            .collect();
        v.sort_by(|a, b| (&a.key().dbname, &a.key().user).cmp(&(&b.key().dbname, &b.key().user)));
        v
    }
}

/// Why the proxy could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot listen on {addr} ({key}): {source}")]
    Listen {
        addr: String,
        /// `listen.addr`, `listen.extra_addrs` or `listen.tcp_defer_accept`.
        key: &'static str,
        source: std::io::Error,
    },
    /// The client TLS settings or the server TLS settings cannot be built
    /// (their builders report a message, not a typed error).
    #[error("{0}")]
    Tls(String),
    /// The `[client_auth]` rules or user file are invalid (a message from
    /// reading them).
    #[error("{0}")]
    ClientAuth(String),
    /// The credential source cannot be set up. Not the `source`: its text
    /// is already in this error's.
    #[error("server.auth: {0}")]
    Credentials(pgwake_credentials::CredentialError),
    /// The credential source of a `[databases.NAME.server]` cannot be set up.
    #[error("databases.{database}.server.auth: {error}")]
    DatabaseCredentials {
        database: String,
        error: pgwake_credentials::CredentialError,
    },
    /// The epoll set for parked idle clients cannot be made (out of file
    /// descriptors, say).
    #[error("cannot set up parking for idle clients: {0}")]
    Parking(std::io::Error),
    /// The `[lifecycle]` provider cannot be set up (a message from building it).
    #[error("{0}")]
    Lifecycle(String),
    /// The `[tracing]` exporter cannot be set up.
    #[error("{0}")]
    Tracing(String),
    #[error("cannot listen on {addr} (admin.addr): {source}")]
    Admin {
        addr: String,
        source: std::io::Error,
    },
    #[error("cannot create unix socket {path} (listen.unix_socket_dir): {source}")]
    Unix {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// A bound, running proxy.
pub struct Proxy {
    shared: Arc<Shared>,
    listeners: listener::Listeners,
    admin_addr: Option<SocketAddr>,
}

impl Proxy {
    /// Binds the listeners and starts warming the pools of the configured
    /// databases (and of `server.dbname`). Must run inside a tokio runtime.
    pub async fn bind(config: Config) -> Result<Proxy, StartError> {
        Self::bind_with(config, Hooks::default()).await
    }

    /// Like [`Proxy::bind`], with the means to reload the configuration
    /// and change the log level (from the command line).
    pub async fn bind_with(config: Config, hooks: Hooks) -> Result<Proxy, StartError> {
        let creds =
            credentials::from_config(&config.server.auth).map_err(StartError::Credentials)?;
        let mut db_servers = HashMap::new();
        let mut db_refreshers = Vec::new();
        for (name, db) in &config.databases {
            let Some(s) = &db.server else { continue };
            let c = credentials::from_config(&s.auth).map_err(|error| {
                StartError::DatabaseCredentials {
                    database: name.clone(),
                    error,
                }
            })?;
            let target = Target::from_config(s)
                .map_err(|e| StartError::Tls(format!("databases.{name}.server: {e}")))?;
            db_refreshers.extend(c.refresher);
            db_servers.insert(
                name.clone(),
                ServerSide {
                    target: Arc::new(target),
                    credentials: c.source,
                },
            );
        }
        let (lifecycle, arm_tokens) = wake::from_config(&config).map_err(StartError::Lifecycle)?;
        let metrics = Arc::new(Metrics::new());
        let traced = traces::Traces::from_config(&config.tracing).map_err(StartError::Tracing)?;
        let (traces, export) = match traced {
            Some((t, task)) => (Some(t), Some(task)),
            None => (None, None),
        };
        if let Some(l) = &lifecycle {
            let h = metrics.wake_seconds.clone();
            let t = traces.clone();
            let provider = l.describe();
            l.observe_wakes(Box::new(move |w| {
                h.record(w.took.as_secs_f64());
                if let Some(t) = &t {
                    t.wake_trace(&wake::report_trace(w, &provider), &w.trigger);
                }
            }));
        }
        let timeouts = LiveTimeouts::default();
        timeouts.set(&config);
        let client_auth = auth::ClientAuth::new(&config).map_err(StartError::ClientAuth)?;
        let client_tls = client_tls_acceptor(&config).map_err(StartError::Tls)?;
        let parking = parking::Parking::new().map_err(StartError::Parking)?;
        let shared = Arc::new(Shared {
            client_auth,
            client_limits: Arc::new(auth::ClientLimits::default()),
            buffer_budget: budget::BufferBudget::new(config.listen.client_buffer_budget),
            client_tls: RwLock::new(client_tls),
            server: Mutex::new(ServerSide {
                target: Arc::new(Target::from_config(&config.server).map_err(StartError::Tls)?),
                credentials: creds.source,
            }),
            db_servers,
            refresher: Mutex::new(None),
            lifecycle,
            pools: Mutex::new(foldhash::HashMap::default()),
            cancels: Arc::new(CancelRegistry::default()),
            peering: peering::Peering::default(),
            metrics,
            clients: Arc::new(Clients::default()),
            timeouts,
            control: control::Control::default(),
            hooks,
            reloading: Mutex::new(()),
            reconfigured: tokio::sync::Notify::new(),
            shutdown: CancellationToken::new(),
            stopping: AtomicBool::new(false),
            hard_stop: CancellationToken::new(),
            stop_request: CancellationToken::new(),
            tasks: TaskTracker::new(),
            sessions: TaskTracker::new(),
            parking: Arc::new(parking),
            started: std::time::Instant::now(),
            traces,
            config: RwLock::new(Arc::new(config)),
        });
        if let Some(task) = export {
            shared.tasks.spawn(task);
        }
        let listeners = listener::Listeners::bind(&shared).await?;
        shared.peering.set_listen_addr(listeners.tcp_addr);
        let config = shared.config();
        let admin_addr = admin::http::start(&shared, &config.admin).await?;
        // Token caches fetch their first token now, then refresh ahead of expiry.
        if let Some(cache) = creds.refresher {
            shared.run_refresher(cache);
        }
        if let Some(cache) = arm_tokens {
            shared.trace_fetches(&cache);
            shared.spawn_until_stopped(cache.run());
        }
        for cache in db_refreshers {
            shared.trace_fetches(&cache);
            shared.spawn_until_stopped(cache.run());
        }
        if let Some(l) = shared.lifecycle.clone() {
            tracing::info!(provider = %l.describe(), "server lifecycle: wake on connect{}", match config.lifecycle.idle_stop_after {
                Some(d) => format!(", stop after {}s idle", d.as_secs()),
                None => String::new(),
            });
            if config.lifecycle.wake_on_startup {
                let l2 = l.clone();
                shared.spawn_until_stopped(async move {
                    if let Err(e) = l2.wake_now().await {
                        tracing::warn!(error = %e, "wake on startup failed");
                    }
                });
            }
            if let Some(after) = config.lifecycle.idle_stop_after {
                shared.spawn_until_stopped(wake::idle_stop(shared.clone(), l, after));
            }
        }
        let users = shared.client_auth.user_count();
        tracing::info!(
            tls = config.listen.client_tls_mode.name(),
            users,
            rules = config.client_auth.rules.len(),
            "client authentication"
        );
        if config.peering.enabled() {
            tracing::info!(
                peers = ?config.peering.peers,
                service = ?config.peering.service,
                "peering: cancel requests for other replicas' clients are forwarded to them"
            );
        }
        shared.spawn_until_stopped(stats_log::run(shared.clone()));
        shared.warm_configured_pools(&config);
        Ok(Proxy {
            shared,
            listeners,
            admin_addr,
        })
    }

    /// The TCP address clients connect to.
    pub fn local_addr(&self) -> SocketAddr {
        self.listeners.tcp_addr
    }

    /// The admin HTTP server's address, when it runs.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin_addr
    }

    /// Shared state, for status reporting.
    pub fn shared(&self) -> Arc<Shared> {
        self.shared.clone()
    }

    /// Serves until `shutdown` completes, then drains gracefully.
    pub async fn run(self, shutdown: impl std::future::Future<Output = ()>) {
        let shared = self.shared.clone();
        // A task of its own: waking for a new client polls the accept loop
        // only, not the stop signals watched here as well.
        let mut accept = tokio::spawn(self.listeners.serve(shared.clone()));
        tokio::select! {
            _ = &mut accept => {}
            _ = shutdown => {}
            _ = shared.stop_request.cancelled() => tracing::info!("SHUTDOWN from the admin console"),
        }
        let config = shared.config();
        tracing::info!(grace = ?config.listen.shutdown_grace, "shutting down: no new connections; waiting for transactions in flight");
        shared.stopping.store(true, Ordering::Relaxed);
        shared.shutdown.cancel();
        shared.clients.shut_down();
        shared.control.resume_everything();
        shared.tasks.close();
        let grace = config.listen.shutdown_grace;
        // Sessions hold connections back to the pools until they end.
        let sessions_done = tokio::time::timeout(grace, &mut accept).await.is_ok();
        if !sessions_done {
            tracing::warn!("grace period over: closing the remaining client connections");
            accept.abort();
        }
        shared.hard_stop.cancel();
        for pool in shared.pools() {
            pool.close();
        }
        if let Some(l) = &shared.lifecycle {
            if config.lifecycle.stop_on_shutdown {
                if let Err(e) = l
                    .stop_server("pgwake is shutting down (stop_on_shutdown)")
                    .await
                {
                    tracing::warn!(error = %e, "stop on shutdown failed");
                }
            }
        }
        // The spans still queued go out in one last export.
        if let Some(t) = &shared.traces {
            t.stop();
        }
        // Give Terminate messages and upkeep tasks a moment to finish.
        let _ = tokio::time::timeout(std::time::Duration::from_secs(2), shared.tasks.wait()).await;
        tracing::info!("pgwake stopped");
    }
}
