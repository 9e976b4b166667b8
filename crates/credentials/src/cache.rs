//! A token cache refreshed in the background, ahead of expiry.
//!
//! Server logins read the cached token and never wait for a fetch while it is
//! valid. A background task ([`RefreshingCache::run`]) fetches a new token at
//! the earlier of `expiry - refresh_margin` and 75 % of the token's lifetime
//! (less a little jitter, so many processes do not ask at once), retries with
//! backoff while the old token stays in use, and fetches at once when a login
//! finds no valid token.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use rand::Rng;
use tokio::sync::{watch, Notify};
use tokio::time::Instant;

use crate::{CredentialError, CredentialSource, Secret, SecretFuture};

/// A secret and, when known, when it stops working.
#[derive(Debug, Clone)]
pub struct Token {
    pub secret: Secret,
    pub expires_at: Option<SystemTime>,
}

/// The future [`TokenFetcher::fetch`] returns. The error names what failed
/// (the endpoint's answer, the command's exit status), never a secret.
pub type TokenFuture<'a> = Pin<Box<dyn Future<Output = Result<Token, String>> + Send + 'a>>;

/// Something that can fetch a fresh token: a command, an identity endpoint.
pub trait TokenFetcher: Send + Sync + fmt::Debug {
    fn fetch(&self) -> TokenFuture<'_>;
    /// The source's name and where it gets tokens, for error messages.
    fn describe(&self) -> String;
}

/// When to refresh and how long to wait for a fetch.
#[derive(Debug, Clone, Copy)]
pub struct RefreshSettings {
    /// Refresh at the latest this long before the token expires.
    pub refresh_margin: Duration,
    /// A fetch that takes longer than this has failed.
    pub fetch_timeout: Duration,
    /// How often to fetch again when the source gives no expiry.
    pub refresh_interval: Duration,
}

impl Default for RefreshSettings {
    fn default() -> Self {
        RefreshSettings {
            refresh_margin: Duration::from_secs(300),
            fetch_timeout: Duration::from_secs(10),
            refresh_interval: Duration::from_secs(300),
        }
    }
}

/// Retries of a failing source start this far apart and double up to the cap.
const RETRY_FIRST: Duration = Duration::from_millis(500);
const RETRY_MAX: Duration = Duration::from_secs(15);
/// Logins that find no valid token trigger a fetch, at most this often.
const DEMAND_GAP: Duration = Duration::from_millis(500);

#[derive(Debug, Default)]
struct State {
    token: Option<Token>,
    last_error: Option<String>,
    fetches: u64,
    failures: u64,
}

impl State {
    fn valid(&self, now: SystemTime) -> Option<&Secret> {
        let t = self.token.as_ref()?;
        match t.expires_at {
            Some(at) if at <= now => None,
            _ => Some(&t.secret),
        }
    }
}

/// A [`CredentialSource`] over a [`TokenFetcher`], refreshed in the background.
pub struct RefreshingCache {
    fetcher: Box<dyn TokenFetcher>,
    name: String,
    settings: RefreshSettings,
    state: Mutex<State>,
    generation: AtomicU64,
    /// A fetch is under way.
    fetching: AtomicBool,
    /// A login found no valid token: fetch now.
    demand: Notify,
    /// Bumped after every fetch, successful or not.
    attempts: watch::Sender<u64>,
    /// Told about every fetch (traces).
    on_fetch: std::sync::OnceLock<FetchObserver>,
}

/// A finished fetch, for traces: which source, when, how long, and why it
/// failed if it did. Never the token.
#[derive(Debug, Clone, Copy)]
pub struct FetchReport<'a> {
    pub source: &'a str,
    pub began: std::time::Instant,
    pub took: Duration,
    pub error: Option<&'a str>,
}

/// Called after each fetch.
pub type FetchObserver = Box<dyn Fn(&FetchReport<'_>) + Send + Sync>;

impl fmt::Debug for RefreshingCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RefreshingCache")
            .field("source", &self.name)
            .finish_non_exhaustive()
    }
}

/// Counters for metrics and the admin console.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheStats {
    pub fetches: u64,
    pub failures: u64,
    pub valid: bool,
    pub expires_at: Option<SystemTime>,
}

