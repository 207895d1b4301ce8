//! The application's side of a loop.

use std::fmt;

use crate::conn::{CloseReason, Conn};
use crate::context::Ctx;
use crate::timer::TimerId;

/// What to do with a connection whose peer finished sending ([`Handler::end_of_input`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndOfInput {
    /// Close it once its buffered output is written (the usual answer).
    Close,
    /// Keep it open for writing: the peer only half-closed (e.g. `shutdown(SHUT_WR)`
    /// after its last request) and still reads.
    KeepOpen,
    /// Close it at once, as [`Ctx::abort`] does: output not yet written is discarded.
    /// (What the kernel already holds still goes out, then our FIN; as with `abort`, the
    /// kernel sends a reset instead only if input is left unread in the socket, which
    /// after the peer's end of input there normally is not.) Unlike a call to `abort`,
    /// [`Handler::closed`] still reports [`CloseReason::PeerClosed`]: the peer ended the
    /// connection, we only declined to finish writing to it. For connections whose
    /// peer's FIN means there is nothing left worth sending, such as a pooled upstream
    /// connection that must be replaced at once.
    ///
    /// If the callback already closed or aborted the connection itself, that stands
    /// (and is reported as [`CloseReason::Local`]).
    Abort,
}

/// What a loop calls. One handler instance per loop, created on the loop's own thread,
/// so it needs no locks and need not be `Send`.
///
/// Connections carry a [`Handler::Tag`] chosen by the application (the listener's tag for
/// accepted ones, the one given to [`Ctx::connect`] for outbound ones); a handler
/// dispatches on it, which is how one loop serves e.g. inbound HTTP and outbound agent
/// connections together. Timers likewise carry a [`Handler::Timer`] value saying what
/// they are for, handed back to [`Handler::timer`] when they fire.
///
/// Every callback gets a [`Ctx`] through which it may write to, close or open any
/// connection of the loop, and set timers. Writes are buffered and flushed once per loop
/// iteration, so many messages written in one iteration leave in one syscall.
///
/// # Timers
///
/// A handler with more than one kind of timer names them in its [`Handler::Timer`] type
/// and matches on it in [`Handler::timer`]: no packing of kinds into the bits of an
/// integer. Here an idle deadline per connection, pushed back by its traffic, beside a
/// periodic housekeeping beat:
///
/// ```
/// use std::time::Duration;
///
/// use reactor::{CloseReason, Conn, ConnId, ConnMap, Ctx, Handler, TimerId};
///
/// const IDLE: Duration = Duration::from_secs(30);
///
/// #[derive(Debug, Clone, Copy)]
/// enum Timer {
///     /// A connection was idle for [`IDLE`].
///     Idle(ConnId),
///     /// Once a second.
///     Sweep,
/// }
///
/// struct Server {
///     idle: ConnMap<TimerId>,
/// }
///
/// impl Handler for Server {
///     type Tag = ();
///     type Msg = ();
///     type Timer = Timer;
///
///     fn started(&mut self, cx: &mut Ctx<'_, Self>) {
///         cx.set_periodic(Duration::from_secs(1), Timer::Sweep);
///     }
///     fn opened(&mut self, cx: &mut Ctx<'_, Self>, conn: Conn<()>) {
///         let deadline = cx.set_timer(IDLE, Timer::Idle(conn.id));
///         self.idle.insert(conn.id, deadline);
///     }
///     fn data(&mut self, cx: &mut Ctx<'_, Self>, conn: Conn<()>, input: &[u8]) -> usize {
///         if let Some(deadline) = self.idle.get_mut(conn.id) {
///             cx.cancel_timer(*deadline);
///             *deadline = cx.set_timer(IDLE, Timer::Idle(conn.id));
///         }
///         input.len()
///     }
///     fn closed(&mut self, cx: &mut Ctx<'_, Self>, conn: Conn<()>, _: CloseReason) {
///         if let Some(deadline) = self.idle.remove(conn.id) {
///             cx.cancel_timer(deadline);
///         }
///     }
///     fn timer(&mut self, cx: &mut Ctx<'_, Self>, _: TimerId, timer: Timer) {
///         match timer {
///             Timer::Idle(id) => cx.close(id),
///             Timer::Sweep => { /* housekeeping */ }
///         }
///     }
/// }
/// ```
pub trait Handler: Sized + 'static {
    /// Which kind of connection this is (e.g. `enum Tag { HttpIn, AgentOut }`).
    type Tag: Copy + fmt::Debug + 'static;
    /// Messages other threads send the loop through its [`LoopHandle`](crate::LoopHandle).
    type Msg: Send + 'static;
    /// What a timer is for, given to [`Ctx::set_timer`] or [`Ctx::set_periodic`] and
    /// handed back to [`Handler::timer`] (e.g. `enum Timer { Call(u64), Sweep,
    /// Reconnect(usize) }`, or `()` for a handler with one kind of timer). It is stored
    /// inline in the loop's timer table, so keep it small: a timer costs no allocation
    /// of its own.
    type Timer: Copy + fmt::Debug + 'static;

    /// The loop started, before its first poll: set up timers and outbound connections.
    fn started(&mut self, cx: &mut Ctx<'_, Self>) {
        let _ = cx;
    }

    /// A connection opened: accepted, or an outbound connect completed. A TLS connection
    /// opens once its handshake completed (the peer's certificate, if any, verified and
    /// readable with `Ctx::peer_identity`); one whose handshake fails is never opened,
    /// only reported to [`Handler::closed`].
    fn opened(&mut self, cx: &mut Ctx<'_, Self>, conn: Conn<Self::Tag>) {
        let _ = (cx, conn);
    }

    /// Bytes arrived. `input` starts with whatever the handler left unconsumed last time.
    /// Returns how many bytes it consumed; the rest is kept (in the connection's own
    /// buffer, freed again once empty) and offered again in front of the next bytes that
    /// arrive, or after [`Ctx::resume_reading`]. So a handler that stops short of what it
    /// could parse, without pausing, waits for the peer's next bytes.
    fn data(&mut self, cx: &mut Ctx<'_, Self>, conn: Conn<Self::Tag>, input: &[u8]) -> usize;

    /// The peer finished sending (TCP FIN); everything it sent was delivered to
    /// [`Handler::data`] first. The default, [`EndOfInput::Close`], closes the connection
    /// once its buffered output is written. A proxy that relays half-closes returns
    /// [`EndOfInput::KeepOpen`]: the connection stays open for writing until the handler
    /// calls [`Ctx::shutdown_write`] (it then closes once the FIN is sent) or
    /// [`Ctx::close`]. [`EndOfInput::Abort`] closes it at once, dropping unwritten
    /// output. Either way [`Handler::closed`] reports [`CloseReason::PeerClosed`], unless
    /// the handler closed the connection itself ([`CloseReason::Local`]) or it failed.
    fn end_of_input(&mut self, cx: &mut Ctx<'_, Self>, conn: Conn<Self::Tag>) -> EndOfInput {
        let _ = (cx, conn);
        EndOfInput::Close
    }

    /// A congested connection's output fell to the low watermark: resume what was paused.
    fn drained(&mut self, cx: &mut Ctx<'_, Self>, conn: Conn<Self::Tag>) {
        let _ = (cx, conn);
    }

    /// A connection closed (or an outbound connect or a TLS handshake failed: see
    /// [`CloseReason::is_connect_failure`]). Its id is stale from now on.
    fn closed(&mut self, cx: &mut Ctx<'_, Self>, conn: Conn<Self::Tag>, reason: CloseReason) {
        let _ = (cx, conn, reason);
    }

    /// A timer set with [`Ctx::set_timer`] or [`Ctx::set_periodic`] fired: `id` is what
    /// setting it returned, `timer` the value it was set with (a periodic timer's on
    /// every beat).
    fn timer(&mut self, cx: &mut Ctx<'_, Self>, id: TimerId, timer: Self::Timer) {
        let _ = (cx, id, timer);
    }

    /// A message from another thread arrived.
    fn message(&mut self, cx: &mut Ctx<'_, Self>, msg: Self::Msg) {
        let _ = (cx, msg);
    }

    /// Called once at the end of every loop iteration, just before output is flushed
    /// (all of it but what an event that wrote to many connections had flushed already):
    /// the place to finish batched work.
    fn tick(&mut self, cx: &mut Ctx<'_, Self>) {
        let _ = cx;
    }

    /// A graceful stop was asked for; listeners are already closed. Finish what is in
    /// flight, then call [`Ctx::exit`]. The default exits at once.
    fn stopping(&mut self, cx: &mut Ctx<'_, Self>) {
        cx.exit();
    }
}
