//! The importer, one key family at a time, and malformed input. Each test
//! writes PgBouncer files into a temp dir, imports them and loads the
//! output as pgwake would.

use std::path::Path;
use std::time::Duration;

use super::{import, ImportError, ImportOptions, Imported};
use crate::{ClientAuthMethod, Config, Names, PoolMode, SslMode};

/// Writes `files` (the first is the ini) into a temp dir and imports it.
fn try_import(files: &[(&str, &str)]) -> (tempfile::TempDir, Result<Imported, ImportError>) {
    try_import_with(files, None)
}

fn try_import_with(
    files: &[(&str, &str)],
    userlist: Option<&str>,
) -> (tempfile::TempDir, Result<Imported, ImportError>) {
    let dir = tempfile::tempdir().unwrap();
    for (name, text) in files {
        let path = dir.path().join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }
    let options = ImportOptions {
        base_dir: dir.path().to_path_buf(),
        userlist: userlist.map(Into::into),
    };
    let result = import(Path::new(files[0].0), &options);
    (dir, result)
}

/// Imports, loads the output as pgwake does, and returns both.
fn imported(files: &[(&str, &str)]) -> (tempfile::TempDir, Imported, Config) {
    imported_with(files, None)
}

fn imported_with(
    files: &[(&str, &str)],
    userlist: Option<&str>,
) -> (tempfile::TempDir, Imported, Config) {
    let (dir, result) = try_import_with(files, userlist);
    let imported = result.unwrap_or_else(|e| panic!("import failed: {e}"));
    let config = crate::load(Some(("out.toml", &imported.toml)), None, std::iter::empty())
        .unwrap_or_else(|e| panic!("{e}\n{}", imported.toml));
    (dir, imported, config)
}

fn error(files: &[(&str, &str)]) -> String {
    match try_import(files).1 {
        Ok(i) => panic!("expected an error, got:\n{}", i.toml),
        Err(e) => e.to_string(),
    }
}

/// The warning lines mentioning `key` (as `FILE:LINE: KEY: …` prints it).
fn warned(i: &Imported, key: &str) -> String {
    let lines: Vec<String> = i
        .warnings
        .iter()
        .filter(|w| w.key.contains(key))
        .map(|w| w.to_string())
        .collect();
    assert!(
        !lines.is_empty(),
        "no warning about {key}; warnings:\n{}",
        all(i)
    );
    lines.join("\n")
}

fn all(i: &Imported) -> String {
    i.warnings
        .iter()
        .map(|w| w.to_string())
        .collect::<Vec<_>>()
        .join("\n")
}

fn not_warned(i: &Imported, key: &str) {
    assert!(
        !i.warnings.iter().any(|w| w.key.contains(key)),
        "unexpected warning about {key}:\n{}",
        all(i)
    );
}

const DB: &str =
    "[databases]\napp = host=db.internal port=5433 dbname=appdb user=app password=s3cret\n";

#[test]
fn pgbouncer_defaults_are_written_where_pgwake_differs() {
    let (_d, i, c) = imported(&[(
        "pgbouncer.ini",
        &format!("{DB}[pgbouncer]\nlisten_addr = 127.0.0.1\n"),
    )]);
    assert_eq!(
        c.pool.mode,
        PoolMode::Session,
        "PgBouncer pools sessions by default"
    );
    assert_eq!((c.pool.size, c.pool.min_idle), (20, 0));
    assert_eq!(c.pool.max_lifetime, Duration::from_secs(3600));
    assert_eq!(c.pool.idle_timeout, Duration::from_secs(600));
    assert_eq!(c.pool.pool_wait_timeout, Duration::from_secs(120));
    assert_eq!(c.listen.max_client_conn, 100);
    assert_eq!(c.listen.client_login_timeout, Duration::from_secs(60));
    assert_eq!(c.listen.unix_socket_dir.as_deref(), Some(Path::new("/tmp")));
    assert_eq!(c.server.connect_timeout, Duration::from_secs(15));
    assert_eq!(c.server.sslmode, SslMode::Prefer);
    assert!(
        c.log.connections && c.log.disconnections,
        "PgBouncer logs them by default"
    );
    assert_eq!(c.log.stats_period, Duration::from_secs(60));
    assert!(
        i.toml.contains("mode = \"session\"  # PgBouncer's default"),
        "{}",
        i.toml
    );
    // Keepalive: pgwake's own (below NAT timeouts), not the OS's 2 hours.
    assert_eq!(c.server.tcp_keepalive_idle, Duration::from_secs(60));
}

