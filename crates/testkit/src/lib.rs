#![forbid(unsafe_code)]
//! Test support for pgwake: throwaway PostgreSQL clusters (pgwake-localpg's,
//! with the signatures the tests use), tokio-postgres client helpers and fake
//! Azure endpoints. A dev-dependency only: none of it ships in pgwake.

use std::path::Path;

use anyhow::{anyhow, Context as _};

use pgwake_localpg::CtlAction;
pub use pgwake_localpg::{HostAuth, PgBin};

pub mod azure_arm;
pub mod azure_identity;

const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// A throwaway PostgreSQL cluster: [`pgwake_localpg::Cluster`] with the
/// signatures tests are written against (`anyhow` errors, actions by name).
/// Dropping it stops the server and removes its directory.
#[derive(Debug)]
pub struct Cluster(pgwake_localpg::Cluster);

impl Cluster {
    pub fn builder() -> ClusterBuilder {
        ClusterBuilder::default()
    }

    /// Always `127.0.0.1`.
    pub fn host(&self) -> &str {
        self.0.host()
    }

    pub fn port(&self) -> u16 {
        self.0.port()
    }

    /// Directory holding the server's unix socket.
    pub fn socket_dir(&self) -> &Path {
        self.0.socket_dir()
    }

    /// Always `postgres`; trusted over TCP and the unix socket.
    pub fn superuser(&self) -> &str {
        self.0.superuser()
    }

    pub fn bin(&self) -> &PgBin {
        self.0.bin()
    }

    pub fn data_dir(&self) -> &Path {
        self.0.data_dir()
    }

    /// The server's log file (written by `pg_ctl -l`).
    pub fn log_file(&self) -> &Path {
        self.0.log_file()
    }

    /// `pg_ctl stop -m fast`, waiting until the server is down.
    pub fn stop(&self) -> anyhow::Result<()> {
        Ok(self.0.stop()?)
    }

    /// `pg_ctl stop -m immediate`, waiting until the server is down.
    pub fn stop_immediate(&self) -> anyhow::Result<()> {
        Ok(self.0.stop_immediate()?)
    }

    /// `pg_ctl start -w` on the same data dir and port after a stop.
    pub fn start_again(&self) -> anyhow::Result<()> {
        Ok(self.0.start_again()?)
    }

    /// Fast stop (if running) and start again.
    pub fn restart(&self) -> anyhow::Result<()> {
        Ok(self.0.restart()?)
    }

    /// Whether `pg_ctl status` finds a running server.
    pub fn is_running(&self) -> bool {
        self.0.is_running()
    }

    /// libpq-style URL over TCP to 127.0.0.1, e.g.
    /// `postgres://app:app-secret@127.0.0.1:PORT/app`.
    pub fn url(&self, user: &str, password: Option<&str>, db: &str) -> String {
        self.0.url(user, password, db)
    }

    /// Runs SQL as the superuser over TCP with psql and returns its output
    /// (unaligned, tuples only), trimmed.
    pub fn psql(&self, db: &str, sql: &str) -> anyhow::Result<String> {
        Ok(self.0.psql(db, sql)?)
    }

    /// The shell command for `action`: `start`, `stop` or `status` (prints
    /// `ready` or `stopped`), for a `command` lifecycle provider.
    ///
    /// Panics on any other name: a mistake in the test.
    pub fn ctl_command(&self, action: &str) -> String {
        let action = match action {
            "start" => CtlAction::Start,
            "stop" => CtlAction::Stop,
            "status" => CtlAction::Status,
            other => panic!("unknown action {other}"),
        };
        self.0.ctl_command(action)
    }
}

/// Builder for [`Cluster`]; see [`pgwake_localpg::ClusterBuilder`].
#[derive(Debug, Clone, Default)]
pub struct ClusterBuilder(pgwake_localpg::ClusterBuilder);

impl ClusterBuilder {
    /// Turns on TLS (`ssl = on`) with this certificate chain and key, in PEM.
    pub fn tls(self, cert_pem: &str, key_pem: &str) -> Self {
        ClusterBuilder(self.0.tls(cert_pem, key_pem))
    }

    /// Method for TCP logins of non-superuser roles. Default: trust.
    pub fn auth(self, a: HostAuth) -> Self {
        ClusterBuilder(self.0.auth(a))
    }

    /// Fixed port. Default: [`free_port`], re-chosen if it turns out taken.
    pub fn port(self, p: u16) -> Self {
        ClusterBuilder(self.0.port(p))
    }

    /// Extra postgresql.conf line, written quoted.
    pub fn setting(self, key: &str, value: &str) -> Self {
        ClusterBuilder(self.0.setting(key, value))
    }

    /// Role created with LOGIN CREATEDB after start. If none is given, one
    /// role `app` with password `app-secret` is created.
    pub fn user(self, name: &str, password: &str) -> Self {
        ClusterBuilder(self.0.user(name, password))
    }

    /// Database created after start. If none is given, one database named
    /// after the first role and owned by it is created (`app` by default).
    pub fn database(self, name: &str, owner: &str) -> Self {
        ClusterBuilder(self.0.database(name, owner))
    }

    /// initdb, configure, start and create the roles and databases.
    pub fn start(self) -> anyhow::Result<Cluster> {
        Ok(Cluster(self.0.start()?))
    }
}

/// A free TCP port on 127.0.0.1 below the ephemeral range, never the same
/// twice in one process; see [`pgwake_localpg::free_port`].
///
/// Panics if every port in the range is taken or already handed out.
pub fn free_port() -> u16 {
    pgwake_localpg::free_port().unwrap_or_else(|e| panic!("{e}"))
}

/// Connects with tokio-postgres (no TLS) and spawns the connection task.
pub async fn connect(
    host: &str,
    port: u16,
    user: &str,
    password: Option<&str>,
    db: &str,
) -> anyhow::Result<tokio_postgres::Client> {
    let mut config = tokio_postgres::Config::new();
    config
        .host(host)
        .port(port)
        .user(user)
        .dbname(db)
        .connect_timeout(CONNECT_TIMEOUT);
    if let Some(password) = password {
        config.password(password);
    }
    connect_config(&config)
        .await
        .with_context(|| format!("connecting to {host}:{port} as {user:?} db {db:?}"))
}

/// Same as [`connect`], from a connection string or URL.
pub async fn connect_url(url: &str) -> anyhow::Result<tokio_postgres::Client> {
    let mut config: tokio_postgres::Config = url
        .parse()
        .map_err(|e| anyhow!("bad connection string: {e}"))?;
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(CONNECT_TIMEOUT);
    }
    connect_config(&config)
        .await
        .context("connecting with a connection string")
}

async fn connect_config(
    config: &tokio_postgres::Config,
) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let (client, connection) = config.connect(tokio_postgres::NoTls).await?;
    tokio::spawn(async move {
        // Errors here (server stopped, connection killed) surface to the
        // client's next call; nothing more to do with them.
        let _ = connection.await;
    });
    Ok(client)
}
