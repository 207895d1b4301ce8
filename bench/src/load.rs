//! The checking load generator: a closed loop over keep-alive connections, HTTP or
//! Dubbo.
//!
//! Each connection sends the race's call (HTTP: its form request; Dubbo: a hessian2
//! request of `hash(String)` as a Java consumer writes it), waits for the answer,
//! checks it (HTTP status 200 / Dubbo status OK, value = Java `hashCode` of the
//! parameter plus salt) and sends the next.
//! Latencies go into per-loop [`Histogram`]s merged once a second; errors are counted
//! by kind (`status_502`, `wrong`, `closed`, `timeout`, `connect`, `bad_response`).

use std::collections::BTreeMap;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use reactor::{Builder, CloseReason, Config, Conn, ConnId, Ctx, Handler, TimerId, XorShift};

use codec::dubbo;
use codec::hessian2::Value;
use codec::Decoded;

use crate::hist::Histogram;
use crate::provider::SERVICE;

/// What the load speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Protocol {
    /// The race's HTTP form call (to the consumer-agent's `--listen`).
    #[default]
    Http,
    /// Dubbo 2, hessian2, as an unmodified Dubbo consumer (to `--dubbo-listen`, or a
    /// provider).
    Dubbo,
}

/// What the `parameter` strings are made of.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Params {
    /// 0-1023 random letters and digits, as in the race.
    Ascii,
    /// 0-1023 random characters, mostly non-ASCII (accents, CJK, emoji, `+&=%`),
    /// sent as percent-encoded UTF-8.
    Utf8,
}

/// Settings of a load run.
#[derive(Debug, Clone)]
pub struct LoadOpts {
    /// The consumer-agent (or any server of the race's HTTP call).
    pub target: SocketAddr,
    /// Keep-alive connections, each with one request in flight.
    pub connections: usize,
    /// Event loops the connections are spread over.
    pub loops: usize,
    /// Time before measuring starts.
    pub warmup: Duration,
    /// Time measured.
    pub duration: Duration,
    /// Parameter strings.
    pub params: Params,
    /// Number the server appends to the parameter before hashing.
    pub salt: Option<i64>,
    /// A request unanswered this long is an error; its connection is reopened.
    pub timeout: Duration,
    /// Print a progress line every second to stderr.
    pub progress: bool,
    /// HTTP or Dubbo.
    pub protocol: Protocol,
    /// Each new connection sends its first request after a random wait below this,
    /// so that connections are spread over a provider's latency rather than in step.
    /// Against a mock of exactly fixed latency, connections that start together stay
    /// together: every answer then queues behind the whole batch at each hop, a cost
    /// of the load's shape that a real provider's timing jitter would soon dissolve.
    /// Zero sends at once (as wrk does). Spent in the warm-up when it is shorter.
    pub stagger: Duration,
}

impl Default for LoadOpts {
    fn default() -> Self {
        LoadOpts {
            target: SocketAddr::from(([127, 0, 0, 1], 20000)),
            connections: 128,
            loops: 1,
            warmup: Duration::from_secs(2),
            duration: Duration::from_secs(10),
            params: Params::Ascii,
            salt: None,
            timeout: Duration::from_secs(5),
            progress: true,
            protocol: Protocol::Http,
            stagger: Duration::ZERO,
        }
    }
}

/// Counts and latencies of a stretch of time.
#[derive(Debug, Clone, Default)]
pub struct Stats {
    /// Latency of every answer (right, wrong or error status), µs.
    pub hist: Histogram,
    /// Right answers.
    pub ok: u64,
    /// Failures by kind.
    pub errors: BTreeMap<String, u64>,
    /// Connections that ended while the run went on (the server closed them, or an
    /// error did; each was replaced by a new one), a request in flight on them or not.
    pub closed_by_server: u64,
}

impl Stats {
    fn error(&mut self, kind: &str) {
        match self.errors.get_mut(kind) {
            Some(n) => *n += 1,
            None => {
                self.errors.insert(kind.to_owned(), 1);
            }
        }
    }

