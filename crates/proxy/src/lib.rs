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
mod listener;
pub mod params;
pub mod pool;
pub mod server;
mod session;
pub mod tls;

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
        let shared = Arc::new(Shared {
            target: Arc::new(Target::from_config(&config.server).map_err(StartError::Tls)?),
            credentials: creds.source,
            pools: Mutex::new(HashMap::new()),
            cancels: Arc::new(CancelRegistry::default()),
            shutdown: CancellationToken::new(),
            hard_stop: CancellationToken::new(),
            tasks: TaskTracker::new(),
            config,
        });
        let listeners = listener::Listeners::bind(&shared).await?;
        if let Some(cache) = creds.refresher {
            // Fetches the first token now, then refreshes ahead of expiry.
            let stop = shared.hard_stop.clone();
            shared.tasks.spawn(async move {
                tokio::select! {
                    _ = stop.cancelled() => {}
                    _ = cache.run() => {}
                }
            });
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
        // Give Terminate messages and upkeep tasks a moment to finish.
        let _ = tokio::time::timeout(std::time::Duration::from_secs(2), shared.tasks.wait()).await;
        tracing::info!("pgwake stopped");
    }
}
