//! A load balancer over a pool of persistent upstream connections.
//!
//! ```text
//! cargo run -p reactor --example echo -- 127.0.0.1:7000 &
//! cargo run -p reactor --example echo -- 127.0.0.1:7001 &
//! cargo run -p reactor --example pool -- 127.0.0.1:7002 2 127.0.0.1:7000 127.0.0.1:7001
//! ```
//!
//! **Protocol**: lines. A client sends request lines, each ending in `\n`; each line goes
//! to one upstream connection, round-robin over the open ones, and the upstream answers
//! every line with one line, in order (the `echo` example does). The client gets one
//! reply line per request line, in the order of its requests, although consecutive
//! lines are served by different upstreams. With no upstream connection open, a request
//! is answered `ERR no upstream`; when an upstream connection closes with requests
//! outstanding, each of them is answered `ERR upstream closed` (not retried: the upstream
//! may have acted on it). A client that half-closes gets its outstanding replies, then
//! our FIN. A line longer than [`Config::max_input`] closes its connection.
//!
//! **Pool**: `PER_UPSTREAM` persistent connections to each upstream address, per loop,
//! opened when the loop starts. A connection that fails to connect or closes is opened
//! again after a [`Backoff`] delay (50 ms doubling up to 5 s, jittered; back to 50 ms
//! once a connect succeeds). An error from [`Ctx::connect`] itself is handled like a
//! failure reported to [`Handler::closed`]. An upstream's FIN aborts its connection at
//! once ([`EndOfInput::Abort`], still reported as [`CloseReason::PeerClosed`]): nothing
//! more can be answered on it, and its replacement is on the way.
//!
//! **State**: per connection, in [`ConnMap`]s: a client's queue of replies, an upstream
//! connection's pool slot. The ids of clients linger in the upstreams' queues of
//! outstanding requests after the clients leave; a late reply looks its client up,
//! finds nothing (even once a newer client has the slot) and is dropped.
//!
//! **Backpressure**: a client is paused when its own output is congested, when it is
//! owed [`MAX_OUTSTANDING`] replies, or when every open upstream connection is
//! congested. `data` alone decides to pause; whatever may lift a cause (the client's
//! `drained`, replies written, an upstream's `drained` or open or close) just resumes,
//! and `data` pauses again if another cause still holds.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::mpsc::Sender;
use std::time::Duration;

use reactor::{
    Backoff, Builder, CloseReason, Config, Conn, ConnId, ConnMap, Ctx, EndOfInput, Handler,
    Reactor, TimerId,
};

/// Replies a client may be owed before reading it pauses.
pub const MAX_OUTSTANDING: usize = 1024;
/// Retry delays a slot remembers for [`SlotStatus`].
const KEEP_DELAYS: usize = 32;

/// The pool's settings.
#[derive(Debug, Clone)]
pub struct PoolConfig {
    /// Upstream addresses.
    pub upstreams: Vec<SocketAddr>,
    /// Persistent connections to each upstream, per loop.
    pub per_upstream: usize,
    /// First reconnect delay.
    pub backoff_initial: Duration,
    /// Largest reconnect delay.
    pub backoff_max: Duration,
    /// How long a connect may take.
    pub connect_timeout: Duration,
}

impl PoolConfig {
    /// `per_upstream` connections to each of `upstreams`, with the default delays.
    pub fn new(upstreams: Vec<SocketAddr>, per_upstream: usize) -> Self {
        PoolConfig {
            upstreams,
            per_upstream,
            backoff_initial: Duration::from_millis(50),
            backoff_max: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(2),
        }
    }
}

/// Which kind of connection this is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// Accepted from a client.
    Client,
    /// One of the pool's connections to an upstream.
    Upstream,
}

/// Messages to a loop.
#[derive(Debug)]
pub enum Msg {
    /// Send back the state of the loop's pool, one entry per connection slot.
    Status(Sender<Vec<SlotStatus>>),
}

/// The state of one pool slot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotStatus {
    /// The upstream it connects to.
    pub addr: SocketAddr,
    /// Whether its connection is open.
    pub open: bool,
    /// The reconnect delays since its last successful connect, oldest first (at most
    /// 32): each is the [`Backoff`] delay waited before one more attempt.
    pub retry_delays: Vec<Duration>,
}

