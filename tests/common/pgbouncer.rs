//! Running Debian's PgBouncer beside pgwake, for tests that compare them.
//! PgBouncer refuses to run as root: as root it runs as the `postgres`
//! system user (whom the test clusters run as too), so its files must be
//! readable by that user.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use super::proc::Proc;

/// The PgBouncer binary: `pgbouncer` on the PATH, else Debian's
/// `/usr/sbin/pgbouncer`. Fails the test, saying how to get it, when neither
/// is there.
pub fn binary() -> PathBuf {
    let on_path = std::env::var_os("PATH")
        .map(|p| {
            std::env::split_paths(&p)
                .map(|d| d.join("pgbouncer"))
                .collect::<Vec<_>>()
        })
        .unwrap_or_default();
    on_path
        .into_iter()
        .chain([PathBuf::from("/usr/sbin/pgbouncer")])
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!("PgBouncer is not installed: tests/run installs the Debian package pgbouncer (apt-get install pgbouncer)")
        })
}

/// A running PgBouncer, killed with its process group on drop.
pub struct PgBouncer {
    proc: Proc,
    pub port: u16,
}

impl PgBouncer {
    /// Starts PgBouncer on `ini` (whose `listen_port` is `port`) from the
    /// directory `dir` (where relative paths in the file resolve, and the log
    /// goes), and waits until it accepts connections.
    pub fn start(ini: &Path, dir: &Path, port: u16) -> PgBouncer {
        let mut cmd = if super::is_root() {
            let mut c = Command::new("setpriv");
            c.args(["--reuid=postgres", "--regid=postgres", "--clear-groups"])
                .arg(binary());
            c
        } else {
            Command::new(binary())
        };
        cmd.arg(ini).current_dir(dir);
        let proc =
            Proc::spawn("pgbouncer", cmd, dir.join("pgbouncer.log")).expect("start pgbouncer");
        let mut me = PgBouncer { proc, port };
        let listening = super::poll_until(Duration::from_secs(15), || {
            me.proc.exited().is_none() && std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        assert!(
            listening,
            "PgBouncer did not listen on {port}\n{}",
            me.proc.output_tail(50)
        );
        me
    }

    /// The last lines PgBouncer logged.
    pub fn log_tail(&self) -> String {
        self.proc.output_tail(50)
    }
}

/// Makes `dir` and every file in it readable by others, so that PgBouncer
/// (as `postgres`) can read the configuration written there by root.
pub fn share(dir: &Path) {
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let mode = if path.is_dir() { 0o755 } else { 0o644 };
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
    }
}
