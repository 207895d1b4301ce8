//! One admin HTTP server for both agents: `/healthz`, `/metrics` and whatever other `GET`
//! routes an agent gives it, on a single [`reactor`] loop thread.
//!
//! Kubernetes probes `/healthz` on this port and restarts the pod when it does not
//! answer, so no client may stall it: the server is event-driven (one loop, no thread
//! per connection, nothing blocking), and every connection is bounded in time, in size
//! and in number.
//!
//! - **Deadline**: a connection has [`Config::request_timeout`] (2 s) from its accept to
//!   send a whole request; a client trickling its request, or sending nothing, is cut
//!   off then (with `408` if it had begun one).
//! - **Size**: a request head over [`Config::max_head`] is answered `431`, a body over
//!   [`Config::max_body`] `413`, malformed ones `400`, then the connection closes.
//! - **Number**: past [`Config::max_connections`] (1,024), each new connection closes
//!   the oldest one, so a flood of idle clients ages out instead of locking probes out.
//! - **Clients that never read**: an answered connection is closed gracefully and given
//!   at most the reactor's close linger (1 s here) to take its answer.
//! - **One request per connection** by default, answered with `Connection: close`, as
//!   probes and scrapers expect; [`Config::keep_alive`] keeps connections open between
//!   requests, for at most that idle time.
//!
//! `/healthz` is answered by the server itself from the health callback
//! ([`Builder::health`]): `200 ok`, or `503` with the reason. Routes
//! ([`Builder::route`]) are closures run on the admin thread for each `GET` (or
//! `HEAD`) of their path, query string ignored; a route that panics is answered `500`
//! and the server goes on.
//!
//! Two more pieces both agents share live here, beside the server:
//!
//! - [`access_log`]: the access log (`--access-log`), one JSON line per call, formatted
//!   on a loop thread into a reused buffer and written by a thread of its own through a
//!   bounded queue (a full queue drops and counts, never blocks a call), reopened on
//!   `SIGHUP` for log rotation.
//! - [`method_stats`]: per service and method counters and latency histograms, one
//!   lock-free table per loop, with the number of series bounded
//!   (`--max-method-series`: the busiest kept, the rest under `method="other"`), so
//!   callers naming random methods cannot grow the agent's memory or the scraper's.
//!
//! # Examples
//!
//! ```
//! use std::io::{Read, Write};
//! use reactor_admin::{Builder, Config, Response};
//!
//! let server = Builder::new(Config::named("example-admin"))
//!     .health(|| Ok(()))
//!     .route("/metrics", || Response::prometheus("# no metrics yet\n"))
//!     .start("127.0.0.1:0".parse().unwrap())
//!     .unwrap();
//! let mut s = std::net::TcpStream::connect(server.local_addr()).unwrap();
//! s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
//! let mut answer = String::new();
//! s.read_to_string(&mut answer).unwrap();
//! assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"));
//! assert!(answer.ends_with("\r\n\r\nok\n"));
//! server.stop();
//! ```
//!
//! # Errors
//!
//! [`Builder::start`] fails only if the address cannot be bound or the thread not
//! started. Bad requests are answered (400, 405, 408, 413, 431), never fatal.
//!
//! # Panics
//!
//! None on any input. Routes and the health callback are the caller's code: a panic in
//! one is caught and answered `500`.
//!
//! # Notes
//!
//! Routes run on the admin loop's thread, one at a time: keep them short (render from
//! atomics, take a lock briefly). Everything they share with the agent's loops must be
//! `Send + Sync`.

#![deny(missing_docs, missing_debug_implementations, rust_2018_idioms)]

pub mod access_log;
mod config;
mod handler;
pub mod method_stats;
pub mod otlp;
mod response;
mod server;
pub mod upgrade;

pub use crate::config::Config;
pub use crate::response::{Response, PROMETHEUS_CONTENT_TYPE};
pub use crate::server::{Builder, Server};
