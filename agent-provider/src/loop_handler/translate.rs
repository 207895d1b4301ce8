//! Translation both ways: an agent REQUEST becomes a Dubbo request on a provider
//! connection (after the served-services check, the authorization policy and
//! admission), and the provider's
//! Dubbo response becomes the agent RESPONSE (a value byte for byte, an exception's
//! summary, or an error status).

use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use codec::agent::{self, Status};
use codec::dubbo;
use reactor::{ConnId, Ctx, Handler};
use reactor_admin::otlp::CallNames;

use super::observe::{self, Arrival};
use super::{tracing, LoopTimer, ProviderLoop};
use crate::admission::Refusal;
use crate::authz;
use crate::upstream::{Answer, Pending};

/// Timeout used when a request carries none (0).
pub(super) const DEFAULT_CALL_TIMEOUT_MS: u32 = 30_000;

/// The longest timeout a consumer-agent may ask for: a call that never comes back holds
/// a slot of the in-flight budget until then.
pub(super) const MAX_CALL_TIMEOUT_MS: u32 = 10 * 60 * 1000;

/// Writes a RESPONSE frame; a payload too large is replaced by a short message.
/// Returns the bytes written.
pub(super) fn respond<H: Handler>(
    cx: &mut Ctx<'_, H>,
    conn: ConnId,
    id: u64,
    status: Status,
    payload: &[u8],
) -> usize {
    respond_with(cx, conn, id, status, &[], payload)
}

/// [`respond`] carrying response attachments.
pub(super) fn respond_with<H: Handler>(
    cx: &mut Ctx<'_, H>,
    conn: ConnId,
    id: u64,
    status: Status,
    attachments: &[(&str, &str)],
    payload: &[u8],
) -> usize {
    let Some(out) = cx.output(conn) else {
        return 0;
    };
    let start = out.len();
    let written = agent::begin_response_with(out, id, status, attachments).and_then(|mark| {
        out.extend_from_slice(payload);
        agent::finish(out, mark)
    });
    if written.is_err() {
        let _ = agent::encode_response(out, id, Status::ProviderError, b"response too large");
    }
    out.len().saturating_sub(start)
}

