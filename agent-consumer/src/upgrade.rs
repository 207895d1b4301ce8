//! Binary upgrade under load (`--upgrade-socket`, `--upgrade-from`).
//!
//! The running agent offers its listening sockets (HTTP, Dubbo, admin) on a Unix
//! socket (`reactor::handover`). A new process started with `--upgrade-from` takes
//! them, starts accepting on them and says it is ready; only then does the old one
//! stop accepting and drain: its loops get [`LoopMsg::HandOver`] and stop, so an HTTP
//! connection is answered to the end of its calls and closed between requests
//! (`Connection: close` on its next answer), a Dubbo consumer is told READONLY and
//! closed between calls, and the loop exits once it holds nothing (or at `--drain-ms`).
//! A new process that fails before it is ready changes nothing.

use std::path::Path;
use std::sync::Arc;

use reactor::{handover, LoopHandle};
pub(crate) use reactor_admin::upgrade::{inherited, ready, HandedOver};

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

/// Offers `listeners` on `path` until a new process takes them over; then each loop
/// gets [`LoopMsg::HandOver`] and drains.
pub(crate) fn serve(
    path: &Path,
    listeners: Vec<(String, Vec<std::net::TcpListener>)>,
    handles: Vec<LoopHandle<LoopMsg>>,
    done: Arc<HandedOver>,
) -> Result<handover::Server, StartError> {
    let hand_over = || LoopMsg::HandOver;
    reactor_admin::upgrade::serve(
        path,
        "consumer-upgrade",
        listeners,
        handles,
        hand_over,
        done,
    )
    .map_err(StartError::Io)
}

/// Polls `cond` until it holds (true) or `within` passed (false).
pub(crate) fn wait_until(within: std::time::Duration, cond: impl Fn() -> bool) -> bool {
    let end = std::time::Instant::now() + within;
    while !cond() {
        if std::time::Instant::now() >= end {
            return false;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    true
}
