//! One client connection: the startup handshake pgwake answers itself, then
//! the relay between the client and whichever server connection it holds.
//!
//! Transaction mode: a server connection is attached at the first message
//! after the client was idle and returned at the ReadyForQuery that leaves
//! it idle with nothing owed. Session mode: attached at the first message and
//! kept until the client leaves, then reset with `DISCARD ALL`.

use std::future::Future;
use std::io;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

use bytes::{Buf, BytesMut};
use pgwake_config::PoolMode;
use pgwake_protocol::backend::{self, ErrorMessage};
use pgwake_protocol::startup::{self, StartupParams};
use pgwake_protocol::{sqlstate, FrameError, NextRequest, Scanned, Scanner};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::cancel::CancelHandle;
use crate::client_io::ClientStream;
use crate::clients::{ClientState, Interrupt, Kill, Registered};
use crate::params::{self, Params};
use crate::pool::{Defaults, Pool, PoolKeyRef, Pooled};
use crate::stats::{micros, PoolCounts};
use crate::Shared;
use pgwake_lifecycle::Lifecycle;

mod accounting;
mod buffers;
mod cleanup;
mod login;
mod notices;
mod park;
mod relay;
mod timeouts;

use buffers::spare_buffers;
use notices::with_wake_notices;
use timeouts::CancelSent;

pub(crate) use login::{serve_tcp, serve_unix};

/// How long cleaning up after a departed client may take before the server
/// connection is closed instead.
const CLEANUP_TIMEOUT: Duration = Duration::from_secs(10);
/// Bound on statements pgwake runs itself (settings, ROLLBACK, DISCARD ALL).
const INTERNAL_TIMEOUT: Duration = Duration::from_secs(30);

fn closed() -> ErrorMessage {
    ErrorMessage::fatal(sqlstate::CONNECTION_FAILURE, "client closed the connection")
}

async fn send_fatal<C: ClientStream>(client: &mut C, e: &ErrorMessage) -> io::Result<()> {
    let mut out = BytesMut::new();
    e.write(&mut out);
    client.send(&out).await?;
    client.shutdown().await
}

/// What the client has for the session next.
enum Next {
    /// A request can begin.
    Request,
    /// Nothing yet.
    Idle,
    /// The client left (EOF or Terminate).
    Gone,
}

/// What ended an idle client's wait.
enum Woke {
    Interrupted(Interrupt),
    /// The socket has something (`false`: it failed).
    Readable(bool),
    IdleTimeout,
    /// Nothing yet, and the client is to park.
    Park,
}

/// What ended an idle client's wait, for [`Session::run`].
enum Wait {
    /// A request can begin.
    Request,
    /// The client left.
    Gone,
    /// The client is quiet and parks.
    Park,
}

/// Why the relay stopped.
enum Stop {
    /// The transaction ended; the server connection can go back.
    Released,
    /// The client left (Terminate or EOF).
    ClientGone,
    /// The client must be told and closed.
    Fatal(ErrorMessage),
    /// The server connection was dead on first use, before any reply: the
    /// request (still buffered) can go to a fresh connection.
    Retry,
    /// The admin console ended the client (`KILL_CLIENT`, `KILL db`): it is
    /// told, and a server connection it holds is closed.
    Killed(Kill),
}

