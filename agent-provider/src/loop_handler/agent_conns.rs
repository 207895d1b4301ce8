//! The loop's agent side: accepted consumer-agent connections, their frames (DEFINE,
//! REQUEST, PING), limits on frame size, half-close, and idle connections.

use codec::agent::{self, Frame, Status};
use codec::Decoded;
use reactor::{ConnId, Ctx};

use super::dubbo_front::DUBBO_IDLE_MIN;
use super::translate::respond;
use super::{Inbound, ProviderLoop};

impl ProviderLoop {
    pub(super) fn inbound_mut(&mut self, id: ConnId) -> Option<&mut Inbound> {
        self.inbound
            .get_mut(id.index())
            .and_then(Option::as_mut)
            .filter(|i| i.id == id)
    }

    pub(super) fn agent_data(
        &mut self,
        cx: &mut Ctx<'_, Self>,
        conn: ConnId,
        input: &[u8],
    ) -> usize {
        let now = cx.now();
        if let Some(inb) = self.inbound_mut(conn) {
            inb.last_active = now;
        }
        let max_frame = self.cfg.agent.max_frame;
        let mut pos = 0;
        while let Some(rest) = input.get(pos..) {
            let head = agent::peek_head(rest);
            if let Some(len) = head
                .map(|h| h.body_len)
                .filter(|&n| u64::from(n) > max_frame)
            {
                log::debug!("loop {}: agent frame of {len} bytes; closing", self.index);
                if let Some(id) = head.filter(|h| h.is_request).map(|h| h.id) {
                    let msg = format!("frame body of {len} bytes is over --max-frame {max_frame}");
                    respond(cx, conn, id, Status::BadRequest, msg.as_bytes());
                    self.m().response(Status::BadRequest);
                }
                cx.close(conn);
                return input.len();
            }
            match agent::decode(rest) {
                Ok(Decoded::Incomplete) => break,
                Ok(Decoded::Complete { msg, consumed }) => {
                    pos += consumed;
                    if !self.agent_frame(cx, conn, msg, consumed) {
                        cx.close(conn);
                        return input.len();
                    }
                    if cx.is_congested(conn) {
                        // The consumer is not reading its answers: stop reading its
                        // requests until it does (see `drained`).
                        cx.pause_reading(conn);
                        break;
                    }
                }
                Err(e) => {
                    log::debug!("loop {}: bad agent frame: {e}; closing", self.index);
                    if let Some(id) = head.filter(|h| h.is_request).map(|h| h.id) {
                        respond(cx, conn, id, Status::BadRequest, e.to_string().as_bytes());
                        self.m().response(Status::BadRequest);
                    }
                    cx.close(conn);
                    return input.len();
                }
            }
        }
        pos
    }

    /// Handles one frame; false means the connection must close.
    pub(super) fn agent_frame(
        &mut self,
        cx: &mut Ctx<'_, Self>,
        conn: ConnId,
        frame: Frame<'_>,
        bytes_in: usize,
    ) -> bool {
        match frame {
            Frame::Define { call_id, signature } => {
                let Some(inb) = self.inbound_mut(conn) else {
                    return false;
                };
                // Checked before anything is kept: a name over its limit, or a table
                // over its bytes, closes the connection (a consumer-agent never sends
                // either; see codec::agent's rules).
                match inb.calls.define(call_id, signature.to_owned()) {
                    Ok(()) => {
                        // The id names another call now: decide it again.
                        inb.authz.forget(call_id);
                        inb.names.forget(call_id);
                        true
                    }
                    Err(e) => {
                        log::warn!("loop {}: DEFINE refused: {e}; closing", self.index);
                        false
                    }
                }
            }
            Frame::Request(req) => {
                self.call(cx, conn, &req, bytes_in);
                true
            }
            Frame::Ping { id } => {
                if let Some(out) = cx.output(conn) {
                    agent::encode_pong(out, id);
                }
                if id == agent::GOAWAY_CAPABLE_PING {
                    let handing_over = self.handing_over && self.draining;
                    if let Some(inb) = self.inbound_mut(conn) {
                        let first = !inb.goaway_capable;
                        inb.goaway_capable = true;
                        // Connected while this process was handing over (it accepted
                        // just before its successor took over): told at once.
                        if first && handing_over {
                            if let Some(out) = cx.output(conn) {
                                agent::encode_goaway(out);
                            }
                        }
                    }
                }
                true
            }
            Frame::Pong { .. } => true,
            Frame::GoAway => {
                log::debug!(
                    "loop {}: a GOAWAY frame from a consumer; closing",
                    self.index
                );
                false
            }
            Frame::Response(_) => {
                log::debug!(
                    "loop {}: a RESPONSE frame from a consumer; closing",
                    self.index
                );
                false
            }
        }
    }

