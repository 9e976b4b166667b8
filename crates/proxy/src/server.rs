//! One connection to the Postgres server: connecting (TCP options, startup,
//! authentication), and the typed state pgwake derives from the messages that
//! pass: transaction status and the replies still owed.

use std::io;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::{Buf, BytesMut};
use fallible_iterator::FallibleIterator;
use pgwake_config::SslMode;
use pgwake_credentials::Secret;
use pgwake_protocol::backend::{parse, ErrorMessage, Severity};
use pgwake_protocol::{sqlstate, Scanned, Scanner};
use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256, SCRAM_SHA_256};
use postgres_protocol::message::{backend, frontend};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::params::Params;
use crate::tls::ServerStream;
use std::sync::Arc;

/// Largest frame accepted from the server. Postgres itself never sends more
/// than 1 GiB in one message.
pub const SERVER_MAX_FRAME: usize = 1 << 30;

/// Where and how to reach the server, from `[server]`.
#[derive(Debug, Clone)]
pub struct Target {
    pub host: String,
    pub port: u16,
    pub sslmode: SslMode,
    pub connect_timeout: Duration,
    pub keepalive_idle: Duration,
    pub keepalive_interval: Duration,
    pub keepalive_count: u32,
    pub user_timeout: Duration,
    /// TLS settings for `sslmode`; `None` with `disable`.
    pub tls: Option<Arc<rustls::ClientConfig>>,
    /// `server.auth.allow_cleartext_without_tls`: the operator accepts that
    /// the password or token may cross the network in the clear.
    pub allow_cleartext_without_tls: bool,
}

impl Target {
    /// Fails when the TLS settings cannot be built (an unreadable `sslrootcert`, say).
    pub fn from_config(s: &pgwake_config::Server) -> Result<Self, String> {
        Ok(Target {
            tls: crate::tls::client_config(s.sslmode, s.sslrootcert.as_deref())?,
            host: s.host.clone(),
            port: s.port,
            sslmode: s.sslmode,
            connect_timeout: s.connect_timeout,
            keepalive_idle: s.tcp_keepalive_idle,
            keepalive_interval: s.tcp_keepalive_interval,
            keepalive_count: s.tcp_keepalive_count,
            user_timeout: s.tcp_user_timeout,
            allow_cleartext_without_tls: s.auth.allow_cleartext_without_tls,
        })
    }
}

/// Why a server connection could not be made.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ConnectError {
    #[error("could not connect to server at {host}:{port}: {reason}")]
    Unreachable {
        host: String,
        port: u16,
        reason: String,
        refused: bool,
    },
    #[error("connecting to server at {host}:{port} took longer than {timeout:?} (server.connect_timeout)")]
    Timeout {
        host: String,
        port: u16,
        timeout: Duration,
    },
    /// The server refused the login (bad password, missing database, starting up…).
    #[error("server refused the connection: {}", .0.message)]
    Server(ErrorMessage),
    #[error("the server asked for a password, and server.auth has none (set server.auth.password or PGWAKE_SERVER_AUTH_PASSWORD)")]
    NoPassword,
    #[error("server.sslmode = \"{sslmode}\" requires TLS, and the server at {host}:{port} does not accept it (a downgrade: pgwake sends no password or token without TLS)")]
    TlsRequired {
        host: String,
        port: u16,
        sslmode: &'static str,
    },
    /// The server asked for the password in cleartext over a connection
    /// without TLS: sending it would put the password or token on the wire.
    #[error("the server at {host}:{port} asked for the password in cleartext over a connection without TLS; pgwake did not send it (use TLS with server.sslmode = \"verify-full\", or set server.auth.allow_cleartext_without_tls = true to accept the risk)")]
    CleartextWithoutTls { host: String, port: u16 },
    #[error("TLS with the server at {host}:{port} failed: {reason}")]
    Tls {
        host: String,
        port: u16,
        reason: String,
    },
    #[error("unexpected reply from server during login: {0}")]
    Protocol(String),
    #[error("{0}")]
    Credential(String),
    /// The server is stopped and did not come up within `wake_timeout`, or
    /// could not be started.
    #[error("{0}")]
    Asleep(pgwake_lifecycle::WakeError),
}

