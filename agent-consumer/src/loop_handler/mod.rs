//! The consumer-agent's loop: HTTP in, agent protocol out, on one thread.
//!
//! A request's life: the HTTP connection's bytes are decoded in place; the call's
//! arguments are encoded as hessian2 into a pooled buffer (kept for a retry); a provider
//! is picked; a REQUEST frame goes into the loop's own connection to it (DEFINE first if
//! the signature is new there); a timer bounds the call. The answer frame finds the call
//! by id, cancels the timer and writes the HTTP response in request order.
//!
//! A call's way through the modules: [`http_front`] reads and prepares it; [`call_core`]
//! names its signature, picks a provider-agent (`crate::lb`, `crate::upstream`) and
//! writes the REQUEST; [`upstream_conns`] reads the answer, which [`call_core`]
//! completes and [`fronts`] hands back to the front-end the call came from
//! ([`http_front`] renders it; [`dubbo_front`] relays the provider's own answer).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use codec::agent::CallTable;
use codec::http::{Limits, RequestDecoder};
use reactor::{CloseReason, Conn, ConnId, ConnMap, Ctx, EndOfInput, Handler, TimerId};
use registry::Instance;
use slab::Slab;

use crate::config::Config;
use crate::discovery::Discovery;
use crate::http_conn::{HttpConn, HttpConns};
use crate::metrics::{LoopMetrics, Outcome};
use crate::rules::Rules;
use crate::upstream::Upstreams;

mod call_core;
mod dubbo_front;
mod dubbo_out;
mod fronts;
mod http_front;
mod observe;
mod rules_apply;
mod tracing;
mod upstream_conns;

use dubbo_front::DubboConn;
use fronts::Origin;

/// What a connection of this loop is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tag {
    /// An HTTP client (the consumer).
    Http,
    /// A Dubbo consumer (`--dubbo-listen`).
    Dubbo,
    /// Our connection to an upstream: a provider-agent, or an unmeshed Dubbo provider
    /// (key into the upstream table).
    Upstream(usize),
}

/// What other threads tell a loop.
#[derive(Debug)]
pub enum LoopMsg {
    /// The registry's whole current list for a service.
    Instances(String, Vec<Instance>),
    /// A service's traffic rules, validated (`None`: it has none).
    Rules(String, Option<Arc<Rules>>),
    /// A successor process accepts on our ports (`--upgrade-from`): the stop that
    /// follows hands the clients over instead of closing on them (see `stopping`);
    /// Dubbo consumers' connections go to it through this.
    HandOver(reactor_admin::upgrade::Handoff),
    /// A connection the process this one replaced handed over (named by its listener).
    Adopt(reactor_admin::upgrade::Arrival),
}

/// How soon a connection whose answers are still being written is tried again for a
/// handover to the successor process.
const HAND_OFF_RETRY: Duration = Duration::from_millis(5);

/// What a loop's timers are for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoopTimer {
    /// A call's timeout, by the call's own id.
    Call(u64),
    /// Periodic, once a second: the loop's housekeeping (`sweep`).
    Sweep,
    /// A stop's drain limit: the loop exits with whatever is still in flight.
    Drain,
    /// Reconnect the provider-agent connection with this upstream key.
    Reconnect(usize),
    /// Hand this client's connection (HTTP or Dubbo) to the successor process, now
    /// that its calls are answered.
    HandOff(ConnId),
    /// Retry this call, refused for capacity, after its backoff
    /// (`call_core::wait_to_retry`).
    Retry(u64),
}

/// One call in flight.
#[derive(Debug)]
struct Call {
    gen: u32,
    /// Which front-end took the call, and where its answer goes.
    origin: Origin,
    /// Loop-wide call id: names the signature (service included) in `signatures`.
    call_id: u32,
    args: Vec<u8>,
    attachments: Vec<(String, String)>,
    /// A Dubbo caller's protocol version (the provider shapes its answer by it).
    dubbo_version: Option<dubbo_front::Version>,
    started: Instant,
    deadline: Instant,
    timer: Option<TimerId>,
    /// Set while the call waits out a retry's backoff (sent nowhere meanwhile).
    retry_timer: Option<TimerId>,
    /// Upstream key it is in flight on, and when it was sent there.
    sent: Option<(usize, Instant)>,
    attempts: u32,
    /// The address of the upstream it was last sent to (the access log's `upstream`).
    upstream: Option<std::net::SocketAddr>,
    /// Bytes of the request as the caller sent it (the access log's `bytes_in`).
    bytes_in: u32,
    /// Its trace (`tracing`), when traced: never without `--otlp-endpoint`. Given
    /// back to the tracer when the call is taken (`take_call`), which leaves its id in
    /// `trace_id` for the access log.
    trace: Option<Box<tracing::CallTrace>>,
    trace_id: Option<[u8; 16]>,
}

