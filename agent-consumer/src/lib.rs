//! consumer-agent: the consumer side of dubbo-mesh.
//!
//! Takes plain HTTP from a consumer (the 2018 race's form body on any path, or a JSON
//! typed invocation), picks a provider-agent by load balancing, forwards the call over
//! the agent protocol on a connection owned by the same event loop, and answers in HTTP:
//! `200` with the result (an int in decimal, other values as JSON), `400` for a bad
//! request, `502` with the provider's message, `503` when no provider can take the call,
//! `504` on timeout. Every request gets exactly one answer. Errors of the race's form
//! calls are plain text; errors of JSON invocations are JSON,
//! `{"error":"<code>","message":"<text>","status":<status>}` (a provider exception adds
//! `class`).
//!
//! # Examples
//!
//! ```no_run
//! use clap::Parser;
//! let config = agent_consumer::Config::parse_from(["consumer-agent", "--listen", "127.0.0.1:20000"]);
//! let running = agent_consumer::start(config).expect("start");
//! running.stop();
//! ```

#![deny(missing_docs)]

mod admin;
pub mod config;
mod discovery;
mod http_conn;
mod lb;
mod loop_handler;
mod metrics;
mod rules;
mod tls;
mod upgrade;
mod upstream;

use std::net::SocketAddr;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

pub use crate::config::Config;
use crate::discovery::Discovery;
pub use crate::lb::Algorithm;
use crate::loop_handler::{ConsumerLoop, LoopMsg, Tag};
pub use crate::metrics::Metrics;

/// A running consumer-agent.
#[derive(Debug)]
pub struct Running {
    reactor: reactor::Reactor<LoopMsg>,
    http_addr: SocketAddr,
    dubbo_addr: Option<SocketAddr>,
    admin_addr: Option<SocketAddr>,
    metrics: Arc<Metrics>,
    admin: Option<reactor_admin::Server>,
    discovery: Option<(Arc<Discovery>, JoinHandle<()>)>,
    /// The TLS certificate watcher, with `--tls-cert`.
    tls_watcher: Option<tls::Watcher>,
    /// With `--upgrade-socket`: the thread offering the listeners to a new process.
    handover: Option<reactor::handover::Server>,
    /// Set once a new process took the listeners over.
    handed_over: Arc<upgrade::HandedOver>,
}

/// Why the agent could not start.
#[derive(Debug)]
pub enum StartError {
    /// A flag's value is invalid.
    Config(String),
    /// Binding or starting the loops failed.
    Io(std::io::Error),
    /// The registry could not be opened or watched.
    Registry(registry::Error),
}

impl std::fmt::Display for StartError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StartError::Config(e) => write!(f, "{e}"),
            StartError::Io(e) => write!(f, "{e}"),
            StartError::Registry(e) => write!(f, "registry: {e}"),
        }
    }
}

impl std::error::Error for StartError {}

