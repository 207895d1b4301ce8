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

use std::io;
use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use reactor::handover::{self, Offer, Offered, Takeover};
use reactor::LoopHandle;

use crate::loop_handler::LoopMsg;
use crate::StartError;

/// The names of the listeners in a handover.
pub(crate) const HTTP: &str = "http";
/// `--dubbo-listen`.
pub(crate) const DUBBO: &str = "dubbo";
/// `--admin`.
pub(crate) const ADMIN: &str = "admin";

/// How long a new process waits for the old one to hand its sockets over, and then to
/// confirm it stopped accepting.
const EXCHANGE_WITHIN: Duration = Duration::from_secs(10);
/// How long the old process waits for a new one to say it accepts: its start-up (a
/// registry to open, loops to start) included.
const READY_WITHIN: Duration = Duration::from_secs(60);

/// Connects to the running agent's `--upgrade-socket` and receives its listeners.
pub(crate) fn take(path: &Path) -> Result<Takeover, StartError> {
    let t = Takeover::connect(path, EXCHANGE_WITHIN).map_err(|e| {
        StartError::Io(io::Error::new(
            e.kind(),
            format!("--upgrade-from {}: {e}", path.display()),
        ))
    })?;
    log::info!(
        "took over listeners {:?} from {}",
        t.names().collect::<Vec<_>>(),
        path.display()
    );
    Ok(t)
}

/// The inherited sockets of listener `name`, if they listen on `addr` (port 0: any);
/// sockets of another address (the flag changed) are closed and `addr` is bound anew.
pub(crate) fn inherited(
    takeover: &mut Option<Takeover>,
    name: &str,
    addr: SocketAddr,
) -> Option<Vec<TcpListener>> {
    let socks = takeover.as_mut()?.take(name)?;
    let bound = socks.first()?.local_addr().ok()?;
    let same = bound == addr || (addr.port() == 0 && bound.ip() == addr.ip());
    if !same {
        log::warn!("{name}: the old process listens on {bound}, this one on {addr}: binding anew");
        return None;
    }
    Some(socks)
}

/// Polls `cond` until it holds (true) or `within` passed (false).
pub(crate) fn wait_until(within: Duration, cond: impl Fn() -> bool) -> bool {
    let end = std::time::Instant::now() + within;
    while !cond() {
        if std::time::Instant::now() >= end {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    true
}

/// Says the new process accepts, and waits for the old one to stop accepting.
pub(crate) fn ready(takeover: Takeover) {
    match takeover.ready(EXCHANGE_WITHIN) {
        Ok(()) => log::info!("the old process stopped accepting: this one serves alone"),
        Err(e) => log::warn!("the old process did not confirm the handover: {e}"),
    }
}

/// Whether this process handed its sockets over, and what to do then (the binary:
/// stop waiting for signals and drain).
#[derive(Default)]
pub(crate) struct HandedOver {
    state: Mutex<Once>,
}

/// What to run once, and whether the time came.
#[derive(Default)]
struct Once {
    done: bool,
    then: Option<Box<dyn FnOnce() + Send>>,
}

impl std::fmt::Debug for HandedOver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HandedOver")
            .field("done", &self.is_done())
            .finish()
    }
}

impl HandedOver {
    fn lock(&self) -> std::sync::MutexGuard<'_, Once> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn is_done(&self) -> bool {
        self.lock().done
    }

    /// Runs `f` once handed over (at once if already).
    pub(crate) fn then(&self, f: Box<dyn FnOnce() + Send>) {
        let mut s = self.lock();
        if s.done {
            drop(s);
            f();
        } else {
            s.then = Some(f);
        }
    }

    fn set(&self) {
        let f = {
            let mut s = self.lock();
            s.done = true;
            s.then.take()
        };
        if let Some(f) = f {
            f();
        }
    }
}

/// What the handover thread offers, and does once a new process accepts.
struct Offering {
    listeners: Vec<(String, Vec<TcpListener>)>,
    handles: Vec<LoopHandle<LoopMsg>>,
    done: Arc<HandedOver>,
}

impl Offered for Offering {
    fn listeners(&mut self) -> io::Result<Vec<(String, Vec<TcpListener>)>> {
        self.listeners
            .iter()
            .map(|(name, socks)| {
                let dups = socks
                    .iter()
                    .map(TcpListener::try_clone)
                    .collect::<io::Result<_>>()?;
                Ok((name.clone(), dups))
            })
            .collect()
    }

    fn ready(&mut self) {
        for h in &self.handles {
            let _ = h.send(LoopMsg::HandOver);
            let _ = h.stop();
        }
        self.done.set();
    }
}

/// Offers `listeners` on `path` until a new process takes them over.
pub(crate) fn serve(
    path: &Path,
    listeners: Vec<(String, Vec<TcpListener>)>,
    handles: Vec<LoopHandle<LoopMsg>>,
    done: Arc<HandedOver>,
) -> Result<handover::Server, StartError> {
    let offer = Offer::bind(path).map_err(|e| {
        StartError::Io(io::Error::new(
            e.kind(),
            format!("--upgrade-socket {}: {e}", path.display()),
        ))
    })?;
    let offering = Offering {
        listeners,
        handles,
        done,
    };
    handover::serve(offer, "consumer-upgrade", READY_WITHIN, offering).map_err(StartError::Io)
}
