#![forbid(unsafe_code)]
//! Throwaway PostgreSQL clusters and client helpers for pgwake's tests and
//! `pgwake demo`.
//!
//! The cluster API is synchronous (it drives `initdb`, `pg_ctl` and `psql`
//! through `std::process`) so it works the same from plain tests, async tests
//! and the demo command. The client helpers are async and use tokio-postgres.

use std::collections::hash_map::RandomState;
use std::collections::HashSet;
use std::fmt::Write as _;
use std::fs;
use std::hash::{BuildHasher, Hasher};
use std::io::{Read, Write as _};
use std::net::{Ipv4Addr, TcpListener};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context as _};

pub mod azure_arm;
pub mod azure_identity;

const HOST: &str = "127.0.0.1";
const SUPERUSER: &str = "postgres";
/// `pg_ctl -t`: how long pg_ctl itself waits for start/stop.
const PG_CTL_WAIT_SECS: u32 = 60;
/// Outer bound on any child process, a little above pg_ctl's own wait.
const PG_CTL_TIMEOUT: Duration = Duration::from_secs(90);
const INITDB_TIMEOUT: Duration = Duration::from_secs(180);
const PSQL_TIMEOUT: Duration = Duration::from_secs(180);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Ports handed out by [`free_port`]: below the ephemeral range (32768+), so a
/// client retrying a closed port can never be given that port as its own
/// source port and connect to itself.
const PORT_RANGE: std::ops::Range<u16> = 20000..32000;
/// Attempts at starting on a fresh port when an automatically chosen one was
/// taken by another process between the check and the server's bind.
const START_ATTEMPTS: usize = 5;

/// Location of the PostgreSQL server binaries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PgBin {
    pub dir: PathBuf,
}

impl PgBin {
    /// `PG_BIN` env var, else `pg_config --bindir`, else the highest
    /// `/usr/lib/postgresql/*/bin`.
    pub fn find() -> anyhow::Result<PgBin> {
        let mut tried = Vec::new();

        if let Some(dir) = std::env::var_os("PG_BIN") {
            let dir = PathBuf::from(dir);
            // An explicit choice that is wrong should fail loudly rather than
            // silently fall back to some other installation.
            if has_server_tools(&dir) {
                return Ok(PgBin { dir });
            }
            bail!(
                "PG_BIN={} does not contain initdb, pg_ctl and postgres",
                dir.display()
            );
        }
        tried.push("PG_BIN (not set)".to_string());

        match pg_config_bindir() {
            Ok(dir) if has_server_tools(&dir) => return Ok(PgBin { dir }),
            Ok(dir) => tried.push(format!(
                "`pg_config --bindir` ({}: no initdb/pg_ctl/postgres there)",
                dir.display()
            )),
            Err(e) => tried.push(format!("`pg_config --bindir` ({e:#})")),
        }

        let root = Path::new("/usr/lib/postgresql");
        let mut versions: Vec<(Vec<u32>, PathBuf)> = fs::read_dir(root)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|entry| {
                let name = entry.file_name().to_str()?.to_string();
                let version = name
                    .split('.')
                    .map(|part| part.parse::<u32>().ok())
                    .collect::<Option<Vec<u32>>>()?;
                Some((version, entry.path().join("bin")))
            })
            .filter(|(_, dir)| has_server_tools(dir))
            .collect();
        versions.sort();
        if let Some((_, dir)) = versions.pop() {
            return Ok(PgBin { dir });
        }
        tried.push(format!("{}/*/bin (none found)", root.display()));

        bail!(
            "PostgreSQL server binaries not found; tried {}. Install them \
             (e.g. `apt-get install postgresql`) or set PG_BIN to the directory \
             holding initdb and pg_ctl",
            tried.join(", ")
        )
    }

    /// Path of a tool in the bin dir, e.g. `psql`, `pgbench`, `pg_ctl`.
    pub fn path(&self, tool: &str) -> PathBuf {
        self.dir.join(tool)
    }
}

