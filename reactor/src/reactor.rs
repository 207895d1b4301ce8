//! Starting loops, and the group of running loops.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
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

/// A listener to bind: its address, tag and, for TLS, its acceptor.
#[derive(Debug)]
struct Listen<T> {
    addr: SocketAddr,
    tag: T,
    #[cfg(feature = "tls")]
    tls: Option<crate::tls::TlsAcceptor>,
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
            addr,
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
            addr,
            tag,
            tls: Some(acceptor),
        });
        self
    }

    /// Binds the listeners and starts one thread per loop. `make` builds each loop's
    /// handler on that loop's own thread, from the loop index and its handle.
    ///
    /// # Errors
    /// Binding a listener, creating a poller or spawning a thread failed; loops already
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
        for l in &self.listens {
            let socks = bind_listeners(l.addr, loops, self.config.backlog)?;
            local_addrs.push(socks[0].local_addr()?);
            for (i, s) in socks.into_iter().enumerate() {
                per_loop[i].push(Listener {
                    socket: mio::net::TcpListener::from_std(s),
                    tag: l.tag,
                    #[cfg(feature = "tls")]
                    tls: l.tls.clone(),
                });
            }
        }
        let make = Arc::new(make);
        let mut reactor = Reactor {
            handles: Vec::with_capacity(loops),
            threads: Vec::with_capacity(loops),
            local_addrs,
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

/// Running loops: their handles, the bound addresses, and a way to stop and join them.
///
/// Dropping it neither stops nor joins the loops: they run on, detached, until a handle
/// stops them or their handlers exit.
#[derive(Debug)]
pub struct Reactor<M> {
    handles: Vec<LoopHandle<M>>,
    threads: Vec<JoinHandle<()>>,
    local_addrs: Vec<SocketAddr>,
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

    /// Asks every loop to stop gracefully (see [`Handler::stopping`]).
    pub fn stop(&self) {
        for h in &self.handles {
            let _ = h.stop();
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
