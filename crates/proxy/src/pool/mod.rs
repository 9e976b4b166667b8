//! A pool of server connections for one (server database, server user).
//!
//! Purpose-built rather than `deadpool`: a waiter must be able to receive
//! either a connection or the right to open one (so a freed slot reaches the
//! longest-waiting client, FIFO), and a connection's cleanliness is derived
//! from its protocol state at check-in. Checkout and check-in take one
//! uncontended mutex and allocate nothing in steady state.
//!
//! Opening connections (retries, wakes, the pause after a refused login) is
//! in `login.rs`, the background task that warms and prunes in `upkeep.rs`,
//! and the view for the console and metrics in `snapshot.rs`.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use pgwake_config::PoolMode;
use pgwake_credentials::CredentialSource;
use pgwake_lifecycle::Lifecycle;
use pgwake_protocol::backend::ErrorMessage;
use pgwake_protocol::sqlstate;
use tokio_util::sync::CancellationToken;

use crate::params::Params;
use crate::server::{ConnectError, ServerConn, Target};
use crate::stats::{Metrics, PoolCounts, PoolHistograms, TimeoutKind};
use handoff::{Content, Handoff, Waiting};

mod handoff;
mod login;
mod snapshot;
mod upkeep;

pub use snapshot::{totals_by_database, IdleConn, PoolSnapshot};

/// Which pool: the server database and the server user.
#[derive(Debug, Clone, PartialEq, Eq)]
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

/// A [`PoolKey`]'s names by reference: what a login looks its pool up
/// with, copying no name unless the pool is new.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PoolKeyRef<'a> {
    pub database: &'a str,
    pub dbname: &'a str,
    pub user: &'a str,
}

impl PoolKeyRef<'_> {
    pub fn to_key(self) -> PoolKey {
        PoolKey {
            database: self.database.to_owned(),
            dbname: self.dbname.to_owned(),
            user: self.user.to_owned(),
        }
    }
}

impl PoolKey {
    pub fn as_key_ref(&self) -> PoolKeyRef<'_> {
        PoolKeyRef {
            database: &self.database,
            dbname: &self.dbname,
            user: &self.user,
        }
    }
}

/// A pool key, owned or by reference: a map keyed by [`PoolKey`] is
/// searched with a [`PoolKeyRef`] through `dyn KeyNames` (both hash and
/// compare their names alike).
pub trait KeyNames {
    fn names(&self) -> PoolKeyRef<'_>;
}

impl KeyNames for PoolKey {
    fn names(&self) -> PoolKeyRef<'_> {
        self.as_key_ref()
    }
}

impl KeyNames for PoolKeyRef<'_> {
    fn names(&self) -> PoolKeyRef<'_> {
        *self
    }
}

impl<'a> std::borrow::Borrow<dyn KeyNames + 'a> for PoolKey {
    fn borrow(&self) -> &(dyn KeyNames + 'a) {
        self
    }
}

impl std::hash::Hash for dyn KeyNames + '_ {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.names().hash(state);
    }
}

impl PartialEq for dyn KeyNames + '_ {
    fn eq(&self, other: &Self) -> bool {
        self.names() == other.names()
    }
}

impl Eq for dyn KeyNames + '_ {}

impl std::hash::Hash for PoolKey {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.as_key_ref().hash(state);
    }
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
    /// The settings the server reported, lower-case names.
    pub params: Params,
    /// What the server reported, as the ParameterStatus messages every
    /// client's login gets: written once, then copied.
    status: Vec<u8>,
    /// One per reported setting, in order: its name as the server spells
    /// it and in lower case (as `want`s are), and where its message ends.
    reported: Vec<Reported>,
    /// The settings of the last login, by its startup parameters: the
    /// clients of one app send the same packet, so most logins share one
    /// `Params`, its fingerprint and their ParameterStatus messages instead
    /// of building their own.
    last_login: Mutex<Option<Arc<LoginSettings>>>,
}

/// A login's settings, what [`Defaults::client_settings`] keeps.
#[derive(Debug)]
pub struct LoginSettings {
    /// The startup packet's parameters, as sent.
    startup: Box<str>,
    /// The settings that differ from the server's, lower-case names.
    pub want: Arc<Params>,
    /// [`crate::params::fingerprint`] of `want`.
    pub fingerprint: u64,
    /// The ParameterStatus messages the login gets
    /// ([`Defaults::write_status`] for `want`).
    pub status: Box<[u8]>,
}

