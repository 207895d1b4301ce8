//! Upstream connections, to provider-agents and to unmeshed Dubbo providers:
//! connecting (and proving the peer one with a PING, or a Dubbo heartbeat), reading
//! their frames, keep-alives, reconnecting with backoff, retiring those that left the
//! registry, and the registry's lists themselves.
//!
//! An unmeshed provider's Dubbo answer becomes the agent RESPONSE a provider-agent
//! would have sent (`codec::agent::encode_dubbo_answer`), so a call completes the same
//! way whoever served it.

use std::time::Duration;

use codec::agent::{self, Frame};
use codec::dubbo;
use codec::Decoded;
use reactor::{CloseReason, ConnId, Ctx};
use registry::Instance;

use super::{ConsumerLoop, LoopTimer, Tag};
use crate::metrics::{Outcome, UpstreamView};
use crate::upstream::Protocol;

/// A provider-agent connection silent this long gets a PING (provider-agents close
/// agent connections idle for `--idle-timeout-secs`, 60 by default).
pub(super) const KEEPALIVE_IDLE: Duration = Duration::from_secs(15);

/// An open provider-agent connection whose PING is unanswered this long is dead.
pub(super) const KEEPALIVE_DEAD: Duration = Duration::from_secs(30);

impl ConsumerLoop {
    /// A new upstream connection: calls go to it once it answers a PING, or a Dubbo
    /// heartbeat (see [`on_pong`](Self::on_pong)).
    pub(super) fn on_upstream_opened(&mut self, cx: &mut Ctx<'_, Self>, conn: ConnId, key: usize) {
        let now = cx.now();
        let Some(up) = self.upstreams.table.get_mut(key) else {
            return;
        };
        let replacement = up.replacement == Some(conn);
        if up.conn != Some(conn) && !replacement {
            return;
        }
        if self.tls.is_some() && up.protocol == Protocol::Agent {
            // The CA vouched for the certificate; the registry says whose it must be.
            let peer = crate::tls::peer_identity(cx, conn);
            if peer.is_none() || peer != up.tls_identity {
                log::warn!(
                    "loop {}: provider-agent {} presented TLS identity {:?}, its registry entry says {:?} (tls.identity); refusing it",
                    cx.loop_index(),
                    up.addr,
                    peer.as_deref().unwrap_or("(none)"),
                    up.tls_identity.as_deref().unwrap_or("(none)")
                );
                self.metrics.tls_identity_mismatch();
                cx.abort(conn);
                return;
            }
        }
        if replacement {
            // Proved by its PONG (`on_upstream_data`), then it takes over.
            if let Some(out) = cx.output(conn) {
                write_ping(out, up.protocol);
            }
            return;
        }
        up.last_read = now;
        up.ping_sent = Some(now);
        if let Some(out) = cx.output(conn) {
            write_ping(out, up.protocol);
        }
    }

    pub(super) fn on_upstream_data(
        &mut self,
        cx: &mut Ctx<'_, Self>,
        id: ConnId,
        up: usize,
        input: &[u8],
    ) -> usize {
        let now = cx.now();
        let Some(u) = self.upstreams.table.get_mut(up) else {
            return input.len();
        };
        u.last_read = now;
        if u.protocol == Protocol::Dubbo {
            return self.on_provider_data(cx, id, up, input);
        }
        let mut pos = 0;
        while let Some(rest) = input.get(pos..) {
            match agent::decode(rest) {
                Ok(Decoded::Complete { msg, consumed }) => {
                    pos += consumed;
                    match msg {
                        Frame::Response(r) => self.on_answer(cx, up, &r),
                        Frame::Ping { id: ping } => {
                            if let Some(out) = cx.output(id) {
                                agent::encode_pong(out, ping);
                            }
                        }
                        Frame::Pong { .. } => {
                            if self.upstreams.table.get(up).and_then(|u| u.replacement) == Some(id)
                            {
                                self.take_over(cx, up, id);
                            } else {
                                self.on_pong(cx, up);
                            }
                        }
                        Frame::GoAway => self.on_goaway(cx, up, id),
                        Frame::Define { .. } | Frame::Request(_) => {
                            log::warn!("provider-agent sent a request frame; closing");
                            cx.abort(id);
                            return input.len();
                        }
                    }
                }
                Ok(Decoded::Incomplete) => break,
                Err(e) => {
                    log::warn!("bad frame from provider-agent: {e}; closing");
                    cx.abort(id);
                    return input.len();
                }
            }
        }
        if self
            .upstreams
            .table
            .get(up)
            .and_then(|u| u.draining)
            .is_some_and(|(c, _)| c == id)
        {
            self.close_if_drained(cx, up);
        }
        pos
    }

