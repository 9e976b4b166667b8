//! `pgwake import-pgbouncer`: a PgBouncer configuration (`pgbouncer.ini`,
//! its `%include`s, its `auth_file` and `auth_hba_file`) as an equivalent
//! pgwake configuration, and a warning for every setting that has no
//! equivalent or means something else in pgwake, saying what pgwake does
//! instead.
//!
//! Reads files, never writes any. The TOML it returns has passed
//! [`crate::load`]; the importer refuses to return one that does not.

mod auth;
mod connstr;
mod databases;
mod emit;
mod hba;
mod ini;
mod settings;
mod users_and_peers;

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use toml::Value;

use emit::Doc;
use ini::{Ini, Place, Section, Setting};

/// What the importer needs besides the file.
#[derive(Debug, Clone)]
pub struct ImportOptions {
    /// Relative paths (`%include`, `auth_file`, TLS files) are taken from
    /// here, as PgBouncer takes them from its current directory.
    pub base_dir: PathBuf,
    /// The user list to read instead of the file's `auth_file` (a copy,
    /// when the original is on another machine).
    pub userlist: Option<PathBuf>,
}

/// The imported configuration.
#[derive(Clone)]
pub struct Imported {
    /// pgwake's TOML, with the comments that explain its settings.
    pub toml: String,
    /// Settings with no equivalent or a different meaning, in file order.
    pub warnings: Vec<ImportWarning>,
}

/// The TOML may hold the server password the PgBouncer file held: never
/// in `Debug`.
impl fmt::Debug for Imported {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Imported")
            .field("toml", &format_args!("<{} bytes>", self.toml.len()))
            .field("warnings", &self.warnings)
            .finish()
    }
}

/// A setting pgwake cannot carry over as it is, and what it does instead.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImportWarning {
    pub file: String,
    pub line: usize,
    /// The PgBouncer key (`[databases] app`, `listen_addr`, …).
    pub key: String,
    pub message: String,
}

impl fmt::Display for ImportWarning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}: {}: {}",
            self.file, self.line, self.key, self.message
        )
    }
}

/// Why a file cannot be imported, with the file, line and key when known.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ImportError {
    pub file: String,
    pub line: Option<usize>,
    pub key: Option<String>,
    pub message: String,
}

impl fmt::Display for ImportError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file)?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
        }
        if let Some(key) = &self.key {
            write!(f, ": {key}")?;
        }
        write!(f, ": {}", self.message)
    }
}

impl ImportError {
    fn file(file: &str, message: String) -> ImportError {
        ImportError {
            file: file.to_owned(),
            line: None,
            key: None,
            message,
        }
    }

    fn line(at: &Place, message: String) -> ImportError {
        ImportError {
            file: at.file.to_string(),
            line: Some(at.line),
            key: None,
            message,
        }
    }

    fn at(at: &Place, key: &str, message: String) -> ImportError {
        ImportError {
            file: at.file.to_string(),
            line: Some(at.line),
            key: Some(key.to_owned()),
            message,
        }
    }
}

/// Reads `path` (and what it includes and names) and returns pgwake's
/// equivalent configuration.
pub fn import(path: &Path, options: &ImportOptions) -> Result<Imported, ImportError> {
    let ini = ini::read(path, &options.base_dir)?;
    let mut c = Convert::new(path, options, ini)?;
    c.listen()?;
    c.limits_and_timeouts()?;
    c.server_connections()?;
    c.logging()?;
    c.admin();
    let userlist = c.userlist()?;
    let routes = c.databases(userlist.as_ref())?;
    c.users_section()?;
    c.peers()?;
    c.client_auth(userlist.as_ref(), &routes)?;
    c.without_equivalent();
    c.finish(path)
}

