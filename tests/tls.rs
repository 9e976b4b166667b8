//! TLS to the server: each `sslmode` behaves as libpq's does, against a real
//! PostgreSQL with `ssl = on` and a certificate from a test CA.

mod common;

use common::{code, config_for, pki, tls_cluster, Pgwake};

/// pgwake in front of `cluster` with the given sslmode, host and root cert.
fn pgwake(
    cluster: &pgwake_testkit::Cluster,
    mode: &str,
    host: &str,
    rootcert: Option<&std::path::Path>,
) -> Pgwake {
    let port = pgwake_testkit::free_port();
    let mut toml = config_for(cluster, port, "min_idle = 0")
        .replace("sslmode = \"disable\"", &format!("sslmode = \"{mode}\""))
        .replace("host = \"127.0.0.1\"", &format!("host = \"{host}\""));
    if let Some(path) = rootcert {
        toml = toml.replace(
            "[server]\n",
            &format!("[server]\nsslrootcert = \"{}\"\n", path.display()),
        );
    }
    Pgwake::start_config(&toml, port, &[])
}

/// Whether the server connection serving a query through pgwake is encrypted.
async fn served_over_tls(pg: &Pgwake) -> Result<bool, tokio_postgres::Error> {
    let c = match pgwake_testkit::connect("127.0.0.1", pg.port, "app", None, "app").await {
        Ok(c) => c,
        Err(e) => {
            return Err(e
                .downcast::<tokio_postgres::Error>()
                .expect("postgres error"))
        }
    };
    let row = c
        .query_one(
            "select ssl from pg_stat_ssl where pid = pg_backend_pid()",
            &[],
        )
        .await?;
    Ok(row.get(0))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sslmodes_behave_like_libpq() {
    let pki = pki();
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, &pki.ca_pem).unwrap();
    let other = pki_other_ca(dir.path());
    let cluster = tls_cluster(&pki);

    for mode in ["prefer", "require"] {
        let pg = pgwake(&cluster, mode, "127.0.0.1", None);
        assert!(
            served_over_tls(&pg).await.unwrap(),
            "{mode} encrypts\n{}",
            pg.logs()
        );
    }
    let pg = pgwake(&cluster, "verify-full", "localhost", Some(&ca));
    assert!(
        served_over_tls(&pg).await.unwrap(),
        "verify-full with the right name\n{}",
        pg.logs()
    );
    let pg = pgwake(&cluster, "verify-ca", "127.0.0.1", Some(&ca));
    assert!(
        served_over_tls(&pg).await.unwrap(),
        "verify-ca ignores the name\n{}",
        pg.logs()
    );

    // verify-full refuses a certificate that does not name the host.
    let pg = pgwake(&cluster, "verify-full", "127.0.0.1", Some(&ca));
    let e = served_over_tls(&pg).await.unwrap_err();
    assert_eq!(code(&e), "08001", "{e}");
    let msg = e.as_db_error().unwrap().message().to_owned();
    assert!(
        msg.contains("TLS") && msg.contains("not valid for name \"127.0.0.1\""),
        "{msg}"
    );
    // verify-ca and verify-full refuse a certificate from an untrusted CA.
    for mode in ["verify-ca", "verify-full"] {
        let pg = pgwake(&cluster, mode, "localhost", Some(&other));
        let e = served_over_tls(&pg).await.unwrap_err();
        let msg = e.as_db_error().unwrap().message().to_owned();
        assert!(msg.contains("invalid peer certificate"), "{mode}: {msg}");
        assert!(!msg.contains("not valid for name"), "{mode}: {msg}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_without_tls() {
    let cluster = common::cluster();
    let pg = pgwake(&cluster, "prefer", "127.0.0.1", None);
    assert!(
        !served_over_tls(&pg).await.unwrap(),
        "prefer falls back to plaintext"
    );
    let pg = pgwake(&cluster, "require", "127.0.0.1", None);
    let e = served_over_tls(&pg).await.unwrap_err();
    assert_eq!(code(&e), "08001", "{e}");
    let msg = e.as_db_error().unwrap().message().to_owned();
    assert!(msg.contains("does not accept"), "{msg}");
}

/// The PEM of an unrelated CA, written next to the test's files.
fn pki_other_ca(dir: &std::path::Path) -> std::path::PathBuf {
    let path = dir.join("other-ca.pem");
    std::fs::write(&path, pki().ca_pem).unwrap();
    path
}