#[derive(Debug)]
struct Reported {
    name: String,
    lower: String,
    end: usize,
}

impl Defaults {
    /// `reported`: ParameterStatus as the server sent it (names in the
    /// server's spelling); `params`: the same, lower-case names.
    pub fn new(reported: &[(String, String)], params: Params) -> Self {
        let mut status = bytes::BytesMut::new();
        let reported = reported
            .iter()
            .map(|(name, value)| {
                pgwake_protocol::backend::parameter_status(&mut status, name, value);
                Reported {
                    name: name.clone(),
                    lower: name.to_ascii_lowercase(),
                    end: status.len(),
                }
            })
            .collect();
        Defaults {
            params,
            status: status.to_vec(),
            reported,
            last_login: Mutex::new(None),
        }
    }

    /// The settings a client with these startup parameters wants that
    /// differ from the server's (lower-case names), their fingerprint and
    /// the ParameterStatus messages its login gets. Built once for a run of
    /// logins that send the same parameters.
    pub fn client_settings(
        &self,
        startup: pgwake_protocol::startup::StartupParams<'_>,
    ) -> Result<Arc<LoginSettings>, ErrorMessage> {
        let text = startup.as_text();
        let last = self.last_login.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(l) = last.as_ref().filter(|l| *l.startup == *text) {
            return Ok(l.clone());
        }
        drop(last);
        let mut want = crate::params::from_startup(startup.iter())?;
        // Only what differs from the server's defaults is kept per client.
        want.retain(|k, v| self.params.get(k) != Some(v));
        let mut status = bytes::BytesMut::new();
        self.write_status(&mut status, &want);
        let settings = Arc::new(LoginSettings {
            startup: text.into(),
            fingerprint: crate::params::fingerprint(&want),
            want: Arc::new(want),
            status: Vec::from(status).into_boxed_slice(),
        });
        *self.last_login.lock().unwrap_or_else(|e| e.into_inner()) = Some(settings.clone());
        Ok(settings)
    }

    /// Writes the ParameterStatus messages a client gets at login: the
    /// server's, with the client's own value where `want` (lower-case
    /// names) has one. The runs of the server's own are copied whole.
    fn write_status(&self, out: &mut bytes::BytesMut, want: &Params) {
        out.reserve(self.status.len());
        // `copied`: where the server's messages not yet written begin;
        // `start`: where the current one begins.
        let (mut copied, mut start) = (0, 0);
        for r in &self.reported {
            // A scan, not a search: a client sets few settings, and names
            // of another length are told apart at once.
            if let Some((_, v)) = want.iter().find(|(k, _)| **k == r.lower) {
                out.extend_from_slice(self.status.get(copied..start).unwrap_or_default());
                pgwake_protocol::backend::parameter_status(out, &r.name, v);
                copied = r.end;
            }
            start = r.end;
        }
        out.extend_from_slice(self.status.get(copied..).unwrap_or_default());
    }
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
    /// Counts the connection among its epoch's until it is closed.
    live: Live,
}

/// A connection counted among those of its epoch (for `WAIT_CLOSE`).
struct Live {
    pool: Arc<Inner>,
    epoch: u64,
}

impl std::fmt::Debug for Live {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Live({})", self.epoch)
    }
}

impl Drop for Live {
    fn drop(&mut self) {
        let mut live = self.pool.live_lock();
        if let Some(n) = live.get_mut(&self.epoch) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                live.remove(&self.epoch);
            }
        }
    }
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
/// allocate on every hand-off under contention, where it matters most. A
/// grant a waiter no longer wants comes back whole ([`State::offer`]), and
/// either kind has a place to go ([`State::unclaimed`]).
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
    waiters: VecDeque<(Arc<Handoff>, Instant)>,
    /// The last login refused by the server, and until when to answer with it.
    auth_failure: Option<(ConnectError, Instant, Duration)>,
    closed: bool,
}