fn has_server_tools(dir: &Path) -> bool {
    ["initdb", "pg_ctl", "postgres"]
        .iter()
        .all(|tool| dir.join(tool).is_file())
}

fn pg_config_bindir() -> anyhow::Result<PathBuf> {
    let mut cmd = Command::new("pg_config");
    cmd.arg("--bindir");
    let out = run(cmd, Duration::from_secs(30))?;
    if !out.status.success() {
        bail!("{}", describe_failure(&out));
    }
    let dir = String::from_utf8_lossy(&out.stdout).trim().to_string();
    if dir.is_empty() {
        bail!("printed nothing");
    }
    Ok(PathBuf::from(dir))
}

/// Authentication method in pg_hba.conf for TCP logins of roles other than
/// the superuser (which is always trusted, so the harness can manage the
/// cluster without passwords).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum HostAuth {
    #[default]
    Trust,
    Password,
    Md5,
    Scram,
}

impl HostAuth {
    fn hba_method(self) -> &'static str {
        match self {
            HostAuth::Trust => "trust",
            HostAuth::Password => "password",
            HostAuth::Md5 => "md5",
            HostAuth::Scram => "scram-sha-256",
        }
    }
}

/// Builder for [`Cluster`]; see [`Cluster::builder`].
#[derive(Debug, Clone, Default)]
pub struct ClusterBuilder {
    auth: HostAuth,
    port: Option<u16>,
    settings: Vec<(String, String)>,
    users: Vec<(String, String)>,
    databases: Vec<(String, String)>,
    /// Server certificate and key (PEM) to turn on `ssl`.
    tls: Option<(String, String)>,
}

impl ClusterBuilder {
    /// Turns on TLS (`ssl = on`) with this certificate chain and key, in PEM.
    pub fn tls(mut self, cert_pem: &str, key_pem: &str) -> Self {
        self.tls = Some((cert_pem.to_owned(), key_pem.to_owned()));
        self
    }

    /// Method for TCP logins of non-superuser roles. Default: trust.
    pub fn auth(mut self, a: HostAuth) -> Self {
        self.auth = a;
        self
    }

    /// Fixed port. Default: [`free_port`], re-chosen if it turns out taken.
    pub fn port(mut self, p: u16) -> Self {
        self.port = Some(p);
        self
    }

    /// Extra postgresql.conf line; the value is written quoted, which
    /// PostgreSQL accepts for settings of every type.
    pub fn setting(mut self, key: &str, value: &str) -> Self {
        self.settings.push((key.to_string(), value.to_string()));
        self
    }

    /// Role created with LOGIN CREATEDB after start. If none is given, one
    /// role `app` with password `app-secret` is created.
    pub fn user(mut self, name: &str, password: &str) -> Self {
        self.users.push((name.to_string(), password.to_string()));
        self
    }

    /// Database created after start. If none is given, one database named
    /// after the first role and owned by it is created (`app` by default).
    pub fn database(mut self, name: &str, owner: &str) -> Self {
        self.databases.push((name.to_string(), owner.to_string()));
        self
    }