struct Session<C> {
    client: C,
    /// Client bytes read but not yet forwarded.
    cbuf: BytesMut,
    cscan: Scanner,
    pool: Pool,
    mode: PoolMode,
    defaults: Arc<Defaults>,
    /// The settings this client expects on whatever connection serves it,
    /// where they differ from the server's defaults. Shared with the other
    /// clients that logged in with the same startup parameters, copied
    /// when this one changes its own (`Arc::make_mut`).
    want: Arc<Params>,
    /// [`params::fingerprint`] of `want`: equal to a connection's when the
    /// connection already has exactly these settings.
    want_fp: u64,
    cancel: CancelHandle,
    /// Starts a stopped server; clients waiting for it get notices.
    lifecycle: Option<Arc<Lifecycle>>,
    /// The client's named prepared statements (transaction mode): mapped
    /// onto statements each server connection prepares once and keeps.
    prepared: crate::prepared::ClientStatements,
    /// A client message waits for the server's replies before it can be
    /// rewritten (see [`crate::prepared::Step::Wait`]).
    held: bool,
    /// Bytes at the front of `cbuf` already sent as the first request on a
    /// freshly attached connection, kept until the server answers so that a
    /// connection found dead on first use can be replaced invisibly.
    replay: usize,
    /// The next client bytes are the first sent on this attachment.
    fresh: bool,
    shared: Arc<Shared>,
    /// This client in the registry (SHOW CLIENTS), counted in its pool.
    registered: Registered,
    /// Counted as holding a server connection.
    counted_active: bool,
    /// When the query and the transaction in flight began.
    query_start: Option<Instant>,
    xact_start: Option<Instant>,
    /// Since when the client has owed the server its next message.
    idle_since: Instant,
    /// A cancel request sent for `query_timeout`, not yet settled by the
    /// query's ReadyForQuery.
    /// (Boxed, as `lease`: rare, and every idle client holds the field.)
    cancel_sent: Option<Box<CancelSent>>,
    /// The start of the query in flight, for the slow-query log.
    query_text: Vec<u8>,
    /// The timer for timeouts, reset as deadlines move.
    timer: Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
    /// This client's place under the per-database and per-user limits.
    _admission: crate::auth::Admission,
    /// Its place under `listen.max_client_conn` (set after the login).
    permit: Option<tokio::sync::OwnedSemaphorePermit>,
    /// Room from the shared budget while `cbuf` holds (or is filling with)
    /// a large frame that must be read whole.
    lease: Option<Box<crate::budget::Lease>>,
    /// Statements in flight that carried a trace context (`[tracing]`).
    traced: crate::traces::InSession,
}

impl<C> Session<C> {
    /// This session with another client stream (the socket out of the
    /// runtime and back, for parking); the one it had.
    fn with_client<D>(self, client: D) -> (Session<D>, C) {
        // Each field named once; the pattern lists them all, so a new
        // field cannot be forgotten here.
        macro_rules! move_fields {
            ($($field:ident),* $(,)?) => {{
                let Session { client: had, $($field),* } = self;
                (Session { client, $($field),* }, had)
            }};
        }
        move_fields!(
            cbuf,
            cscan,
            pool,
            mode,
            defaults,
            want,
            want_fp,
            cancel,
            lifecycle,
            prepared,
            held,
            replay,
            fresh,
            shared,
            registered,
            counted_active,
            query_start,
            xact_start,
            idle_since,
            cancel_sent,
            query_text,
            timer,
            _admission,
            permit,
            lease,
            traced,
        )
    }
}

