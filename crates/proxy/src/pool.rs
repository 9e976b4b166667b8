//! A pool of server connections for one (server database, server user).
//!
//! Purpose-built rather than `deadpool`: a waiter must be able to receive
//! either a connection or the right to open one (so a freed slot reaches the
//! longest-waiting client, FIFO), and a connection's cleanliness is derived
//! from its protocol state at check-in. Checkout and check-in take one
//! uncontended mutex and allocate nothing in steady state.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use pgwake_config::PoolMode;
use pgwake_credentials::CredentialSource;
use pgwake_lifecycle::{Lifecycle, ServerState};
use pgwake_protocol::backend::ErrorMessage;
use pgwake_protocol::sqlstate;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use crate::params::Params;
use crate::server::{ConnectError, ConnectPhases, ServerConn, Target};
use crate::stats::{self, Metrics, PoolCounts, PoolHistograms, TimeoutKind};

/// Which pool: the server database and the server user.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PoolKey {
    /// The database name clients use: the `[databases]` entry, or the
    /// client's database name when there is no `[databases]` table. Two
    /// entries on one server database are two pools, each with its own
    /// size, `min_idle` and mode.
    pub database: String,
    /// The database on the server.
    pub dbname: String,
    /// The user on the server.
    pub user: String,
}

impl std::fmt::Display for PoolKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.database, self.user)
    }
}

/// Settings of one pool, after `[databases]` overrides.
#[derive(Debug, Clone)]
pub struct PoolSettings {
    pub mode: PoolMode,
    pub size: usize,
    pub min_idle: usize,
    pub max_lifetime: Duration,
    pub idle_timeout: Duration,
    pub wait_timeout: Duration,
    /// Named prepared statements kept per server connection.
    pub max_prepared: usize,
    /// Open `min_idle` connections before the first client logs in.
    pub prewarm: bool,
}

/// What a fresh server connection reports at login: the settings a client
/// that asked for nothing in particular gets.
#[derive(Debug)]
pub struct Defaults {
    /// ParameterStatus as the server sent it (names in the server's spelling).
    pub reported: Vec<(String, String)>,
    /// The same, lower-case names.
    pub params: Params,
}

/// Why no connection could be handed out.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CheckoutError {
    #[error("no server connection became free within pool_wait_timeout ({waited:?}): all {size} connections of pool {key} are busy")]
    WaitTimeout {
        key: String,
        size: usize,
        waited: Duration,
    },
    #[error(transparent)]
    Connect(#[from] ConnectError),
    #[error("pgwake is shutting down")]
    Closed,
}

impl CheckoutError {
    pub fn to_client(&self) -> ErrorMessage {
        match self {
            CheckoutError::WaitTimeout { .. } => {
                ErrorMessage::error(sqlstate::TOO_MANY_CONNECTIONS, format!("pgwake: {self}"))
                    .with_hint("raise pool.size or pool.pool_wait_timeout, or shorten transactions")
            }
            CheckoutError::Connect(e) => e.to_client(),
            CheckoutError::Closed => {
                ErrorMessage::fatal(sqlstate::ADMIN_SHUTDOWN, "pgwake is shutting down")
            }
        }
    }
}

/// A server connection checked out of a pool. Dropping it closes the
/// connection and frees its place in the pool.
#[derive(Debug)]
pub struct Pooled {
    /// Boxed: a checked-out connection moves by value through the pool,
    /// the idle list and the client's session on every transaction.
    pub conn: Box<ServerConn>,
    retire_at: Instant,
    /// The pool's server settings epoch when the connection was made.
    epoch: u64,
    slot: Slot,
}

/// A place in the pool's `size`. Freed on drop: handed to the first waiter,
/// or the pool's count goes down.
struct Slot {
    pool: Option<Arc<Inner>>,
}

impl std::fmt::Debug for Slot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Slot")
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Some(pool) = self.pool.take() {
            pool.release_slot();
        }
    }
}

/// What a waiter receives. The connection moves by value: boxing it would
/// allocate on every hand-off under contention, where it matters most.
#[allow(clippy::large_enum_variant)]
enum Grant {
    Conn(Pooled),
    Slot(Slot),
}

/// Where connections go and how they log in; replaced on reload.
#[derive(Clone)]
pub struct ServerSide {
    pub target: Arc<Target>,
    pub credentials: Arc<dyn CredentialSource>,
}