/// One persistent upstream connection of the pool.
#[derive(Debug)]
struct Slot {
    addr: SocketAddr,
    /// The connection, connecting or open; `None` while waiting to reconnect.
    conn: Option<ConnId>,
    backoff: Backoff,
    retry_delays: Vec<Duration>,
    /// Requests sent on `conn` and not answered yet, oldest first: (client, sequence
    /// number of the request on that client).
    outstanding: VecDeque<(ConnId, u64)>,
}

/// A client's replies, written in the order of its requests.
#[derive(Debug, Default)]
struct Client {
    /// Sequence number of `replies[0]`.
    first: u64,
    /// The replies it is owed, in request order; `None` until its upstream answers.
    replies: VecDeque<Option<Vec<u8>>>,
    /// It finished sending: close once every reply is written.
    ended: bool,
}

/// Where a request line goes.
enum Pick {
    /// To this slot's open connection.
    Slot(usize, ConnId),
    /// Nowhere yet: every open upstream connection is congested.
    Busy,
    /// Nowhere: no upstream connection is open.
    NoUpstream,
}

/// One loop's balancer: its pool, its clients.
#[derive(Debug)]
struct Pool {
    slots: Vec<Slot>,
    /// Round-robin cursor into `slots`.
    next: usize,
    clients: ConnMap<Client>,
    /// Each upstream connection's slot.
    upstreams: ConnMap<usize>,
    /// Clients paused because every open upstream connection was congested.
    waiting: Vec<ConnId>,
    connect_timeout: Duration,
}

impl Pool {
    fn new(cfg: &PoolConfig) -> Self {
        // Interleaved (a, b, a, b, ...), so that round-robin alternates upstreams.
        let slots = (0..cfg.per_upstream)
            .flat_map(|_| cfg.upstreams.iter())
            .map(|&addr| Slot {
                addr,
                conn: None,
                backoff: Backoff::new(cfg.backoff_initial, cfg.backoff_max),
                retry_delays: Vec::new(),
                outstanding: VecDeque::new(),
            })
            .collect();
        Pool {
            slots,
            next: 0,
            clients: ConnMap::new(),
            upstreams: ConnMap::new(),
            waiting: Vec::new(),
            connect_timeout: cfg.connect_timeout,
        }
    }

    /// Opens slot `i`'s connection.
    fn connect(&mut self, cx: &mut Ctx<'_, Self>, i: usize) {
        let addr = self.slots[i].addr;
        match cx.connect(addr, Side::Upstream, Some(self.connect_timeout)) {
            Ok(id) => {
                self.slots[i].conn = Some(id);
                self.upstreams.insert(id, i);
            }
            Err(e) => {
                // Failed before the attempt was under way (no descriptors, no route...):
                // no callback follows, so retry as for a reported failure.
                log::warn!("upstream {addr}: connect: {e}");
                self.retry_later(cx, i);
            }
        }
    }

    /// Schedules slot `i`'s next connect after its backoff delay (the timer carries the
    /// slot).
    fn retry_later(&mut self, cx: &mut Ctx<'_, Self>, i: usize) {
        if cx.is_stopping() {
            return;
        }
        let slot = &mut self.slots[i];
        let delay = slot.backoff.next_delay();
        if slot.retry_delays.len() < KEEP_DELAYS {
            slot.retry_delays.push(delay);
        }
        log::debug!("upstream {}: reconnecting in {delay:?}", slot.addr);
        cx.set_timer(delay, i);
    }

    /// The next open, uncongested upstream connection, round-robin.
    fn pick(&mut self, cx: &Ctx<'_, Self>) -> Pick {
        let mut any_open = false;
        for k in 0..self.slots.len() {
            let i = (self.next + k) % self.slots.len();
            let Some(id) = self.slots[i].conn.filter(|&id| cx.is_open(id)) else {
                continue;
            };
            any_open = true;
            if !cx.is_congested(id) {
                self.next = i + 1;
                return Pick::Slot(i, id);
            }
        }
        if any_open {
            Pick::Busy
        } else {
            Pick::NoUpstream
        }
    }

