//! SQL-level `PREPARE`, `EXECUTE` and `DEALLOCATE` sent as simple queries.
//!
//! Only a query whose whole text is one of these statements is recognised
//! (whitespace, comments and trailing semicolons allowed). Recognising
//! costs the relay a look at the first keyword of every simple query, so
//! [`may_be_command`] decides from a prefix; the rest is read only for
//! the few queries that start with `PREPARE`, `EXECUTE` or `DEALLOCATE`.
//!
//! Strings are read as PostgreSQL reads them with
//! `standard_conforming_strings = on` (the default since 9.1): a backslash
//! escapes only in `E'…'`.

/// Longest identifier PostgreSQL keeps (`NAMEDATALEN - 1`); longer names
/// are truncated, as its lexer does.
pub const NAME_MAX: usize = 63;

/// A statement name as written in a query: where, and what it means.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Name {
    /// The name PostgreSQL makes of it: unquoted folded to lower case,
    /// quoted kept, at most [`NAME_MAX`] bytes.
    pub folded: Vec<u8>,
    /// Byte range of the name as written (quotes included).
    pub start: usize,
    pub end: usize,
}

/// A recognised simple query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// `PREPARE name …`: `rest` is the byte range from the end of the name
    /// to the end of the statement (parameter types, `AS`, the query).
    Prepare { name: Name, rest: (usize, usize) },
    /// `EXECUTE name …`.
    Execute { name: Name },
    /// `DEALLOCATE [PREPARE] name`.
    Deallocate { name: Name },
    /// `DEALLOCATE [PREPARE] ALL`.
    DeallocateAll,
}

/// What a simple query is, as far as prepared statements go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parsed {
    /// Not one of these statements: relayed as is.
    Other,
    /// Starts like one but is a syntax error the server reports (a missing
    /// or reserved name, text after `DEALLOCATE name`): relayed as is, the
    /// server answers as it would.
    Invalid,
    /// One of these statements followed by others in the same query.
    Multiple,
    /// A form pgwake does not read (a `U&"…"` name).
    Unsupported,
    Command(Command),
}

/// The statement keywords pgwake handles.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Keyword {
    Prepare,
    Execute,
    Deallocate,
}

/// What the start of a query says.
enum Start {
    /// The first keyword, and where it ends.
    Keyword(Keyword, usize),
    /// Not one of ours.
    Other,
    /// The prefix ends before the first keyword does.
    NeedMore,
}

/// Whether a simple query whose body starts with `prefix` may be one of
/// these statements, so that its whole body must be read. Cheap: most
/// queries are decided by their first byte.
#[inline]
pub fn may_be_command(prefix: &[u8]) -> bool {
    match prefix.first() {
        // The common case: a statement keyword right at the start.
        Some(b) if b.is_ascii_alphabetic() && !matches!(b | 0x20, b'p' | b'e' | b'd') => false,
        _ => !matches!(first_keyword(prefix), Start::Other),
    }
}

/// Reads a whole Query body (query text and its terminating NUL).
pub fn parse(body: &[u8]) -> Parsed {
    if !may_be_command(body) {
        return Parsed::Other;
    }
    // Exactly one NUL, at the end; anything else is for the server to reject.
    let Some((&0, text)) = body.split_last() else {
        return Parsed::Other;
    };
    if text.contains(&0) {
        return Parsed::Other;
    }
    let (keyword, at) = match first_keyword(text) {
        Start::Keyword(k, at) => (k, at),
        _ => return Parsed::Other,
    };
    let at = skip_space(text, at);
    match keyword {
        Keyword::Prepare => {
            let name = match read_name(text, at) {
                Ok(n) => n,
                Err(p) => return p,
            };
            match statement_end(text, name.end) {
                Some(end) => {
                    let rest = (name.end, trim_end(text, name.end, end));
                    Parsed::Command(Command::Prepare { name, rest })
                }
                None => Parsed::Multiple,
            }
        }
        Keyword::Execute => {
            let name = match read_name(text, at) {
                Ok(n) => n,
                Err(p) => return p,
            };
            match statement_end(text, name.end) {
                Some(_) => Parsed::Command(Command::Execute { name }),
                None => Parsed::Multiple,
            }
        }
        Keyword::Deallocate => deallocate(text, at),
    }
}

