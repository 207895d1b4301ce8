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
//!
//! A provider whose CPU, not its thread pool, runs out never refuses: it queues, and
//! its answers slow down. So the adaptive balancer also caps each provider near the
//! concurrency it can serve at its usual latency ([`Stats::latency_cap`], revised once
//! a second from its mean latency against the lowest it showed lately), and sends it
//! more only when every provider is at one of its limits: then to the one least over
//! its cap, and past a refusal-learned limit last. A cut that does not make the
//! provider faster is undone the next second, so latency that varies for other
//! reasons (a service whose methods differ widely, a slow dependency) costs at most a
//! second's cut now and then. The floor is kept per provider and service, not per
//! method.
//!
//! Errors are not capacity: a provider that fails fast would otherwise hold the fewest
//! calls and be picked most. Every algorithm but wrr divides its measure by the
//! provider's health ([`Stats::health`]: 1, shrinking by a quarter with each failure),
//! so a failing provider gets little traffic; health doubles back every second
//! ([`Stats::recover`]), so it gets a few probing calls and returns once it answers well.

use std::borrow::BorrowMut;

use clap::ValueEnum;
use reactor::XorShift;

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
/// What one failure keeps of a provider's health.
const HEALTH_KEPT_ON_FAILURE: f64 = 0.75;
/// Share of the missing health one good answer restores.
const HEALTH_RESTORED_BY_SUCCESS: f64 = 0.25;
/// Health never counts for less than this (a division by zero otherwise).
const MIN_HEALTH: f64 = 1e-6;
/// What a second without news multiplies the health by: a failing provider's health
/// doubles each second, so it gets a few probing calls a second, and one that heals
/// is back at full share within seconds of its first good answers.
const HEALTH_GAINED_PER_SECOND: f64 = 2.0;
/// A provider is queueing when its mean latency over a second is more than this share
/// above its latency floor (the fastest answer of the last 10-20 s) ... (5% let the uneven
/// scenario's one-core provider queue 5 ms; a 50 ms provider's jitter is under 1%.)
const QUEUEING_SHARE: f64 = 0.02;
/// ... plus this much (microseconds), so that microsecond providers' jitter is not
/// taken for a queue.
const QUEUEING_SLACK_US: f64 = 1_000.0;
/// Seconds in one of the two windows the latency floor is the minimum of.
const FLOOR_WINDOW_SECS: u32 = 10;
/// How much faster the second after a cut of the latency cap must be for the cut to
/// stay.
const A_CUT_GAINS: f64 = 0.05;
/// What a second at its latency cap without queueing multiplies the cap by.
const LATENCY_CAP_REGAINED_PER_SECOND: f64 = 1.05;

/// How an answer counts for the balancer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// The provider did the call (a result, or the service's own exception).
    Done,
    /// Refused for lack of capacity: teaches the adaptive limit.
    Overloaded,
    /// Refused before any work (a malformed request, or one its policy forbids): the
    /// provider is fine, but how fast it said no says nothing of its latency.
    Declined,
    /// The provider (or its agent) failed the call: counts against its health.
    Failed,
}

/// What the balancer knows of one provider-agent.
#[derive(Debug, Clone)]
pub struct Stats {
    /// Registered weight (wrr and least-active use it).
    pub weight: u32,
    /// Calls sent and not yet answered.
    pub inflight: u32,
    /// Learned concurrency limit (adaptive): just under the concurrency at which the
    /// provider last refused a call for capacity.
    pub limit: f64,
    /// Concurrency above which the provider queues (adaptive): its latency rose above
    /// its floor at about this many calls in flight ([`Stats::recover`]). A provider
    /// at this cap is picked only when every provider is at one of its limits.
    pub latency_cap: f64,
    /// The lowest smoothed latency (microseconds) of the current and the previous
    /// floor window: the provider's latency without a queue. Smoothed, so that one
    /// uncommonly fast answer (a cache hit) does not set it.
    floor_us: [f64; 2],
    /// Seconds into the current floor window.
    floor_age: u32,
    /// The most calls in flight this second, answers done this second and their
    /// latencies summed (microseconds).
    peak_inflight: u32,
    done_this_second: u32,
    latency_sum_us: f64,
    /// The last cut of the cap: the second's mean latency that made it, and the cap
    /// before it (put back if the next second is no faster).
    last_cut: Option<(f64, f64)>,
    /// A cut was undone: no more cuts until the floor window turns (the floor that
    /// called for it is suspect).
    cuts_paused: bool,
    /// Smoothed latency in microseconds (p2c); 0 until the first answer.
    pub ewma_us: f64,
    /// 1 for a provider that answers well, shrinking geometrically with each failure.
    pub health: f64,
    /// Failures in a row (outlier ejection).
    pub consecutive_failures: u32,
    /// Ejected (left out of picks) until then.
    pub ejected_until: Option<std::time::Instant>,
    /// Ejections in a row: each doubles the next one's length.
    pub ejections: u32,
    /// Answers and failures of the last seconds (outlier ejection by success rate).
    pub recent: Recent,
    /// Smooth-wrr running weight.
    current: i64,
}

