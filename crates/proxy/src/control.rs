//! What the admin console (and SIGUSR1/SIGUSR2) hold back, with
//! PgBouncer's meanings: `PAUSE` for every database or one (`KILL` pauses
//! too), `RESUME` to let transactions start again, `DISABLE` to refuse new
//! logins to a database.
//!
//! Sessions ask [`Control::holds`] before every transaction: one atomic
//! load while nothing is paused for a single database.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// Flags of one database (a client database name).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct DbFlags {
    /// `PAUSE db` or `KILL db`: no transaction starts until `RESUME db`.
    paused: bool,
    /// `DISABLE db`: new logins are refused until `ENABLE db`.
    disabled: bool,
}

#[derive(Default)]
pub(crate) struct Control {
    /// `PAUSE` (or `KILL`) without a database, or SIGUSR1.
    paused: AtomicBool,
    /// Some database has a flag set; `dbs` is read only then.
    any_db: AtomicBool,
    dbs: Mutex<HashMap<String, DbFlags>>,
    /// Woken at every RESUME.
    resumed: Notify,
}

impl Control {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, DbFlags>> {
        self.dbs.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn flags(&self, database: &str) -> DbFlags {
        if !self.any_db.load(Ordering::Relaxed) {
            return DbFlags::default();
        }
        self.lock().get(database).copied().unwrap_or_default()
    }

    /// Changes the flags of `database`; returns them as they were.
    fn update(&self, database: &str, change: impl FnOnce(&mut DbFlags)) -> DbFlags {
        let mut dbs = self.lock();
        let before = dbs.get(database).copied().unwrap_or_default();
        let mut after = before;
        change(&mut after);
        if after == DbFlags::default() {
            dbs.remove(database);
        } else {
            dbs.insert(database.to_owned(), after);
        }
        self.any_db.store(!dbs.is_empty(), Ordering::Relaxed);
        drop(dbs);
        if before.paused && !after.paused {
            self.resumed.notify_waiters();
        }
        before
    }

    /// Whether a transaction for `database` must wait for a RESUME.
    pub fn holds(&self, database: &str) -> bool {
        self.paused.load(Ordering::Relaxed) || self.flags(database).paused
    }

    /// `PAUSE` without a database is in force.
    pub fn paused_all(&self) -> bool {
        self.paused.load(Ordering::Relaxed)
    }

    /// `PAUSE database` (or `KILL database`) is in force.
    pub fn paused_db(&self, database: &str) -> bool {
        self.flags(database).paused
    }

    pub fn disabled(&self, database: &str) -> bool {
        self.flags(database).disabled
    }

    /// Pauses everything (`None`) or one database; whether it was already.
    pub fn pause(&self, database: Option<&str>) -> bool {
        match database {
            None => self.paused.swap(true, Ordering::Relaxed),
            Some(db) => self.update(db, |f| f.paused = true).paused,
        }
    }

    /// Ends a pause of everything (`None`) or of one database; whether
    /// there was one. A database paused on its own stays paused after a
    /// RESUME of everything, as in PgBouncer.
    pub fn resume(&self, database: Option<&str>) -> bool {
        match database {
            None => {
                let was = self.paused.swap(false, Ordering::Relaxed);
                self.resumed.notify_waiters();
                was
            }
            Some(db) => self.update(db, |f| f.paused = false).paused,
        }
    }

    /// `DISABLE` (`true`) or `ENABLE` (`false`) new logins to `database`;
    /// whether it was disabled.
    pub fn disable(&self, database: &str, disabled: bool) -> bool {
        self.update(database, |f| f.disabled = disabled).disabled
    }

    /// Lifts every pause (at shutdown, so that sessions can finish).
    pub fn resume_everything(&self) {
        self.paused.store(false, Ordering::Relaxed);
        for flags in self.lock().values_mut() {
            flags.paused = false;
        }
        self.resumed.notify_waiters();
    }

    /// Waits until transactions for `database` may start, or `stop` is
    /// cancelled. Cancel-safe.
    pub async fn wait_resumed(&self, database: &str, stop: &CancellationToken) {
        loop {
            let resumed = self.resumed.notified();
            if !self.holds(database) || stop.is_cancelled() {
                return;
            }
            tokio::select! {
                _ = resumed => {}
                _ = stop.cancelled() => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_database_pause_is_its_own() {
        let c = Control::default();
        assert!(!c.holds("app") && !c.holds("other"));
        assert!(!c.pause(Some("app")));
        assert!(c.holds("app") && !c.holds("other"));
        // A pause of everything, and its end, leave app's own pause alone.
        assert!(!c.pause(None));
        assert!(c.holds("other"));
        assert!(c.resume(None));
        assert!(c.holds("app") && !c.holds("other"));
        assert!(c.resume(Some("app")));
        assert!(!c.holds("app"));
        assert!(!c.resume(Some("app")), "not paused any more");
        assert!(!c.disable("app", true));
        assert!(c.disabled("app") && !c.holds("app") && !c.disabled("other"));
        assert!(c.disable("app", false));
        assert!(!c.any_db.load(Ordering::Relaxed), "no flags left");
    }

    #[tokio::test]
    async fn waiters_go_on_at_resume() {
        let c = std::sync::Arc::new(Control::default());
        let stop = CancellationToken::new();
        c.pause(Some("app"));
        let waiter = {
            let (c, stop) = (c.clone(), stop.clone());
            tokio::spawn(async move { c.wait_resumed("app", &stop).await })
        };
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        c.resume(Some("app"));
        tokio::time::timeout(std::time::Duration::from_secs(5), waiter)
            .await
            .expect("resumed")
            .expect("no panic");
    }
}
