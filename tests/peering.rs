//! Cancels across replicas (`[peering]`): two pgwake replicas in front of
//! one server, a query started through one, its cancel request sent to the
//! other, as a load balancer would send it. Raw protocol clients, because
//! drivers send a cancel only to the host they are connected to.

mod common;

use common::raw::startup;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::{cluster, config_for, http_get, metric, pki, Pgwake};
use pgwake_proxy::peering::replica_id;
use pgwake_testkit::{free_port, Cluster};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

const POOL: &str = "size = 4\nmin_idle = 1";
/// Bound on any one wait for pgwake or the server.
const LIMIT: Duration = Duration::from_secs(10);
/// The acceptance figure: a cancel through the other replica ends
/// the query within this.
const CANCEL_WITHIN: Duration = Duration::from_secs(1);

/// Two replicas for `cluster` on `ports`, each with `peering` (a TOML
/// section) and `listen` lines added to `[listen]`.
fn replicas(cluster: &Cluster, ports: [u16; 2], peering: &str, listen: &str) -> [Pgwake; 2] {
    ports.map(|port| {
        let toml = config_for(cluster, port, POOL)
            .replace("[listen]\n", &format!("[listen]\n{listen}"))
            + peering;
        Pgwake::start_config(&toml, port, &[])
    })
}

/// A `[peering]` section listing both replicas: the same on each.
fn peers(ports: [u16; 2]) -> String {
    format!(
        "[peering]\npeers = [\"127.0.0.1:{}\", \"127.0.0.1:{}\"]\n",
        ports[0], ports[1]
    )
}

fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

fn query(sql: &str) -> Vec<u8> {
    let mut v = vec![b'Q'];
    v.extend_from_slice(&u32::try_from(sql.len() + 5).unwrap().to_be_bytes());
    v.extend_from_slice(sql.as_bytes());
    v.push(0);
    v
}

/// A CancelRequest quoting (pid, key).
fn cancel_request(pid: u32, key: u32) -> Vec<u8> {
    [16u32, 80_877_102, pid, key]
        .iter()
        .flat_map(|w| w.to_be_bytes())
        .collect()
}

/// One backend message: (tag, body).
async fn message<S: AsyncRead + Unpin>(s: &mut S) -> (u8, Vec<u8>) {
    let mut head = [0u8; 5];
    tokio::time::timeout(LIMIT, s.read_exact(&mut head))
        .await
        .expect("a message in time")
        .expect("read a message");
    let len = usize::try_from(u32::from_be_bytes([head[1], head[2], head[3], head[4]])).unwrap();
    assert!((4..1 << 20).contains(&len), "message length {len}");
    let mut body = vec![0u8; len - 4];
    tokio::time::timeout(LIMIT, s.read_exact(&mut body))
        .await
        .expect("a message body in time")
        .expect("read a message body");
    (head[0], body)
}

fn sqlstate(body: &[u8]) -> String {
    body.split(|&b| b == 0)
        .find_map(|f| f.strip_prefix(b"C"))
        .map(|c| String::from_utf8_lossy(c).into_owned())
        .unwrap_or_default()
}

/// Logs in as app (trusted on loopback) and returns the (pid, key) of
/// BackendKeyData.
async fn log_in<S: AsyncRead + AsyncWrite + Unpin>(s: &mut S) -> (u32, u32) {
    s.write_all(&startup("app", "app")).await.unwrap();
    let mut keys = None;
    for _ in 0..100 {
        let (tag, body) = message(s).await;
        match tag {
            b'K' => {
                let w = |i: usize| u32::from_be_bytes(body[i..i + 4].try_into().unwrap());
                keys = Some((w(0), w(4)));
            }
            b'Z' => return keys.expect("BackendKeyData before ReadyForQuery"),
            b'E' => panic!("login refused: {}", String::from_utf8_lossy(&body)),
            _ => {}
        }
    }
    panic!("no ReadyForQuery after 100 messages");
}

async fn client(port: u16) -> (TcpStream, u32, u32) {
    let mut s = TcpStream::connect(addr(port)).await.unwrap();
    let (pid, key) = log_in(&mut s).await;
    (s, pid, key)
}

