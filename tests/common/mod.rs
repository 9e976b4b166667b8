//! Starting the `pgwake` binary in front of a test cluster.
#![allow(dead_code)]

pub mod deployenv;
pub mod pgbouncer;
pub mod proc;
pub mod python;
pub mod raw;

use std::future::Future;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pgwake_testkit::Cluster;
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};

/// A running `pgwake run`, killed on drop.
pub struct Pgwake {
    child: Child,
    pub port: u16,
    /// The admin HTTP port (`/metrics`, `/healthz`, `/readyz`).
    pub admin_port: u16,
    logs: Arc<Mutex<String>>,
    _dir: tempfile::TempDir,
}

/// The config a sidecar in front of `cluster` uses, plus `extra` TOML
/// (sections given in `extra` replace nothing; add keys via env instead).
pub fn config_for(cluster: &Cluster, port: u16, pool: &str) -> String {
    format!(
        "[listen]\naddr = \"127.0.0.1:{port}\"\nshutdown_grace = \"10s\"\n\
         [server]\nhost = \"127.0.0.1\"\nport = {}\ndbname = \"app\"\nsslmode = \"disable\"\nconnect_timeout = \"3s\"\n\
         [server.auth]\nuser = \"app\"\npassword = \"app-secret\"\n\
         [pool]\n{pool}\n",
        cluster.port()
    )
}

impl Pgwake {
    /// Starts pgwake for `cluster` with pool settings `pool` (TOML lines).
    pub fn start(cluster: &Cluster, pool: &str) -> Pgwake {
        let port = pgwake_testkit::free_port();
        Self::start_config(&config_for(cluster, port, pool), port, &[])
    }

    /// Starts pgwake with a whole config file; `port` must be its listen port.
    pub fn start_config(toml: &str, port: u16, env: &[(&str, &str)]) -> Pgwake {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("pgwake.toml");
        std::fs::write(&path, toml).expect("write config");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_pgwake"));
        cmd.arg("run")
            .arg("--config")
            .arg(&path)
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let admin_port = pgwake_testkit::free_port();
        cmd.env("PGWAKE_ADMIN_ADDR", format!("127.0.0.1:{admin_port}"));
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn pgwake");
        let logs = Arc::new(Mutex::new(String::new()));
        let sink = logs.clone();
        let stderr = child.stderr.take().expect("stderr");
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let mut l = sink.lock().unwrap();
                // Bounded: keep the last ~1 MiB of logs.
                if l.len() > 1 << 20 {
                    l.drain(..1 << 19);
                }
                l.push_str(&line);
                l.push('\n');
            }
        });
        let me = Pgwake {
            child,
            port,
            admin_port,
            logs,
            _dir: dir,
        };
        me.wait_listening();
        me
    }

    /// Until both the client port and the admin HTTP port accept: pgwake
    /// binds them one after the other, so the first alone does not say the
    /// second is up.
    fn wait_listening(&self) {
        for port in [self.port, self.admin_port] {
            let listening = poll_until(Duration::from_secs(5), || {
                std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
            });
            assert!(
                listening,
                "pgwake did not listen on {port}; logs:\n{}",
                self.logs()
            );
        }
    }

    /// Replaces the config file (reloaded on SIGHUP or RELOAD).
    pub fn rewrite_config(&self, toml: &str) {
        std::fs::write(self._dir.path().join("pgwake.toml"), toml).expect("write config");
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn logs(&self) -> String {
        self.logs.lock().unwrap().clone()
    }

    /// Waits (bounded) until pgwake has logged `text`.
    pub fn wait_for_log(&self, text: &str, limit: Duration) {
        if !poll_until(limit, || self.logs().contains(text)) {
            panic!(
                "pgwake did not log {text:?} within {limit:?}:\n{}",
                self.logs()
            );
        }
    }

    /// [`wait_for_log`](Self::wait_for_log) for async tests: it sleeps
    /// without holding up a runtime worker.
    pub async fn wait_for_log_async(&self, text: &str, limit: Duration) {
        if !poll_until_async(limit, || std::future::ready(self.logs().contains(text))).await {
            panic!(
                "pgwake did not log {text:?} within {limit:?}:\n{}",
                self.logs()
            );
        }
    }

    /// The value of `series` (name with labels, as printed) on `/metrics`
    /// now; 0 when absent.
    pub fn metric(&self, series: &str) -> f64 {
        let (status, body) = http_get(self.admin_port, "/metrics", Duration::from_secs(10));
        assert_eq!(status, 200, "/metrics: {body}");
        metric(&body, series)
    }

    /// Runs `sql` with psql through pgwake as `app` on database `db`
    /// (`pgwake` for the admin console): its output (tuples only,
    /// `|`-separated), or psql's error text.
    pub fn psql(&self, cluster: &Cluster, db: &str, sql: &str) -> Result<String, String> {
        let out = Command::new(cluster.bin().path("psql"))
            .args(["-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1"])
            .args([
                "-p",
                &self.port.to_string(),
                "-U",
                "app",
                "-d",
                db,
                "-c",
                sql,
            ])
            .env_remove("PGPASSWORD")
            .stdin(Stdio::null())
            .output()
            .expect("run psql");
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    pub fn url(&self, db: &str) -> String {
        format!("postgres://app@127.0.0.1:{}/{db}", self.port)
    }

    pub async fn client(&self) -> tokio_postgres::Client {
        match pgwake_testkit::connect("127.0.0.1", self.port, "app", None, "app").await {
            Ok(c) => c,
            Err(e) => panic!("connect through pgwake: {e:#}\nlogs:\n{}", self.logs()),
        }
    }

    /// Sends a signal (`TERM`, `INT`) to the process.
    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.pid().to_string())
            .status()
            .expect("run kill")
            .success();
        assert!(ok, "kill -{sig} failed");
    }

    /// Waits (bounded) for the process to exit and returns its status.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let mut status = None;
        let _ = poll_until(limit, || {
            status = self.child.try_wait().expect("try_wait");
            status.is_some()
        });
        status
    }

    /// Resident memory of the process, in KiB.
    pub fn rss_kib(&self) -> u64 {
        proc_status_kib(self.pid(), "VmRSS")
    }

    /// Peak resident memory of the process (VmHWM), in KiB.
    pub fn peak_rss_kib(&self) -> u64 {
        proc_status_kib(self.pid(), "VmHWM")
    }
}