    fn merge(&mut self, o: &Stats) {
        self.hist.merge(&o.hist);
        self.ok += o.ok;
        self.closed_by_server += o.closed_by_server;
        for (k, v) in &o.errors {
            *self.errors.entry(k.clone()).or_default() += v;
        }
    }

    /// Errors of every kind.
    pub fn error_count(&self) -> u64 {
        self.errors.values().sum()
    }
}

/// The outcome of a load run.
#[derive(Debug, Clone)]
pub struct LoadReport {
    /// Connections used.
    pub connections: usize,
    /// Seconds measured.
    pub duration_secs: f64,
    /// Requests finished in the window: `ok + errors`.
    pub requests: u64,
    /// Everything measured.
    pub stats: Stats,
}

impl LoadReport {
    /// Right answers per second.
    pub fn qps(&self) -> f64 {
        if self.duration_secs > 0.0 {
            self.stats.ok as f64 / self.duration_secs
        } else {
            0.0
        }
    }

    /// A latency quantile in milliseconds.
    pub fn latency_ms(&self, q: f64) -> f64 {
        self.stats.hist.quantile(q) as f64 / 1000.0
    }

    /// The report as JSON.
    pub fn to_json(&self) -> serde_json::Value {
        let h = &self.stats.hist;
        serde_json::json!({
            "connections": self.connections,
            "duration_secs": self.duration_secs,
            "requests": self.requests,
            "ok": self.stats.ok,
            "qps": self.qps(),
            "latency_us": {
                "mean": h.mean(),
                "min": h.min(),
                "p50": h.quantile(0.5),
                "p90": h.quantile(0.9),
                "p99": h.quantile(0.99),
                "p999": h.quantile(0.999),
                "max": h.max(),
            },
            "errors": self.stats.errors,
        })
    }

    /// A few human-readable lines.
    pub fn summary(&self) -> String {
        let h = &self.stats.hist;
        let ms = |q| h.quantile(q) as f64 / 1000.0;
        let mut s = format!(
            "{} connections, {:.1} s: {} requests, {:.0} req/s ok\n\
             latency ms: p50 {:.3}  p90 {:.3}  p99 {:.3}  p99.9 {:.3}  max {:.3}\n",
            self.connections,
            self.duration_secs,
            self.requests,
            self.qps(),
            ms(0.5),
            ms(0.9),
            ms(0.99),
            ms(0.999),
            h.max() as f64 / 1000.0
        );
        if self.stats.errors.is_empty() {
            s.push_str("errors: none\n");
        } else {
            s.push_str("errors:");
            for (k, v) in &self.stats.errors {
                s.push_str(&format!(" {k}={v}"));
            }
            s.push('\n');
        }
        s
    }
}

const ALNUM: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
const UTF8_CHARS: &[char] = &[
    'é', 'ü', 'ß', 'ñ', 'Ж', 'я', 'Ω', '中', '文', '字', '漢', 'の', '한', '😀', '🚀', '𝄞', ' ',
    '+', '&', '=', '%', '/', 'a', 'Z', '7',
];

/// A random parameter string.
pub fn random_param(rng: &mut XorShift, params: Params) -> String {
    let len = rng.below(1024);
    match params {
        Params::Ascii => (0..len)
            .map(|_| ALNUM[rng.below(ALNUM.len())] as char)
            .collect(),
        Params::Utf8 => (0..len)
            .map(|_| UTF8_CHARS[rng.below(UTF8_CHARS.len())])
            .collect(),
    }
}

/// Percent-encodes everything but the unreserved characters.
pub fn percent_encode(s: &str, out: &mut String) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    for &b in s.as_bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push('%');
            out.push(HEX[(b >> 4) as usize] as char);
            out.push(HEX[(b & 15) as usize] as char);
        }
    }
}

