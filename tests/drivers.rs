#![forbid(unsafe_code)]
//! Named prepared statements in transaction mode, driven by real drivers
//! through `pgwake run` with a pool of five server connections: psycopg 3
//! preparing every query (and deallocating them all after a rollback),
//! psycopg 3 closing statements it evicts from a small cache, asyncpg with
//! its statement cache from a hundred connections, and node-postgres named
//! queries whose SQL differs between clients under the same name.
//!
//! The drivers live in `tests/python/prepared_clients.py` (in the virtualenv
//! `target/pyenv`, made by `tests/python/ensure_venv.py`) and
//! `tests/node/named_queries.js` (its `node_modules` installed here with
//! `npm ci` when missing or stale). Each checks every answer against the
//! statement it belongs to and ends with a one-line summary of counts, which
//! the test checks against the counts its parameters imply. Every process
//! runs in its own process group, killed when the test ends.
//!
//! The same three drivers also send statements of every size from 300 bytes
//! to 16 MiB (`tests/python/long_statements.py`,
//! `tests/node/long_statements.js`): first on a connection, after an idle
//! pause, in a transaction and in a pipeline, unnamed and named.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use common::proc::Proc;
use common::python::{ensure_venv, python_cmd, python_dir, without_client_env, workspace};
use common::{cluster, Pgwake};
use pgwake_testkit::Cluster;

const NPM_TIMEOUT: Duration = Duration::from_secs(600);
/// Outer bound on a driver; each has its own deadline below it.
const DRIVER_TIMEOUT: Duration = Duration::from_secs(300);
const DRIVER_DEADLINE_SECS: u32 = 180;

/// Transaction mode (the default) over five server connections.
const POOL: &str = "size = 5\nmin_idle = 1\npool_wait_timeout = \"30s\"";

fn node_dir() -> PathBuf {
    workspace().join("tests").join("node")
}

/// Installs tests/node/node_modules from package-lock.json with `npm ci`
/// unless it holds that lock file's packages already (a copy of the lock
/// file is kept in node_modules after a good install). `flock` keeps two
/// test runs from installing at once.
fn ensure_node_modules(logs: &Path) -> Result<()> {
    let dir = node_dir();
    let lock = fs::read(dir.join("package-lock.json")).context("reading package-lock.json")?;
    let stamp = dir.join("node_modules").join(".pgwake-package-lock.json");
    let installed = || {
        fs::read(&stamp).is_ok_and(|s| s == lock)
            && dir.join("node_modules/pg/package.json").exists()
    };
    if installed() {
        return Ok(());
    }
    let lock_file = workspace().join("target").join("node_modules.lock");
    fs::create_dir_all(workspace().join("target"))?;
    let mut cmd = Command::new("flock");
    cmd.arg("-w")
        .arg(NPM_TIMEOUT.as_secs().to_string())
        .arg(lock_file)
        .arg("sh")
        .arg("-c")
        .arg(
            "cmp -s package-lock.json node_modules/.pgwake-package-lock.json \
             && test -f node_modules/pg/package.json \
             || { npm ci --no-audit --no-fund --loglevel=error \
                  && cp package-lock.json node_modules/.pgwake-package-lock.json; }",
        )
        .current_dir(&dir);
    without_client_env(&mut cmd);
    Proc::spawn("npm ci", cmd, logs.join("npm.log"))?
        .finish(NPM_TIMEOUT)
        .context("installing tests/node/node_modules")?;
    ensure!(installed(), "npm ci left no node_modules/pg");
    Ok(())
}

/// `python prepared_clients.py MODE` against pgwake on `port`.
fn python_driver(mode: &str, port: u16, args: &[String]) -> Command {
    python_script("prepared_clients.py", mode, port, args)
}

/// `python SCRIPT MODE` (a script in tests/python) against pgwake on `port`.
fn python_script(script: &str, mode: &str, port: u16, args: &[String]) -> Command {
    let mut cmd = python_cmd("python");
    cmd.arg(python_dir().join(script))
        .arg(mode)
        .args(["--port", &port.to_string()])
        .args(["--deadline", &DRIVER_DEADLINE_SECS.to_string()])
        .args(args);
    cmd
}

