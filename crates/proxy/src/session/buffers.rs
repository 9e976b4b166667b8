//! A client's read buffer: none while it is idle, an ordinary one while
//! it is busy, and room from the shared budget for a large frame read whole.

use pgwake_config::PoolMode;

use super::{interrupted, relay, Session, Stop};
use crate::client_io::ClientStream;

/// Read buffers of clients between transactions, kept for the next client
/// that needs one: an idle client holds none, and a busy one does not pay
/// for an allocation on every transaction. A few per thread at most.
pub(super) mod spare_buffers {
    use std::cell::RefCell;

    use bytes::BytesMut;

    const SIZE: usize = 8 * 1024;
    const KEEP: usize = 64;

    /// Bytes a probe of an idle client reads at most.
    const PROBE: usize = 512;

    thread_local! {
        static SPARE: RefCell<Vec<BytesMut>> = const { RefCell::new(Vec::new()) };
        /// Where probes read first: zeroed once per thread, not per probe.
        static SCRATCH: RefCell<[u8; PROBE]> = const { RefCell::new([0; PROBE]) };
    }

    /// Reads what is there without waiting (see `ClientStream::try_read`)
    /// into a scratch area, and hands what was read to `got`: a stale
    /// readiness costs neither a buffer nor zeroing one.
    pub(in crate::session) fn probe<T>(
        read: impl FnOnce(&mut [u8]) -> std::io::Result<usize>,
        got: impl FnOnce(&[u8]) -> T,
    ) -> std::io::Result<T> {
        SCRATCH.with(|s| {
            let mut s = s.borrow_mut();
            let n = read(&mut s[..])?;
            Ok(got(&s[..n]))
        })
    }

    /// An empty buffer with room for `SIZE` bytes.
    pub(in crate::session) fn take() -> BytesMut {
        let mut b = SPARE.with(|s| s.borrow_mut().pop()).unwrap_or_default();
        // Reclaims the whole allocation when it is this buffer's alone.
        b.reserve(SIZE);
        b
    }

    /// Keeps a buffer (emptied) for the next taker, or frees it when enough
    /// are kept (or when it grew for a large message: that memory goes back
    /// at once).
    pub(in crate::session) fn give_back(mut b: BytesMut) {
        b.clear();
        if b.capacity() > 0 && b.capacity() <= crate::budget::FREE {
            SPARE.with(|s| {
                let mut s = s.borrow_mut();
                if s.len() < KEEP {
                    s.push(b);
                }
            });
        }
    }
}

impl<C: ClientStream> Session<C> {
    /// Lets `cbuf` grow to hold a whole frame of `want` bytes (header
    /// included), taking room for it from the shared budget first; waits
    /// for room up to the pool's `pool_wait_timeout`.
    pub(super) async fn room_for(&mut self, want: usize) -> Result<(), Stop> {
        if self.lease.as_ref().is_none_or(|l| l.covers() < want) {
            self.lease = None;
            let wait = self.pool.settings().wait_timeout;
            let budget = &self.shared.buffer_budget;
            let leased = tokio::select! {
                biased;
                why = self.registered.interrupted() => return Err(interrupted(why)),
                l = budget.lease(want, wait) => l,
            };
            match leased {
                Ok(l) => self.lease = Some(Box::new(l)),
                Err(e) => {
                    tracing::warn!(peer = %self.peer(), error = %e, "refused a client message");
                    return Err(Stop::Fatal(e.to_client()));
                }
            }
        }
        let missing = want.saturating_sub(self.cbuf.len());
        if self.cbuf.capacity() - self.cbuf.len() < missing {
            self.cbuf.reserve(missing);
        }
        Ok(())
    }

    /// Gives the read buffer and its room in the budget back, whatever it
    /// held: the client is idle or gone.
    pub(super) fn release_buffer(&mut self) {
        self.lease = None;
        spare_buffers::give_back(std::mem::take(&mut self.cbuf));
    }

    /// Once `cbuf` holds no large frame, gives its memory and its room in
    /// the budget back: what is buffered moves to an ordinary buffer.
    pub(super) fn settle_buffer(&mut self) {
        if self.lease.is_none() && self.cbuf.capacity() <= 2 * crate::budget::FREE {
            return;
        }
        if self.cbuf.len() > crate::budget::FREE {
            return;
        }
        // The start of a large frame being read whole keeps its room.
        let track = self.mode == PoolMode::Transaction;
        if self.cscan.at_boundary() && relay::read_whole_at(track, &self.cbuf) {
            if let Ok(Some(len)) = self.cscan.frame_len(&self.cbuf) {
                if len > crate::budget::FREE {
                    return;
                }
            }
        }
        let mut small = spare_buffers::take();
        small.extend_from_slice(&self.cbuf);
        self.cbuf = small;
        self.lease = None;
    }
}
