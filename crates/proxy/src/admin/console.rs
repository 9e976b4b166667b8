//! The admin console: database `pgwake` (or `pgbouncer`) on the normal
//! listener, speaking the simple query protocol, with PgBouncer's commands.

use std::sync::Arc;

use bytes::BytesMut;
use pgwake_protocol::backend::{self, ErrorMessage, Severity};
use pgwake_protocol::sqlstate;
use tokio::io::AsyncReadExt;

use super::report;
use crate::client_io::ClientOrigin;
use crate::client_io::{ClientStream, Peer};
use crate::Shared;

/// Client database names that reach the console.
pub(crate) fn is_console(database: &str) -> bool {
    database == "pgwake" || database == "pgbouncer"
}

/// What a console user may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Access {
    /// Every command.
    Admin,
    /// `SHOW` commands only.
    Stats,
}

/// What `user` from `origin` may do on the console, if anything.
///
/// Commands that change state need a user in `admin.admin_users`, or the
/// unix socket (whose file permissions decide who reaches it). A loopback
/// client is not trusted with them by its address alone: in a pod, every
/// neighbour container (and a mesh proxy forwarding from 127.0.0.6) is on
/// loopback. With neither list set, loopback clients may run `SHOW`.
fn access(admin: &pgwake_config::Admin, user: &str, origin: ClientOrigin) -> Option<Access> {
    let listed = |users: &[String]| users.iter().any(|u| u == user);
    let Some(ip) = origin.ip else {
        return Some(Access::Admin);
    };
    let unlisted_loopback = admin.admin_users.is_empty()
        && admin.stats_users.is_empty()
        && ip.to_canonical().is_loopback();
    if listed(&admin.admin_users) {
        Some(Access::Admin)
    } else if listed(&admin.stats_users) || unlisted_loopback {
        Some(Access::Stats)
    } else {
        None
    }
}

/// Largest message the console accepts.
const MAX_MESSAGE: usize = 64 * 1024;

const HELP: &str = "SHOW POOLS|STATS|STATS_TOTALS|CLIENTS|SERVERS|DATABASES|LISTS|USERS|MEM|CONFIG|VERSION|STATE; SET key = value; RELOAD; PAUSE [db]; RESUME [db]; RECONNECT [db]; KILL [db]; KILL_CLIENT id; WAIT_CLOSE [db]; DISABLE db; ENABLE db; WAKE; SLEEP; SHUTDOWN";

