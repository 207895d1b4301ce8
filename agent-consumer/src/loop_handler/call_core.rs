//! The call core, the same for every front-end: the loop's call ids (signatures), the
//! choice of an upstream, the REQUEST frame (or, to an unmeshed provider, the Dubbo
//! request of `dubbo_out`), retries on safe statuses, and the completion of a call by
//! its answer, its timeout or the loss of its connection.

use codec::agent::{self, AgentError, CallTable, RequestHead, Signature, SignatureRef, Status};
use reactor::Ctx;
use reactor_admin::otlp::CallNames;

use super::{Call, ConsumerLoop};
use crate::lb::Answer;
use crate::metrics::Outcome;
use crate::upstream::Protocol;

/// How an answer's status counts for the balancer: the provider's own result or
/// exception is work done; a request it refused as malformed or by policy is no fault
/// of it (but no measure of its latency); a refusal for capacity teaches the limit;
/// anything else is the provider failing.
pub(super) fn balancer_answer(status: Status) -> Answer {
    match status {
        Status::Ok | Status::Exception => Answer::Done,
        Status::BadRequest | Status::Forbidden => Answer::Declined,
        Status::Overloaded => Answer::Overloaded,
        _ => Answer::Failed,
    }
}

impl ConsumerLoop {
    /// The loop-wide call id of a signature. Once the table is full (in count or in
    /// bytes), ids no call in flight uses make room: one is given to the new signature,
    /// others are emptied if its bytes need it, and each redefinition goes at once to
    /// every provider-agent connection that had the id, so the provider-agent keeps
    /// exactly the table this loop keeps (and its bound holds there too).
    pub(super) fn intern(
        &mut self,
        cx: &mut Ctx<'_, Self>,
        sig: SignatureRef<'_>,
    ) -> Result<u32, AgentError> {
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
    pub(super) fn redefine(
        &mut self,
        cx: &mut Ctx<'_, Self>,
        id: u32,
        sig: Signature,
    ) -> Result<(), AgentError> {
        self.signatures.define(id, sig)?;
        if let Some(names) = self.call_names.get_mut(id as usize) {
            *names = None;
        }
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
    pub(super) fn dispatch(&mut self, cx: &mut Ctx<'_, Self>, call: u64, exclude: Option<usize>) {
        self.send_call(cx, call, exclude, false)
    }

    /// Retries a call `refused_by` refused (overloaded or unavailable): at once on
    /// another provider-agent, else after a backoff ([`wait_to_retry`](Self::wait_to_retry)).
    fn retry(&mut self, cx: &mut Ctx<'_, Self>, call: u64, refused_by: usize) {
        self.send_call(cx, call, Some(refused_by), true)
    }

    /// Waits out a retry's backoff before the call is dispatched again:
    /// `--retry-backoff-ms` doubled at each further retry, between half and all of it at
    /// random (so that calls refused together do not come back together). False, with
    /// nothing done, when backoff is off or the wait would pass the call's deadline
    /// (the call is then sent at once).
    fn wait_to_retry(&mut self, cx: &mut Ctx<'_, Self>, call: u64) -> bool {
        let base_us = self.config.retry_backoff_ms.saturating_mul(1000);
        let attempts = self.call_mut(call).map(|c| c.attempts);
        let Some(attempts) = attempts.filter(|_| base_us > 0) else {
            return false;
        };
        let full_us = base_us.saturating_mul(1 << attempts.saturating_sub(1).min(10));
        let jitter = self.rng.below((full_us / 2).saturating_add(1) as usize) as u64;
        let wait = std::time::Duration::from_micros(full_us - full_us / 2 + jitter);
        let now = cx.now();
        let Some(c) = self.call_mut(call).filter(|c| now + wait < c.deadline) else {
            return false;
        };
        c.retry_timer = Some(cx.set_timer(wait, super::LoopTimer::Retry(call)));
        self.metrics.retry_waited();
        true
    }

    /// [`dispatch`](Self::dispatch); `may_wait`: a retry, which waits out a backoff
    /// rather than go straight back to the provider-agent that refused it (`exclude`)
    /// or be refused for every provider-agent being full.
    fn send_call(
        &mut self,
        cx: &mut Ctx<'_, Self>,
        call: u64,
        exclude: Option<usize>,
        may_wait: bool,
    ) {
        let now = cx.now();
        if let Err(limited) = self.route_call(cx, call) {
            return self.refuse_limited(cx, call, limited);
        }
        let route = self.route_draw(call);
        let Some(c) = self.call_mut(call) else { return };
        let call_id = c.call_id;
        let Some(sig) = self.signatures.get(call_id) else {
            return;
        };
        let picked =
            (self.upstreams).pick(&sig.service, &sig.version, &sig.group, exclude, route, now);
        if may_wait {
            let refused_again = match picked {
                Some((_, up)) => exclude == Some(up),
                None => self.upstreams.saturated(&sig.service),
            };
            if refused_again && self.wait_to_retry(cx, call) {
                return;
            }
        }
        let Some(sig) = self.signatures.get(call_id) else {
            return;
        };
        // Only a call no provider-agent took may wait for the registry's first list (the
        // service lookups come after `picked` for that reason).
        if picked.is_none()
            && (!self.upstreams.services.contains_key(&sig.service)
                || self.held.contains_key(&sig.service))
        {
            let service = sig.service.clone();
            return self.hold(cx, call, service);
        }
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
        let addr = up.addr;
        if up.protocol == Protocol::Dubbo {
            return self.send_dubbo(cx, call, up_key, conn);
        }
        let new_define = up.define(call_id);
        let Some(c) = self.calls.get_mut((call & 0xffff_ffff) as usize) else {
            return;
        };
        let remaining = c.deadline.saturating_duration_since(now);
        c.attempts += 1;
        c.sent = Some((up_key, now));
        c.upstream = Some(addr);
        if let (Some(tracer), Some(t)) = (self.tracer.as_mut(), c.trace.as_deref_mut()) {
            let names = super::tracing::Names {
                service: &sig.service,
                method: &sig.method,
                version: &sig.version,
                group: &sig.group,
            };
            tracer.on_send(t, c.attempts, addr, &names, cx.wall_unix_nanos());
        }
        // Up to eight attachments (nearly always: usually none, or the caller's Dubbo
        // version) are listed on the stack, and a traced call's context after them.
        let pairs = c.attachments.iter().map(|(k, v)| (k.as_str(), v.as_str()));
        let version = c.dubbo_version.as_ref().map(|v| ("dubbo", v.as_str()));
        let traced = c.trace.as_deref().into_iter().flat_map(|t| t.attachments());
        let mut all = pairs.chain(version).chain(traced);
        let mut small = [("", ""); 8];
        let mut listed = 0;
        for (slot, pair) in small.iter_mut().zip(all.by_ref()) {
            *slot = pair;
            listed += 1;
        }
        let spilled: Vec<(&str, &str)> = match all.next() {
            Some(more) => small.iter().copied().chain([more]).chain(all).collect(),
            None => Vec::new(),
        };
        let attachments: &[(&str, &str)] = if spilled.is_empty() {
            small.get(..listed).unwrap_or_default()
        } else {
            &spilled
        };
        let head = RequestHead {
            id: call,
            call_id,
            timeout_ms: remaining.as_millis().clamp(1, u128::from(u32::MAX)) as u32,
            one_way: false,
            raw_result: c.origin.wants_raw_result(),
            attachments,
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

    /// Takes a call out of the loop for its front-end to answer: its signature use,
    /// its timer and its argument buffer are released, its outcome counted.
    pub(super) fn take_call(
        &mut self,
        cx: &mut Ctx<'_, Self>,
        call: u64,
        outcome: Outcome,
    ) -> Option<Call> {
        let key = (call & 0xffff_ffff) as usize;
        self.call_mut(call)?;
        let mut c = self.calls.remove(key);
        if let Some(n) = self.signature_uses.get_mut(c.call_id as usize) {
            *n = n.saturating_sub(1);
        }
        for t in [c.timer.take(), c.retry_timer.take()].into_iter().flatten() {
            cx.cancel_timer(t);
        }
        let latency = cx.now().saturating_duration_since(c.started).as_micros() as u64;
        self.metrics.answered(outcome, latency);
        self.count_method(&c, outcome, latency);
        if self.tracer.is_some() && c.trace.is_some() {
            let names = self.names_of_call(c.call_id);
            if let (Some(tracer), Some(mut t)) = (self.tracer.as_mut(), c.trace.take()) {
                tracer.finish(
                    &mut t,
                    outcome,
                    names,
                    c.upstream,
                    c.attempts,
                    cx.wall_unix_nanos(),
                );
                c.trace_id = Some(t.ctx.trace_id);
                tracer.recycle(t);
            }
        }
        self.recycle(std::mem::take(&mut c.args));
        if self.stopping && self.calls.is_empty() && self.holds_no_client() {
            cx.exit();
        }
        Some(c)
    }

    /// The names of call id `call_id`'s signature, shared (empty if it has none).
    pub(super) fn names_of_call(&mut self, call_id: u32) -> CallNames {
        let i = call_id as usize;
        if let Some(Some(names)) = self.call_names.get(i) {
            return names.clone();
        }
        let Some(sig) = self.signatures.get(call_id) else {
            return CallNames::default();
        };
        let names = CallNames::new(&sig.service, &sig.method, &sig.version, &sig.group);
        if self.call_names.len() <= i {
            self.call_names.resize(i + 1, None);
        }
        if let Some(slot) = self.call_names.get_mut(i) {
            *slot = Some(names.clone());
        }
        names
    }

    /// Holds a call of a service no provider-agent of which is open yet because it is
    /// being discovered: watched from this first call on, until a provider-agent of it
    /// opens (see [`release_held`](Self::release_held)), the registry says it has none,
    /// or the call's timeout.
    pub(super) fn hold(&mut self, cx: &mut Ctx<'_, Self>, call: u64, service: String) {
        if !self.held.contains_key(&service) {
            if let Err(e) = self.discovery.subscribe(&service) {
                let msg = format!("cannot discover {service}: {e}");
                return self.fail(cx, call, Outcome::Unavailable, 503, &msg);
            }
        }
        self.held.entry(service).or_default().calls.push(call);
    }

    /// Sends the held calls of every service that has an open provider-agent now, or
    /// (`all`) of every service: those then take the ordinary way (a provider-agent, or
    /// 503).
    pub(super) fn release_held(&mut self, cx: &mut Ctx<'_, Self>, all: bool) {
        let ready: Vec<String> = self
            .held
            .keys()
            .filter(|s| all || self.upstreams.has_open(s))
            .cloned()
            .collect();
        for service in ready {
            let Some(held) = self.held.remove(&service) else {
                continue;
            };
            for call in held.calls {
                if self.call_mut(call).is_some() {
                    self.dispatch(cx, call, None);
                }
            }
        }
    }

    pub(super) fn on_answer(&mut self, cx: &mut Ctx<'_, Self>, up: usize, r: &agent::Response<'_>) {
        let (call, status) = (r.id, r.status);
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
        let (attempts, deadline, origin, call_id) = (c.attempts, c.deadline, c.origin, c.call_id);
        let latency = now.saturating_duration_since(sent_at).as_micros() as u64;
        if let Some(sig) = self.signatures.get(call_id) {
            let answer = balancer_answer(status);
            if let Some(s) = self.upstreams.stats(&sig.service, sent_to) {
                s.on_answer(latency, answer);
            }
            if answer == Answer::Failed {
                self.upstreams.eject_if_failing(&sig.service, sent_to, now);
            }
        }
        let retry = status.is_retryable() && attempts <= self.retries_of(call) && now < deadline;
        if retry {
            self.metrics.retried();
            return self.retry(cx, call, sent_to);
        }
        // The answer goes back the way the call came.
        self.answer(cx, call, origin, r);
    }

    /// A call sent to `upstream` will get no answer: free its slot in the balancer.
    pub(super) fn lost_on(&mut self, call_id: u32, upstream: usize) {
        if let Some(sig) = self.signatures.get(call_id) {
            if let Some(s) = self.upstreams.stats(&sig.service, upstream) {
                s.on_lost();
            }
            let now = std::time::Instant::now();
            self.upstreams.eject_if_failing(&sig.service, upstream, now);
        }
    }
}
