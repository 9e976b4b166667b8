//! Waking a stopped server when clients arrive, and stopping it when idle,
//! through a fake Azure Resource Manager endpoint (driving a real cluster)
//! and through shell commands.

mod common;

use std::future::ready;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{cluster, code, poll_until_async, wait_until_async, Pgwake};
use pgwake_testkit::azure_arm::{FakeArm, RESOURCE_ID};
use pgwake_testkit::azure_identity::FakeIdentity;
use pgwake_testkit::Cluster;

/// pgwake in front of `cluster`, with `[lifecycle]` lines `lifecycle`.
fn config(cluster: &Cluster, port: u16, lifecycle: &str) -> String {
    format!(
        "{}[lifecycle]\n{lifecycle}\n",
        common::config_for(cluster, port, "size = 5\nmin_idle = 1")
    )
}

fn azure_lifecycle(arm: &FakeArm, extra: &str) -> String {
    format!(
        "provider = \"azure\"\nresource_id = \"{RESOURCE_ID}\"\narm_endpoint = \"{}\"\n{extra}",
        arm.endpoint()
    )
}

/// Starts pgwake with the fake identity endpoint's environment (ARM tokens).
fn start(identity: &FakeIdentity, toml: &str, port: u16) -> Pgwake {
    let env = identity.env();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    Pgwake::start_config(toml, port, &env)
}

async fn query(pg: &Pgwake) -> Result<(), (String, String)> {
    common::try_query(&pg.url("app")).await
}

