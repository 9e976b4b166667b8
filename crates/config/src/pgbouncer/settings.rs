//! The `[pgbouncer]` section: listener, limits, timeouts, server TLS and
//! TCP, logging and the admin console; and the settings pgwake has no
//! equivalent for, each with what pgwake does instead.

use std::net::IpAddr;
use std::time::Duration;

use toml::Value;

use super::ini::{Place, Setting};
use super::{
    duration, int_value, list, string, strings, Convert, ImportError, NEVER, PGBOUNCER_DEFAULT,
};

/// `[pgbouncer]` keys converted by name in this module or another.
const CONVERTED: &[&str] = &[
    "admin_users",
    "auth_dbname",
    "auth_file",
    "auth_hba_file",
    "auth_query",
    "auth_type",
    "auth_user",
    "client_idle_timeout",
    "client_login_timeout",
    "client_tls_cert_file",
    "client_tls_key_file",
    "client_tls_sslmode",
    "default_pool_size",
    "idle_transaction_timeout",
    "ignore_startup_parameters",
    "listen_addr",
    "listen_port",
    "log_connections",
    "log_disconnections",
    "log_stats",
    "max_client_conn",
    "max_db_client_connections",
    "max_db_connections",
    "max_packet_size",
    "max_prepared_statements",
    "max_user_client_connections",
    "min_pool_size",
    "peer_id",
    "pool_mode",
    "query_timeout",
    "query_wait_timeout",
    "server_connect_timeout",
    "server_idle_timeout",
    "server_lifetime",
    "server_tls_ca_file",
    "server_tls_sslmode",
    "stats_period",
    "stats_users",
    "tcp_defer_accept",
    "tcp_keepalive",
    "tcp_keepcnt",
    "tcp_keepidle",
    "tcp_keepintvl",
    "tcp_user_timeout",
    "unix_socket_dir",
    "unix_socket_group",
    "unix_socket_mode",
    "verbose",
];