    /// Request lines from a client: each goes to an upstream (or is answered at once).
    fn client_data(&mut self, cx: &mut Ctx<'_, Self>, id: ConnId, input: &[u8]) -> usize {
        let mut consumed = 0;
        while let Some(n) = input[consumed..].iter().position(|&b| b == b'\n') {
            let Some(client) = self.clients.get(id) else {
                return input.len();
            };
            if cx.is_congested(id) || client.replies.len() >= MAX_OUTSTANDING {
                cx.pause_reading(id); // until `drained` or `answer` resumes it
                break;
            }
            let seq = client.first + client.replies.len() as u64;
            let line = &input[consumed..consumed + n + 1];
            let pick = self.pick(cx);
            if let Pick::Busy = pick {
                cx.pause_reading(id); // until an upstream drains, opens or closes
                if !self.waiting.contains(&id) {
                    self.waiting.push(id);
                }
                break;
            }
            consumed += n + 1;
            if let Some(client) = self.clients.get_mut(id) {
                client.replies.push_back(None);
            }
            match pick {
                Pick::Slot(i, up) => {
                    cx.write(up, line);
                    self.slots[i].outstanding.push_back((id, seq));
                }
                _ => answer(&mut self.clients, cx, id, seq, b"ERR no upstream\n"),
            }
        }
        // The rest (a partial line, or lines held back by a pause) is offered again.
        consumed
    }

    /// Reply lines from an upstream connection, each for its oldest outstanding request.
    fn upstream_data(&mut self, cx: &mut Ctx<'_, Self>, id: ConnId, input: &[u8]) -> usize {
        let Some(&i) = self.upstreams.get(id) else {
            return input.len();
        };
        let mut consumed = 0;
        while let Some(n) = input[consumed..].iter().position(|&b| b == b'\n') {
            let line = &input[consumed..consumed + n + 1];
            consumed += n + 1;
            match self.slots[i].outstanding.pop_front() {
                Some((client, seq)) => answer(&mut self.clients, cx, client, seq, line),
                None => {
                    log::warn!("upstream {}: a reply to no request", self.slots[i].addr);
                    cx.abort(id); // and reconnect (see `closed`)
                    return input.len();
                }
            }
        }
        consumed
    }

    /// An upstream connection closed or failed to connect: its outstanding requests
    /// fail, and it is opened again after a delay.
    fn upstream_closed(&mut self, cx: &mut Ctx<'_, Self>, id: ConnId, reason: CloseReason) {
        let Some(i) = self.upstreams.remove(id) else {
            return;
        };
        let slot = &mut self.slots[i];
        slot.conn = None;
        match &reason {
            CloseReason::Shutdown => {}
            // Warned once per outage, not on every retry.
            r if r.is_connect_failure() && slot.retry_delays.is_empty() => {
                log::warn!("upstream {}: {r:?}", slot.addr)
            }
            r if r.is_connect_failure() => log::debug!("upstream {}: {r:?}", slot.addr),
            r => log::warn!("upstream {}: connection closed: {r:?}", slot.addr),
        }
        for (client, seq) in std::mem::take(&mut slot.outstanding) {
            answer(&mut self.clients, cx, client, seq, b"ERR upstream closed\n");
        }
        if reason != CloseReason::Shutdown {
            self.retry_later(cx, i);
        }
        // With this one gone, a waiting client may have nowhere left to wait for.
        self.wake_waiting(cx);
    }

    /// Resumes the clients paused for want of an uncongested upstream connection.
    fn wake_waiting(&mut self, cx: &mut Ctx<'_, Self>) {
        for id in self.waiting.drain(..) {
            cx.resume_reading(id);
        }
    }
}

/// Hands client `id` the reply to its request `seq`: written at once if it is the
/// oldest one owed, with every later reply already in; kept until then otherwise. A
/// client that went away finds nothing in the map (even if a newer client has its slot
/// now), and the reply is dropped.
fn answer(
    clients: &mut ConnMap<Client>,
    cx: &mut Ctx<'_, Pool>,
    id: ConnId,
    seq: u64,
    reply: &[u8],
) {
    let Some(client) = clients.get_mut(id) else {
        return;
    };
    let i = (seq - client.first) as usize;
    if i > 0 {
        client.replies[i] = Some(reply.to_vec());
        return;
    }
    cx.write(id, reply);
    client.replies.pop_front();
    client.first += 1;
    while let Some(Some(_)) = client.replies.front() {
        if let Some(Some(r)) = client.replies.pop_front() {
            cx.write(id, &r);
        }
        client.first += 1;
    }
    if client.ended && client.replies.is_empty() {
        cx.close(id); // after what was just written
    } else if cx.is_reading_paused(id) && client.replies.len() <= MAX_OUTSTANDING / 2 {
        cx.resume_reading(id);
    }
}

impl Handler for Pool {
    type Tag = Side;
    type Msg = Msg;
    type Timer = usize;

