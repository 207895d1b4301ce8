//! Per service and method metrics with bounded cardinality.
//!
//! Each loop owns a [`MethodTable`]: its only writer, updated without a lock and
//! without allocating for a method already in it. The admin thread reads every loop's
//! counters through the shared [`MethodStats`] and sums them when `/metrics` is scraped
//! ([`MethodStats::render`]), as the agents' other counters are summed.
//!
//! # Why bounded, and how the busiest are kept
//!
//! Service and method names come from callers. A caller sending 100,000 random method
//! names must not make 100,000 series: not in the agent's memory, and not in the
//! Prometheus server that scrapes it (every series ever exported costs it memory until
//! it ages out). So a table holds at most `max_series` (service, method) series; every
//! other call is counted in one series labelled `service="other",method="other"`.
//!
//! Which methods get a series: the first ones seen take the free slots. Once the table
//! is full, a method not in it is counted under `other`, and also in a small
//! *candidate* sketch (the space-saving algorithm of Metwally et al. over
//! [`CANDIDATES`] entries: a new name replaces the least counted one, so a name seen
//! more than 1/[`CANDIDATES`] of the time is surely in it, and random names churn
//! through the bottom of it without growing it). Every [`RERANK_EVERY`] the loop
//! re-ranks ([`MethodTable::tick`]): a candidate whose guaranteed count in the period
//! is above the table's least busy series (by hits decayed by half each period), and at
//! least [`MIN_PROMOTE`], takes that series' slot. The evicted series' counts are added to `other` so that totals
//! stay monotonic, and the newcomer starts from zero.
//!
//! Space-saving alone (replacing the table's least counted entry on every miss) was
//! rejected: under a flood of random names every new name would become an exported
//! series for a moment, which is exactly the churn the bound is there to stop. With
//! re-ranking only at period ends, a series changes at most once per period per slot,
//! and only for a method that is really busier. Decaying the table's hits (rather than
//! resetting them) gives an established method about two periods of history against a
//! candidate's one: a hysteresis that keeps two methods of similar rate from trading
//! places every period, while a method that went quiet fades out in a few periods.
//!
//! Each loop keeps its own table (no lock or shared cache line between loops), so the
//! loops may hold different sets; [`MethodStats::render`] merges them and keeps the
//! `max_series` busiest of the union, adding the rest to `other`, so the exported
//! series are bounded by `max_series` whatever the loop count.
//!
//! # Notes
//!
//! A name longer than [`MAX_NAME_BYTES`] (service and method together) is counted
//! under `other` at once. Names are compared after hashing with foldhash's quality
//! hasher, keyed at random per process (as the agents' other per-call maps), so callers
//! cannot aim collisions at the table; a collision anyway counts the call under
//! `other`, never under another method.

use std::collections::HashMap;
use std::hash::{BuildHasher, BuildHasherDefault, Hasher};

use foldhash::quality::RandomState;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use codec::prometheus::{bucket_index, Histogram, Kind, Writer, LATENCY_SLOTS};

/// Default bound on the method series (`--max-method-series`).
pub const DEFAULT_MAX_SERIES: usize = 256;
/// Longest service and method name, together, that gets a series of its own.
pub const MAX_NAME_BYTES: usize = 512;
/// Entries of a loop's candidate sketch (fewer if `max_series` is smaller).
pub const CANDIDATES: usize = 64;
/// How often a loop re-ranks its table (see the module's notes).
pub const RERANK_EVERY: Duration = Duration::from_secs(10);
/// Hits a candidate must surely have had in a period to take a series' slot: a name
/// seen once (as every name of a random flood is) never displaces a series, even one
/// that went quiet.
pub const MIN_PROMOTE: u64 = 2;
/// The service and method label of the series counting every call not in the table.
pub const OTHER: &str = "other";

/// A method's place in a loop's table, from [`MethodTable::lookup`], for
/// [`MethodTable::record`] when the call completes. A place re-ranked away meanwhile is
/// recorded under `other`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MethodRef {
    slot: u32,
    gen: u32,
}

