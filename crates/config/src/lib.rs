#![forbid(unsafe_code)]
//! pgwake's configuration: plain data, built from a TOML file, an optional
//! server URL and `PGWAKE_<SECTION>_<KEY>` environment overrides, all passed
//! in as arguments so tests never touch the process environment.
//!
//! Every key has a default; unknown keys are rejected with their path; all
//! problems in a file are reported together, not one per attempt.

mod load;
mod secret_serde;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

pub use load::{load, ConfigErrors};
use pgwake_credentials::Secret;
use serde::{Deserialize, Serialize};

/// The whole configuration.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub listen: Listen,
    pub server: Server,
    pub pool: Pool,
    /// Client database name → where and how it is pooled. Empty: every client
    /// database name maps to the server database of the same name.
    pub databases: BTreeMap<String, Database>,
    pub lifecycle: Lifecycle,
    pub admin: Admin,
    pub timeouts: Timeouts,
    pub log: Log,
    pub client_auth: ClientAuth,
    pub peering: Peering,
}

/// Cancels across replicas: a cancel request for a key another replica
/// issued is forwarded to that replica. Several replicas behind one load
/// balancer each see a random share of cancel requests; without peering,
/// those for another replica's clients are dropped. On when `peers` or
/// `service` is set.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Peering {
    /// The replicas' client listener addresses as `host:port` (this
    /// replica's own may be listed, so every replica can share one list).
    /// Env: comma-separated.
    pub peers: Vec<String>,
    /// A DNS name and port (`pgwake-peers:6432`, a Kubernetes headless
    /// Service) whose every A/AAAA record is a replica; resolved when a
    /// cancel must be forwarded and kept for a few seconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
}

impl Peering {
    /// Whether cancels are forwarded between replicas.
    pub fn enabled(&self) -> bool {
        !self.peers.is_empty() || self.service.is_some()
    }
}

/// Splits `host:port` (`[v6]:port` for an IPv6 address) into its parts.
pub fn parse_host_port(text: &str) -> Result<(String, u16), String> {
    let shape = || format!("{text:?} is not host:port (like 10.0.0.5:6432 or pgwake-peers:6432)");
    let (host, port) = text.rsplit_once(':').ok_or_else(shape)?;
    let host = match host.strip_prefix('[') {
        Some(v6) => v6.strip_suffix(']').ok_or_else(shape)?,
        None if host.contains(':') => return Err(shape()),
        None => host,
    };
    let port: u16 = port.parse().map_err(|_| shape())?;
    let name_ok = host
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | ':'));
    if host.is_empty() || port == 0 || !name_ok {
        return Err(shape());
    }
    Ok((host.to_owned(), port))
}

/// The admin HTTP server (metrics, health) and who may use the admin console.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Admin {
    /// Address of the HTTP server for `/metrics`, `/healthz` and `/readyz`.
    /// Empty: no HTTP server.
    pub addr: String,
    /// Users who may connect to the admin console (database `pgwake` or
    /// `pgbouncer`) and run every command. When this and `stats_users` are
    /// both empty, any client on loopback or the unix socket may; clients
    /// from elsewhere never may.
    pub admin_users: Vec<String>,
    /// Users who may connect to the admin console and run `SHOW` commands only.
    pub stats_users: Vec<String>,
}

impl Admin {
    /// The HTTP address (`localhost` means 127.0.0.1); `None` when invalid.
    pub fn socket_addr(&self) -> Option<SocketAddr> {
        self.addr
            .replacen("localhost:", "127.0.0.1:", 1)
            .parse()
            .ok()
    }
}

impl Default for Admin {
    fn default() -> Self {
        Admin {
            addr: "127.0.0.1:9930".into(),
            admin_users: Vec::new(),
            stats_users: Vec::new(),
        }
    }
}

/// Limits on how long clients may keep things waiting. Unset: no limit.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Timeouts {
    /// A query running longer is cancelled (SQLSTATE 57014).
    #[serde(
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none",
        default
    )]
    pub query_timeout: Option<Duration>,
    /// A client idle this long inside a transaction has it rolled back and
    /// is disconnected (SQLSTATE 25P03); its server connection is kept.
    #[serde(
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none",
        default
    )]
    pub idle_transaction_timeout: Option<Duration>,
    /// A client idle this long outside a transaction is disconnected
    /// (SQLSTATE 57P05).
    #[serde(
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none",
        default
    )]
    pub client_idle_timeout: Option<Duration>,
}