impl ConnectError {
    /// The error a client sees.
    pub fn to_client(&self) -> ErrorMessage {
        match self {
            ConnectError::Server(e) => {
                let mut e = e.clone();
                e.severity = Severity::Error;
                e.message = format!("server login failed: {}", e.message);
                e
            }
            ConnectError::NoPassword => {
                ErrorMessage::error(sqlstate::INVALID_PASSWORD, self.to_string())
            }
            // The source may recover (an identity endpoint back up): a
            // connection failure, which clients and drivers retry.
            ConnectError::Credential(_) => {
                ErrorMessage::error(sqlstate::CONNECTION_FAILURE, format!("pgwake cannot log in to the server: {self}"))
                    .with_hint("pgwake keeps retrying the credential source; check its error above")
            }
            ConnectError::Asleep(w) => ErrorMessage::error(
                sqlstate::CANNOT_CONNECT_NOW,
                format!("pgwake: {self}"),
            )
            .with_hint(match w {
                pgwake_lifecycle::WakeError::Timeout { .. } => {
                    "pgwake is starting the database server; retry in a few seconds"
                }
                pgwake_lifecycle::WakeError::Failed(_) => {
                    "pgwake could not start the database server; see its log for the [lifecycle] provider's error"
                }
            }),
            ConnectError::Protocol(_) => {
                ErrorMessage::error(sqlstate::PROTOCOL_VIOLATION, self.to_string())
            }
            ConnectError::TlsRequired { .. } | ConnectError::CleartextWithoutTls { .. } => {
                ErrorMessage::error(sqlstate::UNABLE_TO_CONNECT, format!("pgwake: {self}"))
                    .with_hint("the server, or something between it and pgwake, refused TLS; pgwake sends no password or token without it")
            }
            _ => ErrorMessage::error(sqlstate::UNABLE_TO_CONNECT, format!("pgwake {self}"))
                .with_hint("check that the server is running and reachable; pgwake retries as soon as it accepts connections"),
        }
    }

    /// Worth retrying at once: the server is restarting or briefly unreachable.
    pub fn is_transient(&self) -> bool {
        match self {
            ConnectError::Unreachable { refused, .. } => *refused,
            ConnectError::Server(e) => {
                e.code == sqlstate::CANNOT_CONNECT_NOW || e.code == sqlstate::ADMIN_SHUTDOWN
            }
            _ => false,
        }
    }

    /// The server may be stopped: nothing listens, or it is starting up
    /// or shutting down.
    pub fn may_be_asleep(&self) -> bool {
        match self {
            ConnectError::Unreachable { .. } => true,
            ConnectError::Server(e) => {
                e.code == sqlstate::CANNOT_CONNECT_NOW || e.code == sqlstate::ADMIN_SHUTDOWN
            }
            _ => false,
        }
    }

    /// A login the server refused on purpose: retrying at once would only hammer it.
    pub fn is_auth(&self) -> bool {
        match self {
            ConnectError::Server(e) => {
                e.code == sqlstate::INVALID_PASSWORD || e.code == sqlstate::INVALID_AUTHORIZATION
            }
            // Not `Credential`: the source paces its own retries, and the
            // server never saw a login.
            ConnectError::NoPassword => true,
            _ => false,
        }
    }
}

/// A phase of making a server connection, in the order they happen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ConnectPhase {
    /// Resolving `server.host`.
    Dns,
    /// The TCP connect, socket options included.
    Tcp,
    /// SSLRequest and the TLS handshake.
    Tls,
    /// StartupMessage and the authentication exchange, until ReadyForQuery.
    Auth,
}

impl ConnectPhase {
    pub fn name(self) -> &'static str {
        match self {
            ConnectPhase::Dns => "dns",
            ConnectPhase::Tcp => "tcp",
            ConnectPhase::Tls => "tls",
            ConnectPhase::Auth => "auth",
        }
    }
}