/// One series' counters: written by its loop only (plain loads and stores), read by
/// the admin thread.
#[derive(Debug)]
struct Counters {
    requests: AtomicU64,
    statuses: Box<[AtomicU64]>,
    buckets: [AtomicU64; LATENCY_SLOTS],
    sum_us: AtomicU64,
}

fn bump(c: &AtomicU64, by: u64) {
    c.store(c.load(Relaxed).wrapping_add(by), Relaxed);
}

impl Counters {
    fn new(statuses: usize) -> Self {
        Counters {
            requests: AtomicU64::new(0),
            statuses: (0..statuses).map(|_| AtomicU64::new(0)).collect(),
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
            sum_us: AtomicU64::new(0),
        }
    }

    fn add(&self, status: usize, latency_us: u64) {
        bump(&self.requests, 1);
        if let Some(c) = self.statuses.get(status) {
            bump(c, 1);
        }
        if let Some(c) = self.buckets.get(bucket_index(latency_us)) {
            bump(c, 1);
        }
        bump(&self.sum_us, latency_us);
    }

    /// Adds these counts to `into` and zeroes them.
    fn move_into(&self, into: &Counters) {
        let pairs = std::iter::once((&self.requests, &into.requests))
            .chain(self.statuses.iter().zip(into.statuses.iter()))
            .chain(self.buckets.iter().zip(into.buckets.iter()))
            .chain(std::iter::once((&self.sum_us, &into.sum_us)));
        for (from, to) in pairs {
            bump(to, from.swap(0, Relaxed));
        }
    }

    fn add_to(&self, agg: &mut Agg) {
        agg.requests += self.requests.load(Relaxed);
        for (a, c) in agg.statuses.iter_mut().zip(self.statuses.iter()) {
            *a += c.load(Relaxed);
        }
        for (a, c) in agg.latency.counts.iter_mut().zip(self.buckets.iter()) {
            *a += c.load(Relaxed);
        }
        agg.latency.sum_us = agg.latency.sum_us.saturating_add(self.sum_us.load(Relaxed));
    }
}

/// A series' service and method.
type Name = (Box<str>, Box<str>);

/// The names of a loop's series, by slot: what the admin thread labels them with.
type Names = Vec<Option<Name>>;

/// One loop's part of the shared state.
#[derive(Debug)]
struct LoopPart {
    /// Taken by the loop only to name a slot (a new method, or a re-ranking), and by
    /// the admin thread while it reads: never on the path of a known method.
    names: Mutex<Names>,
    /// `max_series` slots, then `other`.
    counters: Box<[Counters]>,
}

/// Every loop's method series, as the admin thread reads them.
#[derive(Debug)]
pub struct MethodStats {
    statuses: &'static [&'static str],
    max_series: usize,
    loops: Box<[LoopPart]>,
}

/// Sums of one series over the loops (admin thread).
#[derive(Debug, Clone)]
struct Agg {
    requests: u64,
    statuses: Vec<u64>,
    latency: Histogram,
}

impl Agg {
    fn new(statuses: usize) -> Self {
        Agg {
            requests: 0,
            statuses: vec![0; statuses],
            latency: Histogram::new(),
        }
    }

    fn add(&mut self, other: &Agg) {
        self.requests += other.requests;
        for (a, b) in self.statuses.iter_mut().zip(&other.statuses) {
            *a += b;
        }
        for (a, b) in self.latency.counts.iter_mut().zip(&other.latency.counts) {
            *a += b;
        }
        self.latency.sum_us = self.latency.sum_us.saturating_add(other.latency.sum_us);
    }
}

