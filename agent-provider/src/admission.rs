//! Admission: whether a call may go to the provider now.
//!
//! `--max-inflight` is one budget for all loops (the provider's thread pool is one
//! pool). Taken first come first served, one consumer's burst could hold all of it and
//! starve every other consumer. So each connection's recent demand is remembered (the
//! most calls it had in flight, or asked for when refused, this second and the last),
//! and a call is admitted while the budget is not full and either
//!
//! - its connection holds less than its fair share: the budget divided by the
//!   connections with recent demand, all loops together; or
//! - its connection, with this call, still leaves the other connections' recent
//!   demand free.
//!
//! So a connection alone may use the whole budget; a burst beside steady consumers
//! takes what they leave; and a newcomer refused while the budget is full raises its
//! demand with each refusal until the others leave it room. A refused call is answered
//! OVERLOADED (the consumer-agent retries elsewhere).

use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;

/// Why a call was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// The whole budget is in flight.
    Full,
    /// This connection holds its share, and more would take what others need.
    OverShare {
        /// The share: the budget divided by the connections with recent demand.
        share: usize,
        /// Connections with recent demand, all loops.
        contenders: usize,
    },
}

/// The decision: `total` calls in flight of `budget`, `mine` of them from the asking
/// connection, `contenders` connections with recent demand (the asking one included),
/// `reserved` the recent demand of all the others.
pub(crate) fn decide(
    budget: usize,
    total: usize,
    mine: usize,
    contenders: usize,
    reserved: usize,
) -> Result<(), Refusal> {
    if total >= budget {
        return Err(Refusal::Full);
    }
    let contenders = contenders.max(1);
    let share = (budget / contenders).max(1);
    if mine < share || mine + reserved < budget {
        Ok(())
    } else {
        Err(Refusal::OverShare { share, contenders })
    }
}

/// One connection's demand: the most calls it had in flight, or asked for when
/// refused, in this window and the one before.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Demand {
    now: usize,
    before: usize,
}

impl Demand {
    fn recent(self) -> usize {
        self.now.max(self.before)
    }
}

/// What each loop publishes: the sum of its connections' recent demand, and how many
/// have some. A cache line each, since every loop writes its own every iteration.
#[derive(Debug)]
pub(crate) struct Published {
    loops: Box<[Padded]>,
}

#[derive(Debug, Default)]
#[repr(align(128))]
struct Padded {
    demand: AtomicUsize,
    demanders: AtomicUsize,
}

impl Published {
    pub(crate) fn new(loops: usize) -> Arc<Self> {
        Arc::new(Published {
            loops: (0..loops.max(1)).map(|_| Padded::default()).collect(),
        })
    }

    fn others(&self, index: usize) -> (usize, usize) {
        self.loops
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != index)
            .fold((0, 0), |(d, n), (_, l)| {
                (d + l.demand.load(Relaxed), n + l.demanders.load(Relaxed))
            })
    }
}

/// One loop's side: its connections' demand, summed.
#[derive(Debug)]
pub(crate) struct LoopAdmission {
    index: usize,
    shared: Arc<Published>,
    demand: usize,
    demanders: usize,
}

impl LoopAdmission {
    pub(crate) fn new(index: usize, shared: Arc<Published>) -> Self {
        LoopAdmission {
            index,
            shared,
            demand: 0,
            demanders: 0,
        }
    }

    /// Whether a call of a connection holding `mine` calls (of `total`, all loops) may
    /// start; either way it counts as demand of `mine + 1`.
    pub(crate) fn admit(
        &mut self,
        budget: usize,
        total: usize,
        mine: usize,
        conn: &mut Demand,
    ) -> Result<(), Refusal> {
        let (other_demand, other_demanders) = self.shared.others(self.index);
        let own = conn.recent();
        let contenders = self.demanders + other_demanders + usize::from(own == 0);
        let reserved = self.demand + other_demand - own;
        let decision = decide(budget, total, mine, contenders, reserved);
        self.raise(conn, mine + 1);
        decision
    }

