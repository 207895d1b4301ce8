//! The Dubbo front-end (`--dubbo-listen`): unmeshed Dubbo consumers (that found this
//! agent in the registry, `dubbo.addr`) call the services it fronts as they would call
//! the provider.
//!
//! Per request only what routing needs is read: the Dubbo header, the body's leading
//! strings and its attachments (`codec::dubbo::decode_routed_request`). A call of a
//! service, version and group this agent serves, admitted by the shared in-flight
//! budget, goes to a provider connection as the consumer wrote it but for its 8-byte
//! id, rewritten to the provider-side id that finds the pending call; the provider's
//! answer comes back byte for byte under the consumer's id again. So the consumer gets
//! the provider's own values, exceptions, attachments and error statuses. Calls are
//! pipelined and answered in any order; heartbeats are answered as Dubbo's own server
//! answers them. The agent's own refusals are the Dubbo statuses client libraries know:
//! BAD_REQUEST (40), SERVICE_NOT_FOUND (60), SERVER_THREADPOOL_EXHAUSTED (100),
//! SERVER_TIMEOUT (31), SERVER_ERROR (80), and SERVICE_ERROR (70) for a call the
//! authorization policy (`--authz`) refuses, each with a message saying why.

use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use codec::agent::{self, Status};
use codec::dubbo::server::{self, Incoming};
use codec::dubbo::{self, status};
use codec::Decoded;
use reactor::{ConnId, Ctx};
use reactor_admin::otlp::CallNames;

use super::observe::{self, Arrival};
use super::translate::{DEFAULT_CALL_TIMEOUT_MS, MAX_CALL_TIMEOUT_MS};
use super::{LoopTimer, ProviderLoop};
use crate::admission::Refusal;
use crate::authz;
use crate::upstream::{Answer, Pending};

/// The least silence after which a Dubbo consumer's idle connection is closed (with
/// `--idle-timeout-secs` not 0): Dubbo clients heartbeat an idle connection every 60 s
/// by default, and a Dubbo server closes one silent for three of them.
pub(super) const DUBBO_IDLE_MIN: Duration = Duration::from_secs(180);

/// A Dubbo consumer's connection: how it is being read.
#[derive(Debug, Default)]
pub(super) struct DubboConn {
    /// Reading paused: `--dubbo-max-pipeline` calls in flight, or answers piling up
    /// unread.
    paused: bool,
    /// It sent something that is not Dubbo: read no more, close once its calls are
    /// answered.
    closing: bool,
    /// Read no more: the connection goes to the successor process (binary upgrade)
    /// once its calls are answered.
    handing: bool,
}

/// Why a call is refused: the status counted, the Dubbo status answered, the message.
type Refused = (Status, u8, String);

impl ProviderLoop {
    fn dubbo_mut(&mut self, id: ConnId) -> Option<&mut DubboConn> {
        self.inbound_mut(id).and_then(|i| i.dubbo.as_mut())
    }

    fn dubbo_max_pipeline(&self) -> usize {
        usize::try_from(self.cfg.agent.dubbo_max_pipeline).unwrap_or(usize::MAX)
    }

