//! Binary upgrade under load (`--upgrade-socket`, `--upgrade-from`).
//!
//! The running agent offers its listening sockets (agent, Dubbo, admin) on a Unix
//! socket (`reactor::handover`). A new process started with `--upgrade-from` takes
//! them, starts accepting on them, registers (its own etcd lease, file entry or
//! ZooKeeper node, beside the old one's) and says it is ready; only then does the old
//! one stop accepting and drain: its loops get [`LoopMsg::HandOver`] and stop, so each
//! consumer-agent connection is told GOAWAY (the consumer-agent moves to a new
//! connection and closes this one once its calls on it are answered), a Dubbo
//! consumer is told READONLY and closed between calls, and the loop exits once it holds
//! nothing (or at `--drain-secs`). Its registration is then withdrawn, which leaves
//! the new process's in place. A new process that fails before it is ready changes
//! nothing.

use std::path::Path;
use std::sync::Arc;

use reactor::{handover, LoopHandle};
pub(crate) use reactor_admin::upgrade::{inherited, ready, HandedOver};

use crate::loop_handler::LoopMsg;
use crate::StartError;

/// The names of the listeners in a handover.
pub(crate) const AGENT: &str = "agent";
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
        "provider-upgrade",
        listeners,
        handles,
        hand_over,
        done,
    )
    .map_err(StartError::Io)
}
