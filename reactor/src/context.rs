//! `Ctx`: what a callback may do to its loop.

use std::cell::Cell;
use std::io;
use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime};

use mio::{Interest, Registry};
use slab::Slab;

use crate::config::Config;
use crate::conn::{CloseReason, ConnId, ConnState, Phase, WriteSide};
use crate::handle::LoopHandle;
use crate::handler::Handler;
use crate::timer::{TimerId, TimerKind, Timers};

/// The loop's state that callbacks reach through [`Ctx`]: `T` is the handler's
/// connection tag, `M` its message type, `U` its timer payload.
#[derive(Debug)]
pub(crate) struct Core<T, M, U> {
    pub(crate) registry: Registry,
    pub(crate) conns: Slab<ConnState<T>>,
    pub(crate) timers: Timers<ConnId, U>,
    pub(crate) config: Config,
    pub(crate) now: Instant,
    /// The wall clock of this iteration, once a callback has asked for it, and the
    /// same as Unix nanoseconds.
    wall: Cell<Option<(SystemTime, u64)>>,
    pub(crate) loop_index: usize,
    pub(crate) handle: LoopHandle<M>,
    /// The last generation given out: one counter for all the loop's slots, so a slot's
    /// later connection always has the later generation (modulo wrapping), which
    /// `ConnMap` relies on.
    next_gen: u32,
    /// Connections with output to flush at the end of the iteration.
    pub(crate) dirty: Vec<ConnId>,
    /// Connections to close (and report) once the current callback returns.
    pub(crate) to_close: Vec<(ConnId, CloseReason)>,
    /// Connections with unread input left over by the read budget or a resumed pause.
    pub(crate) read_again: Vec<ConnId>,
    /// Connections taken on with `adopt`, to report opened before anything else.
    pub(crate) adopted: Vec<ConnId>,
    pub(crate) stopping: bool,
    pub(crate) exit: bool,
    /// Handshakes and TLS failures on this loop.
    #[cfg(feature = "tls")]
    pub(crate) tls_stats: crate::tls::TlsStats,
    /// Output buffers of TLS connections that wrote everything they had, for the next
    /// TLS connection given output: an idle TLS connection holds no output buffer, and a
    /// busy one does not allocate one per call.
    #[cfg(feature = "tls")]
    output_pool: Vec<Vec<u8>>,
}

/// Most output buffers a loop keeps for its TLS connections.
#[cfg(feature = "tls")]
const OUTPUT_POOL: usize = 32;
/// Largest output buffer a loop keeps for its TLS connections.
#[cfg(feature = "tls")]
const POOLED_CAPACITY: usize = 16 * 1024;

impl<T: Copy, M, U: Copy> Core<T, M, U> {
    pub(crate) fn new(
        registry: Registry,
        config: Config,
        loop_index: usize,
        handle: LoopHandle<M>,
    ) -> Self {
        Core {
            registry,
            conns: Slab::new(),
            timers: Timers::new(),
            config,
            now: Instant::now(),
            wall: Cell::new(None),
            loop_index,
            handle,
            next_gen: 0,
            dirty: Vec::new(),
            to_close: Vec::new(),
            read_again: Vec::new(),
            adopted: Vec::new(),
            stopping: false,
            exit: false,
            #[cfg(feature = "tls")]
            tls_stats: crate::tls::TlsStats::default(),
            #[cfg(feature = "tls")]
            output_pool: Vec::new(),
        }
    }

    /// Gives a TLS connection without an output buffer one from the pool, if any.
    #[cfg(feature = "tls")]
    fn lend_output(&mut self, id: ConnId) {
        let Some(c) = self
            .conns
            .get_mut(id.index as usize)
            .filter(|c| c.gen == id.gen)
        else {
            return;
        };
        if c.tls.is_some() && c.output.capacity() == 0 {
            if let Some(buf) = self.output_pool.pop() {
                c.output = buf;
            }
        }
    }

    /// Takes back a TLS connection's written-out output buffer, emptied.
    #[cfg(feature = "tls")]
    pub(crate) fn return_output(&mut self, mut buf: Vec<u8>) {
        if buf.capacity() > 0
            && buf.capacity() <= POOLED_CAPACITY
            && self.output_pool.len() < OUTPUT_POOL
        {
            buf.clear();
            self.output_pool.push(buf);
        }
    }

