//! A client's way in: TLS if it asks, the startup packet, cancel requests,
//! the checks of a login (limits, TLS required, `[client_auth]`, whether
//! the user is served), then the admin console or a session.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::BytesMut;
use pgwake_protocol::backend::{self, ErrorMessage};
use pgwake_protocol::sqlstate;
use pgwake_protocol::startup::{self, StartupParams, StartupRequest};
use tokio::io::AsyncReadExt;
use tokio::sync::OwnedSemaphorePermit;

use super::{closed, send_fatal, Session};
use crate::client_io::{ClientStream, Peer};
use crate::stats::TimeoutKind;
use crate::{admin, Shared};

/// Serves one TCP client until it leaves, encrypting when it asks and
/// `listen.client_tls_mode` allows. `permit` is its place under
/// `max_client_conn`, held until it leaves; without one it is told so after
/// the handshake and closed.
pub(crate) fn serve_tcp(
    client: tokio::net::TcpStream,
    peer: Peer,
    shared: Arc<Shared>,
    permit: Option<OwnedSemaphorePermit>,
) -> impl std::future::Future<Output = ()> + Send {
    // The login is boxed and freed once done, and the task's own future
    // holds nothing but it: an idle client's task holds only its session.
    let login = Box::pin(accept_tcp(client, peer, shared, permit.is_some()));
    async move {
        // `permit` is held until the session ends (its task's, or parked
        // with it); the boxed login is freed as soon as it is done.
        let accepted = {
            let mut login = login;
            login.as_mut().await
        };
        match accepted {
            Accepted::Plain(mut session) => {
                session.permit = permit;
                session.run().await
            }
            Accepted::Tls(mut session) => {
                session.permit = permit;
                session.run().await
            }
            Accepted::Done => drop(permit),
        }
    }
}

/// Serves one unix-socket client until it leaves.
pub(crate) fn serve_unix(
    client: tokio::net::UnixStream,
    peer: Peer,
    shared: Arc<Shared>,
    permit: Option<OwnedSemaphorePermit>,
) -> impl std::future::Future<Output = ()> + Send {
    let login = Login {
        deadline: login_deadline(&shared),
        peer,
        shared,
        admitted: permit.is_some(),
        encrypted: false,
    };
    let login = Box::pin(async move { login.run(client, super::spare_buffers::take()).await });
    async move {
        if let Some(mut session) = login.await {
            session.permit = permit;
            session.run().await;
        }
    }
}

/// A client after its login.
enum Accepted {
    Plain(Box<Session<tokio::net::TcpStream>>),
    Tls(Box<Session<crate::tls::ClientTls>>),
    /// Served already (cancel request, admin console) or refused.
    Done,
}

async fn accept_tcp(
    mut client: tokio::net::TcpStream,
    peer: Peer,
    shared: Arc<Shared>,
    admitted: bool,
) -> Accepted {
    let login = Login {
        deadline: login_deadline(&shared),
        peer,
        shared,
        admitted,
        encrypted: false,
    };
    // A spare read buffer: a busy pgwake logs clients in without allocating one.
    let mut buf = super::spare_buffers::take();
    let tls = login.shared.client_tls();
    let step = within_login(
        &login.shared,
        login.deadline,
        handshake(&mut client, &mut buf, tls.is_some()),
    )
    .await;
    match step {
        Ok(Handshake::Request(request)) => match login.finish(client, buf, request).await {
            Some(s) => Accepted::Plain(s),
            None => Accepted::Done,
        },
        Ok(Handshake::Gone) => Accepted::Done,
        Ok(Handshake::Tls) => match tls {
            // Boxed: a TLS handshake's state is large, and a plain login
            // should not carry room for it.
            Some(tls) => Box::pin(login.tls(client, buf, tls)).await,
            None => Accepted::Done,
        },
        Err(e) => {
            tracing::debug!(peer = %login.peer, error = %e.message, "refused malformed startup");
            let _ = send_fatal(&mut client, &e).await;
            Accepted::Done
        }
    }
}

fn login_deadline(shared: &Shared) -> tokio::time::Instant {
    tokio::time::Instant::now() + shared.config().listen.client_login_timeout
}

