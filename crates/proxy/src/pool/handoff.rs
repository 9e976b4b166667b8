//! Handing a connection (or the right to open one) to a waiting client
//! without allocating: a waiter's place in the queue is a [`Handoff`] kept
//! from one wait to the next on the thread, and the grant moves into it by
//! value. A grant is put in (and given back) under the pool's lock and the
//! handoff's own; its waiter takes it out under the handoff's lock; so a
//! grant is either taken by its waiter or given back to the pool, never
//! lost.

use std::cell::RefCell;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Poll, Waker};

use super::Grant;

/// What a waiter finds in its handoff.
pub(super) enum Content {
    Empty,
    Granted(Grant),
    /// The pool closed while it waited.
    Closed,
    /// It waited `pool_wait_timeout` (see `Pool::expire_waits`).
    Expired,
}

/// One waiter's place: where its grant is put, and how it is woken.
pub(super) struct Handoff {
    place: Mutex<Place>,
}

/// A handoff's content and its waiter's waker, under one lock: a grant put
/// in always finds the waker of the wait that will take it.
struct Place {
    content: Content,
    waker: Option<Waker>,
}

/// Handoffs not in use, kept per thread: waiting allocates nothing in
/// steady state.
const KEEP: usize = 256;

thread_local! {
    static SPARE: RefCell<Vec<Arc<Handoff>>> = const { RefCell::new(Vec::new()) };
}

impl Handoff {
    /// An empty handoff, reused when one is spare.
    pub(super) fn take_spare() -> Arc<Handoff> {
        SPARE.with(|s| s.borrow_mut().pop()).unwrap_or_else(|| {
            Arc::new(Handoff {
                place: Mutex::new(Place {
                    content: Content::Empty,
                    waker: None,
                }),
            })
        })
    }

    /// Keeps an emptied handoff for the next wait, when no queue holds it.
    fn give_back(h: Arc<Handoff>) {
        // A wait that ended before its grant leaves its waker: drop it, so
        // that a spare handoff keeps no finished task alive.
        h.lock().waker = None;
        if Arc::strong_count(&h) == 1 {
            SPARE.with(|s| {
                let mut s = s.borrow_mut();
                if s.len() < KEEP {
                    s.push(h);
                }
            });
        }
    }

    fn lock(&self) -> MutexGuard<'_, Place> {
        self.place.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Puts `c` in and wakes the waiter. Called under the pool's lock.
    pub(super) fn fill(&self, c: Content) {
        let waker = {
            let mut p = self.lock();
            p.content = c;
            p.waker.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
    }

    /// Takes what is there, leaving it empty.
    pub(super) fn take(&self) -> Content {
        std::mem::replace(&mut self.lock().content, Content::Empty)
    }

    /// Waits until something is put in, and takes it (never `Empty`). A
    /// waker is kept only while the wait is pending: a handoff used again
    /// holds none from an earlier wait.
    async fn filled(&self) -> Content {
        std::future::poll_fn(|cx| {
            let mut p = self.lock();
            match std::mem::replace(&mut p.content, Content::Empty) {
                Content::Empty => {
                    match &mut p.waker {
                        Some(w) => w.clone_from(cx.waker()),
                        none => *none = Some(cx.waker().clone()),
                    }
                    Poll::Pending
                }
                other => {
                    p.waker = None;
                    Poll::Ready(other)
                }
            }
        })
        .await
    }
}

/// A waiter in a pool's queue. Dropped before it got its grant (the client
/// left, or the wait timed out), it leaves the queue, and a grant that
/// reached it meanwhile goes to the next waiter or back to the pool.
pub(super) struct Waiting<'a> {
    pub(super) pool: &'a super::Inner,
    handoff: Option<Arc<Handoff>>,
}

impl<'a> Waiting<'a> {
    /// A waiter for `handoff`, which the caller has queued.
    pub(super) fn new(pool: &'a super::Inner, handoff: Arc<Handoff>) -> Self {
        Waiting {
            pool,
            handoff: Some(handoff),
        }
    }