    /// Reads Dubbo frames off a consumer's connection.
    pub(super) fn dubbo_data(
        &mut self,
        cx: &mut Ctx<'_, Self>,
        conn: ConnId,
        input: &[u8],
    ) -> usize {
        let now = cx.now();
        if let Some(inb) = self.inbound_mut(conn) {
            inb.last_active = now;
        }
        let max_body = usize::try_from(self.cfg.agent.dubbo_max_body).unwrap_or(usize::MAX);
        let max_pipeline = self.dubbo_max_pipeline();
        let mut pos = 0;
        while let Some(rest) = input.get(pos..).filter(|r| !r.is_empty()) {
            let inflight = self.upstream.inflight_on(conn);
            let congested = cx.is_congested(conn);
            let Some(d) = self.dubbo_mut(conn) else {
                return input.len();
            };
            if d.closing {
                return input.len();
            }
            if d.handing {
                return pos; // what is left goes with the connection
            }
            if inflight >= max_pipeline || congested {
                // Read on once answers go out (`dubbo_answered`, `dubbo_drained`).
                d.paused = true;
                cx.pause_reading(conn);
                return pos;
            }
            // A body over --dubbo-max-body is refused as soon as its header is read.
            if let Some(h) = server::oversized_request(rest, max_body) {
                let msg = format!(
                    "request body of {} bytes is over the provider-agent's --dubbo-max-body {max_body}",
                    h.body_len
                );
                self.m().dubbo_requests.fetch_add(1, Relaxed);
                self.m().dubbo_response(Status::BadRequest);
                write_error(cx, conn, h.id, status::BAD_REQUEST, &msg);
                cx.close(conn);
                return input.len();
            }
            match dubbo::decode_frame(rest) {
                Ok(Decoded::Incomplete) => return pos,
                Ok(Decoded::Complete { msg, consumed }) => {
                    pos += consumed;
                    if !self.dubbo_frame(cx, conn, &msg) {
                        log::debug!(
                            "loop {}: a response frame from a Dubbo consumer; closing",
                            self.index
                        );
                        return self.break_off(cx, conn, input.len());
                    }
                }
                Err(e) => {
                    log::debug!(
                        "loop {}: bad Dubbo frame from a consumer: {e}; closing",
                        self.index
                    );
                    return self.break_off(cx, conn, input.len());
                }
            }
        }
        pos
    }

    /// One whole frame; false when the connection must close (it is not a Dubbo
    /// consumer's).
    fn dubbo_frame(
        &mut self,
        cx: &mut Ctx<'_, Self>,
        conn: ConnId,
        frame: &dubbo::Frame<'_>,
    ) -> bool {
        match server::classify(frame) {
            Incoming::Call => {}
            Incoming::NotAConsumer => return false,
            Incoming::Event { reply } => {
                // A heartbeat gets the reply Dubbo's own server gives: same id, event flag.
                if let Some(id) = reply {
                    if let Some(out) = cx.output(conn) {
                        dubbo::encode_heartbeat_reply(out, id);
                    }
                }
                return true;
            }
        }
        self.m().dubbo_requests.fetch_add(1, Relaxed);
        self.arriving = None;
        if let Err((counted, dubbo_status, msg)) = self.forward(cx, conn, frame) {
            self.m().dubbo_response(counted);
            let bytes_out = if frame.is_two_way() {
                write_error(cx, conn, frame.id(), dubbo_status, &msg)
            } else {
                0
            };
            if self.arriving.is_none() {
                // Refused before its names could be read.
                self.observe_dubbo(cx, conn, frame, None);
            }
            self.complete_arriving(counted, u16::from(dubbo_status), bytes_out);
        }
        true
    }

    /// Starts observing a Dubbo consumer's call (`routed`: its names, once read).
    fn observe_dubbo(
        &mut self,
        cx: &Ctx<'_, Self>,
        conn: ConnId,
        frame: &dubbo::Frame<'_>,
        routed: Option<&dubbo::RoutedRequest<'_>>,
    ) {
        let Some(inb) = self
            .inbound
            .get(conn.index())
            .and_then(Option::as_ref)
            .filter(|i| i.id == conn)
        else {
            return;
        };
        let names = match (routed, self.access_log.is_some()) {
            (Some(r), true) => self.dubbo_names.get(
                &r.path,
                &r.method,
                &r.version,
                r.attachment("group").unwrap_or_default(),
            ),
            _ => CallNames::default(),
        };
        let arrival = Arrival {
            front: "dubbo",
            caller: inb.peer,
            caller_identity: inb.peer_identity.as_deref(),
            service: routed.map_or("", |r| &r.path),
            method: routed.map_or("", |r| &r.method),
            names: &names,
            bytes_in: frame.body.len() + dubbo::HEADER_LEN,
            unix_nanos: cx.wall_unix_nanos(),
        };
        let observed = observe::arrival(&mut self.methods, self.access_log.as_ref(), &arrival);
        self.arriving = Some(observed);
    }