/// A `kB` figure from `/proc/PID/status`, such as `VmRSS`.
fn proc_status_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
}

impl Drop for Pgwake {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// How often the waits below look again.
const POLL: Duration = Duration::from_millis(20);

/// Looks at `cond` every few milliseconds until it holds (true) or `limit`
/// has passed (false). For tests that wait for an event, not a time.
#[must_use]
pub fn poll_until(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(POLL);
    }
}

/// [`poll_until`] for async tests: `cond` may await (a query), and the
/// pauses do not hold up a runtime worker. A plain condition goes in as
/// `|| std::future::ready(…)`.
#[must_use]
pub async fn poll_until_async<F, Fut>(limit: Duration, mut cond: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    loop {
        if cond().await {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Waits (bounded) until `cond` holds; fails the test naming `what` when
/// `limit` passes first.
pub fn wait_until(what: &str, limit: Duration, cond: impl FnMut() -> bool) {
    assert!(
        poll_until(limit, cond),
        "timed out after {limit:?} waiting for {what}"
    );
}

/// [`wait_until`] for async tests; see [`poll_until_async`].
pub async fn wait_until_async<F, Fut>(what: &str, limit: Duration, cond: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    assert!(
        poll_until_async(limit, cond).await,
        "timed out after {limit:?} waiting for {what}"
    );
}

/// A test cluster with SCRAM logins for `app` and database `app`.
pub fn cluster() -> Cluster {
    Cluster::builder()
        .auth(pgwake_testkit::HostAuth::Scram)
        .user("app", "app-secret")
        .database("app", "app")
        .start()
        .expect("start cluster")
}

/// Server backends of user `app` (excluding the one asking).
pub fn app_backends(cluster: &Cluster) -> i64 {
    cluster
        .psql(
            "postgres",
            "select count(*) from pg_stat_activity where usename = 'app' and backend_type = 'client backend'",
        )
        .unwrap()
        .parse()
        .unwrap()
}

/// Queries running on the server (state `active`) whose text is `like`
/// (an SQL LIKE pattern), not counting the one asking.
pub fn running_queries(cluster: &Cluster, like: &str) -> i64 {
    let like = like.replace('\'', "''");
    cluster
        .psql(
            "postgres",
            &format!(
                "select count(*) from pg_stat_activity where state = 'active' \
                 and query like '{like}' and pid <> pg_backend_pid()"
            ),
        )
        .unwrap()
        .parse()
        .unwrap()
}

/// The SQLSTATE of a tokio-postgres error, or "" when it has none.
pub fn code(e: &tokio_postgres::Error) -> String {
    e.code().map(|c| c.code().to_owned()).unwrap_or_default()
}

/// Runs `select 1` as a new client of `url`: on failure, the SQLSTATE ("" if
/// none) and the message (with its hint).
pub async fn try_query(url: &str) -> Result<(), (String, String)> {
    let fail = |e: tokio_postgres::Error| {
        let text = e
            .as_db_error()
            .map(|d| format!("{} HINT: {}", d.message(), d.hint().unwrap_or("")))
            .unwrap_or_else(|| e.to_string());
        (code(&e), text)
    };
    let (c, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .map_err(fail)?;
    tokio::spawn(conn);
    c.simple_query("select 1").await.map(|_| ()).map_err(fail)
}

/// PEMs of a test CA, and of a server certificate and key it signed.
pub struct Pki {
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
}

/// A CA and a server certificate for `localhost` only.
pub fn pki() -> Pki {
    pki_for(&["localhost"])
}

/// A CA and a server certificate for `names` (DNS names or IP addresses).
pub fn pki_for(names: &[&str]) -> Pki {
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "pgwake test CA");
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
    let key = KeyPair::generate().unwrap();
    let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
    let cert = CertificateParams::new(names)
        .unwrap()
        .signed_by(&key, &ca)
        .unwrap();
    Pki {
        ca_pem: ca.pem(),
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    }
}

/// Whether the tests run as root (switching users, as CI can).
pub fn is_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self")
        .map(|m| m.uid() == 0)
        .unwrap_or(false)
}

/// A cluster like [`cluster`], with `ssl = on` and `pki`'s server certificate.
pub fn tls_cluster(pki: &Pki) -> pgwake_testkit::Cluster {
    pgwake_testkit::Cluster::builder()
        .auth(pgwake_testkit::HostAuth::Scram)
        .user("app", "app-secret")
        .database("app", "app")
        .tls(&pki.cert_pem, &pki.key_pem)
        .start()
        .expect("start TLS cluster")
}

/// `GET path` on 127.0.0.1:`port`: the status code and the body. Bounded by
/// `limit` (a `/readyz?wait=` request may take that long).
pub fn http_get(port: u16, path: &str, limit: Duration) -> (u16, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect to admin HTTP");
    s.set_read_timeout(Some(limit)).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).expect("read HTTP response");
    let text = String::from_utf8_lossy(&raw).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP response: {text:?}"));
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// The value of the sample `series` (name with labels, exactly as printed)
/// in a Prometheus text exposition, or 0 when absent.
pub fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| {
            let (name, value) = l.rsplit_once(' ')?;
            (name == series).then(|| value.parse().ok()).flatten()
        })
        .unwrap_or(0.0)
}