    /// A provider-agent being replaced said GOAWAY on `conn`: a new connection is
    /// opened (it reaches the successor, which accepts on the same port); calls go on
    /// over `conn` until the new one answers its PING (`take_over`).
    fn on_goaway(&mut self, cx: &mut Ctx<'_, Self>, key: usize, conn: ConnId) {
        let Some(up) = self.upstreams.table.get(key) else {
            return;
        };
        if up.conn != Some(conn) || up.replacement.is_some() || up.retiring {
            return;
        }
        log::info!(
            "loop {}: provider-agent {} is being replaced (GOAWAY); moving to a new connection",
            cx.loop_index(),
            up.addr
        );
        match self.dial(cx, key) {
            Ok(new) => {
                if let Some(up) = self.upstreams.table.get_mut(key) {
                    up.replacement = Some(new);
                }
            }
            // The old connection serves on until its provider-agent closes it; then
            // the ordinary reconnect takes over.
            Err(e) => log::warn!("connecting a replacement connection: {e}"),
        }
    }

    /// The replacement connection answered its PING: it takes the calls from now on,
    /// the old one is closed once the calls sent on it are answered.
    fn take_over(&mut self, cx: &mut Ctx<'_, Self>, key: usize, new: ConnId) {
        let now = cx.now();
        let Some(up) = self.upstreams.table.get_mut(key) else {
            return;
        };
        up.replacement = None;
        up.draining = up.conn.map(|old| (old, now));
        up.conn = Some(new);
        up.defined.clear();
        up.ping_sent = None;
        up.last_read = now;
        if !up.open {
            up.open = true;
            up.backoff.reset();
            self.release_held(cx, false);
        }
        self.close_if_drained(cx, key);
    }

    /// Closes the connection that said GOAWAY once no call sent on it (before the
    /// replacement took over) is in flight: the side sending requests closes, so none
    /// crosses the close.
    pub(super) fn close_if_drained(&mut self, cx: &mut Ctx<'_, Self>, key: usize) {
        let Some((old, since)) = self.upstreams.table.get(key).and_then(|u| u.draining) else {
            return;
        };
        let busy = self
            .calls
            .iter()
            .any(|(_, c)| c.sent.is_some_and(|(u, at)| u == key && at <= since));
        if busy {
            return;
        }
        if let Some(up) = self.upstreams.table.get_mut(key) {
            up.draining = None;
        }
        cx.close(old);
    }

    /// Opens a connection to upstream `key` (over TLS when configured).
    fn dial(&mut self, cx: &mut Ctx<'_, Self>, key: usize) -> std::io::Result<ConnId> {
        let timeout = Duration::from_millis(self.config.connect_timeout_ms);
        let Some(up) = self.upstreams.table.get(key) else {
            return Err(std::io::Error::other("no such upstream"));
        };
        match &self.tls {
            #[cfg(feature = "tls")]
            Some(tls) if up.protocol == Protocol::Agent => cx.connect_tls(
                up.addr,
                Tag::Upstream(key),
                Some(timeout),
                tls.config(),
                reactor::rustls::pki_types::ServerName::IpAddress(up.addr.ip().into()),
            ),
            _ => cx.connect(up.addr, Tag::Upstream(key), Some(timeout)),
        }
    }