    /// Sends a consumer's call to the provider, or says why not.
    fn forward(
        &mut self,
        cx: &mut Ctx<'_, Self>,
        conn: ConnId,
        frame: &dubbo::Frame<'_>,
    ) -> Result<(), Refused> {
        let bad = |msg: String| (Status::BadRequest, status::BAD_REQUEST, msg);
        let not_found = |msg: String| (Status::Unavailable, status::SERVICE_NOT_FOUND, msg);
        let overloaded =
            |msg: String| (Status::Overloaded, status::SERVER_THREADPOOL_EXHAUSTED, msg);
        if let Some(msg) = server::unsupported_serialization(frame) {
            return Err(bad(msg));
        }
        let routed = dubbo::decode_routed_request(frame.body)
            .map_err(|e| bad(format!("malformed Dubbo request: {e}")))?;
        self.observe_dubbo(cx, conn, frame, Some(&routed));
        if self.draining {
            // The call did not start: a Dubbo cluster tries another provider.
            return Err(not_found("provider-agent is shutting down".to_owned()));
        }
        let group = routed.attachment("group").unwrap_or_default();
        let Some(variant) = self.cfg.served_by(&routed.path, &routed.version, group) else {
            let key = server::service_key(&routed.path, &routed.version, group);
            return Err(not_found(format!(
                "this provider-agent does not serve {key}"
            )));
        };
        if let Some(policy) = &self.policy {
            let call = authz::Call {
                interface: &routed.path,
                version: &variant.version,
                group: &variant.group,
                method: &routed.method,
            };
            let inb = self
                .inbound
                .get_mut(conn.index())
                .and_then(Option::as_mut)
                .filter(|i| i.id == conn)
                .ok_or_else(|| not_found("connection gone".to_owned()))?;
            let peer = inb.peer_identity.as_deref();
            if !inb.authz.allows(policy, peer, None, &call) {
                // SERVICE_ERROR (70), not SERVER_ERROR (80): it is what Dubbo's own
                // server answers when the invocation is refused on its side (an
                // exception from its filter chain, e.g. its TokenFilter's "Forbid invoke
                // remote service"), so a Dubbo client raises it as an RpcException with
                // this message; 80 says the server itself failed (a response it could
                // not encode), which this is not.
                let msg = authz::forbidden_message(peer, &call);
                log::debug!("loop {}: {msg}", self.index);
                return Err((Status::Forbidden, status::SERVICE_ERROR, msg));
            }
        }
        // Admission as for agent calls (see `translate::call`).
        let total = self.upstream.inflight() + self.metrics.inflight_except(self.index);
        let mine = self.upstream.inflight_on(conn);
        let demand = self
            .demand
            .get_mut(conn.index())
            .ok_or_else(|| not_found("connection gone".to_owned()))?;
        if let Err(refusal) = self.admission.admit(self.max_inflight, total, mine, demand) {
            return Err(overloaded(match refusal {
                Refusal::Full => "provider-agent in-flight limit reached (--max-inflight)".to_owned(),
                Refusal::OverShare { share, contenders } => format!(
                    "provider-agent in-flight limit nearly reached: this connection holds its share ({share} calls; {contenders} connections compete) and the rest is others' recent demand"
                ),
            }));
        }
        let per_conn = self.cfg.agent.max_conn_inflight;
        if per_conn > 0 && mine >= per_conn {
            return Err(overloaded(
                "in-flight limit of this connection reached (--max-conn-inflight)".to_owned(),
            ));
        }
        let Some((slot, pconn)) = self.upstream.pick(|id| cx.is_congested(id)) else {
            return Err(if self.upstream.any_open() {
                overloaded("the provider is not reading its requests".to_owned())
            } else {
                not_found(format!(
                    "the provider-agent's provider {} is not connected",
                    self.cfg.provider
                ))
            });
        };
        let timeout_ms = match server::requested_timeout_ms(&routed) {
            None | Some(0) => DEFAULT_CALL_TIMEOUT_MS,
            Some(ms) => u32::try_from(ms)
                .unwrap_or(MAX_CALL_TIMEOUT_MS)
                .min(MAX_CALL_TIMEOUT_MS),
        };
        let now = cx.now();
        let two_way = frame.is_two_way();
        // One-way calls are answered by nobody: no pending call, and id 0, which no
        // pending call has (a stray answer to it is dropped).
        let provider_id = if two_way {
            self.upstream
                .insert(conn, frame.id() as u64, slot, now, Answer::Dubbo)
        } else {
            0
        };
        let arrived = cx.wall_unix_nanos();
        let Some(out) = cx.output(pconn) else {
            if two_way {
                self.upstream.take(provider_id);
            }
            return Err(not_found(format!(
                "the provider-agent's provider {} is not connected",
                self.cfg.provider
            )));
        };
        // The consumer's frame as it is, under the provider-side id (traced: with our
        // trace context, `tracing::relay_traced`).
        if !self.relay_traced(out, conn, frame, &routed, provider_id as i64, arrived) {
            server::relay_frame(out, frame, provider_id as i64);
        }
        if let Some(c) = self.upstream.conns.get_mut(slot) {
            c.last_write = now;
        }
        // The pending call keeps what is observed of it; a one-way call is done.
        let observed = self.arriving.take().unwrap_or_default();
        if two_way {
            let t = cx.set_timer(
                Duration::from_millis(u64::from(timeout_ms)),
                LoopTimer::Call(provider_id),
            );
            self.upstream.set_timer(provider_id, t);
            self.upstream.set_observed(provider_id, observed);
        } else {
            self.complete(observed, Status::Ok, 0, Duration::ZERO, 0);
        }
        Ok(())
    }

