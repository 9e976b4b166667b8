//! The clients logged in, for SHOW CLIENTS, SHOW SERVERS and the client
//! gauges. A session registers at login and is removed when it ends.

use foldhash::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::SystemTime;

use futures_util::task::AtomicWaker;

use crate::pool::PoolKey;
use crate::stats::PoolCounts;

/// What a client is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum ClientState {
    /// Between transactions, holding no server connection.
    Idle = 0,
    /// Holding a server connection.
    Active = 1,
    /// Waiting for a server connection.
    Waiting = 2,
}

impl ClientState {
    pub fn name(self) -> &'static str {
        match self {
            ClientState::Idle => "idle",
            ClientState::Active => "active",
            ClientState::Waiting => "waiting",
        }
    }
}

/// Which admin console command ended a client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Kill {
    /// `KILL_CLIENT id`.
    Client = 1,
    /// `KILL` or `KILL db`.
    Database = 2,
}

impl Kill {
    pub fn command(self) -> &'static str {
        match self {
            Kill::Client => "KILL_CLIENT",
            Kill::Database => "KILL",
        }
    }
}

/// Where a client stands with parking (see [`crate::parking`]), kept in
/// [`ClientInfo`] as its `u8`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
enum ParkState {
    /// Not parked, and may be.
    No = 0,
    /// Asked to park at its next idle moment.
    Asked = 1,
    /// Parked: its socket waits outside the runtime.
    Parked = 2,
    /// Never parked (its stream cannot leave the runtime: TLS).
    Never = 3,
}

/// Bytes of one client's entry in the registry (SHOW MEM), its strings aside.
pub(crate) const ENTRY_SIZE: usize = std::mem::size_of::<ClientInfo>();

/// One logged-in client.
#[derive(Debug)]
pub struct ClientInfo {
    pub id: u64,
    /// The user, the application name and the peer (`host:port`, or
    /// `unix socket`) in one allocation, split at `names_at`: every client
    /// keeps them for as long as it is connected.
    names: Box<str>,
    names_at: [u32; 2],
    /// The pool's key, shared by all its clients; `pool.database` is the
    /// database the client asked for.
    pub pool: Arc<PoolKey>,
    /// The pool's counts, this client among its clients.
    counts: Arc<PoolCounts>,
    pub connect_time: SystemTime,
    state: AtomicU8,
    /// Backend process ID of the server connection held, 0 when none.
    server_pid: AtomicU32,
    /// Unix time (µs) of the client's last request.
    request_time: AtomicU64,
    /// Set by the admin console: the session ends (see [`ClientInfo::killed`]).
    kill: AtomicU8,
    /// Where the client stands with parking: a [`ParkState`].
    park: AtomicU8,
    /// Wakes the session's task for a kill; lock-free, as the session polls
    /// it on every turn of its relay.
    kill_waker: AtomicWaker,
}

impl ClientInfo {
    pub fn user(&self) -> &str {
        self.names
            .get(..self.names_at[0] as usize)
            .unwrap_or_default()
    }

    pub fn application_name(&self) -> &str {
        let [a, b] = self.names_at;
        self.names.get(a as usize..b as usize).unwrap_or_default()
    }

    /// `host:port`, or `unix socket`.
    pub fn peer(&self) -> &str {
        self.names
            .get(self.names_at[1] as usize..)
            .unwrap_or_default()
    }

    /// The database the client asked for.
    pub fn database(&self) -> &str {
        &self.pool.database
    }

    pub fn state(&self) -> ClientState {
        match self.state.load(Ordering::Relaxed) {
            1 => ClientState::Active,
            2 => ClientState::Waiting,
            _ => ClientState::Idle,
        }
    }

    pub fn set_state(&self, s: ClientState, server_pid: u32) {
        self.state.store(s as u8, Ordering::Relaxed);
        self.server_pid.store(server_pid, Ordering::Relaxed);
    }

    pub fn server_pid(&self) -> u32 {
        self.server_pid.load(Ordering::Relaxed)
    }

    /// Notes a new request (a server connection is being attached).
    pub fn requested(&self) {
        self.request_time
            .store(unix_micros(SystemTime::now()), Ordering::Relaxed);
    }

    pub fn request_time(&self) -> u64 {
        self.request_time.load(Ordering::Relaxed)
    }