/// The route a call took under its service's rules, beside the call (same slab key):
/// resolved at its first dispatch, kept for its retries.
#[derive(Debug, Clone, Copy, Default)]
struct CallRoute {
    /// The call's generation when resolved (a reused key resolves again).
    gen: Option<u32>,
    /// The route's index in the rules in force then.
    route: Option<usize>,
    /// The route's retry budget, in place of `--retries`.
    retries: Option<u32>,
    /// The route's destinations' weights summed (what a split draws below).
    total_weight: u32,
}

/// Buffers kept for reuse so a call allocates nothing in the steady state.
const POOL_MAX: usize = 4096;

/// The per-loop state.
#[derive(Debug)]
pub struct ConsumerLoop {
    config: Arc<Config>,
    metrics: LoopMetrics,
    limits: Limits,
    http: HttpConns,
    upstreams: Upstreams,
    /// Signatures by loop-wide call id (the same id on every upstream connection).
    signatures: CallTable,
    /// Calls in flight per call id: an id with none may be given to a new signature
    /// once the table is full, so clients naming ever new methods cannot fill it.
    signature_uses: Vec<u32>,
    /// The names of each call id's signature as the access log and spans take them
    /// (made at the first call that needs them; forgotten when the id is redefined).
    call_names: Vec<Option<reactor_admin::otlp::CallNames>>,
    /// Names of requests refused before they were calls, for their log lines.
    refused_names: reactor_admin::otlp::NamesCache,
    calls: Slab<Call>,
    next_gen: u32,
    pool: Vec<Vec<u8>>,
    stopping: bool,
    /// The stop is a handover to a successor process: clients' connections go to it
    /// (`handoff`); one that cannot (TLS) is not closed under a request the client may
    /// be sending: its next request is answered with `Connection: close` (or the drain
    /// deadline ends it).
    handing_over: bool,
    /// Handing over: how clients' connections reach the successor.
    handoff: Option<reactor_admin::upgrade::Handoff>,
    /// Watches services from their first call.
    discovery: Arc<Discovery>,
    /// Calls of services being discovered, held until a provider-agent of theirs is
    /// open (see `call_core::hold`).
    held: HashMap<String, Held>,
    /// Dubbo consumers' connections.
    dubbo: ConnMap<DubboConn>,
    /// Where an unmeshed Dubbo provider's answer is turned into the agent RESPONSE a
    /// provider-agent would have sent (reused).
    translated: Vec<u8>,
    /// Per call (by slab key), the route it took (`rules_apply`).
    call_routes: Vec<CallRoute>,
    /// Draws for weighted splits.
    rng: reactor::XorShift,
    /// With `--tls-cert`: the TLS client configuration for provider-agents.
    tls: Option<Arc<crate::tls::ClientTls>>,
    /// Per service and method counters: this loop's table (`observe`).
    methods: reactor_admin::method_stats::MethodTable,
    /// With `--access-log`: where each completed call's line goes (`observe`).
    access_log: Option<reactor_admin::access_log::AccessLog>,
    /// With `--otlp-endpoint`: the loop's tracing (`tracing`).
    tracer: Option<tracing::Tracer>,
}

/// The calls held for one service being discovered.
#[derive(Debug, Default)]
struct Held {
    /// Their ids (some may have completed meanwhile, by timeout or disconnect).
    calls: Vec<u64>,
    /// When the registry's first list for the service arrived.
    listed_at: Option<Instant>,
}

impl ConsumerLoop {
    /// A loop's state.
    pub fn new(config: Arc<Config>, metrics: LoopMetrics, discovery: Arc<Discovery>) -> Self {
        ConsumerLoop {
            limits: Limits {
                max_head: config.max_head,
                max_body: config.max_body,
            },
            upstreams: Upstreams::new(config.lb).with_max_inflight(config.max_upstream_inflight),
            methods: metrics.method_table(),
            access_log: metrics.access_log(),
            tracer: metrics.spans().map(|spans| {
                tracing::Tracer::new(spans, config.trace_sample_rate, config.listen.to_string())
            }),
            config,
            metrics,
            http: HttpConns::default(),
            signatures: CallTable::new(),
            signature_uses: Vec::new(),
            call_names: Vec::new(),
            refused_names: Default::default(),
            calls: Slab::new(),
            next_gen: 0,
            pool: Vec::new(),
            stopping: false,
            handing_over: false,
            handoff: None,
            discovery,
            held: HashMap::new(),
            dubbo: ConnMap::new(),
            translated: Vec::new(),
            call_routes: Vec::new(),
            rng: reactor::XorShift::from_time(),
            tls: None,
        }
    }

