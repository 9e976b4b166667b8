//! Idle clients parked outside the async runtime, as a user sees them: a
//! client that logs in and waits, or that has been idle for
//! `listen.park_idle_clients_after`, is parked (`pgwake_clients_parked`);
//! it is served as soon as it sends, over TCP and the unix socket, and it
//! is told, as any idle client is, when it is killed from the console,
//! reaches `client_idle_timeout` or pgwake shuts down. Real pgwake binary,
//! real PostgreSQL, tokio-postgres clients.

mod common;

use std::future::{ready, Future};
use std::time::Duration;

use common::{cluster, code, config_for, wait_until_async, Pgwake};
use tokio_postgres::{Client, NoTls, SimpleQueryMessage};

/// Bound on each wait for pgwake.
const LIMIT: Duration = Duration::from_secs(15);

type Connection = tokio::task::JoinHandle<Result<(), tokio_postgres::Error>>;

/// pgwake for `cluster` with `listen` keys added to `[listen]` and `more`
/// sections after the pool's.
fn start(cluster: &pgwake_testkit::Cluster, listen: &str, more: &str) -> Pgwake {
    let port = pgwake_testkit::free_port();
    let toml = config_for(cluster, port, "size = 2\nmin_idle = 1")
        .replace("[listen]\n", &format!("[listen]\n{listen}"))
        + more;
    Pgwake::start_config(&toml, port, &[])
}

async fn within<F: Future>(what: &str, fut: F) -> F::Output {
    tokio::time::timeout(LIMIT, fut)
        .await
        .unwrap_or_else(|_| panic!("{what}: no outcome within {LIMIT:?}"))
}

/// A client logged in with `params` (a libpq key=value string), and the
/// task running its connection.
async fn connect(pg: &Pgwake, params: &str) -> (Client, Connection) {
    let (c, conn) = within("connect", tokio_postgres::connect(params, NoTls))
        .await
        .unwrap_or_else(|e| panic!("connect ({params}): {e}\n{}", pg.logs()));
    (c, tokio::spawn(conn))
}

fn tcp(pg: &Pgwake, name: &str) -> String {
    format!(
        "host=127.0.0.1 port={} user=app dbname=app application_name={name}",
        pg.port
    )
}

/// The first column of the first row `sql` returns (simple protocol).
async fn value(c: &Client, sql: &str) -> String {
    common::first_value(c, sql, LIMIT).await
}

fn parked(pg: &Pgwake) -> f64 {
    pg.metric("pgwake_clients_parked")
}

fn idle_clients(pg: &Pgwake) -> f64 {
    pg.metric("pgwake_client_connections{database=\"app\",user=\"app\",state=\"idle\"}")
}

async fn wait_parked(pg: &Pgwake, n: f64, what: &str) {
    wait_until_async(what, LIMIT, || ready(parked(pg) == n)).await;
}

/// The server's message in `e`.
fn message(e: &tokio_postgres::Error) -> String {
    e.as_db_error()
        .map(|d| d.message().to_owned())
        .unwrap_or_else(|| e.to_string())
}

