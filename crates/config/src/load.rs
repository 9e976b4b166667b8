//! Building a [`Config`] from its sources, in order of precedence (last wins):
//! the TOML file, the server URL, then `PGWAKE_<SECTION>_<KEY>` variables.

use std::fmt;

use toml::{Table, Value};

use crate::{tree, Config};

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
        if let Err(e) = crate::url::apply_server_url(&mut root, url) {
            errors.push(format!("server URL: {e}"));
        }
    }
    let mut origins: Vec<(String, String)> = Vec::new();
    let defaults = Value::try_from(Config::default()).unwrap_or(Value::Table(Table::new()));
    let env: Vec<(&str, &str)> = env.into_iter().collect();
    crate::env::apply(
        &mut root,
        env.iter().copied(),
        &defaults,
        &mut origins,
        &mut errors,
    );
    crate::tracing::apply_otel_env(&mut root, env.iter().copied());

    overlay_database_servers(&mut root);
    default_sslmode_for_tokens(&mut root, &["server"]);
    let own_servers: Vec<String> = match root.get("databases") {
        Some(Value::Table(dbs)) => dbs
            .iter()
            .filter(|(_, d)| d.get("server").is_some_and(Value::is_table))
            .map(|(name, _)| name.clone())
            .collect(),
        _ => Vec::new(),
    };
    for name in &own_servers {
        default_sslmode_for_tokens(&mut root, &["databases", name, "server"]);
    }
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
                    message.push_str(&crate::env::did_you_mean(origin, &e.inner().to_string()));
                }
                errors.push(message);
                let parts: Vec<&str> = path.split('.').collect();
                if path == "." || !tree::remove(&mut value, &parts) {
                    break;
                }
            }
        }
    }
    let Some(config) = config else {
        return Err(ConfigErrors(errors));
    };
    crate::validate::validate(&config, &mut errors);
    if errors.is_empty() {
        Ok(config)
    } else {
        Err(ConfigErrors(errors))
    }
}

/// `[databases.NAME.server]` tables are what they set over `[server]`:
/// each becomes `[server]` with its keys replaced. Its `auth`, when given,
/// is a whole `[server.auth]`: another server's login inherits no password
/// or method from the main one.
fn overlay_database_servers(root: &mut Table) {
    let main = match root.get("server") {
        Some(Value::Table(t)) => t.clone(),
        _ => Table::new(),
    };
    let Some(Value::Table(dbs)) = root.get_mut("databases") else {
        return;
    };
    for (_, db) in dbs.iter_mut() {
        if let Some(Value::Table(own)) = db.get_mut("server") {
            // A token login of its own is not sent under the main server's
            // weaker sslmode: unless it says, it gets the token default.
            let own_token = is_token_method(
                own.get("auth")
                    .and_then(|a| a.get("method"))
                    .and_then(Value::as_str),
            );
            let mut merged = main.clone();
            if own_token && !own.contains_key("sslmode") {
                merged.remove("sslmode");
            }
            merged.extend(own.iter().map(|(k, v)| (k.clone(), v.clone())));
            *own = merged;
        }
    }
}

/// The methods that send a token as the password.
fn is_token_method(method: Option<&str>) -> bool {
    matches!(
        method,
        Some(
            "command"
                | "azure_managed_identity"
                | "azure_workload_identity"
                | "azure_cli"
                | "azure_client_secret"
        )
    )
}

/// A token is sent as a cleartext password (Azure asks for it so), so when
/// the operator chose no `sslmode` for a server (`at`: `server`, or a
/// database's own), the token methods get libpq's strictest: `verify-full`.
fn default_sslmode_for_tokens(root: &mut Table, at: &[&str]) {
    let path = |key: &[&'static str]| -> Vec<String> {
        at.iter()
            .map(|s| s.to_string())
            .chain(key.iter().map(|s| s.to_string()))
            .collect()
    };
    let method_path = path(&["auth", "method"]);
    let method_path: Vec<&str> = method_path.iter().map(String::as_str).collect();
    let method = tree::lookup(&Value::Table(root.clone()), &method_path)
        .and_then(Value::as_str)
        .map(str::to_owned);
    let token = is_token_method(method.as_deref());
    let sslmode_path = path(&["sslmode"]);
    let sslmode_path: Vec<&str> = sslmode_path.iter().map(String::as_str).collect();
    let chosen = tree::lookup(&Value::Table(root.clone()), &sslmode_path).is_some();
    if token && !chosen {
        tree::insert(root, &sslmode_path, Value::String("verify-full".into()));
    }
}

#[cfg(test)]
#[path = "load_tests.rs"]
mod tests;