/// The race's whole HTTP request for `param`, and the answer expected.
pub fn race_request(host: &str, param: &str, salt: Option<i64>) -> (Vec<u8>, i32) {
    let mut body = format!(
        "interface={SERVICE}&method=hash&parameterTypesString=Ljava%2Flang%2FString%3B&parameter="
    );
    percent_encode(param, &mut body);
    let expected = match salt {
        Some(s) => codec::java::string_hash_code(&format!("{param}{s}")),
        None => codec::java::string_hash_code(param),
    };
    let mut req = format!(
        "POST /invoke HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    req.extend_from_slice(body.as_bytes());
    (req, expected)
}

/// One prepared request.
#[derive(Debug)]
struct Prepared {
    bytes: Vec<u8>,
    expected: i32,
}

/// Per connection slot (indexed by the connection's slot number).
#[derive(Debug, Clone, Copy)]
struct Slot {
    id: ConnId,
    req: usize,
    sent: Instant,
    busy: bool,
}

#[derive(Debug, Default)]
struct Agg {
    total: Stats,
    interval: Stats,
}

#[derive(Debug)]
enum Msg {
    Start { warm_end: Instant, end: Instant },
}

/// What a loop's timers are for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LoadTimer {
    /// Periodic: time out calls waiting too long.
    Tick,
    /// Open a connection again after a failed one.
    Reconnect,
    /// A new connection's first request, after its stagger.
    First(ConnId),
}

#[derive(Debug)]
struct Load {
    opts: LoadOpts,
    pool: Arc<Vec<Prepared>>,
    rng: XorShift,
    slots: Vec<Option<Slot>>,
    want: usize,
    warm_end: Instant,
    end: Instant,
    done: bool,
    local_total: Stats,
    local_interval: Stats,
    agg: Arc<Mutex<Agg>>,
}

impl Load {
    fn in_window(&self, t: Instant) -> bool {
        t >= self.warm_end && t < self.end
    }

    fn error(&mut self, now: Instant, kind: &str) {
        self.local_interval.error(kind);
        if self.in_window(now) {
            self.local_total.error(kind);
        }
    }

    fn connect(&mut self, cx: &mut Ctx<'_, Self>) {
        let timeout = self.opts.timeout.max(Duration::from_secs(5));
        if let Err(e) = cx.connect(self.opts.target, (), Some(timeout)) {
            log::debug!("connect: {e}");
            let now = cx.now();
            self.error(now, "connect");
            cx.set_timer(Duration::from_millis(100), LoadTimer::Reconnect);
        }
    }

    fn send(&mut self, cx: &mut Ctx<'_, Self>, id: ConnId) {
        let req = self.rng.below(self.pool.len());
        let now = cx.now();
        if let Some(p) = self.pool.get(req) {
            cx.write(id, &p.bytes);
        }
        if let Some(Some(s)) = self.slots.get_mut(id.index()) {
            s.req = req;
            s.sent = now;
            s.busy = true;
        }
    }

    fn flush(&mut self) {
        if let Ok(mut agg) = self.agg.lock() {
            agg.total.merge(&self.local_total);
            agg.interval.merge(&self.local_interval);
        }
        self.local_total = Stats::default();
        self.local_interval = Stats::default();
    }

    /// Records an answer to the request in flight on `id`: its latency, and whether it
    /// was right (`answer`: the error kind, or the value). False when nothing was in
    /// flight there (a protocol error).
    fn record(&mut self, id: ConnId, answer: Result<i32, String>) -> bool {
        let Some(slot) = self.slots.get_mut(id.index()).and_then(|s| s.as_mut()) else {
            return false;
        };
        if !slot.busy {
            return false;
        }
        slot.busy = false;
        let (sent, req) = (slot.sent, slot.req);
        let now = Instant::now();
        let us = now.duration_since(sent).as_micros() as u64;
        let in_window = self.in_window(now);
        self.local_interval.hist.record(us);
        if in_window {
            self.local_total.hist.record(us);
        }
        let expected = self.pool.get(req).map(|p| p.expected);
        match answer {
            Ok(v) if Some(v) == expected => {
                self.local_interval.ok += 1;
                if in_window {
                    self.local_total.ok += 1;
                }
            }
            Ok(_) => self.error(now, "wrong"),
            Err(kind) => self.error(now, &kind),
        }
        true
    }

