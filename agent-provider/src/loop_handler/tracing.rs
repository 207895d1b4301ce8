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

use codec::agent;
use codec::trace::{self, Fields, Format, Sw8Local, TraceContext};
use reactor_admin::otlp::{CallNames, SpanData, SpanKind, Spans};

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
}

/// A traced call, kept with what is observed of it until it completes.
#[derive(Debug)]
pub(crate) struct CallTrace {
    /// The trace (the access log's `trace_id`).
    pub(crate) trace_id: [u8; 16],
    /// The provider-agent's span, when sampled.
    span: Option<SpanData>,
}

/// What a call is, for its span.
#[derive(Debug, Clone, Copy)]
pub(super) struct Call<'a> {
    pub(super) service: &'a str,
    pub(super) method: &'a str,
    pub(super) version: &'a str,
    pub(super) group: &'a str,
    /// The consumer-agent that sent it.
    pub(super) peer: Option<SocketAddr>,
    /// The provider it goes to.
    pub(super) provider: SocketAddr,
}

impl Tracer {
    pub(super) fn new(spans: Spans, sample_rate: f64, instance: String) -> Tracer {
        Tracer {
            spans,
            rng: reactor::XorShift::from_time(),
            sample_rate,
            instance,
            wire: String::new(),
        }
    }

    fn draw(&mut self) -> bool {
        self.sample_rate > 0.0
            && ((self.rng.next_u64() >> 11) as f64) / ((1u64 << 53) as f64) < self.sample_rate
    }

    /// Continues (or, sampled, starts) the trace of a call arriving with `attachments`:
    /// `None` if it is not traced. Otherwise the context for the provider is in
    /// `self.wire` (read it with the returned [`Fields`]).
    pub(super) fn begin(
        &mut self,
        attachments: agent::Attachments<'_>,
        call: &Call<'_>,
    ) -> Option<(Box<CallTrace>, Fields)> {
        let lookup = |name: &str| {
            attachments
                .into_iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(name))
                .map(|(_, v)| v)
        };
        let span_id = trace::span_id_from(self.rng.next_u64());
        let ours = match trace::extract(lookup) {
            Some(mut caller) => {
                if caller.sampled.is_none() && !caller.debug {
                    caller.sampled = Some(self.draw());
                }
                caller.child(span_id)
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
            let names = CallNames::new(call.service, call.method, call.version, call.group);
            let mut s = SpanData::new(ours.trace_id, ours.span_id, SpanKind::Server, names);
            s.parent_span_id = ours.parent_span_id;
            s.trace_state.clone_from(&ours.tracestate);
            s.server = Some(call.provider);
            s.client = call.peer;
            s.front = "agent";
            s
        });
        Some((
            Box::new(CallTrace {
                trace_id: ours.trace_id,
                span,
            }),
            fields,
        ))
    }

    /// Ends a completed call's span: `status` is how it ended.
    pub(super) fn finish(&mut self, t: &mut CallTrace, status: &'static str, ok: bool) {
        let Some(mut span) = t.span.take() else {
            return;
        };
        span.end_unix_nanos = reactor_admin::otlp::unix_nanos();
        span.error = !ok;
        span.status = status;
        self.spans.send(span);
    }
}
