use pgwake_testkit::{connect, connect_url, free_port, Cluster, HostAuth};
use tokio_postgres::error::SqlState;

fn sqlstate(err: &anyhow::Error) -> Option<SqlState> {
    err.downcast_ref::<tokio_postgres::Error>()
        .and_then(|e| e.code())
        .cloned()
}

#[test]
fn starts_runs_sql_and_cleans_up_on_drop() {
    let cluster = Cluster::builder().start().unwrap();
    assert!(cluster.is_running());
    assert_eq!(cluster.host(), "127.0.0.1");
    assert_eq!(cluster.superuser(), "postgres");
    assert!(
        cluster.port() < 32768,
        "port {} in ephemeral range",
        cluster.port()
    );
    assert!(cluster.socket_dir().exists());
    assert!(cluster.bin().path("psql").is_file());

    assert_eq!(cluster.psql("postgres", "select 1").unwrap(), "1");
    assert_eq!(
        cluster.psql("postgres", "show port").unwrap(),
        cluster.port().to_string()
    );
    assert_eq!(cluster.psql("postgres", "show fsync").unwrap(), "off");
    // The default role and database exist, and the database belongs to it.
    assert_eq!(
        cluster
            .psql(
                "postgres",
                "select r.rolcanlogin and r.rolcreatedb from pg_roles r where r.rolname = 'app'"
            )
            .unwrap(),
        "t"
    );
    assert_eq!(
        cluster
            .psql(
                "postgres",
                "select pg_get_userbyid(datdba) from pg_database where datname = 'app'"
            )
            .unwrap(),
        "app"
    );
    // SQL errors are reported, not swallowed.
    let err = cluster
        .psql("postgres", "select * from no_such_table")
        .unwrap_err();
    assert!(format!("{err:#}").contains("no_such_table"), "{err:#}");

    let tmp = cluster.data_dir().parent().unwrap().to_path_buf();
    drop(cluster);
    assert!(!tmp.exists(), "{} left behind", tmp.display());
}

#[test]
fn builder_settings_users_and_databases() {
    let port = free_port();
    let cluster = Cluster::builder()
        .port(port)
        .setting("cluster_name", "it's testkit")
        .setting("max_connections", "50")
        .user("alice", "pw'1")
        .user("bob", "pw2")
        .database("shop", "alice")
        .database("bobdb", "bob")
        .start()
        .unwrap();
    assert_eq!(cluster.port(), port);
    assert_eq!(
        cluster.psql("postgres", "show cluster_name").unwrap(),
        "it's testkit"
    );
    assert_eq!(
        cluster.psql("postgres", "show max_connections").unwrap(),
        "50"
    );
    assert_eq!(
        cluster
            .psql(
                "postgres",
                "select string_agg(datname || ':' || pg_get_userbyid(datdba), ',' order by datname) \
                 from pg_database where not datistemplate and datname <> 'postgres'"
            )
            .unwrap(),
        "bobdb:bob,shop:alice"
    );
    // No default "app" role when roles are given.
    assert_eq!(
        cluster
            .psql(
                "postgres",
                "select count(*) from pg_roles where rolname = 'app'"
            )
            .unwrap(),
        "0"
    );
}

#[tokio::test]
async fn scram_accepts_right_password_and_rejects_wrong_one() {
    let cluster = Cluster::builder().auth(HostAuth::Scram).start().unwrap();
    let verifier = cluster
        .psql(
            "postgres",
            "select rolpassword from pg_authid where rolname = 'app'",
        )
        .unwrap();
    assert!(verifier.starts_with("SCRAM-SHA-256$"), "{verifier}");

    let client = connect(
        cluster.host(),
        cluster.port(),
        "app",
        Some("app-secret"),
        "app",
    )
    .await
    .unwrap();
    let row = client
        .query_one("select current_user::text, current_database()::text", &[])
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "app");
    assert_eq!(row.get::<_, String>(1), "app");

    let url = cluster.url("app", Some("app-secret"), "app");
    assert_eq!(
        url,
        format!("postgres://app:app-secret@127.0.0.1:{}/app", cluster.port())
    );
    let client = connect_url(&url).await.unwrap();
    let one: i32 = client.query_one("select 1", &[]).await.unwrap().get(0);
    assert_eq!(one, 1);

    let err = connect(cluster.host(), cluster.port(), "app", Some("wrong"), "app")
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&err), Some(SqlState::INVALID_PASSWORD), "{err:#}");

    let err = connect_url(&cluster.url("app", Some("wrong"), "app"))
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&err), Some(SqlState::INVALID_PASSWORD), "{err:#}");

    // The superuser stays trusted so the harness itself never needs a password.
    let client = connect(cluster.host(), cluster.port(), "postgres", None, "postgres")
        .await
        .unwrap();
    let row = client
        .query_one("select current_user::text", &[])
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "postgres");
}

