//! Writing to a plain socket without a future when it takes the bytes at
//! once: the common case for a pooler's small messages. A leaf, shared by
//! the client side (`client_io`) and the server side (`tls::ServerStream`).

use std::io;

use tokio::io::{AsyncWrite, AsyncWriteExt};

/// A plain socket that can be written without waiting.
pub(crate) trait TryWrite: AsyncWrite + Unpin {
    fn try_write_now(&mut self, data: &[u8]) -> io::Result<usize>;
}

impl TryWrite for tokio::net::TcpStream {
    fn try_write_now(&mut self, data: &[u8]) -> io::Result<usize> {
        self.try_write(data)
    }
}

impl TryWrite for tokio::net::UnixStream {
    fn try_write_now(&mut self, data: &[u8]) -> io::Result<usize> {
        self.try_write(data)
    }
}

/// Writes all of `data` to a plain socket: first at once, without a
/// future, which mostly takes it all (no flush is needed: a socket holds
/// nothing back); then the rest as `write_all` does.
pub(crate) async fn send_plain<S: TryWrite>(s: &mut S, data: &[u8]) -> io::Result<()> {
    let n = match s.try_write_now(data) {
        Ok(n) => n,
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => 0,
        Err(e) => return Err(e),
    };
    match data.get(n..) {
        Some(rest) if !rest.is_empty() => s.write_all(rest).await,
        _ => Ok(()),
    }
}
