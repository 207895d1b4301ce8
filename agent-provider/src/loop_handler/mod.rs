//! The reactor handler of one loop: agent connections in, provider connections out.
//!
//! Both kinds of connection live on the same loop (dispatched by [`Tag`]), so a call goes
//! from an agent frame to a Dubbo frame and back without a lock or a thread hop. Frames
//! are decoded straight from the loop's input buffer and encoded straight into the
//! destination connection's output; the reactor flushes each connection once per
//! iteration, so a burst of calls leaves in one write.

use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use codec::agent::{self, CallTable, Frame, Signature, Status};
use codec::dubbo::{self, Outcome, Serialization};
use codec::hessian2::{exception_summary, Encoder, Value};
use codec::Decoded;
use crossbeam_channel::Sender;
use reactor::{CloseReason, Conn, ConnId, Ctx, EndOfInput, Handler};
use registry::Variant;

use crate::admission::{Demand, LoopAdmission, Published, Refusal};
use crate::metrics::Metrics;
use crate::upstream::{Pending, Upstream};
use crate::Event;

/// Which side a connection is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tag {
    /// An accepted agent-protocol connection (from a consumer-agent).
    Agent,
    /// An outbound Dubbo connection to the provider: its slot in the loop's pool.
    Provider(usize),
}

/// What other threads tell a loop.
#[derive(Debug)]
pub enum LoopMsg {
    /// Open the provider connections (sent once, right after the loop starts: the loop
    /// needs a [`Ctx`] to connect, and no callback runs before its first event).
    Start,
}

/// Timeout used when a request carries none (0).
const DEFAULT_CALL_TIMEOUT_MS: u32 = 30_000;
/// The longest timeout a consumer-agent may ask for: a call that never comes back holds
/// a slot of the in-flight budget until then.
const MAX_CALL_TIMEOUT_MS: u32 = 10 * 60 * 1000;

/// A call's answer value: decoded (encoded as hessian2 on the way out), or hessian2
/// bytes as the provider wrote them.
#[derive(Debug, Clone, Copy)]
enum Payload<'a> {
    Value(&'a Value),
    Encoded(&'a [u8]),
}

/// The agent status for a Dubbo error status: timeouts as TIMEOUT, a request the
/// provider could not decode as BAD_REQUEST, a service it does not export as
/// UNAVAILABLE (the call did not start: another provider may have it); the rest as
/// PROVIDER_ERROR (it may have run).
fn agent_status_of(dubbo_status: u8) -> Status {
    match dubbo_status {
        dubbo::status::CLIENT_TIMEOUT | dubbo::status::SERVER_TIMEOUT => Status::Timeout,
        dubbo::status::BAD_REQUEST => Status::BadRequest,
        dubbo::status::SERVICE_NOT_FOUND => Status::Unavailable,
        _ => Status::ProviderError,
    }
}
/// Bound on one provider connect attempt.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// Timer tokens: call timeouts use the call's Dubbo id (bit 63 clear); the loop's own
/// timers set bit 63.
const TOKEN_OWN: u64 = 1 << 63;
const TOKEN_HEARTBEAT: u64 = TOKEN_OWN | 1 << 62;
const TOKEN_DRAIN: u64 = TOKEN_OWN | 1 << 61;
const TOKEN_RECONNECT: u64 = TOKEN_OWN; // | slot
const TOKEN_IDLE: u64 = TOKEN_OWN | 1 << 60;
const TOKEN_GRACE: u64 = TOKEN_OWN | 1 << 59;
const TOKEN_ADMISSION: u64 = TOKEN_OWN | 1 << 58;
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
}

impl LoopConfig {
    /// The version and group the provider is asked for, or `None` if this agent does
    /// not serve the call's service, version and group (its `--service` list): nothing
    /// else reaches the provider. Dubbo's wildcard `*` takes the first served variant
    /// that matches the rest. Resolved per call (a short scan of a list of a few), so
    /// the call table keeps what the consumer sent and counts the bytes it counts.
    fn served<'a>(&'a self, sig: &Signature) -> Option<&'a Variant> {
        let (_, variants) = self.services.iter().find(|(s, _)| *s == sig.service)?;
        variants
            .iter()
            .find(|v| v.matches(&sig.version, &sig.group))
    }
}