    /// The provider answered a Dubbo consumer's call: its frame goes back as it is,
    /// under the consumer's id.
    pub(super) fn relay_answer(
        &mut self,
        cx: &mut Ctx<'_, Self>,
        mut p: Pending,
        frame: &dubbo::Frame<'_>,
    ) {
        let counted = agent::status_of_answer(frame);
        let bytes_out = match cx.output(p.inbound) {
            Some(out) => {
                let start = out.len();
                server::relay_frame(out, frame, p.agent_id as i64);
                out.len().saturating_sub(start)
            }
            None => 0,
        };
        self.m().dubbo_response(counted);
        let latency = cx.now().saturating_duration_since(p.started);
        let observed = std::mem::take(&mut p.observed);
        let code = u16::from(frame.status());
        self.complete(observed, counted, code, latency, bytes_out);
        self.dubbo_answered(cx, p.inbound);
    }

    /// Fails a Dubbo consumer's call for a reason of the agent's own (timeout, the
    /// provider connection lost, a stop's drain limit): the Dubbo status a client
    /// library understands, with `text` as its message.
    pub(super) fn fail_dubbo(
        &mut self,
        cx: &mut Ctx<'_, Self>,
        mut p: Pending,
        counted: Status,
        text: &[u8],
    ) {
        let dubbo_status = match counted {
            Status::Timeout => status::SERVER_TIMEOUT,
            Status::Overloaded => status::SERVER_THREADPOOL_EXHAUSTED,
            Status::Unavailable => status::SERVICE_NOT_FOUND,
            Status::BadRequest => status::BAD_REQUEST,
            Status::Forbidden => status::SERVICE_ERROR,
            Status::Ok | Status::Exception | Status::ProviderError => status::SERVER_ERROR,
        };
        let bytes_out = write_error(
            cx,
            p.inbound,
            p.agent_id as i64,
            dubbo_status,
            &String::from_utf8_lossy(text),
        );
        self.m().dubbo_response(counted);
        let latency = cx.now().saturating_duration_since(p.started);
        let observed = std::mem::take(&mut p.observed);
        self.complete(
            observed,
            counted,
            u16::from(dubbo_status),
            latency,
            bytes_out,
        );
        self.dubbo_answered(cx, p.inbound);
    }

