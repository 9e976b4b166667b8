#![forbid(unsafe_code)]
//! pgwake's configuration: plain data, built from a TOML file, an optional
//! server URL and `PGWAKE_<SECTION>_<KEY>` environment overrides, all passed
//! in as arguments so tests never touch the process environment.
//!
//! Every key has a default; unknown keys are rejected with their path; all
//! problems in a file are reported together, not one per attempt.

mod client_auth;
mod env;
mod load;
pub mod pgbouncer;
mod secret_serde;
mod server;
mod set;
mod tracing;
mod tree;
mod url;
mod userlist;
mod validate;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

pub use client_auth::{ClientAddress, ClientAuth, ClientAuthMethod, ClientAuthRule, Names};
pub use load::{load, ConfigErrors};
use serde::{Deserialize, Serialize};
pub use server::{AuthMethod, Server, ServerAuth, SslMode};
pub use set::{needs_restart, SetError};
pub use tracing::Tracing;
pub use userlist::{parse_userlist, SecretKind, UserlistEntry};

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
    pub tracing: Tracing,
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
    /// More TCP addresses to accept clients on, each `IP:PORT`, as
    /// PgBouncer's `listen_addr` list (`addr` is the one pgwake names itself
    /// by: its unix socket's port, its cancel keys for peers).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub extra_addrs: Vec<String>,
    /// Directory for a unix socket `.s.PGSQL.<port>` (as PostgreSQL names it,
    /// so `psql -h DIR -p PORT` works). Unset: no unix socket.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unix_socket_dir: Option<PathBuf>,
    /// Permissions of the unix socket, in octal as `chmod` takes them
    /// (PostgreSQL's `unix_socket_permissions`, PgBouncer's
    /// `unix_socket_mode`).
    pub unix_socket_mode: String,
    /// Group that owns the unix socket: a name from `/etc/group` or a
    /// number. Unset: the group of the user running pgwake.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unix_socket_group: Option<String>,
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
    /// An idle client (plain TCP or the unix socket) that has sent nothing
    /// for this long is parked: its socket leaves the async runtime for a
    /// compact table and its task ends, until it sends again. A client
    /// that sends nothing in the first moment (5 ms) after its login is
    /// parked then. `0s`: no client is parked.
    #[serde(with = "humantime_serde")]
    pub park_idle_clients_after: Duration,
    /// TCP clients are handed to pgwake only once they have sent something
    /// (TCP_DEFER_ACCEPT, Linux): every PostgreSQL client speaks first, so
    /// its first message is there when pgwake accepts it, and no wake-up is
    /// spent on a connection with nothing to read yet. A client that sends
    /// nothing is handed over after about this long (then
    /// `client_login_timeout` applies). `0s`: accept at once. Read at start.
    #[serde(with = "humantime_serde")]
    pub tcp_defer_accept: Duration,
}

impl Default for Listen {
    fn default() -> Self {
        Listen {
            addr: "127.0.0.1:6432".into(),
            extra_addrs: Vec::new(),
            unix_socket_dir: None,
            unix_socket_mode: "0777".into(),
            unix_socket_group: None,
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
            park_idle_clients_after: Duration::from_secs(10),
            tcp_defer_accept: Duration::from_secs(1),
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

    /// `extra_addrs` as socket addresses.
    pub fn extra_socket_addrs(&self) -> Result<Vec<SocketAddr>, String> {
        self.extra_addrs
            .iter()
            .map(|a| {
                a.replacen("localhost:", "127.0.0.1:", 1)
                    .parse()
                    .map_err(|_| {
                        format!("listen.extra_addrs: {a:?} is not an address like 127.0.0.1:6432")
                    })
            })
            .collect()
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
    /// Another server for this entry (`[databases.NAME.server]`): the keys
    /// it sets over `[server]`'s; its `auth`, when given, is a whole
    /// `[server.auth]` (nothing inherited). Its pools have their own
    /// connections and credentials; waking and idle stop stay with
    /// `[server]`. A change needs a restart.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server: Option<Server>,
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
    /// How long the provider's answer about the server's state is trusted
    /// (a "ready" is asked again, at most once a second, while the server
    /// cannot be reached).
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
    /// Log each client login (at `info`): its address, database, user and
    /// application_name. Off by default: an app may open a connection per
    /// request, and a sidecar's log is the app's.
    pub connections: bool,
    /// Log each client logout: who, after how long, and why.
    pub disconnections: bool,
    /// Log one line of statistics per database this often (transactions,
    /// queries and bytes per second, average times, as PgBouncer's
    /// `stats_period` line). `0s`: never, the default.
    #[serde(with = "humantime_serde")]
    pub stats_period: Duration,
}

impl Default for Log {
    fn default() -> Self {
        Log {
            format: LogFormat::Text,
            level: "info".into(),
            slow_query: Duration::from_secs(1),
            connections: false,
            disconnections: false,
            stats_period: Duration::ZERO,
        }
    }
}

/// Where one client database name leads: the server database and user, and
/// the pool settings that apply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route<'a> {
    pub dbname: &'a str,
    /// `None`: the client's user name.
    pub user: Option<&'a str>,
    pub mode: PoolMode,
    pub size: usize,
    pub min_idle: usize,
    /// Client user names served as `user`, besides `user` itself.
    pub client_users: &'a [String],
    /// Any client user name is served as `user`.
    pub any_client_user: bool,
    /// The entry has a server of its own (`[databases.NAME.server]`).
    pub own_server: bool,
}

impl Listen {
    /// `unix_socket_mode` as permission bits.
    pub fn unix_socket_mode_bits(&self) -> Result<u32, String> {
        u32::from_str_radix(self.unix_socket_mode.trim_start_matches("0o"), 8)
            .ok()
            .filter(|m| *m <= 0o777)
            .ok_or_else(|| {
                format!(
                    "listen.unix_socket_mode = {:?} is not a mode in octal like \"0770\"",
                    self.unix_socket_mode
                )
            })
    }
}

impl Route<'_> {
    /// Whether a client logging in as `client_user` (without a password
    /// that proved it) is served here.
    pub fn serves(&self, client_user: &str) -> bool {
        match self.user {
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
    pub fn route<'a>(&'a self, database: &'a str) -> Option<Route<'a>> {
        let db = if self.databases.is_empty() {
            None
        } else {
            Some(self.databases.get(database)?)
        };
        let get = |f: fn(&Database) -> Option<usize>, d: usize| db.and_then(f).unwrap_or(d);
        Some(Route {
            dbname: db.and_then(|d| d.dbname.as_deref()).unwrap_or(database),
            user: db.and_then(|d| d.user.as_deref()).or_else(|| {
                db.and_then(|d| d.server.as_ref())
                    .unwrap_or(&self.server)
                    .auth
                    .user
                    .as_deref()
            }),
            mode: db.and_then(|d| d.mode).unwrap_or(self.pool.mode),
            size: get(|d| d.size, self.pool.size),
            min_idle: get(|d| d.min_idle, self.pool.min_idle),
            client_users: db
                .and_then(|d| d.client_users.as_deref())
                .unwrap_or(&self.server.auth.client_users),
            any_client_user: self.server.auth.map_any_client_user,
            own_server: db.is_some_and(|d| d.server.is_some()),
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
