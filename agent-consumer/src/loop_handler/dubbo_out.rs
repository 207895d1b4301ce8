//! Calls to unmeshed Dubbo providers (found in ZooKeeper in Dubbo's layout): the loop
//! writes the Dubbo request a provider-agent would have written, on its own connection
//! to the provider, so a service half in the mesh and half out is one pool to callers.
//!
//! The request id is the call's own id; the answer comes back through
//! `upstream_conns`, turned into the agent RESPONSE it stands for.

use codec::dubbo::{self, Serialization};
use reactor::{ConnId, Ctx};

use super::ConsumerLoop;
use crate::metrics::Outcome;

/// The Dubbo version written when the caller named none (Java 2.7's): providers answer
/// it with result flags that carry attachments.
const DEFAULT_DUBBO_VERSION: &str = "2.0.2";

impl ConsumerLoop {
    /// Writes call `call` as a Dubbo request on `conn`, the connection to unmeshed
    /// provider `up_key`, picked for it.
    pub(super) fn send_dubbo(
        &mut self,
        cx: &mut Ctx<'_, Self>,
        call: u64,
        up_key: usize,
        conn: ConnId,
    ) {
        let now = cx.now();
        let Some(c) = self.calls.get_mut((call & 0xffff_ffff) as usize) else {
            return;
        };
        let Some(sig) = self.signatures.get(c.call_id) else {
            return;
        };
        // The provider is asked for the version and group of its own that the call's
        // (perhaps wildcard) ones match, as a provider-agent would resolve them.
        let (version, group) =
            match self
                .upstreams
                .variant(&sig.service, up_key, &sig.version, &sig.group)
            {
                Some(v) => (v.version.as_str(), v.group.as_str()),
                None => (sig.version.as_str(), sig.group.as_str()),
            };
        let remaining = c.deadline.saturating_duration_since(now).as_millis().max(1);
        let mut digits = [0u8; 10];
        let timeout = decimal(remaining.min(u128::from(u32::MAX)) as u32, &mut digits);
        // The caller's attachments and the timeout, listed on the stack (nearly always
        // a few); only a call carrying more than eight spills to the heap.
        if let (Some(tracer), Some(t)) = (self.tracer.as_mut(), c.trace.as_deref_mut()) {
            let addr = (self.upstreams.table.get(up_key)).map(|u| u.addr);
            if let Some(addr) = addr {
                let names = super::tracing::Names {
                    service: &sig.service,
                    method: &sig.method,
                    version,
                    group,
                };
                tracer.on_send(t, c.attempts + 1, addr, &names, cx.wall_unix_nanos());
            }
        }
        let written = {
            let traced = c.trace.as_deref().into_iter().flat_map(|t| t.attachments());
            let mut all = c
                .attachments
                .iter()
                .filter(|(k, _)| !dubbo::is_reserved_attachment(k))
                .map(|(k, v)| (k.as_str(), Some(v.as_str())))
                .chain(traced.map(|(k, v)| (k, Some(v))))
                .chain([("timeout", Some(timeout))]);
            let mut small: [(&str, Option<&str>); 9] = [("", None); 9];
            let mut listed = 0;
            for (slot, pair) in small.iter_mut().zip(all.by_ref()) {
                *slot = pair;
                listed += 1;
            }
            let spilled: Vec<(&str, Option<&str>)> = match all.next() {
                Some(more) => small.iter().copied().chain([more]).chain(all).collect(),
                None => Vec::new(),
            };
            let attachments: &[(&str, Option<&str>)] = if spilled.is_empty() {
                small.get(..listed).unwrap_or_default()
            } else {
                &spilled
            };
            let request = dubbo::Request {
                id: call as i64,
                serialization: Serialization::Hessian2,
                two_way: true,
                dubbo_version: c
                    .dubbo_version
                    .as_ref()
                    .map_or(DEFAULT_DUBBO_VERSION, |v| v.as_str()),
                path: &sig.service,
                version: Some(if version.is_empty() { "0.0.0" } else { version }),
                group: (!group.is_empty()).then_some(group),
                method: &sig.method,
                descriptor: &sig.parameter_types,
                args: &c.args,
                attachments: dubbo::Attachments::Standard(attachments),
            };
            match cx.output(conn) {
                Some(out) => dubbo::encode_request(out, &request).is_ok(),
                None => false,
            }
        };
        c.attempts += 1;
        c.sent = Some((up_key, now));
        c.upstream = self.upstreams.table.get(up_key).map(|u| u.addr);
        if !written {
            c.sent = None;
            let msg = "request too large for Dubbo";
            return self.fail(cx, call, Outcome::BadRequest, 400, msg);
        }
        if let Some(s) = self.upstreams.stats(&sig.service, up_key) {
            s.on_send();
        }
    }
}

/// `n` in decimal, written into `buf` (no allocation).
fn decimal(mut n: u32, buf: &mut [u8; 10]) -> &str {
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    std::str::from_utf8(&buf[i..]).unwrap_or("0")
}

#[cfg(test)]
mod tests {
    #[test]
    fn decimal_writes_every_width() {
        let mut buf = [0u8; 10];
        for n in [0, 7, 10, 999, 30_000, u32::MAX] {
            assert_eq!(super::decimal(n, &mut buf), n.to_string());
        }
    }
}
