//! Shared-service mode: SCRAM-SHA-256 client authentication, client TLS,
//! the login timeout against slowloris clients, per-database limits, the
//! admin console's users, and the refusal to trust clients beyond loopback.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::{cluster, code, config_for, http_get, metric, pki, psql, Pgwake};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// pgwake for `cluster` with `listen` lines added to `[listen]` and `tail`
/// (more sections) appended.
fn start(cluster: &pgwake_testkit::Cluster, listen: &str, tail: &str) -> Pgwake {
    let port = pgwake_testkit::free_port();
    let toml = config_for(cluster, port, "min_idle = 1")
        .replace("[listen]\n", &format!("[listen]\n{listen}"))
        + tail;
    Pgwake::start_config(&toml, port, &[])
}

/// The SQLSTATE and message of a failed connect.
async fn connect_err(port: u16, user: &str, password: Option<&str>, db: &str) -> (String, String) {
    match pgwake_testkit::connect("127.0.0.1", port, user, password, db).await {
        Ok(_) => panic!("{user} logged in to {db} but should not have"),
        Err(e) => {
            let e = e
                .downcast::<tokio_postgres::Error>()
                .expect("a postgres error");
            let msg = e
                .as_db_error()
                .map(|d| d.message().to_owned())
                .unwrap_or_else(|| e.to_string());
            (code(&e), msg)
        }
    }
}

