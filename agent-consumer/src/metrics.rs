//! Counters the loops update and the admin port reads.
//!
//! Each loop has its own counters, on cache lines of their own, updated with `Relaxed`
//! atomics: no lock on the request path, and no cache line bouncing between the cores
//! of several loops. The admin port adds them up and renders them with
//! [`codec::prometheus`], in the latency bucket layout both agents share.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

use codec::prometheus::{bucket_index, Histogram, Kind, Writer, LATENCY_SLOTS};
use reactor_admin::access_log::AccessLog;
use reactor_admin::method_stats::{MethodStats, MethodTable, DEFAULT_MAX_SERIES};

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
    /// 403: the provider-agent's authorization policy refused the call (agent status
    /// FORBIDDEN; never retried).
    Forbidden,
    /// 429: over a rate limit of the service's traffic rules.
    RateLimited,
}

const OUTCOMES: [(Outcome, &str); 7] = [
    (Outcome::Ok, "ok"),
    (Outcome::BadRequest, "bad_request"),
    (Outcome::ProviderError, "provider_error"),
    (Outcome::Unavailable, "unavailable"),
    (Outcome::Timeout, "timeout"),
    (Outcome::Forbidden, "forbidden"),
    (Outcome::RateLimited, "rate_limited"),
];

/// The outcomes' names, in [`OUTCOMES`] order: the `status` label of the per-method
/// metrics.
const OUTCOME_NAMES: [&str; OUTCOMES.len()] = [
    "ok",
    "bad_request",
    "provider_error",
    "unavailable",
    "timeout",
    "forbidden",
    "rate_limited",
];

impl Outcome {
    /// Its index in [`OUTCOMES`] (and in the per-method metrics' statuses).
    pub fn index(self) -> usize {
        OUTCOMES.iter().position(|(o, _)| *o == self).unwrap_or(0)
    }

    /// Its name in the metrics and the access log (`ok`, `timeout`, ...).
    pub fn name(self) -> &'static str {
        OUTCOME_NAMES.get(self.index()).copied().unwrap_or("ok")
    }
}

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
    outcomes: [AtomicU64; OUTCOMES.len()],
    retries: AtomicU64,
    retry_waits: AtomicU64,
    inflight: AtomicI64,
    connections: AtomicI64,
    latency_buckets: [AtomicU64; LATENCY_SLOTS],
    latency_sum_us: AtomicU64,
    /// Provider-agents refused for presenting another identity than the registry's.
    tls_identity_mismatch: AtomicU64,
    /// Failed TLS handshakes (`Ctx::tls_stats`, sampled every sweep).
    tls_handshake_failures: AtomicU64,
}

/// Mutual TLS's state (`--tls-cert`), written by the certificate watcher.
#[derive(Debug, Default)]
struct TlsCounters {
    expiry: AtomicI64,
    http_expiry: AtomicI64,
    reloads_ok: AtomicU64,
    reloads_error: AtomicU64,
}

/// The consumer-agent's metrics.
#[derive(Debug)]
pub struct Metrics {
    loops: Vec<LoopCounters>,
    /// Per loop, its upstreams (refreshed once a second, off the request path).
    upstreams: Mutex<Vec<Vec<UpstreamView>>>,
    /// The registry, for what it skipped (set once it is open).
    registry: std::sync::OnceLock<registry::Registry>,
    tls: TlsCounters,
    /// Per service and method counters, one table per loop (`--max-method-series`).
    methods: Arc<MethodStats>,
    /// The access log (`--access-log`), once open.
    access_log: std::sync::OnceLock<AccessLog>,
    /// The span exporter's queue (`--otlp-endpoint`), once started.
    spans: std::sync::OnceLock<reactor_admin::otlp::Spans>,
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

    /// A call was retried after a refusal.
    pub fn retried(&self) {
        self.own().retries.fetch_add(1, Relaxed);
    }

    /// A retry waited out a backoff first (`--retry-backoff-ms`).
    pub fn retry_waited(&self) {
        self.own().retry_waits.fetch_add(1, Relaxed);
    }