/// A throwaway cluster with the table the drivers write to, and pgwake in
/// transaction mode in front of it.
struct Stack {
    pgwake: Pgwake,
    // After `pgwake`, so the proxy stops before the server.
    cluster: Cluster,
    dir: tempfile::TempDir,
    started: Instant,
}

impl Stack {
    /// Runs `setup` (installing the driver; its logs go to the test's
    /// directory), then starts the cluster and pgwake with `pool`.
    fn start(name: &str, setup: fn(&Path) -> Result<()>, pool: &str) -> Result<Stack> {
        let started = Instant::now();
        let dir = tempfile::Builder::new()
            .prefix(&format!("pgwake-drivers-{name}-"))
            .tempdir()?;
        setup(dir.path())?;
        let cluster = cluster();
        cluster.psql(
            "app",
            "create table driver_rows (client text, n int); alter table driver_rows owner to app",
        )?;
        let pgwake = Pgwake::start(&cluster, pool);
        Ok(Stack {
            pgwake,
            cluster,
            dir,
            started,
        })
    }

    fn log(&self, name: &str) -> PathBuf {
        self.dir.path().join(format!("{name}.log"))
    }

    /// Runs a driver to a clean exit; returns its output.
    fn run_driver(&self, name: &str, cmd: Command) -> Result<String> {
        Proc::spawn(name, cmd, self.log(name))?.finish(DRIVER_TIMEOUT)
    }

    fn scrape(&self) -> String {
        common::http_get(self.pgwake.admin_port, "/metrics", Duration::from_secs(10)).1
    }

    /// A prepared statement cache counter of pool app/app.
    fn prepared_metric(&self, what: &str) -> f64 {
        common::metric(
            &self.scrape(),
            &format!("pgwake_prepared_statement_{what}_total{{database=\"app\",user=\"app\"}}"),
        )
    }

    /// Rows in driver_rows of clients named `PREFIX-<n>`, and how many
    /// clients wrote them.
    fn rows(&self, client_prefix: &str) -> Result<(u64, u64)> {
        let out = self.cluster.psql(
            "app",
            &format!(
                "select count(*) || ' ' || count(distinct client) from driver_rows \
                 where client like '{client_prefix}-%'"
            ),
        )?;
        let (rows, clients) = out.split_once(' ').context("count output")?;
        Ok((rows.parse()?, clients.parse()?))
    }

    /// Runs a test's `body` (which returns the drivers' summary lines),
    /// then checks that pgwake kept to five server connections and did not
    /// panic. On failure the error carries pgwake's log, and this test's
    /// directory (driver output, psycopg's protocol traces) is kept.
    fn verify(self, body: impl FnOnce(&Stack) -> Result<String>) -> Result<()> {
        let result = body(&self).and_then(|summary| {
            let backends = common::app_backends(&self.cluster);
            ensure!(
                backends <= 5,
                "{backends} server connections for a pool of 5"
            );
            ensure!(!self.pgwake.logs().contains("panicked"), "pgwake panicked");
            Ok(summary)
        });
        match result {
            Ok(summary) => {
                eprintln!("{summary}\n(test took {:.1?})", self.started.elapsed());
                Ok(())
            }
            Err(e) => {
                let logs = self.pgwake.logs();
                let tail: Vec<&str> = logs.lines().rev().take(150).collect();
                Err(e.context(format!(
                    "--- pgwake log (last {} lines) ---\n{}\n--- end of pgwake log ---\n\
                     driver output and traces kept in {}",
                    tail.len(),
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n"),
                    self.dir.keep().display()
                )))
            }
        }
    }
}