#[tokio::test]
async fn md5_stores_md5_verifier_and_authenticates() {
    let cluster = Cluster::builder().auth(HostAuth::Md5).start().unwrap();
    let verifier = cluster
        .psql(
            "postgres",
            "select rolpassword from pg_authid where rolname = 'app'",
        )
        .unwrap();
    assert!(verifier.starts_with("md5"), "{verifier}");

    connect_url(&cluster.url("app", Some("app-secret"), "app"))
        .await
        .unwrap();
    let err = connect_url(&cluster.url("app", Some("nope"), "app"))
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&err), Some(SqlState::INVALID_PASSWORD), "{err:#}");
}

#[tokio::test]
async fn trust_needs_no_password() {
    let cluster = Cluster::builder().start().unwrap();
    let client = connect_url(&cluster.url("app", None, "app")).await.unwrap();
    let row = client
        .query_one("select current_user::text", &[])
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "app");
}

#[tokio::test]
async fn stop_and_start_again_on_same_port() {
    let cluster = Cluster::builder().auth(HostAuth::Password).start().unwrap();
    let port = cluster.port();
    let url = cluster.url("app", Some("app-secret"), "app");

    let client = connect_url(&url).await.unwrap();
    client
        .batch_execute("create table t (v int); insert into t values (42)")
        .await
        .unwrap();

    cluster.stop().unwrap();
    assert!(!cluster.is_running());
    // The old session is gone and nothing listens on the port any more.
    assert!(client.query_one("select 1", &[]).await.is_err());
    assert!(connect_url(&url).await.is_err());
    assert!(cluster.psql("postgres", "select 1").is_err());

    cluster.start_again().unwrap();
    assert!(cluster.is_running());
    assert_eq!(cluster.port(), port);
    let client = connect_url(&url).await.unwrap();
    let v: i32 = client
        .query_one("select v from t", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(v, 42, "data survives a stop and start");
    assert_eq!(
        cluster.psql("postgres", "show port").unwrap(),
        port.to_string()
    );
}

#[tokio::test]
async fn stop_immediate_and_restart() {
    let cluster = Cluster::builder().start().unwrap();
    let url = cluster.url("app", None, "app");

    let client = connect_url(&url).await.unwrap();
    let pid_before: i32 = client
        .query_one("select pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);

    cluster.restart().unwrap();
    assert!(cluster.is_running());
    assert!(client.query_one("select 1", &[]).await.is_err());
    let client = connect_url(&url).await.unwrap();
    let pid_after: i32 = client
        .query_one("select pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    assert_ne!(pid_before, pid_after);

    cluster.stop_immediate().unwrap();
    assert!(!cluster.is_running());
    assert!(connect_url(&url).await.is_err());
    // Stopping a stopped server is an error, restarting it is not.
    assert!(cluster.stop().is_err());
    cluster.restart().unwrap();
    connect_url(&url).await.unwrap();
}

#[test]
fn start_on_taken_port_fails_with_server_log() {
    let port = free_port();
    let _holder = std::net::TcpListener::bind(("127.0.0.1", port)).unwrap();
    let err = Cluster::builder().port(port).start().unwrap_err();
    let msg = format!("{err:#}");
    assert!(msg.contains("pg_ctl start failed"), "{msg}");
    assert!(msg.contains("could not bind"), "{msg}");
}
