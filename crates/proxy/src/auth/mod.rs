//! Client authentication (`[client_auth]`): which rule applies to a client,
//! the SCRAM-SHA-256 exchange (or MD5, for MD5 entries under `md5` rules)
//! against the user file, the cap on failed
//! logins per address, and the per-database and per-user connection limits.
//!
//! A failed login never says whether the user exists: unknown users go
//! through the same exchange against a mock verifier and fail the same way.

mod limits;
mod md5;
pub(crate) mod scram;
mod userlist;

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use bytes::{Buf, BytesMut};
use pgwake_config::{ClientAddress, ClientAuthMethod, Config};
use pgwake_protocol::backend::{self, ErrorMessage};
use pgwake_protocol::sqlstate;
use tokio::io::AsyncReadExt;

pub(crate) use limits::{Admission, ClientLimits};
use scram::{Binding, Exchange, Failure, Verifier};
use userlist::{Secret, Users};

use crate::client_io::{ClientOrigin, ClientStream};
use crate::stats::Metrics;

/// Largest SASL message a client may send.
const MAX_SASL_MESSAGE: usize = 8 * 1024;
/// Addresses whose failures are remembered at once; beyond this, expired
/// windows are dropped first and new addresses are not tracked.
const MAX_TRACKED_ADDRESSES: usize = 100_000;
const FAILURE_WINDOW: Duration = Duration::from_secs(60);

/// The rules and users in force; replaced whole on reload.
struct Rules {
    rules: Vec<(ClientAddress, pgwake_config::ClientAuthRule)>,
    /// Whether the rules are the configured ones (for naming them in errors).
    configured: bool,
    users: Users,
    max_failures: u32,
}

/// Rules and users read for a reload, not yet in force.
pub(crate) struct Prepared(Arc<Rules>);

pub(crate) struct ClientAuth {
    current: RwLock<Arc<Rules>>,
    failures: Mutex<HashMap<IpAddr, (Instant, u32)>>,
    /// Salts the mock verifiers of unknown users.
    mock_secret: [u8; 32],
}

impl ClientAuth {
    /// Reads the user file and the rules. The error names the file and line.
    pub fn new(config: &Config) -> Result<ClientAuth, String> {
        Ok(ClientAuth {
            current: RwLock::new(Arc::new(Rules::new(config)?)),
            failures: Mutex::new(HashMap::new()),
            mock_secret: rand::random(),
        })
    }

    /// Reads the user file and rules of `config` again, for [`Self::install`].
    pub fn prepare(config: &Config) -> Result<Prepared, String> {
        Ok(Prepared(Arc::new(Rules::new(config)?)))
    }

    /// Puts prepared rules in force for the clients that log in next.
    pub fn install(&self, rules: Prepared) {
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = rules.0;
    }