    /// Waits for the grant, the end of the wait (`Expired`) or the pool's
    /// close (`Closed`); never `Empty`.
    pub(super) async fn granted(&mut self) -> Content {
        let Some(h) = self.handoff.as_ref() else {
            return Content::Closed;
        };
        let got = h.filled().await;
        if let Some(h) = self.handoff.take() {
            Handoff::give_back(h);
        }
        got
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        let Some(h) = self.handoff.take() else {
            return;
        };
        let mut st = self.pool.lock();
        st.waiters.retain(|(w, _)| !Arc::ptr_eq(w, &h));
        if let Content::Granted(g) = h.take() {
            if let Some(unwanted) = st.offer(g) {
                st.unclaimed(unwanted);
            }
        }
        drop(st);
        Handoff::give_back(h);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use pgwake_config::{PoolMode, SslMode};

    use super::super::{CheckoutError, Pool, PoolKey, PoolSettings, ServerSide};
    use crate::server::Target;

    /// A pool of one whose place is taken: every checkout waits. Its server
    /// refuses connections, so a waiter given the place reports that.
    fn full_pool(wait: Duration) -> Pool {
        let target = Target {
            host: "127.0.0.1".into(),
            port: 1,
            sslmode: SslMode::Disable,
            connect_timeout: Duration::from_secs(1),
            keepalive_idle: Duration::from_secs(60),
            keepalive_interval: Duration::from_secs(10),
            keepalive_count: 3,
            user_timeout: Duration::from_secs(30),
            tls: None,
            allow_cleartext_without_tls: false,
        };
        let pool = Pool::new(
            PoolKey {
                database: "app".into(),
                dbname: "app".into(),
                user: "app".into(),
            },
            PoolSettings {
                mode: PoolMode::Transaction,
                size: 1,
                min_idle: 0,
                max_lifetime: Duration::from_secs(3600),
                idle_timeout: Duration::from_secs(600),
                wait_timeout: wait,
                max_prepared: 10,
                prewarm: false,
            },
            ServerSide {
                target: std::sync::Arc::new(target),
                credentials: std::sync::Arc::new(pgwake_credentials::NoPassword),
            },
            None,
            std::sync::Arc::new(crate::stats::Metrics::new()),
            tokio_util::sync::CancellationToken::new(),
        );
        pool.inner.lock().total = 1;
        pool
    }

    /// A client waiting for a checkout, in a task of its own.
    fn waiter(pool: &Pool) -> tokio::task::JoinHandle<Result<(), CheckoutError>> {
        let pool = pool.clone();
        tokio::spawn(async move { pool.checkout().await.map(drop) })
    }

    /// The waiter was given the pool's place: it tried to connect (and
    /// found the server down).
    async fn given_the_place(w: tokio::task::JoinHandle<Result<(), CheckoutError>>, what: &str) {
        let got = w.await.expect("task");
        assert!(
            matches!(got, Err(CheckoutError::Connect(_))),
            "{what}: {got:?}"
        );
    }

    async fn queued(pool: &Pool, n: usize) {
        while pool.counts().2 != n {
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test]
    async fn a_waiter_that_leaves_passes_its_place_to_the_next_and_handoffs_are_reused() {
        let pool = full_pool(Duration::from_secs(30));
        let first = waiter(&pool);
        queued(&pool, 1).await;
        let second = waiter(&pool);
        queued(&pool, 2).await;
        // The first client goes away while waiting: it leaves the queue.
        first.abort();
        queued(&pool, 1).await;
        // The place frees: the second waiter gets it (and finds the server down).
        pool.inner.release_slot();
        given_the_place(second, "the second waiter was given the place").await;
        assert_eq!(pool.counts(), (0, 0, 0), "nothing queued, nothing held");
        // Both handoffs went back to this thread's spares (one per waiter).
        assert!(super::SPARE.with(|s| s.borrow().len()) >= 1);
    }

    #[tokio::test]
    async fn a_grant_that_reaches_a_waiter_as_it_leaves_goes_to_the_next() {
        let pool = full_pool(Duration::from_secs(30));
        let (first, second) = (waiter(&pool), waiter(&pool));
        queued(&pool, 2).await;
        // The place reaches the first waiter, which is gone before it runs.
        pool.inner.release_slot();
        first.abort();
        given_the_place(second, "the place went on to the second waiter").await;
        assert_eq!(pool.counts(), (0, 0, 0));
    }

    #[tokio::test]
    async fn a_wait_ends_at_pool_wait_timeout_and_the_queue_goes_on() {
        let pool = full_pool(Duration::from_millis(200));
        tokio::spawn(pool.clone().expire_waits());
        let first = waiter(&pool);
        queued(&pool, 1).await;
        let got = first.await.expect("task");
        assert!(
            matches!(got, Err(CheckoutError::WaitTimeout { size: 1, .. })),
            "the wait ended with the timeout: {got:?}"
        );
        assert_eq!(pool.counts().2, 0, "the expired waiter left the queue");
        // The queue goes on: with a longer timeout (a reload), a later
        // waiter still gets a place freed while it waits.
        let mut settings = pool.inner.lock().settings.clone();
        settings.wait_timeout = Duration::from_secs(30);
        pool.reconfigure(settings, None);
        let second = waiter(&pool);
        queued(&pool, 1).await;
        pool.inner.release_slot();
        given_the_place(second, "the second waiter was given the place").await;
        pool.close();
    }

    #[tokio::test]
    async fn closing_the_pool_ends_every_wait() {
        let pool = full_pool(Duration::from_secs(30));
        let w = waiter(&pool);
        queued(&pool, 1).await;
        pool.close();
        let got = w.await.expect("task");
        assert!(matches!(got, Err(CheckoutError::Closed)), "{got:?}");
    }
}
