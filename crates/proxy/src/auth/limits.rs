//! Client connections counted per database name and per user name, for
//! `max_client_conn_per_database`, `[databases.NAME] max_client_conn` and
//! `max_client_conn_per_user`. A client holds an [`Admission`] for as long
//! as it is connected; dropping it gives the place back.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use pgwake_config::Config;
use pgwake_protocol::backend::ErrorMessage;
use pgwake_protocol::sqlstate;

#[derive(Default)]
pub(crate) struct ClientLimits {
    counts: Mutex<Counts>,
}

#[derive(Default)]
struct Counts {
    databases: HashMap<String, usize>,
    users: HashMap<String, usize>,
}

/// A client's place under the limits: nothing to hold (one word in every
/// session) where no limit applies.
pub(crate) struct Admission {
    _counted: Option<Box<Counted>>,
}

/// A place counted under a per-database or per-user limit.
struct Counted {
    limits: Arc<ClientLimits>,
    database: Option<Box<str>>,
    user: Option<Box<str>>,
}

impl ClientLimits {
    /// Admits a client for `database` and `user`, or says which limit it is over.
    pub fn admit(
        self: &Arc<Self>,
        config: &Config,
        database: &str,
        user: &str,
    ) -> Result<Admission, ErrorMessage> {
        let own_limit = config
            .databases
            .get(database)
            .and_then(|d| d.max_client_conn);
        let db_limit = own_limit.unwrap_or(config.listen.max_client_conn_per_database);
        let user_limit = config.listen.max_client_conn_per_user;
        let mut counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        let over = |limit: usize, map: &HashMap<String, usize>, name: &str| {
            limit > 0 && map.get(name).copied().unwrap_or(0) >= limit
        };
        if over(db_limit, &counts.databases, database) {
            // The key that set the limit, named only when it is reached.
            let db_key = match own_limit {
                Some(_) => format!("databases.{database}.max_client_conn"),
                None => "listen.max_client_conn_per_database".to_owned(),
            };
            return Err(too_many(format!(
                "too many clients for database \"{database}\" ({db_key} = {db_limit})"
            )));
        }
        if over(user_limit, &counts.users, user) {
            return Err(too_many(format!(
                "too many clients for user \"{user}\" (listen.max_client_conn_per_user = {user_limit})"
            )));
        }
        // Counted only where a limit applies, so the maps stay as small as
        // the set of limited names in use.
        let database = (db_limit > 0).then(|| {
            *counts.databases.entry(database.to_owned()).or_default() += 1;
            Box::from(database)
        });
        let user = (user_limit > 0).then(|| {
            *counts.users.entry(user.to_owned()).or_default() += 1;
            Box::from(user)
        });
        if database.is_none() && user.is_none() {
            return Ok(Admission { _counted: None });
        }
        Ok(Admission {
            _counted: Some(Box::new(Counted {
                limits: self.clone(),
                database,
                user,
            })),
        })
    }
}

fn too_many(message: String) -> ErrorMessage {
    ErrorMessage::fatal(sqlstate::TOO_MANY_CONNECTIONS, message)
}

impl Drop for Counted {
    fn drop(&mut self) {
        let mut counts = self.limits.counts.lock().unwrap_or_else(|e| e.into_inner());
        let release = |map: &mut HashMap<String, usize>, name: &Option<Box<str>>| {
            if let Some(name) = name.as_deref() {
                if let Some(n) = map.get_mut(name) {
                    *n -= 1;
                    if *n == 0 {
                        map.remove(name);
                    }
                }
            }
        };
        let Counts { databases, users } = &mut *counts;
        release(databases, &self.database);
        release(users, &self.user);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_per_database_and_user_free_their_place_on_drop() {
        let mut config = Config::default();
        config.listen.max_client_conn_per_user = 3;
        config.databases.insert(
            "small".into(),
            pgwake_config::Database {
                max_client_conn: Some(1),
                ..Default::default()
            },
        );
        let limits = Arc::new(ClientLimits::default());
        let a = limits.admit(&config, "small", "u").expect("first");
        let e = limits.admit(&config, "small", "v").err().expect("over");
        assert_eq!(e.code, sqlstate::TOO_MANY_CONNECTIONS);
        assert!(e.message.contains("databases.small.max_client_conn = 1"));
        let _b = limits.admit(&config, "big", "u").expect("another database");
        let _c = limits.admit(&config, "big", "u").expect("third for u");
        let e = limits.admit(&config, "big", "u").err().expect("user over");
        assert!(e.message.contains("max_client_conn_per_user = 3"));
        drop(a);
        let _d = limits
            .admit(&config, "small", "v")
            .expect("place given back");
        assert!(limits.counts.lock().unwrap().databases.len() <= 1);
    }
}