fn deallocate(text: &[u8], at: usize) -> Parsed {
    let mut at = at;
    // `DEALLOCATE PREPARE x`, but `DEALLOCATE prepare` names "prepare".
    let (word, after) = word(text, at);
    if word.eq_ignore_ascii_case(b"prepare") && !only_end(text, after) {
        at = skip_space(text, after);
    }
    let (word, after) = self::word(text, at);
    if word.eq_ignore_ascii_case(b"all") {
        return match end_kind(text, after) {
            End::Alone => Parsed::Command(Command::DeallocateAll),
            End::More => Parsed::Multiple,
            End::Garbage => Parsed::Invalid,
        };
    }
    let name = match read_name(text, at) {
        Ok(n) => n,
        Err(p) => return p,
    };
    match end_kind(text, name.end) {
        End::Alone => Parsed::Command(Command::Deallocate { name }),
        End::More => Parsed::Multiple,
        End::Garbage => Parsed::Invalid,
    }
}

/// The unquoted identifier at `at` (empty if none) and the offset after it.
fn word(text: &[u8], at: usize) -> (&[u8], usize) {
    let start = at.min(text.len());
    let mut end = start;
    if text.get(end).is_some_and(|&b| ident_start(b)) {
        end += 1;
        while text.get(end).is_some_and(|&b| ident_char(b)) {
            end += 1;
        }
    }
    (&text[start..end], end)
}

fn first_keyword(text: &[u8]) -> Start {
    let at = skip_space(text, 0);
    if at >= text.len() {
        // Only whitespace and comments so far (or an unterminated comment).
        return Start::NeedMore;
    }
    if matches!(&text[at..], [b'-'] | [b'/']) {
        // The prefix ends where a comment may begin (`--`, `/*`).
        return Start::NeedMore;
    }
    let (word, end) = word(text, at);
    if word.is_empty() {
        return Start::Other;
    }
    let keyword = [
        (b"prepare".as_slice(), Keyword::Prepare),
        (b"execute", Keyword::Execute),
        (b"deallocate", Keyword::Deallocate),
    ]
    .into_iter()
    .find(|(k, _)| word.len() <= k.len() && word.eq_ignore_ascii_case(&k[..word.len()]));
    match keyword {
        None => Start::Other,
        // The prefix may end inside the keyword, or right after it.
        Some(_) if end == text.len() => Start::NeedMore,
        Some((k, _)) if word.len() < k.len() => Start::Other,
        Some((_, kw)) => Start::Keyword(kw, end),
    }
}

/// A statement name at `at`, or what the query is when there is none.
fn read_name(text: &[u8], at: usize) -> Result<Name, Parsed> {
    match text.get(at) {
        Some(b'"') => {
            let mut folded = Vec::new();
            let mut i = at + 1;
            loop {
                match text.get(i) {
                    // Unterminated: the server reports it.
                    None => return Err(Parsed::Invalid),
                    Some(b'"') if text.get(i + 1) == Some(&b'"') => {
                        folded.push(b'"');
                        i += 2;
                    }
                    Some(b'"') => break,
                    Some(&b) => {
                        folded.push(b);
                        i += 1;
                    }
                }
            }
            if folded.is_empty() {
                // A zero-length delimited identifier is a syntax error.
                return Err(Parsed::Invalid);
            }
            truncate(&mut folded);
            Ok(Name {
                folded,
                start: at,
                end: i + 1,
            })
        }
        Some(&b) if ident_start(b) => {
            let (word, end) = word(text, at);
            if (word == b"u" || word == b"U") && text.get(end) == Some(&b'&') {
                return Err(Parsed::Unsupported);
            }
            let mut folded = word.to_ascii_lowercase();
            if is_reserved(&folded) {
                return Err(Parsed::Invalid);
            }
            truncate(&mut folded);
            Ok(Name {
                folded,
                start: at,
                end,
            })
        }
        _ => Err(Parsed::Invalid),
    }
}

