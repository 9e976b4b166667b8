//! PgBouncer's ini format, read as PgBouncer's loader reads it: `[section]`
//! headers, `key = value` lines (the value runs to the end of the line:
//! `;` and `#` start a comment only at the start of a line), and
//! `%include FILE` (relative to the current directory, as PgBouncer takes
//! it), which goes on in the section in force. The comment lines just above
//! a setting are kept with it, without commented-out settings.

use std::path::{Path, PathBuf};
use std::rc::Rc;

use super::ImportError;

/// Includes nested deeper than this are refused, as PgBouncer does (a file
/// that includes itself would otherwise never end).
const MAX_INCLUDE_DEPTH: usize = 10;
/// Largest file read, against a mistaken path to a huge file.
pub(super) const MAX_FILE: u64 = 16 * 1024 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Section {
    PgBouncer,
    Databases,
    Users,
    Peers,
}

impl Section {
    fn parse(name: &str) -> Option<Section> {
        Some(match name {
            "pgbouncer" => Section::PgBouncer,
            "databases" => Section::Databases,
            "users" => Section::Users,
            "peers" => Section::Peers,
            _ => return None,
        })
    }
}

/// Where something was written: the file (as the user named it, or as an
/// `%include` resolved it) and the 1-based line.
#[derive(Debug, Clone)]
pub(super) struct Place {
    pub file: Rc<str>,
    pub line: usize,
    /// Position in reading order, includes followed: warnings are sorted by it.
    pub seq: usize,
}

impl Place {
    /// `file:line` with the file's name only, for comments in the output.
    pub fn short(&self) -> String {
        let name = Path::new(&*self.file)
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| self.file.to_string());
        format!("{name}:{}", self.line)
    }
}

/// One `key = value` line.
#[derive(Debug, Clone)]
pub(super) struct Setting {
    pub at: Place,
    pub section: Section,
    pub key: String,
    pub value: String,
    /// The comment lines just above it that explain it, without their `;`/`#`.
    pub comments: Vec<String>,
}

/// A whole configuration, includes followed.
#[derive(Debug, Default)]
pub(super) struct Ini {
    pub settings: Vec<Setting>,
    /// The first header of each section, for what the file leaves unset.
    pub headers: Vec<(Section, Place)>,
    /// `[pgbouncer]` settings that a later `[pgbouncer]` header undid (PgBouncer
    /// sets every key of the section to its default when the section starts),
    /// with that header.
    pub undone: Vec<(Setting, Place)>,
}

impl Ini {
    /// The settings of `section`, in file order.
    pub fn section(&self, section: Section) -> Vec<Setting> {
        self.settings
            .iter()
            .filter(|s| s.section == section)
            .cloned()
            .collect()
    }

    pub fn header(&self, section: Section) -> Option<&Place> {
        self.headers
            .iter()
            .find(|(s, _)| *s == section)
            .map(|(_, at)| at)
    }
}

pub(super) fn read(path: &Path, base_dir: &Path) -> Result<Ini, ImportError> {
    let mut reader = Reader {
        base_dir,
        ini: Ini::default(),
        section: None,
        seq: 0,
    };
    let shown: Rc<str> = path.display().to_string().into();
    let text = read_text(&resolve(base_dir, path), &shown, None)?;
    reader.file(&shown, &text, 0)?;
    Ok(reader.ini)
}

/// `path` as PgBouncer opens it: relative to the current directory.
pub(super) fn resolve(base_dir: &Path, path: &Path) -> PathBuf {
    if path.is_absolute() {
        path.to_path_buf()
    } else {
        base_dir.join(path)
    }
}

/// Reads a text file; the error names it, and `from` (the line that named
/// it) when there is one.
pub(super) fn read_text(
    path: &Path,
    shown: &str,
    from: Option<(&Place, &str)>,
) -> Result<String, ImportError> {
    // Named by a line: the message names the file; else the file leads it.
    let (fail, it): (Box<dyn Fn(String) -> ImportError>, String) = match from {
        Some((at, key)) => (
            Box::new(move |m| ImportError::at(at, key, m)),
            shown.to_owned(),
        ),
        None => (Box::new(|m| ImportError::file(shown, m)), "it".to_owned()),
    };
    let meta = std::fs::metadata(path).map_err(|e| fail(format!("cannot read {it}: {e}")))?;
    if meta.len() > MAX_FILE {
        return Err(fail(format!(
            "{it} is {} bytes, more than the {MAX_FILE} bytes read",
            meta.len()
        )));
    }
    let bytes = std::fs::read(path).map_err(|e| fail(format!("cannot read {it}: {e}")))?;
    String::from_utf8(bytes).map_err(|e| fail(format!("{it} is not UTF-8 text: {e}")))
}

