#![forbid(unsafe_code)]
//! `pgwake run` with the sidecar quick start configuration, driven by real Python
//! clients: psycopg 3 from several threads, and a Django site served by
//! gunicorn with `CONN_MAX_AGE = 0`, with psycopg's default client-side
//! binding and with `server_side_binding = True`.
//!
//! The Python side lives in `tests/python/`. Its virtualenv is
//! `target/pyenv`, created here (or by `.ci/run`) from
//! `tests/python/requirements.txt` when missing. Every process started here
//! runs in its own process group, which is killed when the test ends, passed
//! or failed.

mod common;

use std::fs;
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use common::proc::Proc;
use common::python::{ensure_venv, python_cmd, python_dir, workspace};
use pgwake_testkit::{free_port, Cluster, HostAuth};

const USER: &str = "app";
const PASSWORD: &str = "app-secret";
const DB: &str = "app";

const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);
const MIGRATE_TIMEOUT: Duration = Duration::from_secs(120);
/// Outer bound on a load script; each script also has its own deadline below it.
const LOAD_TIMEOUT: Duration = Duration::from_secs(300);
const LOAD_DEADLINE_SECS: u32 = 180;

const PSYCOPG_THREADS: u32 = 8;
const PSYCOPG_ITERATIONS: u32 = 40;
const HTTP_REQUESTS: u32 = 300;
const GUNICORN_WORKERS: u32 = 4;
/// Every request of the Django site sends one parameterised query longer
/// than this, so that under server-side binding its extended-protocol batch
/// (Parse, Bind, Describe, Execute, Sync) is larger too.
const LONG_SQL_BYTES: usize = 512;

/// The sidecar quick start of the README: `config/sidecar.toml` as shipped,
/// pointed at this test's server and listen port by the environment
/// overrides it documents (the password always comes from the environment).
fn sidecar_env(listen_port: u16, server_port: u16) -> Vec<(&'static str, String)> {
    vec![
        ("PGWAKE_LISTEN_ADDR", format!("127.0.0.1:{listen_port}")),
        ("PGWAKE_SERVER_HOST", "127.0.0.1".to_string()),
        ("PGWAKE_SERVER_PORT", server_port.to_string()),
        ("PGWAKE_SERVER_AUTH_PASSWORD", PASSWORD.to_string()),
        ("PGWAKE_ADMIN_ADDR", "127.0.0.1:0".to_string()),
    ]
}

/// Runs a command to completion within `limit`; fails with its output unless
/// it exits 0. Returns its output.
fn run_to_end(name: &str, cmd: Command, log: PathBuf, limit: Duration) -> Result<String> {
    Proc::spawn(name, cmd, log)?.finish(limit)
}

/// A throwaway cluster with SCRAM auth for `app` and the given extra
/// settings, and `pgwake run` in front of it with the sidecar configuration.
struct Stack {
    pgwake: Proc,
    port: u16,
    // After `pgwake`, so the proxy stops before the server.
    cluster: Cluster,
    dir: tempfile::TempDir,
}