#[test]
fn listener_addresses_ports_and_sockets() {
    let (d, i, c) = imported(&[(
        "pgbouncer.ini",
        &format!("{DB}[pgbouncer]\nlisten_addr = *\nlisten_port = 7432\nunix_socket_dir = sock\nauth_type = trust\nmax_client_conn = 500\nmax_db_client_connections = 50\nmax_user_client_connections = 20\nclient_login_timeout = 0\nmax_packet_size = 65536\n"),
    )]);
    assert_eq!(c.listen.addr, "0.0.0.0:7432");
    assert_eq!(
        c.listen.unix_socket_dir.as_deref(),
        Some(d.path().join("sock").as_path())
    );
    assert_eq!(c.listen.max_client_conn, 500);
    assert_eq!(c.listen.max_client_conn_per_database, 50);
    assert_eq!(c.listen.max_client_conn_per_user, 20);
    assert_eq!(c.listen.max_message_size, 65536);
    assert_eq!(c.listen.client_login_timeout, super::NEVER);
    assert!(warned(&i, "client_login_timeout").contains("0 (no limit) has no equivalent"));
    // Trust beyond loopback: PgBouncer's choice, set by name, and said.
    assert!(c.client_auth.insecure_trust_beyond_loopback);
    assert!(
        warned(&i, "auth_type").contains("insecure_trust_beyond_loopback = true, which was set")
    );

    let (_d, _i, c) = imported(&[(
        "pgbouncer.ini",
        &format!("{DB}[pgbouncer]\nlisten_addr = 127.0.0.1, 10.0.0.5\nunix_socket_dir =\n"),
    )]);
    assert_eq!(c.listen.addr, "127.0.0.1:6432");
    assert!(c.listen.unix_socket_dir.is_none());
    assert_eq!(
        c.listen.extra_addrs,
        ["10.0.0.5:6432"],
        "the rest of the list"
    );

    let (_d, i, c) = imported(&[(
        "pgbouncer.ini",
        &format!("{DB}[pgbouncer]\nlisten_port = 6544\n"),
    )]);
    assert_eq!(c.listen.addr, "127.0.0.1:6544");
    let w = warned(&i, "listen_addr (unset)");
    assert!(
        w.starts_with(
            "pgbouncer.ini:3: listen_addr (unset): PgBouncer then listens on its unix socket only"
        ),
        "{w}"
    );

    let (_d, _i, c) = imported(&[(
        "pgbouncer.ini",
        &format!("{DB}[pgbouncer]\nlisten_addr = ::1\n"),
    )]);
    assert_eq!(c.listen.addr, "[::1]:6432");
}

#[test]
fn pool_and_timeouts() {
    let (_d, i, c) = imported(&[(
        "pgbouncer.ini",
        &format!("{DB}[pgbouncer]\nlisten_addr = 127.0.0.1\npool_mode = Transaction\ndefault_pool_size = 7\nmin_pool_size = 9\nserver_lifetime = 120\nserver_idle_timeout = 0\nquery_wait_timeout = 2.5\nquery_timeout = 30\nidle_transaction_timeout = 5\nclient_idle_timeout = 0\nmax_prepared_statements = 50\nreserve_pool_size = 3\nreserve_pool_timeout = 2\nserver_login_retry = 1\nignore_startup_parameters = extra_float_digits\n"),
    )]);
    assert_eq!(c.pool.mode, PoolMode::Transaction);
    assert_eq!(c.pool.size, 7);
    assert_eq!(
        c.pool.min_idle, 7,
        "capped at the pool size, as PgBouncer does"
    );
    assert_eq!(c.pool.max_lifetime, Duration::from_secs(120));
    assert_eq!(c.pool.idle_timeout, super::NEVER);
    assert_eq!(c.pool.pool_wait_timeout, Duration::from_millis(2500));
    assert_eq!(c.pool.max_prepared_statements, 50);
    assert_eq!(c.timeouts.query_timeout, Some(Duration::from_secs(30)));
    assert_eq!(
        c.timeouts.idle_transaction_timeout,
        Some(Duration::from_secs(5))
    );
    assert_eq!(
        c.timeouts.client_idle_timeout, None,
        "0 is no limit in both"
    );
    assert!(warned(&i, "server_idle_timeout").contains("0 (no limit) has no equivalent: pgwake's pool.idle_timeout must be above zero, so it became 30days"));
    assert!(warned(&i, "reserve_pool_size").contains("no reserve pool"));
    assert!(warned(&i, "reserve_pool_timeout").contains("no reserve pool"));
    assert!(warned(&i, "server_login_retry").contains("at once"));
    assert!(warned(&i, "ignore_startup_parameters")
        .contains("applies it on the server connection (extra_float_digits included)"));

    let (_d, i, c) = imported(&[("pgbouncer.ini", &format!("{DB}[pgbouncer]\npool_mode = statement\nreserve_pool_size = 0\nmax_prepared_statements = 0\n"))]);
    assert_eq!(c.pool.mode, PoolMode::Transaction);
    assert!(warned(&i, "pool_mode").contains("no statement pooling"));
    assert!(
        warned(&i, "max_prepared_statements").contains("always serves named prepared statements")
    );
    not_warned(&i, "reserve_pool_size");
}

