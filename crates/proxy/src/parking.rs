//! Idle clients parked outside the async runtime.
//!
//! An idle client in a task costs the task (256 bytes) and the runtime's
//! registration of its socket (256 bytes), on top of its session. A parked
//! client costs neither: its socket is taken out of the runtime and watched
//! by an epoll set of its own, and its session waits in a table keyed by the
//! socket's descriptor. One task, [`Parking::run`], watches that set; when a
//! parked client sends something (or closes), is killed from the console,
//! reaches `timeouts.client_idle_timeout`, or pgwake shuts down, the client
//! gets a task again and carries on where it was.
//!
//! Who parks: a client that has sent nothing since its login for a moment
//! ([`LOGIN_GRACE`]: an application's pool filling up), and a client idle
//! for `listen.park_idle_clients_after`. This task asks them; each parks at
//! its next idle moment, so that a client busy with a request never pays
//! for parking. TLS clients are never parked.

use std::os::fd::RawFd;
use std::sync::{Arc, Mutex, Weak};
use std::task::{Wake, Waker};
use std::time::{Duration, Instant, SystemTime};

use mio::unix::SourceFd;
use mio::{Events, Interest, Token};
use tokio::io::unix::AsyncFd;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::clients::{unix_micros, ClientInfo, Clients};

/// A parked client's session, as the parking sees it.
pub(crate) trait ParkedClient: Send {
    /// The client socket's descriptor (also its key in the table).
    fn fd(&self) -> RawFd;
    fn info(&self) -> &ClientInfo;
    /// Since when the client has sent nothing (its idle timeout counts
    /// from there).
    fn idle_since(&self) -> Instant;
    /// Gives the client a task again, spawned on `tasks`.
    fn resume(self: Box<Self>, tasks: &TaskTracker);
}

/// The parked clients and the epoll set that watches their sockets.
pub(crate) struct Parking {
    table: Mutex<Table>,
    registry: mio::Registry,
    /// The epoll set, until [`Parking::run`] takes it.
    poll: Mutex<Option<mio::Poll>>,
    /// Woken by a parked client's kill (or shutdown).
    signal: Arc<Signal>,
    signal_waker: Waker,
    /// Clients logged in lately (see [`Parking::note_login`]).
    recent: Mutex<Vec<Weak<ClientInfo>>>,
    /// A client was noted while none were.
    arrived: Notify,
}

struct Table {
    /// Indexed by the socket's descriptor: descriptors are small numbers,
    /// reused lowest first, so this is about as long as the most clients
    /// ever connected at once, at 16 bytes a place.
    clients: Vec<Option<Box<dyn ParkedClient>>>,
    count: usize,
    /// The parking task is not running (not yet, or no more): no client
    /// parks.
    closed: bool,
}

impl Default for Table {
    fn default() -> Self {
        Table {
            clients: Vec::new(),
            count: 0,
            closed: true,
        }
    }
}

impl Table {
    fn slot(&mut self, fd: RawFd) -> Option<&mut Option<Box<dyn ParkedClient>>> {
        self.clients.get_mut(usize::try_from(fd).ok()?)
    }

    fn insert(
        &mut self,
        fd: RawFd,
        client: Box<dyn ParkedClient>,
    ) -> Result<(), Box<dyn ParkedClient>> {
        let Ok(i) = usize::try_from(fd) else {
            return Err(client);
        };
        if self.clients.len() <= i {
            self.clients.resize_with(i + 1, || None);
        }
        if let Some(place) = self.clients.get_mut(i) {
            if place.replace(client).is_none() {
                self.count += 1;
            }
        }
        Ok(())
    }

    fn remove(&mut self, fd: RawFd) -> Option<Box<dyn ParkedClient>> {
        let client = self.slot(fd)?.take()?;
        self.count -= 1;
        Some(client)
    }

    fn parked(&self) -> impl Iterator<Item = &dyn ParkedClient> {
        self.clients.iter().filter_map(|c| c.as_deref())
    }
}

/// What a parked client's kill wakes: the parking task, to look (a
/// wake-up that finds the task busy is kept as `Notify`'s permit).
#[derive(Default)]
struct Signal(Notify);

impl Wake for Signal {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }
    fn wake_by_ref(self: &Arc<Self>) {
        self.0.notify_one();
    }
}

/// Events taken from the epoll set per system call.
const EVENTS: usize = 256;
/// How long a client that has sent nothing since its login keeps its task
/// before it is asked to park: one that connects to run a query sends it
/// within a round trip, and so never pays for parking.
const LOGIN_GRACE: Duration = Duration::from_millis(5);
/// How often clients idle for `listen.park_idle_clients_after` are asked
/// to park, and parked clients' idle timeouts are checked.
const SWEEP: Duration = Duration::from_secs(1);