/// Runs a login step, failing it at `deadline` (`client_login_timeout`).
///
/// A combinator rather than an `async fn`: the step is held once, inside
/// the timeout, not a second time as the function's argument (a login's
/// future is moved into its box whole, so its size is copied per client).
fn within_login<'a, T>(
    shared: &'a Shared,
    deadline: tokio::time::Instant,
    step: impl std::future::Future<Output = Result<T, ErrorMessage>> + 'a,
) -> impl std::future::Future<Output = Result<T, ErrorMessage>> + 'a {
    use futures_util::FutureExt;
    tokio::time::timeout_at(deadline, step).map(move |r| match r {
        Ok(r) => r,
        Err(_) => {
            shared.metrics.timeout(TimeoutKind::ClientLogin);
            Err(ErrorMessage::fatal(
                sqlstate::PROTOCOL_VIOLATION,
                format!(
                    "startup not completed within listen.client_login_timeout = {}",
                    humantime::format_duration(shared.config().listen.client_login_timeout)
                ),
            ))
        }
    })
}

/// A client's login after its startup packet.
struct Login {
    peer: Peer,
    shared: Arc<Shared>,
    /// Under `max_client_conn`.
    admitted: bool,
    /// When `client_login_timeout` runs out.
    deadline: tokio::time::Instant,
    /// Over TLS.
    encrypted: bool,
}

impl Login {
    /// The TLS handshake (`S` was sent), then the login over it.
    async fn tls(
        mut self,
        client: tokio::net::TcpStream,
        buf: BytesMut,
        tls: crate::tls::ClientTlsConfig,
    ) -> Accepted {
        let accept = tls.acceptor.accept(client);
        let client = match tokio::time::timeout_at(self.deadline, accept).await {
            Ok(Ok(s)) => crate::tls::ClientTls(Box::new(s), tls.end_point),
            Ok(Err(e)) => {
                tracing::info!(peer = %self.peer, error = %e, "client TLS handshake failed");
                return Accepted::Done;
            }
            Err(_) => {
                self.shared.metrics.timeout(TimeoutKind::ClientLogin);
                return Accepted::Done;
            }
        };
        self.encrypted = true;
        match self.run(client, buf).await {
            Some(s) => Accepted::Tls(s),
            None => Accepted::Done,
        }
    }

    /// Reads the startup packet (refusing encryption requests: the stream
    /// is encrypted already, or cannot be) and finishes the login.
    async fn run<C: ClientStream>(
        self,
        mut client: C,
        mut buf: BytesMut,
    ) -> Option<Box<Session<C>>> {
        let step = within_login(
            &self.shared,
            self.deadline,
            handshake(&mut client, &mut buf, false),
        )
        .await;
        let request = match step {
            Ok(Handshake::Request(r)) => r,
            Ok(Handshake::Gone | Handshake::Tls) => return None,
            Err(e) => {
                tracing::debug!(peer = %self.peer, error = %e.message, "refused malformed startup");
                let _ = send_fatal(&mut client, &e).await;
                return None;
            }
        };
        self.finish(client, buf, request).await
    }

    /// Parses the packet the handshake left (refusing a malformed one),
    /// forwards a cancel request; checks a login (TLS required?, limits,
    /// authentication) and serves the admin console or starts a session.
    /// `None`: nothing more to serve.
    async fn finish<C: ClientStream>(
        self,
        client: C,
        buf: BytesMut,
        packet: BytesMut,
    ) -> Option<Box<Session<C>>> {
        // One place sends a refusal: the future keeps no result across it.
        let (mut client, e) = match self.admit(client, buf, &packet).await {
            Ok(session) => return session,
            Err(refused) => refused,
        };
        let _ = send_fatal(&mut client, &e).await;
        None
    }

