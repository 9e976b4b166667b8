//! The command line: `check`, the example configs, graceful shutdown, `demo`.

mod common;

use std::future::ready;
use std::process::Command;
use std::time::Duration;

use common::{cluster, config_for, run_pgwake as pgwake, wait_until_async, Pgwake};

fn example(name: &str) -> String {
    format!("{}/config/{name}", env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn check_prints_the_effective_config_with_secrets_redacted() {
    let (code, out, err) = pgwake(
        &["check", "--config", &example("multi-database.toml")],
        &[("PGWAKE_POOL_SIZE", "9")],
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("size = 9"), "env override shown: {out}");
    assert!(
        out.contains("<redacted>") && !out.contains("change-me"),
        "{out}"
    );
    assert!(out.contains("[databases.reports]"), "{out}");
    // A password given in the URL is redacted too.
    let (code, out, _) = pgwake(
        &[
            "check",
            "--server-url",
            "postgres://app:s3cr3t@db.example:5432/app",
        ],
        &[],
    );
    assert_eq!(code, 0);
    assert!(
        !out.contains("s3cr3t") && out.contains("<redacted>"),
        "{out}"
    );
}

#[test]
fn check_lists_every_problem_in_a_bad_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(
        &path,
        "[listen]\naddr = \"0.0.0.0:6432\"\n[server]\nhost = \"db\"\nprot = 5432\n[pool]\nsise = 3\nmode = \"statement\"\nmin_idle = 50\n",
    )
    .unwrap();
    let (code, out, err) = pgwake(&["check", "--config", path.to_str().unwrap()], &[]);
    assert_eq!(code, 2, "{out}{err}");
    for needle in [
        "server.prot",
        "pool.sise",
        "pool.mode",
        "listen.addr",
        "min_idle",
    ] {
        assert!(err.contains(needle), "{needle} not reported:\n{err}");
    }
    let (code, _, err) = pgwake(&["check", "--config", "/nonexistent/pgwake.toml"], &[]);
    assert_ne!(code, 0);
    assert!(err.contains("/nonexistent/pgwake.toml"), "{err}");
    let (code, _, err) = pgwake(&["run", "--config", path.to_str().unwrap()], &[]);
    assert_eq!(code, 2, "run refuses a bad config too: {err}");
    assert!(err.contains("listen.addr"), "{err}");
}

#[test]
fn check_never_prints_a_service_principal_secret() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sp.toml");
    std::fs::write(
        &path,
        "[server]\nhost = \"db.example\"\nsslmode = \"verify-full\"\n[server.auth]\nmethod = \"azure_client_secret\"\nuser = \"app\"\ntenant_id = \"72f988bf-86f1-41af-91ab-2d7cd011db47\"\nclient_id = \"app-client\"\n",
    )
    .unwrap();
    let (code, out, err) = pgwake(
        &["check", "--config", path.to_str().unwrap()],
        &[("PGWAKE_SERVER_AUTH_CLIENT_SECRET", "sp-Very~Secret.123")],
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("method = \"azure_client_secret\""), "{out}");
    assert!(out.contains("client_secret = \"<redacted>\""), "{out}");
    assert!(
        !out.contains("Very~Secret") && !err.contains("Very~Secret"),
        "{out}{err}"
    );
    // Without the secret: the error names the key and the variable.
    let (code, _, err) = pgwake(&["check", "--config", path.to_str().unwrap()], &[]);
    assert_ne!(code, 0);
    assert!(
        err.contains("server.auth.client_secret")
            && err.contains("PGWAKE_SERVER_AUTH_CLIENT_SECRET"),
        "{err}"
    );
}