impl<C: ClientStream> Session<C> {
    /// Routes the client to a pool and answers its startup itself.
    #[allow(clippy::too_many_arguments)]
    async fn start(
        mut client: C,
        cbuf: BytesMut,
        peer: &crate::client_io::Peer,
        shared: Arc<Shared>,
        minor: u16,
        startup_params: StartupParams<'_>,
        who: login::Checked<'_>,
    ) -> Result<Box<Self>, (C, ErrorMessage)> {
        let get = |k: &str| startup_params.get(k);
        let login::Checked {
            user,
            database,
            admission,
        } = who;
        if get("replication").is_some_and(|r| r != "false" && r != "0" && r != "off") {
            return Err((
                client,
                ErrorMessage::fatal(
                    sqlstate::FEATURE_NOT_SUPPORTED,
                    "pgwake does not pool replication connections; connect to the server directly",
                ),
            ));
        }
        let config = shared.config();
        let Some(route) = config.route(database) else {
            return Err((
                client,
                ErrorMessage::fatal(
                    sqlstate::INVALID_CATALOG_NAME,
                    format!("database \"{database}\" is not served by this pgwake (not listed under [databases])"),
                ),
            ));
        };
        // A malformed `options` is refused before any server is asked for
        // its defaults; the settings themselves are built once they are
        // known (`client_settings`).
        if startup_params.get("options").is_some() {
            if let Err(e) = params::from_startup(startup_params.iter()) {
                return Err((client, e));
            }
        }
        let key = PoolKeyRef {
            database,
            dbname: route.dbname,
            user: route.user.unwrap_or(user),
        };
        if route.own_server && !shared.serves_own_server(database) {
            // Added by a reload: its server is set up at restart only, and
            // the main server is not this database's.
            return Err((
                client,
                ErrorMessage::fatal(
                    sqlstate::CONFIG_FILE_ERROR,
                    format!("database \"{database}\" has a server of its own ([databases.{database}.server]) that pgwake sets up at start: restart pgwake to serve it"),
                ),
            ));
        }
        let pool = shared.pool(key, database, &route, false);
        let lifecycle = shared.lifecycle.clone();
        if let Some(l) = &lifecycle {
            l.note_client(format!(
                "client {peer} database {database} user {user} application_name {:?}",
                get("application_name").unwrap_or("")
            ));
        }
        let mut out = BytesMut::with_capacity(512);
        // Allocates only for a client that sent protocol options.
        let protocol_options: Vec<&str> = startup_params.protocol_options().collect();
        if minor > startup::SUPPORTED_MINOR || !protocol_options.is_empty() {
            backend::negotiate_protocol_version(
                &mut out,
                startup::SUPPORTED_MINOR,
                &protocol_options,
            );
        }
        backend::auth_ok(&mut out);
        if pool.defaults().is_none() && lifecycle.is_some() {
            // The first login may wait for a wake: authenticate the client
            // now so that it can be sent notices while it waits.
            if client.send(&out).await.is_err() {
                return Err((client, closed()));
            }
            out.clear();
        }
        let learned = match pool.defaults() {
            Some(d) => Ok(d),
            // Boxed: only a pool's first logins wait here (and may wake
            // the server); the others' login futures stay small.
            None => {
                Box::pin(async {
                    let learning = std::pin::pin!(pool.learn_defaults());
                    with_wake_notices(&mut client, lifecycle.as_deref(), learning).await
                })
                .await
            }
        };
        let defaults = match learned {
            Ok(d) => d,
            Err(e) => {
                shared.forget_failed_pool(key);
                let mut e = e.to_client();
                e.severity = backend::Severity::Fatal;
                return Err((client, e));
            }
        };
        let login = match defaults.client_settings(startup_params) {
            Ok(s) => s,
            Err(e) => return Err((client, e)),
        };
        let (want, want_fp) = (login.want.clone(), login.fingerprint);
        let replica = shared
            .peering
            .client_pid(shared.config().peering.enabled(), || client.local_addr());
        let cancel = shared.cancels.register(replica);
        let registered = shared.clients.register(
            user,
            get("application_name").unwrap_or(""),
            peer.text().as_str(),
            pool.shared_key(),
            pool.stats().clone(),
        );
        if C::PARKABLE {
            shared.parking.note_login(&registered.info);
        } else {
            registered.info.never_park();
        }

        out.extend_from_slice(&login.status);
        drop(login);
        backend::backend_key_data(&mut out, cancel.pid(), cancel.key());
        backend::ready_for_query(&mut out, b'I');
        if client.send(&out).await.is_err() {
            return Err((client, closed()));
        }
        if shared.config().log.connections {
            let info = &registered.info;
            tracing::info!(client = %info.peer(), database = %info.database(), user = %info.user(), application_name = %info.application_name(), "client login");
        }
        let max = usize::try_from(shared.config().listen.max_message_size).unwrap_or(usize::MAX);
        // Statement text means other tables under another search_path (the
        // one setting parse analysis depends on): such clients do not share
        // server statements.
        let search_path = want
            .get("search_path")
            .map(|v| {
                params::fingerprint(&Params::from_iter([("search_path".to_owned(), v.clone())]))
            })
            .unwrap_or(0);
        let prepared = crate::prepared::ClientStatements::new(
            pool.statement_hasher().for_settings(search_path),
        );
        // Boxed here, where it is made: moved on from here as a pointer.
        Ok(Box::new(Session {
            _admission: admission,
            permit: None,
            lease: None,
            traced: Default::default(),
            registered,
            counted_active: false,
            query_start: None,
            xact_start: None,
            idle_since: Instant::now(),
            cancel_sent: None,
            query_text: Vec::new(),
            timer: None,
            client,
            cbuf,
            cscan: Scanner::new(max),
            mode: route.mode,
            pool,
            defaults,
            want,
            want_fp,
            cancel,
            lifecycle,
            prepared,
            held: false,
            replay: 0,
            fresh: false,
            shared,
        }))
    }

