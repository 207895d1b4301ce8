//! A warning that may recur thousands of times a second (a connection flood) is logged
//! at most once a second, with a count of the occurrences it stands for.

use std::time::{Duration, Instant};

/// Least time between two log lines of one throttled warning.
const EVERY: Duration = Duration::from_secs(1);

/// One recurring warning's throttle.
#[derive(Debug, Default)]
pub(crate) struct Throttle {
    last: Option<Instant>,
    /// Occurrences since the last logged one.
    unlogged: u64,
}

impl Throttle {
    /// Records an occurrence at `now`: `Some(n)` when it should be logged, `n` being the
    /// occurrences since the last logged line that were not logged; `None` otherwise.
    pub(crate) fn hit(&mut self, now: Instant) -> Option<u64> {
        if self.last.is_some_and(|t| now.duration_since(t) < EVERY) {
            self.unlogged += 1;
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.unlogged))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logs_once_a_second_with_the_count_in_between() {
        let mut t = Throttle::default();
        let t0 = Instant::now();
        assert_eq!(t.hit(t0), Some(0));
        for i in 1..=999 {
            assert_eq!(t.hit(t0 + Duration::from_millis(i)), None);
        }
        assert_eq!(t.hit(t0 + Duration::from_millis(1000)), Some(999));
        assert_eq!(t.hit(t0 + Duration::from_millis(1500)), None);
        assert_eq!(t.hit(t0 + Duration::from_millis(2500)), Some(1));
    }
}
