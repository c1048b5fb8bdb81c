//! Bounds on what senders may hold: connections and request heads per listener (enforced by
//! `server::listener`), and the memory of request bodies across all connections (`BodyBudget`, reserved
//! before a body is read).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

/// The bounds of one listener's connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// Connections open at once; more are closed as they are accepted.
    pub max_connections: usize,
    /// Connections open at once from one peer address, when bounded: one noisy client cannot take every
    /// slot from the others (the admin listener's kubelet probes).
    pub max_per_peer: Option<usize>,
    /// A request head must arrive whole within it (from the accept, or from its first byte).
    pub header_timeout: Duration,
    /// How long a kept-alive connection may wait for its next request.
    pub keepalive: Duration,
    /// Bytes of reads a request head may take.
    pub max_header_bytes: usize,
}
/// Bytes of request bodies held in memory, all connections together, at most `max`.
#[derive(Debug, Default)]
pub struct BodyBudget {
    held: AtomicUsize,
}

impl BodyBudget {
    /// Bytes held now, for the gauge.
    pub fn held(&self) -> usize {
        self.held.load(Ordering::Relaxed)
    }

    /// An empty reservation, grown as the body arrives.
    pub fn reservation(self: &Arc<Self>) -> Reservation {
        Reservation {
            budget: self.clone(),
            bytes: 0,
        }
    }

    fn take(&self, n: usize, max: usize) -> bool {
        self.held
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |held| {
                held.checked_add(n).filter(|total| *total <= max)
            })
            .is_ok()
    }
}

/// Bytes of the budget held by one body; given back when dropped.
#[derive(Debug)]
pub struct Reservation {
    budget: Arc<BodyBudget>,
    bytes: usize,
}

impl Reservation {
    /// Holds at least `total` bytes, or `false` when the budget (`max`) cannot give them.
    pub fn grow_to(&mut self, total: usize, max: usize) -> bool {
        if total <= self.bytes {
            return true;
        }
        let more = total - self.bytes;
        if !self.budget.take(more, max) {
            return false;
        }
        self.bytes = total;
        true
    }
}

impl Reservation {
    /// Gives back what is held beyond `total`.
    pub fn shrink_to(&mut self, total: usize) {
        if total < self.bytes {
            self.budget
                .held
                .fetch_sub(self.bytes - total, Ordering::AcqRel);
            self.bytes = total;
        }
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.budget.held.fetch_sub(self.bytes, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reservations_never_exceed_the_budget_and_give_back_when_dropped() {
        let budget = Arc::new(BodyBudget::default());
        let mut a = budget.reservation();
        let mut b = budget.reservation();
        assert!(a.grow_to(600, 1_000));
        assert!(!b.grow_to(500, 1_000), "over the budget");
        assert!(b.grow_to(400, 1_000));
        assert!(a.grow_to(500, 1_000), "shrinking holds what it has");
        assert_eq!(budget.held(), 1_000);
        drop(a);
        assert_eq!(budget.held(), 400);
        assert!(b.grow_to(1_000, 1_000));
        drop(b);
        assert_eq!(budget.held(), 0);
    }
}
