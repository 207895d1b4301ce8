//! The consumer-agent's loop: HTTP in, agent protocol out, on one thread.
//!
//! A request's life: the HTTP connection's bytes are decoded in place; the call's
//! arguments are encoded as hessian2 into a pooled buffer (kept for a retry); a provider
//! is picked; a REQUEST frame goes into the loop's own connection to it (DEFINE first if
//! the signature is new there); a timer bounds the call. The answer frame finds the call
//! by id, cancels the timer and writes the HTTP response in request order.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::{Duration, Instant};

use codec::agent::{
    self, AgentError, CallTable, Frame, RequestHead, Signature, SignatureRef, Status,
};
use codec::hessian2::{self, Value};
use codec::http::{self, HttpError, Limits, Request, RequestDecoder};
use codec::invocation::Invocation;
use codec::{form, Decoded};
use reactor::{CloseReason, Conn, ConnId, Ctx, EndOfInput, Handler, TimerId};
use registry::Instance;
use slab::Slab;

use crate::config::Config;
use crate::http_conn::{HttpConn, HttpConns};
use crate::lb::Answer;
use crate::metrics::{LoopMetrics, Outcome, UpstreamView};
use crate::upstream::Upstreams;

/// What a connection of this loop is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tag {
    /// An HTTP client (the consumer).
    Http,
    /// Our connection to a provider-agent (key into the upstream table).
    Agent(usize),
}

/// What other threads tell a loop.
#[derive(Debug)]
pub enum LoopMsg {
    /// The registry's whole current list for a service.
    Instances(String, Vec<Instance>),
}

/// Timer tokens: a call's own id, or one of these (top bit set).
const TIMER_SWEEP: u64 = 1 << 63;
const TIMER_DRAIN: u64 = (1 << 63) | 1;
const TIMER_RECONNECT: u64 = (1 << 63) | (1 << 62);

/// A provider-agent connection silent this long gets a PING (provider-agents close
/// agent connections idle for `--idle-timeout-secs`, 60 by default).
const KEEPALIVE_IDLE: Duration = Duration::from_secs(15);
/// An open provider-agent connection whose PING is unanswered this long is dead.
const KEEPALIVE_DEAD: Duration = Duration::from_secs(30);

/// Header carrying a per-call timeout in milliseconds.
const TIMEOUT_HEADER: &str = "x-dubbo-timeout";
/// Header naming the service version for a form request.
const VERSION_HEADER: &str = "x-dubbo-version";
/// Header naming the service group for a form request.
const GROUP_HEADER: &str = "x-dubbo-group";
/// Prefix of headers carrying Dubbo attachments, both ways: a request header
/// `x-dubbo-attachment-<key>: <value>` becomes attachment `<key>`, and a response
/// attachment comes back as the same header.
pub const ATTACHMENT_HEADER_PREFIX: &str = "x-dubbo-attachment-";

/// How the answer is rendered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Render {
    /// The race's form call: the value as plain text (an int in decimal).
    Text,
    /// A JSON invocation: the value as JSON.
    Json,
}

/// One call in flight.
#[derive(Debug)]
struct Call {
    gen: u32,
    http: ConnId,
    seq: u64,
    keep_alive: bool,
    render: Render,
    /// Loop-wide call id: names the signature (service included) in `signatures`.
    call_id: u32,
    args: Vec<u8>,
    attachments: Vec<(String, String)>,
    started: Instant,
    deadline: Instant,
    timer: Option<TimerId>,
    /// Upstream key it is in flight on, and when it was sent there.
    sent: Option<(usize, Instant)>,
    attempts: u32,
}

/// How an answer's status counts for the balancer: the provider's own result or
/// exception, and a request it refused as malformed, are work done; a refusal for
/// capacity teaches the limit; anything else is the provider failing.
fn balancer_answer(status: Status) -> Answer {
    match status {
        Status::Ok | Status::Exception | Status::BadRequest => Answer::Done,
        Status::Overloaded => Answer::Overloaded,
        _ => Answer::Failed,
    }
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
    calls: Slab<Call>,
    next_gen: u32,
    pool: Vec<Vec<u8>>,
    stopping: bool,
}

