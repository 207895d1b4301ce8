//! Distributed tracing (`--otlp-endpoint`, `--trace-sample-rate`): a call carrying a
//! trace context (W3C, B3 or sw8, in HTTP headers or Dubbo attachments; see
//! [`codec::trace`]) is continued with a span of the consumer-agent's own, the call as
//! the caller saw it (kind CLIENT), and each retry with a child span of it; the context
//! the provider-agent receives (REQUEST attachments, in the caller's format) names the
//! span of the attempt as its parent. A call without a context starts a trace when the
//! sample rate draws it.
//!
//! Without `--otlp-endpoint` the loop has no [`Tracer`]: nothing is read or written,
//! attachments pass as they came, and no call allocates for tracing. With it, a traced
//! call keeps its context and encoded attachments in one box; a sampled one its span,
//! queued (encoded) for the exporter thread when the call completes
//! ([`reactor_admin::otlp::Spans`]: a full queue drops and counts it). The boxes of
//! completed calls are kept for the next ones (up to [`Tracer::SPARE`]), their encoding
//! buffers with them, so that a traced call allocates nothing once the loop has served
//! a few.

use std::net::SocketAddr;

use codec::trace::{self, Fields, Format, Gathered, Sw8Local, TraceContext};
use reactor_admin::otlp::{CallNames, NamesCache, SpanData, SpanKind, Spans};

use crate::metrics::Outcome;

/// A loop's tracing state (present only with `--otlp-endpoint`).
#[derive(Debug)]
pub(super) struct Tracer {
    spans: Spans,
    rng: reactor::XorShift,
    /// `--trace-sample-rate`.
    sample_rate: f64,
    /// This agent's address, as sw8's parent service instance.
    instance: String,
    /// The names of the methods traced lately, shared by their spans.
    names: NamesCache,
    /// Boxes of completed calls, for the next ones (boxes, as the calls hold them).
    #[allow(clippy::vec_box)]
    spare: Vec<Box<CallTrace>>,
}

/// A traced call's state.
#[derive(Debug)]
pub(super) struct CallTrace {
    /// The consumer-agent's span of the call.
    pub(super) ctx: TraceContext,
    /// Its record, when sampled.
    span: Option<SpanData>,
    /// The current retry's span, when the call was retried (context, record).
    attempt: Option<Box<(TraceContext, Option<SpanData>)>>,
    /// `front`: `http` or `dubbo`.
    front: &'static str,
    /// The context as sent to the upstream of the current attempt.
    wire: String,
    fields: Fields,
}

impl CallTrace {
    /// The trace attachments of the current attempt.
    pub(super) fn attachments(&self) -> trace::FieldsIter<'_> {
        self.fields.iter(&self.wire)
    }
}

impl Tracer {
    /// Boxes of completed calls kept for the next ones.
    const SPARE: usize = 1024;

    pub(super) fn new(spans: Spans, sample_rate: f64, instance: String) -> Tracer {
        Tracer {
            spans,
            rng: reactor::XorShift::from_time(),
            sample_rate,
            instance,
            names: NamesCache::default(),
            spare: Vec::new(),
        }
    }

    /// Takes back the box of a completed call (after [`Tracer::finish`]), for a later
    /// call.
    pub(super) fn recycle(&mut self, mut t: Box<CallTrace>) {
        if self.spare.len() < Self::SPARE {
            t.span = None;
            t.attempt = None;
            self.spare.push(t);
        }
    }

    fn draw(&mut self) -> bool {
        self.sample_rate > 0.0
            && ((self.rng.next_u64() >> 11) as f64) / ((1u64 << 53) as f64) < self.sample_rate
    }

    fn span_id(&mut self) -> [u8; 8] {
        trace::span_id_from(self.rng.next_u64())
    }

    /// The trace of a call arriving with `found` (its trace headers or attachments):
    /// its caller's context continued, or a new trace if none and the sample rate
    /// draws one; `None`: the call is not traced. `now`: the loop's clock (Unix
    /// nanoseconds), the span's start.
    pub(super) fn begin(
        &mut self,
        found: Gathered<'_>,
        front: &'static str,
        now: u64,
    ) -> Option<Box<CallTrace>> {
        let ours = match found.extract() {
            Some(mut caller) => {
                if caller.sampled.is_none() && !caller.debug {
                    // Deferred (B3): this side decides, for every hop after it.
                    caller.sampled = Some(self.draw());
                }
                caller.into_child(self.span_id())
            }
            None => {
                if !self.draw() {
                    return None;
                }
                let trace_id = trace::trace_id_from(self.rng.next_u64(), self.rng.next_u64());
                TraceContext::root(trace_id, self.span_id(), true)
            }
        };
        let span = ours
            .is_sampled()
            .then(|| record(&ours, CallNames::default(), now));
        Some(match self.spare.pop() {
            Some(mut t) => {
                t.wire.clear();
                *t = CallTrace {
                    ctx: ours,
                    span,
                    attempt: None,
                    front,
                    wire: std::mem::take(&mut t.wire),
                    fields: Fields::default(),
                };
                t
            }
            None => Box::new(CallTrace {
                ctx: ours,
                span,
                attempt: None,
                front,
                wire: String::new(),
                fields: Fields::default(),
            }),
        })
    }

