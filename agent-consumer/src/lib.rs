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
mod upstream;

use std::net::SocketAddr;
use std::sync::Arc;
use std::thread::JoinHandle;

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
    let metrics = Arc::new(Metrics::new(config.loops));
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
    builder = match http_tls {
        #[cfg(feature = "tls")]
        Some(acceptor) => builder.listen_tls(config.listen, Tag::Http, acceptor),
        _ => builder.listen(config.listen, Tag::Http),
    };
    if let Some(addr) = config.dubbo_listen {
        builder = builder.listen(addr, Tag::Dubbo);
    }
    let reactor = builder
        .start(move |index, _| {
            ConsumerLoop::new(c.clone(), m.for_loop(index), d.clone()).with_tls(client_tls.clone())
        })
        .map_err(StartError::Io)?;
    let http_addr = reactor.local_addrs()[0];
    let dubbo_addr = reactor.local_addrs().get(1).copied();
    let discovered = Arc::new(admin::Discovered::default());
    let rules = Arc::new(admin::RulesInForce::default());
    let watcher = discovery::spawn(
        registry,
        requests,
        reactor.handles().to_vec(),
        discovered.clone(),
        rules.clone(),
    )
    .map_err(StartError::Io)?;
    let admin = match config.admin {
        Some(a) => {
            let server = admin::spawn(a, metrics.clone(), discovered, rules);
            Some(server.map_err(StartError::Io)?)
        }
        None => None,
    };
    let admin_addr = admin.as_ref().map(reactor_admin::Server::local_addr);
    match dubbo_addr {
        Some(d) => log::info!("consumer-agent listening on {http_addr} (HTTP) and {d} (Dubbo)"),
        None => log::info!("consumer-agent listening on {http_addr}"),
    }
    Ok(Running {
        reactor,
        http_addr,
        dubbo_addr,
        admin_addr,
        metrics,
        admin,
        discovery: Some((discovery, watcher)),
        tls_watcher: tls.watcher.take(),
    })
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

    /// Stops gracefully (no new connections, in-flight calls finish) and waits.
    pub fn stop(mut self) {
        self.reactor.stop();
        self.reactor.join();
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