impl ConsumerLoop {
    /// A loop's state.
    pub fn new(config: Arc<Config>, metrics: LoopMetrics) -> Self {
        ConsumerLoop {
            limits: Limits {
                max_head: config.max_head,
                max_body: config.max_body,
            },
            upstreams: Upstreams::new(config.lb).with_max_inflight(config.max_upstream_inflight),
            config,
            metrics,
            http: HttpConns::default(),
            signatures: CallTable::new(),
            signature_uses: Vec::new(),
            calls: Slab::new(),
            next_gen: 0,
            pool: Vec::new(),
            stopping: false,
        }
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

    // ----- HTTP side -------------------------------------------------------------

    fn on_http_data(&mut self, cx: &mut Ctx<'_, Self>, id: ConnId, input: &[u8]) -> usize {
        let mut pos = 0;
        loop {
            let Some(conn) = self.http.get_mut(id) else {
                return input.len();
            };
            if conn.done_reading {
                return input.len();
            }
            // Too many requests in flight, or answers piling up unread (a client that
            // does not read): read no further until answers go out.
            if conn.inflight() >= self.config.max_pipeline as u64 || cx.is_congested(id) {
                conn.paused = true;
                cx.pause_reading(id);
                return pos;
            }
            let rest = input.get(pos..).unwrap_or_default();
            match conn.decoder.decode(rest) {
                Ok(Decoded::Complete { msg, consumed }) => {
                    pos += consumed;
                    conn.decoder.reset();
                    conn.last_active = cx.now();
                    let seq = conn.take_seq();
                    self.metrics.request();
                    // Stopping forces keep-alive off too (see `on_request`).
                    let last = !msg.keep_alive || self.stopping;
                    self.on_request(cx, id, seq, &msg);
                    if last {
                        // The connection closes after this answer: whatever the client
                        // sent after it is discarded undecoded, never called.
                        if let Some(conn) = self.http.get_mut(id) {
                            conn.done_reading = true;
                        }
                        return input.len();
                    }
                }
                Ok(Decoded::Incomplete) => {
                    if conn.decoder.take_continue() {
                        if let Some(out) = cx.output(id) {
                            http::write_continue(out);
                        }
                    }
                    return pos;
                }
                Err(e) => {
                    conn.done_reading = true;
                    let seq = conn.take_seq();
                    self.metrics.request();
                    let render = if head_is_json(rest) {
                        Render::Json
                    } else {
                        Render::Text
                    };
                    self.answer_http_error(cx, id, seq, &e, render);
                    return input.len();
                }
            }
        }
    }

    /// Answers a request the HTTP decoder refused (413, 431, 400, ...); `render` is JSON
    /// when the head could be read and names a JSON body.
    fn answer_http_error(
        &mut self,
        cx: &mut Ctx<'_, Self>,
        id: ConnId,
        seq: u64,
        e: &HttpError,
        render: Render,
    ) {
        let mut out = self.take_buf();
        match render {
            Render::Text => http::write_error(&mut out, e),
            Render::Json => write_error_answer(
                &mut out,
                render,
                e.status(),
                e.reason(),
                !e.closes_connection(),
            ),
        }
        self.metrics.answered(Outcome::BadRequest, 0);
        self.deliver(cx, id, seq, out, e.closes_connection());
    }

    /// Answers `seq` on `id` with an error status and message (see [`write_error_answer`]).
    #[allow(clippy::too_many_arguments)]
    fn answer_error(
        &mut self,
        cx: &mut Ctx<'_, Self>,
        id: ConnId,
        seq: u64,
        keep_alive: bool,
        render: Render,
        status: u16,
        text: &str,
    ) {
        let mut out = self.take_buf();
        write_error_answer(&mut out, render, status, text, keep_alive);
        self.deliver(cx, id, seq, out, !keep_alive);
    }

    /// Completes a call with an error status and message, rendered for its request.
    fn fail(
        &mut self,
        cx: &mut Ctx<'_, Self>,
        call: u64,
        outcome: Outcome,
        status: u16,
        text: &str,
    ) {
        let Some(render) = self.call_mut(call).map(|c| c.render) else {
            return;
        };
        self.finish(cx, call, outcome, |out, ka| {
            write_error_answer(out, render, status, text, ka)
        });
    }

    fn on_request(&mut self, cx: &mut Ctx<'_, Self>, id: ConnId, seq: u64, req: &Request<'_>) {
        let keep_alive = req.keep_alive && !self.stopping;
        let now = cx.now();
        let mut timeout = Duration::from_millis(self.config.timeout_ms);
        if let Some(ms) = req
            .header(TIMEOUT_HEADER)
            .and_then(|v| std::str::from_utf8(v).ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
        {
            timeout = timeout.min(Duration::from_millis(ms));
        }
        let mut args = self.take_buf();
        // Where escaped form fields are decoded; back to the pool once the call is stored.
        let mut scratch = self.take_buf();
        let render = if !req.is_form() && is_json(req) {
            Render::Json
        } else {
            Render::Text
        };
        let prepared = if req.is_form() {
            prepare_form(req, &mut args, &mut scratch).map(|p| (p, Render::Text))
        } else if is_json(req) {
            prepare_json(req, &mut args, self.config.max_json_depth as usize).map(|p| {
                if let Some(ms) = p.timeout_ms {
                    timeout = timeout.min(Duration::from_millis(ms));
                }
                (p, Render::Json)
            })
        } else {
            Err("unsupported content type: send application/x-www-form-urlencoded or application/json".to_owned())
        };
        let (prepared, render) = match prepared {
            Ok(p) => p,
            Err(msg) => {
                self.recycle(args);
                self.recycle(scratch);
                self.metrics.answered(Outcome::BadRequest, 0);
                return self.answer_error(cx, id, seq, keep_alive, render, 400, &msg);
            }
        };
        let sig = SignatureRef {
            service: &prepared.service,
            method: &prepared.method,
            parameter_types: &prepared.types,
            version: &prepared.version,
            group: &prepared.group,
        };
        let call_id = match self.intern(cx, sig) {
            Ok(call_id) => call_id,
            Err(e) => {
                self.recycle(args);
                self.metrics.answered(Outcome::BadRequest, 0);
                let msg = e.to_string();
                return self.answer_error(cx, id, seq, keep_alive, render, 400, &msg);
            }
        };
        if let Some(n) = self.signature_uses.get_mut(call_id as usize) {
            *n += 1;
        }
        self.next_gen = self.next_gen.wrapping_add(1) & 0x7fff_ffff;
        let key = self.calls.insert(Call {
            gen: self.next_gen,
            http: id,
            seq,
            keep_alive,
            render,
            call_id,
            args,
            attachments: prepared.attachments,
            started: now,
            deadline: now + timeout,
            timer: None,
            sent: None,
            attempts: 0,
        });
        self.recycle(scratch);
        let call = Self::call_id(key, self.next_gen);
        let timer = cx.set_timer(timeout, call);
        if let Some(c) = self.calls.get_mut(key) {
            c.timer = Some(timer);
        }
        self.dispatch(cx, call, None);
    }

    /// The loop-wide call id of a signature. Once the table is full (in count or in
    /// bytes), ids no call in flight uses make room: one is given to the new signature,
    /// others are emptied if its bytes need it, and each redefinition goes at once to
    /// every provider-agent connection that had the id, so the provider-agent keeps
    /// exactly the table this loop keeps (and its bound holds there too).
    fn intern(&mut self, cx: &mut Ctx<'_, Self>, sig: SignatureRef<'_>) -> Result<u32, AgentError> {
        let id = match self.signatures.intern(sig) {
            Ok((id, _)) => id,
            Err(AgentError::CallTableFull) => {
                let slots = self.signatures.len() as u32;
                let unused = |uses: &[u32], i: u32| uses.get(i as usize).is_none_or(|&n| n == 0);
                let target = (0..slots)
                    .find(|&i| unused(&self.signature_uses, i))
                    .ok_or(AgentError::CallTableFull)?;
                let fits = |t: &CallTable| {
                    t.bytes() - t.charge_of(target) + sig.charge() <= agent::MAX_TABLE_BYTES
                };
                let empty = Signature::default();
                for i in 0..slots {
                    if fits(&self.signatures) {
                        break;
                    }
                    if i != target
                        && unused(&self.signature_uses, i)
                        && self.signatures.charge_of(i) > empty.as_ref().charge()
                    {
                        self.redefine(cx, i, empty.clone())?;
                    }
                }
                if !fits(&self.signatures) {
                    return Err(AgentError::CallTableFull);
                }
                self.redefine(cx, target, sig.to_owned())?;
                target
            }
            Err(e) => return Err(e),
        };
        if self.signature_uses.len() <= id as usize {
            self.signature_uses.resize(id as usize + 1, 0);
        }
        Ok(id)
    }

    /// Binds call id `id` to `sig` in the loop's table and on every provider-agent
    /// connection where `id` was defined.
    fn redefine(
        &mut self,
        cx: &mut Ctx<'_, Self>,
        id: u32,
        sig: Signature,
    ) -> Result<(), AgentError> {
        self.signatures.define(id, sig)?;
        let Some(sig) = self.signatures.get(id) else {
            return Ok(());
        };
        for (_, up) in self.upstreams.table.iter_mut() {
            let Some(defined) = up.defined.get_mut(id as usize).filter(|d| **d) else {
                continue;
            };
            let written = match up.conn.and_then(|c| cx.output(c)) {
                Some(out) => agent::encode_define(out, id, sig.as_ref()).is_ok(),
                None => false,
            };
            *defined = written;
        }
        Ok(())
    }

    /// Sends a call to a provider, or answers it if none can take it.
    fn dispatch(&mut self, cx: &mut Ctx<'_, Self>, call: u64, exclude: Option<usize>) {
        let now = cx.now();
        let Some(c) = self.call_mut(call) else { return };
        let call_id = c.call_id;
        let Some(sig) = self.signatures.get(call_id) else {
            return;
        };
        let picked = self
            .upstreams
            .pick(&sig.service, &sig.version, &sig.group, exclude);
        let Some((_, up_key)) = picked else {
            let msg = if self.upstreams.saturated(&sig.service) {
                format!(
                    "every provider-agent of {} is at its in-flight limit (--max-upstream-inflight)",
                    sig.service
                )
            } else if self.upstreams.services.contains_key(&sig.service) {
                let mut m = format!("no provider-agent of {}", sig.service);
                if !sig.version.is_empty() {
                    m.push_str(&format!(" version {}", sig.version));
                }
                if !sig.group.is_empty() {
                    m.push_str(&format!(" group {}", sig.group));
                }
                m.push_str(" is reachable");
                m
            } else {
                format!("no provider for service {}", sig.service)
            };
            return self.fail(cx, call, Outcome::Unavailable, 503, &msg);
        };
        let Some(up) = self.upstreams.table.get_mut(up_key) else {
            return;
        };
        // A connection closing (its provider-agent finished sending) takes no call:
        // not open any more, and the call goes to another provider-agent or fails.
        let Some(conn) = up.conn.filter(|&c| cx.is_open(c)) else {
            up.open = false;
            return self.dispatch(cx, call, Some(up_key));
        };
        let new_define = up.define(call_id);
        let Some(c) = self.calls.get_mut((call & 0xffff_ffff) as usize) else {
            return;
        };
        let remaining = c.deadline.saturating_duration_since(now);
        c.attempts += 1;
        c.sent = Some((up_key, now));
        let attachments: Vec<(&str, &str)> = c
            .attachments
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let head = RequestHead {
            id: call,
            call_id,
            timeout_ms: remaining.as_millis().clamp(1, u128::from(u32::MAX)) as u32,
            one_way: false,
            attachments: &attachments,
        };
        let Some(out) = cx.output(conn) else { return };
        let mut ok = !new_define || agent::encode_define(out, call_id, sig.as_ref()).is_ok();
        if ok {
            ok = match agent::begin_request(out, &head) {
                Ok(mark) => {
                    out.extend_from_slice(&c.args);
                    agent::finish(out, mark).is_ok()
                }
                Err(_) => false,
            };
        }
        if !ok {
            let msg = "request too large for the agent protocol";
            return self.fail(cx, call, Outcome::BadRequest, 400, msg);
        }
        if let Some(s) = self.upstreams.stats(&sig.service, up_key) {
            s.on_send();
        }
    }

    /// Completes a call: its HTTP answer (written by `write`) goes out in order.
    fn finish(
        &mut self,
        cx: &mut Ctx<'_, Self>,
        call: u64,
        outcome: Outcome,
        write: impl FnOnce(&mut Vec<u8>, bool),
    ) {
        let key = (call & 0xffff_ffff) as usize;
        if self.call_mut(call).is_none() {
            return;
        }
        let c = self.calls.remove(key);
        if let Some(n) = self.signature_uses.get_mut(c.call_id as usize) {
            *n = n.saturating_sub(1);
        }
        if let Some(t) = c.timer {
            cx.cancel_timer(t);
        }
        let latency = cx.now().saturating_duration_since(c.started).as_micros() as u64;
        self.metrics.answered(outcome, latency);
        self.recycle(c.args);
        let mut out = self.take_buf();
        write(&mut out, c.keep_alive);
        self.deliver(cx, c.http, c.seq, out, !c.keep_alive);
        if self.stopping && self.calls.is_empty() {
            cx.exit();
        }
    }

    /// Writes answer `seq` of connection `id` in its turn (or parks it until then).
    fn deliver(
        &mut self,
        cx: &mut Ctx<'_, Self>,
        id: ConnId,
        seq: u64,
        bytes: Vec<u8>,
        close: bool,
    ) {
        let Some(conn) = self.http.get_mut(id) else {
            self.recycle(bytes);
            return;
        };
        if seq != conn.write_seq {
            conn.parked.push((seq, bytes, close));
            return;
        }
        let mut next = Some((bytes, close));
        while let Some((bytes, close)) = next.take() {
            cx.write(id, &bytes);
            recycle_into(&mut self.pool, bytes);
            conn.write_seq += 1;
            if close {
                conn.done_reading = true;
                for (_, b, _) in conn.parked.drain(..) {
                    recycle_into(&mut self.pool, b);
                }
                cx.close(id);
                break;
            }
            if let Some(i) = conn
                .parked
                .iter()
                .position(|(s, _, _)| *s == conn.write_seq)
            {
                let (_, b, c) = conn.parked.swap_remove(i);
                next = Some((b, c));
            }
        }
        conn.last_active = cx.now();
        if conn.paused && conn.inflight() < self.config.max_pipeline as u64 && !cx.is_congested(id)
        {
            conn.paused = false;
            cx.resume_reading(id);
        }
        // Stopping, or the client half-closed: nothing more will come, so once the
        // last answer is out the connection closes.
        let finished = (self.stopping || conn.input_ended) && conn.inflight() == 0;
        if finished {
            cx.close(id);
        }
    }

    /// The client finished sending (it may only have half-closed, and still read): its
    /// answers in flight go out first, then the connection closes (in `deliver`).
    fn on_http_end(&mut self, id: ConnId) -> EndOfInput {
        let Some(conn) = self.http.get_mut(id) else {
            return EndOfInput::Close;
        };
        if conn.inflight() == 0 {
            return EndOfInput::Close;
        }
        conn.done_reading = true;
        conn.input_ended = true;
        EndOfInput::KeepOpen
    }

    fn take_buf(&mut self) -> Vec<u8> {
        self.pool.pop().unwrap_or_default()
    }

    fn recycle(&mut self, buf: Vec<u8>) {
        recycle_into(&mut self.pool, buf);
    }

    // ----- agent side ------------------------------------------------------------

    fn on_agent_data(
        &mut self,
        cx: &mut Ctx<'_, Self>,
        id: ConnId,
        up: usize,
        input: &[u8],
    ) -> usize {
        let now = cx.now();
        if let Some(u) = self.upstreams.table.get_mut(up) {
            u.last_read = now;
        }
        let mut pos = 0;
        while let Some(rest) = input.get(pos..) {
            match agent::decode(rest) {
                Ok(Decoded::Complete { msg, consumed }) => {
                    pos += consumed;
                    match msg {
                        Frame::Response(r) => self.on_answer(cx, up, &r),
                        Frame::Ping { id: ping } => {
                            if let Some(out) = cx.output(id) {
                                agent::encode_pong(out, ping);
                            }
                        }
                        Frame::Pong { .. } => self.on_pong(cx, up),
                        Frame::Define { .. } | Frame::Request(_) => {
                            log::warn!("provider-agent sent a request frame; closing");
                            cx.abort(id);
                            return input.len();
                        }
                    }
                }
                Ok(Decoded::Incomplete) => break,
                Err(e) => {
                    log::warn!("bad frame from provider-agent: {e}; closing");
                    cx.abort(id);
                    return input.len();
                }
            }
        }
        pos
    }

    /// A PONG: the first on a connection proves the peer a provider-agent, and the
    /// connection starts taking calls; later ones answer keep-alive PINGs.
    fn on_pong(&mut self, cx: &mut Ctx<'_, Self>, key: usize) {
        let Some(up) = self.upstreams.table.get_mut(key) else {
            return;
        };
        up.ping_sent = None;
        if !up.open && up.conn.is_some() {
            up.open = true;
            up.backoff.reset();
            log::info!(
                "loop {}: connected to provider-agent {}",
                cx.loop_index(),
                up.addr
            );
        }
    }

    fn on_answer(&mut self, cx: &mut Ctx<'_, Self>, up: usize, r: &agent::Response<'_>) {
        let (call, status, payload) = (r.id, r.status, r.payload);
        let now = cx.now();
        let Some(c) = self.call_mut(call) else {
            log::debug!("answer for unknown or expired call {call:#x}");
            return;
        };
        // An answer must come from where the call was sent: a forged or repeated id
        // from another provider-agent does not complete someone else's call.
        let Some((sent_to, sent_at)) = c.sent.filter(|(u, _)| *u == up) else {
            log::debug!("answer for call {call:#x} from an upstream it was not sent to");
            return;
        };
        c.sent = None;
        if self
            .upstreams
            .table
            .get(sent_to)
            .is_some_and(|u| u.retiring)
        {
            self.remove_if_retired(cx, sent_to);
        }
        let Some(c) = self.call_mut(call) else { return };
        let (attempts, deadline, render, call_id) = (c.attempts, c.deadline, c.render, c.call_id);
        let latency = now.saturating_duration_since(sent_at).as_micros() as u64;
        if let Some(sig) = self.signatures.get(call_id) {
            if let Some(s) = self.upstreams.stats(&sig.service, sent_to) {
                s.on_answer(latency, balancer_answer(status));
            }
        }
        // Empty (no allocation) unless the provider returned attachments.
        let names = attachment_header_names(r.attachments);
        let headers: Vec<(&str, &[u8])> = names
            .iter()
            .map(|(name, value)| (name.as_str(), value.as_bytes()))
            .collect();
        match status {
            Status::Ok => self.answer_value(cx, call, render, payload, &headers),
            Status::Exception => self.answer_exception(cx, call, render, payload, &headers),
            s if s.is_retryable() && attempts <= self.config.retries && now < deadline => {
                self.metrics.retried();
                self.dispatch(cx, call, Some(sent_to));
            }
            Status::Overloaded | Status::Unavailable => {
                let msg = format!("provider unavailable: {}", String::from_utf8_lossy(payload));
                self.fail(cx, call, Outcome::Unavailable, 503, &msg)
            }
            Status::Timeout => self.fail(cx, call, Outcome::Timeout, 504, "provider timed out"),
            Status::BadRequest => {
                let msg = String::from_utf8_lossy(payload);
                self.fail(cx, call, Outcome::BadRequest, 400, &msg)
            }
            _ => {
                let msg = String::from_utf8_lossy(payload);
                self.provider_error(cx, call, render, &msg, &headers)
            }
        }
    }

    /// Answers 502 for a provider's error text (not a thrown exception, see
    /// [`answer_exception`](Self::answer_exception)): plain text for the race's form
    /// calls, a JSON object for JSON invocations
    /// (`{"error":"provider_error","message":...,"status":502}`, with a `class` when the
    /// text is an older provider-agent's `class: message`).
    /// `headers` are the provider's response attachments, ready to write.
    fn provider_error(
        &mut self,
        cx: &mut Ctx<'_, Self>,
        call: u64,
        render: Render,
        text: &str,
        headers: &[(&str, &[u8])],
    ) {
        let body = match render {
            Render::Text => text.to_owned(),
            Render::Json => provider_error_json(text),
        };
        self.answer_502(cx, call, render, &body, headers)
    }

    /// Answers 502 for an exception the provider threw, from its summary (a hessian2
    /// map of `class`, `message`, `cause`): `class: message` lines joined by Java's
    /// `Caused by: ` for form calls, the summary's fields in the error object for JSON.
    fn answer_exception(
        &mut self,
        cx: &mut Ctx<'_, Self>,
        call: u64,
        render: Render,
        payload: &[u8],
        headers: &[(&str, &[u8])],
    ) {
        let Some(summary) = decode_payload(payload) else {
            let msg = "undecodable exception from provider";
            return self.provider_error(cx, call, render, msg, headers);
        };
        let body = match render {
            Render::Text => exception_text(&summary),
            Render::Json => exception_json(summary),
        };
        self.answer_502(cx, call, render, &body, headers)
    }

    /// Writes a 502 whose body was rendered for `render`.
    fn answer_502(
        &mut self,
        cx: &mut Ctx<'_, Self>,
        call: u64,
        render: Render,
        body: &str,
        headers: &[(&str, &[u8])],
    ) {
        let content_type = match render {
            Render::Text => "text/plain; charset=utf-8",
            Render::Json => "application/json",
        };
        self.finish(cx, call, Outcome::ProviderError, |out, ka| {
            http::write_response_with(out, 502, content_type, headers, body.as_bytes(), ka)
        })
    }

    /// Answers 200 with the result; `headers` are the provider's response attachments.
    fn answer_value(
        &mut self,
        cx: &mut Ctx<'_, Self>,
        call: u64,
        render: Render,
        payload: &[u8],
        headers: &[(&str, &[u8])],
    ) {
        let Some(value) = decode_payload(payload) else {
            let msg = "undecodable result from provider";
            return self.provider_error(cx, call, render, msg, headers);
        };
        match (render, &value) {
            (Render::Text, Value::Int(i)) if headers.is_empty() => {
                let i = i64::from(*i);
                self.finish(cx, call, Outcome::Ok, |out, ka| {
                    http::write_response_int(out, 200, i, ka)
                })
            }
            (Render::Text, _) => {
                let text = value.to_text();
                let ct = match value {
                    Value::Int(_) => "text/plain",
                    _ => "text/plain; charset=utf-8",
                };
                self.finish(cx, call, Outcome::Ok, |out, ka| {
                    http::write_response_with(out, 200, ct, headers, text.as_bytes(), ka)
                })
            }
            (Render::Json, _) => {
                let json = value.to_json().to_string();
                self.finish(cx, call, Outcome::Ok, |out, ka| {
                    http::write_response_with(
                        out,
                        200,
                        "application/json",
                        headers,
                        json.as_bytes(),
                        ka,
                    )
                })
            }
        }
    }

    fn connect(&mut self, cx: &mut Ctx<'_, Self>, key: usize) {
        let timeout = Duration::from_millis(self.config.connect_timeout_ms);
        let Some(up) = self.upstreams.table.get_mut(key) else {
            return;
        };
        if up.retiring {
            up.reconnect = None;
            self.remove_if_retired(cx, key);
            return;
        }
        up.reconnect = None;
        up.open = false;
        up.defined.clear();
        match cx.connect(up.addr, Tag::Agent(key), Some(timeout)) {
            Ok(conn) => up.conn = Some(conn),
            Err(e) => {
                log::warn!("connect to provider-agent {}: {e}", up.addr);
                up.conn = None;
                let delay = up.backoff.next_delay();
                up.reconnect = Some(cx.set_timer(delay, TIMER_RECONNECT | key as u64));
            }
        }
    }

    /// Drops a retiring upstream once no call is in flight on it.
    fn remove_if_retired(&mut self, cx: &mut Ctx<'_, Self>, key: usize) {
        let retiring = self.upstreams.table.get(key).is_some_and(|u| u.retiring);
        let busy = self
            .calls
            .iter()
            .any(|(_, c)| c.sent.is_some_and(|(u, _)| u == key));
        if !retiring || busy {
            return;
        }
        if let Some(up) = self.upstreams.remove(key) {
            log::info!(
                "loop {}: provider-agent {} retired",
                cx.loop_index(),
                up.addr
            );
            if let Some(t) = up.reconnect {
                cx.cancel_timer(t);
            }
            if let Some(conn) = up.conn {
                cx.close(conn);
            }
        }
    }

    fn on_agent_closed(
        &mut self,
        cx: &mut Ctx<'_, Self>,
        id: ConnId,
        key: usize,
        reason: &CloseReason,
    ) {
        if self.upstreams.by_conn(key, id).is_none() {
            return; // an upstream already dropped from the registry
        }
        let Some(up) = self.upstreams.table.get_mut(key) else {
            return;
        };
        let addr = up.addr;
        let was_open = up.open;
        up.conn = None;
        up.open = false;
        up.defined.clear();
        if up.retiring {
            // Left the registry: its calls fail, then it is dropped, not reconnected.
            log::info!("retiring provider-agent {addr} connection closed: {reason:?}");
            self.fail_inflight_on(cx, key);
            self.remove_if_retired(cx, key);
            return;
        }
        let delay = up.backoff.next_delay();
        up.reconnect = Some(cx.set_timer(delay, TIMER_RECONNECT | key as u64));
        if was_open {
            log::warn!(
                "provider-agent {addr} connection closed: {reason:?}; reconnecting in {delay:?}"
            );
        } else {
            log::debug!("provider-agent {addr} connect failed: {reason:?}; retrying in {delay:?}");
        }
        self.fail_inflight_on(cx, key);
    }

    /// Calls in flight on a lost upstream fail: they may have run, so no retry.
    fn fail_inflight_on(&mut self, cx: &mut Ctx<'_, Self>, key: usize) {
        let lost: Vec<(u64, u32)> = self
            .calls
            .iter()
            .filter(|(_, c)| c.sent.is_some_and(|(u, _)| u == key))
            .map(|(k, c)| (Self::call_id(k, c.gen), c.call_id))
            .collect();
        for (call, call_id) in lost {
            self.lost_on(call_id, key);
            let msg = "connection to provider-agent lost";
            self.fail(cx, call, Outcome::Unavailable, 503, msg);
        }
    }

    /// A call sent to `upstream` will get no answer: free its slot in the balancer.
    fn lost_on(&mut self, call_id: u32, upstream: usize) {
        if let Some(sig) = self.signatures.get(call_id) {
            if let Some(s) = self.upstreams.stats(&sig.service, upstream) {
                s.on_lost();
            }
        }
    }

    fn on_instances(&mut self, cx: &mut Ctx<'_, Self>, service: &str, list: &[Instance]) {
        let changes = self.upstreams.update(service, list);
        log::info!(
            "loop {}: {service}: {} provider-agent(s)",
            cx.loop_index(),
            self.upstreams
                .services
                .get(service)
                .map_or(0, |s| s.members.len())
        );
        // A provider-agent leaving the registry (e.g. shutting down) still answers the
        // calls it has: its connection closes once they are answered, not before.
        for key in changes.retired {
            self.remove_if_retired(cx, key);
        }
        for key in changes.connect {
            self.connect(cx, key);
        }
    }

    fn sweep(&mut self, cx: &mut Ctx<'_, Self>) {
        let idle = Duration::from_secs(self.config.idle_timeout_secs);
        if !idle.is_zero() {
            let now = cx.now();
            let stale: Vec<ConnId> = self
                .http
                .iter()
                .filter(|c| {
                    c.inflight() == 0 && now.saturating_duration_since(c.last_active) > idle
                })
                .map(|c| c.id)
                .collect();
            for id in stale {
                cx.close(id);
            }
        }
        self.keep_alive_upstreams(cx);
        for svc in self.upstreams.services.values_mut() {
            for m in &mut svc.members {
                m.stats.recover();
            }
        }
        let view: Vec<UpstreamView> = self
            .upstreams
            .table
            .iter()
            .map(|(key, u)| {
                let (mut inflight, mut limit, mut ewma) = (0, 0.0, 0.0);
                for svc in self.upstreams.services.values() {
                    if let Some(m) = svc.members.iter().find(|m| m.upstream == key) {
                        inflight += m.stats.inflight;
                        limit = m.stats.limit;
                        ewma = m.stats.ewma_us;
                    }
                }
                UpstreamView {
                    addr: u.addr.to_string(),
                    up: u.open,
                    inflight,
                    limit,
                    ewma_us: ewma,
                }
            })
            .collect();
        self.metrics.set_upstreams(cx.loop_index(), view);
    }
}

impl ConsumerLoop {
    /// Every sweep: a PING on each provider-agent connection silent for
    /// [`KEEPALIVE_IDLE`] (so an idle link is kept, and a dead one found), and an abort
    /// of any whose PING went unanswered: for the connect timeout while it is being
    /// verified, for [`KEEPALIVE_DEAD`] once it is open.
    fn keep_alive_upstreams(&mut self, cx: &mut Ctx<'_, Self>) {
        let now = cx.now();
        let verify = Duration::from_millis(self.config.connect_timeout_ms);
        for (_, up) in self.upstreams.table.iter_mut() {
            let Some(conn) = up.conn.filter(|&c| cx.is_open(c)) else {
                continue;
            };
            match up.ping_sent {
                Some(sent) => {
                    let limit = if up.open { KEEPALIVE_DEAD } else { verify };
                    if now.saturating_duration_since(sent) > limit {
                        log::warn!(
                            "provider-agent {} did not answer a PING in {limit:?}; closing",
                            up.addr
                        );
                        cx.abort(conn);
                    }
                }
                None if now.saturating_duration_since(up.last_read) >= KEEPALIVE_IDLE => {
                    if let Some(out) = cx.output(conn) {
                        agent::encode_ping(out, 0);
                        up.ping_sent = Some(now);
                    }
                }
                None => {}
            }
        }
    }
}

impl Handler for ConsumerLoop {
    type Tag = Tag;
    type Msg = LoopMsg;

    fn started(&mut self, cx: &mut Ctx<'_, Self>) {
        cx.set_periodic(Duration::from_secs(1), TIMER_SWEEP);
    }

    fn opened(&mut self, cx: &mut Ctx<'_, Self>, conn: Conn<Tag>) {
        match conn.tag {
            Tag::Http => {
                self.metrics.connection(1);
                let decoder = RequestDecoder::with_limits(self.limits);
                self.http.insert(HttpConn::new(conn.id, decoder, cx.now()));
            }
            Tag::Agent(key) => {
                // Calls go to it once it answers a PING (see `on_pong`).
                let now = cx.now();
                if let Some(up) = self.upstreams.table.get_mut(key) {
                    if up.conn == Some(conn.id) {
                        up.last_read = now;
                        up.ping_sent = Some(now);
                        if let Some(out) = cx.output(conn.id) {
                            agent::encode_ping(out, 0);
                        }
                    }
                }
            }
        }
    }

    fn data(&mut self, cx: &mut Ctx<'_, Self>, conn: Conn<Tag>, input: &[u8]) -> usize {
        match conn.tag {
            Tag::Http => self.on_http_data(cx, conn.id, input),
            Tag::Agent(key) => self.on_agent_data(cx, conn.id, key, input),
        }
    }

    fn end_of_input(&mut self, _cx: &mut Ctx<'_, Self>, conn: Conn<Tag>) -> EndOfInput {
        match conn.tag {
            Tag::Http => self.on_http_end(conn.id),
            Tag::Agent(key) => {
                // The provider-agent finished sending: it answers nothing more, so no
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
            if c.paused && c.inflight() < self.config.max_pipeline as u64 {
                c.paused = false;
                cx.resume_reading(conn.id);
            }
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
            Tag::Agent(key) => self.on_agent_closed(cx, conn.id, key, &reason),
        }
        if self.stopping && self.calls.is_empty() {
            cx.exit();
        }
    }

    fn timer(&mut self, cx: &mut Ctx<'_, Self>, _timer: TimerId, token: u64) {
        match token {
            TIMER_SWEEP => self.sweep(cx),
            TIMER_DRAIN => {
                log::warn!(
                    "drain deadline passed with {} call(s) in flight",
                    self.calls.len()
                );
                cx.exit();
            }
            t if t & TIMER_RECONNECT == TIMER_RECONNECT => {
                self.connect(cx, (t & !TIMER_RECONNECT) as usize)
            }
            call => {
                let Some(c) = self.call_mut(call) else { return };
                c.timer = None;
                let sent_to = c.sent.take().map(|(up, _)| up);
                if let Some(up) = sent_to {
                    let call_id = c.call_id;
                    self.lost_on(call_id, up);
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
        }
    }

    fn stopping(&mut self, cx: &mut Ctx<'_, Self>) {
        self.stopping = true;
        let idle: Vec<ConnId> = self
            .http
            .iter()
            .filter(|c| c.inflight() == 0)
            .map(|c| c.id)
            .collect();
        for id in idle {
            cx.close(id);
        }
        if self.calls.is_empty() {
            cx.exit();
        } else {
            cx.set_timer(Duration::from_millis(self.config.drain_ms), TIMER_DRAIN);
        }
    }
}

/// Returns a buffer to the pool (bounded, and not the rare huge ones).
fn recycle_into(pool: &mut Vec<Vec<u8>>, mut buf: Vec<u8>) {
    if pool.len() < POOL_MAX && buf.capacity() <= 64 * 1024 {
        buf.clear();
        pool.push(buf);
    }
}

/// Whether `s` reads as a qualified Java class name (`com.example.FooException`).
fn is_class_name(s: &str) -> bool {
    s.split('.').count() >= 2
        && s.split('.').all(|part| {
            let mut chars = part.chars();
            chars
                .next()
                .is_some_and(|c| c.is_alphabetic() || c == '_' || c == '$')
                && chars.all(|c| c.is_alphanumeric() || c == '_' || c == '$')
        })
}

/// The JSON body of a provider error. The provider-agent reports a thrown exception
/// object as `class: message` (Java's `Throwable.toString`), or `class` alone; any other
/// text (e.g. a provider's status-80 error string) is the message.
fn provider_error_json(text: &str) -> String {
    let (class, message) = match text.split_once(": ") {
        Some((c, m)) if is_class_name(c) => (Some(c), m),
        _ if is_class_name(text) => (Some(text), text),
        _ => (None, text),
    };
    let s = |v: &str| Value::String(v.to_owned());
    let mut entries = vec![(s("error"), s("provider_error"))];
    if let Some(c) = class {
        entries.push((s("class"), s(c)));
    }
    entries.push((s("message"), s(message)));
    entries.push((s("status"), Value::Int(502)));
    Value::Map {
        type_name: None,
        entries,
    }
    .to_json()
    .to_string()
}

/// The provider's response attachments as `x-dubbo-attachment-<key>` header names and
/// values. Only pairs safe in an HTTP header pass: a key of token characters, a value
/// without control characters (tab aside); others are dropped (logged at debug).
fn attachment_header_names(attachments: agent::Attachments<'_>) -> Vec<(String, &str)> {
    attachments
        .filter(|(k, v)| {
            let safe = is_header_token(k) && is_header_value(v);
            if !safe {
                log::debug!("response attachment {k:?}={v:?} is not header-safe; dropped");
            }
            safe
        })
        .map(|(k, v)| (format!("{ATTACHMENT_HEADER_PREFIX}{k}"), v))
        .collect()
}

/// RFC 9110 `token`: what a header name may be made of.
fn is_header_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// A header value: no control characters but tab (so no CR or LF), no DEL.
fn is_header_value(s: &str) -> bool {
    s.bytes().all(|b| b == b'\t' || (b >= 0x20 && b != 0x7f))
}

/// The one hessian2 value a RESPONSE payload holds (`None`: not a whole value).
fn decode_payload(payload: &[u8]) -> Option<Value> {
    match hessian2::decode(payload) {
        Ok(Decoded::Complete { msg, .. }) => Some(msg),
        Ok(Decoded::Incomplete) | Err(_) => None,
    }
}

/// An exception summary as Java prints a chain: `class: message`, then one
/// `Caused by: class: message` line per cause.
fn exception_text(summary: &Value) -> String {
    let mut text = String::new();
    let mut level = Some(summary);
    while let Some(l) = level {
        if !text.is_empty() {
            text.push_str("\nCaused by: ");
        }
        let class = l.get("class").and_then(Value::as_str);
        let message = l.get("message").and_then(Value::as_str);
        match (class, message) {
            (Some(c), Some(m)) => text.push_str(&format!("{c}: {m}")),
            (Some(c), None) => text.push_str(c),
            (None, Some(m)) => text.push_str(m),
            (None, None) => text.push_str("exception"),
        }
        level = l.get("cause").filter(|c| matches!(c, Value::Map { .. }));
    }
    text
}

/// The JSON body of a thrown exception: `error`, then the summary's `class`, `message`
/// and `cause` (nested the same way), then `status`.
fn exception_json(summary: Value) -> String {
    let s = |v: &str| Value::String(v.to_owned());
    let mut entries = vec![(s("error"), s("provider_error"))];
    if let Value::Map {
        entries: fields, ..
    } = summary
    {
        entries.extend(fields);
    }
    entries.push((s("status"), Value::Int(502)));
    Value::Map {
        type_name: None,
        entries,
    }
    .to_json()
    .to_string()
}

/// The machine-readable `error` of a JSON error body, by HTTP status.
fn error_code(status: u16) -> &'static str {
    match status {
        400 => "bad_request",
        413 => "payload_too_large",
        431 => "header_too_large",
        502 => "provider_error",
        503 => "unavailable",
        504 => "timeout",
        _ => "error",
    }
}

/// The JSON body of an error answer: `{"error":code,"message":text,"status":n}`, the
/// same shape as a provider error's (which adds `class`).
fn error_json(status: u16, text: &str) -> String {
    let s = |v: &str| Value::String(v.to_owned());
    Value::Map {
        type_name: None,
        entries: vec![
            (s("error"), s(error_code(status))),
            (s("message"), s(text)),
            (s("status"), Value::Int(i32::from(status))),
        ],
    }
    .to_json()
    .to_string()
}

/// Appends an error answer: plain text for the race's form calls (what its clients
/// expect), a JSON object ([`error_json`]) for JSON invocations.
fn write_error_answer(out: &mut Vec<u8>, render: Render, status: u16, text: &str, ka: bool) {
    match render {
        Render::Text => http::write_response(
            out,
            status,
            "text/plain; charset=utf-8",
            text.as_bytes(),
            ka,
        ),
        Render::Json => {
            let body = error_json(status, text);
            http::write_response(out, status, "application/json", body.as_bytes(), ka)
        }
    }
}

/// Whether a request head (as much as arrived) says its body is JSON: used to render
/// the HTTP decoder's refusals (e.g. 413) as the request expects. Only on that error
/// path, so parsing the head again costs nothing in the common case.
fn head_is_json(buf: &[u8]) -> bool {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut req = httparse::Request::new(&mut headers);
    if req.parse(buf).is_err() {
        return false;
    }
    req.headers.iter().any(|h| {
        h.name.eq_ignore_ascii_case("content-type") && {
            let mime = h.value.split(|&b| b == b';').next().unwrap_or_default();
            mime.trim_ascii().eq_ignore_ascii_case(b"application/json")
        }
    })
}

fn is_json(req: &Request<'_>) -> bool {
    req.content_type.is_some_and(|ct| {
        let mime = ct.split(|&b| b == b';').next().unwrap_or_default();
        mime.trim_ascii().eq_ignore_ascii_case(b"application/json")
    })
}

/// A call ready to send: its signature (borrowed from the request where it can be) and
/// attachments; the arguments are already encoded.
struct Prepared<'a> {
    service: Cow<'a, str>,
    method: Cow<'a, str>,
    types: Cow<'a, str>,
    version: Cow<'a, str>,
    group: Cow<'a, str>,
    attachments: Vec<(String, String)>,
    timeout_ms: Option<u64>,
}

fn header_str<'a>(req: &Request<'a>, name: &str) -> &'a str {
    req.header(name)
        .and_then(|v| std::str::from_utf8(v).ok())
        .map_or("", str::trim)
}

/// The race's form call: one String parameter (or none).
fn prepare_form<'a>(
    req: &'a Request<'_>,
    args: &mut Vec<u8>,
    scratch: &'a mut Vec<u8>,
) -> Result<Prepared<'a>, String> {
    let call = form::race_call_in(&req.body, scratch).map_err(|e| format!("bad form body: {e}"))?;
    let types = call.parameter_types.trim();
    match (types, &call.parameter) {
        ("Ljava/lang/String;", Some(p)) => hessian2::ser::write_string(args, p),
        ("Ljava/lang/String;", None) => return Err("missing field: parameter".into()),
        ("", None) => {}
        ("", Some(p)) => hessian2::ser::write_string(args, p),
        (other, _) => {
            return Err(format!(
                "form calls take one String parameter (parameterTypesString=Ljava/lang/String;), got {other:?}; use a JSON invocation for other types"
            ))
        }
    }
    let types = if call.parameter.is_some() {
        "Ljava/lang/String;"
    } else {
        ""
    };
    Ok(Prepared {
        service: call.interface,
        method: call.method,
        types: Cow::Borrowed(types),
        version: Cow::Borrowed(header_str(req, VERSION_HEADER)),
        group: Cow::Borrowed(header_str(req, GROUP_HEADER)),
        attachments: header_attachments(req, Vec::new())?,
        timeout_ms: None,
    })
}

