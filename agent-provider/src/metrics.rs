//! Counters of the agent, rendered as Prometheus text.
//!
//! Each loop owns one [`LoopMetrics`] and is its only writer, so every update is a plain
//! `Relaxed` atomic add: no lock and no contended cache line on the request path. The
//! admin thread sums the loops when it is scraped and renders them with
//! [`codec::prometheus`], in the latency bucket layout both agents share.

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use codec::agent::Status;
use codec::prometheus::{bucket_index, Histogram, Kind, Writer, LATENCY_SLOTS};
use reactor_admin::access_log::AccessLog;
use reactor_admin::method_stats::{MethodStats, MethodTable, DEFAULT_MAX_SERIES};

/// Statuses counted (index = status byte).
const STATUSES: usize = Status::ALL.len();

/// Error kinds counted separately, in [`Status`] order after `Ok`.
const ERROR_KINDS: [(Status, &str); 7] = [
    (Status::ProviderError, "provider_error"),
    (Status::Overloaded, "overloaded"),
    (Status::Unavailable, "unavailable"),
    (Status::Timeout, "timeout"),
    (Status::BadRequest, "bad_request"),
    (Status::Exception, "exception"),
    (Status::Forbidden, "forbidden"),
];

/// The statuses' names (index = status byte): the `status` label of the per-method
/// metrics and the access log's `outcome`.
pub(crate) const STATUS_NAMES: [&str; STATUSES] = [
    "ok",
    "provider_error",
    "overloaded",
    "unavailable",
    "timeout",
    "bad_request",
    "exception",
    "forbidden",
];

/// The counters of one event loop.
#[derive(Debug, Default)]
pub struct LoopMetrics {
    /// Requests received (every REQUEST frame).
    pub requests: AtomicU64,
    /// Responses by status (index = status byte).
    pub responses: [AtomicU64; STATUSES],
    /// Calls currently sent to the provider and not yet answered.
    pub inflight: AtomicI64,
    /// Provider connections currently open.
    pub provider_conns_up: AtomicI64,
    /// Provider (re)connections made.
    pub provider_connects: AtomicU64,
    /// Latency histogram of answered provider calls: counts per bucket (last = +Inf).
    pub latency_buckets: [AtomicU64; LATENCY_SLOTS],
    /// Sum of latencies, microseconds.
    pub latency_sum_us: AtomicU64,
    /// Dubbo requests received on `--dubbo-listen` (calls, not heartbeats).
    pub dubbo_requests: AtomicU64,
    /// Answers to them by outcome, as the agent status that stands for it (index =
    /// status byte): the provider's own answers (OK, an exception, its error statuses)
    /// and the agent's refusals.
    pub dubbo_responses: [AtomicU64; STATUSES],
    /// Dubbo consumers' connections open.
    pub dubbo_connections: AtomicI64,
    /// TLS handshakes that failed on this loop (`Ctx::tls_stats`, sampled periodically).
    pub tls_handshake_failures: AtomicU64,
}

impl LoopMetrics {
    /// Counts a response sent with `status`.
    pub fn response(&self, status: Status) {
        if let Some(c) = self.responses.get(status as usize) {
            c.fetch_add(1, Relaxed);
        }
    }

    /// Counts an answer to a Dubbo consumer, by the agent status standing for it.
    pub fn dubbo_response(&self, status: Status) {
        if let Some(c) = self.dubbo_responses.get(status as usize) {
            c.fetch_add(1, Relaxed);
        }
    }

    /// Records the latency of a call the provider answered.
    pub fn latency(&self, d: Duration) {
        let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        if let Some(c) = self.latency_buckets.get(bucket_index(us)) {
            c.fetch_add(1, Relaxed);
        }
        self.latency_sum_us.fetch_add(us, Relaxed);
    }
}

