//! The front-ends as the call core sees them. A call remembers where it came from (its
//! [`Origin`]); answering it, failing it or refusing it goes back through here to the
//! front-end that took it, in that caller's own protocol. So the call core
//! (`call_core`, `rules_apply`, `upstream_conns`) names no front-end: a new one brings
//! its module, its listener's tag (`Tag`) and its arms here.

use codec::agent;
use reactor::{ConnId, Ctx};

use super::http_front::Render;
use super::rules_apply::Limited;
use super::ConsumerLoop;
use crate::metrics::Outcome;

/// Where a call came from: its front-end, and what it needs to answer.
#[derive(Debug, Clone, Copy)]
pub(super) enum Origin {
    /// An HTTP request: answered in its connection's request order.
    Http {
        conn: ConnId,
        seq: u64,
        keep_alive: bool,
        render: Render,
    },
    /// A Dubbo request: answered by its id, in any order (none when one-way).
    Dubbo {
        conn: ConnId,
        id: i64,
        two_way: bool,
    },
}

impl Origin {
    /// The caller's connection.
    pub(super) fn conn(&self) -> ConnId {
        match *self {
            Origin::Http { conn, .. } | Origin::Dubbo { conn, .. } => conn,
        }
    }

    /// Whether the caller gets the provider's answer as the provider wrote it (a
    /// Dubbo caller: the agent protocol's RAW flag), rather than a value to render.
    pub(super) fn wants_raw_result(&self) -> bool {
        matches!(self, Origin::Dubbo { .. })
    }
}

impl ConsumerLoop {
    /// Answers a call with its provider-agent's RESPONSE, the way the call came.
    pub(super) fn answer(
        &mut self,
        cx: &mut Ctx<'_, Self>,
        call: u64,
        origin: Origin,
        r: &agent::Response<'_>,
    ) {
        match origin {
            Origin::Http { render, .. } => self.answer_http(cx, call, render, r),
            Origin::Dubbo { .. } => self.answer_dubbo(cx, call, r),
        }
    }

    /// Fails a call for a reason of the mesh's own: `status` is the HTTP status the
    /// reason is (a Dubbo front-end maps it to its own), `text` says why.
    pub(super) fn fail(
        &mut self,
        cx: &mut Ctx<'_, Self>,
        call: u64,
        outcome: Outcome,
        status: u16,
        text: &str,
    ) {
        match self.call_mut(call).map(|c| c.origin) {
            Some(Origin::Http { render, .. }) => {
                self.fail_http(cx, call, render, outcome, status, text)
            }
            Some(Origin::Dubbo { .. }) => self.fail_dubbo(cx, call, outcome, status, text),
            None => {}
        }
    }

    /// Answers a call a rate limit refused: HTTP 429 with `Retry-After` (whole
    /// seconds), Dubbo SERVER_THREADPOOL_EXHAUSTED.
    pub(super) fn refuse_limited(&mut self, cx: &mut Ctx<'_, Self>, call: u64, limited: Limited) {
        let secs = limited.retry_after.as_secs_f64().ceil().max(1.0) as u64;
        let msg = format!("{} is exceeded; retry after {secs} s", limited.what);
        match self.call_mut(call).map(|c| c.origin) {
            Some(Origin::Http { render, .. }) => {
                self.refuse_limited_http(cx, call, render, secs, &msg)
            }
            Some(Origin::Dubbo { .. }) => {
                self.fail_dubbo(cx, call, Outcome::RateLimited, 429, &msg)
            }
            None => {}
        }
    }
}
