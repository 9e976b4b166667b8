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
        Raw::connect_as(port, "app").await
    }

    /// `user` must be trusted: pgwake's clients are, and so is the
    /// cluster's superuser, for a direct session to compare with.
    async fn connect_as(port: u16, user: &str) -> Raw {
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
                ("user", user),
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

impl Raw {
    /// Sends `bytes` and returns every message up to the `readies`-th
    /// ReadyForQuery in detail: errors with SQLSTATE, message, detail and
    /// position, command tags, rows, column names and parameter types.
    async fn transcript(&mut self, bytes: &[u8], readies: usize) -> Vec<String> {
        self.send(bytes).await;
        let mut seen = Vec::new();
        let mut left = readies;
        while left > 0 {
            let (tag, body) = self.next().await;
            let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
            seen.push(match tag {
                b'N' | b'S' => continue,
                b'E' => format!(
                    "E {} {} | detail: {} | position: {}",
                    field(&body, b'C'),
                    field(&body, b'M'),
                    field(&body, b'D'),
                    field(&body, b'P')
                ),
                b'C' => format!("C {}", text(&body[..body.len() - 1])),
                b'Z' => {
                    left -= 1;
                    format!("Z {}", body[0] as char)
                }
                b'T' => {
                    let mut cols = Vec::new();
                    let mut at = 2;
                    for _ in 0..u16::from_be_bytes([body[0], body[1]]) {
                        let end = at + body[at..].iter().position(|&b| b == 0).unwrap();
                        cols.push(text(&body[at..end]));
                        at = end + 1 + 18;
                    }
                    format!("T {}", cols.join(","))
                }
                b'D' => {
                    let mut vals = Vec::new();
                    let mut at = 2;
                    for _ in 0..u16::from_be_bytes([body[0], body[1]]) {
                        let len = i32::from_be_bytes(body[at..at + 4].try_into().unwrap());
                        at += 4;
                        if len < 0 {
                            vals.push("NULL".to_string());
                        } else {
                            let len = len as usize;
                            vals.push(text(&body[at..at + len]));
                            at += len;
                        }
                    }
                    format!("D {}", vals.join(","))
                }
                b't' => format!("t {:?}", &body[..]),
                t => (t as char).to_string(),
            });
        }
        seen
    }
}

/// A client of pgwake and a direct session of its own to the same server:
/// each request must get the same answer from both.
struct Twin {
    pgwake: Raw,
    direct: Raw,
}

impl Twin {
    async fn connect(pg: &Pgwake, cluster: &pgwake_testkit::Cluster) -> Twin {
        Twin {
            pgwake: Raw::connect(pg.port).await,
            direct: Raw::connect_as(cluster.port(), cluster.superuser()).await,
        }
    }

    async fn send(&mut self, bytes: &[u8], readies: usize) -> Vec<String> {
        let want = self.direct.transcript(bytes, readies).await;
        let got = self.pgwake.transcript(bytes, readies).await;
        assert_eq!(got, want, "through pgwake vs. a direct session");
        got
    }

    /// A simple query; its answer as one line per message.
    async fn query(&mut self, sql: &str) -> Vec<String> {
        let mut out = BytesMut::new();
        frontend::query(sql, &mut out).unwrap();
        self.send(&out, 1).await
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sql_prepare_execute_and_deallocate_are_per_client_as_in_their_own_sessions() {
    let cluster = cluster();
    // One server connection: both clients' statements meet on it.
    let pg = Pgwake::start(&cluster, "size = 1\nmin_idle = 1");
    let mut a = Twin::connect(&pg, &cluster).await;
    let mut b = Twin::connect(&pg, &cluster).await;

    a.query("PREPARE foo(int) AS select $1 * 10 AS a").await;
    b.query("PREPARE foo(text) AS select 'b:' || $1 AS b").await;
    assert_eq!(
        a.query("EXECUTE foo(4)").await,
        ["T a", "D 40", "C SELECT 1", "Z I"]
    );
    assert_eq!(
        b.query("EXECUTE foo('x')").await,
        ["T b", "D b:x", "C SELECT 1", "Z I"]
    );
    // Unquoted names fold to lower case; quoted ones are kept.
    assert_eq!(b.query("EXECUTE FOO('y')").await[1], "D b:y");
    let dup = a.query("PREPARE Foo AS select 1").await;
    assert_eq!(
        dup[0],
        "E 42P05 prepared statement \"foo\" already exists | detail:  | position: "
    );
    a.query(r#"PREPARE "Foo" AS select 'quoted' AS q"#).await;
    assert_eq!(a.query(r#"EXECUTE "Foo""#).await[1], "D quoted");
    assert!(b.query(r#"EXECUTE "Foo""#).await[0]
        .starts_with("E 26000 prepared statement \"Foo\" does not exist"));
    // Errors name the client's statement and point into the client's text.
    assert!(a.query("EXECUTE foo(1, 2)").await[0]
        .starts_with("E 42601 wrong number of parameters for prepared statement \"foo\""));
    assert_eq!(
        a.query("EXECUTE   foo ('zz')").await[0],
        "E 22P02 invalid input syntax for type integer: \"zz\" | detail:  | position: 16"
    );
    assert_eq!(
        a.query("PREPARE bad AS select nosuchcol").await[0],
        "E 42703 column \"nosuchcol\" does not exist | detail:  | position: 23"
    );
    assert_eq!(
        a.query("prepare \"bäd\"as select 1 + nosuchcol").await[0],
        "E 42703 column \"nosuchcol\" does not exist | detail:  | position: 28"
    );
    assert_eq!(
        a.query("EXECUTE bad").await[0],
        "E 26000 prepared statement \"bad\" does not exist | detail:  | position: "
    );
    assert_eq!(
        a.query("  /* c */ PREPARE spaced (int)   AS select $1 + 1 ; -- tail")
            .await,
        ["C PREPARE", "Z I"]
    );
    assert_eq!(a.query("execute spaced(1);").await[1], "D 2");

    // DEALLOCATE forgets the client's statement only.
    assert_eq!(a.query("DEALLOCATE foo").await, ["C DEALLOCATE", "Z I"]);
    assert!(a.query("EXECUTE foo(1)").await[0].starts_with("E 26000"));
    assert_eq!(b.query("EXECUTE foo('still')").await[1], "D b:still");
    assert!(a.query("DEALLOCATE nope").await[0]
        .starts_with("E 26000 prepared statement \"nope\" does not exist"));
    assert_eq!(
        a.query("DEALLOCATE PREPARE spaced").await,
        ["C DEALLOCATE", "Z I"]
    );

    // Inside a transaction, and in a failed one.
    a.query("BEGIN").await;
    assert_eq!(
        a.query("PREPARE t1 AS select 't1'").await,
        ["C PREPARE", "Z T"]
    );
    assert_eq!(a.query("PREPARE t1 AS select 'again'").await[1], "Z E");
    assert!(a.query("DEALLOCATE t1").await[0].starts_with("E 25P02"));
    assert!(a.query("EXECUTE t1").await[0].starts_with("E 25P02"));
    assert!(a.query("PREPARE t2 AS select 1").await[0].starts_with("E 25P02"));
    assert!(a.query("DEALLOCATE ALL").await[0].starts_with("E 25P02"));
    a.query("ROLLBACK").await;
    // Prepared statements are not transactional.
    assert_eq!(a.query("EXECUTE t1").await[1], "D t1");
    b.query("BEGIN").await;
    assert_eq!(b.query("DEALLOCATE ALL").await, ["C DEALLOCATE ALL", "Z T"]);
    assert_eq!(b.query("EXECUTE foo('x')").await[1], "Z E");
    b.query("ROLLBACK").await;
    assert!(b.query("EXECUTE foo('gone')").await[0].starts_with("E 26000"));
    // B's DEALLOCATE ALL left A's statements alone.
    assert_eq!(a.query("EXECUTE t1").await[1], "D t1");
    assert_eq!(a.query("DEALLOCATE ALL").await, ["C DEALLOCATE ALL", "Z I"]);
    assert!(a.query("EXECUTE t1").await[0].starts_with("E 26000"));
    // Syntax errors are the server's.
    assert!(a.query("PREPARE all AS select 1").await[0]
        .starts_with("E 42601 syntax error at or near \"all\""));
    assert!(a.query("DEALLOCATE foo bar").await[0].starts_with("E 42601"));

    // Several statements in one query: refused, in and out of a transaction.
    let mut out = BytesMut::new();
    frontend::query("PREPARE m AS select 1; select 2", &mut out).unwrap();
    let got = a.pgwake.transcript(&out, 1).await;
    assert_eq!(got.len(), 2, "{got:?}");
    assert!(got[0].starts_with("E 0A000 in transaction pooling mode pgwake runs PREPARE, EXECUTE and DEALLOCATE only as the one statement of a query"), "{got:?}");
    assert_eq!(got[1], "Z I");
    out.clear();
    frontend::query("BEGIN", &mut out).unwrap();
    frontend::query("EXECUTE m; select 1", &mut out).unwrap();
    frontend::query("select 1", &mut out).unwrap();
    frontend::query("ROLLBACK", &mut out).unwrap();
    let got = a.pgwake.transcript(&out, 4).await;
    assert!(got[2].starts_with("E 0A000"), "{got:?}");
    assert_eq!(
        got[3], "Z E",
        "the transaction failed, as it would have: {got:?}"
    );
    assert!(got[4].starts_with("E 25P02"), "{got:?}");
    assert_eq!(&got[6..], ["C ROLLBACK", "Z I"]);

    // The server connection kept one statement per distinct text, whoever
    // deallocated what.
    let names = a.pgwake.transcript(&{
        let mut out = BytesMut::new();
        frontend::query("select count(*) from pg_prepared_statements where name like 'pgwake\\_%' and name <> 'pgwake_probe'", &mut out).unwrap();
        out
    }, 1).await;
    assert_eq!(names[1], "D 5", "foo ×2, \"Foo\", spaced, t1: {names:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sql_and_protocol_prepared_statements_share_one_namespace() {
    let cluster = cluster();
    // One statement per connection: every use below prepares anew.
    let pg = Pgwake::start(
        &cluster,
        "size = 1\nmin_idle = 1\nmax_prepared_statements = 1",
    );
    let mut a = Twin::connect(&pg, &cluster).await;
    a.query("PREPARE s1(int, text) AS select $1 AS n, $2 AS t")
        .await;
    a.query("PREPARE s2 AS select 2 AS two").await;
    // Describe and Bind of a SQL-prepared statement the connection lacks.
    let mut out = BytesMut::new();
    frontend::describe(b'S', "s1", &mut out).unwrap();
    frontend::sync(&mut out);
    let got = a.send(&out, 1).await;
    assert_eq!(got[1..], ["T n,t", "Z I"]);
    out.clear();
    frontend::bind(
        "",
        "s1",
        std::iter::empty::<i16>(),
        ["5", "b"],
        |v: &str, buf| {
            buf.extend_from_slice(v.as_bytes());
            Ok(IsNull::No)
        },
        std::iter::empty::<i16>(),
        &mut out,
    )
    .map_err(|_| "bind")
    .unwrap();
    frontend::execute("", 0, &mut out).unwrap();
    frontend::sync(&mut out);
    assert_eq!(a.send(&out, 1).await, ["2", "D 5,b", "C SELECT 1", "Z I"]);
    // EXECUTE of a protocol-level statement the connection lacks.
    out.clear();
    frontend::parse("pp", "select $1::int * 2 AS d", [23], &mut out).unwrap();
    frontend::sync(&mut out);
    a.send(&out, 1).await;
    a.query("EXECUTE s2").await;
    assert_eq!(
        a.query("EXECUTE pp(21)").await,
        ["T d", "D 42", "C SELECT 1", "Z I"]
    );
    // Either kind's name is taken for the other.
    assert!(a.query("PREPARE pp AS select 1").await[0]
        .starts_with("E 42P05 prepared statement \"pp\" already exists"));
    out.clear();
    parse(&mut out, "s1", "select 1");
    frontend::sync(&mut out);
    assert!(
        a.send(&out, 1).await[0].starts_with("E 42P05 prepared statement \"s1\" already exists")
    );
    // Closed by the protocol, gone for SQL, and the other way round.
    out.clear();
    frontend::close(b'S', "s1", &mut out).unwrap();
    frontend::sync(&mut out);
    assert_eq!(a.send(&out, 1).await, ["3", "Z I"]);
    assert!(a.query("EXECUTE s1(1, 'a')").await[0].starts_with("E 26000"));
    assert_eq!(a.query("DEALLOCATE pp").await, ["C DEALLOCATE", "Z I"]);
    out.clear();
    bind_exec(&mut out, "pp", Some(1));
    frontend::sync(&mut out);
    assert!(
        a.send(&out, 1).await[0].starts_with("E 26000 prepared statement \"pp\" does not exist")
    );
    // A SQL-prepared statement whose preparation fails where it is used:
    // the error stands for the EXECUTE, which gets one ReadyForQuery.
    cluster
        .psql(
            "app",
            "create table gone (x int); grant select on gone to app",
        )
        .unwrap();
    a.query("PREPARE g AS select x from gone").await;
    a.query("EXECUTE s2").await;
    cluster.psql("app", "drop table gone").unwrap();
    let mut out = BytesMut::new();
    frontend::query("EXECUTE g", &mut out).unwrap();
    let got = a.pgwake.transcript(&out, 1).await;
    assert_eq!(got.len(), 2, "{got:?}");
    assert!(
        got[0].starts_with("E 42P01 relation \"gone\" does not exist"),
        "{got:?}"
    );
    assert_eq!(a.query("EXECUTE s2").await[1], "D 2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_statement_prepared_again_after_a_schema_change_sees_the_new_columns() {
    let cluster = cluster();
    let pg = Pgwake::start(&cluster, "size = 1\nmin_idle = 1");
    cluster
        .psql(
            "app",
            "create table t (a int); insert into t values (1); grant all on t to app",
        )
        .unwrap();
    let alter = |sql: &str| cluster.psql("app", sql).unwrap();

    // Protocol level (tokio-postgres), as a driver that re-prepares on the
    // error does.
    let c = pg.client().await;
    let old = c.prepare("select * from t").await.unwrap();
    assert_eq!(c.query(&old, &[]).await.unwrap()[0].len(), 1);
    alter("alter table t add column b int default 7");
    let e = c.query(&old, &[]).await.unwrap_err();
    assert_eq!(
        e.as_db_error().map(|e| (e.code().code(), e.message())),
        Some(("0A000", "cached plan must not change result type")),
        "the client's own statement fails, as in its own session"
    );
    let new = c.prepare("select * from t").await.unwrap();
    let row = &c.query(&new, &[]).await.unwrap()[0];
    assert_eq!((row.get::<_, i32>(0), row.get::<_, i32>(1)), (1, 7));
    // Another client preparing the same text from now on gets it fresh too.
    let other = pg.client().await;
    let rows = other.query("select * from t", &[]).await.unwrap();
    assert_eq!(rows[0].len(), 2);

    // SQL level, compared with a direct session.
    let mut s = Twin::connect(&pg, &cluster).await;
    s.query("PREPARE q AS select * from t").await;
    assert_eq!(s.query("EXECUTE q").await[..2], ["T a,b", "D 1,7"]);
    alter("alter table t add column c int default 8");
    assert!(s.query("EXECUTE q").await[0]
        .starts_with("E 0A000 cached plan must not change result type"));
    s.query("DEALLOCATE q").await;
    s.query("PREPARE q AS select * from t").await;
    assert_eq!(s.query("EXECUTE q").await[..2], ["T a,b,c", "D 1,7,8"]);
    let row = &c
        .query(&c.prepare("select * from t").await.unwrap(), &[])
        .await
        .unwrap()[0];
    assert_eq!(row.len(), 3);
}

/// The same text under another `search_path` names other tables: clients
/// whose startup settings differ get server statements of their own, so
/// neither sees the other's plan (nor "cached plan must not change result
/// type" when the tables' columns differ).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_with_other_search_paths_get_their_own_statements() {
    let cluster = cluster();
    cluster
        .psql(
            "app",
            "create schema s1 authorization app; create schema s2 authorization app; \
             create table s1.t (v int); insert into s1.t values (1); \
             create table s2.t (v text); insert into s2.t values ('two'); \
             alter table s1.t owner to app; alter table s2.t owner to app",
        )
        .unwrap();
    // One server connection: both clients' statements land on it.
    let pg = Pgwake::start(&cluster, "size = 1\nmin_idle = 1");
    let connect = |schema: &str| {
        let url = format!(
            "host=127.0.0.1 port={} user=app dbname=app options=-csearch_path={schema}",
            pg.port
        );
        async move { pgwake_testkit::connect_url(&url).await.unwrap() }
    };
    let a = connect("s1").await;
    let b = connect("s2").await;
    let sa = a.prepare("select v from t").await.unwrap();
    let sb = b.prepare("select v from t").await.unwrap();
    for _ in 0..3 {
        let x: i32 = a.query_one(&sa, &[]).await.unwrap().get(0);
        let y: String = b.query_one(&sb, &[]).await.unwrap().get(0);
        assert_eq!((x, y.as_str()), (1, "two"));
    }
}
