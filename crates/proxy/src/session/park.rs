//! An idle session without its task: the session side of
//! [`crate::parking`].

use std::marker::PhantomData;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::time::Instant;

use tokio_util::task::TaskTracker;

use super::Session;
use crate::client_io::ClientStream;
use crate::clients::ClientInfo;
use crate::parking::ParkedClient;

/// The client stream of a parked session: its socket, out of the runtime.
pub(super) struct Parked<C> {
    socket: OwnedFd,
    stream: PhantomData<fn() -> C>,
}

impl<C: ClientStream> Session<C> {
    /// Whether this client can park now (not TLS, and the parking runs).
    pub(super) fn may_park(&self) -> bool {
        C::PARKABLE && self.shared.parking.open()
    }

    /// Takes the idle session out of its task and parks it (or, should
    /// the parking refuse it, gives it a new task).
    pub(super) fn park(mut self) {
        // Nothing that could hold this task's waker stays behind.
        self.timer = None;
        let (session, client) = self.with_client(());
        let socket = match client.into_parked() {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(client = %session.registered.info.peer(), error = %e, "cannot park an idle client: closing it");
                return;
            }
        };
        let parked = Box::new(
            session
                .with_client(Parked::<C> {
                    socket,
                    stream: PhantomData,
                })
                .0,
        );
        let shared = parked.shared.clone();
        if let Err(back) = shared.parking.park(parked, &shared.clients) {
            back.resume(&shared.sessions);
        }
    }
}

impl<C: ClientStream> ParkedClient for Session<Parked<C>> {
    fn fd(&self) -> RawFd {
        self.client.socket.as_raw_fd()
    }

    fn info(&self) -> &ClientInfo {
        &self.registered.info
    }

    fn idle_since(&self) -> Instant {
        self.idle_since
    }

    fn resume(self: Box<Self>, tasks: &TaskTracker) {
        let (session, parked) = (*self).with_client(());
        match C::from_parked(parked.socket) {
            Ok(client) => {
                let session = Box::new(session.with_client(client).0);
                tasks.spawn(session.run());
            }
            Err(e) => {
                tracing::warn!(client = %session.registered.info.peer(), error = %e, "cannot give a parked client its task back: closing it");
            }
        }
    }
}