/// The conversion under way.
pub(super) struct Convert<'a> {
    options: &'a ImportOptions,
    ini: Ini,
    doc: Doc,
    warnings: Vec<(usize, ImportWarning)>,
    /// `[pgbouncer]` settings not yet converted; for a key set twice, the
    /// last (as PgBouncer reads it).
    settings: BTreeMap<String, Setting>,
    /// The main file, for what no line says.
    main: String,
    /// Whether pgwake's TCP listener is on loopback only.
    loopback_listener: bool,
    /// `[pool]` size and min_idle, which `[databases]` entries inherit.
    pool_size: usize,
    min_pool_size: usize,
}

/// A setting's origin, at the end of the TOML line it became.
fn origin(s: &Setting) -> String {
    format!("{} ({})", s.key, s.at.short())
}

/// PgBouncer's value where the file sets nothing and pgwake's default differs.
const PGBOUNCER_DEFAULT: &str = "PgBouncer's default";

impl<'a> Convert<'a> {
    fn new(path: &Path, options: &'a ImportOptions, ini: Ini) -> Result<Convert<'a>, ImportError> {
        let mut settings = BTreeMap::new();
        for (s, _) in &ini.undone {
            settings::check_known(s)?;
        }
        for s in ini
            .settings
            .iter()
            .filter(|s| s.section == Section::PgBouncer)
        {
            settings::check_known(s)?;
            settings.insert(s.key.to_ascii_lowercase(), s.clone());
        }
        let mut c = Convert {
            options,
            ini,
            doc: Doc::default(),
            warnings: Vec::new(),
            settings,
            main: path.display().to_string(),
            loopback_listener: true,
            pool_size: 20,
            min_pool_size: 0,
        };
        for (s, header) in c.ini.undone.clone() {
            let message = format!("no effect: PgBouncer sets every [pgbouncer] setting back to its default when the section starts again ({}), so this one was left out; move it below that header", header.short());
            c.warn(&s, message);
        }
        Ok(c)
    }

    /// Takes a `[pgbouncer]` setting for conversion.
    fn take(&mut self, key: &str) -> Option<Setting> {
        self.settings.remove(key)
    }

    fn warn(&mut self, s: &Setting, message: String) {
        self.warn_at(&s.at, &s.key, message);
    }

    fn warn_at(&mut self, at: &Place, key: &str, message: String) {
        self.warnings.push((
            at.seq,
            ImportWarning {
                file: at.file.to_string(),
                line: at.line,
                key: key.to_owned(),
                message,
            },
        ));
    }

    /// A warning about something the file leaves unset: placed at the
    /// `[pgbouncer]` header (line 1 of the file without one).
    fn warn_unset(&mut self, key: &str, message: String) {
        let at = self.header(Section::PgBouncer);
        self.warn_at(&at, &format!("{key} (unset)"), message);
    }

    /// Where `section` begins (line 1 of the main file when it does not).
    fn header(&self, section: Section) -> Place {
        self.ini.header(section).cloned().unwrap_or(Place {
            file: self.main.as_str().into(),
            line: 1,
            seq: 0,
        })
    }

    /// Sets a pgwake key from one PgBouncer setting, with its comments.
    fn set_from(&mut self, path: &[&str], key: &str, value: Value, s: &Setting) {
        self.doc.set(path, key, value, &origin(s), &s.comments);
    }

    fn resolve(&self, path: &str) -> PathBuf {
        ini::resolve(&self.options.base_dir, Path::new(path))
    }

    fn finish(mut self, path: &Path) -> Result<Imported, ImportError> {
        let mut header = vec![
            format!(
                "pgwake configuration imported from {} by `pgwake import-pgbouncer`.",
                path.display()
            ),
            "Check it with `pgwake check --config FILE`. Each key's comment names the PgBouncer"
                .to_owned(),
            "setting it came from; settings without an equivalent were reported when importing."
                .to_owned(),
        ];
        if self.warnings.is_empty() {
            header.push("Every setting had an equivalent.".to_owned());
        }
        let toml = self.doc.render(&header);
        self.warnings.sort_by_key(|(seq, _)| *seq);
        let warnings = self.warnings.into_iter().map(|(_, w)| w).collect();
        // What pgwake check does first; the caller checks the files it names.
        if let Err(errors) = crate::load(
            Some(("the imported configuration", &toml)),
            None,
            std::iter::empty(),
        ) {
            return Err(ImportError::file(
                &path.display().to_string(),
                format!(
                    "the imported configuration does not pass pgwake's checks (please report this):\n{errors}\n--- the configuration ---\n{toml}"
                ),
            ));
        }
        Ok(Imported { toml, warnings })
    }
}

/// Value helpers: PgBouncer's numbers, times and switches, each error naming
/// the setting.
impl Setting {
    /// A whole number as PgBouncer's `strtol(…, 0)` reads it: decimal,
    /// `0x` hexadecimal or `0` octal.
    fn int(&self) -> Result<i64, ImportError> {
        parse_int(&self.value).ok_or_else(|| {
            ImportError::at(
                &self.at,
                &self.key,
                format!("{:?} is not a whole number", self.value),
            )
        })
    }