/// The counts of a driver's summary line, `MODE: ok key=value ...` (the
/// last line starting with `MODE: `); fails unless it says ok.
fn summary(out: &str, mode: &str) -> Result<(String, BTreeMap<String, u64>)> {
    let prefix = format!("{mode}: ");
    let line = out
        .lines()
        .rev()
        .find(|l| l.starts_with(&prefix))
        .with_context(|| format!("no `{prefix}` summary line in:\n{out}"))?;
    ensure!(
        line[prefix.len()..].starts_with("ok "),
        "{line}\n--- output ---\n{out}"
    );
    let counts = line
        .split_whitespace()
        .filter_map(|f| f.split_once('='))
        .filter_map(|(k, v)| Some((k.to_string(), v.parse().ok()?)))
        .collect();
    Ok((line.to_string(), counts))
}

/// The counts `wanted` are in `counts`, each with that value.
fn assert_counts(line: &str, counts: &BTreeMap<String, u64>, wanted: &[(&str, u64)]) -> Result<()> {
    for (key, value) in wanted {
        ensure!(
            counts.get(*key) == Some(value),
            "{key}: expected {value}, got {:?}\n{line}",
            counts.get(*key)
        );
    }
    Ok(())
}

/// How many of `0..n` satisfy `pred`.
fn count_where(n: u64, pred: impl Fn(u64) -> bool) -> u64 {
    (0..n).filter(|&i| pred(i)).map(|_| 1).sum()
}

#[test]
fn psycopg3_prepares_every_query_from_twenty_threads() -> Result<()> {
    const CLIENTS: u64 = 20;
    const ITERATIONS: u64 = 50;
    let mode = "psycopg-prepared";
    let stack = Stack::start(mode, ensure_venv, POOL)?;
    stack.verify(|stack| {
        let args = [
            format!("--clients={CLIENTS}"),
            format!("--iterations={ITERATIONS}"),
            format!("--trace-dir={}", stack.dir.path().display()),
        ];
        let out = stack.run_driver(mode, python_driver(mode, stack.pgwake.port, &args))?;
        let (line, counts) = summary(&out, mode)?;

        // Per iteration: four SELECTs and an INSERT, then (by i % 5) a
        // commit (0, 3), a commit and a `with transaction()` block rolled
        // back on purpose (1), a rollback (2), a division by zero and a
        // rollback (4).
        let by = |r: u64| count_where(ITERATIONS, |i| i % 5 == r);
        let commits = by(0) + by(1) + by(3);
        let rollbacks = by(1) + by(2) + by(4);
        let queries = 5 * ITERATIONS + 2 * by(1) + by(4) + 1;
        assert_counts(
            &line,
            &counts,
            &[
                ("queries", CLIENTS * queries),
                ("commits", CLIENTS * commits),
                ("committed_rows", CLIENTS * commits),
                ("rollbacks", CLIENTS * rollbacks),
                ("expected_errors", CLIENTS * by(4)),
                // psycopg forgets its statements at each rollback, and
                // tells the server so.
                ("deallocate_all", CLIENTS * rollbacks),
                ("closes", 0),
            ],
        )?;
        let rows = stack.rows(mode)?;
        ensure!(
            rows == (CLIENTS * commits, CLIENTS),
            "rows, clients: {rows:?}"
        );
        let (hits, misses) = (
            stack.prepared_metric("hits"),
            stack.prepared_metric("misses"),
        );
        ensure!(hits > 0.0 && misses > 0.0, "hits {hits}, misses {misses}");
        // A client's `DEALLOCATE ALL` forgets its own statements only: the
        // connections keep theirs, so each text is prepared at most once
        // per connection (three per client, a few shared; five connections).
        let most = 5.0 * (3.0 * CLIENTS as f64 + 10.0);
        ensure!(
            misses <= most,
            "{misses} statements prepared on the server, at most {most} expected"
        );
        Ok(line)
    })
}