/// The authorization policy's state (`--authz`), written by the control thread.
#[derive(Debug, Default)]
struct AuthzMetrics {
    /// A policy is in force.
    enabled: AtomicBool,
    /// Rules of the policy in force.
    rules: AtomicI64,
    /// Reloads of a changed policy file that took effect.
    reloads_ok: AtomicU64,
    /// Reloads refused (the file did not parse or could not be read): the previous
    /// policy stayed.
    reloads_error: AtomicU64,
}

/// Mutual TLS's state (`--tls-cert`), written by the control thread.
#[derive(Debug, Default)]
struct TlsMetrics {
    /// The leaf certificate's notAfter (seconds since the epoch; 0 without TLS).
    expiry: AtomicI64,
    /// Reloads of changed certificate files that took effect.
    reloads_ok: AtomicU64,
    /// Reloads refused (files unreadable or invalid): the previous certificate stayed.
    reloads_error: AtomicU64,
}

/// The counters of all loops.
#[derive(Debug, Clone)]
pub struct Metrics {
    loops: Arc<[LoopMetrics]>,
    authz: Arc<AuthzMetrics>,
    tls: Arc<TlsMetrics>,
    /// Per service and method counters, one table per loop (`--max-method-series`).
    methods: Arc<MethodStats>,
    /// The access log (`--access-log`), once open.
    access_log: Arc<std::sync::OnceLock<AccessLog>>,
    /// The span exporter's queue (`--otlp-endpoint`), once started.
    spans: Arc<std::sync::OnceLock<reactor_admin::otlp::Spans>>,
}

impl Metrics {
    /// Counters for `loops` loops, all zero.
    pub fn new(loops: usize) -> Self {
        Metrics::with_method_series(loops, DEFAULT_MAX_SERIES)
    }

    /// Counters for `loops` loops, with at most `max_series` service and method series
    /// (`--max-method-series`).
    pub fn with_method_series(loops: usize, max_series: usize) -> Self {
        Metrics {
            loops: (0..loops.max(1)).map(|_| LoopMetrics::default()).collect(),
            authz: Arc::default(),
            tls: Arc::default(),
            methods: MethodStats::new(loops, max_series, &STATUS_NAMES),
            access_log: Arc::default(),
            spans: Arc::default(),
        }
    }

    /// Loop `index`'s per-method table (take it once, for the loop's own use).
    pub(crate) fn method_table(&self, index: usize) -> MethodTable {
        self.methods.table(index)
    }

    /// The per service and method series.
    pub fn methods(&self) -> &MethodStats {
        &self.methods
    }

    /// The access log the loops write to (set once, before the loops start).
    pub(crate) fn set_access_log(&self, log: AccessLog) {
        let _ = self.access_log.set(log);
    }

    /// The span exporter the loops hand spans to (set once, before the loops start).
    pub(crate) fn set_spans(&self, spans: reactor_admin::otlp::Spans) {
        let _ = self.spans.set(spans);
    }

    /// The span exporter, with `--otlp-endpoint`.
    pub(crate) fn spans(&self) -> Option<reactor_admin::otlp::Spans> {
        self.spans.get().cloned()
    }