/// The error that ended a client's connection.
async fn closed_with(conn: Connection) -> tokio_postgres::Error {
    within("the connection closing", conn)
        .await
        .unwrap()
        .expect_err("the connection ended with an error")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_clients_are_parked_and_served_as_soon_as_they_send() {
    let cluster = cluster();
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().to_str().unwrap().to_owned();
    let pg = start(
        &cluster,
        &format!("unix_socket_dir = \"{socket}\"\npark_idle_clients_after = \"1s\"\n"),
        "",
    );

    // Three TCP clients and one on the unix socket log in and send
    // nothing, as an application's pool leaves its connections.
    let mut clients = Vec::new();
    for i in 0..3 {
        clients.push(connect(&pg, &tcp(&pg, &format!("tcp{i}"))).await);
    }
    clients.push(
        connect(
            &pg,
            &format!(
                "host={socket} port={} user=app dbname=app application_name=unix",
                pg.port
            ),
        )
        .await,
    );
    wait_parked(&pg, 4.0, "the four clients to be parked").await;
    assert_eq!(idle_clients(&pg), 4.0, "parked clients count as idle");

    // Each is served at once, with its own settings, on a pooled connection.
    for (i, (c, _)) in clients.iter().enumerate() {
        let got = value(
            c,
            &format!("select {i} * 7 || current_setting('application_name')"),
        )
        .await;
        let name = if i == 3 {
            "unix".to_owned()
        } else {
            format!("tcp{i}")
        };
        assert_eq!(got, format!("{}{name}", i * 7));
    }
    // Idle again for `park_idle_clients_after`, they are parked again...
    wait_parked(&pg, 4.0, "the clients idle for 1s to be parked again").await;
    // ...and served again; a transaction spanning statements works as usual.
    let (c, _) = &clients[1];
    within(
        "a transaction",
        c.batch_execute("begin; create temp table t (v int); insert into t values (41)"),
    )
    .await
    .unwrap();
    assert_eq!(value(c, "select v + 1 from t").await, "42");
    within("commit", c.batch_execute("commit")).await.unwrap();

    // A parked client that closes its socket is gone at once.
    let (c, conn) = clients.remove(0);
    drop(c);
    within("the connection to end", conn)
        .await
        .unwrap()
        .unwrap();
    wait_until_async("the departed client to be forgotten", LIMIT, || {
        ready(idle_clients(&pg) == 3.0)
    })
    .await;
    wait_parked(&pg, 3.0, "the other three to stay parked").await;
    for (c, _) in &clients {
        assert_eq!(value(c, "select 1").await, "1");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parked_client_is_told_when_killed_timed_out_or_pgwake_stops() {
    let cluster = cluster();

    // KILL_CLIENT reaches a parked client; the others go on. (Two
    // threads: the parking task and the sessions run side by side.)
    let pg = start(
        &cluster,
        "worker_threads = 2\n",
        "[admin]\nadmin_users = [\"app\"]\n",
    );
    let (victim, victim_conn) = connect(&pg, &tcp(&pg, "victim")).await;
    let (bystander, _b) = connect(&pg, &tcp(&pg, "bystander")).await;
    let (admin, _a) = connect(
        &pg,
        &format!("host=127.0.0.1 port={} user=app dbname=pgwake", pg.port),
    )
    .await;
    wait_parked(&pg, 2.0, "the victim and the bystander to be parked").await;
    let rows = within("SHOW CLIENTS", admin.simple_query("SHOW CLIENTS"))
        .await
        .unwrap();
    let id = rows
        .iter()
        .find_map(|m| match m {
            SimpleQueryMessage::Row(r) if r.get("application_name") == Some("victim") => {
                r.get("id").map(str::to_owned)
            }
            _ => None,
        })
        .expect("the victim in SHOW CLIENTS");
    within(
        "KILL_CLIENT",
        admin.simple_query(&format!("KILL_CLIENT {id}")),
    )
    .await
    .unwrap();
    let e = closed_with(victim_conn).await;
    assert_eq!(code(&e), "57P01", "{e}");
    assert!(message(&e).contains("KILL_CLIENT"), "{e}");
    assert_eq!(value(&bystander, "select 5").await, "5");
    drop(victim);
    drop(pg);

    // client_idle_timeout ends a parked client, counted from its login.
    let pg = start(&cluster, "", "[timeouts]\nclient_idle_timeout = \"2s\"\n");
    let (c, conn) = connect(&pg, &tcp(&pg, "sleeper")).await;
    wait_parked(&pg, 1.0, "the client to be parked").await;
    let e = closed_with(conn).await;
    assert_eq!(code(&e), "57P05", "{e}");
    assert!(message(&e).contains("client_idle_timeout"), "{e}");
    wait_parked(&pg, 0.0, "the timed-out client to leave the parking").await;
    assert_eq!(
        pg.metric("pgwake_timeouts_total{kind=\"client_idle\"}"),
        1.0
    );
    drop(c);
    drop(pg);

    // Shutdown: a parked client is told, and pgwake exits.
    let mut pg = start(&cluster, "", "");
    let (c, conn) = connect(&pg, &tcp(&pg, "last")).await;
    assert_eq!(value(&c, "select 3").await, "3");
    // Back from its query, it is idle in a task; a fresh login parks.
    let (fresh, fresh_conn) = connect(&pg, &tcp(&pg, "fresh")).await;
    wait_parked(&pg, 1.0, "the fresh client to be parked").await;
    pg.signal("TERM");
    for conn in [conn, fresh_conn] {
        let e = closed_with(conn).await;
        assert_eq!(code(&e), "57P01", "{e}");
        assert!(message(&e).contains("shutting down"), "{e}");
    }
    let status = pg.wait_exit(LIMIT).expect("pgwake exits");
    assert!(status.success(), "{status:?}\n{}", pg.logs());
    drop((c, fresh));
}
