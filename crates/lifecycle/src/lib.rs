#![forbid(unsafe_code)]
//! Whether the database server is running, starting it when a client
//! arrives (the waker), and stopping it when nobody uses it.
//!
//! A [`Provider`] reports the server's state and starts or stops it: Azure
//! Resource Manager, shell commands, or none. [`Lifecycle`] wraps one: it
//! caches the state for `state_cache_ttl` (a cached "ready" that a failed
//! connection contradicts is asked again, at most once a second), and when
//! a server connection cannot be made and the server is stopped, issues
//! exactly one start however many clients arrive, parks them all on one
//! signal, and detects readiness by probing the server itself as well as by
//! the provider's state.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

mod azure;
mod command;
pub use azure::AzureProvider;
pub use command::CommandProvider;

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The server's state, in Azure's words.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerState {
    Ready,
    Starting,
    Stopping,
    Stopped,
    /// Updating, Restarting, Provisioning, …: busy, will be Ready.
    Busy(String),
    /// Disabled, Dropping, Inaccessible, or a word pgwake does not know.
    Other(String),
}

impl ServerState {
    /// Reads a state word: Azure's `properties.state`, or a status command's
    /// output. Case does not matter.
    pub fn parse(word: &str) -> ServerState {
        let w = word.trim();
        match w.to_ascii_lowercase().as_str() {
            "ready" | "running" | "started" | "online" => ServerState::Ready,
            "starting" => ServerState::Starting,
            "stopping" => ServerState::Stopping,
            "stopped" | "down" | "offline" => ServerState::Stopped,
            "updating" | "restarting" | "provisioning" => ServerState::Busy(w.to_string()),
            _ => ServerState::Other(w.to_string()),
        }
    }

    pub fn name(&self) -> &str {
        match self {
            ServerState::Ready => "ready",
            ServerState::Starting => "starting",
            ServerState::Stopping => "stopping",
            ServerState::Stopped => "stopped",
            ServerState::Busy(w) | ServerState::Other(w) => w,
        }
    }
}

/// A provider's failure, naming the provider and what went wrong.
#[derive(Debug, Clone)]
pub struct ProviderError(pub String);

impl fmt::Display for ProviderError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ProviderError {}

/// Reports and changes the server's state.
pub trait Provider: Send + Sync + fmt::Debug {
    fn state(&self) -> BoxFuture<'_, Result<ServerState, ProviderError>>;
    /// Asks for a start; returns once the request was accepted.
    fn start(&self) -> BoxFuture<'_, Result<(), ProviderError>>;
    /// Asks for a stop; returns once the request was accepted.
    fn stop(&self) -> BoxFuture<'_, Result<(), ProviderError>>;
    fn describe(&self) -> String;
}

/// Opens a TCP connection to the server: true when it accepts.
pub type Probe = Arc<dyn Fn() -> BoxFuture<'static, bool> + Send + Sync>;

#[derive(Debug, Clone, Copy)]
pub struct Settings {
    /// How long a client waits for a wake before it gets 57P03.
    pub wake_timeout: Duration,
    /// How long a state answer is trusted.
    pub state_cache_ttl: Duration,
}

/// Why a client could not be served by a wake.
#[derive(Debug, Clone)]
pub enum WakeError {
    /// Still waking after `wake_timeout`.
    Timeout { waited: Duration },
    /// The provider failed and the server did not come up.
    Failed(String),
}

impl fmt::Display for WakeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WakeError::Timeout { waited } => write!(
                f,
                "the database server is starting; still not ready after {}",
                humantime::format_duration(Duration::from_secs(waited.as_secs()))
            ),
            WakeError::Failed(e) => write!(f, "the database server could not be started: {e}"),
        }
    }
}

/// A wake in flight: `None` while waking, then its outcome.
type WakeSignal = watch::Receiver<Option<Result<Duration, String>>>;

