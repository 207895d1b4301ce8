//! Command-line flags and the settings they make.
//!
//! One [`Config`] struct serves both the binary (parsed by clap) and tests (built in code
//! with [`Config::new`]), so the in-process agent a test starts is configured exactly like
//! the deployed one.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use registry::Variant;

/// How the provider encodes Dubbo bodies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SerializationArg {
    /// hessian2 (Dubbo's default, id 2): arguments are copied verbatim.
    Hessian2,
    /// fastjson (id 6, as in the 2018 race): arguments are transcoded to JSON lines.
    Fastjson,
}

impl From<SerializationArg> for codec::dubbo::Serialization {
    fn from(s: SerializationArg) -> Self {
        match s {
            SerializationArg::Hessian2 => codec::dubbo::Serialization::Hessian2,
            SerializationArg::Fastjson => codec::dubbo::Serialization::Fastjson,
        }
    }
}

/// Settings of a provider-agent.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "provider-agent",
    version,
    about = "dubbo-mesh provider-agent: accepts agent-protocol calls and forwards them to a \
             Dubbo provider over a few persistent connections per event loop."
)]
pub struct Config {
    /// Address to accept agent-protocol connections on.
    #[arg(long, default_value = "0.0.0.0:30000")]
    pub listen: SocketAddr,

    /// The Dubbo provider to forward calls to.
    #[arg(long, default_value = "127.0.0.1:20880")]
    pub provider: SocketAddr,

    /// A service this agent serves, in Dubbo's service-key form
    /// `[GROUP/]INTERFACE[:VERSION]`; repeat for several services, or several versions
    /// and groups of one. Each is registered while the provider is reachable.
    #[arg(long = "service", value_name = "[GROUP/]INTERFACE[:VERSION]")]
    pub services: Vec<String>,

    /// Body serialization the provider speaks.
    #[arg(long, value_enum, default_value_t = SerializationArg::Hessian2)]
    pub serialization: SerializationArg,

    /// Registry URL (`etcd://h:2379`, `file:///dir`); absent = the embedded default.
    #[arg(long)]
    pub registry: Option<String>,

    /// Version of each `--service` that names none; consumers calling a version reach
    /// only instances registered with it (none: callers that name no version).
    #[arg(long = "service-version", value_name = "VERSION")]
    pub service_version: Option<String>,

    /// Group of each `--service` that names none, matched like the version.
    #[arg(long = "service-group", value_name = "GROUP")]
    pub service_group: Option<String>,

    /// Load-balancing weight registered for this instance.
    #[arg(long, default_value_t = registry::DEFAULT_WEIGHT)]
    pub weight: u32,

    /// A label of this instance, `KEY=VALUE` (repeatable), registered beside its
    /// versions and groups (metadata `label.KEY`): consumer-agents' traffic rules
    /// choose subsets of a service's instances by label (e.g. `track=canary`).
    #[arg(long = "label", value_name = "KEY=VALUE", value_parser = parse_label)]
    pub labels: Vec<(String, String)>,

    /// Most calls in flight to the provider at once, all loops together (the provider's
    /// thread pool is one pool); beyond it calls are answered OVERLOADED at once.
    #[arg(long, default_value_t = 200)]
    pub max_inflight: usize,

    /// Calls one agent connection may have in flight; beyond it calls on that
    /// connection are answered OVERLOADED at once (0: only --max-inflight bounds them).
    #[arg(long, default_value_t = 0)]
    pub max_conn_inflight: usize,