    /// The stop of a handover began (a successor accepts on our port): every
    /// consumer-agent that understands GOAWAY is told to move to a new connection (it
    /// closes this one once its calls on it are answered; see `codec::agent`); the
    /// others are closed once nothing is in flight on them (`hand_over_idle`).
    pub(super) fn hand_over(&mut self, cx: &mut Ctx<'_, Self>) {
        let mut told = 0;
        for inb in self.inbound.iter().flatten() {
            if inb.dubbo.is_none() && inb.goaway_capable {
                if let Some(out) = cx.output(inb.id) {
                    agent::encode_goaway(out);
                    told += 1;
                }
            }
        }
        log::info!(
            "loop {}: handing over: GOAWAY to {told} consumer-agent connection(s), {} call(s) in flight",
            self.index,
            self.upstream.inflight()
        );
        self.hand_over_idle(cx);
    }

    /// While handing over: as soon as no call is in flight on them, hands a Dubbo
    /// consumer's connection to the successor process (`dubbo_front::hand_off`), and
    /// closes the others that cannot be told GOAWAY (an older consumer-agent's).
    pub(super) fn hand_over_idle(&mut self, cx: &mut Ctx<'_, Self>) {
        let idle: Vec<(ConnId, bool)> = self
            .inbound
            .iter()
            .flatten()
            .filter(|i| !i.goaway_capable || i.dubbo.is_some())
            .filter(|i| self.upstream.inflight_on(i.id) == 0)
            .map(|i| (i.id, i.dubbo.is_some()))
            .collect();
        for (id, dubbo) in idle {
            if dubbo && self.handoff.is_some() {
                self.hand_off(cx, id);
            } else {
                cx.close(id);
            }
        }
    }

    /// A consumer that half-closed gets its last answer, then our FIN.
    pub(super) fn close_if_done(&mut self, cx: &mut Ctx<'_, Self>, conn: ConnId) {
        let ended = self.inbound_mut(conn).is_some_and(|i| i.input_ended);
        if ended && self.upstream.inflight_on(conn) == 0 {
            cx.shutdown_write(conn);
        }
    }

    /// Closes agent connections silent for `--idle-timeout-secs` with nothing in flight
    /// (Dubbo consumers' connections: silent for at least [`DUBBO_IDLE_MIN`]).
    pub(super) fn close_idle(&mut self, cx: &mut Ctx<'_, Self>) {
        let Some(idle) = self.cfg.agent.idle_timeout() else {
            return;
        };
        let now = cx.now();
        let stale: Vec<ConnId> = self
            .inbound
            .iter()
            .flatten()
            .filter(|i| {
                let limit = if i.dubbo.is_some() {
                    idle.max(DUBBO_IDLE_MIN)
                } else {
                    idle
                };
                now.saturating_duration_since(i.last_active) > limit
                    && self.upstream.inflight_on(i.id) == 0
            })
            .map(|i| i.id)
            .collect();
        for id in stale {
            log::debug!("loop {}: closing an idle connection", self.index);
            cx.close(id);
        }
    }
}
