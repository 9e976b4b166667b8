//! One memory budget for the client messages pgwake holds whole (a Parse
//! or Bind it must read to rewrite statement names, a query that may be
//! `PREPARE`), shared by all clients: a few large statements at once can
//! neither take the process past its container's memory limit nor starve
//! everyone else. Frames up to [`FREE`] bytes are not charged (they fit the
//! buffers every busy session has anyway); larger ones wait for room, and
//! one larger than the whole budget is refused.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use pgwake_protocol::backend::ErrorMessage;
use pgwake_protocol::sqlstate;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Frames up to this size (header included) are not charged.
pub(crate) const FREE: usize = 64 * 1024;

/// Permits are KiB, so a budget of terabytes still fits a `u32`.
const UNIT: usize = 1024;

/// The budget: `listen.client_buffer_budget` bytes.
#[derive(Debug)]
pub(crate) struct BufferBudget {
    permits: Arc<Semaphore>,
    total: u32,
    bytes: u64,
    too_large: AtomicU64,
    busy: AtomicU64,
}

/// Room held for one large frame; given back when dropped.
#[derive(Debug)]
pub(crate) struct Lease {
    _permit: OwnedSemaphorePermit,
    units: u32,
}

impl Lease {
    /// Bytes this lease covers.
    pub(crate) fn covers(&self) -> usize {
        usize::try_from(self.units).unwrap_or(usize::MAX) * UNIT
    }
}

/// Why a large frame could not be given room.
#[derive(Debug, Clone, thiserror::Error)]
pub(crate) enum BudgetError {
    #[error("a message of {want} bytes is larger than listen.client_buffer_budget ({budget} bytes), which every message pgwake must hold whole has to fit")]
    TooLarge { want: usize, budget: u64 },
    #[error("out of memory for a message of {want} bytes: listen.client_buffer_budget ({budget} bytes) stayed in use by other clients' large messages for {waited:?}")]
    Busy {
        want: usize,
        budget: u64,
        waited: Duration,
    },
}

impl BudgetError {
    /// The error the client gets: its connection is closed.
    pub(crate) fn to_client(&self) -> ErrorMessage {
        let (code, hint) = match self {
            BudgetError::TooLarge { .. } => (
                sqlstate::PROGRAM_LIMIT_EXCEEDED,
                "raise listen.client_buffer_budget (and the memory limit with it) if such messages are expected",
            ),
            BudgetError::Busy { .. } => (
                sqlstate::OUT_OF_MEMORY,
                "other clients are sending large messages; retry, or raise listen.client_buffer_budget",
            ),
        };
        ErrorMessage::fatal(code, format!("pgwake: {self}")).with_hint(hint)
    }
}

impl BufferBudget {
    pub(crate) fn new(bytes: u64) -> Self {
        let units = usize::try_from(bytes).unwrap_or(usize::MAX) / UNIT;
        let total = u32::try_from(units.min(Semaphore::MAX_PERMITS)).unwrap_or(u32::MAX);
        BufferBudget {
            permits: Arc::new(Semaphore::new(usize::try_from(total).unwrap_or(usize::MAX))),
            total,
            bytes,
            too_large: AtomicU64::new(0),
            busy: AtomicU64::new(0),
        }
    }

    /// Room for a frame of `want` bytes, waiting up to `wait` for other
    /// clients to give theirs back. Cancel-safe: a dropped wait holds nothing.
    pub(crate) async fn lease(&self, want: usize, wait: Duration) -> Result<Lease, BudgetError> {
        let units = u32::try_from(want.div_ceil(UNIT)).unwrap_or(u32::MAX);
        if units > self.total {
            self.too_large.fetch_add(1, Ordering::Relaxed);
            return Err(BudgetError::TooLarge {
                want,
                budget: self.bytes,
            });
        }
        match tokio::time::timeout(wait, self.permits.clone().acquire_many_owned(units)).await {
            Ok(Ok(permit)) => Ok(Lease {
                _permit: permit,
                units,
            }),
            // The semaphore is never closed; a timeout is the other case.
            _ => {
                self.busy.fetch_add(1, Ordering::Relaxed);
                Err(BudgetError::Busy {
                    want,
                    budget: self.bytes,
                    waited: wait,
                })
            }
        }
    }

    /// Bytes currently lent out.
    pub(crate) fn in_use(&self) -> u64 {
        let free = u32::try_from(self.permits.available_permits()).unwrap_or(u32::MAX);
        u64::from(self.total.saturating_sub(free)) * UNIT as u64
    }

    /// Messages refused, by reason.
    pub(crate) fn refusals(&self) -> [(&'static str, u64); 2] {
        [
            ("too_large", self.too_large.load(Ordering::Relaxed)),
            ("busy", self.busy.load(Ordering::Relaxed)),
        ]
    }

    /// The budget in bytes.
    pub(crate) fn bytes(&self) -> u64 {
        self.bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn leases_wait_for_room_and_refuse_what_never_fits() {
        let b = BufferBudget::new(1024 * 1024);
        let first = b.lease(600 * 1024, Duration::from_secs(1)).await.unwrap();
        assert_eq!(b.in_use(), 600 * 1024);
        assert!(first.covers() >= 600 * 1024);
        // No room for another 600 KiB until the first is given back.
        let busy = b.lease(600 * 1024, Duration::from_millis(50)).await;
        assert!(matches!(busy, Err(BudgetError::Busy { .. })), "{busy:?}");
        let waiting = b.lease(600 * 1024, Duration::from_secs(5));
        drop(first);
        assert!(waiting.await.is_ok());
        assert!(matches!(
            b.lease(2 * 1024 * 1024, Duration::from_secs(1)).await,
            Err(BudgetError::TooLarge { .. })
        ));
    }
}
