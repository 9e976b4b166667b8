//! The keepalive and user-timeout settings reach the server sockets: read
//! back from the kernel with getsockopt on a real connection.

use std::time::Duration;

use pgwake_config::SslMode;
use pgwake_credentials::Secret;
use pgwake_proxy::server::{ServerConn, Target};

#[tokio::test]
async fn keepalive_and_user_timeout_are_set_on_server_sockets() {
    let cluster = pgwake_testkit::Cluster::builder()
        .auth(pgwake_testkit::HostAuth::Scram)
        .user("app", "app-secret")
        .start()
        .unwrap();
    let target = Target {
        host: "127.0.0.1".into(),
        port: cluster.port(),
        sslmode: SslMode::Disable,
        connect_timeout: Duration::from_secs(5),
        keepalive_idle: Duration::from_secs(17),
        keepalive_interval: Duration::from_secs(3),
        keepalive_count: 4,
        user_timeout: Duration::from_millis(12_500),
        tls: None,
        allow_cleartext_without_tls: false,
    };
    let conn = ServerConn::connect(&target, "app", "app", Some(Secret::new("app-secret")))
        .await
        .unwrap();
    let (idle, interval, count, user_timeout) = conn.tcp_options().unwrap();
    assert_eq!(idle, Duration::from_secs(17));
    assert_eq!(interval, Duration::from_secs(3));
    assert_eq!(count, 4);
    assert_eq!(user_timeout, Some(Duration::from_millis(12_500)));
    assert!(!conn.is_tls());
    conn.terminate().await;
}