/// A cluster (stopped if `stopped`), an identity endpoint for ARM tokens,
/// and a fake ARM endpoint in front of the cluster.
async fn azure_setup(stopped: bool) -> (Arc<Cluster>, FakeIdentity, FakeArm) {
    let cluster = Arc::new(cluster());
    let identity = FakeIdentity::start(&cluster, "app", Duration::from_secs(3600))
        .await
        .unwrap();
    if stopped {
        cluster.stop().unwrap();
    }
    let arm = FakeArm::start(cluster.clone()).await.unwrap();
    assert_eq!(arm.state(), if stopped { "Stopped" } else { "Ready" });
    (cluster, identity, arm)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_clients_wake_a_stopped_server_with_one_start() {
    let (cluster, identity, arm) = azure_setup(true).await;
    arm.set_start_delay(Duration::from_secs(3));
    let port = pgwake_testkit::free_port();
    let toml = config(
        &cluster,
        port,
        &azure_lifecycle(&arm, "wake_timeout = \"60s\""),
    );
    let pg = start(&identity, &toml, port);

    let mut clients = Vec::new();
    for _ in 0..19 {
        let url = pg.url("app");
        clients.push(tokio::spawn(async move {
            let c = pgwake_testkit::connect_url(&url).await?;
            c.simple_query("select 1").await?;
            anyhow::Ok(())
        }));
    }
    // The twentieth is psql, which shows the notices people see.
    let psql = {
        let bin = cluster.bin().path("psql");
        let url = pg.url("app");
        tokio::task::spawn_blocking(move || {
            std::process::Command::new(bin)
                .args(["-X", "-A", "-t", "-c", "select 42", &url])
                .output()
                .unwrap()
        })
    };
    for c in clients {
        c.await
            .unwrap()
            .unwrap_or_else(|e| panic!("{e:#}\n{}", pg.logs()));
    }
    let out = psql.await.unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "42",
        "{stderr}"
    );
    assert!(
        stderr.contains("NOTICE:  waking the database server, waited"),
        "{stderr}"
    );
    assert_eq!(arm.starts(), 1, "exactly one start request");
    assert_eq!(arm.state(), "Ready");
    let logs = pg.logs();
    assert!(logs.contains("waking the database server"), "{logs}");
    assert!(logs.contains("database server is awake after"), "{logs}");
    assert!(
        logs.contains("database app user app"),
        "the trigger is named: {logs}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_wake_gives_57p03_after_wake_timeout_then_serves() {
    let (cluster, identity, arm) = azure_setup(true).await;
    arm.set_start_delay(Duration::from_secs(8));
    let port = pgwake_testkit::free_port();
    let toml = config(
        &cluster,
        port,
        &azure_lifecycle(&arm, "wake_timeout = \"3s\""),
    );
    let pg = start(&identity, &toml, port);

    let mut clients = Vec::new();
    for _ in 0..8 {
        let pg_url = pg.url("app");
        clients.push(tokio::spawn(async move {
            let began = Instant::now();
            let r = tokio_postgres::connect(&pg_url, tokio_postgres::NoTls).await;
            (began.elapsed(), r.err())
        }));
    }
    let mut waited = Vec::new();
    for c in clients {
        let (took, err) = c.await.unwrap();
        let e = err.expect("no server within wake_timeout");
        let db = e.as_db_error().unwrap_or_else(|| panic!("{e}"));
        assert_eq!(db.code().code(), "57P03", "{db:?}");
        assert!(db.hint().unwrap_or("").contains("retry"), "{db:?}");
        // Each client waited for the wake (a late answer is fine; an early
        // one would mean it did not wait).
        assert!(
            took >= Duration::from_millis(2500),
            "answered after {took:?}"
        );
        waited.push(took);
    }
    // They were answered by the timeout, not by the server coming up.
    assert_eq!(arm.state(), "Starting", "the server was still starting");
    eprintln!("clients waited {waited:?} (wake_timeout 3 s)");
    assert_eq!(arm.starts(), 1);
    // The wake went on; once the server is up, clients are served.
    wait_until_async("the server to be Ready", Duration::from_secs(60), || {
        ready(arm.state() == "Ready")
    })
    .await;
    query(&pg).await.unwrap();
    assert_eq!(arm.starts(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_stop_waits_for_outside_sessions_and_a_new_client_wakes_it() {
    let (cluster, identity, arm) = azure_setup(false).await;
    let port = pgwake_testkit::free_port();
    // At debug level pgwake logs each idle check that finds the server busy.
    let toml = config(
        &cluster,
        port,
        &azure_lifecycle(&arm, "idle_stop_after = \"5s\"\nstate_cache_ttl = \"1s\""),
    ) + "[log]\nlevel = \"debug\"\n";
    let pg = start(&identity, &toml, port);
    query(&pg).await.unwrap();

    // A session from outside pgwake, idle in a transaction.
    let direct = pgwake_testkit::connect(
        "127.0.0.1",
        cluster.port(),
        "app",
        Some("app-secret"),
        "app",
    )
    .await
    .unwrap();
    direct.batch_execute("begin; select 1").await.unwrap();
    // Once nobody used pgwake for 5 s it asks the server, which has the
    // session: no stop.
    pg.wait_for_log_async(
        "idle stop: the server has other client sessions; not stopping",
        Duration::from_secs(30),
    )
    .await;
    assert_eq!(
        arm.stops(),
        0,
        "stopped under an open transaction:\n{}",
        pg.logs()
    );
    assert!(cluster.is_running());

    // It ends: the server is stopped once nobody used it for 5 s.
    direct.batch_execute("commit").await.unwrap();
    drop(direct);
    wait_until_async("an idle stop", Duration::from_secs(30), || {
        ready(arm.state() == "Stopped")
    })
    .await;
    assert_eq!(arm.stops(), 1);
    assert!(!cluster.is_running());
    pg.wait_for_log_async("stopping the database server", Duration::from_secs(10))
        .await;

    // A client arrives: a new wake, and it is served.
    query(&pg)
        .await
        .unwrap_or_else(|e| panic!("{e:?}\n{}", pg.logs()));
    assert_eq!(arm.starts(), 1);
    assert!(cluster.is_running());
}

/// Two replicas share one server: neither counts the other's warm (and
/// regularly recycled) pool connections or its idle checks as use, so the
/// server is stopped once both are idle, exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_sharing_a_server_let_it_stop_when_all_are_idle() {
    let (cluster, identity, arm) = azure_setup(false).await;
    let lifecycle = azure_lifecycle(&arm, "idle_stop_after = \"3s\"\nstate_cache_ttl = \"1s\"");
    let replicas: Vec<Pgwake> = (0..2)
        .map(|_| {
            let port = pgwake_testkit::free_port();
            let toml = config(&cluster, port, &lifecycle)
                .replace("min_idle = 1", "min_idle = 2\nmax_lifetime = \"2s\"");
            start(&identity, &toml, port)
        })
        .collect();
    for pg in &replicas {
        query(pg).await.unwrap();
    }
    let stopped =
        poll_until_async(Duration::from_secs(40), || ready(arm.state() == "Stopped")).await;
    assert!(
        stopped,
        "no idle stop with two replicas:\n{}\n---\n{}",
        replicas[0].logs(),
        replicas[1].logs()
    );
    // Both replicas know it is stopped now, so neither sends (another)
    // stop: each has counted all the stop requests it will send.
    wait_until_async(
        "both replicas to see the server stopped",
        Duration::from_secs(30),
        || {
            ready(
                replicas
                    .iter()
                    .all(|pg| pg.metric("pgwake_server_state{state=\"stopped\"}") == 1.0),
            )
        },
    )
    .await;
    assert_eq!(
        arm.stops(),
        1,
        "{}\n---\n{}",
        replicas[0].logs(),
        replicas[1].logs()
    );
    let sent: f64 = replicas
        .iter()
        .map(|pg| pg.metric("pgwake_idle_stops_total"))
        .sum();
    assert_eq!(sent, 1.0, "stop requests sent by the replicas");
    // Either replica wakes it again for its next client.
    query(&replicas[1])
        .await
        .unwrap_or_else(|e| panic!("{e:?}\n{}", replicas[1].logs()));
    assert!(cluster.is_running());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn arm_throttling_and_errors_are_retried_and_state_is_cached() {
    let (cluster, identity, arm) = azure_setup(true).await;
    arm.inject(429, Some(1));
    arm.inject(500, None);
    arm.inject(500, None);
    let port = pgwake_testkit::free_port();
    let toml = config(
        &cluster,
        port,
        &azure_lifecycle(&arm, "wake_timeout = \"60s\"\nstate_cache_ttl = \"2s\""),
    );
    let pg = start(&identity, &toml, port);
    query(&pg)
        .await
        .unwrap_or_else(|e| panic!("{e:?}\n{}", pg.logs()));
    assert_eq!(arm.starts(), 1);
    pg.wait_for_log_async("HTTP 429", Duration::from_secs(10))
        .await;

    // ARM's start finishes (the client may be served before pg_ctl, which
    // polls, has seen the server ready).
    wait_until_async("ARM to report Ready", Duration::from_secs(30), || {
        ready(arm.state() == "Ready")
    })
    .await;
    // The server goes down behind ARM's back (ARM still says Ready): clients
    // get connection errors, no start is attempted, and ARM is asked about
    // the state at most once a second (a cached ready is asked again while
    // the server cannot be reached).
    cluster.stop().unwrap();
    let gets = arm.state_gets();
    let began = Instant::now();
    let mut errors = 0;
    // Four seconds of clients (the scenario): two cache lifetimes.
    while began.elapsed() < Duration::from_secs(4) {
        if let Err((state, _)) = query(&pg).await {
            assert!(state.starts_with("08"), "{state}");
            errors += 1;
        }
    }
    let asked = arm.state_gets() - gets;
    // Each client retries its connect for up to connect_timeout (3 s), so
    // the loop lasts longer than four seconds: the bound counts the time
    // it really took.
    let secs = began.elapsed().as_secs() + 1;
    assert!(errors > 0);
    // Asked again while the server cannot be reached, and no more often
    // than once a second (plus one the pool's upkeep may make at the same
    // moment as a client), though each client's retries (about ten in its
    // 3 s) ask the lifecycle every time.
    assert!(
        asked >= 1,
        "no state request in {secs} s of refused connections"
    );
    assert!(asked <= secs + 1, "{asked} state requests in {secs} s");
    assert_eq!(arm.starts(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_command_provider_wakes_a_cluster_with_pg_ctl() {
    let cluster = cluster();
    cluster.stop().unwrap();
    let port = pgwake_testkit::free_port();
    let lifecycle = format!(
        "provider = \"command\"\nwake_timeout = \"60s\"\n[lifecycle.command]\nstatus = {:?}\nstart = {:?}\nstop = {:?}\n",
        cluster.ctl_command("status"),
        cluster.ctl_command("start"),
        cluster.ctl_command("stop"),
    );
    let pg = Pgwake::start_config(&config(&cluster, port, &lifecycle), port, &[]);
    query(&pg)
        .await
        .unwrap_or_else(|e| panic!("{e:?}\n{}", pg.logs()));
    assert!(cluster.is_running());
    pg.wait_for_log_async("database server is awake after", Duration::from_secs(10))
        .await;

    // Stopped behind pgwake's back while its last answer, "ready", is well
    // within state_cache_ttl (30 s): the next client is not refused, pgwake
    // asks again and starts the server for it.
    cluster.stop().unwrap();
    query(&pg)
        .await
        .unwrap_or_else(|e| panic!("{e:?}\n{}", pg.logs()));
    assert!(cluster.is_running());
    wait_until_async(
        "the second wake's log line",
        Duration::from_secs(10),
        || ready(pg.logs().matches("database server is awake after").count() == 2),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_server_that_refuses_a_login_is_never_started() {
    let cluster = cluster();
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("started");
    // A provider that always claims the server is stopped: only the kind of
    // connection error may keep pgwake from starting it.
    let lifecycle = format!(
        "provider = \"command\"\n[lifecycle.command]\nstatus = \"echo stopped\"\nstart = \"touch {}\"\n",
        marker.display()
    );
    let port = pgwake_testkit::free_port();
    let toml = config(&cluster, port, &lifecycle).replace("app-secret", "wrong-password");
    let pg = Pgwake::start_config(&toml, port, &[]);
    let (state, _) = query(&pg).await.expect_err("wrong password");
    assert_eq!(state, "28P01");
    drop(pg);

    let port = pgwake_testkit::free_port();
    let toml =
        config(&cluster, port, &lifecycle).replace("dbname = \"app\"", "dbname = \"missing\"");
    let pg = Pgwake::start_config(&toml, port, &[]);
    let fail = tokio_postgres::connect(
        &format!("postgres://app@127.0.0.1:{port}/missing"),
        tokio_postgres::NoTls,
    )
    .await
    .err()
    .expect("missing database");
    assert_eq!(code(&fail), "3D000", "{fail}");
    drop(pg);
    assert!(!marker.exists(), "a start was issued");
}