    /// Connections per event loop at most, the loop's provider connections included;
    /// agent connections beyond it are closed as soon as they are accepted.
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(2..))]
    pub max_connections: u64,

    /// Largest agent-protocol frame body, in bytes (at most 8 MiB); a larger frame is
    /// answered BAD_REQUEST and its connection closed.
    #[arg(long, default_value_t = codec::agent::MAX_BODY as u64,
          value_parser = clap::value_parser!(u64).range(64..=codec::agent::MAX_BODY as u64))]
    pub max_frame: u64,

    /// Close an agent connection that has sent nothing and has no call in flight for
    /// this long, in seconds (0: never). Consumer-agents PING a connection idle for 15 s,
    /// so live links stay open and only abandoned ones are closed.
    #[arg(long, default_value_t = 60)]
    pub idle_timeout_secs: u64,

    /// Address registered for consumers to reach this agent (default: the listen address,
    /// 0.0.0.0 replaced by 127.0.0.1).
    #[arg(long, value_name = "HOST:PORT")]
    pub advertise: Option<String>,

    /// Number of event loops (threads).
    #[arg(long, default_value_t = 1)]
    pub loops: usize,

    /// Also take Dubbo 2 (hessian2) from unmeshed Dubbo consumers on this address: each
    /// call of a served `--service` goes to the provider as the consumer wrote it (only
    /// its request id changes), and the provider's answer comes back byte for byte.
    /// Registered instances then carry its address as metadata `dubbo.addr` (the
    /// advertised host, with this port). Needs `--serialization hessian2`. Absent = off.
    #[arg(long, value_name = "HOST:PORT")]
    pub dubbo_listen: Option<SocketAddr>,

    /// Largest Dubbo request body taken on --dubbo-listen, in bytes (at most 8 MiB, Dubbo's
    /// own payload limit); a larger one is answered BAD_REQUEST as soon as its header
    /// arrives, and its connection closed.
    #[arg(long, value_name = "BYTES", default_value_t = codec::dubbo::MAX_BODY_LEN as u64,
          value_parser = clap::value_parser!(u64).range(64..=codec::dubbo::MAX_BODY_LEN as u64))]
    pub dubbo_max_body: u64,

    /// Calls one Dubbo consumer's connection may have in flight (pipelined) before its
    /// connection is read no further until answers go out.
    #[arg(long, value_name = "N", default_value_t = 128,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub dubbo_max_pipeline: u64,

    /// Authorization policy: a JSON file of rules saying which peers (TLS identities, or
    /// `anonymous` for plaintext connections) may call which services and methods; any
    /// other call is refused (FORBIDDEN; Dubbo consumers: SERVICE_ERROR). Checked for
    /// changes once a second and reloaded (a file that does not parse keeps the policy
    /// in force). Absent = every peer may call every served service.
    #[arg(long, value_name = "FILE")]
    pub authz: Option<PathBuf>,

    /// Mutual TLS on the agent listener: this agent's certificate chain (PEM, leaf
    /// first). With `--tls-key` and `--tls-ca` (all three or none): only consumers
    /// presenting a certificate from that CA are served (plaintext and untrusted peers
    /// fail the handshake), each call's peer identity is the certificate's SPIFFE ID
    /// (else `dns:` and its DNS name), and this certificate's identity is registered
    /// as instance metadata `tls.identity`. The files are checked for changes once a
    /// second: new connections get a renewed certificate, open ones keep theirs; one
    /// naming another identity is registered again with it.
    #[arg(long, value_name = "FILE")]
    pub tls_cert: Option<PathBuf>,

    /// The private key of `--tls-cert` (PEM: PKCS#8, PKCS#1 or SEC1).
    #[arg(long, value_name = "FILE")]
    pub tls_key: Option<PathBuf>,

    /// The CA certificates consumer-agents' certificates must chain to (PEM).
    #[arg(long, value_name = "FILE")]
    pub tls_ca: Option<PathBuf>,

    /// Address of the admin HTTP server (`/healthz`, `/metrics`); absent = none.
    /// Give a loopback address (e.g. `127.0.0.1:30001`): it has no authentication.
    #[arg(long, value_name = "HOST:PORT")]
    pub admin: Option<SocketAddr>,

    /// Persistent provider connections per loop.
    #[arg(long, default_value_t = 1)]
    pub provider_conns: usize,

    /// Dubbo protocol version written in requests.
    #[arg(long, default_value = codec::dubbo::DEFAULT_DUBBO_VERSION)]
    pub dubbo_version: String,

    /// Seconds without traffic on a provider connection before a heartbeat is sent
    /// (silence for 3 times this closes it).
    #[arg(long, default_value_t = 30)]
    pub heartbeat_secs: u64,

    /// Seconds a graceful stop waits for calls in flight (also after handing over to a
    /// new process, `--upgrade-socket`, for consumer-agents to move away).
    #[arg(long, default_value_t = 5)]
    pub drain_secs: u64,
    /// The same bound as a duration (`500ms`, `5s`, `2m`), the name both agents
    /// share; it takes the place of `--drain-secs`.
    #[arg(long, value_name = "DURATION", conflicts_with = "drain_secs",
          value_parser = reactor_admin::upgrade::parse_duration)]
    pub drain_timeout: Option<Duration>,

    /// Offer this agent's listening sockets on this Unix socket to a new process
    /// started with `--upgrade-from` the same path (a binary upgrade: `systemctl
    /// reload`, or SIGUSR2, starts one). Once the new process accepts and is
    /// registered, this one stops accepting, tells consumer-agents to move to new
    /// connections (GOAWAY), finishes its calls and exits (within `--drain-secs`).
    #[arg(long, value_name = "PATH")]
    pub upgrade_socket: Option<std::path::PathBuf>,

    /// Take the listening sockets over from the agent offering them on this Unix
    /// socket (its `--upgrade-socket`), instead of binding: no connect is refused
    /// while the two overlap. If this process fails to start, the old one serves on.
    #[arg(long, value_name = "PATH")]
    pub upgrade_from: Option<std::path::PathBuf>,

    /// Access log: one JSON line per call (time, trace id, caller address and mTLS
    /// identity, service, method, version, group, front-end `agent` or `dubbo`,
    /// provider, status, latency, bytes) to this file, or `-` for standard output
    /// (absent: none). Written by a thread of its own through a bounded queue: when it
    /// is full lines are dropped and counted (`provider_agent_access_log_dropped_total`),
    /// never waited for. The file is appended to, and reopened on SIGHUP (for
    /// logrotate's move-then-signal).
    #[arg(long, value_name = "PATH|-")]
    pub access_log: Option<String>,

    /// Service and method series at most in `/metrics` (`provider_agent_method_*`):
    /// the busiest are kept, every other call is counted under `method="other"`, so
    /// callers naming random methods cannot grow the agent's memory.
    /// At most 65,536 (0: every call under `other`).
    #[arg(long, default_value_t = reactor_admin::method_stats::DEFAULT_MAX_SERIES as u32,
          value_parser = clap::value_parser!(u32).range(0..=65_536))]
    pub max_method_series: u32,

    /// Distributed tracing: export spans over OTLP/HTTP (protobuf) to this collector,
    /// `http://host:port[/path]` (path `/v1/traces` if none). With it, a call whose
    /// consumer-agent sent a trace context (W3C, B3 or sw8 attachments) is continued
    /// with this agent's span (the provider's part), and the provider receives the
    /// context as Dubbo attachments in the same format, with that span as parent. Spans
    /// leave through a bounded queue to an exporter thread; when the collector is slow,
    /// down or refuses, they are dropped and counted
    /// (`provider_agent_spans_dropped_total`), never waited for. Absent: no tracing,
    /// trace attachments pass through unchanged.
    #[arg(long, value_name = "URL")]
    pub otlp_endpoint: Option<String>,

    /// The share of calls arriving without a trace context that start a trace here
    /// (0.0 to 1.0; needs `--otlp-endpoint`). Consumer-agents usually decide instead.
    #[arg(long, default_value_t = 0.0, value_parser = reactor_admin::otlp::parse_sample_rate)]
    pub trace_sample_rate: f64,
}