    /// initdb, configure, start and create the roles and databases.
    pub fn start(mut self) -> anyhow::Result<Cluster> {
        if self.users.is_empty() {
            self.users
                .push(("app".to_string(), "app-secret".to_string()));
        }
        if self.databases.is_empty() {
            let owner = self.users[0].0.clone();
            self.databases.push((owner.clone(), owner));
        }

        let bin = PgBin::find()?;
        let run_as = server_user()?;

        // Under /tmp so that the postgres user can traverse the path and the
        // socket path stays far below the 107-byte sun_path limit.
        let tmp = tempfile::Builder::new()
            .prefix("pgwake-pg-")
            .tempdir_in("/tmp")
            .context("creating temp dir for the cluster")?;
        let data = tmp.path().join("data");
        let sock = tmp.path().join("sock");
        let log = tmp.path().join("server.log");
        fs::create_dir(&sock).with_context(|| format!("creating {}", sock.display()))?;
        if let Some(user) = &run_as {
            for dir in [tmp.path(), sock.as_path()] {
                std::os::unix::fs::chown(dir, Some(user.uid), Some(user.gid))
                    .with_context(|| format!("chown {} to postgres", dir.display()))?;
                fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
                    .with_context(|| format!("chmod {}", dir.display()))?;
            }
        }

        let explicit_port = self.port.is_some();
        let mut cluster = Cluster {
            bin,
            port: self.port.unwrap_or_else(free_port),
            data,
            sock,
            log,
            run_as,
            tmp,
        };
        cluster.initdb()?;
        cluster.configure(&self)?;

        let mut attempt = 1;
        loop {
            match cluster.start_again() {
                Ok(()) => break,
                Err(_) if !explicit_port && attempt < START_ATTEMPTS && cluster.port_taken() => {
                    // Someone else grabbed the port after free_port checked it.
                    attempt += 1;
                    cluster.port = free_port();
                    append_conf(&cluster.data, &format!("port = {}\n", cluster.port))?;
                }
                Err(e) => return Err(e),
            }
        }

        for (name, password) in &self.users {
            cluster.psql(
                "postgres",
                &format!(
                    "CREATE ROLE {} LOGIN CREATEDB PASSWORD {}",
                    quote_ident(name),
                    quote_literal(password)
                ),
            )?;
        }
        for (name, owner) in &self.databases {
            // One statement per call: CREATE DATABASE cannot run inside the
            // implicit transaction of a multi-statement -c.
            cluster.psql(
                "postgres",
                &format!(
                    "CREATE DATABASE {} OWNER {}",
                    quote_ident(name),
                    quote_ident(owner)
                ),
            )?;
        }
        Ok(cluster)
    }
}

/// The system user that owns and runs the server processes, when it must
/// differ from the current one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct RunAs {
    uid: u32,
    gid: u32,
}

/// PostgreSQL refuses to run as root, so as root the server runs as the
/// `postgres` system user.
fn server_user() -> anyhow::Result<Option<RunAs>> {
    let euid = fs::metadata("/proc/self")
        .context("reading /proc/self to find the current uid")?
        .uid();
    if euid != 0 {
        return Ok(None);
    }
    let passwd = fs::read_to_string("/etc/passwd").context("reading /etc/passwd")?;
    for line in passwd.lines() {
        let fields: Vec<&str> = line.split(':').collect();
        if fields.len() >= 4 && fields[0] == "postgres" {
            let uid = fields[2]
                .parse()
                .with_context(|| format!("bad uid in /etc/passwd line {line:?}"))?;
            let gid = fields[3]
                .parse()
                .with_context(|| format!("bad gid in /etc/passwd line {line:?}"))?;
            return Ok(Some(RunAs { uid, gid }));
        }
    }
    bail!(
        "running as root, and PostgreSQL refuses to run as root, but there is no \
         `postgres` user in /etc/passwd to run it as (`apt-get install postgresql` \
         creates one); or run as a non-root user"
    )
}

/// A throwaway PostgreSQL cluster in a temp dir. Dropping it stops the
/// server (immediate mode) and removes the directory.
#[derive(Debug)]
pub struct Cluster {
    bin: PgBin,
    port: u16,
    data: PathBuf,
    sock: PathBuf,
    log: PathBuf,
    run_as: Option<RunAs>,
    // Last, so the directory outlives everything that refers into it.
    tmp: tempfile::TempDir,
}

impl Cluster {
    pub fn builder() -> ClusterBuilder {
        ClusterBuilder::default()
    }

