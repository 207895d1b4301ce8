//! Binary upgrade under load (`--upgrade-socket`, `--upgrade-from`).
//!
//! The running agent offers its listening sockets (HTTP, Dubbo, admin) on a Unix
//! socket (`reactor::handover`). A new process started with `--upgrade-from` takes
//! them, starts accepting on them and says it is ready; only then does the old one
//! stop accepting and drain: its loops get [`LoopMsg::HandOver`] and stop, so an HTTP
//! client's or a Dubbo consumer's connection is handed to the new process between
//! calls (with any bytes read but not yet processed), so the client never notices (an
//! HTTP connection over TLS is closed between requests instead, `Connection: close` on
//! its next answer), and the loop exits once it holds nothing (or at `--drain-ms`). A new process that fails before it is ready changes nothing.

use std::path::Path;
use std::sync::Arc;

use reactor::{handover, LoopHandle};
pub(crate) use reactor_admin::upgrade::{inherited, wait_until, HandedOver};

use crate::loop_handler::LoopMsg;
use crate::StartError;

/// The names of the listeners in a handover.
pub(crate) const HTTP: &str = "http";
/// `--dubbo-listen`.
pub(crate) const DUBBO: &str = "dubbo";
/// `--admin`.
pub(crate) const ADMIN: &str = "admin";

/// Connects to the running agent's `--upgrade-socket` and receives its listeners.
pub(crate) fn take(path: &Path) -> Result<handover::Takeover, StartError> {
    reactor_admin::upgrade::take(path).map_err(StartError::Io)
}

/// Says this process accepts, and has the connections the old one hands over adopted
/// by `handles`' loops.
pub(crate) fn ready(takeover: handover::Takeover, handles: Vec<LoopHandle<LoopMsg>>) {
    reactor_admin::upgrade::ready(takeover, handles, LoopMsg::Adopt);
}

/// Offers `listeners` on `path` until a new process takes them over; then each loop
/// gets [`LoopMsg::HandOver`] and drains.
pub(crate) fn serve(
    path: &Path,
    listeners: Vec<(String, Vec<std::net::TcpListener>)>,
    handles: Vec<LoopHandle<LoopMsg>>,
    done: Arc<HandedOver>,
) -> Result<handover::Server, StartError> {
    reactor_admin::upgrade::serve(
        path,
        "consumer-upgrade",
        listeners,
        handles,
        LoopMsg::HandOver,
        done,
    )
    .map_err(StartError::Io)
}
