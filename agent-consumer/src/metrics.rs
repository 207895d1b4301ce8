//! Counters the loops update and the admin port reads.
//!
//! Each loop has its own counters, on cache lines of their own, updated with `Relaxed`
//! atomics: no lock on the request path, and no cache line bouncing between the cores
//! of several loops. The admin port adds them up.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

/// Upper bounds of the latency histogram buckets, in microseconds.
pub const LATENCY_BUCKETS_US: [u64; 14] = [
    500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 60_000, 75_000, 100_000, 250_000, 500_000,
    1_000_000, 3_000_000,
];

/// How a request ended, for the error counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// 200.
    Ok,
    /// 400/413/431: the request was bad.
    BadRequest,
    /// 502: the provider failed the call.
    ProviderError,
    /// 503: no provider could take it.
    Unavailable,
    /// 504: no answer in time.
    Timeout,
}

const OUTCOMES: [(Outcome, &str); 5] = [
    (Outcome::Ok, "ok"),
    (Outcome::BadRequest, "bad_request"),
    (Outcome::ProviderError, "provider_error"),
    (Outcome::Unavailable, "unavailable"),
    (Outcome::Timeout, "timeout"),
];

/// One provider-agent as a loop last saw it.
#[derive(Debug, Clone, Default)]
pub struct UpstreamView {
    /// Its address.
    pub addr: String,
    /// Whether the loop's connection to it is open.
    pub up: bool,
    /// Calls in flight from this loop.
    pub inflight: u32,
    /// Learned concurrency limit (adaptive balancing).
    pub limit: f64,
    /// Smoothed latency, microseconds.
    pub ewma_us: f64,
}

/// One loop's counters: only that loop writes them. Aligned so that two loops'
/// counters never share a cache line.
#[derive(Debug, Default)]
#[repr(align(128))]
struct LoopCounters {
    requests: AtomicU64,
    outcomes: [AtomicU64; 5],
    retries: AtomicU64,
    inflight: AtomicI64,
    connections: AtomicI64,
    latency_buckets: [AtomicU64; LATENCY_BUCKETS_US.len() + 1],
    latency_sum_us: AtomicU64,
}

/// The consumer-agent's metrics.
#[derive(Debug)]
pub struct Metrics {
    loops: Vec<LoopCounters>,
    /// Per loop, its upstreams (refreshed once a second, off the request path).
    upstreams: Mutex<Vec<Vec<UpstreamView>>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new(1)
    }
}

/// One loop's window onto the metrics: its own counters, and the shared rest (through
/// `Deref`).
#[derive(Debug, Clone)]
pub struct LoopMetrics {
    shared: Arc<Metrics>,
    index: usize,
}

impl std::ops::Deref for LoopMetrics {
    type Target = Metrics;
    fn deref(&self) -> &Metrics {
        &self.shared
    }
}

impl LoopMetrics {
    fn own(&self) -> &LoopCounters {
        &self.shared.loops[self.index]
    }

    /// A request arrived.
    pub fn request(&self) {
        self.own().request();
    }

    /// A request was answered.
    pub fn answered(&self, outcome: Outcome, latency_us: u64) {
        self.own().answered(outcome, latency_us);
    }

    /// A call was retried on another provider.
    pub fn retried(&self) {
        self.own().retries.fetch_add(1, Relaxed);
    }

    /// An HTTP connection opened (+1) or closed (-1).
    pub fn connection(&self, delta: i64) {
        self.own().connections.fetch_add(delta, Relaxed);
    }
}

impl LoopCounters {
    fn request(&self) {
        self.requests.fetch_add(1, Relaxed);
        self.inflight.fetch_add(1, Relaxed);
    }

    fn answered(&self, outcome: Outcome, latency_us: u64) {
        self.inflight.fetch_sub(1, Relaxed);
        let slot = OUTCOMES
            .iter()
            .position(|(o, _)| *o == outcome)
            .unwrap_or(0);
        self.outcomes[slot].fetch_add(1, Relaxed);
        let bucket = LATENCY_BUCKETS_US
            .iter()
            .position(|&b| latency_us <= b)
            .unwrap_or(LATENCY_BUCKETS_US.len());
        self.latency_buckets[bucket].fetch_add(1, Relaxed);
        self.latency_sum_us.fetch_add(latency_us, Relaxed);
    }
}

impl Metrics {
    /// Counters for `loops` loops.
    pub fn new(loops: usize) -> Self {
        Metrics {
            loops: (0..loops.max(1)).map(|_| LoopCounters::default()).collect(),
            upstreams: Mutex::default(),
        }
    }

    /// Loop `index`'s window (the last loop's for an index beyond the count).
    pub fn for_loop(self: &Arc<Self>, index: usize) -> LoopMetrics {
        LoopMetrics {
            shared: self.clone(),
            index: index.min(self.loops.len() - 1),
        }
    }

    /// The sum of one counter over the loops.
    fn sum<T: Into<i128>>(&self, read: impl Fn(&LoopCounters) -> T) -> i128 {
        self.loops.iter().map(|l| read(l).into()).sum()
    }

    /// Replaces loop `index`'s view of its upstreams.
    pub fn set_upstreams(&self, index: usize, view: Vec<UpstreamView>) {
        if let Ok(mut all) = self.upstreams.lock() {
            if all.len() <= index {
                all.resize_with(index + 1, Vec::new);
            }
            all[index] = view;
        }
    }