/// pgwake asking every client for SCRAM, with user alice (password
/// `alice-pw`) in its user file and `client_auth` lines `extra`.
fn scram_for_alice(cluster: &pgwake_testkit::Cluster, extra: &str) -> (Pgwake, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let users = write(dir.path(), "userlist.txt", "\"alice\" \"alice-pw\"\n");
    let pg = start(
        cluster,
        "",
        &format!("[client_auth]\nfile = \"{users}\"\n{extra}[[client_auth.rules]]\nmethod = \"scram-sha-256\"\n"),
    );
    (pg, dir)
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scram_logins_pass_with_the_right_password_and_fail_alike_otherwise() {
    let cluster = cluster();
    // A verifier exactly as PostgreSQL stores it.
    let verifier = cluster
        .psql(
            "postgres",
            "set password_encryption = 'scram-sha-256'; create role bob password 'bob-pw'; select rolpassword from pg_authid where rolname = 'bob'",
        )
        .unwrap();
    let verifier = verifier.lines().last().unwrap().trim().to_owned();
    assert!(verifier.starts_with("SCRAM-SHA-256$"), "{verifier}");
    let dir = tempfile::tempdir().unwrap();
    let users = write(
        dir.path(),
        "userlist.txt",
        &format!("; users of the shared pgwake\n\"alice\" \"alice-pw\"\n\"bob\" \"{verifier}\"\n"),
    );
    let pg = start(
        &cluster,
        "",
        &format!("[client_auth]\nfile = \"{users}\"\n[[client_auth.rules]]\naddress = \"all\"\nmethod = \"scram-sha-256\"\n"),
    );

    for (user, password) in [("alice", "alice-pw"), ("bob", "bob-pw")] {
        let c = pgwake_testkit::connect("127.0.0.1", pg.port, user, Some(password), "app")
            .await
            .unwrap_or_else(|e| panic!("{user}: {e:#}\n{}", pg.logs()));
        // Served by the pool, which logs in to the server as `app`.
        let row = c
            .query_one("select current_user::text, 6 * 7", &[])
            .await
            .unwrap();
        assert_eq!(
            (row.get::<_, String>(0), row.get::<_, i32>(1)),
            ("app".into(), 42)
        );
    }

    let wrong = connect_err(pg.port, "alice", Some("not-it"), "app").await;
    let unknown = connect_err(pg.port, "mallory", Some("not-it"), "app").await;
    assert_eq!(wrong.0, "28P01", "{wrong:?}");
    assert_eq!(unknown.0, "28P01", "{unknown:?}");
    // The same words either way: nothing tells whether the user exists.
    assert_eq!(
        wrong.1.replace("alice", "U"),
        unknown.1.replace("mallory", "U"),
        "{wrong:?} vs {unknown:?}"
    );
    assert_eq!(wrong.1, "password authentication failed for user \"alice\"");

    // libpq's SCRAM.
    let conninfo = format!("host=127.0.0.1 port={} user=alice dbname=app", pg.port);
    let (ok, out) = psql(
        &cluster,
        &conninfo,
        "select 40 + 2",
        &[("PGPASSWORD", "alice-pw")],
    );
    assert!(ok && out.trim() == "42", "{out}");
    let (ok, out) = psql(&cluster, &conninfo, "select 1", &[("PGPASSWORD", "bad")]);
    assert!(
        !ok && out.contains("password authentication failed for user \"alice\""),
        "{out}"
    );

    let (_, m) = http_get(pg.admin_port, "/metrics", Duration::from_secs(10));
    assert!(
        metric(&m, "pgwake_client_auth_failures_total{reason=\"password\"}") >= 3.0,
        "{m}"
    );
    // The log says why, for the operator; never a password.
    let logs = pg.logs();
    assert!(logs.contains("no such user in client_auth.file"), "{logs}");
    assert!(
        !logs.contains("alice-pw") && !logs.contains("not-it"),
        "{logs}"
    );
}

/// pgwake with mel's MD5 hash and alice's plain password in its user file,
/// PgBouncer's `md5` method for every database but `strict`, which allows
/// SCRAM-SHA-256 only.
fn md5_for_mel(cluster: &pgwake_testkit::Cluster) -> (Pgwake, tempfile::TempDir, String) {
    let hash = postgres_protocol::password::md5(b"mel-pw", "mel");
    let dir = tempfile::tempdir().unwrap();
    let users = write(
        dir.path(),
        "userlist.txt",
        &format!("\"mel\" \"{hash}\"\n\"alice\" \"alice-pw\"\n"),
    );
    let pg = start(
        cluster,
        "",
        &format!("[client_auth]\nfile = \"{users}\"\n[[client_auth.rules]]\ndatabase = \"strict\"\nmethod = \"scram-sha-256\"\n[[client_auth.rules]]\nmethod = \"md5\"\n"),
    );
    (pg, dir, hash)
}

/// The authentication request pgwake answers `user`'s startup for `db`
/// with: 5 for MD5, 10 for SASL (SCRAM).
async fn auth_request(port: u16, user: &str, db: &str) -> u32 {
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    s.write_all(&common::raw::startup(user, db)).await.unwrap();
    let (tag, body) = read_message(&mut s)
        .await
        .expect("an authentication request");
    assert_eq!(tag, b'R', "{user}@{db}: {}", String::from_utf8_lossy(&body));
    u32::from_be_bytes(body[..4].try_into().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn md5_entries_log_in_with_the_md5_challenge_under_md5_rules() {
    let cluster = cluster();
    let (pg, _dir, hash) = md5_for_mel(&cluster);
    // At start, one warning for mel, naming the user and never the hash.
    pg.wait_for_log_async(
        "user \"mel\" has an MD5 password hash",
        Duration::from_secs(10),
    )
    .await;

    // libpq (psql) answers the MD5 challenge.
    let conninfo = format!("host=127.0.0.1 port={} user=mel dbname=app", pg.port);
    let (ok, out) = psql(
        &cluster,
        &conninfo,
        "select current_user || ' ' || 6 * 7",
        &[("PGPASSWORD", "mel-pw")],
    );
    assert!(ok && out.trim() == "app 42", "{out}\n{}", pg.logs());
    let (ok, out) = psql(&cluster, &conninfo, "select 1", &[("PGPASSWORD", "bad")]);
    assert!(
        !ok && out.contains("password authentication failed for user \"mel\""),
        "{out}"
    );
    // tokio-postgres too; a wrong password gets 28P01, worded as for SCRAM.
    let c = pgwake_testkit::connect("127.0.0.1", pg.port, "mel", Some("mel-pw"), "app")
        .await
        .unwrap_or_else(|e| panic!("{e:#}\n{}", pg.logs()));
    let v: i32 = c.query_one("select 7", &[]).await.unwrap().get(0);
    assert_eq!(v, 7);
    let wrong = connect_err(pg.port, "mel", Some("not-it"), "app").await;
    assert_eq!(wrong.0, "28P01", "{wrong:?}");
    assert_eq!(wrong.1, "password authentication failed for user \"mel\"");

    // MD5 is asked of MD5 entries only: a plain password keeps SCRAM, and
    // so do unknown users and the SCRAM-only database.
    assert_eq!(auth_request(pg.port, "mel", "app").await, 5);
    assert_eq!(auth_request(pg.port, "alice", "app").await, 10);
    assert_eq!(auth_request(pg.port, "nobody", "app").await, 10);
    assert_eq!(auth_request(pg.port, "mel", "strict").await, 10);
    pgwake_testkit::connect("127.0.0.1", pg.port, "alice", Some("alice-pw"), "app")
        .await
        .unwrap();
    // Under a SCRAM-only rule the MD5 entry cannot log in; the log says why.
    let strict = connect_err(pg.port, "mel", Some("mel-pw"), "strict").await;
    assert_eq!(strict.0, "28P01", "{strict:?}");
    pg.wait_for_log_async(
        "only client_auth rules with method = \\\"md5\\\" accept",
        Duration::from_secs(10),
    )
    .await;

    let logs = pg.logs();
    assert_eq!(
        logs.matches("has an MD5 password hash").count(),
        1,
        "{logs}"
    );
    assert!(
        !logs.contains(&hash[3..]) && !logs.contains("mel-pw") && !logs.contains("not-it"),
        "{logs}"
    );
}

#[test]
fn psycopg_logs_in_with_an_md5_entry() -> anyhow::Result<()> {
    let cluster = cluster();
    let (pg, dir, _) = md5_for_mel(&cluster);
    common::python::ensure_venv(dir.path())?;
    let mut cmd = common::python::python_cmd("python");
    cmd.arg(common::python::python_dir().join("password_login.py"))
        .args(["--port", &pg.port.to_string()])
        .args(["--dbname", "app", "--user", "mel"])
        .args(["--password", "mel-pw", "--wrong-password", "not-it"]);
    let out = common::proc::Proc::spawn("password_login.py", cmd, dir.path().join("py.log"))?
        .finish(Duration::from_secs(60))
        .map_err(|e| e.context(pg.logs()))?;
    assert!(out.contains("login ok: app 42"), "{out}");
    assert!(
        out.contains("wrong password refused:")
            && out.contains("password authentication failed for user \"mel\""),
        "{out}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_missing_from_the_file_are_looked_up_with_the_auth_query() {
    let cluster = cluster();
    // As PgBouncer's docs suggest: a SECURITY DEFINER function over
    // pg_authid, which pgwake's own server role may call.
    cluster
        .psql(
            "app",
            "set password_encryption = 'scram-sha-256'; \
             create role carol password 'carol-pw'; \
             create function public.user_lookup(u text, out usename name, out passwd text) \
               returns record language sql security definer \
               as $$ select rolname, rolpassword from pg_authid where rolname = u $$; \
             revoke all on function public.user_lookup(text) from public; \
             grant execute on function public.user_lookup(text) to app",
        )
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let users = write(dir.path(), "userlist.txt", "\"alice\" \"alice-pw\"\n");
    let pg = start(
        &cluster,
        "",
        &format!(
            "[client_auth]\nfile = \"{users}\"\nquery = \"SELECT usename, passwd FROM public.user_lookup($1)\"\n[[client_auth.rules]]\nmethod = \"scram-sha-256\"\n"
        ),
    );
    // From the server's catalog.
    let c = pgwake_testkit::connect("127.0.0.1", pg.port, "carol", Some("carol-pw"), "app")
        .await
        .unwrap_or_else(|e| panic!("{e:#}\n{}", pg.logs()));
    let v: i32 = c.query_one("select 3", &[]).await.unwrap().get(0);
    assert_eq!(v, 3);
    // The file still answers first.
    pgwake_testkit::connect("127.0.0.1", pg.port, "alice", Some("alice-pw"), "app")
        .await
        .unwrap();
    let wrong = connect_err(pg.port, "carol", Some("nope"), "app").await;
    let unknown = connect_err(pg.port, "dave", Some("nope"), "app").await;
    assert_eq!((wrong.0.as_str(), unknown.0.as_str()), ("28P01", "28P01"));
    assert_eq!(
        wrong.1.replace("carol", "U"),
        unknown.1.replace("dave", "U")
    );
    // A role with no password (NULL) cannot log in either.
    cluster.psql("app", "create role erin").unwrap();
    let (code, _) = connect_err(pg.port, "erin", Some(""), "app").await;
    assert_eq!(code, "28P01");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_address_with_too_many_failures_is_refused_for_a_while() {
    let cluster = cluster();
    let (pg, _dir) = scram_for_alice(&cluster, "max_failures_per_minute = 3\n");
    for _ in 0..3 {
        let (c, _) = connect_err(pg.port, "alice", Some("guess"), "app").await;
        assert_eq!(c, "28P01");
    }
    // Even the right password is refused from this address now.
    let (c, m) = connect_err(pg.port, "alice", Some("alice-pw"), "app").await;
    assert_eq!(c, "28000", "{m}");
    assert!(
        m.contains("too many failed logins")
            && m.contains("client_auth.max_failures_per_minute = 3"),
        "{m}"
    );
    let (_, m) = http_get(pg.admin_port, "/metrics", Duration::from_secs(10));
    assert_eq!(
        metric(&m, "pgwake_client_auth_failures_total{reason=\"blocked\"}"),
        1.0,
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_tls_verify_full_works_and_require_refuses_plaintext() {
    let cluster = cluster();
    let first = pki();
    let dir = tempfile::tempdir().unwrap();
    let cert = write(dir.path(), "cert.pem", &first.cert_pem);
    let key = write(dir.path(), "key.pem", &first.key_pem);
    let ca = write(dir.path(), "ca.pem", &first.ca_pem);
    let users = write(dir.path(), "userlist.txt", "\"app\" \"tls-pw\"\n");
    // SCRAM inside TLS. psql below requires it bound to the certificate
    // (SCRAM-SHA-256-PLUS, its end-point hash computed by OpenSSL). The
    // rustls connector for tokio-postgres cannot bind (it parses the
    // certificate as a TBSCertificate and finds no hash), so tokio-postgres
    // declines it (flag `n`), which is allowed.
    let pg = start(
        &cluster,
        &format!("client_tls_mode = \"require\"\nclient_tls_cert = \"{cert}\"\nclient_tls_key = \"{key}\"\n"),
        &format!("[client_auth]\nfile = \"{users}\"\n[[client_auth.rules]]\nmethod = \"scram-sha-256\"\n"),
    );
    let conninfo = |root: &str| {
        format!(
            "host=localhost hostaddr=127.0.0.1 port={} user=app password=tls-pw dbname=app sslmode=verify-full sslrootcert={root} channel_binding=require",
            pg.port
        )
    };

    // tokio-postgres over TLS, the certificate checked against the test CA
    // and the name `localhost`.
    let (client, conn) = tokio_postgres::connect(
        &format!(
            "host=localhost hostaddr=127.0.0.1 port={} user=app password=tls-pw dbname=app sslmode=require",
            pg.port
        ),
        common::verify_full(&first.ca_pem),
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", pg.logs()));
    tokio::spawn(conn);
    let n: i64 = client
        .query_one("select count(*) from generate_series(1, 1000)", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 1000);
    // A result bigger than one TLS record comes through whole.
    let big: String = client
        .query_one("select repeat('x', 100000)", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(big.len(), 100_000);

    // psql with verify-full; \conninfo reports the encryption.
    let (ok, out) = psql(&cluster, &conninfo(&ca), "\\conninfo", &[]);
    assert!(ok && out.contains("SSL connection"), "{out}");
    let (ok, out) = psql(&cluster, &conninfo(&ca), "select 'over tls'", &[]);
    assert!(ok && out.trim() == "over tls", "{out}");

    // Plaintext is refused with a message naming the setting, before any
    // password is asked for.
    let (c, m) = connect_err(pg.port, "app", Some("tls-pw"), "app").await;
    assert_eq!(c, "28000", "{m}");
    assert!(m.contains("listen.client_tls_mode = \"require\""), "{m}");
    let (ok, out) = psql(
        &cluster,
        &format!(
            "host=127.0.0.1 port={} user=app dbname=app sslmode=disable",
            pg.port
        ),
        "select 1",
        &[],
    );
    assert!(!ok && out.contains("requires TLS"), "{out}");

    // New certificate files (another CA) are picked up on SIGHUP.
    let second = pki();
    let ca2 = write(dir.path(), "ca2.pem", &second.ca_pem);
    std::fs::write(&cert, &second.cert_pem).unwrap();
    std::fs::write(&key, &second.key_pem).unwrap();
    pg.signal("HUP");
    pg.wait_for_log_async("configuration reloaded", Duration::from_secs(5))
        .await;
    let (ok, out) = psql(&cluster, &conninfo(&ca2), "select 'new cert'", &[]);
    assert!(ok && out.trim() == "new cert", "{out}");
    let (ok, out) = psql(&cluster, &conninfo(&ca), "select 1", &[]);
    // (Both test CAs have the same name, so OpenSSL reports a bad signature
    // rather than an unknown issuer.)
    assert!(
        !ok && (out.contains("certificate verify failed") || out.contains("SSL error")),
        "{out}"
    );
    // The client connected before the reload is still served.
    let one: i32 = client.query_one("select 1", &[]).await.unwrap().get(0);
    assert_eq!(one, 1);
}

/// Runs `pgwake ARGS` to its end (killed after 30 s); exit code and output.
fn pgwake_cmd(args: &[&str], dir: &Path) -> (i32, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_pgwake"));
    cmd.args(args);
    for (k, _) in std::env::vars().filter(|(k, _)| k.starts_with("PGWAKE_")) {
        cmd.env_remove(k);
    }
    let mut p = common::proc::Proc::spawn("pgwake", cmd, dir.join("pgwake.log")).unwrap();
    let status = p.wait(Duration::from_secs(30)).unwrap();
    (status.code().unwrap_or(-1), p.output())
}

#[test]
fn a_listener_beyond_loopback_never_trusts_clients_from_elsewhere() {
    let dir = tempfile::tempdir().unwrap();
    let users = write(dir.path(), "userlist.txt", "\"alice\" \"pw\"\n");
    let base = "[listen]\naddr = \"0.0.0.0:16432\"\n[server]\nhost = \"db.example.com\"\n[admin]\naddr = \"\"\n";
    let run = |extra: &str, cmd: &str| {
        let path = write(dir.path(), "pgwake.toml", &format!("{base}{extra}"));
        pgwake_cmd(&[cmd, "--config", &path], dir.path())
    };

    let trust_all = "[[client_auth.rules]]\naddress = \"all\"\nmethod = \"trust\"\n";
    for cmd in ["check", "run"] {
        let (code, out) = run(trust_all, cmd);
        assert_ne!(code, 0, "{cmd}: {out}");
        assert!(
            out.contains("client_auth.rules[0].method = \"trust\"")
                && out.contains("listen.addr = \"0.0.0.0:16432\"")
                && out.contains("insecure_trust_beyond_loopback"),
            "{cmd}: {out}"
        );
    }
    // A network is as open as `all`.
    let (code, out) = run(
        "[[client_auth.rules]]\naddress = \"10.0.0.0/8\"\nmethod = \"trust\"\n",
        "check",
    );
    assert_ne!(code, 0, "{out}");
    // The default rules ask for SCRAM from elsewhere, which needs a user file.
    let (code, out) = run("", "check");
    assert_ne!(code, 0, "{out}");
    assert!(out.contains("set client_auth.file"), "{out}");

    // What is accepted: SCRAM with a user file; trust limited to loopback;
    // or trust with the override named.
    for ok in [
        format!("[client_auth]\nfile = \"{users}\"\n"),
        format!("[client_auth]\nfile = \"{users}\"\n[[client_auth.rules]]\naddress = \"loopback\"\nmethod = \"trust\"\n[[client_auth.rules]]\nmethod = \"scram-sha-256\"\n"),
        format!("[client_auth]\ninsecure_trust_beyond_loopback = true\n{trust_all}"),
    ] {
        let (code, out) = run(&ok, "check");
        assert_eq!(code, 0, "{ok}\n{out}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_clients_are_closed_at_the_login_timeout_and_others_are_served() {
    const SLOW: usize = 2000;
    // This process holds the slow sockets and more.
    rlimit::increase_nofile_limit(8192).unwrap();
    let cluster = cluster();
    let pg = start(&cluster, "client_login_timeout = \"3s\"\n", "");
    let normal = pg.client().await;

    // A startup packet, sent a byte every 500 ms: 20 s for the whole packet.
    let packet = common::raw::startup("app", "app");
    let mut slow = Vec::with_capacity(SLOW);
    for _ in 0..SLOW {
        slow.push(
            tokio::net::TcpStream::connect(("127.0.0.1", pg.port))
                .await
                .unwrap(),
        );
    }
    let rss_kib = pg.rss_kib();
    let tasks: Vec<_> = slow
        .into_iter()
        .map(|mut s| {
            let packet = packet.clone();
            tokio::spawn(async move {
                // Closed before the packet was done: a write fails, or a
                // read sees the error message or EOF.
                for &b in &packet {
                    if s.write_all(&[b]).await.is_err() {
                        return true;
                    }
                    let mut buf = [0u8; 256];
                    match tokio::time::timeout(Duration::from_millis(500), s.read(&mut buf)).await {
                        Ok(Ok(0)) | Ok(Err(_)) => return true,
                        Ok(Ok(_)) => {
                            // The FATAL; the close follows.
                            let rest =
                                tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf))
                                    .await;
                            return matches!(rest, Ok(Ok(0)) | Ok(Err(_)));
                        }
                        Err(_) => {}
                    }
                }
                false
            })
        })
        .collect();

    // A normal client is served all along.
    let mut served = 0;
    for _ in 0..40 {
        let v: i32 = normal.query_one("select 7", &[]).await.unwrap().get(0);
        assert_eq!(v, 7);
        served += 1;
        // Spread over the slow clients' life (the scenario), not a wait.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // And a new one can log in while the slow ones hang on.
    let fresh = pg.client().await;
    fresh.simple_query("select 1").await.unwrap();

    let mut closed = 0;
    for t in tasks {
        if t.await.unwrap() {
            closed += 1;
        }
    }
    assert_eq!(
        closed, SLOW,
        "every slow client was closed before it finished"
    );
    assert_eq!(served, 40);
    assert!(
        rss_kib < 64 * 1024,
        "pgwake's RSS with {SLOW} slow clients: {rss_kib} KiB"
    );
    let (_, m) = http_get(pg.admin_port, "/metrics", Duration::from_secs(10));
    assert!(
        metric(&m, "pgwake_timeouts_total{kind=\"client_login\"}") >= SLOW as f64,
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_over_its_client_limit_refuses_the_next_client_only() {
    let cluster = cluster();
    let pg = start(&cluster, "", "[databases.app]\nmax_client_conn = 2\n");
    let a = pg.client().await;
    let b = pg.client().await;
    let (c, m) = connect_err(pg.port, "app", None, "app").await;
    assert_eq!(c, "53300", "{m}");
    assert!(m.contains("databases.app.max_client_conn = 2"), "{m}");
    // The two admitted clients go on.
    for c in [&a, &b] {
        let v: i32 = c.query_one("select 5", &[]).await.unwrap().get(0);
        assert_eq!(v, 5);
    }
    // A place freed is a place for the next client.
    drop(a);
    let mut admitted = None;
    for _ in 0..100 {
        match pgwake_testkit::connect("127.0.0.1", pg.port, "app", None, "app").await {
            Ok(c) => {
                admitted = Some(c);
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
    let c = admitted.expect("a client admitted after one left");
    c.simple_query("select 1").await.unwrap();
    let (_, m) = http_get(pg.admin_port, "/metrics", Duration::from_secs(10));
    assert!(
        metric(&m, "pgwake_client_limit_refusals_total") >= 1.0,
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_console_admits_only_its_users() {
    let cluster = cluster();
    let pg = start(
        &cluster,
        "",
        "[admin]\nadmin_users = [\"boss\"]\nstats_users = [\"watcher\"]\n",
    );
    // Over TCP as a user in neither list.
    let (c, m) = connect_err(pg.port, "app", None, "pgwake").await;
    assert_eq!(c, "28000", "{m}");
    assert!(m.contains("admin.admin_users"), "{m}");

    let watcher = pgwake_testkit::connect("127.0.0.1", pg.port, "watcher", None, "pgbouncer")
        .await
        .unwrap();
    let rows = watcher.simple_query("SHOW POOLS").await.unwrap();
    assert!(rows.len() >= 2, "a pool row and the completion");
    let e = watcher
        .simple_query("PAUSE")
        .await
        .expect_err("stats user may not PAUSE");
    assert_eq!(code(&e), "42501", "{e}");

    let boss = pgwake_testkit::connect("127.0.0.1", pg.port, "boss", None, "pgwake")
        .await
        .unwrap();
    boss.simple_query("RESUME").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_the_configuration_does_not_serve_is_refused() {
    let cluster = cluster();
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().to_str().unwrap().to_owned();
    let listen = format!("unix_socket_dir = \"{socket}\"\n");
    let pg = start(&cluster, &listen, "");
    // The server user is served (the positive case)...
    let c = pg.client().await;
    let who: String = c
        .query_one("select current_user::text", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(who, "app");
    // ...anyone else is refused over TCP and over the unix socket, with
    // the name in the error, instead of being given app's privileges.
    for host in ["127.0.0.1", socket.as_str()] {
        for user in ["no_such_user", "postgres", "readonly"] {
            let e = pgwake_testkit::connect(host, pg.port, user, None, "app")
                .await
                .err()
                .unwrap_or_else(|| panic!("{user} via {host} was served"));
            let e = e.downcast::<tokio_postgres::Error>().unwrap();
            assert_eq!(code(&e), "28000", "{user} via {host}: {e}");
            let m = e.as_db_error().unwrap().message().to_owned();
            assert!(m.contains(&format!("\"{user}\"")), "{m}");
        }
    }
    drop(pg);

    // Listed client users, and the explicit opt-in, are served as app.
    let port = pgwake_testkit::free_port();
    let toml = config_for(&cluster, port, "min_idle = 1").replace(
        "password = \"app-secret\"\n",
        "password = \"app-secret\"\nclient_users = [\"web\"]\n",
    );
    let pg = Pgwake::start_config(&toml, port, &[]);
    let web = pgwake_testkit::connect("127.0.0.1", pg.port, "web", None, "app")
        .await
        .unwrap();
    let who: String = web
        .query_one("select current_user::text", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(who, "app");
    assert!(
        pgwake_testkit::connect("127.0.0.1", pg.port, "other", None, "app")
            .await
            .is_err()
    );
    drop(pg);
    let port = pgwake_testkit::free_port();
    let toml = config_for(&cluster, port, "min_idle = 1").replace(
        "password = \"app-secret\"\n",
        "password = \"app-secret\"\nmap_any_client_user = true\n",
    );
    let pg = Pgwake::start_config(&toml, port, &[]);
    let any = pgwake_testkit::connect("127.0.0.1", pg.port, "no_such_user", None, "app")
        .await
        .unwrap();
    let who: String = any
        .query_one("select current_user::text", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(who, "app");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loopback_without_an_admin_user_may_only_look() {
    let cluster = cluster();
    let dir = tempfile::tempdir().unwrap();
    let pg = start(
        &cluster,
        &format!("unix_socket_dir = \"{}\"\n", dir.path().display()),
        "",
    );
    // A neighbour on loopback (no admin.admin_users set): SHOW works...
    let neighbour = pgwake_testkit::connect("127.0.0.1", pg.port, "app", None, "pgwake")
        .await
        .unwrap();
    let rows = neighbour.simple_query("SHOW POOLS").await.unwrap();
    assert!(rows.len() >= 2, "a pool row and the completion");
    // ...but nothing that changes state.
    for command in [
        "SHUTDOWN",
        "SLEEP",
        "PAUSE",
        "RESUME",
        "RELOAD",
        "WAKE",
        "PAUSE app",
        "RECONNECT",
        "KILL app",
        "KILL_CLIENT 1",
        "WAIT_CLOSE",
        "DISABLE app",
        "ENABLE app",
        "SUSPEND",
        "SET pool.size = 3",
    ] {
        let e = neighbour
            .simple_query(command)
            .await
            .expect_err("loopback may not change state");
        assert_eq!(code(&e), "42501", "{command}: {e}");
    }
    let c = pg.client().await;
    c.simple_query("select 1").await.unwrap();

    // The unix socket, whose file permissions decide, may.
    let socket = dir.path().to_str().unwrap();
    let local = pgwake_testkit::connect(socket, pg.port, "app", None, "pgwake")
        .await
        .unwrap();
    local.simple_query("PAUSE").await.unwrap();
    local.simple_query("RESUME").await.unwrap();
    c.simple_query("select 1").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_user_on_loopback_may_change_state() {
    let cluster = cluster();
    let pg = start(&cluster, "", "[admin]\nadmin_users = [\"app\"]\n");
    let admin = pgwake_testkit::connect("127.0.0.1", pg.port, "app", None, "pgwake")
        .await
        .unwrap();
    admin.simple_query("PAUSE").await.unwrap();
    admin.simple_query("RESUME").await.unwrap();
    let c = pg.client().await;
    c.simple_query("select 1").await.unwrap();
    admin.simple_query("SHUTDOWN").await.ok();
    let mut pg = pg;
    assert!(
        pg.wait_exit(Duration::from_secs(15)).is_some(),
        "SHUTDOWN from an admin user stops pgwake"
    );
}

/// Reads one backend message: its tag and body.
async fn read_message(s: &mut tokio::net::TcpStream) -> Option<(u8, Vec<u8>)> {
    let mut head = [0u8; 5];
    s.read_exact(&mut head).await.ok()?;
    let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
    let mut body = vec![0u8; len.checked_sub(4)?];
    s.read_exact(&mut body).await.ok()?;
    Some((head[0], body))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_scram_messages_get_protocol_errors_and_harm_no_one() {
    let cluster = cluster();
    let (pg, _dir) = scram_for_alice(&cluster, "");
    let startup = common::raw::startup("alice", "app");
    let frame = |tag: u8, body: &[u8]| {
        let mut f = vec![tag];
        f.extend_from_slice(&u32::try_from(body.len() + 4).unwrap().to_be_bytes());
        f.extend_from_slice(body);
        f
    };
    let mut initial_sha1 = b"SCRAM-SHA-1\x00".to_vec();
    initial_sha1.extend_from_slice(&4i32.to_be_bytes());
    initial_sha1.extend_from_slice(b"n,,n");
    let mut bad_first = b"SCRAM-SHA-256\x00".to_vec();
    bad_first.extend_from_slice(&7i32.to_be_bytes());
    bad_first.extend_from_slice(b"garbage");
    let mut wrong_length = b"SCRAM-SHA-256\x00".to_vec();
    wrong_length.extend_from_slice(&1000i32.to_be_bytes());
    wrong_length.extend_from_slice(b"n,,n=,r=abc");
    // A header claiming 100 MB: refused from the header alone.
    let mut huge = vec![b'p'];
    huge.extend_from_slice(&100_000_000u32.to_be_bytes());
    for (what, bytes, message) in [
        (
            "another mechanism",
            frame(b'p', &initial_sha1),
            "invalid SASL authentication mechanism",
        ),
        (
            "no mechanism name",
            frame(b'p', b"no terminator"),
            "malformed SASLInitialResponse",
        ),
        (
            "a garbage client-first-message",
            frame(b'p', &bad_first),
            "malformed SCRAM message",
        ),
        (
            "a wrong data length",
            frame(b'p', &wrong_length),
            "malformed SASLInitialResponse",
        ),
        (
            "a query instead of a SASL response",
            frame(b'Q', b"select 1\x00"),
            "expected SASL response",
        ),
        ("a huge message", huge, "message too long"),
    ] {
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", pg.port))
            .await
            .unwrap();
        s.write_all(&startup).await.unwrap();
        let (tag, body) = read_message(&mut s).await.expect("AuthenticationSASL");
        assert_eq!(
            (tag, &body[..4]),
            (b'R', &10u32.to_be_bytes()[..]),
            "{what}"
        );
        s.write_all(&bytes).await.unwrap();
        let (tag, body) = tokio::time::timeout(Duration::from_secs(10), read_message(&mut s))
            .await
            .expect("an answer")
            .expect("an ErrorResponse");
        let text = String::from_utf8_lossy(&body);
        assert_eq!(tag, b'E', "{what}: {text}");
        assert_eq!(
            common::raw::error_body_sqlstate(&body).as_deref(),
            Some("08P01"),
            "{what}: {text}"
        );
        assert!(text.contains(message), "{what}: {text}");
        // Then the connection is closed.
        let mut rest = Vec::new();
        let closed = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut rest)).await;
        assert!(matches!(closed, Ok(Ok(_))), "{what}: closed");
    }
    // Nobody else was harmed.
    let c = pgwake_testkit::connect("127.0.0.1", pg.port, "alice", Some("alice-pw"), "app")
        .await
        .unwrap();
    let v: i32 = c.query_one("select 11", &[]).await.unwrap().get(0);
    assert_eq!(v, 11);
    let logs = pg.logs();
    assert!(!logs.contains("panicked"), "{logs}");
}
