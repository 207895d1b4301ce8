//! Load balancing: which provider-agent gets the next call.
//!
//! Each loop balances on its own with no lock: it sees only its own in-flight counts,
//! which is enough because loops share the load evenly (SO_REUSEPORT).
//!
//! The default, [`Algorithm::Adaptive`], needs no hand-set weights. It sends each call to
//! the provider with the lowest in-flight count relative to its learned capacity, and
//! learns that capacity from "overloaded" answers: one drops the provider's limit to just
//! under the concurrency at which it refused (multiplicative decrease), and each success
//! at the limit raises it again by a little (additive increase). A provider that is
//! faster finishes calls sooner, so it holds fewer in flight and is picked more often:
//! the split follows real capacity, never exceeding what a provider can take.

use std::borrow::BorrowMut;

use clap::ValueEnum;

/// The load-balancing algorithms `--lb` selects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Algorithm {
    /// Least in-flight relative to a learned concurrency limit (the default).
    Adaptive,
    /// Smooth weighted round-robin (nginx's), on registered weights.
    Wrr,
    /// Least in-flight calls, weighted.
    LeastActive,
    /// Power of two random choices, on EWMA latency times in-flight.
    P2c,
}

/// Limit an unknown provider starts with: high, so the learning starts from what the
/// provider tells us rather than from a guess.
const INITIAL_LIMIT: f64 = 10_000.0;
/// Lowest learned limit.
const MIN_LIMIT: f64 = 1.0;

/// What the balancer knows of one provider-agent.
#[derive(Debug, Clone)]
pub struct Stats {
    /// Registered weight (wrr and least-active use it).
    pub weight: u32,
    /// Calls sent and not yet answered.
    pub inflight: u32,
    /// Learned concurrency limit (adaptive).
    pub limit: f64,
    /// Smoothed latency in microseconds (p2c); 0 until the first answer.
    pub ewma_us: f64,
    /// Smooth-wrr running weight.
    current: i64,
}

impl Stats {
    /// Fresh stats for a provider registered with `weight`.
    pub fn new(weight: u32) -> Self {
        Stats {
            weight: weight.max(1),
            inflight: 0,
            limit: INITIAL_LIMIT,
            ewma_us: 0.0,
            current: 0,
        }
    }

    /// A call was sent.
    pub fn on_send(&mut self) {
        self.inflight += 1;
    }

    /// A call was answered (or given up on) after `latency_us`; `overloaded` if the
    /// provider refused it for lack of capacity.
    pub fn on_answer(&mut self, latency_us: u64, overloaded: bool) {
        let inflight_at_answer = self.inflight;
        self.inflight = self.inflight.saturating_sub(1);
        if overloaded {
            self.limit = (f64::from(inflight_at_answer) - 1.0).clamp(MIN_LIMIT, self.limit);
            return;
        }
        let sample = latency_us as f64;
        self.ewma_us = if self.ewma_us == 0.0 {
            sample
        } else {
            self.ewma_us + (sample - self.ewma_us) / 8.0
        };
        if f64::from(inflight_at_answer) + 1.0 >= self.limit {
            // Working at the limit without refusal: probe a little higher.
            self.limit = (self.limit + 1.0 / self.limit.max(1.0) * 4.0).min(INITIAL_LIMIT);
        }
    }

    /// The call was lost without an answer (connection dropped, timeout).
    pub fn on_lost(&mut self) {
        self.inflight = self.inflight.saturating_sub(1);
    }
}

/// Picks providers. Holds the few bits of state an algorithm needs between picks.
#[derive(Debug, Clone)]
pub struct Balancer {
    algorithm: Algorithm,
    /// Rotates ties so equal providers take turns.
    cursor: usize,
    /// xorshift state for p2c.
    rng: u64,
}

impl Balancer {
    /// A balancer running `algorithm`.
    pub fn new(algorithm: Algorithm) -> Self {
        Balancer {
            algorithm,
            cursor: 0,
            rng: 0x2545_f491_4f6c_dd1d,
        }
    }

    /// Picks one of `stats` (the members of a service) among those `usable` says are
    /// reachable, avoiding `exclude` (the member that just failed this call) unless it is
    /// the only choice. Returns the member's index, `None` if none is usable.
    pub fn pick<S: BorrowMut<Stats>>(
        &mut self,
        stats: &mut [S],
        usable: impl Fn(usize) -> bool,
        exclude: Option<usize>,
    ) -> Option<usize> {
        let ok = |i: usize| usable(i) && Some(i) != exclude;
        let mut found = self.pick_among(stats, &ok);
        if found.is_none() {
            if let Some(e) = exclude.filter(|&e| usable(e)) {
                found = Some(e);
            }
        }
        if let Some(i) = found {
            if self.algorithm == Algorithm::Wrr {
                let total: i64 = (0..stats.len())
                    .filter(|&j| ok(j) || j == i)
                    .map(|j| i64::from(stats[j].borrow().weight))
                    .sum();
                stats[i].borrow_mut().current -= total;
            }
        }
        found
    }