    /// A call of `conn` was answered: close it if it is done, or read on if it was
    /// paused for too many calls in flight.
    fn dubbo_answered(&mut self, cx: &mut Ctx<'_, Self>, conn: ConnId) {
        let inflight = self.upstream.inflight_on(conn);
        let max_pipeline = self.dubbo_max_pipeline();
        let congested = cx.is_congested(conn);
        let Some(inb) = self.inbound_mut(conn) else {
            return;
        };
        let ended = inb.input_ended;
        let Some(d) = inb.dubbo.as_mut() else {
            return;
        };
        if d.closing {
            if inflight == 0 {
                cx.close(conn);
            }
        } else if d.handing {
            // Handed over from `tick` once idle (`hand_over_idle`).
        } else if ended && inflight == 0 {
            cx.shutdown_write(conn);
        } else if d.paused && inflight < max_pipeline && !congested {
            d.paused = false;
            cx.resume_reading(conn);
        }
    }

    /// Answers piling up unread have drained: read again if reading was paused.
    pub(super) fn dubbo_drained(&mut self, cx: &mut Ctx<'_, Self>, conn: ConnId) {
        let inflight = self.upstream.inflight_on(conn);
        let max_pipeline = self.dubbo_max_pipeline();
        if let Some(d) = self.dubbo_mut(conn) {
            if d.paused && !d.closing && !d.handing && inflight < max_pipeline {
                d.paused = false;
                cx.resume_reading(conn);
            }
        }
    }

    /// A consumer that sent what is not Dubbo: nothing more of it is read; it gets the
    /// answers to its calls in flight, then the connection closes.
    fn break_off(&mut self, cx: &mut Ctx<'_, Self>, conn: ConnId, consumed: usize) -> usize {
        let inflight = self.upstream.inflight_on(conn);
        match self.dubbo_mut(conn) {
            Some(d) if inflight > 0 => {
                d.closing = true;
                cx.pause_reading(conn);
            }
            _ => cx.close(conn),
        }
        consumed
    }

    /// A stop: every Dubbo consumer gets the read-only event (as from a Dubbo server
    /// shutting down: send it nothing new). Its calls in flight are answered; new ones,
    /// until the loop exits, are answered SERVICE_NOT_FOUND (they did not start: a Dubbo
    /// cluster tries another provider). Handing over to a successor process instead, a
    /// consumer is read no further and, once its calls are answered, its connection
    /// goes to the successor, which reads on where this process stopped
    /// ([`ProviderLoop::hand_off`]): the consumer sees nothing of it.
    pub(super) fn stop_dubbo_consumers(&mut self, cx: &mut Ctx<'_, Self>) {
        if self.handoff.is_some() {
            for inb in self.inbound.iter_mut().flatten() {
                if let Some(d) = inb.dubbo.as_mut() {
                    d.handing = true;
                    cx.pause_reading(inb.id);
                }
            }
            return;
        }
        for inb in self.inbound.iter().flatten() {
            if inb.dubbo.is_some() {
                if let Some(out) = cx.output(inb.id) {
                    dubbo::encode_readonly_event(out, 0);
                }
            }
        }
    }
}

impl DubboConn {
    /// A consumer's connection that arrived while this process hands its own over (it
    /// came from the process before): read no further, handed on once idle.
    pub(super) fn handed_on() -> DubboConn {
        DubboConn {
            handing: true,
            ..DubboConn::default()
        }
    }
}

impl ProviderLoop {
    /// Hands a Dubbo consumer's connection, its calls answered, to the successor
    /// process with what it sent that is not processed yet. One whose answers are
    /// still being written is tried again on the next `tick`; one that cannot be
    /// handed over (the successor gone) is closed, as without a successor.
    pub(super) fn hand_off(&mut self, cx: &mut Ctx<'_, Self>, id: ConnId) {
        let Some(handoff) = self.handoff.clone() else {
            return cx.close(id);
        };
        match cx.detach(id) {
            Ok(conn) => {
                self.forget_inbound(id, true);
                let sent = handoff.send(crate::upgrade::DUBBO, &conn.stream, &conn.input);
                if let Err(e) = sent {
                    log::warn!("handing a Dubbo consumer's connection over: {e}; closing it");
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => {
                log::debug!("a Dubbo consumer's connection cannot be handed over: {e}; closing it");
                cx.close(id);
            }
        }
    }
}

/// Writes an error answer to request `id` on `conn` at once.
fn write_error(
    cx: &mut Ctx<'_, ProviderLoop>,
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