impl RefreshingCache {
    /// A cache with no token yet; [`run`](Self::run) fetches the first one.
    pub fn new(fetcher: Box<dyn TokenFetcher>, settings: RefreshSettings) -> Arc<Self> {
        Arc::new(RefreshingCache {
            name: fetcher.describe(),
            fetcher,
            settings,
            state: Mutex::new(State::default()),
            generation: AtomicU64::new(0),
            fetching: AtomicBool::new(false),
            demand: Notify::new(),
            attempts: watch::channel(0).0,
            on_fetch: std::sync::OnceLock::new(),
        })
    }

    /// Sets the function told about each fetch (once).
    pub fn observe_fetches(&self, f: FetchObserver) {
        let _ = self.on_fetch.set(f);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn stats(&self) -> CacheStats {
        let st = self.lock();
        CacheStats {
            fetches: st.fetches,
            failures: st.failures,
            valid: st.valid(SystemTime::now()).is_some(),
            expires_at: st.token.as_ref().and_then(|t| t.expires_at),
        }
    }

    fn unavailable(&self, st: &State) -> CredentialError {
        let why = st
            .last_error
            .as_deref()
            .unwrap_or("no fetch has finished yet");
        let reason = match st.token.as_ref().and_then(|t| t.expires_at) {
            Some(at) => format!(
                "the token expired {} ago and no new one could be fetched: {why}",
                humantime::format_duration(round_secs(
                    SystemTime::now().duration_since(at).unwrap_or_default()
                ))
            ),
            None => format!("no token could be fetched: {why}"),
        };
        CredentialError {
            source_name: self.name.clone(),
            reason,
        }
    }

    /// When to fetch again after a token with this lifetime arrived.
    fn refresh_after(&self, lifetime: Option<Duration>) -> Duration {
        let Some(life) = lifetime else {
            return self.settings.refresh_interval;
        };
        let by_fraction = life.mul_f64(0.75);
        let by_margin = life.saturating_sub(self.settings.refresh_margin);
        // A margin longer than half the lifetime (short-lived tokens) would
        // refresh almost at once; 75 % of the lifetime is the rule then.
        let base = if by_margin >= life / 2 {
            by_margin.min(by_fraction)
        } else {
            by_fraction
        };
        let jitter = life.mul_f64(rand::rng().random_range(0.0..0.05));
        base.saturating_sub(jitter).max(Duration::from_millis(200))
    }

    /// One fetch; stores the result. Returns when to fetch next on success.
    async fn fetch_once(&self) -> Result<Duration, ()> {
        self.fetching.store(true, Ordering::SeqCst);
        let began = std::time::Instant::now();
        let result =
            match tokio::time::timeout(self.settings.fetch_timeout, self.fetcher.fetch()).await {
                Ok(r) => r,
                Err(_) => Err(format!(
                    "no answer within {}",
                    humantime::format_duration(self.settings.fetch_timeout)
                )),
            };
        let now = SystemTime::now();
        let result = result.and_then(|t| match t.expires_at {
            Some(at) if at <= now => {
                Err("the source returned a token that has already expired".into())
            }
            _ => Ok(t),
        });
        let mut st = self.lock();
        st.fetches += 1;
        let outcome = match result {
            Ok(token) => {
                let lifetime = token
                    .expires_at
                    .map(|at| at.duration_since(now).unwrap_or_default());
                let changed = st
                    .token
                    .as_ref()
                    .is_some_and(|old| old.secret != token.secret);
                if st.token.is_none() || st.last_error.is_some() {
                    tracing::info!(
                        source = %self.name,
                        expires_in = ?lifetime.map(round_secs),
                        "credential source: token fetched"
                    );
                } else {
                    tracing::debug!(source = %self.name, expires_in = ?lifetime.map(round_secs), "credential source: token refreshed");
                }
                st.token = Some(token);
                st.last_error = None;
                if changed {
                    self.generation.fetch_add(1, Ordering::Relaxed);
                }
                Ok(self.refresh_after(lifetime))
            }
            Err(e) => {
                st.failures += 1;
                if st.valid(now).is_some() {
                    tracing::warn!(source = %self.name, error = %e, "credential source: refresh failed; the current token is still valid and stays in use");
                } else {
                    tracing::error!(source = %self.name, error = %e, "credential source: no valid token; new server connections fail until a fetch succeeds");
                }
                st.last_error = Some(e);
                Err(())
            }
        };
        let failed = st.last_error.clone().filter(|_| outcome.is_err());
        drop(st);
        if let Some(observe) = self.on_fetch.get() {
            observe(&FetchReport {
                source: &self.name,
                began,
                took: began.elapsed(),
                error: failed.as_deref(),
            });
        }
        self.fetching.store(false, Ordering::SeqCst);
        self.attempts.send_modify(|n| *n += 1);
        outcome
    }

    /// Fetches tokens until dropped: the first at once, then ahead of expiry.
    pub async fn run(self: Arc<Self>) {
        let mut retry = RETRY_FIRST;
        let mut next = Instant::now();
        let mut last_attempt: Option<Instant> = None;
        loop {
            // Sleep until the next planned fetch, waking early when a login
            // finds no valid token.
            loop {
                tokio::select! {
                    _ = tokio::time::sleep_until(next) => break,
                    _ = self.demand.notified() => {
                        if self.lock().valid(SystemTime::now()).is_none() {
                            let earliest = last_attempt.map_or(Instant::now(), |t| t + DEMAND_GAP);
                            next = next.min(earliest.max(Instant::now()));
                        }
                    }
                }
            }
            last_attempt = Some(Instant::now());
            match self.fetch_once().await {
                Ok(after) => {
                    retry = RETRY_FIRST;
                    next = Instant::now() + after;
                }
                Err(()) => {
                    next = Instant::now() + retry;
                    retry = (retry * 2).min(RETRY_MAX);
                }
            }
        }
    }
}

fn round_secs(d: Duration) -> Duration {
    Duration::from_secs(d.as_secs())
}

impl CredentialSource for RefreshingCache {
    fn current(&self) -> Result<Option<Secret>, CredentialError> {
        let st = self.lock();
        if let Some(s) = st.valid(SystemTime::now()) {
            return Ok(Some(s.clone()));
        }
        let e = self.unavailable(&st);
        drop(st);
        self.demand.notify_one();
        Err(e)
    }

