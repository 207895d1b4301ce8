//! Traffic rules on a loop: a call's first dispatch finds its route (by method and
//! attachments), takes rate-limit tokens (the service's, then the route's), and
//! shortens its deadline to the route's timeout; every pick of it stays within the
//! route's weighted subsets; failures feed outlier ejection. New rules replace the old
//! ones between two calls: no connection is closed, and calls in flight keep their
//! route's timeout and retries.

use std::sync::Arc;
use std::time::Duration;

use reactor::Ctx;

use super::{CallRoute, ConsumerLoop, LoopTimer};
use crate::rules::{Headers, Rules};
use crate::upstream::LoopRules;

/// Why a call may not go on.
pub(super) struct Limited {
    /// Which limit.
    pub what: String,
    /// When a token is there again.
    pub retry_after: Duration,
}

impl ConsumerLoop {
    /// A service's new rules (or none): in force for calls dispatched from now on.
    pub(super) fn on_rules(
        &mut self,
        cx: &mut Ctx<'_, Self>,
        service: String,
        rules: Option<Arc<Rules>>,
    ) {
        let loops = self.config.loops;
        match rules {
            Some(r) => {
                log::info!(
                    "loop {}: {service}: {} route(s) in force",
                    cx.loop_index(),
                    r.routes.len()
                );
                let applied = LoopRules::new(r, loops, cx.now());
                self.upstreams.rules.insert(service, applied);
            }
            None => {
                self.upstreams.rules.remove(&service);
            }
        }
    }

    /// Resolves call `call`'s route if it has none yet: `Err` when a rate limit refuses
    /// it (the caller then answers it).
    pub(super) fn route_call(&mut self, cx: &mut Ctx<'_, Self>, call: u64) -> Result<(), Limited> {
        self.route_call_with(cx, call, &None)
    }

    /// [`route_call`](Self::route_call) for an HTTP call, with its request's headers
    /// (only looked at when a route names some).
    pub(super) fn route_call_with(
        &mut self,
        cx: &mut Ctx<'_, Self>,
        call: u64,
        headers: &Headers<'_>,
    ) -> Result<(), Limited> {
        let key = (call & 0xffff_ffff) as usize;
        let Some(c) = self.calls.get_mut(key) else {
            return Ok(());
        };
        if self.call_routes.len() <= key {
            self.call_routes.resize(key + 1, CallRoute::default());
        }
        let Some(state) = self.call_routes.get_mut(key) else {
            return Ok(());
        };
        if state.gen == Some(c.gen) {
            return Ok(());
        }
        *state = CallRoute {
            gen: Some(c.gen),
            ..CallRoute::default()
        };
        let Some(sig) = self.signatures.get(c.call_id) else {
            return Ok(());
        };
        let Some(applied) = self.upstreams.rules.get_mut(&sig.service) else {
            return Ok(());
        };
        let now = cx.now();
        let attachments = c.attachments.iter().map(|(k, v)| (k.as_str(), v.as_str()));
        // The caller's identity is looked up only for rules that match on it.
        let caller = if applied.rules.names_callers() {
            crate::tls::peer_identity(cx, c.origin.conn())
        } else {
            None
        };
        let route = applied
            .rules
            .route_for(&sig.method, attachments, headers, caller.as_deref());
        if let Some(b) = applied.bucket.as_mut() {
            if let Err(wait) = b.take(now) {
                return Err(Limited {
                    what: format!("the rate limit of {}", sig.service),
                    retry_after: wait,
                });
            }
        }
        let Some(r) = route else {
            return Ok(());
        };
        if let Some(b) = applied.route_buckets.get_mut(r).and_then(Option::as_mut) {
            if let Err(wait) = b.take(now) {
                let name = applied.rules.routes.get(r).map_or("", |r| r.name.as_str());
                return Err(Limited {
                    what: format!("the rate limit of {}'s route {name:?}", sig.service),
                    retry_after: wait,
                });
            }
        }
        let Some(spec) = applied.rules.routes.get(r) else {
            return Ok(());
        };
        state.route = Some(r);
        state.retries = spec.retries;
        state.total_weight = spec.total_weight;
        if let Some(t) = spec.timeout {
            let deadline = c.started + t;
            if deadline < c.deadline {
                c.deadline = deadline;
                if let Some(old) = c.timer.take() {
                    cx.cancel_timer(old);
                }
                let left = deadline.saturating_duration_since(now);
                c.timer = Some(cx.set_timer(left, LoopTimer::Call(call)));
            }
        }
        Ok(())
    }

    /// The route call `call` took, with a fresh draw for its weighted split.
    pub(super) fn route_draw(&mut self, call: u64) -> Option<(usize, u32)> {
        let key = (call & 0xffff_ffff) as usize;
        let state = self.call_routes.get(key)?;
        let r = state.route?;
        let draw = match state.total_weight {
            0 | 1 => 0,
            total => self.rng.below(total as usize) as u32,
        };
        Some((r, draw))
    }

    /// Retries call `call` may take: its route's budget, else `--retries`.
    pub(super) fn retries_of(&self, call: u64) -> u32 {
        let key = (call & 0xffff_ffff) as usize;
        self.call_routes
            .get(key)
            .and_then(|r| r.retries)
            .unwrap_or(self.config.retries)
    }
}
