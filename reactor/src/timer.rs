//! Per-loop timers: a min-heap of deadlines plus a slab of live entries.
//!
//! Creating a timer is one heap push; cancelling is one slab removal (the heap entry is
//! left behind and skipped when it surfaces), so request timeouts by the hundred thousand
//! cost almost nothing, and no timer ever needs a syscall of its own. A handler timer's
//! payload (its [`Handler::Timer`](crate::Handler::Timer) value) is `Copy` and stored
//! inline in the slab entry: setting a timer allocates nothing once the slab and heap
//! have grown to the working size.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::{Duration, Instant};

use slab::Slab;

/// Names a timer so it can be cancelled. Stale ids (fired or cancelled) are harmless.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TimerId {
    index: u32,
    gen: u32,
}

/// What a timer does when it fires. `C` names a connection, `U` is the handler's timer
/// payload ([`Handler::Timer`](crate::Handler::Timer)).
#[derive(Debug, Clone, Copy)]
pub(crate) enum TimerKind<C, U> {
    /// A handler timer carrying the handler's value, and its period if periodic.
    User { timer: U, period: Option<Duration> },
    /// The reactor's own timer for an outbound connect.
    ConnectTimeout(C),
    /// The most a draining connection may take to finish its close.
    Linger(C),
    /// The most a TLS handshake may take.
    #[cfg_attr(not(feature = "tls"), allow(dead_code))]
    Handshake(C),
    /// Retry accepting after the process ran out of file descriptors.
    AcceptRetry,
}

#[derive(Debug)]
struct Entry<C, U> {
    gen: u32,
    kind: TimerKind<C, U>,
}

/// The timers of one loop.
#[derive(Debug)]
pub(crate) struct Timers<C, U> {
    entries: Slab<Entry<C, U>>,
    /// (deadline, sequence for FIFO among equal deadlines, index, generation)
    heap: BinaryHeap<Reverse<(Instant, u64, u32, u32)>>,
    seq: u64,
    next_gen: u32,
}

impl<C: Copy, U: Copy> Timers<C, U> {
    pub(crate) fn new() -> Self {
        Timers {
            entries: Slab::new(),
            heap: BinaryHeap::new(),
            seq: 0,
            next_gen: 0,
        }
    }

    pub(crate) fn insert(&mut self, deadline: Instant, kind: TimerKind<C, U>) -> TimerId {
        self.next_gen = self.next_gen.wrapping_add(1);
        let gen = self.next_gen;
        let index = self.entries.insert(Entry { gen, kind }) as u32;
        self.push(deadline, index, gen);
        TimerId { index, gen }
    }

    fn push(&mut self, deadline: Instant, index: u32, gen: u32) {
        self.seq += 1;
        self.heap.push(Reverse((deadline, self.seq, index, gen)));
    }

    /// Cancels a timer; returns whether it was still pending.
    pub(crate) fn cancel(&mut self, id: TimerId) -> bool {
        match self.entries.get(id.index as usize) {
            Some(e) if e.gen == id.gen => {
                self.entries.remove(id.index as usize);
                self.compact();
                true
            }
            _ => false,
        }
    }

    /// Cancelled entries stay in the heap until their deadline; when they outnumber the
    /// live ones, sweep them out, so cancelling long timers by the million holds no
    /// memory. Amortised O(1) per cancel.
    fn compact(&mut self) {
        if self.heap.len() > 2 * self.entries.len() + 1024 {
            let entries = &self.entries;
            self.heap.retain(|Reverse((_, _, index, gen))| {
                matches!(entries.get(*index as usize), Some(e) if e.gen == *gen)
            });
        }
    }

    /// The earliest deadline that is still live (dead heap tops are dropped on the way).
    pub(crate) fn next_deadline(&mut self) -> Option<Instant> {
        while let Some(Reverse((deadline, _, index, gen))) = self.heap.peek().copied() {
            if self.is_live(index, gen) {
                return Some(deadline);
            }
            self.heap.pop();
        }
        None
    }

    fn is_live(&self, index: u32, gen: u32) -> bool {
        matches!(self.entries.get(index as usize), Some(e) if e.gen == gen)
    }

    /// The sequence number of the latest timer set (see [`Timers::pop_due_until`]).
    pub(crate) fn last_seq(&self) -> u64 {
        self.seq
    }

    /// Pops one timer due at `now`, re-arming periodic ones.
    #[cfg(test)]
    pub(crate) fn pop_due(&mut self, now: Instant) -> Option<(TimerId, TimerKind<C, U>)> {
        self.pop_due_until(now, u64::MAX)
    }

