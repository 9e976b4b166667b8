//! Opening a pool's server connections: retries while the server restarts,
//! a wake when it sleeps, a second try when the secret rotated, and a pause
//! after the server refused a login.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use super::Pool;
use crate::server::{ConnectError, ConnectPhases, ConnectTrace, ServerConn, WakeTrace};
use crate::stats::TimeoutKind;

/// Longest pause between logins after the server refused one (bad password).
const AUTH_BACKOFF_MAX: Duration = Duration::from_secs(30);

impl Pool {
    /// Logs in, retrying at once (with a short backoff) while the server is
    /// restarting, so clients recover as soon as it accepts connections.
    pub(super) async fn connect_with_retry(
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
        // For traces: attempts made and the wake waited for.
        let mut attempts = 0u32;
        let mut woken = None;
        loop {
            // Waits only when no valid secret exists (a token source still
            // fetching its first token, or one whose token expired).
            let wait = give_up.saturating_duration_since(tokio::time::Instant::now());
            let generation = server.credentials.generation();
            attempts += 1;
            let started = Instant::now();
            let password = match server.credentials.secret(wait).await {
                Ok(p) => p,
                Err(e) => {
                    let e = ConnectError::Credential(e);
                    self.note_failure(&e);
                    return Err(e);
                }
            };
            let token = started.elapsed();
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
                    // Only a client's login is on a request's path (upkeep
                    // passes `may_wake = false`).
                    conn.born = may_wake.then(|| {
                        Box::new(ConnectTrace {
                            started,
                            ended: Instant::now(),
                            token,
                            // A secret at hand takes microseconds; a fetch far longer.
                            token_waited: token >= Duration::from_millis(1),
                            phases,
                            attempts,
                            wake: woken.take(),
                        })
                    });
                    inner.metrics.connect_phases(phases.durations());
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
                    let began = Instant::now();
                    match l.server_unavailable().await {
                        Ok(woke) => {
                            if woke {
                                let (state, waiters) = l.last_wake();
                                woken = Some(WakeTrace {
                                    began,
                                    ended: Instant::now(),
                                    provider: l.describe(),
                                    state,
                                    waiters,
                                    client: None,
                                    error: None,
                                });
                            }
                            woke
                        }
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
        inner.metrics.connect_error(e.metric_kind());
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