/// Probing backs off from this to [`PROBE_MAX`].
const PROBE_FIRST: Duration = Duration::from_millis(50);
const PROBE_MAX: Duration = Duration::from_secs(1);
/// While waking, the provider's state is asked at most this often.
const WAKE_STATE_EVERY: Duration = Duration::from_secs(1);
/// A wake gives up after this long (clients stop waiting much sooner).
const WAKE_GIVE_UP: Duration = Duration::from_secs(30 * 60);
/// While the server cannot be reached, a cached "ready" is asked again this
/// often at most: the server may have been stopped behind pgwake's back, or
/// the answer read while it was shutting down.
const RECHECK_WHEN_UNREACHABLE: Duration = Duration::from_secs(1);

/// The waker and idle tracking around one provider.
pub struct Lifecycle {
    provider: Arc<dyn Provider>,
    settings: Settings,
    probe: Probe,
    epoch: std::time::Instant,
    cached: Mutex<Option<(Instant, ServerState)>>,
    wake: Mutex<Option<(Instant, WakeSignal)>>,
    /// Milliseconds since `epoch` of the last client activity.
    last_activity: AtomicU64,
    /// Who arrived last: named in the log when a wake starts.
    last_client: Mutex<String>,
    state_requests: AtomicU64,
    wakes: AtomicU64,
    wake_failures: AtomicU64,
    stops: AtomicU64,
    /// Told about each finished wake.
    on_wake: std::sync::OnceLock<WakeObserver>,
    /// The state the last wake began in, and how many callers waited for it.
    last_wake: Mutex<(String, u32)>,
}

/// Called when a wake ends.
pub type WakeObserver = Box<dyn Fn(&WakeReport) + Send + Sync>;

/// A finished wake, for metrics and traces.
#[derive(Debug, Clone)]
pub struct WakeReport {
    pub began: Instant,
    pub took: Duration,
    /// Why it failed, if it did.
    pub error: Option<String>,
    /// The client whose arrival triggered it, as `note_client` named it.
    pub trigger: String,
    /// The server's state when it began (lower case).
    pub state: String,
    /// Callers that waited for this one start.
    pub waiters: u32,
}

/// Counts for metrics and the admin console.
#[derive(Debug, Clone, Copy, Default)]
pub struct LifecycleStats {
    /// Wakes started (each is one start request at most).
    pub wakes: u64,
    pub wake_failures: u64,
    /// Stop requests sent (idle stop, SLEEP, stop on shutdown).
    pub stops: u64,
}

impl fmt::Debug for Lifecycle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Lifecycle")
            .field("provider", &self.provider.describe())
            .finish_non_exhaustive()
    }
}

impl Lifecycle {
    pub fn new(provider: Arc<dyn Provider>, settings: Settings, probe: Probe) -> Arc<Self> {
        Arc::new(Lifecycle {
            provider,
            settings,
            probe,
            epoch: std::time::Instant::now(),
            cached: Mutex::new(None),
            wake: Mutex::new(None),
            last_activity: AtomicU64::new(0),
            last_client: Mutex::new(String::new()),
            state_requests: AtomicU64::new(0),
            wakes: AtomicU64::new(0),
            wake_failures: AtomicU64::new(0),
            stops: AtomicU64::new(0),
            on_wake: std::sync::OnceLock::new(),
            last_wake: Mutex::new((String::new(), 0)),
        })
    }

    /// Wakes, failed wakes and stops so far.
    pub fn stats(&self) -> LifecycleStats {
        LifecycleStats {
            wakes: self.wakes.load(Ordering::Relaxed),
            wake_failures: self.wake_failures.load(Ordering::Relaxed),
            stops: self.stops.load(Ordering::Relaxed),
        }
    }

    /// Sets the function told about each finished wake (once).
    pub fn observe_wakes(&self, f: WakeObserver) {
        let _ = self.on_wake.set(f);
    }