/// Seconds of history [`Recent`] keeps: the longest success-rate window.
pub const RECENT_SECS: usize = 10;

/// Calls and failures per second over the last [`RECENT_SECS`] seconds, in a ring
/// turned by [`Stats::recover`] (once a second): counting is two increments, with no
/// clock read on the call path.
#[derive(Debug, Clone, Default)]
pub struct Recent {
    calls: [u32; RECENT_SECS],
    failures: [u32; RECENT_SECS],
    /// The slot of the current second.
    now: usize,
}

impl Recent {
    fn count(&mut self, failed: bool) {
        let i = self.now % RECENT_SECS;
        self.calls[i] = self.calls[i].saturating_add(1);
        if failed {
            self.failures[i] = self.failures[i].saturating_add(1);
        }
    }

    fn turn(&mut self) {
        self.now = (self.now + 1) % RECENT_SECS;
        self.calls[self.now] = 0;
        self.failures[self.now] = 0;
    }

    /// Calls and failures of the current second and the `secs - 1` before it (`secs`
    /// at most [`RECENT_SECS`]).
    pub fn last(&self, secs: usize) -> (u64, u64) {
        let secs = secs.clamp(1, RECENT_SECS);
        (0..secs).fold((0, 0), |(c, f), back| {
            let i = (self.now + RECENT_SECS - back) % RECENT_SECS;
            (
                c + u64::from(self.calls[i]),
                f + u64::from(self.failures[i]),
            )
        })
    }

    /// Forgets everything (after an ejection: the instance starts afresh).
    pub fn clear(&mut self) {
        *self = Recent::default();
    }
}

impl Stats {
    /// Fresh stats for a provider registered with `weight`.
    pub fn new(weight: u32) -> Self {
        Stats {
            weight: weight.max(1),
            inflight: 0,
            limit: INITIAL_LIMIT,
            latency_cap: INITIAL_LIMIT,
            floor_us: [f64::INFINITY; 2],
            floor_age: 0,
            peak_inflight: 0,
            done_this_second: 0,
            latency_sum_us: 0.0,
            last_cut: None,
            cuts_paused: false,
            ewma_us: 0.0,
            health: 1.0,
            consecutive_failures: 0,
            ejected_until: None,
            ejections: 0,
            recent: Recent::default(),
            current: 0,
        }
    }

    /// Whether it is ejected at `now`.
    pub fn is_ejected(&self, now: std::time::Instant) -> bool {
        self.ejected_until.is_some_and(|t| now < t)
    }

    /// A call was sent.
    pub fn on_send(&mut self) {
        self.inflight += 1;
        self.peak_inflight = self.peak_inflight.max(self.inflight);
    }

    /// The mean latency over a second (microseconds) above which the provider is
    /// queueing.
    fn queueing_above_us(&self) -> f64 {
        let floor = self.floor_us[0].min(self.floor_us[1]);
        floor * (1.0 + QUEUEING_SHARE) + QUEUEING_SLACK_US
    }

    /// The concurrency it is picked up to while others have room: the lower of its
    /// two learned limits.
    pub fn effective_limit(&self) -> f64 {
        self.limit.min(self.latency_cap)
    }

    /// A call was answered after `latency_us`. Only calls the provider did count as
    /// capacity (latency, a higher limit); a refusal lowers the limit; a failure lowers
    /// the health.
    pub fn on_answer(&mut self, latency_us: u64, answer: Answer) {
        let inflight_at_answer = self.inflight;
        self.inflight = self.inflight.saturating_sub(1);
        if answer != Answer::Failed {
            self.consecutive_failures = 0;
            self.recent.count(false);
        }
        match answer {
            Answer::Failed => return self.on_failure(),
            Answer::Overloaded => {
                self.limit = (f64::from(inflight_at_answer) - 1.0).clamp(MIN_LIMIT, self.limit);
                return;
            }
            Answer::Declined => return,
            Answer::Done => self.health += (1.0 - self.health) * HEALTH_RESTORED_BY_SUCCESS,
        }
        let sample = latency_us as f64;
        self.done_this_second = self.done_this_second.saturating_add(1);
        self.latency_sum_us += sample;
        self.ewma_us = if self.ewma_us == 0.0 {
            sample
        } else {
            self.ewma_us + (sample - self.ewma_us) / 8.0
        };
        self.floor_us[0] = self.floor_us[0].min(self.ewma_us);
        if f64::from(inflight_at_answer) + 1.0 >= self.limit {
            // Working at the limit without refusal: probe a little higher.
            self.limit = (self.limit + 1.0 / self.limit.max(1.0) * 4.0).min(INITIAL_LIMIT);
        }
    }

