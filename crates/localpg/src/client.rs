//! A minimal PostgreSQL client: startup, authentication (trust, cleartext,
//! MD5, SCRAM-SHA-256) and the simple query protocol, over plain TCP.
//!
//! Why not tokio-postgres: this crate ships in the pgwake binary for
//! `pgwake demo`, whose clients only run a few statements and read text
//! results. Built on postgres-protocol's message codecs and SCRAM, which
//! pgwake already uses, it adds no dependency to the binary; and unlike a
//! `psql` process per statement it runs the demo's 50 clients as tasks.

use std::fmt;
use std::io;
use std::time::Duration;

use bytes::BytesMut;
use fallible_iterator::FallibleIterator;
use postgres_protocol::authentication::md5_hash;
use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256, SCRAM_SHA_256};
use postgres_protocol::message::backend::{ErrorFields, Header, Message};
use postgres_protocol::message::frontend;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Bound on reaching the server's port.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Bound on the login and on each query's reply. Above the demo's
/// `wake_timeout` (60 s): a client of a stopped server waits for pgwake to
/// start it, and should hear pgwake's verdict rather than time out first.
const REPLY_TIMEOUT: Duration = Duration::from_secs(120);
/// Largest server message accepted, checked before buffering it. The rows
/// this client reads are small; a bigger length means a broken stream.
const MAX_MESSAGE: usize = 16 << 20;

/// A connection that has logged in and is ready for queries.
///
/// Dropping it sends Terminate (when the socket takes it at once) and closes.
#[derive(Debug)]
pub struct Client {
    stream: TcpStream,
    buf: BytesMut,
}

/// One row of a result, each value as text (`None` for NULL).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row(Vec<Option<String>>);

impl Row {
    /// The value of column `i`; `None` for NULL or a column that is not there.
    pub fn get(&self, i: usize) -> Option<&str> {
        self.0.get(i).and_then(|v| v.as_deref())
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// An ErrorResponse from the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerError {
    /// `ERROR`, `FATAL` or `PANIC`.
    pub severity: String,
    /// The SQLSTATE, e.g. `28P01`.
    pub code: String,
    pub message: String,
}

impl fmt::Display for ServerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: {} (SQLSTATE {})",
            self.severity, self.message, self.code
        )
    }
}

impl ServerError {
    fn parse(mut fields: ErrorFields<'_>) -> Result<ServerError, ClientError> {
        let mut e = ServerError {
            severity: String::new(),
            code: String::new(),
            message: String::new(),
        };
        while let Some(field) = fields.next().map_err(malformed)? {
            let value = String::from_utf8_lossy(field.value_bytes()).into_owned();
            match field.type_() {
                // V is never localized; S is, and is the only one before 9.6.
                b'V' => e.severity = value,
                b'S' if e.severity.is_empty() => e.severity = value,
                b'C' => e.code = value,
                b'M' => e.message = value,
                _ => {}
            }
        }
        Ok(e)
    }
}

/// Why a connection or a query failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    #[error("cannot connect to {addr}")]
    Connect {
        addr: String,
        #[source]
        source: io::Error,
    },
    #[error("the server did not answer within {0:?}")]
    Timeout(Duration),
    #[error("the connection failed")]
    Io(#[from] io::Error),
    #[error("the server closed the connection")]
    Closed,
    #[error("{0}")]
    Server(ServerError),
    #[error("the server asks for a password and none was given")]
    NoPassword,
    #[error("the server asks for an authentication method this client lacks ({0})")]
    UnsupportedAuth(String),
    #[error("SCRAM authentication failed: {0}")]
    Scram(io::Error),
    #[error("a server message of {0} bytes is over this client's limit")]
    TooLarge(usize),
    #[error("unexpected from the server: {0}")]
    Protocol(String),
}

impl ClientError {
    /// The SQLSTATE when the server refused with an ErrorResponse.
    pub fn code(&self) -> Option<&str> {
        match self {
            ClientError::Server(e) => Some(&e.code),
            _ => None,
        }
    }
}

fn malformed(e: io::Error) -> ClientError {
    ClientError::Protocol(format!("a malformed message ({e})"))
}

