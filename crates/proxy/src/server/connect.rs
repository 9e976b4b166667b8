//! Making a server connection: resolving the host, TCP with keepalives,
//! TLS per `sslmode`, the login exchange; and cancel requests.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use fallible_iterator::FallibleIterator;
use pgwake_config::SslMode;
use pgwake_credentials::Secret;
use pgwake_protocol::backend::ErrorMessage;
use pgwake_protocol::Scanner;
use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256, SCRAM_SHA_256};
use postgres_protocol::message::{backend, frontend};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::{ConnectError, LoginProtocol, ServerConn, TxState, TxStatus, SERVER_MAX_FRAME};
use crate::params::Params;
use crate::tls::ServerStream;

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

/// How a server connection was opened (kept on the connection until the
/// first traced statement on it takes it).
#[derive(Debug, Clone)]
pub(crate) struct ConnectTrace {
    /// The start of the attempt that succeeded (its token fetch).
    pub(crate) started: Instant,
    pub(crate) ended: Instant,
    /// Getting the password or token from the credential cache.
    pub(crate) token: Duration,
    /// No valid token was at hand: the login waited for a fetch.
    pub(crate) token_waited: bool,
    pub(crate) phases: ConnectPhases,
    /// Attempts made, the one that succeeded included.
    pub(crate) attempts: u32,
    /// The server was asleep and this login waited for its wake.
    pub(crate) wake: Option<WakeTrace>,
}

/// A wake of a stopped server.
#[derive(Debug, Clone)]
pub(crate) struct WakeTrace {
    pub(crate) began: Instant,
    pub(crate) ended: Instant,
    pub(crate) provider: String,
    /// The server's state when the wake began (`stopped`, `stopping`, …).
    pub(crate) state: String,
    /// Logins that waited for this one start.
    pub(crate) waiters: u32,
    /// The address of the client whose arrival triggered it.
    pub(crate) client: Option<String>,
    pub(crate) error: Option<String>,
}

impl ConnectPhases {
    /// The durations in the order the phases happen: dns, tcp, tls, auth.
    pub fn durations(&self) -> [Option<Duration>; 4] {
        [self.dns, self.tcp, self.tls, self.auth]
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
        .map_err(|e| LoginProtocol::NoPeerAddress(e.to_string()))?;
    let mut out = BytesMut::new();
    frontend::startup_message([("user", user), ("database", dbname)], &mut out)
        .map_err(|e| LoginProtocol::encode(&e))?;
    let lost = |e: io::Error| LoginProtocol::connection_lost(&e);
    stream.write_all(&out).await.map_err(lost)?;
    let mut buf = BytesMut::with_capacity(4096);
    let mut scram: Option<ScramSha256> = None;
    let mut params = Params::new();
    let mut reported = Vec::new();
    let mut key = (0, 0);
    loop {
        let msg = loop {
            match backend::Message::parse(&mut buf).map_err(|e| LoginProtocol::malformed(&e))? {
                Some(m) => break m,
                None => {
                    if buf.len() > 1 << 20 {
                        return Err(LoginProtocol::TooLarge.into());
                    }
                    if stream.read_buf(&mut buf).await.map_err(lost)? == 0 {
                        return Err(LoginProtocol::Closed.into());
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
                    .map_err(|e| LoginProtocol::encode(&e))?;
            }
            backend::Message::AuthenticationMd5Password(body) => {
                let hash = postgres_protocol::authentication::md5_hash(
                    user.as_bytes(),
                    need()?.expose().as_bytes(),
                    body.salt(),
                );
                frontend::password_message(hash.as_bytes(), &mut out)
                    .map_err(|e| LoginProtocol::encode(&e))?;
            }
            backend::Message::AuthenticationSasl(body) => {
                let mut mechs = body.mechanisms();
                let mut ok = false;
                while let Some(m) = mechs.next().map_err(|e| LoginProtocol::malformed(&e))? {
                    ok |= m == SCRAM_SHA_256;
                }
                if !ok {
                    return Err(LoginProtocol::NoScram.into());
                }
                let s =
                    ScramSha256::new(need()?.expose().as_bytes(), ChannelBinding::unsupported());
                frontend::sasl_initial_response(SCRAM_SHA_256, s.message(), &mut out)
                    .map_err(|e| LoginProtocol::encode(&e))?;
                scram = Some(s);
            }
            backend::Message::AuthenticationSaslContinue(body) => {
                let s = scram
                    .as_mut()
                    .ok_or(LoginProtocol::SaslContinueBeforeStart)?;
                s.update(body.data())
                    .map_err(|e| LoginProtocol::Scram(e.to_string()))?;
                frontend::sasl_response(s.message(), &mut out)
                    .map_err(|e| LoginProtocol::encode(&e))?;
            }
            backend::Message::AuthenticationSaslFinal(body) => {
                let mut s = scram.take().ok_or(LoginProtocol::SaslFinalBeforeStart)?;
                s.finish(body.data())
                    .map_err(|e| LoginProtocol::ScramSignature(e.to_string()))?;
            }
            backend::Message::ParameterStatus(p) => {
                let (k, v) = (
                    p.name().map_err(|e| LoginProtocol::malformed(&e))?,
                    p.value().map_err(|e| LoginProtocol::malformed(&e))?,
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
                    born: None,
                });
            }
            _ => return Err(LoginProtocol::UnexpectedMessage.into()),
        }
        if !out.is_empty() {
            stream.write_all(&out).await.map_err(lost)?;
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
