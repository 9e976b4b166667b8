//! The minimal client against a real cluster: each login method, results,
//! errors, and a connection that stays usable after an error.

use pgwake_localpg::{Client, ClientError, Cluster, Error, HostAuth};

async fn login(cluster: &Cluster, password: Option<&str>) -> Result<Client, ClientError> {
    Client::connect(cluster.host(), cluster.port(), "app", password, "app").await
}

#[tokio::test]
async fn logs_in_with_every_method_and_refuses_a_wrong_password() {
    for auth in [
        HostAuth::Trust,
        HostAuth::Password,
        HostAuth::Md5,
        HostAuth::Scram,
    ] {
        let cluster = Cluster::builder().auth(auth).start().unwrap();
        let mut client = login(&cluster, Some("app-secret")).await.unwrap();
        let rows = client
            .simple_query("select current_user, current_database()")
            .await
            .unwrap();
        assert_eq!(rows.len(), 1, "{auth:?}");
        assert_eq!(rows[0].get(0), Some("app"), "{auth:?}");
        assert_eq!(rows[0].get(1), Some("app"), "{auth:?}");
        if auth == HostAuth::Trust {
            continue;
        }
        let err = login(&cluster, Some("wrong")).await.unwrap_err();
        assert_eq!(err.code(), Some("28P01"), "{auth:?}: {err}");
        let err = login(&cluster, None).await.unwrap_err();
        assert!(matches!(err, ClientError::NoPassword), "{auth:?}: {err}");
    }
}

#[tokio::test]
async fn reads_rows_nulls_and_several_statements() {
    let cluster = Cluster::builder().start().unwrap();
    let mut client = login(&cluster, None).await.unwrap();
    client
        .batch_execute("create table t (a int, b text); insert into t values (1, 'x'), (2, null)")
        .await
        .unwrap();
    let rows = client
        .simple_query("select a, b from t order by a")
        .await
        .unwrap();
    assert_eq!(rows.len(), 2);
    assert_eq!((rows[0].get(0), rows[0].get(1)), (Some("1"), Some("x")));
    assert_eq!((rows[1].get(0), rows[1].get(1)), (Some("2"), None));
    assert_eq!(rows[1].len(), 2);
    // Rows of every statement in one Query, in order.
    let rows = client.simple_query("select 'é'; select 2").await.unwrap();
    assert_eq!(
        rows.iter().map(|r| r.get(0)).collect::<Vec<_>>(),
        [Some("é"), Some("2")]
    );
    assert!(client.simple_query("").await.unwrap().is_empty());
}

#[tokio::test]
async fn an_error_is_reported_and_the_connection_stays_usable() {
    let cluster = Cluster::builder().start().unwrap();
    let mut client = login(&cluster, None).await.unwrap();
    let err = client
        .simple_query("select * from no_such_table")
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some("42P01"), "{err}");
    assert!(err.to_string().contains("no_such_table"), "{err}");
    // A failed transaction is rolled back and the next query works.
    client.batch_execute("begin").await.unwrap();
    assert!(client.batch_execute("select 1/0").await.is_err());
    client.batch_execute("rollback").await.unwrap();
    let rows = client.simple_query("select 1").await.unwrap();
    assert_eq!(rows[0].get(0), Some("1"));
}

#[tokio::test]
async fn a_stopped_server_is_an_error_not_a_hang() {
    let cluster = Cluster::builder().start().unwrap();
    let mut client = login(&cluster, None).await.unwrap();
    cluster.stop().unwrap();
    assert!(client.simple_query("select 1").await.is_err());
    let err = login(&cluster, None).await.unwrap_err();
    assert!(matches!(err, ClientError::Connect { .. }), "{err}");
}

#[test]
fn a_taken_port_is_a_start_error_with_the_server_log() {
    // The listener holds its port from the moment it is chosen, so nothing
    // else can take it between choosing and binding.
    let holder = std::net::TcpListener::bind(("127.0.0.1", 0)).unwrap();
    let port = holder.local_addr().unwrap().port();
    let err = Cluster::builder().port(port).start().unwrap_err();
    assert!(matches!(err, Error::Start { .. }), "{err}");
    let msg = err.to_string();
    assert!(msg.contains("pg_ctl start failed"), "{msg}");
    assert!(msg.contains("could not bind"), "{msg}");
}
