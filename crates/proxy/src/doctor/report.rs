//! The report `pgwake doctor` prints: the phases, their normal times and
//! usual causes of slowness, one row per phase, and the verdict.

use std::fmt;
use std::time::Duration;

/// What `pgwake doctor` times, in the order a connection goes through them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Phase {
    Config,
    Dns,
    Tcp,
    Tls,
    Token,
    Auth,
    Query,
    Provider,
}

impl Phase {
    /// The row's name in the table.
    pub fn name(self) -> &'static str {
        match self {
            Phase::Config => "config",
            Phase::Dns => "dns",
            Phase::Tcp => "tcp connect",
            Phase::Tls => "tls",
            Phase::Token => "token",
            Phase::Auth => "auth",
            Phase::Query => "first query",
            Phase::Provider => "provider state",
        }
    }

    /// The phase's name in the verdict.
    pub fn label(self) -> &'static str {
        match self {
            Phase::Config => "loading the config",
            Phase::Dns => "DNS",
            Phase::Tcp => "TCP connect",
            Phase::Tls => "TLS",
            Phase::Token => "the token",
            Phase::Auth => "authentication",
            Phase::Query => "the first query",
            Phase::Provider => "the provider state",
        }
    }

    /// Above this the phase is slow. Chosen from what a healthy cloud
    /// deployment shows: name resolution from a cache and a TCP handshake
    /// within a region take a few milliseconds; a TLS handshake is one or
    /// two more round trips plus certificate checks; a token from IMDS or
    /// App Service's endpoint takes tens to a few hundred milliseconds;
    /// SCRAM or Entra token validation tens of milliseconds; `SELECT 1` one
    /// round trip; an ARM GET well under a second.
    pub fn threshold(self) -> Duration {
        Duration::from_millis(match self {
            Phase::Config => 100,
            Phase::Dns => 100,
            Phase::Tcp => 100,
            Phase::Tls => 300,
            Phase::Token => 1000,
            Phase::Auth => 500,
            Phase::Query => 200,
            Phase::Provider => 2000,
        })
    }

    /// What usually makes this phase slow.
    pub fn usual_cause(self) -> &'static str {
        match self {
            Phase::Config => "reading the config file (a slow or network file system)",
            Phase::Dns => "the resolver: a slow or distant DNS server, or a private DNS zone not linked to this network (lookups time out before falling back)",
            Phase::Tcp => "the network path (distance, a NAT or firewall in between), or a server that is stopped or still starting",
            Phase::Tls => "TLS handshake round trips over a long network path, or a long certificate chain",
            Phase::Token => "the identity endpoint (IMDS, or App Service/Container Apps' IDENTITY_ENDPOINT) or the token command; pgwake fetches tokens in the background ahead of expiry, so a client waits for one only when no valid token exists",
            Phase::Auth => "server-side authentication: Entra token validation, pg_hba.conf lookups (LDAP, host names), or SCRAM iterations (password_encryption, scram_iterations)",
            Phase::Query => "a busy server or cold caches right after a start",
            Phase::Provider => "Azure Resource Manager API latency (or the status command)",
        }
    }
}

/// How a phase went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Ok,
    Failed,
    Skipped,
}

impl Outcome {
    pub fn name(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Failed => "failed",
            Outcome::Skipped => "skipped",
        }
    }
}

/// One phase's result.
#[derive(Debug, Clone)]
pub struct Row {
    pub phase: Phase,
    pub outcome: Outcome,
    /// How long the phase took; `None` when it did not run.
    pub took: Option<Duration>,
    /// What happened: the address, the error, why it was skipped.
    pub detail: String,
    /// For a failure: what usually causes this one.
    pub hint: Option<String>,
}

impl Row {
    pub(super) fn ok(phase: Phase, took: Duration, detail: impl Into<String>) -> Row {
        Row {
            phase,
            outcome: Outcome::Ok,
            took: Some(took),
            detail: detail.into(),
            hint: None,
        }
    }