    /// The state the last wake began in and the callers that waited for it.
    pub fn last_wake(&self) -> (String, u32) {
        self.last_wake
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn describe(&self) -> String {
        self.provider.describe()
    }

    /// A client arrived: `who` names it (address, database, user,
    /// application_name) in the log of a wake it triggers.
    pub fn note_client(&self, who: String) {
        *self.last_client.lock().unwrap_or_else(|e| e.into_inner()) = who;
        self.touch();
    }

    /// Client activity: a transaction or session used the server.
    pub fn touch(&self) {
        let ms = millis(self.epoch.elapsed());
        self.last_activity.store(ms, Ordering::Relaxed);
    }

    /// How long since the last client activity.
    pub fn idle_for(&self) -> Duration {
        let now = millis(self.epoch.elapsed());
        Duration::from_millis(now.saturating_sub(self.last_activity.load(Ordering::Relaxed)))
    }

    /// When the wake under way started, if one is.
    pub fn waking_since(&self) -> Option<Instant> {
        let w = self.wake.lock().unwrap_or_else(|e| e.into_inner());
        w.as_ref()
            .filter(|(_, rx)| rx.borrow().is_none())
            .map(|(at, _)| *at)
    }

    /// The deadline of clients waiting for the wake under way.
    pub fn wake_deadline(&self) -> Option<Instant> {
        self.waking_since()
            .map(|at| at + self.settings.wake_timeout)
    }

    /// State requests sent to the provider so far.
    pub fn state_requests(&self) -> u64 {
        self.state_requests.load(Ordering::Relaxed)
    }

    /// The last known state, without asking.
    pub fn last_state(&self) -> Option<ServerState> {
        self.cached
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .map(|(_, s)| s.clone())
    }

    fn remember(&self, state: ServerState) {
        let mut c = self.cached.lock().unwrap_or_else(|e| e.into_inner());
        let changed = c.as_ref().map(|(_, s)| s) != Some(&state);
        if changed {
            tracing::info!(provider = %self.provider.describe(), state = state.name(), "database server state");
        }
        *c = Some((Instant::now(), state));
    }

    async fn fresh_state(&self) -> Result<ServerState, ProviderError> {
        self.state_requests.fetch_add(1, Ordering::Relaxed);
        let s = self.provider.state().await?;
        self.remember(s.clone());
        Ok(s)
    }

    /// The provider's state, asked at most once per `state_cache_ttl`.
    pub async fn state(&self) -> Result<ServerState, ProviderError> {
        if let Some((at, s)) = self
            .cached
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
        {
            if at.elapsed() < self.settings.state_cache_ttl {
                return Ok(s.clone());
            }
        }
        self.fresh_state().await
    }

    /// The state once a server connection could not be made: the cached
    /// answer, unless it says the server is up and is older than
    /// [`RECHECK_WHEN_UNREACHABLE`]; then one caller asks the provider again
    /// (the others keep the cached answer, and their retry sees the new one).
    async fn state_after_failure(&self) -> Result<ServerState, ProviderError> {
        let recheck = {
            let mut c = self.cached.lock().unwrap_or_else(|e| e.into_inner());
            match c.as_mut() {
                Some((at, ServerState::Ready | ServerState::Other(_)))
                    if at.elapsed() >= RECHECK_WHEN_UNREACHABLE =>
                {
                    // Claimed: callers arriving during the request wait for
                    // their next retry rather than ask too.
                    *at = Instant::now();
                    true
                }
                _ => false,
            }
        };
        if recheck {
            tracing::debug!(provider = %self.provider.describe(), "the server cannot be reached though its state was ready; asking again");
            self.fresh_state().await
        } else {
            self.state().await
        }
    }

    /// A server connection could not be made. If the server is stopped (or
    /// stopping, or starting), wakes it (one wake however many callers) and
    /// waits up to `wake_timeout`: `Ok(true)` once it is up. `Ok(false)`
    /// when the server is not asleep, so the connection error stands.
    pub async fn server_unavailable(self: &Arc<Self>) -> Result<bool, WakeError> {
        let signal = match self.joinable_wake() {
            Some(s) => {
                self.last_wake.lock().unwrap_or_else(|e| e.into_inner()).1 += 1;
                s
            }
            None => {
                let state = match self.state_after_failure().await {
                    Ok(s) => s,
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot tell whether the database server is stopped");
                        return Ok(false);
                    }
                };
                match state {
                    ServerState::Stopped
                    | ServerState::Stopping
                    | ServerState::Starting
                    | ServerState::Busy(_) => {
                        let s = self.begin_wake(&state);
                        self.last_wake.lock().unwrap_or_else(|e| e.into_inner()).1 += 1;
                        s
                    }
                    ServerState::Ready | ServerState::Other(_) => return Ok(false),
                }
            }
        };
        self.wait_for(signal.1, signal.0).await.map(|_| true)
    }

