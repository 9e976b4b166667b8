//! Named prepared statements in transaction mode: many clients, few server
//! connections, every answer checked against the statement it belongs to.

mod common;

use std::time::Duration;

use bytes::{Buf, BytesMut};
use common::{cluster, pgbench, Pgwake};
use postgres_protocol::message::frontend;
use postgres_protocol::IsNull;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_clients_prepare_and_execute_over_five_connections() {
    let cluster = cluster();
    let pg = Pgwake::start(
        &cluster,
        "size = 5\nmin_idle = 1\npool_wait_timeout = \"10s\"",
    );
    let mut tasks = Vec::new();
    // Every client prepares before any goes on: fifty clients hold named
    // statements at once over five server connections.
    let all_prepared = std::sync::Arc::new(tokio::sync::Barrier::new(50));
    for k in 1..=50i32 {
        let url = pg.url("app");
        let all_prepared = all_prepared.clone();
        tasks.push(tokio::spawn(async move {
            let mut c = pgwake_testkit::connect_url(&url).await.unwrap();
            // Every client names its first statement alike (tokio-postgres
            // counts from s0); the SQL differs per client.
            let times = c.prepare(&format!("select $1::int * {k}")).await.unwrap();
            let plus = c.prepare(&format!("select $1::int + {k}")).await.unwrap();
            all_prepared.wait().await;
            for i in 0..40i32 {
                let v: i32 = c.query_one(&times, &[&i]).await.unwrap().get(0);
                assert_eq!(v, i * k, "client {k}");
                if i % 10 == 0 {
                    let tx = c.transaction().await.unwrap();
                    let a: i32 = tx.query_one(&plus, &[&i]).await.unwrap().get(0);
                    let b: i32 = tx.query_one(&times, &[&2]).await.unwrap().get(0);
                    assert_eq!((a, b), (i + k, 2 * k), "client {k}");
                    tx.commit().await.unwrap();
                }
            }
        }));
    }
    for t in tasks {
        tokio::time::timeout(Duration::from_secs(120), t)
            .await
            .expect("clients finished")
            .unwrap();
    }
    assert!(common::app_backends(&cluster) <= 5);
}

#[test]
fn pgbench_prepared_mode_runs_clean_in_transaction_mode() {
    let cluster = cluster();
    let pg = Pgwake::start(&cluster, "size = 5\nmin_idle = 1");
    let run = |args: &[&str]| pgbench(&cluster, pg.port, args);
    run(&["-i", "-q", "-s", "1"]);
    for args in [
        &["-S", "-M", "prepared", "-c", "20", "-j", "2", "-t", "200"][..],
        // pgbench prepares synchronously, blocking every client of its
        // thread: one thread per client, or a client waiting for a server
        // connection would stall the transactions holding them.
        &["-M", "prepared", "-c", "10", "-j", "10", "-t", "50"][..],
    ] {
        let out = run(args);
        assert!(out.contains("number of failed transactions: 0 "), "{out}");
        let c: u32 = args[args.iter().position(|a| *a == "-c").unwrap() + 1]
            .parse()
            .unwrap();
        let t: u32 = args[args.len() - 1].parse().unwrap();
        assert!(
            out.contains(&format!(
                "number of transactions actually processed: {0}/{0}",
                c * t
            )),
            "{out}"
        );
    }
}

/// A raw protocol client: startup, then frames in and out.
struct Raw {
    s: tokio::net::TcpStream,
    buf: BytesMut,
}

impl Raw {
    async fn connect(port: u16) -> Raw {
        let s = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .unwrap();
        let mut r = Raw {
            s,
            buf: BytesMut::new(),
        };
        let mut out = BytesMut::new();
        frontend::startup_message(
            [
                ("user", "app"),
                ("database", "app"),
                ("application_name", "raw"),
            ],
            &mut out,
        )
        .unwrap();
        r.send(&out).await;
        r.until_ready().await;
        r
    }

    async fn send(&mut self, bytes: &[u8]) {
        self.s.write_all(bytes).await.unwrap();
    }

