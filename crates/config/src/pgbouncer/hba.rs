//! `auth_hba_file` (PostgreSQL's `pg_hba.conf` format, as PgBouncer reads
//! it) as `[[client_auth.rules]]`, in order. A line pgwake cannot express
//! is left out with a warning; an authentication method pgwake lacks
//! becomes `reject`, so that no client gets in more easily than before.

use std::net::IpAddr;
use std::path::Path;

use super::auth::Rule;
use super::ini::{self, Place, Setting};
use super::{Convert, ImportError};

/// One line's fields, read.
struct Line<'a> {
    at: Place,
    kind: &'a str,
    database: Vec<String>,
    user: Vec<String>,
    /// `None` for `local`.
    address: Option<String>,
    method: String,
    options: Vec<String>,
}

impl Convert<'_> {
    pub(super) fn hba_rules(&mut self, s: &Setting) -> Result<Vec<Rule>, ImportError> {
        let path = self.resolve(&s.value);
        let shown = s.value.clone();
        let text = ini::read_text(&path, &shown, Some((&s.at, "auth_hba_file")))?;
        let dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
        let mut rules = Vec::new();
        for (i, raw) in text.lines().enumerate() {
            let at = Place {
                file: shown.as_str().into(),
                line: i + 1,
                seq: s.at.seq,
            };
            let tokens = tokens(raw);
            if tokens.is_empty() {
                continue;
            }
            let line = read_line(&at, &tokens, &dir)?;
            self.convert_line(line, &mut rules)?;
        }
        if rules.is_empty() {
            self.warn(s, "no rule could be converted, so pgwake refuses every client (PgBouncer too, with an empty file)".into());
            rules.push(Rule {
                address: "all".into(),
                database: vec!["all".into()],
                user: vec!["all".into()],
                method: "reject",
                origin: super::origin(s),
                comments: Vec::new(),
            });
        }
        Ok(rules)
    }

    fn convert_line(&mut self, l: Line<'_>, rules: &mut Vec<Rule>) -> Result<(), ImportError> {
        let key = "hba rule";
        let skip = |c: &mut Convert<'_>, why: String| {
            c.warn_at(&l.at, key, format!("{why}; the line was left out"));
        };
        for word in l.database.iter().chain(&l.user) {
            if matches!(
                word.as_str(),
                "sameuser" | "samerole" | "samegroup" | "replication"
            ) || word.starts_with('+')
            {
                skip(self, format!("pgwake's rules cannot express {word}"));
                return Ok(());
            }
        }
        let addresses: Vec<String> = match (&l.address, l.kind) {
            (None, _) => vec!["unix".into()],
            (Some(_), "hostgssenc") => {
                skip(
                    self,
                    "hostgssenc: pgwake refuses GSSAPI encryption, so the line never matches"
                        .into(),
                );
                return Ok(());
            }
            (Some(a), _) if a == "all" => vec!["0.0.0.0/0".into(), "::/0".into()],
            (Some(a), _) if a == "samehost" || a == "samenet" => {
                skip(self, format!("pgwake's rules cannot express {a}"));
                return Ok(());
            }
            (Some(a), _) => match crate::ClientAddress::parse(a) {
                Ok(_) => vec![a.clone()],
                Err(_) => {
                    skip(
                        self,
                        format!(
                            "{a:?} is not an address or network (host names are not supported)"
                        ),
                    );
                    return Ok(());
                }
            },
        };
        if l.kind == "hostssl" || l.kind == "hostnossl" {
            self.warn_at(&l.at, key, format!("{}: pgwake's rules do not look at TLS, so this rule covers encrypted and unencrypted clients alike (listen.client_tls_mode = \"require\" makes every TCP client use TLS)", l.kind));
        }
        let method = match l.method.as_str() {
            "trust" => "trust",
            "reject" => "reject",
            "scram-sha-256" => "scram-sha-256",
            "md5" => "md5",
            "password" => {
                self.warn_at(&l.at, key, "password: pgwake never asks for a cleartext password: md5 instead (an MD5 or SCRAM-SHA-256 answer, as the user's entry allows)".into());
                "md5"
            }
            "cert" => {
                self.warn_at(&l.at, key, "cert: pgwake does not check client certificates: md5 instead (the user's password from the user file)".into());
                "md5"
            }
            "peer" if l.address.is_none() => {
                self.warn_at(&l.at, key, "peer: pgwake does not check the client's OS user, so unix-socket clients are trusted (the socket directory's permissions decide who connects)".into());
                "trust"
            }
            other => {
                self.warn_at(&l.at, key, format!("{other}: pgwake cannot authenticate this way, so the rule rejects these clients"));
                "reject"
            }
        };
        if !l.options.is_empty() {
            self.warn_at(
                &l.at,
                key,
                format!(
                    "options {} are not supported and were ignored",
                    l.options.join(" ")
                ),
            );
        }
        for address in addresses {
            rules.push(Rule {
                address,
                database: l.database.clone(),
                user: l.user.clone(),
                method,
                origin: format!("auth_hba_file ({})", l.at.short()),
                comments: Vec::new(),
            });
        }
        Ok(())
    }
}