/// How long each phase of one server connect took, filled in by
/// [`ServerConn::connect_phased`] as the phases complete: a few
/// `Instant::now()` calls and no allocation, cheap enough for every connect.
/// A phase that did not complete (it failed, timed out, or never began) is
/// `None`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ConnectPhases {
    /// Resolving the host name (about zero for an IP address).
    pub dns: Option<Duration>,
    /// TCP connect to the first address that accepts, socket options included.
    pub tcp: Option<Duration>,
    /// SSLRequest and the TLS handshake; `None` with `sslmode = disable`.
    /// Also set when the server declined TLS under `prefer` (the SSLRequest
    /// round trip) or a failed handshake fell back to plaintext (the attempt
    /// and the new TCP connect): [`ServerConn::is_tls`] tells which.
    pub tls: Option<Duration>,
    /// Startup and authentication, until the first ReadyForQuery.
    pub auth: Option<Duration>,
    /// The phase under way when the connect ended: on error, the one that
    /// failed (or was cut short by `connect_timeout`); on success, `Auth`.
    pub phase: Option<ConnectPhase>,
    /// The server's address: the first one resolved, then the one connected to.
    pub addr: Option<SocketAddr>,
}

pub use pgwake_protocol::TxStatus;

/// Transaction status from the last ReadyForQuery, and the replies still owed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TxState {
    pub status: TxStatus,
    /// ReadyForQuery messages still to come: one per Query, Sync or FunctionCall sent.
    pub owed: u32,
    /// Extended-protocol messages were sent since the last Sync.
    pub open_extended: bool,
}

impl TxState {
    const IDLE: TxState = TxState {
        status: TxStatus::Idle,
        owed: 0,
        open_extended: false,
    };

    /// Nothing in flight and no transaction open: the connection can serve anyone.
    pub fn is_idle(&self) -> bool {
        self.owed == 0 && !self.open_extended && self.status == TxStatus::Idle
    }

    /// A transaction block is open, or extended-protocol messages await
    /// their Sync: the client owes the server its next message.
    pub fn in_transaction(&self) -> bool {
        self.status != TxStatus::Idle || self.open_extended
    }

    /// Records a message sent to the server.
    #[inline]
    pub fn sent(&mut self, tag: u8) {
        match tag {
            b'Q' | b'F' => self.owed += 1,
            b'S' => {
                self.owed += 1;
                self.open_extended = false;
            }
            b'P' | b'B' | b'D' | b'E' | b'C' | b'H' => self.open_extended = true,
            _ => {}
        }
    }

    /// Records a ReadyForQuery received, with its status byte.
    #[inline]
    pub fn ready(&mut self, status: u8) {
        self.owed = self.owed.saturating_sub(1);
        self.status = TxStatus::from_byte(status);
    }

    /// Records the status of a ReadyForQuery that answered pgwake's own
    /// Sync (not counted in `owed`): the status is the connection's all the same.
    #[inline]
    pub fn saw_status(&mut self, status: u8) {
        self.status = TxStatus::from_byte(status);
    }
}

/// A logged-in server connection.
#[derive(Debug)]
pub struct ServerConn {
    pub(crate) stream: ServerStream,
    /// Bytes read from the server, not yet forwarded.
    pub(crate) buf: BytesMut,
    pub(crate) scan: Scanner,
    pub(crate) tx: TxState,
    /// Settings in force, lower-case names: what the server reported plus what pgwake set.
    pub(crate) params: Params,
    /// [`crate::params::fingerprint`] of the client settings this connection
    /// was last brought in line with; 0: the server's defaults.
    pub(crate) settings_fp: u64,
    /// ParameterStatus as sent at login, names as the server spells them.
    pub(crate) reported: Vec<(String, String)>,
    pub(crate) pid: u32,
    pub(crate) secret_key: u32,
    pub(crate) peer: SocketAddr,
    pub(crate) created: Instant,
    pub(crate) last_used: Instant,
    /// [`pgwake_credentials::CredentialSource::generation`] of the secret this
    /// connection logged in with.
    pub(crate) credential_generation: u64,
    /// The connection broke or is in a state pgwake cannot vouch for.
    pub(crate) broken: bool,
    /// Prepared statements and the reply plan (transaction mode). Boxed: a
    /// connection moves by value through checkouts and client tasks.
    pub(crate) prepared: Box<crate::prepared::OnServer>,
}

/// The frames whose bodies the relay reads from the server side:
/// ReadyForQuery, ParameterStatus, ErrorResponse (to catch a FATAL), and
/// CommandComplete (DISCARD ALL and DEALLOCATE ALL clear prepared
/// statements) and RowDescription (whole, so that pgwake's own replies due
/// after it never land inside it).
#[inline]
pub fn inspected_server_frame(tag: u8) -> bool {
    matches!(tag, b'Z' | b'S' | b'E' | b'C' | b'T')
}