/// Serves one console session after its startup packet.
pub(crate) async fn serve<C: ClientStream>(
    mut client: C,
    mut buf: BytesMut,
    peer: &Peer,
    shared: Arc<Shared>,
    user: &str,
) {
    let config = shared.config();
    let Some(access) = access(&config.admin, user, peer.origin) else {
        let e = ErrorMessage::fatal(
            sqlstate::INVALID_AUTHORIZATION,
            format!("user \"{user}\" may not use the admin console (admin.admin_users, admin.stats_users; with both empty, loopback clients may run SHOW commands and unix-socket clients any command)"),
        );
        let mut out = BytesMut::new();
        e.write(&mut out);
        let _ = client.send(&out).await;
        return;
    };
    tracing::info!(%peer, user, ?access, "admin console login");
    let mut out = BytesMut::with_capacity(1024);
    backend::auth_ok(&mut out);
    let version = shared
        .pools()
        .iter()
        .find_map(|p| p.defaults())
        .and_then(|d| d.params.get("server_version").cloned())
        .unwrap_or_else(|| "16.0".into());
    for (k, v) in [
        ("server_version", version.as_str()),
        ("server_encoding", "UTF8"),
        ("client_encoding", "UTF8"),
        ("DateStyle", "ISO, MDY"),
        ("integer_datetimes", "on"),
        ("standard_conforming_strings", "on"),
        ("TimeZone", "UTC"),
        ("application_name", "pgwake"),
    ] {
        backend::parameter_status(&mut out, k, v);
    }
    backend::backend_key_data(&mut out, 0, 0);
    backend::ready_for_query(&mut out, b'I');
    if client.send(&out).await.is_err() {
        return;
    }
    // After an extended-protocol message: skip to Sync.
    let mut failed_extended = false;
    loop {
        // One whole message.
        let scan = pgwake_protocol::Scanner::new(MAX_MESSAGE);
        let (tag, len) = loop {
            match scan.frame_len(&buf) {
                Err(e) => {
                    let e = ErrorMessage::fatal(
                        sqlstate::PROTOCOL_VIOLATION,
                        format!("invalid message for the admin console: {e}"),
                    );
                    out.clear();
                    e.write(&mut out);
                    let _ = client.send(&out).await;
                    return;
                }
                Ok(Some(total)) if buf.len() >= total => break (buf[0], total),
                Ok(_) => {}
            }
            buf.reserve(4096);
            let read = tokio::select! {
                r = client.read_buf(&mut buf) => r,
                _ = shared.shutdown.cancelled() => return,
            };
            match read {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        };
        let msg = buf.split_to(len);
        let body = &msg[5..];
        out.clear();
        match tag {
            b'X' => return,
            b'Q' => {
                let end = body.iter().position(|&b| b == 0).unwrap_or(body.len());
                let sql = String::from_utf8_lossy(&body[..end]).into_owned();
                let stop = run(&shared, &sql, access, &mut out).await;
                backend::ready_for_query(&mut out, b'I');
                if client.send(&out).await.is_err() || stop {
                    return;
                }
            }
            b'S' => {
                failed_extended = false;
                backend::ready_for_query(&mut out, b'I');
                if client.send(&out).await.is_err() {
                    return;
                }
            }
            b'H' => {}
            b'F' => {
                // FunctionCall is answered on its own, like a Query.
                ErrorMessage::error(
                    sqlstate::FEATURE_NOT_SUPPORTED,
                    "the admin console does not run functions",
                )
                .write(&mut out);
                backend::ready_for_query(&mut out, b'I');
                if client.send(&out).await.is_err() {
                    return;
                }
            }
            _ => {
                if !failed_extended {
                    failed_extended = true;
                    ErrorMessage::error(
                        sqlstate::FEATURE_NOT_SUPPORTED,
                        "the admin console speaks the simple query protocol only",
                    )
                    .with_hint(HELP)
                    .write(&mut out);
                    if client.send(&out).await.is_err() {
                        return;
                    }
                }
            }
        }
    }
}

/// Runs one console command, writing its replies. `true`: close the session.
async fn run(shared: &Arc<Shared>, sql: &str, access: Access, out: &mut BytesMut) -> bool {
    let text = sql.trim().trim_end_matches(';').trim();
    if text.is_empty() {
        backend::empty_query(out);
        return false;
    }
    let (word, rest) = text.split_once(char::is_whitespace).unwrap_or((text, ""));
    let command = word.to_ascii_uppercase();
    let arg = Some(rest.trim()).filter(|a| !a.is_empty());
    let error = |out: &mut BytesMut, code: &str, m: String| {
        ErrorMessage::error(code, m).write(out);
    };
    if access == Access::Stats && command != "SHOW" {
        error(
            out,
            sqlstate::INSUFFICIENT_PRIVILEGE,
            format!(
                "{command} needs a user in admin.admin_users (or a client on the unix socket); other console users may run SHOW commands only"
            ),
        );
        return false;
    }
    let no_arg = matches!(
        command.as_str(),
        "RELOAD" | "WAKE" | "SLEEP" | "SHUTDOWN" | "SUSPEND" | "HELP"
    );
    if let (true, Some(arg)) = (no_arg, arg) {
        error(
            out,
            sqlstate::SYNTAX_ERROR,
            format!("{command} takes no argument (got {arg:?}); try: {HELP}"),
        );
        return false;
    }
    match command.as_str() {
        "SHOW" => match arg.map(str::to_ascii_uppercase).as_deref() {
            None | Some("HELP") => help(out),
            Some(what) => match report::show(shared, what) {
                Some(t) => {
                    backend::row_description(out, &t.columns);
                    for r in &t.rows {
                        backend::data_row(out, r);
                    }
                    backend::command_complete(out, "SHOW");
                }
                None => error(
                    out,
                    sqlstate::FEATURE_NOT_SUPPORTED,
                    format!("unknown SHOW command {what:?}; try: {HELP}"),
                ),
            },
        },
        "HELP" => help(out),
        "SET" => super::set::run(shared, arg, out),
        "PAUSE" | "RESUME" | "RECONNECT" | "KILL" | "KILL_CLIENT" | "SUSPEND" | "WAIT_CLOSE"
        | "DISABLE" | "ENABLE" => match super::commands::run(shared, &command, arg).await {
            Ok(notices) => {
                for n in notices {
                    ErrorMessage::new(Severity::Notice, sqlstate::SUCCESSFUL_COMPLETION, n)
                        .write(out);
                }
                backend::command_complete(out, &command);
            }
            Err(e) => e.write(out),
        },
        "RELOAD" => match shared.reload() {
            Ok(notes) => {
                for n in notes {
                    ErrorMessage::new(Severity::Notice, sqlstate::SUCCESSFUL_COMPLETION, n)
                        .write(out);
                }
                backend::command_complete(out, "RELOAD");
            }
            Err(e) => error(
                out,
                sqlstate::CONFIG_FILE_ERROR,
                format!("the new configuration was rejected; the previous one stays in force: {e}"),
            ),
        },
        "WAKE" => match shared.lifecycle() {
            None => error(
                out,
                sqlstate::OBJECT_NOT_IN_PREREQUISITE_STATE,
                "no [lifecycle] provider is configured".into(),
            ),
            Some(l) => match l.wake_now().await {
                Ok(()) => backend::command_complete(out, "WAKE"),
                Err(e) => error(out, sqlstate::CANNOT_CONNECT_NOW, format!("wake: {e}")),
            },
        },
        "SLEEP" => match shared.lifecycle() {
            None => error(
                out,
                sqlstate::OBJECT_NOT_IN_PREREQUISITE_STATE,
                "no [lifecycle] provider is configured".into(),
            ),
            Some(l) => {
                let busy: usize = shared.pools().iter().map(|p| p.snapshot().active()).sum();
                if busy > 0 {
                    error(
                        out,
                        sqlstate::OBJECT_NOT_IN_PREREQUISITE_STATE,
                        format!("{busy} server connections are in use; PAUSE first"),
                    );
                } else {
                    for p in shared.pools() {
                        p.drain_idle();
                    }
                    match l.stop_server("SLEEP from the admin console").await {
                        Ok(()) => backend::command_complete(out, "SLEEP"),
                        Err(e) => error(out, sqlstate::CONNECTION_FAILURE, format!("sleep: {e}")),
                    }
                }
            }
        },
        "SHUTDOWN" => {
            shared.request_shutdown();
            backend::command_complete(out, "SHUTDOWN");
            return true;
        }
        _ => error(
            out,
            sqlstate::SYNTAX_ERROR,
            format!("unknown admin console command {text:?}; try: {HELP}"),
        ),
    }
    false
}

/// `SHOW HELP`: the commands, as a notice.
fn help(out: &mut BytesMut) {
    ErrorMessage::new(Severity::Notice, sqlstate::SUCCESSFUL_COMPLETION, HELP).write(out);
    backend::command_complete(out, "SHOW");
}
