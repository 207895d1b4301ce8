//! A log-bucketed latency histogram (HDR-like), microsecond resolution.
//!
//! Values below 128 µs are exact; above, each power of two is split into 64 buckets,
//! so a recorded value is known within 1/64 (1.6 %). Histograms merge by addition.

/// Sub-buckets per power of two (as a shift).
const SUB_BITS: u32 = 6;
const SUB: u64 = 1 << SUB_BITS;
/// Powers of two covered: up to 2^40 µs (12 days).
const MAX_EXP: u32 = 40;
const BUCKETS: usize = ((MAX_EXP - SUB_BITS) as usize + 1) * SUB as usize + SUB as usize;

/// Latency histogram in microseconds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Histogram {
    counts: Vec<u64>,
    total: u64,
    sum: u64,
    min: u64,
    max: u64,
}

impl Default for Histogram {
    fn default() -> Self {
        Self::new()
    }
}

fn index_of(v: u64) -> usize {
    if v < 2 * SUB {
        return v as usize;
    }
    let msb = 63 - v.leading_zeros();
    let msb = msb.min(MAX_EXP);
    let shift = msb - SUB_BITS;
    let sub = (v >> shift).min(2 * SUB - 1); // in SUB..2*SUB
    ((shift as u64 + 1) * SUB + (sub - SUB)) as usize
}

/// The lowest and highest values of bucket `i`.
fn bounds_of(i: usize) -> (u64, u64) {
    let i = i as u64;
    if i < 2 * SUB {
        return (i, i);
    }
    let shift = i / SUB - 1;
    let sub = i % SUB + SUB;
    let lo = sub << shift;
    (lo, lo + (1 << shift) - 1)
}

impl Histogram {
    /// An empty histogram.
    pub fn new() -> Self {
        Histogram {
            counts: vec![0; BUCKETS],
            total: 0,
            sum: 0,
            min: u64::MAX,
            max: 0,
        }
    }

    /// Records one value (µs).
    pub fn record(&mut self, us: u64) {
        if let Some(c) = self.counts.get_mut(index_of(us)) {
            *c += 1;
        }
        self.total += 1;
        self.sum = self.sum.saturating_add(us);
        self.min = self.min.min(us);
        self.max = self.max.max(us);
    }

    /// Adds another histogram's values.
    pub fn merge(&mut self, other: &Histogram) {
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a += b;
        }
        self.total += other.total;
        self.sum = self.sum.saturating_add(other.sum);
        self.min = self.min.min(other.min);
        self.max = self.max.max(other.max);
    }

    /// Forgets every value.
    pub fn clear(&mut self) {
        *self = Histogram::new();
    }

    /// Values recorded.
    pub fn count(&self) -> u64 {
        self.total
    }

    /// Largest value recorded (0 when empty).
    pub fn max(&self) -> u64 {
        self.max
    }

    /// Smallest value recorded (0 when empty).
    pub fn min(&self) -> u64 {
        if self.total == 0 {
            0
        } else {
            self.min
        }
    }

    /// Mean value (0 when empty).
    pub fn mean(&self) -> f64 {
        if self.total == 0 {
            0.0
        } else {
            self.sum as f64 / self.total as f64
        }
    }

    /// The value at quantile `q` (0..=1): the highest value of the bucket that holds it,
    /// clamped to the recorded range (0 when empty).
    pub fn quantile(&self, q: f64) -> u64 {
        if self.total == 0 {
            return 0;
        }
        let rank = ((q.clamp(0.0, 1.0) * self.total as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (i, &c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return bounds_of(i).1.clamp(self.min, self.max);
            }
        }
        self.max
    }

    /// HdrHistogram's percentile distribution: `(p, value)` at p = 1 - 10^(-k /
    /// `per_decade`) for k = 0, 1, ... while 1 / (1 - p) stays within the count (finer
    /// percentiles say nothing more), then the max at p = 1 - 1 / count (unless the last point
    /// is already that). Empty when nothing was recorded.
    pub fn percentile_distribution(&self, per_decade: u32) -> Vec<(f64, u64)> {
        if self.total == 0 {
            return Vec::new();
        }
        let n = self.total as f64;
        let per_decade = f64::from(per_decade.max(1));
        let mut out = Vec::new();
        for k in 0u32.. {
            let tail = 10f64.powf(-f64::from(k) / per_decade);
            if tail * n < 1.0 - 1e-9 {
                break;
            }
            let p = 1.0 - tail;
            out.push((p, self.quantile(p)));
        }
        let top = (1.0 - 1.0 / n, self.max);
        if out.last() != Some(&top) {
            out.push(top);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_contiguous_and_tight() {
        let mut prev = 0;
        for v in 0..1_000_000u64 {
            let i = index_of(v);
            assert!(i == prev || i == prev + 1, "v={v}");
            let (lo, hi) = bounds_of(i);
            assert!(lo <= v && v <= hi, "v={v} lo={lo} hi={hi}");
            assert!((hi - lo) as f64 <= v as f64 / 64.0 + 1.0);
            prev = i;
        }
        assert!(index_of(u64::MAX) < BUCKETS);
    }

    #[test]
    fn quantiles() {
        let mut h = Histogram::new();
        for v in 1..=10_000 {
            h.record(v);
        }
        let p50 = h.quantile(0.5);
        assert!((4900..=5100).contains(&p50), "{p50}");
        let p99 = h.quantile(0.99);
        assert!((9800..=10_100).contains(&p99), "{p99}");
        assert_eq!(h.quantile(1.0), 10_000);
        let mut g = Histogram::new();
        g.record(50_000);
        h.merge(&g);
        assert_eq!(h.max(), 50_000);
        assert_eq!(h.count(), 10_001);
    }

    #[test]
    fn percentile_distribution_stops_at_the_count() {
        assert!(Histogram::new().percentile_distribution(8).is_empty());
        let mut h = Histogram::new();
        for v in 1..=1000 {
            h.record(v);
        }
        let d = h.percentile_distribution(8);
        // k = 0..=24 (1 / (1 - p) up to 1000), then the max.
        assert_eq!(d.len(), 26, "{d:?}");
        assert_eq!(d[0], (0.0, 1));
        assert!((d[8].0 - 0.9).abs() < 1e-12 && (899..=905).contains(&d[8].1));
        assert!((d[24].0 - 0.999).abs() < 1e-12, "{:?}", d[24]);
        let (p, max) = *d.last().unwrap();
        assert!((p - 0.999).abs() < 1e-12 && max == 1000, "{p} {max}");
        assert!(d.windows(2).all(|w| w[0].0 <= w[1].0 && w[0].1 <= w[1].1));
        let mut one = Histogram::new();
        one.record(70);
        assert_eq!(one.percentile_distribution(8), vec![(0.0, 70)]);
    }
}