#[test]
fn database_entries_become_pools() {
    let (_d, i, c) = imported(&[(
        "pgbouncer.ini",
        "[databases]\n\
         ; the application's database\n\
         app = host=db.internal port=5433 dbname=appdb user=app password=s3cret pool_size=5 pool_mode=transaction min_pool_size=2 max_db_client_connections=40\n\
         reports = host=db.internal port=5433 user=app password=s3cret connect_query='SET work_mem = ''64MB''' reserve_pool=2 timezone=UTC\n\
         capped = host=db.internal port=5433 user=app password=s3cret max_db_connections=3\n\
         other = host=replica.internal dbname=appdb user=app password=s3cret\n\
         * = host=db.internal port=5433\n\
         [pgbouncer]\nlisten_addr = 127.0.0.1\ndefault_pool_size = 10\n",
    )]);
    assert_eq!(
        (c.server.host.as_str(), c.server.port),
        ("db.internal", 5433)
    );
    assert_eq!(
        c.server.auth.effective_method(),
        crate::AuthMethod::Password
    );
    assert_eq!(
        c.server.auth.password.as_ref().map(|p| p.expose()),
        Some("s3cret")
    );
    let app = &c.databases["app"];
    assert_eq!(app.dbname.as_deref(), Some("appdb"));
    assert_eq!(app.user.as_deref(), Some("app"));
    assert_eq!(
        (app.size, app.min_idle, app.mode),
        (Some(5), Some(2), Some(PoolMode::Transaction))
    );
    assert_eq!(app.max_client_conn, Some(40));
    assert!(
        i.toml
            .contains("# the application's database\ndbname = \"appdb\""),
        "comment carried:\n{}",
        i.toml
    );
    let reports = &c.databases["reports"];
    assert_eq!(reports.dbname, None, "the same name on the server");
    assert_eq!(
        c.databases["capped"].size,
        Some(3),
        "max_db_connections caps a one-user pool"
    );
    let other = c.databases["other"]
        .server
        .as_ref()
        .expect("another server: a server of its own");
    assert_eq!(
        (other.host.as_str(), other.port),
        ("replica.internal", 5432)
    );
    assert_eq!(c.server.host, "db.internal", "the one most entries use");
    assert_eq!(c.server.port, 5433);
    assert!(warned(&i, "[databases] reports: connect_query").contains("runs no query"));
    assert!(warned(&i, "[databases] reports: reserve_pool").contains("never grows"));
    assert!(warned(&i, "[databases] reports: timezone").contains("ALTER DATABASE"));
    assert!(
        warned(&i, "[databases] *").contains("fallback has no equivalent next to named entries")
    );
    assert!(!i.toml.contains("s3cret\"  #") || i.toml.contains("PGWAKE_SERVER_AUTH_PASSWORD"));
}

#[test]
fn entries_on_unix_sockets_and_with_other_passwords() {
    let (_d, i, c) = imported(&[(
        "pgbouncer.ini",
        "[databases]\nfoodb =\nbar = host=/var/run/postgresql user=a password=one\nbaz = host=localhost user=b password=one\nqux = user=c password=two\n[pgbouncer]\nlisten_addr = 127.0.0.1\n",
    )]);
    assert_eq!((c.server.host.as_str(), c.server.port), ("localhost", 5432));
    assert!(warned(&i, "[databases] foodb").contains("unix socket; pgwake connects over TCP only"));
    assert!(warned(&i, "[databases] bar").contains("host=/var/run/postgresql is a unix socket"));
    assert_eq!(
        c.server.auth.password.as_ref().map(|p| p.expose()),
        Some("one")
    );
    assert!(!c.databases.contains_key("qux"));
    assert!(warned(&i, "[databases] qux").contains("server password differs"));
    assert!(warned(&i, "[databases] foodb")
        .contains("no user=: PgBouncer logs in to the server as each client"));
}