    /// The access log, with `--access-log`.
    pub(crate) fn access_log(&self) -> Option<AccessLog> {
        self.access_log.get().cloned()
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
    #[cfg_attr(not(feature = "tls"), allow(dead_code))]
    pub(crate) fn tls_loaded(&self, not_after: i64, reload: bool) {
        self.tls.expiry.store(not_after, Relaxed);
        if reload {
            self.tls.reloads_ok.fetch_add(1, Relaxed);
        }
    }

    /// Changed certificate files were refused; the previous certificate stays.
    #[cfg_attr(not(feature = "tls"), allow(dead_code))]
    pub(crate) fn tls_reload_failed(&self) {
        self.tls.reloads_error.fetch_add(1, Relaxed);
    }

    /// Certificate reloads that took effect (`ok`) or were refused.
    pub fn tls_reloads(&self, ok: bool) -> u64 {
        if ok {
            self.tls.reloads_ok.load(Relaxed)
        } else {
            self.tls.reloads_error.load(Relaxed)
        }
    }

    /// The certificate's notAfter, Unix seconds (0 without TLS).
    pub fn tls_cert_expiry(&self) -> i64 {
        self.tls.expiry.load(Relaxed)
    }

    /// TLS handshakes that failed, all loops (as last sampled).
    pub fn tls_handshake_failures(&self) -> u64 {
        self.sum(|l| l.tls_handshake_failures.load(Relaxed))
    }

    /// A policy of `rules` rules is in force: at the start, or (`reload`) replacing
    /// the previous one.
    pub(crate) fn authz_loaded(&self, rules: usize, reload: bool) {
        self.authz.enabled.store(true, Relaxed);
        self.authz
            .rules
            .store(i64::try_from(rules).unwrap_or(i64::MAX), Relaxed);
        if reload {
            self.authz.reloads_ok.fetch_add(1, Relaxed);
        }
    }

    /// A changed policy file was refused; the previous policy stays.
    pub(crate) fn authz_reload_failed(&self) {
        self.authz.reloads_error.fetch_add(1, Relaxed);
    }

    /// Policy reloads that took effect (`ok`) or were refused.
    pub fn authz_reloads(&self, ok: bool) -> u64 {
        if ok {
            self.authz.reloads_ok.load(Relaxed)
        } else {
            self.authz.reloads_error.load(Relaxed)
        }
    }

    /// Calls refused by the authorization policy, agent and Dubbo consumers' alike.
    pub fn forbidden(&self) -> u64 {
        self.responses(Status::Forbidden) + self.dubbo_responses(Status::Forbidden)
    }

    /// Loop `i`'s counters (loop 0's if out of range).
    pub fn for_loop(&self, i: usize) -> &LoopMetrics {
        self.loops.get(i).unwrap_or(&self.loops[0])
    }

    /// Whether every loop has at least one provider connection open.
    pub fn provider_up(&self) -> bool {
        self.loops
            .iter()
            .all(|l| l.provider_conns_up.load(Relaxed) > 0)
    }

    /// Calls in flight to the provider, all loops.
    pub fn inflight(&self) -> i64 {
        self.loops.iter().map(|l| l.inflight.load(Relaxed)).sum()
    }

    /// Calls in flight to the provider on every loop but `index`, as each last
    /// published them (at the end of its loop iteration).
    pub fn inflight_except(&self, index: usize) -> usize {
        self.loops
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != index)
            .map(|(_, l)| usize::try_from(l.inflight.load(Relaxed)).unwrap_or(0))
            .sum()
    }

    /// Responses sent with `status`, all loops.
    pub fn responses(&self, status: Status) -> u64 {
        self.sum(|l| {
            l.responses
                .get(status as usize)
                .map_or(0, |c| c.load(Relaxed))
        })
    }

    /// Requests received, all loops.
    pub fn requests(&self) -> u64 {
        self.sum(|l| l.requests.load(Relaxed))
    }

    /// Dubbo requests received on `--dubbo-listen`, all loops.
    pub fn dubbo_requests(&self) -> u64 {
        self.sum(|l| l.dubbo_requests.load(Relaxed))
    }

    /// Answers to Dubbo consumers counted under `status`, all loops.
    pub fn dubbo_responses(&self, status: Status) -> u64 {
        self.sum(|l| {
            l.dubbo_responses
                .get(status as usize)
                .map_or(0, |c| c.load(Relaxed))
        })
    }

    fn sum(&self, f: impl Fn(&LoopMetrics) -> u64) -> u64 {
        self.loops.iter().map(f).sum()
    }

    /// The latency histogram, all loops.
    fn latency(&self) -> Histogram {
        let mut h = Histogram::new();
        for l in self.loops.iter() {
            for (sum, c) in h.counts.iter_mut().zip(&l.latency_buckets) {
                *sum += c.load(Relaxed);
            }
            h.sum_us = h.sum_us.saturating_add(l.latency_sum_us.load(Relaxed));
        }
        h
    }

