//! Every timeout end to end: the client gets an error naming the setting
//! with the right SQLSTATE, the server backend is left neither busy nor idle
//! in a transaction, the server connection is kept where it can be, the next
//! client is served, and `pgwake_timeouts_total` counts it.

mod common;

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{cluster, code, config_for, http_get, metric, try_query, Pgwake};
use tokio::io::AsyncReadExt;
use tokio_postgres::{Client, NoTls};

/// Upper bound on any single wait in these tests; the timeouts are 1 s.
const LIMIT: Duration = Duration::from_secs(15);

/// pgwake in front of `cluster` with `pool` lines and a `[timeouts]` section.
fn start(cluster: &pgwake_testkit::Cluster, pool: &str, timeouts: &str) -> Pgwake {
    let port = pgwake_testkit::free_port();
    let toml = format!(
        "{}[timeouts]\n{timeouts}\n",
        config_for(cluster, port, pool)
    );
    Pgwake::start_config(&toml, port, &[])
}

/// `pgwake_timeouts_total{kind}` from `/metrics`.
fn timeouts_total(pg: &Pgwake, kind: &str) -> f64 {
    let (status, body) = http_get(pg.admin_port, "/metrics", LIMIT);
    assert_eq!(status, 200, "/metrics: {body}");
    metric(&body, &format!("pgwake_timeouts_total{{kind=\"{kind}\"}}"))
}

/// Awaits `fut`, failing the test if it takes longer than [`LIMIT`].
async fn within<F: Future>(what: &str, fut: F) -> F::Output {
    tokio::time::timeout(LIMIT, fut)
        .await
        .unwrap_or_else(|_| panic!("{what}: no outcome within {LIMIT:?}"))
}

/// The first column of the first row `sql` returns (simple protocol).
async fn value(c: &Client, sql: &str) -> String {
    common::first_value(c, sql, LIMIT).await
}

async fn backend_pid(c: &Client) -> String {
    value(c, "select pg_backend_pid()").await
}

/// A client of pgwake whose connection task is kept: its result is how an
/// unsolicited FATAL (a timeout while the client waits on nothing) shows.
async fn client_and_connection(
    pg: &Pgwake,
) -> (
    Client,
    tokio::task::JoinHandle<Result<(), tokio_postgres::Error>>,
) {
    let (c, conn) = within("connect", tokio_postgres::connect(&pg.url("app"), NoTls))
        .await
        .unwrap_or_else(|e| panic!("connect through pgwake: {e}\n{}", pg.logs()));
    (c, tokio::spawn(conn))
}

/// Waits for the connection task to end and returns the error that ended it.
async fn closed_with(
    conn: tokio::task::JoinHandle<Result<(), tokio_postgres::Error>>,
) -> tokio_postgres::Error {
    within("the connection closing", conn)
        .await
        .unwrap()
        .expect_err("the connection ended with an error")
}

/// The SQLSTATE and message of a server error.
fn sqlstate_and_message(e: &tokio_postgres::Error) -> (String, String) {
    let msg = e.as_db_error().map(|d| d.message().to_owned());
    (code(e), msg.unwrap_or_else(|| e.to_string()))
}

/// Backends of `app` that are running a query like `like` or sit idle in a
/// transaction, as `pid state query` lines; empty when there are none.
/// Cleanup after a client is told may still be under way: retried (bounded).
/// No backend is left busy or idle in transaction, and the next client is
/// served on the server connection `pid` (kept, not closed).
async fn served_on_kept_connection(
    pg: &Pgwake,
    cluster: &pgwake_testkit::Cluster,
    pid: &str,
) -> Client {
    assert_eq!(stuck_backends(cluster, "%"), "");
    let next = pg.client().await;
    assert_eq!(
        backend_pid(&next).await,
        pid,
        "the server connection was kept"
    );
    next
}

