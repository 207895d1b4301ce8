//! The loop's provider side: its few persistent Dubbo connections (connect, reconnect
//! with backoff, read-only providers), the bytes that come back on them, and the
//! heartbeats that keep them (and prove the provider alive).

use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use codec::agent::Status;
use codec::dubbo;
use codec::Decoded;
use reactor::{CloseReason, ConnId, Ctx};

use super::{LoopTimer, ProviderLoop, Tag};
use crate::Event;

/// Bound on one provider connect attempt.
pub(super) const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

impl ProviderLoop {
    pub(super) fn connect(&mut self, cx: &mut Ctx<'_, Self>, slot: usize) {
        if self.draining {
            return;
        }
        let addr = self.cfg.provider;
        match cx.connect(addr, Tag::Provider(slot), Some(CONNECT_TIMEOUT)) {
            Ok(id) => {
                if let Some(c) = self.upstream.conns.get_mut(slot) {
                    c.id = Some(id);
                }
            }
            Err(e) => {
                log::warn!("loop {}: connect to provider {addr}: {e}", self.index);
                self.schedule_reconnect(cx, slot);
            }
        }
    }

    pub(super) fn schedule_reconnect(&mut self, cx: &mut Ctx<'_, Self>, slot: usize) {
        if self.draining {
            return;
        }
        if let Some(c) = self.upstream.conns.get_mut(slot) {
            if c.reconnect.is_none() {
                let delay = c.backoff.next_delay();
                c.reconnect = Some(cx.set_timer(delay, LoopTimer::Reconnect(slot)));
            }
        }
    }

    /// Tells the control thread when this loop's provider state changes.
    pub(super) fn report(&mut self) {
        let up = self.upstream.any_open();
        if up != self.reported_up {
            self.reported_up = up;
            let ev = if up {
                Event::ProviderUp(self.index)
            } else {
                Event::ProviderDown(self.index)
            };
            let _ = self.events.send(ev);
        }
    }

    pub(super) fn provider_opened(&mut self, cx: &mut Ctx<'_, Self>, slot: usize, id: ConnId) {
        let now = cx.now();
        let Some(c) = self.upstream.conns.get_mut(slot) else {
            return;
        };
        if c.id != Some(id) {
            return;
        }
        c.open = true;
        c.readonly = false;
        c.backoff.reset();
        c.last_read = now;
        c.last_write = now;
        log::info!(
            "loop {}: provider connection {slot} to {} up",
            self.index,
            self.cfg.provider
        );
        self.m().provider_conns_up.fetch_add(1, Relaxed);
        self.m().provider_connects.fetch_add(1, Relaxed);
        self.report();
    }

    pub(super) fn provider_closed(
        &mut self,
        cx: &mut Ctx<'_, Self>,
        slot: usize,
        id: ConnId,
        reason: &CloseReason,
    ) {
        let Some(c) = self.upstream.conns.get_mut(slot) else {
            return;
        };
        if c.id != Some(id) {
            return;
        }
        let was_open = c.open;
        c.id = None;
        c.open = false;
        c.readonly = false;
        if was_open {
            log::warn!(
                "loop {}: provider connection {slot} lost: {reason:?}",
                self.index
            );
            self.m().provider_conns_up.fetch_sub(1, Relaxed);
        } else {
            log::debug!("loop {}: provider connect failed: {reason:?}", self.index);
        }
        // These calls were written to the provider, which may have run them: not
        // UNAVAILABLE (which promises the call did not start, and is retried elsewhere).
        for p in self.upstream.take_on_conn(slot) {
            self.finish_call(
                cx,
                p,
                Status::ProviderError,
                b"provider connection lost with the call in flight; it may have run",
            );
        }
        self.schedule_reconnect(cx, slot);
        self.report();
    }

    pub(super) fn provider_data(
        &mut self,
        cx: &mut Ctx<'_, Self>,
        slot: usize,
        id: ConnId,
        input: &[u8],
    ) -> usize {
        let now = cx.now();
        if let Some(c) = self.upstream.conns.get_mut(slot) {
            c.last_read = now;
        }
        let mut pos = 0;
        while let Some(rest) = input.get(pos..) {
            match dubbo::decode_frame(rest) {
                Ok(Decoded::Incomplete) => break,
                Ok(Decoded::Complete {
                    msg: frame,
                    consumed,
                }) => {
                    pos += consumed;
                    self.provider_frame(cx, slot, id, &frame);
                }
                Err(e) => {
                    log::warn!(
                        "loop {}: bad frame from provider: {e}; reconnecting",
                        self.index
                    );
                    cx.abort(id);
                    return input.len();
                }
            }
        }
        pos
    }

    pub(super) fn heartbeat(&mut self, cx: &mut Ctx<'_, Self>) {
        let now = cx.now();
        let hb = self.cfg.heartbeat;
        for slot in 0..self.upstream.conns.len() {
            let Some(c) = self.upstream.conns.get_mut(slot) else {
                continue;
            };
            let (true, Some(id)) = (c.open, c.id) else {
                continue;
            };
            if now.saturating_duration_since(c.last_read) >= hb * 3 {
                log::warn!(
                    "loop {}: provider connection {slot} silent for {:?}; closing",
                    self.index,
                    hb * 3
                );
                cx.abort(id);
                continue;
            }
            // As Dubbo does: a heartbeat once either direction has been idle, so a
            // provider busy on long calls (we write, it does not answer yet) still shows
            // it is alive before the silence check above cuts it off.
            let last = c.last_read.min(c.last_write);
            if now.saturating_duration_since(last) >= hb {
                self.heartbeat_seq = (self.heartbeat_seq + 1) & 0x7fff_ffff;
                if let Some(out) = cx.output(id) {
                    // Heartbeat ids have generation 0, which no call ever uses.
                    dubbo::encode_heartbeat_request(out, self.heartbeat_seq);
                }
                c.last_write = now;
            }
        }
    }
}