    fn rules(&self) -> Arc<Rules> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Runs the applicable method with the client. `Ok`: it may proceed
    /// (AuthenticationOk not yet sent), and whether it proved who it is with
    /// a password (a user the operator listed); `Err`: send the error and close.
    /// `lookup` asks `client_auth.query` for a user missing from the file.
    #[allow(clippy::too_many_arguments)]
    pub async fn authenticate<C: ClientStream, L: std::future::Future<Output = Option<String>>>(
        &self,
        client: &mut C,
        buf: &mut BytesMut,
        origin: ClientOrigin,
        database: &str,
        user: &str,
        metrics: &Metrics,
        lookup: impl FnOnce() -> L,
    ) -> Result<bool, ErrorMessage> {
        let rules = self.rules();
        // Only messages name the host: formatted when one is written.
        let host = origin;
        let Some((i, rule)) = rules
            .rules
            .iter()
            .enumerate()
            .find(|(_, (a, r))| {
                a.matches(origin.ip) && r.database.matches(database) && r.user.matches(user)
            })
            .map(|(i, (_, r))| (i, r))
        else {
            return Err(ErrorMessage::fatal(
                sqlstate::INVALID_AUTHORIZATION,
                format!("no client_auth rule allows host \"{host}\", user \"{user}\", database \"{database}\""),
            ));
        };
        match rule.method {
            ClientAuthMethod::Trust => Ok(false),
            ClientAuthMethod::Reject => {
                let which = if rules.configured {
                    format!("client_auth.rules[{i}]")
                } else {
                    "client_auth".to_owned()
                };
                Err(ErrorMessage::fatal(
                    sqlstate::INVALID_AUTHORIZATION,
                    format!("{which} rejects connection for host \"{host}\", user \"{user}\", database \"{database}\""),
                ))
            }
            // Boxed: an exchange's state is large and only a password
            // login needs it; a trust login's future stays small.
            method @ (ClientAuthMethod::ScramSha256 | ClientAuthMethod::Md5) => Box::pin(async {
                if let Some(wait) = origin
                    .ip
                    .and_then(|ip| self.blocked(ip, rules.max_failures))
                {
                    metrics.client_auth_blocked.fetch_add(1, Ordering::Relaxed);
                    return Err(ErrorMessage::fatal(
                        sqlstate::INVALID_AUTHORIZATION,
                        format!(
                            "too many failed logins from host \"{host}\"; try again in {} s (client_auth.max_failures_per_minute = {})",
                            wait.as_secs().max(1),
                            rules.max_failures
                        ),
                    ));
                }
                let queried;
                let secret = match rules.users.get(user) {
                    Some(s) => Some(s),
                    None => {
                        queried = match lookup().await.map(|t| Secret::from_text(&t)) {
                            Some(Ok(s)) => Some(s),
                            Some(Err(e)) => {
                                tracing::warn!(
                                    user,
                                    "client_auth.query returned {e} for this user"
                                );
                                None
                            }
                            None => None,
                        };
                        queried.as_ref()
                    }
                };
                let outcome = match (secret, method) {
                    (Some(Secret::Md5(hash)), ClientAuthMethod::Md5) => {
                        md5_exchange(client, buf, hash).await
                    }
                    (Some(Secret::Scram(v)), _) => scram_login(client, buf, v).await,
                    // Unknown users (and MD5 entries under SCRAM-only
                    // rules) go through the same exchange and fail alike.
                    _ => {
                        let mock = Verifier::mock(user.as_bytes(), &self.mock_secret);
                        scram_exchange(client, buf, &mock)
                            .await
                            .and(Err(Exchanged::Failed))
                    }
                };
                match outcome {
                    Ok(()) => Ok(true),
                    Err(Exchanged::Gone) => Err(closed()),
                    Err(Exchanged::Failed) => {
                        metrics.client_auth_failures.fetch_add(1, Ordering::Relaxed);
                        if let Some(ip) = origin.ip {
                            self.record_failure(ip);
                        }
                        let detail = match secret {
                            None => "no such user in client_auth.file or client_auth.query",
                            Some(Secret::Md5(_)) if method != ClientAuthMethod::Md5 => "the user's password is an MD5 hash, which only client_auth rules with method = \"md5\" accept",
                            Some(_) => "wrong password",
                        };
                        // Operators learn why; the client only that it failed.
                        tracing::info!(%host, user, database, reason = detail, "client login failed");
                        Err(ErrorMessage::fatal(
                            sqlstate::INVALID_PASSWORD,
                            format!("password authentication failed for user \"{user}\""),
                        ))
                    }
                    Err(Exchanged::Protocol(e)) => {
                        metrics.client_auth_failures.fetch_add(1, Ordering::Relaxed);
                        if let Some(ip) = origin.ip {
                            self.record_failure(ip);
                        }
                        Err(e)
                    }
                }
            })
            .await,
        }
    }

    /// How long `ip` must still wait, when it is over the cap.
    fn blocked(&self, ip: IpAddr, max: u32) -> Option<Duration> {
        if max == 0 {
            return None;
        }
        let failures = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        let (since, n) = failures.get(&ip.to_canonical())?;
        let elapsed = since.elapsed();
        (elapsed < FAILURE_WINDOW && *n >= max).then(|| FAILURE_WINDOW - elapsed)
    }

    fn record_failure(&self, ip: IpAddr) {
        let now = Instant::now();
        let mut failures = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        if failures.len() >= MAX_TRACKED_ADDRESSES {
            failures.retain(|_, (since, _)| now.duration_since(*since) < FAILURE_WINDOW);
        }
        let ip = ip.to_canonical();
        if failures.len() >= MAX_TRACKED_ADDRESSES && !failures.contains_key(&ip) {
            return;
        }
        let entry = failures.entry(ip).or_insert((now, 0));
        if now.duration_since(entry.0) >= FAILURE_WINDOW {
            *entry = (now, 0);
        }
        entry.1 = entry.1.saturating_add(1);
    }

    /// Users in the file, for the start-up log line.
    pub fn user_count(&self) -> usize {
        self.rules().users.len()
    }

    /// The names of the users in the file (SHOW USERS).
    pub fn user_names(&self) -> Vec<String> {
        self.rules().users.names().map(str::to_owned).collect()
    }
}