    /// A whole number that may not be negative.
    fn count(&self) -> Result<usize, ImportError> {
        let n = self.int()?;
        usize::try_from(n).map_err(|_| {
            ImportError::at(
                &self.at,
                &self.key,
                format!("{n} is negative; PgBouncer expects 0 or more"),
            )
        })
    }

    /// Seconds, possibly fractional (`0.5`), as PgBouncer's time settings.
    fn seconds(&self) -> Result<Duration, ImportError> {
        let bad = || {
            ImportError::at(
                &self.at,
                &self.key,
                format!(
                    "{:?} is not a number of seconds (like 30 or 0.5)",
                    self.value
                ),
            )
        };
        let v: f64 = self.value.parse().map_err(|_| bad())?;
        Duration::try_from_secs_f64(v).map_err(|_| bad())
    }

    /// A 0/1 switch (any other number counts as on, as in PgBouncer).
    fn flag(&self) -> Result<bool, ImportError> {
        Ok(self.int()? != 0)
    }

    /// The value among `choices` (case-insensitive, as PgBouncer compares).
    fn choice(&self, choices: &[&'static str]) -> Result<&'static str, ImportError> {
        choices
            .iter()
            .find(|c| c.eq_ignore_ascii_case(self.value.trim()))
            .copied()
            .ok_or_else(|| {
                ImportError::at(
                    &self.at,
                    &self.key,
                    format!("{:?} is not one of {}", self.value, choices.join(", ")),
                )
            })
    }
}

fn parse_int(text: &str) -> Option<i64> {
    let t = text.trim();
    let (negative, digits) = match t.strip_prefix('-') {
        Some(d) => (true, d),
        None => (false, t.strip_prefix('+').unwrap_or(t)),
    };
    let magnitude = if let Some(hex) = digits
        .strip_prefix("0x")
        .or_else(|| digits.strip_prefix("0X"))
    {
        i64::from_str_radix(hex, 16).ok()?
    } else if digits.len() > 1 && digits.starts_with('0') {
        i64::from_str_radix(&digits[1..], 8).ok()?
    } else {
        digits.parse::<i64>().ok()?
    };
    Some(if negative { -magnitude } else { magnitude })
}

/// A duration as pgwake writes it (`"1h"`, `"2m"`, `"500ms"`).
fn duration(d: Duration) -> Value {
    Value::String(humantime::format_duration(d).to_string())
}

fn int_value(n: usize) -> Value {
    Value::Integer(i64::try_from(n).unwrap_or(i64::MAX))
}

fn string(s: &str) -> Value {
    Value::String(s.to_owned())
}

fn strings<S: AsRef<str>>(items: &[S]) -> Value {
    Value::Array(items.iter().map(|s| string(s.as_ref())).collect())
}

/// PgBouncer's "0 disables" for a pgwake key that must be above zero: long
/// enough to mean never, short enough to add to a clock.
const NEVER: Duration = Duration::from_secs(30 * 24 * 3600);

/// A comma-separated list (`admin_users = a, b`).
fn list(text: &str) -> Vec<String> {
    text.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

#[cfg(test)]
mod tests;
