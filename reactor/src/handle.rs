//! Reaching a loop from other threads.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crossbeam_channel::Sender;

/// What crosses into a loop.
#[derive(Debug)]
pub(crate) enum Control<M> {
    Msg(M),
    StopAccepting,
    Stop,
}

/// A cloneable handle that sends a loop messages and wakes it.
///
/// Sends from many threads coalesce into one wake-up (one `eventfd` write) until the
/// loop has drained its queue.
#[derive(Debug)]
pub struct LoopHandle<M> {
    tx: Sender<Control<M>>,
    waker: Arc<mio::Waker>,
    wake_pending: Arc<AtomicBool>,
}

impl<M> Clone for LoopHandle<M> {
    fn clone(&self) -> Self {
        LoopHandle {
            tx: self.tx.clone(),
            waker: self.waker.clone(),
            wake_pending: self.wake_pending.clone(),
        }
    }
}

/// The loop has exited; the message was not delivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoopGone;

impl std::fmt::Display for LoopGone {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the event loop has exited")
    }
}

impl std::error::Error for LoopGone {}

impl<M> LoopHandle<M> {
    pub(crate) fn new(
        tx: Sender<Control<M>>,
        waker: Arc<mio::Waker>,
        wake_pending: Arc<AtomicBool>,
    ) -> Self {
        LoopHandle {
            tx,
            waker,
            wake_pending,
        }
    }

    /// Sends the loop a message; its handler's `message` callback receives it.
    pub fn send(&self, msg: M) -> Result<(), LoopGone> {
        self.push(Control::Msg(msg))
    }

    /// Asks the loop to stop gracefully: it closes its listeners and calls the handler's
    /// `stopping`, which decides when to exit. (The `Reactor` keeps a duplicate of each
    /// listening socket for `Reactor::listeners` until `Reactor::stop` or its drop: stop
    /// through it to have connects refused at once.)
    pub fn stop(&self) -> Result<(), LoopGone> {
        self.push(Control::Stop)
    }

    /// Asks the loop to accept no more connections, leaving its listening sockets open
    /// for another owner (see [`Reactor::stop_accepting`](crate::Reactor::stop_accepting)).
    pub fn stop_accepting(&self) -> Result<(), LoopGone> {
        self.push(Control::StopAccepting)
    }

    fn push(&self, c: Control<M>) -> Result<(), LoopGone> {
        self.tx.send(c).map_err(|_| LoopGone)?;
        if !self.wake_pending.swap(true, Ordering::AcqRel) {
            self.waker.wake().map_err(|_| LoopGone)?;
        }
        Ok(())
    }
}