    /// [`Self::finish`] up to the refusal it may send.
    async fn admit<C: ClientStream>(
        self,
        mut client: C,
        mut buf: BytesMut,
        packet: &BytesMut,
    ) -> Result<Option<Box<Session<C>>>, (C, ErrorMessage)> {
        let Login { peer, shared, .. } = &self;
        let request = match startup::parse(packet) {
            Ok(r) => r,
            Err(e) => {
                tracing::debug!(peer = %peer, error = %e, "refused malformed startup");
                return Err((client, ErrorMessage::fatal(e.sqlstate(), e.to_string())));
            }
        };
        let (minor, params) = match request {
            StartupRequest::Cancel { pid, key } => {
                // The client's connection stays open until this is done.
                let local = client.local_addr();
                // Boxed, as the console below: rare, and a login should not
                // carry room for them.
                Box::pin(crate::peering::serve_cancel(
                    shared,
                    pid,
                    key,
                    local,
                    peer.text().as_str(),
                ))
                .await;
                return Ok(None);
            }
            // The handshake answers these itself: not reached.
            StartupRequest::Ssl | StartupRequest::GssEnc => return Ok(None),
            StartupRequest::Startup { minor, params } => (minor, params),
        };
        let checked = within_login(
            shared,
            self.deadline,
            self.check(&mut client, &mut buf, params),
        )
        .await;
        let who = match checked {
            Ok(ok) => ok,
            Err(e) => return Err((client, e)),
        };
        let Login { peer, shared, .. } = self;
        if admin::console::is_console(who.database) {
            Box::pin(admin::console::serve(client, buf, &peer, shared, who.user)).await;
            return Ok(None);
        }
        Session::start(client, buf, &peer, shared, minor, params, who)
            .await
            .map(Some)
    }

    /// Checks that a client may log in: under `max_client_conn`, encrypted
    /// when TLS is required, allowed by `[client_auth]` and under the
    /// per-database and per-user limits.
    async fn check<'p, C: ClientStream>(
        &self,
        client: &mut C,
        buf: &mut BytesMut,
        params: StartupParams<'p>,
    ) -> Result<Checked<'p>, ErrorMessage> {
        let (peer, shared) = (&self.peer, &self.shared);
        let config = shared.config();
        let refuse = |e: ErrorMessage| {
            shared
                .metrics
                .client_limit_refusals
                .fetch_add(1, Ordering::Relaxed);
            e
        };
        if !self.admitted {
            return Err(refuse(ErrorMessage::fatal(
                sqlstate::TOO_MANY_CONNECTIONS,
                format!(
                    "sorry, too many clients already (listen.max_client_conn = {})",
                    config.listen.max_client_conn
                ),
            )));
        }
        let get = |k: &str| params.get(k).filter(|v| !v.is_empty());
        let Some(user) = get("user") else {
            return Err(ErrorMessage::fatal(
                sqlstate::INVALID_AUTHORIZATION,
                "no PostgreSQL user name specified in startup packet",
            ));
        };
        let database = get("database").unwrap_or(user);
        // Before authentication, as PgBouncer checks it.
        if shared.control.disabled(database) {
            return Err(ErrorMessage::fatal(
                sqlstate::OBJECT_NOT_IN_PREREQUISITE_STATE,
                format!("database does not allow connections: {database}"),
            )
            .with_hint("DISABLE on the pgwake admin console is in force; ENABLE ends it"));
        }
        if config.listen.client_tls_mode == pgwake_config::ClientTlsMode::Require
            && !self.encrypted
            && peer.origin.ip.is_some()
        {
            return Err(ErrorMessage::fatal(
                sqlstate::INVALID_AUTHORIZATION,
                format!(
                    "pgwake requires TLS (listen.client_tls_mode = \"require\"): connect with sslmode=require or stricter (host \"{}\", user \"{user}\", database \"{database}\")",
                    peer.origin.host()
                ),
            ));
        }
        let lookup = || crate::auth::query_secret(shared, user);
        let by_password = shared
            .client_auth
            .authenticate(
                client,
                buf,
                peer.origin,
                database,
                user,
                &shared.metrics,
                lookup,
            )
            .await?;
        // A login without a password names a user only: serve it only as
        // the configuration says, never as some other role by default.
        if !by_password && !admin::console::is_console(database) {
            if let Some(route) = config.route(database) {
                if !route.serves(user) {
                    return Err(not_served(&route, database, user));
                }
            }
        }
        let admission = shared
            .client_limits
            .admit(&config, database, user)
            .map_err(refuse)?;
        Ok(Checked {
            user,
            database,
            admission,
        })
    }
}

