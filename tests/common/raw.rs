//! Speaking the wire protocol by hand, for tests that need what no driver
//! sends: half a message, a cancel to another replica, bytes cut anywhere.

/// A protocol 3.0 StartupMessage for `user` and database `db`.
pub fn startup(user: &str, db: &str) -> Vec<u8> {
    startup_with(user, db, &[])
}

/// A StartupMessage with settings after `user` and `database`.
pub fn startup_with(user: &str, db: &str, settings: &[(&str, &str)]) -> Vec<u8> {
    let mut body = 196_608u32.to_be_bytes().to_vec();
    for (k, v) in [("user", user), ("database", db)]
        .into_iter()
        .chain(settings.iter().copied())
    {
        body.extend_from_slice(k.as_bytes());
        body.push(0);
        body.extend_from_slice(v.as_bytes());
        body.push(0);
    }
    body.push(0);
    let mut p = u32::try_from(body.len() + 4)
        .unwrap()
        .to_be_bytes()
        .to_vec();
    p.extend(body);
    p
}

/// A frontend message: `tag`, its length, `body`.
pub fn frame(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut v = vec![tag];
    v.extend_from_slice(&u32::try_from(body.len() + 4).unwrap().to_be_bytes());
    v.extend_from_slice(body);
    v
}

/// The SQLSTATE field of an ErrorResponse body.
pub fn error_body_sqlstate(body: &[u8]) -> Option<String> {
    body.split(|&b| b == 0)
        .find_map(|f| f.strip_prefix(b"C"))
        .map(|c| String::from_utf8_lossy(c).into_owned())
}

/// The SQLSTATE of the first ErrorResponse in a stream of backend messages.
pub fn first_error_sqlstate(reply: &[u8]) -> Option<String> {
    let mut pos = 0;
    while pos + 5 <= reply.len() {
        let len = usize::try_from(u32::from_be_bytes(
            reply[pos + 1..pos + 5].try_into().unwrap(),
        ))
        .unwrap();
        let end = (pos + 1 + len).min(reply.len());
        if reply[pos] == b'E' {
            return error_body_sqlstate(&reply[pos + 5..end]);
        }
        pos = end;
    }
    None
}