impl ProviderLoop {
    pub(super) fn provider_frame(
        &mut self,
        cx: &mut Ctx<'_, Self>,
        slot: usize,
        id: ConnId,
        frame: &dubbo::Frame<'_>,
    ) {
        if frame.is_event() {
            // Java sends its read-only event one-way; a two-way one gets the reply an
            // event request asks for, and is acted on all the same.
            let readonly = frame.is_readonly_event();
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
        let Some(mut p) = self.upstream.take(dubbo_id) else {
            log::debug!(
                "loop {}: dropping response to unknown dubbo id {dubbo_id:#x}",
                self.index
            );
            return;
        };
        if let Some(t) = p.timer {
            cx.cancel_timer(t);
        }
        let latency = cx.now().saturating_duration_since(p.started);
        self.m().latency(latency);
        match p.answer {
            Answer::Dubbo => self.relay_answer(cx, p, frame),
            Answer::Raw | Answer::Agent => {
                // The agent RESPONSE standing for the provider's answer: its body byte
                // for byte (RAW), or its value, exception summary or error text.
                let raw = p.answer == Answer::Raw;
                let (status, bytes_out) = match cx.output(p.inbound) {
                    Some(out) => {
                        let start = out.len();
                        let status = agent::encode_dubbo_answer(out, p.agent_id, frame, raw);
                        (status, out.len().saturating_sub(start))
                    }
                    None => (agent::status_of_dubbo(frame.status()), 0), // the consumer is gone
                };
                self.m().response(status);
                let observed = std::mem::take(&mut p.observed);
                self.complete(observed, status, status as u16, latency, bytes_out);
                self.close_if_done(cx, p.inbound);
            }
        }
    }

    /// Answers a call with a non-OK status (or OK with raw bytes).
    pub(super) fn finish_call(
        &mut self,
        cx: &mut Ctx<'_, Self>,
        mut p: Pending,
        status: Status,
        payload: &[u8],
    ) {
        if let Some(t) = p.timer {
            cx.cancel_timer(t);
        }
        if p.answer == Answer::Dubbo {
            return self.fail_dubbo(cx, p, status, payload);
        }
        let bytes_out = respond(cx, p.inbound, p.agent_id, status, payload);
        self.m().response(status);
        let latency = cx.now().saturating_duration_since(p.started);
        let observed = std::mem::take(&mut p.observed);
        self.complete(observed, status, status as u16, latency, bytes_out);
        self.close_if_done(cx, p.inbound);
    }

    /// Turns one agent REQUEST (a frame of `bytes_in` bytes) into a Dubbo request.
    pub(super) fn call(
        &mut self,
        cx: &mut Ctx<'_, Self>,
        conn: ConnId,
        req: &agent::Request<'_>,
        bytes_in: usize,
    ) {
        self.m().requests.fetch_add(1, Relaxed);
        let now = cx.now();
        let Some(inb) = self
            .inbound
            .get_mut(conn.index())
            .and_then(Option::as_mut)
            .filter(|i| i.id == conn)
        else {
            return;
        };
        let sig = inb.calls.get(req.call_id);
        let observing = self.access_log.is_some() || self.tracer.is_some();
        let names = match observing {
            true => inb.names.get(req.call_id, sig),
            false => CallNames::default(),
        };
        let arrival = Arrival {
            front: "agent",
            caller: inb.peer,
            caller_identity: inb.peer_identity.as_deref(),
            service: sig.map_or("", |s| s.service.as_str()),
            method: sig.map_or("", |s| s.method.as_str()),
            names: &names,
            bytes_in,
            unix_nanos: cx.wall_unix_nanos(),
        };
        self.arriving = Some(observe::arrival(
            &mut self.methods,
            self.access_log.as_ref(),
            &arrival,
        ));
        let Some(sig) = sig else {
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
        if let Some(policy) = &self.policy {
            let call = authz::Call {
                interface: &sig.service,
                version: &variant.version,
                group: &variant.group,
                method: &sig.method,
            };
            let peer = inb.peer_identity.as_deref();
            if !inb.authz.allows(policy, peer, Some(req.call_id), &call) {
                // Not retried: the call did not start, but another provider-agent under
                // the same policy would refuse it too.
                let msg = authz::forbidden_message(peer, &call);
                log::debug!("loop {}: {msg}", self.index);
                return self.reject_on(cx, conn, req, Status::Forbidden, &msg);
            }
        }
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
        // caller's own are dropped. The caller's are read once (each is checked as
        // UTF-8 as it is read), for the provider and for the trace context.
        let timeout_only = [("timeout", Some(self.timeout_text.1.as_str()))];
        let mut owned: Pairs<'_> = Vec::new();
        if req.attachments.remaining() > 0 {
            owned = std::mem::take(&mut self.spare_pairs);
            owned.reserve(req.attachments.len() + 6);
            owned.extend(
                (req.attachments)
                    .filter(|(k, _)| !dubbo::is_reserved_attachment(k))
                    .map(|(k, v)| (k, Some(v))),
            );
        }
        // With tracing on: the consumer-agent's context continued with this agent's
        // span (the observed call keeps it until it completes); the caller's trace
        // attachments are replaced by the continued context.
        let traced = match self.tracer.as_mut() {
            Some(tracer) => {
                // The call's names serve its span when it names the variant served.
                let same = sig.version == variant.version && sig.group == variant.group;
                let call = tracing::Call {
                    names: same.then_some(&names),
                    service: &sig.service,
                    method: &sig.method,
                    version: &variant.version,
                    group: &variant.group,
                    peer: inb.peer,
                    provider: self.cfg.provider,
                    start_unix_nanos: cx.wall_unix_nanos(),
                };
                let pairs = owned.iter().filter_map(|&(k, v)| Some((k, v?)));
                tracer.begin(codec::trace::Gathered::from_pairs(pairs), &call)
            }
            None => None,
        };
        let trace_fields = traced.map(|(t, fields)| {
            if let Some(o) = self.arriving.as_mut() {
                o.trace = Some(t);
            }
            fields
        });
        let attachments: &[(&str, Option<&str>)] =
            if req.attachments.remaining() == 0 && trace_fields.is_none() {
                &timeout_only
            } else {
                if let Some((fields, tracer)) = trace_fields.zip(self.tracer.as_ref()) {
                    owned.retain(|(k, _)| !codec::trace::is_trace_key(k));
                    owned.extend(fields.iter(&tracer.wire).map(|(k, v)| (k, Some(v))));
                }
                owned.extend_from_slice(&timeout_only);
                &owned
            };
        let dubbo_id = if req.one_way {
            0
        } else {
            // Raw answers are relayed only as hessian2, the serialization callers that
            // ask for them speak.
            let raw = req.raw_result && self.cfg.serialization == dubbo::Serialization::Hessian2;
            let answer = if raw { Answer::Raw } else { Answer::Agent };
            self.upstream.insert(conn, req.id, slot, now, answer)
        };
        let request = dubbo::Request {
            id: dubbo_id as i64,
            serialization: self.cfg.serialization,
            two_way: !req.one_way,
            dubbo_version: caller_version(req).unwrap_or(&self.cfg.dubbo_version),
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
        // Hessian2 (nearly always): the method's fixed parts copied from its template.
        let template = (request.serialization == dubbo::Serialization::Hessian2)
            .then(|| {
                let names = super::templates::Names {
                    path: request.path,
                    version: request.version,
                    group: request.group,
                    method: request.method,
                    descriptor: request.descriptor,
                };
                let hint = (req.call_id as usize) ^ (conn.index() << 8);
                self.templates.get(hint, &names)
            })
            .flatten();
        let result = match cx.output(pconn) {
            Some(out) => match template {
                Some(t) => t.encode(
                    out,
                    request.id,
                    request.two_way,
                    request.dubbo_version,
                    request.args,
                    attachments,
                ),
                None => dubbo::encode_request(out, &request),
            }
            .map_err(|e| (Status::BadRequest, e.to_string())),
            None => Err((Status::Unavailable, "provider not connected".to_owned())),
        };
        if owned.capacity() > 0 {
            self.spare_pairs = reuse_pairs(owned);
        }
        match result {
            Ok(()) => {
                if let Some(c) = self.upstream.conns.get_mut(slot) {
                    c.last_write = now;
                }
                // The pending call keeps what is observed of it; a one-way call is done.
                let observed = self.arriving.take().unwrap_or_default();
                if req.one_way {
                    self.complete(observed, Status::Ok, Status::Ok as u16, Duration::ZERO, 0);
                } else {
                    self.upstream.set_observed(dubbo_id, observed);
                }
                if !req.one_way {
                    let t = cx.set_timer(
                        Duration::from_millis(u64::from(timeout_ms)),
                        LoopTimer::Call(dubbo_id),
                    );
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

    pub(super) fn reject_on(
        &mut self,
        cx: &mut Ctx<'_, Self>,
        conn: ConnId,
        req: &agent::Request<'_>,
        status: Status,
        msg: &str,
    ) {
        let bytes_out = if req.one_way {
            0
        } else {
            respond(cx, conn, req.id, status, msg.as_bytes())
        };
        self.m().response(status);
        self.complete_arriving(status, status as u16, bytes_out);
    }
}

/// The Dubbo protocol version a caller speaking Dubbo itself sent (a RAW request's
/// `dubbo` attachment), when it reads as one: the provider shapes its answer by it.
fn caller_version<'a>(req: &agent::Request<'a>) -> Option<&'a str> {
    if !req.raw_result {
        return None;
    }
    let (_, v) = req.attachments.into_iter().find(|(k, _)| *k == "dubbo")?;
    dubbo::server::ProtocolVersion::new(v).map(|_| v)
}

/// Attachments of one request, names and values borrowed from it.
pub(super) type Pairs<'a> = Vec<(&'a str, Option<&'a str>)>;

/// `pairs` emptied, for the next request (`ProviderLoop::spare_pairs`): its allocation
/// kept, so that a call with attachments (a traced one) allocates none for them.
pub(super) fn reuse_pairs<'a>(mut pairs: Pairs<'_>) -> Pairs<'a> {
    pairs.clear();
    // Empty, so the closure never runs: collected in place, into the same allocation
    // (the items' layout is the same), under the next request's lifetime.
    pairs.into_iter().map(|_| ("", None)).collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn reused_pairs_keep_their_allocation_and_nothing_else() {
        let text = String::from("traceparent");
        let mut pairs: super::Pairs<'_> = Vec::with_capacity(8);
        pairs.push((text.as_str(), Some("00-...")));
        let at = pairs.as_ptr() as usize;
        let next: super::Pairs<'static> = super::reuse_pairs(pairs);
        assert!(next.is_empty());
        assert_eq!(next.capacity(), 8);
        assert_eq!(next.as_ptr() as usize, at, "the same allocation");
    }
}