#[test]
fn a_lone_fallback_serves_every_database() {
    let (_d, i, c) = imported(&[(
        "pgbouncer.ini",
        "[databases]\n* = host=10.1.2.3 port=6000 user=app password=pw pool_size=3 min_pool_size=1 pool_mode=transaction\n[pgbouncer]\nlisten_addr = 127.0.0.1\n",
    )]);
    assert!(
        c.databases.is_empty(),
        "no table: every name goes to the server as is"
    );
    assert_eq!((c.server.host.as_str(), c.server.port), ("10.1.2.3", 6000));
    assert_eq!(c.server.auth.user.as_deref(), Some("app"));
    assert_eq!(
        (c.pool.size, c.pool.min_idle, c.pool.mode),
        (3, 1, PoolMode::Transaction)
    );
    not_warned(&i, "[databases] *");

    let (_d, i, c) = imported(&[(
        "pgbouncer.ini",
        "[databases]\n[pgbouncer]\nlisten_addr = 127.0.0.1\n",
    )]);
    assert_eq!(c.server.host, "localhost");
    assert!(warned(&i, "[databases]")
        .starts_with("pgbouncer.ini:1: [databases]: no database is configured"));
}

#[test]
fn users_section_has_no_per_user_settings() {
    let (_d, i, _c) = imported(&[(
        "pgbouncer.ini",
        &format!("{DB}[users]\nuser1 = pool_mode=transaction max_user_connections=10\n[pgbouncer]\nlisten_addr = 127.0.0.1\nmax_user_connections = 0\n"),
    )]);
    assert!(
        warned(&i, "[users] user1: pool_mode").contains("pool_mode=transaction not carried over")
    );
    assert!(warned(&i, "[users] user1: max_user_connections")
        .contains("does not cap server connections per user"));
    not_warned(&i, "max_user_connections (");
    let e = error(&[(
        "pgbouncer.ini",
        &format!("{DB}[users]\nuser1 = pool_sise=3\n"),
    )]);
    assert_eq!(e, "pgbouncer.ini:4: [users] user1: pool_sise is not a user setting PgBouncer knows; it refuses the entry");
}

#[test]
fn trust_with_a_user_file_serves_its_users() {
    let (_d, i, c) = imported(&[
        ("pgbouncer.ini", &format!("{DB}[pgbouncer]\nlisten_addr = 127.0.0.1\nauth_type = trust\nauth_file = userlist.txt\nadmin_users = ops, root\nstats_users = monitoring\n")),
        ("userlist.txt", "\"app\" \"\"\n\"alice\" \"md5d41d8cd98f00b204e9800998ecf8427e\"\n\"bob\" \"x\"\n"),
    ]);
    let rules = c.client_auth.effective_rules();
    assert_eq!(rules.len(), 1);
    assert_eq!(
        (rules[0].address.as_str(), rules[0].method),
        ("all", ClientAuthMethod::Trust)
    );
    assert!(
        c.client_auth.file.is_none(),
        "no password asked: the file (with an empty password) is not needed"
    );
    assert_eq!(
        c.server.auth.client_users,
        vec!["alice".to_owned(), "bob".to_owned()]
    );
    assert_eq!(
        c.admin.admin_users,
        vec!["ops".to_owned(), "root".to_owned()]
    );
    assert_eq!(c.admin.stats_users, vec!["monitoring".to_owned()]);
    not_warned(&i, "admin_users");
    assert!(!c.client_auth.insecure_trust_beyond_loopback);
}

#[test]
fn password_auth_types_check_the_user_file() {
    let users = "\"app\" \"s3cret\"\n\"old\" \"md5d41d8cd98f00b204e9800998ecf8427e\"\n";
    for (auth_type, method, says) in [
        ("md5", ClientAuthMethod::Md5, None),
        ("scram-sha-256", ClientAuthMethod::ScramSha256, None),
        (
            "plain",
            ClientAuthMethod::Md5,
            Some("never asks for a cleartext password"),
        ),
        (
            "cert",
            ClientAuthMethod::Md5,
            Some("does not check client certificates"),
        ),
        (
            "pam",
            ClientAuthMethod::Md5,
            Some("cannot check passwords with PAM"),
        ),
    ] {
        let (d, i, c) = imported(&[
            ("pgbouncer.ini", &format!("{DB}[pgbouncer]\nlisten_addr = 127.0.0.1\nauth_type = {auth_type}\nauth_file = userlist.txt\n")),
            ("userlist.txt", users),
        ]);
        let rules = c.client_auth.effective_rules();
        assert_eq!(rules[0].method, method, "{auth_type}");
        assert_eq!(
            c.client_auth.file.as_deref(),
            Some(d.path().join("userlist.txt").as_path())
        );
        match says {
            Some(text) => assert!(warned(&i, "auth_type").contains(text), "{auth_type}"),
            None => not_warned(&i, "auth_type"),
        }
        not_warned(&i, "auth_file");
    }
    // The default (md5) without a file: nobody has a password.
    let (_d, i, c) = imported(&[(
        "pgbouncer.ini",
        &format!("{DB}[pgbouncer]\nlisten_addr = 127.0.0.1\n"),
    )]);
    assert_eq!(
        c.client_auth.effective_rules()[0].method,
        ClientAuthMethod::Reject
    );
    assert!(warned(&i, "auth_type (unset)").contains("no auth_file and no auth_user"));
    // An empty password pgwake's file refuses: named with its line.
    let e = error(&[
        (
            "pgbouncer.ini",
            &format!("{DB}[pgbouncer]\nauth_type = md5\nauth_file = userlist.txt\n"),
        ),
        ("userlist.txt", "\"app\" \"s3cret\"\n\"nopw\" \"\"\n"),
    ]);
    assert_eq!(e, "pgbouncer.ini:5: auth_file: userlist.txt: line 2: user \"nopw\" has an empty password, which pgwake's user file refuses; remove the line or give it a password");
}