struct Reader<'a> {
    base_dir: &'a Path,
    ini: Ini,
    section: Option<Section>,
    seq: usize,
}

impl Reader<'_> {
    fn file(&mut self, file: &Rc<str>, text: &str, depth: usize) -> Result<(), ImportError> {
        let mut comments: Vec<String> = Vec::new();
        for (i, raw) in text.lines().enumerate() {
            self.seq += 1;
            let at = Place {
                file: file.clone(),
                line: i + 1,
                seq: self.seq,
            };
            let line = raw.trim_start();
            if line.trim_end().is_empty() {
                comments.clear();
                continue;
            }
            if line.starts_with(';') || line.starts_with('#') {
                if let Some(c) = explanation(line) {
                    comments.push(c);
                }
                continue;
            }
            if let Some(rest) = line.strip_prefix("%include") {
                comments.clear();
                self.include(&at, rest, depth)?;
                continue;
            }
            if let Some(rest) = line.strip_prefix('[') {
                comments.clear();
                let name = rest.split_once(']').map(|(n, _)| n).ok_or_else(|| {
                    ImportError::line(&at, "a section header needs a closing ]".into())
                })?;
                let section = Section::parse(name).ok_or_else(|| {
                    ImportError::line(
                        &at,
                        format!("unknown section [{name}]: PgBouncer reads [databases], [users], [peers] and [pgbouncer] (names are case-sensitive)"),
                    )
                })?;
                if self.ini.header(section).is_none() {
                    self.ini.headers.push((section, at.clone()));
                } else if section == Section::PgBouncer {
                    let (undone, kept) = std::mem::take(&mut self.ini.settings)
                        .into_iter()
                        .partition(|s| s.section == Section::PgBouncer);
                    self.ini.settings = kept;
                    let undone: Vec<Setting> = undone;
                    self.ini
                        .undone
                        .extend(undone.into_iter().map(|s| (s, at.clone())));
                }
                self.section = Some(section);
                continue;
            }
            let (key, value) = key_value(line).ok_or_else(|| {
                ImportError::line(
                    &at,
                    format!(
                        "expected key = value, [section] or %include, not {:?}",
                        raw.trim()
                    ),
                )
            })?;
            let section = self.section.ok_or_else(|| {
                ImportError::at(
                    &at,
                    &key,
                    "a setting before any [section]: PgBouncer refuses it".into(),
                )
            })?;
            self.ini.settings.push(Setting {
                at,
                section,
                key,
                value,
                comments: std::mem::take(&mut comments),
            });
        }
        Ok(())
    }

    fn include(&mut self, at: &Place, rest: &str, depth: usize) -> Result<(), ImportError> {
        if !rest.starts_with([' ', '\t']) || rest.trim().is_empty() {
            return Err(ImportError::line(at, "expected %include FILE".into()));
        }
        let name = rest.trim();
        if depth + 1 >= MAX_INCLUDE_DEPTH {
            return Err(ImportError::at(
                at,
                "%include",
                format!("{name}: includes nested more than {MAX_INCLUDE_DEPTH} deep (does a file include itself?)"),
            ));
        }
        let path = resolve(self.base_dir, Path::new(name));
        let shown: Rc<str> = path.display().to_string().into();
        let text = read_text(&path, &shown, Some((at, "%include")))?;
        self.file(&shown, &text, depth + 1)
    }
}

/// `key = value`: the key as PgBouncer reads it (letters, digits and
/// `_.-*`, or a `"quoted"` name with `""` for a quote), the value to the end
/// of the line without surrounding blanks.
fn key_value(line: &str) -> Option<(String, String)> {
    let (key, rest) = if line.starts_with('"') {
        crate::userlist::quoted(line, '"')?
    } else {
        let end = line
            .find(|c: char| !(c.is_ascii_alphanumeric() || "_.-*".contains(c)))
            .unwrap_or(line.len());
        (line[..end].to_owned(), &line[end..])
    };
    let value = rest.trim_start_matches([' ', '\t']).strip_prefix('=')?;
    if key.is_empty() {
        return None;
    }
    Some((key, value.trim().to_owned()))
}

/// The text of a comment line that explains something: not decoration
/// (`;;;`), not a commented-out setting (`;pool_mode = session`).
fn explanation(line: &str) -> Option<String> {
    let text = line.trim_start_matches([';', '#']).trim();
    if text.is_empty() || text.starts_with("%include") {
        return None;
    }
    if key_value(text).is_some() {
        return None;
    }
    // A bare commented-out key with no value (`;conffile`).
    if !text.contains(char::is_whitespace)
        && text
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
    {
        return None;
    }
    Some(text.to_owned())
}