/// Where clients connect.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Listen {
    /// TCP address. Beyond loopback (`0.0.0.0:6432` for a shared service),
    /// clients from elsewhere must authenticate: see `[client_auth]`.
    pub addr: String,
    /// Directory for a unix socket `.s.PGSQL.<port>` (as PostgreSQL names it,
    /// so `psql -h DIR -p PORT` works). Unset: no unix socket.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unix_socket_dir: Option<PathBuf>,
    /// Client connections beyond this get SQLSTATE 53300.
    pub max_client_conn: usize,
    /// Client connections per client database name beyond this get SQLSTATE
    /// 53300 (`[databases.NAME] max_client_conn` overrides it). 0: no limit.
    pub max_client_conn_per_database: usize,
    /// Client connections per user name beyond this get SQLSTATE 53300.
    /// 0: no limit.
    pub max_client_conn_per_user: usize,
    /// A client that has not finished its startup (TLS and authentication
    /// included) within this is disconnected.
    #[serde(with = "humantime_serde")]
    pub client_login_timeout: Duration,
    /// TLS for clients: `disable`, `allow`/`prefer` (encrypt when the client
    /// asks) or `require` (refuse unencrypted TCP clients; the unix socket
    /// is exempt).
    pub client_tls_mode: ClientTlsMode,
    /// PEM certificate chain presented to clients; re-read on reload.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_tls_cert: Option<PathBuf>,
    /// PEM private key of `client_tls_cert`; re-read on reload.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_tls_key: Option<PathBuf>,
    /// Largest message a client may send, in bytes.
    pub max_message_size: u64,
    /// Bytes of client messages pgwake may hold whole at once, all clients
    /// together (a Parse or Bind it rewrites, a query that may be
    /// `PREPARE`; messages up to 64 KiB are not counted). A larger message
    /// waits for room (up to the pool's `pool_wait_timeout`, then 53200);
    /// one larger than the budget gets 54000. Other messages stream through
    /// whatever their size. Read at start.
    pub client_buffer_budget: u64,
    /// How long transactions in flight may run on after SIGTERM/SIGINT.
    #[serde(with = "humantime_serde")]
    pub shutdown_grace: Duration,
    /// How long pgwake goes on accepting and serving as usual after the
    /// first SIGTERM/SIGINT, before the graceful stop begins: for platforms
    /// that signal every container of a pod or app at once (Azure Container
    /// Apps), so the app can drain requests that still need the database.
    #[serde(with = "humantime_serde")]
    pub shutdown_delay: Duration,
    /// Threads serving clients. 1 (the default) is fastest per CPU second
    /// when pgwake shares a few cores with the app and the database; more
    /// helps a shared service on a large machine. 0: one per core.
    pub worker_threads: usize,
}

impl Default for Listen {
    fn default() -> Self {
        Listen {
            addr: "127.0.0.1:6432".into(),
            unix_socket_dir: None,
            max_client_conn: 10_000,
            max_client_conn_per_database: 0,
            max_client_conn_per_user: 0,
            client_login_timeout: Duration::from_secs(15),
            client_tls_mode: ClientTlsMode::Disable,
            client_tls_cert: None,
            client_tls_key: None,
            max_message_size: 256 * 1024 * 1024,
            // Half the shipped sidecar's 256 MiB memory limit.
            client_buffer_budget: 128 * 1024 * 1024,
            shutdown_grace: Duration::from_secs(30),
            shutdown_delay: Duration::ZERO,
            worker_threads: 1,
        }
    }
}

impl Listen {
    /// The parsed TCP address (`localhost` means 127.0.0.1). Validated by [`load`].
    pub fn socket_addr(&self) -> Result<SocketAddr, String> {
        let text = self.addr.replacen("localhost:", "127.0.0.1:", 1);
        text.parse().map_err(|_| {
            format!(
                "listen.addr = {:?} is not an address like 127.0.0.1:6432",
                self.addr
            )
        })
    }
}

