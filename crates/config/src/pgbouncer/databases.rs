//! `[databases]`: which server, database and user each name leads to, and
//! its pool.

use super::auth::Userlist;
use super::ini::{Place, Section, Setting};
use super::{connstr, int_value, string, Convert, ImportError, PGBOUNCER_DEFAULT};
use crate::SecretKind;

/// Connection string keys PgBouncer reads in `[databases]`.
const DATABASE_KEYS: &[&str] = &[
    "dbname",
    "host",
    "port",
    "user",
    "password",
    "auth_user",
    "auth_dbname",
    "auth_query",
    "client_encoding",
    "datestyle",
    "timezone",
    "pool_size",
    "min_pool_size",
    "reserve_pool",
    "reserve_pool_size",
    "max_db_connections",
    "max_db_client_connections",
    "pool_mode",
    "connect_query",
    "application_name",
    "server_lifetime",
    "query_wait_timeout",
    "load_balance_hosts",
    "target_session_attrs",
];

/// Per-database keys pgwake has no equivalent for, and what it does instead.
const DATABASE_WITHOUT_EQUIVALENT: &[(&str, &str)] = &[
    ("connect_query", "pgwake runs no query on a new server connection; for settings use ALTER DATABASE … SET or ALTER ROLE … SET"),
    ("client_encoding", STARTUP),
    ("datestyle", STARTUP),
    ("timezone", STARTUP),
    ("application_name", STARTUP),
    ("server_lifetime", "pgwake's connection lifetime is pool.max_lifetime, for every database"),
    ("query_wait_timeout", "pgwake's wait limit is pool.pool_wait_timeout, for every database"),
    ("load_balance_hosts", "pgwake connects to one server host"),
    ("target_session_attrs", "pgwake does not check whether the server is a primary or a standby"),
];

/// The admin console's database name in pgwake (PgBouncer's own, `pgbouncer`, is refused by both).
const CONSOLE: &str = "pgwake";

const STARTUP: &str = "pgwake sets no server parameters per database: the client's own startup settings apply; for a default use ALTER DATABASE … SET";

/// What the kept `[databases]` entries need from client authentication.
#[derive(Debug, Default)]
pub(super) struct Routes {
    /// Server users forced by `user=`.
    pub forced_users: Vec<String>,
    /// Some entry logs in as the client's own user name.
    pub client_named: bool,
    /// `auth_user=`, `auth_dbname=`, `auth_query=` of the entries, with where.
    pub auth_user: Vec<(String, Place)>,
    pub auth_dbname: Vec<(String, Place)>,
    pub auth_query: Vec<(String, Place)>,
    /// Server databases of the entries.
    pub dbnames: Vec<String>,
    /// The server password pgwake logs in with.
    pub password: Option<String>,
}

/// One `[databases]` line, read.
struct Entry {
    s: Setting,
    name: String,
    params: Vec<(String, String)>,
    host: String,
    port: u16,
}

impl Entry {
    fn label(&self) -> String {
        format!("[databases] {}", self.name)
    }

    fn get(&self, key: &str) -> Option<&str> {
        self.params
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    fn count(&self, key: &str) -> Result<Option<usize>, ImportError> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => super::parse_int(v)
                .and_then(|n| usize::try_from(n).ok())
                .map(Some)
                .ok_or_else(|| {
                    ImportError::at(
                        &self.s.at,
                        &self.label(),
                        format!("{key}={v} is not a whole number of 0 or more"),
                    )
                }),
        }
    }

    fn origin(&self, key: &str) -> String {
        format!("{} {key} ({})", self.label(), self.s.at.short())
    }
}

