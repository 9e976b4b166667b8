//! What can go wrong making or driving a cluster.

use std::fmt;
use std::io;
use std::path::PathBuf;
use std::process::ExitStatus;
use std::time::Duration;

/// A cluster that could not be made, started, stopped or queried. Each
/// message names what failed and carries what the tool printed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An explicit choice that is wrong fails loudly rather than falling
    /// back to some other installation.
    #[error("PG_BIN={} does not contain initdb, pg_ctl and postgres", .0.display())]
    BadPgBin(PathBuf),
    #[error(
        "PostgreSQL server binaries not found; tried {}. Install them \
         (e.g. `apt-get install postgresql`) or set PG_BIN to the directory \
         holding initdb and pg_ctl",
        .tried.join(", ")
    )]
    BinariesNotFound { tried: Vec<String> },
    #[error(
        "running as root, and PostgreSQL refuses to run as root, but there is no \
         `postgres` user in /etc/passwd to run it as (`apt-get install postgresql` \
         creates one); or run as a non-root user"
    )]
    NoServerUser,
    #[error("bad uid or gid in /etc/passwd line {0:?}")]
    BadPasswdLine(String),
    #[error("cannot {action} {}", .path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot run {program}")]
    Spawn {
        program: String,
        #[source]
        source: io::Error,
    },
    #[error("{program} did not finish within {timeout:?}")]
    Timeout { program: String, timeout: Duration },
    #[error("initdb failed: {0}")]
    Initdb(Exit),
    #[error(
        "pg_ctl start failed on port {port}: {exit}\n--- tail of {} ---\n{log_tail}",
        .log.display()
    )]
    Start {
        port: u16,
        exit: Exit,
        log: PathBuf,
        log_tail: String,
    },
    #[error("pg_ctl stop -m {mode} failed: {exit}")]
    Stop { mode: &'static str, exit: Exit },
    #[error("psql on port {port} db {db:?} failed for {sql:?}: {exit}")]
    Psql {
        port: u16,
        db: String,
        sql: String,
        exit: Exit,
    },
    #[error("no free TCP port on 127.0.0.1 among the {0} outside the ephemeral range")]
    NoFreePort(usize),
}

/// How a tool ended, and what it printed.
#[derive(Debug, Clone)]
pub struct Exit {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl fmt::Display for Exit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.status)?;
        for (name, text) in [("stdout", &self.stdout), ("stderr", &self.stderr)] {
            let text = text.trim();
            if !text.is_empty() {
                write!(f, "\n{name}: {text}")?;
            }
        }
        Ok(())
    }
}

/// `e` and its causes on one line, for an error that becomes a reason in a
/// longer message rather than a source of its own.
pub(crate) fn with_causes(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    // Bounded: a cause chain is finite; 16 is far beyond any seen here.
    for _ in 0..16 {
        let Some(c) = cause else { break };
        text.push_str(": ");
        text.push_str(&c.to_string());
        cause = c.source();
    }
    text
}
