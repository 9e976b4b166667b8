//! Parameterised statements of every size around and far above pgwake's
//! buffer sizes (the 512-byte idle probe, the 8 KiB read buffer, 64 KiB
//! reads), with tokio-postgres: as the first message of a connection, after
//! it sat idle, inside a transaction and pipelined. And a client that sends
//! half of a large message and then nothing: it costs pgwake no CPU, holds
//! nobody up, and does not keep pgwake from stopping.

mod common;

use common::raw::{first_error_sqlstate, frame, startup};

use std::time::{Duration, Instant};

use common::{cluster, Pgwake};
use futures_util::future::try_join_all;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Statement text lengths in bytes: around each buffer size and far above.
const SIZES: [usize; 9] = [300, 511, 512, 513, 600, 4096, 65536, 1 << 20, 16 << 20];

/// `select length('x…x') + $1`, exactly `len` bytes long; with `$1 = k` it
/// returns the padding's length plus `k`.
fn statement(len: usize) -> (String, i32) {
    let frame = "select length('') + $1::int4";
    let pad = len - frame.len();
    let sql = format!("select length('{}') + $1::int4", "x".repeat(pad));
    assert_eq!(sql.len(), len);
    (sql, i32::try_from(pad).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statements_of_every_size_through_tokio_postgres() {
    let cluster = cluster();
    let pg = Pgwake::start(&cluster, "size = 3\nmin_idle = 1");
    let limit = Duration::from_secs(60);
    for len in SIZES {
        let (sql, pad) = statement(len);
        let run = async {
            // (a) The first message of a fresh connection.
            let c = pg.client().await;
            let v: i32 = c.query_one(&sql, &[&1i32]).await?.get(0);
            assert_eq!(v, pad + 1, "{len} B as the first statement");
            drop(c);

            // (b) After the connection sat idle between transactions.
            let c = pg.client().await;
            c.simple_query("select 1").await?;
            // The session has given its server connection back and waits
            // on the socket (the idle probe path) once pgwake counts no
            // active client.
            let series = |state: &str| {
                format!(
                    "pgwake_client_connections{{database=\"app\",user=\"app\",state=\"{state}\"}}"
                )
            };
            common::wait_until(
                "the client to be idle in pgwake",
                Duration::from_secs(10),
                || pg.metric(&series("active")) == 0.0 && pg.metric(&series("idle")) >= 1.0,
            );
            let v: i32 = c.query_one(&sql, &[&2i32]).await?.get(0);
            assert_eq!(v, pad + 2, "{len} B after idle");

            // (c) Inside a transaction.
            c.batch_execute("begin").await?;
            c.query_one("select 1", &[]).await?;
            let v: i32 = c.query_one(&sql, &[&3i32]).await?.get(0);
            assert_eq!(v, pad + 3, "{len} B mid-transaction");
            c.batch_execute("commit").await?;

            // (d) Pipelined: the requests go out together, each a Parse of
            // its own, then their Bind/Execute.
            let n = if len > 1 << 20 { 2 } else { 4 };
            let queries = (0..n).map(|k| {
                let c = &c;
                let sql = &sql;
                async move {
                    let k = 10 + k;
                    let v: i32 = c.query_one(sql.as_str(), &[&k]).await?.get(0);
                    Ok::<_, tokio_postgres::Error>((k, v))
                }
            });
            for (k, v) in try_join_all(queries).await? {
                assert_eq!(v, pad + k, "{len} B pipelined");
            }

            // A named statement prepared once and run again.
            let st = c.prepare(&sql).await?;
            for k in [20, 21] {
                let v: i32 = c.query_one(&st, &[&k]).await?.get(0);
                assert_eq!(v, pad + k, "{len} B prepared, run {k}");
            }
            Ok::<_, tokio_postgres::Error>(())
        };
        match tokio::time::timeout(limit, run).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => panic!("{len} B: {e}\n{}", pg.logs()),
            Err(_) => panic!("{len} B: no answer within {limit:?}\n{}", pg.logs()),
        }
    }
    assert!(!pg.logs().contains("panicked"));
}

/// Reads until `end` has arrived; returns everything read.
async fn read_until(s: &mut TcpStream, end: &[u8]) -> Vec<u8> {
    let mut got = Vec::new();
    while !got.windows(end.len()).any(|w| w == end) {
        let mut chunk = [0u8; 4096];
        let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut chunk))
            .await
            .expect("pgwake answers")
            .expect("read");
        assert!(n > 0, "closed; got {got:?}");
        got.extend_from_slice(&chunk[..n]);
    }
    got
}

