//! Operating pgwake: the admin HTTP server (metrics, health, readiness) and
//! the PgBouncer-compatible admin console.

mod commands;
pub(crate) mod console;
pub(crate) mod http;
mod report;
mod set;
mod usage;