    /// Parses Dubbo answers from `input`; returns bytes used, or `None` on a protocol
    /// error.
    fn dubbo_answers(&mut self, cx: &mut Ctx<'_, Self>, id: ConnId, input: &[u8]) -> Option<usize> {
        let mut used = 0;
        loop {
            let rest = input.get(used..)?;
            let frame = match dubbo::decode_frame(rest) {
                Ok(Decoded::Complete { msg, consumed }) => {
                    used += consumed;
                    msg
                }
                Ok(Decoded::Incomplete) => return Some(used),
                Err(_) => return None,
            };
            if frame.is_event() || frame.is_request() || frame.id() != DUBBO_ID {
                return None;
            }
            let answer = match dubbo::decode_response_body(
                frame.serialization_id(),
                frame.status(),
                frame.body,
            ) {
                Ok(dubbo::Response {
                    outcome: dubbo::Outcome::Value(Value::Int(v)),
                    ..
                }) => Ok(v),
                Ok(_) if frame.status() != dubbo::status::OK => {
                    Err(format!("dubbo_status_{}", frame.status()))
                }
                _ => Err("wrong".to_owned()),
            };
            if !self.record(id, answer) {
                return None;
            }
            if Instant::now() < self.end && !self.done {
                self.send(cx, id);
            }
        }
    }

    /// Parses answers from `input`; returns bytes used, or `None` on a protocol error.
    fn answers(&mut self, cx: &mut Ctx<'_, Self>, id: ConnId, input: &[u8]) -> Option<usize> {
        if self.opts.protocol == Protocol::Dubbo {
            return self.dubbo_answers(cx, id, input);
        }
        let mut used = 0;
        loop {
            let rest = input.get(used..)?;
            if rest.is_empty() {
                return Some(used);
            }
            let mut headers = [httparse::EMPTY_HEADER; 16];
            let mut resp = httparse::Response::new(&mut headers);
            let head = match resp.parse(rest) {
                Ok(httparse::Status::Complete(n)) => n,
                Ok(httparse::Status::Partial) => return Some(used),
                Err(_) => return None,
            };
            let mut len = None;
            let mut close = false;
            for h in resp.headers.iter() {
                if h.name.eq_ignore_ascii_case("content-length") {
                    len = std::str::from_utf8(h.value)
                        .ok()?
                        .trim()
                        .parse::<usize>()
                        .ok();
                } else if h.name.eq_ignore_ascii_case("connection") {
                    close = h.value.eq_ignore_ascii_case(b"close");
                }
            }
            let len = len?;
            let Some(body) = rest.get(head..head + len) else {
                return Some(used);
            };
            used += head + len;
            let code = resp.code.unwrap_or(0);
            let answer = if code != 200 {
                Err(format!("status_{code}"))
            } else {
                std::str::from_utf8(body)
                    .ok()
                    .and_then(|b| b.trim().parse::<i32>().ok())
                    .ok_or_else(|| "wrong".to_owned())
            };
            if !self.record(id, answer) {
                return None;
            }
            let now = Instant::now();
            if close {
                cx.close(id);
                return Some(input.len());
            }
            if now < self.end && !self.done {
                self.send(cx, id);
            }
        }
    }
}

impl Handler for Load {
    type Tag = ();
    type Msg = Msg;
    type Timer = LoadTimer;

    fn message(&mut self, cx: &mut Ctx<'_, Self>, msg: Msg) {
        let Msg::Start { warm_end, end } = msg;
        self.warm_end = warm_end;
        self.end = end;
        let every =
            (self.opts.timeout / 4).clamp(Duration::from_millis(5), Duration::from_millis(100));
        cx.set_periodic(every, LoadTimer::Tick);
        for _ in 0..self.want {
            self.connect(cx);
        }
    }