#[test]
fn auth_file_passwords_log_in_to_the_server() {
    let (_d, i, c) = imported(&[
        ("pgbouncer.ini", "[databases]\napp = host=127.0.0.1 dbname=app user=app\n[pgbouncer]\nlisten_addr = 127.0.0.1\nauth_type = scram-sha-256\nauth_file = users.txt\n"),
        ("users.txt", "\"app\" \"from-the-file\"\n"),
    ]);
    assert_eq!(
        c.server.auth.password.as_ref().map(|p| p.expose()),
        Some("from-the-file")
    );
    assert!(
        i.toml.contains("# auth_file users.txt line 1"),
        "{}",
        i.toml
    );
    // --userlist reads a copy instead of auth_file.
    let (_d, _i, c) = imported_with(
        &[
            ("pgbouncer.ini", "[databases]\napp = host=127.0.0.1 dbname=app user=app\n[pgbouncer]\nlisten_addr = 127.0.0.1\nauth_file = /nonexistent/userlist.txt\n"),
            ("copy.txt", "\"app\" \"copied\"\n"),
        ],
        Some("copy.txt"),
    );
    assert_eq!(
        c.server.auth.password.as_ref().map(|p| p.expose()),
        Some("copied")
    );
    let e = error(&[(
        "pgbouncer.ini",
        "[databases]\napp = host=db\n[pgbouncer]\nauth_file = /nonexistent/userlist.txt\n",
    )]);
    assert!(
        e.starts_with(
            "pgbouncer.ini:4: auth_file: cannot read /nonexistent/userlist.txt: No such file"
        ),
        "{e}"
    );
    assert!(e.ends_with("(give a copy with --userlist FILE)"), "{e}");
    let (_d, r) = try_import_with(
        &[("pgbouncer.ini", "[databases]\napp = host=db\n")],
        Some("copy.txt"),
    );
    let e = r.unwrap_err().to_string();
    assert!(
        e.starts_with("copy.txt: --userlist: cannot read it: No such file"),
        "{e}"
    );
}

#[test]
fn auth_user_becomes_the_lookup_query() {
    let (_d, i, c) = imported(&[
        ("pgbouncer.ini", "[databases]\napp = host=db dbname=appdb auth_user=lookup\nmain = host=db dbname=maindb\n[pgbouncer]\nlisten_addr = 127.0.0.1\nauth_type = scram-sha-256\nauth_file = users.txt\n"),
        ("users.txt", "\"lookup\" \"pw\"\n"),
    ]);
    assert_eq!(c.client_auth.query_user.as_deref(), Some("lookup"));
    assert!(c
        .client_auth
        .query
        .as_deref()
        .is_some_and(|q| q.contains("pg_authid") && q.contains("$1")));
    assert_eq!(c.client_auth.query_database.as_deref(), Some("appdb"));
    assert!(warned(&i, "auth_user").contains("runs auth_query in each client's database"));
    let e = error(&[
        ("pgbouncer.ini", "[databases]\napp = host=db\n[pgbouncer]\nauth_type = md5\nauth_user = lookup\nauth_query = SELECT usename, passwd FROM pg_shadow\n"),
    ]);
    assert_eq!(
        e,
        "pgbouncer.ini:6: auth_query: the query must use $1 for the user name"
    );
}