impl Parking {
    pub(crate) fn new() -> std::io::Result<Parking> {
        let poll = mio::Poll::new()?;
        let registry = poll.registry().try_clone()?;
        let signal = Arc::new(Signal::default());
        Ok(Parking {
            table: Mutex::default(),
            registry,
            poll: Mutex::new(Some(poll)),
            signal_waker: Waker::from(signal.clone()),
            signal,
            recent: Mutex::default(),
            arrived: Notify::new(),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Clients parked now.
    pub(crate) fn count(&self) -> usize {
        self.lock().count
    }

    /// Whether a client may park now (the parking task runs).
    pub(crate) fn open(&self) -> bool {
        !self.lock().closed
    }

    /// Parks `client`, whose socket has left the runtime; gives it back
    /// when it cannot be parked (the parking has stopped, or the epoll set
    /// refused the socket), for the caller to resume.
    pub(crate) fn park(
        &self,
        client: Box<dyn ParkedClient>,
        clients: &Clients,
    ) -> Result<(), Box<dyn ParkedClient>> {
        let fd = client.fd();
        let mut table = self.lock();
        if table.closed || fd < 0 {
            return Err(client);
        }
        // Registered while the client is in the table: a readiness that is
        // there already is reported at once, and finds it.
        if let Err(e) = self.registry.register(
            &mut SourceFd(&fd),
            Token(usize::try_from(fd).unwrap_or_default()),
            Interest::READABLE,
        ) {
            tracing::debug!(error = %e, "cannot park a client");
            return Err(client);
        }
        let info = client.info();
        info.set_parked(true);
        info.wake_on_kill(&self.signal_waker);
        // A kill between the session's last look and now woke its task.
        if info.must_wake(clients.stopping()) {
            self.signal_waker.wake_by_ref();
        }
        table.insert(fd, client)
    }

    /// Takes the parked client on `fd` out of the table and the epoll set.
    fn take(&self, table: &mut Table, fd: RawFd) -> Option<Box<dyn ParkedClient>> {
        let client = table.remove(fd)?;
        let _ = self.registry.deregister(&mut SourceFd(&fd));
        client.info().set_parked(false);
        Some(client)
    }

    /// Gives the parked clients on `fds` their tasks back.
    fn resume(&self, fds: &[RawFd], tasks: &TaskTracker) {
        if fds.is_empty() {
            return;
        }
        let taken: Vec<_> = {
            let mut table = self.lock();
            fds.iter()
                .filter_map(|&fd| self.take(&mut table, fd))
                .collect()
        };
        for client in taken {
            client.resume(tasks);
        }
    }

    /// The parked clients that must be woken (killed, or pgwake is
    /// stopping). Each other one gets this task's waker again first: a
    /// wake meant for a client's task (a request to park that crossed its
    /// parking, on another thread) may have taken it.
    fn rearm(&self, clients: &Clients) -> Vec<RawFd> {
        let table = self.lock();
        table
            .parked()
            .filter(|c| {
                c.info().wake_on_kill(&self.signal_waker);
                c.info().must_wake(clients.stopping())
            })
            .map(|c| c.fd())
            .collect()
    }

    /// The parked clients that `wanted` picks.
    fn select(&self, wanted: impl Fn(&dyn ParkedClient) -> bool) -> Vec<RawFd> {
        self.lock()
            .parked()
            .filter(|c| wanted(*c))
            .map(|c| c.fd())
            .collect()
    }

    /// Notes a client that has just logged in: should it send nothing for
    /// [`LOGIN_GRACE`], it is asked to park.
    pub(crate) fn note_login(&self, info: &Arc<ClientInfo>) {
        if !self.open() {
            return;
        }
        let mut recent = self.recent.lock().unwrap_or_else(|e| e.into_inner());
        let first = recent.is_empty();
        recent.push(Arc::downgrade(info));
        drop(recent);
        if first {
            self.arrived.notify_one();
        }
    }

    /// Asks the clients noted at login that have sent nothing since, for
    /// [`LOGIN_GRACE`] at least, to park; the others are forgotten (the
    /// sweep for long-idle clients takes them), those not that old yet are
    /// kept. Whether any are kept.
    fn ask_new_clients(&self, now: SystemTime, parking_on: bool) -> bool {
        let mut recent = self.recent.lock().unwrap_or_else(|e| e.into_inner());
        recent.retain(|noted| {
            let Some(info) = noted.upgrade() else {
                return false;
            };
            if !parking_on || !info.quiet_since_login() {
                return false;
            }
            if now.duration_since(info.connect_time).unwrap_or_default() < LOGIN_GRACE {
                return true;
            }
            info.ask_to_park();
            false
        });
        !recent.is_empty()
    }

    /// Watches the parked clients until `stop`, then gives every one of
    /// them its task back (to be told that pgwake is shutting down).
    /// `settings` reads `listen.park_idle_clients_after` and
    /// `timeouts.client_idle_timeout` as they are now.
    pub(crate) async fn run(
        self: Arc<Self>,
        tasks: TaskTracker,
        clients: Arc<Clients>,
        stop: CancellationToken,
        settings: impl Fn() -> (Duration, Option<Duration>),
    ) {
        let poll = self.poll.lock().unwrap_or_else(|e| e.into_inner()).take();
        // The safe constructor, deprecated because a type could hand it a
        // descriptor it does not own; `mio::Poll` owns its epoll set for as
        // long as the `AsyncFd` holds it.
        #[allow(deprecated)]
        let mut epoll = match poll.map(AsyncFd::new) {
            Some(Ok(p)) => p,
            Some(Err(e)) => {
                tracing::warn!(error = %e, "idle clients will not be parked: cannot watch the parking's epoll set");
                self.close(&tasks);
                return;
            }
            None => return,
        };
        let mut events = Events::with_capacity(EVENTS);
        let mut fds = Vec::with_capacity(EVENTS);
        self.lock().closed = false;
        let stopped = stop.cancelled();
        tokio::pin!(stopped);
        let mut next_sweep = tokio::time::Instant::now() + SWEEP;
        // When the clients noted at login are looked at next, if any are.
        let mut new_clients: Option<tokio::time::Instant> = None;
        let timer = tokio::time::sleep_until(next_sweep);
        tokio::pin!(timer);
        loop {
            tokio::select! {
                biased;
                _ = &mut stopped => break,
                ready = epoll.readable_mut() => {
                    let Ok(mut guard) = ready else { break };
                    loop {
                        fds.clear();
                        match guard.get_inner_mut().poll(&mut events, Some(Duration::ZERO)) {
                            Ok(()) => {}
                            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                            Err(e) => {
                                // Not spun on: the next readiness tries again.
                                tracing::warn!(error = %e, "parked clients: epoll failed");
                                guard.clear_ready();
                                break;
                            }
                        }
                        fds.extend(events.iter().filter_map(|e| RawFd::try_from(e.token().0).ok()));
                        self.resume(&fds, &tasks);
                        if fds.len() < EVENTS {
                            guard.clear_ready();
                            break;
                        }
                    }
                }
                _ = self.signal.0.notified() => {
                    let due = self.rearm(&clients);
                    self.resume(&due, &tasks);
                }
                _ = self.arrived.notified(), if new_clients.is_none() => {
                    new_clients = Some(tokio::time::Instant::now() + LOGIN_GRACE);
                }
                _ = &mut timer => {
                    let now = tokio::time::Instant::now();
                    let (after, client_idle) = settings();
                    if new_clients.is_some_and(|at| at <= now) {
                        new_clients = self
                            .ask_new_clients(SystemTime::now(), !after.is_zero())
                            .then(|| now + LOGIN_GRACE);
                    }
                    if next_sweep <= now {
                        next_sweep = now + SWEEP;
                        if let Some(limit) = client_idle {
                            let now = Instant::now();
                            let due = self.select(|c| c.idle_since() + limit <= now);
                            self.resume(&due, &tasks);
                        }
                        if !after.is_zero() {
                            if let Some(before) = SystemTime::now().checked_sub(after) {
                                clients.ask_idle_to_park(unix_micros(before));
                            }
                        }
                    }
                }
            }
            let wake = new_clients.map_or(next_sweep, |at| at.min(next_sweep));
            if timer.deadline() != wake {
                timer.as_mut().reset(wake);
            }
        }
        self.close(&tasks);
    }

    /// Stops parking and gives every parked client its task back.
    fn close(&self, tasks: &TaskTracker) {
        self.recent
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
        let all: Vec<_> = {
            let mut table = self.lock();
            table.closed = true;
            let fds: Vec<RawFd> = table.parked().map(|c| c.fd()).collect();
            fds.into_iter()
                .filter_map(|fd| self.take(&mut table, fd))
                .collect()
        };
        for client in all {
            client.resume(tasks);
        }
    }
}
