//! The reactor handler of one loop: agent connections in, provider connections out.
//!
//! Both kinds of connection live on the same loop (dispatched by [`Tag`]), so a call goes
//! from an agent frame to a Dubbo frame and back without a lock or a thread hop. Frames
//! are decoded straight from the loop's input buffer and encoded straight into the
//! destination connection's output; the reactor flushes each connection once per
//! iteration, so a burst of calls leaves in one write.
//!
//! A call's way through the modules: [`agent_conns`] reads the consumer-agent's
//! frames; [`translate`] checks the call is served, asks [`crate::admission`], and
//! writes the Dubbo request on a connection of [`provider_conns`]; the provider's answer
//! comes back through [`provider_conns`] and [`translate`] writes the agent RESPONSE.
//!
//! With `--dubbo-listen`, unmeshed Dubbo consumers' connections live on the same loops:
//! [`dubbo_front`] reads their frames, checks each call the same way (served, admitted)
//! and relays it to a provider connection as it is but for its id; the provider's answer
//! goes back to the consumer the same way. Both kinds of caller share the provider
//! connections, the pending calls, `--max-inflight` and the drain.
//!
//! With `--authz`, both check each call against the loop's [`Policy`] after the
//! served-services check and before admission ([`crate::authz`]): a call the peer may
//! not make is refused FORBIDDEN (Dubbo: SERVICE_ERROR) and never reaches the provider.
//! A reloaded policy arrives as a [`LoopMsg::Policy`].

use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use codec::agent::{CallTable, Signature, Status};
use codec::dubbo::Serialization;
use crossbeam_channel::Sender;
use reactor::{CloseReason, Conn, ConnId, Ctx, EndOfInput, Handler};
use registry::Variant;

use crate::admission::{Demand, LoopAdmission, Published};
use crate::authz::{PeerCache, Policy};
use crate::metrics::Metrics;
use crate::upstream::Upstream;
use crate::Event;

mod agent_conns;
mod dubbo_front;
mod observe;
mod provider_conns;
mod templates;
mod tracing;
mod translate;

pub(crate) use tracing::CallTrace;

use dubbo_front::DubboConn;

/// Which side a connection is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tag {
    /// An accepted agent-protocol connection (from a consumer-agent).
    Agent,
    /// An accepted Dubbo connection from an unmeshed Dubbo consumer (`--dubbo-listen`).
    Dubbo,
    /// An outbound Dubbo connection to the provider: its slot in the loop's pool.
    Provider(usize),
}

/// What other threads tell a loop.
#[derive(Debug)]
pub enum LoopMsg {
    /// Open the provider connections (sent once, right after the loop starts: the loop
    /// needs a [`Ctx`] to connect, and no callback runs before its first event).
    Start,
    /// The authorization policy changed (`--authz` reloaded): it applies to the next
    /// call of every connection.
    Policy(Arc<Policy>),
    /// A successor process accepts on our port (`--upgrade-from`): the stop that
    /// follows hands the consumers over instead of closing on them (GOAWAY, see
    /// `agent_conns::hand_over`); Dubbo consumers' connections go to it through this.
    HandOver(reactor_admin::upgrade::Handoff),
    /// A connection the process this one replaced handed over (named by its listener).
    Adopt(reactor_admin::upgrade::Arrival),
}

/// What a loop's timers are for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoopTimer {
    /// A call's timeout, by the call's Dubbo id.
    Call(u64),
    /// Periodic: heartbeat the provider connections.
    Heartbeat,
    /// A stop's drain limit: calls still in flight then time out and the loop exits.
    Drain,
    /// Reconnect the provider connection in this slot.
    Reconnect(usize),
    /// Periodic: close consumer connections idle too long.
    Idle,
    /// The end of a stop's grace period (see [`STOP_GRACE`]).
    Grace,
    /// Periodic: the admission window rolls over.
    Admission,
}

/// How long a connection's demand for the budget is remembered: this window and the
/// next (see [`crate::admission`]).
const ADMISSION_WINDOW: Duration = Duration::from_secs(1);
/// After a stop begins (and the registry entry is gone), a loop keeps answering for at
/// least this long, new calls as UNAVAILABLE, which consumer-agents retry elsewhere:
/// one that has not yet seen the deregistration (the file registry is polled every
/// 50 ms, etcd pushes) gets an answer, not a connection closed under its request.
const STOP_GRACE: Duration = Duration::from_millis(300);

