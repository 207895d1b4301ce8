//! Upstreams as one loop sees them: provider-agents and unmeshed Dubbo providers, their
//! connections, call definitions and services.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use reactor::{Backoff, ConnId, TimerId};
use registry::{Instance, Variant};
use slab::Slab;

use crate::lb::{Algorithm, Balancer, Stats};
use crate::rules::{self, Bucket, Rules};
use std::sync::Arc;

/// The loop's maps looked up per call: foldhash, seeded per process.
type HashMap<K, V> = std::collections::HashMap<K, V, foldhash::quality::RandomState>;

/// What an upstream speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// A provider-agent: the agent protocol.
    Agent,
    /// An unmeshed Dubbo provider (found in a ZooKeeper registry in Dubbo's layout):
    /// Dubbo 2 with hessian2, called directly.
    Dubbo,
}

impl Protocol {
    /// What logs call an upstream speaking it.
    pub fn name(self) -> &'static str {
        match self {
            Protocol::Agent => "provider-agent",
            Protocol::Dubbo => "Dubbo provider",
        }
    }

    /// What a registry entry says it speaks: meta `protocol=dubbo` is a plain Dubbo
    /// provider, anything else a provider-agent.
    pub fn of(instance: &Instance) -> Protocol {
        match instance.meta.get("protocol").map(String::as_str) {
            Some("dubbo") => Protocol::Dubbo,
            _ => Protocol::Agent,
        }
    }
}

/// One upstream (a provider-agent or an unmeshed Dubbo provider) this loop talks to,
/// over one connection of its own.
#[derive(Debug)]
pub struct Upstream {
    /// Where it listens.
    pub addr: SocketAddr,
    /// What it speaks.
    pub protocol: Protocol,
    /// The loop's connection to it, open or connecting; `None` while waiting to reconnect.
    pub conn: Option<ConnId>,
    /// The connection answered a PING (a Dubbo provider: a heartbeat) properly: it
    /// speaks its protocol and takes calls. A peer that connects but fails the protocol (another service on a stale
    /// registry entry) never becomes open, and its reconnects back off.
    pub open: bool,
    /// When the current connection last delivered anything.
    pub last_read: Instant,
    /// When the PING still unanswered on the current connection was sent.
    pub ping_sent: Option<Instant>,
    /// Which call ids were already defined on the current connection.
    pub defined: Vec<bool>,
    /// Reconnect delays.
    pub backoff: Backoff,
    /// Pending reconnect.
    pub reconnect: Option<TimerId>,
    /// Services listing it; when none does it retires.
    pub services: usize,
    /// Left the registry: gets no new calls, and is dropped once its calls are answered.
    pub retiring: bool,
    /// The TLS identity its registry entry publishes (meta `tls.identity`): with
    /// `--tls-cert`, the certificate it presents must name it.
    pub tls_identity: Option<String>,
    /// After a GOAWAY on `conn`: the new connection, connecting or proving itself with
    /// a PING; calls go on over `conn` until it is open (see `codec::agent`).
    pub replacement: Option<ConnId>,
    /// The connection that said GOAWAY, once the replacement took over, and since
    /// when: it gets no new call, and is closed once the calls sent before are answered.
    pub draining: Option<(ConnId, Instant)>,
}

/// The instance metadata key naming a provider-agent's TLS identity (the
/// provider-agent's `tls.identity`).
pub const TLS_IDENTITY_META: &str = "tls.identity";

impl Upstream {
    fn new(addr: SocketAddr, protocol: Protocol) -> Self {
        Upstream {
            addr,
            protocol,
            conn: None,
            open: false,
            last_read: Instant::now(),
            ping_sent: None,
            defined: Vec::new(),
            backoff: Backoff::new(Duration::from_millis(100), Duration::from_secs(5)),
            reconnect: None,
            services: 0,
            retiring: false,
            tls_identity: None,
            replacement: None,
            draining: None,
        }
    }

    /// Marks call `id` defined on this connection; returns true if it was not yet.
    pub fn define(&mut self, id: u32) -> bool {
        let i = id as usize;
        if self.defined.len() <= i {
            self.defined.resize(i + 1, false);
        }
        !std::mem::replace(&mut self.defined[i], true)
    }
}

impl std::borrow::Borrow<Stats> for Member {
    fn borrow(&self) -> &Stats {
        &self.stats
    }
}

impl std::borrow::BorrowMut<Stats> for Member {
    fn borrow_mut(&mut self) -> &mut Stats {
        &mut self.stats
    }
}

/// A provider-agent as a member of a service, with the balancer's view of it.
#[derive(Debug)]
pub struct Member {
    /// Key into the loop's upstream table.
    pub upstream: usize,
    /// The versions and groups it serves (empty strings: none; versions normalized); a
    /// call reaches it only naming one of them.
    pub variants: Vec<Variant>,
    /// Its labels (`label.*` registry metadata), which traffic rules select by.
    pub labels: Vec<(String, String)>,
    /// In-flight count, learned limit, latency.
    pub stats: Stats,
}