    fn pick_among<S: BorrowMut<Stats>>(
        &mut self,
        stats: &mut [S],
        ok: &dyn Fn(usize) -> bool,
    ) -> Option<usize> {
        let n = stats.len();
        if n == 0 {
            return None;
        }
        self.cursor = self.cursor.wrapping_add(1);
        let start = self.cursor % n;
        let order = (0..n).map(|k| (start + k) % n).filter(|&i| ok(i));
        match self.algorithm {
            Algorithm::Adaptive => {
                // Least loaded relative to learned capacity; providers at their limit
                // only when every provider is.
                order.min_by(|&a, &b| {
                    let load = |s: &Stats| (f64::from(s.inflight) + 1.0) / s.limit;
                    let (sa, sb) = (stats[a].borrow(), stats[b].borrow());
                    let full = |s: &Stats| f64::from(s.inflight) + 1.0 > s.limit;
                    full(sa).cmp(&full(sb)).then(load(sa).total_cmp(&load(sb)))
                })
            }
            Algorithm::LeastActive => order.min_by(|&a, &b| {
                let load = |s: &Stats| f64::from(s.inflight) / f64::from(s.weight);
                load(stats[a].borrow()).total_cmp(&load(stats[b].borrow()))
            }),
            Algorithm::Wrr => {
                let mut best: Option<usize> = None;
                for i in order {
                    let s = stats[i].borrow_mut();
                    s.current += i64::from(s.weight);
                    if best.is_none_or(|b| stats[i].borrow().current > stats[b].borrow().current) {
                        best = Some(i);
                    }
                }
                best
            }
            Algorithm::P2c => {
                let k = order.clone().count();
                if k < 2 {
                    return order.clone().next();
                }
                let ra = self.next_random() % k;
                let rb = (ra + 1 + self.next_random() % (k - 1)) % k; // distinct from ra
                let a = order.clone().nth(ra)?;
                let b = order.clone().nth(rb)?;
                let cost = |s: &Stats| s.ewma_us.max(1.0) * (f64::from(s.inflight) + 1.0);
                Some(if cost(stats[a].borrow()) <= cost(stats[b].borrow()) {
                    a
                } else {
                    b
                })
            }
        }
    }

    fn next_random(&mut self) -> usize {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        self.rng as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn picks(alg: Algorithm, weights: &[u32], n: usize) -> Vec<usize> {
        let mut stats: Vec<Stats> = weights.iter().map(|&w| Stats::new(w)).collect();
        let mut b = Balancer::new(alg);
        let mut counts = vec![0; weights.len()];
        for _ in 0..n {
            let i = b.pick(&mut stats, |_| true, None).expect("a pick");
            counts[i] += 1;
        }
        counts
    }

    #[test]
    fn wrr_follows_weights_exactly() {
        assert_eq!(picks(Algorithm::Wrr, &[1, 2, 3], 600), vec![100, 200, 300]);
    }

    #[test]
    fn least_active_and_adaptive_spread_evenly_when_nothing_returns() {
        for alg in [Algorithm::LeastActive, Algorithm::Adaptive] {
            let mut stats = vec![Stats::new(100), Stats::new(100), Stats::new(100)];
            let mut b = Balancer::new(alg);
            for _ in 0..300 {
                let i = b.pick(&mut stats, |_| true, None).expect("a pick");
                stats[i].on_send();
            }
            let inflight: Vec<u32> = stats.iter().map(|s| s.inflight).collect();
            assert_eq!(inflight, vec![100, 100, 100], "{alg:?}");
        }
    }

    #[test]
    fn adaptive_learns_a_limit_from_overload_and_respects_it() {
        let mut stats = vec![Stats::new(100), Stats::new(100)];
        let mut b = Balancer::new(Algorithm::Adaptive);
        for _ in 0..20 {
            stats[0].on_send();
        }
        stats[0].on_answer(1000, true); // refused at 20 in flight: limit 19
        assert_eq!(stats[0].limit, 19.0);
        // 19 in flight on 0 (at its limit): everything goes to 1 until it is fuller.
        for _ in 0..50 {
            let i = b.pick(&mut stats, |_| true, None).expect("a pick");
            stats[i].on_send();
        }
        assert_eq!(stats[0].inflight, 19);
        assert_eq!(stats[1].inflight, 50);
    }

    #[test]
    fn unusable_and_excluded_members_are_skipped() {
        let mut stats = vec![Stats::new(1), Stats::new(1), Stats::new(1)];
        for alg in [
            Algorithm::Adaptive,
            Algorithm::Wrr,
            Algorithm::LeastActive,
            Algorithm::P2c,
        ] {
            let mut b = Balancer::new(alg);
            for _ in 0..20 {
                let i = b.pick(&mut stats, |i| i != 1, Some(0));
                assert_eq!(i, Some(2), "{alg:?}");
            }
            // The excluded one is still chosen when it is the only usable member.
            assert_eq!(b.pick(&mut stats, |i| i == 0, Some(0)), Some(0));
            assert_eq!(b.pick(&mut stats, |_| false, None), None);
        }
    }

    #[test]
    fn p2c_prefers_the_faster_provider() {
        let mut stats = vec![Stats::new(1), Stats::new(1)];
        stats[0].ewma_us = 50_000.0;
        stats[1].ewma_us = 5_000.0;
        let mut b = Balancer::new(Algorithm::P2c);
        let fast = (0..100)
            .filter(|_| b.pick(&mut stats, |_| true, None) == Some(1))
            .count();
        assert_eq!(fast, 100);
    }
}