    /// Reaches provider-agents over mutual TLS with `tls`'s configuration.
    pub(crate) fn with_tls(mut self, tls: Option<Arc<crate::tls::ClientTls>>) -> Self {
        self.tls = tls;
        self
    }

    fn call_id(key: usize, gen: u32) -> u64 {
        (u64::from(gen) << 32) | key as u64
    }

    fn call_mut(&mut self, id: u64) -> Option<&mut Call> {
        let gen = (id >> 32) as u32;
        self.calls
            .get_mut((id & 0xffff_ffff) as usize)
            .filter(|c| c.gen == gen)
    }

    fn take_buf(&mut self) -> Vec<u8> {
        self.pool.pop().unwrap_or_default()
    }

    fn recycle(&mut self, buf: Vec<u8>) {
        recycle_into(&mut self.pool, buf);
    }
}

impl Handler for ConsumerLoop {
    type Tag = Tag;
    type Msg = LoopMsg;
    type Timer = LoopTimer;

    fn started(&mut self, cx: &mut Ctx<'_, Self>) {
        cx.set_periodic(Duration::from_secs(1), LoopTimer::Sweep);
    }

    fn opened(&mut self, cx: &mut Ctx<'_, Self>, conn: Conn<Tag>) {
        match conn.tag {
            Tag::Http => {
                self.metrics.connection(1);
                let decoder = RequestDecoder::with_limits(self.limits);
                let mut c = HttpConn::new(conn.id, decoder, cx.now());
                c.peer = cx.peer_addr(conn.id);
                if self.access_log.is_some() {
                    c.identity = crate::tls::peer_identity(cx, conn.id);
                }
                self.http.insert(c);
                // Handed over from the process before, as this one hands over to the
                // next: it goes on at once.
                if self.stopping && self.handoff.is_some() {
                    self.hand_on_http(cx, conn.id);
                }
            }
            Tag::Dubbo => {
                self.metrics.connection(1);
                let mut c = DubboConn::default();
                c.peer = cx.peer_addr(conn.id);
                self.dubbo.insert(conn.id, c);
                // Handed over from the process before, as this one hands over to the
                // next: it goes on at once.
                if self.stopping && self.handoff.is_some() {
                    self.hand_on_dubbo(cx, conn.id);
                }
            }
            Tag::Upstream(key) => self.on_upstream_opened(cx, conn.id, key),
        }
    }

    fn data(&mut self, cx: &mut Ctx<'_, Self>, conn: Conn<Tag>, input: &[u8]) -> usize {
        match conn.tag {
            Tag::Http => self.on_http_data(cx, conn.id, input),
            Tag::Dubbo => self.on_dubbo_data(cx, conn.id, input),
            Tag::Upstream(key) => self.on_upstream_data(cx, conn.id, key, input),
        }
    }

    fn end_of_input(&mut self, _cx: &mut Ctx<'_, Self>, conn: Conn<Tag>) -> EndOfInput {
        match conn.tag {
            Tag::Http => self.on_http_end(conn.id),
            Tag::Dubbo => self.on_dubbo_end(conn.id),
            Tag::Upstream(key) => {
                // The upstream finished sending: it answers nothing more, so no
                // new call goes to it (its calls in flight fail when it closes).
                if let Some(up) = self.upstreams.table.get_mut(key) {
                    if up.conn == Some(conn.id) {
                        up.open = false;
                    }
                }
                EndOfInput::Close
            }
        }
    }

    fn drained(&mut self, cx: &mut Ctx<'_, Self>, conn: Conn<Tag>) {
        // An HTTP client read its answers: take its requests again, unless it still has
        // too many in flight (then `deliver` resumes it).
        if let (Tag::Http, Some(c)) = (conn.tag, self.http.get_mut(conn.id)) {
            if c.paused && !c.handing && c.inflight() < self.config.max_pipeline as u64 {
                c.paused = false;
                cx.resume_reading(conn.id);
            }
        }
        if conn.tag == Tag::Dubbo {
            self.on_dubbo_drained(cx, conn.id);
        }
    }

    fn closed(&mut self, cx: &mut Ctx<'_, Self>, conn: Conn<Tag>, reason: CloseReason) {
        match conn.tag {
            Tag::Http => {
                if let Some(mut c) = self.http.remove(conn.id) {
                    self.metrics.connection(-1);
                    for (_, b, _) in c.parked.drain(..) {
                        self.recycle(b);
                    }
                }
                // Calls of a closed client still complete (their answers are dropped).
            }
            Tag::Dubbo => {
                if self.dubbo.remove(conn.id).is_some() {
                    self.metrics.connection(-1);
                }
            }
            Tag::Upstream(key) => self.on_upstream_closed(cx, conn.id, key, &reason),
        }
        if self.stopping && self.calls.is_empty() && self.holds_no_client() {
            cx.exit();
        }
    }

