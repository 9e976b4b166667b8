//! Transaction pooling end to end: real clients through `pgwake run` to a
//! real PostgreSQL, pool size 5.

mod common;

use std::future::ready;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{app_backends, cluster, code, running_queries, wait_until_async, Pgwake};
use futures_util::{pin_mut, TryStreamExt};

const POOL5: &str = "size = 5\nmin_idle = 1";
/// Bound on any one wait for pgwake or the server.
const LIMIT: Duration = Duration::from_secs(10);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simple_and_extended_queries_from_tokio_postgres_and_psql() {
    let cluster = cluster();
    let pg = Pgwake::start(&cluster, POOL5);
    let c = pg.client().await;
    // Extended protocol, unnamed statement with parameters and typed results.
    let row = c
        .query_one("select $1::int + 1, $2::text || '!'", &[&41i32, &"hi"])
        .await
        .unwrap();
    assert_eq!(
        (row.get::<_, i32>(0), row.get::<_, String>(1)),
        (42, "hi!".to_owned())
    );
    // Simple protocol, several statements in one Query.
    let msgs = c
        .simple_query(
            "create temp table if not exists t(x int); select 1; select 'a' union all select 'b'",
        )
        .await;
    // A temp table in transaction mode is fine within one Query (one transaction).
    let msgs = msgs.unwrap();
    let rows: Vec<_> = msgs
        .iter()
        .filter_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => Some(r.get(0).unwrap().to_owned()),
            _ => None,
        })
        .collect();
    assert_eq!(rows, vec!["1", "a", "b"]);
    // An error mid-session leaves the session usable.
    let err = c.simple_query("select 1/0").await.unwrap_err();
    assert_eq!(code(&err), "22012");
    assert_eq!(
        c.query_one("select 7", &[]).await.unwrap().get::<_, i32>(0),
        7
    );

    // psql: simple queries, a multi-statement string and a NOTICE passed through.
    let out = std::process::Command::new(cluster.bin().path("psql"))
        .args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1", "-p"])
        .arg(pg.port.to_string())
        .args(["-U", "app", "-d", "app", "-c"])
        .arg("select 40 + 2; do $$ begin raise notice 'hello from the server'; end $$; select current_user")
        .env_remove("PGPASSWORD")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "psql failed: {stderr}\n{}", pg.logs());
    assert_eq!(stdout.lines().collect::<Vec<_>>(), vec!["42", "app"]);
    assert!(
        stderr.contains("hello from the server"),
        "notice lost: {stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_clients_share_five_connections_and_every_commit_counts() {
    let cluster = cluster();
    cluster
        .psql("app", "create table ledger(client int, n int, primary key (client, n)); alter table ledger owner to app")
        .unwrap();
    let pg = Pgwake::start(&cluster, POOL5);
    let running = Arc::new(AtomicBool::new(true));
    let peak = Arc::new(AtomicI64::new(0));
    let sampler = {
        let (running, peak, port) = (running.clone(), peak.clone(), cluster.port());
        std::thread::spawn(move || {
            // Reads pg_stat_activity with psql while the load runs (bounded).
            let mut samples = 0;
            while running.load(Ordering::Relaxed) && samples < 2000 {
                let out = std::process::Command::new("psql")
                    .args([
                        "-X",
                        "-A",
                        "-t",
                        "-h",
                        "127.0.0.1",
                        "-U",
                        "postgres",
                        "-d",
                        "postgres",
                        "-p",
                    ])
                    .arg(port.to_string())
                    .arg("-c")
                    .arg("select count(*) from pg_stat_activity where usename = 'app'")
                    .output();
                if let Ok(o) = out {
                    if let Ok(n) = String::from_utf8_lossy(&o.stdout).trim().parse::<i64>() {
                        peak.fetch_max(n, Ordering::Relaxed);
                        samples += 1;
                    }
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            samples
        })
    };
    let mut tasks = Vec::new();
    for client in 0..50i32 {
        let url = pg.url("app");
        tasks.push(tokio::spawn(async move {
            let mut c = pgwake_testkit::connect_url(&url).await.unwrap();
            let mut committed = 0;
            for n in 0..200i32 {
                let tx = c.transaction().await.unwrap();
                tx.execute("insert into ledger values ($1, $2)", &[&client, &n])
                    .await
                    .unwrap();
                if n % 10 == 9 {
                    tx.rollback().await.unwrap();
                } else {
                    tx.commit().await.unwrap();
                    committed += 1;
                }
            }
            committed
        }));
    }
    let mut committed = 0i64;
    for t in tasks {
        committed += t.await.unwrap();
    }
    running.store(false, Ordering::Relaxed);
    let samples = sampler.join().unwrap();
    assert_eq!(committed, 50 * 180);
    let rows: i64 = cluster
        .psql("app", "select count(*) from ledger")
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(rows, committed, "exactly the committed rows");
    let rolled_back: i64 = cluster
        .psql("app", "select count(*) from ledger where n % 10 = 9")
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(rolled_back, 0);
    assert!(samples > 0);
    let peak = peak.load(Ordering::Relaxed);
    assert!(peak <= 5, "saw {peak} server backends for a pool of 5");
    assert!(peak >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_in_and_out_are_byte_identical() {
    let cluster = cluster();
    let pg = Pgwake::start(&cluster, POOL5);
    let c = pg.client().await;
    c.batch_execute("create table copied(id int, name text, note text)")
        .await
        .unwrap();
    let mut data = String::new();
    for i in 0..100_000 {
        data.push_str(&format!(
            "{i}\tname {i}\tnote with \\t tab and ünïcode {}\n",
            i * 7
        ));
    }
    let sink = c.copy_in("copy copied from stdin").await.unwrap();
    pin_mut!(sink);
    use futures_util::SinkExt;
    for chunk in data.as_bytes().chunks(64 * 1024) {
        sink.send(bytes::Bytes::copy_from_slice(chunk))
            .await
            .unwrap();
    }
    assert_eq!(sink.finish().await.unwrap(), 100_000);
    let stream = c
        .copy_out("copy (select * from copied order by id) to stdout")
        .await
        .unwrap();
    pin_mut!(stream);
    let mut out = Vec::new();
    while let Some(chunk) = stream.try_next().await.unwrap() {
        out.extend_from_slice(&chunk);
    }
    assert_eq!(out.len(), data.len());
    assert!(out == data.as_bytes(), "COPY round trip differs");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_reader_of_a_large_result_holds_up_nobody_else() {
    let cluster = cluster();
    let pg = Pgwake::start(&cluster, POOL5);
    let slow = pg.client().await;
    let fast = pg.client().await;
    let reading = Arc::new(AtomicBool::new(true));
    let flag = reading.clone();
    let (first_row, got_first_row) = tokio::sync::oneshot::channel();
    let reader = tokio::spawn(async move {
        let rows = slow
            .query_raw(
                "select g, repeat('x', 100) from generate_series(1, 200000) g",
                std::iter::empty::<i32>(),
            )
            .await
            .unwrap();
        pin_mut!(rows);
        let mut first_row = Some(first_row);
        let mut n = 0i64;
        let mut sum = 0i64;
        while let Some(row) = rows.try_next().await.unwrap() {
            if let Some(tx) = first_row.take() {
                let _ = tx.send(());
            }
            n += 1;
            sum += i64::from(row.get::<_, i32>(0));
            if n % 2000 == 0 {
                // The reader's slowness is the scenario.
                tokio::time::sleep(Duration::from_millis(30)).await;
            }
        }
        flag.store(false, Ordering::Relaxed);
        (n, sum)
    });
    tokio::time::timeout(LIMIT, got_first_row)
        .await
        .expect("the slow reader gets its first row")
        .unwrap();
    let mut completed_while_reading = 0;
    for i in 0..100i64 {
        let got: i64 = fast
            .query_one("select $1::bigint * 2", &[&i])
            .await
            .unwrap()
            .get(0);
        assert_eq!(got, i * 2);
        if reading.load(Ordering::Relaxed) {
            completed_while_reading += 1;
        }
    }
    assert!(
        completed_while_reading == 100,
        "only {completed_while_reading} queries completed while the slow reader was reading"
    );
    let rss_mid = pg.rss_kib();
    let (n, sum) = reader.await.unwrap();
    assert_eq!(n, 200_000);
    assert_eq!(sum, 200_000 * 200_001 / 2);
    assert!(
        rss_mid < 100 * 1024,
        "pgwake RSS {rss_mid} KiB while relaying a slow result"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_reaches_the_right_backend_only() {
    let cluster = cluster();
    let pg = Pgwake::start(&cluster, POOL5);
    let a = pg.client().await;
    let b = pg.client().await;
    let token = a.cancel_token();
    let a_query = tokio::spawn(async move { a.simple_query("select pg_sleep(30)").await });
    let b_query = tokio::spawn(async move {
        b.query_one("select pg_sleep(1.5)::text, 'b done'", &[])
            .await
    });
    wait_until_async("both queries to run on the server", LIMIT, || {
        ready(running_queries(&cluster, "select pg_sleep%") == 2)
    })
    .await;
    token.cancel_query(tokio_postgres::NoTls).await.unwrap();
    let a_err = tokio::time::timeout(LIMIT, a_query)
        .await
        .expect("cancelled query returns")
        .unwrap()
        .unwrap_err();
    assert_eq!(code(&a_err), "57014", "{a_err}");
    assert_eq!(pg.metric("pgwake_cancels_total"), 1.0, "a's cancel");
    let b_row = b_query
        .await
        .unwrap()
        .expect("the other client's query is not cancelled");
    assert_eq!(b_row.get::<_, String>(1), "b done");

    // A client holding no server connection: its cancel reaches nobody.
    let idle = pg.client().await;
    let busy = pg.client().await;
    let idle_token = idle.cancel_token();
    let busy_query =
        tokio::spawn(async move { busy.query_one("select pg_sleep(1)::text", &[]).await });
    wait_until_async("the busy client's query to run", LIMIT, || {
        ready(running_queries(&cluster, "select pg_sleep(1)%") == 1)
    })
    .await;
    idle_token
        .cancel_query(tokio_postgres::NoTls)
        .await
        .unwrap();
    busy_query
        .await
        .unwrap()
        .expect("an idle client's cancel must not hit another client");
    assert_eq!(
        pg.metric("pgwake_cancels_total"),
        1.0,
        "the idle client's cancel went to no server"
    );
    assert_eq!(
        idle.query_one("select 1", &[])
            .await
            .unwrap()
            .get::<_, i32>(0),
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_killed_mid_transaction_leave_no_lock_behind() {
    let cluster = cluster();
    cluster
        .psql("app", "create table locked(id int primary key); insert into locked values (1); alter table locked owner to app")
        .unwrap();
    let pg = Pgwake::start(&cluster, POOL5);
    // Looks at pg_stat_activity quickly, over one connection.
    let observer =
        pgwake_testkit::connect("127.0.0.1", cluster.port(), "postgres", None, "postgres")
            .await
            .unwrap();
    let observer = &observer;
    for i in 0..200 {
        let (client, conn) = tokio_postgres::connect(
            &format!("host=127.0.0.1 port={} user=app dbname=app", pg.port),
            tokio_postgres::NoTls,
        )
        .await
        .unwrap();
        let conn = tokio::spawn(conn);
        // The lock must be freed by pgwake's cleanup of the previous client
        // (a cancel, then ROLLBACK). Without it the lock would be held until
        // the killed query's 30 s sleep ends, or for ever by a client killed
        // idle in its transaction. The cleanup takes a few milliseconds; the
        // 10 s bound leaves room for a loaded machine, where the server
        // forks a process for each cancel request.
        client
            .batch_execute("begin; set local lock_timeout = '10s'; select * from locked where id = 1 for update")
            .await
            .unwrap_or_else(|e| panic!("iteration {i}: lock not released: {e}\n{}", pg.logs()));
        if i % 2 == 1 {
            // Killed while a query runs inside the transaction.
            let q = tokio::spawn(async move { client.simple_query("select pg_sleep(30)").await });
            // Killed once the query runs. (No earlier client's query still
            // does: its transaction ended before this one got the lock.)
            wait_until_async(
                "the query to run on the server",
                LIMIT,
                move || async move {
                    let n: i64 = observer
                        .query_one(
                            "select count(*) from pg_stat_activity where usename = 'app' \
                         and state = 'active' and query = 'select pg_sleep(30)'",
                            &[],
                        )
                        .await
                        .unwrap()
                        .get(0);
                    n == 1
                },
            )
            .await;
            q.abort();
        } else {
            drop(client);
        }
        // Kill the socket without a Terminate message.
        conn.abort();
        let _ = conn.await;
    }
    let c = pg.client().await;
    c.batch_execute("begin; set local lock_timeout = '10s'; select * from locked where id = 1 for update; commit")
        .await
        .unwrap();
    // Cleanup is asynchronous to the client's death: wait for it (bounded).
    wait_until_async("no session left idle in transaction", LIMIT, || {
        ready(
            cluster
                .psql("postgres", "select count(*) from pg_stat_activity where usename = 'app' and state like 'idle in transaction%'")
                .unwrap()
                == "0",
        )
    })
    .await;
    assert!(app_backends(&cluster) <= 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_recover_quickly_after_a_server_restart() {
    let cluster = cluster();
    let pg = Pgwake::start(&cluster, POOL5);
    let clients: Vec<_> = futures_util::future::join_all((0..10).map(|_| pg.client())).await;
    for c in &clients {
        c.query_one("select 1", &[]).await.unwrap();
    }
    // Load before, during and after the restart; errors while it is down are expected.
    let stop = Arc::new(AtomicBool::new(false));
    let served = Arc::new(AtomicUsize::new(0));
    let mut load = Vec::new();
    for c in clients {
        let (stop, served) = (stop.clone(), served.clone());
        load.push(tokio::spawn(async move {
            let mut counted = false;
            while !stop.load(Ordering::Relaxed) {
                if c.query_one("select 1", &[]).await.is_ok() && !counted {
                    counted = true;
                    served.fetch_add(1, Ordering::Relaxed);
                }
                // The load's pace (the scenario).
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            c
        }));
    }
    // The load runs: every client has been served under it.
    wait_until_async("every client to be served under the load", LIMIT, || {
        ready(served.load(Ordering::Relaxed) == 10)
    })
    .await;
    cluster.stop().unwrap();
    // The server stays down for half a second under the load (the scenario).
    tokio::time::sleep(Duration::from_millis(500)).await;
    cluster.start_again().unwrap();
    // The server accepts connections from here on: every client's next
    // statement succeeds, on the connection it has (the bound only guards
    // against a hang).
    stop.store(true, Ordering::Relaxed);
    for l in load {
        let c = l.await.unwrap();
        let v: i32 = tokio::time::timeout(LIMIT, c.query_one("select 1", &[]))
            .await
            .expect("an answer after the restart")
            .unwrap_or_else(|e| panic!("not recovered: {e:?}\n{}", pg.logs()))
            .get(0);
        assert_eq!(v, 1);
    }
    // New clients work too.
    let fresh = pg.client().await;
    assert_eq!(
        fresh
            .query_one("select 2", &[])
            .await
            .unwrap()
            .get::<_, i32>(0),
        2
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_settings_follow_the_client_across_connections() {
    let cluster = cluster();
    let pg = Pgwake::start(&cluster, "size = 1\nmin_idle = 1");
    let url = |app: &str, path: &str| {
        format!(
            "host=127.0.0.1 port={} user=app dbname=app application_name={app} options='-c search_path={path} -c statement_timeout=1234'",
            pg.port
        )
    };
    let (a, ca) = tokio_postgres::connect(&url("alpha", "pg_catalog"), tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(ca);
    let b = pg.client().await;
    for _ in 0..3 {
        // Both share the single server connection, each sees its own settings.
        // (A Row keeps its prepared statement, and so its server connection, alive: read and drop.)
        assert_eq!(
            settings(&a).await,
            ("alpha".into(), "pg_catalog".into(), "1234ms".into())
        );
        assert_eq!(
            settings(&b).await,
            ("".into(), "\"$user\", public".into(), "0".into())
        );
    }
    // A SET of a reported setting (application_name) follows the client too.
    a.simple_query("set application_name = 'alpha2'")
        .await
        .unwrap();
    b.query_one("select 1", &[]).await.unwrap();
    assert_eq!(settings(&a).await.0, "alpha2");
    assert_eq!(settings(&b).await.0, "");
}

async fn settings(c: &tokio_postgres::Client) -> (String, String, String) {
    let r = c
        .query_one("select current_setting('application_name'), current_setting('search_path'), current_setting('statement_timeout')", &[])
        .await
        .unwrap();
    (r.get(0), r.get(1), r.get(2))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_pooled_connections_are_replaced_transparently() {
    let cluster = cluster();
    let pg = Pgwake::start(&cluster, "size = 3\nmin_idle = 3");
    let c = pg.client().await;
    c.query_one("select 1", &[]).await.unwrap();
    // Kill every idle server connection behind pgwake's back.
    let killed = cluster
        .psql(
            "postgres",
            "select coalesce(string_agg(pid::text, ','), '') from (select pid, \
             pg_terminate_backend(pid) as killed from pg_stat_activity \
             where usename = 'app' and state = 'idle') t where killed",
        )
        .unwrap();
    assert!(!killed.is_empty(), "no idle server connection to kill");
    wait_until_async("the killed backends to be gone", LIMIT, || {
        ready(
            cluster
                .psql(
                    "postgres",
                    &format!("select count(*) from pg_stat_activity where pid in ({killed})"),
                )
                .unwrap()
                == "0",
        )
    })
    .await;
    for i in 0..10 {
        let v: i32 = c
            .query_one("select $1::int", &[&i])
            .await
            .unwrap_or_else(|e| panic!("query {i} after the kill failed: {e}\n{}", pg.logs()))
            .get(0);
        assert_eq!(v, i);
    }
}

/// The pids of `app`'s server connections, sorted.
fn app_pids(cluster: &pgwake_testkit::Cluster) -> Vec<i64> {
    let out = cluster
        .psql(
            "postgres",
            "select pid from pg_stat_activity where usename = 'app' \
             and backend_type = 'client backend' order by pid",
        )
        .unwrap();
    out.lines().filter_map(|l| l.trim().parse().ok()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_the_server_closed_are_opened_again_before_a_client_comes() {
    let cluster = cluster();
    let pg = Pgwake::start(&cluster, "size = 3\nmin_idle = 3");
    wait_until_async("the pool to hold min_idle = 3", LIMIT, || {
        ready(app_pids(&cluster).len() == 3)
    })
    .await;
    let connects = pg.metric("pgwake_server_connects_total");
    assert_eq!(connects, 3.0);
    // A server restart or failover, as the pool sees it: every idle server
    // connection is closed by the server while no client is there.
    let killed = app_pids(&cluster);
    let list = killed
        .iter()
        .map(i64::to_string)
        .collect::<Vec<_>>()
        .join(",");
    cluster
        .psql(
            "postgres",
            &format!(
                "select pg_terminate_backend(pid) from pg_stat_activity where pid in ({list})"
            ),
        )
        .unwrap();
    // pgwake notices by itself and opens min_idle again: three server
    // connections, none of them the killed ones, before any client comes.
    wait_until_async("three new server connections", LIMIT, || {
        let now = app_pids(&cluster);
        ready(now.len() == 3 && now.iter().all(|p| !killed.contains(p)))
    })
    .await;
    pg.wait_for_log_async("the server closed idle connections", LIMIT)
        .await;
    assert_eq!(pg.metric("pgwake_server_connections_lost_total"), 3.0);
    assert_eq!(pg.metric("pgwake_server_connects_total"), connects + 3.0);
    // The next client is served on them: no login on its request's path,
    // no error.
    let c = pg.client().await;
    let v: i32 = c.query_one("select 7", &[]).await.unwrap().get(0);
    assert_eq!(v, 7);
    assert_eq!(pg.metric("pgwake_server_connects_total"), connects + 3.0);
    assert_eq!(app_pids(&cluster).len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_entries_on_one_server_database_keep_their_own_pools() {
    let cluster = cluster();
    let port = pgwake_testkit::free_port();
    // The shipped shared-service shape: `reports` is the same server
    // database as `app`, in session mode with its own size.
    let toml = common::config_for(&cluster, port, "min_idle = 0")
        + "[databases.app]\nsize = 3\n\
           [databases.reports]\ndbname = \"app\"\nmode = \"session\"\nsize = 2\n";
    let pg = Pgwake::start_config(&toml, port, &[]);
    let connect = |db: &'static str| {
        let port = pg.port;
        async move {
            pgwake_testkit::connect("127.0.0.1", port, "app", None, db)
                .await
                .unwrap()
        }
    };
    // Two session clients hold both of reports' connections.
    let mut reports = Vec::new();
    for _ in 0..2 {
        let c = connect("reports").await;
        c.simple_query("select 1").await.unwrap();
        reports.push(c);
    }
    // app still serves three transactions at once, each on its own
    // connection (a shared pool of 3 would have one left).
    let mut open = Vec::new();
    for i in 0..3 {
        let c = connect("app").await;
        let began =
            tokio::time::timeout(Duration::from_secs(10), c.batch_execute("begin; select 1")).await;
        assert!(
            matches!(began, Ok(Ok(()))),
            "transaction {i} on app: {began:?}\n{}",
            pg.logs()
        );
        open.push(c);
    }
    assert_eq!(app_backends(&cluster), 5, "2 for reports + 3 for app");
    for c in &open {
        c.batch_execute("commit").await.unwrap();
    }

    // SHOW POOLS: a row per entry, each with its own mode.
    let console = connect("pgwake").await;
    let rows = console.simple_query("SHOW POOLS").await.unwrap();
    let pools: Vec<(String, String)> = rows
        .iter()
        .filter_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => Some((
                r.get("database").unwrap().to_owned(),
                r.get("pool_mode").unwrap().to_owned(),
            )),
            _ => None,
        })
        .collect();
    assert!(
        pools.contains(&("app".into(), "transaction".into())),
        "{pools:?}"
    );
    assert!(
        pools.contains(&("reports".into(), "session".into())),
        "{pools:?}"
    );
    assert_eq!(pools.len(), 2, "{pools:?}");
}