impl State {
    /// Hands `grant` to the longest-waiting client. A waiter that gives
    /// up leaves the queue first ([`Waiting`]), so whoever is queued takes
    /// it; with no one waiting it comes back to the caller.
    fn offer(&mut self, grant: Grant) -> Option<Grant> {
        match self.waiters.pop_front() {
            Some((w, _)) => {
                w.fill(Content::Granted(grant));
                None
            }
            None => Some(grant),
        }
    }

    /// Keeps what no waiter took: a connection goes idle; a slot leaves
    /// the pool's count, defused first (its drop would take the lock the
    /// caller holds).
    fn unclaimed(&mut self, grant: Grant) {
        match grant {
            Grant::Conn(p) => self.idle.push_back(p),
            Grant::Slot(mut s) => {
                s.pool = None;
                self.total = self.total.saturating_sub(1);
            }
        }
    }
}

/// A handle to a pool; cheap to clone.
#[derive(Clone)]
pub struct Pool {
    inner: Arc<Inner>,
}

struct Inner {
    key: Arc<PoolKey>,
    /// Bumped when the server settings change (or `RECONNECT`): older
    /// connections retire.
    epoch: AtomicU64,
    /// Open connections per epoch. Its own lock, never held with `state`'s:
    /// a connection may close wherever it is dropped.
    live: Mutex<std::collections::BTreeMap<u64, usize>>,
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
    /// A client began to wait in an empty queue (for `expire_waits`).
    waits_began: tokio::sync::Notify,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("key", &self.inner.key)
            .finish()
    }
}

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
                key: Arc::new(key),
                epoch: AtomicU64::new(0),
                live: Mutex::new(std::collections::BTreeMap::new()),
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
                waits_began: tokio::sync::Notify::new(),
            }),
        }
    }

    pub fn key(&self) -> &PoolKey {
        &self.inner.key
    }

    /// The key, shared (each client's registry entry holds it).
    pub fn shared_key(&self) -> Arc<PoolKey> {
        self.inner.key.clone()
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

    /// Applies reloaded settings. A changed server side (address, TLS,
    /// credentials) retires the connections made under the old one as they
    /// come back.
    pub fn reconfigure(&self, settings: PoolSettings, server: Option<ServerSide>) {
        let mut st = self.inner.lock();
        st.settings = settings;
        // A changed pool_wait_timeout moves the waits' deadlines.
        self.inner.waits_began.notify_one();
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
        while st.total < st.settings.size && !st.waiters.is_empty() {
            st.total += 1;
            let slot = Grant::Slot(Slot {
                pool: Some(self.inner.clone()),
            });
            // Every waiter had given up.
            if let Some(unwanted) = st.offer(slot) {
                st.unclaimed(unwanted);
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
            .ok_or(CheckoutError::Connect(ConnectError::NoDefaults))
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
    /// stays open and reconnects when next needed. How many closed.
    pub fn drain_idle(&self) -> usize {
        let idle = std::mem::take(&mut self.inner.lock().idle);
        let n = idle.len();
        for p in idle {
            retire(p);
        }
        n
    }

    /// `RECONNECT`: every connection open now is closed, idle ones at once
    /// and busy ones when given back; new ones replace them as needed.
    pub fn reconnect(&self) {
        let stale = {
            let mut st = self.inner.lock();
            self.inner.epoch.fetch_add(1, Ordering::Relaxed);
            std::mem::take(&mut st.idle)
        };
        for p in stale {
            retire(p);
        }
    }

    /// Connections still open that were made before the last `RECONNECT`
    /// or change of server settings (PgBouncer's `close_needed`).
    pub fn closing(&self) -> usize {
        let current = self.inner.epoch.load(Ordering::Relaxed);
        self.inner
            .live_lock()
            .range(..current)
            .map(|(_, n)| n)
            .sum()
    }

    /// Closes a connection that must not serve again (its client was
    /// killed), with Terminate in the background.
    pub fn discard(&self, p: Pooled) {
        retire(p);
    }

    /// Like [`Pool::checkout`], but opens a new connection when the pool has
    /// room: used after a pooled connection proved dead on first use, when
    /// its idle siblings (same NAT, same restart) are suspect too.
    pub async fn checkout_fresh(&self) -> Result<Pooled, CheckoutError> {
        self.checkout_inner(true, true).await
    }

    /// An idle connection, at once, if the pool has one that is usable at
    /// `now`: the common case, without a future, a wait or a clock read.
    /// `None`: [`Pool::checkout`] has the answer (a wait, a login, an error).
    pub fn checkout_idle(&self, now: Instant) -> Option<Pooled> {
        let mut p = {
            let mut st = self.inner.lock();
            if st.closed || st.auth_failure.is_some() {
                return None;
            }
            st.idle.pop_back()?
        };
        if self.usable(&mut p, now) {
            return Some(p);
        }
        retire(p);
        None
    }

    /// Whether an idle connection taken from the pool may serve at `now`:
    /// open, within its lifetime, not from before a `RECONNECT`.
    fn usable(&self, p: &mut Pooled, now: Instant) -> bool {
        p.conn.is_alive()
            && now < p.retire_at
            && p.epoch == self.inner.epoch.load(Ordering::Relaxed)
    }

    async fn checkout_inner(&self, fresh: bool, may_wake: bool) -> Result<Pooled, CheckoutError> {
        // Set at the first wait (a clock read only then).
        let mut deadline = None;
        // When the first wait began: a wait again (for a connection found
        // dead) ends at the same time.
        let mut waiting_since = None;
        loop {
            let next = {
                let mut st = self.inner.lock();
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
                    // No timer per wait: the pool's `expire_waits` ends the
                    // waits that reach `pool_wait_timeout`.
                    let since = *waiting_since.get_or_insert_with(Instant::now);
                    deadline.get_or_insert_with(|| {
                        tokio::time::Instant::from_std(since) + st.settings.wait_timeout
                    });
                    let h = Handoff::take_spare();
                    if st.waiters.is_empty() {
                        // Wakes `expire_waits` (a permit if it is not waiting yet).
                        self.inner.waits_began.notify_one();
                    }
                    st.waiters.push_back((h.clone(), since));
                    Err(h)
                }
            };
            let grant = match next {
                Ok(g) => g,
                Err(h) => match Waiting::new(&self.inner, h).granted().await {
                    Content::Granted(g) => g,
                    Content::Expired => {
                        self.inner.metrics.timeout(TimeoutKind::PoolWait);
                        let (size, waited) = {
                            let st = self.inner.lock();
                            (st.settings.size, st.settings.wait_timeout)
                        };
                        return Err(CheckoutError::WaitTimeout {
                            key: self.inner.key.to_string(),
                            size,
                            waited,
                        });
                    }
                    Content::Closed | Content::Empty => return Err(CheckoutError::Closed),
                },
            };
            match grant {
                Grant::Conn(mut p) => {
                    if self.usable(&mut p, Instant::now()) {
                        return Ok(p);
                    }
                    tracing::debug!(pool = %self.inner.key, "replacing a pooled server connection that closed or expired");
                    // Dropping frees the slot for the next in line (maybe us).
                    retire(p);
                }
                Grant::Slot(slot) => {
                    // Boxed: a login is rare and its future is large; every
                    // session's task would otherwise carry its size.
                    let mut until = *deadline.get_or_insert_with(|| {
                        tokio::time::Instant::now() + self.inner.lock().settings.wait_timeout
                    });
                    if waiting_since.is_some() {
                        // A wait that outlasted its deadline behind a wake:
                        // the login may take as long as the wake.
                        until = until.max(self.inner.waking_until().unwrap_or(until));
                    }
                    let (conn, epoch) = Box::pin(self.connect_with_retry(until, may_wake)).await?;
                    return Ok(self.inner.wrap(conn, slot, epoch));
                }
            }
        }
    }

    /// Returns a connection. Only an idle, clean one within its lifetime goes
    /// back; anything else is closed.
    pub fn checkin(&self, p: Pooled) {
        self.checkin_at(p, Instant::now());
    }

    /// [`Self::checkin`] by a caller that read the clock a moment ago
    /// (a session, at the reply that ended its transaction).
    pub fn checkin_at(&self, mut p: Pooled, now: Instant) {
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
        if let Some(unwanted) = st.offer(Grant::Conn(p)) {
            st.unclaimed(unwanted);
        }
    }

    /// Closes idle connections and refuses new checkouts; connections in use
    /// close when returned.
    pub fn close(&self) {
        self.inner.stop.cancel();
        let idle = {
            let mut st = self.inner.lock();
            st.closed = true;
            for (w, _) in st.waiters.drain(..) {
                w.fill(Content::Closed);
            }
            std::mem::take(&mut st.idle)
        };
        for p in idle {
            retire(p);
        }
    }
}

/// Like [`retire`] for a connection whose slot was already taken off the
/// pool's count.
fn retire_counted(mut p: Pooled) {
    p.slot.pool = None;
    retire(p);
}

/// Closes a connection with Terminate in the background; its slot frees at
/// once, and it stops counting as open once the Terminate is sent.
fn retire(p: Pooled) {
    let Pooled {
        conn, slot, live, ..
    } = p;
    drop(slot);
    if !conn.broken {
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                conn.terminate().await;
                drop(live);
            });
        }
    }
}