/// Adds the attachments sent as `x-dubbo-attachment-<key>` headers to `attachments`
/// (those of a JSON body): a key already there keeps its value (the body wins), and the
/// first of repeated headers wins. The key is taken as sent (case kept), the value
/// trimmed. Without such headers nothing is allocated.
fn header_attachments(
    req: &Request<'_>,
    mut attachments: Vec<(String, String)>,
) -> Result<Vec<(String, String)>, String> {
    let prefix = ATTACHMENT_HEADER_PREFIX.len();
    for (name, value) in req.headers() {
        let is_attachment = name
            .get(..prefix)
            .is_some_and(|p| p.eq_ignore_ascii_case(ATTACHMENT_HEADER_PREFIX));
        if !is_attachment {
            continue;
        }
        let key = name.get(prefix..).unwrap_or_default();
        if key.is_empty() {
            return Err(format!(
                "header {name}: the attachment key is missing (send {ATTACHMENT_HEADER_PREFIX}<key>: <value>)"
            ));
        }
        let Ok(value) = std::str::from_utf8(value) else {
            return Err(format!("header {name}: the attachment value is not UTF-8"));
        };
        if !attachments.iter().any(|(k, _)| k == key) {
            attachments.push((key.to_owned(), value.trim().to_owned()));
        }
    }
    check_reserved(&attachments)?;
    Ok(attachments)
}

