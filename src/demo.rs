//! `pgwake demo`: a throwaway PostgreSQL, pgwake in front of it, and a
//! workload that shows many clients served by a few server connections.

use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use pgwake_localpg::{Client, ClientError, Cluster, CtlAction, HostAuth};

#[derive(Args)]
pub struct DemoArgs {
    /// Exit after the workload instead of serving until Ctrl-C.
    #[arg(long)]
    exit: bool,
    /// Concurrent clients in the workload.
    #[arg(long, default_value_t = 50)]
    clients: usize,
    /// Transactions per client.
    #[arg(long, default_value_t = 100)]
    transactions: usize,
    /// Server connections in the pool.
    #[arg(long, default_value_t = 5)]
    pool_size: usize,
}

pub fn main(args: DemoArgs) -> anyhow::Result<ExitCode> {
    println!("pgwake demo: starting a throwaway PostgreSQL cluster…");
    let cluster = Cluster::builder()
        .auth(HostAuth::Scram)
        .user("app", "app-secret")
        .database("app", "app")
        .start()
        .context("cannot start the demo's PostgreSQL (is PostgreSQL installed? `apt-get install postgresql`)")?;
    println!(
        "  PostgreSQL {} on 127.0.0.1:{} (SCRAM-SHA-256 password for user app)",
        cluster.psql("app", "show server_version")?,
        cluster.port()
    );
    let listen = if std::net::TcpListener::bind("127.0.0.1:6432").is_ok() {
        "127.0.0.1:6432".to_owned()
    } else {
        println!("  port 6432 is taken; pgwake listens on another one");
        "127.0.0.1:0".to_owned()
    };
    let toml = format!(
        "[listen]\naddr = \"{listen}\"\nshutdown_grace = \"5s\"\n\
         [server]\nhost = \"127.0.0.1\"\nport = {port}\ndbname = \"app\"\nsslmode = \"disable\"\n\
         [server.auth]\nuser = \"app\"\npassword = \"app-secret\"\n\
         [pool]\nsize = {size}\nmin_idle = 2\n\
         [lifecycle]\nprovider = \"command\"\nwake_timeout = \"60s\"\n\
         [lifecycle.command]\nstatus = {status:?}\nstart = {start:?}\nstop = {stop:?}\n\
         [admin]\naddr = \"{admin}\"\n\
         [log]\nlevel = \"warn,pgwake_lifecycle=info\"\n",
        port = cluster.port(),
        admin = if std::net::TcpListener::bind("127.0.0.1:9930").is_ok() {
            "127.0.0.1:9930"
        } else {
            "127.0.0.1:0"
        },
        size = args.pool_size,
        status = cluster.ctl_command(CtlAction::Status),
        start = cluster.ctl_command(CtlAction::Start),
        stop = cluster.ctl_command(CtlAction::Stop),
    );
    let config = pgwake_config::load(Some(("demo", &toml)), None, [])
        .map_err(|e| anyhow::anyhow!("demo configuration:\n{e}"))?;
    let _ = crate::init_logging(&config);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let result = rt.block_on(demo(config, &cluster, &args));
    drop(rt);
    println!("pgwake demo: stopping PostgreSQL and removing its files.");
    drop(cluster);
    result
}