impl Convert<'_> {
    pub(super) fn databases(&mut self, userlist: Option<&Userlist>) -> Result<Routes, ImportError> {
        let max_db = match self.take("max_db_connections") {
            Some(s) => Some((s.count()?, s)),
            None => None,
        };
        let mut entries: Vec<Entry> = Vec::new();
        let lines = self.ini.section(Section::Databases);
        for s in lines {
            let entry = self.entry(s)?;
            match entries.iter_mut().find(|e| e.name == entry.name) {
                Some(earlier) => *earlier = entry,
                None => entries.push(entry),
            }
        }
        let (fallback, named): (Vec<Entry>, Vec<Entry>) =
            entries.into_iter().partition(|e| e.name == "*");
        let fallback = fallback.into_iter().next();
        let candidates: Vec<&Entry> = if named.is_empty() {
            fallback.iter().collect()
        } else {
            named.iter().collect()
        };
        let Some((host, port)) = most_common(&candidates) else {
            let at = self.header(Section::Databases);
            self.warn_at(&at, "[databases]", "no database is configured, so PgBouncer serves none; pgwake needs a server: server.host = \"localhost\" (edit it), and serves every database name there".into());
            self.doc.set(
                &["server"],
                "host",
                string("localhost"),
                "",
                &["set this to your server: [databases] names none".to_owned()],
            );
            self.doc.set(&["server"], "port", int_value(5432), "", &[]);
            return Ok(Routes::default());
        };
        let first = candidates
            .iter()
            .find(|e| (e.host.as_str(), e.port) == (host.as_str(), port))
            .map(|e| e.s.clone());
        if let Some(s) = &first {
            let origin = format!("host, port of [databases] {} ({})", s.key, s.at.short());
            self.doc
                .set(&["server"], "host", string(&host), &origin, &[]);
            self.doc.set(
                &["server"],
                "port",
                int_value(usize::from(port)),
                &origin,
                &[],
            );
        }
        let mut kept = Vec::new();
        for e in named {
            if e.name == CONSOLE {
                self.warn_at(&e.s.at, &e.label(), format!("{:?} is pgwake's admin console: the entry was left out; give it another name", e.name));
            } else {
                kept.push(e);
            }
        }
        let table = !kept.is_empty();
        if let Some(f) = &fallback {
            if table {
                self.warn_at(&f.s.at, &f.label(), "the fallback has no equivalent next to named entries: with a [databases] table pgwake serves only the names listed, so clients asking for another database are refused".into());
            }
        }
        let mut routes = Routes::default();
        let kept = self.passwords(
            kept,
            fallback.as_ref().filter(|_| !table),
            userlist,
            &mut routes,
        );
        for e in &kept {
            self.entry_table(e, max_db.as_ref(), &mut routes)?;
            if (e.host.as_str(), e.port) != (host.as_str(), port) {
                // Another server: [databases.NAME.server] over [server]
                // ({host}:{port}, the one most entries use).
                let origin = e.origin("host");
                let path = ["databases", e.name.as_str(), "server"];
                self.doc.set(&path, "host", string(&e.host), &origin, &[]);
                let origin = e.origin("port");
                self.doc
                    .set(&path, "port", int_value(usize::from(e.port)), &origin, &[]);
            }
        }
        if !table {
            if let Some(f) = &fallback {
                self.fallback(f, &mut routes)?;
            }
        }
        if let Some((cap, s)) = max_db {
            if cap > 0 && !table {
                self.warn(&s, "pgwake caps server connections per pool (its size), not per database: a database used by several client users may open more".into());
            }
        }
        Ok(routes)
    }

    fn entry(&mut self, s: Setting) -> Result<Entry, ImportError> {
        let name = s.key.clone();
        let label = format!("[databases] {name}");
        if name == "pgbouncer" {
            return Err(ImportError::at(
                &s.at,
                &label,
                "the name pgbouncer is reserved for the admin console; PgBouncer refuses it".into(),
            ));
        }
        let params = connstr::parse(&s.value).map_err(|e| ImportError::at(&s.at, &label, e))?;
        if let Some((k, _)) = params
            .iter()
            .find(|(k, _)| !DATABASE_KEYS.contains(&k.as_str()))
        {
            return Err(ImportError::at(
                &s.at,
                &label,
                format!("{k} is not a connection parameter PgBouncer knows; it refuses the entry"),
            ));
        }
        let mut e = Entry {
            s,
            name,
            params,
            host: String::new(),
            port: 5432,
        };
        if let Some(p) = e.get("port") {
            e.port = super::parse_int(p)
                .and_then(|n| u16::try_from(n).ok())
                .filter(|p| *p > 0)
                .ok_or_else(|| {
                    ImportError::at(&e.s.at, &label, format!("port={p} is not a port (1-65535)"))
                })?;
        }
        let host = e.get("host").map(str::to_owned);
        e.host = match host.as_deref() {
            None | Some("") => {
                self.warn_at(&e.s.at, &label, "no host: PgBouncer reaches the server over its unix socket; pgwake connects over TCP only, here to localhost".into());
                "localhost".to_owned()
            }
            Some(h) if h.starts_with('/') || h.starts_with('@') => {
                self.warn_at(&e.s.at, &label, format!("host={h} is a unix socket; pgwake connects over TCP only, here to localhost"));
                "localhost".to_owned()
            }
            Some(h) if h.contains(',') => {
                let first = h.split(',').next().unwrap_or(h).trim().to_owned();
                self.warn_at(
                    &e.s.at,
                    &label,
                    format!("pgwake connects to one host: {first}, not the list {h}"),
                );
                first
            }
            Some(h) => h.to_owned(),
        };
        Ok(e)
    }

    /// The one password pgwake logs in with, from the entries' `password=`
    /// or the user list; entries that need another are left out.
    fn passwords(
        &mut self,
        kept: Vec<Entry>,
        fallback: Option<&Entry>,
        userlist: Option<&Userlist>,
        routes: &mut Routes,
    ) -> Vec<Entry> {
        let mut wanted: Vec<(usize, String, String)> = Vec::new();
        let all: Vec<&Entry> = kept.iter().chain(fallback).collect();
        for (i, e) in all.iter().enumerate() {
            if let Some(pw) = e.get("password") {
                wanted.push((
                    i,
                    pw.to_owned(),
                    format!("password of {} ({})", e.label(), e.s.at.short()),
                ));
                continue;
            }
            let Some(user) = e.get("user") else {
                routes.client_named = true;
                self.warn_at(&e.s.at, &e.label(), "no user=: PgBouncer logs in to the server as each client, with that client's password from auth_file; pgwake logs in as the client's user name with one password for all (server.auth.password)".into());
                if let Some((pw, origin)) = userlist.and_then(Userlist::uniform_password) {
                    wanted.push((i, pw, origin));
                }
                continue;
            };
            let Some(u) = userlist else { continue };
            let Some(found) = u.entries.iter().find(|x| x.user == user) else {
                continue;
            };
            match SecretKind::of(found.secret.expose()) {
                SecretKind::Plain => wanted.push((i, found.secret.expose().to_owned(), format!("auth_file {} line {}", u.shown, found.line))),
                SecretKind::Empty => {}
                kind => self.warn_at(&e.s.at, &e.label(), format!(
                    "auth_file has {} for user {user:?}: PgBouncer can log in to the server with it, pgwake needs the password itself: set server.auth.password (or PGWAKE_SERVER_AUTH_PASSWORD)",
                    if kind == SecretKind::Md5 { "an MD5 hash" } else { "a SCRAM verifier" }
                )),
            }
        }
        let mut counts: Vec<(&str, usize)> = Vec::new();
        for (_, pw, _) in &wanted {
            match counts.iter_mut().find(|(p, _)| p == pw) {
                Some(c) => c.1 += 1,
                None => counts.push((pw, 1)),
            }
        }
        let chosen = counts
            .iter()
            .max_by_key(|(_, n)| *n)
            .map(|(p, _)| p.to_string());
        let mut other: Vec<usize> = Vec::new();
        if let Some(pw) = &chosen {
            let origin = wanted
                .iter()
                .find(|(_, p, _)| p == pw)
                .map(|(_, _, o)| o.clone())
                .unwrap_or_default();
            self.doc.set(
                &["server", "auth"],
                "method",
                string("password"),
                &origin,
                &[],
            );
            self.doc.set(
                &["server", "auth"],
                "password",
                string(pw),
                &origin,
                &[
                    "Better kept out of the file: set PGWAKE_SERVER_AUTH_PASSWORD instead."
                        .to_owned(),
                ],
            );
            other = wanted
                .iter()
                .filter(|(_, p, _)| p != pw)
                .map(|(i, _, _)| *i)
                .collect();
        }
        routes.password = chosen;
        let mut out = Vec::new();
        for (i, e) in kept.into_iter().enumerate() {
            if other.contains(&i) {
                self.warn_at(&e.s.at, &e.label(), "its server password differs from the other entries': pgwake logs in to the server with one password (server.auth.password), so the entry was left out; run another pgwake for it".into());
            } else {
                out.push(e);
            }
        }
        out
    }

    /// `[databases.NAME]` for a kept entry.
    fn entry_table(
        &mut self,
        e: &Entry,
        max_db: Option<&(usize, Setting)>,
        routes: &mut Routes,
    ) -> Result<(), ImportError> {
        let path = ["databases", e.name.as_str()];
        self.doc.table(&path).keep();
        let table_origin = format!("{} ({})", e.label(), e.s.at.short());
        let dbname = e.get("dbname").unwrap_or(&e.name).to_owned();
        if dbname != e.name {
            self.doc.set(
                &path,
                "dbname",
                string(&dbname),
                &table_origin,
                &e.s.comments,
            );
        } else if !e.s.comments.is_empty() {
            for c in &e.s.comments {
                self.doc.table(&path).comment(c);
            }
        }
        routes.dbnames.push(dbname);
        match e.get("user") {
            Some(user) => {
                self.doc
                    .set(&path, "user", string(user), &e.origin("user"), &[]);
                routes.forced_users.push(user.to_owned());
            }
            None => routes.client_named = true,
        }
        if let Some(pgwake) = self.entry_pool_mode(e)? {
            self.doc
                .set(&path, "mode", string(pgwake), &e.origin("pool_mode"), &[]);
        }
        let size_set = e.count("pool_size")?;
        if size_set == Some(0) {
            return Err(ImportError::at(
                &e.s.at,
                &e.label(),
                "pool_size=0 gives the pool no server connection; pgwake needs at least 1".into(),
            ));
        }
        let mut size = size_set.unwrap_or(self.pool_size);
        let cap = match e.count("max_db_connections")? {
            Some(n) => Some((n, e.origin("max_db_connections"))),
            None => max_db.map(|(n, s)| (*n, super::origin(s))),
        };
        let mut size_origin = e.origin("pool_size");
        if let Some((cap, cap_origin)) = cap.filter(|(n, _)| *n > 0) {
            if e.get("user").is_some() && cap < size {
                size = cap;
                size_origin = cap_origin;
            } else if e.get("user").is_none() {
                self.warn_at(&e.s.at, &e.label(), "max_db_connections: pgwake caps server connections per pool (one per client user here), not per database".into());
            }
        }
        if size_set.is_some() || size != self.pool_size {
            self.doc
                .set(&path, "size", int_value(size), &size_origin, &[]);
        }
        let min_set = e.count("min_pool_size")?;
        let min = min_set.unwrap_or(self.min_pool_size).min(size);
        if min_set.is_some() || min != self.min_pool_size {
            self.doc.set(
                &path,
                "min_idle",
                int_value(min),
                &e.origin("min_pool_size"),
                &[],
            );
        }
        if let Some(n) = e.count("max_db_client_connections")? {
            self.doc.set(
                &path,
                "max_client_conn",
                int_value(n),
                &e.origin("max_db_client_connections"),
                &[],
            );
        }
        self.entry_leftovers(e, routes)
    }

    /// The entry's `pool_mode=` as pgwake's mode, if it sets one.
    fn entry_pool_mode(&mut self, e: &Entry) -> Result<Option<&'static str>, ImportError> {
        let Some(mode) = e.get("pool_mode") else {
            return Ok(None);
        };
        let mode = mode.to_ascii_lowercase();
        if !matches!(mode.as_str(), "session" | "transaction" | "statement") {
            let message = format!("pool_mode={mode} is not session, transaction or statement");
            return Err(ImportError::at(&e.s.at, &e.label(), message));
        }
        let key = format!("{}: pool_mode", e.label());
        Ok(Some(self.pool_mode(&e.s.at, &key, &mode)))
    }

    /// Per-entry keys without an equivalent, and the auth_* keys for later.
    fn entry_leftovers(&mut self, e: &Entry, routes: &mut Routes) -> Result<(), ImportError> {
        for key in ["reserve_pool", "reserve_pool_size"] {
            if e.count(key)?.is_some_and(|n| n > 0) {
                self.warn_at(
                    &e.s.at,
                    &format!("{}: {key}", e.label()),
                    "no equivalent in pgwake: a pool never grows past its size".into(),
                );
            }
        }
        for (key, instead) in DATABASE_WITHOUT_EQUIVALENT {
            if e.get(key).is_some() {
                self.warn_at(
                    &e.s.at,
                    &format!("{}: {key}", e.label()),
                    format!("no equivalent in pgwake: {instead}"),
                );
            }
        }
        for (key, into) in [
            ("auth_user", &mut routes.auth_user),
            ("auth_dbname", &mut routes.auth_dbname),
            ("auth_query", &mut routes.auth_query),
        ] {
            if let Some(v) = e.get(key) {
                into.push((v.to_owned(), e.s.at.clone()));
            }
        }
        Ok(())
    }

    /// A lone `*` entry: every database name, pooled with these settings.
    fn fallback(&mut self, f: &Entry, routes: &mut Routes) -> Result<(), ImportError> {
        if let Some(user) = f.get("user") {
            self.doc.set(
                &["server", "auth"],
                "user",
                string(user),
                &f.origin("user"),
                &f.s.comments,
            );
            routes.forced_users.push(user.to_owned());
        } else {
            routes.client_named = true;
        }
        if let Some(db) = f.get("dbname") {
            self.warn_at(&f.s.at, &format!("{}: dbname", f.label()), format!("pgwake without a [databases] table uses each client's database name on the server, never {db:?}"));
        }
        if let Some(pgwake) = self.entry_pool_mode(f)? {
            let origin = f.origin("pool_mode");
            self.doc
                .set(&["pool"], "mode", string(pgwake), &origin, &[]);
        }
        if let Some(n) = f.count("pool_size")? {
            if n == 0 {
                return Err(ImportError::at(
                    &f.s.at,
                    &f.label(),
                    "pool_size=0 gives the pool no server connection; pgwake needs at least 1"
                        .into(),
                ));
            }
            self.pool_size = n;
            self.doc
                .set(&["pool"], "size", int_value(n), &f.origin("pool_size"), &[]);
        }
        if let Some(n) = f.count("min_pool_size")? {
            self.min_pool_size = n.min(self.pool_size);
            self.doc.set(
                &["pool"],
                "min_idle",
                int_value(self.min_pool_size),
                &f.origin("min_pool_size"),
                &[],
            );
        } else if self.min_pool_size > self.pool_size {
            self.min_pool_size = self.pool_size;
            self.doc.set(
                &["pool"],
                "min_idle",
                int_value(self.min_pool_size),
                PGBOUNCER_DEFAULT,
                &[],
            );
        }
        if let Some(n) = f.count("max_db_client_connections")? {
            self.doc.set(
                &["listen"],
                "max_client_conn_per_database",
                int_value(n),
                &f.origin("max_db_client_connections"),
                &[],
            );
        }
        self.entry_leftovers(f, routes)
    }
}

/// The server (host, port) most entries use; the first one's on a tie.
fn most_common(entries: &[&Entry]) -> Option<(String, u16)> {
    let mut counts: Vec<((&str, u16), usize)> = Vec::new();
    for e in entries {
        let k = (e.host.as_str(), e.port);
        match counts.iter_mut().find(|(c, _)| *c == k) {
            Some(c) => c.1 += 1,
            None => counts.push((k, 1)),
        }
    }
    let best = counts.iter().map(|(_, n)| *n).max()?;
    counts
        .iter()
        .find(|(_, n)| *n == best)
        .map(|((h, p), _)| (h.to_string(), *p))
}