fn lock(m: &Mutex<Names>) -> MutexGuard<'_, Names> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl MethodStats {
    /// Tables for `loops` loops of at most `max_series` series each, counting answers
    /// by the statuses named `statuses` (index = the status given to
    /// [`MethodTable::record`]; the first is taken as success).
    pub fn new(loops: usize, max_series: usize, statuses: &'static [&'static str]) -> Arc<Self> {
        let loops = (0..loops.max(1))
            .map(|_| LoopPart {
                names: Mutex::new(vec![None; max_series]),
                counters: (0..=max_series)
                    .map(|_| Counters::new(statuses.len()))
                    .collect(),
            })
            .collect();
        Arc::new(MethodStats {
            statuses,
            max_series,
            loops,
        })
    }

    /// The bound on series.
    pub fn max_series(&self) -> usize {
        self.max_series
    }

    /// Loop `index`'s table (the last loop's for an index beyond the count). Call once
    /// per loop: two tables of one loop would both write its counters.
    pub fn table(self: &Arc<Self>, index: usize) -> MethodTable {
        MethodTable::new(self.clone(), index.min(self.loops.len() - 1))
    }

    /// Every loop's series summed: the named ones (at most `max_series`, the busiest
    /// of the loops' union) and `other`.
    fn merged(&self) -> (Vec<(Name, Agg)>, Agg) {
        let n = self.statuses.len();
        let mut by_name: HashMap<Name, Agg> = HashMap::new();
        let mut other = Agg::new(n);
        for part in self.loops.iter() {
            let names = lock(&part.names);
            for (slot, name) in names.iter().enumerate() {
                let (Some(name), Some(c)) = (name, part.counters.get(slot)) else {
                    continue;
                };
                c.add_to(by_name.entry(name.clone()).or_insert_with(|| Agg::new(n)));
            }
            if let Some(c) = part.counters.get(self.max_series) {
                c.add_to(&mut other);
            }
        }
        let mut named: Vec<_> = by_name.into_iter().collect();
        if named.len() > self.max_series {
            named.sort_by(|a, b| b.1.requests.cmp(&a.1.requests).then(a.0.cmp(&b.0)));
            for (_, agg) in named.drain(self.max_series..) {
                other.add(&agg);
            }
        }
        named.sort_by(|a, b| a.0.cmp(&b.0));
        (named, other)
    }

    /// Named series exported now (at most `max_series`).
    pub fn series(&self) -> usize {
        self.merged().0.len()
    }

    /// Calls counted under `other`, all loops.
    pub fn other_requests(&self) -> u64 {
        self.merged().1.requests
    }

    /// Appends the families `<prefix>_method_requests_total`,
    /// `<prefix>_method_responses_total` (by `status`; statuses never seen omitted),
    /// `<prefix>_method_latency_seconds` (a histogram), each labelled `service` and
    /// `method`, and the gauge `<prefix>_method_series`.
    pub fn render(&self, w: &mut Writer, prefix: &str) {
        let (named, other) = self.merged();
        let all = || {
            named
                .iter()
                .map(|((s, m), agg)| (&**s, &**m, agg))
                .chain(std::iter::once((OTHER, OTHER, &other)))
        };
        let name = format!("{prefix}_method_requests_total");
        let mut f = w.family(
            &name,
            "Calls answered, by service and method (the busiest --max-method-series; the rest under method=\"other\").",
            Kind::Counter,
        );
        for (s, m, agg) in all() {
            f.sample(&[("service", s), ("method", m)], agg.requests);
        }
        let name = format!("{prefix}_method_responses_total");
        let mut f = w.family(
            &name,
            "Calls answered, by service, method and status.",
            Kind::Counter,
        );
        for (s, m, agg) in all() {
            for (status, count) in self.statuses.iter().zip(&agg.statuses) {
                if *count > 0 {
                    f.sample(&[("service", s), ("method", m), ("status", status)], *count);
                }
            }
        }
        let name = format!("{prefix}_method_latency_seconds");
        let mut f = w.family(
            &name,
            "Time from a call's arrival to its answer, by service and method.",
            Kind::Histogram,
        );
        for (s, m, agg) in all() {
            f.histogram(&[("service", s), ("method", m)], &agg.latency);
        }
        let name = format!("{prefix}_method_series");
        w.gauge(
            &name,
            "Service and method series exported (at most --max-method-series, \"other\" aside).",
            named.len(),
        );
    }
}

/// A hasher for keys that are hashes already.
#[derive(Debug, Default)]
struct Prehashed(u64);

