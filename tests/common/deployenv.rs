//! The deployment files' Python tools (`deploy/validate/*.py` and the
//! validators), run from the virtualenv `target/deployenv`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use super::proc::Proc;

const VENV_TIMEOUT: Duration = Duration::from_secs(1500);

pub fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn deploy() -> PathBuf {
    workspace().join("deploy")
}

/// What makes the validators' virtualenv ready (as `.ci/run` and
/// `tests/run` ask too).
const VENV_ARGS: [&str; 4] = [
    "--check",
    "import hcl2, yaml",
    "--tools",
    "kubernetes-validate,hadolint,yamllint,checkov",
];

/// A program of the validators' virtualenv, made once per test process (its
/// script's lock file keeps concurrent processes from installing at the
/// same time).
pub fn venv_bin(tool: &str) -> PathBuf {
    static VENV: OnceLock<PathBuf> = OnceLock::new();
    let venv = VENV.get_or_init(|| {
        let venv = workspace().join("target").join("deployenv");
        let logs = tempfile::tempdir().unwrap();
        let mut cmd = Command::new("python3");
        cmd.arg(
            workspace()
                .join("tests")
                .join("python")
                .join("ensure_venv.py"),
        )
        .arg(&venv)
        .args(VENV_ARGS)
        .arg("--requirements")
        .arg(deploy().join("requirements.txt"))
        .env("PYTHONDONTWRITEBYTECODE", "1");
        run("ensure_venv.py", cmd, logs.path(), VENV_TIMEOUT)
            .unwrap_or_else(|e| panic!("setting up the validators' virtualenv: {e:#}"));
        venv
    });
    venv.join("bin").join(tool)
}

/// Runs `cmd` to its end within `limit`: its output (stdout and stderr),
/// or an error with that output when it exits non-zero.
pub fn run(name: &str, cmd: Command, logs: &Path, limit: Duration) -> anyhow::Result<String> {
    let log = logs.join(format!("{}.log", name.replace(['/', ' '], "_")));
    Proc::spawn(name, cmd, log)?.finish(limit)
}