#[test]
fn hba_rules_in_order() {
    let (_d, i, c) = imported(&[
        ("pgbouncer.ini", &format!("{DB}[pgbouncer]\nlisten_addr = 0.0.0.0\nauth_type = hba\nauth_hba_file = hba.conf\nauth_file = users.txt\n")),
        ("users.txt", "\"app\" \"pw\"\n\"ops\" \"pw2\"\n"),
        ("admins", "ops, root # the operators\n"),
        (
            "hba.conf",
            "# TYPE DATABASE USER ADDRESS METHOD\n\
             local all all peer\n\
             host all @admins 10.0.0.0 255.0.0.0 md5\n\
             hostssl app,reports app 192.168.1.0/24 scram-sha-256\n\
             host all all samenet trust\n\
             host all all 127.0.0.1/32 ldap ldapserver=x\n\
             host all all all reject\n",
        ),
    ]);
    let rules = &c.client_auth.rules;
    let got: Vec<(&str, &Names, &Names, ClientAuthMethod)> = rules
        .iter()
        .map(|r| (r.address.as_str(), &r.database, &r.user, r.method))
        .collect();
    let all = Names::One("all".into());
    let many = |v: &[&str]| Names::Many(v.iter().map(|s| s.to_string()).collect());
    assert_eq!(
        got,
        vec![
            ("unix", &all, &all, ClientAuthMethod::Trust),
            (
                "10.0.0.0/8",
                &all,
                &many(&["ops", "root"]),
                ClientAuthMethod::Md5
            ),
            (
                "192.168.1.0/24",
                &many(&["app", "reports"]),
                &Names::One("app".into()),
                ClientAuthMethod::ScramSha256
            ),
            ("127.0.0.1/32", &all, &all, ClientAuthMethod::Reject),
            ("0.0.0.0/0", &all, &all, ClientAuthMethod::Reject),
            ("::/0", &all, &all, ClientAuthMethod::Reject),
        ]
    );
    let w = warned(&i, "hba rule");
    assert!(
        w.contains("hba.conf:2: hba rule: peer: pgwake does not check the client's OS user"),
        "{w}"
    );
    assert!(
        w.contains("hba.conf:4: hba rule: hostssl: pgwake's rules do not look at TLS"),
        "{w}"
    );
    assert!(
        w.contains(
            "hba.conf:5: hba rule: pgwake's rules cannot express samenet; the line was left out"
        ),
        "{w}"
    );
    assert!(w.contains("hba.conf:6: hba rule: ldap: pgwake cannot authenticate this way, so the rule rejects these clients"), "{w}");
    assert!(
        w.contains("hba.conf:6: hba rule: options ldapserver=x are not supported"),
        "{w}"
    );
    let e = error(&[
        (
            "pgbouncer.ini",
            &format!("{DB}[pgbouncer]\nauth_type = hba\nauth_hba_file = hba.conf\n"),
        ),
        ("hba.conf", "hots all all all trust\n"),
    ]);
    assert_eq!(
        e,
        "hba.conf:1: hba rule: \"hots\" is not local, host, hostssl or hostnossl"
    );
}

#[test]
fn server_tls_client_tls_and_tcp() {
    let (d, i, c) = imported(&[
        (
            "pgbouncer.ini",
            &format!("{DB}[pgbouncer]\nlisten_addr = 127.0.0.1\nserver_tls_sslmode = verify-full\nserver_tls_ca_file = ca.pem\nserver_tls_protocols = secure\nserver_tls_ciphers = HIGH\nclient_tls_sslmode = verify-ca\nclient_tls_cert_file = server.crt\nclient_tls_key_file = server.key\nclient_tls_ca_file = clients.pem\ntcp_keepalive = 1\ntcp_keepidle = 30\ntcp_keepintvl = 5\ntcp_keepcnt = 3\ntcp_user_timeout = 15000\nserver_connect_timeout = 4\n"),
        ),
        ("ca.pem", "x"),
        ("server.crt", "x"),
        ("server.key", "x"),
    ]);
    assert_eq!(c.server.sslmode, SslMode::VerifyFull);
    assert_eq!(
        c.server.sslrootcert.as_deref(),
        Some(d.path().join("ca.pem").as_path())
    );
    assert_eq!(c.listen.client_tls_mode, crate::ClientTlsMode::Require);
    assert_eq!(
        c.listen.client_tls_cert.as_deref(),
        Some(d.path().join("server.crt").as_path())
    );
    assert_eq!(
        c.listen.client_tls_key.as_deref(),
        Some(d.path().join("server.key").as_path())
    );
    assert_eq!(c.server.tcp_keepalive_idle, Duration::from_secs(30));
    assert_eq!(c.server.tcp_keepalive_interval, Duration::from_secs(5));
    assert_eq!(c.server.tcp_keepalive_count, 3);
    assert_eq!(c.server.tcp_user_timeout, Duration::from_secs(15));
    assert_eq!(c.server.connect_timeout, Duration::from_secs(4));
    assert!(warned(&i, "client_tls_sslmode").contains("verify-ca became require"));
    assert!(warned(&i, "client_tls_ca_file").contains("does not check client certificates"));
    assert!(warned(&i, "server_tls_ciphers").contains("not configurable"));
    not_warned(&i, "server_tls_protocols");

    let (_d, i, c) = imported(&[("pgbouncer.ini", &format!("{DB}[pgbouncer]\nlisten_addr = 127.0.0.1\nserver_tls_sslmode = allow\ntcp_keepalive = 0\ntcp_keepidle = 30\n"))]);
    assert_eq!(c.server.sslmode, SslMode::Prefer);
    assert!(warned(&i, "server_tls_sslmode").contains("no allow mode"));
    assert!(warned(&i, "tcp_keepalive").contains("cannot be turned off"));
    assert_eq!(
        c.server.tcp_keepalive_idle,
        Duration::from_secs(60),
        "keepalive settings are ignored with it off, as PgBouncer does"
    );
}

