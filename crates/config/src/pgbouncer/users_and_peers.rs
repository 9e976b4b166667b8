//! `[users]` (per-user settings, which pgwake does not have) and `[peers]`
//! (forwarding cancel requests between replicas).

use super::ini::Section;
use super::{connstr, Convert, ImportError};

/// `[users]` keys, none with a per-user equivalent in pgwake.
const USER_KEYS: &[(&str, &str)] = &[
    (
        "pool_mode",
        "pgwake sets the pool mode per database ([databases.NAME] mode) and in [pool]",
    ),
    (
        "max_user_connections",
        "pgwake does not cap server connections per user; each pool is capped by its size",
    ),
    (
        "max_user_client_connections",
        "pgwake caps clients per user for every user alike (listen.max_client_conn_per_user)",
    ),
    (
        "pool_size",
        "pgwake sets pool sizes per database ([databases.NAME] size) and in [pool]",
    ),
    ("reserve_pool_size", "pgwake has no reserve pool"),
    (
        "query_timeout",
        "pgwake's timeouts.query_timeout applies to every user",
    ),
    (
        "query_wait_timeout",
        "pgwake's pool.pool_wait_timeout applies to every user",
    ),
    (
        "idle_transaction_timeout",
        "pgwake's timeouts.idle_transaction_timeout applies to every user",
    ),
    (
        "transaction_timeout",
        "pgwake has no limit on a whole transaction",
    ),
    (
        "client_idle_timeout",
        "pgwake's timeouts.client_idle_timeout applies to every user",
    ),
];

impl Convert<'_> {
    /// `[users]`: per-user settings, none of which pgwake has.
    pub(super) fn users_section(&mut self) -> Result<(), ImportError> {
        let lines = self.ini.section(Section::Users);
        for s in lines {
            let label = format!("[users] {}", s.key);
            let params = connstr::parse(&s.value).map_err(|e| ImportError::at(&s.at, &label, e))?;
            for (k, v) in params {
                let Some((_, instead)) = USER_KEYS.iter().find(|(key, _)| *key == k) else {
                    return Err(ImportError::at(
                        &s.at,
                        &label,
                        format!("{k} is not a user setting PgBouncer knows; it refuses the entry"),
                    ));
                };
                self.warn_at(
                    &s.at,
                    &format!("{label}: {k}"),
                    format!(
                        "pgwake has no per-user settings ({k}={v} not carried over): {instead}"
                    ),
                );
            }
        }
        Ok(())
    }

    /// `[peers]` and `peer_id`: forwarding cancel requests between replicas.
    pub(super) fn peers(&mut self) -> Result<(), ImportError> {
        let peer_id = match self.take("peer_id") {
            Some(s) => {
                s.count()?;
                Some(s)
            }
            None => None,
        };
        let lines = self.ini.section(Section::Peers);
        if lines.is_empty() {
            return Ok(());
        }
        let enabled = match &peer_id {
            Some(s) => s.count()? > 0,
            None => false,
        };
        let mut peers = Vec::new();
        let mut origins = Vec::new();
        for s in lines {
            let label = format!("[peers] {}", s.key);
            if !super::parse_int(&s.key).is_some_and(|n| n > 0 && n <= 65535) {
                return Err(ImportError::at(
                    &s.at,
                    &label,
                    "a peer id is a number from 1 to 65535".into(),
                ));
            }
            let params = connstr::parse(&s.value).map_err(|e| ImportError::at(&s.at, &label, e))?;
            let mut host = None;
            let mut port = 6432u16;
            for (k, v) in &params {
                match k.as_str() {
                    "host" => host = Some(v.clone()),
                    "port" => {
                        port = super::parse_int(v)
                            .and_then(|n| u16::try_from(n).ok())
                            .filter(|p| *p > 0)
                            .ok_or_else(|| {
                                ImportError::at(
                                    &s.at,
                                    &label,
                                    format!("port={v} is not a port (1-65535)"),
                                )
                            })?
                    }
                    "pool_size" => self.warn_at(
                        &s.at,
                        &format!("{label}: pool_size"),
                        "pgwake forwards each cancel on a connection of its own; no pool to size"
                            .into(),
                    ),
                    other => {
                        return Err(ImportError::at(
                            &s.at,
                            &label,
                            format!("{other} is not a peer parameter PgBouncer knows"),
                        ))
                    }
                }
            }
            let Some(host) = host else {
                return Err(ImportError::at(
                    &s.at,
                    &label,
                    "a peer needs host=; PgBouncer refuses it".into(),
                ));
            };
            if host.starts_with('/') || host.starts_with('@') {
                self.warn_at(&s.at, &label, format!("pgwake forwards cancels over TCP only: the unix socket {host} was left out; list the peer's TCP address in peering.peers"));
                continue;
            }
            peers.push(if host.contains(':') {
                format!("[{host}]:{port}")
            } else {
                format!("{host}:{port}")
            });
            origins.push(format!("{label} ({})", s.at.short()));
        }
        if !enabled {
            let message = "[peers] is ignored by PgBouncer without a peer_id above 0, so pgwake's [peering] stays off".to_owned();
            match &peer_id {
                Some(s) => self.warn(s, message),
                None => self.warn_unset("peer_id", message),
            }
            return Ok(());
        }
        if let Some(s) = &peer_id {
            self.warn(s, "pgwake needs no peer id: each replica's id is derived from its own address, which must be among peering.peers".into());
        }
        if !peers.is_empty() {
            self.doc.set(
                &["peering"],
                "peers",
                super::strings(&peers),
                &origins.join(", "),
                &[],
            );
        }
        Ok(())
    }
}
