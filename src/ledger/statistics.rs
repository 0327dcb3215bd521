//! When to refresh the planner statistics of the tables that settling grows (PostgreSQL).
//!
//! sqlx keeps every statement prepared, and after five runs PostgreSQL may switch a prepared
//! statement to a generic plan built from the statistics of that moment. Made while `settlements`
//! and `member_usage` were nearly empty, such a plan scans them whole, and it stays until the
//! statistics change. Autovacuum's `ANALYZE` would change them as the tables grow; where it is off
//! (as on the build machine), nothing would. So the ledger runs `ANALYZE` itself, in the
//! background, whenever the settlements this process committed pass a threshold that grows
//! fourfold each time: after 2,048, 8,192, 32,768, ... settlements, a dozen times up to 10^8. The
//! new statistics invalidate the cached plans, and the next runs are planned against them.

use std::sync::atomic::{AtomicU64, Ordering};

/// Settlements after which the statistics are first refreshed.
pub(super) const FIRST_REFRESH_AFTER: u64 = 2_048;

/// How much the threshold grows after each refresh.
const GROWTH: u64 = 4;

/// Counts the settlements the writers of this process committed.
#[derive(Debug)]
pub(super) struct GrowthTrigger {
    settled: AtomicU64,
    next: AtomicU64,
}

impl GrowthTrigger {
    pub(super) fn new() -> Self {
        Self {
            settled: AtomicU64::new(0),
            next: AtomicU64::new(FIRST_REFRESH_AFTER),
        }
    }

    /// Counts `n` more settlements. True exactly once each time the count reaches the threshold,
    /// which then grows.
    pub(super) fn add(&self, n: u64) -> bool {
        let total = self.settled.fetch_add(n, Ordering::Relaxed).saturating_add(n);
        let next = self.next.load(Ordering::Relaxed);
        total >= next
            && self
                .next
                .compare_exchange(next, next.saturating_mul(GROWTH), Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// However the settlements arrive in batches, a refresh fires once per threshold passed
        /// (at most one per batch), never before the first threshold, and the thresholds grow
        /// fourfold.
        #[test]
        fn fires_once_per_threshold(batches in proptest::collection::vec(1u64..5_000, 1..200)) {
            let trigger = GrowthTrigger::new();
            let mut total = 0u64;
            let mut fired_at = Vec::new();
            for n in batches {
                total += n;
                if trigger.add(n) {
                    fired_at.push(total);
                }
            }
            let mut threshold = FIRST_REFRESH_AFTER;
            let mut previous = 0u64;
            for at in &fired_at {
                prop_assert!(*at >= threshold, "fired at {} before the threshold {}", at, threshold);
                prop_assert!(*at > previous);
                previous = *at;
                threshold *= GROWTH;
            }
            // No threshold was passed without a refresh (a batch here is smaller than the gap
            // between two thresholds, so none passes two at once).
            prop_assert!(total < threshold, "{} settled, the threshold {} was passed silently", total, threshold);
        }
    }

    #[test]
    fn the_first_refresh_comes_after_2048_settlements() {
        let trigger = GrowthTrigger::new();
        assert!(!trigger.add(2_047));
        assert!(trigger.add(1));
        assert!(!trigger.add(6_143));
        assert!(trigger.add(1));
    }
}
