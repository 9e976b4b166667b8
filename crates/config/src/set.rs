//! Changing one key of a running configuration (the admin console's
//! `SET key = value`): the key named as `SHOW CONFIG` names it
//! (`pool.size`, `databases.app.size`), the value read as that key's type,
//! the result checked as a whole file would be.

use toml::Value;

use crate::{env, tree, validate, Config};

/// Why a key could not be set.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SetError {
    /// The configuration has no such key.
    #[error("{0}")]
    Unknown(String),
    /// The key takes effect only at restart.
    #[error("{0} changes only at restart: set it in the configuration file (or PGWAKE_* variable) and restart pgwake")]
    NeedsRestart(String),
    /// A secret: kept out of the console (and its logs).
    #[error(
        "{0} is a secret: set it in the configuration file or its PGWAKE_* variable and reload"
    )]
    Secret(String),
    /// The value does not fit the key.
    #[error("{0}")]
    Invalid(String),
}

/// Keys whose new value is used only after a restart; every other key
/// applies on reload (SIGHUP, `RELOAD`) and with `SET`.
pub fn needs_restart(key: &str) -> bool {
    matches!(
        key,
        "listen.addr"
            | "listen.extra_addrs"
            | "listen.unix_socket_dir"
            | "listen.unix_socket_mode"
            | "listen.unix_socket_group"
            | "listen.max_client_conn"
            | "listen.worker_threads"
            | "listen.client_buffer_budget"
            | "listen.tcp_defer_accept"
            | "admin.addr"
            | "log.format"
    ) || key == "lifecycle"
        || key.starts_with("lifecycle.")
        || key == "tracing"
        || key.starts_with("tracing.")
        || key
            .strip_prefix("databases.")
            .and_then(|rest| rest.split_once('.'))
            .is_some_and(|(_, k)| k == "server" || k.starts_with("server."))
}

/// Keys holding secrets (the token command may carry one too), written
/// `<redacted>` when the configuration is shown.
const SECRETS: &[&str] = &[
    "server.auth.password",
    "server.auth.client_secret",
    "server.auth.command",
];