impl Config {
    /// Defaults for everything but the provider address and the services.
    pub fn new(provider: SocketAddr, services: Vec<String>) -> Self {
        let mut c = Config::parse_from(["provider-agent"]);
        c.provider = provider;
        c.services = services;
        c
    }

    /// The address registered: `--advertise`, else the listen address (`bound`, the
    /// actual one when port 0 was asked for) with 0.0.0.0 replaced by 127.0.0.1.
    pub fn advertised(&self, bound: SocketAddr) -> String {
        if let Some(a) = &self.advertise {
            return a.clone();
        }
        if bound.ip().is_unspecified() {
            format!("127.0.0.1:{}", bound.port())
        } else {
            bound.to_string()
        }
    }

    /// The Dubbo listener's address registered as metadata `dubbo.addr`: the host of
    /// `advertised` (the agent address registered) with the listener's port (`bound`, the
    /// actual one when port 0 was asked for). A listener bound to a loopback address is
    /// reached only there, so that address is registered as it is.
    pub fn dubbo_advertised(advertised: &str, bound: SocketAddr) -> String {
        if bound.ip().is_loopback() {
            return bound.to_string();
        }
        match advertised.rsplit_once(':') {
            Some((host, _)) if !host.is_empty() => format!("{host}:{}", bound.port()),
            _ => bound.to_string(),
        }
    }

    /// The services to register: each interface once, with every version and group
    /// `--service` gives it (in the order given, duplicates dropped).
    ///
    /// # Errors
    /// A `--service` with an empty interface, or a version or group holding `,` or `/`.
    pub fn service_variants(&self) -> Result<Vec<(String, Vec<Variant>)>, String> {
        let default = |v: &Option<String>| v.clone().unwrap_or_default();
        let mut out: Vec<(String, Vec<Variant>)> = Vec::new();
        for spec in &self.services {
            let (group, rest) = match spec.split_once('/') {
                Some((g, rest)) => (g.to_owned(), rest),
                None => (default(&self.service_group), spec.as_str()),
            };
            let (interface, version) = match rest.split_once(':') {
                Some((i, v)) => (i, v.to_owned()),
                None => (rest, default(&self.service_version)),
            };
            if interface.is_empty() || interface.contains([':', '/']) {
                return Err(format!(
                    "--service {spec:?}: expected [GROUP/]INTERFACE[:VERSION]"
                ));
            }
            let variant = Variant::new(version, group);
            variant
                .check()
                .map_err(|e| format!("--service {spec:?}: {e}"))?;
            match out.iter_mut().find(|(i, _)| i == interface) {
                Some((_, vs)) if vs.contains(&variant) => {}
                Some((_, vs)) => vs.push(variant),
                None => out.push((interface.to_owned(), vec![variant])),
            }
        }
        Ok(out)
    }

