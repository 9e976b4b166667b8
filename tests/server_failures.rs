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
        // Make the arrival order unambiguous: this client waits for the
        // connection before the next one asks.
        common::wait_until_async(
            &format!("{} clients waiting for the connection", i + 1),
            Duration::from_secs(10),
            || {
                std::future::ready(
                    pg.metric(
                        "pgwake_client_connections{database=\"app\",user=\"app\",state=\"waiting\"}",
                    ) == f64::from(i + 1),
                )
            },
        )
        .await;
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

/// A TCP relay in front of the server that can make the connections it
/// carries die silently: a doomed connection is closed, unanswered, as soon
/// as pgwake sends on it, like a socket a NAT or a restart killed while it sat
/// idle in the pool. Connections made afterwards are relayed normally.
struct FaultRelay {
    port: u16,
    doom_before: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    accepted: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl FaultRelay {
    async fn start(upstream: u16) -> FaultRelay {
        use std::sync::atomic::{AtomicUsize, Ordering};
        use std::sync::Arc;
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let doom_before = Arc::new(AtomicUsize::new(0));
        let accepted = Arc::new(AtomicUsize::new(0));
        let (doom, count) = (doom_before.clone(), accepted.clone());
        tokio::spawn(async move {
            while let Ok((down, _)) = listener.accept().await {
                let id = count.fetch_add(1, Ordering::SeqCst) + 1;
                let doom = doom.clone();
                tokio::spawn(async move {
                    let up = tokio::net::TcpStream::connect(("127.0.0.1", upstream))
                        .await
                        .unwrap();
                    let (mut down_r, mut down_w) = down.into_split();
                    let (mut up_r, mut up_w) = up.into_split();
                    let to_client = tokio::spawn(async move {
                        let _ = tokio::io::copy(&mut up_r, &mut down_w).await;
                    });
                    let mut buf = vec![0u8; 16 * 1024];
                    while let Ok(n) = down_r.read(&mut buf).await {
                        if n == 0 || id <= doom.load(Ordering::SeqCst) {
                            break;
                        }
                        if up_w.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                    // Closing both halves ends this connection without a reply.
                    to_client.abort();
                });
            }
        });
        FaultRelay {
            port,
            doom_before,
            accepted,
        }
    }

    /// Every connection open now dies on its next use.
    fn doom_current(&self) {
        use std::sync::atomic::Ordering;
        self.doom_before
            .store(self.accepted.load(Ordering::SeqCst), Ordering::SeqCst);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_dead_on_first_use_is_replaced_invisibly() {
    let cluster = cluster();
    let relay = FaultRelay::start(cluster.port()).await;
    let port = pgwake_testkit::free_port();
    let toml = config_for(&cluster, port, "size = 3\nmin_idle = 3").replace(
        &format!("port = {}", cluster.port()),
        &format!("port = {}", relay.port),
    );
    let pg = Pgwake::start_config(&toml, port, &[]);
    pg.client().await.simple_query("select 1").await.unwrap();
    for round in 0..3 {
        // Each client's first request meets a dead pooled connection,
        // with the simple and with the extended protocol.
        relay.doom_current();
        let c = pg.client().await;
        let rows = c
            .simple_query("select 40 + 2")
            .await
            .unwrap_or_else(|e| panic!("round {round}: simple query failed: {e:?}\n{}", pg.logs()));
        let answer = rows.iter().find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_owned),
            _ => None,
        });
        assert_eq!(
            answer.as_deref(),
            Some("42"),
            "round {round}\n{}",
            pg.logs()
        );
        drop(c);
        relay.doom_current();
        let c = pg.client().await;
        let v: i32 = c
            .query_one("select $1::int", &[&round])
            .await
            .unwrap_or_else(|e| {
                panic!("round {round}: extended query failed: {e:?}\n{}", pg.logs())
            })
            .get(0);
        assert_eq!(v, round);
    }
    assert!(pg
        .logs()
        .contains("retrying the request on a fresh server connection"));
}
