//! Distributed tracing (`--otlp-endpoint`): a call whose REQUEST carries a trace
//! context (the consumer-agent's span, as W3C, B3 or sw8 attachments; see
//! [`codec::trace`]) is continued with the provider-agent's span, the provider's part
//! (kind SERVER), and the provider receives the context as Dubbo attachments in the
//! same format, naming that span as its parent, so its own tracer joins the trace.
//! With `--trace-sample-rate`, a call without a context may start a trace here.
//!
//! Without `--otlp-endpoint` the loop has no [`Tracer`]: attachments pass as they came
//! and nothing is allocated for tracing.

use std::net::SocketAddr;

use codec::dubbo;
use codec::trace::{self, Fields, Format, Gathered, Sw8Local, TraceContext};
use reactor_admin::otlp::{CallNames, NamesCache, SpanData, SpanKind, Spans};

/// A loop's tracing state (present only with `--otlp-endpoint`).
#[derive(Debug)]
pub(crate) struct Tracer {
    spans: Spans,
    rng: reactor::XorShift,
    sample_rate: f64,
    /// This agent's address, as sw8's parent service instance.
    instance: String,
    /// The context encoded for the call being sent (reused).
    pub(super) wire: String,
    /// The names of the methods traced lately, shared by their spans.
    names: NamesCache,
    /// Boxes of spans sent, for the next ones.
    #[allow(clippy::vec_box)]
    spare: Vec<Box<SpanData>>,
}

/// A traced call, kept with what is observed of it until it completes.
#[derive(Debug)]
pub(crate) struct CallTrace {
    /// The trace (the access log's `trace_id`).
    pub(crate) trace_id: [u8; 16],
    /// The provider-agent's span, when sampled (boxed, as the pending call moves, and
    /// the box reused once the span is sent).
    span: Option<Box<SpanData>>,
}

/// What a call is, for its span.
#[derive(Debug, Clone, Copy)]
pub(super) struct Call<'a> {
    /// Its names, shared, when the caller has them (else made of the four below).
    pub(super) names: Option<&'a CallNames>,
    pub(super) service: &'a str,
    pub(super) method: &'a str,
    pub(super) version: &'a str,
    pub(super) group: &'a str,
    /// The consumer-agent that sent it.
    pub(super) peer: Option<SocketAddr>,
    /// The provider it goes to.
    pub(super) provider: SocketAddr,
    /// When it arrived (the loop's clock, Unix nanoseconds): the span's start.
    pub(super) start_unix_nanos: u64,
}

impl Tracer {
    pub(super) fn new(spans: Spans, sample_rate: f64, instance: String) -> Tracer {
        Tracer {
            spans,
            rng: reactor::XorShift::from_time(),
            sample_rate,
            instance,
            wire: String::new(),
            names: NamesCache::default(),
            spare: Vec::new(),
        }
    }

    /// Boxes of sent spans kept for the next ones.
    const SPARE: usize = 1024;

    fn draw(&mut self) -> bool {
        self.sample_rate > 0.0
            && ((self.rng.next_u64() >> 11) as f64) / ((1u64 << 53) as f64) < self.sample_rate
    }

    /// Continues (or, sampled, starts) the trace of an agent call whose attachments
    /// had `found` (its trace attachments): `None` if it is not traced. Otherwise the
    /// context for the provider is in `self.wire` (read it with the returned
    /// [`Fields`]).
    pub(super) fn begin(
        &mut self,
        found: Gathered<'_>,
        call: &Call<'_>,
    ) -> Option<(CallTrace, Fields)> {
        self.begin_with(found, call, "agent")
    }