    /// An HTTP connection opened (+1) or closed (-1).
    pub fn connection(&self, delta: i64) {
        self.own().connections.fetch_add(delta, Relaxed);
    }

    /// A provider-agent presented another TLS identity than its registry entry's.
    pub fn tls_identity_mismatch(&self) {
        self.own().tls_identity_mismatch.fetch_add(1, Relaxed);
    }

    /// The loop's failed TLS handshakes so far.
    pub fn set_tls_handshake_failures(&self, n: u64) {
        self.own().tls_handshake_failures.store(n, Relaxed);
    }

    /// The loop's per-method table (take it once, for the loop's own use).
    pub fn method_table(&self) -> MethodTable {
        self.shared.methods.table(self.index)
    }

    /// The access log, with `--access-log`.
    pub fn access_log(&self) -> Option<AccessLog> {
        self.shared.access_log.get().cloned()
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
        if let Some(c) = self.latency_buckets.get(bucket_index(latency_us)) {
            c.fetch_add(1, Relaxed);
        }
        self.latency_sum_us.fetch_add(latency_us, Relaxed);
    }
}

impl Metrics {
    /// Counters for `loops` loops.
    pub fn new(loops: usize) -> Self {
        Metrics::with_method_series(loops, DEFAULT_MAX_SERIES)
    }

    /// Counters for `loops` loops, with at most `max_series` service and method series
    /// (`--max-method-series`).
    pub fn with_method_series(loops: usize, max_series: usize) -> Self {
        Metrics {
            loops: (0..loops.max(1)).map(|_| LoopCounters::default()).collect(),
            upstreams: Mutex::default(),
            registry: std::sync::OnceLock::new(),
            tls: TlsCounters::default(),
            methods: MethodStats::new(loops, max_series, &OUTCOME_NAMES),
            access_log: std::sync::OnceLock::new(),
            spans: std::sync::OnceLock::new(),
        }
    }

    /// The access log the loops write to (set once, before the loops start).
    pub fn set_access_log(&self, log: AccessLog) {
        let _ = self.access_log.set(log);
    }

    /// The span exporter the loops hand spans to (set once, before the loops start).
    pub fn set_spans(&self, spans: reactor_admin::otlp::Spans) {
        let _ = self.spans.set(spans);
    }

    /// The span exporter, with `--otlp-endpoint`.
    pub fn spans(&self) -> Option<reactor_admin::otlp::Spans> {
        self.spans.get().cloned()
    }

    /// The per service and method series.
    pub fn methods(&self) -> &MethodStats {
        &self.methods
    }

    /// Access log lines dropped because its queue was full.
    pub fn access_log_dropped(&self) -> u64 {
        self.access_log.get().map_or(0, AccessLog::dropped)
    }

    /// Waits (at most 2 s) until the access log's lines sent so far are in its file.
    pub(crate) fn sync_access_log(&self) {
        if let Some(log) = self.access_log.get() {
            if !log.sync(std::time::Duration::from_secs(2)) {
                log::warn!("access log: its last lines were not all written within 2 s");
            }
        }
    }

    /// A certificate expiring at `not_after` (Unix seconds) is in use: at the start, or
    /// (`reload`) replacing the previous one.
    pub fn tls_loaded(&self, not_after: i64, reload: bool) {
        self.tls.expiry.store(not_after, Relaxed);
        if reload {
            self.tls.reloads_ok.fetch_add(1, Relaxed);
        }
    }

    /// The HTTP listener's certificate, expiring at `not_after`, is in use (as
    /// [`tls_loaded`](Self::tls_loaded)).
    pub fn http_tls_loaded(&self, not_after: i64, reload: bool) {
        self.tls.http_expiry.store(not_after, Relaxed);
        if reload {
            self.tls.reloads_ok.fetch_add(1, Relaxed);
        }
    }

