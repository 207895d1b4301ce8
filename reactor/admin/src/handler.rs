//! The admin loop's handler: per-connection deadlines, the connection bound, and one
//! answer per request.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use codec::http::{write_error, write_response_with, Limits, Request, RequestDecoder};
use codec::Decoded;
use reactor::{CloseReason, Conn, ConnId, Ctx, Handler, TimerId};

use crate::config::Config;
use crate::server::Routes;

/// Output a kept-alive connection may leave unread before its next request is taken:
/// past it, a client pipelining requests without reading its answers is dropped.
const MAX_UNREAD: usize = 1024 * 1024;
/// At most one warning per this interval about connections closed over the bound.
const WARN_EVERY: Duration = Duration::from_secs(1);

/// Where a connection is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Waiting for a request, under the request deadline; `begun` once a byte of it came.
    Reading { begun: bool },
    /// Kept alive between requests, under the idle deadline.
    Idle,
    /// Answered or refused, closing: input is ignored.
    Done,
}

/// One connection's state.
#[derive(Debug)]
struct Entry {
    /// Its place in the accept order; also its timers' token.
    seq: u64,
    decoder: RequestDecoder,
    state: State,
    /// The deadline of the current state (request or idle).
    timer: Option<TimerId>,
}

/// The admin loop: every connection of the server, oldest first.
#[derive(Debug)]
pub(crate) struct AdminLoop {
    routes: Arc<Routes>,
    config: Config,
    conns: HashMap<ConnId, Entry>,
    /// Accept order to connection: the oldest is closed first past the bound.
    by_age: BTreeMap<u64, ConnId>,
    next_seq: u64,
    /// Connections closed over the bound since the last warning.
    evicted: u64,
    last_warning: Option<Instant>,
}

impl AdminLoop {
    pub(crate) fn new(routes: Arc<Routes>, config: Config) -> Self {
        AdminLoop {
            routes,
            config,
            conns: HashMap::new(),
            by_age: BTreeMap::new(),
            next_seq: 0,
            evicted: 0,
            last_warning: None,
        }
    }

    fn limits(&self) -> Limits {
        Limits {
            max_head: self.config.max_head,
            max_body: self.config.max_body,
        }
    }

    /// Closes the oldest connections while there are more than the bound.
    fn enforce_bound(&mut self, cx: &mut Ctx<'_, Self>) {
        let max = self.config.max_connections.max(1);
        while self.conns.len() > max {
            let Some((_, oldest)) = self.by_age.pop_first() else {
                break;
            };
            if let Some(t) = self.conns.remove(&oldest).and_then(|e| e.timer) {
                cx.cancel_timer(t);
            }
            cx.abort(oldest);
            self.evicted += 1;
        }
        if self.evicted > 0 {
            let now = cx.now();
            let recently = self
                .last_warning
                .is_some_and(|t| now.duration_since(t) < WARN_EVERY);
            if !recently {
                log::warn!(
                    "admin: {} connection(s) closed, oldest first, to stay within {max}",
                    self.evicted
                );
                self.evicted = 0;
                self.last_warning = Some(now);
            }
        }
    }
}

/// Replaces a connection's deadline.
fn rearm(cx: &mut Ctx<'_, AdminLoop>, e: &mut Entry, after: Duration) {
    if let Some(t) = e.timer.take() {
        cx.cancel_timer(t);
    }
    e.timer = Some(cx.set_timer(after, e.seq));
}

/// Done with a connection: its answer (if any) goes out, then it closes.
fn finish(cx: &mut Ctx<'_, AdminLoop>, id: ConnId, e: &mut Entry) {
    if let Some(t) = e.timer.take() {
        cx.cancel_timer(t);
    }
    e.state = State::Done;
    cx.close(id);
}