    /// Pops one timer due at `now` and set no later than `last_seq`, re-arming periodic
    /// ones. Timers set while firing (even with zero delay) wait for the next round, so
    /// a timer that re-arms itself cannot keep the loop from polling.
    pub(crate) fn pop_due_until(
        &mut self,
        now: Instant,
        last_seq: u64,
    ) -> Option<(TimerId, TimerKind<C, U>)> {
        loop {
            let Reverse((deadline, seq, index, gen)) = *self.heap.peek()?;
            if deadline > now || seq > last_seq {
                return None;
            }
            self.heap.pop();
            if !self.is_live(index, gen) {
                continue;
            }
            let id = TimerId { index, gen };
            let kind = self.entries[index as usize].kind;
            match kind {
                TimerKind::User {
                    period: Some(period),
                    ..
                } => {
                    // Periodic: next beat from the planned deadline; a stalled loop
                    // skips the missed beats instead of firing a catch-up burst.
                    let mut next = deadline + period;
                    if next <= now {
                        next = now + period;
                    }
                    self.push(next, index, gen);
                }
                _ => {
                    self.entries.remove(index as usize);
                }
            }
            return Some((id, kind));
        }
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(token: u64) -> TimerKind<(), u64> {
        TimerKind::User {
            timer: token,
            period: None,
        }
    }

    fn token(kind: TimerKind<(), u64>) -> u64 {
        match kind {
            TimerKind::User { timer, .. } => timer,
            _ => u64::MAX,
        }
    }

    #[test]
    fn fires_in_deadline_order_and_skips_cancelled() {
        let mut t = Timers::new();
        let now = Instant::now();
        t.insert(now + Duration::from_millis(30), user(3));
        let cancelled = t.insert(now + Duration::from_millis(10), user(1));
        t.insert(now + Duration::from_millis(20), user(2));
        t.insert(now + Duration::from_millis(20), user(22));
        assert!(t.cancel(cancelled));
        assert!(!t.cancel(cancelled), "second cancel is a no-op");
        assert_eq!(t.next_deadline(), Some(now + Duration::from_millis(20)));
        let fired: Vec<u64> = std::iter::from_fn(|| t.pop_due(now + Duration::from_millis(25)))
            .map(|(_, k)| token(k))
            .collect();
        assert_eq!(fired, vec![2, 22]);
        assert_eq!(t.len(), 1);
    }

    #[test]
    fn cancelled_timers_do_not_accumulate() {
        let mut t: Timers<(), u64> = Timers::new();
        let far = Instant::now() + Duration::from_secs(30);
        for i in 0..100_000 {
            let id = t.insert(far, user(i));
            t.cancel(id);
        }
        assert!(
            t.heap.len() <= 1024 + 1,
            "heap holds {} dead entries",
            t.heap.len()
        );
        assert_eq!(t.next_deadline(), None);
    }

    #[test]
    fn carries_the_handlers_own_payload() {
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        enum Payload {
            Call(u64),
            Sweep,
            Reconnect(usize),
        }
        let mut t: Timers<(), Payload> = Timers::new();
        let now = Instant::now();
        t.insert(
            now + Duration::from_millis(3),
            TimerKind::User {
                timer: Payload::Reconnect(7),
                period: None,
            },
        );
        t.insert(
            now + Duration::from_millis(1),
            TimerKind::User {
                timer: Payload::Call(u64::MAX),
                period: None,
            },
        );
        t.insert(
            now + Duration::from_millis(2),
            TimerKind::User {
                timer: Payload::Sweep,
                period: Some(Duration::from_millis(10)),
            },
        );
        let fired: Vec<Payload> = std::iter::from_fn(|| t.pop_due(now + Duration::from_millis(5)))
            .filter_map(|(_, k)| match k {
                TimerKind::User { timer, .. } => Some(timer),
                _ => None,
            })
            .collect();
        assert_eq!(
            fired,
            [
                Payload::Call(u64::MAX),
                Payload::Sweep,
                Payload::Reconnect(7)
            ]
        );
        assert_eq!(t.len(), 1, "the periodic one stays");
    }

    #[test]
    fn periodic_rearms_without_catch_up_burst() {
        let mut t: Timers<(), u64> = Timers::new();
        let now = Instant::now();
        let id = t.insert(
            now + Duration::from_millis(10),
            TimerKind::User {
                timer: 7,
                period: Some(Duration::from_millis(10)),
            },
        );
        let late = now + Duration::from_millis(100);
        assert!(t.pop_due(late).is_some());
        assert!(t.pop_due(late).is_none(), "missed beats are skipped");
        assert!(t.pop_due(late + Duration::from_millis(10)).is_some());
        assert!(t.cancel(id));
        assert!(t.pop_due(late + Duration::from_secs(1)).is_none());
    }
}