    /// Prometheus text exposition (format 0.0.4).
    pub fn render(&self) -> String {
        let mut w = Writer::with_capacity(2048);
        w.counter(
            "provider_agent_requests_total",
            "Agent requests received.",
            self.requests(),
        );
        w.counter(
            "provider_agent_responses_ok_total",
            "Calls answered OK.",
            self.responses(Status::Ok),
        );
        let mut f = w.family(
            "provider_agent_errors_total",
            "Calls answered with an error, by kind.",
            Kind::Counter,
        );
        for (status, name) in ERROR_KINDS {
            f.sample(&[("kind", name)], self.responses(status));
        }
        w.gauge(
            "provider_agent_inflight",
            "Calls in flight to the provider.",
            self.inflight(),
        );
        let up: i64 = self
            .loops
            .iter()
            .map(|l| l.provider_conns_up.load(Relaxed))
            .sum();
        w.gauge(
            "provider_agent_provider_connections",
            "Provider connections open.",
            up,
        );
        w.gauge(
            "provider_agent_provider_up",
            "1 when every loop has a provider connection.",
            self.provider_up(),
        );
        w.counter(
            "provider_agent_provider_connects_total",
            "Provider connections opened.",
            self.sum(|l| l.provider_connects.load(Relaxed)),
        );
        w.counter(
            "provider_agent_dubbo_requests_total",
            "Dubbo requests received from Dubbo consumers (--dubbo-listen).",
            self.dubbo_requests(),
        );
        w.counter(
            "provider_agent_dubbo_responses_ok_total",
            "Dubbo consumers' calls answered OK.",
            self.dubbo_responses(Status::Ok),
        );
        let mut f = w.family(
            "provider_agent_dubbo_errors_total",
            "Dubbo consumers' calls answered otherwise, by kind (a thrown exception, the provider's error status, or the agent's refusal).",
            Kind::Counter,
        );
        for (status, name) in ERROR_KINDS {
            f.sample(&[("kind", name)], self.dubbo_responses(status));
        }
        w.gauge(
            "provider_agent_dubbo_connections",
            "Dubbo consumers' connections open.",
            self.loops
                .iter()
                .map(|l| l.dubbo_connections.load(Relaxed))
                .sum::<i64>(),
        );
        w.counter(
            "provider_agent_forbidden_total",
            "Calls refused by the authorization policy (--authz), agent and Dubbo consumers' alike.",
            self.forbidden(),
        );
        w.gauge(
            "provider_agent_authz_enabled",
            "1 when an authorization policy (--authz) is in force (else every peer may call).",
            self.authz.enabled.load(Relaxed),
        );
        w.gauge(
            "provider_agent_authz_rules",
            "Rules of the authorization policy in force.",
            self.authz.rules.load(Relaxed),
        );
        let mut f = w.family(
            "provider_agent_authz_reloads_total",
            "Reloads of the changed policy file: ok, or error (the previous policy stayed).",
            Kind::Counter,
        );
        f.sample(&[("result", "ok")], self.authz_reloads(true));
        f.sample(&[("result", "error")], self.authz_reloads(false));
        w.gauge(
            "provider_agent_tls_cert_expiry_timestamp_seconds",
            "notAfter of the agent's TLS certificate (--tls-cert), Unix seconds; 0 without TLS.",
            self.tls_cert_expiry(),
        );
        w.counter(
            "provider_agent_tls_handshake_failures_total",
            "TLS handshakes on the agent listener that failed (plaintext, untrusted, expired or missing client certificates, timeouts).",
            self.tls_handshake_failures(),
        );
        let mut f = w.family(
            "provider_agent_tls_reloads_total",
            "Reloads of changed TLS certificate files: ok, or error (the previous certificate stayed).",
            Kind::Counter,
        );
        f.sample(&[("result", "ok")], self.tls_reloads(true));
        f.sample(&[("result", "error")], self.tls_reloads(false));
        w.histogram(
            "provider_agent_latency_seconds",
            "Provider call latency.",
            &self.latency(),
        );
        w.counter(
            "provider_agent_access_log_dropped_total",
            "Access log lines dropped because the writer's queue was full (--access-log); calls never wait for their line.",
            self.access_log_dropped(),
        );
        let spans = self.spans.get().map(reactor_admin::otlp::Spans::stats);
        w.counter(
            "provider_agent_spans_exported_total",
            "Spans the OTLP collector accepted (--otlp-endpoint).",
            spans.map_or(0, |s| s.exported()),
        );
        w.counter(
            "provider_agent_spans_dropped_total",
            "Spans dropped: the exporter's queue was full, or the collector was down, slow or refused their batch; calls never wait for them.",
            spans.map_or(0, |s| s.dropped()),
        );
        self.methods.render(&mut w, "provider_agent");
        w.finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_and_histogram() {
        let m = Metrics::new(2);
        m.for_loop(0).requests.fetch_add(3, Relaxed);
        m.for_loop(1).requests.fetch_add(2, Relaxed);
        m.for_loop(1).response(Status::Overloaded);
        m.for_loop(0).latency(Duration::from_millis(60));
        m.for_loop(1).dubbo_requests.fetch_add(2, Relaxed);
        m.for_loop(1).dubbo_response(Status::Timeout);
        m.for_loop(0).dubbo_connections.fetch_add(1, Relaxed);
        let text = m.render();
        assert!(text.contains("provider_agent_dubbo_requests_total 2\n"));
        assert!(text.contains("provider_agent_dubbo_errors_total{kind=\"timeout\"} 1\n"));
        assert!(text.contains("provider_agent_dubbo_responses_ok_total 0\n"));
        assert!(text.contains("provider_agent_dubbo_connections 1\n"));
        assert!(text.contains("provider_agent_requests_total 5\n"));
        assert!(text.contains("provider_agent_errors_total{kind=\"overloaded\"} 1\n"));
        assert!(text.contains("provider_agent_latency_seconds_bucket{le=\"0.05\"} 0\n"));
        assert!(text.contains("provider_agent_latency_seconds_bucket{le=\"0.075\"} 1\n"));
        assert!(text.contains("provider_agent_latency_seconds_bucket{le=\"+Inf\"} 1\n"));
        assert!(text.contains("provider_agent_latency_seconds_sum 0.06\n"));
        assert!(text.contains("provider_agent_latency_seconds_count 1\n"));
        assert!(text.contains("provider_agent_provider_up 0\n"));
        // No policy: nothing refused, nothing reloaded.
        assert!(text.contains("provider_agent_authz_enabled 0\n"));
        assert!(text.contains("provider_agent_forbidden_total 0\n"));
        m.for_loop(0).response(Status::Forbidden);
        m.for_loop(1).dubbo_response(Status::Forbidden);
        m.authz_loaded(3, false);
        m.authz_loaded(2, true);
        m.authz_reload_failed();
        let text = m.render();
        assert!(text.contains("provider_agent_forbidden_total 2\n"));
        assert!(text.contains("provider_agent_errors_total{kind=\"forbidden\"} 1\n"));
        assert!(text.contains("provider_agent_dubbo_errors_total{kind=\"forbidden\"} 1\n"));
        assert!(text.contains("provider_agent_authz_enabled 1\n"));
        assert!(text.contains("provider_agent_authz_rules 2\n"));
        assert!(text.contains("provider_agent_authz_reloads_total{result=\"ok\"} 1\n"));
        assert!(text.contains("provider_agent_authz_reloads_total{result=\"error\"} 1\n"));
        // Every family: HELP, then TYPE, then its samples.
        let lines: Vec<&str> = text.lines().collect();
        for (i, line) in lines.iter().enumerate() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let name = rest.split(' ').next().unwrap();
                let help = format!("# HELP {name} ");
                assert!(i > 0 && lines[i - 1].starts_with(&help), "{name}:\n{text}");
            }
        }
        assert!(!m.provider_up());
    }
}