impl ServerConn {
    /// Nothing in flight either way and no transaction open: the client
    /// that holds this connection may give it back.
    pub fn is_at_rest(&self) -> bool {
        self.tx.is_idle()
            && self.prepared.is_settled()
            && self.buf.is_empty()
            && self.scan.at_boundary()
    }

    /// At rest and not marked for closing: another client may use it.
    pub fn is_reusable(&self) -> bool {
        self.is_at_rest() && !self.broken
    }
}

impl ServerConn {
    /// Connects, negotiates TLS per `sslmode`, and logs in as `user` to `dbname`.
    pub async fn connect(
        target: &Target,
        dbname: &str,
        user: &str,
        password: Option<Secret>,
    ) -> Result<ServerConn, ConnectError> {
        Self::connect_phased(
            target,
            dbname,
            user,
            password,
            &mut ConnectPhases::default(),
        )
        .await
    }

    /// [`connect`](Self::connect), recording in `phases` how long each phase
    /// took and which one was under way when it ended (on error: the one that
    /// failed). `phases` is reset first. The whole attempt is bounded by
    /// `connect_timeout`, as `connect` is.
    pub async fn connect_phased(
        target: &Target,
        dbname: &str,
        user: &str,
        password: Option<Secret>,
        phases: &mut ConnectPhases,
    ) -> Result<ServerConn, ConnectError> {
        *phases = ConnectPhases::default();
        let timeout = target.connect_timeout;
        let attempt = async {
            let mut clock = Instant::now();
            phases.phase = Some(ConnectPhase::Dns);
            let addrs = resolve(target).await?;
            phases.dns = Some(lap(&mut clock));
            phases.addr = addrs.first().copied();
            phases.phase = Some(ConnectPhase::Tcp);
            let mut tcp = connect_addrs(target, &addrs).await?;
            phases.tcp = Some(lap(&mut clock));
            phases.addr = tcp.peer_addr().ok().or(phases.addr);
            let stream = match &target.tls {
                None => ServerStream::Plain(tcp),
                Some(config) => {
                    phases.phase = Some(ConnectPhase::Tls);
                    let accepted = ssl_request(&mut tcp)
                        .await
                        .map_err(|e| unreachable(target, &e))?;
                    let stream = if accepted {
                        match crate::tls::handshake(config.clone(), &target.host, tcp).await {
                            Ok(s) => s,
                            // libpq's prefer: a failed TLS attempt falls back to
                            // plaintext, on a new connection to the same addresses.
                            Err(_) if target.sslmode == SslMode::Prefer => {
                                let tcp = connect_addrs(target, &addrs).await?;
                                phases.addr = tcp.peer_addr().ok().or(phases.addr);
                                ServerStream::Plain(tcp)
                            }
                            Err(e) => {
                                return Err(ConnectError::Tls {
                                    host: target.host.clone(),
                                    port: target.port,
                                    reason: e.to_string(),
                                })
                            }
                        }
                    } else if target.sslmode == SslMode::Prefer {
                        ServerStream::Plain(tcp)
                    } else {
                        return Err(ConnectError::TlsRequired {
                            host: target.host.clone(),
                            port: target.port,
                            sslmode: sslmode_name(target.sslmode),
                        });
                    };
                    phases.tls = Some(lap(&mut clock));
                    stream
                }
            };
            phases.phase = Some(ConnectPhase::Auth);
            let conn = login(stream, target, dbname, user, password).await?;
            phases.auth = Some(lap(&mut clock));
            Ok(conn)
        };
        match tokio::time::timeout(timeout, attempt).await {
            Ok(r) => r,
            Err(_) => Err(ConnectError::Timeout {
                host: target.host.clone(),
                port: target.port,
                timeout,
            }),
        }
    }

    /// The TCP options in force on the socket, read back from the kernel:
    /// (keepalive idle, keepalive interval, keepalive probes, user timeout).
    pub fn tcp_options(&self) -> io::Result<(Duration, Duration, u32, Option<Duration>)> {
        let sock = socket2::SockRef::from(self.stream.tcp());
        Ok((
            sock.tcp_keepalive_time()?,
            sock.tcp_keepalive_interval()?,
            sock.tcp_keepalive_retries()?,
            sock.tcp_user_timeout()?,
        ))
    }

    /// Whether the connection is encrypted.
    pub fn is_tls(&self) -> bool {
        self.stream.is_tls()
    }

