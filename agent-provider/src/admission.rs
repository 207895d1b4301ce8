//! Admission: whether a call may go to the provider now.
//!
//! `--max-inflight` is one budget for all loops (the provider's thread pool is one
//! pool). Taken first come first served, one consumer's burst could hold all of it and
//! starve every other consumer. So the budget is shared in two zones:
//!
//! - below 7/8 of it, any call is admitted: one consumer alone can use the provider;
//! - above, only calls of connections holding less than their fair share, the budget
//!   divided by the connections competing for it, all loops together. A connection
//!   competes while it has calls in flight, or for a second or two after a call of
//!   its was refused (so one refused while the budget is full still counts).
//!
//! A connection over its share is refused OVERLOADED (the consumer-agent retries
//! elsewhere); the others get the room its finished calls leave.

use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Why a call was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// The whole budget is in flight.
    Full,
    /// The budget is contended and this connection holds its fair share already.
    OverShare {
        /// The share: the budget divided by the competing connections.
        share: usize,
        /// Connections competing, all loops.
        contenders: usize,
    },
}

/// The decision: `total` calls in flight of `budget`, `mine` of them from the asking
/// connection, `contenders` connections competing (the asking one included).
pub(crate) fn admit(
    budget: usize,
    total: usize,
    mine: usize,
    contenders: usize,
) -> Result<(), Refusal> {
    if total >= budget {
        return Err(Refusal::Full);
    }
    let free = budget - budget / 8;
    if total < free {
        return Ok(());
    }
    let contenders = contenders.max(1);
    let share = (budget / contenders).max(1);
    if mine < share {
        Ok(())
    } else {
        Err(Refusal::OverShare { share, contenders })
    }
}

/// What each loop publishes: its competing connections. A cache line each, since
/// every loop writes its own every iteration.
#[derive(Debug)]
pub(crate) struct Contenders {
    loops: Box<[Padded]>,
}

#[derive(Debug, Default)]
#[repr(align(128))]
struct Padded(AtomicUsize);

impl Contenders {
    pub(crate) fn new(loops: usize) -> Arc<Self> {
        Arc::new(Contenders {
            loops: (0..loops.max(1)).map(|_| Padded::default()).collect(),
        })
    }

    fn publish(&self, index: usize, n: usize) {
        if let Some(l) = self.loops.get(index) {
            l.0.store(n, Relaxed);
        }
    }

    fn others(&self, index: usize) -> usize {
        self.loops
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != index)
            .map(|(_, l)| l.0.load(Relaxed))
            .sum()
    }
}

/// How long a refused connection keeps competing: this window and the next.
const REFUSED_WINDOW: Duration = Duration::from_secs(1);

/// One loop's side: the connections of this loop refused lately.
#[derive(Debug)]
pub(crate) struct LoopAdmission {
    index: usize,
    shared: Arc<Contenders>,
    window: u64,
    window_start: Instant,
    refused_now: usize,
    refused_before: usize,
}

impl LoopAdmission {
    pub(crate) fn new(index: usize, shared: Arc<Contenders>, now: Instant) -> Self {
        LoopAdmission {
            index,
            shared,
            window: 1,
            window_start: now,
            refused_now: 0,
            refused_before: 0,
        }
    }

    /// Competing connections, all loops, given this loop's `busy` ones (with calls in
    /// flight).
    pub(crate) fn contenders(&mut self, now: Instant, busy: usize) -> usize {
        self.roll(now);
        self.local(busy) + self.shared.others(self.index)
    }

    /// A connection was refused; `last_window` is its own record of the window it was
    /// last counted in (0: never), so it counts once per window.
    pub(crate) fn refused(&mut self, now: Instant, last_window: &mut u64) {
        self.roll(now);
        if *last_window != self.window {
            *last_window = self.window;
            self.refused_now += 1;
        }
    }

    /// Publishes this loop's count for the others (once per loop iteration).
    pub(crate) fn publish(&mut self, now: Instant, busy: usize) {
        self.roll(now);
        self.shared.publish(self.index, self.local(busy));
    }

    fn local(&self, busy: usize) -> usize {
        busy + self.refused_now.max(self.refused_before)
    }

    fn roll(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.window_start);
        if elapsed < REFUSED_WINDOW {
            return;
        }
        self.refused_before = if elapsed < 2 * REFUSED_WINDOW {
            self.refused_now
        } else {
            0
        };
        self.refused_now = 0;
        self.window += 1;
        self.window_start = now;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alone_a_connection_may_use_the_whole_budget() {
        for total in 0..200 {
            assert_eq!(admit(200, total, total, 1), Ok(()));
        }
        assert_eq!(admit(200, 200, 200, 1), Err(Refusal::Full));
    }

    #[test]
    fn contended_budget_goes_to_connections_under_their_share() {
        // A burst holds 175 of 200; a second connection competes.
        assert_eq!(
            admit(200, 175, 175, 2),
            Err(Refusal::OverShare {
                share: 100,
                contenders: 2
            })
        );
        assert_eq!(admit(200, 175, 0, 2), Ok(()));
        assert_eq!(admit(200, 199, 99, 2), Ok(()));
        // Below the contended zone, first come first served.
        assert_eq!(admit(200, 174, 174, 2), Ok(()));
        // Tiny budgets: the share is at least one call.
        assert_eq!(admit(1, 0, 0, 5), Ok(()));
        assert_eq!(admit(4, 3, 3, 10), Ok(()), "under 8, all first come");
        assert_eq!(admit(16, 15, 0, 20), Ok(()));
        assert_eq!(
            admit(16, 15, 1, 20),
            Err(Refusal::OverShare {
                share: 1,
                contenders: 20
            })
        );
    }

    #[test]
    fn a_refused_connection_competes_for_a_window_or_two() {
        let t0 = Instant::now();
        let shared = Contenders::new(2);
        let mut a = LoopAdmission::new(0, shared.clone(), t0);
        let mut b = LoopAdmission::new(1, shared, t0);
        let mut conn_window = 0;
        a.refused(t0, &mut conn_window);
        a.refused(t0, &mut conn_window); // once per window
        assert_eq!(a.contenders(t0, 3), 4);
        a.publish(t0, 3);
        assert_eq!(b.contenders(t0, 1), 5);
        let later = t0 + REFUSED_WINDOW;
        assert_eq!(
            a.contenders(later, 0),
            1,
            "still counted in the next window"
        );
        assert_eq!(a.contenders(later + REFUSED_WINDOW, 0), 0);
    }
}