    /// Serves the client until it leaves.
    ///
    /// Between requests the client's task holds only the boxed session and
    /// the small future of [`Self::await_request`]: the work of a request
    /// (checkout, settings, relay, retries) runs in a boxed future of its
    /// own, freed as soon as the client is idle again. That keeps an idle
    /// client small; a busy client pays one small allocation per busy spell.
    async fn run(mut self: Box<Self>) {
        let (stop, held) = loop {
            match self.await_request().await {
                Ok(Wait::Request) => {}
                Ok(Wait::Gone) => break (Stop::ClientGone, None),
                Ok(Wait::Park) => {
                    (*self).park();
                    return;
                }
                Err(stop) => break (stop, None),
            }
            if let Some(done) = Box::pin(self.serve_busy()).await {
                break done;
            }
        };
        Box::pin(self.finish(stop, held)).await;
        // The read buffer serves the next client's login.
        self.release_buffer();
    }

    /// Tells the client why it is being closed, if it should be told, and
    /// gives back or closes the server connection it held.
    async fn finish(&mut self, stop: Stop, held: Option<Pooled>) {
        if self.shared.config().log.disconnections {
            self.log_logout(&stop);
        }
        match &stop {
            Stop::Fatal(e) => {
                let _ = send_fatal(&mut self.client, e).await;
            }
            Stop::Killed(by) => {
                let _ = send_fatal(&mut self.client, &killed(*by)).await;
            }
            _ => {}
        }
        if let Some(p) = held {
            self.detached();
            if let Stop::Killed(by) = stop {
                Box::pin(self.close_after_kill(p, by)).await;
            } else {
                Box::pin(self.give_back_after_client_left(p)).await;
            }
        }
    }

    /// The logout line (`log.disconnections`): who, after how long, and why.
    fn log_logout(&self, stop: &Stop) {
        let reason = match stop {
            Stop::Fatal(e) => e.message.as_str(),
            Stop::Killed(by) => by.command(),
            Stop::ClientGone | Stop::Released | Stop::Retry => "the client closed the connection",
        };
        let info = &self.registered.info;
        let age = info.connect_time.elapsed().unwrap_or_default();
        tracing::info!(
            client = %info.peer(),
            database = %info.database(),
            user = %info.user(),
            application_name = %info.application_name(),
            age = %humantime::format_duration(Duration::from_millis(u64::try_from(age.as_millis()).unwrap_or(u64::MAX))),
            reason,
            "client logout"
        );
    }

    /// Where the client connects from (`host:port`, or `unix socket`).
    fn peer(&self) -> &str {
        self.registered.info.peer()
    }

    /// Notes that the client now holds the server connection with the
    /// cancel key `key` (its cancel requests go there).
    fn attached(&mut self, key: (std::net::SocketAddr, u32, u32)) {
        if !self.counted_active {
            self.counted_active = true;
            self.pool.stats().active.fetch_add(1, Ordering::Relaxed);
        }
        self.registered.info.set_state(ClientState::Active, key.1);
        self.cancel.set(Some(key));
    }