/// Starts the loops, the registry watches (of `--service`; others from their first
/// call) and the admin port.
///
/// # Errors
/// A port could not be bound, the registry could not be opened, or a `--service` is
/// not a service name.
pub fn start(config: Config) -> Result<Running, StartError> {
    let config = Arc::new(config);
    let metrics = Arc::new(Metrics::with_method_series(
        config.loops,
        config.max_method_series as usize,
    ));
    let access_log = reactor_admin::access_log::AccessLog::from_flag(config.access_log.as_deref());
    if let Some(log) = access_log.map_err(StartError::Config)? {
        metrics.set_access_log(log);
    }
    if let Some(spans) = reactor_admin::otlp::from_flags(
        config.otlp_endpoint.as_deref(),
        config.trace_sample_rate,
        "consumer-agent",
    )
    .map_err(StartError::Config)?
    {
        metrics.set_spans(spans);
    }
    let registry = registry::open(config.registry.as_deref()).map_err(StartError::Registry)?;
    metrics.set_registry(registry.clone());
    let (discovery, requests) = Discovery::new(config.max_services as usize, &config.services);
    for service in &config.services {
        discovery
            .subscribe(service)
            .map_err(|e| StartError::Config(format!("--service {service}: {e}")))?;
    }
    let reactor_config = reactor::Config {
        loops: config.loops.max(1),
        max_connections: config.max_connections,
        thread_name: "consumer".into(),
        ..reactor::Config::default()
    };
    let mut tls = tls::start(&config, &metrics).map_err(StartError::Config)?;
    let (c, m, d) = (config.clone(), metrics.clone(), discovery.clone());
    let client_tls = tls.client.clone();
    let mut builder = reactor::Builder::new(reactor_config);
    #[cfg(feature = "tls")]
    let http_tls = tls.http.take();
    #[cfg(not(feature = "tls"))]
    let http_tls: Option<()> = None;
    // A binary upgrade: the listening sockets come from the running agent.
    let mut takeover = match &config.upgrade_from {
        Some(path) => Some(upgrade::take(path).map_err(StartError::Io)?),
        None => None,
    };
    let http_socks = upgrade::inherited(&mut takeover, upgrade::HTTP, config.listen);
    builder = match (http_tls, http_socks) {
        #[cfg(feature = "tls")]
        (Some(acceptor), Some(socks)) => builder.listen_tls_inherited(socks, Tag::Http, acceptor),
        #[cfg(feature = "tls")]
        (Some(acceptor), None) => builder.listen_tls(config.listen, Tag::Http, acceptor),
        (_, Some(socks)) => builder.listen_inherited(socks, Tag::Http),
        _ => builder.listen(config.listen, Tag::Http),
    };
    if let Some(addr) = config.dubbo_listen {
        builder = match upgrade::inherited(&mut takeover, upgrade::DUBBO, addr) {
            Some(socks) => builder.listen_inherited(socks, Tag::Dubbo),
            None => builder.listen(addr, Tag::Dubbo),
        };
    }
    // The admin port before the loops: once they run they accept (on sockets taken
    // over, too), and a start failing after that would drop what they accepted.
    let discovered = Arc::new(admin::Discovered::default());
    let rules = Arc::new(admin::RulesInForce::default());
    let admin = match config.admin {
        Some(a) => {
            let inherited = upgrade::inherited(&mut takeover, upgrade::ADMIN, a);
            let (d, r) = (discovered.clone(), rules.clone());
            let server = admin::spawn(a, metrics.clone(), d, r, inherited);
            Some(server.map_err(StartError::Io)?)
        }
        None => None,
    };
    let reactor = builder
        .start(move |index, _| {
            ConsumerLoop::new(c.clone(), m.for_loop(index), d.clone()).with_tls(client_tls.clone())
        })
        .map_err(StartError::Io)?;
    let http_addr = reactor.local_addrs()[0];
    let dubbo_addr = reactor.local_addrs().get(1).copied();
    let watcher = discovery::spawn(
        registry,
        requests,
        reactor.handles().to_vec(),
        discovered.clone(),
        rules.clone(),
    )
    .map_err(StartError::Io)?;
    let admin_addr = admin.as_ref().map(reactor_admin::Server::local_addr);
    match dubbo_addr {
        Some(d) => log::info!("consumer-agent listening on {http_addr} (HTTP) and {d} (Dubbo)"),
        None => log::info!("consumer-agent listening on {http_addr}"),
    }
    // Accepting on every socket: the old process may stop (nothing fallible after this
    // may fail the start, or the port would be left without a server).
    if let Some(t) = takeover.take() {
        // With provider-agents connected first (as `/healthz` says), so calls taken from
        // now on go out at once; the registry or provider-agents unreachable: anyway,
        // after a while (the old process would have none either).
        let within = Duration::from_millis(config.connect_timeout_ms) + UPSTREAMS_WITHIN;
        if !config.services.is_empty() && !upgrade::wait_until(within, || metrics.has_upstream()) {
            log::warn!("no provider-agent connected within {within:?}: taking over anyway");
        }
        upgrade::ready(t, reactor.handles().to_vec(), LoopMsg::Adopt);
    }
    let handed_over = Arc::new(upgrade::HandedOver::default());
    let handover = match &config.upgrade_socket {
        Some(path) => {
            let offered = offered_listeners(&reactor, dubbo_addr.is_some(), admin.as_ref())
                .map_err(StartError::Io)
                .and_then(|listeners| {
                    upgrade::serve(
                        path,
                        "consumer-upgrade",
                        listeners,
                        reactor.handles().to_vec(),
                        LoopMsg::HandOver,
                        handed_over.clone(),
                    )
                    .map_err(StartError::Io)
                });
            match offered {
                Ok(server) => Some(server),
                Err(e) => {
                    log::error!("no binary upgrade possible: {e}");
                    None
                }
            }
        }
        None => None,
    };
    Ok(Running {
        reactor,
        http_addr,
        dubbo_addr,
        admin_addr,
        metrics,
        admin,
        discovery: Some((discovery, watcher)),
        tls_watcher: tls.watcher.take(),
        handover,
        handed_over,
    })
}

