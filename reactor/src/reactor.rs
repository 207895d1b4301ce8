//! Starting loops, and the group of running loops.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use mio::Poll;

use crate::config::{bind_listeners, Config};
use crate::context::Core;
use crate::event_loop::{EventLoop, Listener};
use crate::handle::LoopHandle;
use crate::handler::Handler;

/// Sets up a reactor: its [`Config`] and listeners, then [`Builder::start`].
#[derive(Debug)]
pub struct Builder<T> {
    config: Config,
    listens: Vec<Listen<T>>,
}

/// A listener to bind (or inherited): its sockets, tag and, for TLS, its acceptor.
#[derive(Debug)]
struct Listen<T> {
    source: Source,
    tag: T,
    #[cfg(feature = "tls")]
    tls: Option<crate::tls::TlsAcceptor>,
}

/// Where a listener's sockets come from.
#[derive(Debug)]
enum Source {
    /// Bound at start, one socket per loop.
    Bind(SocketAddr),
    /// Already listening: inherited from another process (see [`Builder::listen_inherited`]).
    Inherited(Vec<std::net::TcpListener>),
}

impl<T: Copy + std::fmt::Debug + Send + 'static> Builder<T> {
    /// A builder with the given settings.
    pub fn new(config: Config) -> Self {
        Builder {
            config,
            listens: Vec::new(),
        }
    }

    /// Listens on `addr` in every loop (SO_REUSEPORT); accepted connections get `tag`.
    pub fn listen(mut self, addr: SocketAddr, tag: T) -> Self {
        self.listens.push(Listen {
            source: Source::Bind(addr),
            tag,
            #[cfg(feature = "tls")]
            tls: None,
        });
        self
    }

    /// Listens on `addr` in every loop for TLS connections: each accepted connection
    /// does its handshake with the `acceptor`'s current configuration, on the loop, and
    /// is reported to [`Handler::opened`] once the handshake completed (the peer's
    /// certificate, if the configuration asks for one, is then verified and readable with
    /// [`Ctx::peer_identity`](crate::Ctx::peer_identity)). From then on the handler sees
    /// plaintext, exactly as on [`Builder::listen`]. A failed handshake is reported to
    /// [`Handler::closed`] only, as [`CloseReason::TlsHandshake`] or
    /// [`CloseReason::HandshakeTimeout`].
    ///
    /// [`CloseReason::TlsHandshake`]: crate::CloseReason::TlsHandshake
    /// [`CloseReason::HandshakeTimeout`]: crate::CloseReason::HandshakeTimeout
    #[cfg(feature = "tls")]
    pub fn listen_tls(
        mut self,
        addr: SocketAddr,
        tag: T,
        acceptor: crate::tls::TlsAcceptor,
    ) -> Self {
        self.listens.push(Listen {
            source: Source::Bind(addr),
            tag,
            tls: Some(acceptor),
        });
        self
    }

    /// Accepts on sockets that are already listening, typically received from the
    /// process this one replaces (see [`handover`](crate::handover)); accepted
    /// connections get `tag`. Nothing is bound, so a connection the kernel queued on
    /// these sockets before this process started is accepted here, and no connect is
    /// refused while the two processes overlap.
    ///
    /// The sockets are spread over the loops: socket `i` goes to loop `i % loops`, so a
    /// loop may accept on several (fewer loops than sockets), and a loop left without
    /// one shares a duplicate of socket `loop % sockets` (more loops than sockets). They
    /// are set non-blocking here. [`Reactor::local_addrs`] reports the first socket's
    /// address. An empty list is an error at [`Builder::start`].
    pub fn listen_inherited(mut self, sockets: Vec<std::net::TcpListener>, tag: T) -> Self {
        self.listens.push(Listen {
            source: Source::Inherited(sockets),
            tag,
            #[cfg(feature = "tls")]
            tls: None,
        });
        self
    }

    /// [`Builder::listen_inherited`] for TLS connections, handshaking as
    /// [`Builder::listen_tls`] does.
    #[cfg(feature = "tls")]
    pub fn listen_tls_inherited(
        mut self,
        sockets: Vec<std::net::TcpListener>,
        tag: T,
        acceptor: crate::tls::TlsAcceptor,
    ) -> Self {
        self.listens.push(Listen {
            source: Source::Inherited(sockets),
            tag,
            tls: Some(acceptor),
        });
        self
    }

    /// Binds the listeners and starts one thread per loop. `make` builds each loop's
    /// handler on that loop's own thread, from the loop index and its handle.
    ///
    /// # Errors
    /// Binding a listener (or setting up an inherited one: none given, or not a
    /// listening socket), creating a poller or spawning a thread failed; loops already
    /// started are then asked to stop.
    pub fn start<H, F>(self, make: F) -> io::Result<Reactor<H::Msg>>
    where
        H: Handler<Tag = T>,
        F: Fn(usize, LoopHandle<H::Msg>) -> H + Send + Sync + 'static,
    {
        let loops = self.config.loops.max(1);
        let mut local_addrs = Vec::new();
        // per_loop[i] = the listeners of loop i
        let mut per_loop: Vec<Vec<Listener<T>>> = (0..loops).map(|_| Vec::new()).collect();
        let mut kept = Vec::with_capacity(self.listens.len());
        for l in self.listens {
            // `real`: the sockets proper, not the duplicates filling loops beyond them.
            let (socks, real) = match l.source {
                Source::Bind(addr) => (bind_listeners(addr, loops, self.config.backlog)?, loops),
                Source::Inherited(socks) => {
                    let real = socks.len();
                    (inherited(socks, loops)?, real)
                }
            };
            let first = socks
                .first()
                .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no socket"))?;
            local_addrs.push(first.local_addr()?);
            // Duplicates kept for `Reactor::listeners` (one per socket, not per loop).
            let mut dups = Vec::with_capacity(real);
            for (i, s) in socks.into_iter().enumerate() {
                if i < real {
                    dups.push(s.try_clone()?);
                }
                per_loop[i % loops].push(Listener {
                    socket: mio::net::TcpListener::from_std(s),
                    tag: l.tag,
                    #[cfg(feature = "tls")]
                    tls: l.tls.clone(),
                });
            }
            kept.push(dups);
        }
        let make = Arc::new(make);
        let mut reactor = Reactor {
            handles: Vec::with_capacity(loops),
            threads: Vec::with_capacity(loops),
            local_addrs,
            listeners: Mutex::new(kept),
        };
        for (index, listeners) in per_loop.into_iter().enumerate() {
            if let Err(e) = reactor.spawn_loop(&self.config, index, listeners, make.clone()) {
                reactor.stop();
                return Err(e);
            }
        }
        Ok(reactor)
    }
}