#[test]
fn logging_and_settings_without_equivalent() {
    let (_d, i, c) = imported(&[(
        "pgbouncer.ini",
        &format!("{DB}[pgbouncer]\nlisten_addr = 127.0.0.1\nlogfile = /var/log/pgbouncer.log\npidfile = /run/pgbouncer.pid\nsyslog = 1\nso_reuseport = 1\nlog_connections = 1\nlog_disconnections = 0\nlog_stats = 1\nstats_period = 30\nverbose = 2\nunix_socket_mode = 0777\ntcp_defer_accept = 45\nserver_reset_query = DISCARD ALL\nserver_round_robin = 1\n"),
    )]);
    assert_eq!(c.log.level, "trace");
    assert!(c.log.connections && !c.log.disconnections);
    assert_eq!(c.log.stats_period, Duration::from_secs(30));
    for key in [
        "log_connections",
        "log_disconnections",
        "log_stats",
        "stats_period",
    ] {
        not_warned(&i, key);
    }
    for (key, text) in [
        ("logfile", "pgwake logs to stderr only"),
        ("pidfile", "writes no PID file"),
        ("syslog", "the journal passes it on to syslog"),
        ("so_reuseport", "raise listen.worker_threads"),
        ("server_round_robin", "not configurable"),
    ] {
        assert!(warned(&i, key).contains(text), "{key}: {}", warned(&i, key));
    }
    not_warned(&i, "unix_socket_mode");
    not_warned(&i, "server_reset_query");
    // The same option under the same name, in seconds.
    not_warned(&i, "tcp_defer_accept");
    assert_eq!(c.listen.tcp_defer_accept, Duration::from_secs(45));
    // One line per setting, in file order, naming file, line and key.
    let lines: Vec<usize> = i.warnings.iter().map(|w| w.line).collect();
    assert!(lines.windows(2).all(|w| w[0] <= w[1]), "{lines:?}");
    assert!(
        all(&i).contains("pgbouncer.ini:5: logfile: no equivalent in pgwake"),
        "{}",
        all(&i)
    );
}

#[test]
fn stats_are_logged_only_with_log_stats() {
    let (_d, i, c) = imported(&[(
        "pgbouncer.ini",
        &format!("{DB}[pgbouncer]\nlisten_addr = 127.0.0.1\nlog_stats = 0\nstats_period = 15\n"),
    )]);
    assert_eq!(c.log.stats_period, Duration::ZERO);
    assert!(warned(&i, "stats_period").contains("pgwake's SHOW STATS averages since start"));
}

#[test]
fn peers_forward_cancels() {
    let (_d, i, c) = imported(&[(
        "pgbouncer.ini",
        &format!("{DB}[peers]\n1 = host=10.0.0.1\n2 = host=10.0.0.2 port=6433 pool_size=4\n3 = host=/tmp/pgbouncer3\n[pgbouncer]\nlisten_addr = 127.0.0.1\npeer_id = 1\n"),
    )]);
    assert_eq!(
        c.peering.peers,
        vec!["10.0.0.1:6432".to_owned(), "10.0.0.2:6433".to_owned()]
    );
    assert!(warned(&i, "[peers] 3").contains("TCP only"));
    assert!(warned(&i, "peer_id").contains("needs no peer id"));
    let (_d, i, c) = imported(&[(
        "pgbouncer.ini",
        &format!("{DB}[peers]\n1 = host=10.0.0.1\n"),
    )]);
    assert!(c.peering.peers.is_empty());
    assert!(warned(&i, "peer_id (unset)").contains("stays off"));
}

#[test]
fn includes_are_followed_and_comments_carried() {
    let (_d, i, c) = imported(&[
        ("pgbouncer.ini", &format!("{DB}[pgbouncer]\nlisten_addr = 127.0.0.1\ndefault_pool_size = 5\n%include conf.d/pool.ini\n")),
        ("conf.d/pool.ini", ";; Bigger pools for the batch jobs\n;default_pool_size = 20\ndefault_pool_size = 40\n\n[databases]\nbatch = host=db.internal port=5433 user=app password=s3cret\n"),
    ]);
    assert_eq!(c.pool.size, 40, "the include, read later, wins");
    assert!(
        c.databases.contains_key("batch"),
        "sections carry on in the included file"
    );
    assert!(
        i.toml.contains(
            "# Bigger pools for the batch jobs\nsize = 40  # default_pool_size (pool.ini:3)"
        ),
        "explanation kept, commented-out setting dropped:\n{}",
        i.toml
    );
}

