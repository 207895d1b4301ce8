//! Setting up the server, its routes, and the running server.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;
use std::time::Duration;

use crate::config::Config;
use crate::handler::AdminLoop;
use crate::response::Response;

/// The path the server answers itself, from the health callback.
pub(crate) const HEALTHZ: &str = "/healthz";
/// How long an answered connection may take to read its answer (the reactor's close
/// linger; also the most a stop waits for answers still being written).
pub(crate) const CLOSE_LINGER: Duration = Duration::from_secs(1);
/// Size of the loop's read buffer: requests are small.
const INPUT_BUFFER: usize = 16 * 1024;

type RouteFn = Box<dyn Fn() -> Response + Send + Sync>;
type HealthFn = Box<dyn Fn() -> Result<(), String> + Send + Sync>;

/// What the server answers: the health callback and the routes.
pub(crate) struct Routes {
    health: Option<HealthFn>,
    routes: Vec<(String, RouteFn)>,
    not_found: String,
}

impl fmt::Debug for Routes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Routes")
            .field("health", &self.health.is_some())
            .field(
                "routes",
                &self.routes.iter().map(|(p, _)| p).collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl Routes {
    fn new(health: Option<HealthFn>, routes: Vec<(String, RouteFn)>) -> Self {
        let mut paths: Vec<&str> = routes.iter().map(|(p, _)| p.as_str()).collect();
        paths.insert(0, HEALTHZ);
        let not_found = format!("not found: try {}\n", paths.join(", "));
        Routes {
            health,
            routes,
            not_found,
        }
    }

    /// The answer to `method path`: `405` for methods other than `GET` and `HEAD` (a
    /// `HEAD` is answered as a `GET`; the caller leaves the body out), `/healthz` from
    /// the health callback, a route's answer, or `404`. The query string is ignored.
    pub(crate) fn answer(&self, method: &str, target: &str) -> Response {
        if method != "GET" && method != "HEAD" {
            return Response::text(405, "GET only\n");
        }
        let path = target.split('?').next().unwrap_or(target);
        if path == HEALTHZ {
            return self.health();
        }
        match self.routes.iter().find(|(p, _)| p == path) {
            Some((_, route)) => guarded(path, route),
            None => Response::text(404, self.not_found.clone()),
        }
    }

    fn health(&self) -> Response {
        let Some(health) = &self.health else {
            return Response::text(200, "ok\n");
        };
        guarded(HEALTHZ, || match health() {
            Ok(()) => Response::text(200, "ok\n"),
            Err(mut why) => {
                if !why.ends_with('\n') {
                    why.push('\n');
                }
                Response::text(503, why)
            }
        })
    }
}

/// Runs the caller's code; a panic in it is answered `500`, not the end of the server.
fn guarded(path: &str, f: impl FnOnce() -> Response) -> Response {
    catch_unwind(AssertUnwindSafe(f)).unwrap_or_else(|_| {
        log::error!("admin: the handler of {path} panicked");
        Response::text(500, "internal error\n")
    })
}

/// Sets up an admin server: its [`Config`], health callback and routes, then
/// [`Builder::start`].
pub struct Builder {
    config: Config,
    health: Option<HealthFn>,
    routes: Vec<(String, RouteFn)>,
}

impl fmt::Debug for Builder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Builder")
            .field("config", &self.config)
            .field("health", &self.health.is_some())
            .field(
                "routes",
                &self.routes.iter().map(|(p, _)| p).collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl Builder {
    /// A server with these limits, no routes, and `/healthz` always `200`.
    pub fn new(config: Config) -> Self {
        Builder {
            config,
            health: None,
            routes: Vec::new(),
        }
    }

    /// What `/healthz` answers: `Ok(())` is `200 ok`, `Err(reason)` is `503` with the
    /// reason as the body. Called on the admin thread for every probe.
    pub fn health(mut self, f: impl Fn() -> Result<(), String> + Send + Sync + 'static) -> Self {
        self.health = Some(Box::new(f));
        self
    }

    /// Answers `GET path` (and `HEAD path`) with `f()`, called on the admin thread for
    /// each request. A second route for the same path replaces the first; `/healthz` is
    /// the server's own (see [`Builder::health`]) and cannot be routed.
    pub fn route(
        mut self,
        path: impl Into<String>,
        f: impl Fn() -> Response + Send + Sync + 'static,
    ) -> Self {
        let path = path.into();
        if path == HEALTHZ {
            log::warn!("admin: {HEALTHZ} is answered by the health callback; route ignored");
            return self;
        }
        self.routes.retain(|(p, _)| *p != path);
        self.routes.push((path, Box::new(f)));
        self
    }

    /// Binds `addr` and starts the server's loop thread.
    ///
    /// # Errors
    /// The address could not be bound, or the thread not started.
    pub fn start(self, addr: SocketAddr) -> io::Result<Server> {
        self.start_from(Some(addr), Vec::new())
    }

    /// Starts the server on listening sockets it inherits, from the process it replaces
    /// (see `reactor::handover` and `Server::listeners`): it accepts on them at once,
    /// and none is bound.
    ///
    /// # Errors
    /// No socket, or one that is not listening; the thread could not be started.
    pub fn start_inherited(self, sockets: Vec<std::net::TcpListener>) -> io::Result<Server> {
        self.start_from(None, sockets)
    }

    fn start_from(
        self,
        addr: Option<SocketAddr>,
        inherited: Vec<std::net::TcpListener>,
    ) -> io::Result<Server> {
        let config = self.config;
        let routes = Arc::new(Routes::new(self.health, self.routes));
        let max_connections = config.max_connections.max(1);
        let reactor_config = reactor::Config {
            loops: 1,
            input_buffer: INPUT_BUFFER,
            // The decoder answers 431/413 well before this; it only backs it up.
            max_input: config.max_head + config.max_body + INPUT_BUFFER,
            // One over the bound: the handler then closes the oldest connection, so
            // the newest (a probe, likely) is the one that stays.
            max_connections: max_connections + 1,
            thread_name: config.thread_name.clone(),
            close_linger: CLOSE_LINGER,
            ..reactor::Config::default()
        };
        let builder = reactor::Builder::new(reactor_config);
        let builder = match addr {
            Some(addr) => builder.listen(addr, ()),
            None => builder.listen_inherited(inherited, ()),
        };
        let reactor = builder.start(move |_, _| AdminLoop::new(routes.clone(), config.clone()))?;
        let addr = reactor
            .local_addrs()
            .first()
            .copied()
            .ok_or_else(|| io::Error::other("no listener bound"))?;
        log::info!("admin server on {addr}");
        Ok(Server {
            reactor: Some(reactor),
            addr,
        })
    }
}

/// A running admin server. Dropping it stops it (as [`Server::stop`] does).
#[derive(Debug)]
pub struct Server {
    reactor: Option<reactor::Reactor<()>>,
    addr: SocketAddr,
}

impl Server {
    /// The bound address (the real port when port 0 was asked).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Duplicates of the listening socket, for a process taking over from this one
    /// (see `reactor::Reactor::listeners`); the server goes on accepting until stopped.
    ///
    /// # Errors
    /// Out of file descriptors, or the server is stopped.
    pub fn listeners(&self) -> io::Result<Vec<std::net::TcpListener>> {
        let r = self
            .reactor
            .as_ref()
            .ok_or_else(|| io::Error::other("admin server stopped"))?;
        Ok(r.listeners()?.into_iter().flatten().collect())
    }

    /// Stops accepting, leaving the listening socket open for a process it was handed
    /// to (see `reactor::Reactor::stop_accepting`); connections already open are
    /// answered until [`Server::stop`].
    pub fn stop_accepting(&self) {
        if let Some(r) = &self.reactor {
            r.stop_accepting();
        }
    }

    /// Stops the server and waits for its thread: the listener closes at once, answers
    /// already written get up to 1 s to leave.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        if let Some(r) = self.reactor.take() {
            r.stop();
            r.join();
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.shutdown();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn routes(healthy: bool) -> Routes {
        let health: HealthFn = Box::new(move || {
            if healthy {
                Ok(())
            } else {
                Err("provider not connected".into())
            }
        });
        let metrics: RouteFn = Box::new(|| Response::prometheus("m 1\n"));
        let boom: RouteFn = Box::new(|| panic!("a route that panics"));
        Routes::new(
            Some(health),
            vec![("/metrics".into(), metrics), ("/boom".into(), boom)],
        )
    }

    #[test]
    fn healthz_follows_the_health_callback() {
        assert_eq!(
            routes(true).answer("GET", "/healthz"),
            Response::text(200, "ok\n")
        );
        assert_eq!(
            routes(false).answer("GET", "/healthz?verbose=1"),
            Response::text(503, "provider not connected\n")
        );
        let none = Routes::new(None, Vec::new());
        assert_eq!(none.answer("GET", "/healthz").status, 200);
    }

    #[test]
    fn routes_by_path_ignoring_the_query() {
        let r = routes(true);
        let m = r.answer("GET", "/metrics?x=1");
        assert_eq!((m.status, m.body.as_slice()), (200, &b"m 1\n"[..]));
        assert_eq!(m.content_type, "text/plain; version=0.0.4");
        assert_eq!(r.answer("HEAD", "/metrics").status, 200);
        let missing = r.answer("GET", "/nothing");
        assert_eq!(missing.status, 404);
        assert_eq!(missing.body, b"not found: try /healthz, /metrics, /boom\n");
        assert_eq!(r.answer("POST", "/metrics").status, 405);
        assert_eq!(r.answer("GET", "/metrics/").status, 404);
    }

    #[test]
    fn a_panicking_route_is_answered_500() {
        let r = routes(true);
        assert_eq!(r.answer("GET", "/boom").status, 500);
        assert_eq!(r.answer("GET", "/metrics").status, 200);
    }

    #[test]
    fn healthz_cannot_be_routed() {
        let b = Builder::new(Config::default()).route(HEALTHZ, || Response::text(200, "x"));
        assert!(b.routes.is_empty());
    }
}