impl Hasher for Prehashed {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

type ByHash = HashMap<u64, u32, BuildHasherDefault<Prehashed>>;

/// A name kept by the loop: service and method in one string.
#[derive(Debug, Default)]
struct Key {
    hash: u64,
    text: String,
    service_len: usize,
}

impl Key {
    fn set(&mut self, hash: u64, service: &str, method: &str) {
        self.hash = hash;
        self.text.clear();
        self.text.push_str(service);
        self.text.push_str(method);
        self.service_len = service.len();
    }

    fn is(&self, service: &str, method: &str) -> bool {
        self.service_len == service.len()
            && self.text.len() == service.len() + method.len()
            && self.text.get(..self.service_len) == Some(service)
            && self.text.get(self.service_len..) == Some(method)
    }

    fn split(&self) -> (&str, &str) {
        let (s, m) = self
            .text
            .split_at_checked(self.service_len)
            .unwrap_or(("", ""));
        (s, m)
    }
}

/// A candidate for a series: a name of the space-saving sketch.
#[derive(Debug, Default)]
struct Candidate {
    key: Key,
    /// Hits counted, an over-estimate by at most `error`.
    count: u64,
    error: u64,
}

impl Candidate {
    /// Hits it surely had this period.
    fn guaranteed(&self) -> u64 {
        self.count - self.error
    }
}

/// One loop's method table (see the module's notes): the loop's only writer of its
/// part of [`MethodStats`].
#[derive(Debug)]
pub struct MethodTable {
    stats: Arc<MethodStats>,
    index: usize,
    hasher: RandomState,
    /// Slot of each name in the table, by its hash.
    by_hash: ByHash,
    /// Per slot in use (`0..keys.len()`): its name, generation and decayed hits.
    keys: Vec<Key>,
    gens: Vec<u32>,
    hits: Vec<u64>,
    /// The sketch: `candidates[..live]` are this period's; the rest keep their string
    /// buffers for reuse.
    candidates: Vec<Candidate>,
    live: usize,
    /// Entries the sketch holds at most.
    candidate_cap: usize,
    candidate_by_hash: ByHash,
    last_rerank: Option<Instant>,
}

impl MethodTable {
    fn new(stats: Arc<MethodStats>, index: usize) -> Self {
        let n = stats.max_series;
        let cap = CANDIDATES.min(n);
        MethodTable {
            stats,
            index,
            hasher: RandomState::default(),
            by_hash: ByHash::with_capacity_and_hasher(n, Default::default()),
            keys: Vec::with_capacity(n),
            gens: Vec::with_capacity(n),
            hits: Vec::with_capacity(n),
            candidates: Vec::with_capacity(cap),
            live: 0,
            candidate_cap: cap,
            candidate_by_hash: ByHash::with_capacity_and_hasher(cap, Default::default()),
            last_rerank: None,
        }
    }

    fn part(&self) -> &LoopPart {
        &self.stats.loops[self.index]
    }

    fn other(&self) -> MethodRef {
        MethodRef {
            slot: self.stats.max_series as u32,
            gen: 0,
        }
    }

    /// The place of `service`'s `method`, counting a hit for its rank. A method not in
    /// the table gets a free slot if there is one; else its place is `other` (and it
    /// becomes a candidate for the next re-ranking).
    pub fn lookup(&mut self, service: &str, method: &str) -> MethodRef {
        if service.len() + method.len() > MAX_NAME_BYTES {
            return self.other();
        }
        let hash = self.hasher.hash_one((service, method));
        if let Some(&slot) = self.by_hash.get(&hash) {
            let s = slot as usize;
            let other = self.other();
            return match (self.keys.get(s), self.hits.get_mut(s), self.gens.get(s)) {
                (Some(k), Some(h), Some(&gen)) if k.is(service, method) => {
                    *h += 1;
                    MethodRef { slot, gen }
                }
                _ => other,
            };
        }
        if self.keys.len() < self.stats.max_series {
            return self.insert(hash, service, method);
        }
        self.candidate(hash, service, method);
        self.other()
    }

