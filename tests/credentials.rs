//! The server password from a file: a rotated password is picked up without
//! a restart, and connections made with the old one retire.

mod common;

use std::time::Duration;

use common::{cluster, config_for, Pgwake};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_password_file_is_used_and_old_connections_retire() {
    let cluster = cluster();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("password");
    std::fs::write(&file, "app-secret\n").unwrap();
    let port = pgwake_testkit::free_port();
    let toml = config_for(&cluster, port, "size = 2\nmin_idle = 1").replace(
        "password = \"app-secret\"",
        &format!("method = \"password_file\"\npath = \"{}\"", file.display()),
    );
    let pg = Pgwake::start_config(&toml, port, &[]);
    let c = pg.client().await;
    let before: i32 = c
        .query_one("select pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);

    // Rotate: the server's password first, then the file.
    cluster
        .psql("postgres", "alter role app password 'rotated-secret'")
        .unwrap();
    std::fs::write(&file, "rotated-secret-2\n").unwrap();
    cluster
        .psql("postgres", "alter role app password 'rotated-secret-2'")
        .unwrap();

    // Within a few upkeep ticks the old connection retires; the next query
    // logs in with the new password (bounded wait).
    let mut after = before;
    for _ in 0..50 {
        after = c
            .query_one("select pg_backend_pid()", &[])
            .await
            .unwrap_or_else(|e| panic!("query after rotation failed: {e:?}\n{}", pg.logs()))
            .get(0);
        if after != before {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_ne!(
        after, before,
        "the connection made with the old password retired"
    );
    // A brand-new client works too, and nothing printed the secret.
    pg.client().await.query_one("select 1", &[]).await.unwrap();
    let logs = pg.logs();
    assert!(
        !logs.contains("rotated-secret") && !logs.contains("app-secret"),
        "{logs}"
    );
}