    /// Whether any loop has an open connection to some provider-agent.
    pub fn has_upstream(&self) -> bool {
        self.upstreams
            .lock()
            .map(|all| all.iter().flatten().any(|u| u.up))
            .unwrap_or(false)
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut s = String::with_capacity(4096);
        let _ = writeln!(s, "# TYPE consumer_requests_total counter");
        let _ = writeln!(
            s,
            "consumer_requests_total {}",
            self.sum(|l| l.requests.load(Relaxed))
        );
        let _ = writeln!(s, "# TYPE consumer_responses_total counter");
        for (i, (_, name)) in OUTCOMES.iter().enumerate() {
            let n = self.sum(|l| l.outcomes[i].load(Relaxed));
            let _ = writeln!(s, "consumer_responses_total{{outcome=\"{name}\"}} {n}");
        }
        let _ = writeln!(s, "# TYPE consumer_retries_total counter");
        let _ = writeln!(
            s,
            "consumer_retries_total {}",
            self.sum(|l| l.retries.load(Relaxed))
        );
        let _ = writeln!(s, "# TYPE consumer_inflight gauge");
        let _ = writeln!(
            s,
            "consumer_inflight {}",
            self.sum(|l| l.inflight.load(Relaxed))
        );
        let _ = writeln!(s, "# TYPE consumer_http_connections gauge");
        let _ = writeln!(
            s,
            "consumer_http_connections {}",
            self.sum(|l| l.connections.load(Relaxed))
        );
        let _ = writeln!(s, "# TYPE consumer_latency_seconds histogram");
        let mut cumulative = 0;
        for (i, b) in LATENCY_BUCKETS_US.iter().enumerate() {
            cumulative += self.sum(|l| l.latency_buckets[i].load(Relaxed));
            let le = *b as f64 / 1e6;
            let _ = writeln!(
                s,
                "consumer_latency_seconds_bucket{{le=\"{le}\"}} {cumulative}"
            );
        }
        cumulative += self.sum(|l| l.latency_buckets[LATENCY_BUCKETS_US.len()].load(Relaxed));
        let _ = writeln!(
            s,
            "consumer_latency_seconds_bucket{{le=\"+Inf\"}} {cumulative}"
        );
        let sum = self.sum(|l| l.latency_sum_us.load(Relaxed)) as f64 / 1e6;
        let _ = writeln!(s, "consumer_latency_seconds_sum {sum}");
        let _ = writeln!(s, "consumer_latency_seconds_count {cumulative}");
        // Per provider-agent gauges, each metric's lines together under its TYPE line,
        // as the exposition format asks.
        if let Ok(all) = self.upstreams.lock() {
            type Field = fn(&UpstreamView) -> String;
            let gauges: [(&str, Field); 4] = [
                ("consumer_upstream_up", |u| u8::from(u.up).to_string()),
                ("consumer_upstream_inflight", |u| u.inflight.to_string()),
                ("consumer_upstream_limit", |u| format!("{:.1}", u.limit)),
                ("consumer_upstream_latency_ewma_seconds", |u| {
                    format!("{:.6}", u.ewma_us / 1e6)
                }),
            ];
            for (name, value) in gauges {
                let _ = writeln!(s, "# TYPE {name} gauge");
                for (l, ups) in all.iter().enumerate() {
                    for u in ups {
                        let _ = writeln!(
                            s,
                            "{name}{{loop=\"{l}\",upstream=\"{}\"}} {}",
                            u.addr,
                            value(u)
                        );
                    }
                }
            }
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The family a sample line belongs to (a histogram's `_bucket`, `_sum` and `_count`
    /// belong to the histogram).
    fn family(sample: &str) -> &str {
        let name = sample.split(['{', ' ']).next().unwrap_or("");
        ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|suffix| name.strip_suffix(suffix))
            .filter(|base| *base == "consumer_latency_seconds")
            .unwrap_or(name)
    }

    #[test]
    fn each_family_is_one_block_under_its_type_line() {
        let m = Arc::new(Metrics::new(2));
        m.for_loop(0).request();
        m.for_loop(1).request();
        m.for_loop(1).answered(Outcome::Ok, 700);
        let up = |addr: &str| UpstreamView {
            addr: addr.into(),
            up: true,
            inflight: 1,
            limit: 8.0,
            ewma_us: 900.0,
        };
        m.set_upstreams(0, vec![up("127.0.0.1:1"), up("127.0.0.1:2")]);
        m.set_upstreams(1, vec![up("127.0.0.1:1")]);
        let text = m.render();
        let mut typed = Vec::new();
        let mut current = None;
        let mut finished = Vec::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let name = rest.split(' ').next().unwrap();
                assert!(!typed.contains(&name), "two TYPE lines for {name}");
                typed.push(name);
                continue;
            }
            let f = family(line);
            assert!(
                typed.contains(&f),
                "{f} has no TYPE line before it:\n{text}"
            );
            if current != Some(f) {
                assert!(
                    !finished.contains(&f),
                    "{f} is split in two blocks:\n{text}"
                );
                finished.extend(current);
                current = Some(f);
            }
        }
        assert_eq!(
            text.lines()
                .filter(|l| l.starts_with("consumer_upstream_limit{"))
                .count(),
            3
        );
    }
}
