//! A client's byte stream and where it comes from: the one leaf every
//! part of the front door (listener, login, authentication, the admin
//! console, sessions) shares, so none of them imports another for it.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::OwnedFd;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

/// A client byte stream: TCP, unix socket or TLS over TCP.
pub trait ClientStream: AsyncRead + AsyncWrite + Unpin + Send + 'static {
    /// Ready when there is something to read (or EOF), holding no buffer:
    /// an idle client then costs no buffer memory at all. (A poll function
    /// rather than a future: waiting on it adds one pointer to an idle
    /// client's task, where tokio's `readable()` future adds 150 bytes.)
    fn poll_readable(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>>;
    /// Reads what is there without waiting (`WouldBlock` when nothing is).
    fn try_read(&mut self, buf: &mut [u8]) -> io::Result<usize>;
    /// The address the client reached pgwake at (`None` on the unix
    /// socket): a replica's identity for peering.
    fn local_addr(&self) -> Option<SocketAddr> {
        None
    }
    /// The `tls-server-end-point` channel-binding data of an encrypted
    /// connection, for SCRAM-SHA-256-PLUS.
    fn channel_binding(&self) -> Option<&[u8]> {
        None
    }
    /// Whether an idle client on this stream can be parked: its socket
    /// taken out of the runtime ([`Self::into_parked`]) and put back
    /// ([`Self::from_parked`]). Not TLS, whose state is not the socket's.
    const PARKABLE: bool = false;
    /// The socket, out of the runtime (see [`crate::parking`]).
    fn into_parked(self) -> io::Result<OwnedFd>
    where
        Self: Sized,
    {
        Err(io::ErrorKind::Unsupported.into())
    }
    /// The stream again, from the socket [`Self::into_parked`] gave.
    fn from_parked(_socket: OwnedFd) -> io::Result<Self>
    where
        Self: Sized,
    {
        Err(io::ErrorKind::Unsupported.into())
    }
    /// Writes all of `data` and pushes it out (TLS holds written bytes
    /// until flushed; for sockets the flush costs nothing).
    fn send<'a>(
        &'a mut self,
        data: &'a [u8],
    ) -> impl std::future::Future<Output = io::Result<()>> + Send + 'a {
        async move {
            self.write_all(data).await?;
            self.flush().await
        }
    }
}

/// Reads what is there; a read that did not fill `buf` emptied the socket,
/// so its readiness is cleared (as tokio's own `poll_read` does), sparing
/// the next read a system call that would only say "would block".
macro_rules! try_read_draining {
    ($stream:ty) => {
        fn try_read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let cap = buf.len();
            let mut got = 0;
            let r = <$stream>::try_io(self, tokio::io::Interest::READABLE, || {
                let n = <$stream>::try_read(self, buf)?;
                got = n;
                if 0 < n && n < cap {
                    Err(io::ErrorKind::WouldBlock.into())
                } else {
                    Ok(n)
                }
            });
            match r {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock && got > 0 => Ok(got),
                r => r,
            }
        }
    };
}

/// `ClientStream::send` for a plain socket: see [`crate::plain_send::send_plain`].
macro_rules! send_plain {
    () => {
        fn send<'a>(
            &'a mut self,
            data: &'a [u8],
        ) -> impl std::future::Future<Output = io::Result<()>> + Send + 'a {
            crate::plain_send::send_plain(self, data)
        }
    };
}

impl ClientStream for tokio::net::TcpStream {
    fn poll_readable(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.poll_read_ready(cx)
    }
    const PARKABLE: bool = true;
    fn into_parked(self) -> io::Result<OwnedFd> {
        Ok(self.into_std()?.into())
    }
    fn from_parked(socket: OwnedFd) -> io::Result<Self> {
        Self::from_std(socket.into())
    }
    send_plain!();
    fn local_addr(&self) -> Option<SocketAddr> {
        tokio::net::TcpStream::local_addr(self).ok()
    }
    try_read_draining!(tokio::net::TcpStream);
}

