//! Reconnect delays that grow exponentially, with jitter, up to a cap.

use std::time::Duration;

use crate::XorShift;

/// Exponential backoff: `initial`, doubling up to `max`, each delay jittered to between
/// half and all of its nominal value so reconnecting peers do not move in lockstep.
#[derive(Debug, Clone)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    current: Duration,
    rng: XorShift,
}

impl Backoff {
    /// A backoff from `initial` up to `max`.
    pub fn new(initial: Duration, max: Duration) -> Self {
        Backoff {
            initial,
            max,
            current: initial,
            rng: XorShift::from_time(),
        }
    }

    /// The delay before the next attempt.
    pub fn next_delay(&mut self) -> Duration {
        let nominal = self.current;
        self.current = (self.current * 2).min(self.max);
        let half = nominal / 2;
        half + Duration::from_nanos(self.rng.next_u64() % (half.as_nanos() as u64 + 1))
    }

    /// Back to `initial`, after a success.
    pub fn reset(&mut self) {
        self.current = self.initial;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_to_cap_with_jitter_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(800));
        let d: Vec<Duration> = (0..6).map(|_| b.next_delay()).collect();
        for (i, nominal) in [100u64, 200, 400, 800, 800, 800].iter().enumerate() {
            let n = Duration::from_millis(*nominal);
            assert!(d[i] >= n / 2 && d[i] <= n, "{i}: {:?} vs {n:?}", d[i]);
        }
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(100));
    }

    #[test]
    fn delays_vary_between_backoffs_made_together() {
        // Peers that fail together must not retry together.
        let d = Duration::from_millis(1000);
        let firsts: Vec<Duration> = (0..200).map(|_| Backoff::new(d, d).next_delay()).collect();
        assert!(firsts.iter().all(|j| *j >= d / 2 && *j <= d), "{firsts:?}");
        let distinct: std::collections::BTreeSet<_> = firsts.iter().collect();
        assert!(
            distinct.len() > 190,
            "only {} distinct delays",
            distinct.len()
        );
    }
}