    /// Reads an unmeshed Dubbo provider's frames: answers, heartbeats, its read-only
    /// event (it is shutting down: no new calls go to it).
    fn on_provider_data(
        &mut self,
        cx: &mut Ctx<'_, Self>,
        id: ConnId,
        up: usize,
        input: &[u8],
    ) -> usize {
        let mut pos = 0;
        while let Some(rest) = input.get(pos..).filter(|r| !r.is_empty()) {
            let frame = match dubbo::decode_frame(rest) {
                Ok(Decoded::Complete { msg, consumed }) => {
                    pos += consumed;
                    msg
                }
                Ok(Decoded::Incomplete) => break,
                Err(e) => {
                    log::warn!("bad frame from Dubbo provider: {e}; closing");
                    cx.abort(id);
                    return input.len();
                }
            };
            if frame.is_event() {
                if frame.is_readonly_event() {
                    if let Some(u) = self.upstreams.table.get_mut(up) {
                        log::info!("Dubbo provider {} is shutting down (read-only)", u.addr);
                        u.open = false;
                    }
                } else if frame.is_request() && frame.is_two_way() {
                    if let Some(out) = cx.output(id) {
                        dubbo::encode_heartbeat_reply(out, frame.id());
                    }
                } else if !frame.is_request() {
                    self.on_pong(cx, up);
                }
                continue;
            }
            if frame.is_request() {
                log::warn!("Dubbo provider sent a request; closing");
                cx.abort(id);
                return input.len();
            }
            let call = frame.id() as u64;
            let raw = self
                .call_mut(call)
                .is_some_and(|c| c.origin.wants_raw_result());
            let mut translated = std::mem::take(&mut self.translated);
            translated.clear();
            agent::encode_dubbo_answer(&mut translated, call, &frame, raw);
            if let Ok(Decoded::Complete {
                msg: Frame::Response(r),
                ..
            }) = agent::decode(&translated)
            {
                self.on_answer(cx, up, &r);
            }
            self.translated = translated;
        }
        pos
    }

    /// A PONG (or a Dubbo provider's heartbeat reply): the first on a connection proves
    /// the peer one, and the connection starts taking calls; later ones answer
    /// keep-alives.
    pub(super) fn on_pong(&mut self, cx: &mut Ctx<'_, Self>, key: usize) {
        let Some(up) = self.upstreams.table.get_mut(key) else {
            return;
        };
        up.ping_sent = None;
        if !up.open && up.conn.is_some() {
            up.open = true;
            up.backoff.reset();
            log::info!(
                "loop {}: connected to {} {}",
                cx.loop_index(),
                up.protocol.name(),
                up.addr
            );
            self.release_held(cx, false);
            if !self.metrics.has_upstream() {
                self.publish_upstreams(cx);
            }
        }
    }

    pub(super) fn connect(&mut self, cx: &mut Ctx<'_, Self>, key: usize) {
        let timeout = Duration::from_millis(self.config.connect_timeout_ms);
        let Some(up) = self.upstreams.table.get_mut(key) else {
            return;
        };
        if up.retiring {
            up.reconnect = None;
            self.remove_if_retired(cx, key);
            return;
        }
        up.reconnect = None;
        up.open = false;
        up.defined.clear();
        let connected = match &self.tls {
            #[cfg(feature = "tls")]
            Some(tls) if up.protocol == Protocol::Agent => cx.connect_tls(
                up.addr,
                Tag::Upstream(key),
                Some(timeout),
                tls.config(),
                reactor::rustls::pki_types::ServerName::IpAddress(up.addr.ip().into()),
            ),
            _ => cx.connect(up.addr, Tag::Upstream(key), Some(timeout)),
        };
        match connected {
            Ok(conn) => up.conn = Some(conn),
            Err(e) => {
                log::warn!("connect to provider-agent {}: {e}", up.addr);
                up.conn = None;
                let delay = up.backoff.next_delay();
                up.reconnect = Some(cx.set_timer(delay, LoopTimer::Reconnect(key)));
            }
        }
    }