    fn opened(&mut self, cx: &mut Ctx<'_, Self>, conn: Conn<()>) {
        let i = conn.id.index();
        if self.slots.len() <= i {
            self.slots.resize(i + 1, None);
        }
        self.slots[i] = Some(Slot {
            id: conn.id,
            req: 0,
            sent: cx.now(),
            busy: false,
        });
        if self.done {
            return;
        }
        let stagger = self.opts.stagger.as_micros() as usize;
        if stagger > 0 {
            let wait = Duration::from_micros(self.rng.below(stagger) as u64);
            cx.set_timer(wait, LoadTimer::First(conn.id));
        } else {
            self.send(cx, conn.id);
        }
    }

    fn data(&mut self, cx: &mut Ctx<'_, Self>, conn: Conn<()>, input: &[u8]) -> usize {
        match self.answers(cx, conn.id, input) {
            Some(n) => n,
            None => {
                let now = Instant::now();
                self.error(now, "bad_response");
                if let Some(Some(s)) = self.slots.get_mut(conn.id.index()) {
                    s.busy = false;
                }
                cx.abort(conn.id);
                input.len()
            }
        }
    }

    fn closed(&mut self, cx: &mut Ctx<'_, Self>, conn: Conn<()>, reason: CloseReason) {
        let now = Instant::now();
        if reason.is_connect_failure() {
            self.error(now, "connect");
            if !self.done {
                cx.set_timer(Duration::from_millis(100), LoadTimer::Reconnect);
            }
            return;
        }
        let slot = self
            .slots
            .get_mut(conn.id.index())
            .and_then(Option::take)
            .filter(|s| s.id == conn.id);
        if slot.is_some_and(|s| s.busy) {
            self.error(now, "closed");
        }
        if !self.done && reason != CloseReason::Shutdown {
            self.local_total.closed_by_server += 1;
            self.connect(cx);
        }
    }

    fn timer(&mut self, cx: &mut Ctx<'_, Self>, _timer: TimerId, timer: LoadTimer) {
        if let LoadTimer::First(id) = timer {
            // Only if that connection is still open and idle (not replaced since).
            let idle = matches!(self.slots.get(id.index()), Some(Some(s)) if s.id == id && !s.busy);
            if idle && !self.done {
                self.send(cx, id);
            }
            return;
        }
        if timer == LoadTimer::Reconnect {
            if !self.done {
                self.connect(cx);
            }
            return;
        }
        let now = Instant::now();
        let timeout = self.opts.timeout;
        let mut expired = Vec::new();
        for s in self.slots.iter_mut().flatten() {
            if s.busy && now.duration_since(s.sent) > timeout {
                s.busy = false;
                expired.push(s.id);
            }
        }
        for id in expired {
            self.error(now, "timeout");
            cx.abort(id);
        }
        if now >= self.end && !self.done {
            self.done = true;
            self.flush();
            cx.exit();
            return;
        }
        // Every tick: the progress line sees every loop's latest counts.
        self.flush();
    }

    fn stopping(&mut self, cx: &mut Ctx<'_, Self>) {
        self.done = true;
        self.flush();
        cx.exit();
    }
}

/// Prepares `n` random requests for `target`.
fn prepare(opts: &LoadOpts, n: usize) -> Vec<Prepared> {
    let host = opts.target.to_string();
    let mut rng = XorShift::from_time();
    (0..n)
        .map(|_| {
            let p = random_param(&mut rng, opts.params);
            let (bytes, expected) = match opts.protocol {
                Protocol::Http => race_request(&host, &p, opts.salt),
                Protocol::Dubbo => race_dubbo_request(&p, opts.salt),
            };
            Prepared { bytes, expected }
        })
        .collect()
}