struct State {
    settings: PoolSettings,
    server: ServerSide,
    idle: VecDeque<Pooled>,
    /// Connections open or being opened, idle ones included.
    total: usize,
    /// Clients waiting, and since when.
    waiters: VecDeque<(oneshot::Sender<Grant>, Instant)>,
    /// The last login refused by the server, and until when to answer with it.
    auth_failure: Option<(ConnectError, Instant, Duration)>,
    closed: bool,
}

/// A handle to a pool; cheap to clone.
#[derive(Clone)]
pub struct Pool {
    inner: Arc<Inner>,
}

struct Inner {
    key: PoolKey,
    /// Bumped when the server settings change: older connections retire.
    epoch: AtomicU64,
    /// Connections being opened.
    logins: AtomicUsize,
    counts: Arc<PoolCounts>,
    /// Names server-side statements by their content.
    hasher: crate::prepared::StatementHasher,
    /// Registered at the first login: a pool for a database that does not
    /// exist leaves no series behind.
    hist: std::sync::OnceLock<PoolHistograms>,
    metrics: Arc<Metrics>,
    /// Starts a stopped server when a login finds it down.
    lifecycle: Option<Arc<Lifecycle>>,
    state: Mutex<State>,
    defaults: RwLock<Option<Arc<Defaults>>>,
    /// Ends the upkeep task.
    stop: CancellationToken,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("key", &self.inner.key)
            .finish()
    }
}

/// Longest pause between logins after the server refused one (bad password).
const AUTH_BACKOFF_MAX: Duration = Duration::from_secs(30);

impl Pool {
    pub fn new(
        key: PoolKey,
        settings: PoolSettings,
        server: ServerSide,
        lifecycle: Option<Arc<Lifecycle>>,
        metrics: Arc<Metrics>,
        stop: CancellationToken,
    ) -> Pool {
        Pool {
            inner: Arc::new(Inner {
                key,
                epoch: AtomicU64::new(0),
                logins: AtomicUsize::new(0),
                counts: Arc::new(PoolCounts::default()),
                hasher: crate::prepared::StatementHasher::new(),
                hist: std::sync::OnceLock::new(),
                metrics,
                lifecycle,
                state: Mutex::new(State {
                    settings,
                    server,
                    idle: VecDeque::new(),
                    total: 0,
                    waiters: VecDeque::new(),
                    auth_failure: None,
                    closed: false,
                }),
                defaults: RwLock::new(None),
                stop,
            }),
        }
    }

    pub fn key(&self) -> &PoolKey {
        &self.inner.key
    }

    pub fn settings(&self) -> PoolSettings {
        self.inner.lock().settings.clone()
    }

    /// Connection counts: (open in total, idle, clients waiting).
    pub fn counts(&self) -> (usize, usize, usize) {
        let st = self.inner.lock();
        (st.total, st.idle.len(), st.waiters.len())
    }

    /// Transaction, query and byte counts, shared with the pool's sessions.
    pub fn stats(&self) -> &Arc<PoolCounts> {
        &self.inner.counts
    }

    /// Names server-side statements for this pool's clients.
    pub fn statement_hasher(&self) -> &crate::prepared::StatementHasher {
        &self.inner.hasher
    }

    /// The pool's histograms, once a login succeeded.
    pub fn histograms(&self) -> Option<&PoolHistograms> {
        self.inner.hist.get()
    }