/// The password `client_auth.query` gives for `user`, if it is configured
/// and finds one. Failures are logged (naming the setting) and count as no
/// such user.
pub(crate) async fn query_secret(shared: &crate::Shared, user: &str) -> Option<String> {
    let config = shared.config();
    let auth = &config.client_auth;
    let sql = auth.query.as_deref()?;
    let role = auth
        .query_user
        .clone()
        .or_else(|| config.server.auth.user.clone())?;
    let dbname = auth
        .query_database
        .clone()
        .or_else(|| config.server.dbname.clone())
        .unwrap_or_else(|| "postgres".to_owned());
    let route = pgwake_config::Route {
        dbname: &dbname,
        user: Some(&role),
        mode: pgwake_config::PoolMode::Transaction,
        size: 2,
        min_idle: 0,
        client_users: &[],
        any_client_user: false,
        // The lookup runs on `[server]`.
        own_server: false,
    };
    let key = crate::pool::PoolKeyRef {
        database: &dbname,
        dbname: &dbname,
        user: &role,
    };
    let pool = shared.pool(key, &dbname, &route, false);
    let mut conn = match pool.checkout_quiet().await {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(error = %e, "client_auth.query: no server connection");
            return None;
        }
    };
    let row = conn
        .conn
        .query_row(sql, &[user], std::time::Duration::from_secs(10))
        .await;
    pool.checkin(conn);
    match row {
        Ok(Ok(row)) => row?.pop().flatten(),
        Ok(Err(e)) => {
            tracing::warn!(error = %e.message, code = %e.code, "client_auth.query failed on the server");
            None
        }
        Err(e) => {
            tracing::warn!(error = %e, "client_auth.query failed");
            None
        }
    }
}

impl Rules {
    fn new(config: &Config) -> Result<Rules, String> {
        let auth = &config.client_auth;
        let mut rules = Vec::new();
        for (i, r) in auth.effective_rules().into_iter().enumerate() {
            let a = r
                .client_address()
                .map_err(|e| format!("client_auth.rules[{i}].address = {e}"))?;
            rules.push((a, r));
        }
        let users = match &auth.file {
            Some(path) => Users::load(path)?,
            None => Users::default(),
        };
        let md5_rule = rules.iter().any(|(_, r)| r.method == ClientAuthMethod::Md5);
        for user in users.md5_users() {
            // The user, never the hash.
            tracing::warn!(
                "client_auth.file: user {user:?} has an MD5 password hash, which logs in with the MD5 challenge under client_auth rules with method = \"md5\"{}; MD5 is weak (the hash works as the password for anyone who reads the file): give the user a SCRAM-SHA-256 verifier (pg_authid.rolpassword under password_encryption = 'scram-sha-256') or its password instead",
                if md5_rule { "" } else { " (no rule has it, so this user cannot log in)" }
            );
        }
        Ok(Rules {
            rules,
            configured: !auth.rules.is_empty(),
            users,
            max_failures: auth.max_failures_per_minute,
        })
    }
}

enum Exchanged {
    /// The client left (psql does, to ask for a password, then comes back).
    Gone,
    /// The exchange broke the protocol: tell the client so.
    Protocol(ErrorMessage),
    /// Wrong password (or unknown user).
    Failed,
}

/// Runs SCRAM-SHA-256 to the end: `Ok` once the client proved it knows
/// the password and was sent the server's final message.
async fn scram_login<C: ClientStream>(
    client: &mut C,
    buf: &mut BytesMut,
    verifier: &Verifier,
) -> Result<(), Exchanged> {
    let server_final = scram_exchange(client, buf, verifier).await?;
    let mut out = BytesMut::new();
    backend::auth_sasl_final(&mut out, server_final.as_bytes());
    client.send(&out).await.map_err(|_| Exchanged::Gone)
}

/// The MD5 challenge: a random salt, and the client's PasswordMessage
/// checked against the user's MD5 hash.
async fn md5_exchange<C: ClientStream>(
    client: &mut C,
    buf: &mut BytesMut,
    hash: &md5::Md5Hash,
) -> Result<(), Exchanged> {
    let salt: [u8; 4] = rand::random();
    let mut out = BytesMut::new();
    backend::auth_md5(&mut out, salt);
    client.send(&out).await.map_err(|_| Exchanged::Gone)?;
    let answer = read_password_message(client, buf).await?;
    // A PasswordMessage is one C string.
    let Some((0, text)) = answer.split_last() else {
        return Err(Exchanged::Protocol(ErrorMessage::fatal(
            sqlstate::PROTOCOL_VIOLATION,
            "malformed password message: no terminating zero byte",
        )));
    };
    if hash.accepts(salt, text) {
        Ok(())
    } else {
        Err(Exchanged::Failed)
    }
}

