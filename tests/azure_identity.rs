//! Entra ID tokens from a managed identity endpoint: refreshed ahead of
//! expiry, kept while the endpoint fails, reported clearly once expired, and
//! never printed. The fake endpoint speaks the App Service protocol and makes
//! each token the role's password until it expires, so a stale token really
//! fails at the server.

mod common;

use std::future::ready;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{app_backends, cluster, code, Pgwake};
use pgwake_testkit::azure_identity::{Failure, FakeIdentity};
use pgwake_testkit::Cluster;

fn config(cluster: &Cluster, port: u16, pool: &str, auth: &str) -> String {
    format!(
        "[listen]\naddr = \"127.0.0.1:{port}\"\n\
         [server]\nhost = \"127.0.0.1\"\nport = {}\ndbname = \"app\"\nsslmode = \"disable\"\nconnect_timeout = \"5s\"\n\
         [server.auth]\nmethod = \"azure_managed_identity\"\nuser = \"app\"\n{auth}\n\
         [pool]\n{pool}\n",
        cluster.port()
    )
}

fn start(fake: &FakeIdentity, toml: &str, port: u16, level: &str) -> Pgwake {
    let env = fake.env();
    let mut env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    env.push(("PGWAKE_LOG_LEVEL", level));
    Pgwake::start_config(toml, port, &env)
}

