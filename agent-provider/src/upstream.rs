//! One loop's side of the provider: its persistent connections and its pending calls.
//!
//! Calls are kept in a slab; a call's Dubbo request id is `generation << 32 | slot`, so a
//! response is matched with one indexed lookup, and a late, duplicated or forged id (whose
//! slot has since been reused, or never was) finds a different generation and is dropped
//! instead of answering someone else's call.

use std::time::{Duration, Instant};

use reactor::{Backoff, ConnId, TimerId};
use reactor_admin::access_log::Line;
use reactor_admin::method_stats::MethodRef;
use slab::Slab;

/// Reconnect delays: 100 ms doubling to 5 s.
pub(crate) const BACKOFF_MIN: Duration = Duration::from_millis(100);
/// Longest reconnect delay.
pub(crate) const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// One persistent connection to the provider.
#[derive(Debug)]
pub(crate) struct ProviderConn {
    /// The reactor connection, while connecting or open.
    pub(crate) id: Option<ConnId>,
    /// The connect has completed.
    pub(crate) open: bool,
    /// The provider said it is shutting down (Dubbo's read-only event): send it nothing
    /// new on this connection.
    pub(crate) readonly: bool,
    pub(crate) backoff: Backoff,
    /// Last time bytes arrived on it.
    pub(crate) last_read: Instant,
    /// Last time bytes were written to it.
    pub(crate) last_write: Instant,
    /// Pending reconnect timer.
    pub(crate) reconnect: Option<TimerId>,
}

impl ProviderConn {
    pub(crate) fn new(now: Instant) -> Self {
        ProviderConn {
            id: None,
            open: false,
            readonly: false,
            backoff: Backoff::new(BACKOFF_MIN, BACKOFF_MAX),
            last_read: now,
            last_write: now,
            reconnect: None,
        }
    }
}

/// How a call's answer goes back to its caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Answer {
    /// An agent RESPONSE made of the provider's answer.
    Agent,
    /// An agent RESPONSE carrying the provider's Dubbo answer as it is (RAW: the
    /// consumer-agent takes Dubbo itself).
    Raw,
    /// The provider's Dubbo frame itself, under the caller's id (a Dubbo consumer of
    /// `--dubbo-listen`).
    Dubbo,
}

/// What the per-method metrics and the access log keep of a call until it completes.
#[derive(Debug, Default)]
pub(crate) struct Observed {
    /// Its method's place in the loop's table (`None`: not counted per method).
    pub(crate) method: Option<MethodRef>,
    /// With `--access-log`: its line, begun when it arrived.
    pub(crate) line: Option<Line>,
    /// Bytes of the request as the caller sent it.
    pub(crate) bytes_in: u32,
    /// With `--otlp-endpoint`: its trace, when traced (`loop_handler::tracing`).
    pub(crate) trace: Option<crate::loop_handler::CallTrace>,
}

/// A call sent to the provider and not yet answered.
#[derive(Debug)]
pub(crate) struct Pending {
    /// The connection to answer on (an agent connection, or a Dubbo consumer's).
    pub(crate) inbound: ConnId,
    /// The caller's request id to echo: an agent request id, or a Dubbo consumer's
    /// request id (its `i64` bits).
    pub(crate) agent_id: u64,
    /// Which provider connection carries it.
    pub(crate) conn: usize,
    pub(crate) started: Instant,
    pub(crate) timer: Option<TimerId>,
    /// How the answer goes back.
    pub(crate) answer: Answer,
    /// For the per-method metrics and the access log.
    pub(crate) observed: Observed,
    /// Generation, the high half of the Dubbo id.
    generation: u32,
}

/// Ids have bit 63 clear so they stay positive as Dubbo's `i64`.
const GEN_MASK: u32 = 0x7fff_ffff;

/// The provider connections and pending calls of one loop.
#[derive(Debug)]
pub(crate) struct Upstream {
    pub(crate) conns: Vec<ProviderConn>,
    pending: Slab<Pending>,
    next_gen: u32,
    /// Round-robin cursor over `conns`.
    cursor: usize,
    /// Calls in flight per agent connection, by its slot index (with the id owning the
    /// count, so a reused slot starts from zero).
    per_inbound: Vec<Option<(ConnId, usize)>>,
}

impl Upstream {
    pub(crate) fn new(conns: usize, now: Instant) -> Self {
        Upstream {
            conns: (0..conns.max(1)).map(|_| ProviderConn::new(now)).collect(),
            pending: Slab::new(),
            next_gen: 0,
            cursor: 0,
            per_inbound: Vec::new(),
        }
    }

    /// Number of calls in flight.
    pub(crate) fn inflight(&self) -> usize {
        self.pending.len()
    }

    /// Number of calls in flight from agent connection `inbound`.
    pub(crate) fn inflight_on(&self, inbound: ConnId) -> usize {
        match self.per_inbound.get(inbound.index()) {
            Some(Some((id, n))) if *id == inbound => *n,
            _ => 0,
        }
    }

    fn count_in(&mut self, inbound: ConnId) {
        let i = inbound.index();
        if self.per_inbound.len() <= i {
            self.per_inbound.resize(i + 1, None);
        }
        if let Some(slot) = self.per_inbound.get_mut(i) {
            match slot {
                Some((id, n)) if *id == inbound => *n += 1,
                _ => *slot = Some((inbound, 1)),
            }
        }
    }

    fn count_out(&mut self, inbound: ConnId) {
        if let Some(Some((id, n))) = self.per_inbound.get_mut(inbound.index()) {
            if *id == inbound {
                *n = n.saturating_sub(1);
            }
        }
    }

    /// Whether any connection can take calls (open, not read-only).
    pub(crate) fn any_open(&self) -> bool {
        self.conns.iter().any(|c| c.open && !c.readonly)
    }

