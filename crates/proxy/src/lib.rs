#![forbid(unsafe_code)]
//! pgwake's proxy: listeners, client sessions, pools and server connections.
//!
//! [`Proxy::bind`] opens the listeners and starts warming the pools;
//! [`Proxy::run`] serves until its shutdown future completes, then drains:
//! new connections are refused, idle clients are told, transactions in flight
//! get `listen.shutdown_grace` to finish, and server connections end with
//! Terminate.

mod cancel;
mod credentials;
pub mod doctor;
mod listener;
pub mod params;
pub mod pool;
pub mod server;
mod session;
pub mod tls;
mod wake;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use pgwake_config::{Config, Route};
use pgwake_credentials::CredentialSource;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::cancel::CancelRegistry;
use crate::pool::{Pool, PoolKey, PoolSettings};
use crate::server::Target;

/// State shared by every session.
pub struct Shared {
    pub config: Config,
    target: Arc<Target>,
    credentials: Arc<dyn CredentialSource>,
    /// Starts and stops the server (`[lifecycle]`), if configured.
    lifecycle: Option<Arc<pgwake_lifecycle::Lifecycle>>,
    pools: Mutex<HashMap<PoolKey, Pool>>,
    cancels: Arc<CancelRegistry>,
    /// Stop accepting; idle clients leave.
    shutdown: CancellationToken,
    /// The grace period is over: everything closes.
    hard_stop: CancellationToken,
    tasks: TaskTracker,
}

impl Shared {
    /// The pool for `key`, created (and its upkeep started) on first use.
    /// `prewarm`: open `min_idle` connections before any client asks (pools
    /// named in the config); other pools warm up after their first login.
    pub fn pool(&self, key: PoolKey, route: &Route, prewarm: bool) -> Pool {
        let mut pools = self.pools.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(p) = pools.get(&key) {
            return p.clone();
        }
        let p = &self.config.pool;
        let settings = PoolSettings {
            mode: route.mode,
            size: route.size,
            min_idle: route.min_idle,
            max_lifetime: p.max_lifetime,
            idle_timeout: p.idle_timeout,
            wait_timeout: p.pool_wait_timeout,
            prewarm,
        };
        tracing::info!(pool = %key, size = settings.size, min_idle = settings.min_idle, mode = ?settings.mode, "new pool");
        let pool = Pool::new(
            key.clone(),
            settings,
            self.target.clone(),
            self.credentials.clone(),
            self.lifecycle.clone(),
            self.hard_stop.child_token(),
        );
        self.tasks.spawn(pool.clone().maintain());
        pools.insert(key, pool.clone());
        pool
    }