/// Settings every loop shares.
#[derive(Debug)]
pub(crate) struct LoopConfig {
    pub(crate) provider: SocketAddr,
    pub(crate) serialization: Serialization,
    pub(crate) dubbo_version: String,
    /// The agent's whole configuration (limits, timeouts).
    pub(crate) agent: crate::config::Config,
    /// The services served, each with its versions and groups (`--service`).
    pub(crate) services: Vec<(String, Vec<Variant>)>,
    pub(crate) provider_conns: usize,
    pub(crate) heartbeat: Duration,
    pub(crate) drain: Duration,
    /// Each loop's connections competing for `--max-inflight`.
    pub(crate) admission: Arc<Published>,
    /// The authorization policy at the start (`--authz`; `None`: every peer may call).
    pub(crate) policy: Option<Arc<Policy>>,
}

impl LoopConfig {
    /// The version and group the provider is asked for, or `None` if this agent does
    /// not serve the call's service, version and group (its `--service` list): nothing
    /// else reaches the provider. Dubbo's wildcard `*` takes the first served variant
    /// that matches the rest. Resolved per call (a short scan of a list of a few), so
    /// the call table keeps what the consumer sent and counts the bytes it counts.
    fn served<'a>(&'a self, sig: &Signature) -> Option<&'a Variant> {
        self.served_by(&sig.service, &sig.version, &sig.group)
    }

    /// [`LoopConfig::served`] by the service, version and group a call names.
    fn served_by<'a>(&'a self, service: &str, version: &str, group: &str) -> Option<&'a Variant> {
        let (_, variants) = self.services.iter().find(|(s, _)| *s == service)?;
        variants.iter().find(|v| v.matches(version, group))
    }
}

/// State of one accepted connection: a consumer-agent's, or a Dubbo consumer's.
#[derive(Debug)]
struct Inbound {
    id: ConnId,
    /// The signatures a consumer-agent DEFINEd (empty, and never allocated, for a
    /// Dubbo consumer).
    calls: CallTable,
    /// When it last sent anything (for `--idle-timeout-secs`).
    last_active: Instant,
    /// The consumer finished sending (half-close): close once its calls are answered.
    input_ended: bool,
    /// The consumer-agent announced it understands GOAWAY (its PING's id).
    goaway_capable: bool,
    /// A Dubbo consumer's connection (`Tag::Dubbo`): its reading state.
    dubbo: Option<DubboConn>,
    /// Who the peer is, as its TLS handshake proved it: the certificate's URI SAN (a
    /// SPIFFE ID), else `dns:` and its DNS SAN; `None` for a peer without one (a
    /// plaintext connection: every connection until TLS sets it). The authorization
    /// policy decides by it: change it with [`Inbound::set_peer_identity`].
    peer_identity: Option<Arc<str>>,
    /// The authorization policy as it applies to this peer.
    authz: PeerCache,
    /// The peer's address (the access log's `caller`), read once at accept.
    peer: Option<SocketAddr>,
    /// The names of its call ids lately called, for the access log and spans.
    names: observe::IdNames,
}

impl Inbound {
    /// Sets who the peer is (its TLS handshake finished): the policy decides its calls
    /// again.
    #[allow(dead_code)] // For the TLS handshake, which proves peers' identities.
    fn set_peer_identity(&mut self, identity: Option<Arc<str>>) {
        self.peer_identity = identity;
        self.authz.invalidate();
    }
}