    /// Process id and secret key of the backend, for cancel requests.
    pub fn cancel_key(&self) -> (SocketAddr, u32, u32) {
        (self.peer, self.pid, self.secret_key)
    }

    /// Applies what a server frame says about the connection's state.
    #[inline]
    pub(crate) fn observe(&mut self, tag: u8, body: &[u8]) {
        match tag {
            b'Z' => self.tx.ready(body.first().copied().unwrap_or(b'E')),
            b'S' => {
                if let Ok((k, v)) = parse::parameter_status(body) {
                    self.params.insert(k.to_ascii_lowercase(), v.to_owned());
                }
            }
            _ => {}
        }
    }

    /// Whether a connection that sat in the pool is still usable: no EOF,
    /// no error and no stray bytes waiting. Never blocks.
    pub fn is_alive(&mut self) -> bool {
        if self.broken || !self.buf.is_empty() {
            return false;
        }
        let mut probe = [0u8; 1];
        match self.stream.tcp().try_read(&mut probe) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => true,
            // EOF, an error, or unsolicited bytes (often a FATAL before close).
            _ => false,
        }
    }

    /// Reads more bytes from the server into `buf`. Cancel-safe.
    pub(crate) async fn read_more(&mut self) -> io::Result<usize> {
        if self.buf.capacity() - self.buf.len() < 1024 {
            self.buf.reserve(16 * 1024);
        }
        let n = self.stream.read_buf(&mut self.buf).await?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        Ok(n)
    }

    /// Sends `sql` as a simple query and reads until its ReadyForQuery,
    /// discarding the replies. Returns the first error the server sent.
    pub(crate) async fn run_internal(
        &mut self,
        sql: &str,
        timeout: Duration,
    ) -> Result<Option<ErrorMessage>, io::Error> {
        let mut out = BytesMut::new();
        frontend::query(sql, &mut out)?;
        match tokio::time::timeout(timeout, self.exchange(&out, b'Q')).await {
            Ok(r) => r,
            Err(_) => Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "server did not answer in time",
            )),
        }
        .inspect_err(|_| self.broken = true)
    }

    /// Writes `msg` (containing one message counted in TxState by `tag`) and
    /// drains replies until nothing is owed.
    async fn exchange(&mut self, msg: &[u8], tag: u8) -> io::Result<Option<ErrorMessage>> {
        self.tx.sent(tag);
        self.stream.write_all(msg).await?;
        self.drain().await
    }

    /// Runs `sql` with text parameters `params` (extended protocol, the
    /// unnamed statement) and returns its first row, each column as text.
    pub(crate) async fn query_row(
        &mut self,
        sql: &str,
        params: &[&str],
        timeout: Duration,
    ) -> io::Result<Result<Option<Row>, ErrorMessage>> {
        let invalid =
            |e: &dyn std::fmt::Display| io::Error::new(io::ErrorKind::InvalidInput, e.to_string());
        let mut out = BytesMut::new();
        frontend::parse("", sql, std::iter::empty(), &mut out)?;
        frontend::bind(
            "",
            "",
            std::iter::empty(),
            params.iter(),
            |p, buf| {
                buf.extend_from_slice(p.as_bytes());
                Ok(postgres_protocol::IsNull::No)
            },
            Some(0),
            &mut out,
        )
        .map_err(|e| match e {
            frontend::BindError::Conversion(e) => invalid(&e),
            frontend::BindError::Serialization(e) => e,
        })?;
        frontend::execute("", 0, &mut out)?;
        frontend::sync(&mut out);
        let mut rows = Vec::new();
        let run = async {
            self.tx.sent(b'S');
            self.stream.write_all(&out).await?;
            self.drain_collecting(Some(&mut rows)).await
        };
        let error = match tokio::time::timeout(timeout, run).await {
            Ok(r) => r.inspect_err(|_| self.broken = true)?,
            Err(_) => {
                self.broken = true;
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "server did not answer in time",
                ));
            }
        };
        Ok(match error {
            Some(e) => Err(e),
            None => Ok(rows.into_iter().next()),
        })
    }

    /// Reads and discards server output until every owed ReadyForQuery has
    /// arrived; returns the first error seen.
    pub(crate) async fn drain(&mut self) -> io::Result<Option<ErrorMessage>> {
        self.drain_collecting(None).await
    }

    /// As [`Self::drain`], keeping the first DataRow in `rows` when given.
    async fn drain_collecting(
        &mut self,
        mut rows: Option<&mut Vec<Row>>,
    ) -> io::Result<Option<ErrorMessage>> {
        let mut first_error = None;
        let collect = rows.is_some();
        while self.tx.owed > 0 {
            let mut pos = 0;
            loop {
                let step = self
                    .scan
                    .next(&self.buf, pos, |t| {
                        inspected_server_frame(t) || (collect && t == b'D')
                    })
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
                let Some((item, next)) = step else { break };
                if let Scanned::Frame { tag, body } = item {
                    if tag == b'D' {
                        if let Some(rows) = rows.as_deref_mut().filter(|r| r.is_empty()) {
                            rows.push(text_row(body));
                        }
                    } else if tag == b'E' {
                        if first_error.is_none() {
                            first_error =
                                Some(ErrorMessage::from_fields(parse::error_fields(body)));
                        }
                    } else {
                        let body = body.to_vec();
                        self.observe(tag, &body);
                    }
                }
                pos = next;
            }
            self.buf.advance(pos);
            if self.tx.owed > 0 {
                self.read_more().await?;
            }
        }
        Ok(first_error)
    }

    /// Ends the session politely (Terminate), ignoring errors: the connection is going away.
    pub async fn terminate(mut self) {
        let mut out = BytesMut::new();
        frontend::terminate(&mut out);
        let _ = tokio::time::timeout(Duration::from_secs(1), self.stream.write_all(&out)).await;
    }
}