impl Client {
    /// Connects over TCP (no TLS) and logs in as `user` to `database`.
    pub async fn connect(
        host: &str,
        port: u16,
        user: &str,
        password: Option<&str>,
        database: &str,
    ) -> Result<Client, ClientError> {
        let addr = format!("{host}:{port}");
        let stream = match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(&addr)).await {
            Ok(Ok(stream)) => stream,
            Ok(Err(source)) => return Err(ClientError::Connect { addr, source }),
            Err(_) => return Err(ClientError::Timeout(CONNECT_TIMEOUT)),
        };
        // Requests are small and each waits for its reply.
        stream.set_nodelay(true)?;
        let mut client = Client {
            stream,
            buf: BytesMut::with_capacity(8192),
        };
        tokio::time::timeout(REPLY_TIMEOUT, client.login(user, password, database))
            .await
            .map_err(|_| ClientError::Timeout(REPLY_TIMEOUT))??;
        Ok(client)
    }

    /// Runs `sql` (one statement, or several separated by `;`) with the
    /// simple query protocol and returns the rows of its results.
    ///
    /// Not cancel-safe: dropped midway, it leaves the connection in the
    /// middle of a reply, so the client must be dropped too.
    pub async fn simple_query(&mut self, sql: &str) -> Result<Vec<Row>, ClientError> {
        let mut out = BytesMut::new();
        frontend::query(sql, &mut out)?;
        tokio::time::timeout(REPLY_TIMEOUT, async {
            self.stream.write_all(&out).await?;
            self.read_results().await
        })
        .await
        .map_err(|_| ClientError::Timeout(REPLY_TIMEOUT))?
    }

    /// [`Client::simple_query`] for statements whose rows do not matter.
    pub async fn batch_execute(&mut self, sql: &str) -> Result<(), ClientError> {
        self.simple_query(sql).await.map(drop)
    }

    async fn login(
        &mut self,
        user: &str,
        password: Option<&str>,
        database: &str,
    ) -> Result<(), ClientError> {
        let mut out = BytesMut::new();
        frontend::startup_message(
            [
                ("user", user),
                ("database", database),
                ("client_encoding", "UTF8"),
            ],
            &mut out,
        )?;
        self.send(&mut out).await?;
        let password = || password.map(str::as_bytes).ok_or(ClientError::NoPassword);
        let mut scram: Option<ScramSha256> = None;
        // Bounded by REPLY_TIMEOUT, which the caller puts around the login.
        loop {
            match self.read_message().await? {
                Message::AuthenticationOk => {}
                Message::AuthenticationCleartextPassword => {
                    frontend::password_message(password()?, &mut out)?;
                    self.send(&mut out).await?;
                }
                Message::AuthenticationMd5Password(body) => {
                    let hash = md5_hash(user.as_bytes(), password()?, body.salt());
                    frontend::password_message(hash.as_bytes(), &mut out)?;
                    self.send(&mut out).await?;
                }
                Message::AuthenticationSasl(body) => {
                    let mut mechanisms = body.mechanisms();
                    let mut offered = Vec::new();
                    while let Some(m) = mechanisms.next().map_err(malformed)? {
                        offered.push(m.to_string());
                    }
                    if !offered.iter().any(|m| m == SCRAM_SHA_256) {
                        return Err(ClientError::UnsupportedAuth(format!(
                            "SASL {}",
                            offered.join(", ")
                        )));
                    }
                    // Plain TCP: there is no TLS channel to bind to.
                    let s = ScramSha256::new(password()?, ChannelBinding::unsupported());
                    frontend::sasl_initial_response(SCRAM_SHA_256, s.message(), &mut out)?;
                    self.send(&mut out).await?;
                    scram = Some(s);
                }
                Message::AuthenticationSaslContinue(body) => {
                    let s = scram.as_mut().ok_or_else(|| {
                        ClientError::Protocol("SASLContinue before SASL".to_string())
                    })?;
                    s.update(body.data()).map_err(ClientError::Scram)?;
                    frontend::sasl_response(s.message(), &mut out)?;
                    self.send(&mut out).await?;
                }
                Message::AuthenticationSaslFinal(body) => {
                    let mut s = scram.take().ok_or_else(|| {
                        ClientError::Protocol("SASLFinal before SASL".to_string())
                    })?;
                    // Checks the server's signature: it knew the password too.
                    s.finish(body.data()).map_err(ClientError::Scram)?;
                }
                Message::AuthenticationKerberosV5 => return Err(unsupported("Kerberos V5")),
                Message::AuthenticationScmCredential => return Err(unsupported("SCM")),
                Message::AuthenticationGss | Message::AuthenticationGssContinue(_) => {
                    return Err(unsupported("GSSAPI"))
                }
                Message::AuthenticationSspi => return Err(unsupported("SSPI")),
                Message::ErrorResponse(body) => {
                    return Err(ClientError::Server(ServerError::parse(body.fields())?))
                }
                Message::ParameterStatus(_)
                | Message::BackendKeyData(_)
                | Message::NoticeResponse(_) => {}
                Message::ReadyForQuery(_) => return Ok(()),
                _ => return Err(ClientError::Protocol("a message during login".to_string())),
            }
        }
    }

    /// Reads the replies to one Query up to ReadyForQuery: the rows, or the
    /// first error (after which the server skips the rest of the query).
    async fn read_results(&mut self) -> Result<Vec<Row>, ClientError> {
        let mut rows = Vec::new();
        let mut error = None;
        // Bounded by REPLY_TIMEOUT, which the caller puts around the query.
        loop {
            let message = match self.read_message().await {
                Ok(m) => m,
                // A FATAL error (e.g. the server shutting down) comes before
                // the close, and says more than the close.
                Err(ClientError::Closed) => {
                    return Err(error.map_or(ClientError::Closed, ClientError::Server))
                }
                Err(e) => return Err(e),
            };
            match message {
                Message::DataRow(body) => {
                    let mut values = Vec::new();
                    let mut ranges = body.ranges();
                    while let Some(range) = ranges.next().map_err(malformed)? {
                        let value = match range {
                            None => None,
                            Some(r) => {
                                let bytes = body.buffer().get(r).ok_or_else(|| {
                                    ClientError::Protocol("a DataRow value out of bounds".into())
                                })?;
                                Some(String::from_utf8(bytes.to_vec()).map_err(|_| {
                                    ClientError::Protocol("a value that is not UTF-8".into())
                                })?)
                            }
                        };
                        values.push(value);
                    }
                    rows.push(Row(values));
                }
                Message::ErrorResponse(body) => {
                    error.get_or_insert(ServerError::parse(body.fields())?);
                }
                Message::RowDescription(_)
                | Message::CommandComplete(_)
                | Message::EmptyQueryResponse
                | Message::NoticeResponse(_)
                | Message::ParameterStatus(_)
                | Message::NotificationResponse(_) => {}
                Message::ReadyForQuery(_) => {
                    return match error {
                        Some(e) => Err(ClientError::Server(e)),
                        None => Ok(rows),
                    }
                }
                Message::CopyInResponse(_) | Message::CopyOutResponse(_) => {
                    return Err(ClientError::Protocol(
                        "COPY, which this client lacks".into(),
                    ))
                }
                _ => return Err(ClientError::Protocol("a message after Query".to_string())),
            }
        }
    }

    /// Writes and empties `out`.
    async fn send(&mut self, out: &mut BytesMut) -> Result<(), ClientError> {
        self.stream.write_all(out).await?;
        out.clear();
        Ok(())
    }

    /// The next message from the server.
    async fn read_message(&mut self) -> Result<Message, ClientError> {
        // Bounded: a pass that does not return reads at least one byte into
        // an incomplete message, and no message over MAX_MESSAGE is awaited.
        loop {
            if let Some(header) = Header::parse(&self.buf)? {
                let len = usize::try_from(header.len()).unwrap_or(usize::MAX);
                if len >= MAX_MESSAGE {
                    return Err(ClientError::TooLarge(len));
                }
            }
            if let Some(message) = Message::parse(&mut self.buf)? {
                return Ok(message);
            }
            if self.stream.read_buf(&mut self.buf).await? == 0 {
                return Err(ClientError::Closed);
            }
        }
    }
}

fn unsupported(method: &str) -> ClientError {
    ClientError::UnsupportedAuth(method.to_string())
}

impl Drop for Client {
    fn drop(&mut self) {
        // Terminate says the client is leaving, as libpq does on close, so
        // the server need not treat it as a lost connection. Best effort:
        // Drop cannot wait, and a closed socket says much the same.
        let mut out = BytesMut::new();
        frontend::terminate(&mut out);
        let _ = self.stream.try_write(&out);
    }
}