/// One loop's handler.
#[derive(Debug)]
pub(crate) struct ProviderLoop {
    index: usize,
    cfg: Arc<LoopConfig>,
    /// `--max-inflight`: calls in flight to the provider, all loops together.
    max_inflight: usize,
    /// Fair shares of `max_inflight` between connections.
    admission: LoopAdmission,
    metrics: Metrics,
    events: Sender<Event>,
    upstream: Upstream,
    /// Agent connections by slot index.
    inbound: Vec<Option<Inbound>>,
    /// Each agent connection's recent demand for the budget, by slot index.
    demand: Vec<Demand>,
    /// Provider state last reported to the control thread.
    reported_up: bool,
    draining: bool,
    /// The stop is a handover to a successor process: consumers are sent GOAWAY and
    /// the loop exits once they closed (or at the drain deadline).
    handing_over: bool,
    /// Handing over: how Dubbo consumers' connections reach the successor.
    handoff: Option<reactor_admin::upgrade::Handoff>,
    /// While stopping: the loop does not exit before this.
    exit_not_before: Option<Instant>,
    heartbeat_seq: i64,
    /// The last timeout rendered as an attachment value (timeouts are nearly always equal).
    timeout_text: (u32, String),
    /// The names of Dubbo consumers' calls lately observed (`--dubbo-listen`).
    dubbo_names: reactor_admin::otlp::NamesCache,
    /// The allocation of the last request's attachments, for the next
    /// (`translate::reuse_pairs`).
    spare_pairs: translate::Pairs<'static>,
    /// The authorization policy in force (`None`: no `--authz`, every peer may call).
    policy: Option<Arc<Policy>>,
    /// Per service and method counters: this loop's table (`observe`).
    methods: reactor_admin::method_stats::MethodTable,
    /// With `--access-log`: where each call's line goes (`observe`).
    access_log: Option<reactor_admin::access_log::AccessLog>,
    /// What is observed of the call being taken, from its arrival until it is sent to
    /// the provider (then its pending call keeps it) or refused (`observe`).
    arriving: Option<crate::upstream::Observed>,
    /// With `--otlp-endpoint`: the loop's tracing (`tracing`).
    tracer: Option<tracing::Tracer>,
    /// The fixed parts of the requests of the methods called lately (`templates`).
    templates: templates::Templates,
}

impl ProviderLoop {
    pub(crate) fn new(
        index: usize,
        cfg: Arc<LoopConfig>,
        metrics: Metrics,
        events: Sender<Event>,
    ) -> Self {
        let max_inflight = cfg.agent.max_inflight.max(1);
        let now = Instant::now();
        let upstream = Upstream::new(cfg.provider_conns, now);
        let policy = cfg.policy.clone();
        let (methods, access_log) = (metrics.method_table(index), metrics.access_log());
        let tracer = metrics.spans().map(|spans| {
            let instance = cfg.agent.listen.to_string();
            tracing::Tracer::new(spans, cfg.agent.trace_sample_rate, instance)
        });
        ProviderLoop {
            admission: LoopAdmission::new(index, cfg.admission.clone()),
            index,
            cfg,
            max_inflight,
            metrics,
            events,
            upstream,
            inbound: Vec::new(),
            demand: Vec::new(),
            reported_up: false,
            draining: false,
            handing_over: false,
            handoff: None,
            exit_not_before: None,
            heartbeat_seq: 0,
            timeout_text: (0, String::new()),
            dubbo_names: Default::default(),
            spare_pairs: Vec::new(),
            templates: templates::Templates::default(),
            policy,
            methods,
            access_log,
            arriving: None,
            tracer,
        }
    }

    /// An inbound connection is gone (closed, or handed to a successor process).
    fn forget_inbound(&mut self, id: ConnId, dubbo: bool) {
        if let Some(slot) = self.inbound.get_mut(id.index()) {
            if slot.as_ref().is_some_and(|i| i.id == id) {
                if dubbo {
                    self.metrics
                        .for_loop(self.index)
                        .dubbo_connections
                        .fetch_sub(1, Relaxed);
                }
                *slot = None;
                if let Some(d) = self.demand.get_mut(id.index()) {
                    self.admission.forget(std::mem::take(d));
                }
            }
        }
    }

    fn m(&self) -> &crate::metrics::LoopMetrics {
        self.metrics.for_loop(self.index)
    }
}

impl Handler for ProviderLoop {
    type Tag = Tag;
    type Msg = LoopMsg;
    type Timer = LoopTimer;

    fn opened(&mut self, cx: &mut Ctx<'_, Self>, conn: Conn<Tag>) {
        match conn.tag {
            Tag::Agent | Tag::Dubbo => {
                let dubbo = conn.tag == Tag::Dubbo;
                // Handed over from the process before, as this one hands over to the next.
                let passing_on = dubbo && self.draining && self.handoff.is_some();
                if passing_on {
                    cx.pause_reading(conn.id);
                }
                if dubbo {
                    self.m().dubbo_connections.fetch_add(1, Relaxed);
                }
                let peer_identity = crate::tls::peer_identity(cx, conn.id);
                if let Some(p) = &peer_identity {
                    log::debug!("loop {}: agent connection from {p}", self.index);
                }
                let i = conn.id.index();
                if self.inbound.len() <= i {
                    self.inbound.resize_with(i + 1, || None);
                    self.demand.resize(i + 1, Demand::default());
                }
                if let Some(slot) = self.inbound.get_mut(i) {
                    *slot = Some(Inbound {
                        id: conn.id,
                        calls: CallTable::new(),
                        last_active: cx.now(),
                        input_ended: false,
                        goaway_capable: false,
                        dubbo: dubbo.then(|| {
                            if passing_on {
                                DubboConn::handed_on()
                            } else {
                                DubboConn::default()
                            }
                        }),
                        peer_identity,
                        authz: PeerCache::default(),
                        peer: cx.peer_addr(conn.id),
                        names: observe::IdNames::default(),
                    });
                }
            }
            Tag::Provider(slot) => self.provider_opened(cx, slot, conn.id),
        }
    }