/// Reads a query's answer up to ReadyForQuery: the SQLSTATE of its error,
/// or `None` when it succeeded.
async fn outcome<S: AsyncRead + Unpin>(s: &mut S) -> Option<String> {
    let mut error = None;
    for _ in 0..1000 {
        match message(s).await {
            (b'E', body) => error = Some(sqlstate(&body)),
            (b'Z', _) => return error,
            _ => {}
        }
    }
    panic!("no ReadyForQuery after 1000 messages");
}

/// Sends a CancelRequest on `s` and waits for pgwake to close it, which it
/// does once it has handled the request (forwarded it or not).
async fn send_cancel<S: AsyncRead + AsyncWrite + Unpin>(mut s: S, pid: u32, key: u32) {
    s.write_all(&cancel_request(pid, key)).await.unwrap();
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(LIMIT, s.read_to_end(&mut rest)).await;
    assert!(closed.is_ok(), "pgwake closes a cancel connection");
    assert!(rest.is_empty(), "a cancel request gets no answer: {rest:?}");
}

async fn cancel_at(port: u16, pid: u32, key: u32) {
    send_cancel(TcpStream::connect(addr(port)).await.unwrap(), pid, key).await;
}

/// Queries running `pg_sleep` on the server.
fn sleeping(cluster: &Cluster) -> i64 {
    common::running_queries(cluster, "select pg_sleep%")
}

/// Waits (bounded) until `n` sleeps run on the server.
async fn wait_sleeping(cluster: &Cluster, n: i64) {
    common::wait_until_async(&format!("{n} pg_sleep queries to run"), LIMIT, || {
        std::future::ready(sleeping(cluster) == n)
    })
    .await;
}

/// Cancels the query running on `s` (pid, key) by a request sent to
/// `port`; asserts it ends with 57014 within [`CANCEL_WITHIN`] and returns
/// how long that took.
async fn cancel_through<S: AsyncRead + Unpin>(
    s: &mut S,
    port: u16,
    pid: u32,
    key: u32,
    what: &str,
) -> Duration {
    let began = Instant::now();
    cancel_at(port, pid, key).await;
    let ended = outcome(s).await;
    let took = began.elapsed();
    assert_eq!(ended.as_deref(), Some("57014"), "{what}");
    assert!(took < CANCEL_WITHIN, "{what}: took {took:?}");
    eprintln!("{what}: the query ended {took:?} after the cancel was sent");
    took
}