/// A row's columns as text (`None`: NULL).
pub(crate) type Row = Vec<Option<String>>;

/// A DataRow body, columns as (lossy) text; a malformed row ends early.
fn text_row(body: &[u8]) -> Row {
    let Ok(columns) = parse::data_row(body) else {
        return Row::new();
    };
    columns
        .map_while(Result::ok)
        .map(|c| c.map(|v| String::from_utf8_lossy(v).into_owned()))
        .collect()
}

fn unreachable(target: &Target, e: &io::Error) -> ConnectError {
    ConnectError::Unreachable {
        host: target.host.clone(),
        port: target.port,
        reason: e.to_string(),
        refused: e.kind() == io::ErrorKind::ConnectionRefused,
    }
}

fn lap(clock: &mut Instant) -> Duration {
    let now = Instant::now();
    let took = now.duration_since(*clock);
    *clock = now;
    took
}

/// Resolves `server.host` (an IP address needs no lookup). Fails when the
/// name does not resolve or has no addresses.
pub(crate) async fn resolve(target: &Target) -> Result<Vec<SocketAddr>, ConnectError> {
    let cannot = |reason: String| ConnectError::Unreachable {
        host: target.host.clone(),
        port: target.port,
        reason,
        refused: false,
    };
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host((target.host.as_str(), target.port))
        .await
        .map_err(|e| cannot(format!("cannot resolve host name: {e}")))?
        .collect();
    if addrs.is_empty() {
        return Err(cannot("host name has no addresses".into()));
    }
    Ok(addrs)
}

/// TCP connect to the first of `addrs` that answers, with keepalives set so
/// a NAT in between never sees the flow idle for long.
async fn connect_addrs(target: &Target, addrs: &[SocketAddr]) -> Result<TcpStream, ConnectError> {
    let mut last = io::Error::new(io::ErrorKind::NotFound, "host name has no addresses");
    for &addr in addrs {
        match TcpStream::connect(addr).await {
            Ok(s) => {
                // A client polling a closed local port in the ephemeral range
                // can end up connected to itself; that is no server.
                if s.local_addr().ok() == Some(addr) {
                    last = io::Error::new(io::ErrorKind::ConnectionRefused, "connection refused");
                    continue;
                }
                set_socket_options(&s, target).map_err(|e| unreachable(target, &e))?;
                return Ok(s);
            }
            Err(e) => last = e,
        }
    }
    Err(unreachable(target, &last))
}

fn set_socket_options(s: &TcpStream, t: &Target) -> io::Result<()> {
    s.set_nodelay(true)?;
    let sock = socket2::SockRef::from(s);
    let ka = socket2::TcpKeepalive::new()
        .with_time(t.keepalive_idle)
        .with_interval(t.keepalive_interval)
        .with_retries(t.keepalive_count);
    sock.set_tcp_keepalive(&ka)?;
    sock.set_tcp_user_timeout(Some(t.user_timeout))?;
    Ok(())
}