    /// Wakes the server if it is asleep and waits for it (at start-up with
    /// `wake_on_startup`, or the console's WAKE).
    pub async fn wake_now(self: &Arc<Self>) -> Result<(), WakeError> {
        match self.fresh_state().await {
            Ok(ServerState::Ready) => Ok(()),
            Ok(state) => {
                let (at, rx) = self.begin_wake(&state);
                self.wait_for(rx, at).await.map(|_| ())
            }
            Err(e) => Err(WakeError::Failed(e.to_string())),
        }
    }

    fn joinable_wake(&self) -> Option<(Instant, WakeSignal)> {
        let w = self.wake.lock().unwrap_or_else(|e| e.into_inner());
        w.as_ref().filter(|(_, rx)| rx.borrow().is_none()).cloned()
    }

    /// Starts a wake unless one is under way; returns its signal.
    fn begin_wake(self: &Arc<Self>, state: &ServerState) -> (Instant, WakeSignal) {
        let mut w = self.wake.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(running) = w.as_ref().filter(|(_, rx)| rx.borrow().is_none()) {
            return running.clone();
        }
        let state = state.name().to_ascii_lowercase();
        *self.last_wake.lock().unwrap_or_else(|e| e.into_inner()) = (state.clone(), 0);
        let (tx, rx) = watch::channel(None);
        let at = Instant::now();
        *w = Some((at, rx.clone()));
        drop(w);
        let trigger = self
            .last_client
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let me = self.clone();
        self.wakes.fetch_add(1, Ordering::Relaxed);
        tokio::spawn(async move {
            tracing::info!(provider = %me.provider.describe(), trigger = %trigger, "waking the database server");
            let outcome = match tokio::time::timeout(WAKE_GIVE_UP, me.run_wake()).await {
                Ok(Ok(())) => {
                    let took = at.elapsed();
                    tracing::info!(trigger = %trigger, took_ms = millis(took), "database server is awake after {:.1}s", took.as_secs_f64());
                    Ok(took)
                }
                Ok(Err(e)) => {
                    tracing::error!(error = %e, "waking the database server failed");
                    Err(e)
                }
                Err(_) => Err("gave up after 30 minutes".to_string()),
            };
            if outcome.is_err() {
                me.wake_failures.fetch_add(1, Ordering::Relaxed);
            }
            if let Some(observe) = me.on_wake.get() {
                observe(&WakeReport {
                    began: at,
                    took: at.elapsed(),
                    error: outcome.as_ref().err().cloned(),
                    trigger,
                    state,
                    waiters: me.last_wake().1,
                });
            }
            let _ = tx.send(Some(outcome));
        });
        (at, rx)
    }

    async fn wait_for(&self, mut rx: WakeSignal, began: Instant) -> Result<Duration, WakeError> {
        let deadline = began + self.settings.wake_timeout;
        loop {
            if let Some(outcome) = rx.borrow_and_update().clone() {
                return outcome.map_err(WakeError::Failed);
            }
            match tokio::time::timeout_at(deadline, rx.changed()).await {
                Ok(Ok(())) => continue,
                Ok(Err(_)) => return Err(WakeError::Failed("the wake was abandoned".into())),
                Err(_) => {
                    return Err(WakeError::Timeout {
                        waited: began.elapsed(),
                    })
                }
            }
        }
    }