/// Runs pgbench through pgwake on `port` as `app` on database `app`; its
/// output. Fails the test unless pgbench exits 0.
pub fn pgbench(cluster: &pgwake_testkit::Cluster, port: u16, args: &[&str]) -> String {
    pgbench_with_password(cluster, port, None, args)
}

/// [`pgbench`] with `PGPASSWORD` set to `password`, for a pooler (or the
/// server itself) that asks `app` for one.
pub fn pgbench_with_password(
    cluster: &pgwake_testkit::Cluster,
    port: u16,
    password: Option<&str>,
    args: &[&str],
) -> String {
    let mut cmd = std::process::Command::new(cluster.bin().path("pgbench"));
    cmd.args(["-h", "127.0.0.1", "-U", "app", "-p"])
        .arg(port.to_string())
        .args(args)
        .arg("app")
        .env_remove("PGPASSWORD");
    if let Some(pw) = password {
        cmd.env("PGPASSWORD", pw);
    }
    let out = cmd.output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "pgbench {args:?} failed:\n{text}");
    text
}

/// Runs psql with a libpq connection string (and `env`, e.g. PGPASSWORD);
/// (success, output).
pub fn psql(
    cluster: &pgwake_testkit::Cluster,
    conninfo: &str,
    sql: &str,
    env: &[(&str, &str)],
) -> (bool, String) {
    let mut cmd = Command::new(cluster.bin().path("psql"));
    cmd.args(["-X", "-A", "-t", "-c", sql, conninfo])
        .env_remove("PGPASSWORD")
        .env_remove("PGSSLMODE")
        .env("PGCONNECT_TIMEOUT", "10")
        .stdin(Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("run psql");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// Runs the pgwake binary with `args`, without the caller's PGWAKE_*
/// variables but with `env`: (exit code, stdout, stderr).
pub fn run_pgwake(args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    run_pgwake_in(None, args, env)
}

/// [`run_pgwake`] in the directory `dir` (relative paths resolve there).
pub fn run_pgwake_in(
    dir: Option<&std::path::Path>,
    args: &[&str],
    env: &[(&str, &str)],
) -> (i32, String, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_pgwake"));
    cmd.args(args).stdin(Stdio::null());
    if let Some(dir) = dir {
        cmd.current_dir(dir);
    }
    for (k, _) in std::env::vars().filter(|(k, _)| k.starts_with("PGWAKE_")) {
        cmd.env_remove(k);
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A tokio-postgres TLS connector trusting `ca_pem` and checking the host
/// name: libpq's `verify-full`.
pub fn verify_full(ca_pem: &str) -> tokio_postgres_rustls::MakeRustlsConnect {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls::pki_types::CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    tokio_postgres_rustls::MakeRustlsConnect::new(config)
}

/// The first column of the first row `sql` returns (simple protocol),
/// within `limit`; panics naming `sql` otherwise.
pub async fn first_value(c: &tokio_postgres::Client, sql: &str, limit: Duration) -> String {
    let msgs = tokio::time::timeout(limit, c.simple_query(sql))
        .await
        .unwrap_or_else(|_| panic!("{sql}: no outcome within {limit:?}"))
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    msgs.iter()
        .find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_owned),
            _ => None,
        })
        .unwrap_or_else(|| panic!("{sql}: no row"))
}