/// `[pgbouncer]` keys pgwake has no equivalent for: the value that changes
/// nothing (no warning then), and what pgwake does instead.
const WITHOUT_EQUIVALENT: &[(&str, Option<&str>, &str)] = &[
    ("application_name_add_host", Some("0"), "pgwake passes the client's application_name on as it is, without the client's address (SHOW CLIENTS shows the address)"),
    ("auth_ident_file", Some(""), "pgwake has no user name maps"),
    ("auth_ldap_options", Some(""), "pgwake cannot check passwords against LDAP"),
    ("autodb_idle_timeout", None, "pgwake keeps a database name's pool and closes its idle server connections after pool.idle_timeout"),
    ("cancel_wait_timeout", None, "pgwake forwards a cancel request at once (to a peer within 2 s) and never queues it"),
    ("client_tls13_ciphers", Some(""), TLS_FIXED),
    ("client_tls_ca_file", Some(""), "pgwake does not check client certificates; clients authenticate as [client_auth] says"),
    ("client_tls_ciphers", Some("default"), TLS_FIXED),
    ("client_tls_dheparams", Some("auto"), TLS_FIXED),
    ("client_tls_ecdhcurve", Some("auto"), TLS_FIXED),
    ("client_tls_protocols", Some("secure"), TLS_FIXED),
    ("conffile", None, "pgwake re-reads the file it was started with (--config) on SIGHUP or RELOAD"),
    ("disable_pqexec", Some("0"), "pgwake always accepts the simple query protocol"),
    ("dns_max_ttl", None, DNS),
    ("dns_nxdomain_ttl", None, DNS),
    ("dns_zone_check_period", Some("0"), DNS),
    ("job_name", None, "a Windows service name; pgwake does not run as a Windows service"),
    ("listen_backlog", None, "pgwake's listen backlog is fixed (1024)"),
    ("log_pooler_errors", None, "pgwake has no such setting: the errors it sends clients are logged according to log.level"),
    ("logfile", Some(""), "pgwake logs to stderr only (the journal or the container runtime keeps it); this file is not written"),
    ("login_notify_message", Some(""), "pgwake sends no message at login"),
    ("pidfile", Some(""), "pgwake runs in the foreground and writes no PID file; the service manager tracks it"),
    ("pkt_buf", None, "pgwake sizes its buffers itself; listen.client_buffer_budget bounds what it holds"),
    ("pool_idle_timeout", Some("0"), "pgwake keeps a pool, and its statistics, until it restarts"),
    ("query_wait_notify", None, "pgwake sends waiting clients notices only while it wakes a stopped server"),
    ("reserve_pool_size", Some("0"), "pgwake has no reserve pool: a pool never grows past its size; raise pool.size or pool.pool_wait_timeout instead"),
    ("reserve_pool_timeout", None, "pgwake has no reserve pool: a pool never grows past its size"),
    ("resolv_conf", Some(""), DNS),
    ("sbuf_loopcnt", None, "pgwake has no equivalent; the async runtime shares time between clients"),
    ("scram_iterations", None, "pgwake's SCRAM uses each user's verifier as it is (4096 iterations for a plain password)"),
    ("server_check_delay", None, CHECK),
    ("server_check_query", None, CHECK),
    ("server_fast_close", Some("0"), "in session mode pgwake closes a connection made under old settings when its client leaves, not before"),
    ("server_login_retry", None, "pgwake tries a failed server login again for the next client at once (retrying a restarting server for up to server.connect_timeout) instead of refusing clients for this long"),
    ("server_reset_query", Some("DISCARD ALL"), "pgwake resets session-mode connections with DISCARD ALL; no other reset query"),
    ("server_reset_query_always", Some("0"), "pgwake runs no reset query in transaction mode: it restores the settings each client expects instead"),
    ("server_round_robin", Some("0"), "pgwake chooses among idle server connections itself; this is not configurable"),
    ("server_tls13_ciphers", Some(""), TLS_FIXED),
    ("server_tls_cert_file", Some(""), "pgwake presents no client certificate to the server"),
    ("server_tls_ciphers", Some("default"), TLS_FIXED),
    ("server_tls_key_file", Some(""), "pgwake presents no client certificate to the server"),
    ("server_tls_protocols", Some("secure"), TLS_FIXED),
    ("service_name", None, "a Windows service name; pgwake does not run as a Windows service"),
    ("so_reuseport", Some("0"), "pgwake serves all clients from one process; for more cores raise listen.worker_threads"),
    ("suspend_timeout", None, "pgwake has no online restart (-R, SUSPEND); SIGTERM drains it within listen.shutdown_grace"),
    ("syslog", Some("0"), "pgwake logs to stderr only; under systemd the journal passes it on to syslog"),
    ("syslog_facility", None, "pgwake logs to stderr only; under systemd the journal passes it on to syslog"),
    ("syslog_ident", None, "pgwake logs to stderr only; under systemd the journal passes it on to syslog"),
    ("tcp_socket_buffer", Some("0"), "pgwake uses the system's socket buffer sizes"),
    ("track_extra_parameters", None, "pgwake carries the settings the server reports (application_name, DateStyle, IntervalStyle, TimeZone, client_encoding, standard_conforming_strings, search_path) from connection to connection, and no others"),
    ("transaction_timeout", Some("0"), "pgwake has no limit on a whole transaction; timeouts.query_timeout and idle_transaction_timeout bound its parts"),
    ("user", Some(""), "pgwake does not switch users; run it as the user it should be (systemd User= or DynamicUser=)"),
    ("max_user_connections", Some("0"), "pgwake does not cap server connections per user; each pool is capped by its size (pool.size, [databases.NAME] size)"),
];

/// PgBouncer's TLS modes, for clients and for servers alike.
const SSLMODES: &[&str] = &[
    "disable",
    "allow",
    "prefer",
    "require",
    "verify-ca",
    "verify-full",
];

const TLS_FIXED: &str = "pgwake's TLS (rustls) offers TLS 1.2 and 1.3 with its own safe cipher suites; this is not configurable";
const DNS: &str =
    "pgwake resolves the server's name with the system resolver for every new server connection";
const CHECK: &str = "pgwake sends no check query: it notices a server-side close before handing out a connection, and sends a request again once on a fresh connection when it finds its connection dead";

/// An error for a `[pgbouncer]` key PgBouncer does not know (it refuses to start).
pub(super) fn check_known(s: &Setting) -> Result<(), ImportError> {
    let key = s.key.to_ascii_lowercase();
    let known =
        CONVERTED.contains(&key.as_str()) || WITHOUT_EQUIVALENT.iter().any(|(k, _, _)| *k == key);
    if known {
        return Ok(());
    }
    let nearest = CONVERTED
        .iter()
        .copied()
        .chain(WITHOUT_EQUIVALENT.iter().map(|(k, _, _)| *k))
        .map(|k| (strsim::levenshtein(&key, k), k))
        .min();
    let hint = match nearest {
        Some((d, k)) if d <= 3 => format!(" (did you mean {k}?)"),
        _ => String::new(),
    };
    Err(ImportError::at(
        &s.at,
        &s.key,
        format!("not a PgBouncer setting{hint}; PgBouncer refuses to start with it"),
    ))
}