    /// A consistent view for the admin console and metrics.
    pub fn snapshot(&self) -> PoolSnapshot {
        let st = self.inner.lock();
        let now = Instant::now();
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
                })
                .collect(),
        }
    }

    /// Applies reloaded settings. A changed server side (address, TLS,
    /// credentials) retires the connections made under the old one as they
    /// come back.
    pub fn reconfigure(&self, settings: PoolSettings, server: Option<ServerSide>) {
        let mut st = self.inner.lock();
        st.settings = settings;
        let mut stale = VecDeque::new();
        if let Some(server) = server {
            st.server = server;
            self.inner.epoch.fetch_add(1, Ordering::Relaxed);
            // A refused login says nothing about the new settings.
            st.auth_failure = None;
            stale = std::mem::take(&mut st.idle);
        }
        // A smaller pool: idle connections beyond the new size close now;
        // busy ones as they come back.
        let mut shrunk = Vec::new();
        while st.total > st.settings.size {
            let Some(p) = st.idle.pop_front() else { break };
            shrunk.push(p);
            st.total -= 1;
        }
        // A larger pool: waiters may now open connections of their own.
        while st.total < st.settings.size {
            let Some((w, _)) = st.waiters.pop_front() else {
                break;
            };
            st.total += 1;
            let slot = Slot {
                pool: Some(self.inner.clone()),
            };
            if let Err(Grant::Slot(mut s)) = w.send(Grant::Slot(slot)) {
                s.pool = None;
                st.total -= 1;
            }
        }
        drop(st);
        for p in stale {
            retire(p);
        }
        for p in shrunk {
            retire_counted(p);
        }
    }

    /// The server's defaults, once any connection has logged in.
    pub fn defaults(&self) -> Option<Arc<Defaults>> {
        self.inner
            .defaults
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The server's defaults, logging in once if no connection has yet.
    pub async fn learn_defaults(&self) -> Result<Arc<Defaults>, CheckoutError> {
        if let Some(d) = self.defaults() {
            return Ok(d);
        }
        let p = self.checkout().await?;
        self.checkin(p);
        self.defaults()
            .ok_or_else(|| CheckoutError::Connect(ConnectError::Protocol("no defaults".into())))
    }

    /// A clean, live server connection: an idle one, a new one if the pool
    /// has room, else the next one freed (first come, first served) within
    /// `pool_wait_timeout`.
    pub async fn checkout(&self) -> Result<Pooled, CheckoutError> {
        self.checkout_inner(false, true).await
    }

    /// Like [`Pool::checkout`] for pgwake's own queries: never wakes a
    /// stopped server.
    pub async fn checkout_quiet(&self) -> Result<Pooled, CheckoutError> {
        self.checkout_inner(false, false).await
    }

    /// Backend process IDs of the idle connections.
    pub fn idle_backend_pids(&self) -> Vec<u32> {
        let st = self.inner.lock();
        st.idle.iter().map(|p| p.conn.cancel_key().1).collect()
    }

    /// Closes the idle connections (before the server is stopped); the pool
    /// stays open and reconnects when next needed.
    pub fn drain_idle(&self) {
        let idle = std::mem::take(&mut self.inner.lock().idle);
        for p in idle {
            retire(p);
        }
    }

    /// Like [`Pool::checkout`], but opens a new connection when the pool has
    /// room: used after a pooled connection proved dead on first use, when
    /// its idle siblings (same NAT, same restart) are suspect too.
    pub async fn checkout_fresh(&self) -> Result<Pooled, CheckoutError> {
        self.checkout_inner(true, true).await
    }

    async fn checkout_inner(&self, fresh: bool, may_wake: bool) -> Result<Pooled, CheckoutError> {
        let mut deadline = None;
        loop {
            let next = {
                let mut st = self.inner.lock();
                let deadline = *deadline
                    .get_or_insert_with(|| tokio::time::Instant::now() + st.settings.wait_timeout);
                if st.closed {
                    return Err(CheckoutError::Closed);
                }
                if let Some((e, at, window)) = &st.auth_failure {
                    if at.elapsed() < *window {
                        return Err(e.clone().into());
                    }
                }
                let room = st.total < st.settings.size;
                if let Some(p) = (!(fresh && room)).then(|| st.idle.pop_back()).flatten() {
                    Ok(Grant::Conn(p))
                } else if room {
                    st.total += 1;
                    Ok(Grant::Slot(Slot {
                        pool: Some(self.inner.clone()),
                    }))
                } else {
                    let (tx, rx) = oneshot::channel();
                    st.waiters.push_back((tx, Instant::now()));
                    Err((rx, deadline, st.settings.size, st.settings.wait_timeout))
                }
            };
            let grant = match next {
                Ok(g) => g,
                Err((mut rx, mut until, size, waited)) => loop {
                    match tokio::time::timeout_at(until, &mut rx).await {
                        Ok(Ok(g)) => break g,
                        Ok(Err(_)) => return Err(CheckoutError::Closed),
                        Err(_) => {
                            // Waiting behind a wake: wait as long as it may take.
                            let wake_until = self
                                .inner
                                .lifecycle
                                .as_ref()
                                .and_then(|l| l.wake_deadline());
                            if let Some(later) = wake_until.filter(|u| *u > until) {
                                until = later;
                                deadline = Some(later);
                                continue;
                            }
                            self.inner.metrics.timeout(TimeoutKind::PoolWait);
                            return Err(CheckoutError::WaitTimeout {
                                key: self.inner.key.to_string(),
                                size,
                                waited,
                            });
                        }
                    }
                },
            };
            match grant {
                Grant::Conn(mut p) => {
                    if p.conn.is_alive()
                        && Instant::now() < p.retire_at
                        && p.epoch == self.inner.epoch.load(Ordering::Relaxed)
                    {
                        return Ok(p);
                    }
                    tracing::debug!(pool = %self.inner.key, "replacing a pooled server connection that closed or expired");
                    // Dropping frees the slot for the next in line (maybe us).
                    retire(p);
                }
                Grant::Slot(slot) => {
                    // Boxed: a login is rare and its future is large; every
                    // session's task would otherwise carry its size.
                    let until = deadline.unwrap_or_else(tokio::time::Instant::now);
                    let (conn, epoch) = Box::pin(self.connect_with_retry(until, may_wake)).await?;
                    return Ok(self.inner.wrap(conn, slot, epoch));
                }
            }
        }
    }

    /// Returns a connection. Only an idle, clean one within its lifetime goes
    /// back; anything else is closed.
    pub fn checkin(&self, mut p: Pooled) {
        let now = Instant::now();
        let c = p.conn.prepared.take_counts();
        if c.hits + c.misses + c.evictions > 0 {
            let counts = &self.inner.counts;
            PoolCounts::add(&counts.prepared_hits, c.hits);
            PoolCounts::add(&counts.prepared_misses, c.misses);
            PoolCounts::add(&counts.prepared_evictions, c.evictions);
        }
        if !p.conn.is_reusable()
            || now >= p.retire_at
            || p.epoch != self.inner.epoch.load(Ordering::Relaxed)
        {
            retire(p);
            return;
        }
        p.conn.last_used = now;
        let mut st = self.inner.lock();
        if st.closed
            || p.conn.credential_generation != st.server.credentials.generation()
            || st.total > st.settings.size
        {
            drop(st);
            retire(p);
            return;
        }
        while let Some((w, _)) = st.waiters.pop_front() {
            match w.send(Grant::Conn(p)) {
                Ok(()) => return,
                Err(Grant::Conn(back)) => p = back,
                Err(Grant::Slot(_)) => unreachable!("sent a connection"),
            }
        }
        st.idle.push_back(p);
    }

    /// Logs in, retrying at once (with a short backoff) while the server is
    /// restarting, so clients recover as soon as it accepts connections.
    async fn connect_with_retry(
        &self,
        deadline: tokio::time::Instant,
        may_wake: bool,
    ) -> Result<(ServerConn, u64), ConnectError> {
        let inner = &self.inner;
        // Read together: a reload in between must not stamp a connection
        // to the old server with the new epoch.
        let (server, epoch) = {
            let st = inner.lock();
            (st.server.clone(), inner.epoch.load(Ordering::Relaxed))
        };
        let _login = LoginGuard::new(&inner.logins);
        let mut give_up = deadline.min(tokio::time::Instant::now() + server.target.connect_timeout);
        let mut wakes = 0;
        let mut backoff = Duration::from_millis(25);
        let mut retried_rotation = false;
        loop {
            // Waits only when no valid secret exists (a token source still
            // fetching its first token, or one whose token expired).
            let wait = give_up.saturating_duration_since(tokio::time::Instant::now());
            let generation = server.credentials.generation();
            let password = match server.credentials.secret(wait).await {
                Ok(p) => p,
                Err(e) => {
                    let e = ConnectError::Credential(e.to_string());
                    self.note_failure(&e);
                    return Err(e);
                }
            };
            let mut phases = ConnectPhases::default();
            let e = match ServerConn::connect_phased(
                &server.target,
                &inner.key.dbname,
                &inner.key.user,
                password,
                &mut phases,
            )
            .await
            {
                Ok(mut conn) => {
                    conn.credential_generation = generation;
                    inner.metrics.connect_phases(&phases);
                    inner.lock().auth_failure = None;
                    inner.learn(&conn);
                    return Ok((conn, epoch));
                }
                Err(e) => e,
            };
            // The server may be stopped: wake it (once for everyone) and
            // wait, rather than fail. Upkeep only learns the state.
            if let Some(l) = inner
                .lifecycle
                .as_ref()
                .filter(|_| e.may_be_asleep() && wakes < 3)
            {
                let woke = if may_wake {
                    match l.server_unavailable().await {
                        Ok(woke) => woke,
                        Err(w) => {
                            let e = ConnectError::Asleep(w);
                            self.note_failure(&e);
                            return Err(e);
                        }
                    }
                } else {
                    let _ = l.state().await;
                    false
                };
                if woke {
                    wakes += 1;
                    backoff = Duration::from_millis(25);
                    give_up = tokio::time::Instant::now() + server.target.connect_timeout;
                    continue;
                }
            }
            if e.is_transient() && tokio::time::Instant::now() + backoff < give_up {
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_millis(500));
                continue;
            }
            // The secret may have been rotated while this login was under
            // way (the server already has the new one): once the fetch in
            // progress lands, log in again with the new secret.
            if e.is_auth() && !retried_rotation {
                retried_rotation = true;
                let wait = give_up.saturating_duration_since(tokio::time::Instant::now());
                server.credentials.settled(wait).await;
                if server.credentials.generation() != generation {
                    tracing::debug!(pool = %inner.key, "login refused while the secret rotated; retrying with the new one");
                    continue;
                }
            }
            self.note_failure(&e);
            return Err(e);
        }
    }

    /// Logs a failed login; a refused one pauses this pool's logins.
    fn note_failure(&self, e: &ConnectError) {
        let inner = &self.inner;
        inner.metrics.connect_error(stats::error_kind(e));
        if matches!(e, ConnectError::Timeout { .. }) {
            inner.metrics.timeout(TimeoutKind::ServerConnect);
        }
        if matches!(e, ConnectError::Credential(_) | ConnectError::Asleep(_)) {
            tracing::warn!(pool = %inner.key, error = %e, "server connection failed");
        } else if e.is_auth() {
            let mut st = inner.lock();
            let window = st
                .auth_failure
                .as_ref()
                .map_or(Duration::from_secs(1), |(_, _, w)| {
                    (*w * 2).min(AUTH_BACKOFF_MAX)
                });
            tracing::warn!(pool = %inner.key, error = %e, "server refused login; pausing logins for {window:?}");
            st.auth_failure = Some((e.clone(), Instant::now(), window));
        } else {
            tracing::warn!(pool = %inner.key, error = %e, "server connection failed");
        }
    }

    /// Keeps `min_idle` connections open and closes idle ones past
    /// `idle_timeout`, expired or dead ones. Runs until the pool closes.
    pub async fn maintain(self) {
        let stop = self.inner.stop.clone();
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut failures = 0u32;
        let mut next_attempt = tokio::time::Instant::now();
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tick.tick() => {}
            }
            // Notices a changed secret (one stat for a password file), so
            // connections made with the old one retire below.
            let credentials = self.inner.lock().server.credentials.clone();
            let _ = credentials.current();
            self.prune();
            // A server stopped on purpose stays stopped until a client comes.
            let asleep = self.inner.lifecycle.as_ref().is_some_and(|l| {
                matches!(
                    l.last_state(),
                    Some(ServerState::Stopped | ServerState::Stopping)
                )
            });
            // Warm up to min_idle, one connection at a time.
            while !asleep && tokio::time::Instant::now() >= next_attempt {
                let (slot, connect_timeout) = {
                    let mut st = self.inner.lock();
                    let s = &st.settings;
                    if st.closed
                        || st.idle.len() >= s.min_idle
                        || st.total >= s.size
                        || !st.waiters.is_empty()
                    {
                        break;
                    }
                    st.total += 1;
                    let slot = Slot {
                        pool: Some(self.inner.clone()),
                    };
                    (slot, st.server.target.connect_timeout)
                };
                let deadline = tokio::time::Instant::now() + connect_timeout;
                let conn = tokio::select! {
                    _ = stop.cancelled() => return,
                    c = self.connect_with_retry(deadline, false) => c,
                };
                match conn {
                    Ok((conn, epoch)) => {
                        failures = 0;
                        let p = self.inner.wrap(conn, slot, epoch);
                        self.checkin(p);
                    }
                    Err(_) => {
                        failures = failures.saturating_add(1);
                        let pause =
                            Duration::from_millis(250) * 2u32.saturating_pow(failures.min(7));
                        next_attempt =
                            tokio::time::Instant::now() + pause.min(Duration::from_secs(30));
                    }
                }
            }
        }
    }

    fn prune(&self) {
        let now = Instant::now();
        let epoch = self.inner.epoch.load(Ordering::Relaxed);
        let mut gone = Vec::new();
        {
            let mut st = self.inner.lock();
            let generation = st.server.credentials.generation();
            let (min_idle, idle_timeout) = (st.settings.min_idle, st.settings.idle_timeout);
            let mut keep = VecDeque::with_capacity(st.idle.len());
            let mut idle = std::mem::take(&mut st.idle);
            // Oldest-used first, so idle_timeout closes the coldest ones.
            while let Some(mut p) = idle.pop_front() {
                let surplus = keep.len() + idle.len() >= min_idle;
                let stale = surplus && now.duration_since(p.conn.last_used) >= idle_timeout;
                if stale
                    || now >= p.retire_at
                    || p.epoch != epoch
                    || p.conn.credential_generation != generation
                    || !p.conn.is_alive()
                {
                    gone.push(p);
                } else {
                    keep.push_back(p);
                }
            }
            st.idle = keep;
        }
        for p in gone {
            retire(p);
        }
    }

    /// Closes idle connections and refuses new checkouts; connections in use
    /// close when returned.
    pub fn close(&self) {
        self.inner.stop.cancel();
        let idle = {
            let mut st = self.inner.lock();
            st.closed = true;
            st.waiters.clear();
            std::mem::take(&mut st.idle)
        };
        for p in idle {
            retire(p);
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
}

/// Counts a login under way for as long as it lives.
struct LoginGuard<'a>(&'a AtomicUsize);

