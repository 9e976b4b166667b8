//! The periodic statistics line (`log.stats_period`), as PgBouncer's
//! `stats_period` line: per database, what its pools did in the period.
//! Off (`0s`) by default; a reload or `SET` turns it on or off.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::pool::totals_by_database;
use crate::stats::Totals;
use crate::Shared;

/// Logs the line every `log.stats_period` until pgwake stops; waits for a
/// configuration change while it is off.
pub(crate) async fn run(shared: Arc<Shared>) {
    // The period in force, when the current one began, and the counts then.
    let mut current: Option<(Duration, Instant, BTreeMap<String, Totals>)> = None;
    loop {
        let changed = shared.reconfigured.notified();
        tokio::pin!(changed);
        // Registered before the configuration is read: no change is missed.
        changed.as_mut().enable();
        let period = shared.config().log.stats_period;
        if period.is_zero() {
            current = None;
            changed.await;
            continue;
        }
        let (since, from) = match current.take() {
            Some((p, since, from)) if p == period => (since, from),
            _ => (Instant::now(), totals_by_database(&shared.pools())),
        };
        tokio::select! {
            _ = tokio::time::sleep_until(since + period) => {
                let now = totals_by_database(&shared.pools());
                log_line(&now, &from, period);
                current = Some((period, since + period, now));
            }
            _ = &mut changed => current = Some((period, since, from)),
        }
    }
}

fn log_line(now: &BTreeMap<String, Totals>, from: &BTreeMap<String, Totals>, period: Duration) {
    let secs = period.as_secs().max(1);
    for (database, totals) in now {
        let d = totals.since(from.get(database).unwrap_or(&Totals::default()));
        let (xact, query, wait) = d.averages();
        tracing::info!(
            database = %database,
            "stats: {} xacts/s, {} queries/s, in {} B/s, out {} B/s, xact {xact} us, query {query} us, wait {wait} us",
            d.xacts / secs,
            d.queries / secs,
            d.received / secs,
            d.sent / secs,
        );
    }
}