    fn started(&mut self, cx: &mut Ctx<'_, Self>) {
        for i in 0..self.slots.len() {
            self.connect(cx, i);
        }
    }

    fn opened(&mut self, cx: &mut Ctx<'_, Self>, conn: Conn<Side>) {
        match conn.tag {
            Side::Client => {
                self.clients.insert(conn.id, Client::default());
            }
            Side::Upstream => {
                if let Some(&i) = self.upstreams.get(conn.id) {
                    let slot = &mut self.slots[i];
                    log::info!("upstream {}: connected", slot.addr);
                    slot.backoff.reset();
                    slot.retry_delays.clear();
                    self.wake_waiting(cx);
                }
            }
        }
    }

    fn data(&mut self, cx: &mut Ctx<'_, Self>, conn: Conn<Side>, input: &[u8]) -> usize {
        match conn.tag {
            Side::Client => self.client_data(cx, conn.id, input),
            Side::Upstream => self.upstream_data(cx, conn.id, input),
        }
    }

    fn end_of_input(&mut self, _: &mut Ctx<'_, Self>, conn: Conn<Side>) -> EndOfInput {
        match conn.tag {
            // Nothing more will be answered on it: replace it at once.
            Side::Upstream => EndOfInput::Abort,
            Side::Client => match self.clients.get_mut(conn.id) {
                Some(client) if !client.replies.is_empty() => {
                    client.ended = true; // `answer` closes it after the last reply
                    EndOfInput::KeepOpen
                }
                _ => EndOfInput::Close,
            },
        }
    }

    fn drained(&mut self, cx: &mut Ctx<'_, Self>, conn: Conn<Side>) {
        match conn.tag {
            Side::Client => cx.resume_reading(conn.id),
            Side::Upstream => self.wake_waiting(cx),
        }
    }

    fn closed(&mut self, cx: &mut Ctx<'_, Self>, conn: Conn<Side>, reason: CloseReason) {
        match conn.tag {
            Side::Client => {
                // Its outstanding requests stay queued upstream; their replies find no
                // client and are dropped.
                self.clients.remove(conn.id);
                self.waiting.retain(|&w| w != conn.id);
            }
            Side::Upstream => self.upstream_closed(cx, conn.id, reason),
        }
    }

    fn timer(&mut self, cx: &mut Ctx<'_, Self>, _: TimerId, slot: usize) {
        self.connect(cx, slot);
    }

    fn message(&mut self, cx: &mut Ctx<'_, Self>, msg: Msg) {
        match msg {
            Msg::Status(reply) => {
                let status = self
                    .slots
                    .iter()
                    .map(|s| SlotStatus {
                        addr: s.addr,
                        open: s.conn.is_some_and(|id| cx.is_open(id)),
                        retry_delays: s.retry_delays.clone(),
                    })
                    .collect();
                let _ = reply.send(status);
            }
        }
    }
}

/// Starts a balancer on `listen` over `pool` (also used by the crate's tests).
pub fn start(
    listen: SocketAddr,
    pool: PoolConfig,
    config: Config,
) -> std::io::Result<Reactor<Msg>> {
    Builder::new(config)
        .listen(listen, Side::Client)
        .start(move |_, _| Pool::new(&pool))
}

#[allow(dead_code)] // not called when the tests include this file
fn main() -> Result<(), Box<dyn std::error::Error>> {
    env_logger::init();
    let usage = "usage: pool LISTEN_ADDR PER_UPSTREAM UPSTREAM_ADDR...";
    let mut args = std::env::args().skip(1);
    let (Some(listen), Some(per_upstream)) = (args.next(), args.next()) else {
        eprintln!("{usage}");
        std::process::exit(2);
    };
    let listen: SocketAddr = listen.parse()?;
    let per_upstream: usize = per_upstream.parse()?;
    let upstreams = args
        .map(|a| a.parse())
        .collect::<Result<Vec<SocketAddr>, _>>()?;
    if upstreams.is_empty() || per_upstream == 0 {
        eprintln!("{usage}");
        std::process::exit(2);
    }
    let config = Config {
        max_input: 64 * 1024, // the longest line, request or reply
        ..Config::default()
    };
    let pool = PoolConfig::new(upstreams.clone(), per_upstream);
    let reactor = start(listen, pool, config)?;
    println!(
        "balancing {} over {per_upstream} connection(s) to each of {upstreams:?}; Ctrl-C to quit",
        reactor.local_addrs()[0]
    );
    reactor.join();
    Ok(())
}