/// A logged-in raw client.
async fn raw_client(port: u16) -> TcpStream {
    let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    s.write_all(&startup("app", "app")).await.unwrap();
    read_until(&mut s, &[b'Z', 0, 0, 0, 5, b'I']).await;
    s
}

/// Parse (unnamed) of a 1 MiB statement, then Bind `$1 = 41`, Execute, Sync.
fn large_request() -> (Vec<u8>, Vec<u8>, i32) {
    let (sql, pad) = statement(1 << 20);
    let mut body = vec![0u8];
    body.extend_from_slice(sql.as_bytes());
    body.extend_from_slice(&[0, 0, 0]);
    let parse = frame(b'P', &body);
    let mut rest = frame(b'B', &[0, 0, 0, 0, 0, 1, 0, 0, 0, 2, b'4', b'1', 0, 0]);
    rest.extend(frame(b'E', &[0, 0, 0, 0, 0]));
    rest.extend(frame(b'S', &[]));
    (parse, rest, pad + 41)
}

/// CPU time (user + system) the process has used, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command name, which is in parentheses.
    let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..].split(' ').collect();
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

fn ticks_per_second() -> u64 {
    let out = std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}

async fn served_at_once(pg: &Pgwake) {
    let c = tokio::time::timeout(Duration::from_secs(5), pg.client())
        .await
        .expect("another client connects at once");
    let v: i32 = tokio::time::timeout(Duration::from_secs(5), c.query_one("select 7", &[]))
        .await
        .expect("and is served at once")
        .unwrap()
        .get(0);
    assert_eq!(v, 7);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_a_large_message_costs_no_cpu_and_holds_nobody_up() {
    let cluster = cluster();
    let pg = Pgwake::start(&cluster, "size = 2\nmin_idle = 1");
    served_at_once(&pg).await;
    let (parse, rest, want) = large_request();
    let half = parse.len() / 2;

    // A client that sends half its Parse, then the rest later: pgwake waits
    // for it on the socket and then answers it correctly.
    let mut slow = raw_client(pg.port).await;
    slow.write_all(&parse[..half]).await.unwrap();
    // One that sends half and never the rest.
    let mut stuck = raw_client(pg.port).await;
    stuck.write_all(&parse[..half]).await.unwrap();

    // pgwake has read both headers and holds room for both whole messages.
    common::wait_until_async(
        "pgwake to hold room for both large messages",
        Duration::from_secs(10),
        || {
            std::future::ready(
                pg.metric("pgwake_client_buffer_bytes{kind=\"in_use\"}") >= f64::from(2 << 20),
            )
        },
    )
    .await;
    let hz = ticks_per_second();
    let before = cpu_ticks(pg.pid());
    // The situation under test is ten seconds of nothing more arriving.
    tokio::time::sleep(Duration::from_secs(10)).await;
    let used = cpu_ticks(pg.pid()) - before;
    // A few milliseconds at most (the clock's resolution is a tick): the
    // session waits on the socket. A spinning one burns the whole 10 s.
    assert!(
        used * 50 <= hz,
        "pgwake used {used} ticks ({hz}/s) of CPU while two clients held half a message"
    );
    eprintln!("CPU while two clients held half a 1 MiB Parse for 10 s: {used} ticks of {hz}/s");
    served_at_once(&pg).await;

    slow.write_all(&parse[half..]).await.unwrap();
    slow.write_all(&rest).await.unwrap();
    let reply = read_until(&mut slow, &[b'Z', 0, 0, 0, 5, b'I']).await;
    let row = format!("{want}");
    assert!(
        reply.windows(row.len()).any(|w| w == row.as_bytes()),
        "the completed request is answered with {row}: {:?}",
        String::from_utf8_lossy(&reply)
    );
    served_at_once(&pg).await;

    // SIGTERM: the stuck client is told and pgwake stops, well within
    // listen.shutdown_grace (10 s in the test config).
    let mut pg = pg;
    let asked = Instant::now();
    pg.signal("TERM");
    let status = pg.wait_exit(Duration::from_secs(10));
    assert!(
        status.is_some_and(|s| s.success()),
        "pgwake did not stop within shutdown_grace after SIGTERM ({:?})",
        asked.elapsed()
    );
    let mut told = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), stuck.read_to_end(&mut told)).await;
    assert!(
        told.windows(5).any(|w| w == b"57P01"),
        "the stuck client is told pgwake shuts down: {:?}",
        String::from_utf8_lossy(&told)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_clients_sending_100_mib_at_once_stay_within_the_buffer_budget() {
    const CLIENTS: usize = 20;
    const BUDGET_MIB: u64 = 128;
    let cluster = cluster();
    let port = pgwake_testkit::free_port();
    // The big statements share two connections; a small entry keeps one
    // of its own for the normal client.
    let toml = common::config_for(
        &cluster,
        port,
        "size = 2\nmin_idle = 1\npool_wait_timeout = \"10s\"",
    )
    .replace(
        "[listen]\n",
        &format!("[listen]\nclient_buffer_budget = {}\n", BUDGET_MIB << 20),
    ) + "[databases.app]\n[databases.small]\ndbname = \"app\"\nsize = 1\nmin_idle = 1\n";
    let pg = Pgwake::start_config(&toml, port, &[]);
    let small = pgwake_testkit::connect("127.0.0.1", pg.port, "app", None, "small")
        .await
        .unwrap();
    small.simple_query("select 1").await.unwrap();

    // Half as Parse (held whole: charged to the budget), half as a simple
    // query (streamed through).
    let (sql, pad) = statement(100 << 20);
    let mut body = vec![0u8];
    body.extend_from_slice(sql.as_bytes());
    body.extend_from_slice(&[0, 0, 0]);
    let mut extended = frame(b'P', &body);
    extended.extend(frame(b'B', &[0, 0, 0, 0, 0, 1, 0, 0, 0, 1, b'5', 0, 0]));
    extended.extend(frame(b'E', &[0, 0, 0, 0, 0]));
    extended.extend(frame(b'S', &[]));
    let simple_sql = sql.replace("$1::int4", "5");
    let mut text = simple_sql.into_bytes();
    text.push(0);
    let simple = frame(b'Q', &text);
    let messages = std::sync::Arc::new([extended, simple]);
    let want = (pad + 5).to_string();

    let mut tasks = Vec::new();
    for i in 0..CLIENTS {
        let messages = messages.clone();
        let port = pg.port;
        let want = want.clone();
        tasks.push(tokio::spawn(async move {
            let mut s = raw_client(port).await;
            let (mut r, mut w) = s.split();
            let send = async { w.write_all(&messages[i % 2]).await };
            let mut reply = Vec::new();
            let recv = async {
                let mut chunk = [0u8; 4096];
                while !reply.windows(6).any(|x| x == [b'Z', 0, 0, 0, 5, b'I']) {
                    match r.read(&mut chunk).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => reply.extend_from_slice(&chunk[..n]),
                    }
                }
            };
            // The send may be cut short by a refusal: pgwake closes.
            let _ =
                tokio::time::timeout(Duration::from_secs(120), async { tokio::join!(send, recv) })
                    .await;
            if reply.windows(want.len()).any(|x| x == want.as_bytes()) {
                "result".to_owned()
            } else {
                first_error_sqlstate(&reply)
                    .unwrap_or_else(|| format!("nothing ({} bytes)", reply.len()))
            }
        }));
    }
    // A normal client is served throughout.
    let mut served = 0;
    while !tasks.iter().all(|t| t.is_finished()) {
        let v = tokio::time::timeout(Duration::from_secs(5), small.simple_query("select 1"))
            .await
            .expect("the normal client is served at once");
        assert!(v.is_ok(), "{v:?}");
        served += 1;
        // The normal client's pace (the scenario), not a wait.
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(served < 1000, "the big clients did not finish");
    }
    let mut outcomes = std::collections::BTreeMap::new();
    for t in tasks {
        *outcomes.entry(t.await.unwrap()).or_insert(0) += 1;
    }
    // Each got its answer or a clear error: out of memory (53200), a
    // message beyond the budget (54000), no connection in time (53300).
    for outcome in outcomes.keys() {
        assert!(
            ["result", "53200", "54000", "53300"].contains(&outcome.as_str()),
            "{outcomes:?}\n{}",
            pg.logs()
        );
    }
    assert!(outcomes.contains_key("result"), "{outcomes:?}");
    let peak = pg.peak_rss_kib() / 1024;
    assert!(
        peak < BUDGET_MIB + 64,
        "pgwake's peak RSS was {peak} MiB with a {BUDGET_MIB} MiB budget; outcomes {outcomes:?}"
    );
    eprintln!("outcomes {outcomes:?}, peak RSS {peak} MiB, normal client served {served} times");
}