/// Runs SCRAM-SHA-256 up to the server-final message, which is returned.
async fn scram_exchange<C: ClientStream>(
    client: &mut C,
    buf: &mut BytesMut,
    verifier: &Verifier,
) -> Result<String, Exchanged> {
    let mut out = BytesMut::new();
    // Over TLS, the exchange can also be bound to the certificate.
    let end_point = client.channel_binding().map(<[u8]>::to_vec);
    if end_point.is_some() {
        backend::auth_sasl(&mut out, &[scram::MECHANISM_PLUS, scram::MECHANISM]);
    } else {
        backend::auth_sasl(&mut out, &[scram::MECHANISM]);
    }
    client.send(&out).await.map_err(|_| Exchanged::Gone)?;
    let mut initial = read_password_message(client, buf).await?;
    // SASLInitialResponse: mechanism name, then the length-prefixed data.
    let mechanism =
        take_cstr(&mut initial).ok_or_else(|| protocol("malformed SASLInitialResponse"))?;
    let binding = match (&mechanism[..], &end_point) {
        (m, None) if m == scram::MECHANISM.as_bytes() => Some(Binding::NotOffered),
        (m, Some(_)) if m == scram::MECHANISM.as_bytes() => Some(Binding::Declined),
        (m, Some(data)) if m == scram::MECHANISM_PLUS.as_bytes() => Some(Binding::Plus(data)),
        _ => None,
    };
    let Some(binding) = binding else {
        return Err(Exchanged::Protocol(ErrorMessage::fatal(
            sqlstate::PROTOCOL_VIOLATION,
            "client selected an invalid SASL authentication mechanism",
        )));
    };
    if initial.len() < 4 {
        return Err(protocol("malformed SASLInitialResponse"));
    }
    let len = initial.get_i32();
    if usize::try_from(len).ok() != Some(initial.len()) {
        return Err(protocol("malformed SASLInitialResponse"));
    }
    let (exchange, server_first) =
        Exchange::start(&initial, verifier, rand::random(), binding).map_err(failure)?;
    out.clear();
    backend::auth_sasl_continue(&mut out, server_first.as_bytes());
    client.send(&out).await.map_err(|_| Exchanged::Gone)?;
    let last = read_password_message(client, buf).await?;
    exchange.finish(&last, verifier).map_err(failure)
}

fn failure(f: Failure) -> Exchanged {
    match f {
        Failure::Malformed(m) => protocol(m),
        Failure::ChannelBinding => Exchanged::Protocol(ErrorMessage::fatal(
            sqlstate::PROTOCOL_VIOLATION,
            "channel binding requested on a connection that does not offer it: pgwake offers SCRAM-SHA-256-PLUS over TLS only",
        )),
        Failure::Downgrade => Exchanged::Protocol(ErrorMessage::fatal(
            sqlstate::PROTOCOL_VIOLATION,
            "SCRAM channel binding negotiation error: the client supports channel binding but thinks the server does not, yet this connection offered it",
        )),
        Failure::WrongPassword => Exchanged::Failed,
    }
}

fn protocol(message: &str) -> Exchanged {
    Exchanged::Protocol(ErrorMessage::fatal(
        sqlstate::PROTOCOL_VIOLATION,
        format!("malformed SCRAM message: {message}"),
    ))
}

fn closed() -> ErrorMessage {
    ErrorMessage::fatal(sqlstate::CONNECTION_FAILURE, "client closed the connection")
}

/// Reads one `p` message (PasswordMessage/SASLResponse) and returns its body.
async fn read_password_message<C: ClientStream>(
    client: &mut C,
    buf: &mut BytesMut,
) -> Result<BytesMut, Exchanged> {
    loop {
        match pgwake_protocol::frame::frame_len(buf, MAX_SASL_MESSAGE) {
            Err(_) => return Err(protocol("message too long")),
            Ok(Some(len)) if buf.len() >= len => {
                let mut frame = buf.split_to(len);
                return match frame[0] {
                    b'p' => {
                        frame.advance(pgwake_protocol::HEADER_LEN);
                        Ok(frame)
                    }
                    // Terminate: the client gave up.
                    b'X' => Err(Exchanged::Gone),
                    other => Err(Exchanged::Protocol(ErrorMessage::fatal(
                        sqlstate::PROTOCOL_VIOLATION,
                        format!(
                            "expected SASL response or password message, got message type {:?}",
                            char::from(other)
                        ),
                    ))),
                };
            }
            Ok(_) => {}
        }
        buf.reserve(512);
        match client.read_buf(buf).await {
            Ok(0) | Err(_) => return Err(Exchanged::Gone),
            Ok(_) => {}
        }
    }
}

fn take_cstr(b: &mut BytesMut) -> Option<BytesMut> {
    let end = b.iter().position(|&c| c == 0)?;
    let s = b.split_to(end);
    b.advance(1);
    Some(s)
}
