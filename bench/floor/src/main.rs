//! `pgwake-bench-floor MODE LISTEN SERVER`: accepts clients on LISTEN, gives
//! each a connection of its own to SERVER, and copies bytes both ways. It
//! parses nothing and pools nothing, so what it costs per transaction is what
//! any proxy pays the kernel for the same traffic, plus a little.
//!
//! - `epoll`: readiness, the way pgwake (tokio) and PgBouncer (libevent) do
//!   I/O. Edge-triggered; a read that leaves room in the buffer drained the
//!   socket, so a message costs one `recvfrom` and one `sendto`.
//! - `uring`: completions (io_uring, one issuer, task work deferred to the
//!   next wait). Each turn of the loop makes one `io_uring_enter` that
//!   submits every queued send and receive and waits for the next
//!   completion.
//! - `uring-epoll`: the same ring waited on the way a runtime built on epoll
//!   (tokio) would have to: task work not deferred (a deferred completion
//!   could not wake the wait), an eventfd the ring signals in an epoll set,
//!   each turn one `io_uring_enter` that submits and collects completions
//!   without waiting, and `epoll_wait` when there are none.
//! - `compio`: completions through a runtime rather than a hand-written
//!   loop: compio's, its io_uring driver with the ring set up as `uring`'s
//!   (one issuer, deferred task work), a task per client copying both ways
//!   with owned buffers. What a proxy written on an io_uring runtime would
//!   pay before any protocol work.
//!
//! The connection to SERVER is opened when a client arrives (a blocking
//! `connect`, in `compio` the runtime's): logins are not what this measures.

use std::collections::HashMap;
use std::error::Error;
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::{AsRawFd, IntoRawFd, RawFd};

const BUF: usize = 16 * 1024;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let usage = "usage: pgwake-bench-floor epoll|uring|uring-epoll|compio LISTEN_ADDR SERVER_ADDR";
    let parsed = match (args.get(1), args.get(2), args.get(3)) {
        (Some(m), Some(l), Some(s)) => l.parse::<SocketAddr>().and_then(|l| Ok((m, l, s.parse()?))),
        _ => {
            eprintln!("{usage}");
            std::process::exit(2);
        }
    };
    let (mode, listen, server) = match parsed {
        Ok(p) => p,
        Err(e) => {
            eprintln!("{e}; {usage}");
            std::process::exit(2);
        }
    };
    let r = match mode.as_str() {
        "epoll" => epoll(listen, server),
        "uring" => uring(listen, server, false),
        "uring-epoll" => uring(listen, server, true),
        "compio" => on_compio(listen, server),
        _ => {
            eprintln!("unknown mode {mode:?}; {usage}");
            std::process::exit(2);
        }
    };
    if let Err(e) = r {
        eprintln!("pgwake-bench-floor {mode}: {e}");
        std::process::exit(1);
    }
}

fn server_conn(server: SocketAddr) -> std::io::Result<TcpStream> {
    let s = TcpStream::connect(server)?;
    s.set_nodelay(true)?;
    Ok(s)
}

// ---------------------------------------------------------------- epoll

struct Side {
    sock: mio::net::TcpStream,
    /// Bytes for this side that it did not take yet.
    pending: Vec<u8>,
}

fn epoll(listen: SocketAddr, server: SocketAddr) -> Result<(), Box<dyn Error>> {
    use mio::{Events, Interest, Poll, Token};
    const LISTENER: Token = Token(usize::MAX);
    let mut poll = Poll::new()?;
    let mut l = mio::net::TcpListener::bind(listen)?;
    poll.registry()
        .register(&mut l, LISTENER, Interest::READABLE)?;
    // Side `k` relays to side `k ^ 1`: a client and its server connection.
    let mut sides: HashMap<usize, Side> = HashMap::new();
    let mut next = 0usize;
    let mut events = Events::with_capacity(1024);
    let mut buf = vec![0u8; BUF];
    loop {
        match poll.poll(&mut events, None) {
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            r => r?,
        }
        for ev in events.iter() {
            if ev.token() == LISTENER {
                while let Ok((mut c, _)) = l.accept() {
                    let Ok(s) = server_conn(server) else { continue };
                    c.set_nodelay(true)?;
                    s.set_nonblocking(true)?;
                    let mut s = mio::net::TcpStream::from_std(s);
                    let both = Interest::READABLE | Interest::WRITABLE;
                    poll.registry().register(&mut c, Token(next), both)?;
                    poll.registry().register(&mut s, Token(next + 1), both)?;
                    sides.insert(
                        next,
                        Side {
                            sock: c,
                            pending: Vec::new(),
                        },
                    );
                    sides.insert(
                        next + 1,
                        Side {
                            sock: s,
                            pending: Vec::new(),
                        },
                    );
                    next += 2;
                }
                continue;
            }
            let (me, peer) = (ev.token().0, ev.token().0 ^ 1);
            let mut dead = false;
            if ev.is_writable() {
                if let Some(s) = sides.get_mut(&me) {
                    dead = flush(s).is_err();
                }
            }
            while ev.is_readable() && !dead {
                let Some(s) = sides.get_mut(&me) else { break };
                let n = match s.sock.read(&mut buf) {
                    Ok(0) => {
                        dead = true;
                        break;
                    }
                    Ok(n) => n,
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(_) => {
                        dead = true;
                        break;
                    }
                };
                let Some(p) = sides.get_mut(&peer) else { break };
                p.pending.extend_from_slice(&buf[..n]);
                dead = flush(p).is_err();
                if n < BUF {
                    break;
                }
            }
            if dead {
                for k in [me, peer] {
                    if let Some(mut s) = sides.remove(&k) {
                        let _ = poll.registry().deregister(&mut s.sock);
                    }
                }
            }
        }
    }
}