    /// Takes a free slot for a new name; `other` if the admin thread is reading (the
    /// next call of it tries again).
    fn insert(&mut self, hash: u64, service: &str, method: &str) -> MethodRef {
        let slot = self.keys.len();
        {
            let Ok(mut names) = self.part().names.try_lock() else {
                return self.other();
            };
            let Some(name) = names.get_mut(slot) else {
                return self.other();
            };
            *name = Some((service.into(), method.into()));
        }
        let mut key = Key::default();
        key.set(hash, service, method);
        self.keys.push(key);
        self.gens.push(0);
        self.hits.push(1);
        self.by_hash.insert(hash, slot as u32);
        MethodRef {
            slot: slot as u32,
            gen: 0,
        }
    }

    /// Counts a hit of a name not in the table in the space-saving sketch.
    fn candidate(&mut self, hash: u64, service: &str, method: &str) {
        let cap = self.candidate_cap;
        if cap == 0 {
            return;
        }
        if let Some(&i) = self.candidate_by_hash.get(&hash) {
            if let Some(c) = self.candidates.get_mut(i as usize) {
                if c.key.is(service, method) {
                    c.count += 1;
                }
            }
            return;
        }
        if self.live < cap {
            if self.live == self.candidates.len() {
                self.candidates.push(Candidate::default());
            }
            if let Some(c) = self.candidates.get_mut(self.live) {
                c.key.set(hash, service, method);
                c.count = 1;
                c.error = 0;
            }
            self.candidate_by_hash.insert(hash, self.live as u32);
            self.live += 1;
            return;
        }
        // Full: the least counted gives its place, and its count (as the newcomer's
        // possible over-estimate), to the new name.
        let live = self.candidates.get_mut(..self.live).unwrap_or_default();
        let Some((i, c)) = live.iter_mut().enumerate().min_by_key(|(_, c)| c.count) else {
            return;
        };
        self.candidate_by_hash.remove(&c.key.hash);
        c.key.set(hash, service, method);
        c.error = c.count;
        c.count += 1;
        self.candidate_by_hash.insert(hash, i as u32);
    }

    /// Counts one answered call at `place`: its status (index into the statuses of
    /// [`MethodStats::new`]) and latency.
    pub fn record(&mut self, place: MethodRef, status: usize, latency_us: u64) {
        let slot = place.slot as usize;
        let current = self.gens.get(slot) == Some(&place.gen);
        let slot = if current { slot } else { self.stats.max_series };
        if let Some(c) = self.part().counters.get(slot) {
            c.add(status, latency_us);
        }
    }

    /// [`lookup`](Self::lookup) and [`record`](Self::record) at once, for a call whose
    /// names are at hand when it completes.
    pub fn observe(&mut self, service: &str, method: &str, status: usize, latency_us: u64) {
        let place = self.lookup(service, method);
        self.record(place, status, latency_us);
    }

    /// Re-ranks when [`RERANK_EVERY`] has passed since the last time; call it from a
    /// periodic timer of the loop.
    pub fn tick(&mut self, now: Instant) {
        match self.last_rerank {
            None => self.last_rerank = Some(now),
            Some(t) if now.saturating_duration_since(t) >= RERANK_EVERY => {
                self.last_rerank = Some(now);
                self.rerank();
            }
            Some(_) => {}
        }
    }

    /// Ends a period: candidates busier than the least busy series take their slots,
    /// the table's hits decay by half, and the sketch starts afresh.
    pub fn rerank(&mut self) {
        if self.live > 0 && self.keys.len() == self.stats.max_series {
            self.promote();
        }
        for h in &mut self.hits {
            *h /= 2;
        }
        self.live = 0;
        self.candidate_by_hash.clear();
    }