/// Sends SSLRequest; true when the server is willing to do TLS.
async fn ssl_request(stream: &mut TcpStream) -> io::Result<bool> {
    let mut out = BytesMut::new();
    frontend::ssl_request(&mut out);
    stream.write_all(&out).await?;
    let answer = stream.read_u8().await?;
    match answer {
        b'S' => Ok(true),
        b'N' => Ok(false),
        other => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("unexpected answer {other:#x} to SSLRequest"),
        )),
    }
}

/// libpq's spelling of `mode`.
fn sslmode_name(mode: SslMode) -> &'static str {
    match mode {
        SslMode::Disable => "disable",
        SslMode::Prefer => "prefer",
        SslMode::Require => "require",
        SslMode::VerifyCa => "verify-ca",
        SslMode::VerifyFull => "verify-full",
    }
}

/// Logs in on `stream` to `target`. A cleartext password request is
/// answered only over TLS, unless the operator opted out.
async fn login(
    mut stream: ServerStream,
    target: &Target,
    dbname: &str,
    user: &str,
    password: Option<Secret>,
) -> Result<ServerConn, ConnectError> {
    let cleartext_ok = matches!(stream, ServerStream::Tls(_)) || target.allow_cleartext_without_tls;
    let peer = stream
        .tcp()
        .peer_addr()
        .map_err(|e| ConnectError::Protocol(e.to_string()))?;
    let mut out = BytesMut::new();
    frontend::startup_message([("user", user), ("database", dbname)], &mut out)
        .map_err(|e| ConnectError::Protocol(e.to_string()))?;
    let io_err = |e: io::Error| ConnectError::Protocol(format!("connection lost: {e}"));
    stream.write_all(&out).await.map_err(io_err)?;
    let mut buf = BytesMut::with_capacity(4096);
    let mut scram: Option<ScramSha256> = None;
    let mut params = Params::new();
    let mut reported = Vec::new();
    let mut key = (0, 0);
    loop {
        let msg = loop {
            match backend::Message::parse(&mut buf)
                .map_err(|e| ConnectError::Protocol(e.to_string()))?
            {
                Some(m) => break m,
                None => {
                    if buf.len() > 1 << 20 {
                        return Err(ConnectError::Protocol("login message too large".into()));
                    }
                    if stream.read_buf(&mut buf).await.map_err(io_err)? == 0 {
                        return Err(ConnectError::Protocol(
                            "server closed the connection during login".into(),
                        ));
                    }
                }
            }
        };
        out.clear();
        let need = || password.as_ref().ok_or(ConnectError::NoPassword);
        match msg {
            backend::Message::AuthenticationOk => {}
            backend::Message::AuthenticationCleartextPassword => {
                if !cleartext_ok {
                    return Err(ConnectError::CleartextWithoutTls {
                        host: target.host.clone(),
                        port: target.port,
                    });
                }
                frontend::password_message(need()?.expose().as_bytes(), &mut out)
                    .map_err(|e| ConnectError::Protocol(e.to_string()))?;
            }
            backend::Message::AuthenticationMd5Password(body) => {
                let hash = postgres_protocol::authentication::md5_hash(
                    user.as_bytes(),
                    need()?.expose().as_bytes(),
                    body.salt(),
                );
                frontend::password_message(hash.as_bytes(), &mut out)
                    .map_err(|e| ConnectError::Protocol(e.to_string()))?;
            }
            backend::Message::AuthenticationSasl(body) => {
                let mut mechs = body.mechanisms();
                let mut ok = false;
                while let Some(m) = mechs
                    .next()
                    .map_err(|e| ConnectError::Protocol(e.to_string()))?
                {
                    ok |= m == SCRAM_SHA_256;
                }
                if !ok {
                    return Err(ConnectError::Protocol(
                        "server offers no SASL mechanism pgwake supports (SCRAM-SHA-256)".into(),
                    ));
                }
                let s =
                    ScramSha256::new(need()?.expose().as_bytes(), ChannelBinding::unsupported());
                frontend::sasl_initial_response(SCRAM_SHA_256, s.message(), &mut out)
                    .map_err(|e| ConnectError::Protocol(e.to_string()))?;
                scram = Some(s);
            }
            backend::Message::AuthenticationSaslContinue(body) => {
                let s = scram
                    .as_mut()
                    .ok_or_else(|| ConnectError::Protocol("SASL continue before start".into()))?;
                s.update(body.data())
                    .map_err(|e| ConnectError::Protocol(format!("SCRAM: {e}")))?;
                frontend::sasl_response(s.message(), &mut out)
                    .map_err(|e| ConnectError::Protocol(e.to_string()))?;
            }
            backend::Message::AuthenticationSaslFinal(body) => {
                let mut s = scram
                    .take()
                    .ok_or_else(|| ConnectError::Protocol("SASL final before start".into()))?;
                s.finish(body.data())
                    .map_err(|e| ConnectError::Protocol(format!("SCRAM server signature: {e}")))?;
            }
            backend::Message::ParameterStatus(p) => {
                let (k, v) = (
                    p.name()
                        .map_err(|e| ConnectError::Protocol(e.to_string()))?,
                    p.value()
                        .map_err(|e| ConnectError::Protocol(e.to_string()))?,
                );
                params.insert(k.to_ascii_lowercase(), v.to_owned());
                reported.push((k.to_owned(), v.to_owned()));
            }
            backend::Message::BackendKeyData(k) => {
                key = (
                    k.process_id().cast_unsigned(),
                    k.secret_key().cast_unsigned(),
                )
            }
            backend::Message::NoticeResponse(_) => {}
            backend::Message::ErrorResponse(body) => {
                // A field's value borrows the field, not the body: keep them.
                let fields: Vec<_> = body.fields().iterator().map_while(Result::ok).collect();
                return Err(ConnectError::Server(ErrorMessage::from_fields(
                    fields.iter().map(|f| (f.type_(), f.value_bytes())),
                )));
            }
            backend::Message::ReadyForQuery(r) => {
                let now = Instant::now();
                return Ok(ServerConn {
                    stream,
                    buf,
                    scan: Scanner::new(SERVER_MAX_FRAME),
                    tx: TxState {
                        status: TxStatus::from_byte(r.status()),
                        ..TxState::IDLE
                    },
                    params,
                    settings_fp: 0,
                    reported,
                    pid: key.0,
                    secret_key: key.1,
                    peer,
                    created: now,
                    last_used: now,
                    broken: false,
                    credential_generation: 0,
                    prepared: Box::new(crate::prepared::OnServer::new(1)),
                });
            }
            _ => {
                return Err(ConnectError::Protocol(
                    "unexpected message during login".into(),
                ))
            }
        }
        if !out.is_empty() {
            stream.write_all(&out).await.map_err(io_err)?;
        }
    }
}