    /// Always `127.0.0.1`.
    pub fn host(&self) -> &str {
        HOST
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Directory holding the server's unix socket.
    pub fn socket_dir(&self) -> &Path {
        &self.sock
    }

    /// Always `postgres`; trusted over TCP and the unix socket.
    pub fn superuser(&self) -> &str {
        SUPERUSER
    }

    pub fn bin(&self) -> &PgBin {
        &self.bin
    }

    pub fn data_dir(&self) -> &Path {
        &self.data
    }

    /// The server's log file (written by `pg_ctl -l`).
    pub fn log_file(&self) -> &Path {
        &self.log
    }

    /// `pg_ctl stop -m fast`, waiting until the server is down.
    pub fn stop(&self) -> anyhow::Result<()> {
        self.pg_ctl_stop("fast")
    }

    /// `pg_ctl stop -m immediate`, waiting until the server is down.
    pub fn stop_immediate(&self) -> anyhow::Result<()> {
        self.pg_ctl_stop("immediate")
    }

    /// `pg_ctl start -w` on the same data dir and port after a stop.
    pub fn start_again(&self) -> anyhow::Result<()> {
        let mut cmd = self.server_cmd("pg_ctl");
        cmd.arg("start")
            .arg("-w")
            .arg("-t")
            .arg(PG_CTL_WAIT_SECS.to_string())
            // -l also keeps the postmaster off our stdout/stderr pipes, which
            // would otherwise stay open for as long as the server runs.
            .arg("-l")
            .arg(&self.log)
            .arg("-D")
            .arg(&self.data);
        let out = run(cmd, PG_CTL_TIMEOUT).context("running pg_ctl start")?;
        if !out.status.success() {
            bail!(
                "pg_ctl start failed on port {}: {}\n--- tail of {} ---\n{}",
                self.port,
                describe_failure(&out),
                self.log.display(),
                self.log_tail(40)
            );
        }
        Ok(())
    }

    /// Fast stop (if running) and start again.
    pub fn restart(&self) -> anyhow::Result<()> {
        if self.is_running() {
            self.stop()?;
        }
        self.start_again()
    }

    /// Whether `pg_ctl status` finds a running server.
    pub fn is_running(&self) -> bool {
        let mut cmd = self.server_cmd("pg_ctl");
        cmd.arg("status").arg("-D").arg(&self.data);
        run(cmd, PG_CTL_TIMEOUT)
            .map(|out| out.status.success())
            .unwrap_or(false)
    }

    /// libpq-style URL over TCP to 127.0.0.1, e.g.
    /// `postgres://app:app-secret@127.0.0.1:PORT/app`.
    pub fn url(&self, user: &str, password: Option<&str>, db: &str) -> String {
        let mut url = format!("postgres://{}", percent_encode(user));
        if let Some(password) = password {
            let _ = write!(url, ":{}", percent_encode(password));
        }
        let _ = write!(url, "@{HOST}:{}/{}", self.port, percent_encode(db));
        url
    }

    /// Runs SQL as the superuser over TCP with psql and returns its output
    /// (unaligned, tuples only), trimmed.
    pub fn psql(&self, db: &str, sql: &str) -> anyhow::Result<String> {
        let mut cmd = Command::new(self.bin.path("psql"));
        clean_env(&mut cmd);
        cmd.args(["-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1"])
            .args(["-h", HOST, "-U", SUPERUSER])
            .arg("-p")
            .arg(self.port.to_string())
            .arg("-d")
            .arg(db)
            .arg("-c")
            .arg(sql)
            .env("PGCONNECT_TIMEOUT", CONNECT_TIMEOUT.as_secs().to_string());
        let out = run(cmd, PSQL_TIMEOUT).context("running psql")?;
        if !out.status.success() {
            bail!(
                "psql on port {} db {db:?} failed for {sql:?}: {}",
                self.port,
                describe_failure(&out)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }

    fn initdb(&self) -> anyhow::Result<()> {
        let mut cmd = self.server_cmd("initdb");
        cmd.arg("-D")
            .arg(&self.data)
            .args(["-A", "trust", "-U", SUPERUSER])
            .args(["--no-sync", "-E", "UTF8", "--locale=C"]);
        let out = run(cmd, INITDB_TIMEOUT).context("running initdb")?;
        if !out.status.success() {
            bail!("initdb failed: {}", describe_failure(&out));
        }
        Ok(())
    }

    fn configure(&self, b: &ClusterBuilder) -> anyhow::Result<()> {
        let mut conf = String::from("\n# pgwake-testkit\n");
        let mut set = |key: &str, value: &str| {
            let _ = writeln!(conf, "{key} = {}", quote_literal(value));
        };
        set("listen_addresses", HOST);
        set("port", &self.port.to_string());
        set("unix_socket_directories", &self.sock.to_string_lossy());
        set("fsync", "off");
        set("synchronous_commit", "off");
        set("full_page_writes", "off");
        set("max_connections", "200");
        set("shared_buffers", "32MB");
        set("logging_collector", "off");
        if b.auth == HostAuth::Md5 {
            // Otherwise the verifier is SCRAM and the md5 method silently
            // upgrades to SCRAM.
            set("password_encryption", "md5");
        }
        if let Some((cert, key)) = &b.tls {
            for (name, pem) in [("server.crt", cert), ("server.key", key)] {
                let path = self.data.join(name);
                fs::write(&path, pem).with_context(|| format!("writing {}", path.display()))?;
                // The server refuses a key readable by others.
                fs::set_permissions(&path, fs::Permissions::from_mode(0o600))
                    .with_context(|| format!("chmod {}", path.display()))?;
                if let Some(user) = &self.run_as {
                    std::os::unix::fs::chown(&path, Some(user.uid), Some(user.gid))
                        .with_context(|| format!("chown {}", path.display()))?;
                }
            }
            set("ssl", "on");
            set("ssl_cert_file", "server.crt");
            set("ssl_key_file", "server.key");
        }
        for (key, value) in &b.settings {
            set(key, value);
        }
        append_conf(&self.data, &conf)?;

        let method = b.auth.hba_method();
        let hba = format!(
            "# pgwake-testkit\n\
             local all all trust\n\
             host all {SUPERUSER} 127.0.0.1/32 trust\n\
             host all {SUPERUSER} ::1/128 trust\n\
             host all all 127.0.0.1/32 {method}\n\
             host all all ::1/128 {method}\n"
        );
        // Rewriting in place keeps the file's owner (the server user).
        let path = self.data.join("pg_hba.conf");
        fs::write(&path, hba).with_context(|| format!("writing {}", path.display()))
    }

    fn pg_ctl_stop(&self, mode: &str) -> anyhow::Result<()> {
        let mut cmd = self.server_cmd("pg_ctl");
        cmd.arg("stop")
            .arg("-w")
            .arg("-t")
            .arg(PG_CTL_WAIT_SECS.to_string())
            .arg("-m")
            .arg(mode)
            .arg("-D")
            .arg(&self.data);
        let out = run(cmd, PG_CTL_TIMEOUT).context("running pg_ctl stop")?;
        if !out.status.success() {
            bail!("pg_ctl stop -m {mode} failed: {}", describe_failure(&out));
        }
        Ok(())
    }

    /// Shell commands that start, stop and report this cluster (for a
    /// `command` lifecycle provider): `action` is `start`, `stop` or
    /// `status` (prints `ready` or `stopped`).
    pub fn ctl_command(&self, action: &str) -> String {
        let q = |p: &Path| format!("'{}'", p.display().to_string().replace('\'', "'\\''"));
        let as_server = match self.run_as {
            Some(u) => format!(
                "setpriv --reuid={} --regid={} --clear-groups ",
                u.uid, u.gid
            ),
            None => String::new(),
        };
        let pg_ctl = format!(
            "cd {} && {as_server}{}",
            q(self.tmp.path()),
            q(&self.bin.path("pg_ctl"))
        );
        let data = q(&self.data);
        match action {
            "start" => format!(
                "{pg_ctl} start -w -t {PG_CTL_WAIT_SECS} -l {} -D {data} >/dev/null",
                q(&self.log)
            ),
            "stop" => format!("{pg_ctl} stop -w -t {PG_CTL_WAIT_SECS} -m fast -D {data} >/dev/null"),
            "status" => format!(
                "if {pg_ctl} status -D {data} >/dev/null 2>&1; then echo ready; else echo stopped; fi"
            ),
            other => panic!("unknown action {other}"),
        }
    }

    /// A command for a server-side tool, run as the server's user.
    fn server_cmd(&self, tool: &str) -> Command {
        let mut cmd = Command::new(self.bin.path(tool));
        clean_env(&mut cmd);
        // The caller's cwd may not be reachable by the postgres user.
        cmd.current_dir(self.tmp.path());
        if let Some(user) = self.run_as {
            cmd.uid(user.uid).gid(user.gid);
        }
        cmd
    }

    fn log_tail(&self, lines: usize) -> String {
        match fs::read(&self.log) {
            Ok(bytes) => {
                let text = String::from_utf8_lossy(&bytes);
                let all: Vec<&str> = text.lines().collect();
                all[all.len().saturating_sub(lines)..].join("\n")
            }
            Err(e) => format!("(cannot read: {e})"),
        }
    }

    fn port_taken(&self) -> bool {
        let tail = self.log_tail(40);
        tail.contains("could not bind") || tail.contains("Address already in use")
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let mut cmd = self.server_cmd("pg_ctl");
        cmd.arg("stop")
            .args(["-w", "-t", "30", "-m", "immediate", "-D"])
            .arg(&self.data);
        let _ = run(cmd, PG_CTL_TIMEOUT);
    }
}

fn append_conf(data: &Path, text: &str) -> anyhow::Result<()> {
    let path = data.join("postgresql.conf");
    let mut file = fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))?;
    file.write_all(text.as_bytes())
        .with_context(|| format!("writing {}", path.display()))
}

/// Keeps the caller's PG* variables (PGHOST, PGDATA, PGOPTIONS, ...) from
/// steering the tools somewhere else.
fn clean_env(cmd: &mut Command) {
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("PG") {
            cmd.env_remove(&key);
        }
    }
}