    /// Heartbeat idle interval.
    pub fn heartbeat(&self) -> Duration {
        Duration::from_secs(self.heartbeat_secs.max(1))
    }

    /// Idle agent connections are closed after this (`None`: never).
    pub fn idle_timeout(&self) -> Option<Duration> {
        (self.idle_timeout_secs > 0).then(|| Duration::from_secs(self.idle_timeout_secs))
    }

    /// Bound on the graceful drain.
    pub fn drain(&self) -> Duration {
        self.drain_timeout
            .unwrap_or(Duration::from_secs(self.drain_secs))
    }
}

/// `KEY=VALUE` of `--label`: a key of letters, digits, `-`, `_` and `.` (at most 63
/// bytes), a value without control characters or `,` (at most 255 bytes).
fn parse_label(s: &str) -> Result<(String, String), String> {
    let (k, v) = s
        .split_once('=')
        .ok_or_else(|| format!("label {s:?} is not KEY=VALUE"))?;
    let key_ok = !k.is_empty()
        && k.len() <= 63
        && k.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
    if !key_ok {
        return Err(format!(
            "label key {k:?}: 1 to 63 letters, digits, '-', '_' or '.'"
        ));
    }
    if v.len() > 255 || v.chars().any(|c| c.is_control() || c == ',') {
        return Err(format!(
            "label value {v:?}: at most 255 bytes, no control characters or ','"
        ));
    }
    Ok((k.to_owned(), v.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults() {
        let c = Config::new("127.0.0.1:20880".parse().unwrap(), vec!["a.B".into()]);
        assert_eq!(c.max_inflight, 200);
        assert_eq!(c.authz, None, "no policy unless given");
        assert_eq!(c.dubbo_version, "2.0.2");
        assert_eq!(
            c.advertised("0.0.0.0:30000".parse().unwrap()),
            "127.0.0.1:30000"
        );
    }

    #[test]
    fn the_drain_bound_is_given_either_way() {
        let parse = |args: &[&str]| {
            let base = ["provider-agent", "--service", "a.B"];
            Config::try_parse_from(base.iter().chain(args.iter()).copied())
        };
        let drain = |args: &[&str]| parse(args).map(|c| c.drain()).ok();
        assert_eq!(drain(&[]), Some(Duration::from_secs(5)));
        assert_eq!(drain(&["--drain-secs", "9"]), Some(Duration::from_secs(9)));
        assert_eq!(
            drain(&["--drain-timeout", "750ms"]),
            Some(Duration::from_millis(750))
        );
        assert!(parse(&["--drain-timeout", "1s", "--drain-secs", "9"]).is_err());
    }

    #[test]
    fn the_dubbo_listener_is_registered_at_the_advertised_host() {
        let at = |adv: &str, bound: &str| Config::dubbo_advertised(adv, bound.parse().unwrap());
        assert_eq!(
            at("198.51.100.11:30000", "0.0.0.0:20880"),
            "198.51.100.11:20880"
        );
        assert_eq!(
            at("198.51.100.11:30000", "10.0.0.5:20880"),
            "198.51.100.11:20880"
        );
        assert_eq!(at("127.0.0.1:30000", "0.0.0.0:20880"), "127.0.0.1:20880");
        assert_eq!(
            at("[2001:db8::1]:30000", "[::]:20880"),
            "[2001:db8::1]:20880"
        );
        // Loopback only: reached only there.
        assert_eq!(
            at("198.51.100.11:30000", "127.0.0.1:20880"),
            "127.0.0.1:20880"
        );
        let c = Config::new("127.0.0.1:20880".parse().unwrap(), vec![]);
        assert_eq!(c.dubbo_listen, None, "off unless given");
        assert_eq!(c.dubbo_max_body, 8 * 1024 * 1024);
        assert_eq!(c.dubbo_max_pipeline, 128);
    }

    #[test]
    fn services_in_dubbo_key_form() {
        let mut c = Config::new(
            "127.0.0.1:20880".parse().unwrap(),
            vec![
                "a.B".into(),
                "a.B:2.0".into(),
                "blue/a.B:2.0".into(),
                "c.D".into(),
                "a.B:2.0".into(),
            ],
        );
        c.service_version = Some("1.0".into());
        let v = |version: &str, group: &str| Variant::new(version, group);
        assert_eq!(
            c.service_variants().unwrap(),
            vec![
                (
                    "a.B".to_owned(),
                    vec![v("1.0", ""), v("2.0", ""), v("2.0", "blue")]
                ),
                ("c.D".to_owned(), vec![v("1.0", "")]),
            ]
        );
        for bad in ["", "g/", ":1.0", "a.B:1,0", "x/y/a.B"] {
            c.services = vec![bad.into()];
            assert!(c.service_variants().is_err(), "{bad:?}");
        }
    }
}