    /// Drops a retiring upstream once no call is in flight on it.
    pub(super) fn remove_if_retired(&mut self, cx: &mut Ctx<'_, Self>, key: usize) {
        let retiring = self.upstreams.table.get(key).is_some_and(|u| u.retiring);
        let busy = self
            .calls
            .iter()
            .any(|(_, c)| c.sent.is_some_and(|(u, _)| u == key));
        if !retiring || busy {
            return;
        }
        if let Some(up) = self.upstreams.remove(key) {
            log::info!(
                "loop {}: provider-agent {} retired",
                cx.loop_index(),
                up.addr
            );
            if let Some(t) = up.reconnect {
                cx.cancel_timer(t);
            }
            let others = up
                .replacement
                .into_iter()
                .chain(up.draining.map(|(c, _)| c));
            for conn in up.conn.into_iter().chain(others) {
                cx.close(conn);
            }
        }
    }

    pub(super) fn on_upstream_closed(
        &mut self,
        cx: &mut Ctx<'_, Self>,
        id: ConnId,
        key: usize,
        reason: &CloseReason,
    ) {
        if self.replacement_closed(cx, id, key) {
            return;
        }
        if self.upstreams.by_conn(key, id).is_none() {
            return; // an upstream already dropped from the registry
        }
        let Some(up) = self.upstreams.table.get_mut(key) else {
            return;
        };
        let addr = up.addr;
        let was_open = up.open;
        up.conn = None;
        up.open = false;
        up.defined.clear();
        if let Some(next) = up.replacement.take() {
            // The provider-agent that said GOAWAY closed first (its drain deadline):
            // the replacement, already on its way, takes over once it answers.
            up.conn = Some(next);
            log::info!(
                "provider-agent {addr}: old connection closed ({reason:?}), the new one takes over"
            );
            self.fail_inflight_on(cx, key);
            return;
        }
        if up.retiring {
            // Left the registry: its calls fail, then it is dropped, not reconnected.
            log::info!("retiring provider-agent {addr} connection closed: {reason:?}");
            self.fail_inflight_on(cx, key);
            self.remove_if_retired(cx, key);
            return;
        }
        let delay = up.backoff.next_delay();
        up.reconnect = Some(cx.set_timer(delay, LoopTimer::Reconnect(key)));
        if was_open {
            log::warn!(
                "provider-agent {addr} connection closed: {reason:?}; reconnecting in {delay:?}"
            );
        } else {
            log::debug!("provider-agent {addr} connect failed: {reason:?}; retrying in {delay:?}");
        }
        self.fail_inflight_on(cx, key);
    }

    /// A GOAWAY's replacement connection, or the old connection draining, closed:
    /// handled here (true), the upstream's current connection is not touched.
    fn replacement_closed(&mut self, cx: &mut Ctx<'_, Self>, id: ConnId, key: usize) -> bool {
        let Some(up) = self.upstreams.table.get_mut(key) else {
            return false;
        };
        if up.replacement == Some(id) {
            up.replacement = None;
            log::warn!(
                "provider-agent {}: the connection replacing one that said GOAWAY failed; \
                 the old one serves on",
                up.addr
            );
            return true;
        }
        let Some(since) = up.draining.filter(|(c, _)| *c == id).map(|(_, t)| t) else {
            return false;
        };
        up.draining = None;
        // Closed before answering every call sent on it: those are lost.
        let lost: Vec<(u64, u32)> = self
            .calls
            .iter()
            .filter(|(_, c)| c.sent.is_some_and(|(u, at)| u == key && at <= since))
            .map(|(k, c)| (Self::call_id(k, c.gen), c.call_id))
            .collect();
        for (call, call_id) in lost {
            self.lost_on(call_id, key);
            self.fail(
                cx,
                call,
                Outcome::Unavailable,
                503,
                super::dubbo_front::LOST,
            );
        }
        true
    }