fn read_line<'a>(at: &Place, tokens: &'a [String], dir: &Path) -> Result<Line<'a>, ImportError> {
    let bad = |m: String| ImportError::at(at, "hba rule", m);
    let Some(kind) = tokens.first().map(String::as_str) else {
        return Err(bad("an empty line".into()));
    };
    if !matches!(
        kind,
        "local" | "host" | "hostssl" | "hostnossl" | "hostgssenc" | "hostnogssenc"
    ) {
        return Err(bad(format!(
            "{kind:?} is not local, host, hostssl or hostnossl"
        )));
    }
    let field = |i: usize, what: &str| -> Result<&'a str, ImportError> {
        tokens
            .get(i)
            .map(String::as_str)
            .ok_or_else(|| bad(format!("the line ends before its {what}")))
    };
    let database = names(field(1, "database")?, dir, at)?;
    let user = names(field(2, "user")?, dir, at)?;
    let (address, rest) = if kind == "local" {
        (None, 3)
    } else {
        let a = field(3, "address")?;
        let masked = tokens.get(4).and_then(|m| m.parse::<IpAddr>().ok());
        match (a.parse::<IpAddr>(), masked) {
            (Ok(ip), Some(mask)) => {
                let bits =
                    prefix_len(mask).ok_or_else(|| bad(format!("{mask} is not a network mask")))?;
                (Some(format!("{ip}/{bits}")), 5)
            }
            _ => (Some(a.to_owned()), 4),
        }
    };
    Ok(Line {
        at: at.clone(),
        kind,
        database,
        user,
        address,
        method: field(rest, "authentication method")?.to_owned(),
        options: tokens.get(rest + 1..).unwrap_or_default().to_vec(),
    })
}

/// A database or user field: names separated by commas, `@file` read
/// (relative to the hba file's directory).
fn names(field: &str, dir: &Path, at: &Place) -> Result<Vec<String>, ImportError> {
    let mut out = Vec::new();
    for item in field.split(',').filter(|s| !s.is_empty()) {
        match item.strip_prefix('@') {
            Some(file) => {
                let path = dir.join(file);
                let shown = path.display().to_string();
                let text = ini::read_text(&path, &shown, Some((at, "hba rule")))?;
                for line in text.lines() {
                    let line = line.split('#').next().unwrap_or("");
                    out.extend(
                        line.split([',', ' ', '\t'])
                            .filter(|s| !s.is_empty())
                            .map(str::to_owned),
                    );
                }
            }
            None => out.push(item.to_owned()),
        }
    }
    if out.is_empty() {
        return Err(ImportError::at(
            at,
            "hba rule",
            format!("{field:?} names no one"),
        ));
    }
    Ok(out)
}

/// A line's fields: blank-separated, `"quoted"` kept together, `#` to the
/// end of the line a comment.
fn tokens(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    let mut any = false;
    for c in line.chars() {
        match c {
            '"' => {
                quoted = !quoted;
                any = true;
            }
            '#' if !quoted => break,
            c if c.is_whitespace() && !quoted => {
                if any {
                    out.push(std::mem::take(&mut cur));
                    any = false;
                }
            }
            c => {
                cur.push(c);
                any = true;
            }
        }
    }
    if any {
        out.push(cur);
    }
    out
}

/// The prefix length of a network mask (255.255.0.0 → 16).
fn prefix_len(mask: IpAddr) -> Option<u32> {
    let bits: u128 = match mask {
        IpAddr::V4(m) => u128::from(u32::from(m)) << 96,
        IpAddr::V6(m) => u128::from(m),
    };
    let ones = bits.leading_ones();
    (bits.checked_shl(ones).unwrap_or(0) == 0).then_some(ones)
}
