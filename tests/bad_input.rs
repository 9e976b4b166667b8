//! Malformed and hostile input: every case gets an ErrorResponse or a
//! closed connection, memory stays bounded, and a normal client is served
//! throughout.

mod common;

use common::raw::{first_error_sqlstate, startup};

use std::time::Duration;

use common::{cluster, Pgwake};
use rand::{Rng, SeedableRng};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Sends `bytes`, half-closes, and returns everything pgwake answers before closing.
async fn exchange(port: u16, bytes: &[u8], half_close: bool) -> Vec<u8> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    s.write_all(bytes).await.unwrap();
    if half_close {
        s.shutdown().await.unwrap();
    }
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out))
        .await
        .expect("pgwake answers and closes promptly")
        .unwrap_or_default();
    out
}

/// Everything pgwake sends until it closes the connection (within `limit`,
/// else the test fails with `what`), and the SQLSTATE of its first error.
async fn error_then_close(
    s: &mut TcpStream,
    limit: Duration,
    what: &str,
) -> (Option<String>, Vec<u8>) {
    let mut reply = Vec::new();
    tokio::time::timeout(limit, s.read_to_end(&mut reply))
        .await
        .expect(what)
        .unwrap();
    (first_error_sqlstate(&reply), reply)
}

async fn normal_client_works(pg: &Pgwake) {
    let c = tokio::time::timeout(Duration::from_secs(5), pg.client())
        .await
        .expect("a normal client connects at once");
    let v: i32 = tokio::time::timeout(Duration::from_secs(5), c.query_one("select 1", &[]))
        .await
        .expect("and is served at once")
        .unwrap()
        .get(0);
    assert_eq!(v, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_startups_get_errors_and_harm_nobody() {
    let cluster = cluster();
    let pg = Pgwake::start(&cluster, "size = 5\nmin_idle = 1");
    let port = pg.port;

    let http = exchange(port, b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n", false).await;
    assert_eq!(
        first_error_sqlstate(&http).as_deref(),
        Some("08P01"),
        "HTTP request: {http:?}"
    );
    normal_client_works(&pg).await;

    let huge = exchange(port, &0x7fff_ffffu32.to_be_bytes(), false).await;
    assert_eq!(first_error_sqlstate(&huge).as_deref(), Some("08P01"));

    let mut v4 = 8u32.to_be_bytes().to_vec();
    v4.extend(0x0004_0000u32.to_be_bytes());
    let unknown = exchange(port, &v4, false).await;
    assert_eq!(
        first_error_sqlstate(&unknown).as_deref(),
        Some("0A000"),
        "unknown protocol: {unknown:?}"
    );

    let mut no_user = 9u32.to_be_bytes().to_vec();
    no_user.extend(196_608u32.to_be_bytes());
    no_user.push(0);
    assert_eq!(
        first_error_sqlstate(&exchange(port, &no_user, false).await).as_deref(),
        Some("28000")
    );

    let mut rng = rand::rngs::StdRng::seed_from_u64(0x5eed);
    for i in 0..200 {
        let len = rng.random_range(1..300);
        let bytes: Vec<u8> = (0..len).map(|_| rng.random()).collect();
        let reply = exchange(port, &bytes, true).await;
        // An ErrorResponse, a lone 'N' to something that parsed as an
        // encryption request, or a plain close: never anything else.
        assert!(
            reply.is_empty() || reply[0] == b'E' || reply[0] == b'N',
            "random input {i} got {reply:?}"
        );
        if i % 50 == 0 {
            normal_client_works(&pg).await;
        }
    }
    normal_client_works(&pg).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_message_after_startup_is_refused() {
    let cluster = cluster();
    let pg = Pgwake::start(&cluster, "size = 5\nmin_idle = 1");
    let mut s = TcpStream::connect(("127.0.0.1", pg.port)).await.unwrap();
    s.write_all(&startup("app", "app")).await.unwrap();
    // Read the startup reply up to ReadyForQuery.
    let mut got = Vec::new();
    while !got.windows(6).any(|w| w == [b'Z', 0, 0, 0, 5, b'I']) {
        let mut chunk = [0u8; 1024];
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut chunk))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0, "closed during startup");
        got.extend_from_slice(&chunk[..n]);
    }
    // A Query claiming 1 GiB.
    let mut q = vec![b'Q'];
    q.extend((1u32 << 30).to_be_bytes());
    q.extend(b"select 1");
    s.write_all(&q).await.unwrap();
    let (code, reply) = error_then_close(
        &mut s,
        Duration::from_secs(5),
        "answered and closed at once",
    )
    .await;
    assert!(
        matches!(code.as_deref(), Some("54000") | Some("08P01")),
        "reply {reply:?}"
    );
    normal_client_works(&pg).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_thousand_silent_connections_cost_little() {
    let cluster = cluster();
    let pg = Pgwake::start(&cluster, "size = 5\nmin_idle = 1");
    normal_client_works(&pg).await;
    let before = pg.rss_kib();
    let mut silent = Vec::with_capacity(2000);
    for i in 0..2000 {
        silent.push(TcpStream::connect(("127.0.0.1", pg.port)).await.unwrap());
        if i % 500 == 0 {
            normal_client_works(&pg).await;
        }
    }
    normal_client_works(&pg).await;
    let during = pg.rss_kib();
    assert!(
        during < 200 * 1024,
        "RSS {during} KiB with 2,000 silent connections (was {before} KiB)"
    );
    drop(silent);
    normal_client_works(&pg).await;
}

/// The state of pgwake's end of the TCP connection from `client_port`, as
/// the kernel reports it (`ss`): `SYN-RECV` while the kernel holds it
/// unaccepted, `ESTAB` once it is handed over; `None` when there is none.
fn server_side_state(port: u16, client_port: u16) -> Option<String> {
    let out = std::process::Command::new("ss")
        .args([
            "-Htan",
            &format!("( sport = :{port} and dport = :{client_port} )"),
        ])
        .output()
        .expect("run ss (iproute2)");
    assert!(out.status.success(), "ss: {out:?}");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .map(str::to_owned)
}

/// `listen.tcp_defer_accept`: a TCP client that has connected but sent
/// nothing stays with the kernel (pgwake is not woken for it); the moment
/// it sends its startup packet it is handed over and logs in as usual.
/// With the option off, the same silent client is accepted at once (the
/// control: `ss` tells the two apart).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_tcp_client_waits_in_the_kernel_until_it_speaks() {
    let cluster = cluster();
    for (defer, held) in [("30s", true), ("0s", false)] {
        let port = pgwake_testkit::free_port();
        let pg = Pgwake::start_config(
            &common::config_for(&cluster, port, "size = 2\nmin_idle = 1"),
            port,
            &[("PGWAKE_LISTEN_TCP_DEFER_ACCEPT", defer)],
        );
        let mut s = TcpStream::connect(("127.0.0.1", pg.port)).await.unwrap();
        let client_port = s.local_addr().unwrap().port();
        let want = if held { "SYN-RECV" } else { "ESTAB" };
        common::wait_until(
            &format!("tcp_defer_accept = {defer}: pgwake's side of a silent client in {want}"),
            Duration::from_secs(10),
            || server_side_state(pg.port, client_port).as_deref() == Some(want),
        );
        if held {
            // Still held: the kernel keeps it for the whole period.
            assert_eq!(
                server_side_state(pg.port, client_port).as_deref(),
                Some("SYN-RECV")
            );
        }
        s.write_all(&startup("app", "app")).await.unwrap();
        let reply = tokio::time::timeout(Duration::from_secs(10), messages_until_ready(&mut s))
            .await
            .expect("the login is answered at once");
        assert_eq!(
            reply.last().map(|(t, _)| *t),
            Some(b'Z'),
            "tcp_defer_accept = {defer}: login reply {reply:?}"
        );
        assert_eq!(
            server_side_state(pg.port, client_port).as_deref(),
            Some("ESTAB")
        );
        normal_client_works(&pg).await;
    }
}

/// As shipped (`tcp_defer_accept = "1s"`), a client that connects and never
/// sends anything is not held forever: the kernel hands it over after the
/// period and `client_login_timeout` closes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_speaks_is_closed_at_the_login_timeout() {
    let cluster = cluster();
    let port = pgwake_testkit::free_port();
    let pg = Pgwake::start_config(
        &common::config_for(&cluster, port, "size = 2\nmin_idle = 1"),
        port,
        &[("PGWAKE_LISTEN_CLIENT_LOGIN_TIMEOUT", "1s")],
    );
    let mut s = TcpStream::connect(("127.0.0.1", pg.port)).await.unwrap();
    let (code, reply) = error_then_close(
        &mut s,
        Duration::from_secs(20),
        "closed within the defer period and the login timeout",
    )
    .await;
    assert_eq!(code.as_deref(), Some("08P01"), "reply {reply:?}");
    assert_eq!(
        pg.metric("pgwake_timeouts_total{kind=\"client_login\"}"),
        1.0
    );
    normal_client_works(&pg).await;
}