    /// Calls in flight on a lost upstream fail: they may have run, so no retry.
    pub(super) fn fail_inflight_on(&mut self, cx: &mut Ctx<'_, Self>, key: usize) {
        let lost: Vec<(u64, u32)> = self
            .calls
            .iter()
            .filter(|(_, c)| c.sent.is_some_and(|(u, _)| u == key))
            .map(|(k, c)| (Self::call_id(k, c.gen), c.call_id))
            .collect();
        for (call, call_id) in lost {
            self.lost_on(call_id, key);
            let msg = super::dubbo_front::LOST;
            self.fail(cx, call, Outcome::Unavailable, 503, msg);
        }
    }

    pub(super) fn on_instances(
        &mut self,
        cx: &mut Ctx<'_, Self>,
        service: &str,
        list: &[Instance],
    ) {
        let changes = self.upstreams.update(service, list);
        if let Some(held) = self.held.get_mut(service) {
            held.listed_at.get_or_insert(cx.now());
        }
        log::info!(
            "loop {}: {service}: {} provider-agent(s)",
            cx.loop_index(),
            self.upstreams
                .services
                .get(service)
                .map_or(0, |s| s.members.len())
        );
        // A provider-agent leaving the registry (e.g. shutting down) still answers the
        // calls it has: its connection closes once they are answered, not before.
        for key in changes.retired {
            self.remove_if_retired(cx, key);
        }
        for key in changes.connect {
            self.connect(cx, key);
        }
        if list.is_empty() {
            // Nothing to wait for: held calls get their 503 now. Nobody serves it:
            // forgotten (watched again by its next call), so names nobody serves are
            // neither watched nor remembered for long.
            if let Some(held) = self.held.remove(service) {
                let msg = format!("no provider for service {service}");
                for call in held.calls {
                    self.fail(cx, call, Outcome::Unavailable, 503, &msg);
                }
            }
            let empty = self
                .upstreams
                .services
                .get(service)
                .is_some_and(|s| s.members.is_empty());
            if empty && !self.config.services.iter().any(|s| s == service) {
                self.upstreams.services.remove(service);
                self.discovery.forget(service);
            }
        } else {
            self.release_held(cx, false);
        }
    }

    pub(super) fn sweep(&mut self, cx: &mut Ctx<'_, Self>) {
        let idle = Duration::from_secs(self.config.idle_timeout_secs);
        if !idle.is_zero() {
            let now = cx.now();
            let stale: Vec<ConnId> = self
                .http
                .iter()
                .filter(|c| {
                    c.inflight() == 0 && now.saturating_duration_since(c.last_active) > idle
                })
                .map(|c| c.id)
                .collect();
            for id in stale {
                cx.close(id);
            }
        }
        self.keep_alive_upstreams(cx);
        let draining: Vec<usize> = self
            .upstreams
            .table
            .iter()
            .filter(|(_, u)| u.draining.is_some())
            .map(|(k, _)| k)
            .collect();
        for key in draining {
            self.close_if_drained(cx, key);
        }
        self.expire_held(cx);
        for svc in self.upstreams.services.values_mut() {
            for m in &mut svc.members {
                m.stats.recover();
            }
        }
        self.publish_upstreams(cx);
        self.metrics
            .set_tls_handshake_failures(crate::tls::handshake_failures(cx));
    }