/// Runs a command with captured output, killing it if it exceeds `timeout`.
fn run(mut cmd: Command, timeout: Duration) -> anyhow::Result<Output> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let program = cmd.get_program().to_string_lossy().into_owned();
    let mut child = cmd.spawn().with_context(|| format!("spawning {program}"))?;
    // Drained on threads so a chatty child cannot block on a full pipe.
    let stdout = drain(child.stdout.take());
    let stderr = drain(child.stderr.take());
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait().context("waiting for child")? {
            break status;
        }
        if Instant::now() >= deadline {
            kill(&mut child);
            // The readers are left behind: a grandchild may still hold the pipes.
            bail!("{program} did not finish within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Ok(Output {
        status,
        stdout: stdout.join().unwrap_or_default(),
        stderr: stderr.join().unwrap_or_default(),
    })
}

fn drain<R: Read + Send + 'static>(pipe: Option<R>) -> std::thread::JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        if let Some(mut pipe) = pipe {
            let _ = pipe.read_to_end(&mut buf);
        }
        buf
    })
}

fn kill(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

fn describe_failure(out: &Output) -> String {
    let mut text = format!("{}", out.status);
    for (name, bytes) in [("stdout", &out.stdout), ("stderr", &out.stderr)] {
        let s = String::from_utf8_lossy(bytes);
        let s = s.trim();
        if !s.is_empty() {
            let _ = write!(text, "\n{name}: {s}");
        }
    }
    text
}

fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

/// Single-quoted literal valid both in SQL (standard_conforming_strings) and
/// postgresql.conf, as long as there are no backslashes in SQL use.
fn quote_literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// A free TCP port on 127.0.0.1 in 20000..32000, below the ephemeral range so
/// a server that is stopped and started again cannot lose its port to a
/// client that connected to itself (see the TCP self-connect note). Never
/// returns the same port twice within one process.
///
/// Panics if every port in the range is taken or already handed out.
pub fn free_port() -> u16 {
    static HANDED_OUT: Mutex<Option<HashSet<u16>>> = Mutex::new(None);
    let mut guard = HANDED_OUT.lock().unwrap_or_else(|e| e.into_inner());
    let handed_out = guard.get_or_insert_with(HashSet::new);

    let len = u32::from(PORT_RANGE.end - PORT_RANGE.start);
    // Random start spreads concurrent test processes over the range.
    let start = u32::try_from(random_u64() % u64::from(len)).unwrap_or(0);
    for i in 0..len {
        let offset = u16::try_from((start + i) % len).unwrap_or(0);
        let port = PORT_RANGE.start + offset;
        if handed_out.contains(&port) {
            continue;
        }
        if TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_ok() {
            handed_out.insert(port);
            return port;
        }
    }
    panic!("no free TCP port on 127.0.0.1 in {PORT_RANGE:?}");
}

fn random_u64() -> u64 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    // RandomState is seeded randomly per process; the rest makes successive
    // calls differ.
    let mut h = RandomState::new().build_hasher();
    h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    h.write_u32(std::process::id());
    if let Ok(d) = SystemTime::now().duration_since(UNIX_EPOCH) {
        h.write_u128(d.as_nanos());
    }
    h.finish()
}

