//! Session mode, LISTEN/NOTIFY, and pgbench in both pool modes.

mod common;

use std::time::Duration;

use common::{cluster, pgbench, Pgwake};
use futures_util::StreamExt;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_mode_resets_the_connection_between_clients() {
    let cluster = cluster();
    let pg = Pgwake::start(&cluster, "mode = \"session\"\nsize = 1\nmin_idle = 1");
    let first = pg.client().await;
    first
        .batch_execute("set work_mem = '7MB'; create temp table mine(x int); prepare p as select 1")
        .await
        .unwrap();
    let pid1: i32 = first
        .query_one("select pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    let wm: String = first.query_one("show work_mem", &[]).await.unwrap().get(0);
    assert_eq!(wm, "7MB");
    drop(first);

    let second = pg.client().await;
    let pid2: i32 = second
        .query_one("select pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(pid1, pid2, "the single server connection is reused");
    let wm: String = second.query_one("show work_mem", &[]).await.unwrap().get(0);
    assert_eq!(wm, "4MB", "a SET must not leak to the next client");
    let temp: i64 = second
        .query_one("select count(*) from pg_class where relname = 'mine'", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(temp, 0, "temp tables are dropped by DISCARD ALL");
    let prepared: i64 = second
        .query_one(
            "select count(*) from pg_prepared_statements where name = 'p'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(prepared, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notifications_pass_through_in_session_mode() {
    let cluster = cluster();
    let pg = Pgwake::start(&cluster, "mode = \"session\"\nsize = 3\nmin_idle = 1");
    let (listener, mut conn) = tokio_postgres::connect(
        &format!("host=127.0.0.1 port={} user=app dbname=app", pg.port),
        tokio_postgres::NoTls,
    )
    .await
    .unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut messages = futures_util::stream::poll_fn(move |cx| conn.poll_message(cx));
        while let Some(Ok(m)) = messages.next().await {
            if let tokio_postgres::AsyncMessage::Notification(n) = m {
                let _ = tx.send((n.channel().to_owned(), n.payload().to_owned()));
            }
        }
    });
    listener.batch_execute("listen jobs").await.unwrap();
    let sender = pg.client().await;
    sender.batch_execute("notify jobs, 'hello'").await.unwrap();
    let got = tokio::time::timeout(Duration::from_secs(5), rx.recv())
        .await
        .expect("notification arrives")
        .unwrap();
    assert_eq!(got, ("jobs".to_owned(), "hello".to_owned()));
}

fn assert_no_failures(out: &str, transactions: u32) {
    assert!(
        out.contains("number of failed transactions: 0 "),
        "failed transactions:\n{out}"
    );
    assert!(
        out.contains(&format!(
            "number of transactions actually processed: {transactions}/{transactions}"
        )),
        "not every transaction ran:\n{out}"
    );
}

fn pgbench_suite(pool: &str) {
    let cluster = cluster();
    let pg = Pgwake::start(&cluster, pool);
    pgbench(&cluster, pg.port, &["-i", "-q", "-s", "1"]);
    let accounts = cluster
        .psql("app", "select count(*) from pgbench_accounts")
        .unwrap();
    assert_eq!(accounts, "100000");
    for mode in ["simple", "extended"] {
        let out = pgbench(
            &cluster,
            pg.port,
            &["-S", "-M", mode, "-c", "8", "-j", "2", "-t", "250"],
        );
        assert_no_failures(&out, 2000);
    }
    let out = pgbench(&cluster, pg.port, &["-c", "8", "-j", "2", "-t", "100"]);
    assert_no_failures(&out, 800);
    let history = cluster
        .psql("app", "select count(*) from pgbench_history")
        .unwrap();
    assert_eq!(history, "800", "every TPC-B transaction committed once");
}

#[test]
fn pgbench_runs_clean_in_transaction_mode() {
    pgbench_suite("size = 5\nmin_idle = 1");
}

#[test]
fn pgbench_runs_clean_in_session_mode() {
    pgbench_suite("mode = \"session\"\nsize = 10\nmin_idle = 1");
}