async fn demo(
    config: pgwake_config::Config,
    cluster: &Cluster,
    args: &DemoArgs,
) -> anyhow::Result<ExitCode> {
    let proxy = pgwake_proxy::Proxy::bind(config).await?;
    let addr = proxy.local_addr();
    let admin = proxy.admin_addr();
    let stop = tokio_util::sync::CancellationToken::new();
    let stopped = stop.clone();
    let server = tokio::spawn(proxy.run(async move { stopped.cancelled().await }));
    let port = addr.port();
    let url = format!("postgres://app@127.0.0.1:{port}/app");
    println!(
        "\npgwake is listening. Point your app at it, with no password:\n\n  DATABASE_URL={url}\n"
    );
    if let Some(admin) = admin {
        println!("  metrics: http://{admin}/metrics   readiness: http://{admin}/readyz");
        println!(
            "  admin console: psql postgres://app@127.0.0.1:{}/pgwake -c 'SHOW POOLS'\n",
            port
        );
    }

    let mut setup = connect(port).await?;
    setup
        .batch_execute("CREATE TABLE IF NOT EXISTS demo_orders (id bigserial PRIMARY KEY, client int, amount int)")
        .await?;
    drop(setup);
    println!(
        "Workload: {} clients × {} transactions through pgwake (pool size {}).",
        args.clients, args.transactions, args.pool_size
    );
    let done = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut workers = Vec::new();
    for c in 0..args.clients {
        let (done, failed, n) = (done.clone(), failed.clone(), args.transactions);
        workers.push(tokio::spawn(async move {
            let Ok(mut client) = connect(port).await else {
                failed.fetch_add(u64::try_from(n).unwrap_or(0), Ordering::Relaxed);
                return;
            };
            for i in 0..n {
                let r = order(
                    &mut client,
                    i32::try_from(c).unwrap_or(0),
                    i32::try_from(i).unwrap_or(0),
                )
                .await;
                match r {
                    Ok(()) => done.fetch_add(1, Ordering::Relaxed),
                    Err(_) => failed.fetch_add(1, Ordering::Relaxed),
                };
            }
        }));
    }
    let total = u64::try_from(args.clients * args.transactions).unwrap_or(u64::MAX);
    let mut peak_backends = 0i64;
    // Bounded: the workload is finite; the loop also ends after two minutes.
    while started.elapsed() < Duration::from_secs(120) {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let backends: i64 = tokio::task::block_in_place(|| {
            cluster.psql(
                "postgres",
                "select count(*) from pg_stat_activity where usename = 'app'",
            )
        })
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
        peak_backends = peak_backends.max(backends);
        let (d, f) = (done.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
        println!(
            "  {:>5.1}s  {} clients connected to pgwake → {} server connections; {d}/{total} transactions done, {f} failed",
            started.elapsed().as_secs_f64(),
            args.clients,
            backends
        );
        if d + f >= total {
            break;
        }
    }
    for w in workers {
        let _ = w.await;
    }
    let (d, f) = (done.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    let secs = started.elapsed().as_secs_f64();
    println!(
        "\nDone: {d} transactions in {secs:.1}s ({:.0}/s), {f} failed; {} clients shared at most {peak_backends} server connections.",
        d as f64 / secs.max(0.001),
        args.clients
    );

    // Wake on connect: the server is stopped (as teams do at night to save
    // money); the next client starts it through pgwake and simply waits.
    println!("\nWake on connect: stopping PostgreSQL, as a team does to save money at night…");
    tokio::task::block_in_place(|| cluster.stop())?;
    let asleep = Instant::now();
    let woke = async {
        let mut c = connect(port).await?;
        let rows = c.simple_query("SELECT count(*) FROM demo_orders").await?;
        rows.first()
            .and_then(|row| row.get(0))
            .and_then(|count| count.parse::<i64>().ok())
            .context("SELECT count(*) returned no number")
    }
    .await;
    let woke_ok = match woke {
        Ok(rows) => {
            println!(
                "  a new client's query returned {rows} rows after {:.1}s: pgwake started the stopped server for it",
                asleep.elapsed().as_secs_f64()
            );
            true
        }
        Err(e) => {
            println!("  the client failed: {e:#}");
            false
        }
    };
    let code = if f == 0 && woke_ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    };
    if !args.exit {
        println!("\npgwake keeps serving. Try:  psql {url}\nPress Ctrl-C to stop and clean up.");
        crate::shutdown_signal().await;
    }
    stop.cancel();
    let _ = server.await;
    Ok(code)
}

/// A client of pgwake, logging in as the demo's user with no password.
async fn connect(port: u16) -> Result<Client, ClientError> {
    Client::connect("127.0.0.1", port, "app", None, "app").await
}

/// One transaction of the workload: an order, then the client's count.
/// After a failure it rolls back, so that the connection stays usable. The
/// values are integers written into the SQL: the demo's client speaks only
/// the simple query protocol.
async fn order(client: &mut Client, c: i32, amount: i32) -> Result<(), ClientError> {
    client.batch_execute("BEGIN").await?;
    let r = async {
        client
            .batch_execute(&format!(
                "INSERT INTO demo_orders (client, amount) VALUES ({c}, {amount})"
            ))
            .await?;
        client
            .simple_query(&format!(
                "SELECT count(*) FROM demo_orders WHERE client = {c}"
            ))
            .await?;
        client.batch_execute("COMMIT").await
    }
    .await;
    if r.is_err() {
        let _ = client.batch_execute("ROLLBACK").await;
    }
    r
}