/// Connects with tokio-postgres (no TLS) and spawns the connection task.
pub async fn connect(
    host: &str,
    port: u16,
    user: &str,
    password: Option<&str>,
    db: &str,
) -> anyhow::Result<tokio_postgres::Client> {
    let mut config = tokio_postgres::Config::new();
    config
        .host(host)
        .port(port)
        .user(user)
        .dbname(db)
        .connect_timeout(CONNECT_TIMEOUT);
    if let Some(password) = password {
        config.password(password);
    }
    connect_config(&config)
        .await
        .with_context(|| format!("connecting to {host}:{port} as {user:?} db {db:?}"))
}

/// Same as [`connect`], from a connection string or URL.
pub async fn connect_url(url: &str) -> anyhow::Result<tokio_postgres::Client> {
    let mut config: tokio_postgres::Config = url
        .parse()
        .map_err(|e| anyhow!("bad connection string: {e}"))?;
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(CONNECT_TIMEOUT);
    }
    connect_config(&config)
        .await
        .context("connecting with a connection string")
}

async fn connect_config(
    config: &tokio_postgres::Config,
) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let (client, connection) = config.connect(tokio_postgres::NoTls).await?;
    tokio::spawn(async move {
        // Errors here (server stopped, connection killed) surface to the
        // client's next call; nothing more to do with them.
        let _ = connection.await;
    });
    Ok(client)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_port_is_below_ephemeral_range_unique_and_bindable() {
        let ports: Vec<u16> = (0..50).map(|_| free_port()).collect();
        let unique: HashSet<u16> = ports.iter().copied().collect();
        assert_eq!(unique.len(), ports.len());
        for port in ports {
            assert!(PORT_RANGE.contains(&port), "{port}");
            TcpListener::bind((Ipv4Addr::LOCALHOST, port)).expect("port should be bindable");
        }
    }

    #[test]
    fn cluster_is_send_and_sync() {
        fn send_sync<T: Send + Sync>() {}
        send_sync::<Cluster>();
        send_sync::<ClusterBuilder>();
    }

    #[test]
    fn url_percent_encodes() {
        assert_eq!(percent_encode("a b@c:d/é"), "a%20b%40c%3Ad%2F%C3%A9");
        assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
        assert_eq!(quote_literal("it's"), "'it''s'");
    }
}
