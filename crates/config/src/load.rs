//! Building a [`Config`] from its sources, in order of precedence (last wins):
//! the TOML file, the server URL, then `PGWAKE_<SECTION>_<KEY>` variables.

use std::fmt;

use toml::{Table, Value};

use std::time::Duration;

use crate::{AuthMethod, ClientAuthMethod, ClientTlsMode, Config, ServerAuth};

/// Every problem found, each naming the key (and the variable or file it came from).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<String>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "  - {e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// Environment variables read by the command line itself, not config keys.
const NOT_KEYS: &[&str] = &["PGWAKE_CONFIG", "PGWAKE_SERVER_URL"];

/// Sections an environment variable may address, longest first so that
/// `PGWAKE_SERVER_AUTH_USER` means `server.auth.user`.
const SECTIONS: &[(&str, &[&str])] = &[
    ("server_auth_", &["server", "auth"]),
    ("lifecycle_command_", &["lifecycle", "command"]),
    ("lifecycle_", &["lifecycle"]),
    ("server_", &["server"]),
    ("listen_", &["listen"]),
    ("pool_", &["pool"]),
    ("log_", &["log"]),
    ("admin_", &["admin"]),
    ("timeouts_", &["timeouts"]),
    ("client_auth_", &["client_auth"]),
    ("peering_", &["peering"]),
];

/// Builds the configuration. `file` is `(name for messages, TOML text)`;
/// `env` is the process environment (or a test's stand-in).
pub fn load<'a>(
    file: Option<(&str, &str)>,
    server_url: Option<&str>,
    env: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> Result<Config, ConfigErrors> {
    let mut errors = Vec::new();
    let mut root = match file {
        Some((name, text)) => match text.parse::<Table>() {
            Ok(t) => t,
            Err(e) => {
                return Err(ConfigErrors(vec![format!(
                    "{name}: not valid TOML: {}",
                    e.to_string().trim_end()
                )]))
            }
        },
        None => Table::new(),
    };
    if let Some(url) = server_url {
        if let Err(e) = apply_server_url(&mut root, url) {
            errors.push(format!("server URL: {e}"));
        }
    }
    let mut origins: Vec<(String, String)> = Vec::new();
    let defaults = Value::try_from(Config::default()).unwrap_or(Value::Table(Table::new()));
    for (name, value) in env {
        let Some(rest) = name.strip_prefix("PGWAKE_") else {
            continue;
        };
        if NOT_KEYS.contains(&name) || injected_service_link(name, value) {
            continue;
        }
        let lower = rest.to_ascii_lowercase();
        let Some((path, key)) = SECTIONS
            .iter()
            .find_map(|(p, path)| lower.strip_prefix(p).map(|k| (*path, k)))
        else {
            let hint = closest(&lower, SECTIONS.iter().map(|(p, _)| *p))
                .map(|p| format!("; did you mean PGWAKE_{}…?", p.to_ascii_uppercase()))
                .unwrap_or_default();
            errors.push(format!(
                "{name}: no config section matches (sections: listen, server, server.auth, pool, lifecycle, lifecycle.command, admin, timeouts, log, client_auth, peering){hint}"
            ));
            continue;
        };
        let mut full: Vec<&str> = path.to_vec();
        full.push(key);
        let typed = match lookup(&defaults, &full) {
            Some(Value::Integer(_)) => match value.parse::<i64>() {
                Ok(i) => Value::Integer(i),
                Err(_) => {
                    errors.push(format!("{name}: expected a whole number, got {value:?}"));
                    continue;
                }
            },
            Some(Value::Boolean(_)) => match value {
                "true" => Value::Boolean(true),
                "false" => Value::Boolean(false),
                _ => {
                    errors.push(format!("{name}: expected true or false, got {value:?}"));
                    continue;
                }
            },
            Some(Value::Array(_)) => Value::Array(
                value
                    .split(',')
                    .map(str::trim)
                    .filter(|v| !v.is_empty())
                    .map(|v| Value::String(v.to_owned()))
                    .collect(),
            ),
            _ => Value::String(value.to_owned()),
        };
        insert(&mut root, &full, typed);
        origins.push((full.join("."), name.to_owned()));
    }

    default_sslmode_for_tokens(&mut root);
    let file_name = file.map(|(n, _)| n).unwrap_or("configuration");
    let mut value = Value::Table(root);
    // Collect every field error by removing the offending key and trying
    // again; bounded because each round removes one key.
    let mut config = None;
    for _ in 0..64 {
        match serde_path_to_error::deserialize::<_, Config>(value.clone()) {
            Ok(c) => {
                config = Some(c);
                break;
            }
            Err(e) => {
                let path = e.path().to_string();
                let origin = origins
                    .iter()
                    .find(|(p, _)| *p == path)
                    .map(|(_, var)| var.as_str())
                    .unwrap_or(file_name);
                let mut message = format!("{path}: {} (in {origin})", e.inner());
                if origin != file_name {
                    message.push_str(&did_you_mean(origin, &e.inner().to_string()));
                }
                errors.push(message);
                let parts: Vec<&str> = path.split('.').collect();
                if path == "." || !remove(&mut value, &parts) {
                    break;
                }
            }
        }
    }
    let Some(config) = config else {
        return Err(ConfigErrors(errors));
    };
    validate(&config, &mut errors);
    if errors.is_empty() {
        Ok(config)
    } else {
        Err(ConfigErrors(errors))
    }
}