    /// The next message: its tag and body.
    async fn next(&mut self) -> (u8, BytesMut) {
        loop {
            if self.buf.len() >= 5 {
                let len = u32::from_be_bytes([self.buf[1], self.buf[2], self.buf[3], self.buf[4]])
                    as usize;
                if self.buf.len() > len {
                    let tag = self.buf[0];
                    self.buf.advance(5);
                    return (tag, self.buf.split_to(len - 4));
                }
            }
            let n = tokio::time::timeout(Duration::from_secs(20), self.s.read_buf(&mut self.buf))
                .await
                .expect("a reply within 20 s")
                .unwrap();
            assert!(n > 0, "connection closed");
        }
    }

    /// Messages up to and including ReadyForQuery, as tags; an error as
    /// `E:<SQLSTATE>`; NoticeResponse and ParameterStatus skipped.
    async fn until_ready(&mut self) -> Vec<String> {
        let mut seen = Vec::new();
        loop {
            let (tag, body) = self.next().await;
            match tag {
                b'N' | b'S' | b'K' | b'R' => {}
                b'E' => seen.push(format!("E:{}", field(&body, b'C'))),
                b'Z' => {
                    seen.push("Z".into());
                    return seen;
                }
                t => seen.push((t as char).to_string()),
            }
        }
    }
}

fn field(body: &[u8], code: u8) -> String {
    let mut rest = body;
    while let Some((&c, after)) = rest.split_first() {
        let end = after.iter().position(|&b| b == 0).unwrap_or(after.len());
        if c == code {
            return String::from_utf8_lossy(&after[..end]).into_owned();
        }
        rest = &after[(end + 1).min(after.len())..];
    }
    String::new()
}

fn parse(out: &mut BytesMut, name: &str, sql: &str) {
    frontend::parse(name, sql, std::iter::empty(), out).unwrap();
}