/// Sends a CancelRequest for the backend `(pid, key)` at `addr`. Best effort:
/// Postgres answers cancel requests by closing the connection.
pub async fn send_cancel(addr: SocketAddr, pid: u32, key: u32) -> io::Result<()> {
    send_cancel_within(addr, pid, key, Duration::from_secs(5)).await
}

/// [`send_cancel`], connecting within `limit` and then waiting up to
/// `limit` for the close that says the request was handled.
pub async fn send_cancel_within(
    addr: SocketAddr,
    pid: u32,
    key: u32,
    limit: Duration,
) -> io::Result<()> {
    let mut s = tokio::time::timeout(limit, TcpStream::connect(addr))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "cancel connect timed out"))??;
    let mut out = BytesMut::new();
    frontend::cancel_request(
        i32::from_be_bytes(pid.to_be_bytes()),
        i32::from_be_bytes(key.to_be_bytes()),
        &mut out,
    );
    s.write_all(&out).await?;
    let mut sink = [0u8; 16];
    let _ = tokio::time::timeout(limit, s.read(&mut sink)).await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tx_state_counts_replies() {
        let mut t = TxState::IDLE;
        for tag in [b'P', b'B', b'E', b'S'] {
            t.sent(tag);
        }
        assert!(!t.is_idle());
        t.ready(b'I');
        assert!(t.is_idle());
        t.sent(b'Q');
        t.ready(b'T');
        assert!(!t.is_idle(), "in a transaction");
        t.sent(b'P');
        t.sent(b'H');
        assert!(!t.is_idle(), "extended messages without Sync");
    }
}
