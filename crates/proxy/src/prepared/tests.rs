//! Tests of the prepared-statement core against a model server session.
//! The rewriter and tracker between clients and fake server sessions
//! that follow Postgres's rules for the messages used here (statement
//! and portal lifetimes, error precedence, skipping to Sync, transaction
//! blocks). Each client also talks to a reference session of its own:
//! what it sees through pgwake must be byte for byte what that one
//! session sends.

use std::collections::HashMap;

use bytes::BytesMut;

use super::cache::{CacheCounts, Lookup, ServerStatements};
use super::names::{server_name, ClientStatements, StatementHasher, StatementSpec, PROBE_NAME};
use super::plan::ReplyPlan;
use super::rewrite::{Rewriter, Step};
use super::track::{ReplyTracker, Verdict};
use super::wire::{cstr, put_empty};
use super::SERVER_NAME_LEN;
use pgwake_protocol::backend::{self, ErrorMessage};
use pgwake_protocol::frame::frame_len;
use pgwake_protocol::TxStatus;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const ABORTED: (&str, &str) = (
    "25P02",
    "current transaction is aborted, commands ignored until end of transaction block",
);

fn frames(buf: &[u8]) -> Vec<(u8, &[u8], &[u8])> {
    let mut out = Vec::new();
    let mut at = 0;
    while let Some(total) = frame_len(&buf[at..], usize::MAX).unwrap() {
        let whole = &buf[at..at + total];
        out.push((whole[0], &whole[5..], whole));
        at += total;
    }
    assert_eq!(at, buf.len(), "a partial frame");
    out
}

fn msg(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut v = vec![tag];
    v.extend_from_slice(&i32::try_from(body.len() + 4).unwrap().to_be_bytes());
    v.extend_from_slice(body);
    v
}

fn z(s: &str) -> Vec<u8> {
    let mut v = s.as_bytes().to_vec();
    v.push(0);
    v
}

fn parse(name: &str, query: &str, types: &[u32]) -> Vec<u8> {
    let mut b = z(name);
    b.extend(z(query));
    b.extend(i16::try_from(types.len()).unwrap().to_be_bytes());
    for t in types {
        b.extend(t.to_be_bytes());
    }
    msg(b'P', &b)
}

/// Bind of `stmt` to the unnamed portal with `params` NULL parameters.
fn bind(stmt: &str, params: usize) -> Vec<u8> {
    let mut b = z("");
    b.extend(z(stmt));
    b.extend(0i16.to_be_bytes());
    b.extend(i16::try_from(params).unwrap().to_be_bytes());
    for _ in 0..params {
        b.extend((-1i32).to_be_bytes());
    }
    b.extend(0i16.to_be_bytes());
    msg(b'B', &b)
}

fn describe(kind: u8, name: &str) -> Vec<u8> {
    let mut b = vec![kind];
    b.extend(z(name));
    msg(b'D', &b)
}

fn close(kind: u8, name: &str) -> Vec<u8> {
    let mut b = vec![kind];
    b.extend(z(name));
    msg(b'C', &b)
}

fn execute() -> Vec<u8> {
    let mut b = z("");
    b.extend(0i32.to_be_bytes());
    msg(b'E', &b)
}

fn sync() -> Vec<u8> {
    msg(b'S', &[])
}

fn flush() -> Vec<u8> {
    msg(b'H', &[])
}

