//! `pgwake doctor`: reaches the server the way the pool does, with the
//! effective configuration, timing every phase, and says in one line which
//! phase is slow (or failed) and what usually causes it.
//!
//! The phases run in the order their results are needed: the provider's
//! state first (a stopped server is not logged in to), then the token (a
//! login needs it), then DNS, TCP, TLS and authentication in one
//! [`ServerConn::connect_phased`], then `SELECT 1`. The report lists them in
//! the order a connection goes through them. Every phase is bounded:
//! connecting and the query by `server.connect_timeout`, the token by
//! `server.auth.fetch_timeout`, the provider by both added up.

use std::time::{Duration, Instant};

use pgwake_config::{AuthMethod, Config, SslMode};
use pgwake_credentials::Secret;
use pgwake_lifecycle::ServerState;
use pgwake_protocol::sqlstate;

use crate::server::{ConnectError, ConnectPhase, ConnectPhases, ServerConn, Target};

mod report;
use report::limit;
pub use report::{human, Outcome, Phase, Report, Row};

/// Times every phase of reaching the server with `config`. `loaded_in` and
/// `source` describe how the configuration was loaded (the first row).
/// Never prints a secret: details and the verdict name sources, not values,
/// and any secret text that still shows up is replaced by `<redacted>`.
pub async fn diagnose(config: &Config, loaded_in: Duration, source: &str) -> Report {
    let mut secrets: Vec<Secret> = [
        &config.server.auth.password,
        &config.server.auth.client_secret,
    ]
    .into_iter()
    .flatten()
    .cloned()
    .collect();
    if let Some(c) = config.server.auth.command.as_deref() {
        // The command may carry a secret inline; the report never quotes it.
        secrets.push(Secret::new(c));
    }
    let mut d = Doctor {
        config,
        rows: Vec::new(),
        asleep: None,
        starting: None,
    };
    d.push(Row::ok(Phase::Config, loaded_in, source));
    d.provider().await;
    let password = d.token(&mut secrets).await;
    d.connect(password).await;
    d.rows.sort_by_key(|r| r.phase as u8);
    let asleep = d
        .asleep
        .as_deref()
        .map(|s| (s, config.lifecycle.wake_timeout));
    let verdict = report::verdict(&d.rows, asleep);
    let mut report = Report {
        rows: d.rows,
        verdict,
    };
    for r in &mut report.rows {
        r.detail = redact(&r.detail, &secrets);
    }
    report.verdict = redact(&report.verdict, &secrets);
    report
}

/// Replaces every secret of four characters or more in `text`; shorter ones
/// would garble the report, and nothing here prints secrets on purpose.
fn redact(text: &str, secrets: &[Secret]) -> String {
    let mut out = text.to_string();
    for s in secrets {
        let v = s.expose().trim();
        if v.len() >= 4 && out.contains(v) {
            out = out.replace(v, "<redacted>");
        }
    }
    out
}

struct Doctor<'a> {
    config: &'a Config,
    rows: Vec<Row>,
    /// The provider says the server is stopped (or stopping): its words.
    asleep: Option<String>,
    /// The provider says the server is starting or busy: its words.
    starting: Option<String>,
}

/// The secret to log in with; `Err` when the source could not yield one (the
/// connect still runs, so DNS, TCP and TLS are diagnosed all the same).
type Password = Result<Option<Secret>, ()>;

