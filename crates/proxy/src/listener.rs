//! Accepting clients on TCP and a unix socket. The listener owns the limits
//! (`max_client_conn`) and stops accepting on shutdown; each client gets a
//! session task of its own.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::net::{TcpListener, UnixListener};
use tokio::sync::Semaphore;

use crate::client_io::Peer;
use crate::session;
use crate::{Shared, StartError};

pub(crate) struct Listeners {
    tcp: TcpListener,
    pub(crate) tcp_addr: SocketAddr,
    /// `listen.extra_addrs`.
    extra: Vec<TcpListener>,
    unix: Option<(UnixListener, std::path::PathBuf)>,
}

impl Listeners {
    pub(crate) async fn bind(shared: &Shared) -> Result<Listeners, StartError> {
        let config = shared.config();
        let listen = &config.listen;
        let addr = listen.socket_addr().map_err(|e| StartError::Listen {
            addr: listen.addr.clone(),
            key: "listen.addr",
            source: std::io::Error::new(std::io::ErrorKind::InvalidInput, e),
        })?;
        let defer = listen.tcp_defer_accept;
        let tcp = bind_tcp(addr, &listen.addr, "listen.addr", defer).await?;
        let tcp_addr = tcp.local_addr().map_err(|source| StartError::Listen {
            addr: listen.addr.clone(),
            key: "listen.addr",
            source,
        })?;
        let extra_addrs = listen
            .extra_socket_addrs()
            .map_err(|e| StartError::Listen {
                addr: listen.extra_addrs.join(", "),
                key: "listen.extra_addrs",
                source: std::io::Error::new(std::io::ErrorKind::InvalidInput, e),
            })?;
        let mut extra = Vec::with_capacity(extra_addrs.len());
        for a in extra_addrs {
            extra.push(bind_tcp(a, &a.to_string(), "listen.extra_addrs", defer).await?);
        }
        let unix = match &listen.unix_socket_dir {
            None => None,
            Some(dir) => {
                // Named as PostgreSQL names its socket, so `psql -h DIR -p PORT` finds it.
                let path = dir.join(format!(".s.PGSQL.{}", tcp_addr.port()));
                if path.exists() {
                    // A socket left by a previous run; binding fails otherwise.
                    let _ = std::fs::remove_file(&path);
                }
                let l = UnixListener::bind(&path).map_err(|source| StartError::Unix {
                    path: path.clone(),
                    source,
                })?;
                // Apps run as other users: by default the socket is open to
                // all, as PostgreSQL's own (unix_socket_permissions = 0777),
                // whatever the process umask; the directory's mode and
                // [client_auth] decide who gets in. `unix_socket_mode` and
                // `unix_socket_group` narrow it.
                let unix_error = |source| StartError::Unix {
                    path: path.clone(),
                    source,
                };
                let invalid = |m: String| std::io::Error::new(std::io::ErrorKind::InvalidInput, m);
                let mode = listen
                    .unix_socket_mode_bits()
                    .map_err(|m| unix_error(invalid(m)))?;
                if let Some(group) = &listen.unix_socket_group {
                    let gid = group_id(group).map_err(|m| unix_error(invalid(m)))?;
                    std::os::unix::fs::chown(&path, None, Some(gid)).map_err(unix_error)?;
                }
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))
                    .map_err(unix_error)?;
                Some((l, path))
            }
        };
        let more: Vec<String> = extra
            .iter()
            .filter_map(|l| l.local_addr().ok())
            .map(|a| a.to_string())
            .collect();
        tracing::info!(addr = %tcp_addr, also = ?more, unix = ?unix.as_ref().map(|(_, p)| p), "listening");
        Ok(Listeners {
            tcp,
            tcp_addr,
            extra,
            unix,
        })
    }

    /// Accepts until shutdown, then waits for every session to end.
    pub(crate) async fn serve(self, shared: Arc<Shared>) {
        let limit = Arc::new(Semaphore::new(shared.config().listen.max_client_conn));
        let sessions = shared.sessions.clone();
        {
            let s = shared.clone();
            sessions.spawn(shared.parking.clone().run(
                sessions.clone(),
                shared.clients.clone(),
                shared.shutdown.clone(),
                move || {
                    (
                        s.config().listen.park_idle_clients_after,
                        s.timeouts.client_idle(),
                    )
                },
            ));
        }
        // Made once, not per client: a new cancellation future per accept
        // would register with the token and unregister again each time.
        let mut shutdown = std::pin::pin!(shared.shutdown.cancelled());
        // Which kind of listener is polled first: alternated, so that a storm
        // of TCP clients does not starve the unix socket or the other way round.
        let mut unix_first = false;
        loop {
            unix_first = !unix_first;
            let accepted = std::future::poll_fn(|cx| {
                // A flag first: the shutdown's future is polled (its waker
                // kept up to date) only when the loop is about to wait.
                if shared.shutdown.is_cancelled() {
                    return Poll::Ready(None);
                }
                for unix in [unix_first, !unix_first] {
                    let polled = if unix {
                        poll_accept_unix(&self.unix, cx)
                    } else {
                        poll_accept_tcp(&self.tcp, &self.extra, cx)
                    };
                    if let Poll::Ready(r) = polled {
                        return Poll::Ready(Some(r));
                    }
                }
                shutdown.as_mut().poll(cx).map(|()| None)
            })
            .await;
            let Some(accepted) = accepted else { break };
            let (conn, peer) = match accepted {
                Ok(c) => c,
                Err(e) => {
                    // Out of file descriptors and the like: pause instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            };
            let permit = limit.clone().try_acquire_owned().ok();
            let shared = shared.clone();
            // The session's future is made here and is the task's whole
            // future: it holds the permit, not a copy of what made it.
            match conn {
                Conn::Tcp(s) => sessions.spawn(session::serve_tcp(s, peer, shared, permit)),
                Conn::Unix(s) => sessions.spawn(session::serve_unix(s, peer, shared, permit)),
            };
        }
        drop(self.tcp);
        drop(self.extra);
        if let Some((l, path)) = self.unix {
            drop(l);
            let _ = std::fs::remove_file(path);
        }
        sessions.close();
        sessions.wait().await;
    }
}

/// An accepted client socket.
enum Conn {
    Tcp(tokio::net::TcpStream),
    Unix(tokio::net::UnixStream),
}

/// The next client on the main TCP listener or any of `listen.extra_addrs`.
fn poll_accept_tcp(
    main: &TcpListener,
    extra: &[TcpListener],
    cx: &mut Context<'_>,
) -> Poll<std::io::Result<(Conn, Peer)>> {
    let accepted = match main.poll_accept(cx) {
        Poll::Ready(r) => r,
        Poll::Pending => match extra.iter().find_map(|l| match l.poll_accept(cx) {
            Poll::Ready(r) => Some(r),
            Poll::Pending => None,
        }) {
            Some(r) => r,
            None => return Poll::Pending,
        },
    };
    Poll::Ready(accepted.map(|(s, peer)| {
        // Linux hands the listener's TCP_NODELAY on to the sockets it
        // accepts (see `prepare`); elsewhere each one is set.
        #[cfg(not(target_os = "linux"))]
        let _ = s.set_nodelay(true);
        (Conn::Tcp(s), Peer::tcp(peer))
    }))
}

/// A TCP listener on `addr` (`shown` as the operator wrote it, under
/// `key`), readied: TCP_NODELAY, which Linux passes on to every socket the
/// listener accepts (one system call per client less), and
/// `listen.tcp_defer_accept`. An error names the key it comes from.
async fn bind_tcp(
    addr: SocketAddr,
    shown: &str,
    key: &'static str,
    defer: std::time::Duration,
) -> Result<TcpListener, StartError> {
    let error = |key, source| StartError::Listen {
        addr: shown.to_owned(),
        key,
        source,
    };
    let l = TcpListener::bind(addr).await.map_err(|e| error(key, e))?;
    socket2::SockRef::from(&l)
        .set_tcp_nodelay(true)
        .map_err(|e| error(key, e))?;
    defer_accept(&l, defer).map_err(|e| error("listen.tcp_defer_accept", e))?;
    Ok(l)
}

/// TCP_DEFER_ACCEPT: the kernel queues a connection for `accept` only once
/// its first data has come (or, for a client that sends nothing, after
/// about `after`, rounded up to whole seconds; zero turns it off). A
/// PostgreSQL client always speaks first, so pgwake then reads its first
/// message at once instead of waking a second time for it: measured on
/// `pgbench -S -C`, 1.1 fewer sleeps and 0.7 fewer reads per new client.
/// Neither the standard library (unstable there) nor socket2 sets this
/// option, hence the one system call made by hand.
#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
fn defer_accept(l: &TcpListener, after: std::time::Duration) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let secs = after
        .as_secs()
        .saturating_add(u64::from(after.subsec_nanos() > 0));
    let value = libc::c_int::try_from(secs).unwrap_or(libc::c_int::MAX);
    let len = libc::socklen_t::try_from(std::mem::size_of_val(&value))
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
    // SAFETY: the descriptor is the listener's own and open for the call;
    // the kernel reads `len` bytes from `&value`, a live c_int on the stack.
    let rc = unsafe {
        libc::setsockopt(
            l.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_DEFER_ACCEPT,
            std::ptr::from_ref(&value).cast(),
            len,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[cfg(not(target_os = "linux"))]
fn defer_accept(_: &TcpListener, _: std::time::Duration) -> std::io::Result<()> {
    Ok(())
}

/// The next client on the unix socket, if there is one.
fn poll_accept_unix(
    unix: &Option<(UnixListener, std::path::PathBuf)>,
    cx: &mut Context<'_>,
) -> Poll<std::io::Result<(Conn, Peer)>> {
    let Some((l, _)) = unix else {
        return Poll::Pending;
    };
    l.poll_accept(cx)
        .map_ok(|(s, _)| (Conn::Unix(s), Peer::unix()))
}

/// The id of group `name` (`listen.unix_socket_group`): a number, or a name
/// in `/etc/group`.
fn group_id(name: &str) -> Result<u32, String> {
    if let Ok(gid) = name.parse() {
        return Ok(gid);
    }
    let groups = std::fs::read_to_string("/etc/group")
        .map_err(|e| format!("listen.unix_socket_group = {name:?}: cannot read /etc/group: {e}"))?;
    groups
        .lines()
        .filter_map(|l| {
            let mut f = l.split(':');
            let (n, _, gid) = (f.next()?, f.next()?, f.next()?);
            (n == name).then(|| gid.parse().ok()).flatten()
        })
        .next()
        .ok_or_else(|| format!("listen.unix_socket_group = {name:?}: no such group in /etc/group (a number works too)"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client_io::peer_text;

    #[test]
    fn peer_text_is_the_address_as_displayed() {
        for peer in [
            "127.0.0.1:54321",
            "0.0.0.0:0",
            "255.255.255.255:65535",
            "10.0.20.3:6432",
            "[::1]:6432",
            "[fe80::1%4294967295]:65535",
            "[ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff%4294967295]:65535",
        ] {
            let addr: SocketAddr = peer.parse().unwrap();
            let text = peer_text(addr);
            assert_eq!(text.as_str(), addr.to_string());
        }
        for octet in 0..=255u8 {
            for port in [0, 9, 10, 99, 100, 6432, 65535] {
                let ip = std::net::Ipv4Addr::new(octet, 255 - octet, octet / 2, 1);
                let addr = SocketAddr::from((ip, port));
                assert_eq!(peer_text(addr).as_str(), addr.to_string());
            }
        }
    }
}
