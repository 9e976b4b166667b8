//! The SQLSTATE codes pgwake sends itself. Names follow PostgreSQL's
//! `errcodes.txt`; only the codes pgwake uses are listed.

/// `08P01` protocol_violation: malformed or unexpected message.
pub const PROTOCOL_VIOLATION: &str = "08P01";
/// `08001` sqlclient_unable_to_establish_sqlconnection: the server cannot be reached.
pub const UNABLE_TO_CONNECT: &str = "08001";
/// `08006` connection_failure: an established server connection broke.
pub const CONNECTION_FAILURE: &str = "08006";
/// `0A000` feature_not_supported.
pub const FEATURE_NOT_SUPPORTED: &str = "0A000";
/// `28000` invalid_authorization_specification.
pub const INVALID_AUTHORIZATION: &str = "28000";
/// `28P01` invalid_password.
pub const INVALID_PASSWORD: &str = "28P01";
/// `3D000` invalid_catalog_name: the database does not exist.
pub const INVALID_CATALOG_NAME: &str = "3D000";
/// `53300` too_many_connections.
pub const TOO_MANY_CONNECTIONS: &str = "53300";
/// `57P01` admin_shutdown.
pub const ADMIN_SHUTDOWN: &str = "57P01";
/// `57P03` cannot_connect_now.
pub const CANNOT_CONNECT_NOW: &str = "57P03";
/// `57014` query_canceled.
pub const QUERY_CANCELED: &str = "57014";
/// `53200` out_of_memory.
pub const OUT_OF_MEMORY: &str = "53200";
/// `54000` program_limit_exceeded.
pub const PROGRAM_LIMIT_EXCEEDED: &str = "54000";

/// `00000`: successful completion (the code notices carry).
pub const SUCCESSFUL_COMPLETION: &str = "00000";
pub const CONFIG_FILE_ERROR: &str = "F0000";
pub const OBJECT_NOT_IN_PREREQUISITE_STATE: &str = "55000";
pub const SYNTAX_ERROR: &str = "42601";
pub const INSUFFICIENT_PRIVILEGE: &str = "42501";
pub const IDLE_IN_TRANSACTION_TIMEOUT: &str = "25P03";
pub const IDLE_SESSION_TIMEOUT: &str = "57P05";
/// `42704` undefined_object (PostgreSQL's for an unknown setting).
pub const UNDEFINED_OBJECT: &str = "42704";
pub const INVALID_PARAMETER_VALUE: &str = "22023";
/// `55P02` cant_change_runtime_param: only a restart changes it.
pub const CANT_CHANGE_RUNTIME_PARAM: &str = "55P02";
