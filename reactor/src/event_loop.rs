//! One loop: poll, accept, read into the shared buffer, dispatch, fire timers, flush.

use std::io::{self, Read, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;
use mio::net::TcpListener;
use mio::{Events, Interest, Poll, Token};

use crate::conn::{CloseReason, Conn, ConnId, ConnState, Phase, WriteSide};
use crate::context::{Core, Ctx};
use crate::handle::Control;
use crate::handler::{EndOfInput, Handler};
use crate::throttle::Throttle;
use crate::timer::TimerKind;

#[cfg(feature = "tls")]
mod tls;

pub(crate) const WAKER: Token = Token(usize::MAX);
/// Listener tokens count down from here; connection tokens always have a generation
/// in their high half, below this range on 64-bit targets.
const LISTENER_BASE: usize = usize::MAX - 2;
/// The timerfd that wakes the loop for a timer with sub-millisecond precision (Linux).
#[cfg(target_os = "linux")]
const TIMERFD: Token = Token(usize::MAX - 1);
/// Below this much time to the next timer, the loop waits on the timerfd, not on
/// epoll's millisecond timeout.
#[cfg(target_os = "linux")]
const PRECISE_BELOW: Duration = Duration::from_millis(2);
/// Pause before accepting again after running out of file descriptors.
const ACCEPT_RETRY: Duration = Duration::from_millis(50);
/// Output capacity kept for reuse once a connection's output is all written.
const KEEP_OUTPUT_CAPACITY: usize = 16 * 1024;
/// An event whose handling gave output to at least this many connections (one
/// upstream read answering many callers) has them written at once, not at the end of
/// the round: each would get its own write anyway, so this costs no syscall, and their
/// answers stop waiting for the rest of the round's events. Output gathered from many
/// events into few connections (many callers to one upstream) still waits, and is
/// written once per round.
const FAN_OUT_FLUSH: usize = 8;

pub(crate) struct Listener<T> {
    pub(crate) socket: TcpListener,
    pub(crate) tag: T,
    /// A TLS listener's acceptor.
    #[cfg(feature = "tls")]
    pub(crate) tls: Option<crate::tls::TlsAcceptor>,
}

pub(crate) struct EventLoop<H: Handler> {
    handler: H,
    core: Core<H::Tag, H::Msg, H::Timer>,
    poll: Poll,
    listeners: Vec<Option<Listener<H::Tag>>>,
    rx: Receiver<Control<H::Msg>>,
    wake_pending: Arc<AtomicBool>,
    /// The one input buffer every read of this loop goes into.
    inbuf: Vec<u8>,
    /// An empty list kept for swapping with the dirty and read-again lists, so that
    /// walking them allocates nothing.
    spare: Vec<ConnId>,
    /// An empty list kept for the connections one event gave output to.
    fan_out: Vec<ConnId>,
    accept_paused: bool,
    /// Warnings a connection flood repeats, logged at most once a second.
    refused_log: Throttle,
    accept_failed_log: Throttle,
    #[cfg(target_os = "linux")]
    timerfd: Option<crate::precise::TimerFd>,
    /// Ciphertext read from a TLS socket (behind the connection's leftover partial
    /// record); allocated with the loop's first TLS connection.
    #[cfg(feature = "tls")]
    tls_in: Vec<u8>,
    /// Ciphertext encrypted for a TLS socket at flush time, written from here; only what
    /// the socket does not take is copied to the connection.
    #[cfg(feature = "tls")]
    tls_out: Vec<u8>,
    #[cfg(feature = "tls")]
    tls_failed_log: Throttle,
}

impl<H: Handler> EventLoop<H> {
    pub(crate) fn new(
        handler: H,
        core: Core<H::Tag, H::Msg, H::Timer>,
        poll: Poll,
        listeners: Vec<Listener<H::Tag>>,
        rx: Receiver<Control<H::Msg>>,
        wake_pending: Arc<AtomicBool>,
    ) -> io::Result<Self> {
        let mut listeners: Vec<_> = listeners.into_iter().map(Some).collect();
        for (i, l) in listeners.iter_mut().enumerate() {
            if let Some(l) = l {
                poll.registry().register(
                    &mut l.socket,
                    Token(LISTENER_BASE - i),
                    Interest::READABLE,
                )?;
            }
        }
        let inbuf = vec![0; core.config.input_buffer.max(1024)];
        #[cfg(target_os = "linux")]
        let timerfd = match crate::precise::TimerFd::new() {
            Ok(t) => {
                let fd = t.raw_fd();
                poll.registry().register(
                    &mut mio::unix::SourceFd(&fd),
                    TIMERFD,
                    Interest::READABLE,
                )?;
                Some(t)
            }
            Err(e) => {
                log::warn!("no timerfd ({e}): timers wake the loop to the millisecond");
                None
            }
        };
        Ok(EventLoop {
            handler,
            core,
            poll,
            listeners,
            rx,
            wake_pending,
            inbuf,
            spare: Vec::new(),
            fan_out: Vec::new(),
            accept_paused: false,
            refused_log: Throttle::default(),
            accept_failed_log: Throttle::default(),
            #[cfg(target_os = "linux")]
            timerfd,
            #[cfg(feature = "tls")]
            tls_in: Vec::new(),
            #[cfg(feature = "tls")]
            tls_out: Vec::new(),
            #[cfg(feature = "tls")]
            tls_failed_log: Throttle::default(),
        })
    }

    fn cx(&mut self) -> (&mut H, Ctx<'_, H>) {
        (
            &mut self.handler,
            Ctx {
                core: &mut self.core,
            },
        )
    }

    pub(crate) fn run(mut self) {
        let mut events = Events::with_capacity(1024);
        {
            let (h, mut cx) = self.cx();
            h.started(&mut cx);
        }
        while !self.core.exit {
            // Adopted by a timer or `tick`: opened before any event of theirs.
            self.open_adopted();
            let timeout = self.poll_timeout();
            if let Err(e) = self.poll.poll(&mut events, timeout) {
                if e.kind() != io::ErrorKind::Interrupted {
                    log::error!("loop {}: poll failed: {e}", self.core.loop_index);
                    break;
                }
            }
            self.core.set_now();
            for event in events.iter() {
                match event.token() {
                    WAKER => self.drain_control(),
                    #[cfg(target_os = "linux")]
                    TIMERFD => {
                        if let Some(t) = self.timerfd.as_mut() {
                            t.fired();
                        }
                    }
                    Token(t) if t > LISTENER_BASE - self.listeners.len() && t <= LISTENER_BASE => {
                        self.accept(LISTENER_BASE - t)
                    }
                    token => {
                        let dirty_before = self.core.dirty.len();
                        self.on_conn_event(ConnId::from_token(token), event);
                        self.flush_fan_out(dirty_before);
                    }
                }
                self.process_closes();
            }
            self.read_again();
            self.fire_timers();
            let (h, mut cx) = self.cx();
            h.tick(&mut cx);
            self.process_closes();
            self.flush_all();
        }
        self.shutdown();
    }

    fn poll_timeout(&mut self) -> Option<Duration> {
        if !self.core.read_again.is_empty()
            || !self.core.adopted.is_empty()
            || !self.core.dirty.is_empty()
            || !self.core.to_close.is_empty()
        {
            return Some(Duration::ZERO);
        }
        let deadline = self.core.timers.next_deadline()?;
        let wait = deadline.saturating_duration_since(Instant::now());
        if wait.is_zero() {
            return Some(Duration::ZERO);
        }
        #[cfg(target_os = "linux")]
        if let Some(t) = self.timerfd.as_mut() {
            if wait >= PRECISE_BELOW {
                // Sleep on epoll's clock to within a millisecond or two of the timer;
                // the timerfd takes over from there.
                return Some(Duration::from_millis(wait.as_millis() as u64 - 1));
            }
            match t.arm(deadline, wait) {
                Ok(()) => return None,
                Err(e) => log::warn!("timerfd: {e}"),
            }
        }
        // Round up to the next millisecond so a timer never wakes the loop early.
        let ms = wait.as_micros().div_ceil(1000);
        Some(Duration::from_millis(ms as u64))
    }

    fn drain_control(&mut self) {
        // A swap, not a store: reading the sender's `true` (acquire) makes the message it
        // sent before visible to the `try_recv` below, whatever the channel's own fences.
        self.wake_pending.swap(false, Ordering::AcqRel);
        while let Ok(c) = self.rx.try_recv() {
            match c {
                Control::Msg(m) => {
                    let (h, mut cx) = self.cx();
                    h.message(&mut cx, m);
                }
                Control::StopAccepting => self.stop_accepting(),
                Control::Stop => self.begin_stop(),
            }
            self.process_closes();
        }
    }

    fn begin_stop(&mut self) {
        if self.core.stopping {
            return;
        }
        self.core.stopping = true;
        self.stop_accepting();
        let (h, mut cx) = self.cx();
        h.stopping(&mut cx);
    }

    /// Deregisters and drops this loop's listening sockets (the `Reactor` keeps a
    /// duplicate until it stops, so the socket itself stays open).
    fn stop_accepting(&mut self) {
        for l in self.listeners.iter_mut() {
            if let Some(mut l) = l.take() {
                let _ = self.poll.registry().deregister(&mut l.socket);
            }
        }
    }

    fn accept(&mut self, i: usize) {
        if self.accept_paused {
            return;
        }
        loop {
            let Some(Some(listener)) = self.listeners.get(i) else {
                return;
            };
            let tag = listener.tag;
            match listener.socket.accept() {
                Ok((stream, _)) => {
                    if self.core.conns.len() >= self.core.config.max_connections {
                        if let Some(more) = self.refused_log.hit(self.core.now) {
                            log::warn!(
                                "loop {}: connection limit reached, refusing \
                                 ({more} more refused since the last warning)",
                                self.core.loop_index
                            );
                        }
                        drop(stream);
                        continue;
                    }
                    if let Err(e) = self.core.config.socket.apply(&stream) {
                        log::debug!("socket options on accept: {e}");
                    }
                    #[cfg(feature = "tls")]
                    if let Some(acceptor) =
                        self.listeners.get(i).and_then(|l| l.as_ref()?.tls.clone())
                    {
                        self.accept_tls(stream, tag, &acceptor);
                        continue;
                    }
                    match self.core.insert(stream, tag, Phase::Open) {
                        Ok(id) => {
                            let (h, mut cx) = self.cx();
                            h.opened(&mut cx, Conn { id, tag });
                            self.process_closes();
                        }
                        Err(e) => log::warn!("register accepted connection: {e}"),
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::Interrupted | io::ErrorKind::ConnectionAborted
                    ) => {}
                Err(e) => {
                    // Out of file descriptors (or similar): the pending connection stays
                    // in the backlog and edge-triggered readiness will not fire again, so
                    // retry on a timer rather than spin.
                    if let Some(more) = self.accept_failed_log.hit(self.core.now) {
                        log::warn!(
                            "loop {}: accept failed: {e}; retrying every 50 ms \
                             ({more} more failures since the last warning)",
                            self.core.loop_index
                        );
                    }
                    self.accept_paused = true;
                    let at = self.core.now + ACCEPT_RETRY;
                    self.core.timers.insert(at, TimerKind::AcceptRetry);
                    return;
                }
            }
        }
    }

    fn on_conn_event(&mut self, id: ConnId, event: &mio::event::Event) {
        let Some(c) = self.core.get(id) else {
            return;
        };
        let connecting = c.phase == Phase::Connecting;
        let writable = event.is_writable() || event.is_error();
        let to_end = event.is_read_closed() || event.is_error();
        // A connect completes before its first read. Otherwise reading comes first: the
        // bytes a peer sent before resetting are delivered before a failed write closes
        // the connection.
        if connecting && writable {
            self.on_writable(id);
        }
        if event.is_readable() || to_end {
            self.read(id, to_end);
        }
        if !connecting && writable {
            self.on_writable(id);
        }
        if event.is_error() {
            self.on_error(id);
        }
    }

    /// A socket error that neither a read nor a write ran into (say, a reset on a
    /// connection the peer half-closed, with no output queued): close on it.
    fn on_error(&mut self, id: ConnId) {
        let Some(c) = self.core.get_mut(id) else {
            return;
        };
        if matches!(c.phase, Phase::Handshaking | Phase::Open | Phase::Draining) {
            if let Ok(Some(e)) = c.stream.take_error() {
                self.core.schedule_close(id, CloseReason::Io(e.kind()));
            }
        }
    }

    fn on_writable(&mut self, id: ConnId) {
        let Some(c) = self.core.get_mut(id) else {
            return;
        };
        match c.phase {
            Phase::Connecting => self.finish_connect(id),
            Phase::Handshaking | Phase::Open | Phase::Draining => self.flush(id),
            Phase::Closing => {}
        }
    }

    fn finish_connect(&mut self, id: ConnId) {
        let Some(c) = self.core.get_mut(id) else {
            return;
        };
        let result = match c.stream.take_error() {
            Ok(Some(e)) | Err(e) => Err(e),
            Ok(None) => match c.stream.peer_addr() {
                Ok(_) => Ok(()),
                Err(e) if e.kind() == io::ErrorKind::NotConnected => return, // not yet: spurious wakeup
                Err(e) => Err(e),
            },
        };
        match result {
            #[cfg(feature = "tls")]
            Ok(()) if c.tls.is_some() => self.start_client_handshake(id),
            Ok(()) => {
                c.phase = Phase::Open;
                let tag = c.tag;
                let close_on_open = c.close_on_open;
                if let Some(t) = c.timer.take() {
                    self.core.timers.cancel(t);
                }
                if close_on_open {
                    self.core.begin_drain(id);
                    return;
                }
                let (h, mut cx) = self.cx();
                h.opened(&mut cx, Conn { id, tag });
                self.core.mark_dirty(id);
            }
            Err(e) => self
                .core
                .schedule_close(id, CloseReason::ConnectFailed(e.kind())),
        }
    }

    /// Reads a connection until the socket is empty (or its budget is spent). `to_end`
    /// asks for reading on to `WouldBlock` or end-of-stream; without it, a read shorter
    /// than the buffer is taken to have emptied the socket, sparing the syscall that
    /// would only say `WouldBlock`: new data raises a new edge anyway. A peer's FIN
    /// arriving with the data is flagged on the same event (read-closed), which sets
    /// `to_end`, so an end-of-stream is never missed.
    fn read(&mut self, id: ConnId, to_end: bool) {
        let budget = self.core.config.read_budget.max(1);
        for _ in 0..budget {
            let Some(c) = self.core.get_mut(id) else {
                return;
            };
            // TLS reads decrypt; a closing TLS connection's input is discarded as below.
            #[cfg(feature = "tls")]
            if c.tls.is_some() && c.phase != Phase::Draining {
                return self.tls_read(id, to_end);
            }
            match c.phase {
                Phase::Open => {}
                Phase::Connecting | Phase::Handshaking => return,
                Phase::Draining => {
                    // Closing: discard what the peer still sends, until its FIN.
                    if c.peer_closed {
                        return;
                    }
                    match c.stream.read(&mut self.inbuf) {
                        Ok(0) => {
                            c.peer_closed = true;
                            c.read_pending = false;
                            // Our FIN is out too: done. Otherwise the flush finishes it.
                            if c.write_side == WriteSide::Shut {
                                let reason = c.drain_reason();
                                self.core.schedule_close(id, reason);
                            }
                        }
                        Ok(_) => continue,
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => c.read_pending = false,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                        Err(e) => self.core.schedule_close(id, CloseReason::Io(e.kind())),
                    }
                    return;
                }
                Phase::Closing => return,
            }
            if c.peer_closed {
                return; // half-closed by the peer and kept open for writing
            }
            if c.read_paused {
                c.read_pending = true;
                return;
            }
            match c.stream.read(&mut self.inbuf) {
                Ok(0) => {
                    self.end_of_input(id);
                    return;
                }
                Ok(n) => {
                    let emptied = n < self.inbuf.len() && !to_end;
                    self.deliver(id, n);
                    if emptied {
                        if let Some(c) = self.core.get_mut(id) {
                            c.read_pending = false;
                        }
                        return;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    c.read_pending = false;
                    return;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    self.core.schedule_close(id, CloseReason::Io(e.kind()));
                    return;
                }
            }
        }
        // Budget spent with data possibly left: come back after the others had a turn.
        if let Some(c) = self.core.get_mut(id) {
            c.read_pending = true;
            self.core.read_again.push(id);
        }
    }

    /// The peer finished sending: asks the handler whether to keep writing.
    fn end_of_input(&mut self, id: ConnId) {
        let Some(c) = self.core.get_mut(id) else {
            return;
        };
        c.peer_closed = true;
        c.read_pending = false;
        let conn = Conn { id, tag: c.tag };
        let answer = {
            let (h, mut cx) = self.cx();
            h.end_of_input(&mut cx, conn)
        };
        // The handler may have closed it meanwhile; then that close stands.
        let Some(c) = self.core.get_mut(id) else {
            return;
        };
        if c.phase != Phase::Open {
            return;
        }
        match answer {
            EndOfInput::KeepOpen if c.write_side != WriteSide::Shut => {}
            // At once, unwritten output dropped, yet reported as the peer's doing.
            EndOfInput::Abort => self.core.schedule_close(id, CloseReason::PeerClosed),
            // What was written to the peer (often the reply to its last bytes) still
            // goes out first.
            _ if c.unwritten() > 0
                || c.write_side == WriteSide::ShutPending
                || c.owes_close_notify() =>
            {
                self.core.begin_drain(id)
            }
            _ => self.core.schedule_close(id, CloseReason::PeerClosed),
        }
    }

    /// Hands `n` fresh bytes of the shared buffer to the handler.
    fn deliver(&mut self, id: ConnId, n: usize) {
        let Some(c) = self.core.get_mut(id) else {
            return;
        };
        let tag = c.tag;
        let conn = Conn { id, tag };
        if c.input.is_empty() {
            // The common case: the handler reads straight from the loop's buffer.
            let consumed = {
                let (h, inbuf, core) = (&mut self.handler, &self.inbuf, &mut self.core);
                h.data(&mut Ctx { core }, conn, &inbuf[..n]).min(n)
            };
            if consumed < n {
                keep_input(&mut self.core, id, &self.inbuf[consumed..n]);
            }
        } else {
            c.input.extend_from_slice(&self.inbuf[..n]);
            let input = std::mem::take(&mut c.input);
            let consumed = {
                let (h, mut cx) = self.cx();
                h.data(&mut cx, conn, &input).min(input.len())
            };
            put_back_input(&mut self.core, id, input, consumed);
        }
    }

    /// Reports connections taken on with `adopt` opened, and has their input (handed
    /// with them, then the socket's) read next.
    fn open_adopted(&mut self) {
        while let Some(id) = self.core.adopted.pop() {
            let Some(c) = self.core.get(id) else {
                continue;
            };
            let conn = Conn { id, tag: c.tag };
            {
                let (h, mut cx) = self.cx();
                h.opened(&mut cx, conn);
            }
            self.core.read_again.push(id);
            self.process_closes();
        }
    }

    /// Re-offers buffered input (after a resumed pause) and reads sockets whose budget ran out.
    fn read_again(&mut self) {
        self.open_adopted();
        if self.core.read_again.is_empty() {
            return;
        }
        // Swap in the spare list (empty, with capacity) so neither list is reallocated.
        let mut again =
            std::mem::replace(&mut self.core.read_again, std::mem::take(&mut self.spare));
        for id in again.drain(..) {
            let dirty_before = self.core.dirty.len();
            let Some(c) = self.core.get_mut(id) else {
                continue;
            };
            match c.phase {
                // A closing connection's reads (discarding) ran out of budget.
                Phase::Draining => {
                    if c.read_pending {
                        self.read(id, true);
                        self.process_closes();
                    }
                    continue;
                }
                Phase::Open if !c.read_paused => {}
                // A TLS handshake whose reads ran out of budget.
                Phase::Handshaking => {
                    if c.read_pending {
                        self.read(id, true);
                        self.process_closes();
                    }
                    continue;
                }
                _ => continue,
            }
            if !c.input.is_empty() {
                let input = std::mem::take(&mut c.input);
                let conn = Conn { id, tag: c.tag };
                let consumed = {
                    let (h, mut cx) = self.cx();
                    h.data(&mut cx, conn, &input).min(input.len())
                };
                put_back_input(&mut self.core, id, input, consumed);
            }
            if self.core.get(id).is_some_and(|c| c.read_pending) {
                self.read(id, true);
            }
            self.flush_fan_out(dirty_before);
            self.process_closes();
        }
        self.spare = again;
    }

    fn fire_timers(&mut self) {
        // Only timers set before this round: one set from a callback below, even with
        // zero delay, fires next iteration, after I/O and messages had their turn.
        let last_seq = self.core.timers.last_seq();
        while let Some((timer_id, kind)) = self.core.timers.pop_due_until(self.core.now, last_seq) {
            match kind {
                TimerKind::User { timer, .. } => {
                    let (h, mut cx) = self.cx();
                    h.timer(&mut cx, timer_id, timer);
                }
                TimerKind::ConnectTimeout(id) => {
                    if let Some(c) = self.core.get_mut(id) {
                        if c.phase == Phase::Connecting {
                            c.timer = None;
                            self.core.schedule_close(id, CloseReason::ConnectTimeout);
                        }
                    }
                }
                TimerKind::Linger(id) => {
                    if let Some(c) = self.core.get_mut(id) {
                        if c.phase == Phase::Draining {
                            c.timer = None;
                            let reason = c.drain_reason();
                            self.core.schedule_close(id, reason);
                        }
                    }
                }
                TimerKind::Handshake(id) => {
                    if let Some(c) = self.core.get_mut(id) {
                        if c.phase == Phase::Handshaking {
                            c.timer = None;
                            self.core.schedule_close(id, CloseReason::HandshakeTimeout);
                        }
                    }
                }
                TimerKind::AcceptRetry => {
                    self.accept_paused = false;
                    for i in 0..self.listeners.len() {
                        self.accept(i);
                    }
                }
            }
            self.process_closes();
        }
    }

    fn flush_all(&mut self) {
        // Flushing can trigger callbacks (`drained`) that write more; loop until quiet.
        while !self.core.dirty.is_empty() {
            let mut dirty =
                std::mem::replace(&mut self.core.dirty, std::mem::take(&mut self.spare));
            for id in dirty.drain(..) {
                self.flush_dirty(id);
            }
            self.spare = dirty;
            self.process_closes();
        }
    }

    /// Writes the connections that became dirty since the dirty list held `from`, if
    /// they are at least [`FAN_OUT_FLUSH`]; the rest wait for the end of the round.
    fn flush_fan_out(&mut self, from: usize) {
        if self.core.dirty.len() < from.saturating_add(FAN_OUT_FLUSH) {
            return;
        }
        let mut fresh = std::mem::take(&mut self.fan_out);
        fresh.extend(self.core.dirty.drain(from..));
        for &id in &fresh {
            self.flush_dirty(id);
        }
        fresh.clear();
        self.fan_out = fresh;
    }

    /// Flushes a connection taken off the dirty list.
    fn flush_dirty(&mut self, id: ConnId) {
        if let Some(c) = self.core.get_mut(id) {
            c.dirty = false;
            if matches!(c.phase, Phase::Handshaking | Phase::Open | Phase::Draining) {
                self.flush(id);
            }
        }
    }

    /// Writes as much buffered output as the socket takes: one syscall for every
    /// message written since the last flush.
    fn flush(&mut self, id: ConnId) {
        let high = self.core.config.high_watermark;
        let Some(c) = self.core.get_mut(id) else {
            return;
        };
        if c.unwritten() > high {
            c.congested = true;
        }
        #[cfg(feature = "tls")]
        if c.tls.is_some() {
            if !self.tls_write(id) {
                return;
            }
            let Some(c) = self.core.get_mut(id) else {
                return;
            };
            // An idle TLS connection keeps no output buffer: it goes back to the loop's
            // pool, for whichever TLS connection writes next.
            let handshaking = c.phase == Phase::Handshaking;
            if c.out_pos == c.output.len() {
                let buf = std::mem::take(&mut c.output);
                c.out_pos = 0;
                self.core.return_output(buf);
            }
            if handshaking {
                return;
            }
            return self.after_flush(id);
        }
        let mut failed = None;
        while c.unwritten() > 0 {
            match c.stream.write(&c.output[c.out_pos..]) {
                Ok(0) => {
                    failed = Some(io::ErrorKind::WriteZero);
                    break;
                }
                Ok(n) => c.out_pos += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    failed = Some(e.kind());
                    break;
                }
            }
        }
        if let Some(kind) = failed {
            self.core.schedule_close(id, CloseReason::Io(kind));
            return;
        }
        if c.unwritten() == 0 {
            c.output.clear();
            c.out_pos = 0;
            if c.output.capacity() > KEEP_OUTPUT_CAPACITY {
                c.output = Vec::new();
            }
        }
        self.after_flush(id);
    }

    /// After a flush: keeps the output buffer from creeping, finishes a half-close or a
    /// close once everything is written, and reports a congested connection drained.
    fn after_flush(&mut self, id: ConnId) {
        let low = self.core.config.low_watermark;
        let Some(c) = self.core.get_mut(id) else {
            return;
        };
        if c.out_pos > c.output.len() / 2 {
            // Keep the buffer from creeping: move the unwritten tail to the front.
            c.output.drain(..c.out_pos);
            c.out_pos = 0;
        }
        if c.unwritten() == 0 && c.write_side != WriteSide::Open {
            if c.peer_closed {
                // Both directions are finished: close (the FIN goes with it).
                let reason = c.drain_reason();
                self.core.schedule_close(id, reason);
                return;
            }
            if c.write_side == WriteSide::ShutPending {
                c.write_side = WriteSide::Shut;
                if let Err(e) = c.stream.shutdown(std::net::Shutdown::Write) {
                    self.core.schedule_close(id, CloseReason::Io(e.kind()));
                    return;
                }
            }
        }
        if c.congested && c.unwritten() <= low {
            c.congested = false;
            let conn = Conn { id, tag: c.tag };
            let (h, mut cx) = self.cx();
            h.drained(&mut cx, conn);
        }
    }

    /// Closes what callbacks asked to close, and tells the handler.
    fn process_closes(&mut self) {
        while let Some((id, reason)) = self.core.to_close.pop() {
            if self.core.get(id).is_none() {
                continue;
            }
            let mut c = self.core.conns.remove(id.index as usize);
            #[cfg(feature = "tls")]
            if reason.is_tls() {
                self.count_tls_failure(&c, &reason);
            }
            let _ = self.core.registry.deregister(&mut c.stream);
            if let Some(t) = c.timer.take() {
                self.core.timers.cancel(t);
            }
            // A closing TLS connection's output buffer serves the next one.
            #[cfg(feature = "tls")]
            if c.tls.is_some() {
                self.core.return_output(std::mem::take(&mut c.output));
            }
            let conn = Conn { id, tag: c.tag };
            drop(c);
            let (h, mut cx) = self.cx();
            h.closed(&mut cx, conn, reason);
        }
    }

    fn shutdown(&mut self) {
        self.write_out();
        let ids: Vec<ConnId> = self
            .core
            .conns
            .iter()
            .map(|(i, c)| ConnId {
                index: i as u32,
                gen: c.gen,
            })
            .collect();
        for id in ids {
            self.core.schedule_close(id, CloseReason::Shutdown);
        }
        self.process_closes();
    }
}

impl<H: Handler> EventLoop<H> {
    /// The loop is exiting: goes on writing buffered output, for at most the linger
    /// time, so that replies the handler already wrote reach their peers.
    fn write_out(&mut self) {
        self.flush_all();
        let deadline = Instant::now() + self.core.config.close_linger;
        let mut events = Events::with_capacity(256);
        loop {
            let pending = self.core.conns.iter().any(|(_, c)| {
                c.unwritten() > 0 && matches!(c.phase, Phase::Open | Phase::Draining)
            });
            let left = deadline.saturating_duration_since(Instant::now());
            if !pending || left.is_zero() {
                return;
            }
            if let Err(e) = self.poll.poll(&mut events, Some(left)) {
                if e.kind() != io::ErrorKind::Interrupted {
                    return;
                }
            }
            self.core.set_now();
            for event in events.iter() {
                let token = event.token().0;
                if token >= LISTENER_BASE - self.listeners.len() {
                    continue; // the waker, the timerfd, a listener
                }
                if event.is_writable() || event.is_error() {
                    let id = ConnId::from_token(event.token());
                    let open =
                        |c: &ConnState<H::Tag>| matches!(c.phase, Phase::Open | Phase::Draining);
                    if self.core.get(id).is_some_and(open) {
                        self.flush(id);
                    }
                }
            }
            self.process_closes();
        }
    }
}

/// Returns a connection's own input buffer after the handler consumed `consumed` bytes
/// of it: the rest stays (no copy of a partial message on every read), an empty buffer
/// is freed.
fn put_back_input<T: Copy, M, U: Copy>(
    core: &mut Core<T, M, U>,
    id: ConnId,
    mut input: Vec<u8>,
    consumed: usize,
) {
    let max = core.config.max_input;
    let Some(c) = core.get_mut(id) else {
        return;
    };
    if c.phase == Phase::Closing {
        return;
    }
    input.drain(..consumed);
    if input.is_empty() {
        return;
    }
    if input.len() > max {
        core.schedule_close(id, CloseReason::InputOverflow);
        return;
    }
    c.input = input;
}

/// Keeps the bytes a handler left unconsumed in the connection's own buffer.
fn keep_input<T: Copy, M, U: Copy>(core: &mut Core<T, M, U>, id: ConnId, rest: &[u8]) {
    let max = core.config.max_input;
    let Some(c) = core.get_mut(id) else {
        return;
    };
    if c.phase == Phase::Closing {
        return;
    }
    if c.input.len() + rest.len() > max {
        core.schedule_close(id, CloseReason::InputOverflow);
        return;
    }
    c.input.extend_from_slice(rest);
}
