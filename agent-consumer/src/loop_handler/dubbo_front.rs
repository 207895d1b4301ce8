//! The Dubbo front-end (`--dubbo-listen`): unmodified Dubbo consumers call through the
//! consumer-agent as they would call a provider.
//!
//! Per request only what routing needs is read: the Dubbo header, the body's leading
//! strings and its attachments (`codec::dubbo::decode_routed_request`); the arguments
//! go on as the caller wrote them. Calls are pipelined and answered in any order,
//! matched by id; heartbeats are answered as Dubbo's own server answers them. The
//! provider's answer comes back byte for byte (a RAW agent RESPONSE: only the request
//! id is the caller's); failures of the mesh itself become the Dubbo statuses client
//! libraries know (SERVICE_NOT_FOUND, SERVER_THREADPOOL_EXHAUSTED, SERVER_TIMEOUT,
//! BAD_REQUEST, and SERVICE_ERROR for a call a provider-agent's authorization policy
//! refused, as the provider-agent's own Dubbo front-end answers it).

use std::time::Duration;

use codec::agent::{self, SignatureRef, Status};
use codec::dubbo::server::{self, Incoming};
use codec::dubbo::{self, status, DEFAULT_DUBBO_VERSION};
use codec::hessian2;
use codec::Decoded;
use reactor::{ConnId, Ctx, EndOfInput};

use super::observe::Names;
use super::{Call, ConsumerLoop, LoopTimer, Origin, HAND_OFF_RETRY};

use crate::metrics::Outcome;

/// What a call lost with its provider-agent connection is answered (call_core).
pub(super) const LOST: &str = "connection to provider-agent lost";

/// A caller's Dubbo protocol version, kept inline (the call carries it).
pub(super) use codec::dubbo::server::ProtocolVersion as Version;

/// One Dubbo consumer's connection.
#[derive(Debug, Default)]
pub(super) struct DubboConn {
    /// Two-way calls not answered yet.
    inflight: usize,
    /// The consumer finished sending: close once its calls are answered.
    input_ended: bool,
    /// Read no more, close once its calls are answered: it sent something that is not
    /// Dubbo, or the agent is stopping.
    closing: bool,
    /// Reading paused (too many calls in flight, or answers piling up unread).
    paused: bool,
    /// Read no more: the connection goes to the successor process (binary upgrade)
    /// once its calls are answered.
    handing: bool,
    /// The consumer's address (the access log's `caller`), read once at accept.
    pub(super) peer: Option<std::net::SocketAddr>,
}

impl ConsumerLoop {
    /// Reads Dubbo frames off a consumer's connection.
    pub(super) fn on_dubbo_data(
        &mut self,
        cx: &mut Ctx<'_, Self>,
        id: ConnId,
        input: &[u8],
    ) -> usize {
        let mut pos = 0;
        while let Some(rest) = input.get(pos..).filter(|r| !r.is_empty()) {
            let Some(conn) = self.dubbo.get_mut(id) else {
                return input.len();
            };
            if conn.closing || conn.handing {
                return pos; // what is left goes with the connection, or nowhere
            }
            if conn.inflight >= self.config.max_pipeline || cx.is_congested(id) {
                conn.paused = true;
                cx.pause_reading(id);
                return pos;
            }
            // A body over --max-body is refused as soon as its header is read.
            if let Some(h) = server::oversized_request(rest, self.config.max_body) {
                let msg = format!(
                    "request body of {} bytes is over the consumer-agent's --max-body {}",
                    h.body_len, self.config.max_body
                );
                self.metrics.request();
                self.metrics.answered(Outcome::BadRequest, 0);
                let bytes_out = write_error(cx, id, h.id, status::BAD_REQUEST, &msg);
                let (caller, bytes_in) = (self.dubbo_peer(id), rest.len());
                let (names, status) = (Names::default(), u16::from(status::BAD_REQUEST));
                self.log_refused("dubbo", caller, names, status, bytes_in, bytes_out);
                cx.close(id);
                return input.len();
            }
            match dubbo::decode_frame(rest) {
                Ok(Decoded::Incomplete) => return pos,
                Ok(Decoded::Complete { msg, consumed }) => {
                    pos += consumed;
                    if !self.on_dubbo_frame(cx, id, &msg) {
                        log::debug!("a response frame from a Dubbo consumer; closing");
                        return self.break_off(cx, id, input.len());
                    }
                }
                Err(e) => {
                    log::debug!("bad Dubbo frame from a consumer: {e}; closing");
                    return self.break_off(cx, id, input.len());
                }
            }
        }
        pos
    }

