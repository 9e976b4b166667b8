//! `pgwake import-pgbouncer`: PgBouncer's own sample configurations (as the
//! Debian package installs them) and the hand-written ones in
//! tests/fixtures/pgbouncer import into configurations `pgwake check`
//! accepts as printed, with a warning for what has no equivalent; two of
//! them serve the same psql and pgbench clients alike under PgBouncer and
//! under pgwake.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use common::pgbouncer::{self, PgBouncer};
use common::{cluster, pgbench_with_password, psql, run_pgwake_in, Pgwake};

/// A fixture copied into a temp dir under /tmp (PgBouncer, as `postgres`,
/// can read it there), with `@DIR@` (that dir), `@PORT@` (the pooler's
/// port) and `@PGPORT@` (the server's) filled in.
struct Fixture {
    dir: tempfile::TempDir,
}

impl Fixture {
    fn new(name: &str, port: u16, pg_port: u16) -> Fixture {
        let src = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/pgbouncer")
            .join(name);
        let dir = tempfile::Builder::new()
            .prefix("pgwake-import-")
            .tempdir_in("/tmp")
            .unwrap();
        let entries =
            std::fs::read_dir(&src).unwrap_or_else(|e| panic!("fixture {}: {e}", src.display()));
        for entry in entries {
            let path = entry.unwrap().path();
            let text = std::fs::read_to_string(&path)
                .unwrap()
                .replace("@DIR@", &dir.path().display().to_string())
                .replace("@PGPORT@", &pg_port.to_string())
                .replace("@PORT@", &port.to_string());
            std::fs::write(dir.path().join(path.file_name().unwrap()), text).unwrap();
        }
        std::fs::create_dir(dir.path().join("sock")).unwrap();
        pgbouncer::share(dir.path());
        // Both poolers make their unix sockets here.
        std::fs::set_permissions(
            dir.path().join("sock"),
            std::fs::Permissions::from_mode(0o1777),
        )
        .unwrap();
        Fixture { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// `pgwake import-pgbouncer pgbouncer.ini` run in the fixture's dir.
    fn import(&self) -> Import {
        import(self.dir.path(), "pgbouncer.ini")
    }
}

/// What `import-pgbouncer` printed.
struct Import {
    toml: String,
    warnings: String,
}

/// Runs `pgwake import-pgbouncer INI` in `dir`; fails the test unless it
/// converts the file and `pgwake check` accepts the output as printed.
fn import(dir: &Path, ini: &str) -> Import {
    let (code, toml, warnings) = run_pgwake_in(Some(dir), &["import-pgbouncer", ini], &[]);
    assert_eq!(code, 0, "import-pgbouncer {ini} failed:\n{warnings}");
    let out = tempfile::tempdir().unwrap();
    let path = out.path().join("pgwake.toml");
    std::fs::write(&path, &toml).unwrap();
    let (code, checked, err) = run_pgwake_in(
        Some(dir),
        &["check", "--config", path.to_str().unwrap()],
        &[],
    );
    assert_eq!(
        code, 0,
        "pgwake check refused the import of {ini}:\n{err}\n--- imported ---\n{toml}"
    );
    assert!(checked.contains("configuration is valid"), "{checked}");
    Import { toml, warnings }
}

fn assert_contains(text: &str, wanted: &[&str], what: &str) {
    for w in wanted {
        assert!(text.contains(w), "{what} lacks {w:?}:\n{text}");
    }
}

#[test]
fn pgbouncers_own_sample_configs_import_and_pass_check() {
    for sample in [
        "/usr/share/doc/pgbouncer/examples/pgbouncer.ini",
        "/etc/pgbouncer/pgbouncer.ini",
    ] {
        assert!(
            Path::new(sample).is_file(),
            "{sample} is missing: it comes with the Debian package pgbouncer, which tests/run installs (apt-get install pgbouncer)"
        );
        let cwd = tempfile::tempdir().unwrap();
        let i = import(cwd.path(), sample);
        // /etc's copy is the administrator's to change; the example is not.
        if sample.starts_with("/usr/share") {
            assert_contains(
                &i.warnings,
                &[
                    &format!("{sample}:12: [databases]: no database is configured, so PgBouncer serves none"),
                    &format!("{sample}:45: logfile: no equivalent in pgwake: pgwake logs to stderr only"),
                    &format!("{sample}:46: pidfile: no equivalent in pgwake"),
                    "admin_users (unset): with admin_users and stats_users empty PgBouncer lets no one into its console",
                ],
                "the warnings",
            );
            assert_eq!(
                i.warnings.lines().count(),
                4,
                "one line per setting:\n{}",
                i.warnings
            );
            assert_contains(
                &i.toml,
                &[
                    "# IP address or * which means all IPs\naddr = \"127.0.0.1:6432\"",
                    "# On Debian it should be /var/run/postgresql\nunix_socket_dir = \"/var/run/postgresql\"",
                    "file = \"/etc/pgbouncer/userlist.txt\"",
                    "method = \"md5\"  # auth_type (pgbouncer.ini:116)",
                "connections = true  # PgBouncer's default",
                "stats_period = \"1m\"  # PgBouncer's default",
                    "mode = \"session\"  # PgBouncer's default",
                ],
                "the imported configuration",
            );
        }
    }
}

#[test]
fn hand_written_configs_import_and_pass_check() {
    let cases: &[(&str, &[&str], &[&str])] = &[
        (
            "transaction-trust",
            &[
                "pgbouncer.ini:11: [users] app: max_user_connections: pgwake has no per-user settings",
                "pgbouncer.ini:29: reserve_pool_size: no equivalent in pgwake",
                "pgbouncer.ini:32: max_user_connections: no equivalent in pgwake",
                "pgbouncer.ini:35: ignore_startup_parameters: pgwake accepts every startup parameter",
                "pgbouncer.ini:41: stats_period: with log_stats = 0 PgBouncer uses it only for the averages of SHOW STATS",
            ],
            &[
                "mode = \"transaction\"  # pool_mode (pgbouncer.ini:25)",
                "# Keep two connections warm for the morning rush.",
                "[databases.appdb]\n# The same database under another name, for the session-mode jobs.\ndbname = \"app\"",
                "size = 8  # max_db_connections (pgbouncer.ini:31)",
                "client_users = [\"monitoring\"]",
                "method = \"trust\"",
                "admin_users = [\"app\"]",
                "connections = false  # log_connections (pgbouncer.ini:38)",
                "disconnections = false  # log_disconnections (pgbouncer.ini:39)",
                "stats_period = \"0s\"  # log_stats (pgbouncer.ini:40), stats_period (pgbouncer.ini:41)",
            ],
        ),
        (
            "scram-session-include",
            &["timeouts.ini:14: server_login_retry: no equivalent in pgwake"],
            &[
                "# Recycle server connections every half hour.\nmax_lifetime = \"30m\"  # server_lifetime (timeouts.ini:6)",
                "query_timeout = \"2m\"",
                "tcp_keepalive_idle = \"45s\"",
                "password = \"app-secret\"  # auth_file userlist.txt line 1",
                "method = \"scram-sha-256\"",
            ],
        ),
        (
            "tls-keepalive",
            &[
                "client_tls_sslmode: pgwake does not check client certificates: verify-full became require",
                "client_tls_ca_file: no equivalent in pgwake",
                "client_tls_ciphers: no equivalent in pgwake",
                "server_tls_protocols: no equivalent in pgwake",
                "so_reuseport: no equivalent in pgwake: pgwake serves all clients from one process",
                "logfile: no equivalent",
                "pidfile: no equivalent",
                "syslog: no equivalent",
                "syslog_ident: no equivalent",
            ],
            &[
                "addr = \"0.0.0.0:",
                "client_tls_mode = \"require\"",
                "sslmode = \"verify-full\"",
                "# Below the 4-minute idle timeout of the cloud NAT.\ntcp_keepalive_idle = \"2m\"",
                "tcp_user_timeout = \"20s\"",
                "max_prepared_statements = 100",
                "max_message_size = 1073741824",
                "method = \"md5\"",
            ],
        ),
        (
            "multi-server",
            &[
                "[databases] orders: connect_query: no equivalent in pgwake",
                "[databases] orders_ro: reserve_pool: no equivalent",
                "pgbouncer.ini:5: [databases] orders_ro: pool_mode: pgwake has no statement pooling",
                "pgbouncer.ini:8: [databases] *: the fallback has no equivalent next to named entries",
                "[users] batch: pool_mode",
                "[users] batch: max_user_connections",
                "pool_mode: pgwake has no statement pooling",
                "server_check_query: no equivalent",
                "dns_max_ttl: no equivalent",
                "auth_user: pgwake logs in as lookup with server.auth.password",
            ],
            &[
                "query = \"SELECT usename, passwd FROM pgbouncer.user_lookup($1)\"",
                "query_user = \"lookup\"",
                "query_database = \"orders\"",
                "[databases.orders]",
                "[databases.billing.server]\nhost = \"10.0.0.20\"",
                "size = 10  # max_db_connections",
            ],
        ),
        (
            "hba-peers",
            &[
                "pgbouncer_hba.conf:2: hba rule: peer: pgwake does not check the client's OS user",
                "pgbouncer_hba.conf:4: hba rule: hostssl: pgwake's rules do not look at TLS",
                "pgbouncer_hba.conf:5: hba rule: pgwake's rules cannot express samenet; the line was left out",
                "peer_id: pgwake needs no peer id",
            ],
            &[
                "peers = [\"10.0.1.5:6432\", \"10.0.2.7:6432\"]",
                "address = \"unix\"\nmethod = \"trust\"",
                "address = \"10.0.0.0/8\"\ndatabase = \"pgbouncer\"\nuser = \"ops\"",
                "address = \"10.0.0.0/8\"\ndatabase = \"app\"\nuser = \"app\"\nmethod = \"md5\"",
            ],
        ),
        (
            "fallback-any",
            &[
                "server_tls_sslmode: pgwake has no allow mode",
                "query_wait_timeout: 0 (no limit) has no equivalent",
                "application_name_add_host: no equivalent",
                "admin_users (unset)",
            ],
            &[
                "map_any_client_user = true",
                "level = \"debug\"",
                "size = 8",
                "user = \"app\"",
            ],
        ),
    ];
    for (name, warnings, toml) in cases {
        let fx = Fixture::new(name, 6432, 5432);
        if *name == "tls-keepalive" {
            let pki = common::pki();
            std::fs::write(fx.path("server.crt"), &pki.cert_pem).unwrap();
            std::fs::write(fx.path("server.key"), &pki.key_pem).unwrap();
            std::fs::write(fx.path("ca.crt"), &pki.ca_pem).unwrap();
        }
        let i = fx.import();
        assert_contains(&i.warnings, warnings, &format!("{name}'s warnings"));
        assert_contains(&i.toml, toml, &format!("{name}'s import"));
        for line in i.warnings.lines() {
            let mut parts = line.splitn(4, ':');
            let (file, number) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
            assert!(
                !file.is_empty() && number.trim().parse::<usize>().is_ok(),
                "{name}: a warning without file and line: {line}"
            );
        }
    }
}

#[test]
fn files_that_cannot_be_imported_are_refused_naming_file_line_and_key() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("bad.ini"),
        "[databases]\napp = host=db\n[pgbouncr]\nlisten_port = 1\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("inc.ini"),
        "[pgbouncer]\nlisten_port = 6432\n%include conf.d/missing.ini\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("num.ini"),
        "[pgbouncer]\ndefault_pool_size = twenty\n",
    )
    .unwrap();
    for (ini, want) in [
        ("bad.ini", "pgwake: bad.ini:3: unknown section [pgbouncr]"),
        ("inc.ini", "pgwake: inc.ini:3: %include: cannot read "),
        (
            "num.ini",
            "pgwake: num.ini:2: default_pool_size: \"twenty\" is not a whole number",
        ),
    ] {
        let (code, out, err) = run_pgwake_in(Some(dir.path()), &["import-pgbouncer", ini], &[]);
        assert_eq!(code, 2, "{ini}: {err}");
        assert!(out.is_empty(), "nothing on stdout for {ini}: {out}");
        assert!(err.starts_with(want), "{ini}: {err}");
    }
}

