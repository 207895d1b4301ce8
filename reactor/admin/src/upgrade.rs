//! Replacing a running agent's binary from the command line (`systemctl reload`, or
//! `kill -USR2`): [`start_successor`] starts the binary now at this program's path with
//! the same flags and `--upgrade-from`, and the successor takes the listeners over
//! through [`reactor::handover`]; [`notify_systemd`] tells a `Type=notify` unit when
//! an agent is ready and, after an upgrade, which process is now its main one.
//!
//! The exchange itself, the same for both agents: the new process [`take`]s the
//! listeners, picks each one's sockets with [`inherited`], accepts on them and says
//! [`ready`]; the old one offers them with [`serve`] and, once the new one accepts,
//! tells its loops to drain (handing them the [`Handoff`] that passes established
//! connections on) and marks [`HandedOver`]. [`ready`] spreads the connections handed
//! over among the new process's loops.

use std::ffi::OsString;
use std::io;
use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use reactor::handover::{self, Arrivals, Offer, Offered, Takeover};
pub use reactor::handover::{Arrival, Handoff};
use reactor::{Ctx, Handler, LoopHandle};

/// How long a new process waits for the old one to hand its sockets over, and then to
/// confirm it stopped accepting.
const EXCHANGE_WITHIN: Duration = Duration::from_secs(10);
/// How long the old process waits for a new one to say it accepts: its start-up (a
/// registry to open, loops to start, a provider to reach, a registration) included.
const READY_WITHIN: Duration = Duration::from_secs(60);

/// SIGUSR2: starts this program again (the binary now at its path: a new version
/// once installed) with the same flags and `--upgrade-from` this agent's
/// `--upgrade-socket`; it takes the listeners over, and this process drains. If it
/// fails, this one serves on (and says so).
pub fn start_successor(name: &str, socket: Option<&Path>) {
    let Some(socket) = socket else {
        log::warn!("SIGUSR2: no --upgrade-socket, so no upgrade; ignored");
        return;
    };
    let mut args = std::env::args_os();
    let Some(program) = args.next() else {
        log::error!("SIGUSR2: this program's path is unknown; no upgrade");
        return;
    };
    let mut kept: Vec<OsString> = Vec::new();
    let mut skip_value = false;
    for a in args {
        if skip_value {
            skip_value = false;
            continue;
        }
        if a == "--upgrade-from" {
            skip_value = true;
            continue;
        }
        if a.to_str().is_some_and(|s| s.starts_with("--upgrade-from=")) {
            continue;
        }
        kept.push(a);
    }
    let child = std::process::Command::new(&program)
        .args(&kept)
        .arg("--upgrade-from")
        .arg(socket)
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) => {
            log::error!(
                "SIGUSR2: starting {}: {e}; serving on",
                Path::new(&program).display()
            );
            return;
        }
    };
    log::info!(
        "SIGUSR2: started the new {name} (pid {}) to take over",
        child.id()
    );
    let waiter = std::thread::Builder::new()
        .name("upgrade-wait".into())
        .spawn(move || match child.wait() {
            Ok(st) if !st.success() => {
                log::error!("the new process exited ({st}) before taking over; serving on")
            }
            Ok(_) => {}
            Err(e) => log::warn!("waiting for the new process: {e}"),
        });
    if let Err(e) = waiter {
        log::warn!("no thread to watch the new process: {e}");
    }
}

/// Tells systemd (`Type=notify`, `NotifyAccess=all`) the agent is ready and, after
/// an upgrade, that this process is now the service's main one.
pub fn notify_systemd(upgraded: bool) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let state = if upgraded {
        format!("MAINPID={}\nREADY=1\n", std::process::id())
    } else {
        "READY=1\n".to_owned()
    };
    let sock = match std::os::unix::net::UnixDatagram::unbound() {
        Ok(s) => s,
        Err(e) => return log::warn!("sd_notify: {e}"),
    };
    let sent = match path.to_str().and_then(|p| p.strip_prefix('@')) {
        #[cfg(target_os = "linux")]
        Some(abstract_name) => {
            use std::os::linux::net::SocketAddrExt;
            std::os::unix::net::SocketAddr::from_abstract_name(abstract_name)
                .and_then(|a| sock.send_to_addr(state.as_bytes(), &a))
        }
        #[cfg(not(target_os = "linux"))]
        Some(_) => return,
        None => sock.send_to(state.as_bytes(), &path),
    };
    if let Err(e) = sent {
        log::warn!("sd_notify: {e}");
    }
}

/// Connects to the running agent's `--upgrade-socket` and receives its listeners.
///
/// # Errors
/// No agent offers its listeners there, or the exchange failed (the error names the
/// path, as `--upgrade-from` gave it).
pub fn take(path: &Path) -> io::Result<Takeover> {
    let t = Takeover::connect(path, EXCHANGE_WITHIN)
        .map_err(|e| io::Error::new(e.kind(), format!("--upgrade-from {}: {e}", path.display())))?;
    log::info!(
        "took over listeners {:?} from {}",
        t.names().collect::<Vec<_>>(),
        path.display()
    );
    Ok(t)
}