    /// Attempt `attempt` (1 = the first) of a traced call goes to `addr`: a retry gets
    /// a child span of its own (the previous one ends); the context it carries is
    /// encoded for its attachments. `now`: the loop's clock (Unix nanoseconds).
    pub(super) fn on_send(
        &mut self,
        t: &mut CallTrace,
        attempt: u32,
        addr: SocketAddr,
        names: &Names<'_>,
        now: u64,
    ) {
        if attempt > 1 {
            if let Some(mut span) = t.attempt.take().and_then(|a| a.1) {
                span.end_unix_nanos = now;
                span.error = true;
                span.status = "retried";
                self.spans.send(&span);
            }
            let ctx = t.ctx.child(self.span_id());
            let span = ctx.is_sampled().then(|| {
                let mut s = record(&ctx, self.names_of(names), now);
                s.attempt = Some(attempt);
                s.server = Some(addr);
                s.front = t.front;
                s
            });
            t.attempt = Some(Box::new((ctx, span)));
        }
        let ctx = t.attempt.as_deref().map_or(&t.ctx, |(c, _)| c);
        let (endpoint, address) = if ctx.format == Format::Sw8 {
            (
                format!("{}.{}", names.service, names.method),
                addr.to_string(),
            )
        } else {
            (String::new(), String::new())
        };
        let local = Sw8Local {
            service: "consumer-agent",
            instance: &self.instance,
            endpoint: &endpoint,
            address: &address,
        };
        t.fields = ctx.encode(&local, &mut t.wire);
    }

    /// The names of a call, shared with the other spans of its method.
    fn names_of(&mut self, n: &Names<'_>) -> CallNames {
        self.names.get(n.service, n.method, n.version, n.group)
    }

    /// Ends a completed call's spans (its context stays for the access log's trace
    /// id): `names` are the call's, `upstream` is where it was last sent, `attempts`
    /// how often, `end` the loop's clock (Unix nanoseconds).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn finish(
        &mut self,
        t: &mut CallTrace,
        outcome: Outcome,
        names: CallNames,
        upstream: Option<SocketAddr>,
        attempts: u32,
        end: u64,
    ) {
        let error = outcome != Outcome::Ok;
        if let Some(mut span) = t.attempt.take().and_then(|a| a.1) {
            span.end_unix_nanos = end;
            span.error = error;
            span.status = outcome.name();
            self.spans.send(&span);
        }
        // Finished where it is (no copy), then dropped.
        let Some(span) = t.span.as_mut() else {
            return;
        };
        span.end_unix_nanos = end;
        span.error = error;
        span.status = outcome.name();
        span.call = names;
        span.server = upstream;
        span.front = t.front;
        span.retries = Some(attempts.saturating_sub(1));
        self.spans.send(span);
        t.span = None;
    }
}

/// A call's names, for its span.
#[derive(Debug, Clone, Copy)]
pub(super) struct Names<'a> {
    pub(super) service: &'a str,
    pub(super) method: &'a str,
    pub(super) version: &'a str,
    pub(super) group: &'a str,
}

/// A span record starting at `start` (Unix nanoseconds) for `ctx`'s span (its names
/// set when known).
fn record(ctx: &TraceContext, call: CallNames, start: u64) -> SpanData {
    let mut span = SpanData::starting_at(ctx.trace_id, ctx.span_id, SpanKind::Client, call, start);
    span.parent_span_id = ctx.parent_span_id;
    span.trace_state.clone_from(&ctx.tracestate);
    span
}