    fn on_failure(&mut self) {
        self.health = (self.health * HEALTH_KEPT_ON_FAILURE).max(MIN_HEALTH);
        self.consecutive_failures = self.consecutive_failures.saturating_add(1);
        self.recent.count(true);
    }

    /// Called once a second: failures fade, so a provider that failed gets probing
    /// calls again (and keeps them if they succeed); the latency cap follows the
    /// second's latency.
    ///
    /// A provider that slows down under load without refusing (its own CPU, not its
    /// thread pool, is the bottleneck) would otherwise be given as many calls as a
    /// faster one and queue them. If its mean latency over the second was above its
    /// floor by more than [`QUEUEING_SHARE`] and [`QUEUEING_SLACK_US`], its cap becomes
    /// the second's peak concurrency scaled by how much faster it must answer (Little's
    /// law: at the same throughput, concurrency goes with latency). If the next second
    /// is not faster by [`A_CUT_GAINS`] at least, fewer calls did not shorten its
    /// latency (a provider whose latency merely varies, or is slow whatever its load):
    /// that cut is undone, and no other is made until the floor window turns. A second
    /// spent at the cap without queueing raises it by a twentieth (and one), probing
    /// for room regained.
    pub fn recover(&mut self) {
        self.health = (self.health * HEALTH_GAINED_PER_SECOND).min(1.0);
        self.recent.turn();
        let last_cut = self.last_cut.take();
        if self.done_this_second > 0 {
            let mean = self.latency_sum_us / f64::from(self.done_this_second);
            let floor = self.floor_us[0].min(self.floor_us[1]);
            let queueing = mean > self.queueing_above_us();
            match last_cut {
                Some((cut_at, before)) if queueing && mean > cut_at * (1.0 - A_CUT_GAINS) => {
                    self.latency_cap = before;
                    self.cuts_paused = true;
                }
                _ if queueing && !self.cuts_paused => {
                    let basis = f64::from(self.peak_inflight).min(self.latency_cap);
                    self.last_cut = Some((mean, self.latency_cap));
                    self.latency_cap = (basis * floor / mean).max(MIN_LIMIT);
                }
                _ if f64::from(self.peak_inflight) + 1.0 >= self.latency_cap => {
                    self.latency_cap = (self.latency_cap * LATENCY_CAP_REGAINED_PER_SECOND + 1.0)
                        .min(INITIAL_LIMIT);
                }
                _ => {}
            }
        }
        self.peak_inflight = self.inflight;
        self.done_this_second = 0;
        self.latency_sum_us = 0.0;
        self.floor_age += 1;
        if self.floor_age >= FLOOR_WINDOW_SECS {
            self.floor_age = 0;
            self.floor_us = [f64::INFINITY, self.floor_us[0]];
            self.cuts_paused = false;
        }
    }

    /// The call was lost without an answer (connection dropped, timeout): a failure.
    pub fn on_lost(&mut self) {
        self.inflight = self.inflight.saturating_sub(1);
        self.on_failure();
    }
}

/// Picks providers. Holds the few bits of state an algorithm needs between picks.
#[derive(Debug, Clone)]
pub struct Balancer {
    algorithm: Algorithm,
    /// Rotates ties so equal providers take turns.
    cursor: usize,
    /// Random numbers for p2c.
    rng: XorShift,
}