fn metrics(pg: &Pgwake) -> String {
    http_get(pg.admin_port, "/metrics", LIMIT).1
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_peering_a_cancel_sent_to_the_other_replica_is_lost() {
    // The control for the test below: the issue as reported.
    let cluster = cluster();
    let ports = [free_port(), free_port()];
    let [a, b] = replicas(&cluster, ports, "", "");
    let (mut c, pid, key) = client(ports[0]).await;
    c.write_all(&query("select pg_sleep(30)")).await.unwrap();
    wait_sleeping(&cluster, 1).await;
    cancel_at(ports[1], pid, key).await;
    // B has handled the request (it closed the connection): dropped.
    assert_eq!(
        metric(
            &metrics(&b),
            "pgwake_cancels_dropped_total{reason=\"unknown_key\"}"
        ),
        1.0
    );
    // The duration is the scenario: the query outlives the second within
    // which a peered cancel ends it.
    let mut byte = [0u8; 1];
    let answered = tokio::time::timeout(CANCEL_WITHIN, c.read(&mut byte)).await;
    assert!(answered.is_err(), "the query ended: {answered:?}");
    assert_eq!(sleeping(&cluster), 1, "the query still runs");
    cancel_through(
        &mut c,
        ports[0],
        pid,
        key,
        "without peering, via the same replica",
    )
    .await;
    drop(a);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_sent_to_the_other_replica_reaches_the_query_within_a_second() {
    let cluster = cluster();
    let ports = [free_port(), free_port()];
    let [a, b] = replicas(&cluster, ports, &peers(ports), "");

    // A replica's clients share its pid (positive, from the address they
    // reached it at) and differ by key; the other replica's pid differs.
    let (mut c1, pid, key1) = client(ports[0]).await;
    let (mut c2, pid2, key2) = client(ports[0]).await;
    let (mut cb, pid_b, key_b) = client(ports[1]).await;
    assert_eq!((pid, pid2), (replica_id(addr(ports[0])), pid));
    assert_eq!(pid_b, replica_id(addr(ports[1])));
    assert_ne!(key1, key2);
    assert!(pid < 1 << 31 && pid_b < 1 << 31 && pid != pid_b);

    // Two queries through A; the cancel through B reaches the right one.
    c1.write_all(&query("select pg_sleep(30)")).await.unwrap();
    c2.write_all(&query("select pg_sleep(30)")).await.unwrap();
    wait_sleeping(&cluster, 2).await;
    cancel_through(&mut c1, ports[1], pid, key1, "A's query, cancel sent to B").await;
    assert_eq!(sleeping(&cluster), 1, "the other client's query runs on");
    cancel_through(
        &mut c2,
        ports[1],
        pid,
        key2,
        "A's second query, cancel sent to B",
    )
    .await;
    // And the other way round.
    cb.write_all(&query("select pg_sleep(30)")).await.unwrap();
    wait_sleeping(&cluster, 1).await;
    cancel_through(
        &mut cb,
        ports[0],
        pid_b,
        key_b,
        "B's query, cancel sent to A",
    )
    .await;
    // The sessions go on.
    c1.write_all(&query("select 1")).await.unwrap();
    assert_eq!(outcome(&mut c1).await, None);

    let (ma, mb) = (metrics(&a), metrics(&b));
    assert_eq!(
        metric(&mb, "pgwake_cancels_forwarded_total{result=\"ok\"}"),
        2.0,
        "{mb}"
    );
    assert_eq!(
        metric(&ma, "pgwake_cancels_forwarded_total{result=\"ok\"}"),
        1.0,
        "{ma}"
    );
    assert_eq!(metric(&ma, "pgwake_cancels_total"), 2.0, "{ma}");
    assert_eq!(metric(&mb, "pgwake_cancels_total"), 1.0, "{mb}");

    // A key no peer issued: B connects nowhere. (It has handled the
    // request once it closes the connection, so a connection to the
    // outsider would be waiting in its accept queue by then.)
    let outsider = std::net::TcpListener::bind(addr(0)).unwrap();
    outsider.set_nonblocking(true).unwrap();
    let outsider_id = replica_id(outsider.local_addr().unwrap());
    cancel_at(ports[1], outsider_id, rand::random()).await;
    let accepted = outsider.accept();
    assert!(
        matches!(&accepted, Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
        "B connected outside its peers: {accepted:?}"
    );
    // B's own pid with a key it never issued: not forwarded either.
    cancel_at(ports[1], pid_b, key_b.wrapping_add(1)).await;
    let mb = metrics(&b);
    assert_eq!(
        metric(&mb, "pgwake_cancels_dropped_total{reason=\"no_peer\"}"),
        1.0,
        "{mb}"
    );
    assert_eq!(
        metric(&mb, "pgwake_cancels_dropped_total{reason=\"unknown_key\"}"),
        1.0,
        "{mb}"
    );
    assert_eq!(
        metric(&mb, "pgwake_cancels_forwarded_total{result=\"ok\"}"),
        2.0,
        "{mb}"
    );
    assert!(!a.logs().contains("panicked") && !b.logs().contains("panicked"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_found_through_a_service_name_take_each_others_cancels() {
    // A knows B only by a name that resolves to it, as a headless Service.
    let cluster = cluster();
    let ports = [free_port(), free_port()];
    let service = format!("[peering]\nservice = \"localhost:{}\"\n", ports[1]);
    let [a, _b] = replicas(&cluster, ports, &service, "");
    let (mut c, pid, key) = client(ports[1]).await;
    c.write_all(&query("select pg_sleep(30)")).await.unwrap();
    wait_sleeping(&cluster, 1).await;
    cancel_through(
        &mut c,
        ports[0],
        pid,
        key,
        "B's query, cancel sent to A, B found by name",
    )
    .await;
    let ma = metrics(&a);
    assert_eq!(
        metric(&ma, "pgwake_cancels_forwarded_total{result=\"ok\"}"),
        1.0,
        "{ma}"
    );
}

/// A TLS connection to pgwake on `port`, the certificate checked against
/// `ca_pem` for the name localhost.
async fn tls_to(port: u16, ca_pem: &str) -> impl AsyncRead + AsyncWrite + Unpin + Send + use<> {
    use tokio_postgres::tls::{MakeTlsConnect, TlsConnect};
    let mut s = TcpStream::connect(addr(port)).await.unwrap();
    // SSLRequest
    s.write_all(&[0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f])
        .await
        .unwrap();
    let mut answer = [0u8; 1];
    s.read_exact(&mut answer).await.unwrap();
    assert_eq!(answer[0], b'S', "pgwake offers TLS");
    let mut connector = common::verify_full(ca_pem);
    let tls = MakeTlsConnect::<TcpStream>::make_tls_connect(&mut connector, "localhost").unwrap();
    tokio::time::timeout(LIMIT, tls.connect(s))
        .await
        .expect("TLS handshake in time")
        .expect("TLS handshake")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_requiring_tls_forward_cancels_sent_in_plaintext_or_over_tls() {
    // The shipped shared-service manifests require TLS of clients; cancel
    // requests, as PostgreSQL's, are still taken in plaintext (libpq before
    // 17 sends them so), and travel between replicas in plaintext.
    let cluster = cluster();
    let pki = pki();
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, text: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p.display().to_string()
    };
    let (cert, key) = (
        write("cert.pem", &pki.cert_pem),
        write("key.pem", &pki.key_pem),
    );
    let listen = format!(
        "client_tls_mode = \"require\"\nclient_tls_cert = \"{cert}\"\nclient_tls_key = \"{key}\"\n"
    );
    let ports = [free_port(), free_port()];
    let [a, b] = replicas(&cluster, ports, &peers(ports), &listen);

    let mut c = tls_to(ports[0], &pki.ca_pem).await;
    let (pid, key) = log_in(&mut c).await;
    assert_eq!(pid, replica_id(addr(ports[0])));
    c.write_all(&query("select pg_sleep(30)")).await.unwrap();
    wait_sleeping(&cluster, 1).await;
    cancel_through(
        &mut c,
        ports[1],
        pid,
        key,
        "TLS client of A, plaintext cancel sent to B",
    )
    .await;

    c.write_all(&query("select pg_sleep(30)")).await.unwrap();
    wait_sleeping(&cluster, 1).await;
    let began = Instant::now();
    send_cancel(tls_to(ports[1], &pki.ca_pem).await, pid, key).await;
    assert_eq!(outcome(&mut c).await.as_deref(), Some("57014"));
    let took = began.elapsed();
    assert!(took < CANCEL_WITHIN, "cancel over TLS to B took {took:?}");
    eprintln!("TLS client of A, cancel over TLS sent to B: the query ended {took:?} after");
    let mb = metrics(&b);
    assert_eq!(
        metric(&mb, "pgwake_cancels_forwarded_total{result=\"ok\"}"),
        2.0,
        "{mb}"
    );
    assert_eq!(metric(&metrics(&a), "pgwake_cancels_total"), 2.0);
}

/// A round-robin TCP balancer on 127.0.0.1 in front of `ports`, as a
/// Kubernetes Service is: connection i goes to `ports[i % 2]`, so a
/// driver's cancel request lands on the other replica than its query.
async fn round_robin(ports: [u16; 2]) -> (u16, tokio::task::JoinHandle<()>) {
    let l = tokio::net::TcpListener::bind(addr(0)).await.unwrap();
    let port = l.local_addr().unwrap().port();
    let task = tokio::spawn(async move {
        for i in 0..100 {
            let Ok((mut inbound, _)) = l.accept().await else {
                return;
            };
            let to = addr(ports[i % 2]);
            tokio::spawn(async move {
                if let Ok(mut out) = TcpStream::connect(to).await {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut out).await;
                }
            });
        }
    });
    (port, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn driver_cancels_through_a_balancer_reach_the_other_replicas_query() {
    let cluster = cluster();
    let ports = [free_port(), free_port()];
    let [_a, b] = replicas(&cluster, ports, &peers(ports), "");
    let (lb, balancer) = round_robin(ports).await;

    // tokio-postgres: the query through A, its CancelToken through B.
    let (client, conn) = tokio_postgres::connect(
        &format!("host=127.0.0.1 port={lb} user=app dbname=app"),
        tokio_postgres::NoTls,
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    let token = client.cancel_token();
    let running = tokio::spawn(async move { client.simple_query("select pg_sleep(30)").await });
    wait_sleeping(&cluster, 1).await;
    let began = Instant::now();
    token.cancel_query(tokio_postgres::NoTls).await.unwrap();
    let err = tokio::time::timeout(LIMIT, running)
        .await
        .expect("the query ends")
        .unwrap()
        .unwrap_err();
    let took = began.elapsed();
    assert_eq!(common::code(&err), "57014", "{err}");
    assert!(took < CANCEL_WITHIN, "tokio-postgres cancel took {took:?}");
    eprintln!("tokio-postgres, cancel through the balancer to B: the query ended {took:?} after");

    // psql (libpq): Ctrl-C while the query runs through A sends libpq's
    // cancel request, which the balancer takes to B.
    let mut psql = std::process::Command::new(cluster.bin().path("psql"))
        .args(["-X", "-c", "select pg_sleep(30)"])
        .arg(format!(
            "host=127.0.0.1 port={lb} user=app dbname=app sslmode=disable gssencmode=disable"
        ))
        .env_remove("PGPASSWORD")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    wait_sleeping(&cluster, 1).await;
    let began = Instant::now();
    let sent = std::process::Command::new("kill")
        .args(["-INT", &psql.id().to_string()])
        .status()
        .unwrap();
    assert!(sent.success());
    let mut exited = None;
    for _ in 0..500 {
        if let Some(s) = psql.try_wait().unwrap() {
            exited = Some(s);
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let took = began.elapsed();
    let status = exited.expect("psql ends after Ctrl-C");
    let out = psql.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !status.success() && stderr.contains("canceling statement due to user request"),
        "{stderr}"
    );
    assert!(took < CANCEL_WITHIN, "psql cancel took {took:?}");
    eprintln!("psql (libpq), Ctrl-C through the balancer to B: psql ended {took:?} after");
    let mb = metrics(&b);
    assert_eq!(
        metric(&mb, "pgwake_cancels_forwarded_total{result=\"ok\"}"),
        2.0,
        "{mb}"
    );
    balancer.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_address_that_leads_back_to_the_replicas_makes_no_loop() {
    // A balancer listed among the peers by mistake (a Service's virtual IP
    // instead of its headless name), and a cancel request quoting the
    // balancer's id: each replica forwards it at most once.
    let cluster = cluster();
    let ports = [free_port(), free_port()];
    let (lb, balancer) = round_robin(ports).await;
    let peering = format!(
        "[peering]\npeers = [\"127.0.0.1:{}\", \"127.0.0.1:{}\", \"127.0.0.1:{lb}\"]\n",
        ports[0], ports[1]
    );
    let [a, b] = replicas(&cluster, ports, &peering, "");
    let lb_id = replica_id(addr(lb));
    for _ in 0..2 {
        // Returns once A has handled it: A -> balancer -> A or B -> ...
        cancel_at(ports[0], lb_id, rand::random()).await;
    }
    let (ma, mb) = (metrics(&a), metrics(&b));
    let forwarded = |m: &str| metric(m, "pgwake_cancels_forwarded_total{result=\"ok\"}");
    let looped = |m: &str| metric(m, "pgwake_cancels_dropped_total{reason=\"in_flight\"}");
    assert_eq!((forwarded(&ma), forwarded(&mb)), (2.0, 1.0), "{ma}\n{mb}");
    assert_eq!((looped(&ma), looped(&mb)), (2.0, 0.0), "{ma}\n{mb}");
    balancer.abort();
}
