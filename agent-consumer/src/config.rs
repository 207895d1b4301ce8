//! Command-line flags of `consumer-agent`.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Parser;

use crate::lb::Algorithm;

/// The race's service, watched when no `--service` is given.
pub const RACE_SERVICE: &str = "com.alibaba.dubbo.performance.demo.provider.IHelloService";

/// consumer-agent: takes HTTP (form or JSON) from a consumer, picks a provider-agent by
/// load balancing and forwards the call over the agent protocol.
#[derive(Debug, Clone, Parser)]
#[command(name = "consumer-agent", version, about)]
pub struct Config {
    /// Address to accept HTTP on. A sidecar serves the application beside it, so only
    /// this host by default; give `0.0.0.0:20000` to take calls from other hosts.
    #[arg(long, default_value = "127.0.0.1:20000")]
    pub listen: SocketAddr,
    /// Address to accept Dubbo on, from unmodified Dubbo consumers (hessian2), beside
    /// HTTP and on the same loops (absent: none; 127.0.0.1:20881 suits a sidecar).
    #[arg(long, value_name = "HOST:PORT")]
    pub dubbo_listen: Option<SocketAddr>,
    /// Registry: etcd://h1:2379,h2:2379 | file:///dir | static://host:port?weight=N,...
    /// (absent: the embedded registry shared by all agents of this host).
    #[arg(long)]
    pub registry: Option<String>,
    /// Service (Dubbo interface) to watch in the registry from the start; repeatable.
    /// Any other service is watched from its first call (which waits for the
    /// registry's first list, within its timeout): this only warms the agent up.
    #[arg(long = "service", default_value = RACE_SERVICE)]
    pub services: Vec<String>,
    /// Services watched at most, `--service` included; a call naming one more is
    /// answered 503 (so callers naming ever new interfaces cannot grow the watches).
    #[arg(long, default_value_t = 1024, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_services: u32,
    /// Event-loop threads.
    #[arg(long, default_value_t = 1)]
    pub loops: usize,
    /// Load balancing: adaptive (learns capacity), wrr (smooth weighted round-robin),
    /// least-active, p2c (power of two choices on EWMA latency).
    #[arg(long, value_enum, default_value_t = Algorithm::Adaptive)]
    pub lb: Algorithm,
    /// End-to-end timeout of one call, retries included (a request may ask for less
    /// with the `x-dubbo-timeout` header or the JSON `timeout` field).
    #[arg(long, default_value_t = 3000)]
    pub timeout_ms: u64,
    /// Retries on another provider when that is safe (overloaded, unavailable,
    /// connect failure).
    #[arg(long, default_value_t = 2)]
    pub retries: u32,
    /// Before retrying a call that the only provider-agent able to take it has just
    /// refused (overloaded or unavailable), wait this long (milliseconds), doubled at
    /// each further retry and jittered (half to all of it), so that the retry finds
    /// room once the burst has passed instead of being refused again at once. A retry
    /// that another provider-agent can take goes there at once, and so does one whose
    /// wait would pass the call's deadline. 0: every retry at once.
    #[arg(long, default_value_t = 25)]
    pub retry_backoff_ms: u64,
    /// Mutual TLS to provider-agents: this agent's certificate chain (PEM, leaf
    /// first). With `--tls-key` and `--tls-ca` (all three or none): provider-agents are
    /// reached over TLS, presenting this certificate; a provider-agent's certificate
    /// must chain to the CA and name the identity its registry entry publishes
    /// (`tls.identity`), else the connection is refused. Unmeshed Dubbo providers stay
    /// plaintext. Checked for changes once a second (new connections use the new
    /// certificate).
    #[arg(long, value_name = "FILE")]
    pub tls_cert: Option<PathBuf>,
    /// The private key of `--tls-cert` (PEM).
    #[arg(long, value_name = "FILE")]
    pub tls_key: Option<PathBuf>,
    /// The CA certificates provider-agents' certificates must chain to (PEM).
    #[arg(long, value_name = "FILE")]
    pub tls_ca: Option<PathBuf>,
    /// Serve HTTP (`--listen`) over TLS with this certificate chain (PEM; with
    /// `--http-tls-key`). Absent: plain HTTP. Reloaded when the files change.
    #[arg(long, value_name = "FILE")]
    pub http_tls_cert: Option<PathBuf>,
    /// The private key of `--http-tls-cert` (PEM).
    #[arg(long, value_name = "FILE")]
    pub http_tls_key: Option<PathBuf>,
    /// Ask HTTP callers for client certificates chaining to these CAs (PEM) and refuse
    /// those without: the identity a caller proves can be matched by traffic rules
    /// (`match.callers`). Needs `--http-tls-cert`.
    #[arg(long, value_name = "FILE")]
    pub http_tls_ca: Option<PathBuf>,
    /// Admin HTTP address serving /metrics, /healthz and /registry (absent: no admin
    /// port). Give a loopback address (e.g. `127.0.0.1:20002`): it has no
    /// authentication.
    #[arg(long)]
    pub admin: Option<SocketAddr>,
    /// Timeout for connecting to a provider-agent.
    #[arg(long, default_value_t = 1000)]
    pub connect_timeout_ms: u64,
    /// Largest HTTP request head, in bytes (431 beyond).
    #[arg(long, default_value_t = 16 * 1024)]
    pub max_head: usize,
    /// Largest HTTP request body, in bytes (413 beyond).
    #[arg(long, default_value_t = 1024 * 1024)]
    pub max_body: usize,
    /// Connections per loop at most, its provider-agent connections included; HTTP
    /// connections beyond it are closed as soon as they are accepted.
    #[arg(long, default_value_t = 100_000)]
    pub max_connections: usize,
    /// Requests one HTTP connection may have in flight (pipelining) before it is
    /// read no further until answers go out.
    #[arg(long, default_value_t = 128)]
    pub max_pipeline: usize,
    /// Calls in flight to one provider-agent (for one service) per event loop; when
    /// every provider-agent of a service is at it, calls are answered 503 at once.
    #[arg(long, default_value_t = 1024, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_upstream_inflight: u32,
    /// Deepest nesting of a JSON invocation's arguments (a value is 1 level, each array
    /// or object around it one more; 64 is hessian2's own limit); deeper is 400 and
    /// nothing is sent. At most 126: the JSON parser refuses deeper bodies anyway.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=126))]
    pub max_json_depth: u32,
    /// Close an HTTP connection idle this long, in seconds (0: never).
    #[arg(long, default_value_t = 300)]
    pub idle_timeout_secs: u64,
    /// On SIGTERM, or after handing over to a new process (`--upgrade-socket`), how
    /// long in-flight requests (and, handing over, idle keep-alive connections) may
    /// take to finish, in milliseconds.
    #[arg(long, default_value_t = 5000)]
    pub drain_ms: u64,
    /// The same bound as a duration (`500ms`, `5s`, `2m`), the name both agents
    /// share; it takes the place of `--drain-ms`.
    #[arg(long, value_name = "DURATION", conflicts_with = "drain_ms",
          value_parser = reactor_admin::upgrade::parse_duration)]
    pub drain_timeout: Option<std::time::Duration>,
    /// Offer this agent's listening sockets on this Unix socket to a new process
    /// started with `--upgrade-from` the same path (a binary upgrade: `systemctl
    /// reload`, or SIGUSR2, starts one). Once the new process accepts, this one stops
    /// accepting, finishes its calls, hands its clients' connections (HTTP and Dubbo)
    /// over between calls (HTTP over TLS: `Connection: close` on the next answer) and
    /// exits (within `--drain-ms`).
    #[arg(long, value_name = "PATH")]
    pub upgrade_socket: Option<PathBuf>,
    /// Take the listening sockets over from the agent offering them on this Unix
    /// socket (its `--upgrade-socket`), instead of binding: no connect is refused
    /// while the two overlap. If this process fails to start, the old one serves on.
    #[arg(long, value_name = "PATH")]
    pub upgrade_from: Option<PathBuf>,
    /// Access log: one JSON line per call (time, trace id, caller, service, method,
    /// version, group, front-end, provider-agent, retries, status, latency, bytes) to
    /// this file, or `-` for standard output (absent: none). Written by a thread of its
    /// own through a bounded queue: when it is full lines are dropped and counted
    /// (`consumer_access_log_dropped_total`), never waited for. The file is appended
    /// to, and reopened on SIGHUP (for logrotate's move-then-signal).
    #[arg(long, value_name = "PATH|-")]
    pub access_log: Option<String>,
    /// Service and method series at most in `/metrics` (`consumer_method_*`): the
    /// busiest are kept, every other call is counted under `method="other"`, so callers
    /// naming random methods cannot grow the agent's memory.
    /// At most 65,536 (0: every call under `other`).
    #[arg(long, default_value_t = reactor_admin::method_stats::DEFAULT_MAX_SERIES as u32,
          value_parser = clap::value_parser!(u32).range(0..=65_536))]
    pub max_method_series: u32,
    /// Distributed tracing: export spans over OTLP/HTTP (protobuf) to this collector,
    /// `http://host:port[/path]` (path `/v1/traces` if none). With it, a call carrying a
    /// trace context (W3C `traceparent`/`tracestate`, B3 `b3` or `X-B3-*`, SkyWalking
    /// `sw8`, as HTTP headers or Dubbo attachments) is continued with the agent's span
    /// and handed on in the same format. Spans leave through a bounded queue to an
    /// exporter thread (batches of up to 512 spans or 1 s); when the collector is slow,
    /// down or refuses, they are dropped and counted (`consumer_spans_dropped_total`),
    /// never waited for. Absent: no tracing, trace attachments pass through unchanged.
    #[arg(long, value_name = "URL")]
    pub otlp_endpoint: Option<String>,
    /// The share of calls without a trace context that start a trace (0.0 to 1.0;
    /// needs `--otlp-endpoint`). A B3 context that defers the decision is decided by it
    /// too.
    #[arg(long, default_value_t = 0.0, value_parser = reactor_admin::otlp::parse_sample_rate)]
    pub trace_sample_rate: f64,
}

impl Config {
    /// Bound on the graceful drain: `--drain-timeout`, else `--drain-ms`.
    pub fn drain(&self) -> std::time::Duration {
        self.drain_timeout
            .unwrap_or(std::time::Duration::from_millis(self.drain_ms))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_drain_bound_is_given_either_way() {
        let parse = |args: &[&str]| {
            Config::try_parse_from(std::iter::once("consumer-agent").chain(args.iter().copied()))
        };
        let drain = |args: &[&str]| parse(args).map(|c| c.drain());
        use std::time::Duration;
        assert_eq!(drain(&[]).ok(), Some(Duration::from_secs(5)));
        assert_eq!(
            drain(&["--drain-ms", "250"]).ok(),
            Some(Duration::from_millis(250))
        );
        assert_eq!(
            drain(&["--drain-timeout", "2s"]).ok(),
            Some(Duration::from_secs(2))
        );
        assert!(parse(&["--drain-timeout", "2s", "--drain-ms", "9"]).is_err());
        assert!(parse(&["--drain-timeout", "soon"]).is_err());
    }
}