impl Stack {
    fn start(name: &str, server_settings: &[(&str, &str)]) -> Result<Stack> {
        let dir = tempfile::Builder::new()
            .prefix(&format!("pgwake-py-{name}-"))
            .tempdir()?;
        ensure_venv(dir.path())?;

        let cluster = server_settings
            .iter()
            .fold(Cluster::builder(), |b, (key, value)| b.setting(key, value))
            .auth(HostAuth::Scram)
            .user(USER, PASSWORD)
            .database(DB, USER)
            .start()
            .context("starting PostgreSQL")?;
        let port = free_port();
        let example = workspace().join("config").join("sidecar.toml");
        let config = dir.path().join("sidecar.toml");
        fs::copy(&example, &config).with_context(|| format!("copying {}", example.display()))?;
        let env = sidecar_env(port, cluster.port());

        let pgwake_cmd = |sub: &str| {
            let mut cmd = Command::new(env!("CARGO_BIN_EXE_pgwake"));
            cmd.arg(sub).arg("--config").arg(&config);
            // Only the file configures this instance.
            for (key, _) in std::env::vars_os() {
                if key.to_string_lossy().starts_with("PGWAKE_") {
                    cmd.env_remove(&key);
                }
            }
            cmd.envs(env.iter().map(|(k, v)| (k, v)))
                .env_remove("RUST_LOG")
                .env("NO_COLOR", "1");
            cmd
        };
        let checked = run_to_end(
            "pgwake check",
            pgwake_cmd("check"),
            dir.path().join("check.log"),
            STARTUP_TIMEOUT,
        )?;
        ensure!(
            checked.contains(&format!("port = {}", cluster.port()))
                && checked.contains(&format!("127.0.0.1:{port}"))
                && !checked.contains(PASSWORD),
            "pgwake check should show the overridden ports and no password:\n{checked}"
        );

        let mut pgwake = Proc::spawn("pgwake", pgwake_cmd("run"), dir.path().join("pgwake.log"))?;
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        loop {
            if let Some(status) = pgwake.exited() {
                bail!("pgwake exited ({status})\n{}", pgwake.output_tail(100));
            }
            if TcpStream::connect_timeout(&addr, Duration::from_millis(500)).is_ok() {
                break;
            }
            if Instant::now() > deadline {
                bail!(
                    "pgwake did not accept connections on {addr} within {STARTUP_TIMEOUT:?}\n{}",
                    pgwake.output_tail(100)
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(Stack {
            pgwake,
            port,
            cluster,
            dir,
        })
    }

    /// Runs a Python script of tests/python to completion; on failure the
    /// error carries its output and pgwake's.
    fn python(&mut self, name: &str, cmd: Command, limit: Duration) -> Result<String> {
        let log = self.dir.path().join(format!("{name}.log"));
        let result = run_to_end(name, cmd, log, limit);
        self.check_pgwake(result)
    }

    /// Adds pgwake's output to an error, and fails if pgwake died or panicked.
    fn check_pgwake<T>(&mut self, result: Result<T>) -> Result<T> {
        let result = result.and_then(|v| {
            if let Some(status) = self.pgwake.exited() {
                bail!("pgwake exited ({status})");
            }
            if self.pgwake.output().contains("panicked") {
                bail!("pgwake panicked");
            }
            Ok(v)
        });
        result.with_context(|| self.pgwake.output_tail(150))
    }

    fn psql(&self, sql: &str) -> Result<String> {
        self.cluster.psql(DB, sql)
    }
}

/// Number of `i` in 0..n with `i % m == 0`.
fn multiples(n: u32, m: u32) -> u32 {
    n.div_ceil(m)
}

#[test]
fn psycopg3_threads_through_pgwake() -> Result<()> {
    let mut stack = Stack::start("psycopg", &[])?;

    let mut cmd = python_cmd("python");
    cmd.arg(python_dir().join("psycopg_load.py"))
        .args(["--host", "127.0.0.1"])
        .args(["--port", &stack.port.to_string()])
        .args(["--dbname", DB, "--user", USER])
        .args(["--threads", &PSYCOPG_THREADS.to_string()])
        .args(["--iterations", &PSYCOPG_ITERATIONS.to_string()])
        .args(["--deadline", &LOAD_DEADLINE_SECS.to_string()]);
    let out = stack.python("psycopg_load", cmd, LOAD_TIMEOUT)?;
    let summary = out.lines().last().unwrap_or_default();
    assert!(summary.starts_with("psycopg: ok"), "{out}");
    eprintln!("{summary}");

    // What the clients committed is on the server, and nothing rolled back is.
    let labels =
        stack.psql("SELECT label || '=' || count(*) FROM items GROUP BY label ORDER BY label")?;
    let committed = PSYCOPG_THREADS * PSYCOPG_ITERATIONS;
    let many = PSYCOPG_THREADS * multiples(PSYCOPG_ITERATIONS, 4) * 5;
    assert_eq!(
        labels,
        format!("committed={committed}\nmany={many}"),
        "rows in items by label\n{}",
        stack.pgwake.output_tail(50)
    );
    let per_thread =
        stack.psql("SELECT count(DISTINCT (thread, n)) FROM items WHERE label = 'committed'")?;
    assert_eq!(per_thread, committed.to_string());
    let copied =
        stack.psql("SELECT count(*) FROM copy_items WHERE payload LIKE '%\twith a tab'")?;
    assert_eq!(
        copied,
        (PSYCOPG_THREADS * multiples(PSYCOPG_ITERATIONS, 10) * 20).to_string()
    );
    stack.check_pgwake(Ok(()))
}

#[test]
fn django_under_gunicorn_through_pgwake() -> Result<()> {
    django_under_gunicorn("django", false)
}

/// Under psycopg 3 server-side binding every query with parameters is sent
/// with the extended protocol, including the site's long IN-list query and
/// Django's own statements during `migrate`.
#[test]
fn django_with_server_side_binding_through_pgwake() -> Result<()> {
    django_under_gunicorn("django-ssb", true)
}

/// Migrates the Django site through pgwake, serves it with gunicorn and
/// sends it HTTP_REQUESTS requests, each of which must succeed and leave
/// its row on the server exactly once.
fn django_under_gunicorn(name: &str, server_side_binding: bool) -> Result<()> {
    // The server log then shows which protocol carried each statement:
    // `execute <name>: ...` for the extended one, `statement: ...` otherwise.
    let mut stack = Stack::start(name, &[("log_statement", "all")])?;
    let site = python_dir().join("django_site");
    let binding_flag = if server_side_binding { "1" } else { "0" };
    let django_env = |mut cmd: Command, port: u16| {
        cmd.current_dir(&site)
            .env("DJANGO_SETTINGS_MODULE", "site_conf.settings")
            .env("DJANGO_DB_HOST", "127.0.0.1")
            .env("DJANGO_DB_PORT", port.to_string())
            .env("DJANGO_DB_NAME", DB)
            .env("DJANGO_DB_USER", USER)
            .env("DJANGO_DB_SERVER_SIDE_BINDING", binding_flag);
        cmd
    };

    let mut migrate = python_cmd("python");
    migrate.arg("manage.py").args(["migrate", "--noinput"]);
    stack.python("migrate", django_env(migrate, stack.port), MIGRATE_TIMEOUT)?;
    assert_eq!(
        stack.psql("SELECT app || '.' || name FROM django_migrations ORDER BY id")?,
        "notes.0001_initial"
    );

    let http_port = free_port();
    let mut gunicorn = python_cmd("gunicorn");
    gunicorn
        .args(["--workers", &GUNICORN_WORKERS.to_string()])
        .args(["--worker-class", "sync"])
        .args(["--bind", &format!("127.0.0.1:{http_port}")])
        .args(["--timeout", "60", "--graceful-timeout", "5"])
        .args(["--error-logfile", "-"])
        .arg("site_conf.wsgi:application");
    let gunicorn = Proc::spawn(
        "gunicorn",
        django_env(gunicorn, stack.port),
        stack.dir.path().join("gunicorn.log"),
    )?;

    let mut driver = python_cmd("python");
    driver
        .arg(python_dir().join("http_load.py"))
        .args(["--port", &http_port.to_string()])
        .args(["--count", &HTTP_REQUESTS.to_string()])
        .args(["--threads", &GUNICORN_WORKERS.to_string()])
        .args(["--deadline", &LOAD_DEADLINE_SECS.to_string()]);
    let out = stack
        .python("http_load", driver, LOAD_TIMEOUT)
        .with_context(|| gunicorn.output_tail(100))?;
    let summary = out.lines().last().unwrap_or_default();
    assert!(summary.starts_with("http: ok"), "{out}");
    eprintln!("{summary}");
    drop(gunicorn);

    // What the site says it sent: each request ran its long query with
    // parameters, bound as configured.
    let field = |key: &str| {
        summary
            .split(' ')
            .find_map(|f| f.strip_prefix(key)?.strip_prefix('='))
            .unwrap_or_default()
    };
    let binding = if server_side_binding {
        "server"
    } else {
        "client"
    };
    assert_eq!(field("binding"), binding, "{summary}");
    let shortest: usize = field("longest_param_sql_min")
        .parse()
        .with_context(|| format!("longest_param_sql_min in {summary:?}"))?;
    assert!(
        shortest > LONG_SQL_BYTES,
        "a request ran no parameterised SQL over {LONG_SQL_BYTES} bytes: {summary}"
    );
    // What the server says it received with the extended protocol: the long
    // query with $n placeholders once per request, and migrate's record of
    // the migration it applied; with client-side binding, neither.
    let log = fs::read_to_string(stack.cluster.log_file()).context("reading the server log")?;
    let executed: Vec<&str> = log
        .lines()
        .filter_map(|line| Some(line.split_once("LOG:  execute ")?.1.split_once(": ")?.1))
        .collect();
    let long_queries = executed
        .iter()
        .filter(|sql| {
            sql.len() > LONG_SQL_BYTES && sql.contains("\"notes_note\"") && sql.contains("$1")
        })
        .count();
    let migration_records = executed
        .iter()
        .filter(|sql| sql.starts_with("INSERT INTO \"django_migrations\"") && sql.contains("$1"))
        .count();
    let (long_expected, records_expected) = if server_side_binding {
        (HTTP_REQUESTS as usize, 1)
    } else {
        (0, 0)
    };
    assert_eq!(
        (long_queries, migration_records),
        (long_expected, records_expected),
        "extended-protocol statements in the server log: parameterised over \
         {LONG_SQL_BYTES} bytes on notes_note, and inserts into django_migrations"
    );

    // Every request's row is on the server, exactly once.
    let rows = stack.psql(&format!(
        "SELECT count(*) || ' ' || count(DISTINCT text) || ' ' || \
         count(*) FILTER (WHERE text IN (SELECT 'note-' || g FROM generate_series(0, {}) g)) \
         FROM notes_note",
        HTTP_REQUESTS - 1
    ))?;
    assert_eq!(
        rows,
        format!("{HTTP_REQUESTS} {HTTP_REQUESTS} {HTTP_REQUESTS}")
    );
    let workers = stack.psql("SELECT count(DISTINCT worker_pid) FROM notes_note")?;
    let workers: u32 = workers.parse().context("count of worker pids")?;
    assert!(
        (1..=GUNICORN_WORKERS).contains(&workers),
        "rows written by {workers} gunicorn workers"
    );
    stack.check_pgwake(Ok(()))
}