/// A token is sent as a cleartext password (Azure asks for it so), so when
/// the operator chose no `server.sslmode`, the token methods get libpq's
/// strictest: `verify-full`.
fn default_sslmode_for_tokens(root: &mut Table) {
    let method = lookup(&Value::Table(root.clone()), &["server", "auth", "method"])
        .and_then(Value::as_str)
        .map(str::to_owned);
    let token = matches!(
        method.as_deref(),
        Some(
            "command"
                | "azure_managed_identity"
                | "azure_workload_identity"
                | "azure_cli"
                | "azure_client_secret"
        )
    );
    let chosen = lookup(&Value::Table(root.clone()), &["server", "sslmode"]).is_some();
    if token && !chosen {
        insert(
            root,
            &["server", "sslmode"],
            Value::String("verify-full".into()),
        );
    }
}

/// Whether `name=value` is one of the variables Kubernetes injects for a
/// Service whose name maps to `PGWAKE_…` (service links: `X_SERVICE_HOST`,
/// `X_SERVICE_PORT`, `X_SERVICE_PORT_<PORT NAME>`, `X_PORT=tcp://…`,
/// `X_PORT_<N>_TCP`, and its `_PROTO`, `_PORT`, `_ADDR`). They are not
/// overrides, and a pod in a namespace with a Service named `pgwake` (or
/// `pgwake-server`, whose `PGWAKE_SERVER_PORT` is `tcp://…`) gets them
/// whatever its manifest says.
fn injected_service_link(name: &str, value: &str) -> bool {
    let upper = name.to_ascii_uppercase();
    let words: Vec<&str> = upper.split('_').collect();
    let is_proto = |w: &str| matches!(w, "TCP" | "UDP" | "SCTP");
    let is_port_number = |w: &str| !w.is_empty() && w.bytes().all(|b| b.is_ascii_digit());
    // X_SERVICE_HOST, X_SERVICE_PORT, X_SERVICE_PORT_<NAME>
    if let Some(i) = words.iter().position(|w| *w == "SERVICE") {
        if matches!(words.get(i + 1..), Some(["HOST"] | ["PORT", ..])) {
            return true;
        }
    }
    // X_PORT_<N>_<PROTO>[_PROTO|_PORT|_ADDR]
    for (i, w) in words.iter().enumerate() {
        if *w == "PORT"
            && words.get(i + 1).is_some_and(|n| is_port_number(n))
            && words.get(i + 2).is_some_and(|p| is_proto(p))
        {
            match words.get(i + 3..) {
                Some([]) | Some(["PROTO"]) | Some(["PORT"]) | Some(["ADDR"]) => return true,
                _ => {}
            }
        }
    }
    // X_PORT=tcp://10.0.0.7:6432
    upper.ends_with("_PORT")
        && ["tcp://", "udp://", "sctp://"]
            .iter()
            .any(|p| value.to_ascii_lowercase().starts_with(p))
}

/// The candidate nearest to `word`, when it is near enough to be a typo.
fn closest<'c>(word: &str, candidates: impl IntoIterator<Item = &'c str>) -> Option<&'c str> {
    candidates
        .into_iter()
        .map(|c| (strsim::jaro_winkler(word, c), c))
        .filter(|(score, _)| *score > 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, c)| c)
}