    pub(super) fn skipped(phase: Phase, took: Option<Duration>, detail: impl Into<String>) -> Row {
        Row {
            phase,
            outcome: Outcome::Skipped,
            took,
            detail: detail.into(),
            hint: None,
        }
    }

    pub(super) fn failed(
        phase: Phase,
        took: Option<Duration>,
        detail: impl Into<String>,
        hint: impl Into<String>,
    ) -> Row {
        Row {
            phase,
            outcome: Outcome::Failed,
            took,
            detail: detail.into(),
            hint: Some(hint.into()),
        }
    }

    /// How far over its threshold an ok phase is (above 1.0: slow).
    fn slowness(&self) -> f64 {
        match (self.outcome, self.took) {
            (Outcome::Ok, Some(t)) => t.as_secs_f64() / self.phase.threshold().as_secs_f64(),
            _ => 0.0,
        }
    }

    pub fn is_slow(&self) -> bool {
        self.slowness() > 1.0
    }
}

/// What `pgwake doctor` found: one row per phase, and a one-line verdict.
#[derive(Debug, Clone)]
pub struct Report {
    pub rows: Vec<Row>,
    pub verdict: String,
}

impl Report {
    /// No phase failed: the server answered a query, or it is stopped on
    /// purpose and pgwake will start it when a client arrives.
    pub fn ok(&self) -> bool {
        self.rows.iter().all(|r| r.outcome != Outcome::Failed)
    }

    pub fn row(&self, phase: Phase) -> Option<&Row> {
        self.rows.iter().find(|r| r.phase == phase)
    }
}

impl fmt::Display for Report {
    /// The table, then `verdict: …` on its own line.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{:<16} {:<8} {:>9}   detail", "phase", "result", "time")?;
        for r in &self.rows {
            let time = r.took.map_or_else(|| "-".to_string(), human);
            let mut detail = r.detail.clone();
            if r.is_slow() {
                detail.push_str(&format!(
                    " (slow: normally under {})",
                    limit(r.phase.threshold())
                ));
            }
            writeln!(
                f,
                "{:<16} {:<8} {:>9}   {}",
                r.phase.name(),
                r.outcome.name(),
                time,
                detail
            )?;
        }
        writeln!(f, "verdict: {}", self.verdict)
    }
}

/// A threshold: `100 ms`, `2 s`.
pub(super) fn limit(d: Duration) -> String {
    if d < Duration::from_secs(1) {
        format!("{} ms", d.as_millis())
    } else {
        humantime::format_duration(d).to_string()
    }
}

/// `1.2 ms`, `340.0 ms`, `5.01 s`.
pub fn human(d: Duration) -> String {
    let ms = d.as_secs_f64() * 1000.0;
    if ms < 1000.0 {
        format!("{ms:.1} ms")
    } else {
        format!("{:.2} s", d.as_secs_f64())
    }
}