/// Cuts a name to [`NAME_MAX`] bytes on a character boundary.
fn truncate(name: &mut Vec<u8>) {
    if name.len() > NAME_MAX {
        let mut cut = NAME_MAX;
        while cut > 0 && (name[cut] & 0xc0) == 0x80 {
            cut -= 1;
        }
        name.truncate(cut);
    }
}

enum End {
    /// Only whitespace, comments and semicolons follow.
    Alone,
    /// A semicolon and then another statement.
    More,
    /// Something else before any semicolon.
    Garbage,
}

fn end_kind(text: &[u8], at: usize) -> End {
    let at = skip_space(text, at);
    match text.get(at) {
        None => End::Alone,
        Some(b';') if only_end(text, at) => End::Alone,
        Some(b';') => End::More,
        Some(_) => End::Garbage,
    }
}

/// Nothing but whitespace, comments and semicolons from `at` on.
fn only_end(text: &[u8], mut at: usize) -> bool {
    loop {
        at = skip_space(text, at);
        match text.get(at) {
            None => return true,
            Some(b';') => at += 1,
            Some(_) => return false,
        }
    }
}

/// Where the statement starting before `at` ends (its first top-level
/// semicolon, or the end of the text); `None` when another statement
/// follows.
fn statement_end(text: &[u8], mut at: usize) -> Option<usize> {
    while at < text.len() {
        let b = text[at];
        at = match b {
            b';' => return only_end(text, at).then_some(at),
            b'\'' => skip_string(text, at + 1, false),
            b'"' => skip_quoted(text, at + 1, b'"'),
            b'-' if text.get(at + 1) == Some(&b'-') => skip_line(text, at),
            b'/' if text.get(at + 1) == Some(&b'*') => skip_block(text, at),
            b'$' => skip_dollar(text, at),
            b if ident_start(b) => {
                let (word, end) = word(text, at);
                if (word == b"e" || word == b"E") && text.get(end) == Some(&b'\'') {
                    skip_string(text, end + 1, true)
                } else {
                    end
                }
            }
            _ => at + 1,
        };
    }
    Some(text.len())
}

fn trim_end(text: &[u8], start: usize, mut end: usize) -> usize {
    while end > start && is_space(text[end - 1]) {
        end -= 1;
    }
    end
}

/// After a `'…'` string whose body starts at `at` (`''` is a quote; with
/// `escapes`, so is `\'`). Unterminated: the end of the text.
pub(crate) fn skip_string(text: &[u8], mut at: usize, escapes: bool) -> usize {
    while let Some(&b) = text.get(at) {
        match b {
            b'\\' if escapes => at += 2,
            b'\'' if text.get(at + 1) == Some(&b'\'') => at += 2,
            b'\'' => return at + 1,
            _ => at += 1,
        }
    }
    text.len()
}

/// After a `"…"` identifier whose body starts at `at`.
pub(crate) fn skip_quoted(text: &[u8], at: usize, quote: u8) -> usize {
    let mut at = at;
    while let Some(&b) = text.get(at) {
        at += 1;
        if b == quote {
            if text.get(at) == Some(&quote) {
                at += 1;
            } else {
                return at;
            }
        }
    }
    text.len()
}

/// After a `$tag$…$tag$` string at `at`, or after a lone `$` (a parameter
/// such as `$1`, or part of an identifier).
fn skip_dollar(text: &[u8], at: usize) -> usize {
    let mut end = at + 1;
    if text.get(end).is_some_and(|&b| ident_start(b)) {
        end += 1;
        while text.get(end).is_some_and(|&b| ident_char(b) && b != b'$') {
            end += 1;
        }
    }
    if text.get(end) != Some(&b'$') {
        return at + 1;
    }
    let tag = &text[at..=end];
    let body = end + 1;
    match text[body.min(text.len())..]
        .windows(tag.len())
        .position(|w| w == tag)
    {
        Some(p) => body + p + tag.len(),
        None => text.len(),
    }
}

