//! The admin console's commands over databases and clients, with
//! PgBouncer's meanings: `PAUSE [db]`, `RESUME [db]`, `RECONNECT [db]`,
//! `KILL [db]`, `KILL_CLIENT id`, `WAIT_CLOSE [db]`, `DISABLE db`,
//! `ENABLE db`, and `SUSPEND` (refused: see [`suspend`]).

use std::time::Duration;

use pgwake_protocol::backend::ErrorMessage;
use pgwake_protocol::sqlstate;

use super::console::is_console;
use crate::clients::Kill;
use crate::pool::Pool;
use crate::Shared;

/// Runs `command` (upper case) with its argument; `Ok`: notices for the
/// console user, then the command's completion.
pub(super) async fn run(
    shared: &Shared,
    command: &str,
    arg: Option<&str>,
) -> Result<Vec<String>, ErrorMessage> {
    let db = match (command, arg) {
        ("KILL_CLIENT", _) => None,
        (_, Some(a)) => Some(database(shared, command, a)?),
        ("DISABLE" | "ENABLE", None) => {
            return Err(ErrorMessage::error(
                sqlstate::SYNTAX_ERROR,
                format!("{command} needs a database: {command} db"),
            ))
        }
        (_, None) => None,
    };
    let db = db.as_deref();
    match command {
        "PAUSE" => pause(shared, db).await,
        "RESUME" => Ok(resume(shared, db)),
        "RECONNECT" => {
            let pools = pools_of(shared, db);
            for p in &pools {
                p.reconnect();
            }
            tracing::info!(
                database = db.unwrap_or("(all)"),
                pools = pools.len(),
                "RECONNECT: server connections close as they are released; new ones replace them"
            );
            Ok(Vec::new())
        }
        "KILL" => Ok(kill(shared, db)),
        "KILL_CLIENT" => kill_client(shared, arg),
        "WAIT_CLOSE" => {
            wait_close(shared, db).await;
            Ok(Vec::new())
        }
        "DISABLE" | "ENABLE" => {
            let name = db.unwrap_or_default();
            let disable = command == "DISABLE";
            let was = shared.control.disable(name, disable);
            tracing::info!(
                database = name,
                "{command}: new logins to this database are {}",
                if disable { "refused" } else { "accepted" }
            );
            Ok(if was == disable {
                vec![format!(
                    "database {name} was {}d already",
                    command.to_ascii_lowercase()
                )]
            } else {
                Vec::new()
            })
        }
        _ => Err(suspend()),
    }
}

/// The database an argument names (`"quoted"` for names with other
/// characters): one the configuration serves, never the console's own.
fn database(shared: &Shared, command: &str, arg: &str) -> Result<String, ErrorMessage> {
    let name = match arg.strip_prefix('"').and_then(|a| a.strip_suffix('"')) {
        Some(quoted) => quoted.replace("\"\"", "\""),
        None => arg.to_owned(),
    };
    if is_console(&name) {
        return Err(ErrorMessage::error(
            sqlstate::OBJECT_NOT_IN_PREREQUISITE_STATE,
            format!("{command} does not apply to the admin console ({name})"),
        ));
    }
    // A database no longer configured may still be paused or disabled.
    let flagged = shared.control.paused_db(&name) || shared.control.disabled(&name);
    let lifting = matches!(command, "RESUME" | "ENABLE") && flagged;
    if shared.config().route(&name).is_none() && !lifting {
        return Err(ErrorMessage::error(
            sqlstate::INVALID_CATALOG_NAME,
            format!("no such database: {name} (not listed under [databases])"),
        ));
    }
    Ok(name)
}

/// The pools serving `db` (its client database name), or every pool.
fn pools_of(shared: &Shared, db: Option<&str>) -> Vec<Pool> {
    let mut pools = shared.pools();
    pools.retain(|p| db.is_none_or(|d| p.key().database == d));
    pools
}