#[test]
fn psycopg3_small_prepared_max_closes_what_it_evicts() -> Result<()> {
    const CLIENTS: u64 = 10;
    const ITERATIONS: u64 = 30;
    const PREPARED_MAX: u64 = 3;
    const CYCLE: u64 = 8;
    let mode = "psycopg-evict";
    // pgwake's own cache is small too: the 80 statements of the cycles and
    // the 2 shared ones do not fit, so it closes statements on the server.
    let pool = format!("{POOL}\nmax_prepared_statements = 16");
    let stack = Stack::start(mode, ensure_venv, &pool)?;
    stack.verify(|stack| {
        let args = [
            format!("--clients={CLIENTS}"),
            format!("--iterations={ITERATIONS}"),
            format!("--prepared-max={PREPARED_MAX}"),
            format!("--cycle={CYCLE}"),
            format!("--trace-dir={}", stack.dir.path().display()),
        ];
        let out = stack.run_driver(mode, python_driver(mode, stack.pgwake.port, &args))?;
        let (line, counts) = summary(&out, mode)?;

        // Per iteration: the cycle, a shared SELECT and an INSERT. Even
        // clients run in autocommit mode; odd ones commit, or roll back
        // when i % 6 == 5.
        let in_tx = CLIENTS / 2;
        let rolled_back = count_where(ITERATIONS, |i| i % 6 == 5);
        let committed_rows = (CLIENTS - in_tx) * ITERATIONS + in_tx * (ITERATIONS - rolled_back);
        let queries = CLIENTS * (ITERATIONS * (CYCLE + 2) + 1);
        assert_counts(
            &line,
            &counts,
            &[
                ("queries", queries),
                ("commits", in_tx * (ITERATIONS - rolled_back)),
                ("committed_rows", committed_rows),
                ("rollbacks", in_tx * rolled_back),
                ("deallocate_all", in_tx * rolled_back),
            ],
        )?;
        // Every query prepares a statement (the cycle is longer than
        // prepared_max); psycopg closes all but at most prepared_max of
        // them before each DEALLOCATE ALL and at the end.
        let closes = counts.get("closes").copied().unwrap_or_default();
        let left_open = PREPARED_MAX * (in_tx * rolled_back + CLIENTS);
        ensure!(
            closes + left_open >= queries,
            "psycopg closed {closes} of {queries} statements\n{line}"
        );
        let rows = stack.rows(mode)?;
        ensure!(rows == (committed_rows, CLIENTS), "rows, clients: {rows:?}");
        let evictions = stack.prepared_metric("evictions");
        ensure!(evictions > 0.0, "pgwake evicted no statement");
        Ok(line)
    })
}

#[test]
fn asyncpg_statement_cache_from_a_hundred_connections() -> Result<()> {
    // Two processes of 50 connections, as two instances of an application:
    // asyncpg numbers statements per process, so both use the same names
    // (`__asyncpg_stmt_1__`, ...) for different SQL.
    const PROCESSES: u64 = 2;
    const CLIENTS: u64 = 50;
    const ITERATIONS: u64 = 20;
    let mode = "asyncpg";
    let stack = Stack::start(mode, ensure_venv, POOL)?;
    stack.verify(|stack| {
        let mut procs = Vec::new();
        for p in 0..PROCESSES {
            let args = [
                format!("--clients={CLIENTS}"),
                format!("--first-client={}", p * CLIENTS),
                format!("--iterations={ITERATIONS}"),
            ];
            let name = format!("{mode}-{p}");
            let cmd = python_driver(mode, stack.pgwake.port, &args);
            procs.push(Proc::spawn(&name, cmd, stack.log(&name))?);
        }
        // Per iteration: five SELECTs (one through a statement prepared by
        // hand) and a division, by zero when i % 5 == 2; when i % 3 == 0 a
        // committed transaction of executemany (three rows) and a SELECT;
        // when i % 7 == 3 a transaction with an INSERT, rolled back.
        let commits = count_where(ITERATIONS, |i| i % 3 == 0);
        let rollbacks = count_where(ITERATIONS, |i| i % 7 == 3);
        let queries = 6 * ITERATIONS + 2 * commits + rollbacks + 1;
        let mut lines = Vec::new();
        for mut proc in procs {
            let out = proc.finish(DRIVER_TIMEOUT)?;
            let (line, counts) = summary(&out, mode)?;
            assert_counts(
                &line,
                &counts,
                &[
                    ("queries", CLIENTS * queries),
                    ("commits", CLIENTS * commits),
                    ("committed_rows", CLIENTS * 3 * commits),
                    ("rollbacks", CLIENTS * rollbacks),
                    (
                        "expected_errors",
                        CLIENTS * count_where(ITERATIONS, |i| i % 5 == 2),
                    ),
                ],
            )?;
            lines.push(line);
        }
        let rows = stack.rows(mode)?;
        ensure!(
            rows == (PROCESSES * CLIENTS * 3 * commits, PROCESSES * CLIENTS),
            "rows, clients: {rows:?}"
        );
        let hits = stack.prepared_metric("hits");
        ensure!(hits > 0.0, "no prepared statement cache hits");
        Ok(lines.join("\n"))
    })
}