/// No log line, at any level, holds a token the endpoint issued.
fn assert_no_token_in(text: &str, fake: &FakeIdentity) {
    let issued = fake.issued();
    assert!(!issued.is_empty());
    for t in issued {
        // The random part alone must not appear either.
        let tail = &t[t.len() - 32..];
        assert!(!text.contains(tail), "a token appears in:\n{text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn short_lived_rotating_tokens_cause_no_login_failures() {
    let cluster = cluster();
    let fake = FakeIdentity::start(&cluster, "app", Duration::from_secs(30))
        .await
        .unwrap();
    let port = pgwake_testkit::free_port();
    // Connections are recycled every 3 s, so logins keep happening with
    // whatever token is current.
    let toml = config(
        &cluster,
        port,
        "size = 5\nmin_idle = 2\nmax_lifetime = \"3s\"",
        "",
    );
    let pg = start(&fake, &toml, port, "debug");

    let run_for = Duration::from_secs(90);
    let started = Instant::now();
    let done = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for i in 0..20 {
        let url = pg.url("app");
        let done = done.clone();
        tasks.push(tokio::spawn(async move {
            let mut errors = Vec::new();
            let mut n = 0u64;
            // A new client connection every 50 transactions, too.
            'outer: while started.elapsed() < run_for {
                let c = match pgwake_testkit::connect_url(&url).await {
                    Ok(c) => c,
                    Err(e) => {
                        errors.push(format!("connect: {e:#}"));
                        break;
                    }
                };
                for _ in 0..50 {
                    if started.elapsed() >= run_for || n >= 1_000_000 {
                        break 'outer;
                    }
                    let r = c
                        .simple_query(&format!("begin; select {i}, current_user; commit"))
                        .await;
                    if let Err(e) = r {
                        errors.push(format!("{} {e}", code(&e)));
                        break 'outer;
                    }
                    n += 1;
                    // The load's pace (the scenario): a transaction every
                    // 20 ms per client for the whole run.
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
            done.fetch_add(n, Ordering::Relaxed);
            errors
        }));
    }
    let mut errors = Vec::new();
    for t in tasks {
        errors.extend(t.await.unwrap());
    }
    let logs = pg.logs();
    assert!(
        errors.is_empty(),
        "client errors: {errors:?}\nlogs:\n{logs}"
    );
    let calls = fake.calls();
    assert!(calls >= 3, "the endpoint was called {calls} times");
    assert!(
        done.load(Ordering::Relaxed) > 20 * 100,
        "only {} transactions",
        done.load(Ordering::Relaxed)
    );
    assert!(
        !logs.contains("server refused login"),
        "a login failed:\n{logs}"
    );
    assert_no_token_in(&logs, &fake);
    eprintln!(
        "endpoint calls: {calls}; transactions: {}",
        done.load(Ordering::Relaxed)
    );
}

/// Bound on any one wait for pgwake, the server or the endpoint.
const LIMIT: Duration = Duration::from_secs(30);

async fn try_query(pg: &Pgwake) -> Result<(), (String, String)> {
    common::try_query(&pg.url("app")).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoint_outage_is_survived_then_reported_then_recovered_from() {
    let cluster = cluster();
    let lifetime = Duration::from_secs(16);
    let fake = FakeIdentity::start(&cluster, "app", lifetime)
        .await
        .unwrap();
    let port = pgwake_testkit::free_port();
    let toml = config(
        &cluster,
        port,
        "size = 3\nmin_idle = 1\nmax_lifetime = \"1s\"",
        "fetch_timeout = \"2s\"",
    );
    let pg = start(&fake, &toml, port, "trace");
    try_query(&pg).await.expect("first query");
    let issued_at = Instant::now();
    assert_eq!(fake.calls(), 1);
    // What shows the expiry below, while the token is valid.
    assert_eq!(pg.metric("pgwake_credential_valid"), 1.0);

    // The endpoint fails while the token is still valid: the refresh at
    // ~75 % of the lifetime fails and is retried, and clients notice nothing
    // (connections keep being made, max_lifetime is 1 s). Stop 3 s before
    // expiry so a login never races the server's own expiry.
    fake.fail(Failure::Status(500));
    let mut queries = 0;
    while issued_at.elapsed() < lifetime - Duration::from_secs(3) {
        if let Err(e) = try_query(&pg).await {
            panic!("error while the token was valid: {e:?}\n{}", pg.logs());
        }
        queries += 1;
        // The pace of the queries through the outage (the scenario).
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        fake.calls() >= 2,
        "pgwake tried to refresh ({} calls)",
        fake.calls()
    );
    assert!(queries > 10);

    // Past expiry: pgwake holds no valid token, and once the server
    // connections made with it have retired (max_lifetime is 1 s), a client
    // needs a new one, which fails with the source and the endpoint's error,
    // as a connection failure.
    common::wait_until_async("pgwake to find its token expired", LIMIT, || {
        ready(pg.metric("pgwake_credential_valid") == 0.0)
    })
    .await;
    common::wait_until_async(
        "the connections made with the expired token to retire",
        LIMIT,
        || ready(app_backends(&cluster) == 0),
    )
    .await;
    let (state, message) = try_query(&pg).await.expect_err("expired token");
    assert_eq!(state, "08006", "{message}");
    assert!(message.contains("azure_managed_identity"), "{message}");
    assert!(message.contains("HTTP 500"), "{message}");
    assert!(message.contains("failing on purpose"), "{message}");
    assert!(message.contains("expired"), "{message}");
    assert_no_token_in(&message, &fake);

    // An endpoint that does not answer at all: named as such, once pgwake
    // has given up on a fetch from it (fetch_timeout is 2 s).
    fake.fail(Failure::Hang);
    pg.wait_for_log_async("no answer within 2s", LIMIT).await;
    let (state, message) = try_query(&pg).await.expect_err("endpoint hangs");
    assert_eq!(state, "08006", "{message}");
    assert!(message.contains("no answer within 2s"), "{message}");

    // The endpoint recovers: service resumes without a restart.
    fake.fail(Failure::None);
    let recovered = Instant::now();
    let mut last = None;
    for _ in 0..100 {
        match try_query(&pg).await {
            Ok(()) => {
                last = None;
                break;
            }
            Err(e) => last = Some(e),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(last.is_none(), "no recovery: {last:?}\n{}", pg.logs());
    eprintln!("recovered {:?} after the endpoint did", recovered.elapsed());

    // Nothing printed a token, even at trace level.
    let logs = pg.logs();
    assert!(logs.contains("credential source"), "{logs}");
    assert_no_token_in(&logs, &fake);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_command_is_used_and_errors_name_it() {
    let cluster = cluster();
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("token.sh");
    let out = dir.path().join("out.json");
    std::fs::write(&out, "{\"token\": \"app-secret\", \"expires_in\": 3600}\n").unwrap();
    std::fs::write(&script, format!("#!/bin/sh\ncat {}\n", out.display())).unwrap();
    let port = pgwake_testkit::free_port();
    let toml = common::config_for(&cluster, port, "size = 2").replace(
        "password = \"app-secret\"",
        &format!(
            "method = \"command\"\ncommand = \"sh {}\"",
            script.display()
        ),
    );
    let pg = Pgwake::start_config(&toml, port, &[("PGWAKE_LOG_LEVEL", "trace")]);
    try_query(&pg)
        .await
        .expect("query with the command's token");
    let logs = pg.logs();
    assert!(!logs.contains("app-secret"), "{logs}");

    // A failing command: the error names it and its message.
    let port = pgwake_testkit::free_port();
    let toml = common::config_for(&cluster, port, "size = 2").replace(
        "password = \"app-secret\"",
        "method = \"command\"\ncommand = \"echo vault is sealed >&2; exit 2\"",
    );
    let pg = Pgwake::start_config(&toml, port, &[]);
    let (state, message) = try_query(&pg).await.expect_err("command fails");
    assert_eq!(state, "08006", "{message}");
    assert!(
        message.contains("command `echo …`") && message.contains("vault is sealed"),
        "{message}"
    );
}