fn query(q: &str) -> Vec<u8> {
    msg(b'Q', &z(q))
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// One line per backend message, for readable assertions.
fn summary(bytes: &[u8]) -> Vec<String> {
    frames(bytes)
        .into_iter()
        .map(|(tag, body, _)| match tag {
            b'E' => {
                let mut code = String::new();
                let mut message = String::new();
                let mut at = 0;
                while let Some((&f, _)) = body[at..].split_first() {
                    if f == 0 {
                        break;
                    }
                    let (v, next) = cstr(body, at + 1).unwrap();
                    match f {
                        b'C' => code = text(v),
                        b'M' => message = text(v),
                        _ => {}
                    }
                    at = next;
                }
                format!("E {code} {message}")
            }
            b'D' => format!("D {}", text(&body[6..])),
            b'C' => format!("C {}", text(cstr(body, 0).unwrap().0)),
            b'Z' => format!("Z {}", char::from(body[0])),
            t => char::from(t).to_string(),
        })
        .collect()
}

fn is_hashed(name: &[u8]) -> bool {
    name.len() == SERVER_NAME_LEN && name.starts_with(b"pgwake_")
}

fn query_text(content: &[u8]) -> &[u8] {
    cstr(content, 0).map_or(content, |(q, _)| q)
}

fn declared_params(content: &[u8]) -> usize {
    let at = query_text(content).len() + 1;
    let n = i16::from_be_bytes([content[at], content[at + 1]]);
    usize::try_from(n).unwrap()
}

fn is_exit(q: &[u8]) -> bool {
    q == b"ROLLBACK" || q == b"COMMIT"
}

/// A server session, as far as these tests need one.
#[derive(Default)]
struct Fake {
    /// Name → Parse body after the name.
    statements: HashMap<Vec<u8>, Vec<u8>>,
    /// Portal → (statement name, its content).
    portals: HashMap<Vec<u8>, (Vec<u8>, Vec<u8>)>,
    skipping: bool,
    /// In a transaction block; whether it failed.
    block: Option<bool>,
    received: Vec<Vec<u8>>,
    violations: Vec<String>,
}

type Failure = (&'static str, String);

impl Fake {
    fn feed(&mut self, input: &[u8], out: &mut Vec<u8>) {
        for (tag, body, whole) in frames(input) {
            self.received.push(whole.to_vec());
            let mut b = BytesMut::new();
            self.message(tag, body, &mut b);
            out.extend_from_slice(&b);
        }
    }

    fn aborted(&self) -> bool {
        self.block == Some(true)
    }

    fn status(&self) -> u8 {
        match self.block {
            None => b'I',
            Some(false) => b'T',
            Some(true) => b'E',
        }
    }

    fn violation(&mut self, what: &str, name: &[u8]) {
        if is_hashed(name) {
            self.violations.push(format!("{what} {}", text(name)));
        }
    }

    fn message(&mut self, tag: u8, body: &[u8], out: &mut BytesMut) {
        if self.skipping && tag != b'S' {
            return;
        }
        let result = match tag {
            b'P' => self.parse(body, out),
            b'B' => self.bind(body, out),
            b'D' => self.describe(body, out),
            b'E' => self.execute(body, out),
            b'C' => {
                let (name, _) = cstr(body, 1).unwrap();
                if body[0] == b'S' {
                    if !self.statements.contains_key(name) {
                        self.violation("close of unprepared", name);
                    }
                    self.statements.remove(name);
                    self.portals.retain(|_, (s, _)| s != name);
                } else {
                    self.portals.remove(name);
                }
                put_empty(out, b'3');
                Ok(())
            }
            b'S' => {
                self.skipping = false;
                if self.block.is_none() {
                    self.portals.clear();
                }
                backend::ready_for_query(out, self.status());
                Ok(())
            }
            b'Q' => {
                let r = self.simple(query_text(body), out);
                if let Err((code, m)) = r {
                    ErrorMessage::error(code, m).write(out);
                    if let Some(failed) = &mut self.block {
                        *failed = true;
                    }
                }
                if self.block.is_none() {
                    self.portals.clear();
                }
                backend::ready_for_query(out, self.status());
                Ok(())
            }
            _ => Ok(()),
        };
        if let Err((code, m)) = result {
            ErrorMessage::error(code, m).write(out);
            if let Some(failed) = &mut self.block {
                *failed = true;
            }
            self.skipping = true;
        }
    }

    fn parse(&mut self, body: &[u8], out: &mut BytesMut) -> Result<(), Failure> {
        let (name, at) = cstr(body, 0).unwrap();
        let content = &body[at..];
        let q = query_text(content);
        if name.is_empty() {
            self.statements.remove(name);
        }
        if q.starts_with(b"SELEC ") {
            return Err(("42601", "syntax error at or near \"SELEC\"".into()));
        }
        if self.aborted() && !is_exit(q) {
            return Err((ABORTED.0, ABORTED.1.into()));
        }
        if !name.is_empty() && self.statements.contains_key(name) {
            self.violation("parse of prepared", name);
            return Err((
                "42P05",
                format!("prepared statement \"{}\" already exists", text(name)),
            ));
        }
        self.statements.insert(name.to_vec(), content.to_vec());
        put_empty(out, b'1');
        Ok(())
    }

    fn statement(&mut self, name: &[u8]) -> Result<Vec<u8>, Failure> {
        match self.statements.get(name) {
            Some(c) => Ok(c.clone()),
            None => {
                self.violation("use of unprepared", name);
                Err((
                    "26000",
                    format!("prepared statement \"{}\" does not exist", text(name)),
                ))
            }
        }
    }

    fn bind(&mut self, body: &[u8], out: &mut BytesMut) -> Result<(), Failure> {
        let (portal, at) = cstr(body, 0).unwrap();
        let (stmt, at) = cstr(body, at).unwrap();
        let formats = usize::try_from(i16::from_be_bytes([body[at], body[at + 1]])).unwrap();
        let at = at + 2 + 2 * formats;
        let params = usize::try_from(i16::from_be_bytes([body[at], body[at + 1]])).unwrap();
        let content = self.statement(stmt)?;
        let declared = declared_params(&content);
        if params != declared {
            return Err(("08P01", format!("bind message supplies {params} parameters, but prepared statement \"{}\" requires {declared}", text(stmt))));
        }
        if self.aborted() && !(is_exit(query_text(&content)) && params == 0) {
            return Err((ABORTED.0, ABORTED.1.into()));
        }
        self.portals
            .insert(portal.to_vec(), (stmt.to_vec(), content));
        put_empty(out, b'2');
        Ok(())
    }

    fn describe(&mut self, body: &[u8], out: &mut BytesMut) -> Result<(), Failure> {
        let (name, _) = cstr(body, 1).unwrap();
        let content = if body[0] == b'S' {
            self.statement(name)?
        } else {
            match self.portals.get(name) {
                Some((_, c)) => c.clone(),
                None => return Err(("34000", format!("portal \"{}\" does not exist", text(name)))),
            }
        };
        let q = query_text(&content);
        if self.aborted() && !is_exit(q) {
            return Err((ABORTED.0, ABORTED.1.into()));
        }
        if body[0] == b'S' {
            let n = declared_params(&content);
            let types = &content[q.len() + 3..q.len() + 3 + 4 * n];
            let mut b = i16::try_from(n).unwrap().to_be_bytes().to_vec();
            b.extend_from_slice(types);
            out.extend_from_slice(&msg(b't', &b));
        }
        if is_exit(q) {
            put_empty(out, b'n');
        } else {
            backend::row_description(out, &[("?column?", backend::oid::INT4)]);
        }
        Ok(())
    }

    fn execute(&mut self, body: &[u8], out: &mut BytesMut) -> Result<(), Failure> {
        let (portal, _) = cstr(body, 0).unwrap();
        let Some((_, content)) = self.portals.get(portal) else {
            return Err((
                "34000",
                format!("portal \"{}\" does not exist", text(portal)),
            ));
        };
        let q = query_text(content).to_vec();
        if self.aborted() && !is_exit(&q) {
            return Err((ABORTED.0, ABORTED.1.into()));
        }
        if q == b"SELECT 1/0" {
            return Err(("22012", "division by zero".into()));
        }
        if is_exit(&q) {
            self.block = None;
            backend::command_complete(out, "ROLLBACK");
            return Ok(());
        }
        let value = text(q.strip_prefix(b"SELECT ").unwrap_or(&q));
        backend::data_row(out, &[Some(value)]);
        backend::command_complete(out, "SELECT 1");
        Ok(())
    }

    fn simple(&mut self, q: &[u8], out: &mut BytesMut) -> Result<(), Failure> {
        // A simple query replaces the unnamed statement and portal.
        self.statements.remove(&b""[..]);
        self.portals.remove(&b""[..]);
        match q {
            b"BEGIN" if !self.aborted() => {
                self.block = Some(false);
                backend::command_complete(out, "BEGIN");
            }
            b"COMMIT" => {
                let tag = if self.aborted() { "ROLLBACK" } else { "COMMIT" };
                self.block = None;
                self.portals.clear();
                backend::command_complete(out, tag);
            }
            b"DISCARD ALL" if self.block.is_some() => {
                return Err((
                    "25001",
                    "DISCARD ALL cannot run inside a transaction block".into(),
                ))
            }
            b"DISCARD ALL" => {
                self.statements.clear();
                self.portals.clear();
                backend::command_complete(out, "DISCARD ALL");
            }
            _ if self.aborted() => return Err((ABORTED.0, ABORTED.1.into())),
            _ => {
                backend::row_description(out, &[("?column?", backend::oid::INT4)]);
                backend::data_row(out, &[Some("1")]);
                backend::command_complete(out, "SELECT 1");
            }
        }
        Ok(())
    }

    /// Named statements (pgwake's server names on a pooled connection).
    fn names(&self, hashed: bool) -> Vec<Vec<u8>> {
        let mut v: Vec<Vec<u8>> = self
            .statements
            .keys()
            .filter(|n| !n.is_empty() && n.as_slice() != PROBE_NAME && is_hashed(n) == hashed)
            .cloned()
            .collect();
        v.sort();
        v
    }
}

/// A pooled server connection behind pgwake.
struct Conn {
    fake: Fake,
    server: ServerStatements,
    plan: ReplyPlan,
    /// Rewritten, not yet delivered.
    to_server: BytesMut,
    /// Answered, not yet tracked.
    from_server: Vec<u8>,
    status: u8,
}

struct Client {
    statements: ClientStatements,
    /// The client's own session: what it should see.
    session: Fake,
    want: Vec<u8>,
    got: Vec<u8>,
    waits: usize,
}

impl Conn {
    fn new(max: usize) -> Self {
        Conn {
            fake: Fake::default(),
            server: ServerStatements::new(max),
            plan: ReplyPlan::new(),
            to_server: BytesMut::new(),
            from_server: Vec::new(),
            status: b'I',
        }
    }

    /// False: the rewriter said wait.
    fn offer(&mut self, client: &mut Client, frame: &[u8]) -> bool {
        let (tag, body) = (frame[0], &frame[5..]);
        let mut to_client = BytesMut::new();
        let before = self.to_server.len();
        let step = Rewriter {
            client: &mut client.statements,
            server: &mut self.server,
            plan: &mut self.plan,
            status: TxStatus::from_byte(self.status),
        }
        .message(tag, body, &mut self.to_server, &mut to_client)
        .unwrap();
        // The relay lends a buffer for rewriting only to frames that name a
        // statement (and to queries): nothing else is rewritten.
        if tag != b'Q' && !super::client_frame_names_statement(tag, body) {
            assert_eq!(self.to_server.len(), before, "{} rewritten", tag as char);
        }
        client.got.extend_from_slice(&to_client);
        match step {
            Step::Pass => self.to_server.extend_from_slice(frame),
            Step::Replace => {}
            Step::Tail(k) => self.to_server.extend_from_slice(&body[k..]),
            Step::Wait => {
                assert!(to_client.is_empty());
                client.waits += 1;
                return false;
            }
        }
        true
    }

    fn deliver(&mut self) {
        let bytes = std::mem::take(&mut self.to_server);
        self.fake.feed(&bytes, &mut self.from_server);
    }

    /// Tracks one server frame; false when there is none.
    fn track_one(&mut self, client: &mut Client) -> bool {
        let Some(total) = frame_len(&self.from_server, usize::MAX).unwrap() else {
            return false;
        };
        let frame: Vec<u8> = self.from_server.drain(..total).collect();
        let (tag, body) = (frame[0], &frame[5..]);
        if tag == b'Z' {
            self.status = body[0];
        }
        let mut after = BytesMut::new();
        let verdict = ReplyTracker {
            client: &mut client.statements,
            server: &mut self.server,
            plan: &mut self.plan,
        }
        .frame(tag, body, &mut after);
        if verdict == Verdict::Forward {
            client.got.extend_from_slice(&frame);
        }
        client.got.extend_from_slice(&after);
        true
    }

    /// Sends a frame the client wrote, waiting for replies when told to.
    fn send(&mut self, client: &mut Client, frame: &[u8]) {
        client.session.feed(frame, &mut client.want);
        while !self.offer(client, frame) {
            self.deliver();
            assert!(
                self.track_one(client),
                "told to wait with nothing in flight"
            );
        }
    }

    fn finish(&mut self, client: &mut Client) {
        self.deliver();
        while self.track_one(client) {}
    }

    /// The connection could serve another client now.
    fn releasable(&self) -> bool {
        self.plan.is_empty()
            && self.status == b'I'
            && self.to_server.is_empty()
            && self.from_server.is_empty()
    }

    /// What pgwake believes is prepared is what is.
    fn check_in_step(&self) -> Result<(), String> {
        let mut believed: Vec<Vec<u8>> = self
            .server
            .iter()
            .map(|h| server_name(h).to_vec())
            .collect();
        believed.sort();
        let actual = self.fake.names(true);
        if believed != actual {
            return Err(format!(
                "pgwake believes {:?} prepared, the server has {:?}",
                believed.iter().map(|n| text(n)).collect::<Vec<_>>(),
                actual.iter().map(|n| text(n)).collect::<Vec<_>>()
            ));
        }
        if self.server.probe != self.fake.statements.contains_key(PROBE_NAME) {
            return Err("probe state out of step".into());
        }
        if !self.fake.violations.is_empty() {
            return Err(format!("server saw {:?}", self.fake.violations));
        }
        Ok(())
    }
}

impl Client {
    fn new(hasher: &StatementHasher) -> Self {
        Client {
            statements: ClientStatements::new(hasher.clone()),
            session: Fake::default(),
            want: Vec::new(),
            got: Vec::new(),
            waits: 0,
        }
    }

    fn check_in_step(&self) -> Result<(), String> {
        if self.got != self.want {
            return Err(format!(
                "client saw\n  {:?}\none session sends\n  {:?}",
                summary(&self.got),
                summary(&self.want)
            ));
        }
        let mut names: Vec<Vec<u8>> = self.statements.iter().map(|s| s.name().to_vec()).collect();
        names.sort();
        let actual = self.session.names(false);
        if names != actual {
            return Err(format!(
                "client statements {:?}, its session has {:?}",
                names.iter().map(|n| text(n)).collect::<Vec<_>>(),
                actual.iter().map(|n| text(n)).collect::<Vec<_>>()
            ));
        }
        Ok(())
    }
}

/// Clients and pooled connections of one pool.
struct Pool {
    conns: Vec<Conn>,
    clients: Vec<Client>,
}

impl Pool {
    fn new(conns: usize, clients: usize, max: usize) -> Self {
        let hasher = StatementHasher::new();
        Pool {
            conns: (0..conns).map(|_| Conn::new(max)).collect(),
            clients: (0..clients).map(|_| Client::new(&hasher)).collect(),
        }
    }

    /// Client `c` sends `flight` on connection `k` and reads every
    /// reply; returns what it saw, after checking it against its own
    /// session.
    fn send(&mut self, c: usize, k: usize, flight: &[Vec<u8>]) -> Vec<String> {
        let (client, conn) = (&mut self.clients[c], &mut self.conns[k]);
        let seen = client.got.len();
        for f in flight {
            conn.send(client, f);
        }
        conn.finish(client);
        client.check_in_step().unwrap();
        conn.check_in_step().unwrap();
        summary(&client.got[seen..])
    }

    /// Frames connection `k` received since `from`, as `tag name`.
    fn received(&self, k: usize, from: usize) -> Vec<String> {
        self.conns[k].fake.received[from..]
            .iter()
            .map(|f| {
                let body = &f[5..];
                let name = match f[0] {
                    b'P' => text(cstr(body, 0).unwrap().0),
                    b'B' => text(cstr(body, cstr(body, 0).unwrap().1).unwrap().0),
                    b'D' | b'C' => text(cstr(body, 1).unwrap().0),
                    _ => String::new(),
                };
                format!("{} {name}", char::from(f[0])).trim_end().to_owned()
            })
            .collect()
    }

    fn hash_of(&self, c: usize, name: &str) -> u64 {
        self.clients[c]
            .statements
            .get(name.as_bytes())
            .unwrap()
            .hash()
    }

    fn sname(&self, c: usize, name: &str) -> String {
        text(&server_name(self.hash_of(c, name)))
    }
}

#[test]
fn server_names_are_the_content_hash_in_hex() {
    assert_eq!(
        &server_name(0x0123_4567_89ab_cdef),
        b"pgwake_0123456789abcdef"
    );
    let hasher = StatementHasher::new();
    let spec = |body: &[u8]| StatementSpec::new(&body[5..], 1, &hasher);
    let a = spec(&parse("a", "SELECT $1", &[23]));
    assert_eq!(a.name(), b"a");
    assert_eq!(a.query(), b"SELECT $1");
    assert_eq!(a.param_types().collect::<Vec<_>>(), [23]);
    // Same content under another name: same server statement.
    assert_eq!(a.hash(), spec(&parse("b", "SELECT $1", &[23])).hash());
    // Declared types are part of the statement.
    assert_ne!(a.hash(), spec(&parse("a", "SELECT $1", &[20])).hash());
    assert_ne!(a.hash(), spec(&parse("a", "SELECT $1", &[])).hash());
    assert!(format!("{a:?}").contains("\"a\"") && !format!("{a:?}").contains("SELECT"));
}

#[test]
fn a_trailing_sqlcommenter_comment_is_not_part_of_the_server_statement() {
    let hasher = StatementHasher::new();
    let spec = |body: &[u8]| StatementSpec::new(&body[5..], 1, &hasher);
    let traced = |span: &str| {
        format!("SELECT $1 /*db_driver='psycopg%3A3.2.13',traceparent='00-5bd66ef5095369c7b0d1f8f4bd33716a-{span}-01'*/")
    };
    let a = spec(&parse("a", &traced("c532cb4098ac3dd2"), &[23]));
    let b = spec(&parse("b", &traced("00f067aa0ba902b7"), &[23]));
    // Another trace, the same statement on the server.
    assert_eq!(a.hash(), b.hash());
    let (before, after) = a.server_content();
    assert_eq!(before, b"SELECT $1 ");
    assert_eq!(after, b"\0\0\x01\0\0\0\x17");
    // The client still sees its own text.
    assert!(a.query().ends_with(b"-01'*/"));
    // Another statement, or other types, another server statement.
    assert_ne!(
        a.hash(),
        spec(&parse(
            "c",
            &traced("c532cb4098ac3dd2").replace("$1", "$1 + 1"),
            &[23]
        ))
        .hash()
    );
    assert_ne!(
        a.hash(),
        spec(&parse("d", &traced("c532cb4098ac3dd2"), &[20])).hash()
    );
    // A comment that is not sqlcommenter's stays part of the statement.
    let plain = spec(&parse("e", "SELECT $1 /* a note */", &[23]));
    assert_eq!(plain.server_content().0, plain.content());
    assert_ne!(
        plain.hash(),
        spec(&parse("f", "SELECT $1 /* another */", &[23])).hash()
    );
}

#[test]
fn lru_evicts_the_least_recently_used_unpinned_statement() {
    let mut s = ServerStatements::new(2);
    s.insert(1, 0);
    s.insert(2, 0);
    assert_eq!(s.victim(), Some(1));
    assert_eq!(s.touch(1, 0), Lookup::Ready);
    assert_eq!(s.victim(), Some(2));
    s.pin(2);
    assert_eq!(s.victim(), Some(1));
    s.pin(1);
    assert_eq!(s.victim(), None, "every statement may have an open portal");
    s.unpin_all();
    assert_eq!(s.victim(), Some(2));
    s.remove(2);
    assert_eq!(s.victim(), None);
    s.insert(3, 0);
    s.restore(2, 0);
    assert_eq!(s.iter().collect::<Vec<_>>(), [3, 1, 2]);
    assert_eq!(s.touch(4, 0), Lookup::Missing);
    s.invalidate();
    assert!(s.is_empty() && s.iter().next().is_none());
}

#[test]
fn a_statement_prepared_before_a_reported_schema_change_is_not_used_for_newer_ones() {
    let mut s = ServerStatements::new(4);
    s.insert(1, 0);
    s.insert(2, 1);
    // A client statement from epoch 0 may use either; one from epoch 1 only
    // the statement prepared in epoch 1.
    assert_eq!(s.touch(1, 0), Lookup::Ready);
    assert_eq!(s.touch(2, 1), Lookup::Ready);
    assert_eq!(s.touch(1, 1), Lookup::Stale(0));
    assert!(!s.contains(1), "forgotten, to be closed and prepared again");
}

#[test]
fn prepare_then_execute_on_a_fresh_connection() {
    let mut p = Pool::new(1, 1, 10);
    let got = p.send(
        0,
        0,
        &[parse("a", "SELECT 1", &[]), bind("a", 0), execute(), sync()],
    );
    assert_eq!(got, ["1", "2", "D 1", "C SELECT 1", "Z I"]);
    let h = p.sname(0, "a");
    assert_eq!(
        p.received(0, 0),
        [format!("P {h}"), format!("B {h}"), "E".into(), "S".into()]
    );
    assert_eq!(
        p.conns[0].server.take_counts(),
        CacheCounts {
            hits: 1,
            misses: 1,
            evictions: 0
        }
    );
}

#[test]
fn a_second_connection_gets_the_statement_by_a_swallowed_parse() {
    let mut p = Pool::new(2, 1, 10);
    p.send(
        0,
        0,
        &[parse("a", "SELECT 1", &[]), describe(b'S', "a"), sync()],
    );
    let got = p.send(0, 1, &[bind("a", 0), execute(), sync()]);
    assert_eq!(got, ["2", "D 1", "C SELECT 1", "Z I"]);
    let h = p.sname(0, "a");
    assert_eq!(
        p.received(1, 0),
        [format!("P {h}"), format!("B {h}"), "E".into(), "S".into()]
    );
    // And Describe the same way.
    let mut p = Pool::new(2, 1, 10);
    p.send(0, 0, &[parse("a", "SELECT 1", &[23]), sync()]);
    let got = p.send(0, 1, &[describe(b'S', "a"), sync()]);
    assert_eq!(got, ["t", "T", "Z I"]);
}

#[test]
fn parse_of_a_statement_the_connection_has_is_answered_by_pgwake() {
    let mut p = Pool::new(1, 2, 10);
    p.send(0, 0, &[parse("a", "SELECT 1", &[]), sync()]);
    let before = p.conns[0].fake.received.len();
    // Another client, another name, the same statement: nothing is sent,
    // and ParseComplete comes at once, without waiting for a Flush.
    let (client, conn) = (&mut p.clients[1], &mut p.conns[0]);
    conn.send(client, &parse("mine", "SELECT 1", &[]));
    assert_eq!(summary(&client.got), ["1"]);
    assert!(conn.to_server.is_empty());
    let got = p.send(1, 0, &[bind("mine", 0), execute(), sync()]);
    assert_eq!(got, ["2", "D 1", "C SELECT 1", "Z I"]);
    let h = p.sname(1, "mine");
    assert_eq!(p.sname(0, "a"), h);
    assert_eq!(
        p.received(0, before),
        [format!("B {h}"), "E".into(), "S".into()]
    );
}

#[test]
fn two_clients_with_one_name_for_different_sql_get_their_own_answers() {
    let mut p = Pool::new(1, 2, 10);
    let one = p.send(
        0,
        0,
        &[
            parse("s0", "SELECT 1", &[]),
            bind("s0", 0),
            execute(),
            sync(),
        ],
    );
    let two = p.send(
        1,
        0,
        &[
            parse("s0", "SELECT 2", &[]),
            bind("s0", 0),
            execute(),
            sync(),
        ],
    );
    assert_eq!(one, ["1", "2", "D 1", "C SELECT 1", "Z I"]);
    assert_eq!(two, ["1", "2", "D 2", "C SELECT 1", "Z I"]);
    assert_ne!(p.sname(0, "s0"), p.sname(1, "s0"));
    // Alternating on the one connection, each keeps its own.
    for _ in 0..2 {
        assert_eq!(p.send(0, 0, &[bind("s0", 0), execute(), sync()])[1], "D 1");
        assert_eq!(p.send(1, 0, &[bind("s0", 0), execute(), sync()])[1], "D 2");
    }
    assert_eq!(p.conns[0].server.len(), 2);
}

#[test]
fn close_then_parse_again_under_the_same_name() {
    let mut p = Pool::new(1, 1, 10);
    p.send(0, 0, &[parse("a", "SELECT 1", &[]), sync()]);
    let first = p.sname(0, "a");
    let before = p.conns[0].fake.received.len();
    assert_eq!(p.send(0, 0, &[close(b'S', "a"), sync()]), ["3", "Z I"]);
    // The server keeps its statement for whoever needs it next.
    assert_eq!(p.received(0, before), ["S"]);
    assert!(p.clients[0].statements.is_empty());
    assert!(p.conns[0]
        .server
        .contains(p.conns[0].server.iter().next().unwrap()));
    // Closing a name that does not exist is no error either.
    assert_eq!(p.send(0, 0, &[close(b'S', "nope"), sync()]), ["3", "Z I"]);
    let got = p.send(
        0,
        0,
        &[parse("a", "SELECT 2", &[]), bind("a", 0), execute(), sync()],
    );
    assert_eq!(got, ["1", "2", "D 2", "C SELECT 1", "Z I"]);
    assert_ne!(p.sname(0, "a"), first);
    assert_eq!(p.conns[0].server.len(), 2);
}

#[test]
fn lru_eviction_with_max_two_closes_the_oldest_first() {
    let mut p = Pool::new(1, 1, 2);
    for (name, q) in [("a", "SELECT 1"), ("b", "SELECT 2")] {
        p.send(0, 0, &[parse(name, q, &[]), sync()]);
    }
    let (a, b) = (p.sname(0, "a"), p.sname(0, "b"));
    let before = p.conns[0].fake.received.len();
    assert_eq!(
        p.send(0, 0, &[parse("c", "SELECT 3", &[]), sync()]),
        ["1", "Z I"]
    );
    let c = p.sname(0, "c");
    assert_eq!(
        p.received(0, before),
        [format!("C {a}"), format!("P {c}"), "S".into()]
    );
    // `a` comes back in place of the least recently used, `b`.
    let before = p.conns[0].fake.received.len();
    let got = p.send(0, 0, &[bind("a", 0), execute(), sync()]);
    assert_eq!(got, ["2", "D 1", "C SELECT 1", "Z I"]);
    assert_eq!(
        p.received(0, before),
        [
            format!("C {b}"),
            format!("P {a}"),
            format!("B {a}"),
            "E".into(),
            "S".into()
        ]
    );
    assert_eq!(p.conns[0].server.take_counts().evictions, 2);
}

#[test]
fn an_open_portal_keeps_its_statement_from_eviction() {
    let mut p = Pool::new(1, 1, 1);
    p.send(0, 0, &[query("BEGIN")]);
    p.send(0, 0, &[parse("a", "SELECT 1", &[]), bind("a", 0), sync()]);
    // Closing `a` now would close the portal the client still reads.
    p.send(0, 0, &[parse("b", "SELECT 2", &[]), sync()]);
    assert_eq!(p.conns[0].server.len(), 2);
    assert_eq!(
        p.send(0, 0, &[execute(), sync()]),
        ["D 1", "C SELECT 1", "Z T"]
    );
    p.send(0, 0, &[query("COMMIT")]);
    // Idle again: both go to make room.
    let before = p.conns[0].fake.received.len();
    p.send(0, 0, &[parse("c", "SELECT 3", &[]), sync()]);
    assert_eq!(
        p.received(0, before)
            .iter()
            .filter(|m| m.starts_with('C'))
            .count(),
        2
    );
    assert_eq!(p.conns[0].server.len(), 1);
}

#[test]
fn an_error_in_the_middle_of_a_pipeline_answers_as_one_session_would() {
    let mut p = Pool::new(1, 2, 10);
    // Another client has `SELECT 3` prepared on the connection.
    p.send(1, 0, &[parse("x", "SELECT 3", &[]), sync()]);
    let three = p.hash_of(1, "x");
    let got = p.send(
        0,
        0,
        &[
            parse("a", "SELECT 1", &[]),
            bind("a", 0),
            execute(),
            parse("b", "SELECT 1/0", &[]),
            bind("b", 0),
            execute(),
            // Would be answered by pgwake: the server skips it.
            parse("c", "SELECT 3", &[]),
            bind("c", 0),
            execute(),
            // Would be prepared: the server skips it.
            parse("d", "SELECT 2", &[]),
            bind("d", 0),
            execute(),
            sync(),
        ],
    );
    assert_eq!(
        got,
        [
            "1",
            "2",
            "D 1",
            "C SELECT 1",
            "1",
            "2",
            "E 22012 division by zero",
            "Z I"
        ]
    );
    let names: Vec<_> = p.clients[0]
        .statements
        .iter()
        .map(|s| text(s.name()))
        .collect();
    assert_eq!(names.len(), 2, "{names:?}");
    assert!(p.clients[0].statements.get(b"c").is_none());
    assert!(p.conns[0].server.contains(three));
    assert_eq!(p.conns[0].server.len(), 3);
    // `c` and `d` can be prepared now.
    let got = p.send(
        0,
        0,
        &[
            parse("c", "SELECT 3", &[]),
            parse("d", "SELECT 2", &[]),
            sync(),
        ],
    );
    assert_eq!(got, ["1", "1", "Z I"]);
}

#[test]
fn a_name_in_use_fails_with_42p05_in_order() {
    let mut p = Pool::new(1, 1, 10);
    p.send(0, 0, &[parse("a", "SELECT 1", &[]), sync()]);
    let got = p.send(
        0,
        0,
        &[
            parse("b", "SELECT 2", &[]),
            bind("b", 0),
            execute(),
            parse("a", "SELECT 3", &[]),
            bind("a", 0),
            execute(),
            sync(),
        ],
    );
    assert_eq!(
        got,
        [
            "1",
            "2",
            "D 2",
            "C SELECT 1",
            "E 42P05 prepared statement \"a\" already exists",
            "Z I"
        ]
    );
    // `a` still means what it meant.
    assert_eq!(p.send(0, 0, &[bind("a", 0), execute(), sync()])[1], "D 1");
    // Postgres reports a syntax error before the name in use.
    let got = p.send(0, 0, &[parse("a", "SELEC 4", &[]), sync()]);
    assert_eq!(got, ["E 42601 syntax error at or near \"SELEC\"", "Z I"]);
}

#[test]
fn discard_all_forgets_every_statement() {
    let mut p = Pool::new(1, 1, 10);
    p.send(0, 0, &[parse("a", "SELECT 1", &[]), sync()]);
    assert_eq!(
        p.send(0, 0, &[query("DISCARD ALL")]),
        ["C DISCARD ALL", "Z I"]
    );
    assert!(p.conns[0].server.is_empty());
    assert!(p.clients[0].statements.is_empty());
    let got = p.send(0, 0, &[bind("a", 0), execute(), sync()]);
    assert_eq!(
        got,
        ["E 26000 prepared statement \"a\" does not exist", "Z I"]
    );
    let before = p.conns[0].fake.received.len();
    assert_eq!(
        p.send(0, 0, &[parse("a", "SELECT 1", &[]), sync()]),
        ["1", "Z I"]
    );
    assert_eq!(
        p.received(0, before),
        [format!("P {}", p.sname(0, "a")), "S".into()]
    );
}

#[test]
fn errors_name_the_clients_statement() {
    let mut p = Pool::new(1, 1, 10);
    p.send(0, 0, &[parse("a", "SELECT 1", &[23]), sync()]);
    let got = p.send(0, 0, &[bind("a", 0), execute(), sync()]);
    assert_eq!(
        got,
        [
            "E 08P01 bind message supplies 0 parameters, but prepared statement \"a\" requires 1",
            "Z I"
        ]
    );
}

#[test]
fn a_later_part_of_the_pipeline_waits_for_a_parse_that_may_fail() {
    let mut p = Pool::new(1, 1, 10);
    let got = p.send(
        0,
        0,
        &[
            parse("a", "SELEC 1", &[]),
            sync(),
            parse("a", "SELECT 1", &[]),
            bind("a", 0),
            execute(),
            sync(),
        ],
    );
    assert_eq!(
        got,
        [
            "E 42601 syntax error at or near \"SELEC\"",
            "Z I",
            "1",
            "2",
            "D 1",
            "C SELECT 1",
            "Z I"
        ]
    );
    assert_eq!(p.clients[0].waits, 1);
    // Nothing to wait for in steady state.
    p.send(
        0,
        0,
        &[
            bind("a", 0),
            execute(),
            sync(),
            bind("a", 0),
            execute(),
            sync(),
        ],
    );
    assert_eq!(p.clients[0].waits, 1);
}

#[test]
fn parse_in_a_failed_transaction_is_refused_as_by_postgres() {
    let mut p = Pool::new(1, 2, 10);
    p.send(1, 0, &[parse("x", "SELECT 1", &[]), sync()]);
    p.send(0, 0, &[query("BEGIN")]);
    let got = p.send(
        0,
        0,
        &[
            parse("z", "SELECT 1/0", &[]),
            bind("z", 0),
            execute(),
            sync(),
        ],
    );
    assert_eq!(got, ["1", "2", "E 22012 division by zero", "Z E"]);
    let got = p.send(0, 0, &[parse("y", "SELECT 1", &[]), sync()]);
    assert_eq!(
        got,
        [format!("E {} {}", ABORTED.0, ABORTED.1), "Z E".into()]
    );
    assert!(p.clients[0].statements.get(b"y").is_none());
    p.send(0, 0, &[query("COMMIT")]);
    // Pipelined behind a Sync, the connection's statement is confirmed
    // by the server rather than answered blind.
    let got = p.send(
        0,
        0,
        &[
            parse("y", "SELECT 1", &[]),
            sync(),
            parse("w", "SELECT 1", &[]),
            sync(),
        ],
    );
    assert_eq!(got, ["1", "Z I", "1", "Z I"]);
}

#[test]
fn syncs_sent_during_copy_in_are_not_answered() {
    let hasher = StatementHasher::new();
    let mut client = ClientStatements::new(hasher);
    let mut server = ServerStatements::new(4);
    let mut plan = ReplyPlan::new();
    let (mut to_server, mut to_client) = (BytesMut::new(), BytesMut::new());
    // As libpq does: Bind, Execute and Sync, then the data, CopyDone and another Sync.
    let mut offer = |client: &mut ClientStatements,
                     server: &mut ServerStatements,
                     plan: &mut ReplyPlan,
                     f: Vec<u8>| {
        let step = Rewriter {
            client,
            server,
            plan,
            status: TxStatus::Idle,
        }
        .message(f[0], &f[5..], &mut to_server, &mut to_client)
        .unwrap();
        assert_eq!(step, Step::Pass);
    };
    for f in [bind("", 0), execute(), sync()] {
        offer(&mut client, &mut server, &mut plan, f);
    }
    let track = |client: &mut ClientStatements,
                 server: &mut ServerStatements,
                 plan: &mut ReplyPlan,
                 tag: u8,
                 body: &[u8]| {
        ReplyTracker {
            client,
            server,
            plan,
        }
        .frame(tag, body, &mut BytesMut::new())
    };
    for tag in [b'2', b'G'] {
        assert_eq!(
            track(&mut client, &mut server, &mut plan, tag, &[]),
            Verdict::Forward
        );
    }
    for f in [msg(b'd', b"1\n"), msg(b'c', &[]), sync()] {
        offer(&mut client, &mut server, &mut plan, f);
    }
    track(&mut client, &mut server, &mut plan, b'C', b"COPY 1\0");
    assert_eq!(plan.len(), 1);
    track(&mut client, &mut server, &mut plan, b'Z', b"I");
    assert!(plan.is_empty());
}

// ---- Random sessions against the model ----

const NAMES: [&str; 4] = ["", "a", "b", "c"];
const USED: [&str; 5] = ["", "a", "b", "c", "z"];
const QUERIES: [&str; 5] = ["SELECT 1", "SELECT 2", "SELECT 3", "SELEC 4", "SELECT 1/0"];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Parse(&'static str, &'static str),
    Bind(&'static str),
    DescribeS(&'static str),
    DescribeP,
    Execute,
    CloseS(&'static str),
    CloseP,
    Sync,
    Flush,
    Query(&'static str),
    /// The client waits for every reply before it goes on.
    Wait,
}

impl Op {
    fn frame(self) -> Option<Vec<u8>> {
        Some(match self {
            Op::Parse(n, q) => parse(n, q, &[]),
            Op::Bind(n) => bind(n, 0),
            Op::DescribeS(n) => describe(b'S', n),
            Op::DescribeP => describe(b'P', ""),
            Op::Execute => execute(),
            Op::CloseS(n) => close(b'S', n),
            Op::CloseP => close(b'P', ""),
            Op::Sync => sync(),
            Op::Flush => flush(),
            Op::Query(q) => query(q),
            Op::Wait => return None,
        })
    }
}

/// Where a client's script stands, to keep it to what a transaction
/// pooler promises: the unnamed statement only within one pipeline
/// part (another client may replace it on a shared connection), no
/// Close of a statement whose portal is still read (Postgres would
/// close the portal; pgwake keeps it), simple queries and transaction
/// control between pipeline parts.
#[derive(Default, Clone)]
struct Shape {
    open: bool,
    unnamed: bool,
    /// Statements the unnamed portal may have been made from (a failed
    /// Bind leaves the earlier portal open).
    portal_from: Vec<&'static str>,
    block: bool,
}

impl Shape {
    fn step(&mut self, op: Op) -> bool {
        match op {
            Op::Parse(n, _) => {
                self.open = true;
                self.unnamed |= n.is_empty();
            }
            Op::Bind(n) | Op::DescribeS(n) => {
                if n.is_empty() && !self.unnamed {
                    return false;
                }
                self.open = true;
                if matches!(op, Op::Bind(_)) {
                    self.portal_from.push(n);
                }
            }
            Op::CloseS(n) => {
                if self.portal_from.contains(&n) {
                    return false;
                }
                self.open = true;
            }
            // The server may skip a Close of the portal (after an error):
            // only the end of the transaction surely ends the portal.
            Op::CloseP | Op::DescribeP | Op::Execute => self.open = true,
            Op::Sync => {
                self.open = false;
                self.unnamed = false;
                if !self.block {
                    self.portal_from.clear();
                }
            }
            Op::Flush | Op::Wait => {}
            Op::Query(q) => {
                if self.open {
                    return false;
                }
                match q {
                    "BEGIN" if self.block => return false,
                    "BEGIN" => self.block = true,
                    "COMMIT" if !self.block => return false,
                    "COMMIT" => {
                        self.block = false;
                        self.portal_from.clear();
                    }
                    "DISCARD ALL" if self.block => return false,
                    "DISCARD ALL" => self.portal_from.clear(),
                    _ => {}
                }
                self.unnamed = false;
            }
        }
        true
    }

    /// The client may leave the connection here.
    fn at_rest(&self) -> bool {
        !self.open && !self.block
    }
}

fn valid(script: &[Op]) -> bool {
    let mut s = Shape::default();
    script.iter().all(|&op| s.step(op)) && s.at_rest()
}

fn pick<T: Copy>(rng: &mut StdRng, from: &[T]) -> T {
    from[rng.random_range(0..from.len())]
}

fn script(rng: &mut StdRng, len: usize) -> Vec<Op> {
    let mut ops = Vec::new();
    let mut shape = Shape::default();
    while ops.len() < len {
        if rng.random_bool(0.3) {
            // What drivers send: [Parse] Bind [Describe] Execute.
            let name = pick(rng, &NAMES[1..]);
            let mut group = Vec::new();
            if rng.random_bool(0.5) {
                group.push(Op::Parse(name, pick(rng, &QUERIES)));
            }
            group.push(Op::Bind(name));
            if rng.random_bool(0.2) {
                group.push(Op::DescribeP);
            }
            group.push(Op::Execute);
            let mut after = shape.clone();
            if group.iter().all(|&op| after.step(op)) {
                ops.extend(group);
                shape = after;
            }
            continue;
        }
        let op = match rng.random_range(0..100) {
            0..=19 => Op::Parse(pick(rng, &NAMES), pick(rng, &QUERIES)),
            20..=36 => Op::Bind(pick(rng, &USED)),
            37..=41 => Op::DescribeS(pick(rng, &USED)),
            42..=43 => Op::DescribeP,
            44..=57 => Op::Execute,
            58..=64 => Op::CloseS(pick(rng, &USED)),
            65 => Op::CloseP,
            66..=81 => Op::Sync,
            82..=84 => Op::Flush,
            85..=89 => Op::Query(pick(rng, &["BEGIN", "COMMIT", "SELECT 1", "DISCARD ALL"])),
            _ => Op::Wait,
        };
        if shape.step(op) {
            ops.push(op);
        }
    }
    if shape.open {
        ops.push(Op::Sync);
    }
    if shape.block {
        ops.push(Op::Query("COMMIT"));
    }
    ops.push(Op::Wait);
    ops
}

#[derive(Debug, Clone)]
struct Case {
    conns: usize,
    max: usize,
    scripts: Vec<Vec<Op>>,
    /// Drives the interleaving of clients and of replies.
    schedule: u64,
}

/// Runs the clients' scripts through pgwake, in pieces and interleaved
/// as the schedule says, checking each against its own session.
fn run(case: &Case) -> Result<(), String> {
    let mut rng = StdRng::seed_from_u64(case.schedule);
    let mut pool = Pool::new(case.conns, case.scripts.len(), case.max);
    let mut next = vec![0usize; case.scripts.len()];
    let mut shapes = vec![Shape::default(); case.scripts.len()];
    let mut holds: Vec<Option<usize>> = vec![None; case.scripts.len()];
    loop {
        let pending: Vec<usize> = (0..case.scripts.len())
            .filter(|&c| next[c] < case.scripts[c].len())
            .collect();
        if pending.is_empty() {
            return Ok(());
        }
        let free: Vec<usize> = (0..case.conns)
            .filter(|k| !holds.contains(&Some(*k)))
            .collect();
        let ready: Vec<usize> = pending
            .iter()
            .copied()
            .filter(|&c| holds[c].is_some() || !free.is_empty())
            .collect();
        let c = pick(&mut rng, &ready);
        let k = match holds[c] {
            Some(k) => k,
            None => pick(&mut rng, &free),
        };
        holds[c] = Some(k);
        let (client, conn) = (&mut pool.clients[c], &mut pool.conns[k]);
        // One flight: up to the client's next wait, or its end.
        while let Some(&op) = case.scripts[c].get(next[c]) {
            next[c] += 1;
            shapes[c].step(op);
            let Some(frame) = op.frame() else { break };
            conn.send(client, &frame);
            if rng.random_bool(0.3) {
                conn.deliver();
            }
            while rng.random_bool(0.5) && conn.track_one(client) {}
        }
        conn.finish(client);
        let ctx = |e: String| format!("client {c} on connection {k}, after op {}: {e}", next[c]);
        client.check_in_step().map_err(ctx)?;
        conn.check_in_step().map_err(ctx)?;
        if shapes[c].at_rest() {
            if !conn.releasable() {
                return Err(ctx("connection not releasable at rest".into()));
            }
            holds[c] = None;
        }
    }
}

/// Removes ops while the case still fails.
fn shrink(mut case: Case) -> Case {
    loop {
        let mut smaller = None;
        'search: for c in 0..case.scripts.len() {
            for i in 0..case.scripts[c].len() {
                let mut candidate = case.clone();
                candidate.scripts[c].remove(i);
                if valid(&candidate.scripts[c]) && run(&candidate).is_err() {
                    smaller = Some(candidate);
                    break 'search;
                }
            }
        }
        match smaller {
            Some(s) => case = s,
            None => return case,
        }
    }
}

#[test]
fn random_sessions_see_what_one_server_session_sends() {
    for seed in 0..2000u64 {
        let mut rng = StdRng::seed_from_u64(seed);
        let clients = rng.random_range(1..=3);
        let case = Case {
            conns: rng.random_range(1..=3),
            max: rng.random_range(1..=3),
            scripts: (0..clients)
                .map(|_| {
                    let len = rng.random_range(4..40);
                    script(&mut rng, len)
                })
                .collect(),
            schedule: rng.random(),
        };
        assert!(case.scripts.iter().all(|s| valid(s)));
        if let Err(e) = run(&case) {
            let small = shrink(case);
            panic!(
                "seed {seed}: {e}\nsmallest failing case: {small:#?}\nwhich fails with: {}",
                run(&small).unwrap_err()
            );
        }
    }
}

mod sql_text {
    use pgwake_protocol::sql::{self, Command, Parsed, RESERVED};

    fn parse(text: &str) -> Parsed {
        let mut body = text.as_bytes().to_vec();
        body.push(0);
        sql::parse(&body)
    }

    /// The folded name and the text as written, or the other outcomes.
    fn name(text: &str) -> Result<(String, String), Parsed> {
        let n = match parse(text) {
            Parsed::Command(Command::Prepare { name, .. })
            | Parsed::Command(Command::Execute { name })
            | Parsed::Command(Command::Deallocate { name }) => name,
            other => return Err(other),
        };
        Ok((
            String::from_utf8(n.folded).unwrap(),
            text[n.start..n.end].to_string(),
        ))
    }

    fn ok(folded: &str, written: &str) -> Result<(String, String), Parsed> {
        Ok((folded.into(), written.into()))
    }

    #[test]
    fn names_fold_like_postgres_identifiers() {
        assert_eq!(name("PREPARE Foo AS select 1"), ok("foo", "Foo"));
        assert_eq!(name(r#"PREPARE "Foo" AS select 1"#), ok("Foo", r#""Foo""#));
        assert_eq!(name(r#"execute "a""b"(1)"#), ok(r#"a"b"#, r#""a""b""#));
        assert_eq!(name("EXECUTE x$1_2(3)"), ok("x$1_2", "x$1_2"));
        assert_eq!(name("deallocate ÄBc"), ok("Äbc", "ÄBc"));
        // PREPARE is an unreserved keyword: a valid name.
        assert_eq!(
            name("PREPARE prepare AS select 1"),
            ok("prepare", "prepare")
        );
        assert_eq!(name("DEALLOCATE prepare"), ok("prepare", "prepare"));
        assert_eq!(name("DEALLOCATE PREPARE foo"), ok("foo", "foo"));
        assert_eq!(name("deallocate prepare \"ALL\""), ok("ALL", "\"ALL\""));
        // Truncated to 63 bytes, as PostgreSQL's lexer does.
        let long = "n".repeat(80);
        assert_eq!(name(&format!("EXECUTE {long}")).unwrap().0, "n".repeat(63));
        let wide = "é".repeat(40);
        assert_eq!(name(&format!("EXECUTE {wide}")).unwrap().0, "é".repeat(31));
    }

    #[test]
    fn whitespace_comments_and_semicolons_around_one_statement() {
        assert_eq!(
            name("  /* a /* nested */ comment */ -- line\n\tPrEpArE\n  foo(int, text) AS select $1; ; \n-- done"),
            ok("foo", "foo")
        );
        assert_eq!(
            parse("DEALLOCATE ALL"),
            Parsed::Command(Command::DeallocateAll)
        );
        assert_eq!(
            parse("deallocate prepare all ;"),
            Parsed::Command(Command::DeallocateAll)
        );
        assert_eq!(
            parse("DEALLOCATE ALL; ;"),
            Parsed::Command(Command::DeallocateAll)
        );
        let Parsed::Command(Command::Prepare { rest, .. }) =
            parse("PREPARE p(int) AS select $1 ;  -- end")
        else {
            panic!()
        };
        let text = "PREPARE p(int) AS select $1 ;  -- end";
        assert_eq!(&text[rest.0..rest.1], "(int) AS select $1");
    }

    #[test]
    fn a_semicolon_inside_a_string_or_comment_does_not_end_the_statement() {
        for text in [
            "PREPARE s AS select ';'",
            "PREPARE s AS select 'it''s; fine'",
            r"PREPARE s AS select E'\'; still'",
            "PREPARE s AS select $$;$$",
            "PREPARE s AS select $tag$ ; $ $tag$",
            "PREPARE s AS select 1 /* ; */",
            "PREPARE s AS select 1 -- ;\n",
            r#"PREPARE s AS select 1 as ";""#,
            "EXECUTE s(';')",
        ] {
            assert!(matches!(parse(text), Parsed::Command(_)), "{text}");
        }
        // A parameter is not a dollar quote.
        assert!(matches!(
            parse("PREPARE s AS select $1; select 2"),
            Parsed::Multiple
        ));
    }

    #[test]
    fn more_than_one_statement_is_told_apart() {
        for text in [
            "PREPARE s AS select 1; select 2",
            "EXECUTE s; EXECUTE t",
            "DEALLOCATE s; select 1",
            "DEALLOCATE ALL; DISCARD ALL",
        ] {
            assert_eq!(parse(text), Parsed::Multiple, "{text}");
        }
    }

    #[test]
    fn other_queries_and_syntax_errors_are_relayed() {
        // Relayed either way.
        for text in [
            "select 1",
            "PREPARED",
            "EXECUTED s",
            "prepare",
            "EXECUTE",
            "  ",
            "",
            "explain execute s",
        ] {
            assert_eq!(parse(text), Parsed::Other, "{text}");
        }
        for text in [
            "PREPARE all AS select 1",
            "PREPARE select AS select 1",
            "PREPARE 1x AS select 1",
            "EXECUTE ;",
            r#"EXECUTE "unterminated"#,
            r#"EXECUTE """#,
            "DEALLOCATE foo bar",
            "DEALLOCATE ALL now",
        ] {
            assert_eq!(parse(text), Parsed::Invalid, "{text}");
        }
        assert_eq!(
            parse(r#"PREPARE U&"d\0061t" AS select 1"#),
            Parsed::Unsupported
        );
    }

    #[test]
    fn only_a_query_body_with_its_one_final_nul_is_read() {
        assert_eq!(sql::parse(b"EXECUTE s"), Parsed::Other);
        assert_eq!(sql::parse(b"EXECUTE s\0x\0"), Parsed::Other);
        assert_eq!(sql::parse(b""), Parsed::Other);
    }

    #[test]
    fn the_prefix_check_reads_as_little_as_it_can() {
        assert!(!sql::may_be_command(b"select 1"));
        assert!(!sql::may_be_command(b"SELECT"));
        assert!(!sql::may_be_command(b"  insert into"));
        assert!(!sql::may_be_command(b"delete from t"));
        assert!(sql::may_be_command(b"PREPARE foo"));
        assert!(sql::may_be_command(b"  /* c */ execute"));
        // Undecided: the keyword or a comment may go on.
        assert!(sql::may_be_command(b"deallo"));
        assert!(sql::may_be_command(b"/* long comment"));
        assert!(sql::may_be_command(b""));
        assert!(!sql::may_be_command(b"dealloc x"));
    }

    #[test]
    fn garbage_never_panics() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let pieces: &[&[u8]] = &[
            b"PREPARE ",
            b"EXECUTE ",
            b"DEALLOCATE ",
            b"ALL",
            b"prepare",
            b"\"",
            b"'",
            b"E'",
            b"\\",
            b"$$",
            b"$a$",
            b"$",
            b"/*",
            b"*/",
            b"--",
            b"\n",
            b";",
            b" ",
            b"(",
            b")",
            b"x",
            b"U&",
            b"\xc3",
            b"\xa9",
            b"\xff",
            b"\0",
        ];
        for _ in 0..20_000 {
            let n = rng.random_range(0..12);
            let mut body = Vec::new();
            for _ in 0..n {
                body.extend_from_slice(pieces[rng.random_range(0..pieces.len())]);
            }
            let _ = sql::may_be_command(&body);
            body.push(0);
            if let Parsed::Command(c) = sql::parse(&body) {
                let text = &body[..body.len() - 1];
                if let Command::Prepare { name, rest } = &c {
                    assert!(name.start < name.end && name.end <= rest.0 && rest.0 <= rest.1);
                    assert!(rest.1 <= text.len());
                }
                if let Command::Prepare { name, .. }
                | Command::Execute { name }
                | Command::Deallocate { name } = c
                {
                    assert!(name.end <= text.len() && !name.folded.is_empty());
                    assert!(name.folded.len() <= sql::NAME_MAX);
                }
            }
        }
    }

    #[test]
    fn reserved_words_are_sorted_for_the_search() {
        assert!(RESERVED.windows(2).all(|w| w[0] < w[1]));
    }
}

#[test]
fn frames_that_name_a_statement_are_told_apart() {
    let names = |frame: &[u8]| super::client_frame_names_statement(frame[0], &frame[5..]);
    assert!(names(&parse("s1", "select 1", &[])));
    assert!(!names(&parse("", "select 1", &[])));
    assert!(names(&bind("s1", 0)));
    assert!(!names(&bind("", 0)));
    assert!(names(&describe(b'S', "s1")));
    assert!(!names(&describe(b'S', "")));
    assert!(!names(&describe(b'P', "p1")));
    assert!(names(&close(b'S', "s1")));
    assert!(!names(&close(b'P', "p1")));
    assert!(!names(&execute()));
    assert!(!names(&sync()));
    // Malformed: no terminating NUL for the portal, or an empty body.
    assert!(!names(&msg(b'B', b"portal")));
    assert!(!names(&msg(b'P', b"")));
    assert!(!names(&msg(b'D', b"S")));
}
