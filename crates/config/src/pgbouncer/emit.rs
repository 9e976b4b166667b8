//! The TOML the importer prints: pgwake's tables in the README's order,
//! each key with the PgBouncer comments that explain it and, at the end of
//! its line, the settings it came from. Values are written by the `toml`
//! crate, so quoting and escaping are TOML's own.

use toml::Value;

/// Tables in the order they are printed; `databases.*` come last.
const ORDER: &[&str] = &[
    "listen",
    "server",
    "server.auth",
    "pool",
    "timeouts",
    "admin",
    "client_auth",
    "client_auth.rules",
    "log",
    "peering",
];

/// Keys in the order they are printed within a table (as the README lists
/// them); others follow in the order they were set.
const KEY_ORDER: &[&str] = &[
    "address",
    "database",
    "host",
    "port",
    "dbname",
    "user",
    "addr",
    "unix_socket_dir",
    "method",
    "password",
    "sslmode",
    "sslrootcert",
    "connect_timeout",
    "tcp_keepalive_idle",
    "tcp_keepalive_interval",
    "tcp_keepalive_count",
    "tcp_user_timeout",
    "mode",
    "size",
    "min_idle",
    "max_lifetime",
    "idle_timeout",
    "pool_wait_timeout",
    "max_prepared_statements",
    "max_client_conn",
    "max_client_conn_per_database",
    "max_client_conn_per_user",
    "client_login_timeout",
    "tcp_defer_accept",
    "client_tls_mode",
    "client_tls_cert",
    "client_tls_key",
    "max_message_size",
    "file",
    "query",
    "query_user",
    "query_database",
];

#[derive(Debug, Default)]
pub(super) struct Doc {
    tables: Vec<Table>,
}

#[derive(Debug)]
pub(super) struct Table {
    /// Dotted path, each part already a valid TOML key.
    path: String,
    /// `[[path]]` rather than `[path]`.
    array: bool,
    /// Printed even when it has no keys (`[databases.NAME]` means something).
    keep_empty: bool,
    comments: Vec<String>,
    items: Vec<Item>,
}

#[derive(Debug)]
struct Item {
    key: String,
    value: Value,
    comments: Vec<String>,
    origin: String,
}

impl Doc {
    /// The table at `path` (parts unquoted), made if missing.
    pub fn table(&mut self, path: &[&str]) -> &mut Table {
        let path = dotted(path);
        let at = match self.tables.iter().position(|t| t.path == path && !t.array) {
            Some(i) => i,
            None => {
                self.tables.push(Table::new(path, false));
                self.tables.len() - 1
            }
        };
        &mut self.tables[at]
    }

    /// A new `[[path]]` entry.
    pub fn push_array(&mut self, path: &[&str]) -> &mut Table {
        self.tables.push(Table::new(dotted(path), true));
        let last = self.tables.len() - 1;
        &mut self.tables[last]
    }

    /// Sets `key` in the table at `path`.
    pub fn set(
        &mut self,
        path: &[&str],
        key: &str,
        value: Value,
        origin: &str,
        comments: &[String],
    ) {
        self.table(path).set(key, value, origin, comments);
    }

    pub fn render(&self, header: &[String]) -> String {
        let rank = |t: &Table| match ORDER.iter().position(|p| *p == t.path) {
            Some(i) => i,
            None => ORDER.len(),
        };
        let mut tables: Vec<&Table> = self
            .tables
            .iter()
            .filter(|t| t.keep_empty || !t.items.is_empty())
            .collect();
        tables.sort_by_key(|t| rank(t));
        let mut out = String::new();
        for line in header {
            out.push_str(&comment(line));
        }
        for t in tables {
            out.push('\n');
            for c in &t.comments {
                out.push_str(&comment(c));
            }
            if t.array {
                out.push_str(&format!("[[{}]]\n", t.path));
            } else {
                out.push_str(&format!("[{}]\n", t.path));
            }
            let mut items: Vec<&Item> = t.items.iter().collect();
            items.sort_by_key(|i| {
                KEY_ORDER
                    .iter()
                    .position(|k| *k == i.key)
                    .unwrap_or(KEY_ORDER.len())
            });
            for item in items {
                for c in &item.comments {
                    out.push_str(&comment(c));
                }
                let line = format!("{} = {}", key(&item.key), item.value);
                if item.origin.is_empty() {
                    out.push_str(&line);
                } else {
                    out.push_str(&format!("{line}  # {}", one_line(&item.origin)));
                }
                out.push('\n');
            }
        }
        out
    }
}

impl Table {
    fn new(path: String, array: bool) -> Table {
        Table {
            path,
            array,
            keep_empty: false,
            comments: Vec::new(),
            items: Vec::new(),
        }
    }

    /// Printed even with no keys.
    pub fn keep(&mut self) -> &mut Table {
        self.keep_empty = true;
        self
    }

    pub fn comment(&mut self, text: &str) -> &mut Table {
        self.comments.push(text.to_owned());
        self
    }

    /// Sets `key`, replacing an earlier value (and keeping both origins).
    pub fn set(
        &mut self,
        key: &str,
        value: Value,
        origin: &str,
        comments: &[String],
    ) -> &mut Table {
        match self.items.iter_mut().find(|i| i.key == key) {
            Some(item) => {
                item.value = value;
                item.comments.extend(comments.iter().cloned());
                if !origin.is_empty() && !item.origin.contains(origin) {
                    if !item.origin.is_empty() {
                        item.origin.push_str(", ");
                    }
                    item.origin.push_str(origin);
                }
            }
            None => self.items.push(Item {
                key: key.to_owned(),
                value,
                comments: comments.to_vec(),
                origin: origin.to_owned(),
            }),
        }
        self
    }
}

/// A TOML key: bare when it can be, else a quoted string.
pub(super) fn key(name: &str) -> String {
    let bare = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if bare {
        name.to_owned()
    } else {
        Value::String(name.to_owned()).to_string()
    }
}

fn dotted(path: &[&str]) -> String {
    path.iter().map(|p| key(p)).collect::<Vec<_>>().join(".")
}

fn comment(text: &str) -> String {
    let text = one_line(text);
    if text.is_empty() {
        "#\n".to_owned()
    } else {
        format!("# {text}\n")
    }
}

/// Comments are single lines: a newline in a carried comment cannot end it.
fn one_line(text: &str) -> String {
    text.replace(['\n', '\r'], " ")
}
