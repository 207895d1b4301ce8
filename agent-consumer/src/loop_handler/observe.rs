//! What a call leaves behind besides its answer: its per service and method counters
//! (`consumer_method_*`, this loop's [`MethodTable`](reactor_admin::method_stats)) and,
//! with `--access-log`, its access log line ([`reactor_admin::access_log`]).
//!
//! Both are written on the loop thread without a lock: the counters into the loop's own
//! table, the line into a buffer reused from the log's writer thread and handed to it
//! with a `try_send` (a full queue drops the line and counts it; the call never waits).

use std::net::SocketAddr;
use std::time::Duration;

use reactor::Ctx;
use reactor_admin::access_log::{CallEnd, CallStart};

use super::{Call, ConsumerLoop, Origin};
use crate::metrics::Outcome;

/// The names a call was made with, for a request refused before it became a call
/// (empty where not known yet).
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Names<'a> {
    pub(super) service: &'a str,
    pub(super) method: &'a str,
    pub(super) version: &'a str,
    pub(super) group: &'a str,
}

/// The status code of an HTTP answer (`HTTP/1.1 200 OK...`), 0 if it is not one.
pub(super) fn http_status(answer: &[u8]) -> u16 {
    answer
        .get(9..12)
        .and_then(|d| std::str::from_utf8(d).ok())
        .and_then(|d| d.parse().ok())
        .unwrap_or(0)
}

/// Wall-clock time of a call's arrival (Unix nanoseconds), `latency` before `now`.
fn arrived(now: u64, latency: Duration) -> u64 {
    now.saturating_sub(u64::try_from(latency.as_nanos()).unwrap_or(u64::MAX))
}

impl ConsumerLoop {
    /// Counts a completed call under its service and method (called by `take_call`,
    /// while the call's signature is still its own).
    pub(super) fn count_method(&mut self, c: &Call, outcome: Outcome, latency_us: u64) {
        if let Some(sig) = self.signatures.get(c.call_id) {
            (self.methods).observe(&sig.service, &sig.method, outcome.index(), latency_us);
        }
    }

    /// Writes a completed call's access log line (with `--access-log`): `status` is the
    /// front-end's code (HTTP status, or the Dubbo status byte of the answer), and
    /// `bytes_out` the answer's size as written.
    pub(super) fn log_call(
        &mut self,
        cx: &Ctx<'_, Self>,
        c: &Call,
        outcome: Outcome,
        status: u16,
        bytes_out: usize,
    ) {
        if self.access_log.is_none() || self.signatures.get(c.call_id).is_none() {
            return;
        }
        let names = self.names_of_call(c.call_id);
        let Some(log) = &self.access_log else { return };
        let (front, caller, caller_identity) = match c.origin {
            Origin::Http { conn, .. } => match self.http.get_mut(conn) {
                Some(h) => ("http", h.peer, h.identity.as_deref()),
                None => ("http", None, None),
            },
            // The Dubbo listener is plaintext: no verified identity.
            Origin::Dubbo { conn, .. } => ("dubbo", self.dubbo_peer(conn), None),
        };
        let latency = cx.now().saturating_duration_since(c.started);
        let start = CallStart {
            unix_nanos: arrived(cx.wall_unix_nanos(), latency),
            caller,
            caller_identity,
            front,
            names: &names,
        };
        let end = CallEnd {
            trace_id: c.trace_id,
            upstream: c.upstream,
            retries: c.attempts.saturating_sub(1),
            status,
            outcome: outcome.name(),
            latency_us: u64::try_from(latency.as_micros()).unwrap_or(u64::MAX),
            bytes_in: u64::from(c.bytes_in),
            bytes_out: bytes_out as u64,
        };
        log.log(&start, &end);
    }

    /// Writes the access log line of a request refused before it became a call (bad
    /// request): no upstream, no latency of its own.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn log_refused(
        &mut self,
        front: &'static str,
        caller: Option<SocketAddr>,
        names: Names<'_>,
        status: u16,
        bytes_in: usize,
        bytes_out: usize,
    ) {
        let Some(log) = &self.access_log else { return };
        let names =
            (self.refused_names).get(names.service, names.method, names.version, names.group);
        let start = CallStart {
            unix_nanos: reactor_admin::otlp::unix_nanos(),
            caller,
            caller_identity: None,
            front,
            names: &names,
        };
        let end = CallEnd {
            // Tracing: a refused request's trace id, if it carried a context.
            trace_id: None,
            upstream: None,
            retries: 0,
            status,
            outcome: Outcome::BadRequest.name(),
            latency_us: 0,
            bytes_in: bytes_in as u64,
            bytes_out: bytes_out as u64,
        };
        log.log(&start, &end);
    }

    /// The address of HTTP connection `conn`'s client.
    pub(super) fn http_peer(&mut self, conn: reactor::ConnId) -> Option<SocketAddr> {
        self.http.get_mut(conn).and_then(|h| h.peer)
    }

    /// The address of Dubbo connection `conn`'s consumer.
    pub(super) fn dubbo_peer(&self, conn: reactor::ConnId) -> Option<SocketAddr> {
        self.dubbo.get(conn).and_then(|d| d.peer)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn http_status_reads_the_status_line() {
        assert_eq!(super::http_status(b"HTTP/1.1 200 OK\r\n"), 200);
        assert_eq!(super::http_status(b"HTTP/1.1 504 Gateway Timeout\r\n"), 504);
        assert_eq!(super::http_status(b"HTTP/1.1"), 0);
        assert_eq!(super::http_status(b"HTTP/1.1 2x0 ?"), 0);
    }
}