/// Whether clients may or must use TLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ClientTlsMode {
    /// Encryption requests are refused.
    Disable,
    /// Encryption requests are accepted; unencrypted clients too.
    Allow,
    /// As `allow` (the client decides; named as libpq names it).
    Prefer,
    /// Unencrypted TCP clients are refused (SQLSTATE 28000).
    Require,
}

impl ClientTlsMode {
    pub fn name(self) -> &'static str {
        match self {
            ClientTlsMode::Disable => "disable",
            ClientTlsMode::Allow => "allow",
            ClientTlsMode::Prefer => "prefer",
            ClientTlsMode::Require => "require",
        }
    }
}

/// How clients prove who they are. Rules are tried in order, first match
/// wins, as in `pg_hba.conf`. With no rules: clients on the unix socket and
/// loopback are trusted and every other client must use SCRAM-SHA-256.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClientAuth {
    /// Users and their passwords, in PgBouncer's `userlist.txt` format:
    /// `"user" "SCRAM-SHA-256$…"` (a verifier, as in `pg_authid`) or
    /// `"user" "plain password"`; re-read on reload.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file: Option<PathBuf>,
    /// Looks up users missing from `file` on the server, as PgBouncer's
    /// `auth_query` does: `$1` is the user name, and the last column of the
    /// first row is the password as `pg_authid` holds it (a SCRAM verifier)
    /// or NULL. E.g. `SELECT usename, passwd FROM pg_shadow WHERE usename = $1`
    /// (superuser only) or a SECURITY DEFINER function over `pg_authid`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub query: Option<String>,
    /// The server role that runs `query`, with pgwake's credentials. Unset:
    /// `server.auth.user`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub query_user: Option<String>,
    /// The database `query` runs in. Unset: `server.dbname`, else `postgres`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub query_database: Option<String>,
    /// Failed logins per client address per minute before that address is
    /// refused (SQLSTATE 28000) for the rest of the minute. 0: no cap.
    pub max_failures_per_minute: u32,
    /// Allow `trust` rules for clients beyond loopback: anyone who can reach
    /// the listener may then connect as any user.
    pub insecure_trust_beyond_loopback: bool,
    pub rules: Vec<ClientAuthRule>,
}

impl Default for ClientAuth {
    fn default() -> Self {
        ClientAuth {
            file: None,
            query: None,
            query_user: None,
            query_database: None,
            max_failures_per_minute: 20,
            insecure_trust_beyond_loopback: false,
            rules: Vec::new(),
        }
    }
}

impl ClientAuth {
    /// The rules in force: the configured ones, or the defaults.
    pub fn effective_rules(&self) -> Vec<ClientAuthRule> {
        if !self.rules.is_empty() {
            return self.rules.clone();
        }
        let rule = |address: &str, method| ClientAuthRule {
            address: address.into(),
            database: Names::all(),
            user: Names::all(),
            method,
        };
        vec![
            rule("unix", ClientAuthMethod::Trust),
            rule("loopback", ClientAuthMethod::Trust),
            rule("all", ClientAuthMethod::ScramSha256),
        ]
    }
}

/// One rule: clients from `address` asking for `database` as `user` use `method`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientAuthRule {
    /// `all`, `loopback` (127.0.0.0/8 and ::1), `unix`, an address
    /// (`10.1.2.3`) or a network (`10.0.0.0/8`, `fd00::/8`).
    #[serde(default = "all")]
    pub address: String,
    /// `all`, a name, or a list of names.
    #[serde(default = "Names::all")]
    pub database: Names,
    /// `all`, a name, or a list of names.
    #[serde(default = "Names::all")]
    pub user: Names,
    pub method: ClientAuthMethod,
}

impl ClientAuthRule {
    /// The parsed `address`; validated by [`load`].
    pub fn client_address(&self) -> Result<ClientAddress, String> {
        ClientAddress::parse(&self.address)
    }
}

/// Which clients a rule covers, by where they connect from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAddress {
    All,
    /// 127.0.0.0/8 and ::1.
    Loopback,
    /// The unix socket.
    Unix,
    Net(ipnet::IpNet),
}