/// State of one accepted agent connection.
#[derive(Debug)]
struct Inbound {
    id: ConnId,
    calls: CallTable,
    /// When it last sent anything (for `--idle-timeout-secs`).
    last_active: Instant,
    /// The consumer finished sending (half-close): close once its calls are answered.
    input_ended: bool,
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
    /// While stopping: the loop does not exit before this.
    exit_not_before: Option<Instant>,
    heartbeat_seq: i64,
    /// The last timeout rendered as an attachment value (timeouts are nearly always equal).
    timeout_text: (u32, String),
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
            exit_not_before: None,
            heartbeat_seq: 0,
            timeout_text: (0, String::new()),
        }
    }

    fn m(&self) -> &crate::metrics::LoopMetrics {
        self.metrics.for_loop(self.index)
    }

    // ---------------------------------------------------------------- provider side

    fn connect(&mut self, cx: &mut Ctx<'_, Self>, slot: usize) {
        if self.draining {
            return;
        }
        let addr = self.cfg.provider;
        match cx.connect(addr, Tag::Provider(slot), Some(CONNECT_TIMEOUT)) {
            Ok(id) => {
                if let Some(c) = self.upstream.conns.get_mut(slot) {
                    c.id = Some(id);
                }
            }
            Err(e) => {
                log::warn!("loop {}: connect to provider {addr}: {e}", self.index);
                self.schedule_reconnect(cx, slot);
            }
        }
    }

    fn schedule_reconnect(&mut self, cx: &mut Ctx<'_, Self>, slot: usize) {
        if self.draining {
            return;
        }
        if let Some(c) = self.upstream.conns.get_mut(slot) {
            if c.reconnect.is_none() {
                let delay = c.backoff.next_delay();
                c.reconnect = Some(cx.set_timer(delay, TOKEN_RECONNECT | slot as u64));
            }
        }
    }

    /// Tells the control thread when this loop's provider state changes.
    fn report(&mut self) {
        let up = self.upstream.any_open();
        if up != self.reported_up {
            self.reported_up = up;
            let ev = if up {
                Event::ProviderUp(self.index)
            } else {
                Event::ProviderDown(self.index)
            };
            let _ = self.events.send(ev);
        }
    }

    fn provider_opened(&mut self, cx: &mut Ctx<'_, Self>, slot: usize, id: ConnId) {
        let now = cx.now();
        let Some(c) = self.upstream.conns.get_mut(slot) else {
            return;
        };
        if c.id != Some(id) {
            return;
        }
        c.open = true;
        c.readonly = false;
        c.backoff.reset();
        c.last_read = now;
        c.last_write = now;
        log::info!(
            "loop {}: provider connection {slot} to {} up",
            self.index,
            self.cfg.provider
        );
        self.m().provider_conns_up.fetch_add(1, Relaxed);
        self.m().provider_connects.fetch_add(1, Relaxed);
        self.report();
    }

    fn provider_closed(
        &mut self,
        cx: &mut Ctx<'_, Self>,
        slot: usize,
        id: ConnId,
        reason: &CloseReason,
    ) {
        let Some(c) = self.upstream.conns.get_mut(slot) else {
            return;
        };
        if c.id != Some(id) {
            return;
        }
        let was_open = c.open;
        c.id = None;
        c.open = false;
        c.readonly = false;
        if was_open {
            log::warn!(
                "loop {}: provider connection {slot} lost: {reason:?}",
                self.index
            );
            self.m().provider_conns_up.fetch_sub(1, Relaxed);
        } else {
            log::debug!("loop {}: provider connect failed: {reason:?}", self.index);
        }
        // These calls were written to the provider, which may have run them: not
        // UNAVAILABLE (which promises the call did not start, and is retried elsewhere).
        for p in self.upstream.take_on_conn(slot) {
            self.finish_call(
                cx,
                p,
                Status::ProviderError,
                b"provider connection lost with the call in flight; it may have run",
            );
        }
        self.schedule_reconnect(cx, slot);
        self.report();
    }

    fn provider_data(
        &mut self,
        cx: &mut Ctx<'_, Self>,
        slot: usize,
        id: ConnId,
        input: &[u8],
    ) -> usize {
        let now = cx.now();
        if let Some(c) = self.upstream.conns.get_mut(slot) {
            c.last_read = now;
        }
        let mut pos = 0;
        while let Some(rest) = input.get(pos..) {
            match dubbo::decode_frame(rest) {
                Ok(Decoded::Incomplete) => break,
                Ok(Decoded::Complete {
                    msg: frame,
                    consumed,
                }) => {
                    pos += consumed;
                    self.provider_frame(cx, slot, id, &frame);
                }
                Err(e) => {
                    log::warn!(
                        "loop {}: bad frame from provider: {e}; reconnecting",
                        self.index
                    );
                    cx.abort(id);
                    return input.len();
                }
            }
        }
        pos
    }

    fn provider_frame(
        &mut self,
        cx: &mut Ctx<'_, Self>,
        slot: usize,
        id: ConnId,
        frame: &dubbo::Frame<'_>,
    ) {
        if frame.is_event() {
            // Java sends its read-only event one-way; a two-way one gets the reply an
            // event request asks for, and is acted on all the same.
            let readonly = matches!(frame.body, b"\x01R" | b"\"R\"\n" | b"\"R\"");
            let answered = frame.is_request() && frame.is_two_way();
            if answered {
                if let Some(out) = cx.output(id) {
                    dubbo::encode_heartbeat_reply(out, frame.id());
                }
                if let Some(c) = self.upstream.conns.get_mut(slot) {
                    c.last_write = cx.now();
                }
            }
            if readonly {
                log::info!(
                    "loop {}: provider connection {slot} is read-only (provider shutting down)",
                    self.index
                );
                if let Some(c) = self.upstream.conns.get_mut(slot) {
                    c.readonly = true;
                }
                self.report();
            } else if !answered && !frame.is_heartbeat() {
                log::info!(
                    "loop {}: provider event {:?}",
                    self.index,
                    String::from_utf8_lossy(frame.body)
                );
            }
            return;
        }
        if frame.is_request() {
            log::debug!("loop {}: ignoring a request from the provider", self.index);
            return;
        }
        let dubbo_id = frame.id() as u64;
        let Some(p) = self.upstream.take(dubbo_id) else {
            log::debug!(
                "loop {}: dropping response to unknown dubbo id {dubbo_id:#x}",
                self.index
            );
            return;
        };
        if let Some(t) = p.timer {
            cx.cancel_timer(t);
        }
        self.m()
            .latency(cx.now().saturating_duration_since(p.started));
        if frame.status() == dubbo::status::SERVER_THREADPOOL_EXHAUSTED {
            let text = match dubbo::decode_response_body(
                frame.serialization_id(),
                frame.status(),
                frame.body,
            ) {
                Ok(dubbo::Response {
                    outcome: Outcome::Error { message, .. },
                    ..
                }) if !message.is_empty() => message,
                _ => "provider thread pool exhausted".to_owned(),
            };
            self.finish_call(cx, p, Status::Overloaded, text.as_bytes());
            return;
        }
        match dubbo::decode_response_body(frame.serialization_id(), frame.status(), frame.body) {
            Ok(resp) => {
                // Empty in the common case: then nothing is allocated here.
                let owned = response_attachments(resp.attachments);
                let att: Vec<(&str, &str)> = owned
                    .iter()
                    .map(|(k, v)| (k.as_str(), v.as_str()))
                    .collect();
                match resp.outcome {
                    // A hessian2 result goes on as the provider wrote it (no encoding
                    // again, and its back-references stay as numbered).
                    Outcome::Value(v) => {
                        let raw = resp.value_span.and_then(|r| frame.body.get(r));
                        let payload = raw.map_or(Payload::Value(&v), Payload::Encoded);
                        self.finish_value(cx, p, Status::Ok, payload, &att)
                    }
                    Outcome::Null => {
                        self.finish_value(cx, p, Status::Ok, Payload::Value(&Value::Null), &att)
                    }
                    Outcome::Exception { value, .. } => self.finish_value(
                        cx,
                        p,
                        Status::Exception,
                        Payload::Value(&exception_summary(&value)),
                        &att,
                    ),
                    Outcome::Error { status, message } => {
                        let text = if message.is_empty() {
                            format!("provider answered dubbo status {status}")
                        } else {
                            message
                        };
                        self.finish_call(cx, p, agent_status_of(status), text.as_bytes());
                    }
                }
            }
            Err(e) => {
                let text = format!("undecodable provider response: {e}");
                self.finish_call(cx, p, Status::ProviderError, text.as_bytes());
            }
        }
    }

    /// Answers a call with one hessian2 value (a result, or an exception's summary) and
    /// the provider's attachments.
    fn finish_value(
        &mut self,
        cx: &mut Ctx<'_, Self>,
        p: Pending,
        status: Status,
        payload: Payload<'_>,
        att: &[(&str, &str)],
    ) {
        let written = match cx.output(p.inbound) {
            Some(out) => match agent::begin_response_with(out, p.agent_id, status, att) {
                Ok(mark) => {
                    match payload {
                        Payload::Value(v) => Encoder::new().write_value(out, v),
                        Payload::Encoded(bytes) => out.extend_from_slice(bytes),
                    }
                    agent::finish(out, mark).is_ok()
                }
                Err(_) => false,
            },
            None => return self.m().response(status), // the consumer is gone
        };
        if written {
            self.m().response(status);
            self.close_if_done(cx, p.inbound);
        } else {
            self.finish_call(
                cx,
                p,
                Status::ProviderError,
                b"result or attachments too large for an agent frame",
            );
        }
    }

    /// Answers a call with a non-OK status (or OK with raw bytes).
    fn finish_call(&mut self, cx: &mut Ctx<'_, Self>, p: Pending, status: Status, payload: &[u8]) {
        if let Some(t) = p.timer {
            cx.cancel_timer(t);
        }
        respond(cx, p.inbound, p.agent_id, status, payload);
        self.m().response(status);
        self.close_if_done(cx, p.inbound);
    }

    /// A consumer that half-closed gets its last answer, then our FIN.
    fn close_if_done(&mut self, cx: &mut Ctx<'_, Self>, conn: ConnId) {
        let ended = self.inbound_mut(conn).is_some_and(|i| i.input_ended);
        if ended && self.upstream.inflight_on(conn) == 0 {
            cx.shutdown_write(conn);
        }
    }

    /// Closes agent connections silent for `--idle-timeout-secs` with nothing in flight.
    fn close_idle(&mut self, cx: &mut Ctx<'_, Self>) {
        let Some(idle) = self.cfg.agent.idle_timeout() else {
            return;
        };
        let now = cx.now();
        let stale: Vec<ConnId> = self
            .inbound
            .iter()
            .flatten()
            .filter(|i| {
                now.saturating_duration_since(i.last_active) > idle
                    && self.upstream.inflight_on(i.id) == 0
            })
            .map(|i| i.id)
            .collect();
        for id in stale {
            log::debug!("loop {}: closing an idle agent connection", self.index);
            cx.close(id);
        }
    }

    fn heartbeat(&mut self, cx: &mut Ctx<'_, Self>) {
        let now = cx.now();
        let hb = self.cfg.heartbeat;
        for slot in 0..self.upstream.conns.len() {
            let Some(c) = self.upstream.conns.get_mut(slot) else {
                continue;
            };
            let (true, Some(id)) = (c.open, c.id) else {
                continue;
            };
            if now.saturating_duration_since(c.last_read) >= hb * 3 {
                log::warn!(
                    "loop {}: provider connection {slot} silent for {:?}; closing",
                    self.index,
                    hb * 3
                );
                cx.abort(id);
                continue;
            }
            // As Dubbo does: a heartbeat once either direction has been idle, so a
            // provider busy on long calls (we write, it does not answer yet) still shows
            // it is alive before the silence check above cuts it off.
            let last = c.last_read.min(c.last_write);
            if now.saturating_duration_since(last) >= hb {
                self.heartbeat_seq = (self.heartbeat_seq + 1) & 0x7fff_ffff;
                if let Some(out) = cx.output(id) {
                    // Heartbeat ids have generation 0, which no call ever uses.
                    dubbo::encode_heartbeat_request(out, self.heartbeat_seq);
                }
                c.last_write = now;
            }
        }
    }

    // ---------------------------------------------------------------- agent side

    fn inbound_mut(&mut self, id: ConnId) -> Option<&mut Inbound> {
        self.inbound
            .get_mut(id.index())
            .and_then(Option::as_mut)
            .filter(|i| i.id == id)
    }

    fn agent_data(&mut self, cx: &mut Ctx<'_, Self>, conn: ConnId, input: &[u8]) -> usize {
        let now = cx.now();
        if let Some(inb) = self.inbound_mut(conn) {
            inb.last_active = now;
        }
        let max_frame = self.cfg.agent.max_frame;
        let mut pos = 0;
        while let Some(rest) = input.get(pos..) {
            if let Some(len) = declared_len(rest).filter(|&n| u64::from(n) > max_frame) {
                log::debug!("loop {}: agent frame of {len} bytes; closing", self.index);
                if let Some(id) = request_id_of(rest) {
                    let msg = format!("frame body of {len} bytes is over --max-frame {max_frame}");
                    respond(cx, conn, id, Status::BadRequest, msg.as_bytes());
                    self.m().response(Status::BadRequest);
                }
                cx.close(conn);
                return input.len();
            }
            match agent::decode(rest) {
                Ok(Decoded::Incomplete) => break,
                Ok(Decoded::Complete { msg, consumed }) => {
                    pos += consumed;
                    if !self.agent_frame(cx, conn, msg) {
                        cx.close(conn);
                        return input.len();
                    }
                    if cx.is_congested(conn) {
                        // The consumer is not reading its answers: stop reading its
                        // requests until it does (see `drained`).
                        cx.pause_reading(conn);
                        break;
                    }
                }
                Err(e) => {
                    log::debug!("loop {}: bad agent frame: {e}; closing", self.index);
                    if let Some(id) = request_id_of(rest) {
                        respond(cx, conn, id, Status::BadRequest, e.to_string().as_bytes());
                        self.m().response(Status::BadRequest);
                    }
                    cx.close(conn);
                    return input.len();
                }
            }
        }
        pos
    }

    /// Handles one frame; false means the connection must close.
    fn agent_frame(&mut self, cx: &mut Ctx<'_, Self>, conn: ConnId, frame: Frame<'_>) -> bool {
        match frame {
            Frame::Define { call_id, signature } => {
                let Some(inb) = self.inbound_mut(conn) else {
                    return false;
                };
                // Checked before anything is kept: a name over its limit, or a table
                // over its bytes, closes the connection (a consumer-agent never sends
                // either; see codec::agent's rules).
                match inb.calls.define(call_id, signature.to_owned()) {
                    Ok(()) => true,
                    Err(e) => {
                        log::warn!("loop {}: DEFINE refused: {e}; closing", self.index);
                        false
                    }
                }
            }
            Frame::Request(req) => {
                self.call(cx, conn, &req);
                true
            }
            Frame::Ping { id } => {
                if let Some(out) = cx.output(conn) {
                    agent::encode_pong(out, id);
                }
                true
            }
            Frame::Pong { .. } => true,
            Frame::Response(_) => {
                log::debug!(
                    "loop {}: a RESPONSE frame from a consumer; closing",
                    self.index
                );
                false
            }
        }
    }

    /// Turns one agent REQUEST into a Dubbo request.
    fn call(&mut self, cx: &mut Ctx<'_, Self>, conn: ConnId, req: &agent::Request<'_>) {
        self.m().requests.fetch_add(1, Relaxed);
        let now = cx.now();
        let Some(inb) = self
            .inbound
            .get(conn.index())
            .and_then(Option::as_ref)
            .filter(|i| i.id == conn)
        else {
            return;
        };
        let Some(sig) = inb.calls.get(req.call_id) else {
            let msg = format!("unknown call id {}", req.call_id);
            return self.reject_on(cx, conn, req, Status::BadRequest, &msg);
        };
        if self.draining {
            return self.reject_on(
                cx,
                conn,
                req,
                Status::Unavailable,
                "provider-agent is shutting down",
            );
        }
        let Some(variant) = self.cfg.served(sig) else {
            // UNAVAILABLE: the call did not start, and a provider-agent that serves it
            // may take it (this one's registry entry may be stale).
            let msg = format!(
                "this provider-agent does not serve {} version {:?} group {:?}",
                sig.service, sig.version, sig.group
            );
            return self.reject_on(cx, conn, req, Status::Unavailable, &msg);
        };
        // The other loops' counts are as of their last iteration: a burst arriving on
        // several loops at once may pass the limit by a few calls, which the provider's
        // own pool answers (status 100, OVERLOADED), as it would without a limit.
        let total = self.upstream.inflight() + self.metrics.inflight_except(self.index);
        let mine = self.upstream.inflight_on(conn);
        let Some(demand) = self.demand.get_mut(conn.index()) else {
            return;
        };
        if let Err(refusal) = self.admission.admit(self.max_inflight, total, mine, demand) {
            let msg = match refusal {
                Refusal::Full => "provider-agent in-flight limit reached".to_owned(),
                Refusal::OverShare { share, contenders } => format!(
                    "provider-agent in-flight limit nearly reached: this connection holds its share ({share} calls; {contenders} connections compete) and the rest is others' recent demand"
                ),
            };
            return self.reject_on(cx, conn, req, Status::Overloaded, &msg);
        }
        let per_conn = self.cfg.agent.max_conn_inflight;
        if per_conn > 0 && self.upstream.inflight_on(conn) >= per_conn {
            return self.reject_on(
                cx,
                conn,
                req,
                Status::Overloaded,
                "in-flight limit of this agent connection reached (--max-conn-inflight)",
            );
        }
        let Some((slot, pconn)) = self.upstream.pick(|id| cx.is_congested(id)) else {
            // Connected but not reading: the call did not start, another provider may
            // take it (OVERLOADED is retried); its bytes would only pile up here.
            let (status, msg) = if self.upstream.any_open() {
                (
                    Status::Overloaded,
                    "the provider is not reading its requests",
                )
            } else {
                (Status::Unavailable, "provider not connected")
            };
            return self.reject_on(cx, conn, req, status, msg);
        };
        let timeout_ms = if req.timeout_ms == 0 {
            DEFAULT_CALL_TIMEOUT_MS
        } else {
            req.timeout_ms.min(MAX_CALL_TIMEOUT_MS)
        };
        if self.timeout_text.0 != timeout_ms || self.timeout_text.1.is_empty() {
            self.timeout_text = (timeout_ms, timeout_ms.to_string());
        }
        // The common case (no attachments from the consumer) needs no allocation. The
        // routing keys (path, version, group, timeout, ...) are this agent's to set: a
        // caller's own are dropped.
        let timeout_only = [("timeout", Some(self.timeout_text.1.as_str()))];
        let mut owned: Vec<(&str, Option<&str>)> = Vec::new();
        let attachments: &[(&str, Option<&str>)] = if req.attachments.remaining() == 0 {
            &timeout_only
        } else {
            owned.reserve(req.attachments.len() + 1);
            owned.extend(
                req.attachments
                    .filter(|(k, _)| !dubbo::is_reserved_attachment(k))
                    .map(|(k, v)| (k, Some(v))),
            );
            owned.extend_from_slice(&timeout_only);
            &owned
        };
        let dubbo_id = if req.one_way {
            0
        } else {
            self.upstream.insert(conn, req.id, slot, now)
        };
        let request = dubbo::Request {
            id: dubbo_id as i64,
            serialization: self.cfg.serialization,
            two_way: !req.one_way,
            dubbo_version: &self.cfg.dubbo_version,
            path: &sig.service,
            version: Some(if variant.version.is_empty() {
                "0.0.0"
            } else {
                &variant.version
            }),
            group: (!variant.group.is_empty()).then_some(variant.group.as_str()),
            method: &sig.method,
            descriptor: &sig.parameter_types,
            args: req.args,
            attachments: dubbo::Attachments::Standard(attachments),
        };
        let result = match cx.output(pconn) {
            Some(out) => dubbo::encode_request(out, &request)
                .map_err(|e| (Status::BadRequest, e.to_string())),
            None => Err((Status::Unavailable, "provider not connected".to_owned())),
        };
        match result {
            Ok(()) => {
                if let Some(c) = self.upstream.conns.get_mut(slot) {
                    c.last_write = now;
                }
                if !req.one_way {
                    let t = cx.set_timer(Duration::from_millis(u64::from(timeout_ms)), dubbo_id);
                    self.upstream.set_timer(dubbo_id, t);
                }
            }
            Err((status, msg)) => {
                if !req.one_way {
                    self.upstream.take(dubbo_id);
                }
                self.reject_on(cx, conn, req, status, &msg);
            }
        }
    }

    fn reject_on(
        &mut self,
        cx: &mut Ctx<'_, Self>,
        conn: ConnId,
        req: &agent::Request<'_>,
        status: Status,
        msg: &str,
    ) {
        if !req.one_way {
            respond(cx, conn, req.id, status, msg.as_bytes());
        }
        self.m().response(status);
    }
}