    /// The next open connection, round robin, that is not `congested` (the provider is
    /// not reading what was written to it): (slot, reactor id).
    pub(crate) fn pick(&mut self, congested: impl Fn(ConnId) -> bool) -> Option<(usize, ConnId)> {
        let n = self.conns.len();
        for k in 0..n {
            let i = (self.cursor + k) % n;
            if let Some(c) = self.conns.get(i) {
                if let (true, false, Some(id)) = (c.open, c.readonly, c.id) {
                    if congested(id) {
                        continue;
                    }
                    self.cursor = (i + 1) % n;
                    return Some((i, id));
                }
            }
        }
        None
    }

    /// Stores a new pending call; returns its Dubbo id.
    pub(crate) fn insert(
        &mut self,
        inbound: ConnId,
        agent_id: u64,
        conn: usize,
        now: Instant,
        answer: Answer,
    ) -> u64 {
        self.next_gen = self.next_gen.wrapping_add(1) & GEN_MASK;
        if self.next_gen == 0 {
            self.next_gen = 1;
        }
        let generation = self.next_gen;
        self.count_in(inbound);
        let slot = self.pending.insert(Pending {
            inbound,
            agent_id,
            conn,
            started: now,
            timer: None,
            answer,
            observed: Observed::default(),
            generation,
        });
        (u64::from(generation) << 32) | slot as u64
    }

    /// Attaches the timeout timer to a pending call.
    pub(crate) fn set_timer(&mut self, id: u64, timer: TimerId) {
        if let Some(p) = self.get_mut(id) {
            p.timer = Some(timer);
        }
    }

    /// Attaches what the metrics and the access log keep of a pending call.
    pub(crate) fn set_observed(&mut self, id: u64, observed: Observed) {
        if let Some(p) = self.get_mut(id) {
            p.observed = observed;
        }
    }

    fn get_mut(&mut self, id: u64) -> Option<&mut Pending> {
        let (generation, slot) = split(id)?;
        self.pending
            .get_mut(slot)
            .filter(|p| p.generation == generation)
    }

    /// Removes and returns the call with this Dubbo id, if it is still pending.
    pub(crate) fn take(&mut self, id: u64) -> Option<Pending> {
        let (generation, slot) = split(id)?;
        match self.pending.get(slot) {
            Some(p) if p.generation == generation => {
                let p = self.pending.remove(slot);
                self.count_out(p.inbound);
                Some(p)
            }
            _ => None,
        }
    }

    /// Removes every call carried by connection `conn`.
    pub(crate) fn take_on_conn(&mut self, conn: usize) -> Vec<Pending> {
        let slots: Vec<usize> = self
            .pending
            .iter()
            .filter(|(_, p)| p.conn == conn)
            .map(|(k, _)| k)
            .collect();
        let taken: Vec<Pending> = slots.into_iter().map(|k| self.pending.remove(k)).collect();
        for p in &taken {
            self.count_out(p.inbound);
        }
        taken
    }

    /// Removes every pending call.
    pub(crate) fn take_all(&mut self) -> Vec<Pending> {
        self.per_inbound.clear();
        self.pending.drain().collect()
    }
}

/// (generation, slot) of a Dubbo id; `None` for ids this loop never makes.
fn split(id: u64) -> Option<(u32, usize)> {
    let generation = u32::try_from(id >> 32).ok()?;
    if generation == 0 || generation > GEN_MASK {
        return None;
    }
    Some((generation, (id & 0xffff_ffff) as usize))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A real `ConnId` (it has no public constructor): accept one connection on a tiny
    /// reactor and report the id it got. The upstream only stores it.
    fn conn_id() -> ConnId {
        use std::sync::mpsc;
        struct H(mpsc::Sender<ConnId>);
        impl reactor::Handler for H {
            type Tag = ();
            type Msg = ();
            type Timer = ();
            fn opened(&mut self, _: &mut reactor::Ctx<'_, Self>, conn: reactor::Conn<()>) {
                let _ = self.0.send(conn.id);
            }
            fn data(
                &mut self,
                _: &mut reactor::Ctx<'_, Self>,
                _: reactor::Conn<()>,
                i: &[u8],
            ) -> usize {
                i.len()
            }
        }
        let (tx, rx) = mpsc::channel();
        let tx = std::sync::Mutex::new(tx);
        let r = reactor::Builder::new(reactor::Config::default())
            .listen("127.0.0.1:0".parse().unwrap(), ())
            .start(move |_, _| H(tx.lock().unwrap().clone()))
            .unwrap();
        let _c = std::net::TcpStream::connect(r.local_addrs()[0]).unwrap();
        let id = rx.recv_timeout(Duration::from_secs(5)).unwrap();
        r.stop();
        r.join();
        id
    }

    #[test]
    fn ids_match_only_their_own_call() {
        let c = conn_id();
        let now = Instant::now();
        let mut u = Upstream::new(1, now);
        let a = u.insert(c, 1, 0, now, Answer::Agent);
        assert!(a < (1 << 63));
        let taken = u.take(a).unwrap();
        assert_eq!(taken.agent_id, 1);
        assert!(u.take(a).is_none(), "a late duplicate is dropped");
        let b = u.insert(c, 2, 0, now, Answer::Dubbo);
        assert_eq!(a & 0xffff_ffff, b & 0xffff_ffff, "slot reused");
        assert!(
            u.take(a).is_none(),
            "the old id does not match the reused slot"
        );
        assert!(u.take(0).is_none());
        assert!(u.take(u64::MAX).is_none());
        assert_eq!(u.take(b).map(|p| p.agent_id), Some(2));
        assert_eq!(u.inflight(), 0);
    }
}