impl ClientAddress {
    pub fn parse(text: &str) -> Result<ClientAddress, String> {
        Ok(match text {
            "all" => ClientAddress::All,
            "loopback" => ClientAddress::Loopback,
            "unix" => ClientAddress::Unix,
            _ => match text.parse::<ipnet::IpNet>() {
                Ok(n) => ClientAddress::Net(n.trunc()),
                Err(_) => match text.parse::<std::net::IpAddr>() {
                    Ok(ip) => ClientAddress::Net(ipnet::IpNet::from(ip)),
                    Err(_) => {
                        return Err(format!(
                            "{text:?} is not all, loopback, unix, an address or a network like 10.0.0.0/8"
                        ))
                    }
                },
            },
        })
    }

    /// Whether a client from `peer` (`None`: the unix socket) is covered.
    pub fn matches(&self, peer: Option<std::net::IpAddr>) -> bool {
        match (self, peer) {
            (ClientAddress::All, _) => true,
            (ClientAddress::Unix, None) => true,
            (ClientAddress::Loopback, Some(ip)) => ip.to_canonical().is_loopback(),
            (ClientAddress::Net(n), Some(ip)) => n.contains(&ip.to_canonical()),
            _ => false,
        }
    }

    /// Whether some client beyond this machine is covered.
    pub fn beyond_loopback(&self) -> bool {
        match self {
            ClientAddress::All => true,
            ClientAddress::Loopback | ClientAddress::Unix => false,
            ClientAddress::Net(n) => {
                let loopback_only = match n {
                    ipnet::IpNet::V4(v4) => v4.prefix_len() >= 8 && v4.network().octets()[0] == 127,
                    ipnet::IpNet::V6(v6) => v6.prefix_len() == 128 && v6.addr().is_loopback(),
                };
                !loopback_only
            }
        }
    }
}

fn all() -> String {
    "all".into()
}

/// `"all"`, one name or a list of names.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Names {
    One(String),
    Many(Vec<String>),
}

impl Names {
    pub fn all() -> Names {
        Names::One("all".into())
    }

    pub fn matches(&self, name: &str) -> bool {
        match self {
            Names::One(n) => n == "all" || n == name,
            Names::Many(v) => v.iter().any(|n| n == "all" || n == name),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ClientAuthMethod {
    /// No password.
    #[serde(rename = "trust")]
    Trust,
    /// SCRAM-SHA-256 against `client_auth.file`.
    #[serde(rename = "scram-sha-256")]
    ScramSha256,
    /// Always refused.
    #[serde(rename = "reject")]
    Reject,
}

/// libpq's `sslmode` for server connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SslMode {
    Disable,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

/// The Postgres server pgwake connects to.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Server {
    pub host: String,
    pub port: u16,
    /// The database pooled and warmed at start; clients may still use any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dbname: Option<String>,
    /// Default `prefer` for passwords; `verify-full` for tokens
    /// (`command` and the `azure_*` methods), which servers such as Azure's
    /// ask for in cleartext.
    pub sslmode: SslMode,
    /// PEM file of the CA certificates that `verify-ca`/`verify-full` trust.
    /// Unset: the system's root certificates.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sslrootcert: Option<PathBuf>,
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    #[serde(with = "humantime_serde")]
    pub tcp_keepalive_idle: Duration,
    #[serde(with = "humantime_serde")]
    pub tcp_keepalive_interval: Duration,
    pub tcp_keepalive_count: u32,
    #[serde(with = "humantime_serde")]
    pub tcp_user_timeout: Duration,
    pub auth: ServerAuth,
}

impl Default for Server {
    fn default() -> Self {
        Server {
            host: String::new(),
            port: 5432,
            dbname: None,
            sslmode: SslMode::Prefer,
            sslrootcert: None,
            connect_timeout: Duration::from_secs(5),
            // Below the ~4 minute idle timeout of cloud NATs.
            tcp_keepalive_idle: Duration::from_secs(60),
            tcp_keepalive_interval: Duration::from_secs(10),
            tcp_keepalive_count: 6,
            tcp_user_timeout: Duration::from_secs(30),
            auth: ServerAuth::default(),
        }
    }
}

/// How pgwake logs in to the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuthMethod {
    /// A password (or token) from the config or `PGWAKE_SERVER_AUTH_PASSWORD`;
    /// sent as the server asks: SCRAM-SHA-256, MD5 or cleartext.
    Password,
    /// The first line of the file at `path` (a mounted secret, say), re-read
    /// when the file changes; connections made with the old one retire.
    PasswordFile,
    /// The output of `command` (run with `/bin/sh -c`): the token, or JSON
    /// with `token` and `expires_on`. Run again ahead of expiry.
    Command,
    /// Entra ID token of the managed identity (App Service, Container Apps,
    /// VMs); user-assigned with `client_id`.
    AzureManagedIdentity,
    /// Entra ID token through AKS workload identity.
    AzureWorkloadIdentity,
    /// Entra ID token of the user signed in to the Azure CLI (development).
    AzureCli,
    /// Entra ID token of a service principal (`tenant_id`, `client_id`,
    /// `client_secret`).
    AzureClientSecret,
    /// No password.
    Trust,
}

impl AuthMethod {
    pub fn name(self) -> &'static str {
        match self {
            AuthMethod::Password => "password",
            AuthMethod::PasswordFile => "password_file",
            AuthMethod::Command => "command",
            AuthMethod::AzureManagedIdentity => "azure_managed_identity",
            AuthMethod::AzureWorkloadIdentity => "azure_workload_identity",
            AuthMethod::AzureCli => "azure_cli",
            AuthMethod::AzureClientSecret => "azure_client_secret",
            AuthMethod::Trust => "trust",
        }
    }