    /// The upstreams as `/metrics` and `/healthz` show them (every sweep, and as soon
    /// as the first one opens: a new process taking over waits for it).
    pub(super) fn publish_upstreams(&mut self, cx: &mut Ctx<'_, Self>) {
        let view: Vec<UpstreamView> = self
            .upstreams
            .table
            .iter()
            .map(|(key, u)| {
                let (mut inflight, mut limit, mut ewma) = (0, 0.0, 0.0);
                for svc in self.upstreams.services.values() {
                    if let Some(m) = svc.members.iter().find(|m| m.upstream == key) {
                        inflight += m.stats.inflight;
                        limit = m.stats.effective_limit();
                        ewma = m.stats.ewma_us;
                    }
                }
                UpstreamView {
                    addr: u.addr.to_string(),
                    up: u.open,
                    inflight,
                    limit,
                    ewma_us: ewma,
                }
            })
            .collect();
        self.metrics.set_upstreams(cx.loop_index(), view);
    }

    /// Every sweep: a PING on each provider-agent connection silent for
    /// [`KEEPALIVE_IDLE`] (so an idle link is kept, and a dead one found), and an abort
    /// of any whose PING went unanswered: for the connect timeout while it is being
    /// verified, for [`KEEPALIVE_DEAD`] once it is open.
    pub(super) fn keep_alive_upstreams(&mut self, cx: &mut Ctx<'_, Self>) {
        let now = cx.now();
        let verify = Duration::from_millis(self.config.connect_timeout_ms);
        for (_, up) in self.upstreams.table.iter_mut() {
            let Some(conn) = up.conn.filter(|&c| cx.is_open(c)) else {
                continue;
            };
            match up.ping_sent {
                Some(sent) => {
                    let limit = if up.open { KEEPALIVE_DEAD } else { verify };
                    if now.saturating_duration_since(sent) > limit {
                        log::warn!(
                            "provider-agent {} did not answer a PING in {limit:?}; closing",
                            up.addr
                        );
                        cx.abort(conn);
                    }
                }
                None if now.saturating_duration_since(up.last_read) >= KEEPALIVE_IDLE => {
                    if let Some(out) = cx.output(conn) {
                        write_ping(out, up.protocol);
                        up.ping_sent = Some(now);
                    }
                }
                None => {}
            }
        }
    }

    /// Every sweep: forgets held calls that completed meanwhile, and stops holding for
    /// a service listed a connect timeout ago whose provider-agents still do not open
    /// (its calls then get the ordinary 503 at once).
    pub(super) fn expire_held(&mut self, cx: &mut Ctx<'_, Self>) {
        let now = cx.now();
        let patience = Duration::from_millis(self.config.connect_timeout_ms);
        let calls = &self.calls;
        let alive = |id: &u64| {
            calls
                .get((id & 0xffff_ffff) as usize)
                .is_some_and(|c| c.gen == (id >> 32) as u32)
        };
        let mut expired = false;
        for held in self.held.values_mut() {
            held.calls.retain(alive);
            expired |= held
                .listed_at
                .is_some_and(|t| now.saturating_duration_since(t) > patience);
        }
        if expired {
            let stale: Vec<String> = self
                .held
                .iter()
                .filter(|(_, h)| {
                    h.listed_at
                        .is_some_and(|t| now.saturating_duration_since(t) > patience)
                })
                .map(|(s, _)| s.clone())
                .collect();
            for service in stale {
                if let Some(held) = self.held.remove(&service) {
                    for call in held.calls {
                        self.dispatch(cx, call, None);
                    }
                }
            }
        }
    }
}

/// A liveness probe in the upstream's protocol: a PING, or a Dubbo heartbeat (which
/// every Dubbo server answers with the same id and the event flag).
fn write_ping(out: &mut Vec<u8>, protocol: Protocol) {
    match protocol {
        // The id says this agent understands GOAWAY (see `codec::agent`).
        Protocol::Agent => agent::encode_ping(out, agent::GOAWAY_CAPABLE_PING),
        Protocol::Dubbo => dubbo::encode_heartbeat_request(out, 0),
    }
}
