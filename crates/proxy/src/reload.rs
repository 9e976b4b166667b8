//! Reloading the configuration (SIGHUP, the console's RELOAD): what can
//! change live does; what cannot is reported; a bad file changes nothing.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use std::collections::BTreeMap;

use pgwake_config::{needs_restart, Config, Server, SetError};

use crate::pool::ServerSide;
use crate::server::Target;
use crate::{credentials, pool_settings, Shared};

/// Re-reads the configuration from wherever it came from.
pub type ConfigSource = Box<dyn Fn() -> Result<Config, String> + Send + Sync>;
/// Applies a new `log.level`.
pub type LogLevelSetter = Box<dyn Fn(&str) -> Result<(), String> + Send + Sync>;

/// What the command line gives the proxy so that it can reload.
#[derive(Default)]
pub struct Hooks {
    pub reload: Option<ConfigSource>,
    pub set_log_level: Option<LogLevelSetter>,
}

/// The server settings, secrets included, for spotting a change.
fn server_fingerprint(s: &Server) -> String {
    let secret = |x: &Option<pgwake_credentials::Secret>| x.as_ref().map(|s| s.expose().to_owned());
    format!(
        "{s:?}|{:?}|{:?}",
        secret(&s.auth.password),
        secret(&s.auth.client_secret)
    )
}

impl Shared {
    /// Reads the configuration again and applies it. `Ok`: what changed
    /// and what needs a restart to change; `Err`: why the new configuration
    /// was rejected (the old one stays in force).
    pub fn reload(&self) -> Result<Vec<String>, String> {
        // One at a time: SIGHUP, RELOAD and SET may come together.
        let _one = self.reloading.lock().unwrap_or_else(|e| e.into_inner());
        let result = match &self.hooks.reload {
            None => {
                Err("this pgwake was not started from a configuration it can read again".into())
            }
            Some(source) => source().and_then(|new| self.apply(new)),
        };
        match &result {
            Ok(notes) => {
                self.metrics.reloads_ok.fetch_add(1, Ordering::Relaxed);
                tracing::info!(changes = %notes.join("; "), "configuration reloaded");
            }
            Err(e) => {
                self.metrics.reloads_failed.fetch_add(1, Ordering::Relaxed);
                tracing::error!(
                    "configuration reload rejected; the previous configuration stays in force: {e}"
                );
            }
        }
        result
    }

    /// `SET key = value` from the admin console: the configuration in force
    /// with one key changed, applied as a reload applies a new file. It
    /// lasts until the next reload, which reads the file again.
    pub(crate) fn set_setting(&self, key: &str, value: &str) -> Result<Vec<String>, SetError> {
        let _one = self.reloading.lock().unwrap_or_else(|e| e.into_inner());
        let new = self.config().set(key, value)?;
        let notes = self.apply(new).map_err(SetError::Invalid)?;
        tracing::info!(key, value, changes = %notes.join("; "), "SET from the admin console");
        Ok(notes)
    }

    /// Puts `new` in force where it can be applied live. `Ok`: what changed
    /// and what needs a restart; `Err`: why nothing changed.
    fn apply(&self, new: Config) -> Result<Vec<String>, String> {
        let old = self.config();
        let mut notes = Vec::new();
        let old_keys: BTreeMap<String, String> = old.flatten().into_iter().collect();
        let new_keys: BTreeMap<String, String> = new.flatten().into_iter().collect();
        let mut changed: Vec<&str> = old_keys
            .keys()
            .chain(new_keys.keys())
            .filter(|k| old_keys.get(*k) != new_keys.get(*k))
            .map(String::as_str)
            .collect();
        changed.sort_unstable();
        changed.dedup();
        let (mut restart, live): (Vec<&str>, Vec<&str>) =
            changed.into_iter().partition(|k| needs_restart(k));
        if !live.is_empty() {
            notes.push(format!("changed: {}", live.join(", ")));
        }
        // Build everything that can fail before changing anything.
        let server_changed = server_fingerprint(&old.server) != server_fingerprint(&new.server);
        let server = if server_changed {
            let target = Target::from_config(&new.server)?;
            let creds = credentials::from_config(&new.server.auth)
                .map_err(|e| format!("server.auth: {e}"))?;
            Some((
                ServerSide {
                    target: Arc::new(target),
                    credentials: creds.source,
                },
                creds.refresher,
            ))
        } else {
            None
        };
        // Certificate and user files are read again even when their paths
        // stay the same: rotating them in place is how they change.
        let client_tls = crate::client_tls_acceptor(&new)?;
        if old.listen.client_tls_mode != new.listen.client_tls_mode {
            notes.push(format!(
                "listen.client_tls_mode = {:?}",
                new.listen.client_tls_mode.name()
            ));
        }
        let client_auth = crate::auth::ClientAuth::prepare(&new)?;
        if format!("{:?}", old.client_auth) != format!("{:?}", new.client_auth) {
            notes.push("client_auth changed".into());
        }
        if old.log.level != new.log.level {
            match &self.hooks.set_log_level {
                Some(set) => {
                    set(&new.log.level).map_err(|e| format!("log.level: {e}"))?;
                    notes.push(format!("log.level = {:?}", new.log.level));
                }
                None => restart.push("log.level"),
            }
        }
        // Apply.
        let new = Arc::new(new);
        *self.config.write().unwrap_or_else(|e| e.into_inner()) = new.clone();
        *self.client_tls.write().unwrap_or_else(|e| e.into_inner()) = client_tls;
        self.client_auth.install(client_auth);
        self.timeouts.set(&new);
        let mut side = None;
        if let Some((s, refresher)) = server {
            *self.server.lock().unwrap_or_else(|e| e.into_inner()) = s.clone();
            if let Some(cache) = refresher {
                self.run_refresher(cache);
            } else if let Some((_, stop)) = self
                .refresher
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .take()
            {
                stop.cancel();
            }
            side = Some(s);
            notes.push("server settings changed: server connections made under the old ones close as they are returned".into());
        }
        let pools: Vec<_> = self
            .pools
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect();
        for (pool, route_name) in pools {
            // A `[databases.NAME.server]` pool keeps its own server.
            let side = if self.db_servers.contains_key(&route_name) {
                None
            } else {
                side.clone()
            };
            let old_settings = pool.settings();
            let Some(route) = new.route(&route_name) else {
                notes.push(format!(
                    "database {route_name:?} is no longer configured: its pool keeps serving its clients"
                ));
                pool.reconfigure(old_settings, side.clone());
                continue;
            };
            let settings = pool_settings(&new, &route, old_settings.prewarm);
            if settings.size != old_settings.size || settings.min_idle != old_settings.min_idle {
                notes.push(format!(
                    "pool {}: size {} -> {}, min_idle {} -> {}",
                    pool.key(),
                    old_settings.size,
                    settings.size,
                    old_settings.min_idle,
                    settings.min_idle
                ));
            }
            pool.reconfigure(settings, side.clone());
        }
        self.warm_configured_pools(&new);
        self.reconfigured.notify_waiters();
        if !restart.is_empty() {
            notes.push(format!(
                "changed but only applied at restart: {}",
                restart.join(", ")
            ));
        }
        if notes.is_empty() {
            notes.push("nothing changed".into());
        }
        Ok(notes)
    }
}