    /// One whole frame; false when the connection must close (it is not a Dubbo
    /// consumer's).
    fn on_dubbo_frame(
        &mut self,
        cx: &mut Ctx<'_, Self>,
        id: ConnId,
        frame: &dubbo::Frame<'_>,
    ) -> bool {
        match server::classify(frame) {
            Incoming::Call => {}
            Incoming::NotAConsumer => return false,
            Incoming::Event { reply } => {
                // Heartbeats (and read-only events) need no call: a two-way one gets the
                // reply Dubbo's own server gives, same id, event flag set.
                if let Some(reply) = reply {
                    if let Some(out) = cx.output(id) {
                        dubbo::encode_heartbeat_reply(out, reply);
                    }
                }
                return true;
            }
        }
        self.metrics.request();
        let two_way = frame.is_two_way();
        let bytes_in = frame.body.len() + dubbo::HEADER_LEN;
        let fail = |cx: &mut Ctx<'_, Self>, this: &mut Self, text: &str, names: Names<'_>| {
            this.metrics.answered(Outcome::BadRequest, 0);
            let bytes_out = if two_way {
                write_error(cx, id, frame.id(), status::BAD_REQUEST, text)
            } else {
                0
            };
            let (caller, status) = (this.dubbo_peer(id), u16::from(status::BAD_REQUEST));
            this.log_refused("dubbo", caller, names, status, bytes_in, bytes_out);
        };
        if let Some(msg) = server::unsupported_serialization(frame) {
            fail(cx, self, &msg, Names::default());
            return true;
        }
        let routed = match dubbo::decode_routed_request(frame.body) {
            Ok(r) => r,
            Err(e) => {
                let msg = format!("malformed Dubbo request: {e}");
                fail(cx, self, &msg, Names::default());
                return true;
            }
        };
        let group = routed.attachment("group").unwrap_or_default();
        let sig = SignatureRef {
            service: &routed.path,
            method: &routed.method,
            parameter_types: &routed.descriptor,
            version: &routed.version,
            group,
        };
        let call_id = match self.intern(cx, sig) {
            Ok(call_id) => call_id,
            Err(e) => {
                let names = Names {
                    service: &routed.path,
                    method: &routed.method,
                    version: &routed.version,
                    group,
                };
                fail(cx, self, &e.to_string(), names);
                return true;
            }
        };
        if let Some(n) = self.signature_uses.get_mut(call_id as usize) {
            *n += 1;
        }
        let mut timeout = Duration::from_millis(self.config.timeout_ms);
        if let Some(ms) = server::requested_timeout_ms(&routed) {
            timeout = timeout.min(Duration::from_millis(ms));
        }
        // The routing keys are the agents' to set from the call; the rest travel on.
        let attachments: Vec<(String, String)> = routed
            .attachments
            .into_iter()
            .filter(|(k, _)| !dubbo::is_reserved_attachment(k))
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect();
        // With tracing on: the caller's context from its attachments, continued.
        let mut attachments = attachments;
        let trace = (self.tracer.as_mut()).and_then(|t| {
            let sent = attachments.iter().map(|(k, v)| (k.as_str(), v.as_str()));
            let found = codec::trace::Gathered::from_pairs(sent);
            t.begin(found, "dubbo", cx.wall_unix_nanos())
        });
        if trace.is_some() {
            super::tracing::strip(&mut attachments);
        }
        let mut args = self.take_buf();
        args.extend_from_slice(routed.args);
        let now = cx.now();
        self.next_gen = self.next_gen.wrapping_add(1) & 0x7fff_ffff;
        let key = self.calls.insert(Call {
            gen: self.next_gen,
            origin: Origin::Dubbo {
                conn: id,
                id: frame.id(),
                two_way,
            },
            call_id,
            args,
            attachments,
            // The provider shapes its answer by the caller's protocol version (result
            // flags with attachments from 2.0.2 on): it travels as `dubbo` (see
            // codec::agent's rules on RAW), unless it is the version provider-agents
            // write anyway (Java 2.7's), so most calls carry no attachment at all.
            dubbo_version: Some(routed.dubbo_version.as_ref())
                .filter(|v| *v != DEFAULT_DUBBO_VERSION)
                .and_then(Version::new),
            started: now,
            deadline: now + timeout,
            timer: None,
            retry_timer: None,
            sent: None,
            attempts: 0,
            upstream: None,
            bytes_in: u32::try_from(frame.body.len() + dubbo::HEADER_LEN).unwrap_or(u32::MAX),
            trace,
            trace_id: None,
        });
        if let Some(conn) = self.dubbo.get_mut(id) {
            conn.inflight += 1;
        }
        let call = Self::call_id(key, self.next_gen);
        let timer = cx.set_timer(timeout, super::LoopTimer::Call(call));
        if let Some(c) = self.calls.get_mut(key) {
            c.timer = Some(timer);
        }
        self.dispatch(cx, call, None);
        true
    }

