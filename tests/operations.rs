//! Operating pgwake: Prometheus metrics, health and readiness, the admin
//! console (with PgBouncer's tools), and reloading the configuration.

mod common;

use std::future::ready;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{cluster, config_for, http_get, metric, wait_until_async, Pgwake};

const SECOND: Duration = Duration::from_secs(1);

fn scrape(p: &Pgwake) -> String {
    let (status, body) = http_get(p.admin_port, "/metrics", 10 * SECOND);
    assert_eq!(status, 200, "/metrics: {body}");
    body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_the_workload_and_pass_promtool() {
    let cluster = cluster();
    let p = Pgwake::start(&cluster, "size = 4\nmin_idle = 1");
    let client = p.client().await;
    client.simple_query("select 1").await.unwrap();
    // Prepared once: each execution is then one Bind/Execute/Sync round.
    let stmt = client.prepare("select $1::int").await.unwrap();
    let series = |name: &str| format!("{name}{{database=\"app\",user=\"app\"}}");
    let before = scrape(&p);
    const N: usize = 150;
    for i in 0..N {
        if i % 3 == 0 {
            // Extended protocol.
            client.query(&stmt, &[&1i32]).await.unwrap();
        } else if i % 3 == 1 {
            client.simple_query("select 1").await.unwrap();
        } else {
            // Three queries, one transaction.
            client
                .batch_execute("begin; select 1; commit")
                .await
                .unwrap();
        }
    }
    let after = scrape(&p);
    let delta = |name: &str| metric(&after, &series(name)) - metric(&before, &series(name));
    assert_eq!(delta("pgwake_transactions_total"), N as f64, "{after}");
    // A batch of three statements in one Query message is one query.
    assert_eq!(delta("pgwake_queries_total"), N as f64, "{after}");
    assert!(delta("pgwake_received_bytes_total") > 0.0);
    assert!(delta("pgwake_sent_bytes_total") > 0.0);
    assert!(
        metric(
            &after,
            "pgwake_transaction_duration_seconds_count{database=\"app\",user=\"app\"}"
        ) >= N as f64,
        "{after}"
    );
    assert!(metric(&after, "pgwake_server_connects_total") >= 1.0);
    // Between transactions the client holds no server connection, named
    // statement or not.
    assert_eq!(
        metric(
            &after,
            "pgwake_client_connections{database=\"app\",user=\"app\",state=\"idle\"}"
        ),
        1.0,
        "{after}"
    );
    assert!(
        metric(
            &after,
            "pgwake_prepared_statement_hits_total{database=\"app\",user=\"app\"}"
        ) + metric(
            &after,
            "pgwake_prepared_statement_misses_total{database=\"app\",user=\"app\"}"
        ) >= 1.0,
        "{after}"
    );
    assert!(after.contains("pgwake_server_connect_phase_seconds_bucket{phase=\"auth\""));

    // promtool, the Prometheus project's own checker, accepts the exposition.
    let mut check = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run promtool (Debian package prometheus)");
    use std::io::Write;
    check
        .stdin
        .take()
        .unwrap()
        .write_all(after.as_bytes())
        .unwrap();
    let out = check.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_console_answers_psql_and_the_pgbouncer_exporter() {
    let cluster = cluster();
    let p = Pgwake::start(&cluster, "size = 3\nmin_idle = 2");
    let client = p.client().await;
    for _ in 0..10 {
        client.simple_query("select 1").await.unwrap();
    }
    let pools = p
        .psql(&cluster, "pgwake", "SHOW POOLS")
        .expect("SHOW POOLS");
    // database|user|cl_active|cl_waiting|...|pool_mode|load_balance_hosts
    let row: Vec<&str> = pools
        .lines()
        .find(|l| l.starts_with("app|app|"))
        .unwrap_or_else(|| panic!("no app pool in:\n{pools}"))
        .split('|')
        .collect();
    assert_eq!(row[2], "1", "one client logged in: {pools}");
    assert_eq!(row[15], "transaction", "{pools}");
    let stats = p.psql(&cluster, "pgwake", "SHOW STATS").unwrap();
    let xacts: u64 = stats
        .lines()
        .find(|l| l.starts_with("app|"))
        .and_then(|l| l.split('|').nth(2))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no app row in SHOW STATS:\n{stats}"));
    assert!(xacts >= 10, "{stats}");
    for cmd in [
        "SHOW CLIENTS",
        "SHOW SERVERS",
        "SHOW DATABASES",
        "SHOW LISTS",
        "SHOW CONFIG",
        "SHOW VERSION",
        "SHOW STATE",
        "SHOW USERS",
        "SHOW MEM",
    ] {
        let out = p
            .psql(&cluster, "pgwake", cmd)
            .unwrap_or_else(|e| panic!("{cmd}: {e}"));
        assert!(!out.trim().is_empty(), "{cmd} printed nothing");
    }
    assert!(p
        .psql(&cluster, "pgwake", "SHOW CLIENTS")
        .unwrap()
        .contains("|app|app|"));
    assert!(p
        .psql(&cluster, "pgwake", "SHOW CONFIG")
        .unwrap()
        .contains("pool.size|3|20|yes"));
    let bad = p.psql(&cluster, "pgwake", "SHOW NOTHING").unwrap_err();
    assert!(bad.contains("unknown SHOW command"), "{bad}");
    // The pgbouncer alias works too.
    let version = p.psql(&cluster, "pgbouncer", "SHOW VERSION").unwrap();
    assert!(version.starts_with("pgwake "), "{version}");

    // prometheus-pgbouncer-exporter (Debian's) reads SHOW STATS, POOLS,
    // DATABASES and LISTS and exports them.
    let port = pgwake_testkit::free_port();
    let mut exporter = Command::new("prometheus-pgbouncer-exporter")
        .args(["--host", "127.0.0.1", "--port", &port.to_string()])
        .args([
            "--pgbouncer-host",
            "127.0.0.1",
            "--pgbouncer-port",
            &p.port.to_string(),
        ])
        .args(["--pgbouncer-user", "app"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run prometheus-pgbouncer-exporter (Debian package)");
    let mut body = None;
    for _ in 0..100 {
        if let Some(status) = exporter.try_wait().unwrap() {
            let out = exporter.wait_with_output().unwrap();
            panic!(
                "the exporter exited ({status}): {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            body = Some(http_get(port, "/metrics", 10 * SECOND));
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = exporter.kill();
    let out = exporter.wait_with_output().unwrap();
    let (status, body) = body.expect("the exporter never listened");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(status, 200, "{body}\n{stderr}");
    assert!(!stderr.contains("Traceback"), "{stderr}");
    assert!(
        metric(&body, "pgbouncer_requests_total{database=\"app\"}") >= 10.0,
        "{body}"
    );
    assert_eq!(
        metric(&body, "pgbouncer_pool_size{database=\"app\"}"),
        3.0,
        "{body}"
    );
    assert!(
        metric(
            &body,
            "pgbouncer_active_clients{database=\"app\",user=\"app\"}"
        ) >= 1.0,
        "{body}"
    );
    assert!(metric(&body, "pgbouncer_pools") >= 1.0, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_changes_pool_size_and_log_level_and_rejects_a_bad_file() {
    let cluster = cluster();
    let port = pgwake_testkit::free_port();
    // RELOAD on the console needs an admin user.
    let base =
        config_for(&cluster, port, "size = 2\nmin_idle = 1") + "[admin]\nadmin_users = [\"app\"]\n";
    let mut p = Pgwake::start_config(&base, port, &[]);
    let url = p.url("app");
    // Each transaction waits for a lock the test holds, so the transactions
    // last until the test lets go of it.
    let holder = pgwake_testkit::connect("127.0.0.1", cluster.port(), "postgres", None, "app")
        .await
        .unwrap();
    let busy = |n: usize| {
        let url = url.clone();
        async move {
            let mut tasks = Vec::new();
            for _ in 0..n {
                let url = url.clone();
                tasks.push(tokio::spawn(async move {
                    let c = pgwake_testkit::connect_url(&url).await.unwrap();
                    c.batch_execute("begin; select pg_advisory_xact_lock_shared(7); commit")
                        .await
                        .unwrap();
                }));
            }
            tasks
        }
    };
    // Four clients at once in transactions: the pool gives out two
    // connections, and the other two clients wait for one.
    holder
        .batch_execute("select pg_advisory_lock(7)")
        .await
        .unwrap();
    let tasks = busy(4).await;
    wait_until_async(
        "two transactions on the server and two clients waiting",
        20 * SECOND,
        || ready(in_flight(&cluster, &p) == (2.0, 2.0)),
    )
    .await;
    assert_eq!(common::app_backends(&cluster), 2);
    holder
        .batch_execute("select pg_advisory_unlock(7)")
        .await
        .unwrap();
    for t in tasks {
        t.await.unwrap();
    }
    malformed_startup(p.port);
    assert!(!p.logs().contains("DEBUG"), "no debug lines at level info");

    // Larger pool, debug logs: SIGHUP applies both without a restart.
    p.rewrite_config(&(base.replace("size = 2", "size = 5") + "[log]\nlevel = \"debug\"\n"));
    p.signal("HUP");
    p.wait_for_log_async("configuration reloaded", 20 * SECOND)
        .await;
    holder
        .batch_execute("select pg_advisory_lock(7)")
        .await
        .unwrap();
    let tasks = busy(4).await;
    wait_until_async(
        "all four transactions on the server (the pool grown past 2)",
        20 * SECOND,
        || ready(in_flight(&cluster, &p) == (4.0, 0.0)),
    )
    .await;
    assert!(common::app_backends(&cluster) >= 4, "the pool grew past 2");
    holder
        .batch_execute("select pg_advisory_unlock(7)")
        .await
        .unwrap();
    for t in tasks {
        t.await.unwrap();
    }
    malformed_startup(p.port);
    p.wait_for_log_async("refused malformed startup", 20 * SECOND)
        .await;
    assert!(p.logs().contains("DEBUG"), "debug lines after the reload");
    assert!(p
        .psql(&cluster, "pgwake", "SHOW CONFIG")
        .unwrap()
        .contains("pool.size|5|"));

    // A bad file: rejected, with the key named; the old settings stay.
    p.rewrite_config(&base.replace("size = 2", "size = 3\nsise = 4"));
    let err = p.psql(&cluster, "pgwake", "RELOAD").unwrap_err();
    assert!(err.contains("sise"), "{err}");
    // The log line may reach the log file just after the console's answer.
    p.wait_for_log_async("configuration reload rejected", 20 * SECOND)
        .await;
    assert!(p
        .psql(&cluster, "pgwake", "SHOW CONFIG")
        .unwrap()
        .contains("pool.size|5|"));
    p.client().await.simple_query("select 1").await.unwrap();
    let (_, m) = http_get(p.admin_port, "/metrics", 10 * SECOND);
    assert_eq!(metric(&m, "pgwake_reloads_total{result=\"failed\"}"), 1.0);
    assert_eq!(metric(&m, "pgwake_reloads_total{result=\"ok\"}"), 1.0);

    // Shrinking closes the connections beyond the new size.
    p.rewrite_config(&base.replace("size = 2", "size = 1"));
    let notes = p.psql(&cluster, "pgwake", "RELOAD").unwrap();
    assert!(notes.is_empty() || !notes.contains("ERROR"), "{notes}");
    wait_until_async("the pool to shrink to 1", 20 * SECOND, || {
        ready(common::app_backends(&cluster) <= 1)
    })
    .await;
    p.client().await.simple_query("select 1").await.unwrap();
    p.signal("TERM");
    assert!(p.wait_exit(20 * SECOND).is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_and_stats_lines_appear_only_when_enabled() {
    let cluster = cluster();
    let port = pgwake_testkit::free_port();
    let toml =
        config_for(&cluster, port, "size = 2\nmin_idle = 1") + "[admin]\nadmin_users = [\"app\"]\n";
    let p = Pgwake::start_config(&toml, port, &[]);
    let url = |name: &str| format!("{}?application_name={name}", p.url("app"));
    let clients = || p.psql(&cluster, "pgwake", "SHOW CLIENTS").unwrap();
    // Off by default: a client comes and goes.
    let quiet = pgwake_testkit::connect_url(&url("quiet-one"))
        .await
        .unwrap();
    quiet.simple_query("select 1").await.unwrap();
    assert!(clients().contains("|quiet-one|"));
    drop(quiet);
    wait_until_async("the quiet client to leave", 20 * SECOND, || {
        ready(!clients().contains("|quiet-one|"))
    })
    .await;

    // On, live (one by PgBouncer's name): a login and a logout line each,
    // and a stats line every second.
    for sql in [
        "SET log_connections = 1",
        "SET log.disconnections = on",
        "SET log.stats_period = '1s'",
    ] {
        p.psql(&cluster, "pgwake", sql)
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
    }
    let loud = pgwake_testkit::connect_url(&url("loud-one")).await.unwrap();
    for _ in 0..5 {
        loud.simple_query("select 1").await.unwrap();
    }
    drop(loud);
    let line = |words: &[&str]| {
        p.logs()
            .lines()
            .find(|l| words.iter().all(|w| l.contains(w)))
            .map(str::to_owned)
    };
    wait_until_async("the logout line", 20 * SECOND, || {
        ready(line(&["client logout", "application_name=loud-one"]).is_some())
    })
    .await;
    let login = line(&["client login", "application_name=loud-one"]).expect("a login line");
    let logout = line(&["client logout", "application_name=loud-one"]).unwrap();
    for l in [&login, &logout] {
        assert!(
            l.contains("client=127.0.0.1:") && l.contains("database=app") && l.contains("user=app"),
            "{l}"
        );
    }
    assert!(
        logout.contains("reason=") && logout.contains("age="),
        "{logout}"
    );
    wait_until_async("a stats line", 20 * SECOND, || {
        ready(line(&["stats: ", "xacts/s", "database=app"]).is_some())
    })
    .await;

    // Now that such lines are known to reach the log: none came while off.
    let logs = p.logs();
    assert!(!logs.contains("quiet-one"), "{logs}");
    let set_at = logs
        .find("log.stats_period")
        .expect("the SET of log.stats_period logged");
    let first_stats = logs.find("stats: ").unwrap();
    assert!(
        first_stats > set_at,
        "a stats line before it was on:\n{logs}"
    );
}

/// A client that sends garbage instead of a startup packet: pgwake logs
/// that at debug level.
fn malformed_startup(port: u16) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(10 * SECOND)).unwrap();
    s.write_all(&[0, 0, 0, 8, 0, 0, 0, 0]).unwrap();
    let mut reply = Vec::new();
    let _ = s.read_to_end(&mut reply);
    assert_eq!(reply.first(), Some(&b'E'), "an ErrorResponse");
}

/// Transactions of `app` on the server waiting for the test's lock, and
/// clients pgwake has waiting for a server connection.
fn in_flight(cluster: &pgwake_testkit::Cluster, p: &Pgwake) -> (f64, f64) {
    let locked = cluster
        .psql(
            "postgres",
            "select count(*) from pg_stat_activity where usename = 'app' \
             and wait_event_type = 'Lock' and wait_event = 'advisory'",
        )
        .unwrap()
        .parse()
        .unwrap();
    let waiting =
        p.metric("pgwake_client_connections{database=\"app\",user=\"app\",state=\"waiting\"}");
    (locked, waiting)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthz_answers_while_the_server_is_down_and_readyz_waits_for_warm_pools() {
    let cluster = cluster();
    cluster.stop().unwrap();
    let p = Pgwake::start(&cluster, "size = 4\nmin_idle = 3");
    let (status, body) = http_get(p.admin_port, "/healthz", 10 * SECOND);
    assert_eq!((status, body.as_str()), (200, "ok\n"));
    let (status, body) = http_get(p.admin_port, "/readyz", 10 * SECOND);
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("0 of 3"), "{body}");
    let (status, _) = http_get(p.admin_port, "/readyz?wait=soon", 10 * SECOND);
    assert_eq!(status, 400);

    // A start-up probe waits; the server comes up; the probe answers ready.
    let admin = p.admin_port;
    let waiting = std::thread::spawn(move || http_get(admin, "/readyz?wait=60s", 70 * SECOND));
    // Half a second with the server down (the scenario): the probe waits.
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        !waiting.is_finished(),
        "readyz?wait= answered before the pool was warm"
    );
    cluster.start_again().unwrap();
    let (status, body) = waiting.join().unwrap();
    assert_eq!(status, 200, "{body}\n{}", p.logs());
    assert!(body.contains("pools warm"), "{body}");
    assert!(common::app_backends(&cluster) >= 3);
    // Liveness never needed the database.
    assert_eq!(http_get(p.admin_port, "/healthz", 10 * SECOND).0, 200);
}
