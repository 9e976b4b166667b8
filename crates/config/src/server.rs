//! `[server]` and `[server.auth]`: reaching the server and logging in to it.

use std::path::PathBuf;
use std::time::Duration;

use pgwake_credentials::Secret;
use serde::{Deserialize, Serialize};

use crate::secret_serde;

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