    /// Notes that the client holds no server connection; whatever was in
    /// flight on the last one is over.
    fn detached(&mut self) {
        self.cancel.set(None);
        if self.counted_active {
            self.counted_active = false;
            self.pool.stats().active.fetch_sub(1, Ordering::Relaxed);
        }
        self.registered.info.set_state(ClientState::Idle, 0);
        self.query_start = None;
        self.xact_start = None;
        self.cancel_sent = None;
        self.query_text.clear();
        self.traced.detached();
    }

    /// Serves the client's requests for as long as they keep coming.
    /// `None`: the client is idle again, holding no server connection.
    /// `Some`: one side left; why, and the server connection the client held
    /// at that moment, if any.
    async fn serve_busy(&mut self) -> Option<(Stop, Option<Pooled>)> {
        loop {
            // Every turn spends from tokio's cooperative budget: should a
            // turn ever move no bytes, this session still yields, and
            // other clients, signals and the admin server go on.
            tokio::task::consume_budget().await;
            match self.await_first_frame().await {
                Ok(Next::Request) => {}
                Ok(Next::Idle) => return None,
                Ok(Next::Gone) => return Some((Stop::ClientGone, None)),
                Err(stop) => return Some((stop, None)),
            }
            let mut p = match self.attach().await {
                Ok(Some(p)) => p,
                Ok(None) => continue,
                Err(stop) => return Some((stop, None)),
            };
            loop {
                match self.relay(&mut p).await {
                    Stop::Released => {
                        self.detached();
                        // The clock as read at the transaction's last reply.
                        self.pool.checkin_at(p, self.idle_since);
                        if self.shared.is_stopping() {
                            return Some((Stop::Fatal(shutting_down()), None));
                        }
                        break;
                    }
                    Stop::Retry => match Box::pin(self.retry_on_fresh_connection(p)).await {
                        Ok(Some(fresh)) => p = fresh,
                        Ok(None) => break,
                        Err(stop) => return Some((stop, None)),
                    },
                    other => return Some((other, Some(p))),
                }
            }
        }
    }

    /// Waits, holding no buffer, until the idle client sends something.
    /// `Wait::Gone`: the client left (EOF); `Wait::Park`: the parking asked
    /// for it and it is quiet. An idle client is told when
    /// pgwake shuts down, when it is killed from the console, and when it
    /// has been idle for `timeouts.client_idle_timeout`.
    async fn await_request(&mut self) -> Result<Wait, Stop> {
        if !self.cbuf.is_empty() {
            return Ok(Wait::Request);
        }
        // The login's buffer, say: an idle client holds none.
        self.release_buffer();
        // One timer for the whole idle spell, polled by hand with the
        // interrupt and the socket: this wait is what an idle client's task
        // holds, so it is kept to a few words.
        // Idle since the last reply (or the login), parked or not.
        let mut timer = self.shared.timeouts.client_idle().map(|d| {
            Box::pin(tokio::time::sleep_until(tokio::time::Instant::from_std(
                self.idle_since + d,
            )))
        });
        loop {
            // Shutdown comes as an interrupt too. (When the grace period
            // ends, sessions still relaying are dropped with the runtime;
            // their server backends see the close and roll back.)
            let woke = std::future::poll_fn(|cx| {
                if let Poll::Ready(why) = std::pin::pin!(self.registered.interrupted()).poll(cx) {
                    return Poll::Ready(Woke::Interrupted(why));
                }
                if let Poll::Ready(r) = self.client.poll_readable(cx) {
                    return Poll::Ready(Woke::Readable(r.is_ok()));
                }
                if let Some(Poll::Ready(())) = timer.as_mut().map(|t| t.as_mut().poll(cx)) {
                    return Poll::Ready(Woke::IdleTimeout);
                }
                // Quiet: the one moment a client parks (the parking's
                // request comes as the interrupt's wake).
                if self.registered.info.take_park_request() && self.may_park() {
                    return Poll::Ready(Woke::Park);
                }
                Poll::Pending
            })
            .await;
            match woke {
                Woke::Interrupted(why) => return Err(interrupted(why)),
                Woke::Readable(false) => return Ok(Wait::Gone),
                Woke::Readable(true) => {}
                Woke::IdleTimeout => {
                    let limit = self.shared.timeouts.client_idle();
                    return Err(Stop::Fatal(self.client_idle_timeout(limit)));
                }
                Woke::Park => return Ok(Wait::Park),
            }
            // Readiness can be stale (the last read emptied the socket
            // without seeing WouldBlock): `probe` tells.
            match self.probe() {
                Next::Request => return Ok(Wait::Request),
                Next::Gone => return Ok(Wait::Gone),
                Next::Idle => {}
            }
        }
    }

