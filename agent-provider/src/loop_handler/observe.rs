//! What a call leaves behind besides its answer: its per service and method counters
//! (`provider_agent_method_*`, this loop's
//! [`MethodTable`](reactor_admin::method_stats::MethodTable)) and, with
//! `--access-log`, its access log line ([`reactor_admin::access_log`]).
//!
//! A call is observed in two steps. When it arrives ([`arrival`]) its
//! method's place in the table is looked up and the first half of its line is written
//! (time, caller, names) into a buffer reused from the log's writer thread; that
//! [`Observed`] stays in `ProviderLoop::arriving` until the call is refused or sent to
//! the provider, where its pending call keeps it. When the call completes
//! ([`ProviderLoop::complete`]) it is counted and its line finished and handed to the
//! writer thread with a `try_send`. Nothing takes a lock or waits; nothing allocates
//! for a method already in the table, nor for a line once the writer has returned
//! buffers.

use std::net::SocketAddr;
use std::time::Duration;

use codec::agent::{Signature, Status};
use reactor_admin::access_log::{AccessLog, CallEnd, CallStart};
use reactor_admin::method_stats::MethodTable;
use reactor_admin::otlp::CallNames;

use super::ProviderLoop;
use crate::metrics::STATUS_NAMES;
use crate::upstream::Observed;

/// What is known of a call when it arrives.
#[derive(Debug, Clone, Copy)]
pub(super) struct Arrival<'a> {
    /// `"agent"` (a consumer-agent) or `"dubbo"` (`--dubbo-listen`).
    pub(super) front: &'static str,
    pub(super) caller: Option<SocketAddr>,
    pub(super) caller_identity: Option<&'a str>,
    /// Empty when the call could not be read that far (the per-method counters').
    pub(super) service: &'a str,
    pub(super) method: &'a str,
    /// All its names, shared, for its access log line (empty without `--access-log`).
    pub(super) names: &'a CallNames,
    pub(super) bytes_in: usize,
    /// When it arrived: the loop's clock ([`reactor::Ctx::wall_unix_nanos`]).
    pub(super) unix_nanos: u64,
}

/// Starts observing a call as it arrives: its method's place in the loop's table
/// (`methods`), and the first half of its line (with `log`). A free function, so that
/// the loop can call it while it holds the call's names borrowed from its connection.
pub(super) fn arrival(
    methods: &mut MethodTable,
    log: Option<&AccessLog>,
    a: &Arrival<'_>,
) -> Observed {
    let method = (!a.service.is_empty()).then(|| methods.lookup(a.service, a.method));
    let line = log.map(|log| {
        let mut line = log.line();
        line.start(&CallStart {
            unix_nanos: a.unix_nanos,
            caller: a.caller,
            caller_identity: a.caller_identity,
            front: a.front,
            names: a.names,
        });
        line
    });
    Observed {
        method,
        line,
        bytes_in: u32::try_from(a.bytes_in).unwrap_or(u32::MAX),
        trace: None,
    }
}

impl ProviderLoop {
    /// Completes a call's observation: `status` is how it ended (the agent status
    /// standing for it), `code` the front-end's own status code (the agent status byte,
    /// or the Dubbo status answered), `bytes_out` the answer's size as written.
    pub(super) fn complete(
        &mut self,
        mut observed: Observed,
        status: Status,
        code: u16,
        latency: Duration,
        bytes_out: usize,
    ) {
        // Its span (with `--otlp-endpoint`, when traced) ends here too.
        if let (Some(t), Some(tracer)) = (observed.trace.as_mut(), self.tracer.as_mut()) {
            let name = STATUS_NAMES.get(status as usize).copied().unwrap_or("ok");
            tracer.finish(t, name, status == Status::Ok, latency);
        }
        let latency_us = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        if let Some(m) = observed.method {
            self.methods.record(m, status as usize, latency_us);
        }
        let (Some(mut line), Some(log)) = (observed.line, &self.access_log) else {
            return;
        };
        line.end(&CallEnd {
            trace_id: observed.trace.as_ref().map(|t| t.trace_id),
            upstream: Some(self.cfg.provider),
            retries: 0,
            status: code,
            outcome: STATUS_NAMES.get(status as usize).copied().unwrap_or("ok"),
            latency_us,
            bytes_in: u64::from(observed.bytes_in),
            bytes_out: bytes_out as u64,
        });
        log.send(line);
    }

    /// Completes the call being taken, refused or answered at once (no latency of its
    /// own).
    pub(super) fn complete_arriving(&mut self, status: Status, code: u16, bytes_out: usize) {
        let observed = self.arriving.take().unwrap_or_default();
        self.complete(observed, status, code, Duration::ZERO, bytes_out);
    }
}

/// The names of a consumer-agent connection's call ids lately called, as the access log
/// and spans take them: a few slots by call id (so a connection's many signatures keep
/// no second copy of their names beyond these), each forgotten when its id is defined
/// again.
#[derive(Debug, Default)]
pub(super) struct IdNames {
    slots: Vec<Option<(u32, CallNames)>>,
}

impl IdNames {
    const SLOTS: usize = 64;

    /// The names of call id `id`, whose signature is `sig` (none: empty names).
    pub(super) fn get(&mut self, id: u32, sig: Option<&Signature>) -> CallNames {
        let Some(sig) = sig else {
            return CallNames::default();
        };
        if self.slots.is_empty() {
            self.slots.resize(Self::SLOTS, None);
        }
        let Some(slot) = self.slots.get_mut(id as usize % Self::SLOTS) else {
            return CallNames::default();
        };
        match slot {
            Some((kept, names)) if *kept == id => names.clone(),
            _ => {
                let names = CallNames::new(&sig.service, &sig.method, &sig.version, &sig.group);
                *slot = Some((id, names.clone()));
                names
            }
        }
    }

    /// Call id `id` names another signature now.
    pub(super) fn forget(&mut self, id: u32) {
        if let Some(slot) = self.slots.get_mut(id as usize % Self::SLOTS) {
            if slot.as_ref().is_some_and(|(kept, _)| *kept == id) {
                *slot = None;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sig(service: &str, method: &str) -> Signature {
        Signature {
            service: service.into(),
            method: method.into(),
            ..Signature::default()
        }
    }

    #[test]
    fn names_by_id_are_made_once_and_forgotten_when_redefined() {
        let mut names = IdNames::default();
        let a = sig("a.Svc", "m");
        let first = names.get(3, Some(&a));
        assert!(names.get(3, Some(&a)).same(&first), "kept");
        assert_eq!((first.service(), first.method()), ("a.Svc", "m"));
        // Another id of the same slot takes it.
        let b = sig("b.Svc", "n");
        let other = names.get(3 + IdNames::SLOTS as u32, Some(&b));
        assert_eq!(other.service(), "b.Svc");
        assert!(!names.get(3, Some(&a)).same(&first), "made again");
        // Redefined: forgotten, and made of the new signature.
        names.forget(3);
        let c = sig("c.Svc", "o");
        assert_eq!(names.get(3, Some(&c)).service(), "c.Svc");
        assert_eq!(names.get(9, None).service(), "");
    }
}