/// Writes a RESPONSE frame; a payload too large is replaced by a short message.
fn respond<H: Handler>(cx: &mut Ctx<'_, H>, conn: ConnId, id: u64, status: Status, payload: &[u8]) {
    respond_with(cx, conn, id, status, &[], payload);
}

/// [`respond`] carrying response attachments.
fn respond_with<H: Handler>(
    cx: &mut Ctx<'_, H>,
    conn: ConnId,
    id: u64,
    status: Status,
    attachments: &[(&str, &str)],
    payload: &[u8],
) {
    if let Some(out) = cx.output(conn) {
        let written = agent::begin_response_with(out, id, status, attachments).and_then(|mark| {
            out.extend_from_slice(payload);
            agent::finish(out, mark)
        });
        if written.is_err() {
            let _ = agent::encode_response(out, id, Status::ProviderError, b"response too large");
        }
    }
}

/// The provider's response attachments as strings for the agent protocol. Null values
/// are dropped, other non-strings rendered as text; so is `dubbo`, the protocol version
/// Java 2.7 adds to every response (it describes the Dubbo hop, not the call).
fn response_attachments(attachments: Vec<(String, Value)>) -> Vec<(String, String)> {
    attachments
        .into_iter()
        .filter(|(k, v)| k != "dubbo" && *v != Value::Null)
        .map(|(k, v)| match v {
            Value::String(s) => (k, s),
            other => (k, other.to_text()),
        })
        .collect()
}