    /// A changed certificate file could not be loaded (the previous one stays).
    pub fn tls_reload_failed(&self) {
        self.tls.reloads_error.fetch_add(1, Relaxed);
    }

    /// Provider-agents refused for their TLS identity, all loops.
    pub fn tls_identity_mismatches(&self) -> u64 {
        u64::try_from(self.sum(|l| l.tls_identity_mismatch.load(Relaxed))).unwrap_or(0)
    }

    /// The registry whose skipped entries `/metrics` reports.
    pub fn set_registry(&self, registry: registry::Registry) {
        let _ = self.registry.set(registry);
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

    /// The latency histogram, all loops.
    fn latency(&self) -> Histogram {
        let mut h = Histogram::new();
        for l in &self.loops {
            for (sum, c) in h.counts.iter_mut().zip(&l.latency_buckets) {
                *sum += c.load(Relaxed);
            }
            h.sum_us = h.sum_us.saturating_add(l.latency_sum_us.load(Relaxed));
        }
        h
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut w = Writer::with_capacity(4096);
        // Counters sum to a u64, gauges to an i64 (clamped, never wrapped).
        let count = |read: fn(&LoopCounters) -> i128| -> u64 {
            u64::try_from(self.sum(read).max(0)).unwrap_or(u64::MAX)
        };
        let level = |read: fn(&LoopCounters) -> i128| -> i64 {
            i64::try_from(self.sum(read)).unwrap_or(i64::MAX)
        };
        w.counter(
            "consumer_requests_total",
            "HTTP requests received.",
            count(|l| l.requests.load(Relaxed).into()),
        );
        let mut f = w.family(
            "consumer_responses_total",
            "HTTP requests answered, by outcome.",
            Kind::Counter,
        );
        for (i, (_, name)) in OUTCOMES.iter().enumerate() {
            let n = self.sum(|l| l.outcomes[i].load(Relaxed));
            f.sample(&[("outcome", name)], u64::try_from(n).unwrap_or(u64::MAX));
        }
        w.counter(
            "consumer_retries_total",
            "Calls retried after a refusal (on another provider-agent when one can take them).",
            count(|l| l.retries.load(Relaxed).into()),
        );
        w.counter(
            "consumer_retry_backoffs_total",
            "Retries that first waited out a backoff (--retry-backoff-ms): no other provider-agent could take the call.",
            count(|l| l.retry_waits.load(Relaxed).into()),
        );
        w.gauge(
            "consumer_inflight",
            "Requests received and not yet answered.",
            level(|l| l.inflight.load(Relaxed).into()),
        );
        w.gauge(
            "consumer_http_connections",
            "HTTP connections open.",
            level(|l| l.connections.load(Relaxed).into()),
        );
        w.gauge(
            "consumer_tls_cert_expiry_timestamp_seconds",
            "notAfter of the agent's TLS certificate (--tls-cert), Unix seconds; 0 without TLS.",
            self.tls.expiry.load(Relaxed),
        );
        w.gauge(
            "consumer_http_tls_cert_expiry_timestamp_seconds",
            "notAfter of the HTTP listener's TLS certificate (--http-tls-cert), Unix seconds; 0 without.",
            self.tls.http_expiry.load(Relaxed),
        );
        w.counter(
            "consumer_tls_handshake_failures_total",
            "TLS handshakes that failed (provider-agents' certificates refused, HTTP clients over --http-tls-cert, timeouts).",
            count(|l| l.tls_handshake_failures.load(Relaxed).into()),
        );
        w.counter(
            "consumer_tls_identity_mismatch_total",
            "Provider-agent connections refused: the certificate names another identity than the registry's tls.identity.",
            self.tls_identity_mismatches(),
        );
        let mut f = w.family(
            "consumer_tls_reloads_total",
            "Reloads of changed TLS certificate files: ok, or error (the previous certificate stayed).",
            Kind::Counter,
        );
        f.sample(&[("result", "ok")], self.tls.reloads_ok.load(Relaxed));
        f.sample(&[("result", "error")], self.tls.reloads_error.load(Relaxed));
        w.histogram(
            "consumer_latency_seconds",
            "Time from a request's arrival to its answer.",
            &self.latency(),
        );
        w.counter(
            "consumer_access_log_dropped_total",
            "Access log lines dropped because the writer's queue was full (--access-log); calls never wait for their line.",
            self.access_log_dropped(),
        );
        let spans = self.spans.get().map(reactor_admin::otlp::Spans::stats);
        w.counter(
            "consumer_spans_exported_total",
            "Spans the OTLP collector accepted (--otlp-endpoint).",
            spans.map_or(0, |s| s.exported()),
        );
        w.counter(
            "consumer_spans_dropped_total",
            "Spans dropped: the exporter's queue was full, or the collector was down, slow or refused their batch; calls never wait for them.",
            spans.map_or(0, |s| s.dropped()),
        );
        self.methods.render(&mut w, "consumer");
        w.counter(
            "consumer_registry_entries_skipped_total",
            "Registry entries skipped as malformed or hostile (ZooKeeper nodes; each logged).",
            self.registry
                .get()
                .map_or(0, registry::Registry::skipped_entries),
        );
        // Per provider-agent gauges, each family's samples together under its HELP and
        // TYPE lines, as the exposition format asks.
        if let Ok(all) = self.upstreams.lock() {
            type Field = fn(&UpstreamView) -> f64;
            let gauges: [(&str, &str, Field); 4] = [
                (
                    "consumer_upstream_up",
                    "1 while the loop's connection to the provider-agent is open.",
                    |u| f64::from(u8::from(u.up)),
                ),
                (
                    "consumer_upstream_inflight",
                    "Calls in flight from the loop to the provider-agent.",
                    |u| f64::from(u.inflight),
                ),
                (
                    "consumer_upstream_limit",
                    "Concurrency limit the loop learned for the provider-agent: the lower of the one its refusals taught and its latency cap.",
                    |u| u.limit,
                ),
                (
                    "consumer_upstream_latency_ewma_seconds",
                    "Smoothed latency of the provider-agent, as the loop sees it.",
                    |u| u.ewma_us / 1e6,
                ),
            ];
            for (name, help, value) in gauges {
                let mut f = w.family(name, help, Kind::Gauge);
                for (l, ups) in all.iter().enumerate() {
                    let l = l.to_string();
                    for u in ups {
                        f.sample(&[("loop", &l), ("upstream", &u.addr)], value(u));
                    }
                }
            }
        }
        w.finish()
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
            .filter(|base| {
                *base == "consumer_latency_seconds" || *base == "consumer_method_latency_seconds"
            })
            .unwrap_or(name)
    }

    #[test]
    fn each_family_is_one_block_under_its_type_line() {
        let m = Arc::new(Metrics::new(2));
        m.for_loop(0).request();
        m.for_loop(1).request();
        m.for_loop(1).answered(Outcome::Ok, 700);
        m.for_loop(0).request();
        m.for_loop(0).answered(Outcome::Forbidden, 700);
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
        let mut helped = Vec::new();
        let mut current = None;
        let mut finished = Vec::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# HELP ") {
                helped.push(rest.split(' ').next().unwrap());
                continue;
            }
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let name = rest.split(' ').next().unwrap();
                assert_eq!(helped.last(), Some(&name), "no HELP line for {name}");
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
        assert!(text.contains("consumer_latency_seconds_bucket{le=\"0.0005\"} 0\n"));
        assert!(text.contains("consumer_latency_seconds_bucket{le=\"0.001\"} 2\n"));
        assert!(text.contains("consumer_latency_seconds_count 2\n"));
        assert!(text.contains("consumer_responses_total{outcome=\"forbidden\"} 1\n"));
        assert!(text.contains("consumer_responses_total{outcome=\"ok\"} 1\n"));
        assert!(text.contains("consumer_upstream_up{loop=\"1\",upstream=\"127.0.0.1:1\"} 1\n"));
    }
}