/// Refuses attachments that would route the call (see
/// [`codec::dubbo::RESERVED_ATTACHMENTS`]): the agents set those from the call itself,
/// and the error says where the caller names them instead.
fn check_reserved(attachments: &[(String, String)]) -> Result<(), String> {
    let Some((key, _)) = attachments
        .iter()
        .find(|(k, _)| codec::dubbo::is_reserved_attachment(k))
    else {
        return Ok(());
    };
    let instead = match key.to_ascii_lowercase().as_str() {
        "version" => "the \"version\" field of a JSON invocation or the x-dubbo-version header",
        "group" => "the \"group\" field of a JSON invocation or the x-dubbo-group header",
        "timeout" => "the \"timeout\" field of a JSON invocation or the x-dubbo-timeout header",
        "dubbo" => "nothing: the provider-agent writes the Dubbo version",
        _ => "the interface of the call",
    };
    Err(format!(
        "attachment {key:?} is reserved (one of {}): use {instead}",
        codec::dubbo::RESERVED_ATTACHMENTS.join(", ")
    ))
}

/// A JSON typed invocation: arguments encoded by their declared Java types.
/// `max_depth` bounds the arguments' nesting (checked before anything is encoded).
fn prepare_json<'a>(
    req: &'a Request<'_>,
    args: &mut Vec<u8>,
    max_depth: usize,
) -> Result<Prepared<'a>, String> {
    let inv = Invocation::from_json(&req.body).map_err(|e| format!("bad JSON invocation: {e}"))?;
    inv.check_depth(max_depth).map_err(|e| {
        format!("bad JSON invocation: {e} (the limit set by consumer-agent --max-json-depth)")
    })?;
    let mut encoder = hessian2::Encoder::new();
    for (i, (t, a)) in inv.parameter_types.iter().zip(&inv.arguments).enumerate() {
        encoder
            .encode_json_arg(t, a, args)
            .map_err(|e| format!("argument {i} ({t}): {e}"))?;
    }
    let types: Vec<&str> = inv.parameter_types.iter().map(String::as_str).collect();
    Ok(Prepared {
        types: Cow::Owned(codec::dubbo::jvm_descriptor(&types)),
        service: Cow::Owned(inv.interface),
        method: Cow::Owned(inv.method),
        version: Cow::Owned(inv.version.unwrap_or_default()),
        group: Cow::Owned(inv.group.unwrap_or_default()),
        attachments: header_attachments(req, inv.attachments)?,
        timeout_ms: inv.timeout_ms,
    })
}