/// Inherited listening sockets made ready for the loops: non-blocking, and at least one
/// per loop (duplicates of the given ones when there are fewer).
fn inherited(
    socks: Vec<std::net::TcpListener>,
    loops: usize,
) -> io::Result<Vec<std::net::TcpListener>> {
    if socks.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "an inherited listener needs at least one socket",
        ));
    }
    for s in &socks {
        s.set_nonblocking(true)?;
        // A socket that is not listening (or not TCP) has no local address to report,
        // or refuses this: better an error at start than a loop that never accepts.
        s.local_addr()?;
    }
    let mut out = socks;
    let given = out.len();
    for i in given..loops {
        let dup = out[i % given].try_clone()?;
        out.push(dup);
    }
    Ok(out)
}

/// Running loops: their handles, the bound addresses, and a way to stop and join them.
///
/// Dropping it neither stops nor joins the loops: they run on, detached, until a handle
/// stops them or their handlers exit.
#[derive(Debug)]
pub struct Reactor<M> {
    handles: Vec<LoopHandle<M>>,
    threads: Vec<JoinHandle<()>>,
    local_addrs: Vec<SocketAddr>,
    /// A duplicate of every listening socket, per listener, for [`Reactor::listeners`];
    /// emptied by [`Reactor::stop`].
    listeners: Mutex<Vec<Vec<std::net::TcpListener>>>,
}

