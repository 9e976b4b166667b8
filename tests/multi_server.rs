//! One pgwake in front of two PostgreSQL servers: `[databases.NAME.server]`
//! gives an entry its own host, port and login, as PgBouncer's `[databases]`
//! lines may.

mod common;

use std::time::Duration;

use common::{cluster, code, poll_until_async, wait_until, Pgwake};
use pgwake_testkit::Cluster;

/// `app` on the main server; `reports` on another cluster, another port,
/// another user and password.
fn two_server_config(main: &Cluster, other: &Cluster, port: u16) -> String {
    format!(
        "[listen]\naddr = \"127.0.0.1:{port}\"\nshutdown_grace = \"10s\"\n\
         [server]\nhost = \"127.0.0.1\"\nport = {}\ndbname = \"app\"\nsslmode = \"disable\"\nconnect_timeout = \"3s\"\n\
         [server.auth]\nuser = \"app\"\npassword = \"app-secret\"\n\
         [pool]\nsize = 3\nmin_idle = 1\n\
         [databases.app]\n\
         [databases.reports]\ndbname = \"reports\"\nclient_users = [\"app\"]\n\
         [databases.reports.server]\nport = {}\n\
         [databases.reports.server.auth]\nuser = \"reporter\"\npassword = \"reporter-secret\"\n",
        main.port(),
        other.port()
    )
}

async fn one_value(url: &str, sql: &str) -> Result<String, tokio_postgres::Error> {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls).await?;
    tokio::spawn(conn);
    let rows = client.simple_query(sql).await?;
    Ok(rows
        .iter()
        .find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_owned),
            _ => None,
        })
        .unwrap_or_default())
}

#[tokio::test]
async fn two_databases_on_two_servers_are_served_at_once_and_one_going_down_leaves_the_other() {
    let main = cluster();
    let other = Cluster::builder()
        .auth(pgwake_testkit::HostAuth::Scram)
        .user("reporter", "reporter-secret")
        .database("reports", "reporter")
        .start()
        .expect("start the second cluster");
    let port = pgwake_testkit::free_port();
    let pg = Pgwake::start_config(&two_server_config(&main, &other, port), port, &[]);

    // Each database answers from its own server, as its own user.
    let who = "select current_user || '@' || current_setting('port')";
    let app = one_value(&pg.url("app"), who).await.expect("app");
    assert_eq!(app, format!("app@{}", main.port()));
    let reports = one_value(&pg.url("reports"), who).await.expect("reports");
    assert_eq!(reports, format!("reporter@{}", other.port()));

    // SHOW POOLS lists both pools, each with its server user.
    let pools = pg.psql(&main, "pgwake", "SHOW POOLS").expect("SHOW POOLS");
    assert!(
        pools.contains("app") && pools.contains("reports"),
        "{pools}"
    );
    assert!(pools.contains("reporter"), "{pools}");
    // SHOW DATABASES names each entry's own server.
    let dbs = pg
        .psql(&main, "pgwake", "SHOW DATABASES")
        .expect("SHOW DATABASES");
    assert!(dbs.contains(&other.port().to_string()), "{dbs}");

    // The second server stops: its clients get a connection error...
    other.stop_immediate().expect("stop the second cluster");
    wait_until(
        "the reports server to refuse",
        Duration::from_secs(20),
        || std::net::TcpStream::connect(("127.0.0.1", other.port())).is_err(),
    );
    let mut refused = None;
    for _ in 0..3 {
        match one_value(&pg.url("reports"), "select 1").await {
            Err(e) => {
                refused = Some(e);
                break;
            }
            // A pooled connection may still have answered before it noticed.
            Ok(_) => continue,
        }
    }
    let refused = refused.expect("reports fails once its server is down");
    assert!(
        code(&refused).starts_with("08") || code(&refused) == "57P01",
        "a connection error for reports: {refused}"
    );
    // ...and the first database's clients go on, on their own server.
    for _ in 0..20 {
        let v = one_value(&pg.url("app"), "select 41 + 1")
            .await
            .expect("app is unaffected");
        assert_eq!(v, "42");
    }

    // Back up: reports is served again.
    other.start_again().expect("start the second cluster again");
    // The event: pgwake serves it again (a client retrying, as apps do).
    let url = pg.url("reports");
    let served = poll_until_async(Duration::from_secs(20), || async {
        one_value(&url, "select current_user").await.ok().as_deref() == Some("reporter")
    })
    .await;
    assert!(
        served,
        "reports is served again once its server is back\n{}",
        pg.logs()
    );
}

#[test]
fn a_database_server_with_a_bad_key_is_refused_naming_it() {
    let toml = "[server]\nhost = \"127.0.0.1\"\n[server.auth]\nuser = \"app\"\npassword = \"x\"\n\
                [databases.reports]\n[databases.reports.server]\nport = \"five\"\n\
                [databases.other]\n[databases.other.server.auth]\nmethod = \"password_file\"\n";
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("pgwake.toml");
    std::fs::write(&path, toml).expect("write");
    let (status, _out, err) =
        common::run_pgwake(&["check", "--config", path.to_str().unwrap()], &[]);
    assert_eq!(status, 2, "{err}");
    assert!(err.contains("databases.reports.server.port"), "{err}");
    assert!(
        err.contains("databases.other.server.auth.path is required"),
        "{err}"
    );
}

#[tokio::test]
async fn a_server_of_its_own_added_by_reload_is_refused_until_restart_not_sent_to_the_main_one() {
    let main = cluster();
    let port = pgwake_testkit::free_port();
    let base = common::config_for(&main, port, "size = 2");
    let pg = Pgwake::start_config(&format!("{base}[databases.app]\n"), port, &[]);
    assert_eq!(
        one_value(&pg.url("app"), "select 1").await.expect("app"),
        "1"
    );
    // A new entry with a server of its own arrives by reload.
    pg.rewrite_config(&format!(
        "{base}[databases.app]\n[databases.reports]\nclient_users = [\"app\"]\n\
         [databases.reports.server]\nport = 1\n"
    ));
    pg.signal("HUP");
    pg.wait_for_log("only applied at restart", Duration::from_secs(10));
    let e = one_value(&pg.url("reports"), "select 1")
        .await
        .expect_err("not served by the main server");
    assert_eq!(code(&e), "F0000", "{e:?}");
    let message = e
        .as_db_error()
        .map(|d| d.message().to_owned())
        .unwrap_or_default();
    assert!(message.contains("restart pgwake"), "{message}");
    // The entry already served goes on.
    assert_eq!(
        one_value(&pg.url("app"), "select 1").await.expect("app"),
        "1"
    );
}
