//! The task each pool runs in the background: warm `min_idle`, close idle
//! connections that are expired, stale or past `idle_timeout`, and replace
//! at once those the server or the network closed while they sat idle.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use pgwake_lifecycle::ServerState;

use super::handoff::Content;
use super::{retire, Pool, Slot};

impl Pool {
    /// Keeps `min_idle` connections open and closes idle ones past
    /// `idle_timeout`, expired or dead ones. Runs until the pool closes.
    ///
    /// Idle connections are watched: when the server closes them (a
    /// restart, a failover, `pg_terminate_backend`, or a NAT's drop found by
    /// TCP keepalive), they are closed and `min_idle` is opened again at
    /// once, not when the next client finds them dead and waits for a login.
    pub async fn maintain(self) {
        let stop = self.inner.stop.clone();
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut failures = 0u32;
        let mut next_attempt = tokio::time::Instant::now();
        loop {
            let lost = tokio::select! {
                _ = stop.cancelled() => return,
                lost = std::future::poll_fn(|cx| self.poll_lost(cx)) => lost,
                _ = tick.tick() => Vec::new(),
            };
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
            if !lost.is_empty() {
                self.inner
                    .metrics
                    .server_conns_lost
                    .fetch_add(lost.len() as u64, Ordering::Relaxed);
                if !asleep {
                    tracing::info!(
                        database = %self.inner.key.database,
                        connections = lost.len(),
                        "the server closed idle connections (a restart, a failover, a terminated backend or the network); opening pool.min_idle again"
                    );
                }
                for p in lost {
                    retire(p);
                }
            }
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

    /// Ends the waits that reached `pool_wait_timeout`, as PgBouncer's
    /// periodic check does: one timer per pool, at the earliest deadline
    /// among its waiters, instead of one armed and disarmed by every client
    /// that waits (about 870 instructions each). While the server is being
    /// woken, a wait lasts as long as the wake may take. Runs until the
    /// pool closes.
    pub async fn expire_waits(self) {
        let stop = self.inner.stop.clone();
        loop {
            let next = self.expire_due(Instant::now());
            let inner = &self.inner;
            let wait = async move {
                match next {
                    Some(at) => tokio::time::sleep_until(at.into()).await,
                    None => inner.waits_began.notified().await,
                }
            };
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = wait => {}
            }
        }
    }

    /// Ends the waits due at `now`; the earliest deadline among the others.
    fn expire_due(&self, now: Instant) -> Option<Instant> {
        let waking_until = self
            .inner
            .waking_until()
            .map(tokio::time::Instant::into_std)
            .filter(|until| *until > now);
        let mut st = self.inner.lock();
        let timeout = st.settings.wait_timeout;
        let mut next: Option<Instant> = None;
        st.waiters.retain(|(h, since)| {
            let due = (*since + timeout).max(waking_until.unwrap_or(now));
            if due <= now {
                // Under the pool's lock, as every change to a handoff.
                h.fill(Content::Expired);
                return false;
            }
            next = Some(next.map_or(due, |n| n.min(due)));
            true
        });
        next
    }

    /// The idle connections the server closed, taken out of the pool; else
    /// pending, woken when any idle connection's socket becomes readable.
    /// A connection given back since the last poll is watched from the next
    /// one (at the latest the next tick): a check per connection here, none
    /// on the path of a transaction.
    fn poll_lost(&self, cx: &mut std::task::Context<'_>) -> std::task::Poll<Vec<super::Pooled>> {
        let mut st = self.inner.lock();
        let mut lost = Vec::new();
        let mut i = 0;
        while i < st.idle.len() {
            if st.idle[i].conn.poll_closed(cx) {
                lost.extend(st.idle.remove(i));
            } else {
                i += 1;
            }
        }
        if lost.is_empty() {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(lost)
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
            while let Some(p) = idle.pop_front() {
                let surplus = keep.len() + idle.len() >= min_idle;
                let stale = surplus && now.duration_since(p.conn.last_used) >= idle_timeout;
                if stale
                    || now >= p.retire_at
                    || p.epoch != epoch
                    || p.conn.credential_generation != generation
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
}
