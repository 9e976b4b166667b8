//! pgwake's own queries on a server connection (resetting it, asking the
//! server for a user's verifier): sent, and their replies read, outside any
//! client's traffic.

use std::io;
use std::time::Duration;

use bytes::{Buf, BytesMut};
use pgwake_protocol::backend::{parse, ErrorMessage};
use pgwake_protocol::Scanned;
use postgres_protocol::message::frontend;
use tokio::io::AsyncWriteExt;

use super::{inspected_server_frame, ServerConn};

impl ServerConn {
    /// Sends `sql` as a simple query and reads until its ReadyForQuery,
    /// discarding the replies. Returns the first error the server sent.
    pub(crate) async fn run_internal(
        &mut self,
        sql: &str,
        timeout: Duration,
    ) -> Result<Option<ErrorMessage>, io::Error> {
        let mut out = BytesMut::new();
        frontend::query(sql, &mut out)?;
        match tokio::time::timeout(timeout, self.exchange(&out, b'Q')).await {
            Ok(r) => r,
            Err(_) => Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "server did not answer in time",
            )),
        }
        .inspect_err(|_| self.broken = true)
    }

    /// Writes `msg` (containing one message counted in TxState by `tag`) and
    /// drains replies until nothing is owed.
    async fn exchange(&mut self, msg: &[u8], tag: u8) -> io::Result<Option<ErrorMessage>> {
        self.tx.sent(tag);
        self.stream.write_all(msg).await?;
        self.drain().await
    }

    /// Runs `sql` with text parameters `params` (extended protocol, the
    /// unnamed statement) and returns its first row, each column as text.
    pub(crate) async fn query_row(
        &mut self,
        sql: &str,
        params: &[&str],
        timeout: Duration,
    ) -> io::Result<Result<Option<Row>, ErrorMessage>> {
        let invalid =
            |e: &dyn std::fmt::Display| io::Error::new(io::ErrorKind::InvalidInput, e.to_string());
        let mut out = BytesMut::new();
        frontend::parse("", sql, std::iter::empty(), &mut out)?;
        frontend::bind(
            "",
            "",
            std::iter::empty(),
            params.iter(),
            |p, buf| {
                buf.extend_from_slice(p.as_bytes());
                Ok(postgres_protocol::IsNull::No)
            },
            Some(0),
            &mut out,
        )
        .map_err(|e| match e {
            frontend::BindError::Conversion(e) => invalid(&e),
            frontend::BindError::Serialization(e) => e,
        })?;
        frontend::execute("", 0, &mut out)?;
        frontend::sync(&mut out);
        let mut rows = Vec::new();
        let run = async {
            self.tx.sent(b'S');
            self.stream.write_all(&out).await?;
            self.drain_collecting(Some(&mut rows)).await
        };
        let error = match tokio::time::timeout(timeout, run).await {
            Ok(r) => r.inspect_err(|_| self.broken = true)?,
            Err(_) => {
                self.broken = true;
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "server did not answer in time",
                ));
            }
        };
        Ok(match error {
            Some(e) => Err(e),
            None => Ok(rows.into_iter().next()),
        })
    }

    /// Reads and discards server output until every owed ReadyForQuery has
    /// arrived; returns the first error seen.
    pub(crate) async fn drain(&mut self) -> io::Result<Option<ErrorMessage>> {
        self.drain_collecting(None).await
    }

    /// As [`Self::drain`], keeping the first DataRow in `rows` when given.
    async fn drain_collecting(
        &mut self,
        mut rows: Option<&mut Vec<Row>>,
    ) -> io::Result<Option<ErrorMessage>> {
        let mut first_error = None;
        let collect = rows.is_some();
        while self.tx.owed > 0 {
            let mut pos = 0;
            loop {
                let step = self
                    .scan
                    .next(&self.buf, pos, |t| {
                        inspected_server_frame(t) || (collect && t == b'D')
                    })
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
                let Some((item, next)) = step else { break };
                if let Scanned::Frame { tag, body } = item {
                    if tag == b'D' {
                        if let Some(rows) = rows.as_deref_mut().filter(|r| r.is_empty()) {
                            rows.push(text_row(body));
                        }
                    } else if tag == b'E' {
                        if first_error.is_none() {
                            first_error =
                                Some(ErrorMessage::from_fields(parse::error_fields(body)));
                        }
                    } else {
                        let body = body.to_vec();
                        self.observe(tag, &body);
                    }
                }
                pos = next;
            }
            self.buf.advance(pos);
            if self.tx.owed > 0 {
                self.read_more().await?;
            }
        }
        Ok(first_error)
    }
}

/// A row's columns as text (`None`: NULL).
pub(crate) type Row = Vec<Option<String>>;

/// A DataRow body, columns as (lossy) text; a malformed row ends early.
fn text_row(body: &[u8]) -> Row {
    let Ok(columns) = parse::data_row(body) else {
        return Row::new();
    };
    columns
        .map_while(Result::ok)
        .map(|c| c.map(|v| String::from_utf8_lossy(v).into_owned()))
        .collect()
}