    /// A consumer that sent what is not Dubbo: nothing more of it is read; it gets the
    /// answers to its calls in flight, then the connection closes.
    fn break_off(&mut self, cx: &mut Ctx<'_, Self>, id: ConnId, consumed: usize) -> usize {
        match self.dubbo.get_mut(id) {
            Some(c) if c.inflight > 0 => {
                c.closing = true;
                cx.pause_reading(id);
            }
            _ => cx.close(id),
        }
        consumed
    }

    /// Completes a Dubbo consumer's call with its answer frame (`write` appends it,
    /// given the caller's request id); one-way calls are answered to nobody.
    pub(super) fn finish_dubbo(
        &mut self,
        cx: &mut Ctx<'_, Self>,
        call: u64,
        outcome: Outcome,
        write: impl FnOnce(&mut Vec<u8>, i64),
    ) {
        let Some(c) = self.take_call(cx, call, outcome) else {
            return;
        };
        let Origin::Dubbo { conn, id, two_way } = c.origin else {
            return;
        };
        // The access log's status: the answer's Dubbo status byte (none one-way).
        let (mut status, mut bytes_out) = (0, 0);
        if two_way {
            if let Some(out) = cx.output(conn) {
                let start = out.len();
                write(out, id);
                bytes_out = out.len().saturating_sub(start);
                status = out.get(start + 3).copied().unwrap_or(0);
            }
        }
        self.log_call(cx, &c, outcome, u16::from(status), bytes_out);
        let Some(dc) = self.dubbo.get_mut(conn) else {
            return;
        };
        dc.inflight = dc.inflight.saturating_sub(1);
        if dc.closing {
            if dc.inflight == 0 {
                cx.close(conn);
            }
        } else if dc.handing {
            if dc.inflight == 0 {
                cx.set_timer(Duration::ZERO, LoopTimer::HandOff(conn));
            }
        } else if dc.input_ended && dc.inflight == 0 {
            cx.shutdown_write(conn);
        } else if dc.paused && dc.inflight < self.config.max_pipeline && !cx.is_congested(conn) {
            dc.paused = false;
            cx.resume_reading(conn);
        }
    }

