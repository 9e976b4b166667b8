#![forbid(unsafe_code)]
//! The parts of the Postgres wire protocol (version 3) that pgwake reads or
//! writes itself. No I/O here: functions take bytes and return values,
//! `Ok(None)` meaning "need more bytes" and `Err` meaning "malformed".
//!
//! The client side of server authentication and the parsing of backend
//! messages at login come from `postgres-protocol`; this crate adds what it
//! lacks for a proxy: reading a stream of frames without copying, reading the
//! bodies of the backend messages pgwake looks into without copying them, the
//! server side of the startup handshake, and writing backend messages to
//! clients.

pub mod backend;
pub mod frame;
pub mod sql;
pub mod sqlcommenter;
pub mod sqlstate;
pub mod startup;

pub use backend::TxStatus;
pub use frame::{FrameError, NextRequest, Scanned, Scanner};
pub use startup::{StartupError, StartupParams, StartupRequest};

/// Size of a message header: one tag byte and a four-byte length.
pub const HEADER_LEN: usize = 5;