impl Doctor<'_> {
    fn push(&mut self, row: Row) {
        self.rows.push(row);
    }

    async fn provider(&mut self) {
        let c = self.config;
        if c.lifecycle.provider == pgwake_config::ProviderKind::None {
            return;
        }
        let bound = c.server.auth.fetch_timeout + c.server.connect_timeout;
        let began = Instant::now();
        let (lifecycle, arm_tokens) = match crate::wake::from_config(c) {
            Ok((Some(l), t)) => (l, t),
            Ok((None, _)) => return,
            Err(e) => {
                self.push(Row::failed(Phase::Provider, None, e, "check [lifecycle]"));
                return;
            }
        };
        let refresher = arm_tokens.map(|t| tokio::spawn(t.run()));
        let state = tokio::time::timeout(bound, lifecycle.state()).await;
        if let Some(r) = refresher {
            r.abort();
        }
        let took = began.elapsed();
        let who = lifecycle.describe();
        let row = match state {
            Ok(Ok(s)) => {
                let detail = match &s {
                    ServerState::Ready => format!("{who}: ready"),
                    ServerState::Stopped | ServerState::Stopping => {
                        self.asleep = Some(s.name().to_string());
                        format!(
                            "{who}: {} (pgwake starts it when a client arrives; login phases skipped)",
                            s.name()
                        )
                    }
                    ServerState::Starting | ServerState::Busy(_) => {
                        self.starting = Some(s.name().to_string());
                        format!("{who}: {}", s.name())
                    }
                    ServerState::Other(w) => {
                        format!("{who}: {w} (pgwake cannot start a server in this state)")
                    }
                };
                Row::ok(Phase::Provider, took, detail)
            }
            Ok(Err(e)) => Row::failed(
                Phase::Provider,
                Some(took),
                e.to_string(),
                match c.lifecycle.provider {
                    pgwake_config::ProviderKind::Azure => "pgwake cannot tell whether the server is stopped, so it cannot wake it: check lifecycle.resource_id and that the identity may read it (Microsoft.DBforPostgreSQL/flexibleServers/read)",
                    _ => "pgwake cannot tell whether the server is stopped, so it cannot wake it: check [lifecycle.command] status",
                },
            ),
            Err(_) => Row::failed(
                Phase::Provider,
                Some(took),
                format!("{who}: no answer within {}", limit(bound)),
                "the provider did not answer (ARM unreachable, or the status command hangs)",
            ),
        };
        self.push(row);
    }

    /// The secret for the login, timing the configured source the way the
    /// pool gets it: a token source's refresher fetches its first token and
    /// the login waits for it.
    async fn token(&mut self, secrets: &mut Vec<Secret>) -> Password {
        let auth = &self.config.server.auth;
        let method = auth.effective_method();
        // A command's text is not shown (it may carry a secret inline).
        let began = Instant::now();
        let creds = match crate::credentials::from_config(auth) {
            Ok(c) => c,
            Err(e) => {
                self.push(Row::failed(
                    Phase::Token,
                    None,
                    format!("{}: {}", method.name(), e.reason),
                    "check [server.auth]",
                ));
                return Err(());
            }
        };
        let name = match method {
            AuthMethod::Command => "command".to_string(),
            _ => creds.source.describe(),
        };
        let bound = auth.fetch_timeout;
        let refresher = creds.refresher.clone().map(|c| tokio::spawn(c.run()));
        let got = tokio::time::timeout(
            bound + Duration::from_millis(500),
            creds.source.secret(bound),
        )
        .await;
        if let Some(r) = refresher {
            r.abort();
        }
        let took = began.elapsed();
        let hint = match method {
            AuthMethod::Command => "the token command failed or took longer than server.auth.fetch_timeout: run it by hand as pgwake's user",
            m if m.is_azure() => "the identity endpoint (IMDS, or App Service/Container Apps' IDENTITY_ENDPOINT) did not give a token: check the identity is assigned and server.auth.client_id",
            _ => "check [server.auth]",
        };
        match got {
            Ok(Ok(secret)) => {
                if let Some(s) = &secret {
                    secrets.push(s.clone());
                }
                let detail = match (&secret, &creds.refresher) {
                    (None, _) => format!("{}: no password", method.name()),
                    (Some(_), None) if method == AuthMethod::Password => {
                        "password from the configuration".to_string()
                    }
                    (Some(_), Some(cache)) => match cache.stats().expires_at {
                        Some(at) => format!(
                            "{name}: token fetched, expires in {}",
                            humantime::format_duration(Duration::from_secs(
                                at.duration_since(std::time::SystemTime::now())
                                    .unwrap_or_default()
                                    .as_secs()
                            ))
                        ),
                        None => format!("{name}: token fetched (no expiry given)"),
                    },
                    (Some(_), None) => format!("{name}: password read"),
                };
                self.push(Row::ok(Phase::Token, took, detail));
                Ok(secret)
            }
            Ok(Err(e)) => {
                self.push(Row::failed(
                    Phase::Token,
                    Some(took),
                    format!("{name}: {}", e.reason),
                    hint,
                ));
                Err(())
            }
            Err(_) => {
                self.push(Row::failed(
                    Phase::Token,
                    Some(took),
                    format!("{name}: no token within {}", limit(bound)),
                    hint,
                ));
                Err(())
            }
        }
    }

    /// The server database and user the pool would log in with.
    fn login_names(&self) -> (String, String, bool) {
        let c = self.config;
        let route = match &c.server.dbname {
            Some(db) => Some((db.clone(), c.server.auth.user.clone())),
            None => c
                .databases
                .keys()
                .next()
                .and_then(|name| c.route(name))
                .map(|r| (r.dbname.to_owned(), r.user.map(str::to_owned))),
        };
        let (db, user) = route.unwrap_or((String::new(), c.server.auth.user.clone()));
        let db = if db.is_empty() { "postgres".into() } else { db };
        match user {
            Some(u) => (db, u, true),
            None => (db, "postgres".into(), false),
        }
    }

    async fn connect(&mut self, password: Password) {
        let c = self.config;
        let target = match Target::from_config(&c.server) {
            Ok(t) => t,
            Err(e) => {
                self.push(Row::failed(
                    Phase::Tls,
                    None,
                    e,
                    "check server.sslmode and server.sslrootcert",
                ));
                for p in [Phase::Dns, Phase::Tcp, Phase::Auth, Phase::Query] {
                    self.push(Row::skipped(p, None, "no TLS settings"));
                }
                return;
            }
        };
        if let Some(state) = self.asleep.clone() {
            // Resolving the name costs nothing and the server need not be up.
            let began = Instant::now();
            let resolved =
                tokio::time::timeout(target.connect_timeout, crate::server::resolve(&target)).await;
            let took = began.elapsed();
            match resolved {
                Ok(Ok(addrs)) => self.push(Row::ok(
                    Phase::Dns,
                    took,
                    dns_detail(&target.host, addrs.first().copied()),
                )),
                Ok(Err(e)) => self.push(dns_failed(&target, took, &e)),
                Err(_) => self.push(dns_failed(
                    &target,
                    took,
                    &ConnectError::Timeout {
                        host: target.host.clone(),
                        port: target.port,
                        timeout: target.connect_timeout,
                    },
                )),
            }
            let why = format!("the server is {state}");
            for p in [Phase::Tcp, Phase::Tls, Phase::Auth, Phase::Query] {
                self.push(Row::skipped(p, None, why.clone()));
            }
            return;
        }
        let (dbname, user, user_configured) = self.login_names();
        let no_token = password.is_err();
        let mut phases = ConnectPhases::default();
        let began = Instant::now();
        let result = ServerConn::connect_phased(
            &target,
            &dbname,
            &user,
            password.unwrap_or(None),
            &mut phases,
        )
        .await;
        // The phase that ended the attempt took what the completed ones did not.
        let spent = [phases.dns, phases.tcp, phases.tls, phases.auth]
            .into_iter()
            .flatten()
            .sum::<Duration>();
        let rest = began.elapsed().saturating_sub(spent);
        if let Some(t) = phases.dns {
            self.push(Row::ok(
                Phase::Dns,
                t,
                dns_detail(&target.host, phases.addr),
            ));
        }
        if let Some(t) = phases.tcp {
            let addr = phases.addr.map_or_else(
                || format!("{}:{}", target.host, target.port),
                |a| a.to_string(),
            );
            self.push(Row::ok(Phase::Tcp, t, format!("connected to {addr}")));
        }
        let mode = sslmode_name(target.sslmode);
        let mut conn = match result {
            Ok(conn) => conn,
            Err(e) => {
                let failed = phases.phase.unwrap_or(ConnectPhase::Dns);
                if no_token && matches!(e, ConnectError::NoPassword) {
                    self.push(tls_row(&phases, None, mode));
                    self.push(Row::skipped(
                        Phase::Auth,
                        Some(rest),
                        "no password or token to log in with (see token)",
                    ));
                } else {
                    if failed == ConnectPhase::Auth {
                        self.push(tls_row(&phases, None, mode));
                    }
                    self.push(self.connect_failed(failed, rest, &e, &target, &user));
                }
                let after = match failed {
                    ConnectPhase::Dns => &[Phase::Tcp, Phase::Tls, Phase::Auth, Phase::Query][..],
                    ConnectPhase::Tcp => &[Phase::Tls, Phase::Auth, Phase::Query][..],
                    ConnectPhase::Tls => &[Phase::Auth, Phase::Query][..],
                    ConnectPhase::Auth => &[Phase::Query][..],
                };
                let why = format!("{} failed", failed_phase(failed).label());
                for &p in after {
                    self.push(Row::skipped(p, None, why.clone()));
                }
                return;
            }
        };
        self.push(tls_row(&phases, Some(conn.is_tls()), mode));
        let version = conn
            .params
            .get("server_version")
            .map_or_else(String::new, |v| format!(", PostgreSQL {v}"));
        let note = if user_configured {
            ""
        } else {
            " (server.auth.user is unset: pgwake uses each client's user name; doctor tried postgres)"
        };
        self.push(Row::ok(
            Phase::Auth,
            phases.auth.unwrap_or_default(),
            format!("logged in as {user} to database {dbname}{version}{note}"),
        ));
        let began = Instant::now();
        let answer = conn.run_internal("SELECT 1", target.connect_timeout).await;
        let took = began.elapsed();
        self.push(match answer {
            Ok(None) => Row::ok(Phase::Query, took, "SELECT 1 answered"),
            Ok(Some(e)) => Row::failed(
                Phase::Query,
                Some(took),
                format!("SELECT 1: {} ({})", e.message, e.code),
                "the server accepted the login but cannot run a query: see its log",
            ),
            Err(e) => Row::failed(
                Phase::Query,
                Some(took),
                format!("SELECT 1: {e}"),
                "a busy server, or the connection was cut (server log, network)",
            ),
        });
        conn.terminate().await;
    }

    fn connect_failed(
        &self,
        failed: ConnectPhase,
        took: Duration,
        e: &ConnectError,
        target: &Target,
        user: &str,
    ) -> Row {
        let phase = failed_phase(failed);
        let at = format!("{}:{}", target.host, target.port);
        if let ConnectError::Timeout { timeout, .. } = e {
            let detail = format!(
                "no answer from {at} within {} (server.connect_timeout)",
                limit(*timeout)
            );
            let hint = match failed {
                ConnectPhase::Dns => Phase::Dns.usual_cause().to_string(),
                ConnectPhase::Tcp => format!(
                    "packets to {at} are dropped on the way: a firewall or network security group, a missing route or private endpoint, or a server that is stopped{}",
                    self.starting_note()
                ),
                ConnectPhase::Tls => "the server accepted TCP but did not answer the SSLRequest or finish the TLS handshake: an overloaded server, or something in between that holds or breaks TLS".to_string(),
                ConnectPhase::Auth => format!("the server did not finish the login: {}", Phase::Auth.usual_cause()),
            };
            return Row::failed(phase, Some(took), detail, hint);
        }
        match (failed, e) {
            (ConnectPhase::Dns, _) => dns_failed(target, took, e),
            (ConnectPhase::Tcp, ConnectError::Unreachable { reason, refused, .. }) => {
                let reason = reason
                    .split(" (os error")
                    .next()
                    .unwrap_or(reason)
                    .to_lowercase();
                let hint = if *refused {
                    format!(
                        "the server is not listening there (wrong port, stopped server, or firewall){}",
                        self.starting_note()
                    )
                } else {
                    format!(
                        "check the network path to {at}: routes, firewall or network security group, private endpoint{}",
                        self.starting_note()
                    )
                };
                Row::failed(phase, Some(took), format!("{reason} to {at}"), hint)
            }
            (ConnectPhase::Tls, ConnectError::TlsRequired { .. }) => Row::failed(
                phase,
                Some(took),
                format!("the server does not accept TLS, and sslmode = {}", sslmode_name(target.sslmode)),
                "enable SSL on the server, or set server.sslmode = \"prefer\" (or \"disable\") if plaintext is acceptable on this network",
            ),
            (ConnectPhase::Tls, ConnectError::Tls { reason, .. }) => Row::failed(
                phase,
                Some(took),
                reason.clone(),
                "check the server's certificate against server.sslmode and server.sslrootcert (verify-full also checks the host name)",
            ),
            (ConnectPhase::Auth, ConnectError::Server(err)) => {
                let detail = format!("{} ({})", err.message, err.code);
                let hint = match err.code.as_str() {
                    sqlstate::INVALID_PASSWORD => format!(
                        "the server refused the password/credentials of user {user}: check server.auth (the user, and the password or token source it uses)"
                    ),
                    sqlstate::INVALID_AUTHORIZATION => format!(
                        "the server does not let user {user} in: check pg_hba.conf (or the Entra role set-up) and server.auth.user"
                    ),
                    "3D000" => "check server.dbname and [databases]".to_string(),
                    sqlstate::CANNOT_CONNECT_NOW => "the server is starting up or shutting down: pgwake retries such logins; try again shortly".to_string(),
                    "53300" => "the server has no free connection slots: lower pool.size across pgwake replicas, or raise max_connections".to_string(),
                    _ => "the server refused the login: see its log".to_string(),
                };
                Row::failed(phase, Some(took), detail, hint)
            }
            (ConnectPhase::Auth, ConnectError::NoPassword) => Row::failed(
                phase,
                Some(took),
                "the server asked for a password, and server.auth has none",
                "set server.auth.password (or PGWAKE_SERVER_AUTH_PASSWORD), or a token source with server.auth.method",
            ),
            (ConnectPhase::Tls, ConnectError::Unreachable { reason, .. }) => {
                let hint = if reason.contains("SSLRequest") {
                    format!("what answers at {at} is not PostgreSQL (an HTTP server or a proxy?): check server.host and server.port")
                } else {
                    "the connection broke while negotiating TLS: see the server's log".to_string()
                };
                Row::failed(phase, Some(took), reason.clone(), hint)
            }
            _ => Row::failed(
                phase,
                Some(took),
                e.to_string(),
                match failed {
                    ConnectPhase::Auth => "the login broke off: see the server's log",
                    _ => "see the server's log",
                },
            ),
        }
    }

    fn starting_note(&self) -> String {
        match &self.starting {
            Some(s) => format!("; the provider says the server is {s}: pgwake makes clients wait for it (lifecycle.wake_timeout)"),
            None => String::new(),
        }
    }
}

