//! Checks across keys that the types alone cannot express; every problem
//! names its key.

use std::time::Duration;

use crate::{AuthMethod, ClientAuthMethod, ClientTlsMode, Config, ServerAuth};

/// Checks that need more than one key, or a range.
/// Each method's required keys are set, and no key it ignores is.
fn check_auth(a: &ServerAuth, at: &str, errors: &mut Vec<String>) {
    let method = a.effective_method();
    let name = method.name();
    let set: [(&str, bool); 7] = [
        ("password", a.password.is_some()),
        ("path", a.path.is_some()),
        ("command", a.command.is_some()),
        ("client_id", a.client_id.is_some()),
        ("tenant_id", a.tenant_id.is_some()),
        ("client_secret", a.client_secret.is_some()),
        ("token_file", a.token_file.is_some()),
    ];
    let (required, allowed): (&[&str], &[&str]) = match method {
        AuthMethod::Password => (&["password"], &[]),
        AuthMethod::PasswordFile => (&["path"], &[]),
        AuthMethod::Command => (&["command"], &[]),
        AuthMethod::AzureManagedIdentity => (&[], &["client_id"]),
        AuthMethod::AzureWorkloadIdentity => (&[], &["client_id", "tenant_id", "token_file"]),
        AuthMethod::AzureCli => (&[], &["tenant_id"]),
        AuthMethod::AzureClientSecret => (&["tenant_id", "client_id", "client_secret"], &[]),
        AuthMethod::Trust => (&[], &[]),
    };
    for (key, is_set) in set {
        if required.contains(&key) && !is_set {
            let env = if at == "server" {
                format!(" (or set PGWAKE_SERVER_AUTH_{})", key.to_ascii_uppercase())
            } else {
                String::new()
            };
            errors.push(format!(
                "{at}.auth.{key} is required with {at}.auth.method = \"{name}\"{env}"
            ));
        } else if is_set && !required.contains(&key) && !allowed.contains(&key) {
            errors.push(format!(
                "{at}.auth.{key} is not used with {at}.auth.method = \"{name}\"; remove it or change the method"
            ));
        }
    }
    if a.scope.is_some() && !method.is_azure() {
        errors.push(format!(
            "{at}.auth.scope is only used with the azure_* methods, not \"{name}\""
        ));
    }
    if method == AuthMethod::PasswordFile {
        if let Some(p) = &a.path {
            if !p.is_file() {
                errors.push(format!(
                    "{at}.auth.path = {:?} is not a readable file",
                    p.display()
                ));
            }
        }
    }
    if a.fetch_timeout.is_zero() {
        errors.push(format!("{at}.auth.fetch_timeout must be above zero"));
    }
    if a.refresh_interval < Duration::from_secs(1) {
        errors.push(format!("{at}.auth.refresh_interval must be at least 1s"));
    }
}

fn check_lifecycle(l: &crate::Lifecycle, errors: &mut Vec<String>) {
    use crate::ProviderKind;
    let stops = l.idle_stop_after.is_some() || l.stop_on_shutdown;
    match l.provider {
        ProviderKind::None => {
            if stops || l.wake_on_startup {
                errors.push("lifecycle.idle_stop_after, stop_on_shutdown and wake_on_startup need lifecycle.provider = \"azure\" or \"command\"".into());
            }
        }
        ProviderKind::Azure => {
            const SHAPE: &str = "/subscriptions/SUB/resourceGroups/RG/providers/Microsoft.DBforPostgreSQL/flexibleServers/NAME";
            match &l.resource_id {
                None => errors.push(format!("lifecycle.resource_id is required with lifecycle.provider = \"azure\" ({SHAPE})")),
                Some(id) => {
                    let parts: Vec<&str> = id.trim_matches('/').split('/').collect();
                    let ok = parts.len() == 8
                        && parts[0].eq_ignore_ascii_case("subscriptions")
                        && parts[2].eq_ignore_ascii_case("resourcegroups")
                        && parts[4].eq_ignore_ascii_case("providers")
                        && parts[5].eq_ignore_ascii_case("Microsoft.DBforPostgreSQL")
                        && parts[6].eq_ignore_ascii_case("flexibleServers")
                        && parts.iter().all(|p| !p.is_empty());
                    if !ok {
                        errors.push(format!("lifecycle.resource_id = {id:?} is not a flexible server's resource ID ({SHAPE})"));
                    }
                }
            }
            if !(l.arm_endpoint.starts_with("https://")
                || l.arm_endpoint.starts_with("http://127.")
                || l.arm_endpoint.starts_with("http://localhost"))
            {
                errors.push(format!(
                    "lifecycle.arm_endpoint = {:?} must be an https:// URL",
                    l.arm_endpoint
                ));
            }
            if let Some(m) = l.identity {
                if !m.is_azure() {
                    errors.push(format!(
                        "lifecycle.identity = \"{}\" is not an azure_* method",
                        m.name()
                    ));
                }
            }
        }
        ProviderKind::Command => {
            if l.command.status.is_none() {
                errors.push(
                    "lifecycle.command.status is required with lifecycle.provider = \"command\""
                        .into(),
                );
            }
            if l.command.start.is_none() {
                errors.push(
                    "lifecycle.command.start is required with lifecycle.provider = \"command\""
                        .into(),
                );
            }
            if stops && l.command.stop.is_none() {
                errors.push(
                    "lifecycle.command.stop is required for idle_stop_after or stop_on_shutdown"
                        .into(),
                );
            }
        }
    }
    if l.wake_timeout.is_zero() {
        errors.push("lifecycle.wake_timeout must be above zero".into());
    }
    if l.idle_stop_after
        .is_some_and(|d| d < Duration::from_secs(1))
    {
        errors.push("lifecycle.idle_stop_after must be at least 1s".into());
    }
}