    /// Ends the client's session, whatever it is doing (`KILL_CLIENT`,
    /// `KILL db`); the server connection it holds is closed too.
    pub fn kill(&self, by: Kill) {
        self.kill.store(by as u8, Ordering::Release);
        self.kill_waker.wake();
    }

    fn kill_reason(&self) -> Option<Kill> {
        match self.kill.load(Ordering::Acquire) {
            1 => Some(Kill::Client),
            2 => Some(Kill::Database),
            _ => None,
        }
    }

    /// Ready with `reason()` once it says so, else registered to be woken
    /// by a kill (or shutdown) and checked again: one that came between the
    /// check and the registration woke no one.
    fn poll_kill_waker<T>(&self, cx: &mut Context<'_>, reason: impl Fn() -> Option<T>) -> Poll<T> {
        if let Some(why) = reason() {
            return Poll::Ready(why);
        }
        self.kill_waker.register(cx.waker());
        match reason() {
            Some(why) => Poll::Ready(why),
            None => Poll::Pending,
        }
    }

    /// Asks an idle client to park (see [`crate::parking`]); false when it
    /// is parked already, asked already or never parks.
    pub(crate) fn ask_to_park(&self) -> bool {
        let asked = self.park_moves(ParkState::No, ParkState::Asked);
        if asked {
            self.kill_waker.wake();
        }
        asked
    }

    /// Idle, and has sent no request since its login.
    pub(crate) fn quiet_since_login(&self) -> bool {
        self.state() == ClientState::Idle && self.request_time() == unix_micros(self.connect_time)
    }

    /// Takes a request to park, if there is one.
    pub(crate) fn take_park_request(&self) -> bool {
        self.park.load(Ordering::Relaxed) == ParkState::Asked as u8
            && self.park_moves(ParkState::Asked, ParkState::No)
    }

    /// Moves the parking state from `from` to `to`; false if it was not `from`.
    fn park_moves(&self, from: ParkState, to: ParkState) -> bool {
        self.park
            .compare_exchange(from as u8, to as u8, Ordering::AcqRel, Ordering::Relaxed)
            .is_ok()
    }

    /// Notes that the client is parked (`true`) or has a task again.
    pub(crate) fn set_parked(&self, parked: bool) {
        let to = if parked {
            ParkState::Parked
        } else {
            ParkState::No
        };
        self.park.store(to as u8, Ordering::Release);
    }

    /// Notes that the client can never be parked.
    pub(crate) fn never_park(&self) {
        self.park.store(ParkState::Never as u8, Ordering::Release);
    }

    /// While parked, a kill (or shutdown) wakes `waker` (the parking's)
    /// instead of a task.
    pub(crate) fn wake_on_kill(&self, waker: &std::task::Waker) {
        self.kill_waker.register(waker);
    }

    /// Killed from the console, or pgwake is shutting down: a parked client
    /// must be given its task back to be told.
    pub(crate) fn must_wake(&self, stopping: bool) -> bool {
        stopping || self.kill_reason().is_some()
    }

    /// Completes when the client is killed. Cancel-safe; one session (one
    /// task) waits on it.
    pub fn killed(&self) -> Killed<'_> {
        Killed(self)
    }
}

/// Why a waiting session must end now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Interrupt {
    /// The admin console ended the client.
    Killed(Kill),
    /// pgwake is shutting down.
    ShuttingDown,
}

/// See [`Registered::interrupted`].
pub struct Interrupted<'a>(&'a Registered);

impl Interrupted<'_> {
    fn reason(&self) -> Option<Interrupt> {
        let r = self.0;
        if let Some(by) = r.info.kill_reason() {
            return Some(Interrupt::Killed(by));
        }
        r.clients
            .stopping
            .load(Ordering::Acquire)
            .then_some(Interrupt::ShuttingDown)
    }
}

impl Future for Interrupted<'_> {
    type Output = Interrupt;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Interrupt> {
        self.0.info.poll_kill_waker(cx, || self.reason())
    }
}

/// See [`ClientInfo::killed`].
pub struct Killed<'a>(&'a ClientInfo);

impl Future for Killed<'_> {
    type Output = Kill;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Kill> {
        self.0.poll_kill_waker(cx, || self.0.kill_reason())
    }
}