impl Member {
    /// Whether it serves `version` (normalized) in `group`; `*` for either matches any
    /// (Dubbo's wildcard: the provider-agent then calls the first it serves).
    pub fn serves(&self, version: &str, group: &str) -> bool {
        self.variants.iter().any(|v| v.matches(version, group))
    }
}

/// A service and its members.
#[derive(Debug)]
pub struct Service {
    /// Providers of this service.
    pub members: Vec<Member>,
    /// Member stats, kept parallel to `members` for the balancer.
    pub balancer: Balancer,
}

/// A service's rules as one loop applies them.
#[derive(Debug)]
pub struct LoopRules {
    /// The rules.
    pub rules: Arc<Rules>,
    /// The service's bucket.
    pub bucket: Option<Bucket>,
    /// Each route's bucket.
    pub route_buckets: Vec<Option<Bucket>>,
}

impl LoopRules {
    /// `rules` with full buckets, this loop's share of `loops`.
    pub fn new(rules: Arc<Rules>, loops: usize, now: std::time::Instant) -> LoopRules {
        let bucket = |r: Option<rules::Rate>| r.map(|r| Bucket::new(r, loops, now));
        LoopRules {
            bucket: bucket(rules.rate_limit),
            route_buckets: rules.routes.iter().map(|r| bucket(r.rate_limit)).collect(),
            rules,
        }
    }
}

/// Everything a loop knows of the provider side.
#[derive(Debug)]
pub struct Upstreams {
    /// Provider-agents by key.
    pub table: Slab<Upstream>,
    by_addr: HashMap<SocketAddr, usize>,
    /// Services by name.
    pub services: HashMap<String, Service>,
    /// Traffic rules by service, with this loop's rate-limit buckets (a service may have
    /// rules before it has members).
    pub rules: HashMap<String, LoopRules>,
    algorithm: Algorithm,
    open_scratch: Vec<bool>,
    subset_scratch: Vec<bool>,
    /// Calls in flight to one member at most (`--max-upstream-inflight`).
    max_inflight: u32,
}

/// What a registry update asks the loop to do.
#[derive(Debug, Default)]
pub struct Changes {
    /// Upstreams to connect (new).
    pub connect: Vec<usize>,
    /// Upstreams no service lists any more: they retire (see [`Upstream::retiring`]).
    pub retired: Vec<usize>,
}

impl Upstreams {
    /// An empty table balancing with `algorithm`.
    pub fn new(algorithm: Algorithm) -> Self {
        Upstreams {
            table: Slab::new(),
            by_addr: HashMap::default(),
            services: HashMap::default(),
            rules: HashMap::default(),
            algorithm,
            max_inflight: u32::MAX,
            open_scratch: Vec::new(),
            subset_scratch: Vec::new(),
        }
    }

    /// Applies a service's whole new instance list: linear in its length (hash lookups,
    /// no scan per instance), so a list of thousands stays cheap on every update.
    pub fn update(&mut self, service: &str, instances: &[Instance]) -> Changes {
        let mut changes = Changes::default();
        let mut wanted: Vec<(SocketAddr, &Instance)> = Vec::with_capacity(instances.len());
        let mut listed: HashSet<SocketAddr> = HashSet::with_capacity(instances.len());
        for inst in instances {
            match inst.addr.parse::<SocketAddr>() {
                Ok(a) if listed.insert(a) => wanted.push((a, inst)),
                Ok(_) => {}
                Err(_) => log::warn!("registry: {service}: unusable address {:?}", inst.addr),
            }
        }
        let algorithm = self.algorithm;
        let svc = self
            .services
            .entry(service.to_owned())
            .or_insert_with(|| Service {
                members: Vec::new(),
                balancer: Balancer::new(algorithm),
            });
        // Members that left.
        let mut kept = Vec::with_capacity(svc.members.len());
        for m in svc.members.drain(..) {
            let addr = self.table.get(m.upstream).map(|u| u.addr);
            if addr.is_some_and(|a| listed.contains(&a)) {
                kept.push(m);
            } else if let Some(u) = self.table.get_mut(m.upstream) {
                u.services -= 1;
                if u.services == 0 {
                    u.retiring = true;
                    changes.retired.push(m.upstream);
                }
            }
        }
        svc.members = kept;
        let position: HashMap<usize, usize> = svc
            .members
            .iter()
            .enumerate()
            .map(|(i, m)| (m.upstream, i))
            .collect();
        // Members that joined, and weights, versions and groups that changed.
        for (addr, inst) in wanted {
            let weight = inst.weight;
            let mut variants = inst.variants();
            for v in &mut variants {
                v.version = normalize_version(&v.version).to_owned();
            }
            let key = match self.by_addr.get(&addr) {
                Some(&k) => k,
                None => {
                    let k = self.table.insert(Upstream::new(addr, Protocol::of(inst)));
                    self.by_addr.insert(addr, k);
                    changes.connect.push(k);
                    k
                }
            };
            if let Some(u) = self.table.get_mut(key) {
                u.tls_identity = inst.meta.get(TLS_IDENTITY_META).cloned();
            }
            let labels = rules::labels_of(inst);
            match position.get(&key).and_then(|&i| svc.members.get_mut(i)) {
                Some(m) => {
                    m.stats.weight = weight.max(1);
                    m.variants = variants;
                    m.labels = labels;
                }
                None => {
                    if let Some(u) = self.table.get_mut(key) {
                        u.services += 1;
                        u.retiring = false;
                    }
                    svc.members.push(Member {
                        upstream: key,
                        variants,
                        labels,
                        stats: Stats::new(weight),
                    });
                }
            }
        }
        changes
    }