    /// [`Tracer::begin`] for a call that came as `front` (the span's `mesh.front`).
    pub(super) fn begin_with(
        &mut self,
        found: Gathered<'_>,
        call: &Call<'_>,
        front: &'static str,
    ) -> Option<(CallTrace, Fields)> {
        let span_id = trace::span_id_from(self.rng.next_u64());
        let ours = match found.extract() {
            Some(mut caller) => {
                if caller.sampled.is_none() && !caller.debug {
                    caller.sampled = Some(self.draw());
                }
                caller.into_child(span_id)
            }
            None => {
                if !self.draw() {
                    return None;
                }
                let trace_id = trace::trace_id_from(self.rng.next_u64(), self.rng.next_u64());
                TraceContext::root(trace_id, span_id, true)
            }
        };
        let (endpoint, address) = if ours.format == Format::Sw8 {
            (
                format!("{}.{}", call.service, call.method),
                call.provider.to_string(),
            )
        } else {
            (String::new(), String::new())
        };
        let local = Sw8Local {
            service: "provider-agent",
            instance: &self.instance,
            endpoint: &endpoint,
            address: &address,
        };
        let fields = ours.encode(&local, &mut self.wire);
        let span = ours.is_sampled().then(|| {
            let names = match call.names {
                Some(n) => n.clone(),
                None => (self.names).get(call.service, call.method, call.version, call.group),
            };
            let data = SpanData::starting_at(
                ours.trace_id,
                ours.span_id,
                SpanKind::Server,
                names,
                call.start_unix_nanos,
            );
            let mut s = match self.spare.pop() {
                Some(mut b) => {
                    *b = data;
                    b
                }
                None => Box::new(data),
            };
            s.parent_span_id = ours.parent_span_id;
            s.trace_state.clone_from(&ours.tracestate);
            s.server = Some(call.provider);
            s.client = call.peer;
            s.front = front;
            s
        });
        Some((
            CallTrace {
                trace_id: ours.trace_id,
                span,
            },
            fields,
        ))
    }

    /// Ends a completed call's span: `status` is how it ended, `latency` how long it
    /// took from its arrival (on the loop's monotonic clock: no clock read here).
    pub(super) fn finish(
        &mut self,
        t: &mut CallTrace,
        status: &'static str,
        ok: bool,
        latency: std::time::Duration,
    ) {
        let Some(mut span) = t.span.take() else {
            return;
        };
        let took = u64::try_from(latency.as_nanos()).unwrap_or(u64::MAX);
        span.end_unix_nanos = span.start_unix_nanos.saturating_add(took);
        span.error = !ok;
        span.status = status;
        self.spans.send(&span);
        if self.spare.len() < Self::SPARE {
            self.spare.push(span);
        }
    }
}

impl super::ProviderLoop {
    /// A Dubbo consumer's call (`--dubbo-listen`) with tracing on: its trace, from its
    /// attachments, continued with the provider-agent's span (kept with the call being
    /// observed, `arriving`), and the request written to `out` for the provider under
    /// `id` with the continued context in place of the consumer's (the request encoded
    /// again, its arguments as they came). False when the call is not traced, or its
    /// request cannot be written again: the caller relays the frame as it is.
    /// `start_unix_nanos`: the call's arrival, on the loop's clock.
    pub(super) fn relay_traced(
        &mut self,
        out: &mut Vec<u8>,
        conn: reactor::ConnId,
        frame: &dubbo::Frame<'_>,
        routed: &dubbo::RoutedRequest<'_>,
        id: i64,
        start_unix_nanos: u64,
    ) -> bool {
        let Some(tracer) = self.tracer.as_mut() else {
            return false;
        };
        let peer = (self.inbound.get(conn.index()))
            .and_then(Option::as_ref)
            .filter(|i| i.id == conn)
            .and_then(|i| i.peer);
        let call = Call {
            names: None,
            service: &routed.path,
            method: &routed.method,
            version: &routed.version,
            group: routed.attachment("group").unwrap_or_default(),
            peer,
            provider: self.cfg.provider,
            start_unix_nanos,
        };
        let pairs = routed
            .attachments
            .iter()
            .map(|(k, v)| (k.as_ref(), v.as_ref()));
        let Some((t, fields)) = tracer.begin_with(Gathered::from_pairs(pairs), &call, "dubbo")
        else {
            return false;
        };
        if let Some(o) = self.arriving.as_mut() {
            o.trace = Some(t);
        }
        // The consumer's attachments as it sent them (routing keys included), but for
        // its trace context, replaced by ours.
        let mut attachments: Vec<(&str, Option<&str>)> =
            Vec::with_capacity(routed.attachments.len() + fields.len());
        attachments.extend(
            (routed.attachments.iter())
                .filter(|(k, _)| !trace::is_trace_key(k))
                .map(|(k, v)| (k.as_ref(), Some(v.as_ref()))),
        );
        attachments.extend(fields.iter(&tracer.wire).map(|(k, v)| (k, Some(v))));
        let request = dubbo::Request {
            id,
            serialization: dubbo::Serialization::Hessian2,
            two_way: frame.is_two_way(),
            dubbo_version: &routed.dubbo_version,
            path: &routed.path,
            version: (!routed.version.is_empty()).then_some(routed.version.as_ref()),
            group: None,
            method: &routed.method,
            descriptor: &routed.descriptor,
            args: routed.args,
            attachments: dubbo::Attachments::Exactly(&attachments),
        };
        dubbo::encode_request(out, &request).is_ok()
    }
}