#[test]
fn a_second_pgbouncer_header_undoes_the_settings_above_it() {
    // As PgBouncer's loader does: the section starts from its defaults again.
    let (_d, i, c) = imported(&[
        (
            "pgbouncer.ini",
            &format!(
                "{DB}[pgbouncer]\nlisten_addr = 127.0.0.1\nlisten_port = 7000\n%include more.ini\n"
            ),
        ),
        (
            "more.ini",
            "[pgbouncer]\nlisten_addr = 127.0.0.1\nserver_lifetime = 100\n",
        ),
    ]);
    assert_eq!(c.listen.addr, "127.0.0.1:6432", "listen_port was undone");
    assert_eq!(c.pool.max_lifetime, Duration::from_secs(100));
    let w = warned(&i, "listen_port");
    assert!(w.starts_with("pgbouncer.ini:5: listen_port: no effect: PgBouncer sets every [pgbouncer] setting back to its default when the section starts again (more.ini:1)"), "{w}");
}

#[test]
fn malformed_input_names_file_line_and_key() {
    // (pgbouncer.ini, the whole error)
    let cases: &[(&str, &str)] = &[
        ("[databases]\n[pgbouncr]\n", "pgbouncer.ini:2: unknown section [pgbouncr]: PgBouncer reads [databases], [users], [peers] and [pgbouncer] (names are case-sensitive)"),
        ("[pgbouncer]\ndefault_pool_size = 2O\n", "pgbouncer.ini:2: default_pool_size: \"2O\" is not a whole number"),
        ("[pgbouncer]\nserver_lifetime = 1h\n", "pgbouncer.ini:2: server_lifetime: \"1h\" is not a number of seconds (like 30 or 0.5)"),
        ("[pgbouncer]\nlisten_port = 70000\n", "pgbouncer.ini:2: listen_port: 70000 is not a port (1-65535)"),
        ("[pgbouncer]\npool_mode = sesion\n", "pgbouncer.ini:2: pool_mode: \"sesion\" is not one of session, transaction, statement"),
        ("[pgbouncer]\nmax_client_con = 10\n", "pgbouncer.ini:2: max_client_con: not a PgBouncer setting (did you mean max_client_conn?); PgBouncer refuses to start with it"),
        ("listen_port = 1\n", "pgbouncer.ini:1: listen_port: a setting before any [section]: PgBouncer refuses it"),
        ("[pgbouncer]\nlisten port = 1\n", "pgbouncer.ini:2: expected key = value, [section] or %include, not \"listen port = 1\""),
        ("[databases]\napp = host=db port=x\n", "pgbouncer.ini:2: [databases] app: port=x is not a port (1-65535)"),
        ("[databases]\napp = host=db dbname\n", "pgbouncer.ini:2: [databases] app: expected key=value at \"dbname\""),
        ("[databases]\napp = hots=db\n", "pgbouncer.ini:2: [databases] app: hots is not a connection parameter PgBouncer knows; it refuses the entry"),
        ("[databases]\napp = host=db pool_size=0\n", "pgbouncer.ini:2: [databases] app: pool_size=0 gives the pool no server connection; pgwake needs at least 1"),
        ("[databases]\npgbouncer = host=db\n", "pgbouncer.ini:2: [databases] pgbouncer: the name pgbouncer is reserved for the admin console; PgBouncer refuses it"),
    ];
    for (ini, want) in cases {
        assert_eq!(error(&[("pgbouncer.ini", ini)]), *want, "{ini:?}");
    }
    let e = error(&[("pgbouncer.ini", "[pgbouncer]\n\n%include missing.ini\n")]);
    assert!(
        e.starts_with("pgbouncer.ini:3: %include: cannot read "),
        "{e}"
    );
    assert!(e.contains("missing.ini: No such file or directory"), "{e}");
    let e = error(&[("pgbouncer.ini", "[pgbouncer]\n%include pgbouncer.ini\n")]);
    assert!(
        e.contains("%include: pgbouncer.ini: includes nested more than 10 deep"),
        "{e}"
    );
    let options = ImportOptions {
        base_dir: "/nonexistent".into(),
        userlist: None,
    };
    let e = import(Path::new("pgbouncer.ini"), &options)
        .unwrap_err()
        .to_string();
    assert_eq!(
        e,
        "pgbouncer.ini: cannot read it: No such file or directory (os error 2)"
    );
}
