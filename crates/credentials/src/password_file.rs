//! A password (or token) kept in a file, e.g. a mounted Kubernetes secret,
//! re-read when the file changes.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::SystemTime;

use crate::{CredentialError, CredentialSource, Secret};

/// The file's first line (without its line ending) is the secret.
#[derive(Debug)]
pub struct PasswordFile {
    path: PathBuf,
    /// What was read last, and the file's modification time and size then.
    cached: Mutex<Option<(SystemTime, u64, Secret)>>,
    generation: AtomicU64,
}

impl PasswordFile {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        PasswordFile {
            path: path.into(),
            cached: Mutex::new(None),
            generation: AtomicU64::new(0),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn error(&self, reason: impl Into<String>) -> CredentialError {
        CredentialError {
            source_name: self.describe(),
            reason: reason.into(),
        }
    }
}

impl CredentialSource for PasswordFile {
    /// Re-reads the file only when its modification time or size changed,
    /// so calling this often costs one `stat`.
    fn current(&self) -> Result<Option<Secret>, CredentialError> {
        let meta = std::fs::metadata(&self.path).map_err(|e| self.error(e.to_string()))?;
        let stamp = (
            meta.modified().map_err(|e| self.error(e.to_string()))?,
            meta.len(),
        );
        let mut cached = self.cached.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((mtime, len, secret)) = cached.as_ref() {
            if (*mtime, *len) == stamp {
                return Ok(Some(secret.clone()));
            }
        }
        let text = std::fs::read_to_string(&self.path).map_err(|e| self.error(e.to_string()))?;
        let line = text.lines().next().unwrap_or("").trim_end_matches('\r');
        if line.is_empty() {
            return Err(self.error("the file is empty"));
        }
        let secret = Secret::new(line);
        let changed = cached.as_ref().is_some_and(|(_, _, old)| *old != secret);
        *cached = Some((stamp.0, stamp.1, secret.clone()));
        if changed {
            self.generation.fetch_add(1, Ordering::Relaxed);
        }
        Ok(Some(secret))
    }

    fn generation(&self) -> u64 {
        self.generation.load(Ordering::Relaxed)
    }

    fn describe(&self) -> String {
        format!("password_file {}", self.path.display())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rereads_on_change_and_bumps_the_generation() {
        let dir = std::env::temp_dir().join(format!("pgwake-pwfile-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("password");
        std::fs::write(&path, "first\n").unwrap();
        let src = PasswordFile::new(&path);
        assert_eq!(src.current().unwrap().unwrap().expose(), "first");
        assert_eq!(src.generation(), 0);
        // A different length changes the stamp even within one mtime tick.
        std::fs::write(&path, "second-one\n").unwrap();
        assert_eq!(src.current().unwrap().unwrap().expose(), "second-one");
        assert_eq!(src.generation(), 1);
        assert_eq!(src.current().unwrap().unwrap().expose(), "second-one");
        assert_eq!(src.generation(), 1);
        std::fs::write(&path, "").unwrap();
        let e = src.current().unwrap_err().to_string();
        assert!(e.contains("password_file") && e.contains("empty"), "{e}");
        std::fs::remove_file(&path).unwrap();
        assert!(src.current().is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