/// The one-line verdict: the first failed phase with its usual cause; else
/// a server stopped on purpose (`asleep`: the provider's word, and
/// `lifecycle.wake_timeout`); else the phase furthest over its threshold;
/// else that every phase is fast, with the total.
pub(super) fn verdict(rows: &[Row], asleep: Option<(&str, Duration)>) -> String {
    let failed: Vec<&Row> = rows
        .iter()
        .filter(|r| r.outcome == Outcome::Failed)
        .collect();
    if let Some(first) = failed.first() {
        let mut v = format!("{} failed: {}", first.phase.label(), first.detail);
        if let Some(h) = &first.hint {
            v.push_str(" — ");
            v.push_str(h);
        }
        if failed.len() > 1 {
            let others: Vec<&str> = failed[1..].iter().map(|r| r.phase.label()).collect();
            v.push_str(&format!(" (also failed: {})", others.join(", ")));
        }
        return v;
    }
    if let Some((state, wake_timeout)) = asleep {
        return format!(
            "the server is {state}: pgwake will start it when a client arrives (clients wait up to {}, lifecycle.wake_timeout); the login phases were skipped",
            humantime::format_duration(wake_timeout)
        );
    }
    let worst = rows
        .iter()
        .filter(|r| r.is_slow())
        .max_by(|a, b| a.slowness().total_cmp(&b.slowness()));
    if let Some(r) = worst {
        let took = r.took.unwrap_or_default();
        return format!(
            "{} is slow: {} (normally under {}) — usually {}",
            r.phase.label(),
            human(took),
            limit(r.phase.threshold()),
            r.phase.usual_cause()
        );
    }
    let total: Duration = rows.iter().filter_map(|r| r.took).sum();
    format!(
        "every phase is fast: {} in total from loading the config to the first answer",
        human(total)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn the_verdict_names_the_phase_furthest_over_its_threshold() {
        let rows = vec![
            Row::ok(Phase::Dns, ms(150), ""),    // 1.5 × 100 ms
            Row::ok(Phase::Token, ms(3000), ""), // 3 × 1 s
            Row::ok(Phase::Auth, ms(400), ""),   // under 500 ms
        ];
        let v = verdict(&rows, None);
        assert!(
            v.starts_with("the token is slow: 3.00 s (normally under 1s)"),
            "{v}"
        );
    }

    #[test]
    fn a_failure_wins_over_slowness_and_others_are_listed() {
        let rows = vec![
            Row::ok(Phase::Dns, ms(5000), "db -> 10.0.0.1:5432"),
            Row::failed(
                Phase::Tcp,
                Some(ms(1)),
                "connection refused to db:5432",
                "not listening",
            ),
            Row::failed(Phase::Token, Some(ms(1)), "no token", "endpoint"),
            Row::skipped(Phase::Auth, None, "TCP connect failed"),
        ];
        let v = verdict(&rows, Some(("stopped", ms(1000))));
        assert_eq!(
            v,
            "TCP connect failed: connection refused to db:5432 — not listening (also failed: the token)"
        );
    }

    #[test]
    fn asleep_is_not_a_failure_and_fast_says_the_total() {
        let rows = vec![
            Row::ok(Phase::Config, ms(1), ""),
            Row::skipped(Phase::Auth, None, "the server is stopped"),
        ];
        let report = Report {
            verdict: verdict(&rows, Some(("stopped", Duration::from_secs(120)))),
            rows,
        };
        assert!(report.ok());
        assert!(
            report
                .verdict
                .contains("will start it when a client arrives (clients wait up to 2m"),
            "{}",
            report.verdict
        );
        let rows = vec![
            Row::ok(Phase::Config, ms(1), ""),
            Row::ok(Phase::Query, ms(2), ""),
        ];
        assert_eq!(
            verdict(&rows, None),
            "every phase is fast: 3.0 ms in total from loading the config to the first answer"
        );
    }

    #[test]
    fn durations_read_well() {
        assert_eq!(human(Duration::from_micros(250)), "0.2 ms");
        assert_eq!(human(ms(340)), "340.0 ms");
        assert_eq!(human(ms(5012)), "5.01 s");
        assert_eq!(limit(ms(100)), "100 ms");
        assert_eq!(limit(ms(2000)), "2s");
    }

    #[test]
    fn the_table_has_one_aligned_row_per_phase_then_the_verdict() {
        let report = Report {
            rows: vec![
                Row::ok(Phase::Dns, ms(250), "db -> 10.0.0.1:5432"),
                Row::skipped(Phase::Tls, None, "sslmode = disable"),
            ],
            verdict: "DNS is slow".into(),
        };
        let text = report.to_string();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 4, "{text}");
        let col = lines[0].find("detail").unwrap();
        assert_eq!(lines[1].find("db ->"), Some(col), "{text}");
        assert_eq!(lines[2].find("sslmode"), Some(col), "{text}");
        assert!(
            lines[1].ends_with("(slow: normally under 100 ms)"),
            "{text}"
        );
        assert_eq!(lines[3], "verdict: DNS is slow");
    }
}