    /// Answers a Dubbo call from its agent RESPONSE: the provider's own Dubbo answer
    /// when the provider-agent relayed it (RAW), else one made of the agent's.
    pub(super) fn answer_dubbo(
        &mut self,
        cx: &mut Ctx<'_, Self>,
        call: u64,
        r: &agent::Response<'_>,
    ) {
        let outcome = match r.status {
            Status::Ok | Status::Exception => Outcome::Ok,
            Status::Timeout => Outcome::Timeout,
            Status::BadRequest => Outcome::BadRequest,
            Status::Overloaded | Status::Unavailable => Outcome::Unavailable,
            Status::ProviderError => Outcome::ProviderError,
            Status::Forbidden => Outcome::Forbidden,
        };
        if let Some(raw) = r.raw {
            let body = r.payload;
            return self.finish_dubbo(cx, call, outcome, |out, id| {
                // A response: no request, two-way or event flag; the provider's
                // serialization and status, the caller's id.
                dubbo::write_header(out, raw.serialization, raw.status, id, body.len() as u32);
                out.extend_from_slice(body);
            });
        }
        match r.status {
            // From a provider-agent whose provider speaks fastjson (no RAW there): the
            // value is hessian2 already, the attachments strings.
            Status::Ok => {
                let (payload, attachments) = (r.payload, r.attachments);
                self.finish_dubbo(cx, call, outcome, |out, id| {
                    write_value_response(out, id, payload, attachments);
                });
            }
            other => {
                let text = match other {
                    Status::Exception => "the provider threw an exception".to_owned(),
                    _ => String::from_utf8_lossy(r.payload).into_owned(),
                };
                let dubbo_status = match other {
                    Status::Overloaded => status::SERVER_THREADPOOL_EXHAUSTED,
                    Status::Unavailable => status::SERVICE_NOT_FOUND,
                    Status::Timeout => status::SERVER_TIMEOUT,
                    Status::BadRequest => status::BAD_REQUEST,
                    Status::Exception => status::SERVICE_ERROR,
                    // What Dubbo's own server answers for an invocation refused on its
                    // side (its TokenFilter's "Forbid invoke"): a client raises it as an
                    // RpcException with the message (see the provider-agent's
                    // dubbo_front).
                    Status::Forbidden => status::SERVICE_ERROR,
                    _ => status::SERVER_ERROR,
                };
                self.finish_dubbo(cx, call, outcome, |out, id| {
                    let _ = server::encode_error(out, id, dubbo_status, &text);
                });
            }
        }
    }

    /// Fails a Dubbo call for a reason of the mesh's own: the HTTP status the HTTP
    /// front-end would answer becomes the Dubbo status a client library understands.
    pub(super) fn fail_dubbo(
        &mut self,
        cx: &mut Ctx<'_, Self>,
        call: u64,
        outcome: Outcome,
        http_status: u16,
        text: &str,
    ) {
        let dubbo_status = match (outcome, http_status) {
            (Outcome::Timeout, _) => status::SERVER_TIMEOUT,
            (Outcome::BadRequest, _) => status::BAD_REQUEST,
            (Outcome::Forbidden, _) => status::SERVICE_ERROR,
            (Outcome::RateLimited, _) => status::SERVER_THREADPOOL_EXHAUSTED,
            (Outcome::Unavailable, _) if text.contains("in-flight limit") => {
                status::SERVER_THREADPOOL_EXHAUSTED
            }
            // Lost with its connection: it may have run, so not "not found".
            (Outcome::Unavailable, _) if text == LOST => status::SERVER_ERROR,
            (Outcome::Unavailable, _) => status::SERVICE_NOT_FOUND,
            _ => status::SERVER_ERROR,
        };
        self.finish_dubbo(cx, call, outcome, |out, id| {
            let _ = server::encode_error(out, id, dubbo_status, text);
        });
    }

    /// A stop: every Dubbo consumer gets the read-only event (as from a Dubbo server
    /// shutting down: it sends this agent nothing new), is read no further, and its
    /// connection closes once its calls in flight are answered. Handing over to a
    /// successor process instead, it is read no further and, once its calls are
    /// answered, its connection goes to the successor, which reads on from where this
    /// process stopped: the consumer sees nothing of it.
    pub(super) fn stop_dubbo_consumers(&mut self, cx: &mut Ctx<'_, Self>) {
        if self.handoff.is_some() {
            let ids: Vec<ConnId> = self.dubbo.iter().map(|(id, _)| id).collect();
            for id in ids {
                self.hand_on_dubbo(cx, id);
            }
            return;
        }
        for (id, conn) in self.dubbo.iter_mut() {
            if let Some(out) = cx.output(id) {
                dubbo::encode_readonly_event(out, 0);
            }
            if conn.inflight == 0 {
                cx.close(id);
            } else {
                conn.closing = true;
                cx.pause_reading(id);
            }
        }
    }