    /// A new iteration: the clocks are read again.
    pub(crate) fn set_now(&mut self) {
        self.now = Instant::now();
        self.wall.set(None);
    }

    pub(crate) fn get(&self, id: ConnId) -> Option<&ConnState<T>> {
        self.conns
            .get(id.index as usize)
            .filter(|c| c.gen == id.gen)
    }

    pub(crate) fn get_mut(&mut self, id: ConnId) -> Option<&mut ConnState<T>> {
        self.conns
            .get_mut(id.index as usize)
            .filter(|c| c.gen == id.gen)
    }

    /// Registers a new stream and gives it an id.
    pub(crate) fn insert(
        &mut self,
        mut stream: mio::net::TcpStream,
        tag: T,
        phase: Phase,
    ) -> io::Result<ConnId> {
        self.next_gen = self.next_gen.wrapping_add(1);
        let gen = self.next_gen;
        let entry = self.conns.vacant_entry();
        let id = ConnId {
            index: entry.key() as u32,
            gen,
        };
        // Edge-triggered, both directions, registered once for the connection's life:
        // no re-registration per write.
        self.registry.register(
            &mut stream,
            id.token(),
            Interest::READABLE | Interest::WRITABLE,
        )?;
        entry.insert(ConnState::new(stream, gen, tag, phase));
        Ok(id)
    }

    pub(crate) fn mark_dirty(&mut self, id: ConnId) {
        if let Some(c) = self.get_mut(id) {
            if !c.dirty {
                c.dirty = true;
                self.dirty.push(id);
            }
        }
    }

    /// Starts a graceful close: the buffered output is written, then our FIN; input is
    /// discarded until the peer's FIN or the linger limit, when the connection closes.
    pub(crate) fn begin_drain(&mut self, id: ConnId) {
        let deadline = self.now + self.config.close_linger;
        let Some(c) = self.get_mut(id) else {
            return;
        };
        c.phase = Phase::Draining;
        if c.write_side == WriteSide::Open {
            c.write_side = WriteSide::ShutPending;
        }
        let old = c.timer.take();
        let timer = self.timers.insert(deadline, TimerKind::Linger(id));
        if let Some(c) = self.get_mut(id) {
            c.timer = Some(timer);
        }
        if let Some(t) = old {
            self.timers.cancel(t);
        }
        self.mark_dirty(id);
    }

    /// Queues a close; the connection ignores everything from now on.
    pub(crate) fn schedule_close(&mut self, id: ConnId, reason: CloseReason) {
        if let Some(c) = self.get_mut(id) {
            if c.phase != Phase::Closing {
                let reason = if c.phase == Phase::Handshaking {
                    handshake_failure(reason)
                } else {
                    reason
                };
                c.phase = Phase::Closing;
                self.to_close.push((id, reason));
            }
        }
    }

    /// Starts the handshake deadline of a TLS connection that just connected or was
    /// accepted.
    #[cfg(feature = "tls")]
    pub(crate) fn start_handshake_timer(&mut self, id: ConnId) {
        let deadline = self.now + self.config.tls_handshake_timeout;
        let timer = self.timers.insert(deadline, TimerKind::Handshake(id));
        if let Some(c) = self.get_mut(id) {
            if let Some(old) = c.timer.replace(timer) {
                self.timers.cancel(old);
            }
        }
    }
}

/// How the end of a connection whose TLS handshake had not completed is reported: it
/// never opened, whatever ended it.
fn handshake_failure(reason: CloseReason) -> CloseReason {
    match reason {
        CloseReason::Io(kind) => {
            CloseReason::TlsHandshake(format!("{} during the handshake", io::Error::from(kind)))
        }
        CloseReason::PeerClosed => {
            CloseReason::TlsHandshake("the peer closed the connection during the handshake".into())
        }
        CloseReason::InputOverflow => {
            CloseReason::TlsHandshake("handshake message too large".into())
        }
        other => other,
    }
}

/// A callback's window onto its loop: write to, close or open connections, set timers.
///
/// Every method taking a [`ConnId`] is a no-op (returning `false` or `None`) when the
/// connection has closed, so ids may be kept without tracking closes precisely.
///
/// # Time
///
/// The loop keeps one clock reading per iteration, [`Ctx::now`]: a monotonic
/// [`Instant`] (it never jumps with wall-clock changes), read when the poll returns.
/// Timers ([`Ctx::set_timer`], [`Ctx::set_periodic`]) and connect timeouts count from
/// it and fire against it. Their precision is described at [`Ctx::set_timer`].
pub struct Ctx<'a, H: Handler> {
    pub(crate) core: &'a mut Core<H::Tag, H::Msg, H::Timer>,
}