/// Reads backend messages until ReadyForQuery (or an error, or the end).
async fn messages_until_ready(s: &mut TcpStream) -> Vec<(u8, Vec<u8>)> {
    let mut out = Vec::new();
    loop {
        let mut head = [0u8; 5];
        if s.read_exact(&mut head).await.is_err() {
            return out;
        }
        let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
        let mut body = vec![0u8; len - 4];
        s.read_exact(&mut body).await.unwrap();
        let done = matches!(head[0], b'Z' | b'E');
        out.push((head[0], body));
        if done {
            return out;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_newer_protocol_and_protocol_options_are_negotiated_down() {
    let cluster = cluster();
    let pg = Pgwake::start(&cluster, "size = 2\nmin_idle = 1");
    // Protocol 3.2 with a protocol option and a setting, as a newer libpq
    // might send: pgwake offers 3.0 and names the option it does not know.
    let mut packet = common::raw::startup_with(
        "app",
        "app",
        &[
            ("_pq_.test_option", "on"),
            ("application_name", "negotiated"),
        ],
    );
    packet[4..8].copy_from_slice(&0x0003_0002u32.to_be_bytes());
    let mut s = TcpStream::connect(("127.0.0.1", pg.port)).await.unwrap();
    s.write_all(&packet).await.unwrap();
    let login = tokio::time::timeout(Duration::from_secs(10), messages_until_ready(&mut s))
        .await
        .expect("pgwake answers the login");
    let tags: Vec<u8> = login.iter().map(|(t, _)| *t).collect();
    assert_eq!(tags.first(), Some(&b'v'), "{login:?}");
    let v = &login[0].1;
    assert_eq!(&v[..4], &0x0003_0000u32.to_be_bytes(), "offers 3.0: {v:?}");
    assert_eq!(&v[4..8], &1u32.to_be_bytes(), "one option refused: {v:?}");
    assert_eq!(&v[8..], b"_pq_.test_option\0");
    assert_eq!(tags.get(1), Some(&b'R'), "then AuthenticationOk: {login:?}");
    assert_eq!(tags.last(), Some(&b'Z'), "and ReadyForQuery: {login:?}");

    // The session works, with the setting the startup packet asked for.
    s.write_all(&common::raw::frame(
        b'Q',
        b"select current_setting('application_name')\0",
    ))
    .await
    .unwrap();
    let reply = tokio::time::timeout(Duration::from_secs(10), messages_until_ready(&mut s))
        .await
        .expect("the query is answered");
    let row = reply
        .iter()
        .find(|(t, _)| *t == b'D')
        .map(|(_, b)| b.clone())
        .expect("a data row");
    assert!(row.ends_with(b"negotiated"), "{reply:?}");
    normal_client_works(&pg).await;
}