/// How long a new process (`--upgrade-from`) waits for a provider-agent connection
/// (beyond `--connect-timeout-ms`) before it tells the old one to stop anyway.
const UPSTREAMS_WITHIN: Duration = Duration::from_secs(2);

/// The listening sockets a new process takes over (`--upgrade-socket`), by name.
fn offered_listeners(
    reactor: &reactor::Reactor<LoopMsg>,
    dubbo: bool,
    admin: Option<&reactor_admin::Server>,
) -> std::io::Result<Vec<(String, Vec<std::net::TcpListener>)>> {
    let mut socks = reactor.listeners()?.into_iter();
    let mut out = Vec::new();
    if let Some(http) = socks.next() {
        out.push((upgrade::HTTP.to_owned(), http));
    }
    if let Some(d) = socks.next().filter(|_| dubbo) {
        out.push((upgrade::DUBBO.to_owned(), d));
    }
    if let Some(a) = admin {
        out.push((upgrade::ADMIN.to_owned(), a.listeners()?));
    }
    Ok(out)
}

impl Running {
    /// Where HTTP is accepted (the real port when 0 was asked).
    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
    }

    /// Where Dubbo is accepted, with `--dubbo-listen`.
    pub fn dubbo_addr(&self) -> Option<SocketAddr> {
        self.dubbo_addr
    }

    /// The admin server's address, if one runs.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin_addr
    }

    /// The agent's counters.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Calls `f` (once, on another thread) when a new process has taken the listeners
    /// over (`--upgrade-socket`): the agent is draining, and [`Running::stop`] waits
    /// for it to finish. At once if that happened already.
    pub fn when_handed_over(&self, f: impl FnOnce() + Send + 'static) {
        self.handed_over.then(Box::new(f));
    }

    /// Stops gracefully (no new connections, in-flight calls finish) and waits. After a
    /// handover (see [`Running::when_handed_over`]), waits for the drain: calls
    /// answered and client connections closed between requests, or `--drain-ms`.
    pub fn stop(mut self) {
        if let Some(h) = self.handover.take() {
            h.stop();
        }
        self.reactor.stop();
        self.reactor.join();
        // The loops' last access log lines reach the file before the process exits, and
        // their last spans the collector (within a second), the exporter thread joined.
        self.metrics.sync_access_log();
        if let Some(spans) = self.metrics.spans() {
            spans.close(Duration::from_secs(1));
        }
        if let Some(admin) = self.admin.take() {
            admin.stop();
        }
        if let Some(mut w) = self.tls_watcher.take() {
            w.stop();
        }
        // The loops are gone with their handles on it: the last one ends the watcher.
        if let Some((discovery, watcher)) = self.discovery.take() {
            drop(discovery);
            let _ = watcher.join();
        }
    }
}