    fn raise(&mut self, conn: &mut Demand, to: usize) {
        let old = conn.recent();
        conn.now = conn.now.max(to);
        let new = conn.recent();
        self.demand += new - old;
        if old == 0 && new > 0 {
            self.demanders += 1;
        }
    }

    /// A new window (once a second): each connection's demand, with the calls it has
    /// in flight now, starts the window.
    pub(crate) fn roll<'a>(&mut self, conns: impl Iterator<Item = (&'a mut Demand, usize)>) {
        (self.demand, self.demanders) = (0, 0);
        for (d, inflight) in conns {
            d.before = d.now;
            d.now = inflight;
            self.demand += d.recent();
            self.demanders += usize::from(d.recent() > 0);
        }
    }

    /// A connection closed: its demand goes with it.
    pub(crate) fn forget(&mut self, conn: Demand) {
        self.demand -= conn.recent().min(self.demand);
        if conn.recent() > 0 {
            self.demanders = self.demanders.saturating_sub(1);
        }
    }

    /// Publishes this loop's sums for the others (once per loop iteration).
    pub(crate) fn publish(&self) {
        if let Some(l) = self.shared.loops.get(self.index) {
            l.demand.store(self.demand, Relaxed);
            l.demanders.store(self.demanders, Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alone_a_connection_may_use_the_whole_budget() {
        let mut a = LoopAdmission::new(0, Published::new(1));
        let mut conn = Demand::default();
        for mine in 0..200 {
            assert_eq!(a.admit(200, mine, mine, &mut conn), Ok(()));
        }
        assert_eq!(a.admit(200, 200, 200, &mut conn), Err(Refusal::Full));
    }

    #[test]
    fn a_burst_leaves_steady_consumers_their_demand() {
        let mut a = LoopAdmission::new(0, Published::new(1));
        let (mut steady, mut burst) = (Demand::default(), Demand::default());
        for mine in 0..32 {
            a.admit(200, mine, mine, &mut steady).unwrap();
        }
        // The steady consumer's calls come back, then the burst arrives.
        a.roll([(&mut steady, 0), (&mut burst, 0)].into_iter());
        let mut taken = 0;
        while a.admit(200, taken, taken, &mut burst).is_ok() {
            taken += 1;
        }
        assert_eq!(taken, 200 - 32, "the burst leaves the steady demand free");
        for mine in 0..32 {
            assert_eq!(a.admit(200, taken + mine, mine, &mut steady), Ok(()));
        }
    }

    #[test]
    fn a_refused_newcomer_gets_room() {
        let mut a = LoopAdmission::new(0, Published::new(1));
        let (mut burst, mut newcomer) = (Demand::default(), Demand::default());
        for mine in 0..200 {
            a.admit(200, mine, mine, &mut burst).unwrap();
        }
        assert_eq!(a.admit(200, 200, 0, &mut newcomer), Err(Refusal::Full));
        // A call of the burst's returns: the burst may not take the room back, the
        // newcomer (under its share) may.
        assert_eq!(
            a.admit(200, 199, 199, &mut burst),
            Err(Refusal::OverShare {
                share: 100,
                contenders: 2
            })
        );
        assert_eq!(a.admit(200, 199, 0, &mut newcomer), Ok(()));
    }

    #[test]
    fn demand_fades_after_two_windows_and_other_loops_count() {
        let shared = Published::new(2);
        let mut a = LoopAdmission::new(0, shared.clone());
        let mut b = LoopAdmission::new(1, shared);
        let mut conn = Demand::default();
        for mine in 0..50 {
            a.admit(200, mine, mine, &mut conn).unwrap();
        }
        a.publish();
        let mut other = Demand::default();
        let mut taken = 0;
        while b.admit(200, 50 + taken, taken, &mut other).is_ok() {
            taken += 1;
        }
        assert_eq!(taken, 150, "loop 1 leaves loop 0's demand");
        a.roll([(&mut conn, 0)].into_iter());
        assert_eq!(a.demand, 50, "kept for a window");
        a.roll([(&mut conn, 0)].into_iter());
        assert_eq!((a.demand, a.demanders), (0, 0));
        a.forget(conn);
        assert_eq!(a.demand, 0);
    }
}