impl<'a> LoginGuard<'a> {
    fn new(n: &'a AtomicUsize) -> Self {
        n.fetch_add(1, Ordering::Relaxed);
        LoginGuard(n)
    }
}

impl Drop for LoginGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Like [`retire`] for a connection whose slot was already taken off the
/// pool's count.
fn retire_counted(mut p: Pooled) {
    p.slot.pool = None;
    retire(p);
}

/// Closes a connection with Terminate in the background; its slot frees at once.
fn retire(p: Pooled) {
    let Pooled { conn, slot, .. } = p;
    drop(slot);
    if !conn.broken {
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(conn.terminate());
        }
    }
}

impl Inner {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn wrap(&self, mut conn: ServerConn, slot: Slot, epoch: u64) -> Pooled {
        // Up to 10 % jitter, so connections made together do not all expire together.
        let (lifetime, max_prepared) = {
            let st = self.lock();
            (st.settings.max_lifetime, st.settings.max_prepared)
        };
        *conn.prepared = crate::prepared::OnServer::new(max_prepared);
        let jitter = lifetime.mul_f64(rand::random::<f64>() * 0.1);
        Pooled {
            retire_at: conn.created + (lifetime - jitter),
            epoch,
            conn: Box::new(conn),
            slot,
        }
    }

    fn learn(&self, conn: &ServerConn) {
        self.hist.get_or_init(|| {
            self.metrics
                .pool_histograms(&self.key.database, &self.key.user)
        });
        let mut d = self.defaults.write().unwrap_or_else(|e| e.into_inner());
        if d.is_none() {
            *d = Some(Arc::new(Defaults {
                reported: conn.reported.clone(),
                params: conn.params.clone(),
            }));
        }
    }

    fn release_slot(self: &Arc<Self>) {
        let mut st = self.lock();
        // Over the size after a reload shrank the pool: the slot goes.
        while st.total <= st.settings.size {
            let Some((w, _)) = st.waiters.pop_front() else {
                break;
            };
            let grant = Grant::Slot(Slot {
                pool: Some(self.clone()),
            });
            match w.send(grant) {
                Ok(()) => return,
                // The waiter gave up; defuse the slot so it does not release again.
                Err(Grant::Slot(mut s)) => s.pool = None,
                Err(Grant::Conn(_)) => unreachable!("sent a slot"),
            }
        }
        st.total = st.total.saturating_sub(1);
    }
}
