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
mod http_conn;
mod lb;
mod loop_handler;
mod metrics;
mod upstream;

use std::net::SocketAddr;
use std::sync::Arc;

pub use crate::config::Config;
pub use crate::lb::Algorithm;
use crate::loop_handler::{ConsumerLoop, LoopMsg, Tag};
pub use crate::metrics::Metrics;

/// A running consumer-agent.
#[derive(Debug)]
pub struct Running {
    reactor: reactor::Reactor<LoopMsg>,
    http_addr: SocketAddr,
    admin_addr: Option<SocketAddr>,
    metrics: Arc<Metrics>,
    admin: Option<reactor_admin::Server>,
    _watches: Vec<registry::Watch>,
    _registry: registry::Registry,
}

/// Why the agent could not start.
#[derive(Debug)]
pub enum StartError {
    /// Binding or starting the loops failed.
    Io(std::io::Error),
    /// The registry could not be opened or watched.
    Registry(registry::Error),
}

impl std::fmt::Display for StartError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StartError::Io(e) => write!(f, "{e}"),
            StartError::Registry(e) => write!(f, "registry: {e}"),
        }
    }
}

impl std::error::Error for StartError {}

/// Starts the loops, the registry watches and the admin port.
///
/// # Errors
/// A port could not be bound, or the registry could not be opened.
pub fn start(config: Config) -> Result<Running, StartError> {
    let config = Arc::new(config);
    let metrics = Arc::new(Metrics::new(config.loops));
    let registry = registry::open(config.registry.as_deref()).map_err(StartError::Registry)?;
    let reactor_config = reactor::Config {
        loops: config.loops.max(1),
        max_connections: config.max_connections,
        thread_name: "consumer".into(),
        ..reactor::Config::default()
    };
    let (c, m) = (config.clone(), metrics.clone());
    let reactor = reactor::Builder::new(reactor_config)
        .listen(config.listen, Tag::Http)
        .start(move |index, _| ConsumerLoop::new(c.clone(), m.for_loop(index)))
        .map_err(StartError::Io)?;
    let http_addr = reactor.local_addrs()[0];
    let discovered = Arc::new(admin::Discovered::default());
    let mut watches = Vec::new();
    for service in &config.services {
        let handles = reactor.handles().to_vec();
        let name = service.clone();
        let seen = discovered.clone();
        let watch = registry
            .watch(service, move |list| {
                seen.set(&name, &list);
                for h in &handles {
                    let _ = h.send(LoopMsg::Instances(name.clone(), list.clone()));
                }
            })
            .map_err(StartError::Registry)?;
        watches.push(watch);
    }
    let admin = match config.admin {
        Some(a) => Some(admin::spawn(a, metrics.clone(), discovered).map_err(StartError::Io)?),
        None => None,
    };
    let admin_addr = admin.as_ref().map(reactor_admin::Server::local_addr);
    log::info!("consumer-agent listening on {http_addr}");
    Ok(Running {
        reactor,
        http_addr,
        admin_addr,
        metrics,
        admin,
        _watches: watches,
        _registry: registry,
    })
}

impl Running {
    /// Where HTTP is accepted (the real port when 0 was asked).
    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
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
    pub fn stop(self) {
        self.reactor.stop();
        self.reactor.join();
        if let Some(admin) = self.admin {
            admin.stop();
        }
    }
}
