//! The admin HTTP endpoint: `GET /healthz` and `GET /metrics`.
//!
//! Off the hot path: the shared admin server ([`reactor_admin`]) on one event-loop
//! thread of its own (`provider-admin-0`), sharing nothing with the agent's loops but
//! the metrics atomics. Each connection has 2 s from its accept for its request and at
//! most 1,024 are held (the oldest closed first), so no number of slow or idle clients
//! keeps `/healthz` (Kubernetes' probe) from answering.

use std::io;
use std::net::SocketAddr;

use reactor_admin::{Builder, Config, Response, Server};

use crate::metrics::Metrics;

/// A running admin server.
#[derive(Debug)]
pub(crate) struct Admin {
    server: Option<Server>,
    addr: SocketAddr,
}

impl Admin {
    /// Binds `addr` (or serves on the `inherited` sockets of a binary upgrade) on a new
    /// thread. `/healthz` is 200 while every loop has a provider connection, else 503.
    pub(crate) fn spawn(
        addr: SocketAddr,
        metrics: Metrics,
        inherited: Option<Vec<std::net::TcpListener>>,
    ) -> io::Result<Admin> {
        let health = metrics.clone();
        let builder = Builder::new(Config::named("provider-admin"))
            .health(move || {
                if health.provider_up() {
                    Ok(())
                } else {
                    Err("provider not connected".into())
                }
            })
            .route("/metrics", move || Response::prometheus(metrics.render()));
        let server = match inherited {
            Some(socks) => builder.start_inherited(socks)?,
            None => builder.start(addr)?,
        };
        Ok(Admin {
            addr: server.local_addr(),
            server: Some(server),
        })
    }

    /// The bound address.
    pub(crate) fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Duplicates of the listening socket, for a binary upgrade.
    pub(crate) fn listeners(&self) -> io::Result<Vec<std::net::TcpListener>> {
        self.server
            .as_ref()
            .ok_or_else(|| io::Error::other("admin server stopped"))?
            .listeners()
    }

    /// Stops the server and waits for its thread.
    pub(crate) fn stop(&mut self) {
        if let Some(s) = self.server.take() {
            s.stop();
        }
    }
}