    /// Starts the server (once), then waits until it answers.
    async fn run_wake(&self) -> Result<(), String> {
        let mut started = false;
        let mut probe_every = PROBE_FIRST;
        let mut next_state = Instant::now();
        let mut state = None;
        let mut failures = 0u32;
        loop {
            if Instant::now() >= next_state {
                next_state = Instant::now() + WAKE_STATE_EVERY;
                match self.fresh_state().await {
                    Ok(s) => state = Some(s),
                    Err(e) => {
                        failures += 1;
                        tracing::warn!(error = %e, "provider state request failed while waking");
                        if failures >= 20 && !started {
                            return Err(e.to_string());
                        }
                    }
                }
            }
            match &state {
                Some(ServerState::Stopped) if !started => match self.provider.start().await {
                    Ok(()) => {
                        started = true;
                        tracing::info!(provider = %self.provider.describe(), "start requested");
                        self.remember(ServerState::Starting);
                        // A start command may return only once the server is
                        // up (`pg_ctl start -w`): probe now, not after a pause.
                        continue;
                    }
                    Err(e) => {
                        failures += 1;
                        tracing::warn!(error = %e, "start request failed; retrying");
                        if failures >= 20 {
                            return Err(e.to_string());
                        }
                        tokio::time::sleep(PROBE_MAX).await;
                        continue;
                    }
                },
                // Waits a stop out before starting again.
                Some(ServerState::Stopping) => {}
                _ => {
                    if (self.probe)().await {
                        self.remember(ServerState::Ready);
                        return Ok(());
                    }
                }
            }
            tokio::time::sleep(probe_every).await;
            probe_every = (probe_every * 2).min(PROBE_MAX);
        }
    }

