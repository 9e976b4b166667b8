//! `--server-url postgres://user:password@host:port/dbname?…` as config keys.

use toml::{Table, Value};

use crate::tree::insert;

/// Applies `postgres://user:password@host:port/dbname?sslmode=…&connect_timeout=…`.
pub(crate) fn apply_server_url(root: &mut Table, text: &str) -> Result<(), String> {
    let url = url::Url::parse(text).map_err(|e| format!("cannot parse it: {e}"))?;
    if !matches!(url.scheme(), "postgres" | "postgresql") {
        return Err(format!(
            "scheme {:?} is not postgres:// or postgresql://",
            url.scheme()
        ));
    }
    let host = url.host_str().ok_or("no host")?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    insert(root, &["server", "host"], Value::String(host.to_owned()));
    if let Some(port) = url.port() {
        insert(root, &["server", "port"], Value::Integer(i64::from(port)));
    }
    let decode = |s: &str| {
        percent_decode(s)
            .ok_or_else(|| "user or password is not valid percent-encoded UTF-8".to_owned())
    };
    if !url.username().is_empty() {
        let user = decode(url.username())?;
        insert(root, &["server", "auth", "user"], Value::String(user));
    }
    if let Some(pw) = url.password() {
        insert(
            root,
            &["server", "auth", "password"],
            Value::String(decode(pw)?),
        );
    }
    let db = url.path().trim_start_matches('/');
    if !db.is_empty() {
        insert(root, &["server", "dbname"], Value::String(decode(db)?));
    }
    for (k, v) in url.query_pairs() {
        match &*k {
            "sslmode" => insert(root, &["server", "sslmode"], Value::String(v.into_owned())),
            "sslrootcert" => insert(root, &["server", "sslrootcert"], Value::String(v.into_owned())),
            "connect_timeout" => {
                let secs: u64 = v
                    .parse()
                    .map_err(|_| format!("connect_timeout={v} is not a number of seconds"))?;
                insert(
                    root,
                    &["server", "connect_timeout"],
                    Value::String(format!("{secs}s")),
                );
            }
            other => {
                return Err(format!(
                    "parameter {other:?} is not supported (supported: sslmode, sslrootcert, connect_timeout)"
                ))
            }
        }
    }
    Ok(())
}

fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}