/// What a client sees: psql's answer on each database, and pgbench's
/// transaction count and failures.
fn outcome(
    cluster: &pgwake_testkit::Cluster,
    port: u16,
    dbs: &[&str],
    password: Option<&str>,
) -> Vec<String> {
    let env: Vec<(&str, &str)> = password.map(|p| ("PGPASSWORD", p)).into_iter().collect();
    let mut seen = Vec::new();
    for db in dbs {
        let conninfo = format!("host=127.0.0.1 port={port} user=app dbname={db}");
        let (ok, out) = psql(
            cluster,
            &conninfo,
            "select current_user, current_database(), 6 * 7",
            &env,
        );
        assert!(ok, "psql on {db} through port {port}: {out}");
        seen.push(format!("{db}: {}", out.trim()));
    }
    let bench = pgbench_with_password(cluster, port, password, &["-n", "-S", "-t", "50"]);
    for line in bench.lines() {
        if line.starts_with("number of transactions actually processed")
            || line.starts_with("number of failed transactions")
        {
            seen.push(line.to_owned());
        }
    }
    seen
}

/// Runs `fixture` under PgBouncer and, imported, under pgwake, in front of
/// one server, and checks both give the clients the same outcome.
fn same_outcome_as_pgbouncer(
    fixture: &str,
    dbs: &[&str],
    password: Option<&str>,
    expected: &[&str],
) {
    let cluster = cluster();
    pgbench_with_password(
        &cluster,
        cluster.port(),
        Some("app-secret"),
        &["-i", "-q", "-s", "1"],
    );

    let pgb_port = pgwake_testkit::free_port();
    let pgb = Fixture::new(fixture, pgb_port, cluster.port());
    let bouncer = PgBouncer::start(&pgb.path("pgbouncer.ini"), pgb.dir.path(), pgb_port);
    let with_pgbouncer = outcome(&cluster, pgb_port, dbs, password);

    let pgw_port = pgwake_testkit::free_port();
    let pgw = Fixture::new(fixture, pgw_port, cluster.port());
    let imported = pgw.import();
    let pgwake = Pgwake::start_config(&imported.toml, pgw_port, &[]);
    let with_pgwake = outcome(&cluster, pgw_port, dbs, password);

    assert_eq!(
        with_pgbouncer,
        expected,
        "PgBouncer:\n{}",
        bouncer.log_tail()
    );
    assert_eq!(
        with_pgwake,
        with_pgbouncer,
        "pgwake with\n{}\nlogs:\n{}",
        imported.toml,
        pgwake.logs()
    );
}

#[test]
fn a_transaction_pool_with_trust_serves_clients_as_pgbouncer_did() {
    same_outcome_as_pgbouncer(
        "transaction-trust",
        &["app", "appdb"],
        None,
        &[
            "app: app|app|42",
            "appdb: app|app|42",
            "number of transactions actually processed: 50/50",
            "number of failed transactions: 0 (0.000%)",
        ],
    );
}

#[test]
fn a_session_pool_with_scram_serves_clients_as_pgbouncer_did() {
    same_outcome_as_pgbouncer(
        "scram-session-include",
        &["app"],
        Some("app-secret"),
        &[
            "app: app|app|42",
            "number of transactions actually processed: 50/50",
            "number of failed transactions: 0 (0.000%)",
        ],
    );
}