/// Client authentication: addresses parse, SCRAM has a user file, and a
/// listener beyond loopback never trusts clients from elsewhere unless the
/// operator says so by name.
fn check_client_auth(c: &Config, loopback_listener: bool, errors: &mut Vec<String>) {
    let auth = &c.client_auth;
    let configured = !auth.rules.is_empty();
    let mut needs_file = None;
    for (i, rule) in auth.effective_rules().iter().enumerate() {
        let key = if configured {
            format!("client_auth.rules[{i}]")
        } else {
            "client_auth (default rules)".to_owned()
        };
        let address = match rule.client_address() {
            Ok(a) => a,
            Err(e) => {
                errors.push(format!("{key}.address = {e}"));
                continue;
            }
        };
        match rule.method {
            ClientAuthMethod::Trust
                if !loopback_listener
                    && address.beyond_loopback()
                    && !auth.insecure_trust_beyond_loopback =>
            {
                errors.push(format!(
                    "{key}.method = \"trust\" for address {:?}, but listen.addr = {:?} accepts clients beyond loopback: they would connect as any user without a password. Use method = \"scram-sha-256\" with client_auth.file, limit the rule to address = \"loopback\" or \"unix\", or set client_auth.insecure_trust_beyond_loopback = true if the network itself is trusted",
                    rule.address, c.listen.addr
                ));
            }
            // Default rules a loopback listener cannot reach need no file.
            method
                if method.checks_password()
                    && auth.file.is_none()
                    && auth.query.is_none()
                    && (configured || !loopback_listener) =>
            {
                needs_file.get_or_insert((key, method));
            }
            _ => {}
        }
    }
    if let Some((key, method)) = needs_file {
        errors.push(if configured {
            format!("{key}.method = {:?} needs client_auth.file (users and their SCRAM verifiers, MD5 hashes or passwords, in PgBouncer's userlist.txt format) or client_auth.query", method.name())
        } else {
            format!(
                "listen.addr = {:?} accepts clients beyond loopback, and they must authenticate with SCRAM-SHA-256: set client_auth.file (users and their SCRAM verifiers or passwords, in PgBouncer's userlist.txt format), or add [[client_auth.rules]]",
                c.listen.addr
            )
        });
    }
    if auth.query.is_some() && auth.query_user.is_none() && c.server.auth.user.is_none() {
        errors.push(
            "client_auth.query needs client_auth.query_user (or server.auth.user): the server role that runs it".into(),
        );
    }
    if auth.query.as_deref().is_some_and(|q| !q.contains("$1")) {
        errors.push("client_auth.query must use $1 for the user name".into());
    }
    if let Some(path) = &auth.file {
        if !path.is_file() {
            errors.push(format!(
                "client_auth.file = {:?} is not a readable file",
                path.display()
            ));
        }
    }
}

fn check_client_tls(l: &crate::Listen, errors: &mut Vec<String>) {
    if l.client_tls_mode == ClientTlsMode::Disable {
        return;
    }
    for (key, path) in [
        ("client_tls_cert", &l.client_tls_cert),
        ("client_tls_key", &l.client_tls_key),
    ] {
        match path {
            None => errors.push(format!(
                "listen.client_tls_mode = {:?} needs listen.{key} (a PEM file)",
                l.client_tls_mode.name()
            )),
            Some(p) if !p.is_file() => errors.push(format!(
                "listen.{key} = {:?} is not a readable file",
                p.display()
            )),
            Some(_) => {}
        }
    }
}

fn check_peering(p: &crate::Peering, errors: &mut Vec<String>) {
    for (i, peer) in p.peers.iter().enumerate() {
        if let Err(e) = crate::parse_host_port(peer) {
            errors.push(format!("peering.peers[{i}] = {e}"));
        }
    }
    if let Some(service) = &p.service {
        if let Err(e) = crate::parse_host_port(service) {
            errors.push(format!("peering.service = {e}"));
        }
    }
}