/// Drops the trace attachments a caller sent (the continued context replaces them).
pub(super) fn strip(attachments: &mut Vec<(String, String)>) {
    if attachments.iter().any(|(k, _)| trace::is_trace_key(k)) {
        attachments.retain(|(k, _)| !trace::is_trace_key(k));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CALLER: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    const SVC_M: Names<'static> = Names {
        service: "a.Svc",
        method: "m",
        version: "",
        group: "",
    };

    fn call_names(n: &Names<'_>) -> CallNames {
        CallNames::new(n.service, n.method, n.version, n.group)
    }

    fn traceparent(t: &CallTrace) -> String {
        let found = t.attachments().find(|(k, _)| *k == "traceparent");
        found.map(|(_, v)| v.to_owned()).unwrap_or_default()
    }

    #[test]
    fn a_call_is_a_span_and_each_retry_a_child_of_it() {
        let (spans, rx) = Spans::bounded(16);
        let mut tracer = Tracer::new(spans, 0.0, "127.0.0.1:20000".into());
        let headers = [("traceparent", CALLER)];
        let found = Gathered::from_pairs(headers);
        let mut t = tracer.begin(found, "http", 100).expect("traced");
        let ours = t.ctx.span_id;
        let addr: SocketAddr = "127.0.0.1:30000".parse().unwrap();
        // The first attempt carries the call's own span.
        let names = SVC_M;
        tracer.on_send(&mut t, 1, addr, &names, 100);
        let first = traceparent(&t);
        assert_eq!(
            first,
            format!(
                "00-4bf92f3577b34da6a3ce929d0e0e4736-{}-01",
                trace::Hex(ours)
            )
        );
        // A retry carries a child span of its own.
        tracer.on_send(&mut t, 2, addr, &names, 200);
        let second = traceparent(&t);
        assert_ne!(second, first);
        tracer.finish(&mut t, Outcome::Ok, call_names(&names), Some(addr), 2, 300);
        let retry = rx.try_recv().expect("the retry's span");
        let whole = rx.try_recv().expect("the call's span");
        assert_eq!(retry.parent_span_id, Some(ours));
        assert!(
            second.contains(&trace::Hex(retry.span_id).to_string()),
            "{second}"
        );
        assert_eq!(whole.span_id, ours);
        assert_eq!(
            whole.parent_span_id,
            Some([0x00, 0xf0, 0x67, 0xaa, 0x0b, 0xa9, 0x02, 0xb7])
        );
        assert_eq!(whole.call.service(), "a.Svc");
        assert_eq!(retry.attempt, Some(2));
        assert_eq!(whole.retries, Some(1));
        assert_eq!(whole.kind, SpanKind::Client);
        assert_eq!((whole.start_unix_nanos, whole.end_unix_nanos), (100, 300));
        assert_eq!((retry.start_unix_nanos, retry.end_unix_nanos), (200, 300));
        // Finished once: nothing more to send.
        tracer.finish(&mut t, Outcome::Ok, CallNames::default(), None, 2, 400);
        assert!(rx.try_recv().is_err());
    }

    #[test]
    fn a_recycled_box_carries_nothing_of_its_last_call() {
        let (spans, rx) = Spans::bounded(16);
        let mut tracer = Tracer::new(spans, 1.0, String::new());
        let addr: SocketAddr = "127.0.0.1:30000".parse().unwrap();
        let names = SVC_M;
        // A retried call: two spans, and its context encoded.
        let found = Gathered::from_pairs([("traceparent", CALLER)]);
        let mut first = tracer.begin(found, "http", 1).expect("traced");
        tracer.on_send(&mut first, 1, addr, &names, 1);
        tracer.on_send(&mut first, 2, addr, &names, 2);
        tracer.finish(
            &mut first,
            Outcome::Ok,
            call_names(&names),
            Some(addr),
            2,
            3,
        );
        assert_eq!(rx.try_iter().count(), 2);
        let first_box: *const CallTrace = &*first;
        tracer.recycle(first);
        // The next call gets the same box, with its own trace only.
        let mut next = tracer.begin(Gathered::default(), "dubbo", 10).unwrap();
        assert_eq!(&*next as *const CallTrace, first_box, "the box is reused");
        assert!(next.attachments().next().is_none(), "nothing encoded yet");
        tracer.on_send(&mut next, 1, addr, &names, 10);
        assert!(traceparent(&next).contains(&trace::Hex(next.ctx.trace_id).to_string()));
        tracer.finish(
            &mut next,
            Outcome::Ok,
            call_names(&names),
            Some(addr),
            1,
            11,
        );
        let spans: Vec<_> = rx.try_iter().collect();
        assert_eq!(spans.len(), 1, "one span: no retry's left over");
        assert_eq!(spans[0].trace_id, next.ctx.trace_id);
        assert_eq!(spans[0].front, "dubbo");
        assert_eq!(spans[0].start_unix_nanos, 10);
    }

    #[test]
    fn without_a_context_only_the_sample_rate_starts_a_trace() {
        let (spans, _rx) = Spans::bounded(16);
        let mut never = Tracer::new(spans.clone(), 0.0, String::new());
        assert!(never.begin(Gathered::default(), "http", 1).is_none());
        let mut always = Tracer::new(spans, 1.0, String::new());
        let t = always
            .begin(Gathered::default(), "http", 1)
            .expect("sampled");
        assert!(t.ctx.is_sampled() && t.ctx.parent_span_id.is_none());
        // An unsampled context is continued, not recorded.
        let (spans, rx) = Spans::bounded(16);
        let mut tracer = Tracer::new(spans, 1.0, String::new());
        let off = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00";
        let mut t = tracer
            .begin(Gathered::from_pairs([("traceparent", off)]), "http", 1)
            .unwrap();
        let names = Names {
            service: "a",
            method: "m",
            version: "",
            group: "",
        };
        tracer.on_send(&mut t, 1, "127.0.0.1:1".parse().unwrap(), &names, 2);
        assert!(traceparent(&t).ends_with("-00"));
        tracer.finish(&mut t, Outcome::Ok, CallNames::default(), None, 1, 3);
        assert!(rx.try_recv().is_err());
    }
}
