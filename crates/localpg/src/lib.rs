#![forbid(unsafe_code)]
//! A throwaway local PostgreSQL: a cluster in a temp dir, made and driven
//! with the installed `initdb`, `pg_ctl` and `psql`, and a minimal client
//! for the simple query protocol. `pgwake demo` uses both; the tests use the
//! cluster through pgwake-testkit.
//!
//! The cluster API is synchronous (it drives the tools through
//! `std::process`) so it works the same from plain tests, async tests and
//! the demo. Every child process runs under a timeout.

mod client;
mod cluster;
mod error;
mod pgbin;
mod port;
mod process;

pub use client::{Client, ClientError, Row, ServerError};
pub use cluster::{Cluster, ClusterBuilder, CtlAction, HostAuth};
pub use error::{Error, Exit};
pub use pgbin::PgBin;
pub use port::free_port;

/// The address every cluster listens on.
pub const HOST: &str = "127.0.0.1";
/// The cluster's superuser, trusted over TCP and the unix socket so that the
/// harness never needs a password.
pub const SUPERUSER: &str = "postgres";

/// An SQL identifier, double-quoted.
pub fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

/// A single-quoted literal, valid both in SQL (with
/// standard_conforming_strings) and in postgresql.conf, as long as SQL uses
/// carry no backslashes.
pub fn quote_literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting() {
        assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
        assert_eq!(quote_literal("it's"), "'it''s'");
    }
}