    fn timer(&mut self, cx: &mut Ctx<'_, Self>, _timer: TimerId, timer: LoopTimer) {
        match timer {
            LoopTimer::Sweep => {
                // The per-method table re-ranks its series every so often.
                self.methods.tick(cx.now());
                self.sweep(cx);
            }
            LoopTimer::Drain => {
                log::warn!(
                    "drain deadline passed with {} call(s) in flight",
                    self.calls.len()
                );
                cx.exit();
            }
            LoopTimer::Reconnect(key) => self.connect(cx, key),
            LoopTimer::HandOff(id) => match cx.tag(id) {
                Some(Tag::Http) => self.hand_off_http(cx, id),
                Some(Tag::Dubbo) => self.hand_off_dubbo(cx, id),
                _ => {}
            },
            LoopTimer::Retry(call) => {
                let Some(c) = self.call_mut(call) else { return };
                c.retry_timer = None;
                self.dispatch(cx, call, None);
            }
            LoopTimer::Call(call) => {
                let Some(c) = self.call_mut(call) else { return };
                c.timer = None;
                let (never_sent, call_id) = (c.attempts == 0, c.call_id);
                let sent_to = c.sent.take().map(|(up, _)| up);
                if let Some(up) = sent_to {
                    self.lost_on(call_id, up);
                }
                if never_sent {
                    // Held while its service was being discovered.
                    let service = self.signatures.get(call_id).map_or("", |s| &s.service);
                    let msg = format!(
                        "no provider-agent of {service} was reachable within the call's timeout"
                    );
                    return self.fail(cx, call, Outcome::Unavailable, 503, &msg);
                }
                let msg = "timed out waiting for the provider";
                self.fail(cx, call, Outcome::Timeout, 504, msg);
                // It may have been the last call a retiring provider-agent had.
                if let Some(up) = sent_to {
                    self.remove_if_retired(cx, up);
                }
            }
        }
    }

    fn message(&mut self, cx: &mut Ctx<'_, Self>, msg: LoopMsg) {
        match msg {
            LoopMsg::Instances(service, list) => self.on_instances(cx, &service, &list),
            LoopMsg::Rules(service, rules) => self.on_rules(cx, service, rules),
            LoopMsg::HandOver(handoff) => {
                self.handing_over = true;
                self.handoff = Some(handoff);
            }
            LoopMsg::Adopt(arrival) => {
                let kinds = [
                    (crate::upgrade::HTTP, Tag::Http),
                    (crate::upgrade::DUBBO, Tag::Dubbo),
                ];
                reactor_admin::upgrade::adopt(cx, arrival, &kinds)
            }
        }
    }

    fn stopping(&mut self, cx: &mut Ctx<'_, Self>) {
        self.stopping = true;
        // Handing over, a plaintext client's connection goes to the successor once its
        // answers are out (`hand_on_http`). Any other stays open: closing it could cross
        // a request the client is sending. Its next request is answered with
        // `Connection: close` (keep-alive is off while stopping), then it closes.
        if self.handoff.is_some() {
            let ids: Vec<ConnId> = self.http.iter().map(|c| c.id).collect();
            for id in ids {
                self.hand_on_http(cx, id);
            }
        }
        let idle: Vec<ConnId> = self
            .http
            .iter()
            .filter(|c| c.inflight() == 0 && !self.handing_over)
            .map(|c| c.id)
            .collect();
        for id in idle {
            cx.close(id);
        }
        self.stop_dubbo_consumers(cx);
        if self.calls.is_empty() && self.holds_no_client() {
            cx.exit();
        } else {
            cx.set_timer(self.config.drain(), LoopTimer::Drain);
        }
    }
}

impl ConsumerLoop {
    /// Whether a stop may end the loop as far as clients go: always, unless handing
    /// over, when every client connection must have closed first.
    fn holds_no_client(&self) -> bool {
        !self.handing_over || (self.http.iter().next().is_none() && self.dubbo.is_empty())
    }
}

/// Returns a buffer to the pool (bounded, and not the rare huge ones).
fn recycle_into(pool: &mut Vec<Vec<u8>>, mut buf: Vec<u8>) {
    if pool.len() < POOL_MAX && buf.capacity() <= 64 * 1024 {
        buf.clear();
        pool.push(buf);
    }
}