    /// Reads what the client has sent, if anything, without waiting: into a
    /// small stack buffer first, so that a stale readiness costs no buffer.
    fn probe(&mut self) -> Next {
        let client = &mut self.client;
        let cbuf = &mut self.cbuf;
        let read = spare_buffers::probe(
            |buf| client.try_read(buf),
            |got| {
                if !got.is_empty() {
                    *cbuf = spare_buffers::take();
                    cbuf.extend_from_slice(got);
                }
                got.len()
            },
        );
        match read {
            Ok(0) => Next::Gone,
            Ok(_) => Next::Request,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Next::Idle,
            Err(_) => Next::Gone,
        }
    }

    /// Waits until the client's next request can begin: a whole frame
    /// header, and the whole frame when the relay reads that frame whole (a
    /// Parse, say). `Idle`: the client has sent nothing more (its buffer is
    /// given back); `Gone`: it left (EOF or Terminate).
    ///
    /// Only a request that [`Scanner::next_request`] calls ready takes a
    /// server connection, so the relay always moves a byte of it: a session
    /// never attaches and releases without reading.
    async fn await_first_frame(&mut self) -> Result<Next, Stop> {
        let track = self.mode == PoolMode::Transaction;
        loop {
            let want = match self
                .cscan
                .next_request(&self.cbuf, |f| relay::read_whole_at(track, f))
            {
                Err(e) => return Err(Stop::Fatal(too_large(&e))),
                Ok(NextRequest::Ready { tag: b'X' }) => return Ok(Next::Gone),
                Ok(NextRequest::Ready { .. }) => return Ok(Next::Request),
                Ok(NextRequest::NeedMore { want }) => want,
            };
            if self.cbuf.is_empty() {
                // Between transactions: give the buffer back, and take the
                // next request if it is already here.
                self.release_buffer();
                match self.probe() {
                    Next::Request => continue,
                    other => return Ok(other),
                }
            }
            // Room for the rest of the frame (bounded by max_message_size,
            // which `next_request` checked), and at least a few KiB.
            if want > crate::budget::FREE {
                Box::pin(self.room_for(want)).await?;
            }
            let missing = want.saturating_sub(self.cbuf.len());
            if self.cbuf.capacity() - self.cbuf.len() < missing.max(1024) {
                self.cbuf.reserve(missing.max(8 * 1024));
            }
            let read = tokio::select! {
                biased;
                why = self.registered.interrupted() => return Err(interrupted(why)),
                r = self.client.read_buf(&mut self.cbuf) => r,
            };
            match read {
                Ok(0) | Err(_) => return Ok(Next::Gone),
                Ok(_) => {}
            }
        }
    }