    /// Drops a pool created for a client whose first login failed (a
    /// database that does not exist, say), so stray names do not pile up.
    pub fn forget_failed_pool(&self, key: &PoolKey) {
        let mut pools = self.pools.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(p) = pools.get(key) {
            if p.defaults().is_none() && p.counts() == (0, 0, 0) && !p.settings().prewarm {
                p.close();
                pools.remove(key);
            }
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

    /// Every pool, for status and shutdown.
    pub fn pools(&self) -> Vec<Pool> {
        self.pools
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect()
    }
}

/// Why the proxy could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot listen on {addr} (listen.addr): {source}")]
    Listen {
        addr: String,
        source: std::io::Error,
    },
    #[error("{0}")]
    Tls(String),
    #[error("server.auth: {0}")]
    Credentials(String),
    #[error("{0}")]
    Lifecycle(String),
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
}

impl Proxy {
    /// Binds the listeners and starts warming the pools of the configured
    /// databases (and of `server.dbname`). Must run inside a tokio runtime.
    pub async fn bind(config: Config) -> Result<Proxy, StartError> {
        let creds = credentials::from_config(&config.server.auth)
            .map_err(|e| StartError::Credentials(e.to_string()))?;
        let (lifecycle, arm_tokens) = wake::from_config(&config).map_err(StartError::Lifecycle)?;
        let shared = Arc::new(Shared {
            target: Arc::new(Target::from_config(&config.server).map_err(StartError::Tls)?),
            credentials: creds.source,
            lifecycle,
            pools: Mutex::new(HashMap::new()),
            cancels: Arc::new(CancelRegistry::default()),
            shutdown: CancellationToken::new(),
            hard_stop: CancellationToken::new(),
            tasks: TaskTracker::new(),
            config,
        });
        let listeners = listener::Listeners::bind(&shared).await?;
        // Token caches fetch their first token now, then refresh ahead of expiry.
        for cache in [creds.refresher, arm_tokens].into_iter().flatten() {
            shared.spawn_until_stopped(cache.run());
        }
        if let Some(l) = shared.lifecycle.clone() {
            tracing::info!(provider = %l.describe(), "server lifecycle: wake on connect{}", match shared.config.lifecycle.idle_stop_after {
                Some(d) => format!(", stop after {}s idle", d.as_secs()),
                None => String::new(),
            });
            if shared.config.lifecycle.wake_on_startup {
                let l2 = l.clone();
                shared.spawn_until_stopped(async move {
                    if let Err(e) = l2.wake_now().await {
                        tracing::warn!(error = %e, "wake on startup failed");
                    }
                });
            }
            if let Some(after) = shared.config.lifecycle.idle_stop_after {
                shared.spawn_until_stopped(wake::idle_stop(shared.clone(), l, after));
            }
        }
        // Warm the pools a client is known to need, so the first query is fast.
        let c = &shared.config;
        let mut warm: Vec<String> = c.databases.keys().cloned().collect();
        if let Some(db) = &c.server.dbname {
            if c.databases.is_empty() {
                warm.push(db.clone());
            }
        }
        for db in warm {
            if let Some(route) = c.route(&db) {
                if let Some(user) = route.user.clone() {
                    shared.pool(
                        PoolKey {
                            dbname: route.dbname.clone(),
                            user,
                        },
                        &route,
                        true,
                    );
                }
            }
        }
        Ok(Proxy { shared, listeners })
    }

    /// The TCP address clients connect to.
    pub fn local_addr(&self) -> SocketAddr {
        self.listeners.tcp_addr
    }

    /// Shared state, for status reporting.
    pub fn shared(&self) -> Arc<Shared> {
        self.shared.clone()
    }

    /// Serves until `shutdown` completes, then drains gracefully.
    pub async fn run(self, shutdown: impl std::future::Future<Output = ()>) {
        let shared = self.shared.clone();
        let accept = self.listeners.serve(shared.clone());
        tokio::pin!(accept);
        tokio::select! {
            _ = &mut accept => {}
            _ = shutdown => {}
        }
        tracing::info!(grace = ?shared.config.listen.shutdown_grace, "shutting down: no new connections; waiting for transactions in flight");
        shared.shutdown.cancel();
        shared.tasks.close();
        let grace = shared.config.listen.shutdown_grace;
        // Sessions hold connections back to the pools until they end.
        let sessions_done = tokio::time::timeout(grace, accept).await.is_ok();
        if !sessions_done {
            tracing::warn!("grace period over: closing the remaining client connections");
        }
        shared.hard_stop.cancel();
        for pool in shared.pools() {
            pool.close();
        }
        if let Some(l) = &shared.lifecycle {
            if shared.config.lifecycle.stop_on_shutdown {
                if let Err(e) = l
                    .stop_server("pgwake is shutting down (stop_on_shutdown)")
                    .await
                {
                    tracing::warn!(error = %e, "stop on shutdown failed");
                }
            }
        }
        // Give Terminate messages and upkeep tasks a moment to finish.
        let _ = tokio::time::timeout(std::time::Duration::from_secs(2), shared.tasks.wait()).await;
        tracing::info!("pgwake stopped");
    }
}