/// For an override naming a key its section does not have (serde's
/// "unknown field `x`, expected one of `a`, `b`"), the variable it resembles.
fn did_you_mean(var: &str, message: &str) -> String {
    let Some(rest) = message.strip_prefix("unknown field `") else {
        return String::new();
    };
    let Some((unknown, expected)) = rest.split_once('`') else {
        return String::new();
    };
    let known: Vec<&str> = expected.split('`').skip(1).step_by(2).collect();
    let Some(best) = closest(unknown, known.iter().copied()) else {
        return String::new();
    };
    let prefix = &var[..var.len().saturating_sub(unknown.len())];
    format!("; did you mean {prefix}{}?", best.to_ascii_uppercase())
}

fn lookup<'v>(v: &'v Value, path: &[&str]) -> Option<&'v Value> {
    path.iter().try_fold(v, |v, k| v.get(k))
}

fn insert(root: &mut Table, path: &[&str], value: Value) {
    let (last, parents) = path.split_last().expect("non-empty path");
    let mut t = root;
    for p in parents {
        let entry = t
            .entry(p.to_string())
            .or_insert_with(|| Value::Table(Table::new()));
        if !entry.is_table() {
            *entry = Value::Table(Table::new());
        }
        t = entry.as_table_mut().expect("table just ensured");
    }
    t.insert(last.to_string(), value);
}

fn remove(v: &mut Value, path: &[&str]) -> bool {
    let Some((last, parents)) = path.split_last() else {
        return false;
    };
    let mut cur = v;
    for p in parents {
        match cur.get_mut(p) {
            Some(next) => cur = next,
            None => return false,
        }
    }
    cur.as_table_mut().and_then(|t| t.remove(*last)).is_some()
}

/// Applies `postgres://user:password@host:port/dbname?sslmode=…&connect_timeout=…`.
fn apply_server_url(root: &mut Table, text: &str) -> Result<(), String> {
    let url = url::Url::parse(text).map_err(|e| format!("cannot parse it: {e}"))?;
    if !matches!(url.scheme(), "postgres" | "postgresql") {
        return Err(format!(
            "scheme {:?} is not postgres:// or postgresql://",
            url.scheme()
        ));
    }
    let host = url.host_str().ok_or("no host")?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    insert(root, &["server", "host"], Value::String(host.to_owned()));
    if let Some(port) = url.port() {
        insert(root, &["server", "port"], Value::Integer(i64::from(port)));
    }
    let decode = |s: &str| {
        percent_decode(s)
            .ok_or_else(|| "user or password is not valid percent-encoded UTF-8".to_owned())
    };
    if !url.username().is_empty() {
        let user = decode(url.username())?;
        insert(root, &["server", "auth", "user"], Value::String(user));
    }
    if let Some(pw) = url.password() {
        insert(
            root,
            &["server", "auth", "password"],
            Value::String(decode(pw)?),
        );
    }
    let db = url.path().trim_start_matches('/');
    if !db.is_empty() {
        insert(root, &["server", "dbname"], Value::String(decode(db)?));
    }
    for (k, v) in url.query_pairs() {
        match &*k {
            "sslmode" => insert(root, &["server", "sslmode"], Value::String(v.into_owned())),
            "sslrootcert" => insert(root, &["server", "sslrootcert"], Value::String(v.into_owned())),
            "connect_timeout" => {
                let secs: u64 = v
                    .parse()
                    .map_err(|_| format!("connect_timeout={v} is not a number of seconds"))?;
                insert(
                    root,
                    &["server", "connect_timeout"],
                    Value::String(format!("{secs}s")),
                );
            }
            other => {
                return Err(format!(
                    "parameter {other:?} is not supported (supported: sslmode, sslrootcert, connect_timeout)"
                ))
            }
        }
    }
    Ok(())
}

fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// Checks that need more than one key, or a range.
/// Each method's required keys are set, and no key it ignores is.
fn check_auth(a: &ServerAuth, errors: &mut Vec<String>) {
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
            let env = format!("PGWAKE_SERVER_AUTH_{}", key.to_ascii_uppercase());
            errors.push(format!(
                "server.auth.{key} is required with server.auth.method = \"{name}\" (or set {env})"
            ));
        } else if is_set && !required.contains(&key) && !allowed.contains(&key) {
            errors.push(format!(
                "server.auth.{key} is not used with server.auth.method = \"{name}\"; remove it or change the method"
            ));
        }
    }
    if a.scope.is_some() && !method.is_azure() {
        errors.push(format!(
            "server.auth.scope is only used with the azure_* methods, not \"{name}\""
        ));
    }
    if method == AuthMethod::PasswordFile {
        if let Some(p) = &a.path {
            if !p.is_file() {
                errors.push(format!(
                    "server.auth.path = {:?} is not a readable file",
                    p.display()
                ));
            }
        }
    }
    if a.fetch_timeout.is_zero() {
        errors.push("server.auth.fetch_timeout must be above zero".into());
    }
    if a.refresh_interval < Duration::from_secs(1) {
        errors.push("server.auth.refresh_interval must be at least 1s".into());
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
            ClientAuthMethod::ScramSha256
                if auth.file.is_none()
                    && auth.query.is_none()
                    && (configured || !loopback_listener) =>
            {
                needs_file.get_or_insert(key);
            }
            _ => {}
        }
    }
    if let Some(key) = needs_file {
        errors.push(if configured {
            format!("{key}.method = \"scram-sha-256\" needs client_auth.file (users and their SCRAM verifiers or passwords, in PgBouncer's userlist.txt format) or client_auth.query")
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

fn validate(c: &Config, errors: &mut Vec<String>) {
    check_lifecycle(&c.lifecycle, errors);
    check_peering(&c.peering, errors);
    if c.server.host.is_empty() {
        errors.push(
            "server.host is not set: pass --server-url postgres://USER@HOST:5432/DB, set PGWAKE_SERVER_URL, or set [server] host".into(),
        );
    }
    match c.listen.socket_addr() {
        Ok(addr) => check_client_auth(c, addr.ip().is_loopback(), errors),
        Err(e) => errors.push(e),
    }
    check_client_tls(&c.listen, errors);
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
    if let Some(path) = &c.server.sslrootcert {
        if !path.is_file() {
            errors.push(format!(
                "server.sslrootcert = {:?} is not a readable file",
                path.display()
            ));
        }
    }
    if c.server.tcp_keepalive_count == 0 {
        errors.push("server.tcp_keepalive_count must be at least 1".into());
    }
    if c.server.connect_timeout.is_zero() {
        errors.push("server.connect_timeout must be above zero".into());
    }
    check_auth(&c.server.auth, errors);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{PoolMode, SslMode};
    use std::time::Duration;

    fn ok(file: &str, env: &[(&str, &str)]) -> Config {
        load(Some(("test.toml", file)), None, env.iter().copied()).unwrap()
    }

    fn errs(file: &str, env: &[(&str, &str)]) -> Vec<String> {
        load(Some(("test.toml", file)), None, env.iter().copied())
            .unwrap_err()
            .0
    }

    #[test]
    fn defaults_and_durations() {
        let c = ok(
            "[server]\nhost = \"db\"\n[pool]\nidle_timeout = \"15m\"\n",
            &[],
        );
        assert_eq!(c.pool.idle_timeout, Duration::from_secs(900));
        assert_eq!(c.pool.size, 20);
        assert_eq!(c.server.port, 5432);
        assert_eq!(c.server.auth.effective_method(), AuthMethod::Trust);
    }

    #[test]
    fn client_auth_rules_and_tls_are_checked_by_name() {
        let e = errs(
            "[server]\nhost = \"db\"\n[[client_auth.rules]]\naddress = \"10.0.0.0/33\"\nmethod = \"trust\"\n[[client_auth.rules]]\nuser = [\"a\", \"b\"]\nmethod = \"scram-sha-256\"\n[listen]\nclient_tls_mode = \"require\"\nclient_login_timeout = \"0s\"\n",
            &[],
        )
        .join("\n");
        assert!(
            e.contains("client_auth.rules[0].address = \"10.0.0.0/33\""),
            "{e}"
        );
        assert!(
            e.contains("client_auth.rules[1].method = \"scram-sha-256\" needs client_auth.file"),
            "{e}"
        );
        assert!(e.contains("needs listen.client_tls_cert"), "{e}");
        assert!(e.contains("needs listen.client_tls_key"), "{e}");
        assert!(
            e.contains("listen.client_login_timeout must be above zero"),
            "{e}"
        );
        let e = errs(
            "[server]\nhost = \"db\"\n[[client_auth.rules]]\nmethod = \"md5\"\n",
            &[],
        )
        .join("\n");
        assert!(e.contains("client_auth.rules"), "{e}");

        // Loopback rules may trust on any listener; the default rules on a
        // loopback listener need no user file.
        let c = ok(
            "[server]\nhost = \"db\"\n[listen]\naddr = \"[::]:6432\"\n[[client_auth.rules]]\naddress = \"127.0.0.0/8\"\nmethod = \"trust\"\n[[client_auth.rules]]\naddress = \"::1\"\nmethod = \"trust\"\n[[client_auth.rules]]\nmethod = \"reject\"\n",
            &[],
        );
        let rules = c.client_auth.effective_rules();
        let addr = |i: usize| rules[i].client_address().unwrap();
        let ip = |s: &str| Some(s.parse::<std::net::IpAddr>().unwrap());
        assert!(addr(0).matches(ip("127.0.0.9")) && !addr(0).matches(ip("10.0.0.1")));
        assert!(addr(0).matches(ip("::ffff:127.0.0.1")), "v4-mapped peers");
        assert!(addr(1).matches(ip("::1")) && !addr(1).matches(None));
        assert!(addr(2).matches(None) && addr(2).matches(ip("192.0.2.1")));
        assert!(ok("[server]\nhost = \"db\"\n", &[])
            .client_auth
            .rules
            .is_empty());
    }

    #[test]
    fn every_problem_is_listed_with_its_path() {
        let e = errs(
            "[pool]\nsise = 3\nmode = \"bogus\"\n[server]\nhost = \"db\"\nprot = 1\n",
            &[],
        );
        let all = e.join("\n");
        assert!(all.contains("pool.sise"), "{all}");
        assert!(all.contains("pool.mode"), "{all}");
        assert!(all.contains("server.prot"), "{all}");
    }

    #[test]
    fn env_overrides_file_and_names_the_variable() {
        let c = ok(
            "[server]\nhost = \"db\"\n[pool]\nsize = 5\n",
            &[
                ("PGWAKE_POOL_SIZE", "7"),
                ("PGWAKE_SERVER_AUTH_PASSWORD", "12345"),
                ("PGWAKE_POOL_MIN_IDLE", "2"),
                ("HOME", "/root"),
            ],
        );
        assert_eq!(c.pool.size, 7);
        assert_eq!(c.pool.min_idle, 2);
        assert_eq!(c.server.auth.password.as_ref().unwrap().expose(), "12345");
        assert_eq!(c.server.auth.effective_method(), AuthMethod::Password);

        let e = errs("[server]\nhost = \"db\"\n", &[("PGWAKE_POOL_SISE", "3")]).join("\n");
        assert!(e.contains("PGWAKE_POOL_SISE"), "{e}");
        let e = errs("[server]\nhost = \"db\"\n", &[("PGWAKE_POOL_SIZ", "5")]).join("\n");
        assert!(
            e.contains("PGWAKE_POOL_SIZ") && e.contains("did you mean PGWAKE_POOL_SIZE?"),
            "{e}"
        );
        let e = errs("[server]\nhost = \"db\"\n", &[("PGWAKE_POOL_SIZE", "lots")]).join("\n");
        assert!(
            e.contains("PGWAKE_POOL_SIZE") && e.contains("whole number"),
            "{e}"
        );
    }

    #[test]
    fn token_methods_default_to_verify_full() {
        let c = ok(
            "[server]\nhost = \"db\"\n[server.auth]\nmethod = \"command\"\ncommand = \"x\"\n",
            &[],
        );
        assert_eq!(c.server.sslmode, SslMode::VerifyFull);
        let c = ok(
            "[server]\nhost = \"db\"\n",
            &[
                ("PGWAKE_SERVER_AUTH_METHOD", "azure_managed_identity"),
                ("PGWAKE_SERVER_AUTH_USER", "id"),
            ],
        );
        assert_eq!(c.server.sslmode, SslMode::VerifyFull);
        // Chosen by the operator: kept.
        let c = ok("[server]\nhost = \"db\"\nsslmode = \"require\"\n[server.auth]\nmethod = \"command\"\ncommand = \"x\"\n", &[]);
        assert_eq!(c.server.sslmode, SslMode::Require);
        // A password keeps libpq's default.
        let c = ok(
            "[server]\nhost = \"db\"\n[server.auth]\npassword = \"p\"\n",
            &[],
        );
        assert_eq!(c.server.sslmode, SslMode::Prefer);
        assert!(!c.server.auth.allow_cleartext_without_tls);
    }

    #[test]
    fn kubernetes_service_links_are_not_overrides() {
        // What the kubelet injects for Services named pgwake, pgwake-admin
        // and pgwake-server, next to real overrides.
        let mut env = vec![("PGWAKE_POOL_SIZE", "7"), ("PGWAKE_SERVER_PORT", "5433")];
        let links = [
            ("PGWAKE_SERVICE_HOST", "10.0.0.7"),
            ("PGWAKE_SERVICE_PORT", "6432"),
            ("PGWAKE_SERVICE_PORT_POSTGRES", "6432"),
            ("PGWAKE_SERVICE_PORT_ADMIN", "9930"),
            ("PGWAKE_PORT", "tcp://10.0.0.7:6432"),
            ("PGWAKE_PORT_6432_TCP", "tcp://10.0.0.7:6432"),
            ("PGWAKE_PORT_6432_TCP_PROTO", "tcp"),
            ("PGWAKE_PORT_6432_TCP_PORT", "6432"),
            ("PGWAKE_PORT_6432_TCP_ADDR", "10.0.0.7"),
            ("PGWAKE_ADMIN_SERVICE_HOST", "10.0.0.8"),
            ("PGWAKE_ADMIN_PORT", "tcp://10.0.0.8:9930"),
            ("PGWAKE_ADMIN_PORT_9930_TCP_ADDR", "10.0.0.8"),
            ("PGWAKE_SERVER_SERVICE_PORT", "6432"),
            ("PGWAKE_POOL_PORT_53_UDP", "udp://10.0.0.9:53"),
        ];
        env.extend(links);
        let c = ok("[server]\nhost = \"db\"\n", &env);
        assert_eq!(c.pool.size, 7);
        assert_eq!(c.server.port, 5433);
        // A Service named pgwake-server: its PGWAKE_SERVER_PORT is a link.
        let c = ok(
            "[server]\nhost = \"db\"\nport = 5434\n",
            &[("PGWAKE_SERVER_PORT", "tcp://10.0.0.9:6432")],
        );
        assert_eq!(c.server.port, 5434);
    }

    #[test]
    fn peering_from_file_and_env_with_each_bad_peer_named() {
        let c = ok("[server]\nhost = \"db\"\n", &[]);
        assert!(!c.peering.enabled());
        let c = ok(
            "[server]\nhost = \"db\"\n[peering]\npeers = [\"10.0.0.5:6432\", \"[fd00::5]:6432\", \"pgwake-0.pgwake:6432\"]\n",
            &[],
        );
        assert!(c.peering.enabled());
        assert_eq!(c.peering.peers.len(), 3);
        let c = ok(
            "[server]\nhost = \"db\"\n",
            &[
                ("PGWAKE_PEERING_PEERS", "127.0.0.1:7001, 127.0.0.1:7002"),
                ("PGWAKE_PEERING_SERVICE", "pgwake-peers:6432"),
            ],
        );
        assert_eq!(c.peering.peers, ["127.0.0.1:7001", "127.0.0.1:7002"]);
        assert_eq!(c.peering.service.as_deref(), Some("pgwake-peers:6432"));
        assert!(c.to_toml().contains("[peering]"));
        let e = errs(
            "[server]\nhost = \"db\"\n[peering]\npeers = [\"10.0.0.5:6432\", \"10.0.0.6\", \"fd00::5:6432\", \"a b:1\", \"h:0\"]\nservice = \"pgwake-peers\"\n",
            &[],
        )
        .join("\n");
        assert!(!e.contains("peers[0]"), "{e}");
        for i in 1..5 {
            assert!(e.contains(&format!("peering.peers[{i}] = ")), "{e}");
        }
        assert!(
            e.contains("peering.service = \"pgwake-peers\" is not host:port"),
            "{e}"
        );
        let e = errs(
            "[server]\nhost = \"db\"\n[peering]\npeer = [\"a:1\"]\n",
            &[],
        )
        .join("\n");
        assert!(e.contains("peering.peer"), "{e}");
    }

    #[test]
    fn server_url_fills_server_section() {
        let c = load(
            None,
            Some("postgres://app:p%40ss@db.example:6543/app?sslmode=disable&connect_timeout=3"),
            [],
        )
        .unwrap();
        assert_eq!(c.server.host, "db.example");
        assert_eq!(c.server.port, 6543);
        assert_eq!(c.server.auth.user.as_deref(), Some("app"));
        assert_eq!(c.server.auth.password.as_ref().unwrap().expose(), "p@ss");
        assert_eq!(c.server.dbname.as_deref(), Some("app"));
        assert_eq!(c.server.sslmode, SslMode::Disable);
        assert_eq!(c.server.connect_timeout, Duration::from_secs(3));
        assert!(load(None, Some("mysql://x@y/z"), []).is_err());
        assert!(load(None, Some("postgres://x@y/z?bogus=1"), []).is_err());
    }

    #[test]
    fn semantic_checks() {
        let e = errs(
            "[listen]\naddr = \"0.0.0.0:6432\"\n[pool]\nsize = 2\nmin_idle = 3\n[server.auth]\nmethod = \"password\"\n",
            &[],
        )
        .join("\n");
        assert!(e.contains("listen.addr"), "{e}");
        assert!(e.contains("min_idle"), "{e}");
        assert!(e.contains("server.auth.password"), "{e}");
        assert!(e.contains("server.host"), "{e}");
    }

    #[test]
    fn routes() {
        let c = ok(
            "[server]\nhost = \"db\"\n[server.auth]\nuser = \"svc\"\n[databases.app]\ndbname = \"prod\"\nmode = \"session\"\nsize = 3\n",
            &[],
        );
        let r = c.route("app").unwrap();
        assert_eq!(
            (r.dbname.as_str(), r.user.as_deref(), r.mode, r.size),
            ("prod", Some("svc"), PoolMode::Session, 3)
        );
        assert!(c.route("other").is_none());
        let c = ok("[server]\nhost = \"db\"\n", &[]);
        assert_eq!(c.route("anything").unwrap().dbname, "anything");
        assert_eq!(c.route("anything").unwrap().user, None);
    }

    #[test]
    fn printed_config_hides_the_password() {
        let c = ok(
            "[server]\nhost = \"db\"\n[server.auth]\npassword = \"hunter2\"\n",
            &[],
        );
        let text = c.to_toml();
        assert!(!text.contains("hunter2"));
        assert!(text.contains("<redacted>"));
        assert!(format!("{c:?}").contains("<redacted>") && !format!("{c:?}").contains("hunter2"));
    }

    #[test]
    fn token_sources_need_their_keys_and_nothing_else() {
        let e = errs(
            "[server]\nhost = \"db\"\n[server.auth]\nmethod = \"azure_client_secret\"\nclient_id = \"c\"\ncommand = \"x\"\n",
            &[],
        )
        .join("\n");
        assert!(e.contains("server.auth.tenant_id is required"), "{e}");
        assert!(e.contains("PGWAKE_SERVER_AUTH_CLIENT_SECRET"), "{e}");
        assert!(e.contains("server.auth.command is not used"), "{e}");
        let e = errs(
            "[server]\nhost = \"db\"\n[server.auth]\nmethod = \"command\"\nscope = \"s\"\nfetch_timeout = \"0s\"\n",
            &[],
        )
        .join("\n");
        assert!(e.contains("server.auth.command is required"), "{e}");
        assert!(e.contains("server.auth.scope"), "{e}");
        assert!(e.contains("fetch_timeout"), "{e}");
        let c = ok(
            "[server]\nhost = \"db\"\n[server.auth]\nmethod = \"azure_client_secret\"\ntenant_id = \"t\"\nclient_id = \"c\"\nrefresh_margin = \"10m\"\n",
            &[("PGWAKE_SERVER_AUTH_CLIENT_SECRET", "sp-s3cr3t")],
        );
        assert_eq!(c.server.auth.refresh_margin, Duration::from_secs(600));
        assert_eq!(
            c.server.auth.client_secret.as_ref().unwrap().expose(),
            "sp-s3cr3t"
        );
        assert!(!c.to_toml().contains("sp-s3cr3t") && !format!("{c:?}").contains("sp-s3cr3t"));
        let c = ok(
            "[server]\nhost = \"db\"\n[server.auth]\nmethod = \"azure_managed_identity\"\nclient_id = \"c\"\n",
            &[],
        );
        assert_eq!(
            c.server.auth.effective_method(),
            AuthMethod::AzureManagedIdentity
        );
    }
}