    fn promote(&mut self) {
        let stats = self.stats.clone();
        let Some(part) = stats.loops.get(self.index) else {
            return;
        };
        // The admin thread reading now: try again next period.
        let Ok(mut names) = part.names.try_lock() else {
            return;
        };
        let Some(other) = part.counters.get(stats.max_series) else {
            return;
        };
        let live = self.candidates.get_mut(..self.live).unwrap_or_default();
        live.sort_unstable_by_key(|c| std::cmp::Reverse(c.guaranteed()));
        for c in live.iter_mut() {
            let Some((slot, &least)) = self.hits.iter().enumerate().min_by_key(|(_, h)| **h) else {
                return;
            };
            if c.guaranteed() <= least || c.guaranteed() < MIN_PROMOTE {
                return;
            }
            let (Some(key), Some(gen), Some(hits), Some(counters), Some(name)) = (
                self.keys.get_mut(slot),
                self.gens.get_mut(slot),
                self.hits.get_mut(slot),
                part.counters.get(slot),
                names.get_mut(slot),
            ) else {
                return;
            };
            // The evicted series' counts go on under `other`.
            counters.move_into(other);
            self.by_hash.remove(&key.hash);
            std::mem::swap(key, &mut c.key);
            self.by_hash.insert(key.hash, slot as u32);
            *gen = gen.wrapping_add(1);
            *hits = c.guaranteed();
            let (s, m) = key.split();
            *name = Some((s.into(), m.into()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STATUSES: &[&str] = &["ok", "error"];

    fn stats(max: usize) -> (Arc<MethodStats>, MethodTable) {
        let s = MethodStats::new(1, max, STATUSES);
        let t = s.table(0);
        (s, t)
    }

    fn requests(s: &MethodStats, service: &str, method: &str) -> Option<u64> {
        let (named, other) = s.merged();
        if service == OTHER && method == OTHER {
            return Some(other.requests);
        }
        named
            .iter()
            .find(|((sv, m), _)| &**sv == service && &**m == method)
            .map(|(_, a)| a.requests)
    }

    #[test]
    fn known_methods_count_in_their_series_and_the_rest_in_other() {
        let (s, mut t) = stats(2);
        t.observe("a.Svc", "m1", 0, 100);
        t.observe("a.Svc", "m2", 1, 100);
        t.observe("a.Svc", "m1", 0, 100);
        t.observe("a.Svc", "m3", 0, 100);
        t.observe("b.Svc", "m1", 0, 100);
        assert_eq!(requests(&s, "a.Svc", "m1"), Some(2));
        assert_eq!(requests(&s, "a.Svc", "m2"), Some(1));
        assert_eq!(requests(&s, "a.Svc", "m3"), None);
        assert_eq!(requests(&s, OTHER, OTHER), Some(2));
        assert_eq!(s.series(), 2);
        // Service and method are told apart however they split.
        let (s, mut t) = stats(4);
        t.observe("ab", "c", 0, 1);
        t.observe("a", "bc", 0, 1);
        assert_eq!(requests(&s, "ab", "c"), Some(1));
        assert_eq!(requests(&s, "a", "bc"), Some(1));
    }

    #[test]
    fn a_flood_of_random_names_stays_in_other_and_within_bounds() {
        let (s, mut t) = stats(8);
        for i in 0..8 {
            t.observe("svc", &format!("known{i}"), 0, 10);
        }
        for i in 0..100_000 {
            t.observe("svc", &format!("random{i}"), 0, 10);
            if i % 10_000 == 0 {
                t.rerank();
            }
            // Keep the known methods busier than any single random one.
            if i % 100 == 0 {
                t.observe("svc", &format!("known{}", (i / 100) % 8), 0, 10);
            }
        }
        assert_eq!(s.series(), 8);
        assert_eq!(requests(&s, OTHER, OTHER), Some(100_000));
        assert!(t.keys.len() <= 8 && t.by_hash.len() <= 8);
        assert!(t.candidates.len() <= CANDIDATES && t.candidate_by_hash.len() <= CANDIDATES);
        for i in 0..8 {
            assert!(
                requests(&s, "svc", &format!("known{i}")).is_some(),
                "known{i}"
            );
        }
        let mut w = Writer::new();
        s.render(&mut w, "test");
        let text = w.finish();
        assert!(text
            .contains("test_method_requests_total{service=\"other\",method=\"other\"} 100000\n"));
        assert_eq!(
            text.lines()
                .filter(|l| l.starts_with("test_method_requests_total{"))
                .count(),
            9
        );
    }

    #[test]
    fn a_busier_newcomer_takes_the_place_of_a_quiet_series() {
        let (s, mut t) = stats(2);
        t.observe("svc", "busy", 0, 10);
        t.observe("svc", "quiet", 0, 10);
        for _ in 0..3 {
            t.rerank(); // `quiet` fades.
        }
        for _ in 0..50 {
            t.observe("svc", "busy", 0, 10);
            t.observe("svc", "new", 1, 10);
        }
        assert_eq!(requests(&s, "svc", "new"), None);
        t.rerank();
        assert_eq!(requests(&s, "svc", "quiet"), None);
        assert_eq!(requests(&s, "svc", "new"), Some(0));
        assert_eq!(requests(&s, "svc", "busy"), Some(51));
        // `quiet`'s one call and `new`'s fifty before it had a series are in `other`:
        // the total never goes down.
        assert_eq!(requests(&s, OTHER, OTHER), Some(51));
        t.observe("svc", "new", 1, 10);
        assert_eq!(requests(&s, "svc", "new"), Some(1));
        // A place taken before a re-ranking and recorded after it counts under `other`.
        let (s, mut t) = stats(1);
        t.observe("svc", "a", 0, 10);
        for _ in 0..4 {
            t.rerank();
        }
        let stale = t.lookup("svc", "a");
        for _ in 0..10 {
            t.observe("svc", "b", 0, 10);
        }
        t.rerank();
        t.record(stale, 0, 10);
        assert_eq!(requests(&s, "svc", "b"), Some(0));
        assert_eq!(requests(&s, OTHER, OTHER), Some(12));
    }

    #[test]
    fn names_seen_once_never_displace_a_series_even_a_quiet_one() {
        let (s, mut t) = stats(2);
        t.observe("svc", "a", 0, 10);
        t.observe("svc", "b", 0, 10);
        for round in 0..5 {
            t.rerank(); // `a` and `b` fade to nothing.
            for i in 0..1000 {
                t.observe("svc", &format!("r{round}-{i}"), 0, 10);
            }
        }
        t.rerank();
        assert_eq!(requests(&s, "svc", "a"), Some(1));
        assert_eq!(requests(&s, "svc", "b"), Some(1));
        assert_eq!(requests(&s, OTHER, OTHER), Some(5000));
    }

    #[test]
    fn similar_rates_do_not_trade_places() {
        let (s, mut t) = stats(1);
        for _ in 0..10 {
            for _ in 0..100 {
                t.observe("svc", "first", 0, 10);
                t.observe("svc", "second", 0, 10);
            }
            t.rerank();
        }
        assert!(requests(&s, "svc", "first").is_some());
    }

    #[test]
    fn loops_are_merged_and_still_bounded() {
        let s = MethodStats::new(2, 2, STATUSES);
        let (mut a, mut b) = (s.table(0), s.table(1));
        a.observe("svc", "x", 0, 10);
        a.observe("svc", "y", 0, 10);
        b.observe("svc", "x", 1, 2_000);
        b.observe("svc", "z", 0, 10);
        b.observe("svc", "z", 0, 10);
        assert_eq!(s.series(), 2);
        assert_eq!(requests(&s, "svc", "x"), Some(2));
        assert_eq!(requests(&s, "svc", "z"), Some(2));
        assert_eq!(requests(&s, OTHER, OTHER), Some(1));
        let mut w = Writer::new();
        s.render(&mut w, "p");
        let text = w.finish();
        assert!(text.contains(
            "p_method_responses_total{service=\"svc\",method=\"x\",status=\"error\"} 1\n"
        ));
        assert!(text.contains(
            "p_method_latency_seconds_bucket{service=\"svc\",method=\"x\",le=\"0.0025\"} 2\n"
        ));
        assert!(text.contains("p_method_series 2\n"));
    }

    #[test]
    fn long_names_and_a_zero_bound_go_to_other() {
        let (s, mut t) = stats(4);
        t.observe("svc", &"m".repeat(MAX_NAME_BYTES), 0, 10);
        assert_eq!(requests(&s, OTHER, OTHER), Some(1));
        let (s, mut t) = stats(0);
        t.observe("svc", "m", 0, 10);
        t.rerank();
        assert_eq!(requests(&s, OTHER, OTHER), Some(1));
        assert_eq!(s.series(), 0);
    }
}