/// Writes the answer to `req`; a `HEAD` gets the head only.
fn answer(
    cx: &mut Ctx<'_, AdminLoop>,
    id: ConnId,
    routes: &Routes,
    req: &Request<'_>,
    keep_alive: bool,
) {
    let resp = routes.answer(req.method, req.path);
    let Some(out) = cx.output(id) else {
        return;
    };
    let allow: &[(&str, &[u8])] = if resp.status == 405 {
        &[("Allow", b"GET, HEAD")]
    } else {
        &[]
    };
    write_response_with(
        out,
        resp.status,
        &resp.content_type,
        allow,
        &resp.body,
        keep_alive,
    );
    if req.method == "HEAD" {
        out.truncate(out.len() - resp.body.len());
    }
}

impl Handler for AdminLoop {
    type Tag = ();
    type Msg = ();
    type Timer = u64;

    fn opened(&mut self, cx: &mut Ctx<'_, Self>, conn: Conn<()>) {
        let seq = self.next_seq;
        self.next_seq += 1;
        let timer = cx.set_timer(self.config.request_timeout, seq);
        let entry = Entry {
            seq,
            decoder: RequestDecoder::with_limits(self.limits()),
            state: State::Reading { begun: false },
            timer: Some(timer),
        };
        self.conns.insert(conn.id, entry);
        self.by_age.insert(seq, conn.id);
        self.enforce_bound(cx);
    }

    fn data(&mut self, cx: &mut Ctx<'_, Self>, conn: Conn<()>, input: &[u8]) -> usize {
        let id = conn.id;
        let (request_timeout, keep_alive) = (self.config.request_timeout, self.config.keep_alive);
        let routes = &*self.routes;
        let Some(e) = self.conns.get_mut(&id) else {
            return input.len();
        };
        let mut used = 0;
        while let Some(rest) = input.get(used..).filter(|r| !r.is_empty()) {
            match e.state {
                State::Done => return input.len(),
                State::Idle => {
                    // The next request began: it has the request deadline from now.
                    e.state = State::Reading { begun: true };
                    rearm(cx, e, request_timeout);
                }
                State::Reading { .. } => e.state = State::Reading { begun: true },
            }
            match e.decoder.decode(rest) {
                Ok(Decoded::Complete { msg, consumed }) => {
                    used += consumed;
                    let idle = keep_alive.filter(|_| msg.keep_alive);
                    answer(cx, id, routes, &msg, idle.is_some());
                    let Some(idle) = idle else {
                        finish(cx, id, e);
                        return input.len();
                    };
                    if cx.unwritten(id) > MAX_UNREAD {
                        log::debug!("admin: a client does not read its answers; dropped");
                        e.state = State::Done;
                        cx.abort(id);
                        return input.len();
                    }
                    e.state = State::Idle;
                    rearm(cx, e, idle);
                }
                Ok(Decoded::Incomplete) => {
                    if e.decoder.take_continue() {
                        if let Some(out) = cx.output(id) {
                            codec::http::write_continue(out);
                        }
                    }
                    return used;
                }
                Err(err) => {
                    log::debug!("admin: bad request: {err}");
                    if let Some(out) = cx.output(id) {
                        write_error(out, &err);
                    }
                    finish(cx, id, e);
                    return input.len();
                }
            }
        }
        used
    }

    /// A connection's deadline: the timer carries the connection's sequence number.
    fn timer(&mut self, cx: &mut Ctx<'_, Self>, timer: TimerId, seq: u64) {
        let Some(&id) = self.by_age.get(&seq) else {
            return;
        };
        let Some(e) = self.conns.get_mut(&id) else {
            return;
        };
        if e.timer != Some(timer) {
            return;
        }
        e.timer = None;
        if e.state == (State::Reading { begun: true }) {
            if let Some(out) = cx.output(id) {
                write_response_with(
                    out,
                    408,
                    "text/plain",
                    &[],
                    b"request not received in time\n",
                    false,
                );
            }
        }
        finish(cx, id, e);
    }

    fn closed(&mut self, cx: &mut Ctx<'_, Self>, conn: Conn<()>, reason: CloseReason) {
        if let Some(e) = self.conns.remove(&conn.id) {
            self.by_age.remove(&e.seq);
            if let Some(t) = e.timer {
                cx.cancel_timer(t);
            }
        }
        log::trace!("admin: connection closed: {reason:?}");
    }
}