#[cfg(test)]
mod tests {
    use super::{
        error_json, exception_json, exception_text, head_is_json, is_header_token, is_header_value,
        provider_error_json,
    };
    use codec::hessian2::{exception_summary, Value};

    #[test]
    fn error_bodies_as_json() {
        assert_eq!(
            error_json(400, "missing field `method`"),
            r#"{"error":"bad_request","message":"missing field `method`","status":400}"#
        );
        assert_eq!(
            error_json(504, "provider timed out"),
            r#"{"error":"timeout","message":"provider timed out","status":504}"#
        );
        assert_eq!(
            error_json(503, "no \"x\"\n"),
            r#"{"error":"unavailable","message":"no \"x\"\n","status":503}"#
        );
        assert!(error_json(413, "").starts_with(r#"{"error":"payload_too_large""#));
    }

    #[test]
    fn json_heads() {
        let head = |ct: &str| {
            format!("POST / HTTP/1.1\r\nContent-Type: {ct}\r\nContent-Length: 9\r\n\r\n")
        };
        assert!(head_is_json(head("application/json").as_bytes()));
        assert!(head_is_json(
            head("Application/JSON; charset=utf-8").as_bytes()
        ));
        assert!(!head_is_json(
            head("application/x-www-form-urlencoded").as_bytes()
        ));
        assert!(!head_is_json(b"garbage\r\n\r\n"));
        assert!(!head_is_json(b""));
    }

    #[test]
    fn header_safe_attachments() {
        for ok in ["trace", "X-B3-TraceId", "a.b_c~1", "!#$%&'*+-.^_`|~"] {
            assert!(is_header_token(ok), "{ok:?}");
        }
        for bad in [
            "", "a b", "a:b", "a\r\nb", "ключ", "a\"b", "a(b)", "a/b", "a\tb",
        ] {
            assert!(!is_header_token(bad), "{bad:?}");
        }
        for ok in ["", "v 1", "\tv", "значение", "a:b/c=\"d\""] {
            assert!(is_header_value(ok), "{ok:?}");
        }
        for bad in ["a\r\nb", "a\nb", "a\rb", "a\u{0}b", "a\u{7f}b", "a\u{1b}b"] {
            assert!(!is_header_value(bad), "{bad:?}");
        }
    }

    #[test]
    fn exceptions_with_their_causes() {
        let object = |class: &str, message: Option<&str>, cause: Value| Value::Object {
            class: class.into(),
            fields: vec![
                (
                    "detailMessage".into(),
                    message.map_or(Value::Null, |m| Value::String(m.into())),
                ),
                ("cause".into(), cause),
            ],
        };
        let root = object("java.io.IOException", Some("disk gone"), Value::Ref(2));
        let mid = object("java.lang.IllegalStateException", None, root);
        let thrown = object("com.example.NoUser", Some("no user 7"), mid);
        let summary = exception_summary(&thrown);
        assert_eq!(
            exception_text(&summary),
            "com.example.NoUser: no user 7\n\
             Caused by: java.lang.IllegalStateException\n\
             Caused by: java.io.IOException: disk gone"
        );
        assert_eq!(
            exception_json(summary),
            concat!(
                r#"{"error":"provider_error","class":"com.example.NoUser","message":"no user 7","#,
                r#""cause":{"class":"java.lang.IllegalStateException","message":null,"#,
                r#""cause":{"class":"java.io.IOException","message":"disk gone"}},"status":502}"#
            )
        );
        let alone = exception_summary(&object("a.B", Some("m"), Value::Null));
        assert_eq!(exception_text(&alone), "a.B: m");
    }

    #[test]
    fn provider_errors_as_json() {
        assert_eq!(
            provider_error_json("com.example.NoUser: no user 7: gone"),
            r#"{"error":"provider_error","class":"com.example.NoUser","message":"no user 7: gone","status":502}"#
        );
        assert_eq!(
            provider_error_json("java.lang.IllegalStateException"),
            r#"{"error":"provider_error","class":"java.lang.IllegalStateException","message":"java.lang.IllegalStateException","status":502}"#
        );
        assert_eq!(
            provider_error_json("Can not find method: a.B:0.0.0#m() \"x\"\n"),
            r#"{"error":"provider_error","message":"Can not find method: a.B:0.0.0#m() \"x\"\n","status":502}"#
        );
        assert_eq!(
            provider_error_json("Error: boom"),
            r#"{"error":"provider_error","message":"Error: boom","status":502}"#
        );
    }
}
