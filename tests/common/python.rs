//! The Python clients in `tests/python`: their virtualenv (`target/pyenv`,
//! made by `tests/python/ensure_venv.py` from `requirements.txt`) and the
//! commands that run them with an environment that cannot redirect them.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result};

use super::proc::Proc;

/// Installing the packages may take a while on a cold cache.
const VENV_TIMEOUT: Duration = Duration::from_secs(1200);

pub fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn python_dir() -> PathBuf {
    workspace().join("tests").join("python")
}

pub fn venv() -> PathBuf {
    workspace().join("target").join("pyenv")
}

pub fn venv_bin(tool: &str) -> PathBuf {
    venv().join("bin").join(tool)
}

/// Creates target/pyenv from tests/python/requirements.txt unless it already
/// holds them; concurrent callers are serialized by ensure_venv.py's lock.
pub fn ensure_venv(logs: &Path) -> Result<()> {
    let mut cmd = Command::new("python3");
    cmd.arg(python_dir().join("ensure_venv.py"))
        .arg(venv())
        .env("PYTHONDONTWRITEBYTECODE", "1");
    Proc::spawn("ensure_venv.py", cmd, logs.join("ensure_venv.log"))?
        .finish(VENV_TIMEOUT)
        .context("setting up the Python virtualenv for the client tests")?;
    Ok(())
}

/// Drops settings that could redirect or alter a client's connections
/// (libpq's `PG*`, proxies, Django's settings).
pub fn without_client_env(cmd: &mut Command) {
    for (key, _) in std::env::vars_os() {
        let key_str = key.to_string_lossy();
        if key_str.starts_with("PG")
            || key_str.starts_with("DJANGO")
            || key_str.to_ascii_lowercase().ends_with("_proxy")
        {
            cmd.env_remove(&key);
        }
    }
}

/// A program from the virtualenv (`python`, `gunicorn`) with a clean
/// environment and unbuffered output.
pub fn python_cmd(program: &str) -> Command {
    let mut cmd = Command::new(venv_bin(program));
    without_client_env(&mut cmd);
    cmd.env("PYTHONDONTWRITEBYTECODE", "1")
        .env("PYTHONUNBUFFERED", "1");
    cmd
}
