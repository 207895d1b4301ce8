//! Reconnect delays that grow exponentially, with jitter, up to a cap.

use std::time::Duration;

/// Exponential backoff: `initial`, doubling up to `max`, each delay jittered to between
/// half and all of its nominal value so reconnecting peers do not move in lockstep.
#[derive(Debug, Clone)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    current: Duration,
    seed: u64,
}

impl Backoff {
    /// A backoff from `initial` up to `max`.
    pub fn new(initial: Duration, max: Duration) -> Self {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0x9e37_79b9, |d| d.as_nanos() as u64)
            | 1;
        Backoff {
            initial,
            max,
            current: initial,
            seed,
        }
    }

    /// The delay before the next attempt.
    pub fn next_delay(&mut self) -> Duration {
        let nominal = self.current;
        self.current = (self.current * 2).min(self.max);
        // xorshift: cheap jitter, no dependency.
        self.seed ^= self.seed << 13;
        self.seed ^= self.seed >> 7;
        self.seed ^= self.seed << 17;
        let half = nominal / 2;
        half + Duration::from_nanos(self.seed % (half.as_nanos() as u64 + 1))
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
}