fn stuck_backends(cluster: &pgwake_testkit::Cluster, like: &str) -> String {
    let sql = format!(
        "select coalesce(string_agg(pid || ' ' || state || ' ' || query, E'\\n'), '') \
         from pg_stat_activity where usename = 'app' \
         and ((state = 'active' and query like '{like}') or state like 'idle in transaction%')"
    );
    let mut stuck = String::new();
    for _ in 0..100 {
        stuck = cluster.psql("postgres", &sql).unwrap();
        if stuck.is_empty() {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    stuck
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn query_timeout_cancels_the_statement_and_keeps_the_connection() {
    let cluster = cluster();
    let port = pgwake_testkit::free_port();
    // Set through the environment, as a deployment would override the file.
    let pg = Pgwake::start_config(
        &config_for(&cluster, port, "size = 1\nmin_idle = 1"),
        port,
        &[("PGWAKE_TIMEOUTS_QUERY_TIMEOUT", "1s")],
    );
    let c = pg.client().await;
    let pid = backend_pid(&c).await;

    // Simple protocol.
    // `within` bounds the wait far below the 30 s the query would run.
    let e = within("pg_sleep", c.simple_query("select pg_sleep(30)"))
        .await
        .expect_err("the query is cancelled");
    let (state, msg) = sqlstate_and_message(&e);
    assert_eq!(state, "57014", "{msg}");
    assert!(msg.contains("query_timeout"), "{msg}");
    assert_eq!(stuck_backends(&cluster, "%pg_sleep%"), "");
    assert_eq!(backend_pid(&c).await, pid, "the server connection was kept");

    // Extended protocol.
    let e = within("pg_sleep", c.query_one("select pg_sleep(30)::text", &[]))
        .await
        .expect_err("the query is cancelled");
    let (state, msg) = sqlstate_and_message(&e);
    assert_eq!(state, "57014", "{msg}");
    assert!(msg.contains("query_timeout"), "{msg}");

    // Inside a transaction: it is aborted, as with statement_timeout.
    within("begin", c.batch_execute("begin")).await.unwrap();
    let e = within("pg_sleep", c.simple_query("select pg_sleep(30)"))
        .await
        .expect_err("the query is cancelled");
    let (state, msg) = sqlstate_and_message(&e);
    assert_eq!(state, "57014", "{msg}");
    assert!(msg.contains("query_timeout"), "{msg}");
    let e = within("select 1", c.simple_query("select 1"))
        .await
        .expect_err("the transaction is aborted");
    assert_eq!(code(&e), "25P02", "{e}");
    within("rollback", c.batch_execute("rollback"))
        .await
        .unwrap();
    assert_eq!(value(&c, "select 1").await, "1");
    assert_eq!(stuck_backends(&cluster, "%pg_sleep%"), "");
    assert_eq!(backend_pid(&c).await, pid, "the server connection was kept");

    // The next client is served, on the same connection.
    let next = pg.client().await;
    assert_eq!(backend_pid(&next).await, pid);
    assert_eq!(timeouts_total(&pg, "query"), 3.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_transaction_timeout_rolls_back_and_keeps_the_connection() {
    let cluster = cluster();
    cluster
        .psql(
            "app",
            "create table kept(x int); alter table kept owner to app",
        )
        .unwrap();
    let pg = start(
        &cluster,
        "size = 1\nmin_idle = 1",
        "idle_transaction_timeout = \"1s\"",
    );
    let (c, conn) = client_and_connection(&pg).await;
    // One round trip, so the client is idle from its last reply on.
    let pid = value(
        &c,
        "begin; insert into kept values (1); select pg_backend_pid()",
    )
    .await;

    // The client now idles in its transaction until pgwake closes it.
    let e = closed_with(conn).await;
    let (state, msg) = sqlstate_and_message(&e);
    assert_eq!(state, "25P03", "{msg}");
    assert!(msg.contains("idle_transaction_timeout"), "{msg}");
    let e = within("select 1", c.simple_query("select 1"))
        .await
        .expect_err("the client was disconnected");
    assert!(e.is_closed(), "{e}");

    assert_eq!(stuck_backends(&cluster, "%kept%"), "");
    assert_eq!(
        cluster.psql("app", "select count(*) from kept").unwrap(),
        "0",
        "the transaction was rolled back"
    );
    let next = pg.client().await;
    assert_eq!(
        backend_pid(&next).await,
        pid,
        "the server connection was kept\n{}",
        pg.logs()
    );
    assert_eq!(timeouts_total(&pg, "idle_transaction"), 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_idle_timeout_disconnects_idle_clients_and_keeps_the_connection() {
    let cluster = cluster();
    let pg = start(
        &cluster,
        "size = 1\nmin_idle = 1",
        "client_idle_timeout = \"1s\"",
    );
    let (c, conn) = client_and_connection(&pg).await;
    let pid = backend_pid(&c).await;
    let e = closed_with(conn).await;
    let (state, msg) = sqlstate_and_message(&e);
    assert_eq!(state, "57P05", "{msg}");
    assert!(msg.contains("client_idle_timeout"), "{msg}");
    let next = pg.client().await;
    assert_eq!(
        backend_pid(&next).await,
        pid,
        "the server connection was kept"
    );
    drop(next);

    // A client keeping a prepared statement is idle like any other: it is
    // disconnected all the same, and the connection is kept.
    let (c, conn) = client_and_connection(&pg).await;
    let stmt = within("prepare", c.prepare("select pg_backend_pid()"))
        .await
        .unwrap();
    let row = within("execute", c.query_one(&stmt, &[])).await.unwrap();
    assert_eq!(row.get::<_, i32>(0).to_string(), pid);
    drop(row);
    let e = closed_with(conn).await;
    let (state, msg) = sqlstate_and_message(&e);
    assert_eq!(state, "57P05", "{msg}\n{}", pg.logs());
    assert!(msg.contains("client_idle_timeout"), "{msg}");
    drop(stmt);

    let next = served_on_kept_connection(&pg, &cluster, &pid).await;
    // The server keeps its statements for other clients (named by their
    // content); none under a client's own name is left.
    assert_eq!(
        value(
            &next,
            "select count(*) from pg_prepared_statements where name !~ '^pgwake_'"
        )
        .await,
        "0",
        "no statement under the departed client's name"
    );
    assert_eq!(timeouts_total(&pg, "client_idle"), 2.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_idle_timeout_in_session_mode_resets_and_keeps_the_connection() {
    let cluster = cluster();
    let pg = start(
        &cluster,
        "mode = \"session\"\nsize = 1\nmin_idle = 1",
        "client_idle_timeout = \"1s\"",
    );
    let (c, conn) = client_and_connection(&pg).await;
    within("set", c.batch_execute("set search_path = pg_catalog"))
        .await
        .unwrap();
    let pid = backend_pid(&c).await;
    let e = closed_with(conn).await;
    let (state, msg) = sqlstate_and_message(&e);
    assert_eq!(state, "57P05", "{msg}");
    assert!(msg.contains("client_idle_timeout"), "{msg}");

    let next = served_on_kept_connection(&pg, &cluster, &pid).await;
    assert_eq!(
        value(&next, "show search_path").await,
        "\"$user\", public",
        "the departed client's settings were reset"
    );
    assert_eq!(timeouts_total(&pg, "client_idle"), 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pool_wait_timeout_fails_the_request_and_the_client_goes_on() {
    let cluster = cluster();
    let pg = start(
        &cluster,
        "size = 1\nmin_idle = 1\npool_wait_timeout = \"1s\"",
        "",
    );
    let holder = pg.client().await;
    let waiter = pg.client().await;
    within("begin", holder.batch_execute("begin"))
        .await
        .unwrap();
    let pid = backend_pid(&holder).await;

    let e = within("select 2", waiter.simple_query("select 2"))
        .await
        .expect_err("no connection frees in time");
    let (state, msg) = sqlstate_and_message(&e);
    assert_eq!(state, "53300", "{msg}");
    assert!(msg.contains("pool_wait_timeout"), "{msg}");

    within("commit", holder.batch_execute("commit"))
        .await
        .unwrap();
    assert_eq!(stuck_backends(&cluster, "%"), "");
    assert_eq!(value(&waiter, "select 3").await, "3");
    assert_eq!(backend_pid(&waiter).await, pid);
    let next = pg.client().await;
    assert_eq!(value(&next, "select 1").await, "1");
    assert_eq!(timeouts_total(&pg, "pool_wait"), 1.0);
}

/// A TCP listener in front of the server: until opened, it accepts
/// connections and never answers them; once opened, it relays new ones.
struct Gate {
    port: u16,
    open: Arc<AtomicBool>,
}

impl Gate {
    async fn start(upstream: u16) -> Gate {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let open = Arc::new(AtomicBool::new(false));
        let flag = open.clone();
        tokio::spawn(async move {
            while let Ok((mut down, _)) = listener.accept().await {
                let relay = flag.load(Ordering::SeqCst);
                tokio::spawn(async move {
                    if !relay {
                        // Read and drop until the peer gives up and closes.
                        let mut sink = [0u8; 1024];
                        while matches!(down.read(&mut sink).await, Ok(n) if n > 0) {}
                        return;
                    }
                    if let Ok(mut up) =
                        tokio::net::TcpStream::connect(("127.0.0.1", upstream)).await
                    {
                        let _ = tokio::io::copy_bidirectional(&mut down, &mut up).await;
                    }
                });
            }
        });
        Gate { port, open }
    }

    fn open(&self) {
        self.open.store(true, Ordering::SeqCst);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_timeout_fails_the_login_and_the_next_client_is_served() {
    let cluster = cluster();
    let gate = Gate::start(cluster.port()).await;
    let port = pgwake_testkit::free_port();
    let toml = config_for(&cluster, port, "size = 1\nmin_idle = 0")
        .replace(
            &format!("port = {}", cluster.port()),
            &format!("port = {}", gate.port),
        )
        .replace("connect_timeout = \"3s\"", "connect_timeout = \"1s\"");
    let pg = Pgwake::start_config(&toml, port, &[]);

    let (state, msg) = within("a login through a silent server", try_query(&pg.url("app")))
        .await
        .expect_err("the login fails");
    assert_eq!(state, "08001", "{msg}");
    assert!(msg.contains("connect_timeout"), "{msg}");
    assert!(timeouts_total(&pg, "server_connect") >= 1.0);

    gate.open();
    within("a login once the server answers", try_query(&pg.url("app")))
        .await
        .unwrap_or_else(|(state, msg)| panic!("{state}: {msg}\n{}", pg.logs()));
    assert_eq!(stuck_backends(&cluster, "%"), "");
}
