//! `[client_auth]`: who may log in to pgwake, and how.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// How clients prove who they are. Rules are tried in order, first match
/// wins, as in `pg_hba.conf`. With no rules: clients on the unix socket and
/// loopback are trusted and every other client must use SCRAM-SHA-256.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClientAuth {
    /// Users and their passwords, in PgBouncer's `userlist.txt` format:
    /// `"user" "SCRAM-SHA-256$…"` (a verifier, as in `pg_authid`),
    /// `"user" "md5…"` (an MD5 hash, for `md5` rules) or
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

impl ClientAuthMethod {
    /// Whether the method checks a password against `client_auth.file`
    /// or `client_auth.query`.
    pub fn checks_password(self) -> bool {
        matches!(self, ClientAuthMethod::ScramSha256 | ClientAuthMethod::Md5)
    }

    /// The name written in the configuration.
    pub fn name(self) -> &'static str {
        match self {
            ClientAuthMethod::Trust => "trust",
            ClientAuthMethod::ScramSha256 => "scram-sha-256",
            ClientAuthMethod::Md5 => "md5",
            ClientAuthMethod::Reject => "reject",
        }
    }
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
    /// SCRAM-SHA-256 against `client_auth.file` (or `query`).
    #[serde(rename = "scram-sha-256")]
    ScramSha256,
    /// As PgBouncer's `auth_type = md5` and PostgreSQL's `md5`: a user whose
    /// entry is an MD5 hash answers the MD5 challenge; every other user
    /// (a SCRAM verifier or a plain password) uses SCRAM-SHA-256.
    #[serde(rename = "md5")]
    Md5,
    /// Always refused.
    #[serde(rename = "reject")]
    Reject,
}