/// The inherited sockets of listener `name`, if they listen on `addr` (port 0: any);
/// sockets of another address (the flag changed) are closed and `addr` is bound anew.
pub fn inherited(
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

/// Parses a duration flag (`--drain-timeout`): a number with a unit, `500ms`, `5s`,
/// `2m`, or a bare number of seconds.
///
/// # Errors
/// Anything else, named in the message.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, unit) = t.split_at(split);
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("{text:?}: expected a duration such as 500ms, 5s or 2m"))?;
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "" | "s" => Ok(Duration::from_secs(n)),
        "m" => Ok(Duration::from_secs(n.saturating_mul(60))),
        _ => Err(format!("{text:?}: the unit is ms, s or m")),
    }
}

/// Polls `cond` until it holds (true) or `within` passed (false).
pub fn wait_until(within: Duration, cond: impl Fn() -> bool) -> bool {
    let end = std::time::Instant::now() + within;
    while !cond() {
        if std::time::Instant::now() >= end {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    true
}

/// Says the new process accepts, and waits for the old one to stop accepting; then,
/// on a thread of their own, the connections the old one hands over while it drains
/// go to `handles`' loops in turn, each as `adopt(arrival)`.
pub fn ready<M: Send + 'static>(
    takeover: Takeover,
    handles: Vec<LoopHandle<M>>,
    adopt: fn(Arrival) -> M,
) {
    match takeover.ready(EXCHANGE_WITHIN) {
        Ok(arrivals) => {
            log::info!("the old process stopped accepting: this one serves alone");
            let spread = std::thread::Builder::new()
                .name("upgrade-adopt".into())
                .spawn(move || spread_arrivals(arrivals, &handles, adopt));
            if let Err(e) = spread {
                log::warn!("no thread to take connections over: {e}");
            }
        }
        Err(e) => log::warn!("the old process did not confirm the handover: {e}"),
    }
}

/// Takes on a connection the process this one replaced handed over, tagged as `kinds`
/// says for the name it came under (`(name, tag)` pairs); one of another name is
/// closed.
pub fn adopt<H: Handler>(cx: &mut Ctx<'_, H>, arrival: Arrival, kinds: &[(&str, H::Tag)]) {
    let Some(&(name, tag)) = kinds.iter().find(|(n, _)| *n == arrival.name) else {
        log::warn!(
            "a connection handed over as {:?}: not one this agent takes; closing it",
            arrival.name
        );
        return;
    };
    if let Err(e) = cx.adopt(arrival.stream, tag, arrival.input) {
        log::warn!("taking a {name} connection over: {e}");
    }
}

/// Hands each connection the old process passes on to the next loop, until it exits.
fn spread_arrivals<M>(mut arrivals: Arrivals, handles: &[LoopHandle<M>], adopt: fn(Arrival) -> M) {
    let mut taken = 0usize;
    loop {
        match arrivals.recv() {
            Ok(Some(arrival)) => {
                let Some(h) = handles.get(taken % handles.len().max(1)) else {
                    return;
                };
                taken += 1;
                if h.send(adopt(arrival)).is_err() {
                    log::warn!("a connection handed over found its loop gone");
                }
            }
            Ok(None) => break,
            Err(e) => {
                log::warn!("taking connections over: {e}");
                break;
            }
        }
    }
    log::info!("took {taken} connection(s) over from the old process");
}

/// Whether this process handed its sockets over, and what to do then (the binary:
/// stop waiting for signals and drain).
#[derive(Default)]
pub struct HandedOver {
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

    /// Whether the sockets were handed over.
    pub fn is_done(&self) -> bool {
        self.lock().done
    }

    /// Runs `f` once handed over (at once if already).
    pub fn then(&self, f: Box<dyn FnOnce() + Send>) {
        let mut s = self.lock();
        if s.done {
            drop(s);
            f();
        } else {
            s.then = Some(f);
        }
    }

    /// Marks it handed over and runs what waited for that.
    pub fn set(&self) {
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
struct Offering<M> {
    listeners: Vec<(String, Vec<TcpListener>)>,
    handles: Vec<LoopHandle<M>>,
    hand_over: fn(Handoff) -> M,
    done: Arc<HandedOver>,
}

impl<M: Send + 'static> Offered for Offering<M> {
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

    fn ready(&mut self, handoff: Handoff) {
        for h in &self.handles {
            let _ = h.send((self.hand_over)(handoff.clone()));
            let _ = h.stop();
        }
        self.done.set();
    }
}

/// Offers `listeners` on `path` (`--upgrade-socket`) until a new process takes them
/// over; then each loop of `handles` gets `hand_over(handoff)` and is stopped (it
/// drains, handing established connections over between their requests with the
/// [`Handoff`]), and `done` is set. The offering runs on a thread named `thread`.
///
/// # Errors
/// The socket could not be bound (the error names the path), or no thread started.
pub fn serve<M: Send + 'static>(
    path: &Path,
    thread: &str,
    listeners: Vec<(String, Vec<TcpListener>)>,
    handles: Vec<LoopHandle<M>>,
    hand_over: fn(Handoff) -> M,
    done: Arc<HandedOver>,
) -> io::Result<handover::Server> {
    let offer = Offer::bind(path).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("--upgrade-socket {}: {e}", path.display()),
        )
    })?;
    let offering = Offering {
        listeners,
        handles,
        hand_over,
        done,
    };
    handover::serve(offer, thread, READY_WITHIN, offering)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_their_units() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("7"), Ok(Duration::from_secs(7)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        for bad in ["", "s", "5h", "-1s", "1.5s", "5 s"] {
            assert!(parse_duration(bad).is_err(), "{bad:?}");
        }
    }
}
