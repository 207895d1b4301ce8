//! A tiny pseudo-random generator for jitter, load balancing and test data.

use std::sync::atomic::{AtomicU64, Ordering};

/// 2^64 divided by the golden ratio: multiplying by it spreads neighbouring seeds apart.
const GOLDEN: u64 = 0x9e37_79b9_7f4a_7c15;

/// The state that replaces a zero seed (xorshift stays at zero forever).
const NONZERO: u64 = GOLDEN;

/// Marsaglia's xorshift64 (shifts 13, 7, 17): a few instructions a number, no
/// allocation, no dependency.
///
/// Good enough to spread retries, pick among providers and make test data; **not** for
/// anything that must be unpredictable (keys, tokens, nonces). Its period is 2^64 - 1;
/// it never returns 0.
///
/// ```
/// use reactor::XorShift;
///
/// let mut a = XorShift::new(42);
/// let mut b = XorShift::new(42);
/// assert_eq!(a.next_u64(), b.next_u64()); // the same seed, the same numbers
/// assert!(XorShift::from_time().below(6) < 6);
/// ```
#[derive(Debug, Clone)]
pub struct XorShift(u64);

impl XorShift {
    /// A generator whose state is `seed` as is (a zero seed, which xorshift would never
    /// leave, is replaced by a fixed non-zero one).
    ///
    /// For seeds that are small or close together (loop indices, clock readings), use
    /// [`XorShift::mixed`]: from `new`, such seeds give small, alike first numbers.
    pub const fn new(seed: u64) -> Self {
        XorShift(if seed == 0 { NONZERO } else { seed })
    }

    /// A generator from `seed` spread over all 64 bits first (times the golden ratio,
    /// low bit set), so that seeds 1, 2, 3, ... start far apart. Seeds 0 and 1 give the
    /// same generator.
    pub const fn mixed(seed: u64) -> Self {
        let seed = if seed == 0 { 1 } else { seed };
        XorShift::new(seed.wrapping_mul(GOLDEN) | 1)
    }

    /// A generator seeded from the wall clock and a per-process count, so that two
    /// made in the same instant still differ.
    pub fn from_time() -> Self {
        static MADE: AtomicU64 = AtomicU64::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        let count = MADE.fetch_add(1, Ordering::Relaxed);
        XorShift::mixed(nanos ^ count.wrapping_mul(GOLDEN).rotate_left(32))
    }

    /// The next number (never 0).
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    /// A number below `n` (0 when `n` is 0). The modulo is slightly biased toward low
    /// numbers, by at most `n / 2^64`: negligible for the small `n` it is meant for.
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n.max(1) as u64) as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn follows_xorshift64() {
        // The first numbers of xorshift64 (13, 7, 17) from state 1.
        let mut r = XorShift::new(1);
        let first: Vec<u64> = (0..3).map(|_| r.next_u64()).collect();
        assert_eq!(
            first,
            [0x4082_2041, 0x1000_4106_0c01_1441, 0x9b1e_842f_6e86_2629]
        );
    }

    #[test]
    fn a_seed_is_kept_and_a_zero_seed_replaced() {
        let (mut a, mut b) = (
            XorShift::new(0x2545_f491_4f6c_dd1d),
            XorShift::new(0x2545_f491_4f6c_dd1d),
        );
        assert!((0..100).all(|_| a.next_u64() == b.next_u64()));
        let mut z = XorShift::new(0);
        assert!((0..1000).all(|_| z.next_u64() != 0));
        assert_eq!(
            XorShift::new(0).next_u64(),
            XorShift::new(NONZERO).next_u64()
        );
    }

    #[test]
    fn mixed_spreads_neighbouring_seeds() {
        assert_eq!(XorShift::mixed(0).next_u64(), XorShift::mixed(1).next_u64());
        let firsts: Vec<u64> = (1..=64).map(|s| XorShift::mixed(s).next_u64()).collect();
        // Small seeds from `new` give small first numbers; mixed ones fill the top bits.
        assert!(
            firsts.iter().filter(|x| **x >> 48 != 0).count() > 56,
            "{firsts:x?}"
        );
        let distinct: std::collections::BTreeSet<_> = firsts.iter().collect();
        assert_eq!(distinct.len(), firsts.len());
    }

    #[test]
    fn from_time_generators_made_together_differ() {
        let firsts: Vec<u64> = (0..100).map(|_| XorShift::from_time().next_u64()).collect();
        let distinct: std::collections::BTreeSet<_> = firsts.iter().collect();
        assert_eq!(distinct.len(), firsts.len());
    }

    #[test]
    fn below_stays_below_and_covers_the_range() {
        let mut r = XorShift::mixed(7);
        let mut seen = [0usize; 6];
        for _ in 0..6000 {
            seen[r.below(6)] += 1;
        }
        assert!(seen.iter().all(|n| (800..1200).contains(n)), "{seen:?}");
        assert_eq!(r.below(0), 0);
        assert_eq!(r.below(1), 0);
    }
}