    fn data(&mut self, cx: &mut Ctx<'_, Self>, conn: Conn<Tag>, input: &[u8]) -> usize {
        match conn.tag {
            Tag::Agent => self.agent_data(cx, conn.id, input),
            Tag::Dubbo => self.dubbo_data(cx, conn.id, input),
            Tag::Provider(slot) => self.provider_data(cx, slot, conn.id, input),
        }
    }

    fn end_of_input(&mut self, _cx: &mut Ctx<'_, Self>, conn: Conn<Tag>) -> EndOfInput {
        // A consumer that sends its calls and then FIN still gets every answer: the
        // connection stays open for writing until the last one is out.
        let inbound = matches!(conn.tag, Tag::Agent | Tag::Dubbo);
        if inbound && self.upstream.inflight_on(conn.id) > 0 {
            if let Some(inb) = self.inbound_mut(conn.id) {
                inb.input_ended = true;
                return EndOfInput::KeepOpen;
            }
        }
        EndOfInput::Close
    }

    fn drained(&mut self, cx: &mut Ctx<'_, Self>, conn: Conn<Tag>) {
        match conn.tag {
            Tag::Agent => cx.resume_reading(conn.id),
            Tag::Dubbo => self.dubbo_drained(cx, conn.id),
            Tag::Provider(_) => {}
        }
    }

    fn closed(&mut self, cx: &mut Ctx<'_, Self>, conn: Conn<Tag>, reason: CloseReason) {
        match conn.tag {
            Tag::Agent | Tag::Dubbo => self.forget_inbound(conn.id, conn.tag == Tag::Dubbo),
            Tag::Provider(slot) => self.provider_closed(cx, slot, conn.id, &reason),
        }
    }

    fn timer(&mut self, cx: &mut Ctx<'_, Self>, _timer: reactor::TimerId, timer: LoopTimer) {
        match timer {
            LoopTimer::Heartbeat => self.heartbeat(cx),
            LoopTimer::Admission => {
                // The per-method table re-ranks its series every so often.
                self.methods.tick(cx.now());
                self.m()
                    .tls_handshake_failures
                    .store(crate::tls::handshake_failures(cx), Relaxed);
                let upstream = &self.upstream;
                let open = self.inbound.iter().zip(self.demand.iter_mut());
                self.admission.roll(open.filter_map(|(inb, d)| {
                    let inb = inb.as_ref()?;
                    Some((d, upstream.inflight_on(inb.id)))
                }));
            }
            LoopTimer::Idle => self.close_idle(cx),
            LoopTimer::Grace => {
                // Nothing to do: `tick`, right after, exits if nothing is in flight.
            }
            LoopTimer::Drain => {
                for p in self.upstream.take_all() {
                    self.finish_call(
                        cx,
                        p,
                        Status::Timeout,
                        b"provider-agent stopped before the provider answered",
                    );
                }
                cx.exit();
            }
            LoopTimer::Reconnect(slot) => {
                if let Some(c) = self.upstream.conns.get_mut(slot) {
                    c.reconnect = None;
                    if c.id.is_none() {
                        self.connect(cx, slot);
                    }
                }
            }
            LoopTimer::Call(dubbo_id) => {
                if let Some(mut p) = self.upstream.take(dubbo_id) {
                    p.timer = None; // fired
                    let msg = format!("provider did not answer in time (dubbo id {dubbo_id:#x})");
                    self.finish_call(cx, p, Status::Timeout, msg.as_bytes());
                }
            }
        }
    }

