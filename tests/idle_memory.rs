//! What a user notices about idle clients: each costs pgwake a few KiB of
//! resident memory, not a read buffer's worth. Measured on the real binary
//! in transaction mode in front of a real PostgreSQL, with thousands of
//! logged-in clients that ran a query and sit idle, as an application's
//! connection pools leave them.
//!
//! This replaces a unit test of a future's size in bytes, which a compiler
//! upgrade could break with no change a user would see.

mod common;

use std::future::ready;
use std::time::{Duration, Instant};

use common::raw::{error_body_sqlstate, frame, startup_with};
use common::{app_backends, cluster, config_for, wait_until_async, Pgwake};
use futures_util::{StreamExt, TryStreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Idle clients held at once.
const CLIENTS: usize = 2000;
/// Server connections: all of them opened before the first measurement.
const POOL_SIZE: usize = 5;
/// Resident memory an idle client may cost pgwake. PgBouncer needs about
/// 1 KiB, pgwake about 1.86 KiB here in a debug build with the
/// application_name these clients send (its task is 256 bytes and holds only
/// a small wait between requests; the client's own settings are a small
/// sorted vector). A client's settings back in a tree map (2.47 KiB), an idle
/// task that kept the whole request path's state (3.5 KiB, as it once did) or
/// a filled 8 KiB read buffer would go over.
const MAX_KIB_PER_IDLE_CLIENT: f64 = 2.3;
/// Clients logging in at once: an application pool filling up, well within
/// the listen backlog.
const LOGINS_IN_FLIGHT: usize = 64;
/// Bound on one client's login or query, and on each wait for pgwake.
const LIMIT: Duration = Duration::from_secs(10);
/// Bound on all the logins together.
const ALL_LOGINS: Duration = Duration::from_secs(120);
/// Clients that run a second query at the end: every 40th.
const SAMPLE_EVERY: usize = 40;

const DB: &str = "app";

fn clients_series(state: &str) -> String {
    format!("pgwake_client_connections{{database=\"{DB}\",user=\"app\",state=\"{state}\"}}")
}

fn servers_series(state: &str) -> String {
    format!("pgwake_server_connections{{database=\"{DB}\",user=\"app\",state=\"{state}\"}}")
}

/// Clients pgwake counts, by state: (idle, active, waiting).
fn client_counts(pg: &Pgwake) -> (f64, f64, f64) {
    (
        pg.metric(&clients_series("idle")),
        pg.metric(&clients_series("active")),
        pg.metric(&clients_series("waiting")),
    )
}

/// Server connections pgwake holds in any state.
fn server_connections(pg: &Pgwake) -> f64 {
    ["active", "idle", "login"]
        .iter()
        .map(|s| pg.metric(&servers_series(s)))
        .sum()
}

/// One backend message: its tag and body. Replies here are small.
async fn read_message(s: &mut TcpStream) -> Result<(u8, Vec<u8>), String> {
    let mut head = [0u8; 5];
    s.read_exact(&mut head)
        .await
        .map_err(|e| format!("reading a message header: {e}"))?;
    let len = usize::try_from(u32::from_be_bytes(head[1..5].try_into().unwrap())).unwrap();
    if !(4..=64 * 1024).contains(&len) {
        return Err(format!("message {:?} of length {len}", char::from(head[0])));
    }
    let mut body = vec![0u8; len - 4];
    s.read_exact(&mut body)
        .await
        .map_err(|e| format!("reading a {:?} message: {e}", char::from(head[0])))?;
    Ok((head[0], body))
}

/// Logs in as `app` to database `app` (trusted on loopback) with an
/// application_name, as drivers and frameworks send one, and waits for
/// ReadyForQuery.
async fn login(port: u16) -> Result<TcpStream, String> {
    let run = async {
        let mut s = TcpStream::connect(("127.0.0.1", port))
            .await
            .map_err(|e| format!("connect: {e}"))?;
        s.write_all(&startup_with(
            "app",
            DB,
            &[("application_name", "web-worker")],
        ))
        .await
        .map_err(|e| format!("sending the startup packet: {e}"))?;
        loop {
            match read_message(&mut s).await? {
                (b'R', body) if body.get(..4) == Some(&[0, 0, 0, 0][..]) => {}
                (b'R', body) => return Err(format!("asked to authenticate: {body:?}")),
                (b'E', body) => {
                    return Err(format!(
                        "login refused: SQLSTATE {:?}",
                        error_body_sqlstate(&body)
                    ))
                }
                (b'Z', _) => return Ok(s),
                _ => {}
            }
        }
    };
    tokio::time::timeout(LIMIT, run)
        .await
        .unwrap_or_else(|_| Err(format!("no ReadyForQuery within {LIMIT:?}")))
}

/// Runs `select n * 3` as a simple Query; the text of the one value.
async fn query(s: &mut TcpStream, n: usize) -> Result<String, String> {
    let run = async {
        let sql = format!("select {n}::int8 * 3\0");
        s.write_all(&frame(b'Q', sql.as_bytes()))
            .await
            .map_err(|e| format!("sending a query: {e}"))?;
        let mut value = None;
        loop {
            match read_message(s).await? {
                (b'D', body) => {
                    // One column: int16 count, int32 length, the text.
                    let len = i32::from_be_bytes(body[2..6].try_into().unwrap());
                    let len = usize::try_from(len).map_err(|_| "a NULL".to_owned())?;
                    value = Some(String::from_utf8_lossy(&body[6..6 + len]).into_owned());
                }
                (b'E', body) => {
                    return Err(format!(
                        "query failed: SQLSTATE {:?}",
                        error_body_sqlstate(&body)
                    ))
                }
                (b'Z', _) => return value.ok_or_else(|| "no row".to_owned()),
                _ => {}
            }
        }
    };
    tokio::time::timeout(LIMIT, run)
        .await
        .unwrap_or_else(|_| Err(format!("no reply within {LIMIT:?}")))
}

/// A client that logged in and ran its query: number `n`.
async fn logged_in_client(port: u16, n: usize) -> Result<TcpStream, String> {
    let mut s = login(port).await.map_err(|e| format!("client {n}: {e}"))?;
    let got = query(&mut s, n)
        .await
        .map_err(|e| format!("client {n}: {e}"))?;
    if got != (n * 3).to_string() {
        return Err(format!("client {n}: select {n} * 3 gave {got}"));
    }
    Ok(s)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_clients_cost_a_few_kib_each() {
    let started = Instant::now();
    // This process holds every client socket.
    let nofile = rlimit::increase_nofile_limit(u64::try_from(CLIENTS).unwrap() + 1024).unwrap();
    assert!(
        nofile >= u64::try_from(CLIENTS).unwrap() + 256,
        "the open-file limit ({nofile}) is too low for {CLIENTS} clients"
    );

    let cluster = cluster();
    let port = pgwake_testkit::free_port();
    let toml = config_for(
        &cluster,
        port,
        &format!("mode = \"transaction\"\nsize = {POOL_SIZE}\nmin_idle = {POOL_SIZE}"),
    )
    .replace(
        "[listen]\n",
        &format!("[listen]\nmax_client_conn = {}\n", CLIENTS * 2),
    );
    let pg = Pgwake::start_config(&toml, port, &[]);
    let fail = |e: String| -> ! { panic!("{e}\npgwake logs:\n{}", pg.logs()) };

    // Warm-up: one client logs in, runs a query and leaves; the pool opens
    // all its server connections. Then nothing is connected.
    let mut warm = logged_in_client(port, 0).await.unwrap_or_else(|e| fail(e));
    warm.write_all(&frame(b'X', &[])).await.unwrap();
    drop(warm);
    wait_until_async(
        "the warm-up client to leave and the pool to fill",
        LIMIT,
        || {
            ready(
                client_counts(&pg) == (0.0, 0.0, 0.0)
                    && pg.metric(&servers_series("idle")) == POOL_SIZE as f64,
            )
        },
    )
    .await;
    let before_kib = pg.rss_kib();

    // The clients log in, each runs one query, and they stay connected.
    let logins_started = Instant::now();
    let logins = futures_util::stream::iter(1..=CLIENTS)
        .map(|n| logged_in_client(port, n))
        .buffered(LOGINS_IN_FLIGHT)
        .try_collect::<Vec<TcpStream>>();
    let mut clients = match tokio::time::timeout(ALL_LOGINS, logins).await {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => fail(e),
        Err(_) => fail(format!("{CLIENTS} logins took over {ALL_LOGINS:?}")),
    };
    let logins_took = logins_started.elapsed();
    assert_eq!(clients.len(), CLIENTS);

    // The event: pgwake counts every client, all idle (none holding or
    // waiting for a server connection).
    wait_until_async("pgwake to count every client idle", LIMIT, || {
        ready(client_counts(&pg) == (CLIENTS as f64, 0.0, 0.0))
    })
    .await;
    let after_kib = pg.rss_kib();
    let peak_kib = pg.peak_rss_kib();

    let growth_kib = after_kib.saturating_sub(before_kib);
    let per_client_kib = growth_kib as f64 / CLIENTS as f64;
    println!(
        "pgwake RSS: {before_kib} KiB before, {after_kib} KiB with {CLIENTS} idle clients \
         (peak {peak_kib} KiB): {per_client_kib:.2} KiB per idle client \
         (bound {MAX_KIB_PER_IDLE_CLIENT} KiB); {CLIENTS} logins and queries took {logins_took:?}"
    );
    assert!(
        per_client_kib < MAX_KIB_PER_IDLE_CLIENT,
        "each idle client costs pgwake {per_client_kib:.2} KiB of resident memory \
         ({before_kib} KiB before, {after_kib} KiB with {CLIENTS} idle clients), \
         over the bound of {MAX_KIB_PER_IDLE_CLIENT} KiB"
    );

    // The idle clients are really usable: a sample of them queries again.
    for n in (SAMPLE_EVERY..=CLIENTS).step_by(SAMPLE_EVERY) {
        let s = &mut clients[n - 1];
        let got = query(s, n + CLIENTS)
            .await
            .unwrap_or_else(|e| fail(format!("idle client {n}: {e}")));
        assert_eq!(got, ((n + CLIENTS) * 3).to_string(), "idle client {n}");
    }
    assert!(
        pg.metric(&format!(
            "pgwake_queries_total{{database=\"{DB}\",user=\"app\"}}"
        )) >= (1 + CLIENTS + CLIENTS / SAMPLE_EVERY) as f64
    );

    // All that went through the pool's server connections, never more.
    let backends = app_backends(&cluster);
    assert!(
        (1..=POOL_SIZE as i64).contains(&backends),
        "{backends} server backends for a pool of {POOL_SIZE}"
    );
    assert!(server_connections(&pg) <= POOL_SIZE as f64);
    assert_eq!(
        pg.metric(&format!(
            "pgwake_pool_size{{database=\"{DB}\",user=\"app\"}}"
        )),
        POOL_SIZE as f64
    );
    let connects = pg.metric("pgwake_server_connects_total");
    assert!(
        connects <= POOL_SIZE as f64,
        "pgwake opened {connects} server connections for a pool of {POOL_SIZE}"
    );

    // The clients leave, and pgwake counts them gone.
    drop(clients);
    wait_until_async("pgwake to count the clients gone", LIMIT, || {
        ready(client_counts(&pg) == (0.0, 0.0, 0.0))
    })
    .await;
    println!("idle_memory took {:?} in all", started.elapsed());
}