pub fn unix_micros(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

#[derive(Default)]
pub struct Clients {
    next: AtomicU64,
    map: Mutex<HashMap<u64, Arc<ClientInfo>>>,
    /// pgwake is shutting down (see [`Clients::shut_down`]).
    stopping: AtomicBool,
}

/// Removes the client from the registry when dropped.
/// Counted among its pool's clients until then.
pub struct Registered {
    pub info: Arc<ClientInfo>,
    clients: Arc<Clients>,
}

impl Registered {
    /// Completes when the session must end whatever it is waiting for: the
    /// client was killed, or pgwake is shutting down. Cancel-safe; one
    /// session (one task) waits on it. (A flag and the kill's atomic waker
    /// rather than a cancellation token per session: no lock per wait, and
    /// nothing more for an idle client to hold.)
    pub fn interrupted(&self) -> Interrupted<'_> {
        Interrupted(self)
    }
}

impl Drop for Registered {
    fn drop(&mut self) {
        self.clients.lock().remove(&self.info.id);
        self.info.counts.clients.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Clients {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Arc<ClientInfo>>> {
        self.map.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn register(
        self: &Arc<Self>,
        user: &str,
        application_name: &str,
        peer: &str,
        pool: Arc<PoolKey>,
        counts: Arc<PoolCounts>,
    ) -> Registered {
        let id = self.next.fetch_add(1, Ordering::Relaxed) + 1;
        let now = SystemTime::now();
        let mut names = String::with_capacity(user.len() + application_name.len() + peer.len());
        names.push_str(user);
        names.push_str(application_name);
        names.push_str(peer);
        // Startup packets are far below 4 GiB (max_message_size bounds them).
        let at = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
        let info = Arc::new(ClientInfo {
            id,
            names: names.into_boxed_str(),
            names_at: [at(user.len()), at(user.len() + application_name.len())],
            pool,
            counts,
            connect_time: now,
            state: AtomicU8::new(ClientState::Idle as u8),
            server_pid: AtomicU32::new(0),
            request_time: AtomicU64::new(unix_micros(now)),
            kill: AtomicU8::new(0),
            park: AtomicU8::new(ParkState::No as u8),
            kill_waker: AtomicWaker::new(),
        });
        info.counts.clients.fetch_add(1, Ordering::Relaxed);
        self.lock().insert(id, info.clone());
        Registered {
            info,
            clients: self.clone(),
        }
    }

    /// Tells every client waiting on [`Registered::interrupted`], now and
    /// from now on, that pgwake is shutting down.
    pub fn shut_down(&self) {
        self.stopping.store(true, Ordering::Release);
        for info in self.lock().values() {
            info.kill_waker.wake();
        }
    }

    /// Asks every idle client whose last request (or login) was before
    /// `before` (unix µs) to park.
    pub(crate) fn ask_idle_to_park(&self, before: u64) {
        for c in self.lock().values() {
            if c.state() == ClientState::Idle && c.request_time() < before {
                c.ask_to_park();
            }
        }
    }

    /// pgwake is shutting down.
    pub(crate) fn stopping(&self) -> bool {
        self.stopping.load(Ordering::Acquire)
    }

    /// The client with `id`, if it is logged in.
    pub fn get(&self, id: u64) -> Option<Arc<ClientInfo>> {
        self.lock().get(&id).cloned()
    }

    /// Every client, oldest first.
    pub fn all(&self) -> Vec<Arc<ClientInfo>> {
        let mut v: Vec<_> = self.lock().values().cloned().collect();
        v.sort_by_key(|c| c.id);
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_clients_names_read_back_as_given() {
        let clients = Arc::new(Clients::default());
        let key = Arc::new(PoolKey {
            database: "app".into(),
            dbname: "app".into(),
            user: "app".into(),
        });
        let counts = Arc::new(PoolCounts::default());
        for (user, app, peer) in [
            ("app", "", "127.0.0.1:54321"),
            ("ädmin", "web-worker ☃", "unix socket"),
            ("", "", ""),
            ("u", "a", "[::1]:6432"),
        ] {
            let r = clients.register(user, app, peer, key.clone(), counts.clone());
            assert_eq!(
                (r.info.user(), r.info.application_name(), r.info.peer()),
                (user, app, peer)
            );
            assert_eq!(clients.get(r.info.id).map(|c| c.id), Some(r.info.id));
        }
        assert!(clients.all().is_empty(), "each client left when dropped");
        assert_eq!(counts.clients.load(Ordering::Relaxed), 0);
    }
}