fn bind_exec(out: &mut BytesMut, name: &str, param: Option<i32>) {
    let params: Vec<Option<i32>> = param.into_iter().map(Some).collect();
    frontend::bind(
        "",
        name,
        std::iter::once(0i16),
        params.iter(),
        |p, buf| match p {
            Some(v) => {
                buf.extend_from_slice(v.to_string().as_bytes());
                Ok(IsNull::No)
            }
            None => Ok(IsNull::Yes),
        },
        std::iter::once(0i16),
        out,
    )
    .map_err(|_| "bind")
    .unwrap();
    frontend::execute("", 0, out).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pipeline_with_an_error_in_the_middle_gets_what_one_server_session_sends() {
    let cluster = cluster();
    let pg = Pgwake::start(&cluster, "size = 2\nmin_idle = 1");
    // Another client holds one connection in a transaction, so the two
    // batches below may run on different server connections.
    let mut c = Raw::connect(pg.port).await;
    let mut out = BytesMut::new();
    parse(&mut out, "a", "select $1::int");
    bind_exec(&mut out, "a", Some(1));
    parse(&mut out, "b", "select 1 / $1::int");
    bind_exec(&mut out, "b", Some(0));
    parse(&mut out, "c", "select 3");
    bind_exec(&mut out, "c", None);
    frontend::sync(&mut out);
    c.send(&out).await;
    assert_eq!(
        c.until_ready().await,
        // The division fails while the custom plan is made, at Bind.
        ["1", "2", "D", "C", "1", "E:22012", "Z"]
    );

    // "a" and "b" exist; "c" never did (it was skipped after the error).
    out.clear();
    bind_exec(&mut out, "a", Some(5));
    bind_exec(&mut out, "b", Some(2));
    frontend::sync(&mut out);
    c.send(&out).await;
    assert_eq!(c.until_ready().await, ["2", "D", "C", "2", "D", "C", "Z"]);
    out.clear();
    bind_exec(&mut out, "c", None);
    frontend::sync(&mut out);
    c.send(&out).await;
    assert_eq!(c.until_ready().await, ["E:26000", "Z"]);

    // A second Parse of a name in use fails; Close frees it; then it parses.
    out.clear();
    parse(&mut out, "a", "select 2");
    frontend::sync(&mut out);
    frontend::close(b'S', "a", &mut out).unwrap();
    parse(&mut out, "a", "select $1::int * 10");
    bind_exec(&mut out, "a", Some(4));
    frontend::sync(&mut out);
    c.send(&out).await;
    assert_eq!(c.until_ready().await, ["E:42P05", "Z"]);
    assert_eq!(c.until_ready().await, ["3", "1", "2", "D", "C", "Z"]);

    // A Describe of a statement prepared on another connection.
    let other = pg.client().await;
    other.batch_execute("begin; select 1").await.unwrap();
    out.clear();
    frontend::describe(b'S', "b", &mut out).unwrap();
    frontend::sync(&mut out);
    c.send(&out).await;
    assert_eq!(c.until_ready().await, ["t", "T", "Z"]);
    other.batch_execute("commit").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_statement_parsed_inside_a_transaction_outlives_it() {
    let cluster = cluster();
    let pg = Pgwake::start(&cluster, "size = 1\nmin_idle = 1");
    let mut a = Raw::connect(pg.port).await;
    let mut out = BytesMut::new();
    parse(&mut out, "a", "select 1");
    frontend::sync(&mut out);
    parse(&mut out, "n1", "savepoint s1");
    frontend::sync(&mut out);
    a.send(&out).await;
    assert_eq!(a.until_ready().await, ["1", "Z"]);
    assert_eq!(a.until_ready().await, ["1", "Z"]);
    let mut b = Raw::connect(pg.port).await;
    out.clear();
    frontend::query("begin", &mut out).unwrap();
    b.send(&out).await;
    assert_eq!(b.until_ready().await, ["C", "Z"]);
    out.clear();
    parse(&mut out, "x", "select 1");
    frontend::sync(&mut out);
    b.send(&out).await;
    assert_eq!(b.until_ready().await, ["1", "Z"]);
    // A statement without a result (NoData), cached by another client.
    out.clear();
    parse(&mut out, "n2", "savepoint s1");
    frontend::sync(&mut out);
    b.send(&out).await;
    assert_eq!(b.until_ready().await, ["1", "Z"]);
    out.clear();
    frontend::query("commit", &mut out).unwrap();
    b.send(&out).await;
    assert_eq!(b.until_ready().await, ["C", "Z"]);
    out.clear();
    bind_exec(&mut out, "x", None);
    frontend::sync(&mut out);
    b.send(&out).await;
    assert_eq!(b.until_ready().await, ["2", "D", "C", "Z"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgbench_like_clients_take_turns_on_two_connections() {
    let cluster = cluster();
    let pg = Pgwake::start(&cluster, "size = 2\nmin_idle = 1");
    let mut tasks = Vec::new();
    for ci in 0..6 {
        let port = pg.port;
        tasks.push(tokio::spawn(async move {
            let script = ["begin", "select 1", "select 2", "end"];
            let mut c = Raw::connect(port).await;
            for round in 0..20 {
                for (k, sql) in script.iter().enumerate() {
                    let name = format!("P_{k}");
                    let mut out = BytesMut::new();
                    if round == 0 {
                        parse(&mut out, &name, sql);
                        frontend::sync(&mut out);
                        c.send(&out).await;
                        assert_eq!(c.until_ready().await, ["1", "Z"], "client {ci} parse {k}");
                        out.clear();
                    }
                    frontend::bind(
                        "",
                        &name,
                        std::iter::empty::<i16>(),
                        std::iter::empty::<Option<i32>>(),
                        |_: Option<i32>, _| Ok(IsNull::Yes),
                        std::iter::empty::<i16>(),
                        &mut out,
                    )
                    .map_err(|_| "bind")
                    .unwrap();
                    frontend::describe(b'P', "", &mut out).unwrap();
                    frontend::execute("", 0, &mut out).unwrap();
                    frontend::sync(&mut out);
                    c.send(&out).await;
                    let got = c.until_ready().await;
                    assert_eq!(
                        got.first().map(String::as_str),
                        Some("2"),
                        "client {ci} round {round} cmd {k}: {got:?}"
                    );
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
}