/// The request id of every Dubbo request: a connection has one in flight at a time.
const DUBBO_ID: i64 = 1;

/// The race's call as a Dubbo consumer sends it (hessian2, two-way), and the answer
/// expected.
pub fn race_dubbo_request(param: &str, salt: Option<i64>) -> (Vec<u8>, i32) {
    let hashed = match salt {
        Some(s) => format!("{param}{s}"),
        None => param.to_owned(),
    };
    let expected = codec::java::string_hash_code(&hashed);
    let mut args = Vec::new();
    codec::hessian2::write_string(&mut args, param);
    let mut out = Vec::new();
    let request = dubbo::Request {
        id: DUBBO_ID,
        serialization: dubbo::Serialization::Hessian2,
        two_way: true,
        dubbo_version: "2.0.2",
        path: SERVICE,
        version: Some("0.0.0"),
        group: None,
        method: "hash",
        descriptor: "Ljava/lang/String;",
        args: &args,
        attachments: dubbo::Attachments::Standard(&[]),
    };
    // The race's parameters are at most 1,023 characters: far below any limit.
    let _ = dubbo::encode_request(&mut out, &request);
    (out, expected)
}

/// Runs the load: warm-up, then the measured window; returns what was measured.
///
/// # Errors
/// Starting the event loops failed.
pub fn run(opts: &LoadOpts) -> io::Result<LoadReport> {
    let loops = opts.loops.max(1).min(opts.connections.max(1));
    let pool = Arc::new(prepare(opts, 2048));
    let agg = Arc::new(Mutex::new(Agg::default()));
    let config = Config {
        loops,
        thread_name: "load".into(),
        ..Config::default()
    };
    let per_loop = opts.connections / loops;
    let extra = opts.connections % loops;
    let make_opts = opts.clone();
    let make_agg = agg.clone();
    let reactor = Builder::<()>::new(config).start(move |index, _| {
        let now = Instant::now();
        Load {
            opts: make_opts.clone(),
            pool: pool.clone(),
            // Fixed per loop, so a run's request order repeats; mixed, so loops differ.
            rng: XorShift::mixed(index as u64 * 7919 + 17),
            slots: Vec::new(),
            want: per_loop + usize::from(index < extra),
            warm_end: now,
            end: now,
            done: false,
            local_total: Stats::default(),
            local_interval: Stats::default(),
            agg: make_agg.clone(),
        }
    })?;
    let start = Instant::now();
    let warm_end = start + opts.warmup;
    let end = warm_end + opts.duration;
    for h in reactor.handles() {
        let _ = h.send(Msg::Start { warm_end, end });
    }
    let mut last = start;
    while Instant::now() < end {
        let next = last + Duration::from_secs(1);
        std::thread::sleep(
            next.saturating_duration_since(Instant::now())
                .min(end.saturating_duration_since(Instant::now())),
        );
        let now = Instant::now();
        if opts.progress {
            let iv = agg
                .lock()
                .map(|mut a| std::mem::take(&mut a.interval))
                .unwrap_or_default();
            let secs = now.duration_since(last).as_secs_f64().max(1e-3);
            let phase = if now < warm_end { "warmup" } else { "measure" };
            eprintln!(
                "[{:5.1}s {phase}] {:8.0} req/s  p99 {:8.3} ms  errors {}",
                now.duration_since(start).as_secs_f64(),
                iv.ok as f64 / secs,
                iv.hist.quantile(0.99) as f64 / 1000.0,
                iv.error_count()
            );
        }
        last = now;
    }
    // The loops exit by themselves at `end`; ask too, in case one is stuck.
    std::thread::sleep(Duration::from_millis(50));
    reactor.stop();
    reactor.join();
    let total = agg.lock().map(|a| a.total.clone()).unwrap_or_default();
    Ok(LoadReport {
        connections: opts.connections,
        duration_secs: opts.duration.as_secs_f64(),
        requests: total.ok + total.error_count(),
        stats: total,
    })
}
