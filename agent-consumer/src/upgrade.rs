//! Binary upgrade under load (`--upgrade-socket`, `--upgrade-from`).
//!
//! The running agent offers its listening sockets (HTTP, Dubbo, admin) on a Unix
//! socket (`reactor::handover`). A new process started with `--upgrade-from` takes
//! them, starts accepting on them and says it is ready; only then does the old one
//! stop accepting and drain: its loops get `LoopMsg::HandOver` and stop, so an HTTP
//! client's or a Dubbo consumer's connection is handed to the new process between
//! calls (with any bytes read but not yet processed), so the client never notices (an
//! HTTP connection over TLS is closed between requests instead, `Connection: close` on
//! its next answer), and the loop exits once it holds nothing (or at `--drain-ms`).
//! A new process that fails before it is ready changes nothing. The exchange itself is
//! `reactor_admin::upgrade`'s; this names the listeners.

pub(crate) use reactor_admin::upgrade::{inherited, ready, serve, take, wait_until, HandedOver};

/// The names of the listeners in a handover.
pub(crate) const HTTP: &str = "http";
/// `--dubbo-listen`.
pub(crate) const DUBBO: &str = "dubbo";
/// `--admin`.
pub(crate) const ADMIN: &str = "admin";