fn failed_phase(p: ConnectPhase) -> Phase {
    match p {
        ConnectPhase::Dns => Phase::Dns,
        ConnectPhase::Tcp => Phase::Tcp,
        ConnectPhase::Tls => Phase::Tls,
        ConnectPhase::Auth => Phase::Auth,
    }
}

fn sslmode_name(m: SslMode) -> &'static str {
    match m {
        SslMode::Disable => "disable",
        SslMode::Prefer => "prefer",
        SslMode::Require => "require",
        SslMode::VerifyCa => "verify-ca",
        SslMode::VerifyFull => "verify-full",
    }
}

fn dns_detail(host: &str, addr: Option<std::net::SocketAddr>) -> String {
    let to = addr.map_or_else(|| "?".into(), |a| a.to_string());
    if host.parse::<std::net::IpAddr>().is_ok() {
        format!("{host} -> {to} (an IP address: no lookup)")
    } else {
        format!("{host} -> {to}")
    }
}

fn dns_failed(target: &Target, took: Duration, e: &ConnectError) -> Row {
    let detail = match e {
        ConnectError::Unreachable { reason, .. } => format!("{}: {reason}", target.host),
        other => format!("{}: {other}", target.host),
    };
    Row::failed(
        Phase::Dns,
        Some(took),
        detail,
        "check server.host and the resolver: a private DNS zone must be linked to this network, and a private endpoint needs its DNS record",
    )
}

/// The TLS row once the connect got past TLS (`is_tls` known) or failed
/// after it (`None`: the login failed, so the stream is gone).
fn tls_row(phases: &ConnectPhases, is_tls: Option<bool>, mode: &str) -> Row {
    match phases.tls {
        None => Row::skipped(Phase::Tls, None, format!("sslmode = {mode}")),
        Some(t) => match is_tls {
            Some(false) => Row::skipped(
                Phase::Tls,
                Some(t),
                format!("the server did not use TLS; plaintext (sslmode = {mode})"),
            ),
            Some(true) => Row::ok(Phase::Tls, t, format!("encrypted (sslmode = {mode})")),
            None => Row::ok(Phase::Tls, t, format!("done (sslmode = {mode})")),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_redacted_wherever_they_show_up() {
        let secrets = [Secret::new("hunter22"), Secret::new("abc")];
        assert_eq!(
            redact("command `echo hunter22` failed: abc", &secrets),
            "command `echo <redacted>` failed: abc"
        );
    }
}
