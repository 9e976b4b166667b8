//! The throwaway cluster: initdb into a temp dir, configure, start, and
//! stop, start and query it with `pg_ctl` and `psql`.

use std::fmt::Write as _;
use std::fs;
use std::io::Write as _;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::process::{clean_env, run};
use crate::{free_port, quote_ident, quote_literal, Error, PgBin, HOST, SUPERUSER};

/// `pg_ctl -t`: how long pg_ctl itself waits for start/stop.
const PG_CTL_WAIT_SECS: u32 = 60;
/// Outer bound on any child process, a little above pg_ctl's own wait.
const PG_CTL_TIMEOUT: Duration = Duration::from_secs(90);
const INITDB_TIMEOUT: Duration = Duration::from_secs(180);
const PSQL_TIMEOUT: Duration = Duration::from_secs(180);
const PSQL_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Attempts at starting on a fresh port when an automatically chosen one was
/// taken by another process between the check and the server's bind.
const START_ATTEMPTS: usize = 5;

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

/// What a command from [`Cluster::ctl_command`] does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CtlAction {
    /// Starts the server and waits until it accepts connections.
    Start,
    /// Stops the server (fast mode) and waits until it is down.
    Stop,
    /// Prints `ready` or `stopped`.
    Status,
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
    pub fn start(mut self) -> Result<Cluster, Error> {
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
            .map_err(io_error("create a temp dir in", "/tmp"))?;
        let data = tmp.path().join("data");
        let sock = tmp.path().join("sock");
        let log = tmp.path().join("server.log");
        fs::create_dir(&sock).map_err(io_error("create", &sock))?;
        if let Some(user) = &run_as {
            for dir in [tmp.path(), sock.as_path()] {
                std::os::unix::fs::chown(dir, Some(user.uid), Some(user.gid))
                    .map_err(io_error("chown", dir))?;
                fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
                    .map_err(io_error("chmod", dir))?;
            }
        }

        let explicit_port = self.port.is_some();
        let port = match self.port {
            Some(port) => port,
            None => free_port()?,
        };
        let mut cluster = Cluster {
            bin,
            port,
            data,
            sock,
            log,
            run_as,
            tmp,
        };
        cluster.initdb()?;
        cluster.configure(&self)?;

        let mut attempt = 1;
        // Bounded by START_ATTEMPTS.
        loop {
            match cluster.start_again() {
                Ok(()) => break,
                Err(_) if !explicit_port && attempt < START_ATTEMPTS && cluster.port_taken() => {
                    // Someone else grabbed the port after free_port checked it.
                    attempt += 1;
                    cluster.port = free_port()?;
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
fn server_user() -> Result<Option<RunAs>, Error> {
    let euid = fs::metadata("/proc/self")
        .map_err(io_error("read the current uid from", "/proc/self"))?
        .uid();
    if euid != 0 {
        return Ok(None);
    }
    let passwd = fs::read_to_string("/etc/passwd").map_err(io_error("read", "/etc/passwd"))?;
    for line in passwd.lines() {
        let fields: Vec<&str> = line.split(':').collect();
        if fields.len() >= 4 && fields[0] == "postgres" {
            let (Ok(uid), Ok(gid)) = (fields[2].parse(), fields[3].parse()) else {
                return Err(Error::BadPasswdLine(line.to_string()));
            };
            return Ok(Some(RunAs { uid, gid }));
        }
    }
    Err(Error::NoServerUser)
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
    pub fn stop(&self) -> Result<(), Error> {
        self.pg_ctl_stop("fast")
    }

    /// `pg_ctl stop -m immediate`, waiting until the server is down.
    pub fn stop_immediate(&self) -> Result<(), Error> {
        self.pg_ctl_stop("immediate")
    }

    /// `pg_ctl start -w` on the same data dir and port after a stop.
    pub fn start_again(&self) -> Result<(), Error> {
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
        let exit = run(cmd, PG_CTL_TIMEOUT)?;
        if !exit.status.success() {
            return Err(Error::Start {
                port: self.port,
                exit,
                log: self.log.clone(),
                log_tail: self.log_tail(40),
            });
        }
        Ok(())
    }

    /// Fast stop (if running) and start again.
    pub fn restart(&self) -> Result<(), Error> {
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
    pub fn psql(&self, db: &str, sql: &str) -> Result<String, Error> {
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
            .env(
                "PGCONNECT_TIMEOUT",
                PSQL_CONNECT_TIMEOUT.as_secs().to_string(),
            );
        let exit = run(cmd, PSQL_TIMEOUT)?;
        if !exit.status.success() {
            return Err(Error::Psql {
                port: self.port,
                db: db.to_string(),
                sql: sql.to_string(),
                exit,
            });
        }
        Ok(exit.stdout.trim().to_string())
    }

    /// A shell command that starts, stops or reports this cluster, for a
    /// `command` lifecycle provider.
    pub fn ctl_command(&self, action: CtlAction) -> String {
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
            CtlAction::Start => format!(
                "{pg_ctl} start -w -t {PG_CTL_WAIT_SECS} -l {} -D {data} >/dev/null",
                q(&self.log)
            ),
            CtlAction::Stop => {
                format!("{pg_ctl} stop -w -t {PG_CTL_WAIT_SECS} -m fast -D {data} >/dev/null")
            }
            CtlAction::Status => format!(
                "if {pg_ctl} status -D {data} >/dev/null 2>&1; then echo ready; else echo stopped; fi"
            ),
        }
    }

    fn initdb(&self) -> Result<(), Error> {
        let mut cmd = self.server_cmd("initdb");
        cmd.arg("-D")
            .arg(&self.data)
            .args(["-A", "trust", "-U", SUPERUSER])
            .args(["--no-sync", "-E", "UTF8", "--locale=C"]);
        let exit = run(cmd, INITDB_TIMEOUT)?;
        if !exit.status.success() {
            return Err(Error::Initdb(exit));
        }
        Ok(())
    }

    fn configure(&self, b: &ClusterBuilder) -> Result<(), Error> {
        let mut conf = String::from("\n# pgwake-localpg\n");
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
                fs::write(&path, pem).map_err(io_error("write", &path))?;
                // The server refuses a key readable by others.
                fs::set_permissions(&path, fs::Permissions::from_mode(0o600))
                    .map_err(io_error("chmod", &path))?;
                if let Some(user) = &self.run_as {
                    std::os::unix::fs::chown(&path, Some(user.uid), Some(user.gid))
                        .map_err(io_error("chown", &path))?;
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
            "# pgwake-localpg\n\
             local all all trust\n\
             host all {SUPERUSER} 127.0.0.1/32 trust\n\
             host all {SUPERUSER} ::1/128 trust\n\
             host all all 127.0.0.1/32 {method}\n\
             host all all ::1/128 {method}\n"
        );
        // Rewriting in place keeps the file's owner (the server user).
        let path = self.data.join("pg_hba.conf");
        fs::write(&path, hba).map_err(io_error("write", &path))
    }

    fn pg_ctl_stop(&self, mode: &'static str) -> Result<(), Error> {
        let mut cmd = self.server_cmd("pg_ctl");
        cmd.arg("stop")
            .arg("-w")
            .arg("-t")
            .arg(PG_CTL_WAIT_SECS.to_string())
            .arg("-m")
            .arg(mode)
            .arg("-D")
            .arg(&self.data);
        let exit = run(cmd, PG_CTL_TIMEOUT)?;
        if !exit.status.success() {
            return Err(Error::Stop { mode, exit });
        }
        Ok(())
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

/// Builds the error for a failed file operation on `path`.
fn io_error(action: &'static str, path: impl AsRef<Path>) -> impl FnOnce(std::io::Error) -> Error {
    let path = path.as_ref().to_path_buf();
    move |source| Error::Io {
        action,
        path,
        source,
    }
}

fn append_conf(data: &Path, text: &str) -> Result<(), Error> {
    let path = data.join("postgresql.conf");
    let mut file = fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .map_err(io_error("open", &path))?;
    file.write_all(text.as_bytes())
        .map_err(io_error("write", &path))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_is_send_and_sync() {
        fn send_sync<T: Send + Sync>() {}
        send_sync::<Cluster>();
        send_sync::<ClusterBuilder>();
    }

    #[test]
    fn url_percent_encodes() {
        assert_eq!(percent_encode("a b@c:d/é"), "a%20b%40c%3Ad%2F%C3%A9");
    }
}