impl Balancer {
    /// A balancer running `algorithm`.
    pub fn new(algorithm: Algorithm) -> Self {
        Balancer {
            algorithm,
            cursor: 0,
            rng: XorShift::new(0x2545_f491_4f6c_dd1d),
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
                // Least loaded relative to learned capacity. Providers at their latency
                // cap only when every provider is at a limit, and then the one least
                // over its cap (a cap is no measure of capacity while others have
                // room: a provider capped once would get no calls to lift it by);
                // providers at the limit they refused at only when every one is.
                order.min_by(|&a, &b| {
                    let (sa, sb) = (stats[a].borrow(), stats[b].borrow());
                    let next = |s: &Stats| f64::from(s.inflight) + 1.0;
                    let tier = |s: &Stats| match next(s) {
                        n if n > s.limit => 2,
                        n if n > s.latency_cap => 1,
                        _ => 0,
                    };
                    let load = |s: &Stats| {
                        let limit = if tier(s) == 1 { s.latency_cap } else { s.limit };
                        next(s) / (limit * s.health)
                    };
                    tier(sa).cmp(&tier(sb)).then(load(sa).total_cmp(&load(sb)))
                })
            }
            Algorithm::LeastActive => order.min_by(|&a, &b| {
                let load =
                    |s: &Stats| (f64::from(s.inflight) + 1.0) / (f64::from(s.weight) * s.health);
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
                let ra = self.rng.below(k);
                let rb = (ra + 1 + self.rng.below(k - 1)) % k; // distinct from ra
                let a = order.clone().nth(ra)?;
                let b = order.clone().nth(rb)?;
                let cost =
                    |s: &Stats| s.ewma_us.max(1.0) * (f64::from(s.inflight) + 1.0) / s.health;
                Some(if cost(stats[a].borrow()) <= cost(stats[b].borrow()) {
                    a
                } else {
                    b
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recent_counts_the_last_seconds_only() {
        let mut s = Stats::new(1);
        for _ in 0..4 {
            s.on_send();
            s.on_answer(10, Answer::Done);
        }
        s.on_send();
        s.on_lost();
        assert_eq!(s.recent.last(1), (5, 1));
        s.recover();
        s.on_send();
        s.on_answer(10, Answer::Failed);
        assert_eq!(s.recent.last(1), (1, 1), "a new second");
        assert_eq!(s.recent.last(2), (6, 2));
        for _ in 0..RECENT_SECS {
            s.recover();
        }
        assert_eq!(s.recent.last(RECENT_SECS), (0, 0), "all aged out");
    }

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
        stats[0].on_answer(1000, Answer::Overloaded); // refused at 20 in flight: limit 19
        assert_eq!(stats[0].limit, 19.0);
        // 19 in flight on 0 (at its limit): everything goes to 1 until it is fuller.
        for _ in 0..50 {
            let i = b.pick(&mut stats, |_| true, None).expect("a pick");
            stats[i].on_send();
        }
        assert_eq!(stats[0].inflight, 19);
        assert_eq!(stats[1].inflight, 50);
    }

    /// `n` answers of `latency_us` from `s`, each followed by a new call (in flight
    /// stays where it is).
    fn answered(s: &mut Stats, n: usize, latency_us: u64) {
        for _ in 0..n {
            s.on_answer(latency_us, Answer::Done);
            s.on_send();
        }
    }

    #[test]
    fn adaptive_caps_a_provider_that_queues_and_probes_for_room_again() {
        let mut stats = vec![Stats::new(1), Stats::new(1)];
        // A second at 50 ms and 100 in flight each: the floor, no cap.
        for s in stats.iter_mut() {
            for _ in 0..100 {
                s.on_send();
            }
            answered(s, 100, 50_000);
            s.recover();
            assert_eq!(s.latency_cap, INITIAL_LIMIT);
        }
        // Provider 0 slows to 100 ms at the same concurrency (its CPU, not its threads,
        // is the bottleneck): it would answer within its floor at about 50 in flight.
        answered(&mut stats[0], 100, 100_000);
        stats[0].recover();
        let cap = stats[0].latency_cap;
        assert!((49.0..=51.0).contains(&cap), "cap {cap}");
        // Its calls finish; new ones fill it to its cap and then go to provider 1.
        for s in stats.iter_mut() {
            s.inflight = 0;
        }
        let mut b = Balancer::new(Algorithm::Adaptive);
        let mut sent = [0u32; 2];
        for _ in 0..200 {
            let i = b.pick(&mut stats, |_| true, None).expect("a pick");
            stats[i].on_send();
            sent[i] += 1;
        }
        assert_eq!(sent[0], cap as u32, "{sent:?}");
        // A second at its cap answering at its floor again: the cap grows.
        answered(&mut stats[0], 100, 50_000);
        stats[0].recover();
        assert!(stats[0].latency_cap > cap + 1.0, "{}", stats[0].latency_cap);
        // Every provider at one of its limits. Over its cap comes before over the
        // limit it refused at (the cap steers calls, it refuses none) ...
        let cap = stats[0].latency_cap;
        stats[0].inflight = cap as u32 + 5;
        stats[1].limit = f64::from(stats[1].inflight) - 1.0;
        assert_eq!(b.pick(&mut stats, |_| true, None), Some(0));
        // ... and between two over their caps, the one least over its own.
        stats[1].limit = INITIAL_LIMIT;
        stats[1].latency_cap = f64::from(stats[1].inflight) - 1.0;
        assert_eq!(b.pick(&mut stats, |_| true, None), Some(1));
    }

    #[test]
    fn quick_refusals_by_policy_do_not_lower_the_floor() {
        let mut s = Stats::new(1);
        for _ in 0..100 {
            s.on_send();
        }
        // Forbidden calls answered in 100 µs among calls done in 50 ms.
        for _ in 0..1_000 {
            answered(&mut s, 1, 50_000);
            s.on_answer(100, Answer::Declined);
            s.on_send();
        }
        s.recover();
        assert_eq!(s.latency_cap, INITIAL_LIMIT);
        assert_eq!(s.floor_us[0], 50_000.0);
        assert_eq!(s.inflight, 100);
    }

    #[test]
    fn latency_that_does_not_follow_the_load_sets_no_lasting_cap() {
        // 100 in flight, a minute of answers whose latency varies whatever the load
        // (50-55 ms, 50-60 ms, 5-8 ms), and 50 ms answers with one 2 ms cache hit a
        // second: a cut, if any, is undone the next second.
        type Draw = fn(&mut XorShift) -> u64;
        let cases: [(&str, Draw); 4] = [
            ("50-55 ms", |r| 50_000 + r.below(5_001) as u64),
            ("50-60 ms", |r| 50_000 + r.below(10_001) as u64),
            ("5-8 ms", |r| 5_000 + r.below(3_001) as u64),
            ("a cache hit", |r| {
                if r.below(1_000) == 0 {
                    2_000
                } else {
                    50_000
                }
            }),
        ];
        for (name, draw) in cases {
            let mut s = Stats::new(1);
            for _ in 0..100 {
                s.on_send();
            }
            let mut rng = XorShift::new(11);
            let mut lowest = f64::MAX;
            for _ in 0..60 {
                for _ in 0..1_000 {
                    answered(&mut s, 1, draw(&mut rng));
                }
                s.recover();
                lowest = lowest.min(s.latency_cap);
            }
            assert!(lowest >= 70.0, "{name}: the cap fell to {lowest}");
            assert!(
                s.latency_cap >= 100.0,
                "{name}: the cap ended at {}",
                s.latency_cap
            );
        }
    }

    #[test]
    fn steady_latency_and_microsecond_jitter_set_no_cap() {
        // 50 ms with a millisecond of jitter at 170 in flight (the classic load), and
        // a 50 µs provider whose answers take up to 900 µs under load.
        for (floor, jitter) in [(50_000u64, 1_000u64), (50, 850)] {
            let mut s = Stats::new(1);
            for _ in 0..170 {
                s.on_send();
            }
            let mut rng = XorShift::new(7);
            for _ in 0..30 {
                for _ in 0..1_000 {
                    let latency = floor + rng.below(jitter as usize + 1) as u64;
                    answered(&mut s, 1, latency);
                }
                s.recover();
            }
            assert_eq!(s.latency_cap, INITIAL_LIMIT, "floor {floor} µs");
        }
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

    #[test]
    fn a_provider_failing_fast_gets_little_traffic_and_comes_back() {
        for alg in [Algorithm::Adaptive, Algorithm::LeastActive, Algorithm::P2c] {
            // 0 answers in 10 ms, 1 fails at once: simulate 10,000 calls at 20 in flight.
            let mut stats = vec![Stats::new(100), Stats::new(100)];
            let mut b = Balancer::new(alg);
            let mut sent = [0usize; 2];
            let mut slow: std::collections::VecDeque<()> = Default::default();
            for _ in 0..10_000 {
                let i = b.pick(&mut stats, |_| true, None).expect("a pick");
                sent[i] += 1;
                stats[i].on_send();
                if i == 1 {
                    stats[1].on_answer(50, Answer::Failed);
                } else {
                    slow.push_back(());
                    if slow.len() > 20 {
                        slow.pop_front();
                        stats[0].on_answer(10_000, Answer::Done);
                    }
                }
            }
            assert!(sent[1] < 100, "{alg:?}: the failing provider took {sent:?}");
            // Healed: after a few seconds' fading it takes calls again, and keeps them.
            for _ in 0..30 {
                stats[1].recover();
            }
            let mut back = 0;
            for _ in 0..1_000 {
                let i = b.pick(&mut stats, |_| true, None).expect("a pick");
                stats[i].on_send();
                stats[i].on_answer(50, Answer::Done);
                back += usize::from(i == 1);
            }
            assert!(
                back > 100,
                "{alg:?}: the healed provider took {back} of 1,000"
            );
        }
    }
}