/// The request id of a frame whose header is readable (for a BAD_REQUEST answer).
/// The body length a frame header declares, once the whole header is there.
fn declared_len(buf: &[u8]) -> Option<u32> {
    let head = buf.get(..agent::HEADER_LEN)?;
    if head.get(..2)? != agent::MAGIC {
        return None;
    }
    let len: [u8; 4] = head.get(14..18)?.try_into().ok()?;
    Some(u32::from_be_bytes(len))
}

fn request_id_of(buf: &[u8]) -> Option<u64> {
    let head = buf.get(..agent::HEADER_LEN)?;
    if head.get(..2)? != agent::MAGIC || *head.get(2)? != agent::VERSION || head.get(3)? & 0x0f != 2
    {
        return None;
    }
    let id: [u8; 8] = head.get(6..14)?.try_into().ok()?;
    Some(u64::from_be_bytes(id))
}

impl Handler for ProviderLoop {
    type Tag = Tag;
    type Msg = LoopMsg;

    fn opened(&mut self, cx: &mut Ctx<'_, Self>, conn: Conn<Tag>) {
        match conn.tag {
            Tag::Agent => {
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
                    });
                }
            }
            Tag::Provider(slot) => self.provider_opened(cx, slot, conn.id),
        }
    }

    fn data(&mut self, cx: &mut Ctx<'_, Self>, conn: Conn<Tag>, input: &[u8]) -> usize {
        match conn.tag {
            Tag::Agent => self.agent_data(cx, conn.id, input),
            Tag::Provider(slot) => self.provider_data(cx, slot, conn.id, input),
        }
    }

    fn end_of_input(&mut self, _cx: &mut Ctx<'_, Self>, conn: Conn<Tag>) -> EndOfInput {
        // A consumer that sends its calls and then FIN still gets every answer: the
        // connection stays open for writing until the last one is out.
        if conn.tag == Tag::Agent && self.upstream.inflight_on(conn.id) > 0 {
            if let Some(inb) = self.inbound_mut(conn.id) {
                inb.input_ended = true;
                return EndOfInput::KeepOpen;
            }
        }
        EndOfInput::Close
    }

    fn drained(&mut self, cx: &mut Ctx<'_, Self>, conn: Conn<Tag>) {
        if conn.tag == Tag::Agent {
            cx.resume_reading(conn.id);
        }
    }

    fn closed(&mut self, cx: &mut Ctx<'_, Self>, conn: Conn<Tag>, reason: CloseReason) {
        match conn.tag {
            Tag::Agent => {
                if let Some(slot) = self.inbound.get_mut(conn.id.index()) {
                    if slot.as_ref().is_some_and(|i| i.id == conn.id) {
                        *slot = None;
                        if let Some(d) = self.demand.get_mut(conn.id.index()) {
                            self.admission.forget(std::mem::take(d));
                        }
                    }
                }
            }
            Tag::Provider(slot) => self.provider_closed(cx, slot, conn.id, &reason),
        }
    }

    fn timer(&mut self, cx: &mut Ctx<'_, Self>, _timer: reactor::TimerId, token: u64) {
        if token == TOKEN_HEARTBEAT {
            self.heartbeat(cx);
        } else if token == TOKEN_ADMISSION {
            let upstream = &self.upstream;
            let open = self.inbound.iter().zip(self.demand.iter_mut());
            self.admission.roll(open.filter_map(|(inb, d)| {
                let inb = inb.as_ref()?;
                Some((d, upstream.inflight_on(inb.id)))
            }));
        } else if token == TOKEN_IDLE {
            self.close_idle(cx);
        } else if token == TOKEN_GRACE {
            // Nothing to do: `tick`, right after, exits if nothing is in flight.
        } else if token == TOKEN_DRAIN {
            for p in self.upstream.take_all() {
                self.finish_call(
                    cx,
                    p,
                    Status::Timeout,
                    b"provider-agent stopped before the provider answered",
                );
            }
            cx.exit();
        } else if token & TOKEN_OWN != 0 {
            let slot = (token & 0xffff) as usize;
            if let Some(c) = self.upstream.conns.get_mut(slot) {
                c.reconnect = None;
                if c.id.is_none() {
                    self.connect(cx, slot);
                }
            }
        } else if let Some(mut p) = self.upstream.take(token) {
            p.timer = None; // fired
            let msg = format!("provider did not answer in time (dubbo id {token:#x})");
            self.finish_call(cx, p, Status::Timeout, msg.as_bytes());
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
                cx.set_periodic(every, TOKEN_HEARTBEAT);
                cx.set_periodic(ADMISSION_WINDOW, TOKEN_ADMISSION);
                if let Some(idle) = self.cfg.agent.idle_timeout() {
                    let every =
                        (idle / 4).clamp(Duration::from_millis(100), Duration::from_secs(5));
                    cx.set_periodic(every, TOKEN_IDLE);
                }
            }
        }
    }

    fn tick(&mut self, cx: &mut Ctx<'_, Self>) {
        let inflight = self.upstream.inflight();
        self.m().inflight.store(inflight as i64, Relaxed);
        self.admission.publish();
        let grace_over = self.exit_not_before.is_some_and(|t| cx.now() >= t);
        if self.draining && inflight == 0 && grace_over {
            cx.exit();
        }
    }

    fn stopping(&mut self, cx: &mut Ctx<'_, Self>) {
        self.draining = true;
        self.exit_not_before = Some(cx.now() + STOP_GRACE);
        cx.set_timer(STOP_GRACE, TOKEN_GRACE);
        if self.upstream.inflight() > 0 {
            log::info!(
                "loop {}: draining {} calls",
                self.index,
                self.upstream.inflight()
            );
            cx.set_timer(self.cfg.drain, TOKEN_DRAIN);
        }
    }
}