    fn message(&mut self, cx: &mut Ctx<'_, Self>, msg: LoopMsg) {
        match msg {
            LoopMsg::Start => {
                for slot in 0..self.upstream.conns.len() {
                    if self
                        .upstream
                        .conns
                        .get(slot)
                        .is_some_and(|c| c.id.is_none())
                    {
                        self.connect(cx, slot);
                    }
                }
                let every = (self.cfg.heartbeat / 3).max(Duration::from_millis(100));
                cx.set_periodic(every, LoopTimer::Heartbeat);
                cx.set_periodic(ADMISSION_WINDOW, LoopTimer::Admission);
                if let Some(idle) = self.cfg.agent.idle_timeout() {
                    let every =
                        (idle / 4).clamp(Duration::from_millis(100), Duration::from_secs(5));
                    cx.set_periodic(every, LoopTimer::Idle);
                }
            }
            LoopMsg::Policy(policy) => {
                log::debug!(
                    "loop {}: authorization policy of {} rule(s) in force",
                    self.index,
                    policy.rules()
                );
                self.policy = Some(policy);
            }
            LoopMsg::HandOver(handoff) => {
                self.handing_over = true;
                self.handoff = Some(handoff);
            }
            LoopMsg::Adopt(arrival) => {
                reactor_admin::upgrade::adopt(cx, arrival, &[(crate::upgrade::DUBBO, Tag::Dubbo)])
            }
        }
    }

    fn tick(&mut self, cx: &mut Ctx<'_, Self>) {
        let inflight = self.upstream.inflight();
        self.m().inflight.store(inflight as i64, Relaxed);
        self.admission.publish();
        let grace_over = self.exit_not_before.is_some_and(|t| cx.now() >= t);
        if self.draining && self.handing_over {
            self.hand_over_idle(cx);
            if self.inbound.iter().all(Option::is_none) && inflight == 0 {
                cx.exit();
            }
        } else if self.draining && inflight == 0 && grace_over {
            cx.exit();
        }
    }

    fn stopping(&mut self, cx: &mut Ctx<'_, Self>) {
        self.draining = true;
        self.stop_dubbo_consumers(cx);
        if self.handing_over {
            self.hand_over(cx);
            cx.set_timer(self.cfg.drain, LoopTimer::Drain);
            return;
        }
        self.exit_not_before = Some(cx.now() + STOP_GRACE);
        cx.set_timer(STOP_GRACE, LoopTimer::Grace);
        if self.upstream.inflight() > 0 {
            log::info!(
                "loop {}: draining {} calls",
                self.index,
                self.upstream.inflight()
            );
            cx.set_timer(self.cfg.drain, LoopTimer::Drain);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(services: &[&str]) -> LoopConfig {
        let agent = crate::Config::new(
            "127.0.0.1:20880".parse().unwrap(),
            services.iter().map(|s| s.to_string()).collect(),
        );
        LoopConfig {
            provider: agent.provider,
            serialization: Serialization::Hessian2,
            dubbo_version: "2.0.2".into(),
            services: agent.service_variants().unwrap(),
            provider_conns: 1,
            heartbeat: Duration::from_secs(30),
            drain: Duration::from_secs(5),
            admission: Published::new(1),
            policy: None,
            agent,
        }
    }

    fn sig(service: &str, version: &str, group: &str) -> Signature {
        Signature {
            service: service.into(),
            method: "m".into(),
            version: version.into(),
            group: group.into(),
            ..Signature::default()
        }
    }

    #[test]
    fn only_served_services_versions_and_groups_are_called() {
        let cfg = config(&["a.Svc", "blue/a.Svc:2.0", "b.Other:1.0"]);
        let served = |s, v, g| {
            cfg.served(&sig(s, v, g))
                .map(|v| (v.version.as_str(), v.group.as_str()))
        };
        assert_eq!(served("a.Svc", "", ""), Some(("", "")));
        assert_eq!(served("a.Svc", "2.0", "blue"), Some(("2.0", "blue")));
        assert_eq!(served("b.Other", "1.0", ""), Some(("1.0", "")));
        // Dubbo's wildcard takes the first served variant that matches the rest.
        assert_eq!(served("a.Svc", "*", "blue"), Some(("2.0", "blue")));
        assert_eq!(served("a.Svc", "*", "*"), Some(("", "")));
        for (s, v, g) in [
            ("com.evil.Admin", "", ""),
            ("a.Svc", "2.0", ""),
            ("a.Svc", "", "blue"),
            ("b.Other", "", ""),
            ("b.Other", "*", "green"),
        ] {
            assert_eq!(served(s, v, g), None, "{s} {v:?} {g:?}");
        }
    }
}