    /// Caps the calls in flight to one member: at the cap it is passed over.
    pub fn with_max_inflight(mut self, max: u32) -> Self {
        self.max_inflight = max.max(1);
        self
    }

    /// Whether `service` has a member whose connection is open (verified).
    pub fn has_open(&self, service: &str) -> bool {
        self.services.get(service).is_some_and(|svc| {
            svc.members
                .iter()
                .any(|m| self.table.get(m.upstream).is_some_and(|u| u.open))
        })
    }

    /// Whether `service` has open members and every one is at the in-flight cap (so a
    /// failed pick means "busy", not "unreachable").
    pub fn saturated(&self, service: &str) -> bool {
        let Some(svc) = self.services.get(service) else {
            return false;
        };
        let open = |m: &&Member| self.table.get(m.upstream).is_some_and(|u| u.open);
        svc.members.iter().filter(open).count() > 0
            && svc
                .members
                .iter()
                .filter(open)
                .all(|m| m.stats.inflight >= self.max_inflight)
    }

    /// Picks a member of `service` registered with `version` and `group` whose
    /// connection is open and below the in-flight cap, avoiding `exclude` (an upstream
    /// key) unless it is the only one. Returns (member index, upstream key).
    ///
    /// Members ejected at `now` (outlier detection) are passed over. With `route`
    /// (route index, a random draw below its total weight) the pick
    /// stays within the route of the service's rules: the draw names the subset tried
    /// first; if none of it can take the call, the route's other subsets are tried in
    /// order.
    pub fn pick(
        &mut self,
        service: &str,
        version: &str,
        group: &str,
        exclude: Option<usize>,
        route: Option<(usize, u32)>,
        now: std::time::Instant,
    ) -> Option<(usize, usize)> {
        let svc = self.services.get_mut(service)?;
        let table = &self.table;
        let max_inflight = self.max_inflight;
        let version = normalize_version(version);
        // Reused scratch: a pick allocates nothing once warm.
        self.open_scratch.clear();
        self.open_scratch.extend(svc.members.iter().map(|m| {
            m.serves(version, group)
                && m.stats.inflight < max_inflight
                && !m.stats.is_ejected(now)
                && table.get(m.upstream).is_some_and(|u| u.open)
        }));
        let routed = route.and_then(|(r, draw)| {
            let rules = self.rules.get(service)?;
            let r = rules.rules.routes.get(r).filter(|r| !r.to.is_empty())?;
            Some((r, r.destination(draw).unwrap_or(0)))
        });
        let Some((r, first)) = routed else {
            let open = &self.open_scratch;
            let usable = |i: usize| open.get(i).copied().unwrap_or(false);
            let exclude_member =
                exclude.and_then(|e| svc.members.iter().position(|m| m.upstream == e));
            let picked = svc.balancer.pick(&mut svc.members, usable, exclude_member);
            return picked.map(|i| (i, svc.members[i].upstream));
        };
        let n = r.to.len();
        for k in 0..n {
            let dest = &r.to[(first + k) % n];
            if dest.weight == 0 && k > 0 {
                continue;
            }
            // The balancer needs the members mutably: the subset is marked first, in
            // a second reused scratch.
            self.subset_scratch.clear();
            self.subset_scratch.extend(
                svc.members
                    .iter()
                    .zip(&self.open_scratch)
                    .map(|(m, &open)| open && dest.selects_member(&m.labels, &m.variants)),
            );
            if !self.subset_scratch.contains(&true) {
                continue;
            }
            let exclude_member =
                exclude.and_then(|e| svc.members.iter().position(|m| m.upstream == e));
            let selected = &self.subset_scratch;
            let usable = |i: usize| selected.get(i).copied().unwrap_or(false);
            if let Some(i) = svc.balancer.pick(&mut svc.members, usable, exclude_member) {
                return Some((i, svc.members[i].upstream));
            }
        }
        None
    }

