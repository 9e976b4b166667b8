//! Finding the PostgreSQL server binaries.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::error::with_causes;
use crate::process::run;
use crate::Error;

/// Location of the PostgreSQL server binaries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PgBin {
    pub dir: PathBuf,
}

impl PgBin {
    /// `PG_BIN` env var, else `pg_config --bindir`, else the highest
    /// `/usr/lib/postgresql/*/bin`.
    pub fn find() -> Result<PgBin, Error> {
        let mut tried = Vec::new();

        if let Some(dir) = std::env::var_os("PG_BIN") {
            let dir = PathBuf::from(dir);
            if has_server_tools(&dir) {
                return Ok(PgBin { dir });
            }
            return Err(Error::BadPgBin(dir));
        }
        tried.push("PG_BIN (not set)".to_string());

        match pg_config_bindir() {
            Ok(dir) if has_server_tools(&dir) => return Ok(PgBin { dir }),
            Ok(dir) => tried.push(format!(
                "`pg_config --bindir` ({}: no initdb/pg_ctl/postgres there)",
                dir.display()
            )),
            Err(why) => tried.push(format!("`pg_config --bindir` ({why})")),
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
        Err(Error::BinariesNotFound { tried })
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

/// The directory `pg_config` names, or why there is none: the reason is one
/// entry in the list of places tried.
fn pg_config_bindir() -> Result<PathBuf, String> {
    let mut cmd = Command::new("pg_config");
    cmd.arg("--bindir");
    let out = run(cmd, Duration::from_secs(30)).map_err(|e| with_causes(&e))?;
    if !out.status.success() {
        return Err(out.to_string());
    }
    let dir = out.stdout.trim();
    if dir.is_empty() {
        return Err("printed nothing".to_string());
    }
    Ok(PathBuf::from(dir))
}