#[test]
fn every_example_config_is_valid() {
    let dir = format!("{}/config", env!("CARGO_MANIFEST_DIR"));
    let mut n = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) != Some("toml") {
            continue;
        }
        // Password configs take theirs from the environment.
        let text = std::fs::read_to_string(&path).unwrap();
        let mut env: Vec<(&str, String)> = Vec::new();
        if text.contains("method = \"password\"") {
            env.push(("PGWAKE_SERVER_AUTH_PASSWORD", "from-env".into()));
        }
        // Files a shared service has mounted stand in as temporary ones.
        let mounted = tempfile::tempdir().unwrap();
        let pki = common::pki();
        for (var, key, content) in [
            (
                "PGWAKE_CLIENT_AUTH_FILE",
                "file = \"/etc/pgwake/users/",
                "\"app\" \"example\"\n",
            ),
            (
                "PGWAKE_LISTEN_CLIENT_TLS_CERT",
                "client_tls_cert = ",
                pki.cert_pem.as_str(),
            ),
            (
                "PGWAKE_LISTEN_CLIENT_TLS_KEY",
                "client_tls_key = ",
                pki.key_pem.as_str(),
            ),
        ] {
            if text.contains(key) {
                let f = mounted.path().join(var);
                std::fs::write(&f, content).unwrap();
                env.push((var, f.display().to_string()));
            }
        }
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let (code, out, err) = pgwake(&["check", "--config", path.to_str().unwrap()], &env);
        assert_eq!(code, 0, "{}: {err}", path.display());
        assert!(!out.contains("from-env"));
        n += 1;
    }
    assert!(n >= 3, "example configs found: {n}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sidecar_example_serves_clients() {
    let cluster = cluster();
    let port = pgwake_testkit::free_port();
    let text = std::fs::read_to_string(example("sidecar.toml")).unwrap();
    let server_port = cluster.port().to_string();
    let listen = format!("127.0.0.1:{port}");
    let env = [
        ("PGWAKE_SERVER_HOST", "127.0.0.1"),
        ("PGWAKE_SERVER_PORT", server_port.as_str()),
        ("PGWAKE_SERVER_AUTH_PASSWORD", "app-secret"),
        ("PGWAKE_LISTEN_ADDR", listen.as_str()),
    ];
    let pg = Pgwake::start_config(&text, port, &env);
    let c = pg.client().await;
    let v: String = c
        .query_one("select current_user::text", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(v, "app");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_transactions_finish_then_exits() {
    let cluster = cluster();
    cluster
        .psql("app", "create table t(x int); alter table t owner to app")
        .unwrap();
    let port = pgwake_testkit::free_port();
    let mut pg = Pgwake::start_config(
        &config_for(&cluster, port, "size = 5\nmin_idle = 2"),
        port,
        &[],
    );
    let mut busy = pg.client().await;
    let idle = pg.client().await;
    idle.query_one("select 1", &[]).await.unwrap();
    let tx = busy.transaction().await.unwrap();
    tx.execute("insert into t values (1)", &[]).await.unwrap();

    pg.signal("TERM");
    // The idle client is told at once; new clients are refused.
    wait_until_async(
        "new clients to be refused after SIGTERM",
        Duration::from_secs(2),
        || ready(std::net::TcpStream::connect(("127.0.0.1", port)).is_err()),
    )
    .await;
    let e = idle.query_one("select 1", &[]).await.unwrap_err();
    assert!(
        e.is_closed() || e.code().is_some_and(|c| c.code() == "57P01"),
        "{e:?}"
    );

    // The transaction in flight finishes and commits.
    tx.execute("insert into t values (2)", &[]).await.unwrap();
    tx.commit().await.unwrap();
    let status = pg
        .wait_exit(Duration::from_secs(10))
        .expect("exits after the transaction");
    assert!(status.success(), "exit status {status:?}\n{}", pg.logs());
    assert_eq!(cluster.psql("app", "select count(*) from t").unwrap(), "2");
    // Server connections were closed (Terminate) on the way out.
    wait_until_async(
        "the server connections to be closed",
        Duration::from_secs(5),
        || ready(common::app_backends(&cluster) == 0),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_sigterm_stops_at_once() {
    let cluster = cluster();
    let port = pgwake_testkit::free_port();
    let mut pg = Pgwake::start_config(
        &config_for(&cluster, port, "size = 5\nmin_idle = 1"),
        port,
        &[],
    );
    // A transaction left open would hold the graceful stop for the whole
    // grace period (10 s in the test config).
    let mut busy = pg.client().await;
    let tx = busy.transaction().await.unwrap();
    tx.query_one("select 1", &[]).await.unwrap();

    pg.signal("TERM");
    pg.wait_for_log_async("waiting for transactions in flight", Duration::from_secs(5))
        .await;
    pg.wait_for_log_async("stopping gracefully", Duration::from_secs(5))
        .await;
    // The graceful stop is under way, and the transaction is still served;
    // pgwake stays (the half-second window is the scenario).
    tx.query_one("select 2", &[]).await.unwrap();
    assert!(
        pg.wait_exit(Duration::from_millis(500)).is_none(),
        "the first SIGTERM waits for the transaction"
    );
    pg.signal("TERM");
    // The transaction would hold the graceful stop for the whole grace
    // period (10 s): an exit well within it, the transaction still open, is
    // the stop at once. (The bound only guards against a hang.)
    let status = pg.wait_exit(Duration::from_secs(5));
    assert!(
        status.is_some(),
        "still running 5 s after the second SIGTERM\n{}",
        pg.logs()
    );
    // The last lines may still be on their way from the pipe.
    pg.wait_for_log_async("stopping at once", Duration::from_secs(5))
        .await;
    drop(tx);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_delay_keeps_serving_after_sigterm() {
    let cluster = cluster();
    let port = pgwake_testkit::free_port();
    let toml = config_for(&cluster, port, "size = 5\nmin_idle = 1")
        .replace("[listen]\n", "[listen]\nshutdown_delay = \"5s\"\n");
    let mut pg = Pgwake::start_config(&toml, port, &[]);
    let idle = pg.client().await;
    idle.query_one("select 1", &[]).await.unwrap();

    pg.signal("TERM");
    pg.wait_for_log_async("still accepting clients", Duration::from_secs(5))
        .await;
    // An app signalled at the same moment still drains its requests: a
    // client that connects two seconds later is served, and so is one
    // connected before. (The two seconds are the scenario.)
    tokio::time::sleep(Duration::from_secs(2)).await;
    let late = pg.client().await;
    let v: i32 = late.query_one("select 2", &[]).await.unwrap().get(0);
    assert_eq!(v, 2);
    let v: i32 = idle.query_one("select 3", &[]).await.unwrap().get(0);
    assert_eq!(v, 3);
    // Then the graceful stop runs as usual.
    let status = pg
        .wait_exit(Duration::from_secs(20))
        .expect("stops after the delay");
    assert!(status.success(), "{status:?}\n{}", pg.logs());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_read_through_a_pipe_have_no_escape_codes() {
    let cluster = cluster();
    let pg = Pgwake::start(&cluster, "size = 2\nmin_idle = 1");
    let c = pg.client().await;
    c.query_one("select 1", &[]).await.unwrap();
    // What a container runtime or the journal collects: pgwake's stderr is
    // a pipe here.
    let logs = pg.logs();
    assert!(logs.contains("INFO"), "no log lines read: {logs}");
    assert!(
        !logs.contains('\u{1b}'),
        "escape codes in piped logs: {:?}",
        logs.lines().find(|l| l.contains('\u{1b}'))
    );
}

#[test]
fn demo_runs_its_workload_and_cleans_up() {
    let (code, out, err) = pgwake(
        &["demo", "--exit", "--clients", "20", "--transactions", "20"],
        &[],
    );
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(
        out.contains("DATABASE_URL=postgres://app@127.0.0.1:"),
        "{out}"
    );
    assert!(
        out.contains("400 transactions") && out.contains(", 0 failed;"),
        "{out}"
    );
    assert!(out.contains("pgwake started the stopped server"), "{out}");
    assert!(err.contains("database server is awake after"), "{err}");
    assert!(out.contains("removing its files"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_connect_over_the_unix_socket() {
    let cluster = cluster();
    let dir = tempfile::tempdir().unwrap();
    let port = pgwake_testkit::free_port();
    let toml = config_for(&cluster, port, "size = 2").replace(
        "[listen]\n",
        &format!("[listen]\nunix_socket_dir = \"{}\"\n", dir.path().display()),
    );
    let pg = Pgwake::start_config(&toml, port, &[]);
    assert!(dir.path().join(format!(".s.PGSQL.{port}")).exists());
    let out = Command::new(cluster.bin().path("psql"))
        .args(["-X", "-A", "-t", "-U", "app", "-d", "app", "-h"])
        .arg(dir.path())
        .arg("-p")
        .arg(port.to_string())
        .args(["-c", "select 'over unix'"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        pg.logs()
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "over unix");
}

#[test]
fn check_reads_the_client_files_as_run_would() {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, text: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p.display().to_string()
    };
    let users = write("userlist.txt", "\"alice\" \"s3cret-pw\"\nbob hunter2\n");
    let cert = write("cert.pem", "not a certificate");
    let key = write("key.pem", &common::pki().key_pem);
    let config = write(
        "pgwake.toml",
        &format!(
            "[listen]\nclient_tls_mode = \"require\"\nclient_tls_cert = \"{cert}\"\nclient_tls_key = \"{key}\"\n\
             [server]\nhost = \"db.example\"\n[client_auth]\nfile = \"{users}\"\n"
        ),
    );
    let (code, _, err) = pgwake(&["check", "--config", &config], &[]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains(&format!("listen.client_tls_cert {cert}")),
        "{err}"
    );
    assert!(
        err.contains(&format!("client_auth.file {users}: line 2")),
        "{err}"
    );
    assert!(!err.contains("hunter2") && !err.contains("s3cret"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_unix_socket_takes_its_mode_and_group_from_the_config() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let cluster = cluster();
    let dir = tempfile::tempdir().unwrap();
    let port = pgwake_testkit::free_port();
    // The group the test's cluster runs as exists on every machine that runs it.
    let gid = std::fs::metadata(cluster.bin().path("psql")).unwrap().gid();
    let toml = config_for(&cluster, port, "size = 2").replace(
        "[listen]\n",
        &format!(
            "[listen]\nunix_socket_dir = \"{}\"\nunix_socket_mode = \"0660\"\nunix_socket_group = \"{gid}\"\n",
            dir.path().display()
        ),
    );
    let _pg = Pgwake::start_config(&toml, port, &[]);
    let meta = std::fs::metadata(dir.path().join(format!(".s.PGSQL.{port}"))).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o660);
    assert_eq!(meta.gid(), gid);

    // A mode that is not one, or a group that does not exist, is named.
    let bad = config_for(&cluster, port, "size = 2").replace(
        "[listen]\n",
        "[listen]\nunix_socket_dir = \"/tmp\"\nunix_socket_mode = \"rw\"\n",
    );
    let file = dir.path().join("bad.toml");
    std::fs::write(&file, bad).unwrap();
    let (status, _, err) = pgwake(&["check", "--config", file.to_str().unwrap()], &[]);
    assert_eq!(status, 2, "{err}");
    assert!(err.contains("listen.unix_socket_mode = \"rw\""), "{err}");
    let no_group = config_for(&cluster, pgwake_testkit::free_port(), "size = 2").replace(
        "[listen]\n",
        &format!(
            "[listen]\nunix_socket_dir = \"{}\"\nunix_socket_group = \"no-such-group-here\"\n",
            dir.path().display()
        ),
    );
    std::fs::write(&file, no_group).unwrap();
    let (status, _, err) = pgwake(&["run", "--config", file.to_str().unwrap()], &[]);
    assert_ne!(status, 0, "{err}");
    assert!(
        err.contains("listen.unix_socket_group = \"no-such-group-here\": no such group"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_connect_on_every_listen_address() {
    let cluster = cluster();
    let port = pgwake_testkit::free_port();
    let other = pgwake_testkit::free_port();
    let toml = config_for(&cluster, port, "size = 2").replace(
        "[listen]\n",
        &format!("[listen]\nextra_addrs = [\"127.0.0.2:{other}\", \"127.0.0.3:{port}\"]\n"),
    );
    let pg = Pgwake::start_config(&toml, port, &[]);
    for (host, p) in [
        ("127.0.0.1", port),
        ("127.0.0.2", other),
        ("127.0.0.3", port),
    ] {
        let (ok, out) = common::psql(
            &cluster,
            &format!("host={host} port={p} user=app dbname=app"),
            "select 'served'",
            &[],
        );
        assert!(ok, "{host}:{p}: {out}\n{}", pg.logs());
        assert_eq!(out.trim(), "served");
    }
    // An address that is not one is named with its key.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bad.toml");
    let bad = config_for(&cluster, port, "size = 2")
        .replace("[listen]\n", "[listen]\nextra_addrs = [\"somewhere\"]\n");
    std::fs::write(&file, bad).unwrap();
    let (status, _, err) = pgwake(&["check", "--config", file.to_str().unwrap()], &[]);
    assert_eq!(status, 2, "{err}");
    assert!(err.contains("listen.extra_addrs: \"somewhere\""), "{err}");
}