    /// Stops the server through the provider (idle stop, shutdown).
    pub async fn stop_server(&self, why: &str) -> Result<(), ProviderError> {
        tracing::info!(provider = %self.provider.describe(), reason = why, "stopping the database server");
        self.stops.fetch_add(1, Ordering::Relaxed);
        self.provider.stop().await?;
        self.remember(ServerState::Stopping);
        Ok(())
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicBool;

    /// A server that comes up `delay` after a start request.
    #[derive(Debug)]
    struct Fake {
        up: Arc<AtomicBool>,
        starts: AtomicU64,
        delay: Duration,
    }

    impl Provider for Fake {
        fn state(&self) -> BoxFuture<'_, Result<ServerState, ProviderError>> {
            let s = if self.up.load(Ordering::SeqCst) {
                ServerState::Ready
            } else if self.starts.load(Ordering::SeqCst) > 0 {
                ServerState::Starting
            } else {
                ServerState::Stopped
            };
            Box::pin(async move { Ok(s) })
        }
        fn start(&self) -> BoxFuture<'_, Result<(), ProviderError>> {
            self.starts.fetch_add(1, Ordering::SeqCst);
            let up = self.up.clone();
            let delay = self.delay;
            if delay.is_zero() {
                // Returns once the server is up, as `pg_ctl start -w` does.
                up.store(true, Ordering::SeqCst);
                return Box::pin(async { Ok(()) });
            }
            tokio::spawn(async move {
                tokio::time::sleep(delay).await;
                up.store(true, Ordering::SeqCst);
            });
            Box::pin(async { Ok(()) })
        }
        fn stop(&self) -> BoxFuture<'_, Result<(), ProviderError>> {
            Box::pin(async { Ok(()) })
        }
        fn describe(&self) -> String {
            "fake".into()
        }
    }

    fn lifecycle(delay: Duration, wake_timeout: Duration) -> (Arc<Lifecycle>, Arc<Fake>) {
        let up = Arc::new(AtomicBool::new(false));
        let fake = Arc::new(Fake {
            up: up.clone(),
            starts: AtomicU64::new(0),
            delay,
        });
        let probe: Probe = Arc::new(move || {
            let up = up.clone();
            Box::pin(async move { up.load(Ordering::SeqCst) })
        });
        let l = Lifecycle::new(
            fake.clone(),
            Settings {
                wake_timeout,
                state_cache_ttl: Duration::from_secs(30),
            },
            probe,
        );
        (l, fake)
    }

    #[tokio::test(start_paused = true)]
    async fn many_callers_one_start() {
        let (l, fake) = lifecycle(Duration::from_secs(3), Duration::from_secs(60));
        let mut waiters = Vec::new();
        for _ in 0..20 {
            let l = l.clone();
            waiters.push(tokio::spawn(async move { l.server_unavailable().await }));
        }
        for w in waiters {
            assert!(w.await.unwrap().unwrap());
        }
        assert_eq!(fake.starts.load(Ordering::SeqCst), 1);
        assert_eq!(l.last_state(), Some(ServerState::Ready));
        // Ready now: a connection error is not a reason to wake.
        assert!(!l.server_unavailable().await.unwrap());
        assert_eq!(fake.starts.load(Ordering::SeqCst), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_start_that_waits_for_the_server_is_followed_by_no_pause() {
        let (l, fake) = lifecycle(Duration::ZERO, Duration::from_secs(60));
        let began = Instant::now();
        assert!(l.server_unavailable().await.unwrap());
        assert!(began.elapsed() < PROBE_FIRST, "{:?}", began.elapsed());
        assert_eq!(fake.starts.load(Ordering::SeqCst), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn waiters_give_up_after_wake_timeout() {
        let (l, fake) = lifecycle(Duration::from_secs(10), Duration::from_secs(3));
        let began = Instant::now();
        match l.server_unavailable().await {
            Err(WakeError::Timeout { waited }) => {
                assert!(waited >= Duration::from_secs(3) && waited < Duration::from_secs(4))
            }
            other => panic!("{other:?}"),
        }
        assert!(began.elapsed() < Duration::from_secs(4));
        // The wake goes on; a later caller is served once it is up.
        tokio::time::sleep(Duration::from_secs(8)).await;
        assert!(
            l.server_unavailable().await.unwrap() || l.last_state() == Some(ServerState::Ready)
        );
        assert_eq!(fake.starts.load(Ordering::SeqCst), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_server_stopped_behind_a_cached_ready_is_started_by_the_next_caller() {
        let (l, fake) = lifecycle(Duration::ZERO, Duration::from_secs(60));
        fake.up.store(true, Ordering::SeqCst);
        assert_eq!(l.state().await.unwrap(), ServerState::Ready);
        // Stopped outside pgwake: the provider says so, the cache does not.
        fake.up.store(false, Ordering::SeqCst);
        let asked = l.state_requests();
        // Just read: the connection error stands and the provider is not asked.
        assert!(!l.server_unavailable().await.unwrap());
        assert_eq!(l.state_requests(), asked);
        tokio::time::advance(RECHECK_WHEN_UNREACHABLE).await;
        // Many callers at once: one asks again and starts the server, the
        // others retry (their next call finds it up).
        let mut callers = Vec::new();
        for _ in 0..10 {
            let l = l.clone();
            callers.push(tokio::spawn(async move { l.server_unavailable().await }));
        }
        let mut woke = 0;
        for c in callers {
            woke += usize::from(c.await.unwrap().unwrap());
        }
        assert!(woke >= 1);
        assert_eq!(fake.starts.load(Ordering::SeqCst), 1);
        assert_eq!(l.last_state(), Some(ServerState::Ready));
        // Well within state_cache_ttl (30 s), the cache alone would have
        // said ready: one state request after the refusal, and the wake's own.
        assert!(
            l.state_requests() - asked <= 2,
            "{}",
            l.state_requests() - asked
        );
    }

    #[test]
    fn parses_state_words() {
        assert_eq!(ServerState::parse("Ready"), ServerState::Ready);
        assert_eq!(ServerState::parse(" stopped\n"), ServerState::Stopped);
        assert_eq!(
            ServerState::parse("Updating"),
            ServerState::Busy("Updating".into())
        );
        assert_eq!(ServerState::parse("Disabled").name(), "Disabled");
    }
}
