//! Counters shared by the loops and read by the admin port.
//!
//! Each counter is an atomic updated with `Relaxed` ordering: no lock on the request
//! path, and on one loop the cache line stays with that loop's core.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;

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

/// The consumer-agent's metrics.
#[derive(Debug, Default)]
pub struct Metrics {
    requests: AtomicU64,
    outcomes: [AtomicU64; 5],
    retries: AtomicU64,
    inflight: AtomicI64,
    connections: AtomicI64,
    latency_buckets: [AtomicU64; LATENCY_BUCKETS_US.len() + 1],
    latency_sum_us: AtomicU64,
    /// Per loop, its upstreams (refreshed once a second, off the request path).
    upstreams: Mutex<Vec<Vec<UpstreamView>>>,
}

impl Metrics {
    /// A request arrived.
    pub fn request(&self) {
        self.requests.fetch_add(1, Relaxed);
        self.inflight.fetch_add(1, Relaxed);
    }

    /// A request was answered.
    pub fn answered(&self, outcome: Outcome, latency_us: u64) {
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

    /// A call was retried on another provider.
    pub fn retried(&self) {
        self.retries.fetch_add(1, Relaxed);
    }

    /// An HTTP connection opened (+1) or closed (-1).
    pub fn connection(&self, delta: i64) {
        self.connections.fetch_add(delta, Relaxed);
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
        let _ = writeln!(s, "consumer_requests_total {}", self.requests.load(Relaxed));
        let _ = writeln!(s, "# TYPE consumer_responses_total counter");
        for (i, (_, name)) in OUTCOMES.iter().enumerate() {
            let n = self.outcomes[i].load(Relaxed);
            let _ = writeln!(s, "consumer_responses_total{{outcome=\"{name}\"}} {n}");
        }
        let _ = writeln!(s, "# TYPE consumer_retries_total counter");
        let _ = writeln!(s, "consumer_retries_total {}", self.retries.load(Relaxed));
        let _ = writeln!(s, "# TYPE consumer_inflight gauge");
        let _ = writeln!(s, "consumer_inflight {}", self.inflight.load(Relaxed));
        let _ = writeln!(s, "# TYPE consumer_http_connections gauge");
        let _ = writeln!(
            s,
            "consumer_http_connections {}",
            self.connections.load(Relaxed)
        );
        let _ = writeln!(s, "# TYPE consumer_latency_seconds histogram");
        let mut cumulative = 0;
        for (i, b) in LATENCY_BUCKETS_US.iter().enumerate() {
            cumulative += self.latency_buckets[i].load(Relaxed);
            let le = *b as f64 / 1e6;
            let _ = writeln!(
                s,
                "consumer_latency_seconds_bucket{{le=\"{le}\"}} {cumulative}"
            );
        }
        cumulative += self.latency_buckets[LATENCY_BUCKETS_US.len()].load(Relaxed);
        let _ = writeln!(
            s,
            "consumer_latency_seconds_bucket{{le=\"+Inf\"}} {cumulative}"
        );
        let sum = self.latency_sum_us.load(Relaxed) as f64 / 1e6;
        let _ = writeln!(s, "consumer_latency_seconds_sum {sum}");
        let _ = writeln!(s, "consumer_latency_seconds_count {cumulative}");
        let _ = writeln!(s, "# TYPE consumer_upstream_up gauge");
        if let Ok(all) = self.upstreams.lock() {
            for (l, ups) in all.iter().enumerate() {
                for u in ups {
                    let labels = format!("loop=\"{l}\",upstream=\"{}\"", u.addr);
                    let _ = writeln!(s, "consumer_upstream_up{{{labels}}} {}", u8::from(u.up));
                    let _ = writeln!(s, "consumer_upstream_inflight{{{labels}}} {}", u.inflight);
                    let _ = writeln!(s, "consumer_upstream_limit{{{labels}}} {:.1}", u.limit);
                    let _ = writeln!(
                        s,
                        "consumer_upstream_latency_ewma_seconds{{{labels}}} {:.6}",
                        u.ewma_us / 1e6
                    );
                }
            }
        }
        s
    }
}