pub(crate) fn skip_line(text: &[u8], at: usize) -> usize {
    match text[at..].iter().position(|&b| b == b'\n' || b == b'\r') {
        Some(p) => at + p + 1,
        None => text.len(),
    }
}

/// After a (nested) `/* … */` comment at `at`; unterminated: the end.
fn skip_block(text: &[u8], at: usize) -> usize {
    let mut depth = 0usize;
    let mut i = at;
    while i + 1 < text.len() {
        match (text[i], text[i + 1]) {
            (b'/', b'*') => {
                depth += 1;
                i += 2;
            }
            (b'*', b'/') => {
                depth -= 1;
                i += 2;
                if depth == 0 {
                    return i;
                }
            }
            _ => i += 1,
        }
    }
    text.len()
}

/// After whitespace and comments from `at`.
fn skip_space(text: &[u8], mut at: usize) -> usize {
    loop {
        match text.get(at..) {
            Some([b, ..]) if is_space(*b) => at += 1,
            Some([b'-', b'-', ..]) => at = skip_line(text, at),
            Some([b'/', b'*', ..]) => at = skip_block(text, at),
            _ => return at,
        }
    }
}

fn is_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r' | b'\x0c' | b'\x0b')
}

pub(crate) fn ident_start(b: u8) -> bool {
    b.is_ascii_alphabetic() || b == b'_' || b >= 0x80
}

pub(crate) fn ident_char(b: u8) -> bool {
    ident_start(b) || b.is_ascii_digit() || b == b'$'
}

/// Keywords that cannot name a prepared statement (PostgreSQL's reserved
/// and type/function-name keywords; a name is a `ColId`). Sorted, for the
/// binary search.
pub const RESERVED: &[&str] = &[
    "all",
    "analyse",
    "analyze",
    "and",
    "any",
    "array",
    "as",
    "asc",
    "asymmetric",
    "authorization",
    "binary",
    "both",
    "case",
    "cast",
    "check",
    "collate",
    "collation",
    "column",
    "concurrently",
    "constraint",
    "create",
    "cross",
    "current_catalog",
    "current_date",
    "current_role",
    "current_schema",
    "current_time",
    "current_timestamp",
    "current_user",
    "default",
    "deferrable",
    "desc",
    "distinct",
    "do",
    "else",
    "end",
    "except",
    "false",
    "fetch",
    "for",
    "foreign",
    "freeze",
    "from",
    "full",
    "grant",
    "group",
    "having",
    "ilike",
    "in",
    "initially",
    "inner",
    "intersect",
    "into",
    "is",
    "isnull",
    "join",
    "lateral",
    "leading",
    "left",
    "like",
    "limit",
    "localtime",
    "localtimestamp",
    "natural",
    "not",
    "notnull",
    "null",
    "offset",
    "on",
    "only",
    "or",
    "order",
    "outer",
    "overlaps",
    "placing",
    "primary",
    "references",
    "returning",
    "right",
    "select",
    "session_user",
    "similar",
    "some",
    "symmetric",
    "table",
    "tablesample",
    "then",
    "to",
    "trailing",
    "true",
    "union",
    "unique",
    "user",
    "using",
    "variadic",
    "verbose",
    "when",
    "where",
    "window",
    "with",
];

fn is_reserved(word: &[u8]) -> bool {
    std::str::from_utf8(word).is_ok_and(|w| RESERVED.binary_search(&w).is_ok())
}

/// Characters (not bytes) in UTF-8 text: what PostgreSQL's error positions count.
pub fn chars(text: &[u8]) -> usize {
    text.iter().filter(|&&b| (b & 0xc0) != 0x80).count()
}

/// Whether a byte may continue an identifier: a name spliced next to one
/// needs a space.
pub fn joins_identifier(b: Option<&u8>) -> bool {
    b.is_some_and(|&b| ident_char(b))
}