impl Inner {
    /// Until when a wake of the server now under way may take: a client
    /// waiting behind it waits as long as that (see `Pool::expire_waits`).
    fn waking_until(&self) -> Option<tokio::time::Instant> {
        self.lifecycle.as_ref().and_then(|l| l.wake_deadline())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn live_lock(&self) -> std::sync::MutexGuard<'_, std::collections::BTreeMap<u64, usize>> {
        self.live.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn wrap(self: &Arc<Self>, mut conn: ServerConn, slot: Slot, epoch: u64) -> Pooled {
        // Up to 10 % jitter, so connections made together do not all expire together.
        let (lifetime, max_prepared) = {
            let st = self.lock();
            (st.settings.max_lifetime, st.settings.max_prepared)
        };
        *conn.prepared = crate::prepared::OnServer::new(max_prepared);
        let jitter = lifetime.mul_f64(rand::random::<f64>() * 0.1);
        *self.live_lock().entry(epoch).or_insert(0) += 1;
        Pooled {
            retire_at: conn.created + (lifetime - jitter),
            epoch,
            conn: Box::new(conn),
            slot,
            live: Live {
                pool: self.clone(),
                epoch,
            },
        }
    }

    fn learn(&self, conn: &ServerConn) {
        self.hist.get_or_init(|| {
            self.metrics
                .pool_histograms(&self.key.database, &self.key.user)
        });
        let mut d = self.defaults.write().unwrap_or_else(|e| e.into_inner());
        if d.is_none() {
            *d = Some(Arc::new(Defaults::new(&conn.reported, conn.params.clone())));
        }
    }

    fn release_slot(self: &Arc<Self>) {
        let mut st = self.lock();
        // Over the size after a reload shrank the pool, or no one waiting:
        // the slot goes.
        if st.total > st.settings.size || st.waiters.is_empty() {
            st.total = st.total.saturating_sub(1);
            return;
        }
        let slot = Grant::Slot(Slot {
            pool: Some(self.clone()),
        });
        // Every waiter had given up.
        if let Some(unwanted) = st.offer(slot) {
            st.unclaimed(unwanted);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What a server that reported `reported` (names in its spelling) gives
    /// its clients, and the same reports as owned pairs.
    fn defaults_of(reported: &[(&str, &str)]) -> (Defaults, Vec<(String, String)>) {
        let reported: Vec<(String, String)> = reported
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let params = reported
            .iter()
            .map(|(k, v)| (k.to_ascii_lowercase(), v.clone()))
            .collect();
        (Defaults::new(&reported, params), reported)
    }

    fn written(reported: &[(&str, &str)], want: &[(&str, &str)]) -> (Vec<u8>, Vec<u8>) {
        let (defaults, reported) = defaults_of(reported);
        let want: Params = want
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let mut fast = bytes::BytesMut::from(&b"before"[..]);
        defaults.write_status(&mut fast, &want);
        // What it stands for: one ParameterStatus per reported setting, with
        // the client's value where it set one.
        let mut plain = bytes::BytesMut::from(&b"before"[..]);
        for (name, value) in &reported {
            let v = want.get(&name.to_ascii_lowercase()).unwrap_or(value);
            pgwake_protocol::backend::parameter_status(&mut plain, name, v);
        }
        (fast.to_vec(), plain.to_vec())
    }

    /// A StartupMessage for protocol 3.0 with these `key NUL value NUL` pairs.
    fn startup_packet(pairs: &[u8]) -> Vec<u8> {
        let len = u32::try_from(pairs.len() + 9).unwrap();
        let mut p = len.to_be_bytes().to_vec();
        p.extend_from_slice(&196_608u32.to_be_bytes());
        p.extend_from_slice(pairs);
        p.push(0);
        p
    }

    fn settings_of(defaults: &Defaults, pairs: &[u8]) -> Result<(Arc<Params>, u64), ErrorMessage> {
        let packet = startup_packet(pairs);
        let Ok(pgwake_protocol::startup::StartupRequest::Startup { params, .. }) =
            pgwake_protocol::startup::parse(&packet)
        else {
            panic!("not a startup packet: {pairs:?}")
        };
        let s = defaults.client_settings(params)?;
        // The login's ParameterStatus messages are those for its settings.
        let mut status = bytes::BytesMut::new();
        defaults.write_status(&mut status, &s.want);
        assert_eq!(&s.status[..], &status[..]);
        Ok((s.want.clone(), s.fingerprint))
    }

    #[test]
    fn logins_with_the_same_startup_parameters_share_their_settings() {
        let (defaults, _) = defaults_of(&[("application_name", ""), ("DateStyle", "ISO, MDY")]);
        let app = b"user\0u\0database\0d\0application_name\0pgbench\0DateStyle\0ISO, MDY\0";
        let (first, fp) = settings_of(&defaults, app).unwrap();
        // Only what differs from the server's defaults, lower-case names.
        assert_eq!(
            first.iter().collect::<Vec<_>>(),
            [(&"application_name".to_owned(), &"pgbench".to_owned())]
        );
        assert_eq!(fp, crate::params::fingerprint(&first));
        let (again, fp_again) = settings_of(&defaults, app).unwrap();
        assert!(
            Arc::ptr_eq(&first, &again),
            "the same packet's settings are built once"
        );
        assert_eq!(fp_again, fp);
        // Another app's: its own, and not confused with the first's.
        let other = b"user\0u\0database\0d\0application_name\0psql\0";
        let (theirs, their_fp) = settings_of(&defaults, other).unwrap();
        assert_eq!(
            theirs.get("application_name").map(String::as_str),
            Some("psql")
        );
        assert_ne!(their_fp, fp);
        let (back, _) = settings_of(&defaults, app).unwrap();
        assert_eq!(*back, *first);
        // Settings in `options` count, and a malformed one is refused.
        let (opts, _) = settings_of(&defaults, b"user\0u\0options\0-c search_path=app\0").unwrap();
        assert_eq!(opts.get("search_path").map(String::as_str), Some("app"));
        let bad = settings_of(&defaults, b"user\0u\0options\0-c\0").unwrap_err();
        assert_eq!(bad.code, sqlstate::PROTOCOL_VIOLATION);
    }

    #[test]
    fn login_parameter_status_is_the_servers_with_the_clients_own_values() {
        let reported = [
            ("application_name", ""),
            ("DateStyle", "ISO, MDY"),
            ("server_version", "15.18"),
            ("TimeZone", "UTC"),
        ];
        for want in [
            &[][..],
            &[("application_name", "pgbench")][..],
            &[("datestyle", "German"), ("timezone", "Europe/Berlin")][..],
            &[("search_path", "app")][..],
            &[
                ("application_name", "a"),
                ("datestyle", "German"),
                ("server_version", "1"),
                ("timezone", "UTC"),
                ("search_path", "app"),
            ][..],
            &[
                ("application_name", "a"),
                ("datestyle", "German"),
                ("server_version", "1"),
                ("timezone", "Europe/Berlin"),
                ("zz", "after"),
            ][..],
        ] {
            let (fast, plain) = written(&reported, want);
            assert_eq!(fast, plain, "client settings {want:?}");
        }
        let (with_app, _) = written(&reported, &[("application_name", "pgbench")]);
        assert!(with_app.windows(8).any(|w| w == b"pgbench\0"));
        let (none, _) = written(&[], &[("application_name", "x")]);
        assert_eq!(none, b"before");
    }
}