    /// Checks out a server connection and brings its settings in line with
    /// the client's. `Ok(None)`: none could be had; the client was told and
    /// its request skipped.
    async fn attach(&mut self) -> Result<Option<Pooled>, Stop> {
        if let Some(l) = &self.lifecycle {
            l.touch();
        }
        let info = &self.registered.info;
        info.requested();
        info.set_state(ClientState::Waiting, 0);
        let began = Instant::now();
        // An idle connection at once (the common case): no wait to time.
        let ready = if self.shared.control.holds(&self.pool.key().database) {
            None
        } else {
            self.pool.checkout_idle(began)
        };
        let (checked_out, now, waited) = match ready {
            Some(p) => (Ok(p), began, Duration::ZERO),
            None => {
                // Boxed: a wait is the rarer case, and its future would
                // double the size of the busy future allocated for every
                // busy spell (528 bytes without it: small enough for
                // the allocator's per-thread cache, 1,104 with it).
                let r = Box::pin(self.checkout_waiting()).await?;
                let now = Instant::now();
                (r, now, now.saturating_duration_since(began))
            }
        };
        PoolCounts::add(&self.pool.stats().wait_us, micros(waited));
        if let Some(h) = self.pool.histograms() {
            h.wait.record(waited.as_secs_f64());
        }
        let mut p = match checked_out {
            Ok(p) => p,
            Err(e) => {
                self.registered.info.set_state(ClientState::Idle, 0);
                Box::pin(self.skip_request(e.to_client())).await?;
                return Ok(None);
            }
        };
        PoolCounts::add(&self.pool.stats().assignments, 1);
        // The request goes out next: its time runs from here (one clock
        // read for the wait and the query).
        self.query_start = Some(now);
        self.xact_start.get_or_insert(now);
        if self.shared.traces.is_some() {
            self.traced.attached(began, p.conn.born.take());
        }
        if p.conn.settings_fp != self.want_fp {
            Box::pin(self.sync_settings(&mut p)).await?;
        }
        self.attached(p.conn.cancel_key());
        self.fresh = true;
        Ok(Some(p))
    }

    /// Checks out a server connection, waiting for one (or for the end of a
    /// `PAUSE`) as long as it takes; a kill from the console ends the wait.
    async fn checkout_waiting(
        &mut self,
    ) -> Result<Result<Pooled, crate::pool::CheckoutError>, Stop> {
        let info = &self.registered.info;
        let database = &self.pool.key().database;
        let control = &self.shared.control;
        loop {
            if control.holds(database) {
                let resumed = control.wait_resumed(database, &self.shared.shutdown);
                tokio::select! {
                    by = info.killed() => return Err(Stop::Killed(by)),
                    _ = Box::pin(resumed) => {}
                }
            }
            let checked_out = {
                let checkout = std::pin::pin!(self.pool.checkout());
                let waited =
                    with_wake_notices(&mut self.client, self.lifecycle.as_deref(), checkout);
                tokio::select! {
                    by = info.killed() => return Err(Stop::Killed(by)),
                    r = waited => r,
                }
            };
            // PAUSE may have begun while this checkout was under way.
            match checked_out {
                Ok(p) if control.holds(database) => self.pool.checkin(p),
                other => return Ok(other),
            }
        }
    }