#[test]
fn node_postgres_named_queries_differ_between_clients() -> Result<()> {
    const CLIENTS: u64 = 20;
    const ITERATIONS: u64 = 60;
    let mode = "node-postgres";
    let stack = Stack::start("node", ensure_node_modules, POOL)?;
    stack.verify(|stack| {
        let mut cmd = Command::new("node");
        without_client_env(&mut cmd);
        cmd.current_dir(node_dir())
            .arg("named_queries.js")
            .args(["--port", &stack.pgwake.port.to_string()])
            .args(["--clients", &CLIENTS.to_string()])
            .args(["--iterations", &ITERATIONS.to_string()])
            .args(["--deadline", &DRIVER_DEADLINE_SECS.to_string()]);
        let out = stack.run_driver("node", cmd)?;
        let (line, counts) = summary(&out, mode)?;

        // Per iteration: four named SELECTs, then a transaction (begin,
        // named INSERT and SELECT, commit) when i % 4 == 0, else one rolled
        // back (begin, INSERT, rollback) when i % 6 == 3, then a named
        // division (by zero when i % 5 == 2) and a named SELECT.
        let commits = count_where(ITERATIONS, |i| i % 4 == 0);
        let rollbacks = count_where(ITERATIONS, |i| i % 4 != 0 && i % 6 == 3);
        let queries = 6 * ITERATIONS + 4 * commits + 3 * rollbacks + 1;
        assert_counts(
            &line,
            &counts,
            &[
                ("queries", CLIENTS * queries),
                ("commits", CLIENTS * commits),
                ("committed_rows", CLIENTS * commits),
                ("rollbacks", CLIENTS * rollbacks),
                (
                    "expected_errors",
                    CLIENTS * count_where(ITERATIONS, |i| i % 5 == 2),
                ),
            ],
        )?;
        let rows = stack.rows("node")?;
        ensure!(
            rows == (CLIENTS * commits, CLIENTS),
            "rows, clients: {rows:?}"
        );
        let hits = stack.prepared_metric("hits");
        ensure!(hits > 0.0, "no prepared statement cache hits");
        Ok(line)
    })
}

/// Statement text lengths (bytes in Parse) of tests/python/long_statements.py
/// and tests/node/long_statements.js, which have the same list, ascending:
/// around the 512 bytes pgwake reads an idle client with, and far above
/// every buffer.
const LONG_SIZES: [u64; 9] = [300, 511, 512, 513, 600, 4096, 65536, 1 << 20, 16 << 20];
/// Each size as the first message of a connection, after an idle pause, in
/// a transaction block and in a pipeline.
const LONG_SITUATIONS: u64 = 4;
/// Unnamed and named statements.
const LONG_KINDS: u64 = 2;

/// Long statements in one pipeline of `size`, as the scripts have it: fewer
/// of the big ones.
fn long_pipeline_len(size: u64) -> u64 {
    if size <= 64 * 1024 {
        5
    } else if size <= 1 << 20 {
        3
    } else {
        2
    }
}

/// Long statements of one kind in the pipelines of every size.
fn long_pipelined_per_kind() -> u64 {
    LONG_SIZES.iter().map(|&s| long_pipeline_len(s)).sum()
}