    /// Marks a consumer's connection for the successor process: read no further, handed
    /// over once its calls are answered.
    pub(super) fn hand_on_dubbo(&mut self, cx: &mut Ctx<'_, Self>, id: ConnId) {
        if let Some(conn) = self.dubbo.get_mut(id) {
            conn.handing = true;
            cx.pause_reading(id);
            if conn.inflight == 0 {
                cx.set_timer(Duration::ZERO, LoopTimer::HandOff(id));
            }
        }
    }

    /// Hands a Dubbo consumer's connection, its calls answered, to the successor
    /// process, with what it sent that is not processed yet; retried while its
    /// answers are still being written. What cannot be handed over (a successor gone)
    /// is closed, as without a successor.
    pub(super) fn hand_off_dubbo(&mut self, cx: &mut Ctx<'_, Self>, id: ConnId) {
        let Some(handoff) = self.handoff.clone() else {
            return cx.close(id);
        };
        if self
            .dubbo
            .get(id)
            .is_none_or(|c| c.inflight > 0 || c.closing)
        {
            return;
        }
        match cx.detach(id) {
            Ok(conn) => {
                self.dubbo.remove(id);
                self.metrics.connection(-1);
                if let Err(e) = handoff.send(crate::upgrade::DUBBO, &conn.stream, &conn.input) {
                    log::warn!("handing a Dubbo consumer's connection over: {e}; closing it");
                }
                if self.stopping && self.calls.is_empty() && self.holds_no_client() {
                    cx.exit();
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                cx.set_timer(HAND_OFF_RETRY, LoopTimer::HandOff(id));
            }
            Err(e) => {
                log::debug!("a Dubbo consumer's connection cannot be handed over: {e}; closing it");
                cx.close(id);
            }
        }
    }

    /// The consumer finished sending: answer what it asked, then close.
    pub(super) fn on_dubbo_end(&mut self, id: ConnId) -> EndOfInput {
        match self.dubbo.get_mut(id) {
            Some(c) if c.inflight > 0 => {
                c.input_ended = true;
                EndOfInput::KeepOpen
            }
            _ => EndOfInput::Close,
        }
    }

    /// Answers piling up unread have drained: read again if reading was paused.
    pub(super) fn on_dubbo_drained(&mut self, cx: &mut Ctx<'_, Self>, id: ConnId) {
        if let Some(c) = self.dubbo.get_mut(id) {
            if c.paused && !c.closing && !c.handing && c.inflight < self.config.max_pipeline {
                c.paused = false;
                cx.resume_reading(id);
            }
        }
    }
}

/// Writes an error answer to request `id` on `conn` at once.
fn write_error(
    cx: &mut Ctx<'_, ConsumerLoop>,
    conn: ConnId,
    id: i64,
    dubbo_status: u8,
    text: &str,
) -> usize {
    match cx.output(conn) {
        Some(out) => {
            let start = out.len();
            let _ = server::encode_error(out, id, dubbo_status, text);
            out.len().saturating_sub(start)
        }
        None => 0,
    }
}

/// A Dubbo OK response carrying a hessian2 value as it is, and string attachments
/// (result flag 1, or 4 with attachments, as Java 2.7 writes them).
fn write_value_response(
    out: &mut Vec<u8>,
    id: i64,
    value: &[u8],
    attachments: agent::Attachments<'_>,
) {
    let mut tail = Vec::new();
    if attachments.remaining() > 0 {
        hessian2::write_map_begin(&mut tail, None);
        for (k, v) in attachments {
            hessian2::write_string(&mut tail, k);
            hessian2::write_string(&mut tail, v);
        }
        hessian2::write_end(&mut tail);
    }
    let flag: u8 = if tail.is_empty() { 0x91 } else { 0x94 };
    let len = 1 + value.len() + tail.len();
    dubbo::write_header(
        out,
        dubbo::SERIALIZATION_HESSIAN2,
        status::OK,
        id,
        len as u32,
    );
    out.push(flag);
    out.extend_from_slice(value);
    out.extend_from_slice(&tail);
}
