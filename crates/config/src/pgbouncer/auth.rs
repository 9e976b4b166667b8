//! Client authentication: `auth_type`, `auth_file` (pgwake reads the same
//! format), `auth_hba_file` (see `hba.rs`) and `auth_user`/`auth_query`,
//! as `[client_auth]` rules, file and query.

use std::path::PathBuf;

use toml::Value;

use super::databases::Routes;
use super::ini::{self, Setting};
use super::{string, strings, Convert, ImportError};
use crate::{ClientAddress, SecretKind, UserlistEntry};

/// PgBouncer's `auth_query` when the file sets none.
const DEFAULT_AUTH_QUERY: &str = "SELECT rolname, CASE WHEN rolvaliduntil < now() THEN NULL ELSE rolpassword END FROM pg_authid WHERE rolname=$1 AND rolcanlogin";

/// The user list: `auth_file`, or `--userlist` in its place.
#[derive(Debug)]
pub(super) struct Userlist {
    /// As pgwake will open it (absolute when PgBouncer's was relative).
    pub path: PathBuf,
    /// As the user named it, for messages.
    pub shown: String,
    pub entries: Vec<UserlistEntry>,
    /// The `auth_file` line, when the file has one.
    pub from: Option<Setting>,
}

impl Userlist {
    /// The password every user with a plain one shares, if they share one:
    /// what pgwake can log in with where PgBouncer used each client's own.
    pub fn uniform_password(&self) -> Option<(String, String)> {
        let mut plain = self
            .entries
            .iter()
            .filter(|e| SecretKind::of(e.secret.expose()) == SecretKind::Plain);
        let first = plain.next()?;
        if plain.any(|e| e.secret != first.secret) {
            return None;
        }
        Some((
            first.secret.expose().to_owned(),
            format!("auth_file {} line {}", self.shown, first.line),
        ))
    }

    fn users_of(&self, kind: SecretKind) -> Vec<&UserlistEntry> {
        self.entries
            .iter()
            .filter(|e| SecretKind::of(e.secret.expose()) == kind)
            .collect()
    }
}

/// One `[[client_auth.rules]]` entry.
#[derive(Debug, Clone)]
pub(super) struct Rule {
    pub address: String,
    pub database: Vec<String>,
    pub user: Vec<String>,
    pub method: &'static str,
    pub origin: String,
    pub comments: Vec<String>,
}

impl Rule {
    fn everyone(method: &'static str, origin: String, comments: Vec<String>) -> Rule {
        Rule {
            address: "all".into(),
            database: vec!["all".into()],
            user: vec!["all".into()],
            method,
            origin,
            comments,
        }
    }
}

/// Whether a rule's method asks for a password from the user file.
pub(super) fn checks_password(method: &str) -> bool {
    method == "md5" || method == "scram-sha-256"
}

fn names(v: &[String]) -> Value {
    match v {
        [one] => string(one),
        many => strings(many),
    }
}