/// The counts of a long_statements driver's summary line: every case of
/// every size, situation and kind run and answered right, on a connection
/// of its own, with a short query before the long one when idle and in the
/// transaction.
fn long_statement_counts() -> Vec<(&'static str, u64)> {
    let sizes = LONG_SIZES.len() as u64;
    // One each first, after the idle pause and in the transaction, and the
    // pipeline's.
    let statements = 3 * sizes + long_pipelined_per_kind();
    vec![
        ("sizes", sizes),
        ("situations", LONG_SITUATIONS),
        ("kinds", LONG_KINDS),
        ("largest", LONG_SIZES[LONG_SIZES.len() - 1]),
        ("statements", LONG_KINDS * statements),
        ("short", LONG_KINDS * 2 * sizes),
        ("connections", LONG_KINDS * LONG_SITUATIONS * sizes),
    ]
}

/// psycopg 3 in autocommit mode with its default server-side binding
/// (`cur.execute("select length('...') + %s", (n,))`), unnamed
/// (`prepare=False`) and named (`prepare=True`), with statements of 300
/// bytes to 16 MiB: as the first message of a fresh connection, after a
/// short query and an idle pause, in a transaction block, and in
/// `conn.pipeline()`. A first batch a little over 512 bytes once left the
/// session spinning without reading the rest.
#[test]
fn psycopg3_server_side_binding_statements_of_every_size() -> Result<()> {
    let mode = "psycopg";
    let stack = Stack::start("long-psycopg", ensure_venv, POOL)?;
    stack.verify(|stack| {
        let cmd = python_script("long_statements.py", mode, stack.pgwake.port, &[]);
        let out = stack.run_driver("long-psycopg", cmd)?;
        let (line, counts) = summary(&out, mode)?;
        assert_counts(&line, &counts, &long_statement_counts())?;
        Ok(line)
    })
}

/// asyncpg with statements of 300 bytes to 16 MiB, unnamed (a connection
/// with `statement_cache_size=0`) and named (its statement cache): first on
/// a fresh connection, after an idle pause, in a transaction, and as
/// `executemany` of an INSERT of the same size (Bind/Execute per row, one
/// Sync; the rows are read back) followed by a statement prepared by hand
/// and run once per row.
#[test]
fn asyncpg_statements_of_every_size() -> Result<()> {
    let mode = "asyncpg";
    let stack = Stack::start("long-asyncpg", ensure_venv, POOL)?;
    stack.verify(|stack| {
        let cmd = python_script("long_statements.py", mode, stack.pgwake.port, &[]);
        let out = stack.run_driver("long-asyncpg", cmd)?;
        let (line, counts) = summary(&out, mode)?;
        // A row per statement of the pipeline (executemany).
        let inserted = LONG_KINDS * long_pipelined_per_kind();
        let mut wanted = long_statement_counts();
        wanted.push(("rows", inserted));
        assert_counts(&line, &counts, &wanted)?;
        // One client name per kind and size.
        let rows = stack.rows("asyncpg-long")?;
        let clients = LONG_KINDS * LONG_SIZES.len() as u64;
        ensure!(rows == (inserted, clients), "rows, clients: {rows:?}");
        Ok(line)
    })
}

/// node-postgres with statements of 300 bytes to 16 MiB, unnamed
/// (`{text, values}`) and named (`{name, text, values}`): first on a fresh
/// connection, after an idle pause, in a transaction, and several at once
/// on a client with `pipeline: true`.
#[test]
fn node_postgres_statements_of_every_size() -> Result<()> {
    let mode = "node-postgres";
    let stack = Stack::start("long-node", ensure_node_modules, POOL)?;
    stack.verify(|stack| {
        let mut cmd = Command::new("node");
        without_client_env(&mut cmd);
        cmd.current_dir(node_dir())
            .arg("long_statements.js")
            .args(["--port", &stack.pgwake.port.to_string()])
            .args(["--deadline", &DRIVER_DEADLINE_SECS.to_string()]);
        let out = stack.run_driver("long-node", cmd)?;
        let (line, counts) = summary(&out, mode)?;
        assert_counts(&line, &counts, &long_statement_counts())?;
        Ok(line)
    })
}
