//! When the server side fails, clients get a clear error with the right
//! SQLSTATE, and pgwake neither hangs nor hammers the server.

mod common;

use std::time::Duration;

use common::{cluster, code, config_for, Pgwake};

async fn connect_err(pg: &Pgwake, db: &str) -> tokio_postgres::Error {
    match pgwake_testkit::connect("127.0.0.1", pg.port, "app", None, db).await {
        Ok(_) => panic!("connected, but an error was expected"),
        Err(e) => e
            .downcast::<tokio_postgres::Error>()
            .expect("a postgres error"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_server_names_host_and_port() {
    let dead_port = pgwake_testkit::free_port();
    let port = pgwake_testkit::free_port();
    let toml = format!(
        "[listen]\naddr = \"127.0.0.1:{port}\"\n[server]\nhost = \"127.0.0.1\"\nport = {dead_port}\nsslmode = \"disable\"\nconnect_timeout = \"1s\"\n[server.auth]\nuser = \"app\"\npassword = \"x\"\n[pool]\nmin_idle = 0\n"
    );
    let pg = Pgwake::start_config(&toml, port, &[]);
    let e = connect_err(&pg, "app").await;
    assert_eq!(code(&e), "08001", "{e}");
    let msg = e.as_db_error().unwrap().message().to_owned();
    assert!(msg.contains(&format!("127.0.0.1:{dead_port}")), "{msg}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_password_is_28p01_and_does_not_hammer_the_server() {
    let cluster = cluster();
    let port = pgwake_testkit::free_port();
    let toml = config_for(&cluster, port, "min_idle = 0").replace("app-secret", "wrong");
    let pg = Pgwake::start_config(&toml, port, &[]);
    for _ in 0..30 {
        let e = connect_err(&pg, "app").await;
        assert_eq!(code(&e), "28P01", "{e}");
    }
    let log = std::fs::read_to_string(cluster.log_file()).unwrap();
    let attempts = log.matches("password authentication failed").count();
    assert!(attempts >= 1);
    assert!(
        attempts <= 3,
        "30 client logins caused {attempts} failed server logins"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_database_is_3d000() {
    let cluster = cluster();
    let pg = Pgwake::start(&cluster, "min_idle = 1");
    let e = connect_err(&pg, "no_such_db").await;
    assert_eq!(code(&e), "3D000", "{e}");
    // Others are unaffected.
    pg.client().await.query_one("select 1", &[]).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_client_conn_refuses_cleanly_with_53300() {
    let cluster = cluster();
    let port = pgwake_testkit::free_port();
    let toml = config_for(&cluster, port, "size = 2")
        .replace("[listen]\n", "[listen]\nmax_client_conn = 3\n");
    let pg = Pgwake::start_config(&toml, port, &[]);
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(pg.client().await);
    }
    let e = connect_err(&pg, "app").await;
    assert_eq!(code(&e), "53300", "{e}");
    for c in &held {
        c.query_one("select 1", &[]).await.unwrap();
    }
    drop(held.pop());
    // The freed place is usable again (the close is processed asynchronously).
    let mut ok = false;
    for _ in 0..100 {
        if pgwake_testkit::connect("127.0.0.1", port, "app", None, "app")
            .await
            .is_ok()
        {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(ok, "a freed client place is reused");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pool_wait_timeout_gives_a_clear_error_and_the_client_goes_on() {
    let cluster = cluster();
    let pg = Pgwake::start(
        &cluster,
        "size = 1\nmin_idle = 1\npool_wait_timeout = \"300ms\"",
    );
    let mut holder = pg.client().await;
    let waiter = pg.client().await;
    let tx = holder.transaction().await.unwrap();
    tx.execute("select 1", &[]).await.unwrap();
    let e = waiter.simple_query("select 2").await.unwrap_err();
    assert_eq!(code(&e), "53300", "{e}");
    let msg = e.as_db_error().unwrap().message().to_owned();
    assert!(msg.contains("pool_wait_timeout"), "{msg}");
    tx.commit().await.unwrap();
    let v: i32 = waiter.query_one("select 3", &[]).await.unwrap().get(0);
    assert_eq!(
        v, 3,
        "the client that timed out is served once a connection frees"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_clients_are_served_first_come_first_served() {
    let cluster = cluster();
    let pg = Pgwake::start(&cluster, "size = 1\nmin_idle = 1");
    cluster
        .psql("app", "create table fifo(seq bigserial, who int); alter table fifo owner to app; alter sequence fifo_seq_seq owner to app")
        .unwrap();
    let mut holder = pg.client().await;
    let tx = holder.transaction().await.unwrap();
    tx.execute("select 1", &[]).await.unwrap();
    let mut waiters = Vec::new();
    for i in 0..5 {
        let c = pg.client().await;
        waiters.push(tokio::spawn(async move {
            c.simple_query(&format!("insert into fifo(who) values ({i})"))
                .await
                .unwrap();
        }));
        // Make the arrival order unambiguous.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tx.commit().await.unwrap();
    for w in waiters {
        w.await.unwrap();
    }
    // The server ran them in the order the clients arrived.
    let order = cluster
        .psql(
            "app",
            "select string_agg(who::text, ',' order by seq) from fifo",
        )
        .unwrap();
    assert_eq!(order, "0,1,2,3,4");
}