impl Config {
    /// This configuration with `key` set to `text` (typed as the key is:
    /// a number, `true`/`false` (or `on`/`off`, `1`/`0`), a comma-separated
    /// list, else text such as `"30s"`).
    pub fn set(&self, key: &str, text: &str) -> Result<Config, SetError> {
        let path: Vec<&str> = key.split('.').collect();
        if key.is_empty() || path.iter().any(|p| p.is_empty()) {
            return Err(SetError::Unknown(format!(
                "{key:?} is not a setting (names are like pool.size, as SHOW CONFIG lists them)"
            )));
        }
        if SECRETS.contains(&key) {
            return Err(SetError::Secret(key.to_owned()));
        }
        // [databases] entries come from the file: SET changes one, never adds one.
        if let ["databases", name, _] = path.as_slice() {
            if !self.databases.contains_key(*name) {
                return Err(SetError::Unknown(format!(
                    "{key}: there is no [databases.{name}] entry to change"
                )));
            }
        }
        let invalid = |e: String| SetError::Invalid(format!("{key}: {e}"));
        // Secrets are rendered `<redacted>`: they are put back below.
        let Ok(Value::Table(mut root)) = Value::try_from(self) else {
            return Err(invalid("the configuration cannot be rendered".into()));
        };
        let defaults = Value::try_from(Config::default()).unwrap_or(Value::Boolean(false));
        let current = Value::Table(root.clone());
        let like = tree::lookup(&current, &path).or_else(|| tree::lookup(&defaults, &path));
        let text = match (like, text.to_ascii_lowercase().as_str()) {
            (Some(Value::Boolean(_)), "on" | "1" | "yes") => "true",
            (Some(Value::Boolean(_)), "off" | "0" | "no") => "false",
            _ => text,
        };
        tree::insert(&mut root, &path, env::typed(like, text).map_err(invalid)?);
        let mut new: Config =
            serde_path_to_error::deserialize(Value::Table(root)).map_err(|e| {
                let message = e.inner().to_string();
                if message.starts_with("unknown field") {
                    let hint = env::nearest_field(&message)
                        .map(|(unknown, best)| {
                            let prefix = &key[..key.len().saturating_sub(unknown.len())];
                            format!("; did you mean {prefix}{best}?")
                        })
                        .unwrap_or_default();
                    SetError::Unknown(format!("unknown setting {key:?}{hint}"))
                } else {
                    invalid(message)
                }
            })?;
        new.server.auth.password = self.server.auth.password.clone();
        new.server.auth.client_secret = self.server.auth.client_secret.clone();
        let mut errors = Vec::new();
        validate::validate(&new, &mut errors);
        if !errors.is_empty() {
            return Err(SetError::Invalid(errors.join("; ")));
        }
        if needs_restart(key) {
            return Err(SetError::NeedsRestart(key.to_owned()));
        }
        Ok(new)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> Config {
        crate::load(
            Some((
                "t.toml",
                "[server]\nhost = \"db\"\n[server.auth]\nuser = \"app\"\npassword = \"s3cret\"\n[databases.app]\nsize = 3\n",
            )),
            None,
            [],
        )
        .expect("valid")
    }

    #[test]
    fn sets_typed_values_and_keeps_secrets() {
        let c = base();
        let n = c.set("pool.size", "7").expect("pool.size");
        assert_eq!(n.pool.size, 7);
        let n = n
            .set("databases.app.size", "5")
            .expect("databases.app.size");
        assert_eq!(n.databases["app"].size, Some(5));
        let n = n
            .set("timeouts.query_timeout", "30s")
            .expect("an unset duration");
        assert_eq!(
            n.timeouts.query_timeout,
            Some(std::time::Duration::from_secs(30))
        );
        let n = n.set("admin.admin_users", "ops, boss").expect("a list");
        assert_eq!(n.admin.admin_users, vec!["ops", "boss"]);
        let n = n
            .set("server.auth.allow_cleartext_without_tls", "on")
            .expect("on");
        assert!(n.server.auth.allow_cleartext_without_tls);
        assert_eq!(
            n.server.auth.password.as_ref().map(|s| s.expose()),
            Some("s3cret")
        );
    }

    #[test]
    fn refusals_name_the_key() {
        let c = base();
        let e = c.set("pool.sise", "7").unwrap_err();
        assert!(
            matches!(&e, SetError::Unknown(m) if m.contains("pool.sise") && m.contains("did you mean pool.size?")),
            "{e}"
        );
        let e = c.set("nonsense", "1").unwrap_err();
        assert!(
            matches!(&e, SetError::Unknown(m) if m.contains("\"nonsense\"")),
            "{e}"
        );
        let e = c.set("databases.other.size", "1").unwrap_err();
        assert!(
            matches!(&e, SetError::Unknown(m) if m.contains("[databases.other]")),
            "{e}"
        );
        let e = c.set("pool.size", "many").unwrap_err();
        assert!(
            matches!(&e, SetError::Invalid(m) if m.starts_with("pool.size: expected a whole number")),
            "{e}"
        );
        let e = c.set("pool.mode", "statement").unwrap_err();
        assert!(
            matches!(&e, SetError::Invalid(m) if m.contains("pool.mode")),
            "{e}"
        );
        let e = c.set("listen.addr", "127.0.0.1:7000").unwrap_err();
        assert!(
            e.to_string()
                .starts_with("listen.addr changes only at restart"),
            "{e}"
        );
        let e = c.set("server.auth.password", "x").unwrap_err();
        assert_eq!(e, SetError::Secret("server.auth.password".into()));
        assert!(!e.to_string().contains("s3cret"));
        // A value the whole configuration refuses.
        let e = c.set("listen.client_login_timeout", "0s").unwrap_err();
        assert!(e.to_string().contains("client_login_timeout"), "{e}");
    }
}