/// Writes what the side has pending, as far as its socket takes it.
fn flush(s: &mut Side) -> std::io::Result<()> {
    while !s.pending.is_empty() {
        match s.sock.write(&s.pending) {
            Ok(0) => return Err(ErrorKind::WriteZero.into()),
            Ok(n) => {
                s.pending.drain(..n);
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(()),
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

// ---------------------------------------------------------------- io_uring

/// One socket of a pair. Its buffer receives from it and is then sent to
/// the peer; the next receive is posted once the send is complete.
struct Conn {
    fd: RawFd,
    peer: usize,
    buf: Box<[u8]>,
    /// Bytes of `buf` sent to the peer so far, and how many there are.
    sent: usize,
    len: usize,
    /// Requests the kernel still holds that point into `buf`.
    in_flight: u32,
    closing: bool,
}

const ACCEPT: u64 = u64::MAX;

/// `IORING_ENTER_GETEVENTS`: run and post completions.
const GETEVENTS: u32 = 1;

fn ud(idx: usize, send: bool) -> u64 {
    ((idx as u64) << 1) | u64::from(send)
}

fn uring(listen: SocketAddr, server: SocketAddr, under_epoll: bool) -> Result<(), Box<dyn Error>> {
    use io_uring::{opcode, squeue, types, IoUring};
    let mut builder = IoUring::builder();
    builder.setup_single_issuer();
    if !under_epoll {
        // Completions are run only in `io_uring_enter`, which this loop is
        // always about to call. Under epoll they could not wake the wait: a
        // deferred completion signals nothing until it is run.
        builder.setup_defer_taskrun();
    }
    let mut ring: IoUring = builder.build(4096)?;
    let l = std::net::TcpListener::bind(listen)?;
    let lfd = l.as_raw_fd();
    let accept = || {
        opcode::Accept::new(types::Fd(lfd), std::ptr::null_mut(), std::ptr::null_mut())
            .build()
            .user_data(ACCEPT)
    };
    let mut conns: Vec<Option<Conn>> = Vec::new();
    let mut free: Vec<usize> = Vec::new();
    let mut queued: Vec<squeue::Entry> = vec![accept()];
    let mut done: Vec<(u64, i32)> = Vec::new();
    let mut waiter = if under_epoll {
        // An eventfd the ring signals as completions are posted wakes the
        // epoll wait (edge-triggered: never read, each signal is an edge).
        // SAFETY: plain system call; the descriptor is checked below.
        let efd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if efd < 0 {
            return Err(std::io::Error::last_os_error().into());
        }
        ring.submitter().register_eventfd(efd)?;
        let poll = mio::Poll::new()?;
        poll.registry().register(
            &mut mio::unix::SourceFd(&efd),
            mio::Token(0),
            mio::Interest::READABLE,
        )?;
        Some((poll, mio::Events::with_capacity(8)))
    } else {
        None
    };
    loop {
        {
            let mut sq = ring.submission();
            for e in queued.drain(..) {
                // SAFETY: every buffer an entry points into is a `Conn`'s
                // boxed buffer, which is freed only once the kernel has
                // completed every request on it (`in_flight` is 0).
                unsafe { sq.push(&e)? };
            }
        }
        if let Some((poll, events)) = waiter.as_mut() {
            // Submit, and run the completions the kernel deferred, without
            // waiting; wait in epoll only when there were none.
            let queued = ring.submission().len();
            // SAFETY: no arguments are passed; the entries were pushed above.
            let entered = unsafe {
                ring.submitter()
                    .enter::<libc::sigset_t>(queued as u32, 0, GETEVENTS, None)
            };
            match entered {
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                r => r?,
            };
            done.extend(ring.completion().map(|c| (c.user_data(), c.result())));
            if done.is_empty() {
                match poll.poll(events, None) {
                    Err(e) if e.kind() == ErrorKind::Interrupted => {}
                    r => r?,
                }
                continue;
            }
        } else {
            match ring.submit_and_wait(1) {
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                r => r?,
            };
            done.extend(ring.completion().map(|c| (c.user_data(), c.result())));
        }
        for (u, res) in done.drain(..) {
            if u == ACCEPT {
                queued.push(accept());
                if res < 0 {
                    continue;
                }
                let Ok(s) = server_conn(server) else {
                    // SAFETY: `res` is the descriptor the accept returned; nothing else owns it.
                    unsafe { libc::close(res) };
                    continue;
                };
                let one: libc::c_int = 1;
                // SAFETY: a valid socket descriptor and a c_int option value.
                unsafe {
                    libc::setsockopt(
                        res,
                        libc::IPPROTO_TCP,
                        libc::TCP_NODELAY,
                        (&one as *const libc::c_int).cast(),
                        std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                    )
                };
                let (a, b) = (slot(&mut conns, &mut free), slot(&mut conns, &mut free));
                for (i, fd, peer) in [(a, res, b), (b, s.into_raw_fd(), a)] {
                    let mut c = Conn {
                        fd,
                        peer,
                        buf: vec![0; BUF].into(),
                        sent: 0,
                        len: 0,
                        in_flight: 1,
                        closing: false,
                    };
                    queued.push(recv(&mut c, i));
                    conns[i] = Some(c);
                }
                continue;
            }
            let (idx, is_send) = ((u >> 1) as usize, u & 1 == 1);
            let Some(c) = conns.get_mut(idx).and_then(Option::as_mut) else {
                continue;
            };
            c.in_flight -= 1;
            let peer = c.peer;
            let peer_fd = conns.get(peer).and_then(Option::as_ref).map(|p| p.fd);
            let Some(c) = conns.get_mut(idx).and_then(Option::as_mut) else {
                continue;
            };
            match peer_fd {
                Some(pfd) if res > 0 && !c.closing => {
                    if is_send {
                        c.sent += res as usize;
                    } else {
                        (c.sent, c.len) = (0, res as usize);
                    }
                    c.in_flight += 1;
                    queued.push(if c.sent < c.len {
                        opcode::Send::new(
                            types::Fd(pfd),
                            c.buf[c.sent..].as_ptr(),
                            (c.len - c.sent) as u32,
                        )
                        .build()
                        .user_data(ud(idx, true))
                    } else {
                        recv(c, idx)
                    });
                }
                _ => close_pair(&mut conns, &mut free, idx),
            }
        }
    }
}

fn recv(c: &mut Conn, idx: usize) -> io_uring::squeue::Entry {
    io_uring::opcode::Recv::new(io_uring::types::Fd(c.fd), c.buf.as_mut_ptr(), BUF as u32)
        .build()
        .user_data(ud(idx, false))
}

fn slot(conns: &mut Vec<Option<Conn>>, free: &mut Vec<usize>) -> usize {
    free.pop().unwrap_or_else(|| {
        conns.push(None);
        conns.len() - 1
    })
}

/// Shuts both sockets of the pair (which ends the receives the kernel
/// holds), and frees each side once nothing of the kernel's points into it.
fn close_pair(conns: &mut [Option<Conn>], free: &mut Vec<usize>, idx: usize) {
    // The peer only while it is still this side's (its slot may be reused).
    let peer = conns[idx]
        .as_ref()
        .map(|c| c.peer)
        .filter(|&p| conns[p].as_ref().is_some_and(|c| c.peer == idx));
    for k in [Some(idx), peer].into_iter().flatten() {
        let Some(c) = conns[k].as_mut() else { continue };
        if !c.closing {
            c.closing = true;
            // SAFETY: the side's own socket; closed below, once.
            unsafe { libc::shutdown(c.fd, libc::SHUT_RDWR) };
        }
        if c.in_flight == 0 {
            // SAFETY: as above; no request holds it any more.
            unsafe { libc::close(c.fd) };
            conns[k] = None;
            free.push(k);
        }
    }
}

// ---------------------------------------------------------------- compio

fn on_compio(listen: SocketAddr, server: SocketAddr) -> Result<(), Box<dyn Error>> {
    // The ring set up as `uring`'s: one issuer, task work deferred to the wait.
    let mut ring = compio::driver::ProactorBuilder::new();
    ring.single_issuer(true).defer_taskrun(true);
    let rt = compio::runtime::RuntimeBuilder::new()
        .with_proactor(ring)
        .build()?;
    rt.block_on(async move {
        let l = compio::net::TcpListener::bind(listen).await?;
        loop {
            let (client, _) = l.accept().await?;
            compio::runtime::spawn(async move {
                let Ok(s) = compio::net::TcpStream::connect(server).await else {
                    return;
                };
                if client.set_nodelay(true).is_err() || s.set_nodelay(true).is_err() {
                    return;
                }
                // Either side's end (or error) ends both: the sockets are
                // dropped with the task.
                let up = std::pin::pin!(copy(&client, &s));
                let down = std::pin::pin!(copy(&s, &client));
                futures_util::future::select(up, down).await;
            })
            .detach();
        }
    })
}

/// Receives from `from` into a buffer of its own and sends it all to `to`,
/// until `from` ends or either fails.
async fn copy(mut from: &compio::net::TcpStream, mut to: &compio::net::TcpStream) {
    use compio::io::{AsyncRead, AsyncWriteExt};
    let mut buf = Vec::with_capacity(BUF);
    loop {
        let compio::buf::BufResult(got, b) = from.read(buf).await;
        buf = b;
        match got {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let compio::buf::BufResult(sent, b) = to.write_all(buf).await;
        buf = b;
        if sent.is_err() {
            return;
        }
        buf.clear();
    }
}