impl<M: Send + 'static> Reactor<M> {
    /// Starts loop `index` on its own thread, with its listeners.
    fn spawn_loop<H, F>(
        &mut self,
        config: &Config,
        index: usize,
        listeners: Vec<Listener<H::Tag>>,
        make: Arc<F>,
    ) -> io::Result<()>
    where
        H: Handler<Msg = M>,
        H::Tag: Send,
        F: Fn(usize, LoopHandle<M>) -> H + Send + Sync + 'static,
    {
        let poll = Poll::new()?;
        let waker = Arc::new(mio::Waker::new(poll.registry(), crate::event_loop::WAKER)?);
        let (tx, rx) = crossbeam_channel::unbounded();
        let wake_pending = Arc::new(AtomicBool::new(false));
        let handle = LoopHandle::new(tx, waker, wake_pending.clone());
        let for_reactor = handle.clone();
        let registry = poll.registry().try_clone()?;
        let config = config.clone();
        let thread = std::thread::Builder::new()
            .name(format!("{}-{index}", config.thread_name))
            .spawn(move || {
                let core = Core::new(registry, config, index, handle.clone());
                let handler = make(index, handle);
                match EventLoop::new(handler, core, poll, listeners, rx, wake_pending) {
                    Ok(event_loop) => event_loop.run(),
                    Err(e) => log::error!("loop {index} failed to start: {e}"),
                }
            })?;
        self.handles.push(for_reactor);
        self.threads.push(thread);
        Ok(())
    }

    /// One handle per loop, in loop order.
    pub fn handles(&self) -> &[LoopHandle<M>] {
        &self.handles
    }

    /// The address each listener bound, in the order of [`Builder::listen`] (and
    /// `listen_tls`) calls
    /// (useful with port 0).
    pub fn local_addrs(&self) -> &[SocketAddr] {
        &self.local_addrs
    }

    /// Duplicates (`dup(2)`) of the listening sockets, per listener in the order of
    /// the `listen*` calls, each with its sockets (one per loop when bound here): what a
    /// process taking over from this one needs to accept on them
    /// ([`Builder::listen_inherited`]). The socket stays open while any process holds
    /// one; this reactor's loops go on accepting until [`Reactor::stop_accepting`].
    ///
    /// # Errors
    /// Out of file descriptors; after [`Reactor::stop`] the list is empty.
    pub fn listeners(&self) -> io::Result<Vec<Vec<std::net::TcpListener>>> {
        let held = match self.listeners.lock() {
            Ok(l) => l,
            Err(p) => p.into_inner(),
        };
        held.iter()
            .map(|socks| socks.iter().map(std::net::TcpListener::try_clone).collect())
            .collect()
    }

    /// Asks every loop to accept no more, without closing the listening sockets (this
    /// reactor keeps a duplicate until [`Reactor::stop`]): connections the kernel
    /// queues meanwhile wait for whoever else accepts on them, typically the process
    /// these sockets were handed to. Connections already accepted are not touched;
    /// the handler is not told. Stopping later ([`Reactor::stop`]) is still graceful.
    pub fn stop_accepting(&self) {
        for h in &self.handles {
            let _ = h.stop_accepting();
        }
    }

    /// Asks every loop to stop gracefully (see [`Handler::stopping`]); the listening
    /// sockets close, unless another process holds them too.
    pub fn stop(&self) {
        for h in &self.handles {
            let _ = h.stop();
        }
        match self.listeners.lock() {
            Ok(mut l) => l.clear(),
            Err(p) => p.into_inner().clear(),
        }
    }

    /// Waits for every loop thread to exit.
    pub fn join(self) {
        for t in self.threads {
            if t.join().is_err() {
                log::error!("an event loop thread panicked");
            }
        }
    }
}
