//! A password or token never crosses the network unencrypted: against a
//! server that declines TLS and asks for the password in cleartext (a
//! misconfigured server, or someone on the path downgrading the
//! connection), pgwake under its default settings gives the client a clear
//! 08001 naming the setting and writes no secret to the socket. With the
//! opt-out key it logs in, and the secret is seen on the wire.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{code, http_get, metric, Pgwake};
use pgwake_testkit::azure_identity::FakeIdentity;
use pgwake_testkit::{Cluster, HostAuth};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A TCP relay in front of the server that keeps every byte pgwake sends.
struct Wire {
    port: u16,
    seen: Arc<Mutex<Vec<u8>>>,
}

impl Wire {
    async fn start(server_port: u16) -> Wire {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let record = seen.clone();
        tokio::spawn(async move {
            while let Ok((mut from_pgwake, _)) = listener.accept().await {
                let record = record.clone();
                tokio::spawn(async move {
                    let Ok(to_server) = TcpStream::connect(("127.0.0.1", server_port)).await else {
                        return;
                    };
                    let (mut server_read, mut server_write) = to_server.into_split();
                    let (mut pgwake_read, mut pgwake_write) = from_pgwake.split();
                    let up = async {
                        let mut buf = [0u8; 4096];
                        while let Ok(n) = pgwake_read.read(&mut buf).await {
                            if n == 0 {
                                break;
                            }
                            record.lock().unwrap().extend_from_slice(&buf[..n]);
                            if server_write.write_all(&buf[..n]).await.is_err() {
                                break;
                            }
                        }
                    };
                    let down = tokio::io::copy(&mut server_read, &mut pgwake_write);
                    tokio::select! { _ = up => {}, _ = down => {} }
                });
            }
        });
        Wire { port, seen }
    }

    fn carried(&self, secret: &str) -> bool {
        let seen = self.seen.lock().unwrap();
        seen.windows(secret.len()).any(|w| w == secret.as_bytes())
    }

    fn bytes(&self) -> usize {
        self.seen.lock().unwrap().len()
    }
}

/// A server without TLS that asks for passwords in cleartext.
fn cleartext_cluster() -> Cluster {
    Cluster::builder()
        .auth(HostAuth::Password)
        .user("app", "app-secret")
        .database("app", "app")
        .start()
        .expect("start cluster")
}

/// pgwake for `wire` with the `[server]` and `[server.auth]` lines given.
fn pgwake_for(wire: &Wire, server: &str, auth: &str, env: &[(&str, &str)]) -> Pgwake {
    let port = pgwake_testkit::free_port();
    let toml = format!(
        "[listen]\naddr = \"127.0.0.1:{port}\"\n\
         [server]\nhost = \"127.0.0.1\"\nport = {}\ndbname = \"app\"\nconnect_timeout = \"3s\"\n{server}\n\
         [server.auth]\nuser = \"app\"\n{auth}\n\
         [pool]\nmin_idle = 0\n",
        wire.port
    );
    Pgwake::start_config(&toml, port, env)
}

/// The SQLSTATE and message a client gets logging in through `pg`.
async fn login_error(pg: &Pgwake) -> (String, String) {
    let e = pgwake_testkit::connect("127.0.0.1", pg.port, "app", None, "app")
        .await
        .err()
        .unwrap_or_else(|| panic!("logged in, but should not have:\n{}", pg.logs()));
    let e = e.downcast::<tokio_postgres::Error>().unwrap();
    let m = e
        .as_db_error()
        .map(|d| d.message().to_owned())
        .unwrap_or_default();
    (code(&e), m)
}

fn downgrades(pg: &Pgwake) -> f64 {
    let (_, m) = http_get(pg.admin_port, "/metrics", Duration::from_secs(10));
    metric(&m, "pgwake_server_connect_errors_total{kind=\"downgrade\"}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_from_a_command_is_never_sent_unencrypted() {
    let cluster = cleartext_cluster();
    let command = "method = \"command\"\ncommand = \"echo app-secret\"";

    // The default sslmode for a token is verify-full: a server that
    // declines TLS gets no login at all.
    let wire = Wire::start(cluster.port()).await;
    let pg = pgwake_for(&wire, "", command, &[]);
    let (state, message) = login_error(&pg).await;
    assert_eq!(state, "08001", "{message}");
    assert!(message.contains("server.sslmode"), "{message}");
    assert!(wire.bytes() > 0, "pgwake reached the relay");
    assert!(!wire.carried("app-secret"));
    assert!(downgrades(&pg) >= 1.0);
    drop(pg);

    // With sslmode = prefer, the server's cleartext request over plaintext
    // is refused, naming the key that would allow it.
    let wire = Wire::start(cluster.port()).await;
    let pg = pgwake_for(&wire, "sslmode = \"prefer\"", command, &[]);
    let (state, message) = login_error(&pg).await;
    assert_eq!(state, "08001", "{message}");
    assert!(message.contains("allow_cleartext_without_tls"), "{message}");
    assert!(wire.bytes() > 0, "pgwake reached the relay");
    assert!(!wire.carried("app-secret"));
    assert!(downgrades(&pg) >= 1.0);
    drop(pg);

    // Opted out: it logs in, and the wire shows what was at stake.
    let wire = Wire::start(cluster.port()).await;
    let opt_out = format!("{command}\nallow_cleartext_without_tls = true");
    let pg = pgwake_for(&wire, "sslmode = \"prefer\"", &opt_out, &[]);
    let c = pg.client().await;
    c.simple_query("select 1").await.unwrap();
    assert!(wire.carried("app-secret"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_entra_token_is_never_sent_unencrypted() {
    let cluster = cleartext_cluster();
    let fake = FakeIdentity::start(&cluster, "app", Duration::from_secs(3600))
        .await
        .unwrap();
    let env = fake.env();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let managed = "method = \"azure_managed_identity\"";
    for server in ["", "sslmode = \"prefer\""] {
        let wire = Wire::start(cluster.port()).await;
        let pg = pgwake_for(&wire, server, managed, &env);
        let (state, message) = login_error(&pg).await;
        assert_eq!(state, "08001", "{server}: {message}");
        assert!(wire.bytes() > 0, "pgwake reached the relay");
        let issued = fake.issued();
        assert!(!issued.is_empty(), "pgwake fetched a token");
        for token in &issued {
            assert!(
                !wire.carried(token),
                "{server}: a token crossed in the clear"
            );
        }
    }
    // Opted out, the token goes (and the fake server accepts it).
    let wire = Wire::start(cluster.port()).await;
    let opt_out = format!("{managed}\nallow_cleartext_without_tls = true");
    let pg = pgwake_for(&wire, "sslmode = \"prefer\"", &opt_out, &env);
    let c = pg.client().await;
    c.simple_query("select 1").await.unwrap();
    assert!(fake.issued().iter().any(|t| wire.carried(t)));
}