    fn generation(&self) -> u64 {
        self.generation.load(Ordering::Relaxed)
    }

    fn secret(&self, wait: Duration) -> SecretFuture<'_> {
        Box::pin(async move {
            let mut attempts = self.attempts.subscribe();
            match self.current() {
                Ok(s) => return Ok(s),
                Err(e) => {
                    // Wait for the fetch that `current` asked for.
                    let deadline = Instant::now() + wait;
                    attempts.mark_unchanged();
                    if tokio::time::timeout_at(deadline, attempts.changed())
                        .await
                        .is_err()
                    {
                        return Err(e);
                    }
                }
            }
            self.current()
        })
    }

    fn settled(&self, wait: Duration) -> Pin<Box<dyn Future<Output = ()> + Send + '_>> {
        Box::pin(async move {
            let mut attempts = self.attempts.subscribe();
            if self.fetching.load(Ordering::SeqCst) {
                let _ = tokio::time::timeout(wait, attempts.changed()).await;
            }
        })
    }

    fn describe(&self) -> String {
        self.name.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::VecDeque;

    /// Hands out scripted results, one per fetch.
    #[derive(Debug)]
    struct Script(Mutex<VecDeque<Result<Token, String>>>, Arc<AtomicU64>);

    impl TokenFetcher for Script {
        fn fetch(&self) -> TokenFuture<'_> {
            self.1.fetch_add(1, Ordering::Relaxed);
            let next = self.0.lock().unwrap().pop_front();
            Box::pin(async move { next.unwrap_or_else(|| Err("endpoint down (HTTP 500)".into())) })
        }
        fn describe(&self) -> String {
            "script".into()
        }
    }

    fn token(value: &str, life: Duration) -> Result<Token, String> {
        Ok(Token {
            secret: Secret::new(value),
            expires_at: Some(SystemTime::now() + life),
        })
    }

    fn cache(results: Vec<Result<Token, String>>) -> (Arc<RefreshingCache>, Arc<AtomicU64>) {
        let calls = Arc::new(AtomicU64::new(0));
        let c = RefreshingCache::new(
            Box::new(Script(Mutex::new(results.into()), calls.clone())),
            RefreshSettings::default(),
        );
        (c, calls)
    }

    #[test]
    fn refreshes_at_75_percent_or_the_margin() {
        let (c, _) = cache(vec![]);
        let hour = c.refresh_after(Some(Duration::from_secs(3600)));
        assert!(
            hour <= Duration::from_secs(2700) && hour >= Duration::from_secs(2500),
            "{hour:?}"
        );
        // 24 h token: the margin (5 min) is later than 75 %, so 75 % wins.
        let day = c.refresh_after(Some(Duration::from_secs(86400)));
        assert!(day <= Duration::from_secs(64800), "{day:?}");
        // Short-lived: 75 % of 30 s, never "at once".
        let short = c.refresh_after(Some(Duration::from_secs(30)));
        assert!(
            short <= Duration::from_millis(22500) && short >= Duration::from_secs(21),
            "{short:?}"
        );
        assert_eq!(c.refresh_after(None), Duration::from_secs(300));
        // A long token with a long margin: expiry - margin is the earlier.
        let c2 = RefreshingCache::new(
            Box::new(Script(Mutex::new(VecDeque::new()), Arc::default())),
            RefreshSettings {
                refresh_margin: Duration::from_secs(1800),
                ..RefreshSettings::default()
            },
        );
        let t = c2.refresh_after(Some(Duration::from_secs(4 * 3600)));
        assert!(t <= Duration::from_secs(4 * 3600 - 1800), "{t:?}");
    }

    #[tokio::test]
    async fn first_login_waits_for_the_first_fetch() {
        let (c, calls) = cache(vec![token("one", Duration::from_secs(3600))]);
        let run = tokio::spawn(c.clone().run());
        let s = c.secret(Duration::from_secs(5)).await.unwrap().unwrap();
        assert_eq!(s.expose(), "one");
        assert_eq!(calls.load(Ordering::Relaxed), 1);
        assert!(c.stats().valid);
        run.abort();
    }

    #[tokio::test(start_paused = true)]
    async fn a_failing_source_keeps_the_valid_token_then_reports_its_error() {
        let (c, calls) = cache(vec![token("one", Duration::from_secs(40))]);
        let run = tokio::spawn(c.clone().run());
        assert_eq!(
            c.secret(Duration::from_secs(5))
                .await
                .unwrap()
                .unwrap()
                .expose(),
            "one"
        );
        // Refresh is due at ~30 s and fails (the script is empty); the token
        // is valid until 40 s.
        tokio::time::sleep(Duration::from_secs(35)).await;
        assert!(calls.load(Ordering::Relaxed) >= 2);
        // (Paused tokio time does not move the wall clock, so the token is
        // still valid by SystemTime here.)
        assert_eq!(c.current().unwrap().unwrap().expose(), "one");
        assert_eq!(c.stats().failures, calls.load(Ordering::Relaxed) - 1);
        run.abort();
    }

    #[tokio::test]
    async fn an_expired_token_gives_a_clear_error_and_recovers() {
        let (c, _) = cache(vec![
            token("short", Duration::from_millis(300)),
            Err("HTTP 500: identity endpoint unavailable".into()),
            Err("HTTP 500: identity endpoint unavailable".into()),
            token("second", Duration::from_secs(3600)),
        ]);
        let run = tokio::spawn(c.clone().run());
        assert_eq!(
            c.secret(Duration::from_secs(5))
                .await
                .unwrap()
                .unwrap()
                .expose(),
            "short"
        );
        tokio::time::sleep(Duration::from_millis(350)).await;
        // Expired; the next fetches fail, then one succeeds.
        let mut saw_error = None;
        let mut got = None;
        for _ in 0..20 {
            match c.secret(Duration::from_secs(5)).await {
                Ok(s) => {
                    got = s;
                    break;
                }
                Err(e) => saw_error = Some(e.to_string()),
            }
        }
        let e = saw_error.expect("an error while the source failed");
        assert!(
            e.contains("script") && e.contains("HTTP 500") && e.contains("expired"),
            "{e}"
        );
        assert!(!e.contains("short"), "{e}");
        assert_eq!(got.unwrap().expose(), "second");
        assert_eq!(c.generation(), 1, "a new secret is a new generation");
        run.abort();
    }
}