impl Convert<'_> {
    /// Reads the user list PgBouncer would (`auth_file`), or `--userlist`.
    pub(super) fn userlist(&mut self) -> Result<Option<Userlist>, ImportError> {
        let from = self.take("auth_file").filter(|s| !s.value.is_empty());
        let (path, shown) = match (&self.options.userlist, &from) {
            (Some(p), _) => (
                ini::resolve(&self.options.base_dir, p),
                p.display().to_string(),
            ),
            (None, Some(s)) => (self.resolve(&s.value), s.value.clone()),
            (None, None) => return Ok(None),
        };
        let named_by = match (&self.options.userlist, &from) {
            (None, Some(s)) => Some((&s.at, "auth_file")),
            _ => None,
        };
        let text = ini::read_text(&path, &shown, named_by).map_err(|mut e| {
            if named_by.is_some() {
                e.message.push_str(" (give a copy with --userlist FILE)");
            } else {
                e.message = format!("--userlist: {}", e.message);
            }
            e
        })?;
        let entries = crate::parse_userlist(&text).map_err(|e| match named_by {
            Some((at, key)) => ImportError::at(at, key, format!("{shown}: {e}")),
            None => ImportError::file(&shown, e),
        })?;
        Ok(Some(Userlist {
            path,
            shown,
            entries,
            from,
        }))
    }

    pub(super) fn client_auth(
        &mut self,
        userlist: Option<&Userlist>,
        routes: &Routes,
    ) -> Result<(), ImportError> {
        let type_s = self.take("auth_type");
        let auth_type = match &type_s {
            Some(s) => s.choice(&[
                "any",
                "trust",
                "plain",
                "md5",
                "cert",
                "hba",
                "ldap",
                "pam",
                "scram-sha-256",
            ])?,
            None => "md5",
        };
        let hba_s = self.take("auth_hba_file").filter(|s| !s.value.is_empty());
        let type_origin = type_s
            .as_ref()
            .map(super::origin)
            .unwrap_or_else(|| "auth_type (PgBouncer's default, md5)".to_owned());
        let type_comments = type_s
            .as_ref()
            .map(|s| s.comments.clone())
            .unwrap_or_default();
        let about = |c: &mut Convert<'_>, message: String| match &type_s {
            Some(s) => c.warn(s, message),
            None => c.warn_unset("auth_type", message),
        };
        let mut rules = match auth_type {
            "trust" | "any" => vec![Rule::everyone("trust", type_origin, type_comments)],
            "hba" => {
                let Some(hba) = &hba_s else {
                    let at = type_s.as_ref().map(|s| s.at.clone());
                    return Err(match at {
                        Some(at) => ImportError::at(
                            &at,
                            "auth_type",
                            "hba needs auth_hba_file, and none is set".into(),
                        ),
                        None => ImportError::file(
                            &self.main,
                            "auth_type = hba needs auth_hba_file".into(),
                        ),
                    });
                };
                let hba = hba.clone();
                self.hba_rules(&hba)?
            }
            other => {
                let instead = "clients log in with their password from the user file instead, answering MD5 or SCRAM-SHA-256 as their entry allows (libpq and most drivers answer either)";
                match other {
                    "plain" => about(
                        self,
                        format!("pgwake never asks for a cleartext password: {instead}"),
                    ),
                    "cert" => about(
                        self,
                        format!("pgwake does not check client certificates: {instead}"),
                    ),
                    "ldap" | "pam" => about(
                        self,
                        format!(
                            "pgwake cannot check passwords with {}: {instead}",
                            other.to_ascii_uppercase()
                        ),
                    ),
                    _ => {}
                }
                // md5 is pgwake's md5: MD5 hashes answer the MD5 challenge, the rest SCRAM.
                let method = if other == "scram-sha-256" {
                    "scram-sha-256"
                } else {
                    "md5"
                };
                vec![Rule::everyone(method, type_origin, type_comments)]
            }
        };
        if let Some(s) = &hba_s {
            if auth_type != "hba" {
                self.warn(s, format!("used by PgBouncer only with auth_type = hba (here {auth_type}); not converted"));
            }
        }
        let needs_passwords = rules.iter().any(|r| checks_password(r.method));
        let query = self.auth_query(needs_passwords, userlist, routes)?;
        if needs_passwords && userlist.is_none() && !query {
            about(self, "no auth_file and no auth_user: no client has a password, so PgBouncer lets no one log in with one; pgwake rejects those clients too (set client_auth.file)".into());
            for r in rules.iter_mut().filter(|r| checks_password(r.method)) {
                r.method = "reject";
            }
        }
        if let Some(u) = userlist {
            if needs_passwords {
                self.password_file(u)?;
            } else {
                let origin = u
                    .from
                    .as_ref()
                    .map(super::origin)
                    .unwrap_or_else(|| "--userlist".to_owned());
                if let Some(first) = rules.first_mut() {
                    first.comments.push(format!(
                        "{origin}: no password is asked for, so pgwake does not need the user file"
                    ));
                }
            }
        }
        if auth_type == "trust" || auth_type == "any" {
            self.trusted_users(auth_type, userlist, routes, &type_s);
        }
        self.trust_beyond_loopback(&rules, type_s.as_ref().or(hba_s.as_ref()));
        for r in rules {
            let t = self.doc.push_array(&["client_auth", "rules"]);
            for c in &r.comments {
                t.comment(c);
            }
            t.set("address", string(&r.address), "", &[]);
            if r.database != ["all"] {
                t.set("database", names(&r.database), "", &[]);
            }
            if r.user != ["all"] {
                t.set("user", names(&r.user), "", &[]);
            }
            t.set("method", string(r.method), &r.origin, &[]);
        }
        Ok(())
    }

    /// `client_auth.file`, after checking pgwake can read every entry.
    fn password_file(&mut self, u: &Userlist) -> Result<(), ImportError> {
        let at = u.from.as_ref().map(|s| s.at.clone());
        if let Some(e) = u.users_of(SecretKind::Empty).first() {
            let message = format!("{}: line {}: user {:?} has an empty password, which pgwake's user file refuses; remove the line or give it a password", u.shown, e.line, e.user);
            return Err(match &at {
                Some(at) => ImportError::at(at, "auth_file", message),
                None => ImportError::file(&u.shown, message),
            });
        }
        let path = u.path.display().to_string();
        match &u.from {
            Some(s) => {
                let s = s.clone();
                self.set_from(&["client_auth"], "file", string(&path), &s);
            }
            None => self
                .doc
                .set(&["client_auth"], "file", string(&path), "--userlist", &[]),
        }
        Ok(())
    }

    /// `auth_user` and `auth_query` as `client_auth.query`; whether one was set.
    fn auth_query(
        &mut self,
        needs_passwords: bool,
        userlist: Option<&Userlist>,
        routes: &Routes,
    ) -> Result<bool, ImportError> {
        let user_s = self.take("auth_user").filter(|s| !s.value.is_empty());
        let query_s = self.take("auth_query");
        let db_s = self.take("auth_dbname").filter(|s| !s.value.is_empty());
        let global = user_s
            .as_ref()
            .map(|s| (s.value.clone(), s.at.clone(), super::origin(s)));
        let per_db = routes.auth_user.first().map(|(u, at)| {
            (
                u.clone(),
                at.clone(),
                format!("auth_user of [databases] ({})", at.short()),
            )
        });
        let Some((user, at, origin)) = global.or(per_db) else {
            return Ok(false);
        };
        if let Some((other, at2)) = routes.auth_user.iter().find(|(u, _)| *u != user) {
            self.warn_at(
                at2,
                "auth_user",
                format!("pgwake looks users up as one role ({user}); {other} is not used"),
            );
        }
        if !needs_passwords {
            self.warn_at(
                &at,
                "auth_user",
                "clients are trusted, so pgwake looks no one up (PgBouncer checks the user exists)"
                    .into(),
            );
            return Ok(false);
        }
        let (query, query_origin) = match (&query_s, routes.auth_query.first()) {
            (_, Some((q, qat))) => (
                q.clone(),
                format!("auth_query of [databases] ({})", qat.short()),
            ),
            (Some(s), None) => (s.value.clone(), super::origin(s)),
            (None, None) => (
                DEFAULT_AUTH_QUERY.to_owned(),
                "auth_query (PgBouncer's default)".to_owned(),
            ),
        };
        if !query.contains("$1") {
            let place = query_s.as_ref().map(|s| s.at.clone()).unwrap_or(at.clone());
            return Err(ImportError::at(
                &place,
                "auth_query",
                "the query must use $1 for the user name".into(),
            ));
        }
        let comments = query_s
            .as_ref()
            .map(|s| s.comments.clone())
            .unwrap_or_default();
        self.doc.set(
            &["client_auth"],
            "query",
            string(&query),
            &query_origin,
            &comments,
        );
        self.doc
            .set(&["client_auth"], "query_user", string(&user), &origin, &[]);
        let database = match (&db_s, routes.auth_dbname.first()) {
            (_, Some((d, dat))) => Some((
                d.clone(),
                format!("auth_dbname of [databases] ({})", dat.short()),
            )),
            (Some(s), None) => Some((s.value.clone(), super::origin(s))),
            (None, None) => routes
                .dbnames
                .first()
                .map(|d| (d.clone(), "the first database's dbname".to_owned())),
        };
        if let Some((db, db_origin)) = database {
            if db_s.is_none()
                && routes.auth_dbname.is_empty()
                && routes.dbnames.iter().any(|d| *d != db)
            {
                self.warn_at(&at, "auth_user", format!("PgBouncer runs auth_query in each client's database; pgwake runs it in one, here {db} (client_auth.query_database)"));
            }
            self.doc.set(
                &["client_auth"],
                "query_database",
                string(&db),
                &db_origin,
                &[],
            );
        }
        let own = userlist.and_then(|u| u.entries.iter().find(|e| e.user == user));
        if let (Some(own), Some(pw)) = (own, &routes.password) {
            if own.secret.expose() != pw {
                self.warn_at(&at, "auth_user", format!("pgwake logs in as {user} with server.auth.password, not with {user}'s password from auth_file"));
            }
        }
        Ok(true)
    }

    /// With `trust` PgBouncer admits the users of `auth_file`; pgwake serves
    /// the client user names it is told to as a database's user.
    fn trusted_users(
        &mut self,
        auth_type: &str,
        userlist: Option<&Userlist>,
        routes: &Routes,
        type_s: &Option<Setting>,
    ) {
        let origin = type_s.as_ref().map(super::origin).unwrap_or_default();
        if auth_type == "any" {
            if !routes.forced_users.is_empty() {
                self.doc.set(
                    &["server", "auth"],
                    "map_any_client_user",
                    Value::Boolean(true),
                    &origin,
                    &[
                        "auth_type = any: every client user name is served as each database's user"
                            .to_owned(),
                    ],
                );
            }
            return;
        }
        let Some(u) = userlist else { return };
        if !routes.forced_users.is_empty() {
            let users: Vec<String> = u
                .entries
                .iter()
                .map(|e| e.user.clone())
                .filter(|n| !routes.forced_users.contains(n))
                .collect();
            if !users.is_empty() {
                let from = u
                    .from
                    .as_ref()
                    .map(super::origin)
                    .unwrap_or_else(|| "--userlist".to_owned());
                self.doc.set(
                    &["server", "auth"],
                    "client_users",
                    strings(&users),
                    &from,
                    &["the users of auth_file, who may log in as each database's user".to_owned()],
                );
            }
        }
        if routes.client_named {
            let message = "PgBouncer admits only the users listed in auth_file; pgwake trusts any user name for database entries without user=".to_owned();
            match &u.from {
                Some(s) => {
                    let s = s.clone();
                    self.warn(&s, message);
                }
                None => self.warn_unset("auth_file", message),
            }
        }
    }

    /// pgwake refuses `trust` for clients beyond loopback unless told by
    /// name; PgBouncer's file asked for it, so say so, and set that name.
    fn trust_beyond_loopback(&mut self, rules: &[Rule], about: Option<&Setting>) {
        if self.loopback_listener {
            return;
        }
        let trusts_others = rules.iter().any(|r| {
            r.method == "trust"
                && ClientAddress::parse(&r.address)
                    .map(|a| a.beyond_loopback())
                    .unwrap_or(true)
        });
        if !trusts_others {
            return;
        }
        let message = "clients from other machines are trusted without a password, as in PgBouncer; pgwake refuses that unless client_auth.insecure_trust_beyond_loopback = true, which was set: prefer scram-sha-256".to_owned();
        let origin = match about {
            Some(s) => {
                let s = s.clone();
                self.warn(&s, message);
                super::origin(&s)
            }
            None => {
                self.warn_unset("auth_type", message);
                String::new()
            }
        };
        self.doc.set(
            &["client_auth"],
            "insecure_trust_beyond_loopback",
            Value::Boolean(true),
            &origin,
            &[],
        );
    }
}