/// A login that passed its checks.
pub(super) struct Checked<'p> {
    /// The startup packet's user (never empty).
    pub user: &'p str,
    /// The database it asked for; its user's name when it named none.
    pub database: &'p str,
    /// Its place under the per-database and per-user limits, held until
    /// it leaves.
    pub admission: crate::auth::Admission,
}

/// What the client's first packets asked for.
enum Handshake {
    /// A packet that is not an SSLRequest or GSSENCRequest (a
    /// StartupMessage, a CancelRequest, or anything else of a valid length),
    /// unparsed: the login parses, checks and refuses it, in place.
    Request(BytesMut),
    /// An SSLRequest that was accepted (`S` sent): TLS starts now.
    Tls,
    /// The client left.
    Gone,
}

/// Reads startup packets until one that is not an encryption request
/// arrives, answering GSSENCRequest with `N` and SSLRequest with `S` when
/// `offer_tls` (else `N`).
async fn handshake<C: ClientStream>(
    client: &mut C,
    buf: &mut BytesMut,
    offer_tls: bool,
) -> Result<Handshake, ErrorMessage> {
    let malformed = |e: startup::StartupError| ErrorMessage::fatal(e.sqlstate(), e.to_string());
    // SSLRequest and GSSENCRequest may each come once before the startup message.
    for _ in 0..3 {
        let len = loop {
            if let Some(len) = startup::packet_len(buf).map_err(malformed)? {
                break len;
            }
            if !read_some(client, buf, 8).await? {
                return Ok(Handshake::Gone);
            }
        };
        while buf.len() < len {
            if !read_some(client, buf, len).await? {
                return Ok(Handshake::Gone);
            }
        }
        let packet = buf.split_to(len);
        if !startup::is_encryption_request(&packet) {
            // Parsed (and checked) once, by the login.
            return Ok(Handshake::Request(packet));
        }
        let request = startup::parse(&packet).map_err(malformed)?;
        if !buf.is_empty() {
            return Err(ErrorMessage::fatal(
                sqlstate::PROTOCOL_VIOLATION,
                "received unencrypted data after encryption request",
            ));
        }
        let tls = offer_tls && matches!(request, StartupRequest::Ssl);
        let answer = if tls {
            backend::ENCRYPTION_ACCEPTED
        } else {
            backend::ENCRYPTION_REFUSED
        };
        client.send(&[answer]).await.map_err(|_| closed())?;
        if tls {
            return Ok(Handshake::Tls);
        }
    }
    Err(ErrorMessage::fatal(
        sqlstate::PROTOCOL_VIOLATION,
        "too many encryption requests",
    ))
}

/// Reads at least one byte, reserving room for `want` bytes in total.
async fn read_some<C: ClientStream>(
    client: &mut C,
    buf: &mut BytesMut,
    want: usize,
) -> Result<bool, ErrorMessage> {
    // Room for a whole startup packet in one read (the buffer is short-lived).
    buf.reserve(want.saturating_sub(buf.len()).max(512));
    match client.read_buf(buf).await {
        Ok(0) | Err(_) => Ok(false),
        Ok(_) => Ok(true),
    }
}

/// The error for a client user the configuration does not serve.
fn not_served(route: &pgwake_config::Route<'_>, database: &str, user: &str) -> ErrorMessage {
    let server_user = route.user.unwrap_or_default();
    ErrorMessage::fatal(
        sqlstate::INVALID_AUTHORIZATION,
        format!("pgwake does not serve user \"{user}\" on database \"{database}\": clients log in as \"{server_user}\" (the server user){}", if route.client_users.is_empty() { String::new() } else { format!(" or one of {:?}", route.client_users) }),
    )
    .with_hint(format!("connect as \"{server_user}\", or list \"{user}\" in server.auth.client_users (or [databases.{database}] client_users) to serve it as \"{server_user}\""))
}