    /// Brings a connection's settings in line with the client's (one round
    /// trip, only when they differ).
    async fn sync_settings(&mut self, p: &mut Pooled) -> Result<(), Stop> {
        if let Some(sql) = params::sync_sql(&self.want, &p.conn.params, &self.defaults.params) {
            // Record what is being set; ParameterStatus replies then
            // overwrite reported settings with the server's spelling.
            for (k, v) in self.want.iter() {
                p.conn.params.insert(k.clone(), v.clone());
            }
            p.conn
                .params
                .retain(|k, _| self.want.contains_key(k) || self.defaults.params.contains_key(k));
            match p.conn.run_internal(&sql, INTERNAL_TIMEOUT).await {
                Ok(None) => {
                    // The server's spelling of each value (copied only
                    // when it differs: `want` may be shared).
                    let respelled = self
                        .want
                        .iter()
                        .any(|(k, v)| p.conn.params.get(k).is_some_and(|h| h != v));
                    if respelled {
                        for (k, v) in Arc::make_mut(&mut self.want).iter_mut() {
                            if let Some(h) = p.conn.params.get(k) {
                                v.clone_from(h);
                            }
                        }
                        self.want_fp = params::fingerprint(&self.want);
                    }
                }
                Ok(Some(mut e)) => {
                    // A setting the server rejects: the server would have refused this
                    // client's startup the same way. The failed statements rolled back,
                    // but the connection's recorded settings no longer match: close it.
                    e.severity = backend::Severity::Fatal;
                    p.conn.broken = true;
                    return Err(Stop::Fatal(e));
                }
                Err(e) => {
                    tracing::warn!(peer = %self.peer(), error = %e, "server connection failed while applying settings");
                    return Err(Stop::Fatal(ErrorMessage::fatal(
                        sqlstate::CONNECTION_FAILURE,
                        format!("server connection lost: {e}"),
                    )));
                }
            }
        }
        p.conn.settings_fp = self.want_fp;
        Ok(())
    }

    /// Answers the client's current request with `err` without a server:
    /// skips messages up to and including the next Query or Sync, then sends
    /// the error and ReadyForQuery, as the server does after an error.
    async fn skip_request(&mut self, err: ErrorMessage) -> Result<(), Stop> {
        let mut ended = false;
        loop {
            let mut pos = 0;
            loop {
                let step = self.cscan.next(&self.cbuf, pos, |_| false);
                let Some((item, next)) = step.map_err(|e| Stop::Fatal(too_large(&e)))? else {
                    break;
                };
                if let Scanned::Start { tag } = item {
                    if ended {
                        break;
                    }
                    match tag {
                        b'Q' | b'S' | b'F' => ended = true,
                        b'X' => return Err(Stop::ClientGone),
                        _ => {}
                    }
                }
                pos = next;
            }
            self.cbuf.advance(pos);
            if ended && self.cscan.at_boundary() {
                let mut out = BytesMut::new();
                err.write(&mut out);
                backend::ready_for_query(&mut out, b'I');
                // The client owes the next message from here: its idle
                // timeout counts from this answer.
                self.idle_since = Instant::now();
                return self.client.send(&out).await.map_err(|_| Stop::ClientGone);
            }
            self.cbuf.reserve(8 * 1024);
            match self.client.read_buf(&mut self.cbuf).await {
                Ok(0) | Err(_) => return Err(Stop::ClientGone),
                Ok(_) => {}
            }
        }
    }
}

/// What a client killed from the admin console is told, as PostgreSQL
/// tells a backend's client after `pg_terminate_backend`.
fn killed(by: Kill) -> ErrorMessage {
    ErrorMessage::fatal(
        sqlstate::ADMIN_SHUTDOWN,
        format!(
            "terminating connection due to administrator command ({} on the pgwake admin console)",
            by.command()
        ),
    )
}

/// How a session waiting for its client ends when interrupted.
fn interrupted(why: Interrupt) -> Stop {
    match why {
        Interrupt::Killed(by) => Stop::Killed(by),
        Interrupt::ShuttingDown => Stop::Fatal(shutting_down()),
    }
}

fn shutting_down() -> ErrorMessage {
    ErrorMessage::fatal(sqlstate::ADMIN_SHUTDOWN, "pgwake is shutting down")
        .with_hint("reconnect in a moment")
}

fn too_large(e: &FrameError) -> ErrorMessage {
    let code = match e {
        FrameError::TooLarge { .. } => sqlstate::PROGRAM_LIMIT_EXCEEDED,
        FrameError::BadLength { .. } => sqlstate::PROTOCOL_VIOLATION,
    };
    let mut m = ErrorMessage::fatal(code, format!("invalid message from client: {e}"));
    if matches!(e, FrameError::TooLarge { .. }) {
        m = m.with_hint("raise listen.max_message_size if such messages are expected");
    }
    m
}