impl Convert<'_> {
    pub(super) fn listen(&mut self) -> Result<(), ImportError> {
        let port_s = self.take("listen_port");
        let port = match &port_s {
            Some(s) => {
                let n = s.int()?;
                u16::try_from(n).ok().filter(|p| *p > 0).ok_or_else(|| {
                    ImportError::at(&s.at, &s.key, format!("{n} is not a port (1-65535)"))
                })?
            }
            None => 6432,
        };
        let addr_s = self.take("listen_addr");
        let mut comments = Vec::new();
        let addrs = addr_s.as_ref().map(|s| list(&s.value)).unwrap_or_default();
        let host: IpAddr = match addrs.first().map(String::as_str) {
            None => {
                let message = format!("PgBouncer then listens on its unix socket only; pgwake always listens on TCP too, here on loopback only (listen.addr = \"127.0.0.1:{port}\")");
                match &addr_s {
                    Some(s) => self.warn(s, message),
                    None => self.warn_unset("listen_addr", message),
                }
                IpAddr::from([127, 0, 0, 1])
            }
            Some("*") => {
                comments.push(
                    "PgBouncer's * listens on IPv6 too: \"[::]:PORT\" does both on Linux"
                        .to_owned(),
                );
                IpAddr::from([0, 0, 0, 0])
            }
            Some("localhost") => IpAddr::from([127, 0, 0, 1]),
            Some(first) => match first.trim_matches(['[', ']']).parse::<IpAddr>() {
                Ok(ip) => ip,
                Err(_) => {
                    if let Some(s) = &addr_s {
                        self.warn(s, format!("pgwake listens on an address, not a host name: {first:?} became 127.0.0.1 (loopback only); set listen.addr to its address"));
                    }
                    IpAddr::from([127, 0, 0, 1])
                }
            },
        };
        // The other addresses of the list: listen.extra_addrs.
        let mut extra = Vec::new();
        if let (Some(s), Some((_, rest))) = (&addr_s, addrs.split_first()) {
            for a in rest {
                match a.as_str() {
                    "localhost" => extra.push(format!("127.0.0.1:{port}")),
                    "*" => extra.push(format!("0.0.0.0:{port}")),
                    other => match other.trim_matches(['[', ']']).parse::<IpAddr>() {
                        Ok(IpAddr::V6(v6)) => extra.push(format!("[{v6}]:{port}")),
                        Ok(IpAddr::V4(v4)) => extra.push(format!("{v4}:{port}")),
                        Err(_) => self.warn(s, format!("pgwake listens on addresses, not host names: {other:?} was left out; add its address to listen.extra_addrs")),
                    },
                }
            }
        }
        self.loopback_listener = host.is_loopback()
            && extra
                .iter()
                .all(|a| a.starts_with("127.") || a.starts_with("[::1]"));
        let addr = match host {
            IpAddr::V6(v6) => format!("[{v6}]:{port}"),
            IpAddr::V4(v4) => format!("{v4}:{port}"),
        };
        let mut origins = Vec::new();
        for s in [&addr_s, &port_s].into_iter().flatten() {
            origins.push(super::origin(s));
            comments.splice(0..0, s.comments.iter().cloned());
        }
        let origin = if origins.is_empty() {
            PGBOUNCER_DEFAULT.to_owned()
        } else {
            origins.join(", ")
        };
        self.doc
            .set(&["listen"], "addr", string(&addr), &origin, &comments);
        if let (Some(s), false) = (&addr_s, extra.is_empty()) {
            let origin = super::origin(s);
            self.doc
                .set(&["listen"], "extra_addrs", strings(&extra), &origin, &[]);
        }

        match self.take("unix_socket_dir") {
            None => self.doc.set(&["listen"], "unix_socket_dir", string("/tmp"), PGBOUNCER_DEFAULT, &[]),
            Some(s) if s.value.is_empty() => {}
            Some(s) if s.value.starts_with('@') => {
                self.warn(&s, "pgwake cannot listen on an abstract unix socket; set listen.unix_socket_dir to a directory".into())
            }
            Some(s) => {
                let dir = self.resolve(&s.value).display().to_string();
                self.set_from(&["listen"], "unix_socket_dir", string(&dir), &s);
            }
        }

        match self.take("unix_socket_mode") {
            // PgBouncer's default, pgwake's too.
            Some(s) if s.value.trim_start_matches('0') == "777" => {}
            Some(s) => self.set_from(&["listen"], "unix_socket_mode", string(&s.value), &s),
            None => {}
        }
        match self.take("unix_socket_group") {
            Some(s) if s.value.is_empty() => {}
            Some(s) => self.set_from(&["listen"], "unix_socket_group", string(&s.value), &s),
            None => {}
        }

        self.at_least_one(
            "max_client_conn",
            &["listen"],
            "max_client_conn",
            100,
            "lets no client in",
        )?;
        for (key, to) in [
            ("max_db_client_connections", "max_client_conn_per_database"),
            ("max_user_client_connections", "max_client_conn_per_user"),
        ] {
            if let Some(s) = self.take(key) {
                let n = s.count()?;
                self.set_from(&["listen"], to, int_value(n), &s);
            }
        }
        self.time(
            "client_login_timeout",
            &["listen"],
            "client_login_timeout",
            60,
        )?;
        // The same option under the same name: seconds the kernel holds a
        // client that has sent nothing (0: accept at once).
        if let Some(s) = self.take("tcp_defer_accept") {
            let d = s.seconds()?;
            self.set_from(&["listen"], "tcp_defer_accept", duration(d), &s);
        }
        if let Some(s) = self.take("max_packet_size") {
            let n = s.count()?;
            if n < 1024 {
                return Err(ImportError::at(
                    &s.at,
                    &s.key,
                    format!("{n} bytes is below the 1024 pgwake needs"),
                ));
            }
            self.set_from(&["listen"], "max_message_size", int_value(n), &s);
        }
        self.client_tls()
    }

    fn client_tls(&mut self) -> Result<(), ImportError> {
        if let Some(s) = self.take("client_tls_sslmode") {
            let mode = s.choice(SSLMODES)?;
            let pgwake = match mode {
                "verify-ca" | "verify-full" => {
                    self.warn(&s, format!("pgwake does not check client certificates: {mode} became require (TLS required, then [client_auth] as usual)"));
                    "require"
                }
                other => other,
            };
            self.set_from(&["listen"], "client_tls_mode", string(pgwake), &s);
        }
        for (key, to) in [
            ("client_tls_cert_file", "client_tls_cert"),
            ("client_tls_key_file", "client_tls_key"),
        ] {
            if let Some(s) = self.take(key) {
                if !s.value.is_empty() {
                    let path = self.resolve(&s.value).display().to_string();
                    self.set_from(&["listen"], to, string(&path), &s);
                }
            }
        }
        Ok(())
    }

    /// `[pool]` and `[timeouts]`.
    pub(super) fn limits_and_timeouts(&mut self) -> Result<(), ImportError> {
        match self.take("pool_mode") {
            Some(s) => {
                let mode = s.choice(&["session", "transaction", "statement"])?;
                let pgwake = self.pool_mode(&s.at, &s.key, mode);
                self.set_from(&["pool"], "mode", string(pgwake), &s);
            }
            None => self
                .doc
                .set(&["pool"], "mode", string("session"), PGBOUNCER_DEFAULT, &[]),
        }
        let size = self.at_least_one(
            "default_pool_size",
            &["pool"],
            "size",
            20,
            "gives pools no server connection",
        )?;
        self.pool_size = size;
        let min = match self.take("min_pool_size") {
            Some(s) => {
                let n = s.count()?.min(size);
                let mut comments = s.comments.clone();
                comments.push("pgwake opens these at start, even before a client comes".to_owned());
                self.doc.set(
                    &["pool"],
                    "min_idle",
                    int_value(n),
                    &super::origin(&s),
                    &comments,
                );
                n
            }
            None => {
                self.doc
                    .set(&["pool"], "min_idle", int_value(0), PGBOUNCER_DEFAULT, &[]);
                0
            }
        };
        self.min_pool_size = min;
        match self.take("server_lifetime") {
            // 0: each connection serves once, in both.
            Some(s) => {
                let d = s.seconds()?;
                self.set_from(&["pool"], "max_lifetime", duration(d), &s);
            }
            None => self.doc.set(
                &["pool"],
                "max_lifetime",
                duration(Duration::from_secs(3600)),
                PGBOUNCER_DEFAULT,
                &[],
            ),
        }
        self.time("server_idle_timeout", &["pool"], "idle_timeout", 600)?;
        self.time("query_wait_timeout", &["pool"], "pool_wait_timeout", 120)?;
        if let Some(s) = self.take("max_prepared_statements") {
            match s.count()? {
                0 => self.warn(&s, "pgwake always serves named prepared statements in transaction mode; pool.max_prepared_statements stays 200".into()),
                n => self.set_from(&["pool"], "max_prepared_statements", int_value(n), &s),
            }
        }
        for key in [
            "query_timeout",
            "idle_transaction_timeout",
            "client_idle_timeout",
        ] {
            if let Some(s) = self.take(key) {
                let d = s.seconds()?;
                if !d.is_zero() {
                    self.set_from(&["timeouts"], key, duration(d), &s);
                }
            }
        }
        if let Some(s) = self.take("ignore_startup_parameters") {
            if !s.value.is_empty() {
                self.warn(&s, format!("pgwake accepts every startup parameter and applies it on the server connection ({} included) instead of ignoring it", s.value));
            }
        }
        Ok(())
    }

    /// A count pgwake needs at least 1 of: PgBouncer's 0 is refused, saying
    /// what it would mean; unset, PgBouncer's `default`.
    fn at_least_one(
        &mut self,
        key: &str,
        path: &[&str],
        to: &str,
        default: usize,
        zero: &str,
    ) -> Result<usize, ImportError> {
        let Some(s) = self.take(key) else {
            self.doc
                .set(path, to, int_value(default), PGBOUNCER_DEFAULT, &[]);
            return Ok(default);
        };
        let n = s.count()?;
        if n == 0 {
            let message = format!("0 {zero}; pgwake needs at least 1");
            return Err(ImportError::at(&s.at, &s.key, message));
        }
        self.set_from(path, to, int_value(n), &s);
        Ok(n)
    }

    /// A time setting whose pgwake key must be above zero: PgBouncer's 0
    /// (no limit) becomes [`NEVER`], with a warning; unset, PgBouncer's
    /// `default` seconds.
    fn time(
        &mut self,
        key: &str,
        path: &[&str],
        to: &str,
        default: u64,
    ) -> Result<(), ImportError> {
        let Some(s) = self.take(key) else {
            let d = duration(Duration::from_secs(default));
            self.doc.set(path, to, d, PGBOUNCER_DEFAULT, &[]);
            return Ok(());
        };
        let mut d = s.seconds()?;
        if d.is_zero() {
            let never = humantime::format_duration(NEVER);
            let message = format!("0 (no limit) has no equivalent: pgwake's {}.{to} must be above zero, so it became {never}", path.join("."));
            self.warn(&s, message);
            d = NEVER;
        }
        self.set_from(path, to, duration(d), &s);
        Ok(())
    }

    /// pgwake's pool mode for PgBouncer's, set by `key` at `at`.
    pub(super) fn pool_mode(&mut self, at: &Place, key: &str, mode: &str) -> &'static str {
        match mode {
            "session" => "session",
            "transaction" => "transaction",
            _ => {
                self.warn_at(at, key, format!("pgwake has no statement pooling: {mode:?} became transaction (multi-statement transactions are allowed)"));
                "transaction"
            }
        }
    }

    /// `[server]`: connecting, TLS, TCP.
    pub(super) fn server_connections(&mut self) -> Result<(), ImportError> {
        self.time("server_connect_timeout", &["server"], "connect_timeout", 15)?;
        match self.take("server_tls_sslmode") {
            Some(s) => {
                let mode = s.choice(SSLMODES)?;
                let pgwake = if mode == "allow" {
                    self.warn(&s, "pgwake has no allow mode (plaintext first, TLS if refused): it became prefer (TLS first)".into());
                    "prefer"
                } else {
                    mode
                };
                self.set_from(&["server"], "sslmode", string(pgwake), &s);
            }
            None => self.doc.set(
                &["server"],
                "sslmode",
                string("prefer"),
                PGBOUNCER_DEFAULT,
                &[],
            ),
        }
        if let Some(s) = self.take("server_tls_ca_file") {
            if !s.value.is_empty() {
                let path = self.resolve(&s.value).display().to_string();
                self.set_from(&["server"], "sslrootcert", string(&path), &s);
            }
        }
        let keepalive = match self.take("tcp_keepalive") {
            Some(s) if !s.flag()? => {
                self.warn(&s, "pgwake always uses TCP keepalive on server connections (to notice connections a NAT dropped); it cannot be turned off".into());
                false
            }
            _ => true,
        };
        for (key, to) in [
            ("tcp_keepidle", "tcp_keepalive_idle"),
            ("tcp_keepintvl", "tcp_keepalive_interval"),
        ] {
            if let Some(s) = self.take(key) {
                let n = s.count()?;
                if keepalive && n > 0 {
                    let secs = u64::try_from(n).unwrap_or(u64::MAX);
                    self.set_from(&["server"], to, duration(Duration::from_secs(secs)), &s);
                }
            }
        }
        if let Some(s) = self.take("tcp_keepcnt") {
            let n = s.count()?;
            if keepalive && n > 0 {
                self.set_from(&["server"], "tcp_keepalive_count", int_value(n), &s);
            }
        }
        if let Some(s) = self.take("tcp_user_timeout") {
            let ms = s.count()?;
            if ms > 0 {
                let ms = u64::try_from(ms).unwrap_or(u64::MAX);
                self.set_from(
                    &["server"],
                    "tcp_user_timeout",
                    duration(Duration::from_millis(ms)),
                    &s,
                );
            }
        }
        Ok(())
    }

    /// `[log]`, and the logging settings pgwake does not have yet.
    pub(super) fn logging(&mut self) -> Result<(), ImportError> {
        if let Some(s) = self.take("verbose") {
            let level = match s.int()? {
                n if n <= 0 => "info",
                1 => "debug",
                _ => "trace",
            };
            self.set_from(&["log"], "level", string(level), &s);
        }
        for (key, to) in [
            ("log_connections", "connections"),
            ("log_disconnections", "disconnections"),
        ] {
            match self.take(key) {
                Some(s) => {
                    let on = s.flag()?;
                    self.set_from(&["log"], to, Value::Boolean(on), &s);
                }
                None => self
                    .doc
                    .set(&["log"], to, Value::Boolean(true), PGBOUNCER_DEFAULT, &[]),
            }
        }
        // PgBouncer logs its stats line every stats_period unless log_stats = 0.
        let log_stats = self.take("log_stats");
        let period = self.take("stats_period");
        let on = match &log_stats {
            Some(s) => s.flag()?,
            None => true,
        };
        let secs = match &period {
            Some(s) => u64::try_from(s.count()?).unwrap_or(u64::MAX),
            None => 60,
        };
        let origins: Vec<String> = [&log_stats, &period]
            .into_iter()
            .flatten()
            .map(super::origin)
            .collect();
        let origin = if origins.is_empty() {
            PGBOUNCER_DEFAULT.to_owned()
        } else {
            origins.join(", ")
        };
        let every = if on {
            Duration::from_secs(secs)
        } else {
            Duration::ZERO
        };
        self.doc
            .set(&["log"], "stats_period", duration(every), &origin, &[]);
        if let (false, Some(s)) = (on, &period) {
            self.warn(s, "with log_stats = 0 PgBouncer uses it only for the averages of SHOW STATS; pgwake's SHOW STATS averages since start".into());
        }
        Ok(())
    }

    /// `[admin]`: who may use the console.
    pub(super) fn admin(&mut self) {
        let mut any = false;
        for key in ["admin_users", "stats_users"] {
            if let Some(s) = self.take(key) {
                let users = list(&s.value);
                if !users.is_empty() {
                    any = true;
                    self.set_from(&["admin"], key, strings(&users), &s);
                }
            }
        }
        if !any {
            self.warn_unset("admin_users", "with admin_users and stats_users empty PgBouncer lets no one into its console (but its own OS user over the unix socket); pgwake lets unix-socket clients run every command and loopback clients SHOW commands".into());
        }
    }

    /// The `[pgbouncer]` settings left, all without an equivalent: a
    /// warning for each that changes something.
    pub(super) fn without_equivalent(&mut self) {
        let left: Vec<Setting> = std::mem::take(&mut self.settings).into_values().collect();
        for s in left {
            let key = s.key.to_ascii_lowercase();
            let Some((_, harmless, instead)) =
                WITHOUT_EQUIVALENT.iter().find(|(k, _, _)| *k == key)
            else {
                continue;
            };
            let changes_nothing = harmless.is_some_and(|h| {
                h.eq_ignore_ascii_case(s.value.trim())
                    || matches!((super::parse_int(h), super::parse_int(&s.value)), (Some(a), Some(b)) if a == b)
            });
            if !changes_nothing {
                self.warn(&s, format!("no equivalent in pgwake: {instead}"));
            }
        }
    }
}
