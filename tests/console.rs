//! The admin console's PgBouncer commands over databases and clients
//! (PAUSE and RESUME per database, RECONNECT and WAIT_CLOSE, KILL and
//! KILL_CLIENT, DISABLE and ENABLE, SET, SHOW USERS and SHOW MEM,
//! SUSPEND's refusal), and SIGUSR1/SIGUSR2 sent to a real pgwake.

mod common;

use std::time::Duration;

use common::{cluster, config_for, wait_until_async, Pgwake};
use pgwake_testkit::Cluster;
use tokio_postgres::{Client, SimpleQueryMessage, SimpleQueryRow};

const SECOND: Duration = Duration::from_secs(1);

/// pgwake with two databases on the server's `app`, `app` and `other`
/// (pools of two), and `app` an admin user of the console.
fn start(cluster: &Cluster) -> Pgwake {
    let port = pgwake_testkit::free_port();
    let toml = config_for(cluster, port, "size = 2\nmin_idle = 1")
        + "[databases.app]\n[databases.other]\ndbname = \"app\"\n[admin]\nadmin_users = [\"app\"]\n";
    Pgwake::start_config(&toml, port, &[])
}

/// A client of database `db` whose application_name is `name`.
async fn client(p: &Pgwake, db: &str, name: &str) -> Client {
    let url = format!("{}?application_name={name}", p.url(db));
    match pgwake_testkit::connect_url(&url).await {
        Ok(c) => c,
        Err(e) => panic!("connect to {db}: {e:#}\n{}", p.logs()),
    }
}

/// A console session (database `pgwake`).
async fn admin(p: &Pgwake) -> Client {
    client(p, "pgwake", "admin").await
}

/// Runs a console command: its rows, or its SQLSTATE and message.
async fn run(admin: &Client, sql: &str) -> Result<Vec<SimpleQueryRow>, (String, String)> {
    match admin.simple_query(sql).await {
        Ok(messages) => Ok(messages
            .into_iter()
            .filter_map(|m| match m {
                SimpleQueryMessage::Row(r) => Some(r),
                _ => None,
            })
            .collect()),
        Err(e) => {
            let message = e
                .as_db_error()
                .map(|d| d.message().to_owned())
                .unwrap_or_else(|| e.to_string());
            Err((common::code(&e), message))
        }
    }
}

/// Runs a console command that must succeed.
async fn ok(admin: &Client, sql: &str) -> Vec<SimpleQueryRow> {
    run(admin, sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e:?}"))
}

/// The SQLSTATE and message of a console command that must fail.
async fn refused(admin: &Client, sql: &str) -> (String, String) {
    match run(admin, sql).await {
        Ok(_) => panic!("{sql} succeeded"),
        Err(e) => e,
    }
}

/// `column` of the row of `rows` whose `key` column is `value`.
fn cell(rows: &[SimpleQueryRow], key: &str, value: &str, column: &str) -> Option<String> {
    rows.iter()
        .find(|r| r.get(key) == Some(value))
        .and_then(|r| r.get(column))
        .map(str::to_owned)
}

/// SHOW CLIENTS' `column` for the client named `name`.
async fn client_column(admin: &Client, name: &str, column: &str) -> Option<String> {
    cell(
        &ok(admin, "SHOW CLIENTS").await,
        "application_name",
        name,
        column,
    )
}

/// Sends `select n` from a client that is expected to wait (PAUSE, KILL).
fn select_later(c: Client, n: i32) -> tokio::task::JoinHandle<Result<i32, tokio_postgres::Error>> {
    tokio::spawn(async move {
        c.query_one(&format!("select {n}"), &[])
            .await
            .map(|r| r.get(0))
    })
}

/// Waits until SHOW CLIENTS shows the client `name` waiting.
async fn wait_for_waiting(admin: &Client, name: &str) {
    wait_until_async(
        &format!("client {name} to wait"),
        20 * SECOND,
        || async move { client_column(admin, name, "state").await.as_deref() == Some("waiting") },
    )
    .await;
}

/// The answer to a query sent with [`select_later`], once it comes.
async fn answer(
    query: tokio::task::JoinHandle<Result<i32, tokio_postgres::Error>>,
    after: &str,
) -> i32 {
    tokio::time::timeout(20 * SECOND, query)
        .await
        .unwrap_or_else(|_| panic!("no answer after {after}"))
        .unwrap()
        .unwrap()
}