/// The checks of one server table (`at`: `server`, or a database's own).
fn check_server(s: &crate::Server, at: &str, errors: &mut Vec<String>) {
    if let Some(path) = &s.sslrootcert {
        if !path.is_file() {
            errors.push(format!(
                "{at}.sslrootcert = {:?} is not a readable file",
                path.display()
            ));
        }
    }
    if s.tcp_keepalive_count == 0 {
        errors.push(format!("{at}.tcp_keepalive_count must be at least 1"));
    }
    if s.connect_timeout.is_zero() {
        errors.push(format!("{at}.connect_timeout must be above zero"));
    }
    check_auth(&s.auth, at, errors);
}

pub(crate) fn validate(c: &Config, errors: &mut Vec<String>) {
    check_lifecycle(&c.lifecycle, errors);
    check_peering(&c.peering, errors);
    crate::tracing::check(&c.tracing, errors);
    if c.server.host.is_empty() {
        errors.push(
            "server.host is not set: pass --server-url postgres://USER@HOST:5432/DB, set PGWAKE_SERVER_URL, or set [server] host".into(),
        );
    }
    match (c.listen.socket_addr(), c.listen.extra_socket_addrs()) {
        (Ok(addr), Ok(extra)) => {
            let loopback = addr.ip().is_loopback() && extra.iter().all(|a| a.ip().is_loopback());
            check_client_auth(c, loopback, errors)
        }
        (a, b) => errors.extend(a.err().into_iter().chain(b.err())),
    }
    check_client_tls(&c.listen, errors);
    if let Err(e) = c.listen.unix_socket_mode_bits() {
        errors.push(e);
    }
    if c.listen.client_login_timeout.is_zero() {
        errors.push("listen.client_login_timeout must be above zero".into());
    }
    if c.listen.max_client_conn == 0 {
        errors.push("listen.max_client_conn must be at least 1".into());
    }
    if c.listen.client_buffer_budget < 1024 * 1024 {
        errors.push("listen.client_buffer_budget must be at least 1048576 bytes (1 MiB)".into());
    }
    if c.listen.max_message_size < 1024 {
        errors.push("listen.max_message_size must be at least 1024 bytes".into());
    }
    check_server(&c.server, "server", errors);
    for (name, db) in &c.databases {
        if let Some(s) = &db.server {
            let at = format!("databases.{name}.server");
            if s.host.is_empty() {
                errors.push(format!("{at}.host is not set (nor server.host)"));
            }
            check_server(s, &at, errors);
        }
    }
    if !c.admin.addr.is_empty() && c.admin.socket_addr().is_none() {
        errors.push(format!(
            "admin.addr = {:?} is not an address like 127.0.0.1:9930 (empty: no admin HTTP server)",
            c.admin.addr
        ));
    }
    let t = &c.timeouts;
    for (key, v) in [
        ("query_timeout", t.query_timeout),
        ("idle_transaction_timeout", t.idle_transaction_timeout),
        ("client_idle_timeout", t.client_idle_timeout),
    ] {
        if v.is_some_and(|d| d.is_zero()) {
            errors.push(format!(
                "timeouts.{key} must be above zero (leave it unset for no limit)"
            ));
        }
    }
    let pool_checks = |prefix: &str, size: usize, min_idle: usize, errors: &mut Vec<String>| {
        if size == 0 {
            errors.push(format!("{prefix}size must be at least 1"));
        }
        if min_idle > size {
            errors.push(format!(
                "{prefix}min_idle = {min_idle} is above {prefix}size = {size}"
            ));
        }
    };
    pool_checks("pool.", c.pool.size, c.pool.min_idle, errors);
    if c.pool.pool_wait_timeout.is_zero() {
        errors.push("pool.pool_wait_timeout must be above zero".into());
    }
    if c.pool.max_prepared_statements == 0 {
        errors.push("pool.max_prepared_statements must be at least 1".into());
    }
    for name in c.databases.keys() {
        if let Some(r) = c.route(name) {
            pool_checks(&format!("databases.{name}."), r.size, r.min_idle, errors);
        }
    }
    // A level, or comma-separated `target=level` directives after one
    // (`warn,pgwake_lifecycle=info`).
    let is_level = |l: &str| matches!(l, "error" | "warn" | "info" | "debug" | "trace");
    let valid = c
        .log
        .level
        .split(',')
        .enumerate()
        .all(|(i, d)| match d.split_once('=') {
            Some((target, level)) => {
                i > 0
                    && is_level(level)
                    && !target.is_empty()
                    && target
                        .chars()
                        .all(|ch| ch.is_ascii_alphanumeric() || ch == '_' || ch == ':')
            }
            None => is_level(d),
        });
    if !valid {
        errors.push(format!(
            "log.level = {:?}: use error, warn, info, debug or trace (optionally followed by target=level directives, e.g. \"warn,pgwake_lifecycle=info\")",
            c.log.level
        ));
    }
}