    /// After a failure of `upstream` as a member of `service`: ejects it if the
    /// service's outlier rule says so (failures in a row at the threshold, or a success
    /// rate under the rule's over its window; and the share of the pool already ejected
    /// below the limit).
    pub fn eject_if_failing(&mut self, service: &str, upstream: usize, now: std::time::Instant) {
        let Some(o) = self.rules.get(service).and_then(|r| r.rules.outlier) else {
            return;
        };
        let Some(svc) = self.services.get_mut(service) else {
            return;
        };
        let ejected = svc
            .members
            .iter()
            .filter(|m| m.stats.is_ejected(now))
            .count();
        let pool = svc.members.len();
        let Some(m) = svc.members.iter_mut().find(|m| m.upstream == upstream) else {
            return;
        };
        if m.stats.is_ejected(now) {
            return;
        }
        let (calls, failures) = m.stats.recent.last(o.window_secs);
        let Some(why) = o.verdict(m.stats.consecutive_failures, calls, failures) else {
            return;
        };
        // Well for a whole longest ejection since the last one: the next starts short.
        if m.stats
            .ejected_until
            .is_some_and(|t| now.saturating_duration_since(t) > o.max_ejection)
        {
            m.stats.ejections = 0;
        }
        if (ejected + 1) * 100 > o.max_ejected_percent as usize * pool {
            return; // too much of the pool is out already
        }
        let length = o
            .base_ejection
            .saturating_mul(1u32 << m.stats.ejections.min(16))
            .min(o.max_ejection);
        m.stats.ejected_until = Some(now + length);
        m.stats.ejections += 1;
        m.stats.consecutive_failures = 0;
        m.stats.recent.clear();
        if let Some(u) = self.table.get(upstream) {
            log::warn!("{service}: {} ejected for {length:?} ({why})", u.addr);
        }
    }

    /// The version and group a call naming `version` and `group` (wildcards allowed)
    /// reaches on `upstream` as a member of `service`: what an unmeshed provider is
    /// asked for (a provider-agent resolves it itself).
    pub fn variant(
        &self,
        service: &str,
        upstream: usize,
        version: &str,
        group: &str,
    ) -> Option<&Variant> {
        let version = normalize_version(version);
        self.services
            .get(service)?
            .members
            .iter()
            .find(|m| m.upstream == upstream)?
            .variants
            .iter()
            .find(|v| v.matches(version, group))
    }

    /// The balancer stats of `upstream` as a member of `service`.
    pub fn stats(&mut self, service: &str, upstream: usize) -> Option<&mut Stats> {
        self.services
            .get_mut(service)?
            .members
            .iter_mut()
            .find(|m| m.upstream == upstream)
            .map(|m| &mut m.stats)
    }

    /// Forgets a retired upstream; returns it so its connection can be closed.
    pub fn remove(&mut self, key: usize) -> Option<Upstream> {
        let u = self.table.try_remove(key)?;
        self.by_addr.remove(&u.addr);
        Some(u)
    }

    /// The upstream whose connection is `conn`.
    pub fn by_conn(&self, key: usize, conn: ConnId) -> Option<&Upstream> {
        self.table.get(key).filter(|u| u.conn == Some(conn))
    }
}

/// Java sends `0.0.0` for "no version": both mean none.
pub fn normalize_version(v: &str) -> &str {
    if v == "0.0.0" {
        ""
    } else {
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(range: std::ops::Range<u16>) -> Vec<Instance> {
        range
            .map(|p| Instance::new("S", format!("127.0.0.1:{p}")).with_weight(u32::from(p % 7) + 1))
            .collect()
    }

    #[test]
    fn large_lists_join_change_and_leave() {
        let mut ups = Upstreams::new(Algorithm::Adaptive);
        let first = ups.update("S", &list(10_000..20_000));
        assert_eq!(first.connect.len(), 10_000);
        // Half leave, half stay (with new weights), 5,000 join; a duplicate is ignored.
        let mut next = list(15_000..25_000);
        next.push(Instance::new("S", "127.0.0.1:15000"));
        for i in &mut next {
            i.weight += 1;
        }
        let second = ups.update("S", &next);
        assert_eq!(second.connect.len(), 5_000);
        assert_eq!(second.retired.len(), 5_000);
        let svc = &ups.services["S"];
        assert_eq!(svc.members.len(), 10_000);
        let port: u16 = 15_003;
        let kept = svc
            .members
            .iter()
            .find(|m| ups.table[m.upstream].addr.port() == port)
            .expect("a kept member");
        assert_eq!(kept.stats.weight, u32::from(port % 7) + 2);
    }
}
