//! Child processes for tests that drive real clients (Python, Node): each
//! in its own process group, its output in a log file, killed with its
//! group when dropped.

use std::fs::{self, File};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};

/// A child process in its own process group, its stdout and stderr going
/// to a log file. Dropping it kills the whole group.
pub struct Proc {
    name: String,
    child: Child,
    log: PathBuf,
}

impl Proc {
    pub fn spawn(name: &str, mut cmd: Command, log: PathBuf) -> Result<Proc> {
        let out = File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let err = out.try_clone()?;
        cmd.stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .process_group(0);
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {name}: {cmd:?}"))?;
        Ok(Proc {
            name: name.to_string(),
            child,
            log,
        })
    }

    pub fn output(&self) -> String {
        fs::read(&self.log)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_else(|e| format!("(cannot read {}: {e})", self.log.display()))
    }

    /// The last `lines` lines of the process's output.
    pub fn output_tail(&self, lines: usize) -> String {
        let text = self.output();
        let all: Vec<&str> = text.lines().collect();
        let start = all.len().saturating_sub(lines);
        format!(
            "--- {} output (last {} of {} lines) ---\n{}\n--- end of {} output ---",
            self.name,
            all.len() - start,
            all.len(),
            all[start..].join("\n"),
            self.name
        )
    }

    /// The process id (also its process group's).
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// The exit status, if the process has exited.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Waits for the process to exit, killing its group after `limit`.
    pub fn wait(&mut self, limit: Duration) -> Result<ExitStatus> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            if Instant::now() > deadline {
                self.kill_group();
                bail!("{} did not finish within {limit:?}; killed", self.name);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits for a clean exit within `limit`; returns the output.
    pub fn finish(&mut self, limit: Duration) -> Result<String> {
        let status = self.wait(limit).with_context(|| self.output_tail(200))?;
        ensure!(
            status.success(),
            "{} failed ({status})\n{}",
            self.name,
            self.output_tail(200)
        );
        Ok(self.output())
    }

    pub fn kill_group(&mut self) {
        // The group id is the child's pid (process_group(0)). The shell's
        // own `kill`, not /usr/bin/kill: procps-ng 4.0's turns `-KILL -PGID`
        // into kill(-1, SIGKILL), every process the user may signal.
        let _ = Command::new("sh")
            .arg("-c")
            .arg(format!("kill -KILL -{} 2>/dev/null", self.child.id()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill_group();
    }
}