impl ClientStream for tokio::net::UnixStream {
    fn poll_readable(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.poll_read_ready(cx)
    }
    const PARKABLE: bool = true;
    fn into_parked(self) -> io::Result<OwnedFd> {
        Ok(self.into_std()?.into())
    }
    fn from_parked(socket: OwnedFd) -> io::Result<Self> {
        Self::from_std(socket.into())
    }
    send_plain!();
    try_read_draining!(tokio::net::UnixStream);
}

impl ClientStream for crate::tls::ClientTls {
    fn poll_readable(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.has_buffered() {
            return Poll::Ready(Ok(()));
        }
        self.tcp().poll_read_ready(cx)
    }

    fn try_read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        crate::tls::ClientTls::try_read(self, buf)
    }

    fn channel_binding(&self) -> Option<&[u8]> {
        self.1.as_deref()
    }

    fn local_addr(&self) -> Option<SocketAddr> {
        self.tcp().local_addr().ok()
    }
}

/// Where a client connects from.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Peer {
    /// `None`: the unix socket.
    pub addr: Option<SocketAddr>,
    pub origin: ClientOrigin,
}

impl Peer {
    pub fn tcp(addr: SocketAddr) -> Peer {
        Peer {
            addr: Some(addr),
            origin: ClientOrigin {
                ip: Some(addr.ip()),
            },
        }
    }

    pub fn unix() -> Peer {
        Peer {
            addr: None,
            origin: ClientOrigin { ip: None },
        }
    }

    /// For logs and SHOW CLIENTS: `ip:port` or `unix socket`, written when
    /// needed (on the stack), not kept per client.
    pub fn text(&self) -> PeerText {
        match self.addr {
            Some(addr) => peer_text(addr),
            None => {
                let mut t = PeerText::new();
                t.push(b"unix socket");
                t
            }
        }
    }
}

impl std::fmt::Display for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.text().as_str())
    }
}

/// A client's address as text, on the stack: the longest, an IPv6 address
/// with a scope id and a port, is 57 bytes.
pub(crate) struct PeerText {
    buf: [u8; 64],
    len: usize,
}

impl PeerText {
    fn new() -> PeerText {
        PeerText {
            buf: [0; 64],
            len: 0,
        }
    }

    fn push(&mut self, bytes: &[u8]) {
        let end = (self.len + bytes.len()).min(self.buf.len());
        let n = end - self.len;
        self.buf[self.len..end].copy_from_slice(&bytes[..n]);
        self.len = end;
    }

    pub fn as_str(&self) -> &str {
        // Only ASCII is ever written.
        std::str::from_utf8(&self.buf[..self.len]).unwrap_or_default()
    }
}

impl std::fmt::Write for PeerText {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        self.push(s.as_bytes());
        Ok(())
    }
}

/// Where a client connects from, as the rules and messages see it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ClientOrigin {
    /// `None`: the unix socket.
    pub ip: Option<IpAddr>,
}

impl ClientOrigin {
    pub fn host(&self) -> String {
        self.to_string()
    }
}

/// The host as messages name it: the address, or `[local]`.
impl std::fmt::Display for ClientOrigin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.ip {
            Some(ip) => write!(f, "{}", ip.to_canonical()),
            None => f.write_str("[local]"),
        }
    }
}

/// `ip:port` as `SocketAddr` displays it; an IPv4 address (nearly every
/// client) without the formatting machinery, which cost a new client more
/// than its whole startup packet's parsing.
pub(crate) fn peer_text(peer: SocketAddr) -> PeerText {
    let mut text = PeerText::new();
    match peer {
        SocketAddr::V4(v4) => {
            let mut digits = itoa::Buffer::new();
            for (i, octet) in v4.ip().octets().into_iter().enumerate() {
                if i > 0 {
                    text.push(b".");
                }
                text.push(digits.format(octet).as_bytes());
            }
            text.push(b":");
            text.push(digits.format(v4.port()).as_bytes());
        }
        SocketAddr::V6(_) => {
            use std::fmt::Write;
            let _ = write!(text, "{peer}");
        }
    }
    text
}