    /// Methods whose tokens come from Microsoft Entra ID.
    pub fn is_azure(self) -> bool {
        matches!(
            self,
            AuthMethod::AzureManagedIdentity
                | AuthMethod::AzureWorkloadIdentity
                | AuthMethod::AzureCli
                | AuthMethod::AzureClientSecret
        )
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerAuth {
    /// Unset: `password` when a password is given, else `trust`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub method: Option<AuthMethod>,
    /// Server user. Unset: the user name the client connected with. For
    /// Entra ID, the role name the principal was created with.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(
        with = "secret_serde",
        skip_serializing_if = "Option::is_none",
        default
    )]
    pub password: Option<Secret>,
    /// The file for `method = "password_file"`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<PathBuf>,
    /// The shell command for `method = "command"`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub command: Option<String>,
    /// User-assigned managed identity, workload identity or service
    /// principal client ID.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
    /// Entra tenant (`azure_client_secret`; optional for the others).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tenant_id: Option<String>,
    /// The service principal's secret (`azure_client_secret`), or
    /// `PGWAKE_SERVER_AUTH_CLIENT_SECRET`.
    #[serde(
        with = "secret_serde",
        skip_serializing_if = "Option::is_none",
        default
    )]
    pub client_secret: Option<Secret>,
    /// Federated token file for `azure_workload_identity`. Unset:
    /// `AZURE_FEDERATED_TOKEN_FILE`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token_file: Option<PathBuf>,
    /// Token scope. Unset: Azure Database for PostgreSQL's
    /// (`https://ossrdbms-aad.database.windows.net/.default`); set it for
    /// sovereign clouds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
    /// Fetch a new token at the latest this long before the current one
    /// expires (and at 75 % of its lifetime if that is earlier).
    #[serde(with = "humantime_serde")]
    pub refresh_margin: Duration,
    /// A token fetch that takes longer than this has failed (and is retried).
    #[serde(with = "humantime_serde")]
    pub fetch_timeout: Duration,
    /// How often to run `command` again when its output has no expiry.
    #[serde(with = "humantime_serde")]
    pub refresh_interval: Duration,
    /// Client user names served as `user`, besides `user` itself (a client
    /// logging in as anyone else gets 28000). Env: comma-separated.
    pub client_users: Vec<String>,
    /// Serve a client logging in as any user name as `user`. Off: an app
    /// that asked for another role (or mistyped its user) is refused rather
    /// than given this role's privileges.
    pub map_any_client_user: bool,
    /// Answer a server's request for the password in cleartext over a
    /// connection without TLS. Off: the password or token never crosses
    /// the network unencrypted (SCRAM and MD5 never send it).
    pub allow_cleartext_without_tls: bool,
}