impl<H: Handler> std::fmt::Debug for Ctx<'_, H> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ctx")
            .field("loop_index", &self.core.loop_index)
            .field("connections", &self.core.conns.len())
            .finish()
    }
}

impl<H: Handler> Ctx<'_, H> {
    /// The loop's clock: the [`Instant`] (monotonic) at which the current iteration's
    /// poll returned. It is read once per iteration, so it is free to call, and every
    /// callback of the iteration sees the same value; it lags real time by however long
    /// the iteration has run so far (microseconds, unless callbacks do heavy work). Call
    /// [`Instant::now`] for a fresh reading. Timers are set and fired against this clock.
    pub fn now(&self) -> Instant {
        self.core.now
    }

    /// The wall clock for this iteration: read on the first call in an iteration, and
    /// the same value for the rest of it, so that stamping every call of a batch (access
    /// logs, trace spans) costs one clock read per batch rather than one per call (a
    /// `clock_gettime` is tens of nanoseconds, more in some VMs). Like [`Ctx::now`] it
    /// may lag real time by how long the iteration has run; call [`SystemTime::now`]
    /// for a fresh reading.
    pub fn wall_now(&self) -> SystemTime {
        self.wall().0
    }

    /// [`Ctx::wall_now`] as nanoseconds since the Unix epoch (0 for a clock set before
    /// 1970), worked out once per iteration with it: what spans and log lines record.
    pub fn wall_unix_nanos(&self) -> u64 {
        self.wall().1
    }

    fn wall(&self) -> (SystemTime, u64) {
        match self.core.wall.get() {
            Some(w) => w,
            None => {
                let t = SystemTime::now();
                let nanos = t
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
                self.core.wall.set(Some((t, nanos)));
                (t, nanos)
            }
        }
    }

    /// Which loop this is (0-based).
    pub fn loop_index(&self) -> usize {
        self.core.loop_index
    }

    /// A handle other threads can use to message this loop.
    pub fn handle(&self) -> LoopHandle<H::Msg> {
        self.core.handle.clone()
    }

    /// Number of connections the loop holds.
    pub fn connection_count(&self) -> usize {
        self.core.conns.len()
    }

    /// The tag of a live connection.
    pub fn tag(&self, id: ConnId) -> Option<H::Tag> {
        self.core.get(id).map(|c| c.tag)
    }

    /// Whether the connection is open or still opening (connecting, or in its TLS
    /// handshake), not closed or closing.
    pub fn is_live(&self, id: ConnId) -> bool {
        self.core.get(id).is_some_and(|c| c.is_live())
    }

    /// Whether the connection is open: connected (outbound ones), its TLS handshake done
    /// (TLS ones), and neither closing nor draining after [`Ctx::close`].
    pub fn is_open(&self, id: ConnId) -> bool {
        self.core.get(id).is_some_and(|c| c.phase == Phase::Open)
    }

    /// The peer's address.
    pub fn peer_addr(&self, id: ConnId) -> Option<SocketAddr> {
        self.core.get(id).and_then(|c| c.stream.peer_addr().ok())
    }

    /// Appends bytes to a connection's output; they leave with the iteration's flush (or
    /// right after the current event, if it gave output to many connections).
    /// Writes to a connection still connecting wait until it opens. Returns false if the
    /// connection is gone or closing.
    pub fn write(&mut self, id: ConnId, bytes: &[u8]) -> bool {
        match self.output(id) {
            Some(out) => {
                out.extend_from_slice(bytes);
                true
            }
            None => false,
        }
    }

    /// The connection's output buffer, to encode into directly (no intermediate copy).
    /// Append only: bytes already in it may be partly written. `None` if the connection
    /// is gone, closing, or its sending side is shut down.
    pub fn output(&mut self, id: ConnId) -> Option<&mut Vec<u8>> {
        if !self.core.get(id).is_some_and(|c| c.accepts_writes()) {
            return None;
        }
        self.core.mark_dirty(id);
        #[cfg(feature = "tls")]
        self.core.lend_output(id);
        self.core.get_mut(id).map(|c| &mut c.output)
    }

    /// Bytes buffered for a connection and not yet written.
    pub fn unwritten(&self, id: ConnId) -> usize {
        self.core.get(id).map_or(0, |c| c.unwritten())
    }

    /// Whether the connection's output passed the high watermark and has not drained to
    /// the low one: stop feeding it and wait for [`Handler::drained`].
    pub fn is_congested(&self, id: ConnId) -> bool {
        let high = self.core.config.high_watermark;
        self.core
            .get(id)
            .is_some_and(|c| c.congested || c.unwritten() > high)
    }

    /// Stops reading a connection (its data waits in the kernel; TCP pushes back).
    /// Unconsumed input and a peer's end of input wait too: nothing reaches
    /// [`Handler::data`] or [`Handler::end_of_input`] until [`Ctx::resume_reading`].
    pub fn pause_reading(&mut self, id: ConnId) {
        if let Some(c) = self.core.get_mut(id) {
            c.read_paused = true;
        }
    }

    /// Whether reading the connection is paused: [`Ctx::pause_reading`] was called and
    /// [`Ctx::resume_reading`] not since. `false` for a closed connection (a stale id).
    pub fn is_reading_paused(&self, id: ConnId) -> bool {
        self.core.get(id).is_some_and(|c| c.read_paused)
    }

    /// Resumes reading a paused connection, including data that arrived meanwhile and
    /// input the handler left unconsumed (offered again after the current callback, even
    /// when this is called from the connection's own [`Handler::data`]).
    pub fn resume_reading(&mut self, id: ConnId) {
        if let Some(c) = self.core.get_mut(id) {
            if c.read_paused {
                c.read_paused = false;
                // Always re-offered: inside this connection's own `data` callback its
                // leftover input is not in `c.input` yet. An empty entry costs nothing.
                self.core.read_again.push(id);
            }
        }
    }

    /// Closes a connection gracefully: its buffered output is written, then our FIN, and
    /// input is discarded until the peer's FIN, at most [`Config::close_linger`]; then
    /// [`Handler::closed`] reports [`CloseReason::Local`]. Nothing more reaches
    /// [`Handler::data`]. Lingering matters: closing a socket with unread input makes
    /// the kernel send a reset, which can destroy our last reply (a 400, say) before the
    /// peer reads it. A connection still connecting (or in its TLS handshake) closes at
    /// once, or, with writes buffered, drains the same way once open (it is not reported
    /// opened). On a TLS connection our close_notify goes out after the buffered output,
    /// before the FIN.
    pub fn close(&mut self, id: ConnId) {
        if let Some(c) = self.core.get_mut(id) {
            match c.phase {
                Phase::Open => {
                    c.local_close = true;
                    self.core.begin_drain(id);
                }
                Phase::Connecting | Phase::Handshaking if c.unwritten() > 0 => {
                    c.local_close = true;
                    c.close_on_open = true;
                }
                Phase::Connecting | Phase::Handshaking => {
                    self.core.schedule_close(id, CloseReason::Local)
                }
                Phase::Draining | Phase::Closing => {}
            }
        }
    }

    /// Shuts down our sending side (TCP half-close): the FIN goes out after the buffered
    /// output, later writes are refused, and the connection keeps reading until the peer
    /// finishes too, then closes. A connection still connecting shuts down once open.
    /// On a TLS connection a close_notify goes out before the FIN (TLS 1.3 peers may keep
    /// sending after it; TLS 1.2 peers usually answer with theirs and close).
    pub fn shutdown_write(&mut self, id: ConnId) {
        if let Some(c) = self.core.get_mut(id) {
            if c.is_live() && c.write_side == WriteSide::Open {
                c.write_side = WriteSide::ShutPending;
                self.core.mark_dirty(id);
            }
        }
    }

    /// Closes a connection now, discarding buffered output (the kernel resets it if input
    /// is unread).
    pub fn abort(&mut self, id: ConnId) {
        self.core.schedule_close(id, CloseReason::Local);
    }

    /// Takes an open connection out of the loop, to carry on elsewhere: in another
    /// process after a binary upgrade ([`handover::Handoff`](crate::handover::Handoff)),
    /// or another loop. Its buffered output is written first (one attempt); the socket
    /// leaves the poller, and the id goes stale at once. [`Handler::closed`] is not
    /// called: the handler forgets the connection itself. Call it between the
    /// connection's requests, and not from its own [`Handler::data`] (the input left
    /// unconsumed by that call is not in [`Detached::input`] yet): from a timer, say.
    ///
    /// [`Detached::input`]: crate::Detached::input
    ///
    /// # Errors
    /// - `NotFound`: no such connection (closed, or a stale id);
    /// - `WouldBlock`: output is still unwritten (the peer is not reading): try later;
    /// - `Unsupported`: it is not open both ways (connecting, closing, half-closed), or it
    ///   is TLS (its session state cannot move);
    /// - the write's own error.
    pub fn detach(&mut self, id: ConnId) -> io::Result<crate::Detached> {
        use std::io::Write;
        let Some(c) = self.core.get_mut(id) else {
            return Err(io::ErrorKind::NotFound.into());
        };
        if c.phase != Phase::Open || c.peer_closed || c.write_side != WriteSide::Open {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "the connection is not open both ways",
            ));
        }
        #[cfg(feature = "tls")]
        if c.tls.is_some() {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "a TLS connection's session cannot move",
            ));
        }
        while c.unwritten() > 0 {
            match c.stream.write(&c.output[c.out_pos..]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => c.out_pos += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        let mut c = self.core.conns.remove(id.index as usize);
        let _ = self.core.registry.deregister(&mut c.stream);
        if let Some(t) = c.timer.take() {
            self.core.timers.cancel(t);
        }
        Ok(crate::Detached {
            stream: c.stream.into(),
            input: std::mem::take(&mut c.input),
        })
    }

    /// Takes on a connection detached elsewhere ([`Ctx::detach`], or received from the
    /// process this one replaced), tagged `tag`: [`Handler::opened`] reports it after
    /// the current callback, then `input` reaches [`Handler::data`] before anything
    /// read from the socket. Socket options are left as they are. Adopted connections
    /// do not count against [`Config::max_connections`](crate::Config::max_connections):
    /// refusing one would cut a live connection.
    ///
    /// # Errors
    /// The socket could not be made non-blocking or registered with the poller (then it
    /// is closed).
    pub fn adopt(
        &mut self,
        stream: std::net::TcpStream,
        tag: H::Tag,
        input: Vec<u8>,
    ) -> io::Result<ConnId> {
        stream.set_nonblocking(true)?;
        let id = self
            .core
            .insert(mio::net::TcpStream::from_std(stream), tag, Phase::Open)?;
        if let Some(c) = self.core.get_mut(id) {
            c.input = input;
            c.read_pending = true;
        }
        self.core.adopted.push(id);
        Ok(id)
    }

    /// Opens an outbound connection tagged `tag`, with the loop's
    /// [`SocketOptions`](crate::SocketOptions). The connect goes on in the background;
    /// its result arrives later:
    ///
    /// - [`Handler::opened`] once connected; or
    /// - [`Handler::closed`] with [`CloseReason::ConnectFailed`] carrying the socket
    ///   error's kind (`ConnectionRefused` when nothing listens, even on loopback;
    ///   `ConnectionReset`, host unreachable, ...), or with
    ///   [`CloseReason::ConnectTimeout`] if it did not complete within `timeout`
    ///   (measured from [`Ctx::now`]; with `None` the kernel's SYN retries decide, about
    ///   two minutes on Linux). [`CloseReason::is_connect_failure`] tells these apart;
    ///   [`Handler::opened`] is never called for such a connection.
    ///
    /// The id is usable at once: writes wait for the open; [`Ctx::abort`] ends the
    /// attempt (reported as [`CloseReason::Local`]), and so does [`Ctx::close`] unless
    /// writes are buffered, which then go out once it opens. A loop that exits first
    /// reports [`CloseReason::Shutdown`]. Outbound connections do not count against
    /// [`Config::max_connections`], which limits accepting.
    ///
    /// # Errors
    ///
    /// Only failures the OS reports before the attempt is under way; no callback follows
    /// them (no connection was created):
    ///
    /// - creating the socket failed: out of file descriptors (`EMFILE`, `ENFILE`), out of
    ///   memory or buffers (`ENOMEM`, `ENOBUFS`), the address family unsupported
    ///   (`EAFNOSUPPORT`, e.g. IPv6 disabled);
    /// - the kernel turned the connect down at once: no route to the address's network
    ///   (`ENETUNREACH`), no local address or ephemeral port left (`EADDRNOTAVAIL`, kind
    ///   `AddrNotAvailable`), not permitted (`EACCES`, `EPERM`: a broadcast address, a
    ///   firewall rule);
    /// - registering the socket with the poller failed (`ENOMEM`, or `ENOSPC` past
    ///   epoll's `max_user_watches`).
    ///
    /// A refusal arrives as `closed` with `ConnectFailed(ConnectionRefused)` on Linux,
    /// but other kernels may report some failures at once: a caller that reconnects
    /// should treat an `Err` here like a connect failure reported to `closed` (e.g.
    /// retry after a [`Backoff`](crate::Backoff) delay, as `examples/pool.rs` does).
    pub fn connect(
        &mut self,
        addr: SocketAddr,
        tag: H::Tag,
        timeout: Option<Duration>,
    ) -> io::Result<ConnId> {
        let stream = mio::net::TcpStream::connect(addr)?;
        if let Err(e) = self.core.config.socket.apply(&stream) {
            log::debug!("socket options on connect to {addr}: {e}");
        }
        let id = self.core.insert(stream, tag, Phase::Connecting)?;
        if let Some(t) = timeout {
            let timer = self
                .core
                .timers
                .insert(self.core.now + t, TimerKind::ConnectTimeout(id));
            if let Some(c) = self.core.get_mut(id) {
                c.timer = Some(timer);
            }
        }
        Ok(id)
    }

    /// A one-shot timer: [`Handler::timer`] gets `timer` (the handler's own
    /// [`Handler::Timer`] value, e.g. an enum naming what timed out) once `after` has
    /// passed. The returned [`TimerId`] cancels it ([`Ctx::cancel_timer`]).
    ///
    /// # Time base and precision
    ///
    /// The deadline is [`Ctx::now`] + `after`: counted from the start of the current
    /// iteration (when its poll returned), not from this call, on the monotonic clock.
    /// A timer fires in the first iteration whose `now` has reached its deadline, after
    /// that iteration's I/O callbacks and before [`Handler::tick`]; timers due together
    /// fire in deadline order, and those with equal deadlines in the order they were
    /// set. A timer set while timers fire, even with a zero delay, waits for the next
    /// iteration, so I/O gets its turn in between.
    ///
    /// A timer never fires before its deadline by the loop's clock. When idle, the loop
    /// sleeps until the next deadline: on Linux, on epoll's millisecond timeout until
    /// less than 2 ms remain and then on a timerfd, so it wakes within tens of
    /// microseconds of the deadline (measured p50 31-45 µs, p90 63-78 µs late); on other
    /// systems (kqueue through mio) the wait is rounded up to whole milliseconds, so a
    /// timer fires up to about 1 ms late. On top of that come the OS scheduler's wake-up
    /// delay and, on a busy loop, the rest of the iteration's callbacks.
    pub fn set_timer(&mut self, after: Duration, timer: H::Timer) -> TimerId {
        let deadline = self.core.now + after;
        self.core.timers.insert(
            deadline,
            TimerKind::User {
                timer,
                period: None,
            },
        )
    }

    /// A periodic timer: [`Handler::timer`] gets `timer` every `every` until cancelled.
    ///
    /// The first beat is due at [`Ctx::now`] + `every`, each next one `every` after the
    /// previous beat's deadline (not after it actually fired), so lateness does not
    /// accumulate. A loop stalled past a beat fires it once and skips the missed ones:
    /// no catch-up burst. Periods below 1 ms are raised to 1 ms. The precision is that
    /// of [`Ctx::set_timer`].
    pub fn set_periodic(&mut self, every: Duration, timer: H::Timer) -> TimerId {
        let every = every.max(Duration::from_millis(1));
        let deadline = self.core.now + every;
        self.core.timers.insert(
            deadline,
            TimerKind::User {
                timer,
                period: Some(every),
            },
        )
    }

    /// Cancels a timer; returns whether it was still pending.
    pub fn cancel_timer(&mut self, timer: TimerId) -> bool {
        self.core.timers.cancel(timer)
    }

    /// Whether a graceful stop is under way.
    pub fn is_stopping(&self) -> bool {
        self.core.stopping
    }

    /// Ends the loop after this iteration. It goes on writing buffered output for at
    /// most [`Config::close_linger`], then closes every remaining connection, each
    /// reported to [`Handler::closed`] as [`CloseReason::Shutdown`]; unread input is
    /// lost.
    pub fn exit(&mut self) {
        self.core.exit = true;
    }
}