async fn backend_pid(c: &Client) -> i32 {
    c.query_one("select pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0)
}

/// Whether the server still has a backend with `pid`.
fn alive(cluster: &Cluster, pid: i32) -> bool {
    cluster
        .psql(
            "postgres",
            &format!("select count(*) from pg_stat_activity where pid = {pid}"),
        )
        .unwrap()
        == "1"
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_of_one_database_leaves_the_others_serving() {
    let cluster = cluster();
    let p = start(&cluster);
    let admin = admin(&p).await;
    let app = client(&p, "app", "on-app").await;
    let other = client(&p, "other", "on-other").await;
    app.simple_query("select 1").await.unwrap();

    ok(&admin, "PAUSE app").await;
    let dbs = ok(&admin, "SHOW DATABASES").await;
    assert_eq!(cell(&dbs, "name", "app", "paused").as_deref(), Some("1"));
    assert_eq!(cell(&dbs, "name", "other", "paused").as_deref(), Some("0"));
    // The other database serves as before...
    let v: i32 = other.query_one("select 2", &[]).await.unwrap().get(0);
    assert_eq!(v, 2);
    // ...while app's next transaction waits for RESUME app.
    let paused = select_later(app, 3);
    wait_for_waiting(&admin, "on-app").await;
    assert!(!paused.is_finished(), "app served while paused");
    let v: i32 = other.query_one("select 4", &[]).await.unwrap().get(0);
    assert_eq!(v, 4);
    ok(&admin, "RESUME app").await;
    assert_eq!(answer(paused, "RESUME app").await, 3);
    let dbs = ok(&admin, "SHOW DATABASES").await;
    assert_eq!(cell(&dbs, "name", "app", "paused").as_deref(), Some("0"));

    // What cannot be paused says why.
    let (code, m) = refused(&admin, "PAUSE nosuch").await;
    assert_eq!(code, "3D000", "{m}");
    assert!(m.contains("no such database: nosuch"), "{m}");
    let (code, m) = refused(&admin, "PAUSE pgbouncer").await;
    assert_eq!(code, "55000", "{m}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnect_replaces_server_connections_and_wait_close_waits_for_the_old_ones() {
    let cluster = cluster();
    let p = start(&cluster);
    let admin = admin(&p).await;
    let a = client(&p, "app", "a").await;
    let b = client(&p, "app", "b").await;
    let other = client(&p, "other", "other").await;
    let other_pid = backend_pid(&other).await;
    // Nothing to wait for yet: WAIT_CLOSE answers at once.
    tokio::time::timeout(20 * SECOND, ok(&admin, "WAIT_CLOSE app"))
        .await
        .expect("WAIT_CLOSE with nothing to close");

    // b is inside a transaction when RECONNECT comes.
    b.batch_execute("begin").await.unwrap();
    let b_pid = backend_pid(&b).await;
    let before = backend_pid(&a).await;
    ok(&admin, "RECONNECT app").await;
    // a, between transactions, gets a new server connection without an error.
    let after = backend_pid(&a).await;
    assert!(after != before && after != b_pid, "{before} -> {after}");
    wait_until_async("a's old backend to end", 20 * SECOND, || {
        std::future::ready(!alive(&cluster, before))
    })
    .await;
    // The other database's connections are not touched.
    assert!(alive(&cluster, other_pid));
    assert_eq!(backend_pid(&other).await, other_pid);

    // b's connection closes once its transaction ends; WAIT_CLOSE waits for it.
    let console = client(&p, "pgwake", "waiter").await;
    let waiting = tokio::spawn(async move { run(&console, "WAIT_CLOSE app").await.map(|_| ()) });
    p.wait_for_log_async("WAIT_CLOSE: waiting for", 20 * SECOND)
        .await;
    assert!(!waiting.is_finished(), "WAIT_CLOSE returned with b's open");
    // The transaction goes on undisturbed on its connection.
    assert_eq!(backend_pid(&b).await, b_pid);
    b.batch_execute("commit").await.unwrap();
    tokio::time::timeout(20 * SECOND, waiting)
        .await
        .expect("WAIT_CLOSE returned after the commit")
        .unwrap()
        .unwrap();
    wait_until_async("b's old backend to end", 20 * SECOND, || {
        std::future::ready(!alive(&cluster, b_pid))
    })
    .await;
    assert_ne!(backend_pid(&b).await, b_pid);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_client_ends_exactly_that_client_and_kill_ends_a_database() {
    let cluster = cluster();
    let p = start(&cluster);
    let admin = admin(&p).await;
    let victim = client(&p, "app", "victim").await;
    let bystander = client(&p, "app", "bystander").await;
    // The victim holds a transaction open (and its server backend).
    victim.batch_execute("begin").await.unwrap();
    let victim_pid = backend_pid(&victim).await;
    let id = client_column(&admin, "victim", "id")
        .await
        .expect("the victim in SHOW CLIENTS");
    // `ptr` is the same number, in hex.
    let ptr = client_column(&admin, "victim", "ptr").await.unwrap();
    assert_eq!(ptr, format!("{:#x}", id.parse::<u64>().unwrap()));

    ok(&admin, &format!("KILL_CLIENT {id}")).await;
    let e = victim
        .simple_query("select 1")
        .await
        .expect_err("the victim is disconnected");
    assert!(e.is_closed() || common::code(&e) == "57P01", "{e:?}");
    let v: i32 = bystander.query_one("select 5", &[]).await.unwrap().get(0);
    assert_eq!(v, 5);
    assert_eq!(client_column(&admin, "victim", "id").await, None);
    assert!(client_column(&admin, "bystander", "id").await.is_some());
    // Its server connection is closed too (its transaction rolled back).
    wait_until_async("the victim's backend to end", 20 * SECOND, || {
        std::future::ready(!alive(&cluster, victim_pid))
    })
    .await;
    p.wait_for_log_async("KILL_CLIENT: client disconnected", 10 * SECOND)
        .await;
    let (code, m) = refused(&admin, &format!("KILL_CLIENT {id}")).await;
    assert_eq!(code, "42704", "{m}");
    let (code, m) = refused(&admin, "KILL_CLIENT victim").await;
    assert_eq!(code, "22023", "{m}");

    // KILL other: its clients go, app's stay, and other is paused.
    let on_other = client(&p, "other", "on-other").await;
    on_other.simple_query("select 1").await.unwrap();
    ok(&admin, "KILL other").await;
    let e = on_other
        .simple_query("select 1")
        .await
        .expect_err("other's client is disconnected");
    assert!(e.is_closed() || common::code(&e) == "57P01", "{e:?}");
    bystander.simple_query("select 6").await.unwrap();
    // New clients of other log in and wait for RESUME other.
    let late = select_later(client(&p, "other", "late").await, 7);
    wait_for_waiting(&admin, "late").await;
    ok(&admin, "RESUME other").await;
    assert_eq!(answer(late, "RESUME other").await, 7);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disable_refuses_new_logins_to_a_database_until_enable() {
    let cluster = cluster();
    let p = start(&cluster);
    let admin = admin(&p).await;
    let existing = client(&p, "app", "existing").await;
    ok(&admin, "DISABLE app").await;
    let dbs = ok(&admin, "SHOW DATABASES").await;
    assert_eq!(cell(&dbs, "name", "app", "disabled").as_deref(), Some("1"));
    let e = pgwake_testkit::connect_url(&p.url("app"))
        .await
        .expect_err("a new login to a disabled database");
    let e = e.downcast::<tokio_postgres::Error>().unwrap();
    assert_eq!(common::code(&e), "55000", "{e}");
    assert_eq!(
        e.as_db_error().map(|d| d.message()),
        Some("database does not allow connections: app")
    );
    // Clients already in keep working, and other databases take logins.
    existing.simple_query("select 1").await.unwrap();
    client(&p, "other", "other")
        .await
        .simple_query("select 1")
        .await
        .unwrap();
    ok(&admin, "ENABLE app").await;
    client(&p, "app", "again")
        .await
        .simple_query("select 1")
        .await
        .unwrap();

    let (code, m) = refused(&admin, "DISABLE").await;
    assert_eq!(code, "42601", "{m}");
    assert!(m.contains("DISABLE needs a database"), "{m}");
    let (code, _) = refused(&admin, "DISABLE nosuch").await;
    assert_eq!(code, "3D000");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn set_changes_live_settings_and_names_what_it_refuses() {
    let cluster = cluster();
    let p = start(&cluster);
    let admin = admin(&p).await;
    let size = |rows: &[SimpleQueryRow]| cell(rows, "name", "app", "pool_size");
    assert_eq!(
        size(&ok(&admin, "SHOW DATABASES").await).as_deref(),
        Some("2")
    );
    ok(&admin, "SET pool.size = 5").await;
    assert_eq!(
        size(&ok(&admin, "SHOW DATABASES").await).as_deref(),
        Some("5")
    );
    let config = ok(&admin, "SHOW CONFIG").await;
    assert_eq!(
        cell(&config, "key", "pool.size", "value").as_deref(),
        Some("5")
    );
    // PgBouncer's name for it, and TO for =.
    ok(&admin, "SET default_pool_size TO 4").await;
    assert_eq!(
        size(&ok(&admin, "SHOW DATABASES").await).as_deref(),
        Some("4")
    );
    // Session settings PgBouncer clients send are ignored, as PgBouncer does.
    ok(&admin, "SET client_encoding = 'UTF8'").await;

    for (sql, want_code, named) in [
        ("SET nonsense = 1", "42704", "nonsense"),
        ("SET pool.sise = 3", "42704", "did you mean pool.size?"),
        ("SET pool.size = many", "22023", "pool.size"),
        (
            "SET listen.addr = '127.0.0.1:1'",
            "55P02",
            "listen.addr changes only at restart",
        ),
        (
            "SET server.auth.password = 'x'",
            "55P02",
            "server.auth.password is a secret",
        ),
        ("SET pool.size", "42601", "usage: SET key = value"),
    ] {
        let (code, m) = refused(&admin, sql).await;
        assert_eq!(code, want_code, "{sql}: {m}");
        assert!(m.contains(named), "{sql}: {m}");
    }
    // RELOAD reads the file again: SET lasted until then.
    ok(&admin, "RELOAD").await;
    assert_eq!(
        size(&ok(&admin, "SHOW DATABASES").await).as_deref(),
        Some("2")
    );
    p.wait_for_log_async("SET from the admin console", 10 * SECOND)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn show_users_and_mem_answer_and_suspend_says_why_not() {
    let cluster = cluster();
    let p = start(&cluster);
    let admin = admin(&p).await;
    let c = client(&p, "app", "c").await;
    c.simple_query("select 1").await.unwrap();
    let server_connections = |users: &[SimpleQueryRow]| -> u32 {
        cell(users, "name", "app", "current_connections")
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    };
    // app is the server user of both pools, each warm with one connection.
    let console = &admin;
    wait_until_async("both pools warm", 20 * SECOND, || async move {
        server_connections(&ok(console, "SHOW USERS").await) >= 2
    })
    .await;
    let users = ok(&admin, "SHOW USERS").await;
    let columns: Vec<&str> = users[0].columns().iter().map(|c| c.name()).collect();
    assert_eq!(
        columns,
        [
            "name",
            "pool_size",
            "reserve_pool_size",
            "pool_mode",
            "max_user_connections",
            "current_connections",
            "max_user_client_connections",
            "current_client_connections"
        ]
    );
    // One client logged in to app (the console is not one).
    assert_eq!(
        cell(&users, "name", "app", "current_client_connections").as_deref(),
        Some("1")
    );

    let mem = ok(&admin, "SHOW MEM").await;
    let columns: Vec<&str> = mem[0].columns().iter().map(|c| c.name()).collect();
    assert_eq!(columns, ["name", "size", "used", "free", "memtotal"]);
    assert_eq!(
        cell(&mem, "name", "client_registry", "used").as_deref(),
        Some("1")
    );
    let rss: u64 = cell(&mem, "name", "process_rss", "memtotal")
        .unwrap()
        .parse()
        .unwrap();
    assert!(rss > 1 << 20, "{rss}");

    let (code, m) = refused(&admin, "SUSPEND").await;
    assert_eq!(code, "0A000", "{m}");
    assert!(m.contains("SUSPEND is not supported"), "{m}");
    // Nothing was suspended.
    c.simple_query("select 1").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigusr1_pauses_and_sigusr2_resumes() {
    let cluster = cluster();
    let p = Pgwake::start(&cluster, "size = 2\nmin_idle = 1");
    let c = client(&p, "app", "signalled").await;
    c.simple_query("select 1").await.unwrap();
    p.signal("USR1");
    p.wait_for_log_async("SIGUSR1 received: PAUSE", 10 * SECOND)
        .await;
    let paused = select_later(c, 8);
    // Loopback console users may look.
    let console = admin(&p).await;
    wait_for_waiting(&console, "signalled").await;
    assert!(!paused.is_finished(), "served while paused");
    p.signal("USR2");
    assert_eq!(answer(paused, "SIGUSR2").await, 8);
    p.wait_for_log_async("SIGUSR2 received: RESUME", 10 * SECOND)
        .await;
}