/// Looks at `done` every 20 ms until it holds; pgwake shutting down ends
/// the wait too.
async fn wait_until(shared: &Shared, mut done: impl FnMut() -> bool) {
    while !done() && !shared.shutdown.is_cancelled() {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `PAUSE [db]`: no new transactions start (for `db`, or at all); returns
/// once those in flight have finished. A RESUME meanwhile ends the wait.
async fn pause(shared: &Shared, db: Option<&str>) -> Result<Vec<String>, ErrorMessage> {
    let was = match db {
        None => shared.pause(),
        Some(d) => {
            let was = shared.control.pause(Some(d));
            if !was {
                tracing::info!(
                    database = d,
                    "PAUSE: no new transactions start on this database until RESUME {d}"
                );
            }
            was
        }
    };
    let paused = || match db {
        None => shared.control.paused_all(),
        Some(d) => shared.control.paused_db(d),
    };
    let busy = || {
        pools_of(shared, db)
            .iter()
            .map(|p| p.snapshot().active())
            .sum::<usize>()
    };
    wait_until(shared, || busy() == 0 || !paused()).await;
    Ok(if was {
        vec![format!("{} was paused already", what(db))]
    } else {
        Vec::new()
    })
}

/// `RESUME [db]`: ends `PAUSE` (or `KILL`) for everything or for `db`. A
/// database paused on its own stays paused after a `RESUME` of everything.
fn resume(shared: &Shared, db: Option<&str>) -> Vec<String> {
    let was = match db {
        None => shared.resume(),
        Some(d) => {
            let was = shared.control.resume(Some(d));
            if was {
                tracing::info!(
                    database = d,
                    "RESUME: transactions on this database start again"
                );
            }
            was
        }
    };
    let mut notices = Vec::new();
    if !was {
        notices.push(format!("{} was not paused", what(db)));
    }
    if db.is_none() {
        let names: Vec<String> = shared
            .pools()
            .into_iter()
            .map(|p| p.key().database.clone())
            .filter(|d| shared.control.paused_db(d))
            .collect();
        if !names.is_empty() {
            notices.push(format!(
                "still paused on their own (RESUME db ends it): {}",
                names.join(", ")
            ));
        }
    }
    notices
}

fn what(db: Option<&str>) -> String {
    db.map_or_else(|| "pgwake".to_owned(), |d| format!("database {d}"))
}

/// `KILL [db]`: its clients are disconnected at once (a statement running
/// is cancelled), its server connections closed, and it stays paused
/// until `RESUME [db]`: new clients wait.
fn kill(shared: &Shared, db: Option<&str>) -> Vec<String> {
    match db {
        None => {
            shared.pause();
        }
        Some(d) => {
            shared.control.pause(Some(d));
        }
    }
    let mut clients = 0;
    for c in shared.clients.all() {
        if db.is_none_or(|d| c.database() == d) {
            c.kill(Kill::Database);
            clients += 1;
        }
    }
    let idle: usize = pools_of(shared, db).iter().map(Pool::drain_idle).sum();
    tracing::info!(
        database = db.unwrap_or("(all)"),
        clients,
        idle_server_connections = idle,
        "KILL: clients disconnected and server connections closed; paused until RESUME"
    );
    vec![format!(
        "{clients} clients disconnected; {} paused until RESUME{}",
        what(db),
        db.map(|d| format!(" {d}")).unwrap_or_default()
    )]
}

/// `KILL_CLIENT id`: the client with the `id` SHOW CLIENTS shows (its
/// `ptr`, in hex, works too) is disconnected, and its server connection
/// closed.
fn kill_client(shared: &Shared, arg: Option<&str>) -> Result<Vec<String>, ErrorMessage> {
    let Some(arg) = arg else {
        return Err(ErrorMessage::error(
            sqlstate::SYNTAX_ERROR,
            "KILL_CLIENT needs a client id: the id column of SHOW CLIENTS",
        ));
    };
    let id = match arg.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => arg.parse(),
    }
    .map_err(|_| {
        ErrorMessage::error(
            sqlstate::INVALID_PARAMETER_VALUE,
            format!("invalid client id {arg:?}: expected the id column of SHOW CLIENTS, a number"),
        )
    })?;
    let Some(client) = shared.clients.get(id) else {
        return Err(ErrorMessage::error(
            sqlstate::UNDEFINED_OBJECT,
            format!("no client with id {id} (SHOW CLIENTS lists them)"),
        ));
    };
    client.kill(Kill::Client);
    tracing::info!(
        id,
        peer = %client.peer(),
        database = %client.database(),
        user = %client.user(),
        "KILL_CLIENT: client disconnected"
    );
    Ok(Vec::new())
}

/// `WAIT_CLOSE [db]`: returns once the server connections made before the
/// last `RECONNECT` or change of server settings (reload) have closed.
async fn wait_close(shared: &Shared, db: Option<&str>) {
    let closing = || {
        pools_of(shared, db)
            .iter()
            .map(Pool::closing)
            .sum::<usize>()
    };
    let n = closing();
    if n > 0 {
        tracing::info!(
            database = db.unwrap_or("(all)"),
            "WAIT_CLOSE: waiting for {n} server connections made before the last RECONNECT or reload to close"
        );
        wait_until(shared, || closing() == 0).await;
    }
}

/// PgBouncer's `SUSPEND` flushes every socket and stops reading from them
/// so that a new process can take the sockets over (`pgbouncer -R`, its
/// online restart). pgwake has no such hand-over, so a suspended pgwake
/// could only wait for a RESUME: refused, with what to use instead.
fn suspend() -> ErrorMessage {
    ErrorMessage::error(
        sqlstate::FEATURE_NOT_SUPPORTED,
        "SUSPEND is not supported: it readies PgBouncer's online restart (handing its open sockets to a new process), which pgwake does not have",
    )
    .with_hint("PAUSE holds new transactions until RESUME; SIGTERM stops pgwake gracefully (transactions in flight finish, idle clients are told)")
}