impl Default for ServerAuth {
    fn default() -> Self {
        ServerAuth {
            method: None,
            user: None,
            password: None,
            path: None,
            command: None,
            client_id: None,
            tenant_id: None,
            client_secret: None,
            token_file: None,
            scope: None,
            refresh_margin: Duration::from_secs(300),
            fetch_timeout: Duration::from_secs(10),
            refresh_interval: Duration::from_secs(300),
            client_users: Vec::new(),
            map_any_client_user: false,
            allow_cleartext_without_tls: false,
        }
    }
}

impl ServerAuth {
    pub fn effective_method(&self) -> AuthMethod {
        self.method.unwrap_or(if self.password.is_some() {
            AuthMethod::Password
        } else {
            AuthMethod::Trust
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PoolMode {
    /// A server connection per transaction (the default).
    Transaction,
    /// A server connection per client session, reset with `DISCARD ALL`.
    Session,
}

/// Pool settings; `[pool]` holds the defaults, `[databases.NAME]` may override some.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Pool {
    pub mode: PoolMode,
    /// Most server connections per (database, user).
    pub size: usize,
    /// Idle server connections kept open, made in the background at start.
    pub min_idle: usize,
    #[serde(with = "humantime_serde")]
    pub max_lifetime: Duration,
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// How long a client waits for a server connection before an error.
    #[serde(with = "humantime_serde")]
    pub pool_wait_timeout: Duration,
    /// Named prepared statements kept per server connection (transaction
    /// mode); the least recently used beyond this are closed.
    pub max_prepared_statements: usize,
}

impl Default for Pool {
    fn default() -> Self {
        Pool {
            mode: PoolMode::Transaction,
            size: 20,
            min_idle: 1,
            max_lifetime: Duration::from_secs(30 * 60),
            idle_timeout: Duration::from_secs(10 * 60),
            pool_wait_timeout: Duration::from_secs(30),
            max_prepared_statements: 200,
        }
    }
}

/// One client-visible database name.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Database {
    /// Server database name. Unset: the same as the client's.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dbname: Option<String>,
    /// Server user. Unset: `[server.auth] user`, else the client's.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mode: Option<PoolMode>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub size: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min_idle: Option<usize>,
    /// Client connections to this database name beyond this get SQLSTATE
    /// 53300. Unset: `listen.max_client_conn_per_database`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_client_conn: Option<usize>,
    /// Client user names served as this entry's server user. Unset:
    /// `server.auth.client_users`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_users: Option<Vec<String>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    Text,
    Json,
}

/// Who starts and stops the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProviderKind {
    /// pgwake never starts or stops the server.
    None,
    /// Azure Database for PostgreSQL Flexible Server through Azure Resource Manager.
    Azure,
    /// Shell commands in `[lifecycle.command]`.
    Command,
}

/// Waking a stopped server when a client arrives, and stopping it when idle.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Lifecycle {
    pub provider: ProviderKind,
    /// `azure`: the server's resource ID,
    /// `/subscriptions/…/resourceGroups/…/providers/Microsoft.DBforPostgreSQL/flexibleServers/NAME`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resource_id: Option<String>,
    /// `azure`: Azure Resource Manager's address (sovereign clouds differ).
    pub arm_endpoint: String,
    /// `azure`: the REST API version.
    pub api_version: String,
    /// `azure`: the identity that calls ARM. Unset: `server.auth.method` when
    /// that is an `azure_*` method, else `azure_managed_identity`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub identity: Option<AuthMethod>,
    /// How long a client waits for a wake before it gets SQLSTATE 57P03.
    #[serde(with = "humantime_serde")]
    pub wake_timeout: Duration,
    /// How long the provider's answer about the server's state is trusted.
    #[serde(with = "humantime_serde")]
    pub state_cache_ttl: Duration,
    /// Stop the server after this long without client activity (and none on
    /// the server itself). Unset: never.
    #[serde(
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none",
        default
    )]
    pub idle_stop_after: Option<Duration>,
    /// Stop the server when pgwake shuts down.
    pub stop_on_shutdown: bool,
    /// Start the server when pgwake starts, rather than when a client arrives.
    pub wake_on_startup: bool,
    pub command: LifecycleCommand,
}

