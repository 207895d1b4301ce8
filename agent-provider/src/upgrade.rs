//! Binary upgrade under load (`--upgrade-socket`, `--upgrade-from`).
//!
//! The running agent offers its listening sockets (agent, Dubbo, admin) on a Unix
//! socket (`reactor::handover`). A new process started with `--upgrade-from` takes
//! them, starts accepting on them, registers (its own etcd lease, file entry or
//! ZooKeeper node, beside the old one's) and says it is ready; only then does the old
//! one stop accepting and drain: its loops get `LoopMsg::HandOver` and stop, so each
//! consumer-agent connection is told GOAWAY (the consumer-agent moves to a new
//! connection and closes this one once its calls on it are answered), a Dubbo
//! consumer's connection is handed to the new process between calls (with any bytes
//! read but not yet processed: the consumer never notices), and the loop exits once it
//! holds nothing (or at `--drain-secs`). Its registration is then withdrawn, which
//! leaves the new process's in place. A new process that fails before it is ready
//! changes nothing. The exchange itself is `reactor_admin::upgrade`'s; this names the
//! listeners.

pub(crate) use reactor_admin::upgrade::{inherited, ready, serve, take, HandedOver};

/// The names of the listeners in a handover.
pub(crate) const AGENT: &str = "agent";
/// `--dubbo-listen`.
pub(crate) const DUBBO: &str = "dubbo";
/// `--admin`.
pub(crate) const ADMIN: &str = "admin";
