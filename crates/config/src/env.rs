//! `PGWAKE_<SECTION>_<KEY>` overrides: which variables are keys, how their
//! text becomes a typed value, and what a typo resembles.

use toml::{Table, Value};

use crate::tree::{insert, lookup};

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
    ("tracing_", &["tracing"]),
];

/// Applies every `PGWAKE_*` variable in `env` to `root`, typed as the
/// default config (`defaults`) types that key; notes which variable set
/// which key in `origins`, and problems in `errors`.
pub(crate) fn apply<'a>(
    root: &mut Table,
    env: impl IntoIterator<Item = (&'a str, &'a str)>,
    defaults: &Value,
    origins: &mut Vec<(String, String)>,
    errors: &mut Vec<String>,
) {
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
                "{name}: no config section matches (sections: listen, server, server.auth, pool, lifecycle, lifecycle.command, admin, timeouts, log, client_auth, peering, tracing){hint}"
            ));
            continue;
        };
        let mut full: Vec<&str> = path.to_vec();
        full.push(key);
        let typed = match typed(lookup(defaults, &full), value) {
            Ok(v) => v,
            Err(e) => {
                errors.push(format!("{name}: {e}"));
                continue;
            }
        };
        insert(root, &full, typed);
        origins.push((full.join("."), name.to_owned()));
    }
}

/// `text` as a value of the type `like` has (a whole number, true or
/// false, a comma-separated list), else as a string.
pub(crate) fn typed(like: Option<&Value>, text: &str) -> Result<Value, String> {
    Ok(match like {
        Some(Value::Integer(_)) => match text.parse::<i64>() {
            Ok(i) => Value::Integer(i),
            Err(_) => return Err(format!("expected a whole number, got {text:?}")),
        },
        Some(Value::Boolean(_)) => match text {
            "true" => Value::Boolean(true),
            "false" => Value::Boolean(false),
            _ => return Err(format!("expected true or false, got {text:?}")),
        },
        Some(Value::Array(_)) => Value::Array(
            text.split(',')
                .map(str::trim)
                .filter(|v| !v.is_empty())
                .map(|v| Value::String(v.to_owned()))
                .collect(),
        ),
        _ => Value::String(text.to_owned()),
    })
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
pub(crate) fn did_you_mean(var: &str, message: &str) -> String {
    let Some((unknown, best)) = nearest_field(message) else {
        return String::new();
    };
    let prefix = &var[..var.len().saturating_sub(unknown.len())];
    format!("; did you mean {prefix}{}?", best.to_ascii_uppercase())
}

/// From serde's "unknown field `x`, expected one of `a`, `b`": the unknown
/// field, and the expected one it resembles.
pub(crate) fn nearest_field(message: &str) -> Option<(&str, &str)> {
    let rest = message.strip_prefix("unknown field `")?;
    let (unknown, expected) = rest.split_once('`')?;
    let known: Vec<&str> = expected.split('`').skip(1).step_by(2).collect();
    Some((unknown, closest(unknown, known.iter().copied())?))
}