impl Default for Lifecycle {
    fn default() -> Self {
        Lifecycle {
            provider: ProviderKind::None,
            resource_id: None,
            arm_endpoint: "https://management.azure.com".into(),
            api_version: "2024-08-01".into(),
            identity: None,
            wake_timeout: Duration::from_secs(120),
            state_cache_ttl: Duration::from_secs(30),
            idle_stop_after: None,
            stop_on_shutdown: false,
            wake_on_startup: false,
            command: LifecycleCommand::default(),
        }
    }
}

/// Shell commands (run with `/bin/sh -c`) for `provider = "command"`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LifecycleCommand {
    /// Prints the server's state: ready, stopped, starting or stopping.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    /// Starts the server (may return before it is ready).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub start: Option<String>,
    /// Stops the server (needed for idle stop and stop_on_shutdown).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stop: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Log {
    pub format: LogFormat,
    /// `error`, `warn`, `info`, `debug` or `trace`, optionally followed by
    /// per-module directives (`warn,pgwake_lifecycle=info`).
    pub level: String,
    /// Log queries that take longer than this (at `warn`), with their
    /// database, user, application_name, client address and the first 200
    /// bytes of their text, never their parameters. `0s`: off.
    #[serde(with = "humantime_serde")]
    pub slow_query: Duration,
}

impl Default for Log {
    fn default() -> Self {
        Log {
            format: LogFormat::Text,
            level: "info".into(),
            slow_query: Duration::from_secs(1),
        }
    }
}

/// Where one client database name leads: the server database and user, and
/// the pool settings that apply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub dbname: String,
    /// `None`: the client's user name.
    pub user: Option<String>,
    pub mode: PoolMode,
    pub size: usize,
    pub min_idle: usize,
    /// Client user names served as `user`, besides `user` itself.
    pub client_users: Vec<String>,
    /// Any client user name is served as `user`.
    pub any_client_user: bool,
}

impl Route {
    /// Whether a client logging in as `client_user` (without a password
    /// that proved it) is served here.
    pub fn serves(&self, client_user: &str) -> bool {
        match &self.user {
            // The client's own user name goes to the server.
            None => true,
            Some(u) => {
                u == client_user
                    || self.any_client_user
                    || self.client_users.iter().any(|c| c == client_user)
            }
        }
    }
}

impl Config {
    /// Where a client asking for `database` goes, or `None` when a
    /// `[databases]` table exists and does not name it.
    pub fn route(&self, database: &str) -> Option<Route> {
        let db = if self.databases.is_empty() {
            None
        } else {
            Some(self.databases.get(database)?)
        };
        let get = |f: fn(&Database) -> Option<usize>, d: usize| db.and_then(f).unwrap_or(d);
        Some(Route {
            dbname: db
                .and_then(|d| d.dbname.clone())
                .unwrap_or_else(|| database.to_owned()),
            user: db
                .and_then(|d| d.user.clone())
                .or_else(|| self.server.auth.user.clone()),
            mode: db.and_then(|d| d.mode).unwrap_or(self.pool.mode),
            size: get(|d| d.size, self.pool.size),
            min_idle: get(|d| d.min_idle, self.pool.min_idle),
            client_users: db
                .and_then(|d| d.client_users.clone())
                .unwrap_or_else(|| self.server.auth.client_users.clone()),
            any_client_user: self.server.auth.map_any_client_user,
        })
    }

    /// Every key with its value as `section.key = value` pairs, in file
    /// order, secrets shown as `<redacted>`.
    pub fn flatten(&self) -> Vec<(String, String)> {
        fn walk(prefix: &str, v: &toml::Value, out: &mut Vec<(String, String)>) {
            match v {
                toml::Value::Table(t) => {
                    for (k, v) in t {
                        let key = if prefix.is_empty() {
                            k.clone()
                        } else {
                            format!("{prefix}.{k}")
                        };
                        walk(&key, v, out);
                    }
                }
                toml::Value::String(s) => out.push((prefix.to_owned(), s.clone())),
                other => out.push((prefix.to_owned(), other.to_string())),
            }
        }
        let mut out = Vec::new();
        if let Ok(v) = toml::Value::try_from(self) {
            walk("", &v, &mut out);
        }
        out
    }

    /// The effective configuration as TOML, secrets shown as `<redacted>`.
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_else(|e| format!("# cannot render: {e}\n"))
    }
}
